"""API keys: the store file, authentication, authorization, reload across processes, the CLI."""

from __future__ import annotations

import json
import os
import re
import stat
import time

import pytest
from typer.testing import CliRunner

from serving import keys as keys_mod
from serving.keys import (
    ENDPOINT_SCOPES,
    KeyStore,
    KeyStoreError,
    UnknownKeyError,
    is_open_path,
    parse_bearer,
    scope_for_path,
)
from serving.keys_cli import keys_app

TOKEN_RE = re.compile(r"lc_[0-9a-f]{8}_[A-Za-z0-9_-]{43}")


@pytest.fixture()
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path / "state" / "keys.json")


def test_create_list_revoke(store: KeyStore) -> None:
    assert store.list() == []
    crm, crm_token = store.create("crm-prod", ["predict"])
    mkt, _ = store.create("marketing-alice", ["lists", "predict", "lists"])
    assert TOKEN_RE.fullmatch(crm_token)
    assert crm_token.startswith(f"lc_{crm.key_id}_")
    assert mkt.scopes == ("lists", "predict")
    assert [r.name for r in store.list()] == ["crm-prod", "marketing-alice"]
    assert all(r.active for r in store.list())

    revoked = store.revoke(crm.key_id)
    assert revoked.revoked_at is not None and not revoked.active
    assert store.revoke("marketing-alice").key_id == mkt.key_id  # by name
    assert store.revoke(crm.key_id).revoked_at == revoked.revoked_at  # idempotent
    assert [r.active for r in store.list()] == [False, False]
    with pytest.raises(UnknownKeyError, match="no key with id or name 'nobody'"):
        store.revoke("nobody")


def test_revoke_by_ambiguous_name_asks_for_the_id(store: KeyStore) -> None:
    a, _ = store.create("crm-prod", "predict")
    b, _ = store.create("crm-prod", "predict")  # rotation: new key before the old one goes
    with pytest.raises(KeyStoreError, match="2 active keys are named 'crm-prod'"):
        store.revoke("crm-prod")
    store.revoke(a.key_id)
    assert store.revoke("crm-prod").key_id == b.key_id


def test_file_holds_hash_not_secret_and_is_private(store: KeyStore) -> None:
    _, token = store.create("crm-prod", ["predict"])
    text = store.path.read_text()
    secret = token.split("_", 2)[2]
    assert token not in text and secret not in text
    data = json.loads(text)
    assert data["keys"][0]["hash"].startswith("hmac-sha256:")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    # No record handed out carries the hash either.
    assert "hash" not in store.list()[0].to_dict()
    assert not hasattr(store.list()[0], "hash")


def test_unknown_scope_and_bad_names_are_named(store: KeyStore) -> None:
    with pytest.raises(KeyStoreError, match=r"unknown scope 'admin' \(valid scopes: lists, "
                                            r"predict\)"):
        store.create("crm-prod", ["predict", "admin"])
    with pytest.raises(KeyStoreError, match="unknown scopes 'read', 'write'"):
        store.create("crm-prod", ["write", "read"])
    with pytest.raises(KeyStoreError, match="at least one scope"):
        store.create("crm-prod", [])
    with pytest.raises(KeyStoreError, match="invalid key name"):
        store.create("two words", ["predict"])
    with pytest.raises(KeyStoreError, match="looks like a key id"):
        store.create("deadbeef", ["predict"])
    assert not store.path.exists()  # nothing written on a refused create


def test_authenticate(store: KeyStore) -> None:
    rec, token = store.create("crm-prod", ["predict"])
    assert store.authenticate(token) == rec
    other_id = "0" * 8 if rec.key_id != "0" * 8 else "1" * 8
    bad = [
        None, "", "nonsense", token[:-1], token + "x", token[:-4] + "AAAA",
        token.replace(rec.key_id, other_id),  # unknown id, same secret
        token.upper(), " " + token, f"lc_{rec.key_id}_", "lc_" + "x" * 60,
    ]
    for candidate in bad:
        if candidate == token:
            continue
        assert store.authenticate(candidate) is None, candidate
    store.revoke(rec.key_id)
    assert store.authenticate(token) is None


def test_empty_or_missing_store_rejects(tmp_path) -> None:
    store = KeyStore(tmp_path / "absent.json")
    assert store.authenticate("lc_deadbeef_" + "A" * 43) is None
    assert store.authorize("Bearer lc_deadbeef_" + "A" * 43, "predict").status == 401
    assert not store.path.exists()  # reading makes nothing


def test_authorize_statuses_and_messages(store: KeyStore) -> None:
    crm, crm_token = store.create("crm-prod", ["predict"])
    _, both_token = store.create("marketing-alice", ["lists", "predict"])

    res = store.authorize(None, "predict")
    assert (res.status, res.key, res.message) == (401, None, "missing bearer token")
    assert res.headers["WWW-Authenticate"].startswith("Bearer")

    res = store.authorize("Bearer lc_0000000a_" + "A" * 43, "predict")
    assert (res.status, res.message) == (401, "invalid or revoked API key")

    res = store.authorize(f"Bearer {crm_token}", "lists")
    assert (res.status, res.key, res.message) == (403, crm, "this key lacks the 'lists' scope")
    assert 'error="insufficient_scope"' in res.headers["WWW-Authenticate"]

    res = store.authorize(f"Bearer {crm_token}", "predict")
    assert res.ok and res.status == 200 and res.key == crm and res.headers == {}
    assert store.authorize(f"Bearer {both_token}", "lists").ok
    assert store.authorize(f"Bearer {both_token}", None).ok  # any valid key

    store.revoke(crm.key_id)
    res = store.authorize(f"Bearer {crm_token}", "predict")
    assert (res.status, res.message) == (401, "invalid or revoked API key")

    with pytest.raises(ValueError, match="unknown scope"):
        store.authorize(f"Bearer {both_token}", "admin")


@pytest.mark.parametrize("template,ok", [
    ("Bearer {t}", True),
    ("bearer {t}", True),
    ("BEARER {t}", True),
    ("  Bearer    {t}  ", True),
    ("Bearer\t{t}", True),
    ("{t}", False),
    ("Basic {t}", False),
    ("Token {t}", False),
    ("Bearer", False),
    ("Bearer ", False),
    ("Bearer {t} extra", False),
    ("Bearer{t}", False),
    ("", False),
])
def test_header_parsing(store: KeyStore, template: str, ok: bool) -> None:
    _, token = store.create("crm-prod", ["predict"])
    header = template.format(t=token)
    assert (parse_bearer(header) == token) is ok
    assert store.authorize(header, "predict").status == (200 if ok else 401)


def test_revoke_in_another_process_takes_effect_without_restart(tmp_path) -> None:
    path = tmp_path / "keys.json"
    worker = KeyStore(path)  # a service worker: reads and caches
    cli = KeyStore(path)  # `lifecast keys revoke` in another process
    rec, token = cli.create("crm-prod", ["predict"])
    assert worker.authorize(f"Bearer {token}", "predict").ok
    cli.revoke(rec.key_id)
    assert worker.authorize(f"Bearer {token}", "predict").status == 401
    # ... and a key created elsewhere works at once too.
    _, fresh = cli.create("crm-new", ["predict"])
    assert worker.authorize(f"Bearer {fresh}", "predict").ok


def test_cache_is_reused_until_the_file_changes(store: KeyStore, monkeypatch) -> None:
    _, token = store.create("crm-prod", ["predict"])
    assert store.authenticate(token)
    reads = []
    real_read = store._read
    monkeypatch.setattr(store, "_read", lambda stamp: reads.append(stamp) or real_read(stamp))
    for _ in range(100):
        assert store.authenticate(token)
    assert reads == []
    KeyStore(store.path).create("other", ["lists"])
    assert store.authenticate(token)
    assert len(reads) == 1


def test_failed_write_leaves_the_old_file_intact(store: KeyStore, monkeypatch) -> None:
    rec, token = store.create("crm-prod", ["predict"])
    before = store.path.read_bytes()

    def boom(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(keys_mod.os, "replace", boom)
    with pytest.raises(OSError, match="disk on fire"):
        store.create("marketing-alice", ["lists"])
    with pytest.raises(OSError, match="disk on fire"):
        store.revoke(rec.key_id)
    monkeypatch.undo()

    assert store.path.read_bytes() == before
    leftovers = [p.name for p in store.path.parent.iterdir()
                 if p.name not in ("keys.json", "keys.json.lock")]
    assert leftovers == []
    assert [r.name for r in store.list()] == ["crm-prod"]
    assert store.authenticate(token) == rec  # the failed revoke did not take


def test_corrupt_store_fails_closed(store: KeyStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_text("{not json")
    with pytest.raises(KeyStoreError, match="cannot read the key store"):
        store.authorize("Bearer lc_deadbeef_" + "A" * 43, "predict")


def test_default_path_from_env(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIFECAST_KEYS_FILE", str(tmp_path / "k.json"))
    assert KeyStore().path == tmp_path / "k.json"
    monkeypatch.delenv("LIFECAST_KEYS_FILE")
    monkeypatch.chdir(tmp_path)
    assert KeyStore().path == tmp_path / ".lifecast" / "keys.json"


def test_paths_and_scopes() -> None:
    assert ENDPOINT_SCOPES == {"/predict": "predict", "/score": "predict",
                               "/high_risk": "lists", "/segments": "lists"}
    assert scope_for_path("/predict") == "predict"
    assert scope_for_path("/high_risk/submit") == "lists"  # BentoML task sub-paths
    assert scope_for_path("/predictions") is None
    for path in ["/", "/livez", "/healthz", "/readyz", "/metrics", "/docs.json", "/schema.json",
                 "/static_content/swagger-ui.css", "/assets/style.css", "/docs",
                 "/openapi.json"]:
        assert is_open_path(path), path
    for path in ["/predict", "/high_risk", "/static_content/../predict", "/metrics/x", ""]:
        assert not is_open_path(path), path


def test_authorize_path(store: KeyStore) -> None:
    _, token = store.create("crm-prod", ["predict"])
    assert store.authorize_path(None, "/healthz").ok
    assert store.authorize_path(None, "/predict").status == 401
    assert store.authorize_path(f"Bearer {token}", "/score").ok
    assert store.authorize_path(f"Bearer {token}", "/segments").status == 403
    assert store.authorize_path(None, "/something-else").status == 401
    assert store.authorize_path(f"Bearer {token}", "/something-else").ok


def test_authorize_is_fast(store: KeyStore) -> None:
    _, token = store.create("crm-prod", ["predict"])
    header = f"Bearer {token}"
    store.authorize(header, "predict")
    n = 2000
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(n):
            store.authorize(header, "predict")
        best = min(best, (time.perf_counter() - start) / n)
    # Typically ~15 us; a generous bound so a loaded CI box does not flake.
    assert best < 500e-6


# -- the command line ----------------------------------------------------------------------


def test_cli_create_list_revoke(tmp_path) -> None:
    runner = CliRunner()
    path = tmp_path / "keys.json"
    res = runner.invoke(keys_app, ["create", "--name", "crm-prod", "--scope", "predict",
                                   "--keys-file", str(path)])
    assert res.exit_code == 0, res.output
    token = res.stdout.strip()
    assert TOKEN_RE.fullmatch(token)  # stdout is the key alone, scriptable
    assert "shown only this once" in res.stderr
    assert KeyStore(path).authenticate(token) is not None

    res = runner.invoke(keys_app, ["create", "--name", "marketing-alice", "--scope", "lists",
                                   "--scope", "predict", "--keys-file", str(path)])
    assert res.exit_code == 0
    alice_token = res.stdout.strip()

    res = runner.invoke(keys_app, ["list", "--keys-file", str(path)])
    assert res.exit_code == 0
    assert token not in res.output and alice_token not in res.output
    assert token.split("_", 2)[2] not in res.output
    lines = res.stdout.splitlines()
    assert lines[0].split() == ["key_id", "name", "scopes", "created", "revoked"]
    assert "crm-prod" in lines[1] and "predict" in lines[1]
    assert "lists,predict" in lines[2]

    key_id = token.split("_")[1]
    res = runner.invoke(keys_app, ["revoke", key_id, "--keys-file", str(path)])
    assert res.exit_code == 0 and "revoked" in res.stdout
    assert KeyStore(path).authenticate(token) is None
    res = runner.invoke(keys_app, ["revoke", "marketing-alice", "--keys-file", str(path)])
    assert res.exit_code == 0
    res = runner.invoke(keys_app, ["list", "--keys-file", str(path)])
    assert all(line.split()[-1] != "-" for line in res.stdout.splitlines()[1:])


def test_cli_errors(tmp_path) -> None:
    runner = CliRunner()
    path = str(tmp_path / "keys.json")
    res = runner.invoke(keys_app, ["create", "--name", "x", "--scope", "admin",
                                   "--keys-file", path])
    assert res.exit_code == 2 and "unknown scope 'admin'" in res.stderr
    res = runner.invoke(keys_app, ["revoke", "nobody", "--keys-file", path])
    assert res.exit_code == 2 and "no key with id or name 'nobody'" in res.stderr
    res = runner.invoke(keys_app, ["list", "--keys-file", path])
    assert res.exit_code == 0 and "no keys" in res.stderr


def test_cli_uses_env_path(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("LIFECAST_KEYS_FILE", str(tmp_path / "env-keys.json"))
    res = CliRunner().invoke(keys_app, ["create", "--name", "crm", "--scope", "predict"])
    assert res.exit_code == 0
    assert (tmp_path / "env-keys.json").exists()
    assert os.environ["LIFECAST_KEYS_FILE"].endswith("env-keys.json")
