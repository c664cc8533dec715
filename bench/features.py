"""Feature-pipeline benchmark: the product against plain pandas and lifetimes.

Run from the repository root::

    python bench/features.py                               # 1M, 10M and 50M rows, 3 repeats
    python bench/features.py --sizes 1e6,1e7 --repeats 3 --snapshots --json out.json

For each size it generates a synthetic log once (`bench.synthetic`, cached as parquet under
``--cache``, default ``/tmp/lifecast-bench``) and then times, each repeat in a fresh
subprocess so that the peak RSS is the step's own:

- **product**: ``features.build_features(path, cutoff=..., mapping=...)`` straight from parquet;
- **duckdb-floor**: `bench.reference_duckdb.features_duckdb_floor`, the two aggregations no
  DuckDB plan of the feature set can skip (orders, distinct products) and nothing else: a
  lower bound for the product on this engine and machine;
- **pandas-full**: ``pandas.read_parquet`` (timed on its own) then
  `bench.reference_pandas.features_pandas_full`, every feature the product computes: the
  like-for-like baseline;
- **pandas**: the same read, then `bench.reference_pandas.features_pandas`, the ~16 core RFM
  and window columns only;
- **lifetimes**: the same read, then ``lifetimes.utils.summary_data_from_transaction_data``
  (only up to ``--lifetimes-max`` rows, 10M by default: it is slow and memory hungry).

``--steps`` picks among them (default ``product,duckdb-floor,pandas-full,pandas,lifetimes``).
It prints median wall times, peak memory and the ratios to the product as a table; the "faster than
pandas" target is computed against the full reference when it was measured (else the core
one) and says which. It checks that the product agrees with both pandas references on their
shared columns (on the 1M log, or the smallest size given; ``--no-compare`` skips it), and
with ``--snapshots`` times 12 monthly cutoffs over the 10M log (the product, the core
reference and, when ``pandas-full`` is among the steps, the full reference).
See bench/README.md for the meaning of every column.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script, this file's folder is sys.path[0] and `bench/features.py` would shadow
    # the `features` package: put the repository root there instead.
    _BENCH_DIR = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _BENCH_DIR]
    sys.path.insert(0, str(_BENCH_DIR.parent))

import argparse
import inspect
import json
import os
import platform
import resource
import statistics
import subprocess
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from bench.reference_duckdb import features_duckdb_floor
from bench.reference_pandas import features_pandas, features_pandas_full
from bench.synthetic import GENERATOR_VERSION, write_parquet

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/tmp/lifecast-bench")
DEFAULT_SIZES = "1e6,1e7,5e7"
DEFAULT_CUTOFF = "2021-10-01"
SNAPSHOT_ROWS = 10_000_000
N_SNAPSHOTS = 12
RESULT_PREFIX = "@@RESULT "
STEPS: tuple[str, ...] = ("product", "duckdb-floor", "pandas-full", "pandas", "lifetimes")

#: Columns each pandas reference reads (the full one also counts distinct products).
CORE_COLUMNS: list[str] = ["customer_id", "timestamp", "amount", "order_id"]
FULL_COLUMNS: list[str] = [*CORE_COLUMNS, "product_id"]

#: The synthetic log's optional columns, mapped onto the contract (the names are identical).
MAPPING: dict[str, str] = {
    "order_id": "order_id",
    "product_id": "product_id",
    "quantity": "quantity",
}

#: Targets printed beside the figures.
TARGET_50M_SECONDS = 20.0
TARGET_50M_GB = 4.0
TARGET_SPEEDUP_VS_PANDAS = 4.0
TARGET_SNAPSHOT_SECONDS = 30.0

STEP_LABELS: dict[str, str] = {
    "generate": "generate synthetic log",
    "product": "product build_features",
    "duckdb-floor": "DuckDB floor (2 aggregations)",
    "pandas-full": "pandas read + full reference",
    "pandas": "pandas read + reference",
    "lifetimes": "lifetimes read + summary",
    "snapshots_product": "product 12 snapshots",
    "snapshots_pandas": "pandas 12 snapshots",
    "snapshots_pandas_full": "pandas full 12 snapshots",
}
#: Width of the step label in the progress lines.
LABEL_WIDTH = max(len(label) for label in STEP_LABELS.values())


class ProductUnavailable(RuntimeError):
    """`features.build_features` cannot be imported (yet)."""


# --------------------------------------------------------------------------------------
# worker side: one measurement in its own process
# --------------------------------------------------------------------------------------


def _peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (ru_maxrss is KB on Linux)."""
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _current_rss_gb() -> float:
    """Current resident set size of this process, in GB."""
    try:
        with open("/proc/self/statm") as fh:
            pages = int(fh.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e9
    except OSError:
        return float("nan")


def _free_gb() -> float | None:
    """Free memory (``MemFree`` of /proc/meminfo, not counting the page cache) in GB."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemFree:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


def prefault(gb: float) -> tuple[float, float]:
    """Write to ``gb`` GB of memory in this process, free it, and forget it in the peak
    RSS; return (GB touched, seconds). Called just before a step's timer starts.

    Why: on a virtual machine whose host backs the guest's memory only when it is first
    written and takes freed memory back within seconds (a balloon or free page reporting,
    as on the machines this project runs on), the first write to memory costs a host page
    fault per page: touching 20 GB took 25.2 s, and 1.5 s right after. A step that
    allocates such memory pays that inside its timer. The pandas reference, which peaks at
    21 GB at 50M rows, took 71.5 s in its first run and 48-49 s in the next two (10M rows:
    13.0 s cold, 6.3 s with its memory touched first; the product at 50M rows, 3.4 GB:
    19.3 s against 15.9 s), so single runs compared the hypervisor, not the code. Memory
    touched and freed in the same process is reused at once, before the host takes it
    back (touched in another process just before, it was mostly gone again). The touch
    stays below the free memory (``MemFree`` less 0.5 GB), so it never evicts the page
    cache that holds the log. Only on Linux, where the peak RSS can be reset
    (``/proc/self/clear_refs``); elsewhere nothing is touched."""
    free = _free_gb()
    if free is not None:
        gb = min(gb, free - 0.5)
    if gb <= 0.1 or not os.path.exists("/proc/self/clear_refs"):
        return 0.0, 0.0
    import numpy as np

    t0 = time.perf_counter()
    np.ones(int(gb * 2**30), dtype=np.uint8)  # written, then freed at once
    seconds = time.perf_counter() - t0
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")  # reset the peak RSS (VmHWM, ru_maxrss) to the current RSS
    return gb, seconds


def _import_product() -> Any:
    """Import the product's `features` package, or raise `ProductUnavailable`."""
    try:
        import features
    except Exception as exc:  # the package is being written: any import error counts
        raise ProductUnavailable(
            f"features.build_features is not importable yet ({type(exc).__name__}: {exc})"
        ) from exc
    if not hasattr(features, "build_features"):
        raise ProductUnavailable("the features package has no build_features yet")
    return features


def _read(path: str, columns: Sequence[str]) -> tuple[pd.DataFrame, float]:
    t0 = time.perf_counter()
    df = pd.read_parquet(path, columns=list(columns))
    return df, time.perf_counter() - t0


def _snapshot_cutoffs(cutoff: str) -> list[pd.Timestamp]:
    """``N_SNAPSHOTS`` month starts ending at ``cutoff`` (its month's start if mid-month)."""
    return list(pd.date_range(end=pd.Timestamp(cutoff), periods=N_SNAPSHOTS, freq="MS"))


def _run_product_snapshots(features: Any, path: str, cutoffs: list[pd.Timestamp]) -> dict:
    """Snapshots with the product's own multi-cutoff entry point when it has one."""
    build_snapshots = getattr(features, "build_snapshots", None)
    if build_snapshots is not None and "cutoffs" in inspect.signature(build_snapshots).parameters:
        t0 = time.perf_counter()
        out = build_snapshots(path, cutoffs=cutoffs, mapping=MAPPING)
        return {
            "wall_s": time.perf_counter() - t0,
            "rows_out": len(out),
            "how": "features.build_snapshots(path, cutoffs=[12])",
        }
    t0 = time.perf_counter()
    rows = sum(len(features.build_features(path, cutoff=c, mapping=MAPPING)) for c in cutoffs)
    return {
        "wall_s": time.perf_counter() - t0,
        "rows_out": rows,
        "how": "loop of features.build_features(path, cutoff=c)",
    }


def _compare(product: pd.DataFrame, reference: pd.DataFrame) -> dict:
    """Do the product and the reference agree on the columns they share?"""
    ref = reference.assign(customer_id=reference["customer_id"].astype(str)).set_index(
        "customer_id"
    )
    prod = product.assign(customer_id=product["customer_id"].astype(str)).set_index("customer_id")
    shared = [c for c in ref.columns if c in prod.columns]
    missing = [c for c in ref.columns if c not in prod.columns]
    only_ref = ref.index.difference(prod.index)
    only_prod = prod.index.difference(ref.index)
    common = ref.index.intersection(prod.index)
    mismatches: dict[str, dict[str, Any]] = {}
    for col in shared:
        a = pd.to_numeric(ref.loc[common, col]).astype("float64")
        b = pd.to_numeric(prod.loc[common, col]).astype("float64")
        tol = 1e-6 + 1e-9 * a.abs()
        bad = ~(((a - b).abs() <= tol) | (a.isna() & b.isna()))
        if bad.any():
            first = bad[bad].index[0]
            mismatches[col] = {
                "n": int(bad.sum()),
                "max_abs_diff": float((a - b).abs().max()),
                "example": {
                    "customer_id": first,
                    "reference": float(a[first]),
                    "product": float(b[first]),
                },
            }
    return {
        "match": not mismatches and not len(only_ref) and not len(only_prod),
        "customers_reference": len(ref),
        "customers_product": len(prod),
        "only_in_reference": len(only_ref),
        "only_in_product": len(only_prod),
        "shared_columns": shared,
        "missing_in_product": missing,
        "mismatches": mismatches,
    }


def run_worker(step: str, path: str, cutoff: str, n_rows: int, seed: int,
               pretouch_gb: float = 0.0) -> dict:
    """Run one measurement in this process and return its figures; first `prefault`
    ``pretouch_gb`` GB (after the product's import, which is not timed)."""
    result: dict[str, Any] = {"step": step}
    if step in ("product", "snapshots_product"):
        t0 = time.perf_counter()
        features = _import_product()
        result["import_s"] = time.perf_counter() - t0
    result["pretouched_gb"], result["pretouch_s"] = prefault(pretouch_gb)
    # process CPU time (user + sys, all threads) of the timed part: on a busy machine the
    # wall time of a step depends on what else runs, its CPU seconds much less so
    cpu0 = time.process_time()
    if step == "generate":
        t0 = time.perf_counter()
        write_parquet(n_rows, path, seed=seed)
        result["wall_s"] = time.perf_counter() - t0
    elif step == "product":
        result["rss_before_gb"] = _current_rss_gb()
        cpu0 = time.process_time()
        t0 = time.perf_counter()
        out = features.build_features(path, cutoff=cutoff, mapping=MAPPING)
        result["wall_s"] = time.perf_counter() - t0
        result["customers"] = len(out)
        result["columns"] = out.shape[1]
    elif step == "duckdb-floor":
        result["rss_before_gb"] = _current_rss_gb()
        t0 = time.perf_counter()
        out = features_duckdb_floor(path, cutoff)
        result["wall_s"] = time.perf_counter() - t0
        result["customers"] = len(out)
    elif step in ("pandas", "pandas-full"):
        full = step == "pandas-full"
        result["rss_before_gb"] = _current_rss_gb()
        df, result["read_s"] = _read(path, FULL_COLUMNS if full else CORE_COLUMNS)
        t0 = time.perf_counter()
        out = features_pandas_full(df, cutoff) if full else features_pandas(df, cutoff)
        result["compute_s"] = time.perf_counter() - t0
        result["wall_s"] = result["read_s"] + result["compute_s"]
        result["customers"] = len(out)
    elif step == "lifetimes":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from lifetimes.utils import summary_data_from_transaction_data
        result["rss_before_gb"] = _current_rss_gb()
        cpu0 = time.process_time()
        df, result["read_s"] = _read(path, ["customer_id", "timestamp", "amount"])
        cut = pd.Timestamp(cutoff)
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            out = summary_data_from_transaction_data(
                df.loc[df["timestamp"] < cut],
                "customer_id",
                "timestamp",
                monetary_value_col="amount",
                observation_period_end=cut.ceil("D"),
            )
        result["compute_s"] = time.perf_counter() - t0
        result["wall_s"] = result["read_s"] + result["compute_s"]
        result["customers"] = len(out)
    elif step == "snapshots_product":
        result["rss_before_gb"] = _current_rss_gb()
        cpu0 = time.process_time()
        result.update(_run_product_snapshots(features, path, _snapshot_cutoffs(cutoff)))
    elif step in ("snapshots_pandas", "snapshots_pandas_full"):
        full = step == "snapshots_pandas_full"
        reference = features_pandas_full if full else features_pandas
        result["rss_before_gb"] = _current_rss_gb()
        df, result["read_s"] = _read(path, FULL_COLUMNS if full else CORE_COLUMNS)
        t0 = time.perf_counter()
        result["rows_out"] = sum(len(reference(df, c)) for c in _snapshot_cutoffs(cutoff))
        result["compute_s"] = time.perf_counter() - t0
        result["wall_s"] = result["read_s"] + result["compute_s"]
    elif step == "compare":
        features = _import_product()
        product = features.build_features(path, cutoff=cutoff, mapping=MAPPING)
        df = pd.read_parquet(path, columns=FULL_COLUMNS)
        result.update(_compare(product, features_pandas(df, cutoff)))
        result["full"] = _compare(product, features_pandas_full(df, cutoff))
    else:
        raise ValueError(f"unknown step {step!r}")
    if step != "compare":
        result["cpu_s"] = time.process_time() - cpu0
    result["peak_gb"] = _peak_rss_gb()
    result["load_1m"] = os.getloadavg()[0]
    return result


def _worker_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/features.py _worker")
    parser.add_argument("step")
    parser.add_argument("--path", required=True)
    parser.add_argument("--cutoff", required=True)
    parser.add_argument("--rows", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pretouch-gb", type=float, default=0.0)
    args = parser.parse_args(argv)
    try:
        result = run_worker(args.step, args.path, args.cutoff, args.rows, args.seed,
                            args.pretouch_gb)
    except ProductUnavailable as exc:
        result = {"step": args.step, "unavailable": str(exc)}
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# driver side: subprocesses, repeats, table
# --------------------------------------------------------------------------------------


@dataclass
class Measurement:
    """The repeats of one step on one log, summarised."""

    step: str
    rows: int
    runs: list[dict] = field(default_factory=list)
    error: str | None = None
    #: untimed runs before ``runs`` (``--warmup``), kept for the JSON only
    warmups: list[dict] = field(default_factory=list)
    note: str | None = None

    def median(self, key: str) -> float | None:
        """Median of ``key`` over the runs that have it."""
        values = [r[key] for r in self.runs if r.get(key) is not None]
        return statistics.median(values) if values else None

    def peak_gb(self) -> float | None:
        """Largest peak RSS over the runs (the memory a user must have)."""
        values = [r["peak_gb"] for r in self.runs if "peak_gb" in r]
        return max(values) if values else None

    @property
    def ok(self) -> bool:
        """True when every repeat produced figures."""
        return self.error is None and bool(self.runs)

    def summary(self) -> dict[str, Any]:
        """Flat summary for the JSON output."""
        return {
            "step": self.step,
            "rows": self.rows,
            "median_wall_s": self.median("wall_s"),
            "median_cpu_s": self.median("cpu_s"),
            "median_read_s": self.median("read_s"),
            "median_compute_s": self.median("compute_s"),
            "peak_gb": self.peak_gb(),
            "error": self.error,
            "note": self.note,
            "runs": self.runs,
            "warmups": self.warmups,
        }


def _run_subprocess(
    step: str, path: Path, cutoff: str, rows: int, seed: int, timeout: float,
    pretouch_gb: float = 0.0,
) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "_worker",
        step,
        "--path",
        str(path),
        "--cutoff",
        cutoff,
        "--rows",
        str(rows),
        "--seed",
        str(seed),
        "--pretouch-gb",
        str(pretouch_gb),
    ]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO_ROOT
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX) :])
    tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
    return {"error": f"exit code {proc.returncode}:\n{tail}"}


def measure(
    step: str,
    path: Path,
    cutoff: str,
    rows: int,
    repeats: int,
    seed: int,
    timeout: float,
    log: bool = True,
    *,
    warmup: int = 0,
    pretouch: bool = False,
) -> Measurement:
    """Run ``step`` ``warmup`` times untimed, then ``repeats`` times, each in a fresh
    process. With ``pretouch``, each run first touches (`prefault`) as much memory as the
    step's largest peak so far (nothing in its first run: see ``warmup``)."""
    m = Measurement(step=step, rows=rows)
    label = STEP_LABELS.get(step, step)
    for i in range(warmup + repeats):
        peaks = [r["peak_gb"] for r in (*m.warmups, *m.runs) if "peak_gb" in r]
        gb = 1.05 * max(peaks) if pretouch and peaks else 0.0
        res = _run_subprocess(step, path, cutoff, rows, seed, timeout, gb)
        if "unavailable" in res:
            m.error = res["unavailable"]
            break
        if "error" in res:
            m.error = res["error"]
            break
        warm = i < warmup
        (m.warmups if warm else m.runs).append(res)
        if log:
            extra = f", read {res['read_s']:.2f} s" if "read_s" in res else ""
            which = (f"warm-up {i + 1}/{warmup} (not counted)" if warm
                     else f"run {i + 1 - warmup}/{repeats}")
            memory = (f" (memory pre-touched: {res['pretouched_gb']:.1f} GB in "
                      f"{res['pretouch_s']:.1f} s)" if res.get("pretouched_gb") else "")
            print(
                f"  {_fmt_rows(rows):>6} {label:<{LABEL_WIDTH}} {which}: "
                f"{res['wall_s']:.2f} s{extra}, cpu {res.get('cpu_s', float('nan')):.2f} s, "
                f"peak {res['peak_gb']:.2f} GB, load {res.get('load_1m', float('nan')):.1f}"
                f"{memory}",
                flush=True,
            )
    if m.error and log:
        print(
            f"  {_fmt_rows(rows):>6} {STEP_LABELS.get(step, step):<{LABEL_WIDTH}} "
            f"FAILED: {m.error}",
            flush=True,
        )
    return m


def log_path(cache: Path, rows: int, seed: int) -> Path:
    """Where the synthetic log of ``rows`` rows is cached."""
    return cache / f"transactions_{rows}_seed{seed}_v{GENERATOR_VERSION}.parquet"


def ensure_log(cache: Path, rows: int, seed: int, cutoff: str, timeout: float) -> Measurement:
    """Generate the log once (in a subprocess, timed) unless it is cached."""
    path = log_path(cache, rows, seed)
    meta = path.with_suffix(".gen.json")
    if path.exists() and meta.exists():
        m = Measurement(step="generate", rows=rows, runs=[json.loads(meta.read_text())])
        m.note = "cached"
        return m
    print(f"  generating {rows:,} rows -> {path}", flush=True)
    m = measure("generate", path, cutoff, rows, 1, seed, timeout)
    if m.ok:
        meta.write_text(json.dumps(m.runs[0]))
    return m


def _fmt_rows(n: int) -> str:
    for unit, div in (("M", 1_000_000), ("k", 1_000)):
        if n >= div:
            v = n / div
            return f"{v:.0f}{unit}" if v == int(v) else f"{v:.1f}{unit}"
    return str(n)


def _fmt(v: float | None, spec: str = ".2f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _ratio(num: float | None, den: float | None) -> float | None:
    return num / den if num is not None and den else None


def format_table(measurements: list[Measurement]) -> str:
    """The plain-text results table."""
    head = (
        f"{'rows':>6}  {'step':<34} {'wall s':>8} {'cpu s':>8} {'read s':>8} {'compute s':>9} "
        f"{'peak GB':>8} {'x product':>9}  {'customers':>10}"
    )
    lines = [head, "-" * len(head)]
    product = {m.rows: m.median("wall_s") for m in measurements if m.step == "product" and m.ok}
    snap_product = next(
        (m.median("wall_s") for m in measurements if m.step == "snapshots_product" and m.ok), None
    )
    for m in measurements:
        label = STEP_LABELS.get(m.step, m.step) + (f" ({m.note})" if m.note else "")
        if not m.ok:
            reason = (m.error or "no runs").splitlines()[0]
            lines.append(f"{_fmt_rows(m.rows):>6}  {label:<34} n/a: {reason}")
            continue
        base = snap_product if m.step.startswith("snapshots") else product.get(m.rows)
        ratio = None if m.step == "generate" else _ratio(m.median("wall_s"), base)
        customers = m.median("customers") or m.median("rows_out")
        lines.append(
            f"{_fmt_rows(m.rows):>6}  {label:<34} {_fmt(m.median('wall_s')):>8} "
            f"{_fmt(m.median('cpu_s')):>8} {_fmt(m.median('read_s')):>8} "
            f"{_fmt(m.median('compute_s')):>9} "
            f"{_fmt(m.peak_gb()):>8} {_fmt(ratio, '.1f', 'x'):>9}  "
            f"{'-' if customers is None else f'{int(customers):,}':>10}"
        )
    return "\n".join(lines)


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "MISS")


def format_targets(measurements: list[Measurement]) -> str:
    """The targets, each with the measured figure and PASS / MISS / n/a."""
    by = {(m.step, m.rows): m for m in measurements if m.ok}
    lines = ["targets:"]
    p50 = by.get(("product", 50_000_000))
    t50 = p50.median("wall_s") if p50 else None
    g50 = p50.peak_gb() if p50 else None
    lines.append(
        f"  product, 50M rows, wall < {TARGET_50M_SECONDS:.0f} s: {_fmt(t50, '.1f', ' s')}  "
        f"{_verdict(None if t50 is None else t50 < TARGET_50M_SECONDS)}"
    )
    lines.append(
        f"  product, 50M rows, peak < {TARGET_50M_GB:.0f} GB: {_fmt(g50, '.2f', ' GB')}  "
        f"{_verdict(None if g50 is None else g50 < TARGET_50M_GB)}"
    )
    sizes = sorted({m.rows for m in measurements if m.step == "product"})
    for rows in sizes:
        # like for like: the full reference (every product feature) when it was measured
        full = by.get(("pandas-full", rows))
        prod, pdm, lt = (
            by.get(("product", rows)),
            full or by.get(("pandas", rows)),
            by.get(("lifetimes", rows)),
        )
        which = "full reference" if full else "core reference"
        pw = prod.median("wall_s") if prod else None
        total = _ratio(pdm.median("wall_s") if pdm else None, pw)
        compute = _ratio(pdm.median("compute_s") if pdm else None, pw)
        vs_lt = _ratio(lt.median("wall_s") if lt else None, pw)
        lines.append(
            f"  product >= {TARGET_SPEEDUP_VS_PANDAS:.0f}x faster than pandas ({which}), "
            f"{_fmt_rows(rows)} rows: "
            # two decimals: 3.98x printed as "4.0x" beside MISS read as a contradiction
            f"{_fmt(total, '.2f', 'x')} vs read+features "
            f"({_fmt(compute, '.2f', 'x')} vs features alone)  "
            f"{_verdict(None if total is None else total >= TARGET_SPEEDUP_VS_PANDAS)}"
            f"; vs lifetimes: {_fmt(vs_lt, '.1f', 'x')}"
        )
        floor = by.get(("duckdb-floor", rows))
        if floor is not None and pdm is not None:
            fw = floor.median("wall_s")
            lines.append(
                f"    DuckDB floor (orders + distinct products only), {_fmt_rows(rows)} rows: "
                f"{_fmt(fw, '.1f', ' s')}, {_fmt(_ratio(pdm.median('wall_s'), fw), '.1f', 'x')} "
                f"faster than pandas ({which}): a lower bound, the two aggregations every plan "
                f"of these features needs"
            )
    snap = next((m for m in measurements if m.step == "snapshots_product" and m.ok), None)
    ts = snap.median("wall_s") if snap else None
    lines.append(
        f"  product, {N_SNAPSHOTS} monthly snapshots over {_fmt_rows(SNAPSHOT_ROWS)} rows "
        f"< {TARGET_SNAPSHOT_SECONDS:.0f} s: {_fmt(ts, '.1f', ' s')}  "
        f"{_verdict(None if ts is None else ts < TARGET_SNAPSHOT_SECONDS)}"
    )
    return "\n".join(lines)


def format_comparison(result: dict | None) -> str:
    """Whether the product agrees with the pandas references: one paragraph for the core
    reference, then one for the full reference when it was checked."""
    text = _format_agreement(result, "pandas reference")
    if result is not None and result.get("full") is not None:
        full = dict(result["full"], rows=result["rows"])
        text += "\n" + _format_agreement(full, "full pandas reference")
    return text


def _format_agreement(result: dict | None, name: str) -> str:
    """One paragraph on whether the product agrees with one pandas reference."""
    if result is None:
        return f"agreement with the {name}: not checked"
    if "unavailable" in result or "error" in result:
        reason = (result.get("unavailable") or result.get("error", "")).splitlines()[0]
        return f"agreement with the {name}: not checked ({reason})"
    head = (
        f"agreement with the {name} on {_fmt_rows(result['rows'])} rows: "
        f"{'MATCH' if result['match'] else 'MISMATCH'} "
        f"({result['customers_product']:,} customers in the product, "
        f"{result['customers_reference']:,} in the reference; "
        f"{len(result['shared_columns'])} shared columns)"
    )
    lines = [head]
    if result["missing_in_product"]:
        lines.append(f"  reference columns absent from the product: {result['missing_in_product']}")
    if result["only_in_reference"] or result["only_in_product"]:
        lines.append(
            f"  customers only in the reference: {result['only_in_reference']:,}; "
            f"only in the product: {result['only_in_product']:,}"
        )
    for col, info in result["mismatches"].items():
        lines.append(
            f"  {col}: {info['n']:,} customers differ (max |diff| {info['max_abs_diff']:.6g}; "
            f"e.g. {info['example']})"
        )
    return "\n".join(lines)


def _parse_sizes(text: str) -> list[int]:
    try:
        sizes = [int(float(s)) for s in text.split(",") if s.strip()]
    except ValueError:
        msg = f"--sizes must be numbers like 1e6,1e7: {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not sizes or any(s <= 0 for s in sizes):
        raise argparse.ArgumentTypeError("--sizes must be positive row counts")
    return sorted(set(sizes))


def build_parser() -> argparse.ArgumentParser:
    """Command-line options of the benchmark."""
    p = argparse.ArgumentParser(
        prog="python bench/features.py",
        description="Time the feature pipeline against plain pandas and lifetimes.",
    )
    p.add_argument(
        "--sizes",
        type=_parse_sizes,
        default=_parse_sizes(DEFAULT_SIZES),
        help=f"comma-separated row counts (default {DEFAULT_SIZES})",
    )
    p.add_argument("--repeats", type=int, default=3, help="runs per step (default 3)")
    p.add_argument(
        "--warmup",
        type=int,
        default=1,
        help="untimed runs per step before the timed ones (default 1): they tell how much "
        "memory to pre-touch",
    )
    p.add_argument(
        "--no-pretouch",
        action="store_true",
        help="do not touch each step's memory before its timer (see prefault in this file)",
    )
    p.add_argument(
        "--snapshots",
        action="store_true",
        help=f"also time {N_SNAPSHOTS} monthly cutoffs over the 10M-row log",
    )
    p.add_argument(
        "--steps",
        default=",".join(STEPS),
        help=f"which steps to time (default {','.join(STEPS)})",
    )
    p.add_argument(
        "--lifetimes-max",
        type=float,
        default=1e7,
        help="largest log to run lifetimes on (default 1e7)",
    )
    p.add_argument(
        "--cutoff", default=DEFAULT_CUTOFF, help=f"feature cutoff (default {DEFAULT_CUTOFF})"
    )
    p.add_argument(
        "--cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"folder for the generated logs (default {DEFAULT_CACHE})",
    )
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--timeout", type=float, default=3600, help="seconds allowed per run")
    p.add_argument(
        "--no-compare", action="store_true", help="skip the product-vs-reference agreement check"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results to this file")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``_worker`` as the first argument runs one measurement in-process."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        return _worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    steps = [s.strip() for s in args.steps.split(",") if s.strip()]
    unknown = set(steps) - set(STEPS)
    if unknown:
        raise SystemExit(f"unknown steps {sorted(unknown)} (allowed: {', '.join(STEPS)})")
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    if args.warmup < 0:
        raise SystemExit("--warmup must be >= 0")
    runs = {"warmup": args.warmup, "pretouch": not args.no_pretouch}
    args.cache.mkdir(parents=True, exist_ok=True)

    sizes = list(args.sizes)
    if args.snapshots and SNAPSHOT_ROWS not in sizes:
        sizes_to_generate = sorted({*sizes, SNAPSHOT_ROWS})
    else:
        sizes_to_generate = sizes
    print(
        f"feature-pipeline benchmark: sizes {[_fmt_rows(s) for s in sizes]}, cutoff {args.cutoff}, "
        f"{args.repeats} repeats after {args.warmup} untimed, memory "
        f"{'not ' if args.no_pretouch else ''}pre-touched, {os.cpu_count()} cores, "
        f"cache {args.cache}, "
        f"load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    measurements: list[Measurement] = []
    for rows in sizes_to_generate:
        measurements.append(ensure_log(args.cache, rows, args.seed, args.cutoff, args.timeout))
    generated = {m.rows: m.ok for m in measurements}

    product_missing: str | None = None
    for rows in sizes:
        if not generated[rows]:
            continue
        path = log_path(args.cache, rows, args.seed)
        for step in steps:
            if step == "lifetimes" and rows > args.lifetimes_max:
                continue
            if step == "product" and product_missing:
                measurements.append(Measurement(step, rows, error=product_missing))
                continue
            m = measure(step, path, args.cutoff, rows, args.repeats, args.seed, args.timeout,
                        **runs)
            if step == "product" and m.error and "not importable" in m.error:
                product_missing = m.error
            measurements.append(m)

    if args.snapshots and generated.get(SNAPSHOT_ROWS):
        path = log_path(args.cache, SNAPSHOT_ROWS, args.seed)
        snapshot_steps = ["snapshots_product", "snapshots_pandas"]
        if "pandas-full" in steps:
            snapshot_steps.append("snapshots_pandas_full")
        for step in snapshot_steps:
            if step == "snapshots_product" and product_missing:
                measurements.append(Measurement(step, SNAPSHOT_ROWS, error=product_missing))
                continue
            measurements.append(
                measure(
                    step, path, args.cutoff, SNAPSHOT_ROWS, args.repeats, args.seed, args.timeout,
                    **runs,
                )
            )

    comparison: dict | None = None
    if not args.no_compare and "product" in steps:
        rows = 1_000_000 if 1_000_000 in sizes else sizes[0]
        if product_missing:
            comparison = {"unavailable": product_missing}
        elif generated[rows]:
            comparison = _run_subprocess(
                "compare",
                log_path(args.cache, rows, args.seed),
                args.cutoff,
                rows,
                args.seed,
                args.timeout,
            )
            comparison["rows"] = rows

    print()
    print(format_table(measurements))
    print()
    print(format_targets(measurements))
    print()
    print(format_comparison(comparison))
    # a cached log's record carries the load of the run that generated it, not of this one
    loads = [r["load_1m"] for m in measurements if m.note != "cached"
             for r in m.runs if "load_1m" in r]
    if loads:
        # the load counts the steps' own threads: the product's DuckDB runs more threads
        # than cores on 2-3 cores (`features.contract.raise_thread_floor`)
        cores = os.cpu_count() or 1
        try:
            from features.contract import floored_threads
        except ImportError:  # the product is not importable: its steps did not run
            own = cores
        else:
            own = floored_threads(cores)
        print(
            f"\n1-minute load average during the runs: median {statistics.median(loads):.1f}, "
            f"max {max(loads):.1f} on {cores} cores"
            + (f": above the {own} threads a step runs at most, other processes were "
               f"competing and the times are inflated" if max(loads) > own + 0.5 else "")
        )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "cutoff": args.cutoff,
            "repeats": args.repeats,
            "warmup": args.warmup,
            "pretouch": not args.no_pretouch,
            "seed": args.seed,
            "cores": os.cpu_count(),
            "python": sys.version.split()[0],
            "pandas": pd.__version__,
            "measurements": [m.summary() for m in measurements],
            "comparison": comparison,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
