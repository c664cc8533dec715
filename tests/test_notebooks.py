"""The worked examples in notebooks/: committed with their outputs, and they still run.

The slow test re-executes each notebook with nbclient (installed with nbmake, test extra) in a
temporary copy, so the committed file and its outputs stay untouched.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import nbformat
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
QUICKSTART = NOTEBOOKS / "01_quickstart.ipynb"
CELL_TIMEOUT = 600  # seconds per cell; the whole quickstart takes about a minute


def _errors(nb: nbformat.NotebookNode) -> list[str]:
    return [
        f"cell {i}: {out.get('ename')}: {out.get('evalue')}"
        for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
        for out in cell.get("outputs", []) if out.get("output_type") == "error"
    ]


def _text(nb: nbformat.NotebookNode) -> str:
    """Every text output: streams and the plain / Markdown forms of results."""
    parts = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "stream":
                parts.append(out.get("text", ""))
            data = out.get("data", {})
            parts += [data.get("text/plain", ""), data.get("text/markdown", "")]
    return "\n".join(parts)


def _images(nb: nbformat.NotebookNode) -> int:
    return sum("image/png" in out.get("data", {})
               for cell in nb.cells for out in cell.get("outputs", []))


def _check(nb: nbformat.NotebookNode) -> None:
    assert not _errors(nb), _errors(nb)
    text = _text(nb)
    for expected in ("Validation report", "roc_auc", "normalized_gini", "value_at_risk",
                     "| feature |"):
        assert expected in text, f"no {expected!r} in the notebook's output"
    # segments twice, calibration, gains, decile value, importance, SHAP summary
    assert _images(nb) >= 7


def test_quickstart_is_committed_with_outputs() -> None:
    nb = nbformat.read(QUICKSTART, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code and all(c.execution_count is not None for c in code), \
        "run `jupyter nbconvert --to notebook --execute --inplace` before committing"
    assert [c.execution_count for c in code] == list(range(1, len(code) + 1))
    _check(nb)


@pytest.mark.slow
def test_quickstart_runs(tmp_path: Path) -> None:
    from nbclient import NotebookClient

    copy = shutil.copy(QUICKSTART, tmp_path / QUICKSTART.name)
    nb = nbformat.read(copy, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    _check(nb)
    # it wrote nothing beside itself (its files go to a temporary folder it removes)
    assert sorted(p.name for p in tmp_path.iterdir()) == [QUICKSTART.name]
