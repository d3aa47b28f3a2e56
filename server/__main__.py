"""``python -m server --model DIR [--engine vllm|torch] [--host H] [--port P] ...``

Every flag is also an environment variable (``--max-items`` <-> ``SLIMRANK_MAX_ITEMS``); flags
win. Cheap checks (checkpoint folder, format vs engine) run before the port opens, so a bad
setup fails at once with a clear message; the model then loads behind ``/ready``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import typing

from pydantic import ValidationError

from server.settings import ServerSettings


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in ServerSettings.model_fields.items():
        flag = "--" + name.replace("_", "-")
        ann = field.annotation
        choices = typing.get_args(ann) if typing.get_origin(ann) is typing.Literal else None
        kind = {int: int, float: float}.get(ann, str)
        help_ = f"{field.description or ''} [env SLIMRANK_{name.upper()}; default {field.default}]"
        p.add_argument(flag, dest=name, type=kind, choices=choices, default=None, help=help_)
    return p


def preflight(settings: ServerSettings) -> None:
    """Fails fast, before the port opens, on what can be known without loading weights."""
    from server.engines import check_supported

    check_supported(settings.model, settings.engine)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = ServerSettings(**{k: v for k, v in vars(args).items() if v is not None})
    except ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        preflight(settings)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's setup
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from server.app import create_app

    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        access_log=False,  # our own structured line per request replaces it
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
