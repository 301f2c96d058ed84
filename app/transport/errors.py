"""The contract's error body, `{"error": code, "error_description": text}`, in one place.

The listeners refuse some requests before the app sees them (`limits`, `server`); app/api's
error handlers answer the rest. Both render the body with `error_body`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse


def error_body(code: str, description: str) -> dict[str, str]:
    """The JSON object of every error the broker answers."""
    return {"error": code, "error_description": description}


def error_json(
    status: int, code: str, description: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """A contract error response."""
    return JSONResponse(
        error_body(code, description),
        status_code=status,
        headers={"Cache-Control": "no-store", **(headers or {})},
    )
