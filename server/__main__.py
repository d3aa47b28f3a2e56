"""``python -m server --model DIR | --models FILE [--engine vllm|torch] [--port P] ...``

Every flag is also an environment variable (``--max-items`` <-> ``SLIMRANK_MAX_ITEMS``); flags
win. Cheap checks (checkpoint folder, format vs engine) run before the port opens, so a bad
setup fails at once with a clear message; the model then loads behind ``/ready``.
"""

from __future__ import annotations

from ranking.allocator import loaded, preload

if __name__ == "__main__":  # not when imported (tests import main)
    preload()  # first: this process may run again on tcmalloc, before torch is imported

import argparse
import logging
import sys

from pydantic import ValidationError

from server.cli import add_settings_flags, settings_from
from server.request_ids import RequestIdFilter
from server.settings import ServerSettings

log = logging.getLogger("slimrank.server")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m server",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_settings_flags(p)
    return p


def preflight(settings: ServerSettings) -> None:
    """Fails fast, before the port opens, on what can be known without loading weights: the
    models file, each version's format against its engine and its manifest (a missing one is
    a warning), whether the versions fit in memory, the key file."""
    from ranking.manifest import ManifestMissing, verify_manifest
    from server.engines import check_supported
    from server.memory import check_fits

    file = settings.models_file()
    specs = []
    for entry in file.models:
        choice = settings.resolved_engine(entry)
        try:
            check_supported(entry.path, choice.engine)
        except Exception as exc:
            raise type(exc)(f"{entry.key}: {exc}") from None
        log.info("%s: engine %s: %s", entry.key, choice.engine, choice.why)
        if settings.verify_checkpoint:
            try:
                verify_manifest(entry.path)
            except ManifestMissing as exc:
                log.warning("%s: checkpoint not verified: %s", entry.key, exc)
        specs.append((entry.key, settings.spec_for(entry)))
    for line in check_fits(specs, settings.max_memory_gb):
        log.info("memory estimate: %s", line)
    log.info("memory allocator: %s", loaded())
    settings.accepted_keys()  # an unreadable key file fails here
    if settings.fault_batches:
        log.warning("fault injection on: engine batches %s will fail", settings.fault_batches)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except ValidationError as exc:
        print(f"error: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s [%(request_id)s]: %(message)s",
    )
    for handler in logging.getLogger().handlers:  # the request's id on every line
        handler.addFilter(RequestIdFilter())
    try:
        preflight(settings)
    except Exception as exc:  # noqa: BLE001 - any failure here is the user's setup
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import uvicorn

    from server.app import begin_drain, create_app
    from server.connection import TimeoutHttpProtocol
    from server.lifecycle import DrainingServer

    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        http=TimeoutHttpProtocol.configured(settings),
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
        access_log=False,  # our own structured line per request replaces it
    )
    DrainingServer(config, lambda: begin_drain(app), settings.drain_window_s).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
