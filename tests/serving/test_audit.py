"""The audit log of list exports: records read back, several processes appending at once."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from serving.audit import AuditLog
from serving.keys import KeyStore

ROOT = Path(__file__).resolve().parents[2]


def test_records_are_appended_and_read_back(tmp_path) -> None:
    log = AuditLog(tmp_path / "logs" / "audit.log")
    assert log.read() == []
    key, _ = KeyStore(tmp_path / "keys.json").create("marketing-alice", ["lists"])

    first = log.record(key=key, endpoint="/high_risk",
                       filters={"min_value": 100.0, "segment": "champions",
                                "as_of": date(2011, 12, 1), "stages": {"lapsing", "at_risk"}},
                       row_count=250, format="csv", client="10.0.0.7")
    log.record(key_id="1a2b3c4d", key_name="crm-prod", endpoint="/segments", filters=None,
               row_count=6, format="json")

    records = log.read()
    assert records[0] == first
    assert [r["endpoint"] for r in records] == ["/high_risk", "/segments"]
    rec = records[0]
    assert rec["key_id"] == key.key_id and rec["key_name"] == "marketing-alice"
    assert rec["filters"] == {"min_value": 100.0, "segment": "champions",
                              "as_of": "2011-12-01", "stages": ["at_risk", "lapsing"]}
    assert rec["row_count"] == 250 and rec["format"] == "csv" and rec["client"] == "10.0.0.7"
    assert rec["event"] == "list_export"
    ts = datetime.fromisoformat(rec["ts"])
    assert ts.tzinfo is not None and abs(datetime.now(UTC) - ts) < timedelta(minutes=1)
    assert records[1]["client"] is None and records[1]["filters"] == {}

    lines = log.path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)
    assert stat.S_IMODE(log.path.stat().st_mode) == 0o600


def test_read_since(tmp_path) -> None:
    log = AuditLog(tmp_path / "audit.log", fsync=False)
    t0 = datetime(2025, 1, 1, tzinfo=UTC)
    for day in range(5):
        log.record(endpoint="/high_risk", filters={}, row_count=day, format="json",
                   ts=t0 + timedelta(days=day))
    assert [r["row_count"] for r in log.read(since=t0 + timedelta(days=3))] == [3, 4]
    assert len(log.read(since="2025-01-02")) == 4  # naive means UTC
    assert log.read(since=datetime(2030, 1, 1)) == []


def test_torn_line_is_skipped_with_a_warning(tmp_path) -> None:
    log = AuditLog(tmp_path / "audit.log", fsync=False)
    log.record(endpoint="/segments", filters={}, row_count=1, format="json")
    with open(log.path, "a") as fh:
        fh.write('{"ts": "2025-01-')
    with pytest.warns(UserWarning, match="not a JSON record"):
        assert len(log.read()) == 1


def test_default_path_from_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIFECAST_AUDIT_LOG", str(tmp_path / "a.log"))
    assert AuditLog().path == tmp_path / "a.log"
    monkeypatch.delenv("LIFECAST_AUDIT_LOG")
    monkeypatch.chdir(tmp_path)
    assert AuditLog().path == tmp_path / ".lifecast" / "audit.log"
    assert not (tmp_path / ".lifecast").exists()  # nothing made until a record is written


_WORKER = """
import sys
from serving.audit import AuditLog

path, worker, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
log = AuditLog(path, fsync=False)
sys.stdin.readline()  # start together
for i in range(n):
    # Bigger than PIPE_BUF (4096 bytes) on purpose: the lock must keep lines whole anyway.
    log.record(key_id=f"{worker:08x}", key_name=f"worker-{worker}", endpoint="/high_risk",
               filters={"i": i, "pad": "x" * (5000 + i)}, row_count=i, format="csv")
"""


def test_concurrent_appends_from_several_processes(tmp_path) -> None:
    path = tmp_path / "audit.log"
    workers, per_worker = 4, 200
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    procs = [
        subprocess.Popen([sys.executable, "-c", _WORKER, str(path), str(w), str(per_worker)],
                         stdin=subprocess.PIPE, env=env, cwd=tmp_path)
        for w in range(workers)
    ]
    for proc in procs:
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
    for proc in procs:
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0

    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    records = [json.loads(line) for line in lines[:-1]]  # every line is whole JSON
    assert len(records) == workers * per_worker
    for w in range(workers):
        mine = [r["row_count"] for r in records if r["key_name"] == f"worker-{w}"]
        assert mine == list(range(per_worker))  # each writer's records in its order
    assert all(len(r["filters"]["pad"]) == 5000 + r["row_count"] for r in records)
