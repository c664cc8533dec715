"""A throwaway PostgreSQL server for tests.

`postgres_server` starts a private server from the PostgreSQL binaries found on this machine
(``/usr/lib/postgresql/<version>/bin``, or ``pg_ctl`` on PATH), on a free port of 127.0.0.1 with
a data folder in a fresh temporary folder and trust authentication, yields its SQLAlchemy URL,
then stops it (``-m immediate``) and deletes the folder. PostgreSQL refuses to run as root, so
under root the server runs as the ``postgres`` system user (created by the Debian package).

`unavailable_reason` says why no server can be started (no binaries, no driver, ...), so a test
can skip saying why. Install with ``apt-get install -y postgresql`` and
``pip install 'lifecast[postgres]'``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TOOLS = ("initdb", "pg_ctl", "postgres")


def find_bin_dir() -> Path | None:
    """The newest folder holding initdb, pg_ctl and postgres, or None."""
    candidates = sorted(
        (Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")),
        key=lambda p: _version_key(p.parent.name),
        reverse=True,
    )
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all((folder / tool).is_file() for tool in _TOOLS):
            return folder
    return None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


def _run_as() -> str | None:
    """The user to run the server as: None for the current user; 'postgres' under root."""
    if os.geteuid() != 0:
        return None
    return "postgres"


def unavailable_reason() -> str | None:
    """Why `postgres_server` cannot work here, or None when it can."""
    if importlib.util.find_spec("psycopg") is None:
        return "psycopg is not installed (pip install 'lifecast[postgres]')"
    if find_bin_dir() is None:
        return ("no PostgreSQL server binaries (initdb, pg_ctl, postgres) in "
                "/usr/lib/postgresql/*/bin or on PATH (apt-get install -y postgresql)")
    user = _run_as()
    if user is not None:
        try:
            pwd.getpwnam(user)
        except KeyError:
            return "running as root and there is no 'postgres' user to run the server as"
    return None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run(args: list[str], user: str | None, log: Path | None = None) -> None:
    result = subprocess.run(
        args, user=user, capture_output=True, text=True, timeout=120, check=False,
        cwd="/",  # the server user may not be allowed into the current folder
    )
    if result.returncode != 0:
        tail = log.read_text()[-2000:] if log is not None and log.exists() else ""
        raise RuntimeError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
            f"\n{tail}"
        )


@contextlib.contextmanager
def postgres_server(password: str | None = None) -> Iterator[str]:
    """Start a throwaway server; yield ``postgresql+psycopg://lifecast@127.0.0.1:<port>/postgres``.

    With ``password``, connections over TCP must give it (SCRAM): the URL yielded is
    ``postgresql+psycopg://lifecast:<password>@...``, and a wrong one is refused as a real
    server refuses it."""
    reason = unavailable_reason()
    if reason is not None:
        raise RuntimeError(f"cannot start PostgreSQL: {reason}")
    bin_dir = find_bin_dir()
    assert bin_dir is not None
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="lifecast-pg-"))
    data, log = root / "data", root / "server.log"
    if user is not None:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    started = False
    try:
        auth = ["--auth=trust"]
        if password is not None:
            pwfile = root / "password"
            pwfile.write_text(password + "\n")
            if user is not None:
                os.chown(pwfile, entry.pw_uid, entry.pw_gid)
            auth = ["--auth-local=trust", "--auth-host=scram-sha-256", f"--pwfile={pwfile}"]
        _run([str(bin_dir / "initdb"), "-D", str(data), "-U", "lifecast", *auth,
              "-E", "UTF8", "--no-sync", "--no-instructions"], user)
        port = _free_port()
        options = (f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   f"-c synchronous_commit=off -c full_page_writes=off")
        _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(log), "-o", options,
              "-w", "-t", "60", "start"], user, log)
        started = True
        login = "lifecast" if password is None else f"lifecast:{password}"
        yield f"postgresql+psycopg://{login}@127.0.0.1:{port}/postgres"
    finally:
        if started:
            with contextlib.suppress(Exception):
                _run([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w",
                      "stop"], user)
        shutil.rmtree(root, ignore_errors=True)


def create_database(server_url: str) -> str:
    """A new empty database on the server of ``server_url``; returns its URL."""
    import sqlalchemy as sa

    name = f"t_{secrets.token_hex(6)}"
    engine = sa.create_engine(server_url, isolation_level="AUTOCOMMIT")
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql(f"CREATE DATABASE {name}")
    finally:
        engine.dispose()
    return server_url.rsplit("/", 1)[0] + f"/{name}"
