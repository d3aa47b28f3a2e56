"""``python -m loadtest {run,sweep,compare,chaos}``: load tests of the ranking server against an SLO.

    python -m loadtest run --url http://127.0.0.1:8000 --rate 5 --duration 30 --slo-p99-ms 500
    python -m loadtest sweep --url http://127.0.0.1:8000 --rates 1,2,4,8 --duration 20 \
        --slo-p99-ms 500 --json artifacts/loadtest/sweep.json
    python -m loadtest compare --model artifacts/demo/teacher --json artifacts/loadtest/compare.json
    python -m loadtest chaos overload --model artifacts/demo/teacher --json artifacts/loadtest/chaos.json

The workload (what each request holds) comes from ``--workload FILE`` (JSON/YAML with the
fields of ``loadtest.workload.Workload``) and/or the workload flags, which win over the file.
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # first: this process may run again on tcmalloc, before torch is imported

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from loadtest.workload import DEFAULT_MODEL, ENDPOINTS, RequestPool, Workload, WorkloadError


def _positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not v > 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return v

    return parse


def _workload_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("workload (flags win over --workload FILE)")
    g.add_argument("--workload", help="JSON or YAML file with Workload fields")
    g.add_argument("--source", choices=["synthetic", "demo"])
    g.add_argument("--endpoint", choices=["rank", "rerank", "score"])
    g.add_argument("--query-tokens", type=int, help="synthetic: query length in tokens [250]")
    g.add_argument("--items", type=int, help="items per request [50]")
    g.add_argument("--item-tokens", type=int, help="synthetic: tokens per item [~30]")
    g.add_argument("--distinct", type=int, help="distinct request bodies, cycled [8]")
    g.add_argument("--data", help="demo source: benchmark folder [artifacts/demo/data]")
    g.add_argument("--split", help="demo source: split [test]")
    g.add_argument(
        "--tokenizer", help=f"model folder whose tokenizer counts tokens [{DEFAULT_MODEL}]"
    )
    g.add_argument("--workload-seed", type=int, dest="workload_seed")
    g.add_argument("--invalid-share", type=float, help="share of deliberately invalid requests")
    g.add_argument("--topic", help="every candidate of this topic (a shifted item population)")


def _workload(args: argparse.Namespace, **defaults) -> Workload:
    fields = {k: getattr(args, k, None) for k in Workload.fields() if k != "seed"}
    fields["seed"] = args.workload_seed
    for k, v in defaults.items():
        if fields.get(k) is None:
            fields[k] = v
    if args.workload:
        return Workload.from_file(args.workload, **fields)
    return Workload.from_dict({k: v for k, v in fields.items() if v is not None})


def _api_key_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--api-key",
        default=os.environ.get("SLIMRANK_API_KEY"),
        help="Bearer key the server expects [env SLIMRANK_API_KEY]",
    )


def _load_args(p: argparse.ArgumentParser, sweep: bool) -> None:
    p.add_argument("--url", required=True, help="server base URL (a path there sets the endpoint)")
    if not sweep:
        p.add_argument("--rate", type=_positive(float), required=True, help="requests/s offered")
    p.add_argument("--duration", type=_positive(float), required=True, help="seconds of arrivals")
    p.add_argument("--slo-p99-ms", type=_positive(float), required=sweep, help="latency SLO (ms)")
    p.add_argument("--max-requests", type=_positive(int), help="cap on requests per run")
    p.add_argument("--max-in-flight", type=_positive(int), default=256)
    p.add_argument("--timeout", type=_positive(float), default=30.0, help="per request (s)")
    p.add_argument("--grace", type=float, help="after --duration, for in-flight (s) [--timeout]")
    p.add_argument("--arrivals", choices=["poisson", "constant"], default="poisson")
    p.add_argument("--seed", type=int, default=0, help="seed of the arrival times")
    p.add_argument("--no-metrics", action="store_true", help="do not scrape /metrics")
    _api_key_arg(p)
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--json",
        default="artifacts/loadtest/sweep.json" if sweep else None,
        help="write the report here" + (" [artifacts/loadtest/sweep.json]" if sweep else ""),
    )


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m loadtest",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="one open-loop run at a target rate")
    _load_args(run, sweep=False)
    run.add_argument(
        "--fail-on-slo-miss", action="store_true", help="exit 1 when the SLO is missed"
    )
    _workload_args(run)

    sw = sub.add_parser("sweep", help="increasing rates: the highest that meets the SLO")
    _load_args(sw, sweep=True)
    sw.add_argument("--rates", help="comma-separated rates, e.g. 1,2,4,8")
    sw.add_argument("--start", type=float)
    sw.add_argument("--stop", type=float)
    sw.add_argument("--step", type=float)
    sw.add_argument("--plot", help="PNG path [the --json path with .png]")
    sw.add_argument("--patience", type=_positive(int), default=2, help="misses in a row to stop")
    sw.add_argument("--broken-goodput", type=float, default=0.5, help="stop below this goodput")
    _workload_args(sw)

    cmp_ = sub.add_parser("compare", help="engines side by side on the same model and workload")
    cmp_.add_argument("--model", action="append", default=[], help="model folder (repeatable)")
    cmp_.add_argument("--models", help="comma-separated model folders")
    from loadtest.compare import ENGINES

    cmp_.add_argument("--engines", default=",".join(ENGINES), help="[all, in this order]")
    cmp_.add_argument("--requests", type=_positive(int), default=12, help="measured per engine")
    cmp_.add_argument("--concurrency", type=_positive(int), default=1)
    cmp_.add_argument("--warmup", type=int, default=2)
    cmp_.add_argument(
        "--rounds",
        type=_positive(int),
        default=4,
        help="server-torch and torch-inprocess rows: measured in turns over this many rounds",
    )
    cmp_.add_argument("--log-dir", help="server and baseline logs [a temp folder]")
    cmp_.add_argument("--no-progress", action="store_true")
    cmp_.add_argument("--json", help="write the report here")
    cmp_.add_argument("--slo-p99-ms", type=_positive(float), default=500.0, help="sweep SLO")
    cmp_.add_argument(
        "--sweep-factors",
        default="0.5,1,1.5,2,3",
        help="sweep rates as multiples of each server row's concurrency-1 request rate",
    )
    cmp_.add_argument("--sweep-duration", type=_positive(float), default=10.0, help="s per rate")
    cmp_.add_argument("--no-sweep", action="store_true", help="skip the per-row sweep")
    cmp_.add_argument(
        "--engine-table",
        nargs="?",
        const="server/engines/engine_table.json",
        help="add the server rows to the table --engine auto reads [%(const)s]",
    )
    _workload_args(cmp_)

    from loadtest.chaos import SCENARIOS
    from loadtest.chaos.harness import DEFAULT_STUDENT

    ch = sub.add_parser("chaos", help="fault scenarios (starts its own servers)")
    ch.add_argument("scenario", choices=[*SCENARIOS, "all"])
    ch.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder [{DEFAULT_MODEL}]")
    ch.add_argument(
        "--student",
        default=DEFAULT_STUDENT,
        help=f"swap: the version the rollout moves to [{DEFAULT_STUDENT}]",
    )
    ch.add_argument("--engine", choices=["torch", "vllm"], default="torch")
    ch.add_argument("--short", action="store_true", help="the test-sized form (seconds)")
    ch.add_argument("--slo-p99-ms", type=_positive(float), default=500.0)
    ch.add_argument("--items", type=_positive(int), default=50, help="items per request [50]")
    ch.add_argument(
        "--source",
        choices=["synthetic", "demo"],
        default="synthetic",
        help="requests: synthetic, or real rows of --data (a query and its candidates)",
    )
    ch.add_argument("--data", default="artifacts/demo/data", help="demo source: a data folder")
    ch.add_argument("--distinct", type=_positive(int), default=8, help="distinct bodies [8]")
    ch.add_argument(
        "--shift-topic",
        default="finance",
        help="drift: the topic of every candidate in the shifted phase [finance]",
    )
    ch.add_argument("--seed", type=int, default=0)
    ch.add_argument("--log-dir", help="server logs [/tmp]")
    ch.add_argument("--json", help="write the report here")
    return ap


def _split_url(url: str, path: str) -> tuple[str, str]:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"--url must look like http://host:port, got {url!r}")
    base = f"{parts.scheme}://{parts.netloc}"
    return base, (parts.path if parts.path not in ("", "/") else path)


def _reachable(base: str) -> None:
    try:
        httpx.get(base + "/health", timeout=10)
    except httpx.HTTPError as exc:
        raise ValueError(f"cannot reach the server at {base}: {type(exc).__name__}: {exc}") from exc


def _write(obj, path: str | None) -> None:
    if path:
        from loadtest.stats import write_json

        print(f"wrote {write_json(obj, path)}")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "compare":
            return _compare(args)
        if args.command == "chaos":
            return _chaos(args)
        from loadtest.client import RunConfig

        rates: list[float] = []
        w = _workload(args)
        base, path = _split_url(args.url, w.path)
        by_path = {v: k for k, v in ENDPOINTS.items()}
        if path in by_path and by_path[path] != w.endpoint:  # the URL names the dialect
            if args.endpoint:
                raise ValueError(f"--endpoint {args.endpoint} contradicts the URL path {path}")
            w = dataclasses.replace(w, endpoint=by_path[path])
        cfg = RunConfig(
            url=base,
            rate=getattr(args, "rate", 1.0),
            duration_s=args.duration,
            slo_ms=args.slo_p99_ms,
            max_requests=args.max_requests,
            max_in_flight=args.max_in_flight,
            timeout_s=args.timeout,
            grace_s=args.grace,
            arrivals=args.arrivals,
            seed=args.seed,
            path=path,
            progress=not args.no_progress,
            scrape_metrics=not args.no_metrics,
            api_key=args.api_key,
        )
        if args.command == "sweep":
            from loadtest.sweep import rate_list

            rates = rate_list(args.rates, args.start, args.stop, args.step)
        _reachable(base)
        pool = RequestPool(w)
    except (WorkloadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.command == "run":
        from loadtest.client import format_report, run

        summary = run(cfg, pool).summary()
        print(format_report(summary))
        _write(summary, args.json)
        if args.fail_on_slo_miss and summary["slo"] and not summary["slo"]["meets_slo"]:
            return 1
        return 0
    return _sweep(args, cfg, pool, rates)


def _sweep(args: argparse.Namespace, cfg, pool: RequestPool, rates: list[float]) -> int:
    from loadtest.sweep import format_sweep, plot_sweep, sweep

    rep = sweep(cfg, pool, rates, args.broken_goodput, args.patience)
    print("\n" + format_sweep(rep))
    _write(rep, args.json)
    png = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if png:
        print(f"wrote {plot_sweep(rep, png)}")
    return 0


def _chaos(args: argparse.Namespace) -> int:
    from loadtest.chaos import SCENARIOS, ChaosConfig, format_chaos, run_scenario

    if not Path(args.model).is_dir():
        raise ValueError(f"model folder not found: {args.model}")
    cfg = ChaosConfig(
        model=args.model,
        student=args.student,
        engine=args.engine,
        short=args.short,
        slo_ms=args.slo_p99_ms,
        seed=args.seed,
        log_dir=args.log_dir,
        items=args.items,
        source=args.source,
        data=args.data,
        distinct=args.distinct,
        shift_topic=args.shift_topic,
    )
    names = SCENARIOS if args.scenario == "all" else (args.scenario,)
    reports = []
    for name in names:
        rep = run_scenario(name, cfg)
        print("\n" + format_chaos(rep), flush=True)
        reports.append(rep)
        if name == "drift" and args.json and "phases" in rep:
            from loadtest.chaos.drift import plot_psi

            out = Path(args.json).with_suffix(".png" if len(names) == 1 else ".drift.png")
            print(f"wrote {plot_psi(rep, out)}")
    _write(reports[0] if len(reports) == 1 else {"scenarios": reports}, args.json)
    return 0 if all(r["passed"] for r in reports) else 1


def _compare(args: argparse.Namespace) -> int:
    from loadtest.compare import SweepSpec, compare, format_compare

    models = list(args.model) + [m for m in (args.models or "").split(",") if m.strip()]
    if not models:
        print("error: give at least one --model (or --models A,B)", file=sys.stderr)
        return 2
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    missing = [m for m in models if not Path(m).is_dir()]
    if missing:
        print(f"error: model folder not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        w = _workload(args, tokenizer=models[0])
        spec = None
        if not args.no_sweep:
            from loadtest.sweep import rate_list

            factors = tuple(rate_list(args.sweep_factors, None, None, None))
            spec = SweepSpec(args.slo_p99_ms, factors, args.sweep_duration)
        pool = RequestPool(w)
        rep = compare(
            models,
            engines,
            pool,
            args.requests,
            args.concurrency,
            args.warmup,
            args.log_dir,
            not args.no_progress,
            spec,
            args.rounds,
        )
    except (WorkloadError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n" + format_compare(rep))
    _write(rep, args.json)
    if args.engine_table:
        from server.engines.choice import rows_from_compare, update_table

        update_table(rows_from_compare(rep), Path(args.engine_table))
        print(f"engine table: {args.engine_table}")
    if args.json is None:
        print(json.dumps({"results": rep["results"]}, indent=2))
    return 0 if all(not r.get("error") for r in rep["results"]) else 1


if __name__ == "__main__":
    sys.exit(main())
