"""The prediction service for real (slow tier): MLflow registry -> `lifecast serve` -> a
`bentoml serve` process over HTTP, schemathesis against its OpenAPI spec, `bentoml build`.

One server per module, in a temporary working folder (conftest's `workdir`: its own mlflow.db,
customer store, keys and audit log) with ``BENTOML_HOME`` in a temporary folder (see conftest).
The server runs in its own process group, which is terminated at the end (and killed if it
lingers: conftest's `start_server`).
"""

from __future__ import annotations

import contextlib
import csv
import io
import os
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from serving.schemas import EXAMPLE_SCORE_REQUEST

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
#: the origin the server lets call it from a browser (LIFECAST_CORS_ORIGINS)
CRM_ORIGIN = "https://crm.example.com"


@pytest.fixture(scope="module")
def server(workdir, clean_env, start_server):
    """`lifecast serve --port <free>` in the working folder, until the module ends."""
    folder, versions, tokens = workdir
    env = {**clean_env, "LIFECAST_CORS_ORIGINS": CRM_ORIGIN}
    with start_server([str(BIN / "lifecast"), "serve", "--no-access-log"], cwd=folder,
                      env=env, log=folder / "serve.log") as running:
        yield {"url": running.url, "tokens": tokens, "versions": versions, "folder": folder,
               "proc": running.proc}


def _client(server, key: str | None = None):
    import httpx

    headers = {"Authorization": f"Bearer {server['tokens'][key]}"} if key else {}
    return httpx.Client(base_url=server["url"], headers=headers, timeout=60)


def _assert_error(resp, status: int, *words: str) -> None:
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert isinstance(body["error"], str)
    for word in words:
        assert word in body["error"], (word, body)
    assert "Traceback" not in resp.text and 'File "' not in resp.text


def test_endpoints_over_http(server) -> None:
    crm, mkt = _client(server, "crm"), _client(server, "marketing")
    top = mkt.post("/high_risk", json={"limit": 5}).json()
    assert len(top["customers"]) == 5 and top["total"] > 5
    ids = [c["customer_id"] for c in top["customers"]]
    pred = crm.post("/predict", json={"customer_ids": [*ids, "nobody"]})
    assert pred.status_code == 200, pred.text
    body = pred.json()
    assert [p["customer_id"] for p in body["predictions"]] == ids
    assert body["errors"][0]["customer_id"] == "nobody"
    expected = {"churn": server["versions"]["churn"], "clv": server["versions"]["clv"]}
    assert body["predictions"][0]["model_versions"] == expected
    for p, stored in zip(body["predictions"], top["customers"], strict=True):
        assert abs(p["churn_probability"] - stored["churn_probability"]) < 1e-9
    # a CRM's integer ids as JSON numbers: the same customers, the same answer
    assert all(c.isdigit() for c in ids), ids
    by_number = crm.post("/predict", json={"customer_ids": [*map(int, ids), "nobody"]})
    assert by_number.status_code == 200, by_number.text
    assert by_number.json() == body
    score = crm.post("/score", json=EXAMPLE_SCORE_REQUEST)
    assert score.status_code == 200 and score.json()["predictions"][0]["customer_id"] == "new-0001"
    csv_resp = mkt.post("/high_risk", json={"limit": 3, "format": "csv"})
    assert csv_resp.headers["content-type"].startswith("text/csv")
    assert len(list(csv.DictReader(io.StringIO(csv_resp.text)))) == 3
    segs = mkt.post("/segments", json={}).json()["segments"]
    assert sum(s["customers"] for s in segs) > 0


def test_auth_and_open_paths(server) -> None:
    anon = _client(server)
    for path in ("/predict", "/score", "/high_risk", "/segments"):
        _assert_error(anon.post(path, json={}), 401, "bearer")
    _assert_error(_client(server, "marketing").post("/predict", json={"customer_ids": ["1"]}),
                  403, "predict")
    _assert_error(_client(server, "crm").post("/segments", json={}), 403, "lists")
    for path in ("/livez", "/healthz", "/readyz", "/docs.json", "/schema.json", "/",
                 "/openapi.json"):
        assert anon.get(path).status_code == 200, path
    # a browser opening /docs lands on the Swagger UI, whose document declares the API key
    docs = anon.get("/docs", follow_redirects=True)
    assert docs.status_code == 200 and "swagger-ui" in docs.text
    spec = anon.get("/openapi.json").json()
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert spec["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}]
    metrics = anon.get("/metrics")
    assert metrics.status_code == 200 and "bentoml_service_request" in metrics.text


def test_a_second_serve_on_the_same_port_is_a_one_line_error(server, clean_env) -> None:
    """`lifecast serve` again, in the same folder and on the port the running server holds:
    one line naming the port and --port, exit code 2, and the running server unharmed."""
    import httpx

    port = server["url"].rsplit(":", 1)[1]
    result = subprocess.run([str(BIN / "lifecast"), "serve", "--port", port],
                            cwd=server["folder"], env=clean_env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert f"port {port} on 127.0.0.1 is already in use" in result.stderr
    assert "--port" in result.stderr and "Traceback" not in result.stderr + result.stdout
    assert httpx.get(f"{server['url']}/readyz", timeout=10).status_code == 200


@pytest.mark.parametrize("variable", ["BENTOML_HOME", "HOME"])
def test_serve_where_bentoml_cannot_make_its_home_says_to_set_bentoml_home(
        workdir, clean_env, tmp_path, variable) -> None:
    """A HOME or BENTOML_HOME this user cannot write (a container's read-only HOME, a user
    whose home is /nonexistent; here a path under a file, which fails for root too): one
    line naming BentoML's home and BENTOML_HOME, exit code 2, not `[Errno 13] Permission
    denied: '/home/x/bentoml'` alone."""
    (tmp_path / "a_file").write_text("")
    env = {k: v for k, v in clean_env.items() if k != "BENTOML_HOME"}
    env[variable] = str(tmp_path / "a_file" / ("bentoml" if variable == "BENTOML_HOME" else ""))
    result = subprocess.run([str(BIN / "lifecast"), "serve", "--dry-run"], cwd=workdir[0],
                            env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    home = tmp_path / "a_file" / "bentoml"
    assert lines[0].startswith(f"error: BentoML's model store {home} cannot be written")
    assert "set BENTOML_HOME to a folder this user can write" in lines[0]


def test_audit_log_over_http(server) -> None:
    from serving.audit import AuditLog

    mkt = _client(server, "marketing")
    log = AuditLog(server["folder"] / ".lifecast" / "audit.log")
    before = len(log.read())
    mkt.post("/high_risk", json={"limit": 4, "min_churn_probability": 0.3, "format": "csv"})
    mkt.post("/segments", json={"format": "csv"})
    new = log.read()[before:]
    assert [(r["endpoint"], r["key_name"], r["format"]) for r in new] == [
        ("/high_risk", "marketing", "csv"), ("/segments", "marketing", "csv")]
    assert new[0]["filters"]["min_churn_probability"] == 0.3 and new[0]["row_count"] <= 4
    assert new[0]["client"] == "127.0.0.1"


def test_bad_inputs_over_http(server) -> None:
    admin = _client(server, "admin")
    headers = {"Content-Type": "application/json"}
    _assert_error(admin.post("/predict", content=b'{"customer_ids": [', headers=headers), 400,
                  "not valid JSON")
    _assert_error(admin.post("/predict", json={"customer_ids": []}), 422, "customer_ids")
    _assert_error(admin.post("/predict", json={"customer_ids": [str(i) for i in range(1001)]}),
                  422, "customer_ids")
    _assert_error(admin.post("/predict", json={"customer_ids": [1.0]}), 422, "customer_ids[0]",
                  "float")
    _assert_error(admin.post("/predict", json={"customer_ids": ["1", 2**53 + 1]}), 422,
                  "customer_ids[1]", "as a string")
    _assert_error(admin.post("/high_risk", json={"limit": -3}), 422, "limit")
    _assert_error(admin.post("/high_risk", json={"segments": ["Whales"]}), 422, "segments[0]")
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    _assert_error(admin.post("/score", json={"customers": [{"customer_id": "a", "transactions": [
        {"timestamp": future, "amount": 1.0}]}]}), 422, "timestamp", "future")
    _assert_error(admin.post("/predict", content=b"x" * (3 * 1024 * 1024), headers=headers),
                  413, "too large")
    _assert_error(admin.post("/predict", content=b"{}", headers={"Content-Type": "text/csv"}),
                  415, "application/json")
    # a wrong method and an unknown path: the JSON error body too (BentoML's were plain text)
    for method, path, status, words in (
            ("GET", "/high_risk", 405, ("GET is not allowed on /high_risk", "POST")),
            ("GET", "/predict", 405, ("send POST",)),
            ("POST", "/nothing", 404, ("no such path: POST /nothing", "/predict")),
            ("GET", "/static_content/x.css", 404, ("no such path",)),
            ("POST", "/livez", 405, ("use GET",))):
        resp = admin.request(method, path)
        _assert_error(resp, status, *words)
        assert resp.headers["content-type"] == "application/json"
    assert admin.get("/predict").headers["allow"] == "POST"
    log = (server["folder"] / "serve.log").read_text()
    assert "Traceback" not in log, log[-3000:]


def test_cors_in_front_of_the_key_check(server) -> None:
    """`bentoml serve` runs the middlewares in the order the service adds them: a browser's
    preflight is answered without a key, the request itself needs one, and both carry the
    CORS headers (BentoML's own CORS setting sits behind the key check: 401)."""
    anonymous, crm = _client(server), _client(server, "crm")
    pre = anonymous.options("/predict", headers={
        "Origin": CRM_ORIGIN, "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert pre.status_code == 200, pre.text
    assert pre.headers["access-control-allow-origin"] == CRM_ORIGIN
    origin = {"Origin": CRM_ORIGIN}
    no_key = anonymous.post("/predict", json={"customer_ids": ["nobody"]}, headers=origin)
    _assert_error(no_key, 401, "bearer")
    assert no_key.headers["access-control-allow-origin"] == CRM_ORIGIN
    answered = crm.post("/predict", json={"customer_ids": ["nobody"]}, headers=origin)
    assert answered.status_code == 200, answered.text
    assert answered.headers["access-control-allow-origin"] == CRM_ORIGIN
    plain = crm.post("/predict", json={"customer_ids": ["nobody"]})
    assert "access-control-allow-origin" not in plain.headers


def test_bentoml_client(server) -> None:
    """BentoML's own client (it reads /schema.json when created) with an API key."""
    import bentoml

    with bentoml.SyncHTTPClient(server["url"], token=server["tokens"]["crm"]) as client:
        out = client.predict(customer_ids=["nobody"])
    assert out["errors"][0]["customer_id"] == "nobody"


def test_schemathesis_finds_no_server_error(server, tmp_path) -> None:
    """Property-based requests from the published OpenAPI spec: no 5xx, ever, and every
    answer has the content type and the schema the spec publishes for its status (the spec
    said ``as_of`` was an RFC 3339 ``date-time``, which the answers' are not)."""
    exe = BIN / "schemathesis"
    if not exe.exists():
        pytest.skip("schemathesis is not installed (pip install schemathesis)")
    cmd = [str(exe), "run", f"{server['url']}/docs.json",
           "--header", f"Authorization: Bearer {server['tokens']['admin']}",
           "--checks", "not_a_server_error,response_schema_conformance,content_type_conformance",
           "--max-examples", "40", "--seed", "1",
           "--request-timeout", "60", "--report-dir", str(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                            cwd=tmp_path, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]


def test_bentoml_build_carries_the_models(built_bento, workdir) -> None:
    """`bentoml build` of the repository, offline, packs the imported champions
    (test_built_bento.py starts the Bento)."""
    import yaml

    bento = built_bento.path
    versions = workdir[1]
    info = yaml.safe_load((bento / "bento.yaml").read_text())
    tags = {m["tag"].split(":")[0]: m["tag"] for m in info["models"]}
    assert set(tags) == {"lifecast-churn", "lifecast-clv"}
    for kind in ("churn", "clv"):
        assert tags[f"lifecast-{kind}"].split(":")[1].startswith(f"v{versions[kind]}-")
    assert (bento / "src" / "serving" / "service.py").is_file()
    assert not (bento / "src" / "tests").exists()
    # the store's drivers and encoder: a Bento reading a PostgreSQL store needs psycopg
    requirements = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    assert "psycopg[binary]>=3.2" in requirements and "orjson>=3.10" in requirements


def _requests_counted(url: str, endpoint: str) -> float:
    """The server's ``bentoml_service_request_total`` of ``endpoint`` answered 200, from its
    /metrics (0 when it has none)."""
    import re

    import httpx

    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.findall(r'^bentoml_service_request_total\{([^}]*)\} (\S+)$', text, re.M)
    return sum(float(value) for labels, value in found
               if f'endpoint="{endpoint}"' in labels and 'http_response_code="200"' in labels)


def test_a_second_server_leaves_the_first_ones_metrics_alone(server, clean_env,
                                                             start_server) -> None:
    """Two `lifecast serve` on one machine, one BENTOML_HOME, two ports (as README says):
    BentoML empties its one Prometheus folder ($BENTOML_HOME/prometheus_multiproc_dir) when a
    server starts, so the second deleted the first one's files and the first's /metrics
    counted from zero (or answered an empty body). Each has its own folder now, removed when
    it stops."""
    from serving.bentoml_serve import METRICS_ROOT

    mkt = _client(server, "marketing")
    for _ in range(3):
        assert mkt.post("/segments", json={}).status_code == 200
    before = _requests_counted(server["url"], "/segments")
    assert before >= 3
    root = Path(clean_env["BENTOML_HOME"]) / METRICS_ROOT
    first = {p for p in root.iterdir() if p.is_dir()}
    assert len(first) == 1 and any(next(iter(first)).glob("*.db"))
    folder = server["folder"]
    with start_server([str(BIN / "lifecast"), "serve", "--no-access-log"], cwd=folder,
                      env=clean_env, log=folder / "serve-second.log") as second:
        assert second.url != server["url"]
        assert _requests_counted(server["url"], "/segments") == before
        assert mkt.post("/segments", json={}).status_code == 200
        assert _requests_counted(server["url"], "/segments") == before + 1
        both = {p for p in root.iterdir() if p.is_dir()}
        assert len(both) == 2 and first < both
        mine = _client({**server, "url": second.url}, "marketing")
        assert mine.post("/segments", json={}).status_code == 200
        assert _requests_counted(second.url, "/segments") == 1
    # the second one's folder went with it; the first's metrics are intact
    assert {p for p in root.iterdir() if p.is_dir()} == first
    assert _requests_counted(server["url"], "/segments") == before + 1


def test_serve_without_the_champions_artifacts_is_a_one_line_error(world, clean_env, tmp_path,
                                                                   register_champions) -> None:
    """The registry names a champion whose artifacts are gone (mlartifacts/ moved away):
    one line naming the version, where its artifacts should be and what to do, exit code 2
    (it was a traceback ending in BentoML's 'artifact "models:/lifecast-churn/1" is not a
    MLflow model', exit code 1). Nothing is left in BentoML's model store."""
    import shutil

    folder = tmp_path / "work"
    folder.mkdir()
    summary, _ = register_champions(world, folder)
    shutil.move(folder / "mlartifacts", tmp_path / "mlartifacts.moved")
    home = tmp_path / "bentoml"
    env = {**clean_env, "BENTOML_HOME": str(home)}
    result = subprocess.run([str(BIN / "lifecast"), "serve", "--dry-run"], cwd=folder, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    version = summary.versions["churn"]
    assert lines[0].startswith(f"error: the champion lifecast-churn v{version} cannot be "
                               f"served: its MLflow model artifacts are not at "
                               f"{folder / 'mlartifacts'}/")
    assert "MLFLOW_TRACKING_URI" in lines[0] and "lifecast train" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not any((home / "models").glob("*/*")), list((home / "models").rglob("*"))


def test_serve_while_the_artifact_server_is_down_is_temporary(world, clean_env, tmp_path,
                                                              register_champions) -> None:
    """The champions' artifacts are on an MLflow artifact server (`mlflow server
    --artifacts-only`; the experiment's artifact location its HTTP address, as a tracking store
    of its own gives it; ``mlflow-artifacts:`` needs the tracking store to be a server too)
    that is down: `lifecast serve` says the artifacts could not be downloaded and that it is
    temporary, one line, exit code 75 (EX_TEMPFAIL: a scheduler or supervisor tries again),
    leaving nothing in BentoML's model store. With the server back, the same command serves
    (here: imports the champions)."""
    import httpx
    import mlflow

    from tests.serving.conftest import _free_port, _stop_group

    port = _free_port()
    argv = [str(BIN / "mlflow"), "server", "--artifacts-only", "--host", "127.0.0.1",
            "--port", str(port), "--workers", "1",
            "--artifacts-destination", str(tmp_path / "served-artifacts")]

    def start() -> subprocess.Popen:
        proc = subprocess.Popen(argv, cwd=tmp_path, env=clean_env, start_new_session=True,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert proc.poll() is None, "mlflow server --artifacts-only exited"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                    return proc
            time.sleep(0.5)
        _stop_group(proc)
        raise AssertionError("mlflow server --artifacts-only did not answer /health")

    folder = tmp_path / "work"
    folder.mkdir()
    artifacts = start()
    try:
        # the experiment `lifecast train` logs to keeps its artifacts on the server
        mlflow.MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").create_experiment(
            "lifecast", artifact_location=f"http://127.0.0.1:{port}/api/2.0/mlflow-artifacts/artifacts/lifecast")
        summary, _ = register_champions(world, folder)
    finally:
        _stop_group(artifacts)
    assert any((tmp_path / "served-artifacts").rglob("MLmodel"))  # logged there, not locally
    home = tmp_path / "bentoml"
    env = {**clean_env, "BENTOML_HOME": str(home), "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0"}
    serve = [str(BIN / "lifecast"), "serve", "--dry-run"]
    result = subprocess.run(serve, cwd=folder, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 75, result.stdout[-2000:] + result.stderr[-3000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    version = summary.versions["churn"]
    assert lines[0].startswith(f"error: the MLflow artifacts of the champion lifecast-churn "
                               f"v{version} could not be downloaded: "), lines[0]
    assert lines[0].endswith("This is temporary: running the command again later may "
                             "succeed"), lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    assert not any((home / "models").glob("*/*")), list((home / "models").rglob("*"))
    # `lifecast score` downloads the champions too: the same, naming the artifact server
    from features import DEMO_MAPPING, demo_data_path

    m = DEMO_MAPPING
    mapping = ["--customer-col", m.customer_id, "--timestamp-col", m.timestamp,
               "--amount", m.amount, "--order-col", m.order_id]
    scored = subprocess.run(
        [str(BIN / "lifecast"), "score", "-t", str(demo_data_path()),
         *mapping],
        cwd=folder, env=env, capture_output=True, text=True, timeout=300)
    assert scored.returncode == 75, scored.stdout[-2000:] + scored.stderr[-3000:]
    assert (f"error: the artifact server of the MLflow tracking store "
            f"sqlite:///{folder / 'mlflow.db'} stopped answering: ") in scored.stderr
    assert f"port={port}" in scored.stderr and "Traceback" not in scored.stderr
    assert not (folder / "lifecast_store.db").exists()

    artifacts = start()  # back: the same command imports the champions
    try:
        result = subprocess.run(serve, cwd=folder, env=env, capture_output=True, text=True,
                                timeout=600)
    finally:
        _stop_group(artifacts)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"would serve lifecast-churn:v{version}-" in result.stderr, result.stderr
    assert {p.name for p in (home / "models").iterdir()} == {"lifecast-churn", "lifecast-clv"}
