"""Fixtures of the service tests: a small trained model set in a temporary BentoML model store,
a customer store holding its scores, and API keys.

Nothing touches ``~/bentoml``: ``BENTOML_HOME`` points at a temporary folder before BentoML
reads it (BentoML resolves it once per process, on first use). The fast tier trains once per
session on the bundled demo data with few trees (no MLflow: the models are laid out in the
BentoML store exactly as ``bentoml.mlflow.import_model`` lays out an MLflow champion, which
`serving.app.model_folder` reads); the slow tier (``test_service_integration.py``) goes
through MLflow and ``lifecast serve`` for real.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

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
    save_to_bentoml(models, models.versions)
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
