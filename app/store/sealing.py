"""Tokens at rest: each cached token sealed with AES-256-GCM, bound to its client's credentials.

Pure functions and small values over PyPI `cryptography` (AESGCM, HKDF); no I/O, no clock. The
Redis adapter (`app/store/redis_entries.py`) seals what it writes and opens what it reads;
`app/main.py` builds the `Sealers` from the settings. The memory store does not seal (nothing
leaves it).

Keys. By default a client's key is derived with HKDF-SHA256 from its own `client_id` and secret
(key name `derived`): nothing new to manage, and whoever holds only Redis can neither read nor
forge a token. With `store.encryption_keys_file` (a keyring) the first key encrypts and every
key decrypts, the derived key included, so keys rotate (and a fleet moves from derived keys to a
keyring) without losing a cached token. The derived key is only as strong as the client secret:
Paysera's secrets are long and random; a guessable one could be tested offline against a sealed
entry (or the fingerprint), which is what a keyring avoids.

Binding. The associated data of every ciphertext names the schema version, the client, the
credential fingerprint and the key name, so an entry copied to another client, another
generation of credentials or relabelled with another key does not open.

Entry (the fields of `P:v2:{client.FP}:token`, see alembic-free-migrations.md):

    sealed      KEYNAME.BASE64URL(nonce || AES-GCM(JSON {tok, typ, exp, obt}))
    digest      HMAC-SHA256(credential digest key, access token), hex: compare-and-delete
    expires_at  the sealed `exp` again, in clear, for the save script's "later expiry wins"

Times are unix seconds on Redis' clock, as fixed-point strings; `open` checks that the clear
`expires_at` and `digest` are the sealed ones, so no field can be changed unnoticed.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import math
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.tokens.model import is_b64token

SCHEMA_VERSION = "v2"
"""The key schema whose entries this module seals (alembic-free-migrations.md)."""

MAX_UPSTREAM_LIFETIME_SECONDS = 3600.0
"""The longest lifetime the upstream grants (Paysera: `expires_in` 3600)."""

LIFETIME_MARGIN_SECONDS = 60.0
"""Slack on that bound for the time between the request and the save, and clock rounding."""

MAX_CACHED_LIFETIME_SECONDS = MAX_UPSTREAM_LIFETIME_SECONDS + LIFETIME_MARGIN_SECONDS
"""An entry that claims to live longer than this from now (or in all) is not believed."""

EXPIRED_GRACE_SECONDS = 5.0
"""An entry this recently expired is simply gone (its key outlives it by 1 s): not rejected."""

MAX_TOKEN_CHARS = 16 * 1024
KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
FINGERPRINT_BYTES = 4  # 8 hex characters in key names
DERIVED_KEY_NAME = "derived"
KEY_NAME = re.compile(r"[A-Za-z0-9_-]{1,32}\Z")
_B64URL = re.compile(r"[A-Za-z0-9_-]+\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_SALT = b"paysera-token-broker/credentials"
_PAYLOAD_FIELDS = frozenset({"tok", "typ", "exp", "obt"})


class EntryRejected(Exception):
    """A cache entry that must not be served; `reason` is a fixed word (a metric label)."""

    REASONS = (
        "malformed",  # a field missing, not text, or not the expected shape
        "unknown_key",  # sealed with a key this instance does not have
        "decrypt",  # the ciphertext or its binding (client, credentials, key name) is wrong
        "parse",  # decrypted, but not the payload this module writes
        "token_chars",  # the access token is not an RFC 6750 b64token
        "token_type",  # not a Bearer token
        "tampered",  # a clear field differs from its sealed value
        "expired",  # expired long ago: its key should have gone with it
        "implausible_expiry",  # later than the longest lifetime the upstream grants
    )

    def __init__(self, reason: str) -> None:
        assert reason in self.REASONS
        super().__init__(reason)
        self.reason = reason


class KeyringError(ValueError):
    """A keyring file that cannot be used; each problem names its line, never a key."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = list(problems)


@dataclass(frozen=True, slots=True)
class Key:
    """A named 256-bit key; `repr` never shows the key."""

    name: str
    material: bytes = field(repr=False)


@dataclass(frozen=True, slots=True)
class SealedEntry:
    """The stored fields of one cached token, as text."""

    sealed: str
    digest: str
    expires_at: str


@dataclass(frozen=True, slots=True)
class OpenedToken:
    """A cached token that opened and passed every check; times on Redis' clock."""

    access_token: str = field(repr=False)
    token_type: str
    expires_at: float
    obtained_at: float


# -- credentials -------------------------------------------------------------------------------


def _derive(client_id: str, secret: str, purpose: bytes, length: int) -> bytes:
    """HKDF-SHA256 of the credentials, one output per `purpose` (independent of each other)."""
    # Length-prefixed, so ("ab", "c") and ("a", "bc") are different credentials.
    ikm = b"".join(len(part).to_bytes(4, "big") + part for part in _utf8(client_id, secret))
    hkdf = HKDF(algorithm=SHA256(), length=length, salt=_SALT, info=b"v2/" + purpose)
    return hkdf.derive(ikm)


def _utf8(*parts: str) -> Iterable[bytes]:
    return (part.encode("utf-8") for part in parts)


def credential_fingerprint(client_id: str, secret: str) -> str:
    """A short keyed name of the credentials (8 hex characters), safe for key names and logs."""
    return _derive(client_id, secret, b"fingerprint", FINGERPRINT_BYTES).hex()


def derived_key(client_id: str, secret: str) -> Key:
    """The client's own AES-256 key, derived from its credentials."""
    return Key(DERIVED_KEY_NAME, _derive(client_id, secret, b"token-key", KEY_BYTES))


# -- keyring -----------------------------------------------------------------------------------


def new_key_line(name: str) -> str:
    """A keyring line `NAME:BASE64` holding a fresh random 256-bit key."""
    if not KEY_NAME.match(name) or name == DERIVED_KEY_NAME:
        raise ValueError(f"a key name is 1-32 of A-Z a-z 0-9 _ - and not {DERIVED_KEY_NAME!r}")
    return f"{name}:{base64.b64encode(os.urandom(KEY_BYTES)).decode('ascii')}"


def parse_keyring(text: str) -> tuple[Key, ...]:
    """The keys of a keyring file: one `NAME:BASE64` per line (32 bytes, standard or URL-safe
    base64), `#` comments and blank lines ignored; the first key encrypts.

    Raises KeyringError listing every problem by line number; no message contains a key.
    """
    keys: list[Key] = []
    problems: list[str] = []
    seen: dict[str, int] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, colon, encoded = line.partition(":")
        name = name.strip()
        problem = _line_problem(name, colon, encoded.strip(), seen)
        if problem is not None:
            problems.append(f"line {number}: {problem}")
            continue
        seen[name] = number
        keys.append(Key(name, _b64decode(encoded.strip())))
    if not keys and not problems:
        problems.append("no key (one NAME:BASE64 line per key; `token-broker new-encryption-key`)")
    material = [key.material for key in keys]
    if len(set(material)) != len(material):
        problems.append("the same key appears under two names")
    if problems:
        raise KeyringError(problems)
    return tuple(keys)


def _line_problem(name: str, colon: str, encoded: str, seen: dict[str, int]) -> str | None:
    if not colon:
        return "expected NAME:BASE64"
    if not KEY_NAME.match(name):
        return "the key name must be 1-32 of A-Z a-z 0-9 _ -"
    if name == DERIVED_KEY_NAME:
        return f"the key name {DERIVED_KEY_NAME!r} is reserved for credential-derived keys"
    if name in seen:
        return f"key name {name!r} already used on line {seen[name]}"
    try:
        key = _b64decode(encoded)
    except ValueError:
        return "the key is not valid base64"
    if len(key) != KEY_BYTES:
        return f"the key must be {KEY_BYTES} bytes (it is {len(key)})"
    return None


def _b64decode(text: str) -> bytes:
    """Standard or URL-safe base64, padding optional; ValueError otherwise."""
    text = text.replace("-", "+").replace("_", "/")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except binascii.Error as exc:
        raise ValueError("not base64") from exc


# -- sealing -----------------------------------------------------------------------------------


def associated_data(client: str, fingerprint: str, key_name: str) -> bytes:
    """What a ciphertext is bound to: schema version, client, credentials and key name."""
    return f"paysera-token-broker|{SCHEMA_VERSION}|{client}|{fingerprint}|{key_name}".encode()


def time_text(seconds: float) -> str:
    """Unix seconds as stored (fixed point, microseconds)."""
    return f"{seconds:.6f}"


class ClientSealer:
    """Seals and opens one client's cache entries under one generation of its credentials."""

    def __init__(
        self,
        client: str,
        fingerprint: str,
        digest_key: bytes,
        encrypt_with: Key,
        decrypt_with: Sequence[Key],
    ) -> None:
        self.client = client
        self.fingerprint = fingerprint
        self.key_name = encrypt_with.name
        self._digest_key = digest_key
        self._ciphers = {key.name: AESGCM(key.material) for key in (encrypt_with, *decrypt_with)}

    def digest(self, access_token: str) -> str:
        """Keyed digest of a token (HMAC-SHA256 hex): compare-and-delete without the token."""
        return hmac.digest(self._digest_key, access_token.encode(), "sha256").hex()

    def seal(
        self, access_token: str, token_type: str, expires_at: float, obtained_at: float
    ) -> SealedEntry:
        """The entry to store for this token (times: unix seconds on Redis' clock)."""
        expires = time_text(expires_at)
        payload = {"tok": access_token, "typ": token_type, "exp": expires}
        payload["obt"] = time_text(obtained_at)
        plaintext = json.dumps(payload, separators=(",", ":")).encode()
        nonce = os.urandom(NONCE_BYTES)  # random 96-bit nonces: fine far beyond 2^32 seals/key
        aad = associated_data(self.client, self.fingerprint, self.key_name)
        ciphertext = self._ciphers[self.key_name].encrypt(nonce, plaintext, aad)
        blob = _b64url(nonce + ciphertext)
        return SealedEntry(f"{self.key_name}.{blob}", self.digest(access_token), expires)

    def open(self, entry: SealedEntry, now: float) -> OpenedToken:
        """The token in `entry` if it decrypts and passes every check at Redis time `now`;
        raises EntryRejected otherwise."""
        name, blob = _split_sealed(entry.sealed)
        cipher = self._ciphers.get(name)
        if cipher is None:
            raise EntryRejected("unknown_key")
        try:
            raw = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
        except binascii.Error:
            raise EntryRejected("malformed") from None
        # Canonical encoding only: unused trailing bits changed would decode the same bytes.
        if len(raw) <= NONCE_BYTES + TAG_BYTES or _b64url(raw) != blob:
            raise EntryRejected("malformed")
        aad = associated_data(self.client, self.fingerprint, name)
        try:
            plaintext = cipher.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], aad)
        except InvalidTag:
            raise EntryRejected("decrypt") from None
        payload = _payload(plaintext)
        token = payload["tok"]
        if len(token) > MAX_TOKEN_CHARS or not is_b64token(token):
            raise EntryRejected("token_chars")
        if payload["typ"].lower() != "bearer":
            raise EntryRejected("token_type")
        if payload["exp"] != entry.expires_at or not _same_digest(entry.digest, self.digest(token)):
            raise EntryRejected("tampered")
        expires_at, obtained_at = _times(payload["exp"], payload["obt"], now)
        return OpenedToken(token, payload["typ"], expires_at, obtained_at)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _split_sealed(sealed: str) -> tuple[str, str]:
    name, dot, blob = sealed.partition(".")
    if not dot or not KEY_NAME.match(name) or not _B64URL.match(blob):
        raise EntryRejected("malformed")
    return name, blob


def _same_digest(stored: str, expected: str) -> bool:
    return bool(_HEX64.match(stored)) and hmac.compare_digest(stored, expected)


def _payload(plaintext: bytes) -> dict[str, str]:
    try:
        payload = json.loads(plaintext)
    except ValueError:
        raise EntryRejected("parse") from None
    if (
        not isinstance(payload, dict)
        or set(payload) != _PAYLOAD_FIELDS
        or not all(isinstance(value, str) for value in payload.values())
    ):
        raise EntryRejected("parse")
    return payload


def _times(expires_text: str, obtained_text: str, now: float) -> tuple[float, float]:
    """The sealed times as numbers, if they describe a token the upstream could have issued."""
    try:
        expires_at, obtained_at = float(expires_text), float(obtained_text)
    except ValueError:
        raise EntryRejected("parse") from None
    if not (math.isfinite(expires_at) and math.isfinite(obtained_at)):
        raise EntryRejected("parse")
    if expires_at <= now - EXPIRED_GRACE_SECONDS:
        raise EntryRejected("expired")
    lifetime = expires_at - obtained_at
    if (
        expires_at - now > MAX_CACHED_LIFETIME_SECONDS
        or not 0 < lifetime <= MAX_CACHED_LIFETIME_SECONDS
        or obtained_at > now + LIFETIME_MARGIN_SECONDS
    ):
        raise EntryRejected("implausible_expiry")
    return expires_at, obtained_at


class Sealers:
    """Each client's current `ClientSealer`, rebuilt when its credentials change."""

    def __init__(self, keyring: Sequence[Key] = ()) -> None:
        self._keyring = tuple(keyring)
        self._by_client: dict[str, ClientSealer] = {}

    @property
    def mode(self) -> str:
        """`keyring` or `derived`: where the encrypting key comes from."""
        return "keyring" if self._keyring else "derived"

    def bind(self, client: str, client_id: str, secret: str) -> ClientSealer:
        """Seal `client`'s entries under these credentials from now on."""
        sealer = build_sealer(client, client_id, secret, self._keyring)
        self._by_client[client] = sealer
        return sealer

    def get(self, client: str) -> ClientSealer:
        """The sealer of `client`.

        A client never bound (a store built without credentials: tests and tools; `app.main`
        binds every configured client) gets keys derived from its name alone, which bind but
        do not hide anything.
        """
        sealer = self._by_client.get(client)
        if sealer is None:
            sealer = self.bind(client, client, "")
        return sealer


def build_sealer(client: str, client_id: str, secret: str, keyring: Sequence[Key]) -> ClientSealer:
    """The sealer for one client's credentials: the keyring's first key encrypts (the derived
    key without a keyring); every keyring key and the derived key decrypt."""
    derived = derived_key(client_id, secret)
    return ClientSealer(
        client,
        credential_fingerprint(client_id, secret),
        _derive(client_id, secret, b"digest-key", KEY_BYTES),
        keyring[0] if keyring else derived,
        (*keyring, derived),
    )
