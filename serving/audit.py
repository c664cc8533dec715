"""The audit log of list exports: who pulled which customers' data, when, how many rows.

High-risk and segment lists hold personal data, so every export is recorded: one JSON object
per line (JSON Lines), appended, never rewritten::

    {"ts": "2025-11-22T17:30:00.123+00:00", "event": "list_export", "key_id": "1a2b3c4d",
     "key_name": "marketing-alice", "endpoint": "/high_risk", "filters": {"min_value": 100},
     "row_count": 250, "format": "csv", "client": "10.0.0.7"}

Several service workers append to the same file. Each record is written with one ``write()``
on a descriptor opened with ``O_APPEND`` (the kernel puts it at the current end), under an
exclusive ``flock`` (so even records larger than a page, or a short write finished by a second
call, never interleave). The file is opened per record, so log rotation (move, then a new file)
needs no signal. Records are fsync'ed by default: exports are rare, and an audit record lost
in a power cut is worse than a millisecond per export (``fsync=False`` turns it off).
Local filesystems only: O_APPEND and flock are not reliable on NFS.

Nothing happens on import; the file and its folder (mode 0600 / 0700) are made on first write.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Mapping
from datetime import UTC, date, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from serving.keys import KeyRecord

__all__ = ["AUDIT_LOG_ENV", "AuditLog", "default_audit_path"]

AUDIT_LOG_ENV = "LIFECAST_AUDIT_LOG"


def default_audit_path() -> Path:
    """``$LIFECAST_AUDIT_LOG``, else ``./.lifecast/audit.log`` (read at call time)."""
    env = os.environ.get(AUDIT_LOG_ENV)
    return Path(env) if env else Path.cwd() / ".lifecast" / "audit.log"


def _jsonable(value: Any) -> Any:
    """For filter values json cannot write: dates, numpy / pandas scalars, sets, paths."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, set | frozenset):
        return sorted(value, key=str)
    item = getattr(value, "item", None)  # numpy and pandas scalars
    if callable(item):
        with contextlib.suppress(Exception):
            return item()
    isoformat = getattr(value, "isoformat", None)  # pandas Timestamp
    if callable(isoformat):
        return isoformat()
    return str(value)


def _as_utc(ts: datetime | str) -> datetime:
    if isinstance(ts, str):
        ts = datetime.fromisoformat(ts)
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


class AuditLog:
    """Append-only JSON Lines audit log of list exports, safe across processes."""

    def __init__(self, path: str | os.PathLike[str] | None = None, *, fsync: bool = True) -> None:
        self.path = Path(path) if path is not None else default_audit_path()
        self.fsync = fsync

    def record(
        self,
        *,
        endpoint: str,
        filters: Mapping[str, Any] | None,
        row_count: int,
        format: str,
        key: KeyRecord | None = None,
        key_id: str | None = None,
        key_name: str | None = None,
        client: str | None = None,
        ts: datetime | None = None,
    ) -> dict[str, Any]:
        """Append one export and return the record written.

        ``key`` is the `serving.keys.KeyRecord` from `AuthResult.key` (its ``key_id`` and
        ``name`` are taken); or give ``key_id`` / ``key_name`` directly. ``filters`` are the
        request's filter parameters; ``format`` is "csv" or "json"; ``client`` the caller's
        address when known."""
        if key is not None:
            key_id = key_id or key.key_id
            key_name = key_name or key.name
        when = _as_utc(ts) if ts is not None else datetime.now(UTC)
        entry: dict[str, Any] = {
            "ts": when.isoformat(timespec="milliseconds"),
            "event": "list_export",
            "key_id": key_id,
            "key_name": key_name,
            "endpoint": endpoint,
            "filters": dict(filters or {}),
            "row_count": int(row_count),
            "format": format,
            "client": client,
        }
        line = (json.dumps(entry, default=_jsonable, ensure_ascii=False, separators=(",", ":"))
                + "\n").encode("utf-8")
        self._append(line)
        return json.loads(line)  # what was written, with filters as stored

    def _append(self, data: bytes) -> None:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            view = memoryview(data)
            while view:  # one write() in practice; loop for a short write (disk full, signal)
                written = os.write(fd, view)
                view = view[written:]
            if self.fsync:
                os.fsync(fd)
        finally:
            os.close(fd)  # releases the lock

    def read(self, since: datetime | str | None = None) -> list[dict[str, Any]]:
        """Every record, oldest first; with ``since``, those at or after it (naive: UTC).
        A line that is not JSON (a torn write after a crash) is skipped with a warning."""
        if not self.path.exists():
            return []
        bound = _as_utc(since) if since is not None else None
        out: list[dict[str, Any]] = []
        with open(self.path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    warnings.warn(f"{self.path}:{lineno}: not a JSON record, skipped",
                                  stacklevel=2)
                    continue
                if bound is not None and _as_utc(entry["ts"]) < bound:
                    continue
                out.append(entry)
        return out
