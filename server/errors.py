"""One error shape for every failure: ``{"error": {"type", "message"}}``, 4xx for the client's
fault, 5xx for ours. ``type`` values are stable: clients and dashboards match on them.

Messages never carry request text or exception text: a request's text is member data, and an
exception's text can quote it (another tenant could read it in a shared error dashboard). An
unexpected failure is a 500 ``internal_error`` with a request id; the detail goes to the
server log under that id."""

from __future__ import annotations

import logging
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from server.protocol import ErrorResponse
from server.request_ids import current_id

log = logging.getLogger("slimrank.server")

# the error statuses the scoring routes document in the OpenAPI spec
ERROR_RESPONSES = {
    code: {"model": ErrorResponse} for code in (400, 401, 404, 413, 422, 429, 500, 503, 504)
}


class ApiError(HTTPException):
    """An error with an HTTP status and a stable ``type``. An HTTPException so that FastAPI
    passes it through unchanged when it is raised while the body is read (the body limit)."""

    def __init__(self, status: int, type_: str, message: str, headers: dict | None = None):
        super().__init__(status, message, headers)
        self.status, self.type, self.message = status, type_, message


def error_response(
    status: int, type_: str, message: str, headers: dict | None = None
) -> JSONResponse:
    """The error shape; inside a request it carries the request's id."""
    detail = {"type": type_, "message": message}
    rid = current_id()
    if rid:
        detail["request_id"] = rid
    return JSONResponse(
        ErrorResponse(error=detail).model_dump(exclude_none=True),
        status_code=status,
        headers=headers,
    )


async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
    return error_response(exc.status, exc.type, exc.message, exc.headers)


def _field_path(loc) -> str:
    """pydantic's ``("body", "items", 1)`` -> ``items[1]``: the form the service's own limit
    messages use (``items[3] is empty``)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
    errs = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errs):
        return error_response(400, "invalid_json", f"body is not valid JSON: {errs[0].get('msg')}")
    parts = []
    for e in errs[:5]:
        loc = _field_path(e.get("loc", ()))
        parts.append(f"{loc or 'body'}: {e.get('msg')}")
    return error_response(422, "invalid_request", "; ".join(parts))


async def _http(_: Request, exc: HTTPException) -> JSONResponse:
    kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, kind, str(exc.detail), exc.headers)


def internal_error(exc: BaseException) -> JSONResponse:
    """500 with a generic message and the request's id; the exception goes to the log only,
    under that id."""
    rid = current_id() or uuid.uuid4().hex
    log.error("internal error (request id %s)", rid, exc_info=exc)
    return error_response(
        500, "internal_error", f"internal error (request id {rid})", {"X-Request-Id": rid}
    )


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    return internal_error(exc)


def install_error_handlers(app: FastAPI) -> None:
    """Every error the app can produce goes out in the one shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    app.add_exception_handler(Exception, _internal)
