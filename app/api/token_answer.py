"""The one place a token answer is issued: `GET /token` (warm and routed), `/token/invalidate`
and the OAuth token endpoints.

`issue()` logs the `token.issued` line and returns the answer's exact bytes: the body in one of
two shapes (the broker's own, or the upstream's RFC 6749 shape for the OAuth endpoints) and the
raw headers (`Cache-Control: no-store`, `Pragma: no-cache`, length, type). An answer is kept per
client and shape and rebuilt only when the token or its whole seconds left change, so a warm
cache serves the same bytes without encoding them again. `response()` makes the Starlette
response of the routes; the warm path (`app.api.warm_token`) sends the same bytes itself.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from enum import Enum

from starlette.responses import Response

from app.observability.logs import LineTemplate
from app.tokens.model import Token

log = logging.getLogger("app.api.tokens")

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_RAW_NO_STORE = tuple((name.lower().encode(), value.encode()) for name, value in NO_STORE.items())
JSON_TYPE = b"application/json"
# What the upstream grants (its guide's example). A requested `scope` is ignored, as RFC 6749
# §3.3 allows: the broker hands out the one token it holds, whatever was asked for.
OAUTH_SCOPE = "profile email"


class Shape(Enum):
    """Which body a token answer has."""

    BROKER = "broker"  # GET /token, /token/invalidate (CONTRACT.md)
    OAUTH = "oauth"  # the OAuth endpoints: the upstream's own fields, in its order


@dataclass(frozen=True, slots=True)
class TokenAnswer:
    """A 200 token answer: its body and raw headers, and what it says."""

    token: Token
    expires_in: int
    body: bytes
    headers: tuple[tuple[bytes, bytes], ...]
    fingerprint: str  # the token's, for the log line


def seconds_left(token: Token, now: float) -> int:
    """Whole seconds until the token's upstream expiry (0 once past it)."""
    return max(0, int(token.expires_at - now))


def token_body(token: Token, expires_in: int, shape: Shape) -> bytes:
    """The JSON body of a 200 token answer."""
    if shape is Shape.BROKER:
        body: dict[str, object] = {
            "access_token": token.access_token,
            "token_type": token.token_type,
            "expires_in": expires_in,
            "expires_at": int(token.expires_at),
        }
    else:
        body = {
            "access_token": token.access_token,
            "expires_in": expires_in,
            "refresh_expires_in": 0,
            "token_type": "Bearer",
            "not-before-policy": 0,
            "scope": OAUTH_SCOPE,
        }
    return json.dumps(body, separators=(",", ":")).encode()


def build_answer(token: Token, expires_in: int, shape: Shape) -> TokenAnswer:
    """The answer for `token` with `expires_in` seconds left."""
    body = token_body(token, expires_in, shape)
    headers = (
        *_RAW_NO_STORE,
        (b"content-length", str(len(body)).encode()),
        (b"content-type", JSON_TYPE),
    )
    return TokenAnswer(token, expires_in, body, headers, token.fingerprint)


class TokenAnswers:
    """Issues token answers, keeping the last one per client and shape for reuse."""

    def __init__(self) -> None:
        self._last: dict[tuple[str, Shape], TokenAnswer] = {}
        # The `token.issued` line per caller, client and shape, for the token it names.
        self._lines: dict[tuple[str | None, str, Shape], tuple[str, LineTemplate]] = {}

    def issue(
        self,
        caller: str | None,
        client: str,
        token: Token,
        now: float,
        shape: Shape = Shape.BROKER,
    ) -> TokenAnswer:
        """The answer handing `token` of `client` to `caller`, logged as `token.issued`."""
        expires_in = seconds_left(token, now)
        key = (client, shape)
        answer = self._last.get(key)
        if answer is None or answer.token is not token or answer.expires_in != expires_in:
            answer = self._last[key] = build_answer(token, expires_in, shape)
        line_key = (caller, client, shape)
        known = self._lines.get(line_key)
        if known is None or known[0] != answer.fingerprint:
            fields = {"grant": "client_credentials"} if shape is Shape.OAUTH else {}
            line = LineTemplate(
                log,
                logging.INFO,
                "token.issued",
                "seconds_left",
                caller=caller,
                client=client,
                token_fp=answer.fingerprint,
                seconds_left=0,
                **fields,
            )
            known = self._lines[line_key] = (answer.fingerprint, line)
        known[1].log(expires_in)
        return answer


def response(answer: TokenAnswer) -> Response:
    """The Starlette response sending exactly `answer`'s bytes."""
    sent = Response(answer.body)
    sent.raw_headers = list(answer.headers)
    return sent
