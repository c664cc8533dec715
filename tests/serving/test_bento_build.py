"""The Bento's Python packages (bentofile.yaml) are the project's (pyproject.toml): a Bento
must start wherever ``lifecast serve`` starts, a PostgreSQL customer store included.
(`bentoml build` itself runs in the slow tier, test_service_integration.py.)"""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
#: pyproject dependencies a Bento does without: training only (the service loads the models
#: natively, never through MLflow, and draws no plots), and BentoML, which a Bento brings.
NOT_IN_BENTO = {"mlflow", "matplotlib", "bentoml"}


def _bento_packages() -> dict[str, Requirement]:
    config = yaml.safe_load((ROOT / "bentofile.yaml").read_text())
    reqs = [Requirement(r) for r in config["python"]["packages"]]
    return {canonicalize_name(r.name): r for r in reqs}


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def test_the_bento_has_the_postgres_driver_of_the_postgres_extra() -> None:
    """A Bento serving a PostgreSQL store (LIFECAST_STORE_URL=postgresql+psycopg://...)
    needs psycopg, as `pip install lifecast[postgres]` does."""
    bento = _bento_packages()
    extra = [Requirement(r) for r in _pyproject()["optional-dependencies"]["postgres"]]
    assert [canonicalize_name(r.name) for r in extra] == ["psycopg"]
    for req in extra:
        assert str(bento.get(canonicalize_name(req.name))) == str(req), (
            f"bentofile.yaml must list {req} (pyproject's postgres extra)")


def test_the_bento_packages_are_the_runtime_dependencies_with_their_ranges() -> None:
    bento = _bento_packages()
    project = _pyproject()
    runtime = {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}
    postgres = {canonicalize_name(r.name): r for r in
                map(Requirement, project["optional-dependencies"]["postgres"])}
    expected = {name: req for name, req in runtime.items() if name not in NOT_IN_BENTO}
    expected.update(postgres)
    assert {n: str(r) for n, r in bento.items()} == {n: str(r) for n, r in expected.items()}


def test_what_the_bento_leaves_out_is_not_imported_by_the_service() -> None:
    """The service (its module, a store read, /score's feature code) never imports MLflow or
    matplotlib, which the Bento does not carry."""
    code = ("import sys; import serving.service, serving.app, serving.audit, serving.keys, "
            "training.store, training.models, training.baseline, training.rowpredict, "
            "features.online, features.segments; "
            "print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, cwd=ROOT).stdout.split()
    assert "mlflow" not in out and "matplotlib" not in out
