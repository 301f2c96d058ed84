"""app/store/sealing.py: AES-256-GCM entries bound to client, credentials and key; keyrings."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.store.sealing import (
    DERIVED_KEY_NAME,
    EXPIRED_GRACE_SECONDS,
    MAX_CACHED_LIFETIME_SECONDS,
    ClientSealer,
    EntryRejected,
    Key,
    KeyringError,
    SealedEntry,
    Sealers,
    associated_data,
    build_sealer,
    credential_fingerprint,
    derived_key,
    new_key_line,
    parse_keyring,
    time_text,
)

NOW = 1_800_000_000.0
TOKEN = "eyJhbGciOiJSUzI1NiJ9.payload-part_with~chars+/.sig=="
ID, SECRET = "checkout-id", "a-long-random-client-secret-0001"
K1 = Key("k1", bytes(range(32)))
K2 = Key("k2", bytes(range(32, 64)))


def sealer(
    client: str = "checkout",
    client_id: str = ID,
    secret: str = SECRET,
    keyring: tuple[Key, ...] = (),
) -> ClientSealer:
    """A sealer of `client` with these credentials and keyring."""
    return build_sealer(client, client_id, secret, keyring)


def sealed(s: ClientSealer, token: str = TOKEN, lifetime: float = 3600.0) -> SealedEntry:
    """`token` sealed by `s`, obtained now."""
    return s.seal(token, "Bearer", NOW + lifetime, NOW)


def reason(s: ClientSealer, entry: SealedEntry, now: float = NOW) -> str:
    """Why `s` rejects `entry` (fails if it opens)."""
    with pytest.raises(EntryRejected) as caught:
        s.open(entry, now)
    return caught.value.reason


def reseal_payload(s: ClientSealer, payload: dict[str, object], expires_at: str) -> SealedEntry:
    """An entry whose payload is `payload`, sealed properly with `s`'s key (a bug, or someone
    who holds the key)."""
    key = derived_key(ID, SECRET)
    nonce = b"\0" * 12
    aad = associated_data(s.client, s.fingerprint, key.name)
    blob = nonce + AESGCM(key.material).encrypt(nonce, json.dumps(payload).encode(), aad)
    text = base64.urlsafe_b64encode(blob).decode().rstrip("=")
    return SealedEntry(f"{key.name}.{text}", s.digest(str(payload.get("tok"))), expires_at)


def test_a_sealed_token_opens_with_its_times() -> None:
    """Sealing then opening gives back the token, its type and its times on Redis' clock."""
    s = sealer()
    opened = s.open(sealed(s), NOW + 10)
    assert (opened.access_token, opened.token_type) == (TOKEN, "Bearer")
    assert (opened.expires_at, opened.obtained_at) == (NOW + 3600, NOW)


def test_the_entry_holds_neither_the_token_nor_the_secret() -> None:
    """No field of an entry, decoded from base64 or not, contains the token or the secret."""
    entry = sealed(sealer())
    blob = entry.sealed.partition(".")[2]
    decoded = base64.urlsafe_b64decode(blob + "=" * (-len(blob) % 4))
    for text in (entry.sealed, entry.digest, entry.expires_at):
        assert TOKEN not in text and SECRET not in text
    assert TOKEN.encode() not in decoded and SECRET.encode() not in decoded


def test_every_seal_uses_a_fresh_nonce() -> None:
    """The same token sealed twice gives two different ciphertexts (random nonces)."""
    s = sealer()
    assert sealed(s).sealed != sealed(s).sealed


def test_fingerprint_is_short_stable_and_follows_each_credential() -> None:
    """The fingerprint is 8 hex characters, the same for the same credentials, and changes with
    the client id, with the secret, and with where one ends and the other starts."""
    fp = credential_fingerprint(ID, SECRET)
    assert len(fp) == 8 and int(fp, 16) >= 0
    assert fp == credential_fingerprint(ID, SECRET)
    assert fp != credential_fingerprint("other-id", SECRET)
    assert fp != credential_fingerprint(ID, SECRET + "x")
    assert credential_fingerprint("ab", "c") != credential_fingerprint("a", "bc")
    assert SECRET not in fp


def test_an_entry_moved_to_another_client_does_not_open() -> None:
    """Associated data binds the entry to its client: the same credentials under another client
    name reject it."""
    entry = sealed(sealer("checkout"))
    assert reason(sealer("payouts"), entry) == "decrypt"


@pytest.mark.parametrize(("client_id", "secret"), [("other-id", SECRET), (ID, "rotated-secret")])
def test_other_credentials_do_not_open_an_entry(client_id: str, secret: str) -> None:
    """An entry sealed under one client id and secret does not open under changed ones."""
    entry = sealed(sealer())
    assert reason(sealer(client_id=client_id, secret=secret), entry) == "decrypt"


def test_with_a_keyring_other_credentials_still_do_not_open_an_entry() -> None:
    """With a shared keyring the binding comes from the associated data: another secret (so
    another fingerprint) rejects the entry although the key is the same."""
    entry = sealed(sealer(keyring=(K1,)))
    assert reason(sealer(secret="rotated-secret", keyring=(K1,)), entry) == "decrypt"


def test_relabelling_an_entry_with_another_key_name_fails() -> None:
    """An entry whose key name is changed to another key of the ring does not decrypt."""
    entry = sealed(sealer(keyring=(K1, K2)))
    relabelled = SealedEntry("k2" + entry.sealed[2:], entry.digest, entry.expires_at)
    assert reason(sealer(keyring=(K1, K2)), relabelled) == "decrypt"


def test_the_first_key_encrypts_and_every_key_decrypts() -> None:
    """The ring's first key seals; after a reorder the entry sealed under the old first key
    still opens, and so does one sealed with the derived key before the ring existed."""
    old = sealed(sealer(keyring=(K1,)))
    assert old.sealed.startswith("k1.")
    before_ring = sealed(sealer())
    assert before_ring.sealed.startswith(f"{DERIVED_KEY_NAME}.")
    rotated = sealer(keyring=(K2, K1))
    assert sealed(rotated).sealed.startswith("k2.")
    assert rotated.open(old, NOW).access_token == TOKEN
    assert rotated.open(before_ring, NOW).access_token == TOKEN


def test_a_key_no_longer_in_the_ring_is_unknown() -> None:
    """An entry sealed with a key the ring dropped is rejected as `unknown_key`."""
    entry = sealed(sealer(keyring=(K1,)))
    assert reason(sealer(keyring=(K2,)), entry) == "unknown_key"


def test_the_derived_key_depends_on_the_credentials() -> None:
    """The derived key changes with the secret and is 32 bytes."""
    assert len(derived_key(ID, SECRET).material) == 32
    assert derived_key(ID, SECRET) != derived_key(ID, SECRET + "x")


def test_the_digest_is_keyed_by_the_credentials() -> None:
    """The compare-and-delete digest is not the bare SHA-256 of the token and differs between
    credentials."""
    digest = sealer().digest(TOKEN)
    assert len(digest) == 64
    assert digest != hashlib.sha256(TOKEN.encode()).hexdigest()
    assert digest != sealer(secret="rotated-secret").digest(TOKEN)


def flips(text: str) -> list[str]:
    """`text` with one byte flipped, at each position in turn (ASCII kept)."""
    return [text[:i] + chr(ord(c) ^ 0x01) + text[i + 1 :] for i, c in enumerate(text)]


@pytest.mark.parametrize("field", ["sealed", "digest", "expires_at"])
def test_every_flipped_byte_of_every_field_is_rejected(field: str) -> None:
    """Flipping any single byte of any field makes the entry fail to open."""
    s = sealer()
    entry = sealed(s)
    for changed in flips(getattr(entry, field)):
        tampered = SealedEntry(**{**_fields(entry), field: changed})
        with pytest.raises(EntryRejected):
            s.open(tampered, NOW)


def _fields(entry: SealedEntry) -> dict[str, str]:
    return {"sealed": entry.sealed, "digest": entry.digest, "expires_at": entry.expires_at}


@pytest.mark.parametrize(
    ("sealed_text", "expected"),
    [
        ("", "malformed"),
        ("no-dot-here", "malformed"),
        ("k1.", "malformed"),
        ("k1.AAAA", "unknown_key"),
        ("derived.AAAA", "malformed"),  # shorter than nonce + tag
        ("derived.A", "malformed"),  # not a base64 length
        ("derived.!!!!", "malformed"),
        ("bad name.AAAA", "malformed"),
    ],
)
def test_malformed_sealed_fields_are_rejected(sealed_text: str, expected: str) -> None:
    """A sealed field of the wrong shape is rejected with a reason, never an exception."""
    s = sealer()
    entry = sealed(s)
    assert reason(s, SealedEntry(sealed_text, entry.digest, entry.expires_at)) == expected


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        ("bad\x0ctoken", "token_chars"),  # a form feed: not a header value
        ("has space", "token_chars"),
        ("", "token_chars"),
        ("x" * 16385, "token_chars"),
    ],
)
def test_an_access_token_outside_rfc6750_is_rejected(token: str, expected: str) -> None:
    """A correctly sealed token that is not a b64token is not served."""
    s = sealer()
    assert reason(s, sealed(s, token)) == expected


def test_a_token_that_is_not_bearer_is_rejected() -> None:
    """A sealed token of another type is rejected."""
    s = sealer()
    entry = s.seal(TOKEN, "MAC", NOW + 3600, NOW)
    assert reason(s, entry) == "token_type"


def test_a_payload_of_another_shape_is_rejected() -> None:
    """A payload that decrypts but is not this module's JSON object is rejected as `parse`."""
    s = sealer()
    expires = time_text(NOW + 3600)
    bad = reseal_payload(s, {"tok": TOKEN, "typ": "Bearer", "exp": expires}, expires)
    assert reason(s, bad) == "parse"
    numbers = {"tok": TOKEN, "typ": "Bearer", "exp": NOW + 3600, "obt": NOW}
    assert reason(s, reseal_payload(s, numbers, expires)) == "parse"
    nan = {"tok": TOKEN, "typ": "Bearer", "exp": "nan", "obt": time_text(NOW)}
    assert reason(s, reseal_payload(s, nan, "nan")) == "parse"


def test_an_expiry_beyond_the_longest_upstream_lifetime_is_rejected() -> None:
    """An entry that claims to live longer than 3600 s plus the margin is implausible."""
    s = sealer()
    assert reason(s, sealed(s, lifetime=MAX_CACHED_LIFETIME_SECONDS + 1)) == "implausible_expiry"
    assert s.open(sealed(s, lifetime=3600), NOW).access_token == TOKEN


def test_an_entry_obtained_in_the_future_is_rejected() -> None:
    """An entry whose token was obtained well after Redis' now is implausible."""
    s = sealer()
    assert reason(s, sealed(s), now=NOW - 600) == "implausible_expiry"


def test_an_entry_long_expired_is_rejected_but_a_just_expired_one_opens() -> None:
    """Within the key's own grace an expired entry opens (the token service will not serve it);
    an entry long past its expiry (its key should be gone) is rejected."""
    s = sealer()
    entry = sealed(s, lifetime=60)
    assert s.open(entry, NOW + 61).expires_at == NOW + 60
    assert reason(s, entry, now=NOW + 60 + EXPIRED_GRACE_SECONDS + 1) == "expired"


def test_sealers_rebind_a_client_when_its_credentials_change() -> None:
    """`Sealers.bind` replaces a client's sealer; an unbound client gets a name-derived one."""
    sealers = Sealers((K1,))
    first = sealers.bind("checkout", ID, SECRET)
    assert sealers.get("checkout") is first and sealers.mode == "keyring"
    second = sealers.bind("checkout", ID, "rotated-secret")
    assert sealers.get("checkout") is second
    assert first.fingerprint != second.fingerprint
    assert Sealers().get("payouts").fingerprint == credential_fingerprint("payouts", "")
    assert Sealers().mode == "derived"


def test_a_new_key_line_parses_back_as_a_random_key() -> None:
    """`new_key_line` prints NAME:BASE64 of 32 random bytes that `parse_keyring` reads."""
    line, other = new_key_line("k2026"), new_key_line("k2026")
    (key,) = parse_keyring(line)
    assert key.name == "k2026" and len(key.material) == 32
    assert line != other
    with pytest.raises(ValueError, match="key name"):
        new_key_line(DERIVED_KEY_NAME)


def test_a_keyring_file_keeps_its_order_and_ignores_comments() -> None:
    """Comments and blank lines are skipped, URL-safe base64 is accepted, the order is kept."""
    urlsafe = base64.urlsafe_b64encode(K2.material).decode().rstrip("=")
    text = f"# rotated 2026-01\n\n{new_key_line('new')}\n  old:{urlsafe}  \n"
    keys = parse_keyring(text)
    assert [key.name for key in keys] == ["new", "old"]
    assert keys[1].material == K2.material


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "no key"),
        ("# only a comment\n", "no key"),
        ("k1\n", "line 1: expected NAME:BASE64"),
        ("bad name:AAAA\n", "line 1: the key name"),
        (f"{DERIVED_KEY_NAME}:{base64.b64encode(bytes(32)).decode()}\n", "line 1: the key name"),
        ("k1:not*base64\n", "line 1: the key is not valid base64"),
        (f"k1:{base64.b64encode(bytes(16)).decode()}\n", "line 1: the key must be 32 bytes"),
        (
            f"k1:{base64.b64encode(bytes(32)).decode()}\nk1:{base64.b64encode(bytes(range(32))).decode()}\n",
            "line 2: key name 'k1' already used on line 1",
        ),
        (
            f"a:{base64.b64encode(bytes(32)).decode()}\nb:{base64.b64encode(bytes(32)).decode()}\n",
            "the same key appears under two names",
        ),
    ],
)
def test_a_bad_keyring_names_each_problem_but_never_a_key(text: str, problem: str) -> None:
    """Every problem is reported with its line number and no message repeats key material."""
    with pytest.raises(KeyringError) as caught:
        parse_keyring(text)
    assert any(p.startswith(problem) for p in caught.value.problems), caught.value.problems
    for line in text.splitlines():
        material = line.partition(":")[2]
        if len(material) > 8:
            assert material not in str(caught.value)


def test_a_key_never_shows_in_its_repr() -> None:
    """`repr(Key)` names the key but not its material."""
    assert "material" not in repr(K1) and repr(bytes(range(32))) not in repr(K1)


@pytest.mark.parametrize("length", [100, 101, 102])
def test_every_flip_is_caught_whatever_the_ciphertext_length(length: int) -> None:
    """Whatever the token's length (so the base64 text's unused trailing bits), every flipped
    byte of the sealed field is rejected: only the canonical encoding opens."""
    s = sealer()
    entry = sealed(s, "t" * length)
    for changed in flips(entry.sealed):
        with pytest.raises(EntryRejected):
            s.open(SealedEntry(changed, entry.digest, entry.expires_at), NOW)
