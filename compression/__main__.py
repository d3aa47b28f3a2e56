"""``python -m compression <command>``: the offline side of slimrank.

Commands:
  demo       build the embedded benchmark and train the demo teacher (``make demo``)
  evaluate   score a checkpoint on a benchmark split and print the quality metrics
"""

from __future__ import annotations

import argparse
import json
import sys
import time


def _cmd_demo(args: argparse.Namespace) -> int:
    from compression.teacher import DemoConfig, build_demo

    cfg = DemoConfig.tiny() if args.tiny else DemoConfig()
    t0 = time.time()
    s = build_demo(args.out, cfg, force=args.force)
    test = s["test"]
    print(
        f"[demo] teacher {'reused' if s['reused'] else 'trained'}: {args.out}/teacher\n"
        f"[demo]   parameters     {s['params']:,} ({s['params'] / 1e6:.1f}M, {s['format']})\n"
        f"[demo]   test AUC       {test['auc']:.4f}\n"
        f"[demo]   Bayes AUC      {s['bayes_auc_test']:.4f}  (gap {s['auc_gap']:.4f})\n"
        f"[demo]   expected AUC   {test.get('expected_auc', float('nan')):.4f}  (against the true "
        f"probabilities; non-personalised oracle {s.get('main_effects_auc_test') or float('nan'):.4f})\n"
        f"[demo]   test log loss  {test['logloss']:.4f}   NDCG@10 {test['ndcg@10']:.4f}\n"
        f"[demo]   training time  {s['train_seconds']:.0f}s; build time {s['total_seconds']:.0f}s; "
        f"this run {time.time() - t0:.0f}s"
    )
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from ranking.checkpoint import CheckpointError, load_checkpoint
    from ranking.dataset import encode_groups
    from ranking.evaluation import evaluate
    from ranking.scorer import TorchScorer
    from ranking.synthetic import read_split

    dtype = {"auto": None, "bf16": torch.bfloat16, "fp32": torch.float32}[args.dtype]
    try:
        model, tok, task, info = load_checkpoint(args.model, dtype=dtype)
        rows = read_split(args.data, args.split)
    except (CheckpointError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.limit:
        rows = rows[: args.limit]
    t0 = time.time()
    metrics = evaluate(
        TorchScorer(model, tok, task), encode_groups(rows, tok, task), progress=not args.json
    )
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

    e = sub.add_parser("evaluate", help="score a checkpoint on a benchmark split")
    e.add_argument("--model", required=True)
    e.add_argument("--data", required=True)
    e.add_argument("--split", default="test", choices=["train", "validation", "test"])
    e.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    e.add_argument("--limit", type=int, default=0, help="first N rows only")
    e.add_argument("--json", action="store_true", help="one JSON object on stdout")
    e.set_defaults(fn=_cmd_evaluate)

    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
