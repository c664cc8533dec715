"""`lifecast keys create|list|revoke`: manage the service's API keys.

Commands only parse and call `serving.keys.KeyStore`. Mount with
``app.add_typer(keys_app, name="keys")``. Kept apart from `serving.keys` so the service
workers import the key store without the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from features.cli import echo_err
from serving.keys import KEYS_FILE_ENV, SCOPES, KeyRecord, KeyStore, KeyStoreError

keys_app = typer.Typer(
    help="API keys for the prediction service: 'predict' (CRM) and 'lists' (marketing) scopes.",
    no_args_is_help=True,
)

KeysFile = Annotated[
    Path | None,
    typer.Option(
        "--keys-file",
        help=f"The key store (default: ${KEYS_FILE_ENV}, else ./.lifecast/keys.json).",
    ),
]


def _store(keys_file: Path | None) -> KeyStore:
    return KeyStore(keys_file)


def _fail(exc: Exception) -> typer.Exit:
    echo_err(f"error: {exc}", typer.colors.RED)
    return typer.Exit(2)


@keys_app.command("create")
def create_cmd(
    name: Annotated[str, typer.Option("--name", help="Who uses it: 'crm-prod', "
                                                     "'marketing-alice', ...")],
    scope: Annotated[list[str], typer.Option(
        "--scope", help=f"A scope to grant; repeat for several ({', '.join(sorted(SCOPES))}).")],
    keys_file: KeysFile = None,
) -> None:
    """Create a key and print it once: only its hash is stored."""
    store = _store(keys_file)
    try:
        record, token = store.create(name, scope)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    typer.echo(f"created key {record.key_id} for {record.name!r} "
               f"(scopes: {', '.join(record.scopes)}) in {store.path}", err=True)
    typer.echo(token)
    echo_err("Store this key now (a secret manager, the caller's config): it is shown only "
             "this once and cannot be recovered. Lost it? Revoke it and create another.",
             typer.colors.YELLOW)


def _row(rec: KeyRecord) -> list[str]:
    return [rec.key_id, rec.name, ",".join(rec.scopes),
            rec.created_at.strftime("%Y-%m-%d %H:%M:%SZ"),
            rec.revoked_at.strftime("%Y-%m-%d %H:%M:%SZ") if rec.revoked_at else "-"]


@keys_app.command("list")
def list_cmd(keys_file: KeysFile = None) -> None:
    """List keys (id, name, scopes, created, revoked); never secrets."""
    store = _store(keys_file)
    try:
        records = store.list()
    except KeyStoreError as exc:
        raise _fail(exc) from None
    if not records:
        typer.echo(f"no keys in {store.path}: create one with `lifecast keys create`", err=True)
        return
    rows = [["key_id", "name", "scopes", "created", "revoked"], *map(_row, records)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        typer.echo("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())


@keys_app.command("revoke")
def revoke_cmd(
    key_id_or_name: Annotated[str, typer.Argument(
        help="The key id, or the name when only one active key has it.")],
    keys_file: KeysFile = None,
) -> None:
    """Revoke a key; running services refuse it from their next request."""
    store = _store(keys_file)
    try:
        was_active = store.get(key_id_or_name).active
        record = store.revoke(key_id_or_name)
    except KeyStoreError as exc:
        raise _fail(exc) from None
    state = "revoked" if was_active else "was already revoked"
    typer.echo(f"key {record.key_id} ({record.name}) {state}")
