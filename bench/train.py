"""Training and scoring benchmark: `train` on ~1M customers x 12 snapshots, `score` of ~1M.

Run from the repository root, with the project's virtualenv::

    python bench/train.py                                  # 1M customers, everything
    python bench/train.py --skip-train                     # scoring only (cached models)
    python bench/train.py --max-customers 100000,0 --set learning_rate=0.1 --json out.json

It generates (once, cached under ``--cache`` like ``bench/features.py``, and shared with it) a
synthetic log of about ``--customers`` customers (`bench.synthetic`, ~10 rows per customer over
2020-01-01 .. 2021-12-31) and times, each run in a fresh subprocess so that its peak RSS is
its own:

- **train**: ``training.pipeline.train(path, mapping, as_of, TrainConfig(features=FeatureConfig(
  churn_horizon_days=90, clv_horizon_days=90, n_snapshots=12, snapshot_every_days=30),
  max_customers_per_snapshot=N))`` for each N of ``--max-customers`` (default 100000, the
  default of `TrainConfig`; 0 = every customer in every snapshot runs with a shorter
  timeout), broken down by the stages `TrainResult.timings` records;
- **score**: ``training.scoring.score(path, mapping, as_of, store_url=<SQLite file in a temp
  folder>, models=<the models of the first train run>)``: features, baseline features, the
  two LightGBM predictions, reasons (``pred_contrib``), segments and the customer-store write,
  from `ScoreResult.timings`;
- the references, in the same run: a plain LightGBM fit (LightGBM's defaults: 100 rounds, 31
  leaves, learning rate 0.1) on one snapshot of the training frame, for training; the
  BG/NBD + Gamma-Gamma baseline alone (`training.baseline.BaselineCLV` fit + predict) on the
  same customers' summary, for scoring.

It prints a table (step, wall s, peak GB, target, ratio to the reference, load average) and a
breakdown per stage, and optionally writes everything as JSON. With code that does not record
stage timings (an older checkout), the stages are timed by wrapping the functions `train` and
`score` call. See bench/README.md ("Training and scoring") for the figures.
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
import contextlib
import json
import logging
import os
import pickle
import platform
import resource
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from bench.synthetic import GENERATOR_VERSION, ROWS_PER_CUSTOMER, write_parquet

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path("/tmp/lifecast-bench")
#: The day after the synthetic log's last event (it covers 2020-01-01 .. 2021-12-31).
DEFAULT_AS_OF = "2021-12-31"
RESULT_PREFIX = "@@RESULT "
STAGE_PREFIX = "@@STAGE "
MAPPING: dict[str, str] = {"order_id": "order_id", "product_id": "product_id",
                           "quantity": "quantity"}
#: The feature configuration of the issue: 90-day horizons, 12 monthly snapshots.
FEATURE_CONFIG: dict[str, int] = {
    "churn_horizon_days": 90, "clv_horizon_days": 90, "n_snapshots": 12,
    "snapshot_every_days": 30,
}
SUMMARY_COLUMNS = ("customer_id", "frequency", "recency", "T", "monetary_value")
TARGET_TRAIN_S = 600.0
TARGET_SCORE_S = 60.0
#: Stages in the order `train` / `score` run them.
TRAIN_STAGES = ("load", "training_frame", "baseline_features", "population", "churn_fit",
                "value_fit", "segmenter_fit", "evaluation_frame", "evaluation_fit", "evaluation")
SCORE_STAGES = ("load", "features", "baseline_features", "churn_predict", "value_predict",
                "segments", "reasons", "store_write")


# --------------------------------------------------------------------------------------
# worker side: one measurement in its own process
# --------------------------------------------------------------------------------------


def _peak_rss_gb() -> float:
    """Peak resident set size of this process so far, in GB (ru_maxrss is KB on Linux)."""
    scale = 1 if platform.system() == "Darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1e9


def _load_1m() -> float:
    return round(os.getloadavg()[0], 2)


class _StageLog(logging.Handler):
    """Echo the stage timings `training.pipeline._timed` logs to stderr as they finish, so
    the driver can show progress and keep the finished stages of a run that times out."""

    def emit(self, record: logging.LogRecord) -> None:
        stage, _, rest = record.getMessage().partition(": ")
        try:
            seconds = float(rest.split()[0])
        except (IndexError, ValueError):
            return
        print(STAGE_PREFIX + json.dumps({"stage": stage, "s": seconds, "load": _load_1m()}),
              file=sys.stderr, flush=True)


@contextlib.contextmanager
def _wrapped_stages(targets: list[tuple[Any, str, str]], timings: dict[str, float]
                    ) -> Iterator[None]:
    """Time calls of ``owner.attr`` as ``stage`` (for code without `timings`)."""
    saved = []

    def wrap(fn: Callable[..., Any], stage: str) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                timings[stage] = timings.get(stage, 0.0) + dt
                _StageLog().emit(logging.makeLogRecord({"msg": f"{stage}: {dt:.2f} s"}))
        return timed

    for owner, attr, stage in targets:
        if hasattr(owner, attr):
            saved.append((owner, attr, getattr(owner, attr)))
            setattr(owner, attr, wrap(getattr(owner, attr), stage))
    try:
        yield
    finally:
        for owner, attr, fn in reversed(saved):
            setattr(owner, attr, fn)


def _train_config(max_customers: int, overrides: dict[str, Any]) -> Any:
    from features.config import FeatureConfig
    from training.models import TrainConfig

    return TrainConfig(features=FeatureConfig(**FEATURE_CONFIG),
                       max_customers_per_snapshot=max_customers, **overrides)


def _worker_train(args: argparse.Namespace) -> dict[str, Any]:
    import training.pipeline as tp
    from features.segments import RFMSegmenter
    from training.models import ChurnModel, ValueModel

    config = _train_config(args.max_customers, json.loads(args.overrides))
    has_timings = "timings" in getattr(tp.TrainResult, "__dataclass_fields__", {})
    fallback: dict[str, float] = {}
    targets = [] if has_timings else [
        (tp, "build_training_frame", "training_frame"), (tp, "sample_snapshots",
                                                         "training_frame"),
        (tp, "add_baseline_features", "baseline_features"), (tp, "build_features", "population"),
        (ChurnModel, "fit", "churn_fit"), (ValueModel, "fit", "value_fit"),
        (RFMSegmenter, "fit", "segmenter_fit"),
    ]
    load_before = _load_1m()
    t0 = time.perf_counter()
    with _wrapped_stages(targets, fallback):
        result = tp.train(args.path, mapping=tp.ColumnMapping(**MAPPING), as_of=args.as_of,
                          config=config)
    wall = time.perf_counter() - t0
    timings = dict(getattr(result, "timings", None) or fallback)
    if not has_timings:
        timings["other (load, evaluation)"] = wall - sum(timings.values())
    frame = result.frame
    per_snapshot = frame.groupby("cutoff").size()
    out: dict[str, Any] = {
        "wall_s": wall, "peak_gb": _peak_rss_gb(), "timings": timings,
        "load_start": load_before, "load_end": _load_1m(),
        "customers": int(result.data_report.customers),
        "rows_read": int(result.data_report.rows_read),
        "frame_rows": len(frame), "snapshots": int(per_snapshot.size),
        "rows_per_snapshot": [int(per_snapshot.min()), int(per_snapshot.max())],
        "best_iteration": {"churn": result.models.churn.best_iteration_,
                           "value": result.models.value.best_iteration_},
        "metrics": {kind: {row.metric: [float(row.model), float(row.baseline)]
                           for row in table.itertuples()}
                    for kind, table in result.evaluation.items()},
    }
    # artefacts for the scoring run and the references (written after the timing)
    if args.save_models:
        Path(args.save_models).write_bytes(pickle.dumps(result.models))
        snap = frame[frame["cutoff"] == result.eval_cutoffs["churn"]]
        names = [*result.models.churn.feature_names_, "churned"]
        snap[names].to_parquet(Path(args.save_models).with_suffix(".snapshot.parquet"))
    return out


def _worker_score(args: argparse.Namespace) -> dict[str, Any]:
    import training.pipeline as tp
    import training.scoring as ts
    from training.models import ChurnModel, ValueModel
    from training.store import CustomerStore

    models = pickle.loads(Path(args.models).read_bytes())
    has_timings = "timings" in getattr(ts.ScoreResult, "__dataclass_fields__", {})
    fallback: dict[str, float] = {}
    targets = [] if has_timings else [
        (ts, "build_features", "features"), (ts, "add_baseline_features", "baseline_features"),
        (ChurnModel, "predict_proba", "churn_predict"), (ValueModel, "predict", "value_predict"),
        (tp, "segment_customers", "segments"), (ChurnModel, "reasons", "reasons"),
        (CustomerStore, "write_batch", "store_write"),
    ]
    # keep the features `score` builds, for the reference (a pass-through, not timed apart)
    captured: dict[str, Any] = {}
    build_features = ts.build_features

    def keep_features(*a: Any, **k: Any) -> Any:
        captured["features"] = build_features(*a, **k)
        return captured["features"]

    with tempfile.TemporaryDirectory(prefix="lifecast-bench-store-") as tmp:
        url = f"sqlite:///{tmp}/lifecast_store.db"
        load_before = _load_1m()
        ts.build_features = keep_features
        t0 = time.perf_counter()
        try:
            with _wrapped_stages(targets, fallback):
                result = ts.score(args.path, tp.ColumnMapping(**MAPPING), args.as_of,
                                  store_url=url, models=models)
        finally:
            wall = time.perf_counter() - t0
            ts.build_features = build_features
        db_bytes = sum(f.stat().st_size for f in Path(tmp).iterdir())
    timings = dict(getattr(result, "timings", None) or fallback)
    if not has_timings:
        timings["other (load, assembly)"] = wall - sum(timings.values())
    scores = result.scores
    if args.save_summary and "features" in captured:
        captured["features"][list(SUMMARY_COLUMNS)].to_parquet(args.save_summary)
    return {
        "wall_s": wall, "peak_gb": _peak_rss_gb(), "timings": timings,
        "load_start": load_before, "load_end": _load_1m(), "customers": len(scores),
        "store_mb": db_bytes / 1e6,
        "trees": {"churn": models.churn.best_iteration_, "value": models.value.best_iteration_},
    }


def _summary_of(args: argparse.Namespace) -> Any:
    """frequency, recency, T, monetary_value of every customer at ``as_of`` (not timed)."""
    from features.config import ColumnMapping, FeatureConfig
    from features.pipeline import build_features

    feats = build_features(args.path, args.as_of, mapping=ColumnMapping(**MAPPING),
                           config=FeatureConfig(**FEATURE_CONFIG))
    return feats[list(SUMMARY_COLUMNS)]


def _worker_ref_score(args: argparse.Namespace) -> dict[str, Any]:
    import pandas as pd

    from training.baseline import BaselineCLV

    path = Path(args.summary)
    df = pd.read_parquet(path) if path.exists() else _summary_of(args)
    summary = pd.DataFrame({c: df[c].astype("float64")
                            for c in ("frequency", "recency", "T", "monetary_value")})
    load_before = _load_1m()
    t0 = time.perf_counter()
    base = BaselineCLV().fit(summary)
    t1 = time.perf_counter()
    horizons = sorted({FEATURE_CONFIG["churn_horizon_days"], FEATURE_CONFIG["clv_horizon_days"]})
    for h in horizons:
        base.predict(summary, h)
    t2 = time.perf_counter()
    return {"wall_s": t2 - t0, "peak_gb": _peak_rss_gb(), "customers": len(summary),
            "timings": {"fit": t1 - t0, "predict": t2 - t1},
            "load_start": load_before, "load_end": _load_1m()}


def _worker_ref_train(args: argparse.Namespace) -> dict[str, Any]:
    import lightgbm as lgb
    import numpy as np
    import pandas as pd

    snap = pd.read_parquet(args.snapshot)
    y = snap.pop("churned").astype(int).to_numpy()
    load_before = _load_1m()
    t0 = time.perf_counter()
    X = snap.astype("float64").to_numpy(na_value=np.nan)
    booster = lgb.train({"objective": "binary", "verbosity": -1}, lgb.Dataset(X, y),
                        num_boost_round=100)
    wall = time.perf_counter() - t0
    return {"wall_s": wall, "peak_gb": _peak_rss_gb(), "rows": len(snap),
            "features": X.shape[1], "rounds": booster.current_iteration(),
            "load_start": load_before, "load_end": _load_1m()}


def _worker_generate(args: argparse.Namespace) -> dict[str, Any]:
    t0 = time.perf_counter()
    write_parquet(args.rows, args.path, seed=args.seed)
    return {"wall_s": time.perf_counter() - t0, "peak_gb": _peak_rss_gb(), "load_end": _load_1m()}


WORKERS: dict[str, Callable[[argparse.Namespace], dict[str, Any]]] = {
    "generate": _worker_generate, "train": _worker_train, "score": _worker_score,
    "ref_train": _worker_ref_train, "ref_score": _worker_ref_score,
}


def _worker_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bench/train.py _worker")
    p.add_argument("step", choices=sorted(WORKERS))
    p.add_argument("--path", default="")
    p.add_argument("--as-of", default=DEFAULT_AS_OF)
    p.add_argument("--rows", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-customers", type=int, default=100_000)
    p.add_argument("--overrides", default="{}")
    p.add_argument("--save-models", default="")
    p.add_argument("--models", default="")
    p.add_argument("--save-summary", default="")
    p.add_argument("--summary", default="")
    p.add_argument("--snapshot", default="")
    args = p.parse_args(argv)
    warnings.simplefilter("ignore")
    stage_logger = logging.getLogger("training.pipeline")
    stage_logger.setLevel(logging.DEBUG)
    stage_logger.addHandler(_StageLog())
    result = {"step": args.step, **WORKERS[args.step](args)}
    print(RESULT_PREFIX + json.dumps(result, default=str), flush=True)
    return 0


# --------------------------------------------------------------------------------------
# driver side
# --------------------------------------------------------------------------------------


@dataclass
class Run:
    """One step's runs (repeats), summarised."""

    step: str
    label: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None
    stages_done: dict[str, float] = field(default_factory=dict)  # of a run that failed
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.runs)

    def median(self, key: str) -> float | None:
        values = sorted(r[key] for r in self.runs if r.get(key) is not None)
        return values[len(values) // 2] if values else None

    def peak_gb(self) -> float | None:
        values = [r["peak_gb"] for r in self.runs if "peak_gb" in r]
        return max(values) if values else None

    def loads(self) -> list[float]:
        return [r[k] for r in self.runs for k in ("load_start", "load_end") if k in r]

    def timings(self) -> dict[str, float]:
        """Stage timings of the median run (or the finished stages of a failed run)."""
        if not self.runs:
            return dict(self.stages_done)
        wall = self.median("wall_s")
        run = next(r for r in self.runs if r.get("wall_s") == wall)
        return dict(run.get("timings", {}))


def _run_worker(step: str, options: list[str], timeout: float, echo: str) -> dict[str, Any]:
    """Run one worker; echo its stages as they finish; on timeout keep the finished ones."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "_worker", step, *options]
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO_ROOT)
    stages: dict[str, float] = {}
    tail: list[str] = []

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            infos, rest = [], line
            if STAGE_PREFIX in line:
                # stage lines can share a line with each other or with other stderr output
                # written without a newline: decode each JSON object after a prefix
                rest, *pieces = line.split(STAGE_PREFIX)
                for piece in pieces:
                    try:
                        infos.append(json.JSONDecoder().raw_decode(piece)[0])
                    except ValueError:
                        rest += piece
            for info in infos:
                stages[info["stage"]] = stages.get(info["stage"], 0.0) + info["s"]
                print(f"      {echo}: {info['stage']} {info['s']:.1f} s "
                      f"(load {info['load']:.1f})", flush=True)
            if rest.strip():
                tail.append(rest.rstrip())
                del tail[:-20]

    out: list[str] = []

    def read_stdout() -> None:
        assert proc.stdout is not None
        out.append(proc.stdout.read())

    # One reader per pipe (not `communicate`, which would read stderr too and split its
    # lines between two readers).
    readers = [threading.Thread(target=f, daemon=True) for f in (read_stderr, read_stdout)]
    for reader in readers:
        reader.start()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        for reader in readers:
            reader.join(5)
        return {"error": f"timed out after {timeout:.0f} s", "stages_done": stages}
    for reader in readers:
        reader.join(5)
    stdout = "".join(out)
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULT_PREFIX):
            return json.loads(line[len(RESULT_PREFIX):])
    return {"error": f"exit code {proc.returncode}: " + "\n".join(tail[-12:]),
            "stages_done": stages}


def measure(step: str, label: str, options: list[str], repeats: int, timeout: float) -> Run:
    run = Run(step, label)
    for i in range(repeats):
        print(f"  {label} run {i + 1}/{repeats} (load {_load_1m():.1f}) ...", flush=True)
        res = _run_worker(step, options, timeout, label)
        if "error" in res:
            run.error, run.stages_done = res["error"], res.get("stages_done", {})
            print(f"  {label}: FAILED: {run.error}", flush=True)
            break
        run.runs.append(res)
        print(f"  {label}: {res['wall_s']:.1f} s, peak {res['peak_gb']:.2f} GB", flush=True)
    return run


def log_path(cache: Path, rows: int, seed: int) -> Path:
    """The cached log (the same name as bench/features.py uses, so the two share it)."""
    return cache / f"transactions_{rows}_seed{seed}_v{GENERATOR_VERSION}.parquet"


def ensure_log(cache: Path, rows: int, seed: int, timeout: float) -> Run:
    path = log_path(cache, rows, seed)
    meta = path.with_suffix(".gen.json")
    if path.exists() and meta.exists():
        return Run("generate", "generate synthetic log", [json.loads(meta.read_text())],
                   note="cached")
    print(f"  generating {rows:,} rows -> {path}", flush=True)
    run = measure("generate", "generate synthetic log",
                  ["--path", str(path), "--rows", str(rows), "--seed", str(seed)], 1, timeout)
    if run.ok:
        meta.write_text(json.dumps(run.runs[0]))
    return run


def _fmt(v: float | None, spec: str = ".1f", suffix: str = "") -> str:
    return "-" if v is None else f"{v:{spec}}{suffix}"


def _loads(run: Run) -> str:
    values = run.loads()
    return "-" if not values else f"{min(values):.1f}-{max(values):.1f}"


def format_table(runs: list[Run], refs: dict[str, Run]) -> str:
    head = (f"{'step':<44} {'wall s':>8} {'peak GB':>8} {'target':>9} {'verdict':>7} "
            f"{'x ref':>7} {'load 1m':>9}")
    lines = [head, "-" * len(head)]
    for run in runs:
        wall = run.median("wall_s")
        target = {"train": TARGET_TRAIN_S, "score": TARGET_SCORE_S}.get(run.step)
        ref = refs.get(run.step)
        ratio = wall / ref.median("wall_s") if wall and ref and ref.ok else None
        if not run.ok:
            done = sum(run.stages_done.values())
            lines.append(f"{run.label:<44} {'n/a':>8} {'-':>8} "
                         f"{_fmt(target, '.0f', ' s') if target else '-':>9} "
                         f"{'MISS' if target else '-':>7} {'-':>7} {'-':>9}  "
                         f"{(run.error or '').splitlines()[0]}"
                         + (f"; {done:.0f} s of stages finished" if done else ""))
            continue
        verdict = "-" if target is None else ("PASS" if wall < target else "MISS")
        label = run.label + (f" ({run.note})" if run.note else "")
        lines.append(f"{label:<44} {_fmt(wall):>8} {_fmt(run.peak_gb(), '.2f'):>8} "
                     f"{_fmt(target, '.0f', ' s') if target else '-':>9} {verdict:>7} "
                     f"{_fmt(ratio, '.1f', 'x'):>7} {_loads(run):>9}")
    return "\n".join(lines)


def format_stages(run: Run, order: tuple[str, ...]) -> str:
    timings = run.timings()
    if not timings:
        return ""
    total = run.median("wall_s") or sum(timings.values())
    names = [s for s in order if s in timings] + [s for s in timings if s not in order]
    lines = [f"  {run.label}" + ("" if run.ok else " (stages finished before it stopped)")]
    for name in names:
        share = f"{100 * timings[name] / total:5.1f}%" if run.ok and total else ""
        lines.append(f"    {name:<28} {timings[name]:9.1f} s  {share}")
    return "\n".join(lines)


def _describe(run: Run) -> str:
    if not run.ok:
        return ""
    r = run.runs[0]
    if run.step == "train":
        per = r["rows_per_snapshot"]
        text = (f"  {run.label}: {r['customers']:,} customers, {r['rows_read']:,} rows; "
                f"training frame {r['frame_rows']:,} rows in {r['snapshots']} snapshots "
                f"({per[0]:,}-{per[1]:,} per snapshot); boosting rounds kept: churn "
                f"{r['best_iteration']['churn']}, value {r['best_iteration']['value']}")
        for kind, metrics in r["metrics"].items():
            shown = ", ".join(f"{m} {v[0]:.4g} (baseline {v[1]:.4g})"
                              for m, v in list(metrics.items())[:3])
            text += f"\n    {kind}: {shown}"
        return text
    if run.step == "score":
        return (f"  {run.label}: {r['customers']:,} customers, models with "
                f"{r['trees']['churn']} + {r['trees']['value']} trees; store file "
                f"{r['store_mb']:.0f} MB")
    if run.step == "ref_train":
        return (f"  {run.label}: {r['rows']:,} rows x {r['features']} features, "
                f"{r['rounds']} rounds")
    if run.step == "ref_score":
        t = r["timings"]
        return (f"  {run.label}: {r['customers']:,} customers (fit {t['fit']:.1f} s, "
                f"predict {t['predict']:.1f} s)")
    return ""


def parse_set(items: list[str]) -> dict[str, Any]:
    """``--set KEY=VALUE`` options as TrainConfig overrides (values parsed as JSON when they
    are JSON, else kept as text; pydantic converts them)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python bench/train.py",
        description="Time training (12 snapshots) and scoring on ~1M synthetic customers.")
    p.add_argument("--customers", type=float, default=1e6,
                   help="customers in the synthetic log, about (default 1e6; ~10 rows each)")
    p.add_argument("--repeats", type=int, default=1, help="runs per step (default 1)")
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE,
                   help=f"folder for the generated log and models (default {DEFAULT_CACHE})")
    p.add_argument("--seed", type=int, default=0, help="generator seed (default 0)")
    p.add_argument("--as-of", default=DEFAULT_AS_OF, help=f"cutoff (default {DEFAULT_AS_OF})")
    p.add_argument("--max-customers", default="100000",
                   help="max_customers_per_snapshot values to train with, in order; the "
                        "first one's models are scored (default 100000, the default of "
                        "TrainConfig; add 0 for everyone in every snapshot)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a TrainConfig field, e.g. --set learning_rate=0.1")
    p.add_argument("--skip-train", action="store_true",
                   help="score with the models cached by an earlier run")
    p.add_argument("--skip-score", action="store_true")
    p.add_argument("--no-reference", action="store_true", help="skip the reference steps")
    p.add_argument("--timeout", type=float, default=3 * 3600,
                   help="seconds allowed per run (default 10800)")
    p.add_argument("--timeout-all", type=float, default=900,
                   help="seconds allowed for a run with max_customers 0 (default 900)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "_worker":
        return _worker_main(argv[1:])
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")
    overrides = parse_set(args.set)
    _train_config(0, overrides)  # fail early on a bad --set
    max_customers = [int(float(v)) for v in args.max_customers.split(",") if v.strip()]
    rows = int(round(args.customers * ROWS_PER_CUSTOMER))
    args.cache.mkdir(parents=True, exist_ok=True)
    print(f"training and scoring benchmark: ~{args.customers:,.0f} customers ({rows:,} rows), "
          f"as_of {args.as_of}, features {FEATURE_CONFIG}, overrides {overrides or 'none'}, "
          f"{args.repeats} repeat(s), {os.cpu_count()} cores, load average {_load_1m():.1f}",
          flush=True)
    gen = ensure_log(args.cache, rows, args.seed, args.timeout)
    runs: list[Run] = [gen]
    refs: dict[str, Run] = {}
    if not gen.ok:
        print(format_table(runs, refs))
        return 1
    path = str(log_path(args.cache, rows, args.seed))
    base = ["--path", path, "--as-of", args.as_of]
    tag = f"{rows}_seed{args.seed}"
    if overrides:
        tag += "_" + "_".join(f"{k}-{v}" for k, v in sorted(overrides.items()))
    models_file = args.cache / f"models_{tag}_max{max_customers[0] if max_customers else 0}.pkl"
    snapshot_file = models_file.with_suffix(".snapshot.parquet")
    summary_file = args.cache / f"summary_{rows}_seed{args.seed}.parquet"

    if not args.skip_train:
        for i, n in enumerate(max_customers):
            label = f"train, max_customers_per_snapshot={n}"
            opts = [*base, "--max-customers", str(n), "--overrides", json.dumps(overrides)]
            if i == 0:
                opts += ["--save-models", str(models_file)]
            runs.append(measure("train", label, opts, args.repeats,
                                args.timeout_all if n == 0 else args.timeout))
        if not args.no_reference and snapshot_file.exists():
            refs["train"] = measure("ref_train", "reference: plain LightGBM, one snapshot",
                                    ["--snapshot", str(snapshot_file)], args.repeats,
                                    args.timeout)
    if not args.skip_score:
        if models_file.exists():
            runs.append(measure("score", "score (features -> store)",
                                [*base, "--models", str(models_file),
                                 "--save-summary", str(summary_file)],
                                args.repeats, args.timeout))
        else:
            runs.append(Run("score", "score (features -> store)",
                            error=f"no models at {models_file}: run without --skip-train"))
        if not args.no_reference:
            refs["score"] = measure("ref_score", "reference: BG/NBD + Gamma-Gamma alone",
                                    [*base, "--summary", str(summary_file)], args.repeats,
                                    args.timeout)

    every = runs + list(refs.values())
    print()
    print(format_table(every, refs))
    print()
    print("stages (median run):")
    for run in every:
        order = TRAIN_STAGES if run.step == "train" else SCORE_STAGES
        if run.step in ("train", "score") and (text := format_stages(run, order)):
            print(text)
    print()
    for run in every:
        if text := _describe(run):
            print(text)
    loads = [v for run in every for v in run.loads()]
    if loads:
        busy = max(loads) > (os.cpu_count() or 1) + 0.5
        print(f"\n1-minute load average at the start and end of the runs: {min(loads):.1f} to "
              f"{max(loads):.1f} on {os.cpu_count()} cores"
              + (": above the core count, other processes were competing and the times are "
                 "inflated" if busy else ""))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "customers": args.customers, "rows": rows, "as_of": args.as_of,
            "features": FEATURE_CONFIG, "overrides": overrides, "repeats": args.repeats,
            "cores": os.cpu_count(), "python": sys.version.split()[0],
            "runs": [{"step": r.step, "label": r.label, "runs": r.runs, "error": r.error,
                      "stages_done": r.stages_done, "note": r.note} for r in every],
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
        print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
