"""``python -m compression data ...``: check a data folder against the contract, build one.

Kept apart from ``compression/__main__.py`` so the data commands grow without touching the
compression commands; ``add_data_commands`` registers them on the main parser.
"""

from __future__ import annotations

import argparse
import json
import sys


def _cmd_check(args: argparse.Namespace) -> int:
    from ranking.datafolder import DataError, check_folder, format_summary

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


def add_data_commands(sub: argparse._SubParsersAction) -> None:
    """Adds ``data {check,movielens}`` and ``baseline`` to the main parser's subcommands."""
    data = sub.add_parser("data", help="check a data folder against the contract, or build one")
    data_sub = data.add_subparsers(dest="data_command", required=True)

    c = data_sub.add_parser("check", help="validate a data folder and print its summary")
    c.add_argument("dir", help="folder with train/validation/test .jsonl or .parquet")
    c.add_argument("--tokenizer", help="tokenizer folder: adds text lengths in tokens")
    c.add_argument("--json", action="store_true", help="the summary as JSON")
    c.set_defaults(fn=_cmd_check)
