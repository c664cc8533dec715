"""The README's feature table is the registry's, and its commands are the Makefile's."""

from __future__ import annotations

from pathlib import Path

from features.registry import feature_table_markdown

ROOT = Path(__file__).resolve().parents[1]


def test_readme_feature_table_is_generated_from_the_registry():
    assert feature_table_markdown() in (ROOT / "README.md").read_text()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make test\n" in ci
