"""`lifecast serve`: import the MLflow champions into BentoML, then run ``bentoml serve``.

A thin wrapper: ``lifecast serve --port 3000`` is

1. `serving.app.check_cors_origins`: an entry of ``LIFECAST_CORS_ORIGINS`` that is not an
   origin (``crm.example.com``, ``https://crm.example.com/app``), which a worker would only
   log, and `check_listen_address` (not for ``--dry-run``): a port already in use, or a host
   that is not an IP address of this machine, stop here, before any model is imported,
   with a one-line error naming it and what to do (exit code 2) instead of a warning in the
   workers' log or ``bentoml serve``'s traceback.
2. `import_champions`: the versions of ``lifecast-churn`` / ``lifecast-clv`` carrying the
   ``champion`` alias in the MLflow registry (``MLFLOW_TRACKING_URI``, else ``./mlflow.db``)
   are imported into the BentoML model store (``BENTOML_HOME``, default ``~/bentoml``) as
   ``lifecast-churn:v<version>-<run id>``, labelled with the registry version and run. An
   already imported version is not copied again; the champion is always the store's
   ``latest``, so ``bentoml build`` (which packs ``lifecast-*:latest``) carries it too.
3. ``bentoml serve serving.service:Lifecast --port N --host H`` replaces this process (run
   as ``python -m serving.bentoml_serve ...``: `serving.bentoml_serve` gives each server a
   Prometheus folder of its own and removes it when the server stops), with
   the environment the service reads: the exact model tags, when the champions were read
   (``LIFECAST_CHAMPIONS_AT``: a batch `lifecast score` writes later was scored by newer
   champions, and the service says to restart it), ``LIFECAST_STORE_URL``,
   ``LIFECAST_KEYS_FILE``, ``LIFECAST_AUDIT_LOG`` (made absolute), the number of workers and
   the access log switch (``BENTOML_CONFIG_OPTIONS``) and ``BENTOML_DO_NOT_TRACK``.

So ``bentoml serve serving.service:Lifecast`` works the same once the champions are imported
(``python -c "from serving.serve_cli import import_champions; import_champions()"``).
"""

from __future__ import annotations

import os
import shlex
import sys
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer

from features.cli import echo_err

SERVICE = "serving.service:Lifecast"
KINDS = ("churn", "clv")


def _model_tag(name: str, version: str, run_id: str | None) -> str:
    suffix = f"-{run_id[:12].lower()}" if run_id else ""
    return f"{name}:v{version}{suffix}"


class ChampionArtifactsError(LookupError):
    """A champion's MLflow model artifacts cannot be found where its tracking store says they
    are (an ``mlartifacts`` folder moved or deleted, another artifact root)."""


def _artifacts_message(client: object, name: str, version: str, exc: Exception) -> str:
    """What `ChampionArtifactsError` says: the version, where its artifacts should be, which
    tracking store says so, and what to do."""
    import mlflow

    from features.urls import masked_url

    try:
        where = str(client.get_model_version_download_uri(name, version))  # type: ignore[attr-defined]
    except Exception:  # the location is a hint: the message stands without it
        where = f"models:/{name}/{version}"
    if where.startswith("file://"):
        where = where.removeprefix("file://")
    cause = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    return (f"the champion {name} v{version} cannot be served: its MLflow model artifacts "
            f"are not at {masked_url(where) if '://' in where else where} ({cause}), where "
            f"the tracking store {masked_url(mlflow.get_tracking_uri())} says they are. Put "
            f"them back there (a SQLite tracking store keeps them in mlartifacts/ beside "
            f"mlflow.db), point MLFLOW_TRACKING_URI at the tracking store whose artifacts "
            f"hold them, or train again (`lifecast train ... --promote always`, then "
            f"`lifecast score`)")


def import_champions(workdir: str | os.PathLike[str] = ".") -> dict[str, str]:
    """Import the MLflow champions into the BentoML model store; returns ``{kind: tag}``.

    Skips a version already imported (same registry version and run) unless it is not the
    store's ``latest`` for its name (an older champion promoted back), which is imported
    again so that ``<name>:latest`` is the champion. Raises
    `training.tracking.NoChampionError` when a model has no champion and `LookupError`
    when the working folder holds no tracking store (and MLFLOW_TRACKING_URI is not set),
    `ChampionArtifactsError` (a LookupError) when a champion's artifacts are missing.
    """
    import bentoml
    import mlflow.artifacts
    from bentoml.exceptions import BentoMLException, NotFound
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from training.tracking import (
        CHAMPION_ALIAS,
        MODEL_NAMES,
        NoChampionError,
        TrackingServerUnreachableError,
        configure,
        no_champion_message,
        unanswered_reason,
    )

    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    configure(workdir, create=False)  # a folder without a store: say so, create nothing
    client = MlflowClient()
    tags: dict[str, str] = {}
    for kind in KINDS:
        name = MODEL_NAMES[kind]
        try:
            mv = client.get_model_version_by_alias(name, CHAMPION_ALIAS)
        except MlflowException as exc:  # no such model, or no version with the alias
            raise NoChampionError(no_champion_message(client, kind)) from exc
        tag = _model_tag(name, str(mv.version), mv.run_id)
        try:
            existing = bentoml.models.get(tag)
        except NotFound:
            existing = None
        if existing is not None:
            try:
                latest = bentoml.models.get(f"{name}:latest").tag
            except NotFound:
                latest = None
            if str(latest) == str(existing.tag):
                tags[kind] = str(existing.tag)
                continue
            bentoml.models.delete(tag)  # re-import so that it becomes the latest
        try:
            # MLflow downloads, BentoML imports the local copy: BentoML 1.4's import_model,
            # given the models:/ URI, turns any failed download into an UnboundLocalError of
            # its own (its `finally` moves the path the download never returned), which hid
            # an artifact server that did not answer behind a traceback
            with tempfile.TemporaryDirectory(prefix="lifecast-import-") as downloads:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"models:/{name}/{mv.version}", dst_path=downloads)
                model = bentoml.mlflow.import_model(
                    tag,
                    local,
                    labels={"registry_version": str(mv.version),
                            "run_id": str(mv.run_id or ""), "kind": kind,
                            "alias": CHAMPION_ALIAS},
                    metadata={"mlflow_model": name, "registry_version": str(mv.version)},
                )
        except (BentoMLException, MlflowException, FileNotFoundError) as exc:
            # BentoML: 'artifact "models:/lifecast-churn/2" is not a MLflow model' (MLflow
            # downloaded nothing from a local artifact root that is gone); MLflow: a remote
            # artifact store without them (RESOURCE_DOES_NOT_EXIST)
            if isinstance(exc, FileNotFoundError) and bentoml_home_message(exc):
                raise  # BentoML's own store, not the artifacts (`serve_cmd` says so)
            reason = unanswered_reason(exc)
            if reason is not None:  # a server that did not answer: later
                raise TrackingServerUnreachableError(
                    f"the MLflow artifacts of the champion {name} v{mv.version} could not be "
                    f"downloaded: {reason}") from exc
            raise ChampionArtifactsError(
                _artifacts_message(client, name, str(mv.version), exc)) from exc
        tags[kind] = str(model.tag)
    return tags


def bentoml_home() -> Path:
    """BentoML's home, which holds its model store: ``BENTOML_HOME``, else ``~/bentoml``
    (BentoML's own rule, `BentoMLContainer.bentoml_home`, which creates it when first
    asked)."""
    home = os.environ.get("BENTOML_HOME", os.path.join(os.path.expanduser("~"), "bentoml"))
    return Path(os.path.expandvars(home)).expanduser()


def bentoml_home_message(exc: OSError) -> str | None:
    """What to do when BentoML cannot create or write its home (a read-only or unset HOME,
    a user whose home is ``/nonexistent``, as in a container or under a scheduler): set
    ``BENTOML_HOME``. None for an error about another file."""
    if not exc.filename:
        return None
    home, path = bentoml_home(), Path(os.fsdecode(exc.filename))
    if path != home and path not in home.parents and home not in path.parents:
        return None
    return (f"BentoML's model store {home} cannot be written ({exc.strerror}: {path}): "
            f"`lifecast serve` imports the champions there; set BENTOML_HOME to a folder "
            f"this user can write, e.g. BENTOML_HOME=$PWD/bentoml")


def check_listen_address(host: str, port: int) -> None:
    """Raise ValueError, saying what to do, when ``bentoml serve`` could not listen on
    ``host:port``: a port out of range or already in use, a host that is not an IP address
    of this machine, a port that needs privileges. Checked by binding a socket the way
    BentoML's does (``SO_REUSEADDR``) and closing it at once; a program that takes the port
    between this check and the server's start still makes ``bentoml serve`` fail."""
    import errno
    import ipaddress
    import socket

    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    try:
        family = (socket.AF_INET6 if ipaddress.ip_address(host).version == 6
                  else socket.AF_INET)
    except ValueError:
        raise ValueError(
            f"--host must be an IP address (bentoml serve takes no host names), got "
            f"{host!r}: pass --host 127.0.0.1 (this machine only) or --host 0.0.0.0 (every "
            f"interface)") from None
    try:
        _bind(family, host, port)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            other = next((p for p in range(port + 1, min(port + 50, 65536))
                          if _can_bind(family, host, p)), None)
            example = f" (e.g. --port {other}, free now)" if other else ""
            raise ValueError(
                f"port {port} on {host} is already in use (another `lifecast serve`, or "
                f"another program, listens on it): stop that server, or pass a free port "
                f"with --port{example}") from None
        if exc.errno == errno.EACCES:
            raise ValueError(
                f"no permission to listen on port {port} on {host} (ports below 1024 need "
                f"administrator rights): pass a port from 1024 up, e.g. --port 3000"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise ValueError(
                f"--host {host} is not an address of this machine: pass --host 127.0.0.1 "
                f"(this machine only) or --host 0.0.0.0 (every interface)") from None
        raise ValueError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; pass "
                         f"another --host or --port") from None


def _bind(family: int, host: str, port: int) -> None:
    import socket

    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as BentoML's socket
        sock.bind((host, port))


def _can_bind(family: int, host: str, port: int) -> bool:
    try:
        _bind(family, host, port)
    except OSError:
        return False
    return True


def serve_command(
    *, port: int = 3000, host: str = "127.0.0.1", workers: int = 1, store: str | None = None,
    keys_file: Path | None = None, audit_log: Path | None = None, access_log: bool = True,
    tags: dict[str, str] | None = None, base_env: dict[str, str] | None = None,
    champions_at: datetime | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and its environment for these options (paths made
    absolute, so the service finds them whatever its working folder). ``champions_at``:
    when the champion aliases were read (`serving.app.CHAMPIONS_AT_ENV`: a batch written
    later was scored by newer champions, which a restart serves)."""
    from serving.app import (
        CHAMPIONS_AT_ENV,
        CHURN_MODEL_ENV,
        CLV_MODEL_ENV,
        SERVICE_NAME,
        STORE_URL_ENV,
    )
    from serving.audit import AUDIT_LOG_ENV, default_audit_path
    from serving.keys import KEYS_FILE_ENV, default_keys_path
    from training.store import CustomerStore

    if not 0 < port < 65536:
        raise ValueError(f"--port must be between 1 and 65535, got {port}")
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    env = dict(os.environ if base_env is None else base_env)
    env[STORE_URL_ENV] = CustomerStore.configured_url(store or env.get(STORE_URL_ENV))
    env[KEYS_FILE_ENV] = str(Path(keys_file or default_keys_path()).expanduser().resolve())
    env[AUDIT_LOG_ENV] = str(Path(audit_log or default_audit_path()).expanduser().resolve())
    for kind, var in (("churn", CHURN_MODEL_ENV), ("clv", CLV_MODEL_ENV)):
        if tags and kind in tags:
            env[var] = tags[kind]
    if champions_at is not None:
        env[CHAMPIONS_AT_ENV] = champions_at.astimezone(UTC).isoformat()
    options = [
        f"services.{SERVICE_NAME}.workers={workers}",
        f"services.{SERVICE_NAME}.logging.access.enabled={'true' if access_log else 'false'}",
    ]
    extra = env.get("BENTOML_CONFIG_OPTIONS", "").strip()
    env["BENTOML_CONFIG_OPTIONS"] = " ".join([*options, extra] if extra else options)
    env.setdefault("BENTOML_DO_NOT_TRACK", "True")
    env.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # `bentoml serve` with a Prometheus folder of this server's own (`serving.bentoml_serve`:
    # BentoML's shared one is emptied by every server that starts)
    argv = [sys.executable, "-m", "serving.bentoml_serve", SERVICE, "--port", str(port),
            "--host", host]
    return argv, env


def _warn(message: str) -> None:
    echo_err(f"warning: {message}", typer.colors.YELLOW)


def _preflight(env: dict[str, str]) -> None:
    """Say what would make the service useless, before starting it (not fatal)."""
    from serving.app import STORE_URL_ENV
    from serving.keys import KEYS_FILE_ENV, KeyStore
    from training.store import CustomerStore, StoreError

    store = CustomerStore(env[STORE_URL_ENV])
    try:
        if store.current_batch() is None:
            _warn(f"the customer store {store.safe_url} has no scores yet: the service stays "
                  f"not ready (/readyz 503) until `lifecast score` writes a batch"
                  f"{store.unreached_hint()}")
    except StoreError as exc:
        _warn(f"cannot read the customer store: {exc}")
    finally:
        store.close()
    keys = KeyStore(env[KEYS_FILE_ENV])
    if not [k for k in keys.list() if k.active]:
        _warn(f"no active API key in {keys.path}: every request will get 401; create one with "
              f"`lifecast keys create --name crm --scope predict`")


def check_champions(tags: dict[str, str]) -> None:
    """Load the imported champions as a worker will (`serving.app.load_models`), so that
    models the service refuses (trained with other feature settings than each other, or on
    other feature definitions than this lifecast computes) stop `lifecast serve` with one
    line saying what to do, instead of a worker's traceback after the server started."""
    import bentoml

    from serving.app import load_models, model_folder

    load_models(*(model_folder(bentoml.models.get(tags[kind]).path) for kind in KINDS))


def register(app: typer.Typer) -> None:
    """Add ``lifecast serve`` to the root command."""
    app.command("serve")(serve_cmd)


def serve_cmd(
    port: Annotated[int, typer.Option("--port", "-p", help="HTTP port.")] = 3000,
    host: Annotated[str, typer.Option(help="Address to bind (0.0.0.0: every interface).")]
    = "127.0.0.1",
    workers: Annotated[int, typer.Option(help="Worker processes (each loads the models).")]
    = 1,
    store: Annotated[str | None, typer.Option(
        help="Customer store URL (default: $LIFECAST_STORE_URL, else "
             "sqlite:///./lifecast_store.db).")] = None,
    keys_file: Annotated[Path | None, typer.Option(
        "--keys-file", help="API keys (default: $LIFECAST_KEYS_FILE, else "
                            "./.lifecast/keys.json).")] = None,
    audit_log: Annotated[Path | None, typer.Option(
        "--audit-log", help="Audit log of list exports (default: $LIFECAST_AUDIT_LOG, else "
                            "./.lifecast/audit.log).")] = None,
    access_log: Annotated[bool, typer.Option(
        "--access-log/--no-access-log", help="BentoML's per-request access log (costs about "
                                             "a quarter of the throughput).")] = True,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Import the champions and print the command; do not serve.")]
    = False,
) -> None:
    """Serve the champion models and the customer store over HTTP (`bentoml serve`)."""
    from features.cli import fail
    from features.errors import EX_TEMPFAIL, TemporaryFailure, temporary_message
    from serving.app import check_cors_origins
    from training.tracking import NoChampionError

    try:
        # before importing the models: a bad setting or a port in use fails at once. A
        # worker would only log a CORS entry that is not an origin and serve without it.
        check_cors_origins()
        if not dry_run:
            check_listen_address(host, port)
        read_at = datetime.now(UTC)  # the champions the workers serve are those of now
        tags = import_champions(".")
        check_champions(tags)
        argv, env = serve_command(port=port, host=host, workers=workers, store=store,
                                  keys_file=keys_file, audit_log=audit_log,
                                  access_log=access_log, tags=tags, champions_at=read_at)
    except OSError as exc:
        raise fail(bentoml_home_message(exc) or str(exc)) from None
    except TemporaryFailure as exc:  # before ValueError: some are ValueErrors too
        raise fail(temporary_message(str(exc)), EX_TEMPFAIL) from None
    except (NoChampionError, LookupError, ValueError) as exc:
        raise fail(str(exc)) from None
    _preflight(env)
    if dry_run:
        typer.echo(f"would serve {tags['churn']} and {tags['clv']} on http://{host}:{port} "
                   f"with:", err=True)
        shown = {k: env[k] for k in sorted(env) if k.startswith(("LIFECAST_", "BENTOML_"))}
        typer.echo(" ".join(f"{k}={shlex.quote(v)}" for k, v in shown.items()) + " "
                   + shlex.join(argv))
        return
    typer.echo(f"serving {tags['churn']} and {tags['clv']} on http://{host}:{port} "
               f"(docs at /docs, OpenAPI at /openapi.json)", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
