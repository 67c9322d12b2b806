"""Errors in OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``, and the app's handlers.

Every message is written by us and never repeats a value from the request (a field's *name* may appear:
the client needs to know which field was refused). Unknown fields are a 400 that names them, as OpenAI
answers them; a body that is not the schema's shape (wrong types, missing fields) stays a 422.
"""

from __future__ import annotations

import logging

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
MAX_NAME = 64  # longest field name quoted back in a message


class ClientError(Exception):
    """A request the server refuses; ``message`` is written by us and never contains a value of the input."""

    def __init__(self, message: str, status: int = 400, *, param: str | None = None, code: str | None = None
                 ) -> None:
        super().__init__(message)
        self.message, self.status, self.param, self.code = message, status, param, code


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def field_path(loc: tuple) -> str:
    """``("body", "messages", 0, "name")`` → ``messages[0].name`` (OpenAI's way of naming a nested field)."""
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        name = "".join(c for c in str(part) if c.isalnum() or c in "_-")  # a name, never markup or a value
        out += f"[{part}]" if isinstance(part, int) else (f".{name}" if out else name)
    return out[:MAX_NAME] or "body"


async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    unknown = [field_path(tuple(e.get("loc", ()))) for e in errors if e.get("type") == "extra_forbidden"]
    if unknown:
        names = ", ".join(unknown[:3]) + (" …" if len(unknown) > 3 else "")
        return JSONResponse(error_body(f"unknown field{'s' if len(unknown) > 1 else ''} {names}: this server does "
                                       "not implement it (see the server docs for the fields it takes)",
                                       param=unknown[0], code="unknown_field"), status_code=400)
    parts = []
    for err in errors[:3]:
        parts.append(f"{field_path(tuple(err.get('loc', ())))}: {str(err.get('msg', 'invalid'))[:100]}")
    return JSONResponse(error_body("invalid request: " + "; ".join(parts)), status_code=422)


async def client_error(request: Request, exc: ClientError) -> JSONResponse:
    kind = "rate_limit_error" if exc.status == 429 else "invalid_request_error"
    return JSONResponse(error_body(exc.message, kind, exc.param, exc.code), status_code=exc.status)


async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return JSONResponse(error_body(str(exc.detail)[:200]), status_code=exc.status_code)


async def server_error(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return JSONResponse(error_body("internal server error", "server_error"), status_code=500)


def install(app) -> None:
    """Route every error of ``app`` through the handlers above."""
    app.add_exception_handler(RequestValidationError, invalid_body)
    app.add_exception_handler(ClientError, client_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, server_error)
