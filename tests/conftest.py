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
