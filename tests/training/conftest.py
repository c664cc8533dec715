"""Fixtures for the training tests: the CDNOW sample summaries shipped with ``lifetimes``.

The files are located without importing ``lifetimes`` (its import is slow): ``find_spec`` gives
the package folder. ``lifetimes`` is in the project's ``test`` extra.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest


def _lifetimes_datasets() -> Path:
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("lifetimes (test extra) is not installed: no CDNOW sample data")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets"


@pytest.fixture(scope="session")
def cdnow_summary() -> pd.DataFrame:
    """CDNOW sample, one row per customer (2357): ID, frequency, recency, T; times in weeks."""
    return pd.read_csv(_lifetimes_datasets() / "cdnow_customers_summary.csv")


@pytest.fixture(scope="session")
def cdnow_summary_with_value() -> pd.DataFrame:
    """CDNOW sample with spend, one row per customer (2357): ID, frequency, recency, T (weeks),
    monetary_value (mean repeat-purchase value, 0 without repeat purchases).

    The shipped file uses the paper's names x, t_x, T, zbar; they are renamed here.
    """
    df = pd.read_csv(_lifetimes_datasets() / "cdnow_customers_summary_with_transactions.csv")
    return df.rename(columns={"x": "frequency", "t_x": "recency", "zbar": "monetary_value"})
