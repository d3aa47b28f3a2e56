"""``python -m compression <command>``: the offline side of slimrank.

Commands:
  demo       build the embedded benchmark and train the demo teacher (``make demo``)
  teacher    train a teacher with the demo's code on any data folder (the contract)
  import     a Hugging Face causal LM folder -> a slimrank checkpoint (prompt preset)
  run        run a compression recipe (YAML): its stages in order, resumably, then the report
  distill    one distillation stage: teacher -> student checkpoint
  finetune   train a base or imported model on the ranking data (optional LoRA, merged)
  prune      one OSSCAR structured-pruning stage
  quantize   one llmcompressor quantization stage (a scheme of compression.quantize.SCHEMES)
  evaluate   score a checkpoint on a benchmark split and print the quality metrics
  verify     serve every checkpoint of a recipe's output (torch and vllm engines), compare scores
  data       check a data folder against the contract (``data check``), or build one
             (``data movielens``)
  baseline   train and score the non-LLM baseline (LightGBM) on a data folder
  profile    share of a checkpoint's scoring time per module type
"""

from __future__ import annotations

from ranking.allocator import preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # first: this process may run again on tcmalloc, before torch is imported

import argparse
import json
import os
import sys
import time
from pathlib import Path

from compression.data.cli import add_data_commands
from compression.profile import add_profile_parser


def _is_main() -> bool:
    """Whether this process reports (rank 0 under ``torchrun``, or the only process)."""
    from compression import distributed

    return distributed.is_main()


def _cmd_demo(args: argparse.Namespace) -> int:
    from compression.teacher import DemoConfig, build_demo

    cfg = DemoConfig.tiny() if args.tiny else DemoConfig()
    t0 = time.time()
    s = build_demo(args.out, cfg, force=args.force)
    if not _is_main():
        return 0
    test = s["test"]
    print(
        f"[demo] teacher {'reused' if s['reused'] else 'trained'}: {args.out}/teacher\n"
        f"[demo]   parameters     {s['params']:,} ({s['params'] / 1e6:.1f}M, {s['format']})\n"
        f"[demo]   test AUC       {test['auc']:.4f}  (the true probabilities on the same labels "
        f"{test['bayes_auc_sampled']:.4f}: gap {s['auc_gap']:.4f})\n"
        f"[demo]   expected AUC   {test['expected_auc']:.4f}  (over labels; Bayes-optimal "
        f"{test['bayes_auc']:.4f}: gap {s['auc_gap_expected']:.4f}; non-personalised oracle "
        f"{s['main_effects_auc_test']:.4f})\n"
        f"[demo]   learned terms  "
        + "  ".join(f"{k} {v['weight']:.2f}" for k, v in s["effects"].items())
        + "  (1 = as in the truth; worth in AUC: "
        + " ".join(f"{v['worth']:.3f}" for v in s["effects"].values())
        + ")\n"
        f"[demo]   test log loss  {test['logloss']:.4f}   NDCG@10 {test['ndcg@10']:.4f}\n"
        f"[demo]   training time  {s['train_seconds']:.0f}s; build time {s['total_seconds']:.0f}s; "
        f"this run {time.time() - t0:.0f}s"
    )
    return 0


def _cmd_teacher(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from compression.teacher import PRESETS, train_teacher

    cfg = PRESETS[args.preset]()
    weight = cfg.baseline_weight if args.baseline_weight is None else args.baseline_weight
    if not 0.0 <= weight <= 1.0:
        print(f"error: --baseline-weight must be in [0, 1], got {weight}", file=sys.stderr)
        return 2
    train_cfg = replace(
        cfg.train,
        **{k: v for k, v in (("steps", args.steps), ("batch_queries", args.batch_queries),
                             ("eval_every", args.eval_every)) if v is not None},
    )  # fmt: skip
    try:
        s = train_teacher(args.data, args.out, cfg.model, train_cfg, force=args.force,
                          baseline_weight=weight)  # fmt: skip
    except FileNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if not _is_main():
        return 0
    test = s["test"]
    print(
        f"[teacher] {'reused' if s['reused'] else 'trained'}: {args.out}\n"
        f"[teacher]   parameters     {s['params']:,} ({s['params'] / 1e6:.1f}M, {s['format']})\n"
        f"[teacher]   test AUC       {test['auc']:.4f}   log loss {test['logloss']:.4f}   "
        f"NDCG@10 {test['ndcg@10']:.4f}\n"
        f"[teacher]   training time  {s['train_seconds']:.0f}s; total {s['total_seconds']:.0f}s"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ranking.checkpoint import DTYPES, CheckpointError
    from ranking.datafolder import DataError
    from ranking.evaluation import evaluate_checkpoint
    from ranking.manifest import ManifestMissing, verify_manifest

    t0 = time.time()
    try:
        if args.verify_checkpoint:
            try:
                verify_manifest(args.model)
            except ManifestMissing as exc:
                print(f"warning: checkpoint not verified: {exc}", file=sys.stderr)
        metrics, _, info = evaluate_checkpoint(
            args.model,
            args.data,
            args.split,
            dtype=DTYPES[args.dtype],
            limit=args.limit,
            progress=not args.json,
        )
    except (CheckpointError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    metrics.update(
        model=str(info.path),
        format=info.format,
        params=info.params,
        split=args.split,
        seconds=round(time.time() - t0, 2),
    )
    if args.json:
        print(json.dumps(metrics))
    else:
        for k, v in metrics.items():
            print(f"{k:>14}: {v:.4f}" if isinstance(v, float) else f"{k:>14}: {v}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    from compression.pipeline import run_recipe
    from compression.recipe import RecipeError, check_recipe_paths, load_recipe

    try:
        recipe = load_recipe(args.recipe, check_paths=not (args.teacher or args.data))
    except RecipeError as exc:
        print(f"error: bad recipe: {exc}", file=sys.stderr)
        return 2
    for key in ("teacher", "data", "output"):  # e.g. a container's mounted volume
        if getattr(args, key):
            setattr(recipe, key, Path(getattr(args, key)))
    if args.teacher or args.data:
        try:
            check_recipe_paths(recipe)
        except RecipeError as exc:
            print(f"error: bad recipe: {exc}", file=sys.stderr)
            return 2
    if args.check:
        n = sum(1 for s in recipe.stages if args.ablations or not s.ablation)
        print(f"recipe OK: {n} stages -> {recipe.output}")
        return 0
    run_recipe(recipe, ablations=args.ablations)
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from compression.verify import verify_recipe_output

    result = verify_recipe_output(Path(args.output), Path(args.data), args.queries, args.ablations)
    print(
        f"[verify] {'all checkpoints serve with matching scores' if result['all_ok'] else 'MISMATCH'}"
        f" -> {args.output}/serving_check.json"
    )
    return 0 if result["all_ok"] else 1


def _cmd_import(args: argparse.Namespace) -> int:
    from compression.importer import ModelImportError, import_model

    try:
        report = import_model(args.model, args.preset, args.out, args.instruction, args.copy)
    except ModelImportError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print("\n".join(report.lines()))
    return 0


def _overrides(pairs: list[str]) -> dict:
    """``key=value`` pairs (values parsed as YAML: numbers, booleans, mappings)."""
    import yaml

    out = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"error: expected key=value, got {pair!r}")
        out[key] = yaml.safe_load(value)
    return out


def _stage_cmd(kind: str):
    """One recipe stage run on its own: a one-stage recipe built from the command line."""

    def run(args: argparse.Namespace) -> int:
        from dataclasses import replace

        from compression import distributed
        from compression.recipe import (
            Recipe,
            RecipeError,
            Stage,
            check_recipe_paths,
            parse_stage_config,
        )
        from compression.stages import STAGES

        spec = _overrides(args.set)
        if getattr(args, "scheme", None):
            spec.setdefault("scheme", args.scheme)
        model, out = Path(args.model), Path(args.out)
        try:
            cfg = parse_stage_config(kind, spec, kind)
            stage = Stage(out.name, kind, "teacher", cfg, spec=spec)
            checked = Path(getattr(args, args.check_against))
            recipe = Recipe(Path("<cli>"), checked, Path(args.data), out.parent, [stage], {})
            check_recipe_paths(recipe)
        except RecipeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        recipe = replace(recipe, teacher=Path(args.teacher or args.model))
        t0 = time.time()
        # one stage on its own does not resume: ``compression run`` keys resumable state
        ctx = replace(recipe.context(stage), work=None)
        summary = STAGES[kind].run(ctx, model, out)
        summary.pop("curve", None)
        seconds = round(time.time() - t0, 1)
        if distributed.is_main():
            print(json.dumps({"out": args.out, "seconds": seconds, **summary}, default=str))
        return 0

    return run


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m compression",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = p.add_subparsers(dest="command", required=True)

    d = sub.add_parser("demo", help="build the demo benchmark and teacher")
    d.add_argument("--out", default="artifacts/demo")
    d.add_argument("--tiny", action="store_true", help="test-sized config (seconds)")
    d.add_argument("--force", action="store_true", help="retrain even if a teacher exists")
    d.set_defaults(fn=_cmd_demo)

    t = sub.add_parser("teacher", help="train a teacher (the demo's code) on a data folder")
    t.add_argument("--data", required=True, help="a data folder with a tokenizer/ (the contract)")
    t.add_argument("--out", required=True, help="the teacher checkpoint folder")
    t.add_argument("--preset", default="demo", choices=["demo", "movielens", "tiny"],
                   help="model shape and training settings (compression/teacher.py)")  # fmt: skip
    t.add_argument("--steps", type=int, help="override the preset's training steps")
    t.add_argument("--batch-queries", type=int, help="override the preset's queries per step")
    t.add_argument("--eval-every", type=int, help="validation AUC every N steps (0: never)")
    t.add_argument("--baseline-weight", type=float, metavar="W",
                   help="learn from (1-W) x label + W x the LightGBM baseline's out-of-fold "
                   "probability on each train row (knowledge distillation from the tabular "
                   "model; 0: labels only; default: the preset's)")  # fmt: skip
    t.add_argument("--force", action="store_true", help="retrain even if a teacher matches")
    t.set_defaults(fn=_cmd_teacher)

    e = sub.add_parser("evaluate", help="score a checkpoint on a benchmark split")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", help="a split of the data folder (e.g. test_llo)")
    e.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    e.add_argument("--limit", type=int, default=0, help="first N rows only")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")
    e.add_argument(
        "--no-verify-checkpoint",
        dest="verify_checkpoint",
        action="store_false",
        help="skip the manifest check (sha256 of every file) before loading",
    )
    e.set_defaults(fn=_cmd_evaluate)

    from ranking.task import PRESETS

    i = sub.add_parser("import", help="a Hugging Face causal LM folder -> a slimrank checkpoint")
    i.add_argument("--model", required=True, help="local Hugging Face model folder")
    i.add_argument("--preset", default="plain", choices=list(PRESETS), help="prompt layout")
    i.add_argument("--instruction", help="the template's default instruction (if it has one)")
    i.add_argument("--out", required=True, help="the checkpoint folder to write")
    i.add_argument("--copy", action="store_true", help="copy the weights (default: symlink)")
    i.set_defaults(fn=_cmd_import)

    r = sub.add_parser("run", help="run a compression recipe (YAML)")
    r.add_argument("recipe")
    r.add_argument("--ablations", action="store_true", help="also run the recipe's ablations")
    r.add_argument("--output", help="override the recipe's output folder")
    r.add_argument("--teacher", help="override the recipe's teacher checkpoint")
    r.add_argument("--data", help="override the recipe's benchmark folder")
    r.add_argument("--check", action="store_true", help="validate the recipe and exit")
    r.set_defaults(fn=_cmd_run)

    for kind, help_ in (
        ("distill", "distil a teacher into a student (keys of DistillConfig via --set)"),
        ("finetune", "train a model on the ranking data (keys of FinetuneConfig via --set)"),
        ("prune", "OSSCAR structured pruning (keys of PruneConfig via --set)"),
        ("quantize", "llmcompressor quantization into compressed-tensors"),
    ):
        c = sub.add_parser(kind, help=help_)
        c.add_argument("--model", required=True, help="input checkpoint (the student for distill)")
        c.add_argument("--out", required=True, help="output checkpoint folder")
        c.add_argument("--data", required=True, help="benchmark folder (train/validation)")
        # the checkpoint the stage's settings are checked against: the teacher for distill
        # (student overrides apply to its config), else the input model
        c.set_defaults(check_against="teacher" if kind == "distill" else "model")
        if kind == "distill":
            c.add_argument("--teacher", required=True)
        elif kind == "prune":
            c.add_argument("--teacher", help="distils between gradual steps (default: --model)")
        else:
            c.set_defaults(teacher=None)
        if kind == "quantize":
            from compression.quantize import SCHEMES

            c.add_argument("--scheme", default="int8", help=" | ".join(SCHEMES))
        c.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="a stage setting, e.g. --set steps=300 --set intermediate_size=0.5",
        )
        c.set_defaults(fn=_stage_cmd(kind))

    v = sub.add_parser("verify", help="serve every finished stage and compare engine scores")
    v.add_argument("--output", required=True, help="a recipe's output folder")
    v.add_argument("--data", required=True)
    v.add_argument("--queries", type=int, default=4, help="test-split queries to rank")
    v.add_argument("--ablations", action="store_true", help="also the ablation checkpoints")
    v.set_defaults(fn=_cmd_verify)

    add_data_commands(sub)
    add_profile_parser(sub)
    args = p.parse_args(argv)
    rc = args.fn(args)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: no rank exits before the others
        from compression import distributed

        distributed.finish()
    return rc


if __name__ == "__main__":
    sys.exit(main())
