"""Shared fixtures: where the real data and the CDNOW sample live."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data beside the checkout; tests using it skip (saying why) without it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it sits beside the checkout)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def lifetimes_datasets() -> Path:
    """The datasets folder that the `lifetimes` package ships (test extra), found without
    importing lifetimes."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        pytest.fail("the test extra is not installed: pip install -e '.[test]' (needs lifetimes)")
    return Path(spec.submodule_search_locations[0]) / "datasets"


@pytest.fixture(scope="session")
def demo_config():
    """A quick training config on the bundled demo data (90-day horizons)."""
    from features import FeatureConfig
    from training.models import TrainConfig

    return TrainConfig(features=FeatureConfig(churn_horizon_days=90, clv_horizon_days=90),
                       n_estimators=400, num_threads=1)


@pytest.fixture(scope="session")
def demo_transactions():
    """The bundled Online Retail extract, loaded once."""
    from features import DEMO_MAPPING, demo_data_path, load_transactions

    return load_transactions(demo_data_path(), DEMO_MAPPING)


@pytest.fixture(scope="session")
def demo_train_result(demo_transactions, demo_config):
    """`training.pipeline.train` on the demo data, once per session."""
    import warnings

    from training.pipeline import train

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return train(demo_transactions, config=demo_config)


@pytest.fixture()
def unreachable_postgres():
    """A function returning a PostgreSQL URL (user ``lifecast``, password ``s3cret``) at a
    local port nobody listens on; it skips the test when the driver is not installed."""
    import importlib.util
    import socket

    def url(db: str = "nowhere") -> str:
        if importlib.util.find_spec("psycopg") is None:
            pytest.skip("psycopg is not installed (pip install 'lifecast[postgres]')")
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        return f"postgresql://lifecast:s3cret@127.0.0.1:{port}/{db}"

    return url
