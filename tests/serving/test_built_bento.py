"""The built Bento serves (slow tier): what a CRM team deploys, started for real.

conftest's `built_bento` is ``bentoml build`` of the repository (offline) with `workdir`'s
MLflow champions. Here it goes where a deployment takes it: ``bentoml export`` (the Bento with
its models) and ``bentoml import`` into a BentoML home of its own, then ``bentoml serve
lifecast:<version>`` from a folder that is not the repository, in a Python environment holding
only the installed distributions the Bento asks for (its requirements.txt and BentoML, with
their dependencies). The virtualenv has lifecast installed in editable mode, whose import hook
would quietly load any module the Bento lacks from the repository; that environment does not
have it (see `_bento_python`), so a Bento missing one of its sources (bentofile.yaml
``include``), a data file or a package fails here. (Checked by hand: with
src/training/rowpredict.py deleted from the imported Bento, the project's virtualenv still
serves it, /readyz 200, while here the worker fails with ModuleNotFoundError and BentoML
restarts it over and over: the test fails when READY_TIMEOUT runs out, the error at the end of
the log it shows.)
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from serving.schemas import EXAMPLE_SCORE_REQUEST

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
#: the project's own packages: in a Bento, only its sources (src/) provide them
OWN_PACKAGES = ("features", "training", "serving")
#: what the Bento's environment must not import: the project's packages (but from the Bento)
#: and the training-only dependencies the Bento leaves out (tests/serving/test_bento_build.py)
NOT_INSTALLED = (*OWN_PACKAGES, "mlflow", "matplotlib")

_PROBE = """
import importlib.metadata, importlib.util, json, sys
names = sys.argv[1:]
try:
    importlib.metadata.version("lifecast")
    lifecast = True
except importlib.metadata.PackageNotFoundError:
    lifecast = False
print(json.dumps({"found": {n: importlib.util.find_spec(n) is not None for n in names},
                  "lifecast": lifecast, "path": sys.path}))
"""


def _run(argv: list[str | Path], **kwargs) -> subprocess.CompletedProcess:
    out = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600,
                         **kwargs)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _requirements(bento: Path) -> list[Requirement]:
    """The Bento's packages (env/python/requirements.txt) and BentoML, which a Bento's image
    installs besides them, for this platform."""
    lines = (bento / "env" / "python" / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in (ln.strip() for ln in lines)
            if line and not line.startswith(("#", "-"))]
    return [r for r in [*reqs, Requirement("bentoml")]
            if r.marker is None or r.marker.evaluate({"extra": ""})]


def _closure(roots: list[Requirement]) -> set[str]:
    """The installed distributions (canonical names) ``roots`` need, their extras' and their
    dependencies' included."""
    todo = [(canonicalize_name(r.name), extra) for r in roots for extra in {"", *r.extras}]
    done: set[tuple[str, str]] = set()
    installed: set[str] = set()
    while todo:
        name, extra = todo.pop()
        if (name, extra) in done:
            continue
        done.add((name, extra))
        try:
            dist = importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue  # not installed here: if it is needed, serving fails
        installed.add(name)
        for line in dist.requires or []:
            dep = Requirement(line)
            if dep.marker is None or dep.marker.evaluate({"extra": extra}):
                todo.extend((canonicalize_name(dep.name), e) for e in {"", *dep.extras})
    return installed


def _bento_python(root: Path, bento: Path) -> Path:
    """A virtual environment at ``root`` whose site-packages links the entries of this
    virtualenv's that belong to the Bento's distributions (`_closure` of `_requirements`), and
    those of no distribution; not the others' (lifecast's editable install, MLflow, the test
    tools...), nor any .pth file (the editable install's import hook is one). Returns its
    Python. A folder two distributions share (a namespace package) is linked whole."""
    import sysconfig

    site = Path(sysconfig.get_paths()["purelib"])
    assert Path(sysconfig.get_paths()["platlib"]) == site
    keep = _closure(_requirements(bento))
    owners: dict[str, set[str]] = {}
    for dist in importlib.metadata.distributions(path=[str(site)]):
        for file in dist.files or []:
            top = Path(str(file)).parts[0]
            if top != "..":  # scripts: ../../../bin/...
                owners.setdefault(top, set()).add(canonicalize_name(dist.metadata["Name"]))
    assert not {"lifecast", "mlflow", "matplotlib"} & keep, keep
    _run([sys.executable, "-m", "venv", "--without-pip", root])
    target = root / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / \
        "site-packages"
    assert target.is_dir()
    for entry in site.iterdir():
        if entry.suffix == ".pth" or (entry.name in owners and not owners[entry.name] & keep):
            continue
        (target / entry.name).symlink_to(entry)
    return root / "bin" / "python"


def test_the_built_bento_serves_from_its_own_files(
    built_bento, workdir, clean_env, start_server, stored_batch, tmp_path: Path
) -> None:
    """``bentoml serve <tag>`` of the exported and re-imported Bento, in an environment with
    only its packages and from a folder outside the repository: ready, /predict answers a
    customer of the store with the champions' scores, /score computes features, no key is 401,
    and its worker runs in the Bento's src/ with that environment's Python."""
    import httpx

    from features.segments import SEGMENTS

    folder, versions, tokens = workdir
    name, version = built_bento.tag.split(":")
    exported = tmp_path / "lifecast.bento"
    _run([BIN / "bentoml", "export", built_bento.tag, exported], env=clean_env, cwd=tmp_path)

    # the CRM's machine: its own BentoML home and working folder, the Bento's packages only
    python = _bento_python(tmp_path / "env", built_bento.path)
    home, crm = tmp_path / "crm-bentoml", tmp_path / "crm"
    crm.mkdir()
    env = {k: v for k, v in clean_env.items() if k != "PYTHONPATH"}
    env.update(BENTOML_HOME=str(home), BENTOML_DO_NOT_TRACK="True",
               PATH=f"{python.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    probe = json.loads(_run([python, "-c", _PROBE, *NOT_INSTALLED, "bentoml", "lightgbm",
                             "duckdb", "psycopg"], env=env, cwd=crm).stdout)
    assert probe["found"] == {**dict.fromkeys(NOT_INSTALLED, False), "bentoml": True,
                              "lightgbm": True, "duckdb": True, "psycopg": True}, probe
    assert not probe["lifecast"] and str(ROOT) not in probe["path"], probe
    _run([python, "-m", "bentoml", "import", exported], env=env, cwd=crm)
    bento = home / "bentos" / name / version
    assert (bento / "src" / "serving" / "service.py").is_file()
    packed = {m["tag"] for m in yaml.safe_load((bento / "bento.yaml").read_text())["models"]}
    for tag in packed:  # the export carried the models
        model_name, model_version = tag.split(":")
        assert (home / "models" / model_name / model_version / "model.yaml").is_file(), tag

    store_url = f"sqlite:///{folder / 'lifecast_store.db'}"
    env.update(LIFECAST_STORE_URL=store_url,
               LIFECAST_KEYS_FILE=str(folder / ".lifecast" / "keys.json"),
               LIFECAST_AUDIT_LOG=str(crm / "audit.log"))
    serve = [str(python), "-m", "bentoml", "serve", built_bento.tag, "--host", "127.0.0.1"]
    with start_server(serve, cwd=crm, env=env, log=tmp_path / "serve.log") as running:
        if sys.platform == "linux":  # the worker runs the Bento's sources with that Python
            cmdlines = {pid: Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
                        for pid in running.processes()}
            workers = [pid for pid, cmd in cmdlines.items()
                       if b"_bentoml_impl.worker.service" in cmd]
            assert workers, cmdlines
            for pid in workers:
                assert cmdlines[pid][0].decode() == str(python), cmdlines[pid]
                assert os.readlink(f"/proc/{pid}/cwd") == str((bento / "src").resolve())

        scores, _ = stored_batch(store_url)
        customer = str(scores["customer_id"].iloc[0])
        stored = float(scores["churn_probability"].iloc[0])
        anon = httpx.post(f"{running.url}/predict", json={"customer_ids": [customer]},
                          timeout=60)
        assert anon.status_code == 401 and "bearer" in anon.json()["error"], anon.text
        crm_key = {"Authorization": f"Bearer {tokens['crm']}"}
        resp = httpx.post(f"{running.url}/predict", json={"customer_ids": [customer]},
                          headers=crm_key, timeout=60)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["errors"] == [] and len(body["predictions"]) == 1
        pred = body["predictions"][0]
        assert pred["customer_id"] == customer
        assert 0.0 <= pred["churn_probability"] <= 1.0
        assert abs(pred["churn_probability"] - stored) < 1e-9  # the champions scored the store
        assert pred["segment"] in SEGMENTS
        assert pred["reasons"] and all(r["feature"] for r in pred["reasons"])
        assert pred["model_versions"] == {"churn": versions["churn"], "clv": versions["clv"]}
        score = httpx.post(f"{running.url}/score", json=EXAMPLE_SCORE_REQUEST, headers=crm_key,
                           timeout=60)
        assert score.status_code == 200, score.text
        assert score.json()["predictions"][0]["customer_id"] == "new-0001"
    log = running.log.read_text()
    assert "Traceback" not in log, log[-4000:]
