"""Serving benchmark: ``lifecast serve`` /predict against ``mlflow models serve``.

Run from the repository root, with the project's virtualenv::

    python bench/serve.py                                   # C = 1, 8, 32
    python bench/serve.py --requests 400 --concurrency 1,8,32 --json out.json --keep

In a temporary folder it trains on the bundled demo data (``lifecast train``), scores it into
the customer store (``lifecast score``), creates an API key with scope ``predict`` and then
starts, each in its own process group, on 127.0.0.1:

- **ours**: ``lifecast serve --port P1 --no-access-log --workers W`` (W BentoML workers,
  ``--workers``, default 1); request ``POST /predict {"customer_ids": [id]}`` with the Bearer
  key (reasons included);
- **peer**: ``mlflow models serve -m models:/lifecast-churn@champion -p P2 --env-manager local
  -w W`` (the same number of workers); request ``POST /invocations`` with the customer's
  churn-model feature row (doubles) in MLflow's ``dataframe_split`` JSON (probability only, no
  reasons, no value model).

For every concurrency C it warms both servers up, then sends the requests in alternating
rounds (ours, peer, peer, ours, ...) so that machine noise hits both, from an asyncio client
with C keep-alive connections, one request in flight on each (``--client raw``, the default:
HTTP/1.1 written on asyncio streams, requests prepared as bytes; ``--client httpx``: an
httpx.AsyncClient, as the first version did, which costs several times the CPU per request
and showed stalls of over a second at C=32 that a raw client does not see on the same
server). Each request is one customer (a rotating pool of customers, the same sequence for
both servers). It reports per server p50 / p99 latency, throughput and
errors, and the ratios ours / peer. The client runs on the same machine as the servers and
takes CPU from them: the figures are for client + server together.

It also times the in-process limit: the bare LightGBM booster ``predict`` for one row with
``num_threads=1`` (raw score; and with ``pred_contrib=True``, the reasons), the service's
whole model call for one row (`serving.app.Runtime._predict` equivalent: churn + value +
contributions), `serving.app.Runtime.predict` for one id (store read, models, response), its
store read alone, the pandas path it replaced (`Runtime.predict_frames`), and the MLflow
pyfunc's ``predict`` on a one-row DataFrame.
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
import asyncio
import contextlib
import json
import math
import os
import platform
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
READY_TIMEOUT = 300.0
TRAIN_FLAGS = ["--customer-col", "CustomerID", "--timestamp-col", "InvoiceDate",
               "--amount", "Quantity * UnitPrice", "--order-col", "InvoiceNo"]
HORIZONS = ["--churn-horizon-days", "90", "--clv-horizon-days", "90"]
CHAMPION_URI = "models:/lifecast-churn@champion"
POOL_SIZE = 256  # customers the requests rotate through


def _log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------------------------
# setup


def _env(folder: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LIFECAST_", "MLFLOW_TRACKING_URI", "PROMETHEUS_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["BENTOML_HOME"] = str(folder / "bentoml")
    env["BENTOML_DO_NOT_TRACK"] = "True"
    env["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
    env["MLFLOW_TRACKING_URI"] = f"sqlite:///{folder / 'mlflow.db'}"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(":")
    return env


def _run(argv: list[str], folder: Path, env: dict[str, str], name: str) -> float:
    t0 = time.perf_counter()
    with open(folder / f"{name}.log", "wb") as log:
        proc = subprocess.run(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                              timeout=1800, check=False)
    if proc.returncode != 0:
        tail = (folder / f"{name}.log").read_text(errors="replace")[-3000:]
        raise SystemExit(f"{' '.join(argv[:2])} failed ({proc.returncode}):\n{tail}")
    return time.perf_counter() - t0


def setup(folder: Path) -> dict[str, Any]:
    """Train, score and make a key in ``folder``; returns what the benchmark needs."""
    from features import demo_data_path

    env = _env(folder)
    data = str(demo_data_path())
    lifecast = str(BIN / "lifecast")
    _log(f"training on {data} in {folder}")
    t_train = _run([lifecast, "train", "-t", data, *TRAIN_FLAGS, *HORIZONS], folder, env,
                   "train")
    _log(f"trained in {t_train:.1f} s; scoring")
    t_score = _run([lifecast, "score", "-t", data, *TRAIN_FLAGS], folder, env, "score")
    _log(f"scored in {t_score:.1f} s")

    from serving.keys import KeyStore

    _, token = KeyStore(folder / ".lifecast" / "keys.json").create("bench", ["predict"])
    return {"env": env, "token": token, "train_s": t_train, "score_s": t_score}


def request_pool(folder: Path, env: dict[str, str]) -> tuple[list[str], list[str],
                                                              list[list[float]]]:
    """Customer ids of the current batch and their churn-model feature rows (the pyfunc's
    input schema, in its order), preferring rows without missing values."""
    import mlflow

    from training.store import CustomerStore

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    info = mlflow.models.get_model_info(CHAMPION_URI)
    names = list(info.signature.inputs.input_names())
    store = CustomerStore(f"sqlite:///{folder / 'lifecast_store.db'}")
    ranked, _ = store.ranked(min_churn_probability=None, min_value=None, limit=5000)
    ids = [str(c) for c in ranked["customer_id"]]
    _, feats, _ = store.get_customers(ids)
    feats = feats.set_index("customer_id")
    complete = feats[names].notna().all(axis=1)
    chosen = list(feats.index[complete])[:POOL_SIZE]
    if len(chosen) < POOL_SIZE:  # top up with rows that have missing values
        chosen += list(feats.index[~complete])[:POOL_SIZE - len(chosen)]
    rows = [[None if (v is None or (isinstance(v, float) and math.isnan(v))) else float(v)
             for v in feats.loc[c, names].tolist()] for c in chosen]
    with contextlib.suppress(Exception):
        store.close()
    return [str(c) for c in chosen], names, rows


# --------------------------------------------------------------------------------------------
# servers


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def stop_group(proc: subprocess.Popen) -> None:
    """SIGTERM the server's process group, wait, SIGKILL what remains."""
    pgid = proc.pid  # started with start_new_session: its own group
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=30)
    deadline = time.monotonic() + 15
    while _group_alive(pgid) and time.monotonic() < deadline:
        time.sleep(0.3)
    if _group_alive(pgid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=15)


def start(argv: list[str], folder: Path, env: dict[str, str], name: str
          ) -> tuple[subprocess.Popen, Any]:
    log = open(folder / f"{name}.log", "wb")  # noqa: SIM115 - closed by the caller
    proc = subprocess.Popen(argv, cwd=folder, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    return proc, log


def wait_ready(proc: subprocess.Popen, url: str, folder: Path, name: str) -> float:
    import httpx

    t0 = time.monotonic()
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"{name} exited with {proc.returncode}:\n"
                             + (folder / f"{name}.log").read_text(errors="replace")[-3000:])
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return time.monotonic() - t0
        if time.monotonic() - t0 > READY_TIMEOUT:
            raise SystemExit(f"{name} not ready in {READY_TIMEOUT:.0f} s:\n"
                             + (folder / f"{name}.log").read_text(errors="replace")[-3000:])
        time.sleep(0.5)


# --------------------------------------------------------------------------------------------
# load generation


class Target:
    def __init__(self, name: str, url: str, bodies: list[bytes], headers: dict[str, str],
                 check: Any) -> None:
        self.name, self.url, self.bodies, self.headers, self.check = (
            name, url, bodies, headers, check)


#: The load generator (``--client``): "raw" (default) or "httpx".
CLIENT = {"name": "raw"}


async def _round(target: Target, n: int, concurrency: int, offset: int, max_seconds: float
                 ) -> tuple[list[float], int, float, list[str]]:
    """``n`` requests with ``concurrency`` in flight; returns (latencies s, errors, wall s,
    first error messages). Stops issuing after ``max_seconds``."""
    if CLIENT["name"] == "raw":
        return await _raw_round(target, n, concurrency, offset, max_seconds)
    return await _httpx_round(target, n, concurrency, offset, max_seconds)


class _RawConnection:
    """One keep-alive HTTP/1.1 connection on asyncio streams: writes a prepared request and
    reads the status, headers and body (Content-Length or chunked)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        self.writer.write(raw)
        head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                parts.append(await self.reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(x[:-2] for x in parts)
        else:
            raise RuntimeError("answer without Content-Length or chunked encoding")
        if headers.get("connection", "").lower() == "close":
            await self.close()
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()
        self.reader = self.writer = None


async def _raw_round(target: Target, n: int, concurrency: int, offset: int,
                     max_seconds: float) -> tuple[list[float], int, float, list[str]]:
    """`_round` with `_RawConnection`s: ``concurrency`` keep-alive connections, each with one
    request in flight; every request is prepared as bytes beforehand."""
    from urllib.parse import urlsplit

    url = urlsplit(target.url)
    host, port = url.hostname or "127.0.0.1", url.port or 80
    head = (f"POST {url.path or '/'} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            + "".join(f"{k}: {v}\r\n" for k, v in target.headers.items()))
    raws = [(head + f"Content-Length: {len(b)}\r\n\r\n").encode("latin-1") + b
            for b in target.bodies]
    latencies: list[float] = []
    errors = 0
    messages: list[str] = []
    counter = iter(range(n))
    t0 = time.perf_counter()
    deadline = t0 + max_seconds

    async def worker() -> None:
        nonlocal errors
        conn = _RawConnection(host, port)
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                raw = raws[(offset + i) % len(raws)]
                start_t = time.perf_counter()
                elapsed = 0.0
                try:
                    status, body = await asyncio.wait_for(conn.request(raw), timeout=60)
                    # the latency ends when the answer is in; checking it is the client's work
                    elapsed = time.perf_counter() - start_t
                    ok = status == 200 and _checked(target, body)
                    if not ok and len(messages) < 3:
                        messages.append(f"{status} {body[:200]!r}")
                except (TimeoutError, OSError, asyncio.IncompleteReadError,
                        asyncio.LimitOverrunError, RuntimeError, ValueError) as exc:
                    ok = False
                    await conn.close()
                    if len(messages) < 3:
                        messages.append(repr(exc)[:200])
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1
        finally:
            await conn.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors, time.perf_counter() - t0, messages


async def _httpx_round(target: Target, n: int, concurrency: int, offset: int,
                       max_seconds: float) -> tuple[list[float], int, float, list[str]]:
    """`_round` with an httpx.AsyncClient (the first version of this benchmark)."""
    import httpx

    latencies: list[float] = []
    errors = 0
    messages: list[str] = []
    counter = iter(range(n))
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=60, headers=target.headers) as client:
        t0 = time.perf_counter()
        deadline = t0 + max_seconds

        async def worker() -> None:
            nonlocal errors
            for i in counter:
                if time.perf_counter() > deadline:
                    return
                body = target.bodies[(offset + i) % len(target.bodies)]
                start_t = time.perf_counter()
                elapsed = 0.0
                try:
                    resp = await client.post(target.url, content=body)
                    elapsed = time.perf_counter() - start_t  # the answer is in
                    ok = resp.status_code == 200 and _checked(target, resp.content)
                    if not ok and len(messages) < 3:
                        messages.append(f"{resp.status_code} {resp.text[:200]}")
                except httpx.HTTPError as exc:
                    ok = False
                    if len(messages) < 3:
                        messages.append(repr(exc)[:200])
                if ok:
                    latencies.append(elapsed)
                else:
                    errors += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - t0
    return latencies, errors, wall, messages


def _checked(target: Target, body: bytes) -> bool:
    try:
        return bool(target.check(body))
    except (ValueError, KeyError, IndexError, TypeError):  # not the answer expected
        return False


def _ours_ok(body: bytes) -> bool:
    predictions = json.loads(body)["predictions"]
    return bool(predictions) and "reasons" in predictions[0]


def _pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_level(targets: list[Target], concurrency: int, n: int, rounds: int,
              max_seconds: float) -> dict[str, dict[str, Any]]:
    """Warm both up, then ``rounds`` alternating rounds of ``n / rounds`` requests each."""
    for t in targets:
        asyncio.run(_round(t, max(4 * concurrency, 40), concurrency, 0, 30))
    per = max(1, n // rounds)
    acc = {t.name: {"lat": [], "errors": 0, "wall": 0.0, "messages": []} for t in targets}
    loads = [_load()]
    for r in range(rounds):
        order = targets if r % 2 == 0 else targets[::-1]
        for t in order:
            lat, err, wall, msgs = asyncio.run(
                _round(t, per, concurrency, r * per, max_seconds / rounds))
            a = acc[t.name]
            a["lat"] += lat
            a["errors"] += err
            a["wall"] += wall
            a["messages"] += msgs
    loads.append(_load())
    out = {}
    for t in targets:
        a = acc[t.name]
        done = len(a["lat"])
        out[t.name] = {
            "concurrency": concurrency, "requests": done + a["errors"], "ok": done,
            "errors": a["errors"], "p50_ms": 1e3 * _pct(a["lat"], 0.5),
            "p99_ms": 1e3 * _pct(a["lat"], 0.99), "mean_ms": 1e3 * sum(a["lat"]) / max(done, 1),
            "throughput_rps": done / a["wall"] if a["wall"] else float("nan"),
            "wall_s": a["wall"], "load_before": loads[0], "load_after": loads[1],
            "error_samples": a["messages"][:3],
        }
    return out


# --------------------------------------------------------------------------------------------
# in-process limit


def _time_loop(func: Any, seconds: float = 2.0, min_calls: int = 200) -> dict[str, float]:
    for _ in range(20):
        func()
    times: list[float] = []
    t_end = time.perf_counter() + seconds
    while len(times) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        func()
        times.append(time.perf_counter() - t0)
        if len(times) >= 20000:
            break
    return {"calls": len(times), "p50_us": 1e6 * _pct(times, 0.5),
            "p99_us": 1e6 * _pct(times, 0.99), "per_s": len(times) / sum(times)}


def _runtime_predict(folder: Path, ids: list[str]) -> dict[str, dict[str, float]]:
    """The service's whole /predict work without HTTP: `serving.app.Runtime.predict` for one
    id (store read, models, reasons, response model), as a worker runs it; its store read
    alone (`CustomerStore.lookup`); and the pandas path it replaced
    (`Runtime.predict_frames`: `CustomerStore.get_customers`' frames)."""
    from serving.app import Runtime
    from training.tracking import champion_artifacts

    saved = {k: os.environ.get(k) for k in ("LIFECAST_STORE_URL", "LIFECAST_AUDIT_LOG")}
    os.environ["LIFECAST_STORE_URL"] = f"sqlite:///{folder / 'lifecast_store.db'}"
    os.environ["LIFECAST_AUDIT_LOG"] = str(folder / ".lifecast" / "audit.log")
    try:
        runtime = Runtime.from_environment(champion_artifacts("churn", folder / "downloads"),
                                           champion_artifacts("clv", folder / "downloads"))
        calls = iter(range(10**9))
        try:
            return {
                "Runtime.predict (1 id: store + models + reasons)": _time_loop(
                    lambda: runtime.predict([ids[next(calls) % len(ids)]])),
                "CustomerStore.lookup (1 id: the store read of Runtime.predict)": _time_loop(
                    lambda: runtime.store.lookup([ids[next(calls) % len(ids)]])),
                "Runtime.predict_frames (1 id: the pandas path, before)": _time_loop(
                    lambda: runtime.predict_frames([ids[next(calls) % len(ids)]]),
                    seconds=1.0),
            }
        finally:
            runtime.close()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def in_process(folder: Path, env: dict[str, str], names: list[str], row: list[float | None],
               ids: list[str]) -> dict[str, dict[str, float]]:
    import mlflow
    import numpy as np
    import pandas as pd

    from training.models import calibrate, top_reasons
    from training.rowpredict import RowPredictor
    from training.tracking import load_champions

    mlflow.set_tracking_uri(env["MLFLOW_TRACKING_URI"])
    fitted = load_champions(folder / "downloads")
    churn, value = fitted.churn, fitted.value
    cnames = list(churn.feature_names_)
    frame = pd.DataFrame([row], columns=names, dtype="float64")
    X = np.ascontiguousarray(frame[cnames].to_numpy(dtype="float64"))
    vnames = list(value.feature_names_)
    Xv = np.ascontiguousarray(frame.reindex(columns=vnames).to_numpy(dtype="float64"))
    b, it = churn.booster_, churn.best_iteration_
    out: dict[str, dict[str, float]] = {}
    out["booster predict raw (1 row, 1 thread)"] = _time_loop(
        lambda: b.predict(X, num_iteration=it, raw_score=True, num_threads=1))
    out["booster predict pred_contrib (1 row, 1 thread)"] = _time_loop(
        lambda: b.predict(X, num_iteration=it, pred_contrib=True, num_threads=1))

    fast_contrib = RowPredictor(b, "contrib", it)
    fast_value = RowPredictor(value.booster_, "normal", value.best_iteration_)
    out["single-row fast path pred_contrib (1 row)"] = _time_loop(
        lambda: fast_contrib.predict(X))

    def service_call() -> None:  # what serving.app.Runtime._predict_matrix does for one row
        contrib = fast_contrib.predict(X)
        calibrate(contrib.sum(axis=1), *churn.calibration_)
        fast_value.predict(Xv)
        top_reasons(contrib, X, cnames, churn.config_.top_reasons)

    out["churn + value + reasons (1 row, fast path)"] = _time_loop(service_call)
    out.update(_runtime_predict(folder, ids))
    pyfunc = mlflow.pyfunc.load_model(CHAMPION_URI)
    out["mlflow pyfunc predict (1-row DataFrame)"] = _time_loop(lambda: pyfunc.predict(frame))
    return out


# --------------------------------------------------------------------------------------------
# report


def _fmt(x: float, digits: int = 1) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def report(levels: dict[int, dict[str, dict[str, Any]]], limits: dict[str, dict[str, float]]
           ) -> list[str]:
    lines = ["| C | server | requests | errors | p50 ms | p99 ms | req/s | load (1/5/15 min) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for c, res in levels.items():
        for name, r in res.items():
            lines.append(
                f"| {c} | {name} | {r['requests']} | {r['errors']} | {_fmt(r['p50_ms'])} | "
                f"{_fmt(r['p99_ms'])} | {_fmt(r['throughput_rps'], 0)} | {r['load_before']} -> "
                f"{r['load_after']} |")
    lines += ["", "| C | p50 ours/peer | p99 ours/peer | throughput ours/peer |",
              "| --- | --- | --- | --- |"]
    for c, res in levels.items():
        o, p = res.get("ours"), res.get("peer")
        if not (o and p):
            continue
        lines.append(f"| {c} | {_fmt(o['p50_ms'] / p['p50_ms'], 2)} | "
                     f"{_fmt(o['p99_ms'] / p['p99_ms'], 2)} | "
                     f"{_fmt(o['throughput_rps'] / p['throughput_rps'], 2)} |")
    if limits:
        lines += ["", "| in-process (no HTTP) | p50 us | p99 us | calls/s |",
                  "| --- | --- | --- | --- |"]
        for name, r in limits.items():
            lines.append(f"| {name} | {_fmt(r['p50_us'])} | {_fmt(r['p99_us'])} | "
                         f"{_fmt(r['per_s'], 0)} |")
    lines.append("")
    o8 = levels.get(8, {}).get("ours")
    if o8:
        met = o8["p99_ms"] < 15 and o8["errors"] == 0
        lines.append(f"target /predict p99 < 15 ms at C=8 (reasons included): "
                     f"{_fmt(o8['p99_ms'])} ms -> {'met' if met else 'NOT met'}")
    r32 = levels.get(32, {})
    if r32.get("ours") and r32.get("peer"):
        ratio = r32["ours"]["throughput_rps"] / r32["peer"]["throughput_rps"]
        lines.append(f"target >= 2x the peer's throughput at C=32: {_fmt(ratio, 2)}x -> "
                     f"{'met' if ratio >= 2 else 'NOT met'}")
    return lines


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=None,
                    help="measured requests per server and concurrency (default 400 at C=1, "
                         "1000 otherwise)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    ap.add_argument("--rounds", type=int, default=4,
                    help="alternating rounds per level (default 4)")
    ap.add_argument("--max-seconds", type=float, default=120.0,
                    help="time bound per server and level (default 120)")
    ap.add_argument("--client", choices=("raw", "httpx"), default="raw",
                    help="load generator: keep-alive HTTP/1.1 on asyncio streams (raw, the "
                         "default) or an httpx.AsyncClient (the first version's; it costs "
                         "several times the CPU per request, taken from the servers)")
    ap.add_argument("--workers", type=int, default=1,
                    help="worker processes of each server (default 1)")
    ap.add_argument("--no-in-process", action="store_true", help="skip the in-process limit")
    ap.add_argument("--json", type=Path, default=None, help="write every figure as JSON")
    ap.add_argument("--keep", action="store_true", help="leave the temporary folder")
    args = ap.parse_args(argv)
    CLIENT["name"] = args.client
    levels_c = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if any(c < 1 for c in levels_c):
        ap.error("--concurrency levels must be >= 1")
    if args.workers < 1:
        ap.error("--workers must be >= 1")

    def _terminated(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")  # so that the servers are stopped

    signal.signal(signal.SIGTERM, _terminated)
    folder = Path(tempfile.mkdtemp(prefix="lifecast-bench-serve-"))
    os.environ["BENTOML_HOME"] = str(folder / "bentoml")  # before any bentoml import
    procs: list[tuple[subprocess.Popen, Any]] = []
    result: dict[str, Any] = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "load_start": _load()},
        "folder": str(folder),
    }
    try:
        info = setup(folder)
        env = info["env"]
        result["setup"] = {"train_s": info["train_s"], "score_s": info["score_s"]}
        ids, names, rows = request_pool(folder, env)
        n_complete = sum(all(v is not None for v in r) for r in rows)
        _log(f"{len(ids)} customers in the request pool ({n_complete} without missing "
             f"features), {len(names)} features")

        limits: dict[str, dict[str, float]] = {}
        if not args.no_in_process:
            _log("timing the in-process limit")
            limits = in_process(folder, env, names, rows[0], ids)
            result["in_process"] = limits

        p1, p2 = _free_port(), _free_port()
        _log(f"starting lifecast serve on {p1} and mlflow models serve on {p2}")
        workers = str(args.workers)
        procs.append(start([str(BIN / "lifecast"), "serve", "--port", str(p1),
                            "--no-access-log", "--workers", workers], folder, env, "ours"))
        procs.append(start([str(BIN / "mlflow"), "models", "serve", "-m", CHAMPION_URI, "-p",
                            str(p2), "-h", "127.0.0.1", "--env-manager", "local", "-w",
                            workers], folder, env, "peer"))
        ready = {"ours": wait_ready(procs[0][0], f"http://127.0.0.1:{p1}/readyz", folder,
                                    "ours"),
                 "peer": wait_ready(procs[1][0], f"http://127.0.0.1:{p2}/health", folder,
                                    "peer")}
        _log(f"ready: {ready}")
        result["ready_s"] = ready

        ours = Target(
            "ours", f"http://127.0.0.1:{p1}/predict",
            [json.dumps({"customer_ids": [c]}).encode() for c in ids],
            {"Authorization": f"Bearer {info['token']}", "Content-Type": "application/json"},
            _ours_ok)
        peer = Target(
            "peer", f"http://127.0.0.1:{p2}/invocations",
            [json.dumps({"dataframe_split": {"columns": names, "data": [row]}}).encode()
             for row in rows],
            {"Content-Type": "application/json"},
            lambda body: "predictions" in json.loads(body))
        # one request each: fail early with the answer when a server refuses the request
        for t in (ours, peer):
            lat, err, _, msgs = asyncio.run(_round(t, 1, 1, 0, 30))
            if err:
                raise SystemExit(f"{t.name} refused the request: {msgs}")

        levels: dict[int, dict[str, dict[str, Any]]] = {}
        for c in levels_c:
            n = args.requests or (400 if c == 1 else 1000)
            _log(f"C={c}: {n} requests per server in {args.rounds} alternating rounds "
                 f"(load {_load()})")
            levels[c] = run_level([ours, peer], c, n, args.rounds, args.max_seconds)
            for name, r in levels[c].items():
                _log(f"  {name}: p50 {_fmt(r['p50_ms'])} ms, p99 {_fmt(r['p99_ms'])} ms, "
                     f"{_fmt(r['throughput_rps'], 0)} req/s, {r['errors']} errors"
                     + (f" {r['error_samples']}" if r["errors"] else ""))
        result["levels"] = {str(c): v for c, v in levels.items()}
    finally:
        for proc, log in procs:
            stop_group(proc)
            log.close()
        result["load_end"] = _load()
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
        else:
            _log(f"kept {folder}")

    result["client"], result["workers"] = args.client, args.workers
    lines = [f"cpus {os.cpu_count()}, load {result['machine']['load_start']} at start, "
             f"{result['load_end']} at end; client ({args.client}), both servers "
             f"({args.workers} worker(s) each) share the machine", "",
             *report(levels, limits)]
    print("\n".join(lines))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
