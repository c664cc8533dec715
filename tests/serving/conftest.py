"""Fixtures of the service tests: a small trained model set in a temporary BentoML model store,
a customer store holding its scores, and API keys.

Nothing touches ``~/bentoml``: ``BENTOML_HOME`` points at a temporary folder before BentoML
reads it (BentoML resolves it once per process, on first use). The fast tier trains once per
session on the bundled demo data with few trees (no MLflow: the models are laid out in the
BentoML store exactly as ``bentoml.mlflow.import_model`` lays out an MLflow champion, which
`serving.app.model_folder` reads); the slow tier (``test_service_integration.py``,
``test_built_bento.py``) goes through MLflow, ``lifecast serve`` and ``bentoml build`` for real,
with the fixtures at the end of this file (`workdir`, `built_bento`, `start_server`).
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

# Before anything imports BentoML's container: every BentoML store of this test session lives
# here, never in ~/bentoml.
_BENTOML_HOME = Path(tempfile.mkdtemp(prefix="lifecast-test-bentoml-"))
os.environ["BENTOML_HOME"] = str(_BENTOML_HOME)
os.environ["BENTOML_DO_NOT_TRACK"] = "True"
# BentoML's Prometheus client runs in multiprocess mode and needs a folder (`bentoml serve`
# makes one; an in-process ASGI app does not)
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(_BENTOML_HOME / "prometheus"))
(_BENTOML_HOME / "prometheus").mkdir(exist_ok=True)
atexit.register(shutil.rmtree, _BENTOML_HOME, ignore_errors=True)

#: The demo data's contract columns (as DEMO_MAPPING without product columns, like the README).
CHURN_VERSION, CLV_VERSION = "7", "8"


@dataclass
class World:
    """Everything the service needs, made once per session."""

    root: Path
    store_url: str
    keys_file: Path
    audit_log: Path
    models: object  # training.pipeline.FittedModels
    as_of: object  # pandas.Timestamp of the batch
    transactions: object  # the demo data on the contract, as pandas
    train_result: object  # training.pipeline.TrainResult (the slow tier logs it to MLflow)
    tokens: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)


def bentoml_home() -> Path:
    return _BENTOML_HOME


def save_to_bentoml(models, versions: dict[str, str]) -> dict[str, str]:
    """Put both models into the BentoML store in the layout of an MLflow import
    (``mlflow_model/MLmodel`` naming ``artifacts/<kind>`` as the pyfunc's model folder)."""
    import bentoml
    import yaml

    from training.tracking import MODEL_NAMES

    tags = {}
    for kind, model in (("churn", models.churn), ("clv", models.value)):
        with bentoml.models.create(MODEL_NAMES[kind],
                                   labels={"registry_version": versions[kind]}) as bm:
            root = Path(bm.path) / "mlflow_model"
            folder = root / "artifacts" / kind
            model.save(folder)
            models.segmenter.save(folder / "segmenter.json")
            (folder / "lifecast.json").write_text(json.dumps(
                {"kind": kind, "as_of": str(models.as_of), "version": versions[kind]}))
            (root / "MLmodel").write_text(yaml.safe_dump({"flavors": {"python_function": {
                "artifacts": {"model": {"path": f"artifacts/{kind}"}}}}}))
        tags[kind] = str(bm.tag)
    return tags


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from bentoml._internal.configuration.containers import BentoMLContainer

    from features import DEMO_MAPPING, demo_data_path, load_transactions
    from features.config import FeatureConfig
    from serving.keys import KeyStore
    from training.models import TrainConfig
    from training.pipeline import train
    from training.scoring import score

    home = Path(BentoMLContainer.bentoml_home.get())
    assert home == _BENTOML_HOME, f"BentoML already uses {home}: import order changed"
    root = tmp_path_factory.mktemp("lifecast-service")
    config = TrainConfig(
        features=FeatureConfig(churn_horizon_days=90, clv_horizon_days=90, n_snapshots=5),
        n_estimators=40, early_stopping_rounds=20, num_threads=1,
    )
    tx = load_transactions(demo_data_path(), DEMO_MAPPING)
    trained = train(tx, config=config)
    models = trained.models
    models.versions = {"churn": CHURN_VERSION, "clv": CLV_VERSION}
    # the exact tags, not ``:latest``: the slow tier's `built_bento` imports other champions
    # as ``:latest`` into this session's store, and the tests after it would load those
    tags = save_to_bentoml(models, models.versions)
    store_url = f"sqlite:///{root / 'lifecast_store.db'}"
    result = score(tx, store_url=store_url, models=models)

    keys = KeyStore(root / "keys.json")
    tokens = {}
    for name, scopes in (("crm", ["predict"]), ("marketing", ["lists"]),
                         ("admin", ["predict", "lists"]), ("revoked", ["predict", "lists"])):
        _, tokens[name] = keys.create(name, scopes)
    keys.revoke("revoked")
    env = {
        "LIFECAST_STORE_URL": store_url,
        "LIFECAST_KEYS_FILE": str(root / "keys.json"),
        "LIFECAST_AUDIT_LOG": str(root / "audit.log"),
        "LIFECAST_STORE_CHECK_SECONDS": "0",
        "LIFECAST_CHURN_MODEL": tags["churn"],
        "LIFECAST_CLV_MODEL": tags["clv"],
    }
    return World(root=root, store_url=store_url, keys_file=root / "keys.json",
                 audit_log=root / "audit.log", models=models, as_of=result.as_of,
                 transactions=tx.to_pandas(), train_result=trained, tokens=tokens, env=env)


@pytest.fixture(scope="module")
def service_env(world: World):
    """The service's environment variables, for one test module."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in world.env.items():
            mp.setenv(key, value)
        mp.delenv("LIFECAST_CORS_ORIGINS", raising=False)  # tests that want CORS set it
        yield world.env


@pytest.fixture(scope="session")
def stored_batch():
    """``read(url)``: the scores and stored features of every customer of the current batch
    in the customer store at ``url``."""
    from training.store import CustomerStore

    def read(url: str):
        store = CustomerStore(url)
        try:
            ranked, _ = store.ranked(min_churn_probability=None, min_value=None,
                                     limit=100_000)
            scores, feats, _ = store.get_customers(ranked["customer_id"].tolist())
        finally:
            store.close()
        return scores, feats

    return read


# --- the slow tier: real processes -------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: seconds a server has to answer /readyz with 200
READY_TIMEOUT = 300


@pytest.fixture(scope="session")
def clean_env() -> dict[str, str]:
    """The environment a server subprocess starts from: this one without the service's settings,
    MLflow's tracking URI and the Prometheus folder (``bentoml serve`` makes its own), with the
    virtualenv's scripts first on PATH."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LIFECAST_", "MLFLOW_TRACKING_URI", "PROMETHEUS_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _register_champions(world, folder: Path, then: Callable[[], Any] | None = None):
    """Log ``world``'s trained models to an MLflow registry (mlflow.db) in ``folder`` as the
    champions, run ``then()`` while the tracking store is that one, and put the global
    tracking URI back; returns `log_training`'s summary (and ``then``'s result)."""
    import mlflow
    from mlflow.tracking._tracking_service import utils as tracking_utils

    from training import tracking

    previous = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setattr(tracking, "_last_set_uri", None)
        tracking.configure(folder)
        try:
            summary = tracking.log_training(world.train_result, source="demo", promote="always")
            return summary, (then() if then is not None else None)
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="session")
def register_champions():
    """`_register_champions`, for tests that need a registry of their own."""
    return _register_champions


@pytest.fixture(scope="session")
def workdir(world, tmp_path_factory):
    """A working folder as `lifecast train` and `lifecast score` leave it: an MLflow registry
    (mlflow.db) with the trained models as champions, a customer store scored by them
    (lifecast_store.db) and API keys (.lifecast/keys.json). ``(folder, versions, tokens)``:
    the champions' registry versions by kind, the keys by name (crm: predict, marketing:
    lists, admin: both)."""
    from serving.keys import KeyStore
    from training import tracking
    from training.scoring import score

    folder = tmp_path_factory.mktemp("served")
    summary, _ = _register_champions(world, folder, lambda: score(
        world.transactions, store_url=f"sqlite:///{folder / 'lifecast_store.db'}",
        models=tracking.load_champions(folder / "downloads")))
    keys = KeyStore(folder / ".lifecast" / "keys.json")
    tokens = {name: keys.create(name, scopes)[1] for name, scopes in
              (("crm", ["predict"]), ("marketing", ["lists"]), ("admin", ["predict", "lists"]))}
    return folder, summary.versions, tokens


@dataclass
class BuiltBento:
    tag: str  # name:version
    path: Path  # its folder in the session's BentoML store


@pytest.fixture(scope="session")
def built_bento(workdir, clean_env: dict[str, str]) -> Iterator[BuiltBento]:
    """`bentoml build` of the repository, offline, in the session's BentoML store (see the top
    of this file), after ``lifecast serve --dry-run`` imported `workdir`'s champions into it as
    ``lifecast-churn:latest`` / ``lifecast-clv:latest`` (as bentofile.yaml says). Deleted at the
    end of the session."""
    import yaml

    folder = workdir[0]
    env = {**clean_env, "BENTOML_DO_NOT_TRACK": "True"}
    imported = subprocess.run([str(BIN / "lifecast"), "serve", "--dry-run"], cwd=folder, env=env,
                              capture_output=True, text=True, timeout=600)
    assert imported.returncode == 0, imported.stdout[-3000:] + imported.stderr[-3000:]
    out = subprocess.run([str(BIN / "bentoml"), "build", str(ROOT), "--output", "tag"],
                         capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    tag = out.stdout.strip().splitlines()[-1].removeprefix("__tag__:")
    name, version = tag.split(":")
    path = bentoml_home() / "bentos" / name / version
    info = yaml.safe_load((path / "bento.yaml").read_text())
    assert (info["name"], info["version"]) == (name, version)
    yield BuiltBento(tag=tag, path=path)
    shutil.rmtree(path, ignore_errors=True)


#: ``LIFECAST_TEST_PORTS=3200-3299``: the servers the tests start listen on a free port of
#: that range (a machine shared with other servers); unset, on any free port.
TEST_PORTS_ENV = "LIFECAST_TEST_PORTS"


def _free_port() -> int:
    low, _, high = os.environ.get(TEST_PORTS_ENV, "").partition("-")
    candidates = range(int(low), int(high or low) + 1) if low.strip() else [0]
    for port in candidates:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return s.getsockname()[1]
    raise RuntimeError(f"no free port in {TEST_PORTS_ENV}={os.environ[TEST_PORTS_ENV]}")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def _stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, SIGKILL what remains."""
    pgid = proc.pid  # started with start_new_session: its own group
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=60)
    deadline = time.monotonic() + 30
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.5)
    if _group_alive(pgid):
        os.killpg(pgid, signal.SIGKILL)
        proc.wait(timeout=30)


def _proc_stat(pid: int) -> tuple[str, int, int] | None:
    """``(state, parent pid, start time)`` of a process, from Linux's /proc; None when it is
    gone (or there is no /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except (OSError, ValueError):
        return None
    return fields[0], int(fields[1]), int(fields[19])


def _descendants(pid: int) -> dict[int, int]:
    """The processes below ``pid`` (Linux /proc; none elsewhere), as ``{pid: start time}``.
    BentoML's supervisor (circus) starts its workers in sessions of their own: terminating the
    server's process group does not reach them."""
    children: dict[int, list[tuple[int, int]]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        stat = _proc_stat(int(entry.name))
        if stat is not None:
            children.setdefault(stat[1], []).append((int(entry.name), stat[2]))
    found: dict[int, int] = {}
    todo = [pid]
    while todo:
        for child, started in children.get(todo.pop(), []):
            if child not in found:
                found[child] = started
                todo.append(child)
    return found


def _alive(pid: int, started: int) -> bool:
    stat = _proc_stat(pid)
    return stat is not None and stat[2] == started and stat[0] != "Z"


def _stop_descendants(spawned: dict[int, int]) -> list[int]:
    """Wait for processes the server started to end after it stopped; SIGKILL and return those
    that did not."""
    deadline = time.monotonic() + 30
    while any(_alive(p, s) for p, s in spawned.items()) and time.monotonic() < deadline:
        time.sleep(0.5)
    left = [p for p, s in spawned.items() if _alive(p, s)]
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return left


@dataclass
class Running:
    url: str  # http://127.0.0.1:<port>
    proc: subprocess.Popen  # the command's process, leader of its process group
    log: Path  # its stdout and stderr

    def processes(self) -> list[int]:
        """The command's process and those below it (Linux; only the command's elsewhere)."""
        return [self.proc.pid, *_descendants(self.proc.pid)]


@contextlib.contextmanager
def _serving(argv: list[str], *, cwd: Path, env: dict[str, str], log: Path,
             ready_timeout: float = READY_TIMEOUT) -> Iterator[Running]:
    import httpx

    port = _free_port()
    left: list[int] = []
    with open(log, "wb") as out:
        proc = subprocess.Popen([*argv, "--port", str(port)], cwd=cwd, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + ready_timeout
            while True:
                if proc.poll() is not None:
                    pytest.fail(f"{' '.join(argv)} exited with {proc.returncode}:\n"
                                + log.read_text()[-4000:])
                try:
                    if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    pytest.fail("service not ready in time:\n" + log.read_text()[-4000:])
                time.sleep(1)
            yield Running(url=url, proc=proc, log=log)
        finally:
            spawned = _descendants(proc.pid)
            _stop_group(proc)
            left = _stop_descendants(spawned)
    assert not _group_alive(proc.pid), "server processes left behind"
    assert not left, f"server processes left behind (killed): {left}"


@pytest.fixture(scope="session")
def start_server() -> Callable[..., contextlib.AbstractContextManager[Running]]:
    """``with start_server(argv, cwd=..., env=..., log=...) as running:`` runs ``argv --port
    <a free port>`` in its own process group (output to ``log``) until ``/readyz`` answers 200
    (the test fails with the end of the log if the command exits first or is not ready within
    READY_TIMEOUT seconds), and at the end terminates the whole group (kills it if it lingers),
    waits for the processes it started in groups of their own (BentoML's workers), and fails if
    any of them had to be killed."""
    return _serving
