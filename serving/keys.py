"""API keys with scopes for the prediction service.

A key looks like ``lc_<key_id>_<secret>``: ``key_id`` is 8 public hex characters (shown by
``lifecast keys list``, written to the audit log), ``secret`` is 32 random bytes
(``secrets.token_urlsafe(32)``). The key is shown once, when it is created; the store keeps
only its hash, in a small JSON file (mode 0600, written atomically).

Scopes: ``predict`` (the CRM: /predict, /score) and ``lists`` (marketing: /high_risk,
/segments). The service calls `KeyStore.authorize` with the ``Authorization`` header and the
scope its endpoint needs, and gets 200, 401 (missing / wrong / revoked key) or 403 (right key,
wrong scope). Health, metrics and the docs stay open (`OPEN_PATHS`, `is_open_path`).

Several service workers read the same file: each `KeyStore` caches it and re-reads it as soon
as the file changes (one ``os.stat`` per call), so ``lifecast keys revoke`` takes effect on the
next request without a restart. Nothing happens on import.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import re
import secrets
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

__all__ = [
    "ENDPOINT_SCOPES",
    "KEYS_FILE_ENV",
    "OPEN_PATHS",
    "OPEN_PREFIXES",
    "SCOPES",
    "AuthResult",
    "KeyRecord",
    "KeyStore",
    "KeyStoreError",
    "UnknownKeyError",
    "default_keys_path",
    "is_open_path",
    "parse_bearer",
    "scope_for_path",
    "validate_scopes",
]

KEYS_FILE_ENV = "LIFECAST_KEYS_FILE"
SCOPES: frozenset[str] = frozenset({"predict", "lists"})

# The scope each protected endpoint needs. BentoML task endpoints add sub-paths
# (/predict/submit, /predict/status, ...): `scope_for_path` maps them to the same scope.
ENDPOINT_SCOPES: dict[str, str] = {
    "/predict": "predict",
    "/score": "predict",
    "/high_risk": "lists",
    "/segments": "lists",
}

# What BentoML 1.4 serves besides the API (read from its source, 1.4.39:
# bentoml/_internal/server/base_app.py get_system_routes and
# _bentoml_impl/server/app.py ServiceAppFactory.__call__):
#   /livez, /healthz, /readyz, /metrics   probes and Prometheus metrics
#   /                                     the index page (Swagger UI)
#   /docs.json                            the OpenAPI spec the Swagger UI loads
#   /schema.json                          the service schema (its client reads it; answered
#                                         by `serving.app.GuardMiddleware` with the real types)
#   /static_content/...                   Swagger UI assets
#   /assets/...                           assets of the new UI (only with the "new_index" feature)
# and what lifecast adds (`serving.app.GuardMiddleware` answers them itself):
#   /openapi.json                         the OpenAPI document (the same as /docs.json)
#   /docs                                 a redirect to the Swagger UI at /
# The docs and the OpenAPI document need no key: they describe the API (endpoints, schemas,
# the API key scheme) and hold no customer data.
OPEN_PATHS: frozenset[str] = frozenset({
    "/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json",
    "/openapi.json", "/docs",
})
OPEN_PREFIXES: tuple[str, ...] = ("/static_content/", "/assets/")

_TOKEN_PREFIX = "lc_"
_KEY_ID_RE = re.compile(r"[0-9a-f]{8}")
_TOKEN_RE = re.compile(r"lc_([0-9a-f]{8})_([A-Za-z0-9_-]{20,128})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,63}")
_HASH_PREFIX = "hmac-sha256:"
_FORMAT_VERSION = 1


class KeyStoreError(ValueError):
    """A problem with the key store or a request to it that the user can act on."""


class UnknownKeyError(KeyStoreError, LookupError):
    """No key matches the key id or name given."""


def default_keys_path() -> Path:
    """``$LIFECAST_KEYS_FILE``, else ``./.lifecast/keys.json`` (read at call time)."""
    env = os.environ.get(KEYS_FILE_ENV)
    return Path(env) if env else Path.cwd() / ".lifecast" / "keys.json"


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _iso(ts: datetime | None) -> str | None:
    return None if ts is None else ts.isoformat()


def _parse_ts(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise KeyStoreError(f"{what} is not a timestamp: {value!r}")
    ts = datetime.fromisoformat(value)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def validate_scopes(scopes: object) -> tuple[str, ...]:
    """Check scopes against `SCOPES`; return them de-duplicated and sorted."""
    if isinstance(scopes, str):
        scopes = [scopes]
    items = list(scopes)  # type: ignore[call-overload]
    if not items:
        raise KeyStoreError(f"give at least one scope (valid scopes: {', '.join(sorted(SCOPES))})")
    unknown = sorted({str(s) for s in items} - SCOPES)
    if unknown:
        names = ", ".join(repr(s) for s in unknown)
        raise KeyStoreError(
            f"unknown scope{'s' if len(unknown) > 1 else ''} {names} "
            f"(valid scopes: {', '.join(sorted(SCOPES))})"
        )
    return tuple(sorted(set(items)))


def _validate_name(name: str) -> str:
    name = name.strip() if isinstance(name, str) else name
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {name!r}: use 1-64 letters, digits and . _ @ + - "
            "(for example 'crm-prod' or 'marketing-alice')"
        )
    if _KEY_ID_RE.fullmatch(name):
        raise KeyStoreError(
            f"invalid key name {name!r}: it looks like a key id (8 hex characters), "
            "which would make `lifecast keys revoke` ambiguous"
        )
    return name


@dataclass(frozen=True)
class KeyRecord:
    """One API key as the store describes it: never the secret, never the hash."""

    key_id: str
    name: str
    scopes: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None

    @property
    def active(self) -> bool:
        return self.revoked_at is None

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    def to_dict(self) -> dict[str, object]:
        """JSON-ready, for the CLI and the service (no secret, no hash)."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": _iso(self.created_at),
            "revoked_at": _iso(self.revoked_at),
        }


@dataclass(frozen=True)
class AuthResult:
    """What `KeyStore.authorize` decided: ``status`` 200, 401 or 403, the key (the "who" for
    the audit log; set for 200 and 403) and a message for the response body."""

    status: int
    key: KeyRecord | None
    message: str
    scope: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def headers(self) -> dict[str, str]:
        """The ``WWW-Authenticate`` header RFC 6750 asks for on 401 and 403."""
        if self.status == 401:
            return {"WWW-Authenticate": 'Bearer realm="lifecast"'}
        if self.status == 403:
            return {"WWW-Authenticate": f'Bearer realm="lifecast", error="insufficient_scope", '
                                        f'scope="{self.scope}"'}
        return {}


def parse_bearer(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header value, else None.

    The scheme is case-insensitive and surrounding / repeated spaces are tolerated; anything
    else (no header, another scheme, no token, several tokens) gives None."""
    if not authorization:
        return None
    parts = authorization.split()
    if len(parts) != 2 or parts[0].lower() != "bearer":
        return None
    return parts[1]


def scope_for_path(path: str) -> str | None:
    """The scope a request path needs: the endpoint itself or any sub-path of it (BentoML
    task endpoints), else None (open, or not an endpoint we know)."""
    scope = ENDPOINT_SCOPES.get(path)
    if scope is not None:
        return scope
    for endpoint, scope in ENDPOINT_SCOPES.items():
        if path.startswith(endpoint + "/"):
            return scope
    return None


def is_open_path(path: str) -> bool:
    """True when a request path needs no key: probes, metrics, docs and their assets."""
    if path in OPEN_PATHS:
        return True
    if path.startswith(OPEN_PREFIXES):
        # Starlette routes on the same decoded path, so a prefix match really lands on the
        # static files app; refuse dot segments anyway rather than reason about them.
        return ".." not in path.split("/")
    return False


@dataclass(frozen=True)
class _Snapshot:
    """The parsed file, immutable, swapped whole on reload (safe to read from any thread)."""

    stamp: tuple[int, int, int, int] | None  # (inode, size, mtime_ns, ctime_ns); None: no file
    salt: bytes
    records: dict[str, KeyRecord] = field(default_factory=dict)
    digests: dict[str, bytes] = field(default_factory=dict)


class KeyStore:
    """API keys in a JSON file: create, list, revoke, authenticate, authorize.

    ``path`` defaults to `default_keys_path()`. A missing file is an empty store (every
    request gets 401); the file is created, mode 0600, by the first `create`. Reading a file
    that is not a key store raises `KeyStoreError` (the service then fails closed).
    """

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path is not None else default_keys_path()
        self._lock = threading.Lock()
        self._snapshot: _Snapshot | None = None
        # Compared against when the key id is unknown, so the answer takes as long as for a
        # known id with a wrong secret.
        self._dummy_digest = secrets.token_bytes(32)

    # -- reading -------------------------------------------------------------------------

    def _stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return None
        # os.replace gives the file a new inode on every write, so a change shows even when
        # two writes fall in the same mtime tick.
        return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def _current(self) -> _Snapshot:
        """The cached snapshot, re-read when the file changed (one stat call)."""
        stamp = self._stamp()
        snap = self._snapshot
        if snap is not None and snap.stamp == stamp:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap is None or snap.stamp != stamp:
                snap = self._read(stamp)
                self._snapshot = snap
            return snap

    def _read(self, stamp: tuple[int, int, int, int] | None) -> _Snapshot:
        if stamp is None:
            return _Snapshot(stamp=None, salt=secrets.token_bytes(32))
        try:
            raw = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:  # removed between stat and read
            return _Snapshot(stamp=None, salt=secrets.token_bytes(32))
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != _FORMAT_VERSION:
                raise KeyStoreError("not a lifecast key store (version 1)")
            salt = bytes.fromhex(data["salt"])
            records: dict[str, KeyRecord] = {}
            digests: dict[str, bytes] = {}
            for item in data["keys"]:
                hashed = item["hash"]
                if not hashed.startswith(_HASH_PREFIX):
                    raise KeyStoreError(f"unsupported hash for key {item['key_id']!r}")
                created_at = _parse_ts(item["created_at"], "created_at")
                if created_at is None:
                    raise KeyStoreError(f"key {item['key_id']!r} has no created_at")
                rec = KeyRecord(
                    key_id=item["key_id"],
                    name=item["name"],
                    scopes=validate_scopes(item["scopes"]),
                    created_at=created_at,
                    revoked_at=_parse_ts(item.get("revoked_at"), "revoked_at"),
                )
                records[rec.key_id] = rec
                digests[rec.key_id] = bytes.fromhex(hashed[len(_HASH_PREFIX):])
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise KeyStoreError(f"cannot read the key store {self.path}: {exc}") from None
        # Keep the stamp taken before reading: if the file changed meanwhile, the next call
        # sees a different stamp and reads again.
        return _Snapshot(stamp=stamp, salt=salt, records=records, digests=digests)

    def _digest(self, salt: bytes, token: str) -> bytes:
        # The secret is 256 random bits, not a password: nobody can guess or brute-force it,
        # so a slow password hash (bcrypt, scrypt, argon2) would add cost without adding
        # safety. One HMAC-SHA256 keyed with a random per-store salt is the right tool, and
        # keeps a check at a few microseconds. The whole token is hashed, binding id and secret.
        return hmac.new(salt, token.encode("utf-8"), hashlib.sha256).digest()

    def list(self) -> list[KeyRecord]:
        """Every key, revoked ones too, in the order they were created (no secrets, no
        hashes)."""
        return list(self._current().records.values())

    def get(self, key_id_or_name: str) -> KeyRecord:
        """The key with this id, else the one active key with this name."""
        return self._resolve(self._current(), key_id_or_name)

    def __len__(self) -> int:
        return len(self._current().records)

    def authenticate(self, token: str | None) -> KeyRecord | None:
        """The active key this token belongs to, else None (malformed, unknown, wrong secret
        or revoked). Digests are compared in constant time; an unknown key id costs the same
        hash and compare as a known one."""
        if not token:
            return None
        match = _TOKEN_RE.fullmatch(token)
        if match is None:
            return None  # the format is public: rejecting it early reveals nothing
        snap = self._current()
        key_id = match.group(1)
        presented = self._digest(snap.salt, token)
        expected = snap.digests.get(key_id)
        if expected is None:
            hmac.compare_digest(presented, self._dummy_digest)
            return None
        if not hmac.compare_digest(presented, expected):
            return None
        record = snap.records[key_id]
        return record if record.active else None

    def authorize(self, authorization_header: str | None, required_scope: str | None) -> AuthResult:
        """Decide a request from its ``Authorization`` header and the scope its endpoint needs
        (`ENDPOINT_SCOPES`; None: any valid key).

        401 when the bearer token is missing or malformed, or the key is unknown or revoked;
        403 when the key is valid but lacks the scope; 200 otherwise. The result carries the
        key (for the audit log) and a message for the response body."""
        if required_scope is not None and required_scope not in SCOPES:
            raise ValueError(f"unknown scope {required_scope!r} (valid: {sorted(SCOPES)})")
        token = parse_bearer(authorization_header)
        if token is None:
            if authorization_header and authorization_header.strip():
                return AuthResult(401, None, "expected 'Authorization: Bearer <API key>'")
            return AuthResult(401, None, "missing bearer token")
        record = self.authenticate(token)
        if record is None:
            return AuthResult(401, None, "invalid or revoked API key")
        if required_scope is not None and not record.has_scope(required_scope):
            return AuthResult(403, record, f"this key lacks the '{required_scope}' scope",
                              scope=required_scope)
        return AuthResult(200, record, "ok", scope=required_scope)

    def authorize_path(self, authorization_header: str | None, path: str) -> AuthResult:
        """`authorize` for a request path: open paths pass without a key, known endpoints need
        their scope, any other path needs a valid key of any scope."""
        if is_open_path(path):
            return AuthResult(200, None, "open path")
        return self.authorize(authorization_header, scope_for_path(path))

    # -- writing -------------------------------------------------------------------------

    def create(self, name: str, scopes: object) -> tuple[KeyRecord, str]:
        """Make a key; return its record and the plain key, which is never shown again."""
        name = _validate_name(name)
        scope_tuple = validate_scopes(scopes)
        with self._transaction() as snap:
            while True:
                key_id = secrets.token_hex(4)
                if key_id not in snap.records:
                    break
            token = f"{_TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
            record = KeyRecord(key_id=key_id, name=name, scopes=scope_tuple, created_at=_now())
            snap.records[key_id] = record
            snap.digests[key_id] = self._digest(snap.salt, token)
        return record, token

    def revoke(self, key_id_or_name: str) -> KeyRecord:
        """Revoke a key by its id, or by its name when exactly one active key has it.
        Revoking a revoked key changes nothing and returns it."""
        with self._transaction() as snap:
            record = self._resolve(snap, key_id_or_name)
            if record.active:
                record = KeyRecord(record.key_id, record.name, record.scopes,
                                   record.created_at, revoked_at=_now())
                snap.records[record.key_id] = record
        return record

    @staticmethod
    def _resolve(snap: _Snapshot, key_id_or_name: str) -> KeyRecord:
        ident = key_id_or_name.strip()
        if ident.startswith(_TOKEN_PREFIX):  # someone pasted the whole key
            match = _TOKEN_RE.fullmatch(ident) or re.match(r"lc_([0-9a-f]{8})", ident)
            ident = match.group(1) if match else ident
        record = snap.records.get(ident)
        if record is not None:
            return record
        named = [r for r in snap.records.values() if r.name == ident]
        active = [r for r in named if r.active]
        if len(active) == 1:
            return active[0]
        if len(active) > 1:
            ids = ", ".join(r.key_id for r in active)
            raise KeyStoreError(
                f"{len(active)} active keys are named {ident!r} ({ids}): give the key id"
            )
        if named:
            return named[-1]
        raise UnknownKeyError(f"no key with id or name {ident!r}")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[_Snapshot]:
        """Lock the store against other writers, yield a fresh mutable copy, write it back."""
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with self._file_lock():
            current = self._read(self._stamp())
            work = _Snapshot(stamp=None, salt=current.salt,
                             records=dict(current.records), digests=dict(current.digests))
            yield work
            self._write(work)
            # Re-read on the next call rather than guess the new file's stamp: another
            # writer may already have replaced it.
            with self._lock:
                self._snapshot = None

    @contextlib.contextmanager
    def _file_lock(self) -> Iterator[None]:
        """An exclusive lock on ``<path>.lock`` so two ``lifecast keys`` commands cannot lose
        each other's change (readers never take it)."""
        import fcntl

        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _write(self, snap: _Snapshot) -> None:
        """Write atomically: a 0600 temp file in the same folder, fsync, then os.replace."""
        data = {
            "version": _FORMAT_VERSION,
            "salt": snap.salt.hex(),
            "keys": [
                {**rec.to_dict(), "hash": _HASH_PREFIX + snap.digests[rec.key_id].hex()}
                for rec in snap.records.values()  # creation order: new keys are appended
            ],
        }
        text = json.dumps(data, indent=2) + "\n"
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.",
                                   suffix=".tmp")
        try:
            os.fchmod(fd, 0o600)  # mkstemp already uses 0600; say it explicitly
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        with contextlib.suppress(OSError):  # make the rename itself durable
            dir_fd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
