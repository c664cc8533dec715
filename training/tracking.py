"""MLflow tracking, the model registry and the ``champion`` alias.

Where runs go: `configure` resolves the tracking URI (``MLFLOW_TRACKING_URI`` when the
environment sets it, else a SQLite file ``<workdir>/mlflow.db``) and makes sure the experiment
exists; on a SQLite store its artifacts live in the folder beside the database file,
``<workdir>/mlartifacts``. Nothing happens at import: the command line (or a notebook) calls
`configure`; the other functions call it with the working folder when nobody has set a
tracking URI yet.

What a training run logs (`log_training`):

* params: the `TrainConfig` flattened (``features.churn_horizon_days``, ``learning_rate``, ...),
  the cutoff ``as_of``, the evaluation cutoffs and the data's source, and what the run read
  from it: the rows before ``as_of``, their customers and date range (``data.*``; the
  source's own totals as ``data.source_*``); ``config.json`` (the whole config) and
  ``data_report.json`` (the source's validation report) as artifacts;
* the data as an MLflow dataset input (context ``training``): its source, the contract
  schema and a profile of the same figures, with a digest of the rows before ``as_of``
  (`features.contract.Transactions.profile_before`): the same rows give the same digest,
  whatever horizons the run used and whatever the source holds after ``as_of``;
* metrics: every evaluation metric of the model and of the BG/NBD baseline, named
  ``churn_roc_auc``, ``baseline_churn_roc_auc``, ``clv_normalized_gini``, ... (``clv`` as
  in ``lifecast-clv``; runs of lifecast before session 23 wrote ``value_...``, which
  `run_metric` still reads);
* ``features.json`` (every model input with its description) and PNG plots under ``plots/``
  (calibration, gains, predicted vs actual value by decile, gain importance and a SHAP summary
  of each model);
* two pyfunc models, ``churn`` and ``clv`` (`LifecastModel`), registered as
  ``lifecast-churn`` and ``lifecast-clv``. Their artifact is one folder: what
  `ChurnModel.save` / `ValueModel.save` write (booster text and JSON) plus ``segmenter.json``
  (the fitted `RFMSegmenter`) and ``lifecast.json`` (kind, cutoffs, run). The pyfunc's
  ``predict`` returns churn probabilities / predicted value; scoring and serving load the same
  folder natively (`load_champions`, `champion_artifacts`) and use the booster directly.

The champion rule (``promote``): ``"auto"`` gives a new version the ``champion`` alias only if
its settings beat the current champion's on this run's evaluation snapshot, both fit as if
today were the evaluation cutoff on this run's data and scored on the outcomes after it
(`_refit_score`; the champion's registered model itself was fit on outcomes up to its own
as-of date, which can overlap this window): churn by ROC-AUC, ties broken by the Brier score;
CLV by normalized Gini. With the champion's settings unchanged (a scheduled retrain) the
scores are equal and the version trained on later data wins. With no champion yet the new
version is promoted. A champion that cannot be scored on the snapshot (other feature
settings, such as another horizon) is kept, and the decision says why. ``"always"``
promotes, ``"never"`` does not. Each kind is decided on its own; the decision and both
scores are logged (tags ``decision_churn`` / ``decision_clv``, metrics
``champion_churn_roc_auc``, ...); when a champion is replaced, by a later run or by
``lifecast promote``, the tags of both runs and both versions say so, and when
(`_mark_decision`). A run that fails part way (an exception, Ctrl-C) is
deleted with the model versions and logged models it registered, and the aliases it moved go
back (`_undo_run`). A run killed outright (``kill -9``) cannot do that: every run is tagged
with its process (`owner_tags`), and the next ``lifecast train`` (or ``promote``) marks such
a run KILLED once its process is provably gone, puts back the aliases it moved and tags its
versions so that none becomes champion (`end_dead_runs`). The champion is read again and
the aliases moved under a lock of the store (`registry_lock`): runs and ``lifecast promote``
at once on one machine act one after the other, each deciding against the champion the
other left.

The pyfunc models import this package (``training.tracking`` and ``training.models``) when
loaded, so load them where lifecast is installed.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd
from mlflow.data.dataset_source import DatasetSource
from mlflow.data.meta_dataset import MetaDataset
from mlflow.entities import ViewType
from mlflow.exceptions import MlflowException
from mlflow.pyfunc import PythonModel
from mlflow.types import ColSpec, Schema

from features.config import FeatureConfig
from features.errors import TemporaryFailure
from features.naming import counted, named
from features.process import ProcessId, gone_reason, this_process
from features.registry import DEFINITIONS_KEY, feature_names, recorded_definitions
from features.urls import masked_url
from features.warn import warn
from training.metrics import UndefinedMetricError, brier, normalized_gini, roc_auc
from training.models import (
    BASELINE_FEATURES,
    RETRAIN,
    TREE_CAP_TAG,
    ChurnModel,
    ValueModel,
    add_baseline_features,
    check_same_feature_settings,
    definitions_difference,
    feature_settings_diff,
    model_feature_names,
    warn_if_a_subset,
)
from training.pipeline import _timed

if TYPE_CHECKING:
    from mlflow import MlflowClient

    from features.segments import RFMSegmenter
    from training.pipeline import FittedModels, TrainResult

__all__ = [
    "CHAMPION_ALIAS",
    "DEFAULT_EXPERIMENT",
    "EXPERIMENT_ENV",
    "KINDS",
    "LIST_COLUMNS",
    "MODEL_NAMES",
    "PRIMARY_METRIC",
    "LifecastModel",
    "NoChampionError",
    "no_champion_message",
    "RunSummary",
    "champion_artifacts",
    "check_promote",
    "champion_versions",
    "configure",
    "end_dead_runs",
    "experiment_name",
    "list_models",
    "load_champions",
    "log_training",
    "model_input",
    "promote_run",
    "run_metric",
]

#: The two model kinds, in the order they are logged and listed.
KINDS: tuple[str, ...] = ("churn", "clv")
#: Registered model name per kind.
MODEL_NAMES: dict[str, str] = {"churn": "lifecast-churn", "clv": "lifecast-clv"}
#: The alias that marks the version used for scoring and serving.
CHAMPION_ALIAS = "champion"
DEFAULT_EXPERIMENT = "lifecast"
#: MLflow's own variable for the experiment runs go to; lifecast follows it too.
EXPERIMENT_ENV = "MLFLOW_EXPERIMENT_NAME"
#: The metric that decides the champion, per kind (higher is better for both).
PRIMARY_METRIC: dict[str, str] = {"churn": "roc_auc", "clv": "normalized_gini"}
#: The tie-break metric (lower is better), per kind.
TIE_BREAK_METRIC: dict[str, str | None] = {"churn": "brier", "clv": None}
#: Key of ``TrainResult.evaluation`` / ``eval_cutoffs`` / ``eval_predictions`` per kind.
EVAL_KEY: dict[str, str] = {"churn": "churn", "clv": "value"}
#: Label column of the training frame, per kind.
LABEL: dict[str, str] = {"churn": "churned", "clv": "future_value"}
#: How a kind's metrics are named in MLflow (``clv_normalized_gini``, ``champion_clv_...``,
#: ``baseline_clv_...``): the kind itself, as in ``lifecast-clv`` and ``decision_clv``.
#: Runs logged before session 23 named the value model's metrics ``value_...``
#: (`OLD_METRIC_PREFIX`); `run_metric` reads both.
METRIC_PREFIX: dict[str, str] = {"churn": "churn", "clv": "clv"}
OLD_METRIC_PREFIX: dict[str, str] = {"churn": "churn", "clv": "value"}
#: Name of the pyfunc's output, per kind.
OUTPUT_NAME: dict[str, str] = {"churn": "churn_probability", "clv": "predicted_clv"}

PROMOTE_CHOICES = ("auto", "always", "never")
SHAP_SAMPLE = 2_000
INPUT_EXAMPLE_ROWS = 5
_MODEL_ARTIFACT = "model"  # key of the folder in the pyfunc's artifacts
_SEGMENTER_FILE = "segmenter.json"
_MANIFEST_FILE = "lifecast.json"
#: the training log's rows per day (`features.contract.Transactions.daily_profile`), saved
#: with each model so that the champion rule can tell whether another run read the same log
_DAYS_FILE = "data_days.json"
_NO_CHAMPION = "no champion model registered yet: run `lifecast train` first"

_BASELINE_DESCRIPTIONS = {
    "bg_p_alive": "BG/NBD probability that the customer is still active at the cutoff "
    "(fitted on the snapshot's own population).",
    "bg_p_no_purchase": "BG/NBD probability of no purchase in the churn horizon "
    "(the baseline churn probability).",
    "bg_expected_orders": "BG/NBD expected number of orders in the churn horizon.",
    "gg_expected_value": "Gamma-Gamma expected value of one order.",
    "bg_clv": "BG/NBD x Gamma-Gamma expected spend in the value horizon "
    "(the baseline predicted value).",
}

# The packages the pyfunc's code imports when it is loaded (lifecast itself must be installed
# too). Pinned to the versions installed here; listing them saves MLflow from inferring them
# by loading the model in a subprocess.
_RUNTIME_PACKAGES = (
    "mlflow", "lightgbm", "numpy", "pandas", "scikit-learn", "scipy", "pydantic", "pyyaml",
    "ibis-framework", "duckdb", "pyarrow",
)

# The pyfunc's code (MLflow "models from code"): it builds the model instead of unpickling one.
_MODEL_CODE = '''"""MLflow entry point of a lifecast {kind} model (written by training.tracking)."""

import mlflow

from training.tracking import LifecastModel

mlflow.models.set_model(LifecastModel("{kind}"))
'''

_last_set_uri: str | None = None  # the URI `configure` set (it also lands in the environment)
_last_was_users = False  # ... and whether it came from the user's MLFLOW_TRACKING_URI


class NoChampionError(LookupError):
    """No version of a model carries the ``champion`` alias."""


@dataclass
class RunSummary:
    """What `log_training` did: the run, the registered versions and the champion decisions.

    ``versions`` and ``promoted`` are keyed by kind (``churn``, ``clv``); ``decision[kind]``
    holds ``message`` (as logged in the ``decision_<kind>`` tag), ``promoted``, ``metric``,
    ``new`` and ``champion`` (scores on the evaluation snapshot; ``champion`` is None without
    a comparable champion) and ``champion_version`` (the champion before this run, or None).
    """

    run_id: str
    versions: dict[str, str] = field(default_factory=dict)
    promoted: dict[str, bool] = field(default_factory=dict)
    decision: dict[str, dict[str, Any]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# where runs go
# --------------------------------------------------------------------------------------------


@contextmanager
def quiet_mlflow() -> Iterator[None]:
    """MLflow's own progress output off for the block; its warnings and errors still show.

    ``import mlflow`` gives the ``mlflow`` logger its own handler and the level of
    ``MLFLOW_LOGGING_LEVEL`` (INFO when unset), so lines like ``INFO mlflow.store.db.utils:
    Creating initial MLflow database tables...`` show whatever level was set before the
    (lazy) import. And the model registry prints ``Successfully registered model ...`` and
    ``Created version ...`` with ``mlflow.utils.logging_utils.eprint``, no logging at all:
    it writes to the module's ``MLFLOW_LOGGING_STREAM``, which MLflow itself switches back
    on after silencing it (``enable_logging``), so switching it off does not last. In the
    block the logger is at WARNING or above, and ``eprint`` writes to a stream that drops
    everything (the logger's handler keeps the real one). ``MLFLOW_LOGGING_LEVEL=INFO`` (or
    DEBUG) keeps everything.
    """
    import logging

    from mlflow.utils import logging_utils

    if (os.environ.get("MLFLOW_LOGGING_LEVEL") or "").strip().upper() in ("DEBUG", "INFO"):
        yield
        return

    class Discard(logging_utils.MlflowLoggingStream):
        def write(self, text: str) -> None:
            pass

        def flush(self) -> None:
            pass

    logger = logging.getLogger("mlflow")
    # the stream and the level are the process's: blocks in several threads at once (two
    # `log_training` calls) share one quieting, and the last to end restores what the first
    # found (each restoring its own would leave the output off for good)
    with _quiet_state["lock"]:
        if _quiet_state["depth"] == 0:
            _quiet_state["saved"] = (logger.level, list(logger.handlers),
                                     logging_utils.MLFLOW_LOGGING_STREAM)
            if logger.getEffectiveLevel() < logging.WARNING:
                logger.setLevel(logging.WARNING)
            logging_utils.MLFLOW_LOGGING_STREAM = Discard()
        _quiet_state["depth"] += 1
    try:
        yield
    finally:
        with _quiet_state["lock"]:
            _quiet_state["depth"] -= 1
            if _quiet_state["depth"] == 0:
                level, handlers, stream = _quiet_state.pop("saved")
                logging_utils.MLFLOW_LOGGING_STREAM = stream
                logger.setLevel(level)
                logger.handlers = handlers


_quiet_state: dict[str, Any] = {"lock": threading.Lock(), "depth": 0}


@quiet_mlflow()
def configure(workdir: Path | str = ".", experiment: str | None = None, *,
              create: bool = True) -> str:
    """Set the tracking URI and make ``experiment`` exist and be MLflow's active
    experiment; returns the URI.

    ``experiment`` defaults as in `experiment_name`: ``$MLFLOW_EXPERIMENT_NAME``, else
    ``lifecast``.

    ``MLFLOW_TRACKING_URI`` from the environment wins; otherwise the store is the SQLite file
    ``<workdir>/mlflow.db`` (made, with ``workdir``, when missing). On a SQLite store a new
    experiment keeps its artifacts in ``mlartifacts`` beside the database file.

    ``create=False`` is for commands that only read models (``lifecast models``, ``score``,
    ``promote``): a missing default store raises `LookupError` naming the file, instead of
    leaving an empty ``mlflow.db`` behind in whatever folder the command ran in.
    """
    global _last_set_uri, _last_was_users
    users = _user_tracking_uri() is not None
    uri = check_tracking_store(workdir, create=create)
    if not users:
        Path(workdir).expanduser().resolve().mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    _last_set_uri, _last_was_users = uri, users
    name = experiment_name(experiment)
    # A database store is made and migrated by the first MLflow client that opens it. Two
    # processes opening a new one at once (two `lifecast train` started together on a new
    # folder) ran the migration together: both failed with a traceback and the database
    # was left half-migrated for good. The registry lock makes them take turns; a tracking
    # server migrates its own database.
    opening = contextlib.nullcontext() if is_tracking_server(uri) else registry_lock(uri)
    with opening:
        # the active experiment too: mlflow.search_runs() and mlflow.start_run() in the
        # user's own code then see lifecast's runs, not the empty "Default" experiment
        mlflow.set_experiment(experiment_id=_experiment_id(name))
    return uri


def _promote_always() -> str:
    """How the champion decision names forcing a promotion: ``--promote always`` on the
    command line, ``promote='always'`` (`log_training`'s parameter) in Python."""
    return named("--promote always", "promote='always'")


def experiment_name(name: str | None = None) -> str:
    """The experiment runs are logged to: ``name``, else ``$MLFLOW_EXPERIMENT_NAME`` (MLflow's
    own variable), else ``lifecast``. A blank name is a ValueError."""
    chosen = name if name is not None else os.environ.get(EXPERIMENT_ENV) or DEFAULT_EXPERIMENT
    if not chosen.strip():
        where = named("--experiment", "experiment") if name is not None else EXPERIMENT_ENV
        raise ValueError(f"{where} is blank: give an experiment name, or leave it out for "
                         f"{DEFAULT_EXPERIMENT!r}")
    return chosen


def _user_tracking_uri() -> str | None:
    """``MLFLOW_TRACKING_URI`` when the user set it. mlflow.set_tracking_uri exports the URI
    to the environment for subprocesses, so a value equal to what we set last is ours,
    unless we took it from there (a second `configure` in one process, as ``train --tune``
    makes, must not fall back to the working folder's store)."""
    env = os.environ.get("MLFLOW_TRACKING_URI", "").strip()
    if not env:
        return None
    return env if env != _last_set_uri or _last_was_users else None


def check_tracking_store(workdir: Path | str = ".", *, create: bool = True,
                         write: bool | None = None) -> str:
    """The tracking URI `configure` will use, checked before any work: ``MLFLOW_TRACKING_URI``
    or ``<workdir>/mlflow.db``. Creates nothing.

    Raises `LookupError` when a SQLite store does not exist and ``create`` is False (the
    commands that only use models: ``models``, ``promote``, ``score``), and `ValueError`
    when it cannot be written and ``write`` (default: ``create``) is True, or when the URI
    is a folder: MLflow 3 refuses its file store. MLflow itself reports these only after
    minutes of retries, or after a whole fit."""
    write = create if write is None else write
    uri = _user_tracking_uri()
    if uri is None:
        uri = f"sqlite:///{Path(workdir).expanduser().resolve() / 'mlflow.db'}"
        where = "here"
    else:
        where = "at MLFLOW_TRACKING_URI"
    scheme = uri.split("://", 1)[0].lower() if "://" in uri else ""
    if scheme in ("", "file"):
        folder = uri.split("://", 1)[-1]
        raise ValueError(
            f"MLFLOW_TRACKING_URI={uri} is a folder (MLflow's file store), which MLflow 3 "
            f"no longer opens: use a SQLite file, e.g. "
            f"MLFLOW_TRACKING_URI=sqlite:///{Path(folder).expanduser().resolve() / 'mlflow.db'}"
        )
    base = scheme.split("+", 1)[0]
    if base not in _TRACKING_SCHEMES:
        raise ValueError(
            f"MLFLOW_TRACKING_URI={masked_url(uri)}: MLflow has no tracking store of scheme "
            f"{scheme!r}; use sqlite:///path/to/mlflow.db, a database URL (postgresql://, "
            f"mysql://, mssql://) or a tracking server (http://host:5000)")
    if is_tracking_server(uri) and uri not in _servers_answered:
        _check_server_answers(uri)  # once per process: `train` checks, then configures
        _servers_answered.add(uri)
    db = _sqlite_file(uri)
    if db is None:  # a server, or SQLite in memory: MLflow reports its own errors
        return uri
    if not db.is_file() and not create:
        raise LookupError(
            f"no MLflow tracking store {where}: {db} does not exist. Run `lifecast train` "
            f"in this folder first, or set MLFLOW_TRACKING_URI to the store that holds the "
            f"models (`lifecast demo` keeps its own: "
            f"MLFLOW_TRACKING_URI=sqlite:///lifecast_work/mlflow.db)"
        )
    if write:
        from features.storage import check_output_path

        try:
            check_output_path(db)
            if db.is_file() and not os.access(db, os.R_OK | os.W_OK):
                raise ValueError(f"cannot write {db}: the file is read-only")
        except ValueError as exc:
            raise ValueError(f"the MLflow tracking store {where} cannot be written: {exc}"
                             ) from None
    return uri


#: URI schemes of MLflow's tracking stores (a database URL may name its driver: ``+psycopg2``)
_TRACKING_SCHEMES = frozenset({"sqlite", "postgresql", "mysql", "mssql", "http", "https",
                               "databricks", "databricks-uc", "uc"})
def is_tracking_server(uri: str) -> bool:
    """Whether tracking URI ``uri`` names an MLflow tracking server (``http(s)://``), which
    opens its own database, rather than a database (SQLite, PostgreSQL, ...) that this
    process opens, and that may keep its artifacts on a server of their own."""
    return uri.strip().split("://", 1)[0].lower() in ("http", "https")


#: seconds `check_tracking_store` waits for a tracking server to accept a connection
SERVER_CHECK_TIMEOUT = 10.0
_servers_answered: set[str] = set()  # tracking servers that answered in this process
_PROXY_DOWN = "what a proxy or load balancer in front of it answers while it is down or restarting"
#: HTTP statuses that say "not now" rather than "wrong": 502-504, with which a proxy in
#: front of a tracking server (nginx, a cloud load balancer) answers for it while it
#: restarts or is down, and 408 and 429, a server or proxy that gave up waiting for the
#: request or limits how often it is asked (MLflow retries all five before it gives up).
#: Temporary, as a refused connection is. A 500 is the server's own failure, for a person
#: to look into.
_TEMPORARY_STATUSES = {
    408: ("Request Timeout", "the server or a proxy in front of it gave up waiting for the "
                             "request"),
    429: ("Too Many Requests", "the server or a proxy in front of it limits how often it is "
                               "asked"),
    502: ("Bad Gateway", _PROXY_DOWN),
    503: ("Service Unavailable", _PROXY_DOWN),
    504: ("Gateway Timeout", _PROXY_DOWN),
}


def _proxy_reason(status: int) -> str | None:
    """What `unanswered_reason` says of an HTTP answer of ``status``: None unless it is one
    of `_TEMPORARY_STATUSES`."""
    if status not in _TEMPORARY_STATUSES:
        return None
    phrase, why = _TEMPORARY_STATUSES[status]
    return f"HTTP {status} {phrase} ({why})"


class TrackingServerUnreachableError(TemporaryFailure, ValueError):
    """The MLflow tracking server did not answer: nothing listens at its port (refused), it
    did not answer in time, or it dropped the connection. Temporary by nature (a server
    restarting, a network outage): the command line exits 75 for it, so that a scheduler
    runs it again later. A ValueError, as the errors of a tracking store that cannot work
    are."""


class RegistryBusyError(TemporaryFailure, ValueError):
    """Another lifecast run held `registry_lock` for longer than the wait: it is moving the
    champion aliases. Temporary by nature: the command line exits 75 for it."""


def unanswered_reason(exc: BaseException) -> str | None:
    """Why a tracking server did not answer, when a connection that was refused, timed out
    or dropped, or an answer of `_TEMPORARY_STATUSES` (MLflow retries those, then raises
    requests' RetryError), is anywhere down the chain of ``exc`` (MLflow's own errors wrap
    requests'), else None: the one place that decides what `TrackingServerUnreachableError`
    is.

    A host name that does not resolve is not such a failure (None): a misspelt name in
    MLFLOW_TRACKING_URI is far more common than a DNS outage, and a scheduler retrying it
    would never succeed, so it stays an error for a person to fix. So is a TLS error (the
    server answered)."""
    import requests
    from urllib3.exceptions import NameResolutionError

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, requests.exceptions.SSLError):
            return None
        if isinstance(cause, requests.exceptions.RetryError):
            # urllib3's MaxRetryError, caused by "too many 503 error responses"
            inner = cause.args[0] if cause.args else None
            found = re.search(r"too many (\d{3}) error responses",
                              str(getattr(inner, "reason", None) or inner))
            return _proxy_reason(int(found.group(1))) if found else None
        response = getattr(cause, "response", None)
        if isinstance(cause, requests.exceptions.HTTPError) and response is not None:
            return _proxy_reason(response.status_code)
        if isinstance(cause, (requests.exceptions.ConnectionError,
                              requests.exceptions.Timeout)):
            inner = cause.args[0] if cause.args else None
            reason = getattr(inner, "reason", None)
            if isinstance(reason, NameResolutionError) or isinstance(inner,
                                                                     NameResolutionError):
                return None
            if isinstance(cause, requests.exceptions.ConnectionError) and inner is not None:
                return str(reason or inner)
            return cause.__class__.__name__
        cause = cause.__cause__ or (None if cause.__suppress_context__ else cause.__context__)
    return None


def _check_server_answers(uri: str) -> None:
    """`TrackingServerUnreachableError` (temporary: exit 75) naming ``MLFLOW_TRACKING_URI``
    when nothing answers at the tracking server ``uri`` within `SERVER_CHECK_TIMEOUT`
    seconds, or it or a proxy answers "not now" (`_TEMPORARY_STATUSES`), ValueError when
    its host name does not resolve; any other HTTP answer passes (the key or the TLS
    settings are MLflow's to check). MLflow itself retries such a server for minutes, then
    ends in a traceback: a scheduled job would hang, then fail with exit code 1."""
    import requests

    error: type[ValueError] = TrackingServerUnreachableError
    try:
        with requests.get(f"{uri.rstrip('/')}/health", timeout=SERVER_CHECK_TIMEOUT,
                          allow_redirects=False) as response:
            reason = _proxy_reason(response.status_code)
    except requests.exceptions.SSLError:  # it answered; MLflow has its own TLS settings
        return
    except (requests.exceptions.ConnectionError, requests.exceptions.Timeout) as exc:
        reason = unanswered_reason(exc)
        if reason is None:  # the host name does not resolve: see `unanswered_reason`
            error, inner = ValueError, exc.args[0] if exc.args else exc
            reason = str(getattr(inner, "reason", None) or inner)
    if reason is not None:
        raise error(
            f"the MLflow tracking server at MLFLOW_TRACKING_URI={masked_url(uri)} does not "
            f"answer: {reason}. Start it, or point MLFLOW_TRACKING_URI at the one that holds "
            f"the models") from None


def _sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` tracking URI, else None."""
    if not uri.lower().startswith("sqlite:///"):
        return None
    db = uri[len("sqlite:///"):].split("?", 1)[0]
    if not db or db == ":memory:":
        return None
    return Path(db).expanduser()


#: How long `registry_lock` waits for another lifecast process before it gives up.
REGISTRY_LOCK_WAIT = 600.0
_held_locks = threading.local()  # the registry locks this thread holds: {path: depth}


def registry_lock_path(uri: str | None = None) -> Path:
    """The file `registry_lock` locks for tracking store ``uri`` (default: the current one):
    ``<database>.lock`` beside a SQLite file; for any other store (a tracking server, a
    database server) ``lifecast/registry-<digest of the URI>.lock`` in the user's cache
    folder (``$XDG_CACHE_HOME``, else ``~/.cache``)."""
    uri = uri or mlflow.get_tracking_uri()
    db = _sqlite_file(uri)
    if db is not None:
        db = db.resolve()
        return db.with_name(db.name + ".lock")
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    digest = hashlib.sha256(uri.strip().encode()).hexdigest()[:16]
    return cache / "lifecast" / f"registry-{digest}.lock"


@contextmanager
def registry_lock(uri: str | None = None, *, wait: float | None = None) -> Iterator[Path]:
    """Hold the champion aliases of tracking store ``uri`` (default: the current one) for
    the block: ``lifecast train`` (`log_training`) reads the champion again and moves the
    aliases under it, ``lifecast promote`` (`promote_run`) moves them under it, so two of
    them at once act one after the other, each deciding on the champion the other left.

    What it protects against: lifecast processes and threads on this machine that use the
    same store (an exclusive ``flock`` on `registry_lock_path`; the operating system drops
    it when a process dies, so a killed run leaves no stale lock). For a SQLite store the
    lock file lies beside the database, so every user of that file on this machine shares
    it. What it does not protect against: runs on other machines (a tracking server or
    database shared by several machines cannot be locked from here, nor can a SQLite file
    on a network folder be relied on), runs of other users against a tracking server (each
    has their own cache folder), and aliases moved outside lifecast (the MLflow UI, the
    MLflow client). Re-entrant in one thread. Waits ``wait`` seconds (default
    `REGISTRY_LOCK_WAIT`) for another holder, then raises `RegistryBusyError` (a
    ValueError; the command line exits 75 for it) naming the file."""
    import fcntl

    uri = uri or mlflow.get_tracking_uri()
    path = registry_lock_path(uri)
    held: dict[Path, int] = _held_locks.__dict__.setdefault("paths", {})
    if held.get(path):
        held[path] += 1
        try:
            yield path
        finally:
            held[path] -= 1
        return
    wait = REGISTRY_LOCK_WAIT if wait is None else wait
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise ValueError(
            f"cannot make the lock file {path} that keeps two lifecast runs from moving the "
            f"champion aliases at once: {exc.strerror or exc}. Make its folder writable"
        ) from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise RegistryBusyError(
                        f"another lifecast run has held {path} for over {wait:g} s while "
                        f"it moves the champion aliases of {masked_url(uri)}: "
                        f"wait for it to finish (or stop it), then try again") from None
                time.sleep(0.05)
        held[path] = 1
        try:
            yield path
        finally:
            held.pop(path, None)
    finally:
        os.close(fd)  # closing releases the lock


def _ensure_configured() -> None:
    if not mlflow.is_tracking_uri_set():
        configure(".")


def _sqlite_artifact_location(uri: str) -> str | None:
    """``file:`` URI of ``mlartifacts`` beside a SQLite database file; None for other stores."""
    db = _sqlite_file(uri)
    return None if db is None else (db.resolve().parent / "mlartifacts").as_uri()


def _experiment_id(name: str) -> str:
    """The id of experiment ``name``, created (with the SQLite artifact folder) when missing."""
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ValueError(
                f"experiment {name!r} is deleted: restore it (mlflow experiments restore "
                f"--experiment-id {exp.experiment_id}) or use another name "
                f"({named('train --experiment', 'experiment=')}, or ${EXPERIMENT_ENV})"
            )
        return exp.experiment_id
    location = _sqlite_artifact_location(mlflow.get_tracking_uri())
    try:
        return client.create_experiment(name, artifact_location=location)
    except MlflowException:  # created concurrently by another process
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


@contextmanager
def _quiet() -> Iterator[None]:
    """No artifact progress bars (unless the user asked for them) and no schema hint about
    integer columns (the one-row data description has some; the models take floats)."""
    key = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"
    before = os.environ.get(key)
    if before is None:
        os.environ[key] = "false"
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
            yield
    finally:
        if before is None:
            os.environ.pop(key, None)


def _client() -> MlflowClient:
    _ensure_configured()
    return mlflow.MlflowClient()


# --------------------------------------------------------------------------------------------
# the pyfunc model
# --------------------------------------------------------------------------------------------


class LifecastModel(PythonModel):
    """MLflow pyfunc around the native churn or value model.

    Its one artifact (``model``) is the folder written by `ChurnModel.save` /
    `ValueModel.save` plus ``segmenter.json``. ``predict`` takes a DataFrame with the model's
    feature columns as floats (its signature declares them ``double``: cast a feature frame
    with ``.astype("float64")``, as pandas' nullable ``Int64`` columns fail MLflow's schema
    check; extra columns are ignored) and returns one float per row, a Series named
    ``churn_probability`` (``kind="churn"``, calibrated) or ``predicted_clv`` (``kind="clv"``,
    predicted net spend in the value horizon).
    """

    def __init__(self, kind: str) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
        self.kind = kind

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts[_MODEL_ARTIFACT])
        self.model_ = _load_native(self.kind, folder)

    def predict(self, context: Any, model_input: pd.DataFrame, params: Any = None) -> pd.Series:
        if not isinstance(model_input, pd.DataFrame):
            model_input = pd.DataFrame(model_input)
        if self.kind == "churn":
            values = self.model_.predict_proba(model_input)
        else:
            values = self.model_.predict(model_input)
        return pd.Series(np.asarray(values, dtype="float64"), index=model_input.index,
                         name=OUTPUT_NAME[self.kind])


#: Tags linking a training run and the ``--tune`` search it took its parameters from.
TUNE_RUN_TAG, TRAIN_RUN_TAG = "lifecast.tune_run_id", "lifecast.train_run_id"

#: The key of the registered model's metadata that holds its `FeatureConfig` (`model_input`).
FEATURE_CONFIG_KEY = "feature_config"


def model_input(features: pd.DataFrame, settings: FeatureConfig | Any,
                population: pd.DataFrame | None = None) -> pd.DataFrame:
    """What a registered model's pyfunc takes, from `features.build_features` output.

    Features of one or more cutoffs in (one row per (cutoff, customer)); the same rows out,
    indexed by (``customer_id``, ``cutoff``), with the baseline features (``bg_*``,
    ``gg_expected_value``) added when they are missing, and only the model columns, as
    float64: MLflow's schema check refuses pandas' nullable ``Int64``. The pyfunc's
    predictions keep the index.

    The baseline features come from BG/NBD + Gamma-Gamma fitted per cutoff on the whole
    population, as `lifecast score` does: ``population`` (``build_features`` output for
    everyone, at the same cutoffs) when given, else ``features`` itself. To score a subset
    (a CRM segment, an export), pass the whole population too: fitted on the subset alone,
    the baseline differs and so do the predictions. Without ``population``, rows far fewer
    than the customers the model was trained on warn.

    ``settings`` is the models' `FeatureConfig`, or a pyfunc model loaded with
    ``mlflow.pyfunc.load_model("models:/lifecast-churn@champion")``, whose metadata records
    the settings it was trained with (the baseline features depend on the horizons)."""
    trained_on = None
    if not isinstance(settings, FeatureConfig):
        meta = getattr(getattr(settings, "metadata", None), "metadata", None) or {}
        if FEATURE_CONFIG_KEY not in meta:
            raise ValueError(
                "model_input needs the models' FeatureConfig: pass it, or a pyfunc model "
                "loaded with mlflow.pyfunc.load_model from a lifecast run (this model's "
                "metadata records no feature settings; it was logged before they were)"
            )
        why = definitions_difference(recorded_definitions(meta), "this model")
        if why:
            raise ValueError(f"{why}: build_features output would not mean what it learned. "
                             f"Retrain with `lifecast train`, or use the lifecast that "
                             f"trained it.")
        settings = FeatureConfig(**meta[FEATURE_CONFIG_KEY])
        trained_on = meta.get(CUSTOMERS_KEY)
    index = pd.MultiIndex.from_frame(features[["customer_id", "cutoff"]])
    if population is not None:
        everyone = model_input(population, settings)
        absent = ~index.isin(everyone.index)
        if absent.any():
            cid, cut = index[absent][0]
            cid = cid.item() if isinstance(cid, np.generic) else cid  # 17850, not np.int64
            raise ValueError(
                f"model_input: {counted(int(absent.sum()), 'row')} of features "
                f"{'is' if absent.sum() == 1 else 'are'} not in population, "
                f"e.g. customer {cid!r} at cutoff {pd.Timestamp(cut)}; population must hold "
                f"every customer of features, at the same cutoffs (build_features for "
                f"everyone at those cutoffs)")
        return everyone.loc[index]
    missing = [c for c in feature_names(settings) if c not in features.columns]
    if missing:
        raise ValueError(
            f"model_input takes features.build_features output; these model columns are "
            f"missing: {', '.join(missing)}"
        )
    if not all(c in features.columns for c in BASELINE_FEATURES):
        if trained_on:
            warn_if_a_subset(features, int(trained_on), caller="model_input",
                             example="model_input(subset, model, population=everyone)")
        features = add_baseline_features(features, settings)
    return features[model_feature_names(settings)].astype("float64").set_axis(index)


#: The model metadata key holding the customers of the training log before as-of.
CUSTOMERS_KEY = "customers"


def _load_native(kind: str, folder: Path) -> ChurnModel | ValueModel:
    return ChurnModel.load(folder) if kind == "churn" else ValueModel.load(folder)


# --------------------------------------------------------------------------------------------
# logging a training run
# --------------------------------------------------------------------------------------------


@quiet_mlflow()
def log_training(
    result: TrainResult,
    *,
    source: str,
    promote: str = "auto",
    experiment: str | None = None,
    run_name: str | None = None,
    tune_run_id: str | None = None,
) -> RunSummary:
    """Log one training run, register both models and decide the champions.

    ``source`` describes where the transactions came from (a path, a table, ``"demo"``);
    credentials in a URL are masked before it is logged. ``tune_run_id``: the ``tune`` run
    whose best parameters this run trained with (`training.tuning.tune_config`); the two
    runs are tagged with each other's id (``lifecast.tune_run_id``,
    ``lifecast.train_run_id``). ``promote`` is ``"auto"`` (promote a
    version only if it beats the champion on this run's evaluation snapshot), ``"always"`` or
    ``"never"``. ``experiment``: see `experiment_name`; ``run_name`` defaults to
    ``train <as-of> churn <N>d clv <N>d`` (`default_run_name`), numbered ``#2``, ``#3``
    ... when the experiment has runs of that name (`numbered_run_name`). The registered models and
    their champions are shared by every experiment in the store. Returns the run id, the
    registered versions and the decisions.
    """
    check_promote(promote)
    _ensure_configured()
    end_dead_runs()
    experiment_id = _experiment_id(experiment_name(experiment))
    client = mlflow.MlflowClient()
    models = result.models
    source = _redact(str(source))
    default_name = default_run_name("train", models.as_of, models.config.features,
                                    tuned=tune_run_id is not None)

    champions = {kind: _champion_version(client, kind) for kind in KINDS}
    run_id: str | None = None
    # the registry lock, once taken, is held until the run is recorded or undone
    held = contextlib.ExitStack()
    try:
        with _quiet(), started_run(experiment_id, run_name, default_name) as run:
            run_id = run.info.run_id
            if tune_run_id is not None:
                mlflow.set_tag(TUNE_RUN_TAG, tune_run_id)
                client.set_tag(tune_run_id, TRAIN_RUN_TAG, run_id)
            with _timed(None, "mlflow parameters and metrics"):
                _log_params_and_data(result, source)
                _log_metrics(result)
                _log_features(result)
            with tempfile.TemporaryDirectory(prefix="lifecast-run-") as tmp:
                tmp_path = Path(tmp)
                with _timed(None, "mlflow plots"):
                    _log_plots(result, tmp_path / "plots")
                # decide and register both kinds before moving any alias, so a failure part
                # way leaves the champions as they were
                with _timed(None, "mlflow models registered"):
                    decisions = {kind: _decide(client, kind, result, promote)
                                 for kind in KINDS}
                    versions = {kind: _log_model(kind, result, run_id, source, tmp_path / kind)
                                for kind in KINDS}
            # another run (or `lifecast promote`) may have moved a champion since this one
            # decided: under the lock, decide again against the champion there is now, so
            # that what each run reports is what happened and the aliases move as they would
            # one run after the other
            held.enter_context(registry_lock())
            for kind in KINDS:
                now = _champion_version(client, kind)
                if now != decisions[kind]["champion_version"]:
                    before = decisions[kind]["champion_version"]
                    decisions[kind] = _decide(client, kind, result, promote)
                    changed = (f"another run made {MODEL_NAMES[kind]} v{now} champion"
                               + (f" in place of v{before}" if before is not None else "")
                               if now is not None else
                               f"{MODEL_NAMES[kind]} v{before} stopped being champion")
                    decisions[kind]["message"] += (f" (decided again as the run ended: "
                                                   f"{changed} while this one trained)")
                champions[kind] = now
            # what a kill -9 between here and the end leaves for `end_dead_runs` to put back:
            # the champions, and the decisions of those about to be marked demoted
            replaced = {kind: client.get_model_version(
                MODEL_NAMES[kind], decisions[kind]["champion_version"]).tags.get("decision", "")
                for kind in KINDS
                if decisions[kind]["promoted"] and decisions[kind]["champion_version"]}
            mlflow.set_tags({CHAMPIONS_BEFORE_TAG: json.dumps(champions),
                             DECISIONS_BEFORE_TAG: json.dumps(replaced)})
            for kind in KINDS:
                _record_decision(client, kind, versions[kind], decisions[kind])
            for kind in KINDS:  # the champions replaced no longer read "promoted"
                replaced = decisions[kind]["champion_version"]
                if decisions[kind]["promoted"] and replaced is not None:
                    _mark_decision(client, kind, replaced,
                                   f"{_DEMOTED}{_now()}: training run {run_id} made "
                                   f"v{versions[kind]} champion", promoted=False)
    except BaseException:  # Ctrl-C too: a failed run leaves no run, version or alias behind
        if run_id is not None:
            with held:  # under the lock when this run took it: nobody decides meanwhile
                _undo_run(client, run_id, experiment_id, champions, tune_run_id)
        raise
    finally:
        held.close()
    return RunSummary(
        run_id=run_id,
        versions=versions,
        promoted={kind: bool(decisions[kind]["promoted"]) for kind in KINDS},
        decision=decisions,
    )


def _undo_run(client: MlflowClient, run_id: str, experiment_id: str,
              champions: Mapping[str, str | None], tune_run_id: str | None) -> None:
    """Take back what a training run that failed part way wrote: the champion aliases it
    moved go back to ``champions`` (the versions that held them before), the model versions
    and logged models it registered are deleted, its ``tune`` run no longer points at it,
    and the run itself is deleted (``mlflow gc`` purges it). Each step is best effort: the
    error that stopped the run is the one the user sees."""
    undo: list[Callable[[], Any]] = []
    mine = [mv for name in MODEL_NAMES.values()
            for mv in _suppressed(lambda n=name: client.search_model_versions(
                f"name='{n}' and run_id='{run_id}'"), [])]
    for kind, name in MODEL_NAMES.items():
        current = _suppressed(lambda k=kind: _champion_version(client, k))
        if current is not None and any(mv.name == name and str(mv.version) == current
                                       for mv in mine):
            before = champions.get(kind)
            undo.append(
                (lambda n=name: client.delete_registered_model_alias(n, CHAMPION_ALIAS))
                if before is None else
                (lambda n=name, v=before: client.set_registered_model_alias(
                    n, CHAMPION_ALIAS, v)))
    undo += [lambda mv=mv: client.delete_model_version(mv.name, mv.version) for mv in mine]
    logged = _suppressed(lambda: client.search_logged_models(
        experiment_ids=[experiment_id], filter_string=f"source_run_id = '{run_id}'"), [])
    undo += [lambda m=m: client.delete_logged_model(m.model_id) for m in logged]
    if tune_run_id is not None:
        undo.append(lambda: client.delete_tag(tune_run_id, TRAIN_RUN_TAG))
    undo.append(lambda: client.delete_run(run_id))
    for step in undo:
        _suppressed(step)


def _suppressed(call: Callable[[], Any], default: Any = None) -> Any:
    """``call()``, or ``default`` when it raises an Exception."""
    try:
        return call()
    except Exception:
        return default


def default_run_name(step: str, as_of: Any, features: FeatureConfig, *,
                     tuned: bool = False) -> str:
    """``<step> <as-of> churn <N>d clv <N>d[ tuned]``: runs with other horizons, as-of or
    tuned parameters tell apart in MLflow's run list (`numbered_run_name` numbers the
    runs that share one)."""
    return (f"{step} {pd.Timestamp(as_of):%Y-%m-%d} churn {features.churn_horizon_days}d "
            f"clv {features.clv_horizon_days}d" + (" tuned" if tuned else ""))


def numbered_run_name(client: MlflowClient, experiment_id: str, name: str) -> str:
    """``name`` when no run of the experiment (deleted ones included) has it, else
    ``name #<n>`` with n one more than the highest number it has been given there (the
    first run is ``#1``, unnumbered): two trains of the same data on the same day get
    ``train 2011-12-01 churn 90d clv 90d`` and ``... #2``, which MLflow's run list tells
    apart."""
    pattern = re.compile(re.escape(name) + r"(?: #(\d+))?")
    prefix = name.split("'")[0]  # LIKE's wildcards match more: the pattern picks
    highest, token = 0, None
    while True:
        page = client.search_runs([experiment_id], f"attributes.run_name LIKE '{prefix}%'",
                                  run_view_type=ViewType.ALL, max_results=1000,
                                  page_token=token)
        for run in page:
            match = pattern.fullmatch(run.info.run_name or "")
            if match:
                highest = max(highest, int(match.group(1) or 1))
        token = page.token
        if not token:
            break
    return name if highest == 0 else f"{name} #{highest + 1}"


#: Tags naming the process that runs a lifecast run (`owner_tags`), read by `end_dead_runs`.
HOST_TAG, MACHINE_TAG, PID_TAG, START_TAG = ("lifecast.host", "lifecast.machine",
                                             "lifecast.pid", "lifecast.process_start")
#: Why `end_dead_runs` ended a run (set on the run and on the versions it registered).
KILLED_TAG = "lifecast.killed"
#: The champion versions a train run is about to replace, recorded before it moves an alias
#: (JSON ``{"churn": "3", "clv": null}``): what `end_dead_runs` puts back after a kill -9.
CHAMPIONS_BEFORE_TAG = "lifecast.champions_before"
#: The ``decision`` of each champion the run is about to mark demoted, recorded with
#: `CHAMPIONS_BEFORE_TAG` (JSON ``{"churn": "promoted by hand ..."}``): what `end_dead_runs`
#: gives it back (the demotion keeps only what was decided when it was trained).
DECISIONS_BEFORE_TAG = "lifecast.decisions_before"


def owner_tags() -> dict[str, str]:
    """Tags naming this process (`features.process.ProcessId`), given to every run lifecast
    starts, so that a later run can tell a run whose process was killed outright."""
    me = this_process()
    return {HOST_TAG: me.host, MACHINE_TAG: me.machine, PID_TAG: str(me.pid),
            START_TAG: me.start}


def _owner(tags: Mapping[str, str]) -> ProcessId | None:
    if not tags.get(PID_TAG, "").isdigit() or not tags.get(MACHINE_TAG):
        return None
    return ProcessId(host=tags.get(HOST_TAG, ""), machine=tags[MACHINE_TAG],
                     pid=int(tags[PID_TAG]), start=tags.get(START_TAG, ""))


def dead_run_reason(run: Any) -> str | None:
    """Why ``run`` (an `mlflow.entities.Run`), still RUNNING, can no longer end: the
    process that ran it is provably gone (`features.process.gone_reason`); None when it
    has ended, was not started by lifecast, or its process may still run (on another
    host, or its pid alive)."""
    if run.info.status != "RUNNING":
        return None
    owner = _owner(run.data.tags)
    return None if owner is None else gone_reason(owner)


def _active_experiment_ids(client: MlflowClient) -> list[str]:
    ids, token = [], None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
        ids += [e.experiment_id for e in page]
        token = page.token
        if not token:
            return ids


def end_dead_runs() -> list[str]:
    """Mark KILLED the lifecast runs still RUNNING whose process is provably gone (killed
    outright: ``kill -9``, the OOM killer; SIGTERM and Ctrl-C end them themselves), in every
    active experiment of the store, with one warning line each naming the run, when it
    started and why; returns their ids. Runs of other hosts and runs whose process may
    still run are left alone.

    Such a run may have registered model versions and moved champion aliases before it
    was killed (`log_training` registers both versions, then moves the aliases one after
    the other): it counts as failed, as it would have after SIGTERM (`_undo_run`). The
    aliases it moved go back to the versions it replaced (its `CHAMPIONS_BEFORE_TAG`),
    unless someone promoted its versions by hand since, and its versions get a
    `KILLED_TAG` and a ``decision`` saying so (`promote_run` refuses them). Unlike a failed
    run, the run and its versions are kept: they are the record of what was killed."""
    client = _client()
    ended: list[str] = []
    with registry_lock():  # no alias moves meanwhile; two runs at once end each run once
        for chunk in _chunks(_active_experiment_ids(client), 100):
            token = None
            while True:
                page = client.search_runs(chunk, "attributes.status = 'RUNNING'",
                                          max_results=1000, page_token=token)
                for run in page:
                    reason = dead_run_reason(run)
                    if reason is not None:
                        _end_dead_run(client, run, reason)
                        ended.append(run.info.run_id)
                token = page.token
                if not token:
                    break
    return ended


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i:i + size])


def _end_dead_run(client: MlflowClient, run: Any, reason: str) -> None:
    run_id = run.info.run_id
    started = pd.Timestamp(run.info.start_time, unit="ms", tz="UTC").strftime(
        "%Y-%m-%d %H:%M:%S UTC")
    note = (f"killed before it ended ({reason}); marked KILLED by lifecast on {_now()}")
    client.set_tag(run_id, KILLED_TAG, note)
    client.set_terminated(run_id, "KILLED")
    what = [f"MLflow run {run_id} ({run.info.run_name}), started {started}, was still "
            f"RUNNING but its process is gone ({reason}): marked KILLED"]
    before = _per_kind(run.data.tags.get(CHAMPIONS_BEFORE_TAG))
    decisions = _per_kind(run.data.tags.get(DECISIONS_BEFORE_TAG))
    for kind, name in MODEL_NAMES.items():
        mine = client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
        for mv in mine:
            client.set_model_version_tag(name, mv.version, KILLED_TAG, note)
        current = _champion_version(client, kind)
        champion = next((mv for mv in mine if str(mv.version) == current), None)
        if champion is not None and not (champion.tags or {}).get(
                "decision", "").startswith(_BY_HAND) and kind in before:
            back = before[kind]
            if back is None:
                client.delete_registered_model_alias(name, CHAMPION_ALIAS)
                what.append(f"{name} v{current} is no longer champion")
            else:
                client.set_registered_model_alias(name, CHAMPION_ALIAS, back)
                _undo_demotion(client, kind, back, run_id, decisions.get(kind))
                what.append(f"{name} v{back} is champion again in place of its v{current}")
        now = _champion_version(client, kind)  # after the move back, if any
        for mv in mine:  # (one promoted by hand, and champion still, says so already)
            kept = (str(mv.version) == now
                    and (mv.tags or {}).get("decision", "").startswith(_BY_HAND))
            if not kept:
                client.set_model_version_tag(
                    name, mv.version, "decision",
                    f"not a champion: its training run was {note}")
    warn("; ".join(what))


def _per_kind(text: str | None) -> dict[str, str | None]:
    """A run's JSON tag of one value per kind (`CHAMPIONS_BEFORE_TAG`,
    `DECISIONS_BEFORE_TAG`); {} when it is missing or damaged."""
    try:
        found = json.loads(text) if text else {}
    except ValueError:
        return {}
    return {k: (None if v is None else str(v)) for k, v in found.items() if k in KINDS} \
        if isinstance(found, dict) else {}


def _undo_demotion(client: MlflowClient, kind: str, version: str, run_id: str,
                   previous: str | None) -> None:
    """Give version ``version`` of ``kind``, champion again, back the decision it had before
    run ``run_id`` demoted it (`_mark_decision`), when the run got that far: on the version
    and on its run (``decision_<kind>``, ``promoted_<kind>`` true). ``previous`` is that
    decision as the run recorded it (`DECISIONS_BEFORE_TAG`); without it (a run of an
    earlier lifecast), what was decided when the version was trained."""
    name = MODEL_NAMES[kind]
    mv = client.get_model_version(name, version)
    text = mv.tags.get("decision", "")
    if not (text.startswith(_DEMOTED) and run_id in text):
        return
    if previous is None:
        previous = text.split(_WHEN_TRAINED, 1)[1][:-1] if _WHEN_TRAINED in text else ""
    client.set_model_version_tag(name, version, "decision", previous)
    with contextlib.suppress(MlflowException):  # its run was deleted: only the version
        client.set_tag(mv.run_id, f"decision_{kind}", previous)
        client.set_tag(mv.run_id, f"promoted_{kind}", "true")


@contextmanager
def started_run(experiment_id: str, run_name: str | None, default: str, **kwargs: Any
                ) -> Iterator[Any]:
    """`mlflow.start_run` in ``experiment_id`` named ``run_name`` (the user's, kept as
    given), else ``default`` numbered (`numbered_run_name`) under `registry_lock`, so two
    runs started at once do not take the same number. The run is tagged with the process
    that runs it (`owner_tags`)."""
    kwargs["tags"] = {**owner_tags(), **(kwargs.get("tags") or {})}
    if run_name is not None:
        active = mlflow.start_run(experiment_id=experiment_id, run_name=run_name, **kwargs)
    else:
        with registry_lock():
            name = numbered_run_name(mlflow.MlflowClient(), experiment_id, default)
            active = mlflow.start_run(experiment_id=experiment_id, run_name=name, **kwargs)
    with active as run:
        yield run


def _flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(list(value))
        else:
            out[name] = str(value)
    return out


def _report_dict(report: Any) -> dict[str, Any]:
    if report is None:
        return {}
    if hasattr(report, "to_dict"):
        return dict(report.to_dict())
    return {k: v for k, v in vars(report).items() if not k.startswith("_")}


def _redact(text: str) -> str:
    """Mask the passwords of a URL (``postgresql://user:secret@host/db?password=...``); a
    path that exists is made absolute (``../data/sales.parquet`` means nothing from
    another folder), any other text is returned as it is."""
    if "://" in text:
        return masked_url(text)
    path = Path(text).expanduser()
    return str(path.resolve()) if text and path.exists() else text


class _TextSource(DatasetSource):
    """A dataset source MLflow has no resolver for (e.g. a database URL): kept as text."""

    def __init__(self, description: str) -> None:
        self.description = description

    @staticmethod
    def _get_source_type() -> str:
        return "lifecast"

    def load(self, **kwargs: Any) -> Any:
        raise NotImplementedError("a lifecast source is a description; load it with lifecast")

    @staticmethod
    def _can_resolve(raw_source: Any) -> bool:
        return False

    @classmethod
    def _resolve(cls, raw_source: Any) -> _TextSource:
        return cls(str(raw_source))

    def to_dict(self) -> dict[str, Any]:
        return {"source": self.description}

    @classmethod
    def from_dict(cls, source_dict: dict[Any, Any]) -> _TextSource:
        return cls(str(source_dict.get("source", "")))


def _dataset_source(source: str) -> DatasetSource:
    """MLflow's own source for a path or a storage URI; a text source for anything else."""
    from mlflow.data.dataset_source_registry import resolve_dataset_source

    try:
        with warnings.catch_warnings():
            # a local path resolves twice ("can be interpreted in multiple ways"): harmless
            warnings.simplefilter("ignore", UserWarning)
            return resolve_dataset_source(source)
    except MlflowException:
        return _TextSource(source)


def _data_digest(result: TrainResult) -> str:
    """Digest of the rows the run trained on (those before as-of, whatever the source holds
    after it: `Transactions.profile_before`); for a result made without that profile, of
    the training frame's content."""
    if result.data_used.get("digest"):
        return str(result.data_used["digest"])
    h = hashlib.sha256()
    h.update(json.dumps(list(map(str, result.frame.columns))).encode())
    h.update(pd.util.hash_pandas_object(result.frame, index=False).to_numpy().tobytes())
    return h.hexdigest()[:16]


def _log_params_and_data(result: TrainResult, source: str) -> None:
    models = result.models
    report = _report_dict(result.data_report)
    used = {k: v for k, v in result.data_used.items() if v is not None}
    frame = result.frame
    cutoffs = sorted(pd.Timestamp(c) for c in frame["cutoff"].unique())
    params = _flatten(json.loads(models.config.model_dump_json()))
    params.update({
        "as_of": str(pd.Timestamp(models.as_of)),
        "eval_cutoff_churn": str(result.eval_cutoffs[EVAL_KEY["churn"]]),
        "eval_cutoff_clv": str(result.eval_cutoffs[EVAL_KEY["clv"]]),
        "data.source": source[:500],
        # what the run read: the rows before as-of (the source may hold later ones)
        "data.first_event": str(used.get("first_event", report.get("first_event", ""))),
        "data.last_event": str(used.get("last_event", report.get("last_event", ""))),
        "data.customers": str(used.get("customers", report.get("customers", ""))),
        "data.rows": str(used.get("rows", report.get("rows_kept", ""))),
        "data.source_rows": str(report.get("rows_kept", "")),
        "data.source_last_event": str(report.get("last_event", "")),
        "frame.rows": str(len(frame)),
        "frame.snapshots": str(len(cutoffs)),
    })
    mlflow.log_params(params)
    mlflow.set_tags({
        "as_of": params["as_of"],
        "eval_cutoff_churn": params["eval_cutoff_churn"],
        "eval_cutoff_clv": params["eval_cutoff_clv"],
        "data.source": params["data.source"],
    })
    mlflow.log_text(models.config.model_dump_json(indent=2), "config.json")
    if report:
        mlflow.log_dict({**report, "source": source}, "data_report.json")

    profile = {
        "num_rows": used.get("rows", report.get("rows_kept")),
        "customers": used.get("customers", report.get("customers")),
        "first_event": params["data.first_event"],
        "last_event": params["data.last_event"],
        "source_rows_read": report.get("rows_read"),
        "source_rows": report.get("rows_kept"),
        "source_customers": report.get("customers"),
        "source_orders": report.get("orders"),
        "source_last_event": params["data.source_last_event"],
        "as_of": params["as_of"],
        "training_frame_rows": int(len(frame)),
        "snapshots": len(cutoffs),
        "first_cutoff": str(cutoffs[0]) if cutoffs else "",
        "last_cutoff": str(cutoffs[-1]) if cutoffs else "",
    }
    dataset = _TransactionsDataset(
        source=_dataset_source(source),
        name="transactions",
        digest=_data_digest(result),
        schema=_contract_schema(report),
        profile=profile,
    )
    try:
        mlflow.log_input(dataset, context="training")
    except MlflowException:
        # MLflow looks the dataset up, then inserts it: two runs of one log at once both
        # insert, and one fails on the unique (experiment, name, digest). Again, it finds it
        time.sleep(0.2)
        mlflow.log_input(dataset, context="training")


class _TransactionsDataset(MetaDataset):
    """The transaction log a run trained on, as MLflow records it: where it was read from,
    the digest, the contract columns, and a profile of what was read (rows, customers,
    orders, the date range, the training frame's snapshots). The rows themselves are not
    logged: `mlflow.data.from_pandas` of the log would copy it, and of a summary row (what
    was logged before) shows a one-row table in MLflow's UI."""

    def __init__(self, *, profile: dict[str, Any], **kwargs: Any) -> None:
        self._profile = profile
        super().__init__(**kwargs)

    @property
    def profile(self) -> dict[str, Any]:
        return self._profile

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "profile": json.dumps(self._profile, default=str)}


def _contract_schema(report: dict[str, Any]) -> Schema | None:
    """The contract columns the log was read into (`features.contract`), as MLflow types."""
    types = {"customer_id": ("long" if report.get("customer_id_type") == "integer"
                             else "string"),
             "timestamp": "datetime", "amount": "double", "quantity": "double",
             "discount": "double"}
    columns = report.get("columns") or {}
    if not columns:
        return None
    return Schema([ColSpec(types.get(name, "string"), name) for name in columns])


def _log_metrics(result: TrainResult) -> None:
    """The evaluation's metrics (a metric that is n/a, NaN, is left out, and the run
    tagged ``baseline_warning`` / ``metrics_warning`` with what `train` said about it) and
    the models' sizes and value scale."""
    if result.baseline_warning:
        mlflow.set_tag("baseline_warning", result.baseline_warning[:5000])
    if result.metrics_warning:
        mlflow.set_tag("metrics_warning", result.metrics_warning[:5000])
    metrics: dict[str, float] = {}
    kind_of = {EVAL_KEY[kind]: kind for kind in KINDS}  # "value" (the evaluation's) -> "clv"
    for key, table in result.evaluation.items():
        prefix = METRIC_PREFIX.get(kind_of.get(key, ""), key)
        for rec in table.to_dict("records"):
            metrics[f"{prefix}_{rec['metric']}"] = float(rec["model"])
            metrics[f"baseline_{prefix}_{rec['metric']}"] = float(rec["baseline"])
    note = tree_cap_note(result)
    if note is not None:
        mlflow.set_tag(TREE_CAP_TAG, note)
    for kind in KINDS:
        model = _model_of(result.models, kind)
        prefix = METRIC_PREFIX[kind]
        metrics[f"{prefix}_best_iteration"] = float(model.best_iteration_)
        metrics[f"{prefix}_min_child_samples"] = float(model.min_child_samples_)
        rows = int((result.frame["cutoff"] == result.eval_cutoffs[EVAL_KEY[kind]]).sum())
        metrics[f"{prefix}_eval_rows"] = float(rows)
    # the value model's scale: the validation snapshot's level and the anchor to the
    # population at as_of (`ValueModel.anchor`); NaN ratios are left out below
    value = result.models.value
    prefix = METRIC_PREFIX["clv"]
    metrics[f"{prefix}_level"] = float(value.level_)
    metrics[f"{prefix}_anchor"] = float(value.anchor_)
    metrics[f"{prefix}_baseline_ratio"] = float(value.baseline_ratio_ or math.nan)
    mlflow.log_metrics({k: v for k, v in metrics.items() if math.isfinite(v)})


def run_metric(metrics: Mapping[str, float], kind: str, name: str,
               prefix: str = "") -> float:
    """Metric ``name`` (``normalized_gini``, ``best_iteration`` ...) of ``kind``'s model in a
    run's ``metrics`` (``run.data.metrics``), under either spelling: ``clv_...`` (since
    session 23) or ``value_...`` (runs logged before); ``prefix`` reads
    ``baseline_`` / ``champion_`` ones. NaN when the run has neither (a metric undefined
    on its evaluation snapshot is not logged)."""
    for spelling in dict.fromkeys((METRIC_PREFIX[kind], OLD_METRIC_PREFIX[kind])):
        value = metrics.get(f"{prefix}{spelling}_{name}")
        if value is not None:
            return float(value)
    return math.nan


def tree_cap_note(result: TrainResult) -> str | None:
    """Which of a run's models grew every tree ``n_estimators`` allows while their validation
    score still improved (early stopping did not end them: they may be under-fit), as the
    run's `TREE_CAP_TAG` says it and `lifecast train` prints it; None when none did."""
    capped = [f"the {what}{kind} model ({model.best_iteration_:,} trees kept of "
              f"{model.config_.n_estimators:,})"
              for kind in KINDS
              for what, model in (("", _model_of(result.models, kind)),
                                  ("evaluation ", _eval_model(result, kind)))
              if model.reached_cap_]
    if not capped:
        return None
    return (f"{'; '.join(capped)} grew every tree n_estimators allows while the validation "
            f"score still improved: it may be under-fit (a higher learning_rate, or a larger "
            f"n_estimators in TrainConfig, lets early stopping end it)")


def _model_of(models: FittedModels, kind: str) -> ChurnModel | ValueModel:
    return models.churn if kind == "churn" else models.value


def _eval_model(result: TrainResult, kind: str) -> ChurnModel | ValueModel:
    """The model of ``kind`` as it was fit at the evaluation cutoff (what the run's
    metrics and the champion rule score; `training.pipeline.train`)."""
    return result.eval_models[EVAL_KEY[kind]]


def _log_features(result: TrainResult) -> None:
    from features.registry import feature_definitions

    fcfg = result.models.config.features
    rows = [
        {"name": f.name, "dtype": f.dtype, "group": f.group, "description": f.description,
         "requires": f.requires}
        for f in feature_definitions(fcfg)
    ]
    rows += [
        {"name": n, "dtype": "float64", "group": "baseline",
         "description": _BASELINE_DESCRIPTIONS.get(n, ""), "requires": None}
        for n in BASELINE_FEATURES
    ]
    used = {kind: set(_model_of(result.models, kind).feature_names_) for kind in KINDS}
    for row in rows:
        row["models"] = [kind for kind in KINDS if row["name"] in used[kind]]
    mlflow.log_dict({"features": rows}, "features.json")


def _eval_rows(result: TrainResult, kind: str) -> pd.DataFrame:
    """The training frame's rows at the evaluation cutoff of ``kind`` (features and label)."""
    frame = result.frame
    rows = frame[frame["cutoff"] == result.eval_cutoffs[EVAL_KEY[kind]]]
    return rows[rows[LABEL[kind]].notna()]


def _log_plots(result: TrainResult, folder: Path) -> None:
    """Draw every plot, save it as PNG in ``folder`` and log the folder as ``plots/``.

    A plot that cannot be drawn (e.g. a single class in the evaluation snapshot) is skipped
    with a warning and named in the ``plots_skipped`` tag; the run itself is still logged.
    """
    from training import plots

    folder.mkdir(parents=True, exist_ok=True)
    pc = result.eval_predictions[EVAL_KEY["churn"]]
    pv = result.eval_predictions[EVAL_KEY["clv"]]

    def baseline(values: pd.Series, label: str) -> tuple[pd.Series, str] | None:
        # a baseline without a prediction for everyone (it could not be fitted there,
        # `add_baseline_features`) is left out: the model is drawn alone
        return (values, label) if values.notna().all() else None

    drawings: dict[str, Any] = {
        "churn_calibration": lambda: plots.plot_calibration(
            pc["actual"], pc["model"], label="LightGBM (calibrated)",
            baseline=baseline(pc["baseline"], "BG/NBD")),
        "churn_gains": lambda: plots.plot_gains(
            pc["actual"], pc["model"], label="LightGBM",
            baseline=baseline(pc["baseline"], "BG/NBD")),
        "clv_decile_value": lambda: plots.plot_decile_value(
            pv["actual"], pv["model"], label="LightGBM",
            baseline=baseline(pv["baseline"], "BG/NBD + Gamma-Gamma")),
    }
    for kind in KINDS:
        model = _model_of(result.models, kind)
        drawings[f"{kind}_feature_importance"] = (
            lambda m=model: plots.plot_feature_importance(
                m.feature_names_,
                m.booster_.feature_importance("gain", iteration=m.best_iteration_),
                kind="gain")
        )
        drawings[f"{kind}_shap_summary"] = lambda k=kind, m=model: _shap_plot(result, k, m)

    import matplotlib.pyplot as plt

    skipped = []
    for name, draw in drawings.items():
        open_before = set(plt.get_fignums())
        try:
            ax = draw()
            ax.set_title(f"{name.split('_')[0]}: {ax.get_title()}")
            plots.save_figure(ax, folder / f"{name}.png")
        except Exception as exc:  # a plot must not lose the run
            warn(f"plot {name} was not drawn: {exc}", RuntimeWarning)
            skipped.append(name)
        finally:
            for number in set(plt.get_fignums()) - open_before:  # ours, drawn or half-drawn
                plt.close(number)
    mlflow.log_artifacts(str(folder), "plots")
    if skipped:
        mlflow.set_tag("plots_skipped", ", ".join(skipped))


def _shap_plot(result: TrainResult, kind: str, model: ChurnModel | ValueModel) -> Any:
    from training import plots

    rows = _eval_rows(result, kind)
    if len(rows) > SHAP_SAMPLE:
        rows = rows.sample(SHAP_SAMPLE, random_state=result.models.config.seed)
    X = rows[model.feature_names_].astype("float64")
    contrib = model.booster_.predict(
        X.to_numpy(na_value=np.nan), num_iteration=model.best_iteration_, pred_contrib=True
    )
    return plots.plot_shap_summary(contrib, X.reset_index(drop=True))


def _pip_requirements() -> list[str]:
    reqs = []
    for name in _RUNTIME_PACKAGES:
        try:
            reqs.append(f"{name}=={metadata.version(name)}")
        except metadata.PackageNotFoundError:
            reqs.append(name)
    return reqs


#: The packages a registered model's code imports, logged with it as MLflow ``code_paths``
#: (their modules, without the bundled demo data or byte code): the model loads where
#: lifecast is not installed (`mlflow models serve`, a bare environment with only the
#: logged requirements), and runs the code it was trained with.
_CODE_PACKAGES = ("features", "training")


def _code_paths(folder: Path, root: Path | None = None) -> list[str]:
    """Copies of `_CODE_PACKAGES` (under ``root``, default where lifecast is installed) in
    ``folder`` (made once per run), for ``code_paths``.

    Written by hand rather than with `shutil.copytree`, which copies each file's and
    folder's mode: from a read-only install (a container image, a root-owned venv) the
    copies were read-only folders that neither MLflow's temporary folder nor the run's
    could delete as a non-root user, and `lifecast train` failed after fitting with a
    PermissionError. These copies get the modes new files get (the umask)."""
    if root is None:
        import features as features_pkg

        root = Path(features_pkg.__file__).resolve().parent.parent
    paths = []
    for name in _CODE_PACKAGES:
        copy = folder / name
        if not copy.exists():
            for src in sorted((root / name).rglob("*")):
                rel = src.relative_to(root / name)
                if src.is_dir() or "__pycache__" in rel.parts or rel.parts[0] == "data" \
                        or src.suffix == ".pyc":
                    continue
                (copy / rel).parent.mkdir(parents=True, exist_ok=True)
                (copy / rel).write_bytes(src.read_bytes())
        paths.append(str(copy))
    return paths


def _input_example(features: pd.DataFrame) -> pd.DataFrame:
    """A few evaluation rows, the most complete first (fewest missing values)."""
    n_missing = features.isna().sum(axis=1).to_numpy()
    order = np.argsort(n_missing, kind="stable")[:INPUT_EXAMPLE_ROWS]
    return features.iloc[order].reset_index(drop=True)


def _log_model(kind: str, result: TrainResult, run_id: str, source: str, folder: Path) -> str:
    """Save the native model + segmenter to ``folder``, log it as a pyfunc, register it and
    tag the version; returns the version number."""
    from mlflow.models import infer_signature

    models = result.models
    model = _model_of(models, kind)
    model.save(folder)
    models.segmenter.save(folder / _SEGMENTER_FILE)
    if result.data_days is not None:
        (folder / _DAYS_FILE).write_text(result.data_days.to_json(orient="split", index=False))
    eval_cutoff = str(result.eval_cutoffs[EVAL_KEY[kind]])
    manifest = {
        "kind": kind,
        "as_of": str(pd.Timestamp(models.as_of)),
        "eval_cutoff": eval_cutoff,
        "run_id": run_id,
        "source": source,
        "feature_names": list(model.feature_names_),
        "files": {"model": "model.json", "booster": "booster.txt", "segmenter": _SEGMENTER_FILE},
    }
    (folder / _MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))

    features = _eval_rows(result, kind)[model.feature_names_].astype("float64")
    example = _input_example(features)
    scorer = LifecastModel(kind)
    scorer.model_ = model
    signature = infer_signature(example, scorer.predict(None, example))
    # models from code: the logged model is this small script, not a pickled object
    code = folder.parent / f"{kind}_model.py"
    code.write_text(_MODEL_CODE.format(kind=kind))

    metric = PRIMARY_METRIC[kind]
    score = _score(kind, metric, result, _eval_model(result, kind))
    info = mlflow.pyfunc.log_model(
        name=kind,
        python_model=str(code),
        artifacts={_MODEL_ARTIFACT: str(folder)},
        signature=signature,
        input_example=example,
        registered_model_name=MODEL_NAMES[kind],
        pip_requirements=_pip_requirements(),
        code_paths=_code_paths(folder.parent / "code"),
        metadata={"lifecast_kind": kind, "as_of": manifest["as_of"],
                  "eval_cutoff": eval_cutoff,
                  FEATURE_CONFIG_KEY: result.models.config.features.model_dump(mode="json"),
                  CUSTOMERS_KEY: result.data_used.get("customers"),
                  DEFINITIONS_KEY: model.feature_definitions_},
    )
    version = str(info.registered_model_version)
    client = mlflow.MlflowClient()
    tags = {
        "kind": kind,
        "run_id": run_id,
        "as_of": manifest["as_of"],
        "eval_cutoff": eval_cutoff,
        "horizon_days": str(_horizon_days(kind, result.models.config.features)),
        DEFINITIONS_KEY: str(model.feature_definitions_),
        "primary_metric": metric,
        metric: f"{score:.6f}",
    }
    tie = TIE_BREAK_METRIC[kind]
    if tie:  # the other metric the champion rule reads, for `lifecast models`
        tags["tie_break_metric"] = tie
        tags[tie] = f"{_score(kind, tie, result, _eval_model(result, kind)):.6f}"
    for key, value in tags.items():
        client.set_model_version_tag(MODEL_NAMES[kind], version, key, value)
    return version


# --------------------------------------------------------------------------------------------
# the champion rule
# --------------------------------------------------------------------------------------------


def _score(kind: str, metric: str, result: TrainResult, model: ChurnModel | ValueModel
           ) -> float:
    """``metric`` of ``model`` on this run's evaluation rows of ``kind``; NaN when it is
    undefined there (no churner, or a model that predicts one value for everyone)."""
    rows = _eval_rows(result, kind)
    try:
        if kind == "churn":
            y = rows["churned"].astype(int).to_numpy()
            p = model.predict_proba(rows)
            return roc_auc(y, p) if metric == "roc_auc" else brier(y, p)
        actual = rows["future_value"].to_numpy(dtype="float64")
        return normalized_gini(actual, model.predict(rows))
    except UndefinedMetricError:
        return math.nan


def _fmt_pair(a: float, b: float) -> tuple[str, str]:
    """The two numbers with 3 decimals, more when 3 do not tell them apart (n/a: NaN)."""
    for digits in (3, 4, 6):
        sa, sb = _fmt(a, digits), _fmt(b, digits)
        if sa != sb:
            break
    return sa, sb


def _fmt(value: float, digits: int = 3) -> str:
    """``value`` with ``digits`` decimals, or ``n/a`` for a metric undefined (NaN)."""
    return "n/a" if math.isnan(value) else f"{value:.{digits}f}"


def _compare(new: dict[str, float], old: dict[str, float], metric: str, tie: str | None
             ) -> tuple[bool, str]:
    """(whether the new settings are better, the comparison in words): by ``metric``,
    and by ``tie`` (lower is better) when it is equal or undefined for both. A score that
    is n/a (undefined on the evaluation snapshot, NaN) loses to one that is defined; two
    that are n/a with no tie-break keep the champion."""
    a, b = _fmt_pair(new[metric], old[metric])
    n_nan, o_nan = math.isnan(new[metric]), math.isnan(old[metric])
    if n_nan or o_nan:
        equal = n_nan and o_nan
    else:
        equal = math.isclose(new[metric], old[metric], rel_tol=1e-9, abs_tol=1e-12)
    if equal and tie and not (math.isnan(new[tie]) or math.isnan(old[tie])):
        ta, tb = _fmt_pair(new[tie], old[tie])
        better = new[tie] < old[tie] and not math.isclose(new[tie], old[tie], rel_tol=1e-9)
        return better, f"{metric} {a} = {b}, {tie} {ta} {'<' if better else '>='} {tb}"
    better = (o_nan and not n_nan) or (not equal and not n_nan and new[metric] > old[metric])
    return better, f"{metric} {a} {'>' if better else '<='} {b}"


def _comparable(kind: str, champion: ChurnModel | ValueModel, result: TrainResult
                ) -> str | None:
    """Why the champion's settings cannot be fit and scored on this run's evaluation
    snapshot, or None when they can. Both models read the baseline features, whose
    churn probability and expected orders depend on the churn horizon, so every feature
    setting (horizons, windows, snapshots) must match, not only the model's own horizon."""
    attr = "churn_horizon_days" if kind == "churn" else "clv_horizon_days"
    theirs_f, ours_f = champion.config.features, _eval_model(result, kind).config.features
    theirs, ours = getattr(theirs_f, attr), getattr(ours_f, attr)
    if theirs != ours:
        return f"it predicts a {theirs}-day horizon, this run {counted(ours, 'day')}"
    if theirs_f != ours_f:
        return ("it was trained with other feature settings: "
                f"{feature_settings_diff(theirs_f, ours_f, 'this run')}")
    return None


def _refit_score(kind: str, champion: ChurnModel | ValueModel, result: TrainResult,
                 metrics: Sequence[str]) -> dict[str, float]:
    """The champion's settings scored as this run's are: fit as if today were the
    evaluation cutoff, on this run's data (`TrainResult.eval_frames`), then scored on the
    outcomes after it.

    Not the champion's registered model itself: it was fit on outcomes up to its own
    as-of date, which for a champion trained less than a horizon ago overlap this run's
    evaluation window, so it would be scored on outcomes it had learned from. (With this
    run's own settings the fit would be this run's evaluation model: `_decide` skips it.)"""
    frame = result.eval_frames[EVAL_KEY[kind]]
    if kind == "churn":
        model = ChurnModel(champion.config).fit(frame)
    else:
        model = ValueModel(champion.config).fit(frame, _eval_rows(result, kind))
    return {m: _score(kind, m, result, model) for m in metrics}


def no_champion_message(client: MlflowClient, kind: str) -> str:
    """Why ``kind`` has no champion, and the fix: train, or promote a registered version
    (e.g. after ``train --promote never``)."""
    name = MODEL_NAMES[kind]
    found = client.search_model_versions(f"name='{name}'")
    if not found:
        return f"{_NO_CHAMPION} (no {name}@{CHAMPION_ALIAS})"
    latest = max(found, key=lambda mv: int(mv.version))
    return (f"no {name} version is champion yet ({len(found)} registered, none promoted): "
            f"make one champion with `lifecast promote --run {latest.run_id}` (the latest, "
            f"v{latest.version}; `lifecast models` lists them all)")


def _champion_version(client: MlflowClient, kind: str) -> str | None:
    try:
        mv = client.get_model_version_by_alias(MODEL_NAMES[kind], CHAMPION_ALIAS)
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE",
                              "NOT_FOUND"):
            return None
        raise
    return str(mv.version)


def _decide(client: MlflowClient, kind: str, result: TrainResult, promote: str
            ) -> dict[str, Any]:
    """Compare the new settings with the current champion's on this run's evaluation
    snapshot, each fit as if today were the evaluation cutoff (`_refit_score`), and
    decide whether the new version becomes champion: when it scores better and was not
    trained on older data than the champion, or, with the
    same settings (equal scores by construction), when it was trained on later data, or
    when the champion was trained on other feature definitions than this lifecast computes
    (it can no longer score)."""
    metric = PRIMARY_METRIC[kind]
    tie = TIE_BREAK_METRIC[kind]
    new_model = _eval_model(result, kind)
    new = {metric: _score(kind, metric, result, new_model)}
    if tie:
        new[tie] = _score(kind, tie, result, new_model)
    decision: dict[str, Any] = {"metric": metric, "new": new, "champion": None,
                                "champion_version": _champion_version(client, kind)}
    cv = decision["champion_version"]
    reason = outdated = other_data = None
    same_settings = False
    if cv is not None:
        with tempfile.TemporaryDirectory(prefix="lifecast-champion-") as tmp:
            folder = _download_version(kind, cv, Path(tmp))
            champion = _load_native(kind, folder)
            manifest_path = folder / _MANIFEST_FILE
            champion_as_of = (json.loads(manifest_path.read_text()).get("as_of", "")
                              if manifest_path.is_file() else "")
            other_data = _other_data(folder, result, champion_as_of)
        # a champion of other feature definitions cannot score with this lifecast at all
        # (`lifecast score` refuses it): the new version replaces it unless told never to
        outdated = definitions_difference(champion.feature_definitions_, f"champion v{cv}")
        reason = None if outdated else _comparable(kind, champion, result)
        if reason is None and not outdated:
            # the same settings on the same data give the same model: no refit
            same_settings = champion.config.same_models_as(new_model.config)
            decision["champion"] = (dict(new) if same_settings
                                    else _refit_score(kind, champion, result, list(new)))

    old = decision["champion"]
    if cv is None:
        promoted, message = (promote != "never",
                             f"no champion yet ({metric} {_fmt(new[metric])})")
    elif outdated:
        promoted = promote != "never"
        message = (f"{outdated}; this lifecast cannot score with it "
                   f"(new {metric} {_fmt(new[metric])})")
    elif old is None:
        promoted = promote == "always"
        message = (f"champion v{cv} cannot be scored on this snapshot: {reason} "
                   f"(new {metric} {_fmt(new[metric])})")
    elif same_settings:
        as_of = pd.Timestamp(result.models.as_of)
        better = bool(champion_as_of) and as_of > pd.Timestamp(champion_as_of)
        promoted = promote == "always" or (promote == "auto" and better)
        message = (f"{metric} {_fmt(new[metric])} for both (the same settings as this run, "
                   f"champion as of {champion_as_of[:10]}, this run as of {as_of:%Y-%m-%d}): "
                   + ("trained on later data" if better else "not trained on later data"))
    else:
        better, cmp = _compare(new, old, metric, tie)
        # better settings trained on older data than the champion's: the model itself
        # knows less recent behaviour, so auto keeps the champion and says how to promote
        older = bool(champion_as_of) and (pd.Timestamp(result.models.as_of)
                                          < pd.Timestamp(champion_as_of))
        promoted = promote == "always" or (promote == "auto" and better and not older)
        message = f"{cmp} (champion: its settings fit at the evaluation cutoff on this run's data)"
        if better and older:
            message += (f", but this run was trained as of "
                        f"{pd.Timestamp(result.models.as_of):%Y-%m-%d}, before the champion "
                        f"(as of {champion_as_of[:10]}): train these settings on the newer data "
                        f"to promote them (or {_promote_always()})")
    if other_data and not outdated:
        # registered models are one set per store: a run on another data set (another shop,
        # a sample, a restated history) must not replace the champion unasked
        promoted = promoted and promote == "always"
        message += (f"; this run was trained on another log than champion v{cv}: "
                    f"{other_data}")
        if promote == "auto":
            message += (f". To replace it with a model of this data use "
                        f"{_promote_always()}, or keep each data "
                        f"set in its own MLflow store")
    if promote == "auto":
        prefix = "promoted" if promoted else f"kept champion v{cv}"
    elif promote == "always":
        prefix = "promoted (always)"
    else:
        prefix = "not promoted (never)"
    decision["promoted"] = promoted
    decision["message"] = f"{prefix}: {message}"
    return decision


def _read_days(folder: Path) -> pd.DataFrame | None:
    """The daily profile saved with the model in ``folder``, None for older models."""
    days = folder / _DAYS_FILE
    if not days.is_file():
        return None
    return pd.read_json(io.StringIO(days.read_text()), orient="split",
                        dtype={"day": "str", "rows": "int64", "hash_sum": "str"})


def _other_data(folder: Path, result: TrainResult, champion_as_of: str) -> str | None:
    """Why this run's log is not the one the champion in ``folder`` was trained on, up to
    the earlier of the two as-of dates (`training.pipeline.data_differs`: a log extended
    with later events, or cut earlier, is the same log), or None when it is, or when
    either side has no daily profile (models logged before it was saved, results made by
    hand)."""
    from training.pipeline import data_differs

    champion = _read_days(folder)
    if result.data_days is None or champion is None or not champion_as_of:
        return None
    before = min(pd.Timestamp(champion_as_of), pd.Timestamp(result.models.as_of))
    return data_differs(champion, result.data_days, before)


def _record_decision(client: MlflowClient, kind: str, version: str, decision: dict[str, Any]
                     ) -> None:
    if decision["promoted"]:
        client.set_registered_model_alias(MODEL_NAMES[kind], CHAMPION_ALIAS, version)
    decision["version"] = version
    mlflow.set_tag(f"decision_{kind}", decision["message"])
    mlflow.set_tag(f"promoted_{kind}", str(decision["promoted"]).lower())
    if decision["champion_version"] is not None:
        mlflow.set_tag(f"champion_before_{kind}", decision["champion_version"])
    if decision["champion"]:
        mlflow.log_metrics({f"champion_{METRIC_PREFIX[kind]}_{m}": float(v)
                            for m, v in decision["champion"].items()})
    client.set_model_version_tag(MODEL_NAMES[kind], version, "decision", decision["message"])


# --------------------------------------------------------------------------------------------
# the registry: promote, list, load
# --------------------------------------------------------------------------------------------


def check_promote(promote: str, name: str = "promote") -> None:
    """ValueError unless ``promote`` is one of `PROMOTE_CHOICES` (``name``: what the user
    typed it as, e.g. ``--promote``)."""
    if promote not in PROMOTE_CHOICES:
        raise ValueError(f"{name} must be one of {', '.join(PROMOTE_CHOICES)}, got {promote!r}")


#: The shortest start of a run id `promote_run` looks up.
MIN_RUN_PREFIX = 6


def _refuse_deleted_run(client: MlflowClient, run_id: str) -> None:
    """A ValueError when run ``run_id`` or its experiment is deleted: `mlflow gc` removes a
    deleted run's artifacts, the champion's models among them, so the service and `lifecast
    score` would lose them (it was promoted without a word)."""
    run = client.get_run(run_id)
    if run.info.lifecycle_stage == "deleted":
        raise ValueError(
            f"run {run_id} is deleted, so `mlflow gc` may remove its models: restore it "
            f"first (mlflow runs restore --run-id {run_id}), or promote another run")
    experiment = client.get_experiment(run.info.experiment_id)
    if experiment.lifecycle_stage == "deleted":
        raise ValueError(
            f"run {run_id} is in experiment {experiment.name!r}, which is deleted, so `mlflow "
            f"gc` may remove its models: restore it first (mlflow experiments restore "
            f"--experiment-id {experiment.experiment_id}), or promote another run")


def promote_run(run_id: str) -> dict[str, str]:
    """Give the ``champion`` alias to the versions registered by run ``run_id``.

    ``run_id`` may be the start of a run id (at least 6 characters, as git takes a commit's)
    when exactly one run with registered lifecast models starts with it. Returns
    ``{kind: version}`` for the versions promoted; raises ValueError when no lifecast model
    comes from that run, or when the start given fits several.
    """
    # MLflow's run ids are lowercase hex: an id copied from somewhere that upper-cased it
    run_id = str(run_id).strip().lower()
    if not run_id:
        raise ValueError("no run id given: pass the id of a training run (`lifecast models` "
                         "lists them), or its first 6 or more characters")
    client = _client()
    end_dead_runs()  # a run killed part way is refused below, not promoted
    found: dict[str, str] = {}
    tags: dict[str, dict[str, str]] = {}
    if re.fullmatch(r"[A-Za-z0-9_-]+", run_id):
        versions = client.search_model_versions(f"run_id='{run_id}'")
        if not versions and len(run_id) >= MIN_RUN_PREFIX:
            # the model-version search has no LIKE on run_id: list lifecast's own versions
            # (a few per training run) and match the start here
            versions = [mv for name in MODEL_NAMES.values()
                        for mv in client.search_model_versions(f"name='{name}'")
                        if mv.run_id.startswith(run_id)]
            runs = sorted({mv.run_id for mv in versions})
            if len(runs) > 1:
                raise ValueError(f"run id {run_id!r} is the start of {len(runs)} runs' ids "
                                 f"({', '.join(runs)}): give more of it")
        for mv in versions:
            for kind, name in MODEL_NAMES.items():
                if mv.name == name and (kind not in found or int(mv.version) > int(found[kind])):
                    found[kind], tags[kind] = str(mv.version), dict(mv.tags or {})
    if not found:
        raise ValueError(
            f"no registered models come from run {run_id}{_run_hint(client, run_id)}; "
            f"`lifecast models` lists the versions and the runs they come from"
        )
    killed = next((t[KILLED_TAG] for t in tags.values() if KILLED_TAG in t), None)
    if killed:  # a train run killed outright part way: its versions may be half logged
        run = next(iter(versions)).run_id
        raise ValueError(
            f"run {run} cannot be champion: it was {killed}. Promote a run that finished "
            f"(`lifecast models` lists them), or train again with `lifecast train`")
    _refuse_deleted_run(client, next(iter(versions)).run_id)
    missing = [MODEL_NAMES[k] for k in KINDS if k not in found]
    if missing:  # a run killed outright (kill -9: no `_undo_run`): one model of the pair
        have = ", ".join(f"{MODEL_NAMES[k]} v{v}" for k, v in found.items())
        raise ValueError(
            f"run {next(iter(versions)).run_id} registered {have} but no {missing[0]}: it "
            f"failed or was stopped before registering both models, and its champions would "
            f"not be a pair. Promote a run that registered both (`lifecast models` lists "
            f"them), or train again with `lifecast train`"
        )
    for kind in (k for k in KINDS if k in found):  # a champion `lifecast score` would refuse
        name, version = MODEL_NAMES[kind], found[kind]
        defs = _version_definitions(name, version, tags[kind])
        why = None if pd.isna(defs) else definitions_difference(defs, f"{name} v{version}")
        if why:
            raise ValueError(f"{why}. It cannot be champion: `lifecast score` could not "
                             f"score with it. {RETRAIN}")
    with registry_lock():  # not while a `lifecast train` decides (`log_training`)
        before = {kind: _champion_version(client, kind) for kind in KINDS}
        moving = [k for k in KINDS if k in found and before[k] != found[k]]
        for kind in moving:
            if before[kind] is not None:
                _warn_if_horizon_changes(client, kind, found[kind], before[kind])
                _warn_if_trained_earlier(client, kind, found[kind], before[kind])
        # both aliases move before any tag, and an error or Ctrl-C / SIGTERM between the two
        # moves puts the first back: the champions stay a pair, the old one or the new one
        try:
            for kind in moving:
                client.set_registered_model_alias(MODEL_NAMES[kind], CHAMPION_ALIAS,
                                                  found[kind])
        except BaseException:
            for kind in moving:
                _suppressed(
                    (lambda n=MODEL_NAMES[kind]: client.delete_registered_model_alias(
                        n, CHAMPION_ALIAS)) if before[kind] is None else
                    (lambda n=MODEL_NAMES[kind], v=before[kind]:
                     client.set_registered_model_alias(n, CHAMPION_ALIAS, v)))
            raise
        for kind in moving:
            previous, name = before[kind], MODEL_NAMES[kind]
            # the version's decision (what `lifecast models` shows) and its run's tags
            # now say how it became champion, and the champion it replaced how it
            # stopped being one, each keeping what was decided when it was trained
            when = _now()
            _mark_decision(client, kind, found[kind], f"{_BY_HAND}{when}", promoted=True)
            if previous is not None:
                run = client.get_model_version(name, found[kind]).run_id
                by = named(f"`lifecast promote --run {run}`", f"promote_run({run!r})")
                _mark_decision(client, kind, previous,
                               f"{_DEMOTED}by hand {when}: {by} made v{found[kind]} "
                               f"champion", promoted=False)
    return {kind: found[kind] for kind in KINDS if kind in found}


_BY_HAND, _DEMOTED, _WHEN_TRAINED = "promoted by hand ", "demoted ", " (when trained: "


def _now() -> str:
    return pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")


def _mark_decision(client: MlflowClient, kind: str, version: str, head: str, *,
                   promoted: bool) -> None:
    """Say how version ``version`` of ``kind`` became or stopped being champion (``head``,
    e.g. ``promoted by hand <when>``) on the version (its ``decision`` tag, which `lifecast
    models` shows) and on the run that registered it (``decision_<kind>``, and
    ``promoted_<kind>`` set to ``promoted``), followed by what was decided when it was
    trained, which is kept through any number of such changes."""
    name = MODEL_NAMES[kind]
    mv = client.get_model_version(name, version)
    trained = mv.tags.get("decision", "")
    if trained.startswith((_BY_HAND, _DEMOTED)):  # changed after training: the original
        trained = (trained.split(_WHEN_TRAINED, 1)[1][:-1] if _WHEN_TRAINED in trained
                   else "")
    text = head + (f"{_WHEN_TRAINED}{trained})" if trained else "")
    client.set_model_version_tag(name, version, "decision", text)
    with contextlib.suppress(MlflowException):  # its run was deleted: only the version
        client.set_tag(mv.run_id, f"decision_{kind}", text)
        client.set_tag(mv.run_id, f"promoted_{kind}", str(promoted).lower())


def _run_hint(client: MlflowClient, run_id: str) -> str:
    """Why run ``run_id`` has no models, when that can be told: a start of an id too short
    to be looked up, or a --tune run (or one of its trials) whose models the train run that
    followed it registered."""
    if len(run_id) < MIN_RUN_PREFIX:
        return (f" (a start of a run id needs at least {MIN_RUN_PREFIX} characters: give "
                f"more of it)")
    try:
        run = client.get_run(run_id)
    except MlflowException:
        return ""
    tags = run.data.tags
    parent = tags.get("mlflow.parentRunId")
    if TRAIN_RUN_TAG not in tags and parent:  # a trial: its tune run knows the train run
        with contextlib.suppress(MlflowException):
            tags = client.get_run(parent).data.tags
    train_run = tags.get(TRAIN_RUN_TAG)
    if train_run:
        return (f": it is a --tune run or trial; the train run that used its parameters, "
                f"{train_run}, registered the models (lifecast promote --run {train_run})")
    return ""


#: The run parameter holding each kind's horizon (``features.<name>`` of the logged config).
HORIZON_PARAM = {"churn": "features.churn_horizon_days", "clv": "features.clv_horizon_days"}


def _horizon_days(kind: str, features: FeatureConfig) -> int:
    """The outcome window ``kind``'s model predicts, in days."""
    return features.churn_horizon_days if kind == "churn" else features.clv_horizon_days


def _warn_if_horizon_changes(client: MlflowClient, kind: str, new: str, old: str) -> None:
    """Warn when a version promoted by hand predicts another horizon than the champion it
    replaces (its run's ``features.<kind>_horizon_days`` parameter): the scores served after
    the next `lifecast score` then mean something else ("no purchase in 90 days" instead of
    180). "auto" never does this: such a champion cannot be scored (`_comparable`)."""
    param = HORIZON_PARAM[kind]
    name = MODEL_NAMES[kind]
    days = [client.get_run(client.get_model_version(name, v).run_id).data.params.get(param)
            for v in (new, old)]
    if None not in days and days[0] != days[1]:
        warn(
            f"{name} v{new} predicts a {days[0]}-day horizon, the champion it replaces (v{old}) "
            f"{counted(int(days[1]), 'day')}: after the next `lifecast score` the served "
            f"{'churn probabilities' if kind == 'churn' else 'values'} cover "
            f"{counted(int(days[0]), 'day')}",
        )


def _warn_if_trained_earlier(client: MlflowClient, kind: str, new: str, old: str) -> None:
    """Warn when a version promoted by hand was trained as of an earlier date than the
    champion it replaces (their ``as_of`` tags): it has not seen the latest behaviour
    ("auto" does not do this, `_decide`)."""
    name = MODEL_NAMES[kind]
    dates = [client.get_model_version(name, v).tags.get("as_of") for v in (new, old)]
    if None in dates or pd.Timestamp(dates[0]) >= pd.Timestamp(dates[1]):
        return
    warn(f"{name} v{new} was trained as of {dates[0][:10]}, before the champion it replaces "
         f"(v{old}, as of {dates[1][:10]}): it has not learned what happened after "
         f"{dates[0][:10]}. To serve its settings on the newer data, train them again "
         f"(lifecast train)")


def champion_versions() -> dict[str, str | None]:
    """The version carrying the ``champion`` alias, per kind (None: no champion yet)."""
    client = _client()
    return {kind: _champion_version(client, kind) for kind in KINDS}


LIST_COLUMNS = ["model", "version", "aliases", "run_id", "run_name", "tune_trials", "as_of",
                "eval_cutoff", "horizon_days", DEFINITIONS_KEY, "created", "primary_metric",
                "score", "tie_break_metric", "tie_break_score", "decision"]


def list_models() -> pd.DataFrame:
    """One row per registered version of both models, newest first within each model:
    ``model, version, aliases, run_id, run_name, tune_trials, as_of, eval_cutoff,
    horizon_days, feature_definitions, created, primary_metric, score, tie_break_metric,
    tie_break_score, decision``.

    ``aliases`` is comma-separated (``champion`` marks the version scoring and serving
    use); ``run_name`` the name of the run that registered it, as MLflow shows it (empty
    when the run was deleted); ``tune_trials`` the Optuna trials of the ``--tune`` search
    its parameters came from (0: not tuned; NA: tuned, the search run is gone);
    ``horizon_days`` the outcome window the model predicts; ``feature_definitions`` the
    version of `features.registry` it was built with (a version of other definitions
    cannot score here); ``created`` when it was trained (a UTC timestamp). ``score`` and
    ``tie_break_score`` are the metrics the champion rule decides by (`PRIMARY_METRIC`,
    `TIE_BREAK_METRIC`: ``roc_auc`` then ``brier`` for churn, ``normalized_gini`` for
    clv, which has no tie-break), each on the version's own run's evaluation snapshot
    (``eval_cutoff``); NaN where undefined there. ``decision`` is how the champion rule
    decided, or starts ``stale:`` when the version's run is still RUNNING though its process
    is gone (a ``kill -9``; the next ``lifecast train`` ends it, `end_dead_runs`)."""
    client = _client()
    rows = []
    runs: dict[str, Any] = {}

    def run_of(run_id: str | None) -> Any:
        if run_id and run_id not in runs:
            try:
                runs[run_id] = client.get_run(run_id)
            except MlflowException:  # the run was deleted
                runs[run_id] = None
        return runs.get(run_id) if run_id else None

    def horizon(kind: str, mv: Any, tags: dict[str, str]) -> Any:
        # a tag since session 12; versions logged before: their run's parameter
        days = tags.get("horizon_days")
        if not days and (run := run_of(mv.run_id)) is not None:
            days = run.data.params.get(HORIZON_PARAM[kind])
        return int(days) if days else pd.NA

    def trials(run: Any) -> Any:
        tune_run = run.data.tags.get(TUNE_RUN_TAG) if run is not None else None
        if not tune_run:
            return 0
        tune = run_of(tune_run)
        n = tune.data.params.get("n_trials") if tune is not None else None
        return int(n) if n else pd.NA

    def metric_score(kind: str, metric: str | None, tags: dict[str, str], run: Any) -> float:
        # a tag of the version (the primary metric since session 7, the tie-break since
        # session 23), else the run's metric of that name, under either spelling
        if metric is None:
            return np.nan
        if tags.get(metric) is not None:
            return float(tags[metric])
        return run_metric(run.data.metrics, kind, metric) if run is not None else np.nan

    for kind in KINDS:
        name = MODEL_NAMES[kind]
        found = client.search_model_versions(f"name='{name}'")
        # version search results leave the aliases out: they live on the registered model
        aliases: dict[str, list[str]] = {}
        if found:
            for alias, version in client.get_registered_model(name).aliases.items():
                aliases.setdefault(str(version), []).append(alias)
        for mv in found:
            tags = dict(mv.tags or {})
            run = run_of(mv.run_id)
            metric = tags.get("primary_metric", PRIMARY_METRIC[kind])
            tie = tags.get("tie_break_metric", TIE_BREAK_METRIC[kind] or "") or None
            rows.append({
                "model": name,
                "version": int(mv.version),
                "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                "run_id": mv.run_id,
                "run_name": (run.info.run_name or "") if run is not None else "",
                "tune_trials": trials(run),
                "as_of": pd.Timestamp(tags["as_of"]) if tags.get("as_of") else pd.NaT,
                "eval_cutoff": (pd.Timestamp(tags["eval_cutoff"]) if tags.get("eval_cutoff")
                                else pd.NaT),
                "horizon_days": horizon(kind, mv, tags),
                DEFINITIONS_KEY: _version_definitions(name, mv.version, tags),
                "created": pd.Timestamp(int(mv.creation_timestamp), unit="ms", tz="UTC"),
                "primary_metric": metric,
                "score": metric_score(kind, metric, tags, run),
                "tie_break_metric": tie or "",
                "tie_break_score": metric_score(kind, tie, tags, run),
                "decision": _stale(run) or tags.get("decision", ""),
            })
    out = pd.DataFrame(rows, columns=LIST_COLUMNS).astype({
        "horizon_days": "Int64", DEFINITIONS_KEY: "Int64", "tune_trials": "Int64",
        "score": "float64", "tie_break_score": "float64"})
    if len(out):
        out = out.sort_values(["model", "version"], ascending=[True, False],
                              ignore_index=True)
    return out


def _stale(run: Any) -> str:
    """What `list_models` says of a version whose run is still RUNNING though its process
    is gone (killed outright; `end_dead_runs` has not seen it yet): "" otherwise."""
    reason = dead_run_reason(run) if run is not None else None
    return "" if reason is None else (
        f"stale: its training run is RUNNING but its process is gone ({reason}); the next "
        f"`lifecast train` marks it KILLED")


def _version_definitions(name: str, version: str | int, tags: Mapping[str, str]) -> Any:
    """The feature definitions a registered version was built with: its tag (since session
    14), else its pyfunc's metadata (session 13; nothing there before: version 1); NA when
    the version's artifacts are gone."""
    from mlflow.models import Model

    if DEFINITIONS_KEY in tags:
        return int(tags[DEFINITIONS_KEY])
    # its MLmodel file alone, into a folder removed after: `mlflow.models.get_model_info`
    # downloads it into a new temporary folder it never removes (one left per version
    # each time `lifecast models` or `promote` looked)
    try:
        with tempfile.TemporaryDirectory(prefix="lifecast-mlmodel-") as tmp, _quiet():
            path = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{name}/{version}/MLmodel", dst_path=tmp)
            meta = Model.load(path).metadata
    except (MlflowException, OSError):
        return pd.NA
    return recorded_definitions(meta)


def _download_version(kind: str, version: str, dst: Path) -> Path:
    """Download a registered version and return its model folder (``booster.txt`` ...)."""
    from mlflow.models import Model

    dst.mkdir(parents=True, exist_ok=True)
    with _quiet():
        root = Path(mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{MODEL_NAMES[kind]}/{version}", dst_path=str(dst)))
    conf = Model.load(str(root / "MLmodel")).flavors.get("python_function", {})
    rel = conf.get("artifacts", {}).get(_MODEL_ARTIFACT, {}).get("path")
    folder = root / rel if rel else root / "artifacts" / kind
    if not (folder / "model.json").is_file():
        raise ValueError(
            f"{MODEL_NAMES[kind]} version {version} is not a lifecast model (no model.json in "
            f"its artifacts)"
        )
    return folder


def champion_artifacts(kind: str, dst: Path | str | None = None) -> Path:
    """Download the champion of ``kind`` (``"churn"`` or ``"clv"``) and return its local
    folder: ``booster.txt`` and ``model.json`` (load with `ChurnModel.load` /
    `ValueModel.load`), ``segmenter.json`` (`RFMSegmenter.load`) and ``lifecast.json``
    (kind, cutoffs, run id, plus ``version``, the registry version).

    ``dst`` is where to download (a new temporary folder when None). Raises
    `NoChampionError` when no version carries the alias.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}")
    client = _client()
    version = _champion_version(client, kind)
    if version is None:
        raise NoChampionError(no_champion_message(client, kind))
    base = Path(dst) if dst is not None else Path(tempfile.mkdtemp(prefix="lifecast-"))
    folder = _download_version(kind, version, base / kind)
    manifest_path = folder / _MANIFEST_FILE
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    manifest.update({"version": version, "model": MODEL_NAMES[kind]})
    manifest_path.write_text(json.dumps(manifest, indent=2))
    return folder


def load_champions(dst: Path | str | None = None) -> FittedModels:
    """The champion versions of both models, loaded natively, as `FittedModels`.

    ``dst`` is where their artifacts are downloaded and kept; when None, a temporary folder
    removed once the models are loaded.

    ``versions`` holds the registry version numbers (``{"churn": "3", "clv": "2"}``); the
    segmenter, ``config`` and ``as_of`` are the churn champion's (both champions come from
    one run unless a run was promoted for one kind only). Raises `NoChampionError` when a
    model has no champion yet, and ValueError when the two champions were trained with
    different feature settings (the baseline features they read would differ).
    """
    if dst is None:
        # the models are read into memory below, so their download is not kept: before, every
        # `lifecast score` left a copy of both champions in the temporary folder
        with tempfile.TemporaryDirectory(prefix="lifecast-champions-") as tmp:
            return load_champions(tmp)
    from features.segments import RFMSegmenter
    from training.pipeline import FittedModels

    folders = {kind: champion_artifacts(kind, dst) for kind in KINDS}
    churn = ChurnModel.load(folders["churn"])
    value = ValueModel.load(folders["clv"])
    manifests = {kind: json.loads((folders[kind] / _MANIFEST_FILE).read_text())
                 for kind in KINDS}
    check_same_feature_settings(
        churn, value, f"{MODEL_NAMES['churn']} champion, run {manifests['churn'].get('run_id')}",
        f"{MODEL_NAMES['clv']} champion, run {manifests['clv'].get('run_id')}",
        "Make both champions come from one run: `lifecast promote --run <run id>`")
    segmenter: RFMSegmenter = RFMSegmenter.load(folders["churn"] / _SEGMENTER_FILE)
    manifest = manifests["churn"]
    versions = {kind: manifests[kind]["version"] for kind in KINDS}
    return FittedModels(
        churn=churn,
        value=value,
        segmenter=segmenter,
        config=churn.config,
        as_of=pd.Timestamp(manifest["as_of"]),
        versions=versions,
        data_days=_read_days(folders["churn"]),
    )
