"""The prediction service's logic, without BentoML: `Runtime` and `GuardMiddleware`.

`serving.service` is the thin BentoML wrapper; this module holds what it calls, so the logic
can be used and tested without a server.

`Runtime` holds what the endpoints need, loaded once per worker:

* the champion models (`ChurnModel`, `ValueModel`, the `RFMSegmenter` saved with the churn
  model, and the training config: horizons, risk bands, number of reasons), loaded natively
  from their folder of plain files (``booster.txt``, ``model.json``, ``segmenter.json``);
  predictions call the LightGBM booster on a float64 numpy matrix with ``num_threads=1``
  (requests are small: threads only add latency; scale out with workers), requests of up to
  `ROW_PATH_MAX` rows row by row through LightGBM's single-row fast path
  (`training.rowpredict.RowPredictor`, a third of ``Booster.predict``'s time for one row);
* the `CustomerStore` (its current batch) and, fitted on the features of that batch, the
  BG/NBD + Gamma-Gamma baseline (`training.baseline.BaselineCLV`) that ``/score`` needs:
  the models take the baseline's predictions as features, and in batch those come from a
  baseline fitted on the population at the cutoff (`training.models.add_baseline_features`).
  `lifecast score` saves that baseline's parameters with the batch, and the service loads
  them when it starts and whenever the current batch changes (checked at most every
  ``LIFECAST_STORE_CHECK_SECONDS``, default 30 s); a batch written without them gets the
  same baseline refitted on its population (the store holds every customer's ``frequency,
  recency, T, monetary_value``). A population too small for the fit leaves the baseline
  features missing, as in batch;
* `OnlineFeatures`, the batch pipeline's feature code compiled once for small inputs.

Endpoints (the methods of `Runtime`):

* `Runtime.predict`: the customers' stored feature rows of the current batch, scored by the
  champion models (churn probability, risk band, predicted value, value at risk and reasons
  are computed now; expected orders and p_alive are the batch's baseline features; RFM
  score, segment and lifecycle stage are the batch's when the service's models scored it,
  else computed again from the stored features with the service's segmenter and horizon, so
  that an answer never mixes two champions; ``as_of`` is the batch's, and the answer names
  the models that scored the batch). It reads the store without pandas
  (`training.store.CustomerStore.lookup`) and keeps per-batch constants (feature positions,
  ``as_of``, the batch's models, whether its feature settings are the models') by batch,
  taken from the lookup that read the rows; `Runtime.predict_frames` is the same through
  pandas frames, slower, kept as the reference the tests compare it with.
* `Runtime.score`: features from the caller's transactions at ``as_of`` (default: now), the
  baseline fitted on the current batch's population, the saved segment thresholds and the
  lifecycle rules at the model's churn horizon: the same output as the batch.
* `Runtime.high_risk`, `Runtime.segments`: the current batch's ranked list (by default its
  high-risk customers only: ``churn_risk`` ``["high"]``) and segment totals, as read from the
  store (JSON or CSV), each export written to the audit log.

`GuardMiddleware` (pure ASGI) runs in front of the endpoints: API keys and scopes
(`serving.keys`), a body size limit (``LIFECAST_MAX_BODY_BYTES``, default 2 MB: 413), JSON in
UTF-8 only (415; a UTF-8 byte order mark is dropped), and the rewriting of validation errors
into ``{"error": "<field>: <message>", "detail": [...]}`` with status 422 (400 for a body that
is not JSON). Probes, metrics and the docs stay open (`serving.keys.OPEN_PATHS`); it serves
the OpenAPI document itself (`serving.openapi`: with the API key's security scheme) at
``/openapi.json`` and ``/docs.json``, and redirects ``/docs`` to the Swagger UI at ``/``.

Nothing happens on import; heavy modules are imported when a `Runtime` is built.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from serving.schemas import (
    CustomerError,
    CustomerPrediction,
    HighRiskRequest,
    HighRiskResponse,
    PredictResponse,
    ScoreRequest,
    ScoreResponse,
    SegmentsRequest,
    SegmentsResponse,
)

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from features.online import OnlineFeatures
    from features.segments import RFMSegmenter
    from serving.audit import AuditLog
    from serving.keys import KeyRecord, KeyStore
    from training.baseline import BaselineCLV
    from training.models import ChurnModel, TrainConfig, ValueModel
    from training.rowpredict import RowPredictor
    from training.store import BatchInfo, CustomerStore

__all__ = [
    "CHAMPIONS_AT_ENV",
    "CHURN_MODEL_ENV",
    "CLV_MODEL_ENV",
    "CORS_ORIGINS_ENV",
    "KEY_STATE",
    "MAX_BODY_ENV",
    "SERVICE_NAME",
    "STORE_URL_ENV",
    "CorsMiddleware",
    "GuardMiddleware",
    "LoadedModels",
    "Runtime",
    "ServiceError",
    "check_cors_origins",
    "cors_origins",
    "load_models",
    "model_folder",
]

logger = logging.getLogger("lifecast.serving")

#: Name of the BentoML service (the key of its settings: ``services.lifecast.workers=2``).
SERVICE_NAME = "lifecast"
CHURN_MODEL_ENV = "LIFECAST_CHURN_MODEL"
CLV_MODEL_ENV = "LIFECAST_CLV_MODEL"
#: training.store.STORE_URL_ENV, repeated so that this module does not import SQLAlchemy
STORE_URL_ENV = "LIFECAST_STORE_URL"
MAX_BODY_ENV = "LIFECAST_MAX_BODY_BYTES"
STORE_CHECK_ENV = "LIFECAST_STORE_CHECK_SECONDS"
#: When the service's models were the champions: `lifecast serve` sets it to the instant it
#: read the champion aliases (ISO 8601, UTC) before starting the workers; without it (plain
#: ``bentoml serve``), the instant the worker loaded the models. A batch written later by
#: `lifecast score`, which scores with the champions, was scored by newer champions.
CHAMPIONS_AT_ENV = "LIFECAST_CHAMPIONS_AT"
DEFAULT_MAX_BODY = 2 * 1024 * 1024
_SEGMENTER_FILE = "segmenter.json"
_MANIFEST_FILE = "lifecast.json"
_CSV_COLUMNS = (
    "customer_id", "as_of", "churn_probability", "churn_risk", "predicted_clv",
    "expected_orders", "p_alive", "rfm_score", "segment", "lifecycle_stage", "value_at_risk",
    "reasons", "churn_model_version", "clv_model_version",
)


class ServiceError(Exception):
    """A request the service answers with ``status`` and ``message`` (never a traceback)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class _BatchChanged(Exception):
    """Another batch became current while the service was loading one (two reads apart)."""


# --------------------------------------------------------------------------------------------
# the models
# --------------------------------------------------------------------------------------------


def model_folder(root: str | os.PathLike[str]) -> Path:
    """The folder holding ``model.json`` / ``booster.txt`` / ``segmenter.json`` inside a
    BentoML model imported from MLflow (``<root>/mlflow_model``, the pyfunc's ``model``
    artifact), or ``root`` itself when the model was saved there natively."""
    root = Path(root)
    if (root / "model.json").is_file():
        return root
    mlflow_dir = root / "mlflow_model"
    mlmodel = mlflow_dir / "MLmodel"
    if mlmodel.is_file():
        import yaml

        meta = yaml.safe_load(mlmodel.read_text()) or {}
        pyfunc = (meta.get("flavors") or {}).get("python_function") or {}
        rel = ((pyfunc.get("artifacts") or {}).get("model") or {}).get("path")
        if rel and (mlflow_dir / rel / "model.json").is_file():
            return mlflow_dir / rel
    found = sorted(p.parent for p in root.glob("**/model.json"))
    if len(found) == 1:
        return found[0]
    raise FileNotFoundError(
        f"{root} holds no lifecast model (model.json + booster.txt): import the champions "
        f"with `lifecast serve` (or serving.serve_cli.import_champions)"
    )


@dataclass
class LoadedModels:
    """The champion models as the service uses them."""

    churn: ChurnModel
    value: ValueModel
    segmenter: RFMSegmenter
    config: TrainConfig
    versions: dict[str, str]
    as_of: str | None = None  # the training cutoff (for information)
    churn_names: list[str] = field(default_factory=list)
    value_names: list[str] = field(default_factory=list)


def _versions_text(versions: dict[str, str]) -> str:
    return ", ".join(f"{kind} v{v}" for kind, v in sorted(versions.items())) or "none"


def _str_versions(versions: Any) -> dict[str, str]:
    """Model versions as ``{kind: version}`` text, as `LoadedModels.versions` holds them."""
    return {str(k): str(v) for k, v in (versions or {}).items()}


def load_models(churn_folder: str | os.PathLike[str], clv_folder: str | os.PathLike[str],
                versions: dict[str, str] | None = None) -> LoadedModels:
    """Load both models natively from their folders; the segmenter and the config are the
    churn model's (as `training.tracking.load_champions` does). ``versions`` defaults to the
    ``version`` recorded in each folder's ``lifecast.json`` (else ``"unregistered"``)."""
    from features.segments import RFMSegmenter
    from training.models import ChurnModel, ValueModel, check_same_feature_settings

    churn_folder, clv_folder = Path(churn_folder), Path(clv_folder)
    churn = ChurnModel.load(churn_folder)
    value = ValueModel.load(clv_folder)
    check_same_feature_settings(churn, value, str(churn_folder), str(clv_folder),
                                "Serve two models from one training run")
    segmenter = RFMSegmenter.load(churn_folder / _SEGMENTER_FILE)
    manifest = _manifest(churn_folder)
    found = {"churn": _manifest(churn_folder).get("version"),
             "clv": _manifest(clv_folder).get("version")}
    versions = {k: str((versions or {}).get(k) or found[k] or "unregistered")
                for k in ("churn", "clv")}
    return LoadedModels(
        churn=churn, value=value, segmenter=segmenter, config=churn.config, versions=versions,
        as_of=manifest.get("as_of"), churn_names=list(churn.feature_names_),
        value_names=list(value.feature_names_),
    )


def _log_settings(store: CustomerStore) -> None:
    """Say where the service reads its customer store, API keys and audit log, and warn
    for each one left to its default in the working folder: `bentoml serve <bento tag>`
    runs the service inside the Bento's own folder, where a default store is empty (the
    service stays not ready) and a default keys file has no key (every request is 401)."""
    from serving.audit import AUDIT_LOG_ENV, default_audit_path
    from serving.keys import KEYS_FILE_ENV, default_keys_path

    logger.info("customer store %s, API keys %s, audit log %s", store.safe_url,
                default_keys_path(), default_audit_path())
    unset = [env for env in (STORE_URL_ENV, KEYS_FILE_ENV, AUDIT_LOG_ENV)
             if not os.environ.get(env)]
    if unset:
        logger.warning("%s not set: the default%s in the working folder %s are used; set %s "
                       "to absolute paths when serving a built Bento, which runs in its own "
                       "folder", ", ".join(unset), "s" if len(unset) > 1 else "", Path.cwd(),
                       "them" if len(unset) > 1 else "it")


def _manifest(folder: Path) -> dict[str, Any]:
    path = folder / _MANIFEST_FILE
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}


#: requests of at most this many rows are predicted row by row through LightGBM's
#: single-row fast path (`training.rowpredict.RowPredictor`), larger ones by
#: ``Booster.predict``
ROW_PATH_MAX = 64


class _RowPredictors(NamedTuple):
    """The single-row predictors a request's rows go through (`_row_predictors`)."""

    contrib: RowPredictor  # the churn model's SHAP contributions (the reasons)
    raw: RowPredictor  # the churn model's raw score (the probability)
    value: RowPredictor  # the value model's prediction


def _row_predictors(models: LoadedModels) -> _RowPredictors | None:
    """The churn model's contributions and raw score and the value model's predictions
    through LightGBM's single-row fast path (a third of ``Booster.predict``'s time for one
    row), or None, and ``Booster.predict`` serves every request, when LightGBM cannot set
    it up."""
    from training.rowpredict import RowPredictor

    churn, value = models.churn, models.value
    try:
        return _RowPredictors(
            contrib=RowPredictor(churn.booster_, "contrib", churn.best_iteration_),
            raw=RowPredictor(churn.booster_, "raw", churn.best_iteration_),
            value=RowPredictor(value.booster_, "normal", value.best_iteration_))
    except Exception as exc:  # an optimization: the models still serve without it
        logger.warning("LightGBM's single-row fast path is unavailable (%s): every request "
                       "uses Booster.predict", exc)
        return None


# --------------------------------------------------------------------------------------------
# the runtime
# --------------------------------------------------------------------------------------------


#: The features RFM scores, segment and lifecycle stage are computed from
#: (`features.segments.RFMSegmenter.transform`, `features.segments.lifecycle_stage`).
SEGMENT_FEATURES = ("days_since_last", "n_orders", "monetary_total", "frequency", "T",
                    "gap_mean", "gap_last")
#: The feature settings that change what a stored feature holds (the horizons of the
#: baseline features, the windows of the behavioural ones): a batch built with other values
#: holds other inputs than the service's models take.
SCORING_SETTINGS = ("churn_horizon_days", "clv_horizon_days", "windows_days",
                    "trend_window_days")


@dataclass
class _BatchState:
    """What the service knows about the store's current batch."""

    batch_id: str
    as_of: pd.Timestamp
    feature_columns: list[str]
    baseline: BaselineCLV | None
    model_versions: dict[str, str] = field(default_factory=dict)  # the models that scored it
    created_at: datetime | None = None  # when it was written (aware UTC)
    #: why /predict cannot use its features (`Runtime._refusal`), None when it can
    refusal: str | None = None


@dataclass(frozen=True)
class _Layout:
    """/predict's constants of one store batch: where the models' features sit in the
    batch's feature rows, the batch's ``as_of``, the models that scored it and what the
    service's models lack."""

    batch_id: str
    as_of: datetime
    churn_index: np.ndarray  # positions of the churn model's features in the batch's rows
    value_index: np.ndarray | None  # the value model's, None when they are the churn's
    missing: tuple[str, ...]  # features of the models the batch does not hold
    #: the models that scored the batch (its stored scores); when they are not the
    #: service's (a new champion, the store not rescored yet), /predict computes the RFM
    #: score, segment and lifecycle stage from the batch's features with the service's
    #: segmenter and settings (``segment_index``: positions of `SEGMENT_FEATURES`)
    batch_versions: dict[str, str] = field(default_factory=dict)
    rescore: bool = False
    segment_index: np.ndarray | None = None
    refusal: str | None = None  # why /predict cannot use the batch (`Runtime._refusal`)


class Runtime:
    """Models, store, baseline and audit log of one service worker (thread-safe)."""

    def __init__(self, models: LoadedModels, store: CustomerStore, audit: AuditLog,
                 *, store_check_seconds: float | None = None,
                 champions_at: datetime | None = None) -> None:
        from features.online import OnlineFeatures

        self.models = models
        self.store = store
        self.audit = audit
        #: when the service's models were the champions (`CHAMPIONS_AT_ENV`; default: now,
        #: as they are loaded), aware UTC
        self.champions_at = _aware_utc(champions_at or datetime.now(UTC))
        if store_check_seconds is None:
            store_check_seconds = float(os.environ.get(STORE_CHECK_ENV, "30"))
        self.store_check_seconds = store_check_seconds
        self.online: OnlineFeatures = OnlineFeatures(models.config.features).fit()
        self._rows = _row_predictors(models)
        self._state: _BatchState | None = None
        self._seen_batch: str | None = None  # the current batch at the last look at the store
        self._checked_at = -math.inf
        self._lock = threading.Lock()
        self._store_error: str | None = None
        self._store_reached = False  # whether the last look at the store could read it
        self.not_ready: str | None = None  # why the last `is_ready` said no (for /readyz)
        self._layouts: dict[tuple[int, str], _Layout] = {}
        self.refresh(force=True)
        self._warm_up()

    # -- construction ----------------------------------------------------------------------

    @classmethod
    def from_environment(cls, churn_folder: str | os.PathLike[str],
                         clv_folder: str | os.PathLike[str],
                         versions: dict[str, str] | None = None) -> Runtime:
        """Models from the folders; store from ``LIFECAST_STORE_URL`` (default
        ``sqlite:///<cwd>/lifecast_store.db``); audit log from ``LIFECAST_AUDIT_LOG``."""
        from serving.audit import AuditLog
        from training.store import CustomerStore

        models = load_models(churn_folder, clv_folder, versions)
        store = CustomerStore(CustomerStore.configured_url())
        _log_settings(store)
        return cls(models, store, AuditLog(), champions_at=_champions_at_setting())

    def _warm_up(self) -> None:
        """One tiny /score so the first real request does not pay for DuckDB planning."""
        import pandas as pd

        frame = pd.DataFrame({"customer_id": ["warm-up"], "timestamp": [pd.Timestamp(
            "2000-01-01")], "amount": [1.0]})
        try:
            state = self._state
            self._score_frame(frame, pd.Timestamp("2000-02-01"),
                              state.baseline if state is not None else None)
        except Exception:  # warming up is an optimization; a failure shows on a real call
            logger.warning("warm-up scoring failed", exc_info=True)

    # -- the store's current batch --------------------------------------------------------

    def refresh(self, force: bool = False) -> bool:
        """Re-read the store's current batch when it changed (at most every
        ``store_check_seconds`` unless ``force``); returns True when a batch is loaded."""
        now = time.monotonic()
        if not force and now - self._checked_at < self.store_check_seconds:
            return self._state is not None
        if not self._lock.acquire(blocking=force):
            return self._state is not None  # another thread is refreshing
        try:
            self._checked_at = now
            try:
                batch = self.store.current_batch()
            except Exception as exc:  # unreachable database: not ready (details in the log)
                self._store_error = "the customer store is unavailable"
                self._store_reached = False
                logger.warning("the customer store is unavailable: %s", exc)
                return self._state is not None
            self._store_reached = True
            self._seen_batch = None if batch is None else str(batch["batch_id"])
            if batch is None:
                from training.store import EMPTY_STORE_MESSAGE

                if self._store_error != EMPTY_STORE_MESSAGE:  # say once where the scores may be
                    hint = self.store.unreached_hint()
                    if hint:
                        logger.warning("customer store %s: no scores yet%s",
                                       self.store.safe_url, hint)
                self._store_error = EMPTY_STORE_MESSAGE
                self._state = None
                return False
            if self._state is None or self._state.batch_id != batch["batch_id"]:
                try:
                    self._state = self._load_batch(batch)
                except _BatchChanged as exc:  # keep the batch loaded before, if any;
                    logger.info("%s: loading the new one at the next call", exc)
                    self._checked_at = -math.inf  # the next call looks again at once
                    return self._state is not None
                except Exception:  # keep serving the batch loaded before, if any
                    logger.exception("cannot load batch %s", batch["batch_id"])
                    self._store_error = "the customer store's current batch cannot be read"
                    return self._state is not None
                logger.info("customer store batch %s (as of %s, %d customers) loaded",
                            batch["batch_id"], batch["as_of"], batch["n_customers"])
            self._store_error = None
            return True
        finally:
            self._lock.release()

    def _load_batch(self, batch: dict[str, Any]) -> _BatchState:
        import pandas as pd

        scored_by = _str_versions(batch.get("model_versions"))
        created_at = _created_at(batch.get("created_at"))
        refusal = self._refusal(str(batch["batch_id"]), self._missing(
            batch["feature_columns"], scored_by), batch.get("metadata"), scored_by, created_at)
        if refusal:
            logger.warning("%s. Until then /predict answers 503 and /readyz says not ready",
                           refusal)
        elif scored_by != self.models.versions:
            # /predict scores with the service's models (segments and lifecycle stages
            # included); /high_risk and /segments are the batch's own scores: the two
            # disagree until the store is rescored, or the service serves the newer models
            logger.warning("batch %s was scored by models %s, the service runs %s: /predict "
                           "answers with the service's models (segments and lifecycle stages "
                           "computed again from the batch's features), /high_risk and "
                           "/segments with the batch's scores; %s", batch["batch_id"],
                           _versions_text(scored_by), _versions_text(self.models.versions),
                           self._fix(created_at, rescore="run `lifecast score` to rescore "
                                                         "the store"))
        return _BatchState(
            batch_id=str(batch["batch_id"]), as_of=pd.Timestamp(batch["as_of"]),
            feature_columns=list(batch["feature_columns"]),
            baseline=self._fit_baseline(batch), model_versions=scored_by,
            created_at=created_at, refusal=refusal,
        )

    def _missing(self, feature_columns: Sequence[str], batch_versions: dict[str, str]
                 ) -> tuple[str, ...]:
        """The features /predict needs that a batch does not hold: the models' inputs and,
        for a batch other models scored, `SEGMENT_FEATURES` (its segments are computed
        again)."""
        held = set(feature_columns)
        rescore = batch_versions != self.models.versions
        needed = {*self.models.churn_names, *self.models.value_names,
                  *(SEGMENT_FEATURES if rescore else ())}
        return tuple(sorted(n for n in needed if n not in held))

    def _feature_differences(self, metadata: dict[str, Any] | None
                             ) -> tuple[str | None, str | None]:
        """Where the batch's features are not what the service's models take, as
        ``(definitions, settings)``: its feature definitions
        (`features.registry.DEFINITIONS_VERSION`, which the service's models were trained
        on; a batch that records none was built with version 1) and its `SCORING_SETTINGS`,
        as ``"name <batch's> (the service's models: <theirs>)"``; None where they agree
        (settings a batch does not record are not compared: `lifecast score` saves its
        config in the metadata)."""
        from features.config import FeatureConfig
        from features.registry import recorded_definitions
        from training.models import definitions_difference, feature_settings_diff

        metadata = metadata or {}
        definitions = definitions_difference(recorded_definitions(metadata), "the batch")
        features = (metadata.get("config") or {}).get("features")
        try:
            theirs = FeatureConfig.model_validate(features) if features else None
        except ValueError:
            theirs = None
        settings = None
        if theirs is not None:
            settings = feature_settings_diff(theirs, self.models.config.features,
                                             "the service's models:", SCORING_SETTINGS)
        return definitions or None, settings or None

    def _refusal(self, batch_id: str, missing: Sequence[str], metadata: dict[str, Any] | None,
                 batch_versions: dict[str, str], created_at: datetime | None) -> str | None:
        """Why /predict cannot use a batch's stored features (they are not the inputs the
        service's models take: features missing, other feature settings or definitions),
        and what fixes it (`_fix`); None when it can. /readyz says not ready with it."""
        definitions, settings = self._feature_differences(metadata)
        if not (missing or definitions or settings):
            return None
        ours = _versions_text(self.models.versions)
        problems = []
        if missing:
            problems.append(f"lacks features the service's models {ours} use "
                            f"({', '.join(list(missing)[:5])})")
        if definitions or settings:
            problems.append(f"was built with other features than the service's models "
                            f"{ours} ({'; '.join(d for d in (definitions, settings) if d)})")
        head = (f"the customer store's batch {batch_id} was scored by models "
                f"{_versions_text(batch_versions)} and {' and '.join(problems)}: its "
                f"features are not the inputs these models take")
        if definitions and not (missing or settings):
            # the same champions, rescored by this lifecast, give the features it computes
            return f"{head}; run `lifecast score` again (with this lifecast)"
        return f"{head}; {self._fix(created_at)}"

    def _fix(self, created_at: datetime | None, *,
             rescore: str = "run `lifecast score` again") -> str:
        """What makes the store's batch and the service's models agree again.

        `lifecast score` always scores with the champions, so it helps only when the
        service runs them: a batch written after the service's models were the champions
        (`champions_at`) was scored by newer champions, which the service serves once
        restarted (`lifecast serve` imports the champions when it starts); an older batch
        is rescored by ``rescore``. A batch whose time is unknown gets both."""
        restart = ("restart `lifecast serve` so that it serves the current champions (it "
                   "loads them when it starts; `lifecast score` would only score with them "
                   "again; a built Bento carries the models it was built with: run "
                   "`lifecast serve --dry-run` and `bentoml build` again and serve the new "
                   "Bento)")
        if created_at is None:
            return (f"if the batch's models are the champions now (`lifecast models` marks "
                    f"them), {restart}; else {rescore} to rescore the store with the "
                    f"champions")
        if created_at > self.champions_at:
            return (f"the store was scored after this service loaded its models, so by "
                    f"newer champions: {restart}")
        return f"{rescore} to rescore it with the champions, the service's models"

    def _fit_baseline(self, batch: dict[str, Any]) -> BaselineCLV | None:
        """The BG/NBD + Gamma-Gamma baseline the batch used: the parameters `lifecast score`
        saved with it, or, for a batch written without them, refitted on its population."""
        import pandas as pd

        from training.baseline import BaselineCLV

        meta = batch.get("metadata") or {}
        if "baseline" in meta:
            if meta["baseline"] is None:  # the batch could not fit one: features stay empty
                logger.warning("batch %s has no baseline (BG/NBD could not be fitted on its "
                               "population): /score leaves the baseline features empty, as "
                               "the batch did",
                               batch["batch_id"])
                return None
            try:
                return BaselineCLV.from_dict(meta["baseline"])
            except ValueError as exc:
                logger.warning("batch %s: saved baseline unusable (%s); refitting it",
                               batch["batch_id"], exc)
        columns = ("frequency", "recency", "T", "monetary_value")
        if any(c not in batch["feature_columns"] for c in columns):
            logger.warning("batch %s lacks %s: /score leaves the baseline features empty",
                           batch["batch_id"], ", ".join(columns))
            return None
        started = time.perf_counter()
        ranked, total = self.store.ranked(min_churn_probability=None, min_value=None,
                                          limit=max(int(batch["n_customers"]), 1))
        ids = sorted(ranked["customer_id"].astype(str).tolist())
        scores, feats, _ = self.store.get_customers(ids)
        # two reads: a rescore may land before either (each frame names the batch it read)
        for read in (ranked, scores):
            if read.attrs["batch_id"] != batch["batch_id"]:
                raise _BatchChanged(f"batch {read.attrs['batch_id']} became current while "
                                    f"batch {batch['batch_id']} was loading")
        summary = pd.DataFrame({c: feats[c].astype("float64") for c in columns})
        try:
            baseline = BaselineCLV().fit(summary)
        except ValueError as exc:
            logger.warning("baseline not fitted on batch %s (%s): /score leaves the baseline "
                           "features empty, as the batch did", batch["batch_id"], exc)
            return None
        logger.info("baseline fitted on %d customers in %.1f s", total,
                    time.perf_counter() - started)
        return baseline

    def is_ready(self) -> bool:
        """Models loaded (always, once constructed), a current batch in the store, the
        store answering at the last look (at most ``store_check_seconds`` ago) and a batch
        whose features the models take: a store that cannot be reached makes /predict,
        /high_risk and /segments answer 503, so /readyz says so too, although the batch
        loaded before is kept (for /score) until it answers again; a batch of other
        features (`_refusal`) makes every /predict answer 503, so a load balancer should
        not send traffic here. Why not ready is kept in ``not_ready`` (/readyz's answer)."""
        self.not_ready = self.not_ready_reason()
        return self.not_ready is None

    def not_ready_reason(self) -> str | None:
        """Why the service is not ready (`is_ready`), None when it is."""
        if not self.refresh() or self._state is None:
            return self._store_error or "the customer store is not ready"
        if not self._store_reached:
            return self._store_error or "the customer store is unavailable"
        return self._state.refusal

    def _batch(self) -> _BatchState:
        if not self.refresh() or self._state is None:
            raise ServiceError(503, self._store_error or "the customer store is not ready")
        return self._state

    # -- model calls ------------------------------------------------------------------------

    def _predict(self, frame: pd.DataFrame) -> dict[str, Any]:
        """Churn probability, risk band, predicted value and reasons for feature rows."""
        m = self.models
        X = _matrix(frame, m.churn_names)
        Xv = X if m.value_names == m.churn_names else _matrix(frame, m.value_names)
        return self._predict_matrix(X, Xv)

    def _predict_matrix(self, X: np.ndarray, Xv: np.ndarray) -> dict[str, Any]:
        """`_predict` on float64 matrices in the churn (``X``) and value (``Xv``) models'
        feature order, one thread per booster call (requests are small)."""
        import numpy as np

        from training.models import calibrate, risk_band, top_reasons

        m = self.models
        churn, value, cfg = m.churn, m.value, m.config
        # The probability comes from the raw score, not from the sum of the contributions:
        # that sum equals the raw score only up to the last bits (added in another order),
        # and the answer must be the stored batch's and `ChurnModel.predict_proba`'s bit
        # for bit (/predict and /high_risk gave the same customer probabilities that
        # differed in the last digits). The extra call costs 4-6 us a row on the fast
        # path (depth-3 models of 75 and 300 trees on 32 features, whose contributions
        # take 29 and 108 us).
        if self._rows is not None and X.shape[0] <= ROW_PATH_MAX:
            contrib = self._rows.contrib.predict(X)
            raw = self._rows.raw.predict(X)
            clv = self._rows.value.predict(Xv) * value.scale
        else:
            contrib = churn.booster_.predict(X, num_iteration=churn.best_iteration_,
                                             pred_contrib=True, num_threads=1)
            raw = churn.booster_.predict(X, num_iteration=churn.best_iteration_,
                                         raw_score=True, num_threads=1)
            clv = value.booster_.predict(Xv, num_iteration=value.best_iteration_,
                                         num_threads=1) * value.scale
        p = calibrate(raw, *churn.calibration_)
        return {
            "churn_probability": np.asarray(p, dtype="float64"),
            "churn_risk": risk_band(p, cfg.risk_bands),
            "predicted_clv": np.asarray(clv, dtype="float64"),
            "reasons": top_reasons(contrib, X, m.churn_names, cfg.top_reasons),
        }

    # -- /predict ---------------------------------------------------------------------------

    def predict(self, customer_ids: Sequence[str]) -> PredictResponse:
        """Score customers of the store's current batch by id; unknown ids go to ``errors``.

        The fast path: one store read (`training.store.CustomerStore.lookup`: plain rows and
        the stored float64 feature bytes as one matrix, no pandas), the feature columns
        picked by index arrays cached per batch, both boosters and the contributions on
        numpy, and the response built directly. Rows, ``as_of`` and ``batch_id`` come from
        one read of one batch, so a batch written meanwhile is seen whole or not at all.
        Same answer as `predict_frames` (the pandas path, kept as the reference).

        Every field comes from the service's models and the batch's features as of the
        batch's ``as_of``: churn probability, risk, value, value at risk and reasons are
        computed now; expected orders and p_alive are the batch's baseline features (which
        the churn model takes as inputs); RFM score, segment and lifecycle stage are the
        batch's when the service's models scored it, else (a new champion, the store not
        rescored yet) computed again from its features with the service's segmenter and
        churn horizon. The answer names the batch, its ``as_of`` and the models that scored
        it (``batch_model_versions``: whose scores /high_risk and /segments return). A batch
        built with other feature settings (`SCORING_SETTINGS`) or other feature definitions
        (an older lifecast) holds other inputs than the models take: 503 saying what fixes
        it (`_refusal`: `lifecast score` again, or restarting the service when newer
        champions scored the batch).
        """
        rows = self._store_call(self.store.lookup, customer_ids)
        layout = self._layout(rows.batch)
        if layout.refusal:
            raise ServiceError(503, layout.refusal)
        errors = [CustomerError(customer_id=c, error=e)
                  for c, e in self._unknown_errors(rows.unknown).items()]
        if not rows.ids:
            return self._predict_response(layout.batch_id, layout.as_of, layout.batch_versions,
                                          [], errors)
        F = rows.features
        X = F[:, layout.churn_index]
        Xv = X if layout.value_index is None else F[:, layout.value_index]
        out = self._predict_matrix(X, Xv)
        p, clv = out["churn_probability"].tolist(), out["predicted_clv"].tolist()
        risk, reasons = out["churn_risk"].tolist(), out["reasons"]
        sc = rows.scores
        expected, alive = sc["expected_orders"], sc["p_alive"]
        if layout.rescore:
            rfm, segment, stage = self._segments(rows.ids, F[:, layout.segment_index])
        else:
            rfm, segment, stage = sc["rfm_score"], sc["segment"], sc["lifecycle_stage"]
        as_of, versions = layout.as_of, self.models.versions
        predictions = [
            CustomerPrediction(
                customer_id=cid, as_of=as_of, churn_probability=p[i],
                churn_risk=risk[i], predicted_clv=clv[i],
                expected_orders=_opt_float(expected[i]), p_alive=_opt_float(alive[i]),
                rfm_score=_text(rfm[i]), segment=_text(segment[i]),
                lifecycle_stage=_text(stage[i]), value_at_risk=p[i] * clv[i],
                reasons=reasons[i], model_versions=versions,
            )
            for i, cid in enumerate(rows.ids)
        ]
        return self._predict_response(layout.batch_id, layout.as_of, layout.batch_versions,
                                      predictions, errors)

    def _unknown_errors(self, unknown: Sequence[str]) -> dict[str, str]:
        """The error of each unknown id; one that is a stored id written another way (a
        CRM's float column turned to text, ``"12755.0"``; spaces around it; leading zeros)
        names the stored id, which the caller should send instead."""
        errors = {c: UNKNOWN_CUSTOMER for c in unknown}
        guesses = {c: g for c in unknown if (g := _id_variant(c)) is not None}
        if guesses:
            try:
                known = set(self.store.lookup(list(dict.fromkeys(guesses.values()))).ids)
            except Exception:  # a hint only: the answer stands without it
                logger.warning("customer store lookup for id hints failed", exc_info=True)
                known = set()
            for c, g in guesses.items():
                if g in known:
                    errors[c] = (f"{UNKNOWN_CUSTOMER}; the store holds the customer {g!r}: "
                                 f"send ids exactly as the store holds them")
        return errors

    @staticmethod
    def _predict_response(batch_id: str, as_of: Any, batch_versions: dict[str, str],
                          predictions: list[Any], errors: list[Any]) -> PredictResponse:
        return PredictResponse(
            batch_id=batch_id, as_of=_py_datetime(as_of),
            batch_model_versions={k: batch_versions.get(k) or "unknown"
                                  for k in ("churn", "clv")},
            predictions=predictions, errors=errors)

    def _segments(self, ids: Sequence[str], values: Any) -> tuple[list, list, list]:
        """RFM score, segment and lifecycle stage from `SEGMENT_FEATURES` (a matrix or a
        frame holding them) with the service's segmenter and churn horizon, as the batch
        computes them (`features.demo.segment_customers`)."""
        import pandas as pd

        from features.segments import lifecycle_stage

        if isinstance(values, pd.DataFrame):
            frame = values[list(SEGMENT_FEATURES)].reset_index(drop=True)
        else:
            frame = pd.DataFrame(values, columns=list(SEGMENT_FEATURES))
        frame.insert(0, "customer_id", list(ids))
        seg = self.models.segmenter.transform(frame)
        stage = lifecycle_stage(
            frame, churn_horizon_days=self.models.config.features.churn_horizon_days)
        return seg["rfm_score"].tolist(), seg["segment"].tolist(), stage.tolist()

    def _layout(self, batch: BatchInfo) -> _Layout:
        """The `_Layout` of a store batch, made once per batch (a batch never changes)."""
        key = (batch.batch_no, batch.batch_id)
        layout = self._layouts.get(key)
        if layout is not None:
            return layout
        import numpy as np

        position = {name: j for j, name in enumerate(batch.feature_columns)}
        m = self.models
        batch_versions = _str_versions(batch.model_versions)
        rescore = batch_versions != m.versions
        missing = self._missing(batch.feature_columns, batch_versions)
        state = self._state  # the loaded batch's refusal was made when it was loaded
        refusal = (state.refusal if state is not None and state.batch_id == batch.batch_id
                   else self._refusal(batch.batch_id, missing, batch.metadata,
                                      batch_versions, self._batch_created_at(batch.batch_id)))
        churn_index = np.array([position.get(n, -1) for n in m.churn_names], dtype=np.intp)
        value_index = (None if m.value_names == m.churn_names else
                       np.array([position.get(n, -1) for n in m.value_names], dtype=np.intp))
        segment_index = (np.array([position.get(n, -1) for n in SEGMENT_FEATURES],
                                  dtype=np.intp) if rescore else None)
        layout = _Layout(batch_id=batch.batch_id, as_of=_py_datetime(batch.as_of),
                         churn_index=churn_index, value_index=value_index, missing=missing,
                         batch_versions=batch_versions, rescore=rescore,
                         segment_index=segment_index, refusal=refusal)
        # replaced whole (readers never see a dict being changed); few batches are current
        # over a worker's life, and the old ones are dropped
        self._layouts = {**{k: v for k, v in list(self._layouts.items())[-2:]}, key: layout}
        return layout

    def _batch_created_at(self, batch_id: str) -> datetime | None:
        """When a batch other than the loaded one was written, read from the store's kept
        batches (once per batch, for `_fix`); None when it cannot be told."""
        try:
            kept = self.store.batches()
        except Exception:  # a hint only: `_fix` then names both ways
            logger.warning("cannot read when batch %s was written", batch_id, exc_info=True)
            return None
        rows = kept[kept["batch_id"] == batch_id]
        return _created_at(rows["created_at"].iloc[0]) if len(rows) else None

    def predict_frames(self, customer_ids: Sequence[str]) -> PredictResponse:
        """`predict` through `CustomerStore.get_customers`' pandas frames: the first
        implementation, slower (about 17 ms for one id, mostly building one-row frames), kept
        as the reference the fast path is tested against."""
        state = self._batch()
        rescore = state.model_versions != self.models.versions
        if state.refusal:
            raise ServiceError(503, state.refusal)
        ids = list(dict.fromkeys(str(c) for c in customer_ids))
        scores, feats, unknown = self._store_call(self.store.get_customers, ids)
        errors = [{"customer_id": c, "error": e}
                  for c, e in self._unknown_errors(unknown).items()]
        if not len(scores):
            return self._predict_response(state.batch_id, state.as_of, state.model_versions,
                                          [], errors)
        out = self._predict(feats)
        p, clv = out["churn_probability"], out["predicted_clv"]
        cols = {c: scores[c].tolist() for c in ("customer_id", "expected_orders", "p_alive",
                                                 "rfm_score", "segment", "lifecycle_stage")}
        if rescore:
            cols["rfm_score"], cols["segment"], cols["lifecycle_stage"] = self._segments(
                cols["customer_id"], feats)
        as_of = _py_datetime(scores["as_of"].iloc[0])
        versions = self.models.versions
        predictions = [
            CustomerPrediction(
                customer_id=str(cols["customer_id"][i]), as_of=as_of,
                churn_probability=float(p[i]), churn_risk=str(out["churn_risk"][i]),
                predicted_clv=float(clv[i]),
                expected_orders=_opt_float(cols["expected_orders"][i]),
                p_alive=_opt_float(cols["p_alive"][i]), rfm_score=_text(cols["rfm_score"][i]),
                segment=_text(cols["segment"][i]),
                lifecycle_stage=_text(cols["lifecycle_stage"][i]),
                value_at_risk=float(p[i] * clv[i]), reasons=out["reasons"][i],
                model_versions=versions,
            )
            for i in range(len(scores))
        ]
        batch_id = str(scores["batch_id"].iloc[0]) if "batch_id" in scores else state.batch_id
        return self._predict_response(batch_id, as_of, state.model_versions, predictions,
                                      errors)

    # -- /score -----------------------------------------------------------------------------

    def score(self, request: ScoreRequest) -> ScoreResponse:
        """Features from the caller's transactions at ``as_of`` (default now), scored; the
        baseline features from the population of the batch the answer names
        (`_score_batch`)."""
        import pandas as pd

        state = self._score_batch()
        latest = max(tx.timestamp for c in request.customers for tx in c.transactions)
        if request.as_of is not None:
            cutoff = pd.Timestamp(request.as_of)
        else:
            # now, or just after the latest event when a client clock runs a little ahead
            cutoff = max(pd.Timestamp(_utcnow()),
                         pd.Timestamp(latest) + pd.Timedelta(microseconds=1))
        frame = _contract_frame(request)
        preds, found = self._score_frame(frame, cutoff, state.baseline)
        errors = [{"customer_id": c.customer_id,
                   "error": "no purchase before as_of: nothing to score"}
                  for c in request.customers if c.customer_id not in found]
        return ScoreResponse(batch_id=state.batch_id, as_of=_py_datetime(cutoff),
                             predictions=preds, errors=errors)

    def _score_batch(self) -> _BatchState:
        """The batch whose population's baseline /score uses: the store's current batch, as
        /predict sees it, not the one of the last look (up to ``store_check_seconds`` ago).

        `CustomerStore.lookup` of no id reads the current-batch pointer in the one statement
        /predict's reads start with (tens of microseconds on SQLite, one round trip on
        PostgreSQL; /score takes milliseconds). When it names a batch the last look did not
        see (a rescore since), the store is looked at now. That look loads the batch (its
        saved baseline; a batch written without one is refitted) unless another request is
        already loading it, which it does not wait for: then the batch loaded before is
        used, and the answer names it. A store that cannot be read keeps the batch loaded
        before, as `refresh` does."""
        state = self._batch()
        try:
            current = self.store.lookup([]).batch.batch_id
        except Exception:  # unreachable or emptied: `refresh` says so at its next look
            return state
        if current != self._seen_batch:
            self._checked_at = -math.inf  # a look now (one thread; the others go on)
            state = self._batch()
        return state

    def _score_frame(self, frame: pd.DataFrame, cutoff: pd.Timestamp,
                     baseline: BaselineCLV | None
                     ) -> tuple[list[CustomerPrediction], set[str]]:
        import numpy as np

        from features.segments import lifecycle_stage

        cfg = self.models.config
        feats = self.online.build(frame, cutoff)
        if not len(feats):
            return [], set()
        feats = self._add_baseline(feats, baseline)
        out = self._predict(feats)
        # as features.demo.segment_customers (the batch's), without copying the frame
        seg = self.models.segmenter.transform(feats)
        stage = lifecycle_stage(feats, churn_horizon_days=cfg.features.churn_horizon_days)
        rfm, segment, stage = (seg["rfm_score"].tolist(), seg["segment"].tolist(),
                               stage.tolist())
        p, clv = out["churn_probability"], out["predicted_clv"]
        var = p * clv
        expected = feats["bg_expected_orders"].to_numpy(dtype="float64", na_value=np.nan)
        alive = feats["bg_p_alive"].to_numpy(dtype="float64", na_value=np.nan)
        as_of = _py_datetime(cutoff)
        versions = self.models.versions
        preds = []
        ids = feats["customer_id"].astype(str).tolist()
        for i, cid in enumerate(ids):
            preds.append(CustomerPrediction(
                customer_id=cid, as_of=as_of,
                churn_probability=float(p[i]), churn_risk=str(out["churn_risk"][i]),
                predicted_clv=float(clv[i]), expected_orders=_opt_float(expected[i]),
                p_alive=_opt_float(alive[i]), rfm_score=str(rfm[i]), segment=str(segment[i]),
                lifecycle_stage=str(stage[i]),
                value_at_risk=float(var[i]), reasons=out["reasons"][i],
                model_versions=versions,
            ))
        return preds, set(ids)

    def _add_baseline(self, feats: pd.DataFrame, baseline: BaselineCLV | None
                      ) -> pd.DataFrame:
        """The `training.models.BASELINE_FEATURES` from a batch population's baseline (None:
        the batch has none, and they stay empty, as in the batch)."""
        import numpy as np
        import pandas as pd

        from training.models import BASELINE_FEATURES

        empty = np.full(len(feats), np.nan)
        if baseline is None:
            return feats.assign(**{col: empty for col in BASELINE_FEATURES})
        fcfg = self.models.config.features
        summary = pd.DataFrame({c: feats[c].to_numpy(dtype="float64", na_value=np.nan)
                                for c in ("frequency", "recency", "T", "monetary_value")})
        try:
            churn_h = baseline.predict(summary, fcfg.churn_horizon_days)
            value_h = baseline.predict(summary, fcfg.clv_horizon_days)
        except ValueError as exc:
            logger.warning("baseline prediction failed (%s): its features left empty", exc)
            return feats.assign(**{col: empty for col in BASELINE_FEATURES})
        return feats.assign(
            bg_p_alive=churn_h["p_alive"].to_numpy(),
            bg_p_no_purchase=churn_h["churn_probability"].to_numpy(),
            bg_expected_orders=churn_h["expected_orders"].to_numpy(),
            gg_expected_value=value_h["expected_order_value"].to_numpy(),
            bg_clv=value_h["predicted_clv"].to_numpy(),
        )

    # -- /high_risk and /segments ----------------------------------------------------------

    def high_risk(self, request: HighRiskRequest, *, key: KeyRecord | None = None,
                  client: str | None = None) -> HighRiskResponse | CsvAnswer:
        """The ranked list (JSON model, or `CsvAnswer` for ``format="csv"``), audited."""
        self._batch()  # not ready (503) until the store holds a batch
        frame, total = self._store_call(  # a batch_id not current: 409 saying why
            self.store.ranked,
            min_churn_probability=request.min_churn_probability,
            min_value=request.min_value,
            segments=list(request.segments) if request.segments else None,
            churn_risk=list(request.churn_risk) if request.churn_risk else None,
            limit=request.limit, offset=request.offset, batch_id=request.batch_id,
        )
        filters = request.model_dump(exclude={"format"})
        self._audit("/high_risk", filters, len(frame), request.format, key, client)
        if request.format == "csv":
            return CsvAnswer(_ranked_csv(frame), frame.attrs["batch_id"], total)
        # the label from the same read as the rows (`frame.attrs`), not from `_batch`, which
        # looks at the store at most every LIFECAST_STORE_CHECK_SECONDS
        return HighRiskResponse(
            batch_id=frame.attrs["batch_id"], as_of=_py_datetime(frame.attrs["as_of"]),
            total=total,
            limit=request.limit, offset=request.offset,
            customers=[_stored_prediction(r) for r in frame.to_dict("records")],
        )

    def segments(self, request: SegmentsRequest, *, key: KeyRecord | None = None,
                 client: str | None = None) -> SegmentsResponse | CsvAnswer:
        """Segment sizes, mean churn probability and value at risk (JSON or CSV), audited."""
        self._batch()  # not ready (503) until the store holds a batch
        frame = self._store_call(self.store.segment_summary)
        self._audit("/segments", {}, len(frame), request.format, key, client)
        rows = [{k: (None if isinstance(v, float) and math.isnan(v) else v)
                 for k, v in r.items()} for r in frame.to_dict("records")]
        if request.format == "csv":
            return CsvAnswer(_csv_text(list(frame.columns), rows), frame.attrs["batch_id"])
        return SegmentsResponse(batch_id=frame.attrs["batch_id"],
                                as_of=_py_datetime(frame.attrs["as_of"]), segments=rows)

    def _audit(self, endpoint: str, filters: dict[str, Any], rows: int, fmt: str,
               key: KeyRecord | None, client: str | None) -> None:
        try:
            self.audit.record(endpoint=endpoint, filters=filters, row_count=rows, format=fmt,
                              key=key, client=client)
        except OSError as exc:  # no audit record, no export
            logger.error("audit log %s not written: %s", self.audit.path, exc)
            raise ServiceError(503, "the export cannot be audited (audit log not writable); "
                                    "nothing was exported") from None

    def _store_call(self, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        from training.store import (
            EMPTY_STORE_MESSAGE,
            BatchChangedError,
            EmptyStoreError,
            StoreError,
        )

        try:
            return func(*args, **kwargs)
        except BatchChangedError as exc:
            raise ServiceError(409, str(exc)) from None
        except EmptyStoreError:
            raise ServiceError(503, EMPTY_STORE_MESSAGE) from None
        except StoreError as exc:
            logger.error("customer store error: %s", exc)
            raise ServiceError(503, "the customer store is unavailable") from None

    def close(self) -> None:
        self.store.close()


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


UNKNOWN_CUSTOMER = "unknown customer: not in the current batch"
_FLOAT_TEXT = re.compile(r"(-?\d+)\.0*")


def _id_variant(customer_id: str) -> str | None:
    """The id a CRM probably meant when it wrote a stored id another way: without spaces
    around it, without a ``.0`` (an integer id held in a float column: ``"12755.0"``) and
    without leading zeros; None when there is no other way to read it."""
    guess = customer_id.strip()
    if (m := _FLOAT_TEXT.fullmatch(guess)) is not None:
        guess = m.group(1)
    if guess.isdigit():
        guess = guess.lstrip("0") or "0"
    return guess if guess and guess != customer_id else None


def _utcnow() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


def _aware_utc(value: datetime) -> datetime:
    """``value`` in UTC with its offset (a naive value is taken as UTC)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _created_at(value: Any) -> datetime | None:
    """A batch's ``created_at`` (a timestamp or ISO text) as aware UTC; None if unknown."""
    if value is None:
        return None
    try:
        import pandas as pd

        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        return None
    return None if pd.isna(stamp) else _aware_utc(stamp.to_pydatetime())


def _champions_at_setting() -> datetime | None:
    """`CHAMPIONS_AT_ENV` as aware UTC; None when unset or not a time (then the service
    counts from when it loads the models)."""
    text = os.environ.get(CHAMPIONS_AT_ENV, "").strip()
    if not text:
        return None
    try:
        return _aware_utc(datetime.fromisoformat(text))
    except ValueError:
        logger.warning("%s=%r is not an ISO 8601 time: ignored", CHAMPIONS_AT_ENV, text[:40])
        return None


def _matrix(frame: pd.DataFrame, names: list[str]) -> np.ndarray:
    """Feature rows as a C-ordered float64 matrix (NaN for missing), as the models were fed."""
    import numpy as np

    X = np.empty((len(frame), len(names)), dtype="float64")
    for j, name in enumerate(names):
        X[:, j] = frame[name].to_numpy(dtype="float64", na_value=np.nan)
    return X


def _opt_float(value: Any) -> float | None:
    if value is None:
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(f) else f


def _text(value: Any) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _py_datetime(value: Any) -> datetime:
    import pandas as pd

    return pd.Timestamp(value).to_pydatetime()


def _contract_frame(request: ScoreRequest) -> pd.DataFrame:
    """The request's transactions as contract rows. A transaction without an ``order_id``
    among others with one is its own customer-day order (the contract's rule when no order id
    exists); the synthetic key starts with a control character, which real ids cannot."""
    import pandas as pd

    rows: dict[str, list[Any]] = {"customer_id": [], "timestamp": [], "amount": []}
    optional = ("order_id", "quantity", "product_id", "category", "channel", "discount")
    for name in optional:
        rows[name] = []
    for customer in request.customers:
        for tx in customer.transactions:
            rows["customer_id"].append(customer.customer_id)
            rows["timestamp"].append(tx.timestamp)
            rows["amount"].append(float(tx.amount))
            for name in optional:
                rows[name].append(getattr(tx, name))
    frame = pd.DataFrame({
        "customer_id": pd.array(rows["customer_id"], dtype="string"),
        "timestamp": pd.to_datetime(pd.Series(rows["timestamp"])).astype("datetime64[us]"),
        "amount": pd.array(rows["amount"], dtype="float64"),
    })
    for name in optional:
        values = rows[name]
        present = [v is not None for v in values]
        if not any(present):
            continue  # the column is absent, as in a log that does not map it
        if name == "order_id" and not all(present):
            values = [v if v is not None else f"\x1fday:{ts:%Y-%m-%d}"
                      for v, ts in zip(values, rows["timestamp"], strict=True)]
        dtype = "float64" if name in ("quantity", "discount") else "string"
        frame[name] = pd.array(values, dtype=dtype)
    return frame


def _stored_prediction(row: dict[str, Any]) -> CustomerPrediction:
    """One row of a store frame (the batch's per-customer output) as the response model."""
    return CustomerPrediction(
        customer_id=str(row["customer_id"]),
        as_of=_py_datetime(row["as_of"]),
        churn_probability=float(row["churn_probability"]),
        churn_risk=str(row["churn_risk"]),
        predicted_clv=float(row["predicted_clv"]),
        expected_orders=_opt_float(row["expected_orders"]),
        p_alive=_opt_float(row["p_alive"]),
        rfm_score=_text(row["rfm_score"]),
        segment=_text(row["segment"]),
        lifecycle_stage=_text(row["lifecycle_stage"]),
        value_at_risk=float(row["value_at_risk"]),
        reasons=row["reasons"] or [],
        model_versions={"churn": _text(row.get("churn_model_version")) or "unknown",
                        "clv": _text(row.get("clv_model_version")) or "unknown"},
    )


def _safe_cell(value: Any) -> Any:
    """Neutralize spreadsheet formulas in text cells (CSV injection): '=1+1' -> "'=1+1"."""
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


#: The CSV answers' headers for what their JSON answers say beside the rows: the batch they
#: were read from (send it with the next pages), and for /high_risk how many match the
#: filters (all pages).
BATCH_HEADER = "X-Lifecast-Batch-Id"
TOTAL_HEADER = "X-Total-Count"


@dataclass(frozen=True)
class CsvAnswer:
    """A ``"format": "csv"`` answer: the text, and what the JSON answer would say beside
    its rows (`BATCH_HEADER`, `TOTAL_HEADER`), sent as headers."""

    text: str
    batch_id: str
    total: int | None = None

    @property
    def headers(self) -> dict[str, str]:
        out = {BATCH_HEADER: self.batch_id}
        if self.total is not None:
            out[TOTAL_HEADER] = str(self.total)
        return out


def _csv_text(columns: list[str], rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: ("" if row.get(k) is None else _safe_cell(row.get(k)))
                         for k in columns})
    return buf.getvalue()


def _ranked_csv(frame: pd.DataFrame) -> str:
    rows = []
    for r in frame.to_dict("records"):
        reasons = "; ".join(f"{x['feature']} ({x['direction']})" for x in (r["reasons"] or []))
        rows.append({**r, "as_of": _py_datetime(r["as_of"]).isoformat(), "reasons": reasons,
                     **{c: _opt_float(r[c]) for c in ("expected_orders", "p_alive")}})
    return _csv_text(list(_CSV_COLUMNS), rows)


class QuietValidationErrors(logging.Filter):
    """BentoML logs every request that fails validation as an ERROR with a traceback; a bad
    request is the caller's mistake, so keep one WARNING line without the traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and type(exc).__name__ == "ValidationError":
            count = exc.error_count() if hasattr(exc, "error_count") else "?"
            record.msg = f"{record.getMessage()}: invalid request ({count} error(s))"
            record.args = ()
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def quiet_validation_errors() -> None:
    """Install `QuietValidationErrors` on BentoML's request error logger (once)."""
    log = logging.getLogger("bentoml._internal.server.http_app")
    if not any(isinstance(f, QuietValidationErrors) for f in log.filters):
        log.addFilter(QuietValidationErrors())


# --------------------------------------------------------------------------------------------
# the ASGI middleware
# --------------------------------------------------------------------------------------------

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Request state key under which the middleware leaves the caller's `KeyRecord`.
KEY_STATE = "lifecast_key"


#: What `GuardMiddleware` answers itself, without a key, when it is given the OpenAPI
#: document: the document (``/openapi.json``, and ``/docs.json``, which BentoML's Swagger UI
#: loads) and ``/docs``, a redirect to that Swagger UI at ``/``. They describe the API and
#: hold no customer data.
OPENAPI_PATHS = ("/openapi.json", "/docs.json")
#: BentoML's service schema (its client reads it), answered by `GuardMiddleware` from
#: ``schema()`` when given (`serving.openapi.service_schema`).
SCHEMA_PATH = "/schema.json"
DOCS_PATH = "/docs"
READY_PATH = "/readyz"


#: Origins allowed to call the service from a browser (CORS): a comma-separated list such as
#: ``https://crm.example.com,https://crm-staging.example.com``, or ``*`` for any origin.
#: Unset or empty: no CORS headers, and a browser on another origin cannot call the service.
CORS_ORIGINS_ENV = "LIFECAST_CORS_ORIGINS"
#: What a browser on an allowed origin may send: the API's methods and headers.
CORS_METHODS = ("GET", "HEAD", "POST")
CORS_HEADERS = ("Authorization", "Content-Type")
#: Answer headers a browser script may read besides the CORS-safelisted ones: the key
#: error's scheme (401 / 403) and the CSV export's file name.
CORS_EXPOSED = ("WWW-Authenticate", "Content-Disposition", BATCH_HEADER, TOTAL_HEADER)
_ORIGIN_RE = re.compile(r"https?://[^/?#\s@]+")


def cors_origins(value: str | None = None) -> list[str]:
    """The origins `CorsMiddleware` allows: ``value`` (default `CORS_ORIGINS_ENV`), split on
    commas and spaces, lower case, a trailing ``/`` dropped (an address copied from the
    browser's bar; the ``Origin`` a browser sends never has one). An entry that is not an
    origin (``scheme://host[:port]``, without a path) is left out with a warning: a browser
    would never send it. `lifecast serve` refuses such an entry before starting
    (`check_cors_origins`)."""
    origins, bad = _parse_cors_origins(value)
    for entry in bad:
        logger.warning("%s: %r is not an origin (scheme://host[:port], e.g. "
                       "https://crm.example.com, or * for any): left out",
                       CORS_ORIGINS_ENV, entry[:100])
    return origins


def check_cors_origins(value: str | None = None) -> list[str]:
    """`cors_origins`, but an entry that is not an origin raises ValueError naming the
    variable, the entries and what an origin looks like (`lifecast serve`'s check, before
    the workers start and would only log it)."""
    origins, bad = _parse_cors_origins(value)
    if bad:
        entries = ", ".join(repr(e[:100]) for e in bad)
        is_not, them = ("is not an origin", "it") if len(bad) == 1 else ("are not origins",
                                                                          "them")
        raise ValueError(
            f"{CORS_ORIGINS_ENV}: {entries} {is_not}: an origin is scheme://host[:port] "
            f"without a path, e.g. https://crm.example.com (or * for any); correct or "
            f"remove {them}")
    return origins


def _parse_cors_origins(value: str | None) -> tuple[list[str], list[str]]:
    """``(origins, entries that are not origins)`` of `CORS_ORIGINS_ENV`'s value: the one
    rule of `cors_origins` and `check_cors_origins`."""
    if value is None:
        value = os.environ.get(CORS_ORIGINS_ENV, "")
    origins, bad = [], []
    for entry in re.split(r"[,\s]+", value.strip()):
        origin = entry.lower().removesuffix("/")
        if not origin:
            continue
        if origin == "*" or _ORIGIN_RE.fullmatch(origin):
            origins.append(origin)
        else:
            bad.append(entry)
    return origins, bad


class CorsMiddleware:
    """CORS for browsers on the origins of `CORS_ORIGINS_ENV`, in front of `GuardMiddleware`.

    A web app on another origin sends a preflight (``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``, never with its ``Authorization``) before each POST: it
    is answered here, without a key (allowed: 200 with the ``Access-Control-Allow-*``
    headers; not: 400 ``{"error": ...}`` naming the origin, method or header refused). The
    real request then needs its key as any other, and every answer to an allowed origin,
    errors included (a 401 the app should be able to read), carries
    ``Access-Control-Allow-Origin``. No origins configured: requests pass untouched, as before.

    Starlette's ``CORSMiddleware`` does the work. BentoML's own CORS setting (the service's
    ``http.cors`` configuration) adds that same middleware, but after the service's ASGI
    middlewares, that is behind `GuardMiddleware`: a preflight got 401 from the key check
    and the guard's own answers (401, 403, 413, 415) no CORS headers; hence this one, which
    `serving.service` adds first, outermost. Origins are read when the worker builds its
    middleware (`cors_origins`)."""

    def __init__(self, app: Callable[..., Awaitable[None]],
                 origins: Sequence[str] | None = None) -> None:
        self.app = app
        self.origins = list(origins) if origins is not None else cors_origins()
        self._cors: Any = None
        if self.origins:
            self._cors = _json_preflight_cors()(
                app, allow_origins=self.origins, allow_methods=CORS_METHODS,
                allow_headers=CORS_HEADERS, expose_headers=CORS_EXPOSED)
            logger.info("CORS: browsers on %s may call the service (%s)",
                        ", ".join(self.origins), CORS_ORIGINS_ENV)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self._cors is None:
            await self.app(scope, receive, send)
        else:
            await self._cors(scope, receive, send)


def _json_preflight_cors() -> type:
    """Starlette's ``CORSMiddleware`` whose refused preflight answers the service's JSON
    error body (its own is the plain text ``Disallowed CORS origin``)."""
    from starlette.middleware.cors import CORSMiddleware
    from starlette.responses import JSONResponse

    class JsonPreflightCORS(CORSMiddleware):
        def preflight_response(self, request_headers: Any) -> Any:
            response = super().preflight_response(request_headers=request_headers)
            if response.status_code < 400:
                return response
            refused = []
            origin = request_headers["origin"]
            if not self.is_allowed_origin(origin=origin):
                refused.append(f"the origin {origin[:100]!r} is not one of the server's "
                               f"{CORS_ORIGINS_ENV}")
            method = request_headers["access-control-request-method"]
            if method not in self.allow_methods:
                refused.append(f"the method {method[:20]!r} is not one of "
                               f"{', '.join(CORS_METHODS)}")
            asked = request_headers.get("access-control-request-headers") or ""
            extra = [h.strip() for h in asked.lower().split(",")
                     if h.strip() and h.strip() not in self.allow_headers]
            if extra:
                refused.append(f"the headers {', '.join(extra)[:100]} are not taken (send "
                               f"{', '.join(CORS_HEADERS)})")
            if request_headers.get("access-control-request-private-network") is not None:
                refused.append("requests from a public site to a private network address "
                               "are not allowed")
            headers = {k: v for k, v in response.headers.items()
                       if k.lower() not in ("content-length", "content-type")}
            return JSONResponse({"error": "CORS preflight refused: " + "; ".join(refused)},
                                status_code=response.status_code, headers=headers)

    return JsonPreflightCORS


class GuardMiddleware:
    """API keys, body size, media type and readable validation errors, before BentoML.

    * ``GET``/``HEAD`` of `OPENAPI_PATHS` answer ``openapi()`` (when given: the document of
      `serving.openapi.openapi_document`, which declares the API key), made once; ``/docs``
      redirects to the Swagger UI at ``/``; ``/schema.json`` answers ``schema()`` (when
      given: BentoML's service schema with the requests' real types). No key needed.
    * Open paths (`serving.keys.is_open_path`: probes, metrics, docs, schema) pass untouched.
    * Anything else needs ``Authorization: Bearer <key>`` with the endpoint's scope
      (`serving.keys.ENDPOINT_SCOPES`): 401 / 403 ``{"error": ...}`` with ``WWW-Authenticate``.
      A key store that cannot be read fails closed (503).
    * The API endpoints take ``application/json`` only (a request without a
      ``Content-Type`` is read as JSON), uncompressed, in UTF-8 (415 otherwise: another
      ``Content-Type``, a ``Content-Encoding`` such as gzip, a UTF-16 or
      UTF-32 body, bytes that are not UTF-8: `_encoding_problem`; a UTF-8 byte order mark is
      dropped) and at most ``max_body_bytes`` (413, from ``Content-Length`` or while reading
      a chunked body, its message naming the body's size and this limit: `_too_large`).
    * BentoML answers a request that fails validation with 400 and pydantic's error list; it
      is rewritten to 422 ``{"error": "customer_ids: List should have at most 1000 items
      ...", "detail": [...]}`` (400 ``request body is not valid JSON: ...`` for bad JSON), and a
      5xx body is replaced by a generic message, so no traceback or input is ever echoed.
    * BentoML's plain-text 404 (``Not Found``) and 405 (``Method Not Allowed``, with its
      ``Allow`` header) become ``{"error": ...}`` naming the method and path and what to send
      instead, on every path (an unknown path still needs a valid key first: 401 without);
      the probes', metrics' and docs' other answers stay BentoML's.
    """

    def __init__(self, app: Callable[..., Awaitable[None]], keys: KeyStore | None = None,
                 max_body_bytes: int | None = None,
                 openapi: Callable[[], dict[str, Any]] | None = None,
                 schema: Callable[[], dict[str, Any]] | None = None,
                 not_ready: Callable[[], str | None] | None = None) -> None:
        from serving.keys import KeyStore

        self.app = app
        self.not_ready = not_ready
        self.keys = keys if keys is not None else KeyStore()
        if max_body_bytes is None:
            max_body_bytes = int(os.environ.get(MAX_BODY_ENV, DEFAULT_MAX_BODY))
        self.max_body_bytes = int(max_body_bytes)
        self.openapi = openapi
        self.schema = schema
        self._bodies: dict[str, bytes] = {}  # the documents, made once

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        from serving.keys import KeyStoreError, is_open_path, scope_for_path

        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        if (self.openapi is not None and scope.get("method") in ("GET", "HEAD")
                and path in (*OPENAPI_PATHS, DOCS_PATH)):
            await self._docs(path, scope.get("method") == "HEAD", send)
            return
        if (self.schema is not None and scope.get("method") in ("GET", "HEAD")
                and path == SCHEMA_PATH):
            await self._document("the service schema", self.schema,
                                 scope.get("method") == "HEAD", send)
            return
        if is_open_path(path):
            # their answers stay BentoML's, but for a wrong method or a missing asset, and
            # /readyz's 503, which says why (BentoML's says only that it is not ready)
            rewriter = (_ReadyRewriter(send, scope, self.not_ready)
                        if path == READY_PATH and self.not_ready is not None
                        else _ErrorRewriter(send, scope, statuses=(404, 405)))
            await self.app(scope, receive, rewriter)
            return
        headers = _headers(scope)
        try:
            auth = self.keys.authorize_path(headers.get("authorization"), path)
        except KeyStoreError as exc:
            logger.error("API key store unreadable: %s", exc)
            await _json(send, 503, {"error": "the API key store cannot be read; see the "
                                             "server log"})
            return
        if not auth.ok:
            await _json(send, auth.status, {"error": auth.message}, auth.headers)
            return
        scope.setdefault("state", {})[KEY_STATE] = auth.key
        if scope_for_path(path) is None or path.count("/") != 1 or scope.get("method") != "POST":
            # BentoML answers 404 / 405, as plain text: rewritten to the JSON error body
            await self.app(scope, receive, _ErrorRewriter(send, scope))
            return

        content_type = headers.get("content-type", "application/json")
        media = content_type.split(";")[0].strip().lower()
        if media not in ("application/json", ""):
            await _json(send, 415, {"error": f"Content-Type must be application/json, got "
                                             f"{media[:64]!r}"})
            return
        coding = headers.get("content-encoding", "").strip().lower()
        if coding not in ("", "identity"):
            # the body is compressed: BentoML read it as JSON and answered "not valid JSON"
            await _json(send, 415, {"error": f"Content-Encoding {coding[:32]!r} is not "
                                             f"supported: send the JSON body uncompressed"})
            return
        length = headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                await _json(send, 400, {"error": "invalid Content-Length header"})
                return
            if int(length) > self.max_body_bytes:
                await _json(send, 413, self._too_large(path, int(length)))
                return
        body = bytearray()
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body.extend(message.get("body", b""))
            if len(body) > self.max_body_bytes:
                await _json(send, 413, self._too_large(path, None))
                return
            if not message.get("more_body", False):
                break
        data = bytes(body)
        problem = _encoding_problem(data, _charset(content_type))
        if problem is not None:
            await _json(send, 415, {"error": problem})
            return
        if data.startswith(_UTF8_BOM):
            data = data[len(_UTF8_BOM):]
            scope["headers"] = [(k, v) for k, v in scope.get("headers") or []
                                if k.lower() != b"content-length"]
            scope["headers"].append((b"content-length", str(len(data)).encode()))
        await self.app(scope, _replay(data, receive), _ErrorRewriter(send, scope))

    async def _docs(self, path: str, head: bool, send: Send) -> None:
        """The OpenAPI document, or for ``/docs`` a redirect to the Swagger UI (``/``)."""
        if path == DOCS_PATH:
            # relative, so that it also works behind a proxy that adds a path prefix
            await send({"type": "http.response.start", "status": 307, "headers": [
                (b"location", b"./"), (b"content-length", b"0")]})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        assert self.openapi is not None
        await self._document("the OpenAPI document", self.openapi, head, send)

    async def _document(self, name: str, make: Callable[[], dict[str, Any]], head: bool,
                        send: Send) -> None:
        """A JSON document from ``make()``, made at the first request and kept."""
        body = self._bodies.get(name)
        if body is None:
            try:
                body = self._bodies[name] = json.dumps(make()).encode("utf-8")
            except Exception:
                logger.exception("%s cannot be generated", name)
                await _json(send, 500, {"error": f"{name} cannot be generated; see the "
                                                 f"server log"})
                return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": b"" if head else body,
                    "more_body": False})

    def _too_large(self, path: str, length: int | None) -> dict[str, str]:
        """The 413's message: the body's size (``length``, from Content-Length; None when
        it was counted while reading), the limit it broke, which is on bytes, not on the
        number of ids or customers (those are 422s), and what to send instead."""
        from serving.schemas import MAX_IDS, MAX_SCORE_CUSTOMERS

        size = f"{length:,} bytes, more than" if length is not None else "more than"
        per_tx = 100  # bytes of a transaction with order and product ids, as JSON
        advice = {
            "/predict": f": send fewer ids per request (at most {MAX_IDS:,})",
            "/score": (f": send fewer transactions per request, splitting the customers over "
                       f"several requests (about {self.max_body_bytes // per_tx:,} "
                       f"transactions of {per_tx} bytes fit in one, whatever the number of "
                       f"customers, at most {MAX_SCORE_CUSTOMERS:,})"),
        }
        return {"error": f"request body too large: {size} the server's limit of "
                         f"{self.max_body_bytes:,} bytes (LIFECAST_MAX_BODY_BYTES, a limit "
                         f"on the body's size){advice.get(path, '')}"}


def _headers(scope: Scope) -> dict[str, str]:
    out: dict[str, str] = {}
    for k, v in scope.get("headers") or []:
        out[k.decode("latin-1").lower()] = v.decode("latin-1")
    return out


#: RFC 8259 section 8.1: JSON over a network is UTF-8, and a parser may ignore a byte order
#: mark at its start. Windows tools send one (.NET's default UTF8 encoding, PowerShell with
#: some encodings); BentoML's parser (pydantic) does not skip it and answered 400 "not valid
#: JSON", so `GuardMiddleware` drops it before BentoML reads the body.
_UTF8_BOM = b"\xef\xbb\xbf"
#: Byte order marks of the encodings the service does not read (UTF-32 before UTF-16: its
#: little-endian mark starts with UTF-16's).
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32"), (b"\x00\x00\xfe\xff", "UTF-32"),
               (b"\xff\xfe", "UTF-16"), (b"\xfe\xff", "UTF-16"))
_SEND_UTF8 = ("send the JSON body encoded as UTF-8 (Content-Type: application/json or "
              "application/json; charset=utf-8)")


def _charset(content_type: str) -> str | None:
    """The ``charset`` parameter of a Content-Type header, lower case, without quotes."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "charset":
            return value.strip().strip('"').strip().lower() or None
    return None


def _encoding_problem(body: bytes, charset: str | None) -> str | None:
    """Why ``body`` is not JSON in UTF-8 (the message of a 415), or None when it is (or may
    be: whether it is JSON is BentoML's to say).

    UTF-16 and UTF-32 are recognized by their byte order mark or, without one, by the zero
    bytes of the first character (JSON text starts with an ASCII character: RFC 4627,
    section 3); pydantic read them as "not valid JSON: expected value at line 1 column 1".
    A ``charset`` other than UTF-8 is not refused by itself: RFC 8259 defines no charset
    parameter for application/json and "adding one really has no effect on compliant
    recipients", and clients that add ``charset=iso-8859-1`` to an ASCII body, which is UTF-8
    too, were answered before. Only a body that is not UTF-8 is refused, naming the charset
    it says it is in."""
    for bom, name in _OTHER_BOMS:
        if body.startswith(bom):
            return (f"the request body is {name} (it starts with a {name} byte order "
                    f"mark): {_SEND_UTF8}")
    if len(body) >= 2 and 0 in body[:2]:
        return (f"the request body is not UTF-8 (zero bytes at its start: UTF-16 or "
                f"UTF-32?): {_SEND_UTF8}")
    if body.isascii():
        return None
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        said = (f" (its Content-Type says charset={charset[:32]})"
                if charset and charset not in ("utf-8", "utf8") else "")
        return (f"the request body is not UTF-8{said}: byte 0x{body[exc.start]:02x} at "
                f"offset {exc.start} is not valid UTF-8; {_SEND_UTF8}")
    return None


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _json(send: Send, status: int, body: dict[str, Any],
                headers: dict[str, str] | None = None) -> None:
    data = json.dumps(body).encode("utf-8")
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})


class _ErrorRewriter:
    """Wraps ``send``: buffers the answers of ``statuses`` (default: 400, 404, 405 and 5xx)
    and rewrites their bodies to ``{"error": ...}`` (`rewrite_error`; for a ``HEAD`` request
    the headers only)."""

    def __init__(self, send: Send, scope: Scope,
                 statuses: tuple[int, ...] | None = None) -> None:
        self.send = send
        self.scope = scope
        self.statuses = statuses
        self.start: Message | None = None
        self.body = bytearray()

    def _rewrites(self, status: int) -> bool:
        if self.statuses is not None:
            return status in self.statuses
        return status in (400, 404, 405) or status >= 500

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            if self._rewrites(int(message["status"])):
                self.start = message
                return
            await self.send(message)
            return
        if self.start is None or message["type"] != "http.response.body":
            await self.send(message)
            return
        self.body.extend(message.get("body", b""))
        if message.get("more_body", False):
            return
        rewritten = self._rewritten(int(self.start["status"]), bytes(self.body))
        if rewritten is None:  # the answer stays as it was
            await self.send(self.start)
            await self.send({"type": "http.response.body", "body": bytes(self.body),
                             "more_body": False})
            return
        status, payload = rewritten
        data = json.dumps(payload).encode("utf-8")
        kept = [(k, v) for k, v in self.start.get("headers", [])
                if k.lower() not in (b"content-length", b"content-type")]
        kept += [(b"content-type", b"application/json"),
                 (b"content-length", str(len(data)).encode())]
        head = self.scope.get("method") == "HEAD"
        await self.send({"type": "http.response.start", "status": status, "headers": kept})
        await self.send({"type": "http.response.body", "body": b"" if head else data,
                         "more_body": False})

    def _rewritten(self, status: int, body: bytes) -> tuple[int, dict[str, Any]] | None:
        """(status, JSON payload) of a buffered answer; None keeps it as it was."""
        assert self.start is not None
        headers = {k.lower(): v for k, v in self.start.get("headers", [])}
        allow = headers.get(b"allow", b"").decode("latin-1")
        return rewrite_error(status, body, method=str(self.scope.get("method", "")),
                             path=str(self.scope.get("path", "")), allow=allow)


class _ReadyRewriter(_ErrorRewriter):
    """`_ErrorRewriter` of a /readyz request (404 and 405 as for the other open paths): a
    503 gets the body ``{"error": "not ready: <why>"}`` with ``why`` from ``reason()`` (the
    service's `Runtime.not_ready`, set by the readiness check BentoML has just run), so that
    whoever looks at the probe sees why (BentoML's body says only that ``__is_ready__``
    returned False). When ``reason()`` has nothing to say, the 503 stays BentoML's."""

    def __init__(self, send: Send, scope: Scope, reason: Callable[[], str | None]) -> None:
        super().__init__(send, scope, statuses=(404, 405, 503))
        self.reason = reason

    def _rewritten(self, status: int, body: bytes) -> tuple[int, dict[str, Any]] | None:
        if status != 503:
            return super()._rewritten(status, body)
        try:
            why = self.reason()
        except Exception:  # the probe's status is what counts: keep BentoML's answer
            logger.warning("cannot tell why the service is not ready", exc_info=True)
            return None
        return (503, {"error": f"not ready: {why}"}) if why else None


def rewrite_error(status: int, body: bytes, *, method: str = "", path: str = "",
                  allow: str = "") -> tuple[int, dict[str, Any]]:
    """(status, payload) for an error answer: pydantic errors as readable field messages,
    BentoML's plain-text 404 / 405 as a message naming the method, the path (``allow``: the
    answer's ``Allow`` header) and what to send instead."""
    if status in (404, 405):
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and isinstance(payload.get("error"), str):
            return status, {"error": payload["error"]}
        return status, {"error": _routing_message(status, method, path, allow)}
    if status >= 500:
        try:
            payload = json.loads(body)
        except ValueError:
            payload = None
        if isinstance(payload, dict) and set(payload) == {"error"} and not _looks_internal(
                str(payload["error"])):
            return status, payload  # one of our own messages (ServiceError)
        return status, {"error": "internal error; the server log has the details"}
    try:
        payload = json.loads(body)
    except ValueError:
        return status, {"error": "bad request"}
    if isinstance(payload, list) and payload and isinstance(payload[0], dict):
        payload = payload[0]  # BentoML wraps some 4xx messages in a list
    if not isinstance(payload, dict):
        return status, {"error": "bad request"}
    detail = payload.get("detail")
    if not isinstance(detail, list):
        return status, {"error": str(payload.get("error") or "bad request")}
    messages = []
    invalid_json = False
    for item in detail:
        if not isinstance(item, dict):
            continue
        if item.get("type") == "json_invalid":
            invalid_json = True
        where = _loc(item.get("loc") or ())
        msg = str(item.get("msg", "invalid value")).removeprefix("Value error, ")
        if item.get("type") == "too_long" and where in _PER_REQUEST:
            msg += f": {_PER_REQUEST[where]}"
        if where and msg.startswith(where + ":"):
            messages.append(msg)
        elif where:
            messages.append(f"{where}: {msg}")
        elif item.get("type") == "model_type":
            messages.append(f"request body: {msg}")
        else:
            messages.append(msg)
    clean = [{k: v for k, v in item.items() if k in ("type", "loc", "msg")}
             for item in detail if isinstance(item, dict)]
    if invalid_json:
        return 400, {"error": "request body is not valid JSON: " + "; ".join(messages),
                     "detail": clean}
    return 422, {"error": "; ".join(messages) or "invalid request", "detail": clean}


#: What to do about a list longer than a request takes, by field.
_PER_REQUEST = {
    "customer_ids": "split the ids into several requests",
    "customers": "split the customers into several requests",
}


def _routing_message(status: int, method: str, path: str, allow: str) -> str:
    """The message of a 404 (no such path) or 405 (the path exists, not for this method)."""
    from serving.keys import ENDPOINT_SCOPES

    shown = path if len(path) <= 100 else path[:100] + "..."
    endpoints = ", ".join(ENDPOINT_SCOPES)
    if status == 405:
        # Starlette builds Allow from a set, so its order changes from one process to the
        # next ("HEAD, GET" or "GET, HEAD"): name the methods in one fixed order
        order = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
        methods = sorted({m.strip().upper() for m in allow.split(",") if m.strip()},
                         key=lambda m: (order.index(m) if m in order else len(order), m))
        if path in ENDPOINT_SCOPES:
            return (f"{method} is not allowed on {shown}: send POST with a JSON body "
                    f"(Content-Type: application/json); see /docs")
        use = " or ".join(methods) if methods else "another method"
        return f"{method} is not allowed on {shown}: use {use}"
    return (f"no such path: {method} {shown}; the API endpoints are POST {endpoints} "
            f"(see /docs)")


def _loc(loc: Sequence[Any]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def _looks_internal(message: str) -> bool:
    return "Traceback" in message or 'File "' in message or message.startswith(
        "An unexpected error")
