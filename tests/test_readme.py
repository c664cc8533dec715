"""The README's feature table is the registry's, and its commands are the Makefile's."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from features import DEMO_MAPPING, ColumnMapping, load_transactions
from features.registry import feature_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_feature_table_is_generated_from_the_registry():
    assert feature_table_markdown() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test\n" in ci


def test_the_readme_mapping_command_writes_a_mapping_that_reads_online_retail(
    shared_data, tmp_path
):
    """The README's `cat > mapping.yaml` block, run as written, gives the mapping its train
    and backtest examples use on ../shared/data/online_retail.parquet."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```bash\n(cat > mapping\.yaml <<'EOF'\n.*?\nEOF\n)```", readme, re.S)
    assert block, "the README no longer has the `cat > mapping.yaml` block"
    subprocess.run(["bash", "-c", block.group(1)], cwd=tmp_path, check=True)
    mapping = ColumnMapping.from_yaml(tmp_path / "mapping.yaml")
    assert mapping == DEMO_MAPPING
    report = load_transactions(shared_data / "online_retail.parquet", mapping).report
    assert report.customers == 4_372
