"""The quality/cost report: every stage scored by the same scorer on the same held-out split.

``report.json`` holds ``{"stages": [{"name", "format", "auc", "auc_delta", "logloss", "params",
"bytes", "items_per_s", "ece", "brier", "reliability", ...}], "checks": {...}, "ablations":
[...]}``; ``report.md`` is the table and ``report.png`` plots AUC against bytes and against
items/s, and the reliability diagram of the main stages (calibration: compression can move it
while the AUC holds).

Quality metrics are cached per stage (they depend only on the checkpoint). Throughput is always
measured afresh, for every stage in one run, so the items/s ratios compare like with like.
items/s uses the torch engine (``TorchScorer``, what ``--engine torch`` serves) on the standard
workload, with the kernel that engine picks on this machine (``ranking.quant_kernels``: INT8 and
INT4 on integer kernels where one measures faster, dequantized otherwise; FP8 dequantized on a
CPU); the table names the kernel of each row.
"""

from __future__ import annotations

import functools
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from compression import footprint
from compression.baseline import BASELINE_FILE
from compression.layout import STAGE_FILE, stage_dir
from compression.profile import profile_markdown, profile_stages
from compression.recipe import NOT_CHECKPOINT, Recipe
from compression.stages import STAGES
from ranking.checkpoint import checkpoint_bytes
from ranking.datafolder import read_split, split_path
from ranking.dataset import labels_in_group_order, probs_in_group_order
from ranking.errors import CheckpointError
from ranking.evaluation import calibration_metrics, evaluate_checkpoint
from ranking.fingerprint import content_hash
from ranking.metrics import CALIBRATION_BINS, reliability_bins
from ranking.quant_kernels import load_for_scoring
from ranking.score_drift import load_reference, save_reference
from ranking.scorer import TorchScorer
from ranking.synthetic import BenchmarkConfig, read_meta, standard_workload


def quality(ckpt: Path, data: Path, split: str) -> tuple[dict, np.ndarray]:
    """Quality metrics and the per-item scores of one checkpoint on ``split``; cached beside
    the checkpoint (``eval-<split>.json`` / ``.npy``), keyed on the content of the checkpoint
    and of the split file, so new weights or a rebuilt split are scored again."""
    cache, cached_scores = ckpt / f"eval-{split}.json", ckpt / f"eval-{split}.npy"
    stamp = {
        "checkpoint": content_hash(ckpt, exclude=[*NOT_CHECKPOINT, STAGE_FILE]),
        "data": content_hash(split_path(data, split)),
    }
    if cache.is_file() and cached_scores.is_file():
        try:
            cached = json.loads(cache.read_text())
        except json.JSONDecodeError:
            cached = {}
        if cached.get("stamp") == stamp:
            scores = np.load(cached_scores)
            _store_reference(ckpt, scores, split)
            return cached["metrics"], scores
    metrics, scores, info = evaluate_checkpoint(ckpt, data, split)
    metrics.update(format=info.format, params=info.params, bytes=checkpoint_bytes(ckpt))
    try:
        np.save(cached_scores, scores)
        cache.write_text(json.dumps({"stamp": stamp, "metrics": metrics}, indent=2) + "\n")
    except OSError:  # read-only teacher folder: just don't cache
        pass
    _store_reference(ckpt, scores, split)
    return metrics, scores


def _store_reference(ckpt: Path, scores: np.ndarray, split: str) -> None:
    """The checkpoint's score reference (``ranking.score_drift``: what the server's PSI compares
    live scores with), written unless an up-to-date one is there; a read-only folder keeps none."""
    try:
        if load_reference(ckpt) is not None:
            return
    except CheckpointError:  # other weights' reference: rebuilt below
        pass
    try:
        save_reference(ckpt, scores, split)
    except OSError:
        pass


def items_per_second(ckpt: Path, requests: int = 6) -> tuple[float, str]:
    """Torch-engine throughput on the standard workload (250-token query, 50 items), one
    request at a time after a warm-up; median over ``requests``; and the kernel it ran on."""
    loaded = load_for_scoring(ckpt)
    scorer = TorchScorer(loaded.model, loaded.tokenizer, loaded.task)
    tok, task = loaded.tokenizer, loaded.task
    query, items = standard_workload(BenchmarkConfig(), tok, task)
    encoded = [scorer.encode(query, items)]
    scorer.score_ids(encoded)  # warm-up
    rates = []
    for _ in range(requests):
        t = time.perf_counter()
        scorer.score_ids(encoded)
        rates.append(len(items) / (time.perf_counter() - t))
    return statistics.median(rates), loaded.kernel


def write_report(recipe: Recipe, stage_names: list[str]) -> dict:
    """Evaluates the teacher and the given stages and writes report.{json,md,png}."""
    from tqdm import tqdm

    split = recipe.evaluation["split"]
    names = ["teacher", *stage_names]
    infos = {n: json.loads((stage_dir(recipe, n) / STAGE_FILE).read_text()) for n in stage_names}
    rows, generative, outputs, scores = [], [], [], {}
    rows_of = functools.cache(lambda: read_split(recipe.data, split))
    labels = functools.cache(lambda: labels_in_group_order(rows_of()))
    for name in tqdm(names, desc="report: quality", unit="stage"):
        ckpt = stage_dir(recipe, name)
        info = infos.get(name, {"type": "teacher", "from": None, "ablation": False})
        own = None if name == "teacher" else STAGES[info["type"]].report_metrics(info["summary"])
        if name != "teacher" and not STAGES[info["type"]].scored:  # stored teacher outputs
            outputs.append({"name": name, **(own or {})})
            continue
        if own is not None:  # not a ranker (the generative student): its own metrics
            generative.append({"name": name, **own, "compare_to": info.get("compare_to")})
            continue
        m, scores[name] = quality(ckpt, recipe.data, split)
        if "expected_ece" not in m:  # a cache without the calibration figures: from its scores
            m.update(calibration_metrics(labels(), scores[name], probs_in_group_order(rows_of())))
        rows.append(
            {
                "name": name,
                "stage": info["type"],
                "from": info["from"],
                "ablation": info["ablation"],
                "compare_to": info.get("compare_to"),
                "format": m["format"],
                "auc": m["auc"],
                "auc_lo": m.get("auc_lo"),
                "auc_hi": m.get("auc_hi"),
                "logloss": m["logloss"],
                "ndcg@10": m["ndcg@10"],
                "ece": m["ece"],
                "expected_ece": m.get("expected_ece"),
                "bayes_ece": m.get("bayes_ece"),
                "calibrator": m.get("calibrator"),
                "brier": m["brier"],
                "reliability": reliability_bins(labels(), scores[name]),
                "expected_auc": m.get("expected_auc"),
                "params": m["params"],
                "bytes": m["bytes"],
                "path": str(ckpt),
                "kd_source": _kd_source(info, infos),
                "stage_seconds": (info.get("summary") or {}).get("seconds"),
            }
        )
    teacher = rows[0]
    if recipe.evaluation.get("throughput", True):
        n = int(recipe.evaluation.get("throughput_requests", 6))
        for r in tqdm(rows, desc="report: items/s", unit="stage"):
            r["items_per_s"], r["kernel"] = items_per_second(Path(r["path"]), n)
        profile_stages(rows)
    for r in rows:
        # fidelity: how far each stage's scores moved from its input's (and the teacher's)
        src = r["from"] if r["from"] in scores else None
        r["score_mad_vs_input"] = (
            float(np.abs(scores[r["name"]] - scores[src]).mean()) if src else None
        )
        r["score_mad_vs_teacher"] = float(np.abs(scores[r["name"]] - scores["teacher"]).mean())
        r["auc_delta"] = r["auc"] - teacher["auc"]
        r["bytes_ratio"] = teacher["bytes"] / r["bytes"]
        if r.get("items_per_s") and teacher.get("items_per_s"):
            r["speedup"] = r["items_per_s"] / teacher["items_per_s"]
    report = {
        "split": split,
        "bayes_auc": _bayes(recipe, split),
        "baseline": baseline(recipe.data, split, teacher["auc"]),
        "stages": rows,
        "checks": checks(rows),
        "ablations": ablations(rows, generative),
        "generative": generative,
        "teacher_outputs": outputs,
        "torch_threads": torch.get_num_threads(),
    }
    report["bytes_by_part"] = footprint.rows([(r["name"], Path(r["path"])) for r in rows])
    out = recipe.output
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    table = markdown(report) + footprint.markdown(report["bytes_by_part"])
    (out / "report.md").write_text(table)
    plot(report, out / "report.png")
    print(table)
    return report


def baseline(data: Path, split: str, teacher_auc: float) -> dict | None:
    """The non-LLM baseline's metrics on ``split`` from ``<data>/baseline.json`` (written by
    ``python -m compression baseline --data DIR``), if the data folder has one; marked stale
    (and not compared) when the split's content differs from what the baseline was scored on."""
    path = data / BASELINE_FILE
    if not path.is_file():
        return None
    result = json.loads(path.read_text())
    if split not in result:
        return None
    out = {"model": result.get("model", "baseline"), **result[split], "path": str(path)}
    if result.get("data_hash", {}).get(split) != content_hash(split_path(data, split)):
        return {**out, "stale": True}
    return {**out, "stale": False, "auc_delta_vs_teacher": out["auc"] - teacher_auc}


def _bayes(recipe: Recipe, split: str) -> float | None:
    if not (recipe.data / "meta.json").is_file():
        return None
    return read_meta(recipe.data)["splits"].get(split, {}).get("bayes_auc")


def checks(rows: list[dict]) -> dict:
    """The issue's targets, computed from the rows by stage name where present."""
    by = {r["name"]: r for r in rows}
    out: dict = {}
    if "int8" in by:
        out["int8_bytes_ratio"] = by["int8"]["bytes_ratio"]
        out["int8_auc_delta"] = by["int8"]["auc_delta"]
    if {"distilled", "pruned", "redistilled"} <= by.keys():
        lost = by["distilled"]["auc"] - by["pruned"]["auc"]
        regained = by["redistilled"]["auc"] - by["pruned"]["auc"]
        out["prune_auc_lost"] = lost
        out["redistill_auc_regained"] = regained
        out["redistill_recovery"] = regained / lost if lost > 0 else None
    return out


def ablations(rows: list[dict], generative: list[dict]) -> list[dict]:
    """Each ablation stage against the stage it is an alternative to (``compare_to``)."""
    by = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        if r["ablation"] and r["compare_to"] in by:
            base = by[r["compare_to"]]
            # AUC, and fidelity (mean |score difference|) to the shared input if both variants
            # start from the same stage, else to the teacher: finer than AUC when two variants
            # rank alike (e.g. INT4 GPTQ vs round-to-nearest)
            same_input = r["from"] == base["from"] and r.get("score_mad_vs_input") is not None
            fidelity = "score_mad_vs_input" if same_input else "score_mad_vs_teacher"
            # a calibrator keeps the ranking: what it changes is the calibration
            for metric in ("auc", "ece" if r["stage"] == "calibrate" else fidelity):
                out.append(
                    {
                        "ablation": r["name"],
                        "baseline": base["name"],
                        "metric": metric,
                        "value": r[metric],
                        "baseline_value": base[metric],
                        "delta": r[metric] - base[metric],
                    }
                )
    gen = {g["name"]: g for g in generative}
    for g in generative:
        if g["compare_to"] in gen and g.get("val_kl_onpolicy") is not None:
            base = gen[g["compare_to"]]
            out.append(
                {
                    "ablation": g["name"],
                    "baseline": base["name"],
                    "metric": "val_kl_onpolicy",
                    "value": g["val_kl_onpolicy"],
                    "baseline_value": base["val_kl_onpolicy"],
                    "delta": g["val_kl_onpolicy"] - base["val_kl_onpolicy"],
                }
            )
        if g["compare_to"] in gen:
            base = gen[g["compare_to"]]
            out.append(
                {
                    "ablation": g["name"],
                    "baseline": base["name"],
                    "metric": "val_kl",
                    "value": g["val_kl"],
                    "baseline_value": base["val_kl"],
                    "delta": g["val_kl"] - base["val_kl"],
                }
            )
    return out


def markdown(report: dict) -> str:
    lines = [
        f"# Compression report ({report['split']} split"
        + (f"; Bayes-optimal AUC {report['bayes_auc']:.4f})" if report["bayes_auc"] else ")"),
        "",
        "| stage | format | AUC | ΔAUC | log loss | ECE | Brier | mean \\|Δscore\\| vs input | "
        "params | bytes | × smaller | items/s | kernel | × speed |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    b = report.get("baseline")
    if b and not b["stale"]:
        lines.append(
            f"| baseline ({b['model']}) | - | {_auc(b)} | {b['auc_delta_vs_teacher']:+.4f} | "
            f"{b['logloss']:.4f} | - | - | - | - | - | - | - | - | - |"
        )
    for r in report["stages"]:
        if r["ablation"]:
            continue
        lines.append(_row(r))
    abl = [r for r in report["stages"] if r["ablation"]]
    if abl:
        lines += ["", "Ablation checkpoints:", "", lines[2], lines[3]]
        lines += [_row(r) for r in abl]
    lines += [
        "",
        "AUC: [95% interval, bootstrap resampling queries]. ECE: expected calibration error, "
        f"{CALIBRATION_BINS} equal-width bins, L1 (0: a score of 0.3 is engaged with 30% of the "
        "time); Brier: mean squared error of the score against the label.",
    ]
    if b and b["stale"]:
        lines.append(
            f"The baseline in {b['path']} was scored on other {report['split']} data: rerun "
            "`python -m compression baseline --data DIR` to show it here."
        )
    c = report["checks"]
    main = [r for r in report["stages"] if not r["ablation"] and r.get("ece") is not None]
    if c or main:
        lines += ["", "## Targets", ""]
    if main:
        lines.append(
            "- Calibration (ECE): " + ", ".join(f"{r['name']} {r['ece']:.4f}" for r in main) + "."
        )
        lines += calibration_targets(report["stages"])
        if "int8_bytes_ratio" in c:
            lines.append(
                f"- INT8 student: {c['int8_bytes_ratio']:.1f}x smaller than the bf16 teacher "
                f"(target >= 8x), AUC change {c['int8_auc_delta']:+.4f} (target within 0.005)."
            )
        if "redistill_recovery" in c:
            rec = c["redistill_recovery"]
            lines.append(
                f"- Pruning alone lost {c['prune_auc_lost']:.4f} AUC; re-distillation regained "
                f"{c['redistill_auc_regained']:.4f}"
                + (
                    f" ({rec:.0%} recovered, target >= 80%)."
                    if rec is not None
                    else " (pruning lost nothing, so there was nothing to recover)."
                )
            )
    if report["ablations"]:
        lines += [
            "",
            "## Ablations",
            "",
            "| ablation | baseline | metric | value | baseline | Δ |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for a in report["ablations"]:
            lines.append(
                f"| {a['ablation']} | {a['baseline']} | {a['metric']} | {a['value']:.4f} | "
                f"{a['baseline_value']:.4f} | {a['delta']:+.4f} |"
            )
    if report["generative"]:
        lines += [
            "",
            "Generative variant (validation loss per target token, lower is better):",
            "",
            "| stage | mode | KL to teacher before | KL after, on data | KL after, on own "
            "samples | CE on data |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for g in report["generative"]:
            lines.append(
                f"| {g['name']} | {g['mode']} | {g['val_kl_before']:.4f} | {g['val_kl']:.4f} | "
                f"{_num(g.get('val_kl_onpolicy'))} | {g['val_ce']:.4f} |"
            )
    if report.get("teacher_outputs"):
        lines += [
            "",
            "Stored teacher outputs (`teacher-outputs` stages) and the stages that distil from them:",
            "",
            "| stage | engine | top-k | queries | prompt tokens | MB | MB per M prompt tokens | "
            "engine s |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for o in report["teacher_outputs"]:
            lines.append(
                f"| {o['name']} | {o['engine']} | {o['top_k']} | {o['queries']:,} | "
                f"{o['prompt_tokens']:,} | {o['bytes'] / 1e6:.1f} | "
                f"{o['bytes_per_million_prompt_tokens'] / 1e6:.1f} | {o['engine_seconds']:.0f} |"
            )
        lines += [""] + [
            f"- {r['name']}: KD from {r['kd_source']}"
            + (f", {r['stage_seconds']:.0f} s" if r.get("stage_seconds") else "")
            for r in report["stages"] if r.get("kd_source")
        ]  # fmt: skip
    lines += profile_markdown(report["stages"])
    return "\n".join(lines) + "\n"


def calibration_targets(rows: list[dict]) -> list[str]:
    """Each calibrated stage against its input (target: ECE at most half the input's and at
    most 0.01, AUC unchanged), with the floor the split allows (the true probabilities' own
    ECE on these labels) where the data has true probabilities."""
    by = {r["name"]: r for r in rows}
    out = []
    for r in rows:
        src = by.get(r["from"])
        if r["stage"] != "calibrate" or src is None:
            continue
        met = r["ece"] <= min(src["ece"] / 2, 0.01)
        line = (
            f"- {r['name']} ({r['calibrator']} on validation): ECE {src['ece']:.4f} -> "
            f"{r['ece']:.4f} (target <= {min(src['ece'] / 2, 0.01):.4f}: "
            f"{'met' if met else 'not met'}), AUC {r['auc'] - src['auc']:+.5f}"
        )
        if r.get("bayes_ece") is not None and src.get("expected_ece") is not None:
            line += (
                f"; the true probabilities score ECE {r['bayes_ece']:.4f} on these labels, and "
                f"against the true probabilities (no label noise) the ECE goes "
                f"{src['expected_ece']:.4f} -> {r['expected_ece']:.4f}"
            )
        out.append(line + ".")
    return out


def _kd_source(info: dict, infos: dict) -> str | None:
    """Where a distillation stage's teacher signal came from (None: not a distillation)."""
    if info.get("type") not in ("distill", "distill-generative"):
        return None
    name = (info.get("spec") or {}).get("teacher_outputs")
    if not name:
        return "the live teacher"
    engine = (infos.get(name) or {}).get("summary", {}).get("engine", "?")
    return f"stored outputs ({name}, {engine})"


def _auc(r: dict) -> str:
    if r.get("auc_lo") is None:
        return f"{r['auc']:.4f}"
    return f"{r['auc']:.4f} [{r['auc_lo']:.4f}, {r['auc_hi']:.4f}]"


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def _row(r: dict) -> str:
    ips = f"{r['items_per_s']:.0f}" if r.get("items_per_s") else "-"
    spd = f"{r['speedup']:.2f}" if r.get("speedup") else "-"
    return (
        f"| {r['name']} | {r['format']} | {_auc(r)} | {r['auc_delta']:+.4f} | "
        f"{r['logloss']:.4f} | {_num(r.get('ece'))} | {_num(r.get('brier'))} | "
        f"{_num(r.get('score_mad_vs_input'))} | {r['params'] / 1e6:.2f}M | {r['bytes'] / 1e6:.2f} MB | "
        f"{r['bytes_ratio']:.1f} | {ips} | {r.get('kernel', '-')} | {spd} |"
    )


def plot(report: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = report["stages"]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    panels = [("bytes", "checkpoint size (MB, log)", 1e-6)]
    if all(r.get("items_per_s") for r in rows):
        panels.append(("items_per_s", "torch-engine items/s (standard workload)", 1.0))
    for ax, (key, label, scale) in zip(axes, panels, strict=False):
        for r in rows:
            x = r[key] * scale
            ax.scatter(x, r["auc"], marker="x" if r["ablation"] else "o")
            ax.annotate(
                r["name"], (x, r["auc"]), textcoords="offset points", xytext=(4, 4), fontsize=8
            )
        ax.axhline(rows[0]["auc"], color="gray", linestyle="--", linewidth=1, label="teacher")
        ax.axhspan(
            rows[0]["auc"] - 0.005,
            rows[0]["auc"],
            color="green",
            alpha=0.08,
            label="within 0.005 of teacher",
        )
        if key == "bytes":
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.set_xlabel(label)
        ax.set_ylabel(f"{report['split']} AUC")
        ax.legend(fontsize=8)
    if len(panels) == 1:
        axes[1].axis("off")
    _reliability(axes[2], [r for r in rows if not r["ablation"] and r.get("reliability")])
    fig.suptitle("slimrank compression: quality vs size and speed, and calibration")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _reliability(ax, rows: list[dict]) -> None:
    """The reliability diagram: per bin, the share of positives against the mean score."""
    ax.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="calibrated")
    for r in rows:
        b = r["reliability"]
        pts = [(c, a) for c, a, n in zip(b["confidence"], b["accuracy"], b["count"], strict=True)
               if n > 0]  # fmt: skip
        if pts:
            xs, ys = zip(*pts, strict=True)
            ax.plot(xs, ys, marker="o", markersize=3, linewidth=1,
                    label=f"{r['name']} (ECE {r['ece']:.3f})")  # fmt: skip
    ax.set_xlabel(f"mean score in bin ({CALIBRATION_BINS} bins)")
    ax.set_ylabel("share of positives")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
