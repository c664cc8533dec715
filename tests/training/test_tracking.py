"""MLflow tracking, registry and champion rule (`training.tracking`) on a real SQLite store.

One store and one small trained model set per module (creating a SQLite store and training
take most of the time). The read-only tests look at the first run; the champion scenario
(a worse model, ``always``, `promote_run`) is one test that ends by promoting the first run
again, so the others see the same champions whatever order they run in.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import os
import re
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking._tracking_service import utils as tracking_utils
from mlflow.utils import logging_utils

from features.config import FeatureConfig
from features.errors import TemporaryFailure
from features.registry import DEFINITIONS_VERSION
from training import tracking
from training.metrics import churn_metrics, compare_table, roc_auc
from training.models import ChurnModel, TrainConfig, ValueModel
from training.pipeline import TrainResult, predict_customers, train

ROOT = Path(__file__).resolve().parents[2]
AS_OF = "2024-01-01"
PLOTS = {
    "churn_calibration", "churn_gains", "clv_decile_value", "churn_feature_importance",
    "clv_feature_importance", "churn_shap_summary", "clv_shap_summary",
}
#: How the champion rule says it scored a champion whose settings differ from the run's.
REFIT = "champion: its settings fit at the evaluation cutoff on this run's data"
FEATURES = FeatureConfig(churn_horizon_days=90, clv_horizon_days=90, snapshot_every_days=30,
                         n_snapshots=6)


def _transactions() -> pd.DataFrame:
    """~1,400 customers over two years (repeat buyers, churners, returns)."""
    path = ROOT / "bench" / "synthetic.py"
    if path.is_file():
        spec = importlib.util.spec_from_file_location("_lifecast_bench_synthetic", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses need the module registered
        spec.loader.exec_module(module)
        return module.generate_transactions(15_000, seed=1, start="2022-01-01", days=730)
    rng = np.random.default_rng(1)  # fallback: a small generator of our own
    rows = []
    for c in range(1_500):
        t = rng.uniform(0, 600)
        end = t + rng.exponential(300)
        rate = rng.gamma(1.0, 1 / 30)
        while t < min(end, 730):
            rows.append((c, pd.Timestamp("2022-01-01") + pd.Timedelta(days=float(t)),
                         float(rng.lognormal(3, 0.6))))
            t += rng.exponential(1 / rate)
    return pd.DataFrame(rows, columns=["customer_id", "timestamp", "amount"])


@pytest.fixture(scope="module")
def trained() -> TrainResult:
    config = TrainConfig(features=FEATURES, n_estimators=200, num_threads=1)
    return train(_transactions(), as_of=AS_OF, config=config)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory):
    """A fresh SQLite store; the environment's MLFLOW_TRACKING_URI is ignored and the global
    tracking URI restored afterwards."""
    workdir = tmp_path_factory.mktemp("mlflow")
    previous = tracking_utils._tracking_uri
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("MLFLOW_TRACKING_URI", raising=False)
        mp.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        mp.setattr(tracking, "_last_set_uri", None)
        uri = tracking.configure(workdir)
        try:
            yield workdir, uri
        finally:
            mlflow.set_tracking_uri(previous)


@pytest.fixture(scope="module")
def first_run(store, trained) -> tracking.RunSummary:
    return tracking.log_training(trained, source="synthetic/transactions.parquet",
                                 run_name="first")


def _eval_rows(result: TrainResult, kind: str) -> pd.DataFrame:
    key = "churn" if kind == "churn" else "value"
    return result.frame[result.frame["cutoff"] == result.eval_cutoffs[key]]


BAD_CHURN = TrainConfig(features=FEATURES, n_estimators=1, num_leaves=2, max_depth=1,
                        learning_rate=0.001, num_threads=1)


def _with_bad_churn_model(result: TrainResult) -> tuple[TrainResult, float]:
    """The same run with deliberately weak churn settings (one stump, tiny learning rate),
    fitted as `train` fits: once on every snapshot (registered) and once at the evaluation
    cutoff (evaluated)."""
    bad = ChurnModel(BAD_CHURN).fit(result.frame)
    bad_eval = ChurnModel(BAD_CHURN).fit(result.eval_frames["churn"])
    ev = _eval_rows(result, "churn")
    y = ev["churned"].astype(int).to_numpy()
    p = bad_eval.predict_proba(ev)
    base = ev["bg_p_no_purchase"].to_numpy(dtype="float64")
    evaluation = dict(result.evaluation)
    evaluation["churn"] = compare_table(churn_metrics(y, p), churn_metrics(y, base))
    preds = dict(result.eval_predictions)
    preds["churn"] = preds["churn"].assign(model=p)
    worse = dataclasses.replace(
        result, models=dataclasses.replace(result.models, churn=bad), evaluation=evaluation,
        eval_predictions=preds, eval_models={**result.eval_models, "churn": bad_eval},
    )
    return worse, roc_auc(y, p)


@contextlib.contextmanager
def _http_server(handler: type) -> Iterator[str]:
    """A local HTTP server answering with ``handler`` in a thread; yields its URL."""
    import http.server
    import threading

    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _aliases(kind: str) -> dict[str, str]:
    model = mlflow.MlflowClient().get_registered_model(tracking.MODEL_NAMES[kind])
    return {alias: str(version) for alias, version in model.aliases.items()}


# -------------------------------------------------------------------------------- no store


def test_import_has_no_side_effects(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    code = ("import os, mlflow, training.tracking; "
            "print(mlflow.is_tracking_uri_set(), sorted(os.listdir('.')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, text=True,
                         capture_output=True, check=True)
    assert out.stdout.strip() == "False []"


def test_helpers() -> None:
    assert tracking._redact("postgresql://ana:s3cret@db:5432/shop") == (
        "postgresql://ana:***@db:5432/shop")
    assert tracking._redact("data/tx.parquet") == "data/tx.parquet"  # no such file here
    here = Path(tracking.__file__)  # a file that exists, named relatively: made absolute
    relative = os.path.relpath(here)
    assert not Path(relative).is_absolute()
    assert tracking._redact(relative) == str(here.resolve())
    assert tracking._redact("postgresql+psycopg://ana@db/shop?password=s3cret&sslmode=require"
                            ) == "postgresql+psycopg://ana@db/shop?password=***&sslmode=require"
    assert tracking._fmt_pair(0.8123, 0.7904) == ("0.812", "0.790")
    assert tracking._fmt_pair(0.81231, 0.81234) == ("0.812310", "0.812340")
    assert tracking._fmt_pair(0.81231, 0.81239) == ("0.8123", "0.8124")
    with pytest.raises(ValueError, match="kind must be one of"):
        tracking.LifecastModel("ltv")


# -------------------------------------------------------------------------------- the store


def test_configure(store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    workdir, uri = store
    assert uri == f"sqlite:///{workdir.resolve() / 'mlflow.db'}"
    assert (workdir / "mlflow.db").is_file()
    exp = mlflow.MlflowClient().get_experiment_by_name("lifecast")
    assert exp.artifact_location == (workdir.resolve() / "mlartifacts").as_uri()
    # the active experiment: the user's own mlflow.search_runs() sees lifecast's runs
    assert mlflow.get_experiment(mlflow.tracking.fluent._get_experiment_id()).name == "lifecast"
    # the environment wins over the working folder (nothing is made there)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert tracking.configure(tmp_path / "elsewhere") == uri
    assert not (tmp_path / "elsewhere").exists()
    # and again in the same process (train --tune configures twice): still the user's
    assert tracking.configure(tmp_path / "elsewhere") == uri
    assert not (tmp_path / "elsewhere").exists()


def test_tracking_stores_that_cannot_work_are_refused_before_any_work(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A folder URI (MLflow 3 refuses the file store), a SQLite file that cannot be
    written, or one that does not exist for the commands that only use models: one clear
    error, checked by creating nothing, instead of MLflow's retries and traceback after
    the fit."""
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    for folder_uri in (str(tmp_path), f"file://{tmp_path}"):
        monkeypatch.setenv("MLFLOW_TRACKING_URI", folder_uri)
        with pytest.raises(ValueError, match="is a folder \\(MLflow's file store\\), which "
                                             "MLflow 3 no longer opens: use a SQLite file, e.g. "
                                             f"MLFLOW_TRACKING_URI=sqlite:///{tmp_path}/mlflow.db"):
            tracking.check_tracking_store()
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{blocker}/mlflow.db")
    with pytest.raises(ValueError, match="the MLflow tracking store at MLFLOW_TRACKING_URI "
                                         "cannot be written: cannot write .* is a file"):
        tracking.check_tracking_store()
    with pytest.raises(LookupError, match="no MLflow tracking store at MLFLOW_TRACKING_URI: "):
        tracking.check_tracking_store(create=False)
    fresh = f"sqlite:///{tmp_path}/new/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", fresh)
    assert tracking.check_tracking_store() == fresh
    assert not (tmp_path / "new").exists()  # nothing made
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(LookupError, match="no MLflow tracking store here: "):
        tracking.check_tracking_store(tmp_path, create=False)


def test_a_tracking_server_nobody_answers_or_an_unknown_scheme_is_refused_at_once(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MLFLOW_TRACKING_URI=http://127.0.0.1:<port nobody listens on> made `lifecast models`
    (score, train, promote) retry for over 4 minutes and then end in MLflow's traceback with
    exit code 1; `garbage://x` ended in a traceback too. Now one error naming
    MLFLOW_TRACKING_URI, at once: the CLI exits 75 (EX_TEMPFAIL, a server that is down:
    retry later; it exited 2, as for a URI to fix), 2 for a host name that does not
    resolve. A server that answers, whatever it answers, passes the check."""
    import http.server
    import socket
    import time

    from typer.testing import CliRunner

    from serving.cli import app

    monkeypatch.setattr(tracking, "_last_set_uri", None)
    monkeypatch.setattr(tracking, "_last_was_users", False)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = f"http://127.0.0.1:{port}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", down)
    with pytest.raises(tracking.TrackingServerUnreachableError,
                       match=f"the MLflow tracking server at MLFLOW_TRACKING_URI="
                             f"{down} does not answer: .*Start it, or "):
        tracking.check_tracking_store(create=False)
    monkeypatch.chdir(tmp_path)
    started = time.monotonic()
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 75 and time.monotonic() - started < 60
    assert f"MLFLOW_TRACKING_URI={down} does not answer" in res.output
    assert res.output.rstrip().endswith(
        ". This is temporary: running the command again later may succeed"), res.output
    assert "Traceback" not in res.output and not list(tmp_path.iterdir())

    misspelt = "http://no-such-host.invalid:5000"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", misspelt)
    with pytest.raises(ValueError, match=f"MLFLOW_TRACKING_URI={misspelt} does not answer: "
                                         f".*no-such-host.invalid") as info:
        tracking.check_tracking_store(create=False)
    assert not isinstance(info.value, TemporaryFailure)
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 2, res.output

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "garbage://x")
    with pytest.raises(ValueError, match="MLFLOW_TRACKING_URI=garbage://x: MLflow has no "
                                         "tracking store of scheme 'garbage'"):
        tracking.check_tracking_store(create=False)

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            asked.append(self.path)
            self.send_error(501)

    monkeypatch.setattr(tracking, "_servers_answered", set())
    with _http_server(Handler) as up:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", up)
        assert tracking.check_tracking_store(create=False) == up  # a 501 is an answer
        # asked once per process (`train` checks, then configures, twice with --tune)
        assert tracking.check_tracking_store(create=False) == up and asked == ["/health"]
        # ... but no MLflow server: MLflow's error in one line, not its traceback
        res = CliRunner().invoke(app, ["models"])
        assert res.exit_code == 2, res.output
        assert f"error: the MLflow tracking store {up} failed: " in res.output
        assert "Traceback" not in res.output
    # a server that answered the check, then went away: MLflow's own request fails (after
    # its retries, none here), which is temporary too
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 75, res.output
    assert res.output.startswith(f"error: the MLflow tracking server at {up} stopped "
                                 f"answering: "), res.output
    assert "Traceback" not in res.output


@pytest.mark.parametrize("status", [408, 429, 502, 503, 504, 500])
def test_a_tracking_server_a_proxy_says_is_down_is_temporary(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, status: int) -> None:
    """A tracking server behind a proxy (nginx, a cloud load balancer) that is restarting or
    down is answered for with 502, 503 or 504: `lifecast models` (score, train, promote)
    exited 2 with 'the MLflow tracking store ... failed: ... too many 503 error responses.
    Check MLFLOW_TRACKING_URI', as for a URI to fix. Now it exits 75 (temporary) saying the
    server does not answer, whether the proxy says so at once (the check) or after the
    check passed (MLflow's own request). So do 408 and 429 (a server or proxy that gave up
    waiting for the request, or limits the request rate), which exited 2 too. A 500 is the
    server's own failure: still 2."""
    import http.server

    from typer.testing import CliRunner

    from serving.cli import app

    temporary = status != 500
    answers = {"/health": status}

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            self.send_error(answers.get(self.path, status))

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args: object) -> None:
            pass

    monkeypatch.setattr(tracking, "_last_set_uri", None)
    monkeypatch.setattr(tracking, "_last_was_users", False)
    monkeypatch.setattr(tracking, "_servers_answered", set())
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.chdir(tmp_path)
    with _http_server(Proxy) as up:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", up)
        why = {408: "the server or a proxy in front of it gave up waiting for the request",
               429: "the server or a proxy in front of it limits how often it is asked"}.get(
            status, "what a proxy or load balancer in front of it answers while it is down or "
                    "restarting")
        said = f"HTTP {status} {http.HTTPStatus(status).phrase} ({why})"
        if temporary:
            with pytest.raises(tracking.TrackingServerUnreachableError) as info:
                tracking.check_tracking_store(create=False)
            assert str(info.value) == (
                f"the MLflow tracking server at MLFLOW_TRACKING_URI={up} does not answer: "
                f"{said}. Start it, or point MLFLOW_TRACKING_URI at the one that holds the "
                f"models")
            res = CliRunner().invoke(app, ["models"])
            assert res.exit_code == 75, res.output
            assert res.output.rstrip().endswith(
                ". This is temporary: running the command again later may succeed")
        answers["/health"] = 200  # the check passes; MLflow's own requests get `status`
        res = CliRunner().invoke(app, ["models"])
        assert "Traceback" not in res.output
        if temporary:
            assert res.exit_code == 75, res.output
            assert res.output.startswith(f"error: the MLflow tracking server at {up} stopped "
                                         f"answering: {said}"), res.output
        else:
            assert res.exit_code == 2, res.output
            assert res.output.startswith(f"error: the MLflow tracking store {up} failed: ")


def test_log_training_rejects_unknown_promote(store, trained) -> None:
    with pytest.raises(ValueError, match="promote must be one of auto, always, never"):
        tracking.log_training(trained, source="x", promote="sometimes")


def test_run_logs_params_metrics_data_and_plots(first_run, trained, tmp_path: Path) -> None:
    client = mlflow.MlflowClient()
    run = client.get_run(first_run.run_id)
    params, metrics, tags = run.data.params, run.data.metrics, run.data.tags
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "first"
    assert params["features.churn_horizon_days"] == "90"
    assert params["n_estimators"] == "200"
    assert params["features.windows_days"] == "[30, 90, 180, 365]"
    assert params["as_of"] == tags["as_of"] == "2024-01-01 00:00:00"
    assert params["eval_cutoff_churn"] == str(trained.eval_cutoffs["churn"])
    assert tags["eval_cutoff_clv"] == str(trained.eval_cutoffs["value"])
    assert params["data.first_event"].startswith("2022-01-01")
    for key, table in trained.evaluation.items():
        key = {"value": "clv"}.get(key, key)  # MLflow names the value model's "clv"
        for rec in table.to_dict("records"):
            assert metrics[f"{key}_{rec['metric']}"] == pytest.approx(rec["model"])
            assert metrics[f"baseline_{key}_{rec['metric']}"] == pytest.approx(rec["baseline"])
    assert {"churn_roc_auc", "baseline_churn_roc_auc", "clv_normalized_gini"} <= set(metrics)
    value = trained.models.value
    assert metrics["clv_level"] == pytest.approx(value.level_)
    assert metrics["clv_anchor"] == pytest.approx(value.anchor_)
    assert metrics["clv_baseline_ratio"] == pytest.approx(value.baseline_ratio_)

    (inp,) = run.inputs.dataset_inputs
    assert inp.dataset.name == "transactions"
    assert {t.key: t.value for t in inp.tags}["mlflow.data.context"] == "training"
    described = json.loads(inp.dataset.profile)
    report = trained.data_report.to_dict()
    used = trained.data_used  # the rows before as-of: here the whole log
    assert used["rows"] == report["rows_kept"] and used["customers"] == report["customers"]
    assert described["num_rows"] == used["rows"] == int(params["data.rows"])
    assert described["customers"] == used["customers"] == int(params["data.customers"])
    assert described["first_event"] == str(used["first_event"]) == params["data.first_event"]
    assert described["last_event"] == str(used["last_event"]) == params["data.last_event"]
    assert described["source_rows"] == report["rows_kept"] == int(params["data.source_rows"])
    assert described["snapshots"] == trained.frame["cutoff"].nunique()
    schema = json.loads(inp.dataset.schema)["mlflow_colspec"]
    assert [c["name"] for c in schema] == list(report["columns"])
    assert "synthetic/transactions.parquet" in inp.dataset.source
    # the digest of the rows read (`Transactions.profile_before`, tested there)
    assert inp.dataset.digest == used["digest"] == tracking._data_digest(trained)

    top = {a.path for a in client.list_artifacts(first_run.run_id)}
    assert {"config.json", "features.json", "data_report.json", "plots"} <= top
    plots = {Path(a.path).stem for a in client.list_artifacts(first_run.run_id, "plots")}
    assert plots == PLOTS
    assert "plots_skipped" not in tags
    assert plt.get_fignums() == []  # every figure drawn for the run was closed
    local = Path(mlflow.artifacts.download_artifacts(run_id=first_run.run_id,
                                                     artifact_path="plots/churn_gains.png",
                                                     dst_path=str(tmp_path)))
    assert local.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    features = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=first_run.run_id, artifact_path="features.json",
        dst_path=str(tmp_path))).read_text())["features"]
    by_name = {f["name"]: f for f in features}
    assert set(trained.models.churn.feature_names_) <= set(by_name)
    assert by_name["days_since_last"]["description"]
    assert by_name["bg_p_alive"]["models"] == ["churn", "clv"]
    config = json.loads(Path(mlflow.artifacts.download_artifacts(
        run_id=first_run.run_id, artifact_path="config.json",
        dst_path=str(tmp_path))).read_text())
    assert TrainConfig(**config) == trained.models.config


def test_registered_models_have_signatures_and_tags(first_run, trained) -> None:
    client = mlflow.MlflowClient()
    for kind, name in tracking.MODEL_NAMES.items():
        (mv,) = client.search_model_versions(f"run_id='{first_run.run_id}' and name='{name}'")
        assert str(mv.version) == first_run.versions[kind]
        assert mv.tags["run_id"] == first_run.run_id
        assert mv.tags["as_of"] == "2024-01-01 00:00:00"
        key = "churn" if kind == "churn" else "value"
        assert mv.tags["eval_cutoff"] == str(trained.eval_cutoffs[key])
        metric = tracking.PRIMARY_METRIC[kind]
        assert mv.tags["primary_metric"] == metric
        expected = trained.evaluation[key].set_index("metric").loc[metric, "model"]
        assert float(mv.tags[metric]) == pytest.approx(expected, abs=1e-6)
        info = mlflow.models.get_model_info(f"models:/{name}/{mv.version}")
        model = trained.models.churn if kind == "churn" else trained.models.value
        assert info.signature.inputs.input_names() == model.feature_names_
        assert info.signature.outputs.input_names() == [tracking.OUTPUT_NAME[kind]]
        assert info.saved_input_example_info is not None


def test_first_run_becomes_champion(first_run) -> None:
    assert first_run.promoted == {"churn": True, "clv": True}
    for kind in tracking.KINDS:
        assert first_run.decision[kind]["message"].startswith("promoted: no champion yet")
        assert _aliases(kind) == {"champion": first_run.versions[kind]}
    tags = mlflow.MlflowClient().get_run(first_run.run_id).data.tags
    assert tags["decision_churn"].startswith("promoted: no champion yet (roc_auc 0.")


def test_champion_pyfunc_returns_probabilities(first_run, trained) -> None:
    assert _aliases("churn")["champion"] == first_run.versions["churn"]
    ev = _eval_rows(trained, "churn")
    names = trained.models.churn.feature_names_
    churn = mlflow.pyfunc.load_model("models:/lifecast-churn@champion")
    p = churn.predict(ev[names].astype("float64"))
    assert isinstance(p, pd.Series) and p.name == "churn_probability"
    assert ((p >= 0) & (p <= 1)).all()
    assert p.nunique() > 10  # probabilities, not 0/1 labels
    np.testing.assert_allclose(p.to_numpy(), trained.models.churn.predict_proba(ev), rtol=1e-12)
    # extra columns are ignored
    extra = ev[["customer_id", *names]].astype({n: "float64" for n in names})
    np.testing.assert_allclose(churn.predict(extra).to_numpy(), p.to_numpy())

    clv = mlflow.pyfunc.load_model("models:/lifecast-clv@champion")
    ev_v = _eval_rows(trained, "clv")
    v = clv.predict(ev_v[trained.models.value.feature_names_].astype("float64"))
    np.testing.assert_allclose(v.to_numpy(), trained.models.value.predict(ev_v), rtol=1e-12)


# What a Python without lifecast runs: the editable install's import hooks and the checkout
# are taken off the path, then the registered model is loaded from the store and scores the
# rows given on stdin.
_BARE_PYTHON = """
import importlib.util, io, sys
def mine(hook): return "__editable__" in getattr(hook, "__module__", "")
sys.meta_path[:] = [f for f in sys.meta_path if not mine(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if not mine(h)]
sys.path_importer_cache.clear()
sys.path[:] = [p for p in sys.path if p not in ("", {repo!r})]
assert importlib.util.find_spec("training") is None, "lifecast is still importable"
import mlflow, pandas as pd
model = mlflow.pyfunc.load_model("models:/lifecast-churn@champion")
frame = pd.read_json(io.StringIO(sys.stdin.read()), orient="split").astype("float64")
print(model.predict(frame).to_json(orient="values", double_precision=15))
"""


def test_the_registered_model_loads_where_lifecast_is_not_installed(
        first_run, trained, store, tmp_path: Path) -> None:
    """The model carries its own code (MLflow ``code_paths``): `mlflow models serve` or a
    bare environment with the logged requirements can load it."""
    import json
    import subprocess
    import sys

    repo = str(Path(tracking.__file__).resolve().parent.parent)
    ev = _eval_rows(trained, "churn")
    frame = ev[trained.models.churn.feature_names_].astype("float64").head(50)
    env = {**os.environ, "MLFLOW_TRACKING_URI": store[1], "PYTHONPATH": ""}
    done = subprocess.run([sys.executable, "-c", _BARE_PYTHON.format(repo=repo)],
                          input=frame.to_json(orient="split"), capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    got = json.loads(done.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, trained.models.churn.predict_proba(ev.head(50)), rtol=1e-12)
    # the copies hold the modules only: no byte code, no demo data
    code = Path(mlflow.artifacts.download_artifacts(
        f"models:/lifecast-churn/{first_run.versions['churn']}",
        dst_path=str(tmp_path))) / "code"
    assert {p.name for p in code.iterdir()} == {"features", "training"}
    assert not list(code.rglob("*.pyc")) and not list(code.rglob("*.parquet"))


def test_the_code_copies_of_a_read_only_install_can_be_deleted(tmp_path: Path) -> None:
    """Installed read-only (a container image, a root-owned venv), the packages' files and
    folders have no write bit; copies that kept it could not be deleted by a non-root
    user, and `lifecast train` failed in MLflow's temporary folder after fitting. The
    copies get the modes of new files, without byte code or the demo data."""
    import stat

    root = tmp_path / "site-packages"
    for rel in ("features/__init__.py", "features/data/sample.parquet",
                "features/__pycache__/x.cpython-311.pyc", "training/__init__.py",
                "training/sub/deep.py"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x = 1\n")
    for path in [root, *root.rglob("*")]:
        path.chmod(0o555 if path.is_dir() else 0o444)
    try:
        paths = tracking._code_paths(tmp_path / "code", root=root)
    finally:
        for path in [root, *root.rglob("*")]:
            path.chmod(0o755)
    assert [Path(p).name for p in paths] == ["features", "training"]
    copied = sorted(str(p.relative_to(tmp_path / "code"))
                    for p in (tmp_path / "code").rglob("*") if p.is_file())
    assert copied == ["features/__init__.py", "training/__init__.py", "training/sub/deep.py"]
    for path in (tmp_path / "code").rglob("*"):
        assert path.stat().st_mode & stat.S_IWUSR, f"{path} is read-only"


def trained_customers(run: tracking.RunSummary) -> int:
    """The customers before as-of of the run's training log (its ``data.customers``)."""
    return int(mlflow.get_run(run.run_id).data.params["data.customers"])


def test_the_pyfunc_scores_build_features_output_as_lifecast_scores(first_run) -> None:
    """A user's own pipeline: build_features at a cutoff, `model_input`, the registered
    pyfunc, and the same predictions as `predict_customers` on the same customers."""
    from features import build_features
    from training.models import add_baseline_features

    assert _aliases("churn")["champion"] == first_run.versions["churn"]
    feats = build_features(_transactions(), AS_OF, config=FEATURES)
    assert any(str(feats[c].dtype) == "Int64" for c in feats.columns)
    churn = mlflow.pyfunc.load_model("models:/lifecast-churn@champion")
    clv = mlflow.pyfunc.load_model("models:/lifecast-clv@champion")
    with pytest.raises(Exception, match="Int64"):  # why model_input exists
        churn.predict(add_baseline_features(feats, FEATURES))
    X = tracking.model_input(feats, churn)  # the settings come from the model's metadata
    assert X.index.names == ["customer_id", "cutoff"] and len(X) == len(feats)
    assert list(X.columns) == churn.metadata.get_input_schema().input_names()
    assert (X.dtypes == "float64").all()
    pd.testing.assert_frame_equal(X, tracking.model_input(feats, FEATURES))
    expected = predict_customers(tracking.load_champions(), add_baseline_features(
        feats, FEATURES), pd.Timestamp(AS_OF))
    p = churn.predict(X)
    assert p.index.equals(X.index)  # the predictions keep the customers' ids
    np.testing.assert_allclose(p.to_numpy(), expected["churn_probability"].to_numpy(),
                               rtol=1e-9)
    np.testing.assert_allclose(clv.predict(X).to_numpy(),
                               expected["predicted_clv"].to_numpy(), rtol=1e-9)
    with pytest.raises(ValueError, match="these model columns are missing: frequency"):
        tracking.model_input(feats.drop(columns="frequency"), FEATURES)
    with pytest.raises(ValueError, match="needs the models' FeatureConfig"):
        tracking.model_input(feats, object())

    # a subset: fitted on its own rows the baseline differs, and model_input says so; with
    # population= the subset gets exactly the whole population's predictions
    subset = feats.iloc[::7]
    with pytest.warns(UserWarning, match=(
            rf"^model_input fits the BG/NBD \+ Gamma-Gamma features on the rows it is given: "
            rf"{len(subset):,} customers at cutoff {pd.Timestamp(AS_OF)}, where the models "
            rf"were fit on {trained_customers(first_run):,}\. For a subset")):
        alone = churn.predict(tracking.model_input(subset, churn))
    assert not np.allclose(alone.to_numpy(), p.loc[alone.index].to_numpy())
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        X_sub = tracking.model_input(subset, churn, population=feats)
    assert not [w for w in quiet if "model_input" in str(w.message)]
    assert X_sub.index.equals(pd.MultiIndex.from_frame(subset[["customer_id", "cutoff"]]))
    np.testing.assert_array_equal(churn.predict(X_sub).to_numpy(), p.loc[X_sub.index])
    stranger = feats.iloc[:3].assign(customer_id=-1)
    with pytest.raises(ValueError, match=r"model_input: 3 rows of features are not in "
                                         r"population, e\.g\. customer -1 at cutoff "):
        tracking.model_input(stranger, churn, population=feats)
    with pytest.raises(ValueError, match=r"model_input: 1 row of features is not in "):
        tracking.model_input(stranger.iloc[:1], churn, population=feats)  # not "1 rows are"


def test_champion_rule(first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """A worse churn model does not replace the champion under "auto"; "always" does;
    promote_run puts the first run back."""
    client = mlflow.MlflowClient()
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)  # tested above
    worse, bad_auc = _with_bad_churn_model(trained)
    good_auc = first_run.decision["churn"]["new"]["roc_auc"]
    assert bad_auc < good_auc - 0.01, (bad_auc, good_auc)

    second = tracking.log_training(worse, source="synthetic", run_name="worse")
    assert second.promoted == {"churn": False, "clv": False}
    v1 = first_run.versions
    assert _aliases("churn") == {"champion": v1["churn"]}
    assert _aliases("clv") == {"champion": v1["clv"]}
    d = second.decision["churn"]
    assert d["champion_version"] == v1["churn"]
    assert d["new"]["roc_auc"] == pytest.approx(bad_auc)
    assert d["champion"]["roc_auc"] == pytest.approx(good_auc)
    assert d["message"] == (f"kept champion v{v1['churn']}: "
                            f"roc_auc {bad_auc:.3f} <= {good_auc:.3f} ({REFIT})")
    # the unchanged value settings, trained as of the same day as the champion: equal
    # scores, and not newer data, so the champion stays
    clv = second.decision["clv"]
    gini = clv["new"]["normalized_gini"]
    assert clv["champion"]["normalized_gini"] == gini
    assert clv["message"] == (
        f"kept champion v{v1['clv']}: normalized_gini {gini:.3f} for both (the same settings "
        f"as this run, champion as of {AS_OF}, this run as of {AS_OF}): not trained on later "
        f"data")
    run = client.get_run(second.run_id)
    assert run.data.tags["decision_churn"] == d["message"]
    assert run.data.tags["promoted_churn"] == "false"
    assert run.data.metrics["champion_churn_roc_auc"] == pytest.approx(good_auc)
    assert run.data.metrics["churn_roc_auc"] == pytest.approx(bad_auc)
    assert "champion_clv_normalized_gini" in run.data.metrics
    mv = client.get_model_version("lifecast-churn", second.versions["churn"])
    assert mv.tags["decision"] == d["message"]

    third = tracking.log_training(worse, source="synthetic", promote="always")
    assert third.promoted == {"churn": True, "clv": True}
    assert third.decision["churn"]["message"] == (
        f"promoted (always): roc_auc {bad_auc:.3f} <= {good_auc:.3f} ({REFIT})")
    assert _aliases("churn") == {"champion": third.versions["churn"]}
    assert _aliases("clv") == {"champion": third.versions["clv"]}

    never = tracking.log_training(trained, source="synthetic", promote="never")
    assert never.promoted == {"churn": False, "clv": False}
    assert never.decision["churn"]["message"] == (
        f"not promoted (never): roc_auc {good_auc:.3f} > {bad_auc:.3f} ({REFIT})")
    assert _aliases("churn") == {"champion": third.versions["churn"]}

    assert tracking.promote_run(first_run.run_id) == v1
    assert _aliases("churn") == {"champion": v1["churn"]}
    assert _aliases("clv") == {"champion": v1["clv"]}
    # `lifecast models` shows how v1 became champion again, and what was decided in training
    listed = tracking.list_models().set_index(["model", "version"])
    decision = listed.loc[("lifecast-churn", int(v1["churn"])), "decision"]
    assert re.fullmatch(r"promoted by hand \d{4}-\d\d-\d\d \d\d:\d\d UTC \(when trained: "
                        r"promoted: no champion yet \(roc_auc 0\.\d+\)\)", decision), decision
    for unknown in ("0" * 32, "not a run id'"):
        with pytest.raises(ValueError, match="no registered models come from run .*"
                                             "`lifecast models` lists the versions"):
            tracking.promote_run(unknown)


def test_a_better_model_is_promoted_and_the_champion_is_rescored(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Under "auto" a better churn model takes the alias from a worse champion; and the
    champion is scored again on the new run's own evaluation snapshot, not read from the
    metrics of the run that made it champion."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    worse, bad_auc = _with_bad_churn_model(trained)
    weak = tracking.log_training(worse, source="synthetic", promote="always")
    assert _aliases("churn") == {"champion": weak.versions["churn"]}

    better = tracking.log_training(trained, source="synthetic")  # promote="auto"
    good_auc = better.decision["churn"]["new"]["roc_auc"]
    assert better.promoted["churn"] is True
    assert better.decision["churn"]["champion_version"] == weak.versions["churn"]
    assert better.decision["churn"]["message"] == (
        f"promoted: roc_auc {good_auc:.3f} > {bad_auc:.3f} ({REFIT})")
    assert _aliases("churn") == {"champion": better.versions["churn"]}

    # A run whose evaluation snapshot holds only every other customer: the champion (the
    # settings of `better`, the same as this run's) is scored on those rows, so its AUC is
    # not the stored one.
    eval_cut = trained.eval_cutoffs["churn"]
    at_eval = trained.frame.index[trained.frame["cutoff"] == eval_cut]
    half = dataclasses.replace(trained, frame=trained.frame.drop(at_eval[1::2]))
    rows = _eval_rows(half, "churn")
    expected = roc_auc(rows["churned"].astype(int).to_numpy(),
                       trained.eval_models["churn"].predict_proba(rows))
    assert abs(expected - good_auc) > 1e-4, "the half snapshot must score differently"
    rescored = tracking.log_training(half, source="synthetic", promote="never")
    assert rescored.decision["churn"]["champion"]["roc_auc"] == pytest.approx(expected,
                                                                            rel=1e-12)
    assert _aliases("churn") == {"champion": better.versions["churn"]}

    assert tracking.promote_run(first_run.run_id) == first_run.versions
    assert _aliases("churn") == {"champion": first_run.versions["churn"]}


def test_better_settings_trained_on_older_data_do_not_replace_the_champion(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Better settings win the comparison (both fit at the evaluation cutoff), but a model
    trained a month before the champion would replace it with staler knowledge: auto keeps
    the champion and says how to promote the settings."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    worse, bad_auc = _with_bad_churn_model(trained)  # weak settings, as of AS_OF
    weak = tracking.log_training(worse, source="synthetic", promote="always")
    earlier = train(_transactions(), as_of="2023-12-01", config=trained.models.config)
    run = tracking.log_training(earlier, source="synthetic")  # promote="auto"
    decision = run.decision["churn"]
    assert decision["new"]["roc_auc"] > decision["champion"]["roc_auc"]
    assert run.promoted["churn"] is False
    assert decision["message"].startswith(f"kept champion v{weak.versions['churn']}: roc_auc ")
    assert decision["message"].endswith(
        f"but this run was trained as of 2023-12-01, before the champion (as of {AS_OF}): "
        f"train these settings on the newer data to promote them (or promote='always')")
    assert _aliases("churn") == {"champion": weak.versions["churn"]}
    # promoted by hand all the same: done, with a word on what it has not seen
    with pytest.warns(UserWarning) as caught:
        assert tracking.promote_run(run.run_id) == run.versions
    assert (f"lifecast-churn v{run.versions['churn']} was trained as of 2023-12-01, before the "
            f"champion it replaces (v{weak.versions['churn']}, as of {AS_OF}): it has not "
            f"learned what happened after 2023-12-01. To serve its settings on the newer data, "
            f"train them again (lifecast train)") in [str(w.message) for w in caught]
    assert tracking.promote_run(first_run.run_id) == first_run.versions


def test_the_same_settings_trained_on_later_data_replace_the_champion(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scheduled retrain (the champion's settings, a later as-of date) scores the same as
    the champion's settings by construction and takes the alias; an earlier one does not.
    The champion here ran on another number of threads, which fits the same models (so it
    is the same settings: the retrain was kept out on a tie before)."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    config = trained.models.config
    other_threads = config.model_copy(update={"num_threads": 2 if config.num_threads == 1
                                              else 1})
    earlier = train(_transactions(), as_of="2023-12-01", config=other_threads)
    same = train(_transactions(), as_of="2023-12-01", config=config)
    for kind in earlier.evaluation:  # threads: no change
        pd.testing.assert_frame_equal(earlier.evaluation[kind], same.evaluation[kind])
    for kind in ("churn", "value"):  # the same trees (the text ends with the parameters)
        trees = [getattr(r.models, kind).booster_.model_to_string().split("\nparameters:")[0]
                 for r in (earlier, same)]
        assert trees[0] == trees[1] and len(trees[0]) > 1000
    old = tracking.log_training(earlier, source="synthetic", promote="always")
    run = tracking.log_training(trained, source="synthetic")  # as of AS_OF, a month later
    assert run.promoted == {"churn": True, "clv": True}
    # the default name tells runs of other dates, horizons or tuning apart
    names = {r.info.run_id: r.info.run_name for r in
             mlflow.MlflowClient().search_runs([mlflow.get_run(run.run_id).info.experiment_id])}
    # (numbered: earlier tests of this module logged runs of the same name)
    assert re.fullmatch(f"train {AS_OF} churn 90d clv {FEATURES.clv_horizon_days}d( #\\d+)?",
                        names[run.run_id])
    assert names[old.run_id].startswith("train 2023-12-01 churn 90d")
    auc = run.decision["churn"]["new"]["roc_auc"]
    assert run.decision["churn"]["champion"]["roc_auc"] == auc
    assert run.decision["churn"]["message"] == (
        f"promoted: roc_auc {auc:.3f} for both (the same settings as this run, champion as "
        f"of 2023-12-01, this run as of {AS_OF}): trained on later data")
    again = tracking.log_training(earlier, source="synthetic")
    assert again.promoted == {"churn": False, "clv": False}
    assert again.decision["churn"]["champion_version"] == run.versions["churn"]
    assert old.versions != run.versions
    assert tracking.promote_run(first_run.run_id) == first_run.versions


def test_a_run_on_other_data_does_not_replace_the_champion_unless_told(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same settings on another log (here the same shop's log two months later in every
    timestamp: its events before the champion's as-of differ) with a later as-of would win
    as a scheduled retrain; auto keeps the champion and says why, always promotes. The
    same log cut earlier or extended is the same log (the other champion-rule tests)."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    other = _transactions()
    other["timestamp"] += pd.Timedelta(days=61)
    later = pd.Timestamp(AS_OF) + pd.Timedelta(days=61)
    result = train(other, as_of=later, config=trained.models.config)
    cv = first_run.versions["churn"]
    run = tracking.log_training(result, source="other.parquet")  # promote="auto"
    assert run.promoted == {"churn": False, "clv": False}
    message = run.decision["churn"]["message"]
    assert message.startswith(f"kept champion v{cv}: roc_auc "), message
    assert (f"this run as of {later:%Y-%m-%d}): trained on later data; this run was trained "
            f"on another log than champion v{cv}: its events before {AS_OF} differ from the "
            f"other data's on ") in message
    # log_training's parameter, not `lifecast train`'s flag (which the command line says)
    assert message.endswith(". To replace it with a model of this data use promote='always', "
                            "or keep each data set in its own MLflow store")
    assert _aliases("churn") == {"champion": cv}
    forced = tracking.log_training(result, source="other.parquet", promote="always")
    assert forced.promoted == {"churn": True, "clv": True}
    assert forced.decision["churn"]["message"].startswith("promoted (always): ")
    assert "promote='always'" not in forced.decision["churn"]["message"]
    # the log extended (the same rows before the champion's as-of, more after): no remark
    assert tracking.promote_run(first_run.run_id) == first_run.versions
    d = tracking._decide(mlflow.MlflowClient(), "churn", trained, "auto")
    assert "another log" not in d["message"]


def test_a_champion_that_cannot_be_scored_is_kept_and_the_message_names_the_metric(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    reason = "it predicts a 365-day horizon, this run 90 days"
    monkeypatch.setattr(tracking, "_comparable", lambda kind, champion, result: reason)
    client = mlflow.MlflowClient()
    for kind in tracking.KINDS:
        metric, cv = tracking.PRIMARY_METRIC[kind], first_run.versions[kind]
        d = tracking._decide(client, kind, trained, "auto")
        assert (d["promoted"], d["champion"], d["champion_version"]) == (False, None, cv)
        assert d["message"] == (
            f"kept champion v{cv}: champion v{cv} cannot be scored on this snapshot: "
            f"{reason} (new {metric} {d['new'][metric]:.3f})")
    assert _aliases("churn") == {"champion": first_run.versions["churn"]}


def _registry_state() -> tuple[dict, dict, list, int]:
    """Every lifecast version (name, version) -> run, the aliases, the active runs' ids and
    the number of logged models: what a failed training run must leave as it found."""
    client = mlflow.MlflowClient()
    versions = {(mv.name, str(mv.version)): mv.run_id for name in tracking.MODEL_NAMES.values()
                for mv in client.search_model_versions(f"name='{name}'")}
    aliases = {kind: _aliases(kind) for kind in tracking.KINDS}
    runs = sorted(mlflow.search_runs(search_all_experiments=True)["run_id"])
    experiments = [e.experiment_id for e in client.search_experiments()]
    return versions, aliases, runs, len(client.search_logged_models(experiments))


@pytest.mark.parametrize("fails_at", ["clv registered", "clv champion alias",
                                      "SIGTERM at the clv champion alias"])
def test_a_training_run_that_fails_late_leaves_no_run_version_or_alias(
        first_run, trained, fails_at: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run that fails after the churn model was registered (the disk fills while the value
    model is logged), or after churn's champion alias moved: before, the run stayed (FAILED,
    with metrics), lifecast-churn kept a version of it that `lifecast models` listed and
    `lifecast promote --run` would make champion beside another run's value model, and with
    --promote always the churn alias stayed moved. SIGTERM (a scheduler's timeout) is taken
    back the same way under `features.cli.terminate_as_interrupt`, which every command
    runs in: before, it ended the process on the spot and left the run RUNNING for ever,
    its versions registered and the churn alias moved."""
    import os
    import signal

    from features.cli import Terminated, terminate_as_interrupt

    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    tune = mlflow.MlflowClient().create_run(
        tracking._experiment_id(tracking.experiment_name(None)), run_name="tune").info.run_id
    before = _registry_state()
    if fails_at == "clv registered":
        log_model = mlflow.pyfunc.log_model

        def disk_full(*args, **kwargs):
            if kwargs["name"] == "clv":
                raise OSError(28, "No space left on device")
            return log_model(*args, **kwargs)
        monkeypatch.setattr(mlflow.pyfunc, "log_model", disk_full)
        error = OSError
    else:
        set_alias = mlflow.MlflowClient.set_registered_model_alias

        def refused(self, name, alias, version):
            if name == tracking.MODEL_NAMES["clv"]:
                if fails_at.startswith("SIGTERM"):
                    os.kill(os.getpid(), signal.SIGTERM)
                raise KeyboardInterrupt  # Ctrl-C as the last alias moves
            return set_alias(self, name, alias, version)
        monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", refused)
        error = Terminated if fails_at.startswith("SIGTERM") else KeyboardInterrupt
    with pytest.raises(error), terminate_as_interrupt():
        tracking.log_training(trained, source="synthetic/transactions.parquet",
                              promote="always", tune_run_id=tune)
    monkeypatch.undo()
    assert _registry_state() == before
    assert tracking.TRAIN_RUN_TAG not in mlflow.MlflowClient().get_run(tune).data.tags
    mlflow.MlflowClient().delete_run(tune)


def test_two_runs_at_once_move_both_aliases_as_one_after_the_other(
        store, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two `lifecast train` at once on one store (here two threads, each held after deciding
    until the other has decided too): both found no champion and both moved the aliases, so
    the aliases ended on whichever wrote last, one per kind (or split across the runs), and
    the other run said it was promoted though the champion that replaced it had not seen it.
    Now the second to finish decides again under the registry lock: the run trained on later
    data ends with both aliases, and each run's decision is what happened."""
    import threading

    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    barrier = threading.Barrier(2, timeout=120)
    log_model = tracking._log_model

    def after_both_decided(kind, *args, **kwargs):
        if kind == "churn":
            barrier.wait()
        return log_model(kind, *args, **kwargs)

    monkeypatch.setattr(tracking, "_log_model", after_both_decided)
    # the same models and data, one recorded as trained a month earlier: whichever order
    # they end in, the later one is champion of both kinds (`test_the_same_settings_...`)
    earlier = dataclasses.replace(trained, models=dataclasses.replace(
        trained.models, as_of=pd.Timestamp(AS_OF) - pd.Timedelta(days=31)))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    tracking.configure(tmp_path)  # a store without a champion
    assert tracking.champion_versions() == {"churn": None, "clv": None}
    stream = logging_utils.MLFLOW_LOGGING_STREAM
    try:
        runs: dict[str, tracking.RunSummary] = {}
        errors: list[BaseException] = []

        def run(name: str, result: TrainResult) -> None:
            try:
                runs[name] = tracking.log_training(result, source="synthetic", run_name=name)
            except BaseException as exc:
                errors.append(exc)
                barrier.abort()

        threads = [threading.Thread(target=run, args=args)
                   for args in (("later", trained), ("earlier", earlier))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors
        # MLflow's output is on again: each run's quiet block restored what it found, the
        # other's silenced stream included, so the output stayed off for good
        assert logging_utils.MLFLOW_LOGGING_STREAM is stream
        later, first = runs["later"], runs["earlier"]
        assert tracking.champion_versions() == later.versions
        assert later.promoted == {"churn": True, "clv": True}
        client = mlflow.MlflowClient()
        for kind in tracking.KINDS:
            if first.promoted[kind]:  # it ended first, then the later run replaced it
                assert later.decision[kind]["champion_version"] == first.versions[kind]
            else:  # it ended second, decided again and kept the later run's champion
                assert first.decision[kind]["champion_version"] == later.versions[kind]
                assert first.decision[kind]["message"].startswith(
                    f"kept champion v{later.versions[kind]}: ")
                assert first.decision[kind]["message"].endswith(
                    f" (decided again as the run ended: another run made "
                    f"{tracking.MODEL_NAMES[kind]} v{later.versions[kind]} champion while "
                    f"this one trained)")
            tags = client.get_run(later.run_id).data.tags
            assert tags[f"promoted_{kind}"] == "true"
            assert tags[f"decision_{kind}"] == later.decision[kind]["message"]
            tags = client.get_run(first.run_id).data.tags
            assert tags[f"promoted_{kind}"] == "false"  # never champion, or no longer
            assert tags[f"decision_{kind}"] == (
                first.decision[kind]["message"] if not first.promoted[kind] else
                f"demoted {tags[f'decision_{kind}'][8:28]}: training run {later.run_id} "
                f"made v{later.versions[kind]} champion (when trained: "
                f"{first.decision[kind]['message']})")
        assert tracking.registry_lock_path() == tmp_path / "mlflow.db.lock"
    finally:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
        tracking.configure(store[0])


def test_the_registry_lock_is_one_holder_at_a_time_and_reentrant(store) -> None:
    """While a run holds the champion aliases, another thread (or process) waits, and after
    its wait says which file and what to do; the holder itself may take it again."""
    import threading

    path = tracking.registry_lock_path()
    assert path == Path(store[0]).resolve() / "mlflow.db.lock"
    got: list[BaseException | Path] = []

    def other() -> None:
        try:
            with tracking.registry_lock(wait=0.2) as held:
                got.append(held)
        except ValueError as exc:
            got.append(exc)

    with tracking.registry_lock(), tracking.registry_lock() as held:
        assert held == path
        t = threading.Thread(target=other)
        t.start()
        t.join()
    # temporary by nature: a scheduler runs the command again later (exit 75, run_cli)
    assert isinstance(got[0], tracking.RegistryBusyError)
    assert isinstance(got[0], TemporaryFailure)
    assert str(got[0]) == (
        f"another lifecast run has held {path} for over 0.2 s while it moves the champion "
        f"aliases of {mlflow.get_tracking_uri()}: wait for it to finish (or stop it), then "
        f"try again")
    other()  # released
    assert got[1] == path
    assert tracking.registry_lock_path("http://user:secret@mlflow:5000").parent.name == (
        "lifecast")


def test_promoting_by_hand_twice_keeps_one_decision_and_short_ids_are_explained(
        first_run) -> None:
    name = tracking.MODEL_NAMES["churn"]
    version = first_run.versions["churn"]
    trained_decision = first_run.decision["churn"]["message"]
    for _ in range(2):
        tracking.promote_run(first_run.run_id)
        client = mlflow.MlflowClient()
        client.set_registered_model_alias(name, "champion", version)
        client.delete_registered_model_alias(name, "champion")  # so the next one promotes
    tracking.promote_run(first_run.run_id)
    decision = mlflow.MlflowClient().get_model_version(name, version).tags["decision"]
    assert decision.startswith("promoted by hand ")
    assert decision.endswith(f" (when trained: {trained_decision})")
    assert decision.count("promoted by hand") == 1 + trained_decision.count("promoted by hand")
    with pytest.raises(ValueError, match="no registered models come from run 6 \\(a start of "
                                         "a run id needs at least 6 characters"):
        tracking.promote_run("6")
    for blank in ("", "  "):  # said "no registered models come from run  (a start ..."
        with pytest.raises(ValueError, match="^no run id given: pass the id of a training run"):
            tracking.promote_run(blank)
    # an id in capitals is the same id (said "no registered models come from run 476856E357")
    assert tracking.promote_run(first_run.run_id[:10].upper()) == first_run.versions
    # a deleted run (or one in a deleted experiment) was promoted without a word, though
    # `mlflow gc` removes its models
    client = mlflow.MlflowClient()
    client.delete_run(first_run.run_id)
    try:
        with pytest.raises(ValueError, match=f"^run {first_run.run_id} is deleted, so `mlflow "
                                             f"gc` may remove its models: restore it first "
                                             f"\\(mlflow runs restore --run-id "):
            tracking.promote_run(first_run.run_id)
    finally:
        client.restore_run(first_run.run_id)
    assert tracking.promote_run(first_run.run_id) == first_run.versions


def test_promoting_by_hand_updates_the_tags_of_both_runs(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lifecast promote --run ID` moved the aliases and the version's decision, but the
    runs' tags kept the decision of training time: the run promoted said promoted_churn
    false, the run it replaced still true, so the MLflow UI showed two runs "promoted" (or
    none). Both runs and both versions now say who changed what and when, keeping what was
    decided when they were trained."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    client = mlflow.MlflowClient()
    second = tracking.log_training(trained, source="synthetic", promote="never")
    trained_first = {k: client.get_run(first_run.run_id).data.tags[f"decision_{k}"]
                     for k in tracking.KINDS}
    trained_first = {k: (v.split(" (when trained: ", 1)[1][:-1] if v.startswith(
        ("promoted by hand", "demoted ")) else v) for k, v in trained_first.items()}
    when = r"\d{4}-\d\d-\d\d \d\d:\d\d UTC"
    assert tracking.promote_run(second.run_id) == second.versions
    for kind in tracking.KINDS:
        name = tracking.MODEL_NAMES[kind]
        new, old = second.versions[kind], first_run.versions[kind]
        message = re.escape(second.decision[kind]["message"])
        promoted = f"promoted by hand {when} \\(when trained: {message}\\)"
        demoted = (f"demoted by hand {when}: promote_run\\('{second.run_id}'\\) made v{new} "
                   f"champion \\(when trained: {re.escape(trained_first[kind])}\\)")
        tags = client.get_run(second.run_id).data.tags
        assert tags[f"promoted_{kind}"] == "true"
        assert re.fullmatch(promoted, tags[f"decision_{kind}"]), tags[f"decision_{kind}"]
        assert re.fullmatch(promoted, client.get_model_version(name, new).tags["decision"])
        tags = client.get_run(first_run.run_id).data.tags
        assert tags[f"promoted_{kind}"] == "false"
        assert re.fullmatch(demoted, tags[f"decision_{kind}"]), tags[f"decision_{kind}"]
        assert re.fullmatch(demoted, client.get_model_version(name, old).tags["decision"])
    # and back: the first run's decision of training time is kept, not nested
    assert tracking.promote_run(first_run.run_id) == first_run.versions
    for kind in tracking.KINDS:
        tags = client.get_run(first_run.run_id).data.tags
        assert tags[f"promoted_{kind}"] == "true"
        assert re.fullmatch(f"promoted by hand {when} \\(when trained: "
                            f"{re.escape(trained_first[kind])}\\)", tags[f"decision_{kind}"])
        assert client.get_run(second.run_id).data.tags[f"promoted_{kind}"] == "false"


def test_champion_versions(first_run) -> None:
    assert tracking.champion_versions() == first_run.versions


def test_promoting_another_horizon_by_hand_warns(first_run, trained,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """A version promoted by hand that predicts another value horizon than the champion it
    replaces: the scores served next mean something else, and the user is told."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    cfg = trained.models.config
    longer = cfg.model_copy(update={"features": cfg.features.model_copy(
        update={"clv_horizon_days": cfg.features.clv_horizon_days + 30})})
    other = tracking.log_training(
        dataclasses.replace(trained, models=dataclasses.replace(trained.models, config=longer)),
        source="synthetic", promote="never")
    v1, h = first_run.versions, cfg.features.clv_horizon_days
    with pytest.warns(UserWarning) as caught:
        assert tracking.promote_run(other.run_id) == other.versions
    messages = [str(w.message) for w in caught]
    assert messages == [f"lifecast-clv v{other.versions['clv']} predicts a {h + 30}-day "
                        f"horizon, the champion it replaces (v{v1['clv']}) {h} days: after the "
                        f"next `lifecast score` the served values cover {h + 30} days"]
    with pytest.warns(UserWarning, match=f"predicts a {h}-day horizon"):
        assert tracking.promote_run(first_run.run_id) == v1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert tracking.promote_run(first_run.run_id) == v1  # already champion: silent


def test_list_models(first_run) -> None:
    table = tracking.list_models()
    assert list(table.columns) == tracking.LIST_COLUMNS
    assert set(table["model"]) == {"lifecast-churn", "lifecast-clv"}
    mine = table[table["run_id"] == first_run.run_id].set_index("model")
    assert mine.loc["lifecast-churn", "version"] == int(first_run.versions["churn"])
    assert mine.loc["lifecast-churn", "aliases"] == "champion"
    assert mine.loc["lifecast-churn", "primary_metric"] == "roc_auc"
    assert mine.loc["lifecast-clv", "primary_metric"] == "normalized_gini"
    assert 0.5 < mine.loc["lifecast-churn", "score"] <= 1
    assert mine.loc["lifecast-clv", "as_of"] == pd.Timestamp(AS_OF)
    assert table["created"].dt.tz is not None
    assert (table["aliases"] == "champion").sum() == 2  # one champion per model
    assert mine["horizon_days"].tolist() == [90, 90]
    assert str(table["horizon_days"].dtype) == "Int64"
    assert mine["feature_definitions"].tolist() == [DEFINITIONS_VERSION] * 2
    assert str(table["feature_definitions"].dtype) == "Int64"
    # what tells versions apart when choosing one: the run's name, whether it was tuned,
    # and both metrics the champion rule reads (churn: roc_auc, then brier)
    assert mine["run_name"].tolist() == ["first", "first"]
    assert mine["tune_trials"].tolist() == [0, 0]
    assert mine["tie_break_metric"].tolist() == ["brier", ""]
    assert 0 < mine.loc["lifecast-churn", "tie_break_score"] < 0.5
    assert np.isnan(mine.loc["lifecast-clv", "tie_break_score"])


def test_list_models_says_how_many_trials_tuned_a_version(first_run) -> None:
    client = mlflow.MlflowClient()
    experiment = client.get_run(first_run.run_id).info.experiment_id
    tune = client.create_run(experiment, run_name="tune 2024-01-01 churn 90d clv 90d")
    client.log_param(tune.info.run_id, "n_trials", "7")
    client.set_tag(first_run.run_id, tracking.TUNE_RUN_TAG, tune.info.run_id)
    try:
        mine = tracking.list_models().query("run_id == @first_run.run_id")
        assert mine["tune_trials"].tolist() == [7, 7]
        # the search is gone (`mlflow gc` purged it): tuned, its trials unknown
        client.set_tag(first_run.run_id, tracking.TUNE_RUN_TAG, "0" * 32)
        mine = tracking.list_models().query("run_id == @first_run.run_id")
        assert mine["tune_trials"].isna().all()
    finally:
        client.delete_tag(first_run.run_id, tracking.TUNE_RUN_TAG)


def test_metrics_are_named_clv_and_runs_named_value_still_compare_and_list(
        first_run, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """The value model's metrics are ``clv_...`` as in ``lifecast-clv`` (they were
    ``value_normalized_gini`` beside ``champion_clv_normalized_gini``); a champion logged
    by an earlier lifecast under the old names is still compared, and listed."""
    client = mlflow.MlflowClient()
    new = client.get_run(first_run.run_id).data.metrics
    assert not [m for m in new if "value_" in m]
    assert {"clv_normalized_gini", "baseline_clv_normalized_gini", "clv_anchor",
            "clv_best_iteration"} <= set(new)
    with monkeypatch.context() as mp:  # an earlier lifecast's run, made champion
        mp.setitem(tracking.METRIC_PREFIX, "clv", "value")
        old = tracking.log_training(trained, source="synthetic", promote="always")
    try:
        logged = client.get_run(old.run_id).data.metrics
        assert "value_normalized_gini" in logged and "clv_normalized_gini" not in logged
        name, version = tracking.MODEL_NAMES["clv"], old.versions["clv"]
        client.delete_model_version_tag(name, version, "normalized_gini")  # read the run's
        listed = tracking.list_models().set_index(["model", "version"])
        assert listed.loc[(name, int(version)), "score"] == pytest.approx(
            logged["value_normalized_gini"])
        assert tracking.run_metric(logged, "clv", "normalized_gini") == (
            logged["value_normalized_gini"])
        assert np.isnan(tracking.run_metric(logged, "clv", "no_such_metric"))
        # a run now, against that champion: scored and decided as usual
        later = tracking.log_training(trained, source="synthetic")
        for kind in tracking.KINDS:
            assert later.decision[kind]["champion"] is not None
            assert later.decision[kind]["message"].startswith(
                f"kept champion v{old.versions[kind]}: ")
        assert "champion_clv_normalized_gini" in client.get_run(later.run_id).data.metrics
    finally:
        tracking.promote_run(first_run.run_id)


@pytest.mark.parametrize(("kind", "tag", "expected"), [
    # session 13's versions: the record is in the pyfunc's metadata only
    ("churn", "feature_definitions", DEFINITIONS_VERSION),
    ("clv", "horizon_days", 90),  # the run's features.clv_horizon_days
])
def test_list_models_reads_versions_logged_without_a_tag(first_run, kind, tag,
                                                         expected) -> None:
    client = mlflow.MlflowClient()
    name, version = tracking.MODEL_NAMES[kind], first_run.versions[kind]
    client.delete_model_version_tag(name, version, tag)
    try:
        table = tracking.list_models()
        mine = table[(table["model"] == name) & (table["version"] == int(version))]
        assert mine[tag].tolist() == [expected]
    finally:
        client.set_model_version_tag(name, version, tag, str(expected))


def test_load_champions_round_trip(first_run, trained, tmp_path: Path) -> None:
    models = tracking.load_champions(tmp_path)
    assert models.versions == first_run.versions
    assert isinstance(models.churn, ChurnModel) and isinstance(models.value, ValueModel)
    assert models.as_of == pd.Timestamp(AS_OF)
    assert models.config == trained.models.config
    assert models.segmenter.to_dict() == trained.models.segmenter.to_dict()
    ev = _eval_rows(trained, "churn")
    ours = predict_customers(models, ev)
    theirs = predict_customers(trained.models, ev)
    np.testing.assert_allclose(ours["churn_probability"], theirs["churn_probability"])
    np.testing.assert_allclose(ours["predicted_clv"], theirs["predicted_clv"])
    assert (ours["segment"] == theirs["segment"]).all()
    assert set(ours["churn_model_version"]) == {first_run.versions["churn"]}

    folder = tracking.champion_artifacts("clv", tmp_path / "again")
    assert {"booster.txt", "model.json", "segmenter.json", "lifecast.json"} <= {
        p.name for p in folder.iterdir()}
    manifest = json.loads((folder / "lifecast.json").read_text())
    assert manifest["version"] == first_run.versions["clv"]
    assert manifest["run_id"] == first_run.run_id


def test_load_champions_without_a_folder_leaves_nothing_behind(
        first_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`lifecast score` loads the champions without a folder: their download is removed once
    they are in memory (it was kept, one copy of both models per run in the temp folder)."""
    import tempfile

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    models = tracking.load_champions()
    assert models.versions == first_run.versions
    assert models.churn.booster_.num_trees() > 0  # loaded, not read lazily from the folder
    assert list(tmp.iterdir()) == []


def test_scoring_another_log_with_the_champions_warns(first_run, trained, tmp_path: Path
                                                     ) -> None:
    """The champions know the log they were trained on (its rows per day): scoring the same
    log, extended or not, is quiet; another log warns, naming the first day that differs."""
    import warnings

    from training.scoring import score_customers

    models = tracking.load_champions(tmp_path)
    pd.testing.assert_frame_equal(models.data_days, trained.data_days)
    log = _transactions()
    with warnings.catch_warnings(record=True) as quiet:
        warnings.simplefilter("always")
        score_customers(models, log, AS_OF)
    assert not [w for w in quiet if "another log" in str(w.message)]
    restated = log.drop(index=log.index[log["timestamp"] < "2022-03-01"][:3])
    with pytest.warns(UserWarning) as caught:
        score_customers(models, restated, AS_OF)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith(f"the models were trained on another log than this one: its "
                            f"events before {AS_OF} differ from the other data's on ")
               for m in messages), messages


def test_champions_with_other_feature_settings_do_not_score_together(
        first_run, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A value champion trained with another churn horizon reads baseline features that
    scoring computes with the churn champion's horizon: refused, naming both runs, instead of
    scoring with inputs the model was not trained on."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    other = TrainConfig(features=FEATURES.model_copy(update={"churn_horizon_days": 60}),
                        n_estimators=20, num_threads=1)
    value60 = ValueModel(other).fit(trained.frame)
    odd = dataclasses.replace(
        trained, models=dataclasses.replace(trained.models, value=value60),
        eval_models={**trained.eval_models, "value": value60})
    run = tracking.log_training(odd, source="synthetic", promote="never")
    assert "other feature settings: churn_horizon_days 90 (this run 60)" in (
        run.decision["clv"]["message"])
    mlflow.MlflowClient().set_registered_model_alias("lifecast-clv", "champion",
                                                     run.versions["clv"])
    try:
        with pytest.raises(ValueError) as err:
            tracking.load_champions(tmp_path)
        message = str(err.value)
        assert f"run {first_run.run_id}" in message and f"run {run.run_id}" in message
        assert "churn_horizon_days 90 (value model 60)" in message
        assert "`lifecast promote --run <run id>`" in message
    finally:
        assert tracking.promote_run(first_run.run_id) == first_run.versions


def test_a_champion_of_older_feature_definitions_is_refused_then_replaced(
        first_run, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Champions trained by a lifecast whose feature definitions differ (v1 here) would be
    fed features that do not mean what they learned: `load_champions` (score, serve) and
    `model_input` refuse them, naming the difference and the fix; retraining replaces them
    even with the same settings on the same data (the champion rule would otherwise keep a
    champion that nothing can score with)."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    churn_v1, value_v1 = (type(m).load(m.save(tmp_path / m.kind))
                          for m in (trained.models.churn, trained.models.value))
    churn_v1.feature_definitions_ = value_v1.feature_definitions_ = 1
    v1 = dataclasses.replace(trained, models=dataclasses.replace(
        trained.models, churn=churn_v1, value=value_v1))
    run_v1 = tracking.log_training(v1, source="synthetic", promote="always")
    try:
        with pytest.raises(ValueError) as err:
            tracking.load_champions(tmp_path / "champions")
        message = str(err.value)
        assert "was built with feature definitions v1; this lifecast computes v2" in message
        assert "distinct_products" in message and "lifecast train" in message
        pyfunc = mlflow.pyfunc.load_model("models:/lifecast-churn@champion")
        feats = _eval_rows(trained, "churn")
        with pytest.raises(ValueError, match="this model was built with feature definitions v1"):
            tracking.model_input(feats, pyfunc)

        again = tracking.log_training(trained, source="synthetic", promote="auto")
        for kind in ("churn", "clv"):
            decision = again.decision[kind]
            assert decision["promoted"], decision["message"]
            assert f"champion v{run_v1.versions[kind]} was built with feature definitions v1" \
                in decision["message"]
            assert "cannot score with it" in decision["message"]
        assert tracking.load_champions(tmp_path / "after").versions == again.versions

        listed = tracking.list_models().set_index(["model", "version"])["feature_definitions"]
        assert listed[("lifecast-churn", int(run_v1.versions["churn"]))] == 1
        assert listed[("lifecast-churn", int(again.versions["churn"]))] == DEFINITIONS_VERSION
        # promoting the v1 versions back by hand is refused: nothing could score with them
        with pytest.raises(ValueError) as err:
            tracking.promote_run(run_v1.run_id)
        message = str(err.value)
        assert f"lifecast-churn v{run_v1.versions['churn']} was built with feature " \
               "definitions v1" in message
        assert "cannot be champion" in message and "lifecast train" in message
        assert tracking.champion_versions() == again.versions  # unchanged
    finally:
        assert tracking.promote_run(first_run.run_id) == first_run.versions


def test_models_save_and_load(trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Both models as plain files and back: the same predictions and fitted state; a save
    that fails leaves no file half-written (each file is renamed into place when whole)."""
    ev = _eval_rows(trained, "churn")
    for model, own in ((trained.models.churn, "calibration_"), (trained.models.value, "level_")):
        folder = model.save(tmp_path / model.kind)
        assert sorted(p.name for p in folder.iterdir()) == ["booster.txt", "model.json"]
        back = type(model).load(folder)
        assert getattr(back, own) == getattr(model, own)
        assert (back.feature_names_, back.best_iteration_) == (model.feature_names_,
                                                               model.best_iteration_)
        assert (back.train_cutoffs_, back.valid_cutoff_) == (model.train_cutoffs_,
                                                             model.valid_cutoff_)
        assert back.config_ == model.config_
        assert back.feature_definitions_ == model.feature_definitions_ == DEFINITIONS_VERSION
        predict = "predict_proba" if model.kind == "churn" else "predict"
        np.testing.assert_array_equal(getattr(back, predict)(ev), getattr(model, predict)(ev))
        # a model saved before the definitions were versioned was built with version 1
        meta = json.loads((folder / "model.json").read_text())
        del meta["feature_definitions"]
        (folder / "model.json").write_text(json.dumps(meta))
        assert type(model).load(folder).feature_definitions_ == 1

    import lightgbm as lgb

    def broken(self, filename, **kwargs):  # writes part of the file, then fails
        Path(filename).write_text("tree\n")
        raise OSError("disk full")

    monkeypatch.setattr(lgb.Booster, "save_model", broken)
    with pytest.raises(OSError, match="disk full"):
        trained.models.churn.save(tmp_path / "failed")
    assert list((tmp_path / "failed").iterdir()) == []


def test_no_champion_is_a_clear_error(store, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(tracking.MODEL_NAMES, "churn", "lifecast-churn-never-registered")
    with pytest.raises(tracking.NoChampionError,
                       match=r"no champion model registered yet: run `lifecast train` first"):
        tracking.load_champions()
    with pytest.raises(ValueError, match="kind must be one of"):
        tracking.champion_artifacts("ltv")


def test_no_champion_among_registered_versions_says_to_promote(first_run) -> None:
    """After `train --promote never` the fix is `lifecast promote`, not another train."""
    client = mlflow.MlflowClient()
    client.delete_registered_model_alias("lifecast-clv", "champion")
    try:
        with pytest.raises(tracking.NoChampionError) as info:
            tracking.load_champions()
        latest = max(client.search_model_versions("name='lifecast-clv'"),
                     key=lambda mv: int(mv.version))
        assert str(info.value).startswith("no lifecast-clv version is champion yet (")
        assert f"`lifecast promote --run {latest.run_id}` (the latest, v{latest.version}" \
            in str(info.value)
    finally:
        assert tracking.promote_run(first_run.run_id) == first_run.versions


def test_python_api_prints_no_mlflow_progress(store, trained, tmp_path, capfd,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """`configure` on a new store and `log_training` from Python print none of MLflow's
    progress lines (``Creating initial MLflow database tables...``, ``Successfully
    registered model ...``, ``Created version ...``), as the command line does not;
    ``MLFLOW_LOGGING_LEVEL=INFO`` keeps them."""
    monkeypatch.delenv("MLFLOW_LOGGING_LEVEL", raising=False)
    capfd.readouterr()
    try:
        tracking.configure(tmp_path / "quiet")
        tracking.log_training(trained, source="synthetic/transactions.parquet",
                              promote="never")
        out, err = capfd.readouterr()
        for line in ("Creating initial MLflow database tables", "Successfully registered",
                     "Created version"):
            assert line not in out + err
        monkeypatch.setenv("MLFLOW_LOGGING_LEVEL", "INFO")
        tracking.log_training(trained, source="synthetic/transactions.parquet",
                              promote="never")
        out, err = capfd.readouterr()
        assert "Created version" in out + err
    finally:
        tracking.configure(store[0])  # the module's store, for the tests after this one


def test_runs_go_to_the_chosen_experiment_under_the_chosen_name(
        store, trained, tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``experiment``, else ``$MLFLOW_EXPERIMENT_NAME``, else ``lifecast``; the registered
    models are shared by every experiment of the store."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)  # tested above
    monkeypatch.delenv(tracking.EXPERIMENT_ENV, raising=False)
    assert tracking.experiment_name() == "lifecast"
    assert tracking.experiment_name("churn study") == "churn study"
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, "from-env")
    assert tracking.experiment_name() == "from-env"
    assert tracking.experiment_name("churn study") == "churn study"  # the argument wins
    with pytest.raises(ValueError, match=r"^experiment is blank: give an experiment name"):
        tracking.experiment_name(" ")  # `lifecast train --experiment ' '` says the flag
    monkeypatch.setenv(tracking.EXPERIMENT_ENV, "")  # set but empty: as if unset
    assert tracking.experiment_name() == "lifecast"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # a new store of its own
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    try:
        tracking.configure(tmp_path / "experiments", "churn study")
        client = mlflow.MlflowClient()
        named = tracking.log_training(trained, source="s.parquet", promote="never",
                                      experiment="churn study", run_name="first try")
        monkeypatch.setenv(tracking.EXPERIMENT_ENV, "from-env")
        default = tracking.log_training(trained, source="s.parquet", promote="never")
        runs = {s.run_id: client.get_run(s.run_id) for s in (named, default)}
        experiments = {rid: client.get_experiment(run.info.experiment_id).name
                       for rid, run in runs.items()}
        assert experiments == {named.run_id: "churn study", default.run_id: "from-env"}
        assert runs[named.run_id].info.run_name == "first try"
        features = trained.models.config.features
        assert runs[default.run_id].info.run_name == (
            f"train {pd.Timestamp(trained.models.as_of):%Y-%m-%d} churn "
            f"{features.churn_horizon_days}d clv {features.clv_horizon_days}d")
        # both runs registered versions of the same two models
        versions = client.search_model_versions("name='lifecast-churn'")
        assert {v.run_id for v in versions} == {named.run_id, default.run_id}
    finally:
        tracking.configure(store[0])  # the module's store, for the tests after this one


def test_runs_of_one_default_name_are_numbered_and_a_given_name_is_kept(
        store, trained, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two trains of the same data got the same run name ('train 2024-01-01 churn 90d clv
    90d' twice): MLflow's run list could not tell them apart. The second is now '... #2';
    a name the user gives (--run-name) is kept as given, even when it repeats."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    client = mlflow.MlflowClient()
    experiment = "run names"
    first = tracking.log_training(trained, source="synthetic", promote="never",
                                  experiment=experiment)
    second = tracking.log_training(trained, source="synthetic", promote="never",
                                   experiment=experiment)
    mine = [tracking.log_training(trained, source="synthetic", promote="never",
                                  experiment=experiment, run_name="my try")
            for _ in range(2)]
    base = f"train {AS_OF} churn 90d clv {FEATURES.clv_horizon_days}d"
    assert [client.get_run(r.run_id).info.run_name for r in (first, second, *mine)] == [
        base, f"{base} #2", "my try", "my try"]
    # the number follows the highest given, deleted runs included; other names do not count
    experiment_id = client.get_run(first.run_id).info.experiment_id
    for name in (f"{base} #7", f"{base} tuned", f"{base}0", f"{base} #x"):
        client.create_run(experiment_id, run_name=name)
    client.delete_run(client.search_runs([experiment_id],
                                         f"attributes.run_name = '{base} #7'")[0].info.run_id)
    assert tracking.numbered_run_name(client, experiment_id, base) == f"{base} #8"
    assert tracking.numbered_run_name(client, experiment_id, f"{base} tuned") == (
        f"{base} tuned #2")
    assert tracking.numbered_run_name(client, experiment_id, "tune x") == "tune x"


def test_a_run_whose_fits_stopped_at_the_tree_cap_says_so(
        store, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fit that grew every tree n_estimators allows while still improving (the default
    churn model on Online Retail: 982 of 1,000) was logged like any other: the run now
    carries the tag lifecast.tree_cap naming the models; a run whose fits stopped early
    carries none."""
    monkeypatch.setattr(tracking, "_log_plots", lambda result, folder: None)
    client = mlflow.MlflowClient()
    # early stopping needs 40 rounds without gain, which 40 trees never give it: every fit
    # reaches the cap, whatever tree it keeps as its best (the booster LightGBM returns
    # holds only those: counting its trees missed fits whose best came before the last)
    capped = train(_transactions(), as_of=AS_OF,
                   config=TrainConfig(features=FEATURES, n_estimators=40, learning_rate=0.5,
                                      early_stopping_rounds=40, num_threads=1))
    models = (capped.models.churn, capped.models.value, *capped.eval_models.values())
    assert any(m.best_iteration_ < 40 for m in models)
    run = tracking.log_training(capped, source="synthetic", promote="never")
    tag = client.get_run(run.run_id).data.tags[tracking.TREE_CAP_TAG]
    assert re.match(r"the churn model \(\d+ trees kept of 40\); the evaluation churn model "
                    r"\(\d+ trees kept of 40\); the clv model \(\d+ trees kept of 40\); the "
                    r"evaluation clv model \(\d+ trees kept of 40\) grew every tree", tag), tag
    assert "may be under-fit" in tag
    assert tracking.tree_cap_note(capped) == tag
    # ... and `lifecast train` prints it (it was only the tag: nobody at a terminal saw it)
    from typer.testing import CliRunner

    import training.pipeline
    from serving.cli import app

    monkeypatch.setattr(training.pipeline, "train", lambda *args, **kwargs: capped)
    monkeypatch.setattr(tracking_utils, "_tracking_uri", tracking_utils._tracking_uri)
    monkeypatch.setattr(tracking, "_last_set_uri", None)
    monkeypatch.setattr(tracking, "_last_was_users", True)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow.get_tracking_uri())
    res = CliRunner().invoke(app, ["train", "-t", "sales.csv", "--customer-col", "c",
                                   "--timestamp-col", "t", "--amount", "a", "--promote",
                                   "never"])
    assert res.exit_code == 0, res.output
    assert f"warning: {tag}" in res.stderr
    stopped = train(_transactions(), as_of=AS_OF,
                    config=TrainConfig(features=FEATURES, n_estimators=200, learning_rate=0.5,
                                       early_stopping_rounds=5, num_threads=1))
    models = (stopped.models.churn, stopped.models.value, *stopped.eval_models.values())
    assert not any(m.reached_cap_ for m in models)  # early stopping ended them
    plain = tracking.log_training(stopped, source="synthetic", promote="never")
    assert tracking.TREE_CAP_TAG not in client.get_run(plain.run_id).data.tags
    assert tracking.tree_cap_note(stopped) is None


def test_promote_refuses_a_run_that_registered_one_model(
        first_run, trained, tmp_path: Path) -> None:
    """A `lifecast train` killed outright (kill -9, so nothing cleans up) after it registered
    the churn model leaves lifecast-churn vN of a run without lifecast-clv; `lifecast promote
    --run` made that churn version champion beside another run's value model. Now it is
    refused, naming what the run registered and what to do."""
    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name="killed") as run:
        churn_version = tracking._log_model("churn", trained, run.info.run_id, "synthetic",
                                            tmp_path / "churn")
    try:
        with pytest.raises(ValueError) as info:
            tracking.promote_run(run.info.run_id[:8])
        assert str(info.value) == (
            f"run {run.info.run_id} registered lifecast-churn v{churn_version} but no "
            f"lifecast-clv: it failed or was stopped before registering both models, and its "
            f"champions would not be a pair. Promote a run that registered both (`lifecast "
            f"models` lists them), or train again with `lifecast train`")
        assert _aliases("churn") == {"champion": first_run.versions["churn"]}
    finally:
        client.delete_model_version("lifecast-churn", churn_version)


@pytest.mark.parametrize("stop", ["Ctrl-C", "SIGTERM"])
def test_promote_stopped_between_the_two_aliases_keeps_the_old_pair(
        first_run, trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, stop: str) -> None:
    """`lifecast promote --run <id>` stopped (Ctrl-C, a scheduler's SIGTERM) after it moved
    lifecast-churn's champion alias and before lifecast-clv's: the champions were left a
    mixed pair, churn of the new run and value of the old, which `lifecast score` then used
    together. Now the alias moved first is put back: the old pair stays champion."""
    import signal

    from features.cli import Terminated, terminate_as_interrupt

    client = mlflow.MlflowClient()
    with mlflow.start_run(run_name="second") as run:
        versions = {kind: tracking._log_model(kind, trained, run.info.run_id, "synthetic",
                                              tmp_path / kind) for kind in tracking.KINDS}
    set_alias = mlflow.MlflowClient.set_registered_model_alias

    def stopped(self, name, alias, version):
        if name == tracking.MODEL_NAMES["clv"] and str(version) == versions["clv"]:
            if stop == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return set_alias(self, name, alias, version)

    monkeypatch.setattr(mlflow.MlflowClient, "set_registered_model_alias", stopped)
    try:
        with pytest.raises(Terminated if stop == "SIGTERM" else KeyboardInterrupt), \
                terminate_as_interrupt():
            tracking.promote_run(run.info.run_id)
        monkeypatch.undo()
        for kind in tracking.KINDS:
            assert _aliases(kind) == {"champion": first_run.versions[kind]}
    finally:
        monkeypatch.undo()
        for kind, version in versions.items():
            client.delete_model_version(tracking.MODEL_NAMES[kind], version)


def test_end_dead_runs_ends_only_runs_whose_process_is_gone(store) -> None:
    """A `lifecast train` killed outright (kill -9, the OOM killer) ran no clean-up: its
    run stayed RUNNING for ever, looking as if it still trained. Now runs carry their
    process (`owner_tags`) and `end_dead_runs` marks KILLED those whose process is gone,
    saying so; a run whose process runs, one of another machine and one lifecast did not
    start are left alone."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    client = mlflow.MlflowClient()
    experiment = tracking._experiment_id("lifecast")
    mine = tracking.owner_tags()
    runs = {
        "dead": {**mine, tracking.PID_TAG: str(child.pid)},
        "alive": mine,
        "elsewhere": {**mine, tracking.HOST_TAG: "other", tracking.MACHINE_TAG: "00000000",
                      tracking.PID_TAG: str(child.pid)},
        "not lifecast's": {},
    }
    ids = {name: client.create_run(experiment, tags=tags, run_name=name).info.run_id
           for name, tags in runs.items()}
    try:
        with pytest.warns(UserWarning) as caught:
            ended = tracking.end_dead_runs()
        assert ended == [ids["dead"]]
        started = pd.Timestamp(client.get_run(ids["dead"]).info.start_time, unit="ms",
                               tz="UTC")
        assert [str(w.message) for w in caught] == [
            f"MLflow run {ids['dead']} (dead), started {started:%Y-%m-%d %H:%M:%S} "
            f"UTC, was still RUNNING but its process is gone (pid {child.pid} on "
            f"{mine[tracking.HOST_TAG]} is not running): marked KILLED"]
        status = {name: client.get_run(i).info.status for name, i in ids.items()}
        assert status == {"dead": "KILLED", "alive": "RUNNING", "elsewhere": "RUNNING",
                          "not lifecast's": "RUNNING"}
        assert client.get_run(ids["dead"]).data.tags[tracking.KILLED_TAG].startswith(
            f"killed before it ended (pid {child.pid} on")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert tracking.end_dead_runs() == []  # once is enough
    finally:
        for run_id in ids.values():
            client.delete_run(run_id)


class _Killed(BaseException):
    """Stands for a kill -9: the run does nothing more, its clean-up included."""


def _train_killed(trained: TrainResult, *, promote: str, at: str, after: int) -> str:
    """`log_training` stopped as a kill -9 stops it: when ``at`` (``_mark_decision`` or
    ``_record_decision``) has been called ``after`` times, with no clean-up (`_undo_run`
    does nothing) and the run left RUNNING, owned by this process (still alive: the caller
    gives it a process that is gone). Returns the run id."""
    real = getattr(tracking, at)
    calls: list[str] = []

    def step(*args, **kwargs):
        real(*args, **kwargs)
        calls.append(mlflow.active_run().info.run_id)
        if len(calls) == after:
            raise _Killed

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tracking, at, step)
        mp.setattr(tracking, "_undo_run", lambda *args: None)
        mp.setattr(tracking, "_log_plots", lambda result, folder: None)
        with pytest.raises(_Killed):
            tracking.log_training(trained, source="synthetic", promote=promote)
    mlflow.MlflowClient().update_run(calls[0], status="RUNNING")  # as kill -9 leaves it
    return calls[0]


def _owned_by_a_process_that_is_gone(run_id: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    mlflow.MlflowClient().set_tag(run_id, tracking.PID_TAG, str(child.pid))


def _decisions(versions: dict[str, str]) -> dict[str, tuple[str, ...]]:
    """Each kind's version decision and its run's decision_/promoted_ tags."""
    client = mlflow.MlflowClient()
    out = {}
    for kind, version in versions.items():
        mv = client.get_model_version(tracking.MODEL_NAMES[kind], version)
        tags = client.get_run(mv.run_id).data.tags
        out[kind] = (mv.tags.get("decision"), tags.get(f"decision_{kind}"),
                     tags.get(f"promoted_{kind}"))
    return out


def _put_back(first_run: tracking.RunSummary, decisions: dict[str, tuple[str, ...]],
              run_id: str) -> None:
    """The first run's champions and decisions as they were; the killed run gone."""
    client = mlflow.MlflowClient()
    for kind, version in first_run.versions.items():
        name = tracking.MODEL_NAMES[kind]
        client.set_registered_model_alias(name, "champion", version)
        client.set_model_version_tag(name, version, "decision", decisions[kind][0])
        client.set_tag(first_run.run_id, f"decision_{kind}", decisions[kind][1])
        client.set_tag(first_run.run_id, f"promoted_{kind}", decisions[kind][2])
        for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'"):
            client.delete_model_version(name, mv.version)
    client.delete_run(run_id)


def test_a_train_killed_after_it_demoted_a_champion_gives_it_back_its_decision(
        first_run, trained) -> None:
    """A `lifecast train` killed outright after it moved both champion aliases and marked
    the lifecast-churn champion it replaced 'demoted ...: training run X made vN champion'
    (`log_training`): the next train puts both aliases back (`end_dead_runs`), and the
    champion's decision, on its version and on its run, is again what it was, here a
    promotion by hand (`_undo_demotion`), not 'demoted' nor only what was decided when it
    was trained. lifecast-clv's champion, not yet marked, keeps its decision."""
    client = mlflow.MlflowClient()
    assert tracking.champion_versions() == first_run.versions
    original = _decisions(first_run.versions)
    run_id = None
    try:
        for kind in tracking.KINDS:  # champions may have been promoted by hand: these were
            tracking._mark_decision(client, kind, first_run.versions[kind],
                                    f"{tracking._BY_HAND}2026-01-02 03:04 UTC", promoted=True)
        before = _decisions(first_run.versions)
        run_id = _train_killed(trained, promote="always", at="_mark_decision", after=1)
        new = {kind: tracking.champion_versions()[kind] for kind in tracking.KINDS}
        assert all(new[kind] != first_run.versions[kind] for kind in tracking.KINDS)
        demoted = _decisions(first_run.versions)
        assert demoted["churn"][0].startswith("demoted ") and run_id in demoted["churn"][0]
        assert demoted["churn"][2] == "false" and demoted["clv"] == before["clv"]

        _owned_by_a_process_that_is_gone(run_id)
        with pytest.warns(UserWarning) as caught:
            assert tracking.end_dead_runs() == [run_id]
        assert [str(w.message) for w in caught][0].endswith(
            f"marked KILLED; lifecast-churn v{first_run.versions['churn']} is champion again "
            f"in place of its v{new['churn']}; lifecast-clv v{first_run.versions['clv']} is "
            f"champion again in place of its v{new['clv']}")
        assert tracking.champion_versions() == first_run.versions
        assert _decisions(first_run.versions) == before
        for kind, version in new.items():
            decision = client.get_model_version(tracking.MODEL_NAMES[kind], version).tags
            assert decision["decision"].startswith(
                "not a champion: its training run was killed before it ended (pid ")
    finally:
        if run_id is not None:
            _put_back(first_run, original, run_id)


def test_a_killed_trains_versions_promoted_by_hand_before_it_was_noticed_stay_champion(
        first_run, trained) -> None:
    """`lifecast promote --run <a killed run>` is refused, but its versions may have been
    promoted by hand before the kill was noticed (while its process still ran, or through
    MLflow): `end_dead_runs` marks the run KILLED and tags its versions, and leaves the
    champions the person chose, with their decisions."""
    client = mlflow.MlflowClient()
    assert tracking.champion_versions() == first_run.versions
    original = _decisions(first_run.versions)
    run_id = None
    try:
        run_id = _train_killed(trained, promote="never", at="_record_decision", after=2)
        assert tracking.champion_versions() == first_run.versions  # "never" moved none
        versions = tracking.promote_run(run_id)  # its process still runs: not refused
        by_hand = _decisions(versions)
        assert all(d[0].startswith("promoted by hand ") for d in by_hand.values())

        _owned_by_a_process_that_is_gone(run_id)
        with pytest.warns(UserWarning) as caught:
            assert tracking.end_dead_runs() == [run_id]
        assert [str(w.message) for w in caught][0].endswith("marked KILLED")
        assert client.get_run(run_id).info.status == "KILLED"
        assert tracking.champion_versions() == versions
        assert _decisions(versions) == by_hand
        for kind, version in versions.items():
            tags = client.get_model_version(tracking.MODEL_NAMES[kind], version).tags
            assert tags[tracking.KILLED_TAG].startswith("killed before it ended (pid ")
    finally:
        if run_id is not None:
            _put_back(first_run, original, run_id)


_OPEN_AT_ONCE = """
import sys, time
from training import tracking
folder, start = sys.argv[1], float(sys.argv[2])
while time.time() < start:
    time.sleep(0.001)
tracking.configure(folder)
import mlflow
print(mlflow.MlflowClient().get_experiment_by_name("lifecast").experiment_id)
"""


def test_two_processes_opening_a_new_store_at_once_take_turns(tmp_path: Path) -> None:
    """Two `lifecast train` started together on a folder without mlflow.db: both ran MLflow's
    schema migration at once, both failed with a traceback (alembic: 'Online migration
    expected to match one row', or 'table _alembic_tmp_tags already exists') and the database
    stayed half-migrated, so every later command failed too. `configure` now opens a new
    database store under the registry lock. Two rounds of two processes released together."""
    import time

    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    env.pop("MLFLOW_TRACKING_URI", None)
    for round_ in range(2):
        folder = tmp_path / f"work{round_}"
        start = time.time() + 10  # both have imported by then
        procs = [subprocess.Popen([sys.executable, "-c", _OPEN_AT_ONCE, str(folder), str(start)],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True) for _ in range(2)]
        outs = [p.communicate(timeout=180) for p in procs]
        for p, (out, err) in zip(procs, outs, strict=True):
            assert p.returncode == 0, err[-3000:]
            assert out.strip() == "1", out
        client = mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}")
        assert sorted(e.name for e in client.search_experiments()) == ["Default", "lifecast"]
