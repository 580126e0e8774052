"""The provider's HTTP error envelopes, in its current (string code) and older (integer) form."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse

# status → (current code, current type, older type); the older code is the status itself.
_KNOWN: dict[int, tuple[str, str, str]] = {
    400: ("invalid_request", "invalid_request_error", "invalid_request_error"),
    401: ("unauthorized", "authentication_error", "authentication_error"),
    402: ("insufficient_quota", "insufficient_quota", "insufficient_quota_error"),
    403: ("model_access_denied", "invalid_request_error", "permission_error"),
    404: ("not_found", "invalid_request_error", "not_found_error"),
    405: ("method_not_allowed", "invalid_request_error", "invalid_request_error"),
    413: ("request_too_large", "invalid_request_error", "invalid_request_error"),
    429: ("rate_limit_exceeded", "rate_limit_error", "rate_limit_error"),
    500: ("internal_error", "api_error", "internal_server_error"),
    502: ("upstream_error", "api_error", "upstream_error"),
    503: ("service_unavailable", "api_error", "service_unavailable_error"),
}

_MESSAGES: dict[int, str] = {
    401: "Invalid or expired token",
    402: "Insufficient balance, please top up",
    403: "This key may not use the requested model",
    404: "Not found",
    429: "Too many requests, please slow down",
    500: "Internal server error",
    502: "Upstream service error",
    503: "Service temporarily unavailable",
}


def error_body(
    status: int,
    message: str | None = None,
    *,
    style: Literal["string", "integer"] = "string",
    code: str | int | None = None,
    error_type: str | None = None,
    param: str | None = None,
    fallback_suggestion: str | None = None,
) -> dict[str, Any]:
    """`{"error": {...}}` for `status`; explicit `code`/`error_type` override the defaults."""
    current_code, current_type, older_type = _KNOWN.get(
        status, (f"http_{status}", "api_error", "api_error")
    )
    error: dict[str, Any] = {
        "code": code if code is not None else (status if style == "integer" else current_code),
        "message": message or _MESSAGES.get(status, f"HTTP {status}"),
        "type": error_type or (older_type if style == "integer" else current_type),
    }
    if param is not None:
        error["param"] = param
    if fallback_suggestion is not None:
        error["fallback_suggestion"] = fallback_suggestion
    return {"error": error}


def error_response(
    status: int,
    message: str | None = None,
    *,
    style: Literal["string", "integer"] = "string",
    headers: dict[str, str] | None = None,
    **fields: Any,
) -> JSONResponse:
    return JSONResponse(
        error_body(status, message, style=style, **fields), status_code=status, headers=headers
    )
