"""The README's feature table is the registry's, its commands are the Makefile's, and every
`lifecast ...` command the README or the quickstart notebook shows parses as written."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
import typer

from features import DEMO_MAPPING, ColumnMapping, load_transactions
from features.registry import feature_table_markdown
from serving.cli import app
from training.metrics import HIGHER_IS_BETTER, LOWER_IS_BETTER, ZERO_IS_BEST
from training.models import BASELINE_FEATURES
from training.pipeline import OUTPUT_COLUMNS
from training.tracking import registry_lock_path

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


def _documented_commands() -> list[tuple[str, str]]:
    """(where, command) for every `lifecast ...` the README and the notebook's text show: inline
    code, and lines of code blocks (continuation lines joined, comments cut)."""
    texts = [("README.md", (ROOT / "README.md").read_text())]
    notebook = json.loads((ROOT / "notebooks" / "01_quickstart.ipynb").read_text())
    texts += [(f"notebook cell {i}", "".join(cell["source"]))
              for i, cell in enumerate(notebook["cells"]) if cell["cell_type"] == "markdown"]
    found = []
    for where, text in texts:
        text = text.replace("\\\n", " ")
        for m in re.finditer(r"`(lifecast [^`]*)`|^\s*(lifecast [^\n#]*)", text, re.M):
            found.append((where, (m.group(1) or m.group(2)).strip()))
    return found


def _misuse(command: str) -> str | None:
    """What in ``command`` the CLI would refuse: an unknown subcommand or option, or a
    positional argument where the command takes none. Placeholders (``<run id>``, ``...``,
    ``[--as-of ...]``'s brackets) stand for whatever the user types."""
    tokens = shlex.split(re.sub(r"<[^>]*>", "", command))[1:]
    cmd = typer.main.get_command(app)
    while tokens and hasattr(cmd, "commands") and tokens[0] in cmd.commands:
        cmd = cmd.commands[tokens.pop(0)]
    if hasattr(cmd, "commands"):
        return f"no subcommand {tokens[0]!r}" if tokens else None
    options = {o: p for p in cmd.params for o in [*p.opts, *getattr(p, "secondary_opts", [])]
               if p.param_type_name == "option"}
    takes_arguments = any(p.param_type_name == "argument" for p in cmd.params)
    tokens = [t.strip("[]") for t in tokens if t.strip("[]") not in ("", "|")]
    while tokens:
        token = tokens.pop(0)
        if token.startswith("-"):
            name = token.split("=")[0]
            if name not in options:
                return f"no option {name}"
            if not options[name].is_flag and "=" not in token and tokens:
                tokens.pop(0)
        elif token != "..." and not takes_arguments:
            return f"unexpected argument {token!r} (the command takes options only)"
    return None


def test_every_documented_lifecast_command_parses():
    commands = _documented_commands()
    assert len(commands) > 20
    wrong = [f"{where}: {command!r}: {why}" for where, command in commands
             if (why := _misuse(command))]
    assert not wrong, "\n".join(wrong)


def test_what_the_commands_write_in_the_working_folder_is_ignored_by_git():
    """The README: train, score and promote write their files into the folder they run in
    and "git ignores them there": the MLflow store, its artifacts, the customer store, and the
    lock file beside the store that train and promote hold (`registry_lock_path`)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    lock = registry_lock_path(f"sqlite:///{ROOT / 'mlflow.db'}").relative_to(ROOT)
    written = ["mlflow.db", "mlartifacts/", "lifecast_store.db", str(lock)]
    readme = (ROOT / "README.md").read_text()
    assert all(f"`{name}`" in readme for name in written), "the README lists what they write"
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *written], cwd=ROOT,
                             capture_output=True, text=True).stdout.split()
    assert sorted(ignored) == sorted(written)


def test_the_readme_explains_every_printed_metric_and_output_field():
    """`make demo` prints roc_auc, ece, lift_top_decile, decile_mape, ... and each customer's
    reasons name features such as bg_p_no_purchase; the README explained none of them. Its
    "Reading the results" names every metric the comparison tables print, every per-customer
    output field and every baseline feature a reason can name."""
    readme = (ROOT / "README.md").read_text()
    assert "\n## Reading the results\n" in readme
    section = readme.split("\n## Reading the results\n")[1].split("\n## ")[0]
    names = {*HIGHER_IS_BETTER, *LOWER_IS_BETTER, *ZERO_IS_BEST, *BASELINE_FEATURES,
             *(c for c in OUTPUT_COLUMNS if c not in ("customer_id", "as_of"))}
    missing = sorted(name for name in names if f"`{name}`" not in section)
    assert not missing, f"README's 'Reading the results' does not explain {missing}"
