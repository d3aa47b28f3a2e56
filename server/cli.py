"""Command-line flags generated from ``ServerSettings``: one definition of every option, for the
server (all of them) and for batch scoring (the ones that decide how a model scores)."""

from __future__ import annotations

import argparse
import typing
from collections.abc import Iterable

from server.settings import ServerSettings

LIST_FLAGS = {"api_keys": "--api-key", "fault_batches": "--fault-batch"}


def add_settings_flags(p: argparse.ArgumentParser, names: Iterable[str] | None = None) -> None:
    """A flag per settings field (``max_items`` -> ``--max-items``), default None so that the
    environment (``SLIMRANK_MAX_ITEMS``) and then the field's default apply; ``names``: only
    those fields."""
    wanted = set(names) if names is not None else None
    for name, field in ServerSettings.model_fields.items():
        if wanted is not None and name not in wanted:
            continue
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        default = field.default if field.default_factory is None else field.default_factory()
        help_ = f"{field.description or ''} [env SLIMRANK_{name.upper()}; default {default}]"
        if name in LIST_FLAGS:  # repeatable: --api-key A --api-key B
            kind = int if typing.get_args(ann) == (int,) else str
            p.add_argument(
                LIST_FLAGS[name], dest=name, type=kind, action="append", default=None, help=help_
            )
            continue
        if ann is bool:  # --metrics-public / --no-verify-checkpoint
            p.add_argument(
                flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_
            )
            continue
        choices = typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None
        kind = {int: int, float: float}.get(ann, str)
        p.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_)


def settings_from(args: argparse.Namespace, names: Iterable[str] | None = None) -> ServerSettings:
    """The settings the parsed flags give (unset flags: environment, then defaults)."""
    fields = set(ServerSettings.model_fields) if names is None else set(names)
    return ServerSettings(**{k: v for k, v in vars(args).items() if k in fields and v is not None})
