"""The feature benchmark's driver (`bench/features.py`): warm-up runs are not counted, and
each timed run is preceded by touching as much memory as the step used before, within
the free memory (why: `prefault`'s docstring)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # the script imports `bench.*`, as bench/quality.py does
    sys.path.insert(0, str(_ROOT))
_SPEC = importlib.util.spec_from_file_location("_lifecast_bench_features",
                                               _ROOT / "bench" / "features.py")
bench = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = bench  # dataclasses look their module up while the class is made
_SPEC.loader.exec_module(bench)


def test_prefault_stays_below_the_free_memory_and_leaves_the_peak_alone(
        monkeypatch: pytest.MonkeyPatch) -> None:
    before = bench._peak_rss_gb()
    monkeypatch.setattr(bench, "_free_gb", lambda: 1.5)
    touched, seconds = bench.prefault(5.0)
    assert touched == pytest.approx(1.0) and seconds > 0
    assert bench._peak_rss_gb() < before + 0.5  # the touched GB is not the step's peak
    monkeypatch.setattr(bench, "_free_gb", lambda: 0.55)
    assert bench.prefault(5.0) == (0.0, 0.0)  # nothing worth touching


def test_warmup_runs_are_not_counted_and_set_the_memory_touched(tmp_path: Path,
                                                                 capsys) -> None:
    from bench.synthetic import write_parquet

    path = tmp_path / "log.parquet"
    write_parquet(20_000, path, seed=1)
    m = bench.measure("duckdb-floor", path, "2021-10-01", 20_000, repeats=2, seed=1,
                      timeout=300, warmup=1, pretouch=True)
    assert m.ok and len(m.warmups) == 1 and len(m.runs) == 2
    assert m.warmups[0]["pretouched_gb"] == 0.0  # nothing known before the first run
    first_peak = m.warmups[0]["peak_gb"]
    assert m.runs[0]["pretouched_gb"] == pytest.approx(1.05 * first_peak)
    assert m.median("wall_s") is not None and "warmups" in m.summary()
    out = capsys.readouterr().out
    assert "warm-up 1/1 (not counted)" in out and "run 2/2" in out
    assert "memory pre-touched" in out

    plain = bench.measure("duckdb-floor", path, "2021-10-01", 20_000, repeats=1, seed=1,
                          timeout=300, log=False)
    assert plain.warmups == [] and plain.runs[0]["pretouched_gb"] == 0.0
