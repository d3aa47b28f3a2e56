"""``python -m compression data ...``: check a data folder against the contract, build one,
train its tokenizer; and ``python -m compression baseline``, the non-LLM baseline on a data
folder.

Kept apart from ``compression/__main__.py`` so the data commands grow without touching the
compression commands; ``add_data_commands`` registers them on the main parser.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from compression.data.tokenizer import TOKENIZER_VOCAB


def _cmd_check(args: argparse.Namespace) -> int:
    from ranking.data_audit import check_folder, format_summary
    from ranking.datafolder import DataError

    tokenizer = None
    if args.tokenizer:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    try:
        summary = check_folder(args.dir, tokenizer=tokenizer)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0


def _cmd_tokenizer(args: argparse.Namespace) -> int:
    from compression.data.tokenizer import train_folder_tokenizer
    from ranking.datafolder import DataError
    from ranking.task import TaskConfigError

    folder = Path(args.dir)
    if not folder.is_dir():
        print(f"error: no data folder at {folder}", file=sys.stderr)
        return 2
    if (folder / "tokenizer").exists() and not args.force:
        print(f"error: {folder / 'tokenizer'} already exists; --force replaces it",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        tok = train_folder_tokenizer(folder, args.vocab_size)
    except (DataError, TaskConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"[tokenizer] {folder / 'tokenizer'}: {len(tok):,} tokens, trained on the train split")
    return 0


def _cmd_movielens(args: argparse.Namespace) -> int:
    from compression.data.movielens import MovieLensConfig, MovieLensError, build_movielens

    cfg = MovieLensConfig(
        history=args.history,
        items_per_query=args.items_per_query,
        min_history=args.min_history,
        val_share=args.val_share,
        test_share=args.test_share,
        leave_last_out=args.leave_last_out,
        popularity=args.popularity,
        profile=args.profile,
        affinity=args.affinity,
        stats=args.stats,
        vocab_size=args.vocab_size,
        max_users=args.max_users,
    )
    try:
        meta = build_movielens(args.out, cfg, source=args.source, force=args.force)
    except (MovieLensError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "reused" if meta["reused"] else f"built in {meta['build_seconds']:.0f}s"
    print(f"[movielens] {args.out} {verb}; cutoffs T1={meta['cutoffs']['T1']} "
          f"T2={meta['cutoffs']['T2']}")  # fmt: skip
    for split, c in meta["splits"].items():
        print(f"[movielens]   {split:<10} {c['rows']:>7,} pairs  {c['queries']:>6,} queries  "
              f"{c['members']:>4} users  positive rate {c['positive_rate']}")  # fmt: skip
    if meta["splits"]["test"]["rows"] < 5000:
        print("[movielens] warning: fewer than 5,000 test pairs: AUC intervals will be wide")
    print(f"[movielens] {meta['terms']}")
    return 0


def _cmd_render(args: argparse.Namespace) -> int:
    from compression.data.render import load_config, render_folder
    from ranking.datafolder import DataError
    from ranking.task import TaskConfigError

    out = Path(args.out)
    existing = [p.name for p in out.glob("*") if p.suffix in (".jsonl", ".parquet")] + [
        p.name for p in (out / "meta.json", out / "tokenizer") if p.exists()
    ]
    if existing and not args.force:
        print(f"error: {out} already holds {', '.join(sorted(existing))}; --force replaces it",
              file=sys.stderr)  # fmt: skip
        return 2
    try:
        meta = render_folder(load_config(args.config), out, progress=not args.no_progress)
    except (DataError, TaskConfigError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    cut = meta["cutoffs"]
    how = f"cutoffs T1={cut['T1']} T2={cut['T2']}" if cut else "last interactions per member"
    print(f"[render] {out} in {meta['build_seconds']:.0f}s; split by {how}")
    for split, c in meta["splits"].items():
        print(f"[render]   {split:<10} {c['rows']:>7,} pairs  {c['queries']:>6,} queries  "
              f"{c['members']:>5} members  positive rate {c['positive_rate']}  "
              f"{meta['shared_item_text'].get(split) or 0} rows share their item text with "
              "another id")  # fmt: skip
    if meta["repeated_interactions_dropped"]:
        print(f"[render] {meta['repeated_interactions_dropped']:,} repeated (member, item) "
              "interactions dropped (each pair keeps its first)")  # fmt: skip
    return 0


def _cmd_baseline(args: argparse.Namespace) -> int:
    from compression.baseline import BASELINE_FILE, run_baseline
    from ranking.datafolder import DataError

    try:
        result = run_baseline(args.data, seed=args.seed, bootstrap=args.bootstrap)
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.json or Path(args.data) / BASELINE_FILE)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"[baseline] LightGBM ({', '.join(result['feature_sets'])}; "
          f"{len(result['features'])} features), {result['best_iteration']} trees, trained in "
          f"{result['train_seconds']:.0f}s")  # fmt: skip
    for split in ("validation", "test"):
        r = result[split]
        print(f"[baseline]   {split:<10} AUC {r['auc']:.4f} [{r['auc_lo']:.4f}, {r['auc_hi']:.4f}]"
              f"  log loss {r['logloss']:.4f}  NDCG@10 {r['ndcg@10']:.4f}  ({r['rows']:,} "
              f"pairs, {r['queries']:,} queries)")  # fmt: skip
    print(f"[baseline] -> {out}")
    return 0


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Adds ``data {check,tokenizer,render,movielens}`` and ``baseline`` to the main parser's subcommands."""
    data = sub.add_parser("data", help="check a data folder against the contract, or build one")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    c = data_sub.add_parser("check", help="validate a data folder and print its summary")
    c.add_argument("dir", help="folder with train/validation/test .jsonl or .parquet")
    c.add_argument("--tokenizer", help="tokenizer folder: adds text lengths in tokens")
    c.add_argument("--json", action="store_true", help="the summary as JSON")
    c.set_defaults(fn=_cmd_check)

    t = data_sub.add_parser(
        "tokenizer", help="train DIR/tokenizer on DIR's train split (as the builders do)"
    )
    t.add_argument("dir", help="a data folder (the contract)")
    t.add_argument("--vocab-size", type=int, default=TOKENIZER_VOCAB, help="tokenizer vocabulary")
    t.add_argument("--force", action="store_true", help="replace an existing DIR/tokenizer")
    t.set_defaults(fn=_cmd_tokenizer)

    r = data_sub.add_parser(
        "render",
        help="tables (interactions, member and item attributes) to a checked data folder, "
        "through Jinja templates, split by time",
    )
    r.add_argument("config", help="render config YAML (docs/data.md, 'From tables')")
    r.add_argument("--out", required=True, help="the data folder to write")
    r.add_argument("--force", action="store_true", help="replace a folder already there")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    r.set_defaults(fn=_cmd_render)

    from compression.data.movielens import STATS, MovieLensConfig

    d = MovieLensConfig()
    m = data_sub.add_parser(
        "movielens", help="build MovieLens-100k ranking prompts (needs the recbole package)"
    )
    m.add_argument("--out", default="artifacts/movielens/data")
    m.add_argument("--history", type=int, default=d.history, help="ratings shown per query")
    m.add_argument("--items-per-query", type=int, default=d.items_per_query)
    m.add_argument("--min-history", type=int, default=d.min_history,
                   help="ratings a query needs before its cutoff")  # fmt: skip
    m.add_argument("--val-share", type=float, default=d.val_share,
                   help="share of all ratings in [T1, T2)")  # fmt: skip
    m.add_argument("--test-share", type=float, default=d.test_share,
                   help="share of all ratings from T2 on")  # fmt: skip
    m.add_argument("--vocab-size", type=int, default=d.vocab_size, help="tokenizer vocabulary")
    m.add_argument("--leave-last-out", action="store_true",
                   help="also write test_llo (each user's last ratings; overlaps train)")  # fmt: skip
    m.add_argument("--popularity", action="store_true",
                   help="items say how their train-split ratings went ('liked by 70%% of 212')")  # fmt: skip
    m.add_argument("--profile", action="store_true",
                   help="queries say how the user's earlier ratings went, overall and per genre "
                        "(--stats means: overall and over the recent ones)")  # fmt: skip
    m.add_argument("--affinity", action="store_true",
                   help="items say how the user rated the movie's genres before ('you liked "
                        "80%% of 12 in its genres')")  # fmt: skip
    m.add_argument("--stats", choices=STATS, default=d.stats,
                   help="the hints' wording: liked shares to 10%% ('liked by 70%% of 212') or "
                        "mean ratings ('rated 3.8 on average by 212')")  # fmt: skip
    m.add_argument("--max-users", type=int, help="the first N users only (a quick slice)")
    m.add_argument("--source", help="folder of ml-100k.{user,item,inter} (default: recbole's)")
    m.add_argument("--force", action="store_true", help="rebuild even if the folder matches")
    m.set_defaults(fn=_cmd_movielens)

    b = sub.add_parser("baseline", help="train and score the non-LLM baseline (LightGBM)")
    b.add_argument("--data", required=True, help="a data folder (the contract)")
    b.add_argument(
        "--json",
        help="write the metrics here (default: DATA/baseline.json, which "
        "the compression report shows next to the LLM rows)",
    )
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--bootstrap", type=int, default=1000, help="replicates for the AUC interval")
    b.set_defaults(fn=_cmd_baseline)
