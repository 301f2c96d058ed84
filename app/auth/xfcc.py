"""Parse `X-Forwarded-Client-Cert` (Envoy/Istio format) into certificate identities.

    XFCC      = element *( "," element )          one element per proxy hop, the nearest last
    element   = pair *( ";" pair )
    pair      = key "=" ( quoted / plain )         keys By, Hash, Cert, Chain, Subject, URI, DNS
    quoted    = DQUOTE *( "\\" DQUOTE / other ) DQUOTE   for values holding , ; or =

Keys are case-insensitive, values case-sensitive; `URI` and `DNS` may repeat. `Subject` is a
distinguished name, RFC 4514 (`CN=orders,O=corp`, what Envoy sends) or OpenSSL's legacy one-line
form (`/O=corp/CN=orders`, in Envoy's documentation). Anything else is `MalformedXfcc`: the broker
treats such a header as no credentials, never as a partial identity.

Pure functions only: whether a header is believed at all is decided in `app.auth.identity`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from app.errors import MalformedXfcc

XFCC_HEADER = "x-forwarded-client-cert"  # lower case, as ASGI and Starlette give names

_KEY = re.compile(r"[A-Za-z][A-Za-z0-9_-]*")
_SPACE = " \t"
_CN_TYPES = frozenset({"cn", "commonname", "2.5.4.3", "oid.2.5.4.3"})
_HEX = frozenset("0123456789abcdefABCDEF")


@dataclass(frozen=True, slots=True)
class XfccElement:
    """One proxy hop's view of the client certificate: its key-value pairs, in order."""

    pairs: tuple[tuple[str, str], ...]

    def values(self, key: str) -> list[str]:
        """Every value of `key` (case-insensitive), in header order."""
        key = key.lower()
        return [value for name, value in self.pairs if name.lower() == key]

    def identities(self) -> list[str]:
        """`URI:...`, `DNS:...` and `CN=...` of the certificate this element describes."""
        found = [f"URI:{uri}" for uri in self.values("URI") if uri]
        found += [f"DNS:{dns}" for dns in self.values("DNS") if dns]
        for subject in self.values("Subject"):
            found += [f"CN={cn}" for cn in common_names(subject) if cn]
        return found


class _Scanner:
    """A cursor over the header text."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def peek(self) -> str:
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def skip_space(self) -> None:
        while self.peek() and self.peek() in _SPACE:
            self.pos += 1

    def key(self) -> str:
        match = _KEY.match(self.text, self.pos)
        if match is None:
            raise MalformedXfcc(f"expected a key at offset {self.pos}")
        self.pos = match.end()
        if self.peek() != "=":
            raise MalformedXfcc(f"expected '=' after key {match.group()!r}")
        self.pos += 1
        return match.group()

    def value(self) -> str:
        if self.peek() == '"':
            return self._quoted()
        start = self.pos
        while self.peek() and self.peek() not in ",;":
            if self.peek() in '="':
                raise MalformedXfcc(f"unquoted '{self.peek()}' in a value at offset {self.pos}")
            self.pos += 1
        return self.text[start : self.pos].rstrip(_SPACE)

    def _quoted(self) -> str:
        self.pos += 1  # the opening quote
        chars: list[str] = []
        while True:
            char = self.peek()
            if not char:
                raise MalformedXfcc("unterminated quoted value")
            self.pos += 1
            if char == '"':
                return "".join(chars)
            if char == "\\" and self.peek() == '"':  # the only escape XFCC defines
                char = '"'
                self.pos += 1
            chars.append(char)


def _element(scanner: _Scanner) -> XfccElement:
    pairs = []
    while True:
        scanner.skip_space()
        key = scanner.key()
        pairs.append((key, scanner.value()))
        scanner.skip_space()
        if scanner.peek() != ";":
            return XfccElement(tuple(pairs))
        scanner.pos += 1


def parse_xfcc(header: str) -> list[XfccElement]:
    """Every element of the header, the one added by the nearest proxy last."""
    scanner = _Scanner(header)
    elements = []
    while True:
        elements.append(_element(scanner))
        if not scanner.peek():
            return elements
        if scanner.peek() != ",":
            raise MalformedXfcc(f"unexpected {scanner.peek()!r} at offset {scanner.pos}")
        scanner.pos += 1


def nearest_identities(header: str) -> list[str]:
    """Identities in the element the nearest proxy added (the last one); MalformedXfcc if bad."""
    return parse_xfcc(header)[-1].identities()


def common_names(subject: str) -> list[str]:
    """The CN values of a distinguished name (RFC 4514, or OpenSSL's `/K=V/K=V` form)."""
    if not subject.strip():
        return []
    if subject.startswith("/"):
        attributes = [_split_attribute(part) for part in subject[1:].split("/")]
    else:
        attributes = [_split_attribute(part) for part in _split_rfc4514(subject)]
        attributes = [(kind, _unescape_rfc4514(value)) for kind, value in attributes]
    return [value for kind, value in attributes if kind.strip().lower() in _CN_TYPES]


def _split_attribute(text: str) -> tuple[str, str]:
    kind, sep, value = text.partition("=")
    if not sep or not kind.strip():
        raise MalformedXfcc("a Subject attribute without a type")
    return kind, value


def _split_rfc4514(dn: str) -> list[str]:
    """Split on the `,` and `+` that are not escaped with a backslash."""
    parts, start, i = [], 0, 0
    while i < len(dn):
        if dn[i] == "\\":
            i += 2
            continue
        if dn[i] in ",+":
            parts.append(dn[start:i])
            start = i + 1
        i += 1
    parts.append(dn[start:])
    return parts


def _unescape_rfc4514(value: str) -> str:
    """`\\,` and friends, and `\\C3\\A9` hex pairs (UTF-8), as RFC 4514 section 2.4 writes them."""
    value = value.strip(_SPACE)
    out, i = bytearray(), 0
    while i < len(value):
        char, pair = value[i], value[i + 1 : i + 3]
        if char != "\\":
            out += char.encode()
            i += 1
        elif len(pair) == 2 and set(pair) <= _HEX:
            out.append(int(pair, 16))
            i += 3
        elif i + 1 < len(value):
            out += value[i + 1].encode()
            i += 2
        else:
            raise MalformedXfcc("a Subject value ends in a lone backslash")
    try:
        return out.decode()
    except UnicodeDecodeError:
        raise MalformedXfcc("a Subject value is not UTF-8") from None
