"""ColumnMapping (YAML, overrides) and FeatureConfig validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from features.config import (
    CONTRACT_COLUMNS,
    MAPPING_FLAGS,
    ColumnMapping,
    FeatureConfig,
    mapping_key,
    mapping_setting,
)
from features.naming import command_line


def test_defaults_are_the_contract_names() -> None:
    m = ColumnMapping()
    assert m.present() == {"customer_id": "customer_id", "timestamp": "timestamp",
                           "amount": "amount"}


def test_from_yaml_reads_a_flat_or_nested_mapping(tmp_path: Path) -> None:
    flat = tmp_path / "flat.yaml"
    flat.write_text(
        "customer_id: CustomerID\n"
        "timestamp: InvoiceDate\n"
        "amount: Quantity * UnitPrice\n"
        "order_id: InvoiceNo\n"
        "timestamp_format: '%d/%m/%Y %H:%M'\n"
    )
    m = ColumnMapping.from_yaml(flat)
    assert m.customer_id == "CustomerID" and m.amount == "Quantity * UnitPrice"
    assert m.timestamp_format == "%d/%m/%Y %H:%M"
    # present() lists columns only, never the timestamp format
    assert m.present() == {
        "customer_id": "CustomerID",
        "timestamp": "InvoiceDate",
        "amount": "Quantity * UnitPrice",
        "order_id": "InvoiceNo",
    }
    nested = tmp_path / "nested.yml"
    nested.write_text("columns:\n  customer_id: household_id\n  amount: sales_value\n")
    m = ColumnMapping.from_yaml(nested)
    assert (m.customer_id, m.timestamp, m.amount) == ("household_id", "timestamp", "sales_value")
    empty = tmp_path / "empty.yaml"  # a mistake (the mapping was never written), not the
    for text in ("", "# customer_id: CustomerID\n"):  # defaults: say so
        empty.write_text(text)
        with pytest.raises(ValueError, match=f"mapping file {empty} is empty: write one line"):
            ColumnMapping.from_yaml(empty)


def test_from_yaml_refuses_a_key_given_twice(tmp_path: Path) -> None:
    """YAML keeps the last of two equal keys silently: customer_id read 'inv'."""
    path = tmp_path / "dup.yaml"
    path.write_text("customer_id: cid\ncustomer_id: inv\ntimestamp: ts\namount: amt\n")
    with pytest.raises(ValueError) as info:
        ColumnMapping.from_yaml(path)
    msg = str(info.value)
    assert f"mapping file {path}" in msg and "the key 'customer_id' is given twice" in msg
    assert 'in "' + str(path) + '", line 2' in msg
    path.write_text("columns:\n  amount: a\n  amount: b\n")
    with pytest.raises(ValueError, match="the key 'amount' is given twice"):
        ColumnMapping.from_yaml(path)


def test_from_yaml_unknown_key_names_it_and_the_allowed_keys(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("customer: CustomerID\n")
    with pytest.raises(ValueError) as info:
        ColumnMapping.from_yaml(path)
    msg = str(info.value)
    assert str(path) in msg and "unknown key 'customer'" in msg
    assert "did you mean 'customer_id'?" in msg
    assert "customer_id" in msg and "timestamp_format" in msg
    path.write_text("zzz: CustomerID\n")  # nothing close: no guess
    with pytest.raises(ValueError) as info:
        ColumnMapping.from_yaml(path)
    assert "unknown key 'zzz' (allowed: customer_id" in str(info.value)


def test_from_yaml_rejects_a_list_bad_yaml_and_a_missing_file(tmp_path: Path) -> None:
    listing = tmp_path / "list.yaml"
    listing.write_text("- customer_id\n- timestamp\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        ColumnMapping.from_yaml(listing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("customer_id: [unclosed\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        ColumnMapping.from_yaml(broken)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        ColumnMapping.from_yaml(tmp_path / "missing.yaml")


def test_from_yaml_blank_required_field(tmp_path: Path) -> None:
    path = tmp_path / "m.yaml"
    path.write_text("customer_id: '  '\n")
    with pytest.raises(ValueError, match="customer_id: .*must name a column"):
        ColumnMapping.from_yaml(path)


def test_with_overrides_replaces_only_given_fields() -> None:
    base = ColumnMapping(customer_id="CustomerID", order_id="InvoiceNo")
    out = base.with_overrides(customer_id="cust", order_id=None, amount="Qty * Price")
    assert (out.customer_id, out.order_id, out.amount) == ("cust", "InvoiceNo", "Qty * Price")
    assert base.customer_id == "CustomerID"  # frozen original unchanged
    with pytest.raises(ValueError, match="nonsense: Extra inputs are not permitted"):
        base.with_overrides(nonsense="x")


def test_with_overrides_errors_name_the_flag_and_empty_unsets_optional_columns() -> None:
    """What the command line's flags do on top of a YAML mapping: a bad value is one line
    naming the flag (not pydantic's report; the field when Python calls it), '' drops an
    optional column, and a required one cannot be emptied."""
    base = ColumnMapping(customer_id="c", timestamp="t", amount="a", order_id="o")
    with command_line(), pytest.raises(ValueError) as err:
        base.with_overrides(timestamp_format="dd/mm/yyyy")
    assert str(err.value) == ("--timestamp-format: 'dd/mm/yyyy' is not a strptime format; "
                              "write it with % codes, e.g. '%d/%m/%Y %H:%M'")
    with pytest.raises(ValueError, match="^timestamp_format: 'dd/mm/yyyy' is not a strptime"):
        base.with_overrides(timestamp_format="dd/mm/yyyy")
    assert base.with_overrides(order_id="").order_id is None
    assert base.with_overrides(order_id=" ", product_id="p").product_id == "p"
    with command_line(), pytest.raises(ValueError, match="--customer-col cannot be empty"):
        base.with_overrides(customer_id="")
    with pytest.raises(ValueError, match="^customer_id cannot be empty"):
        base.with_overrides(customer_id="")


def test_mapping_hints_name_the_field_in_python_and_the_flag_on_the_command_line() -> None:
    """A Python caller who passed ``mapping=`` was told to set '--amount' (a flag of a
    command they never ran); the command line keeps its flags. Both get the YAML key."""
    assert mapping_key("customer_id") == "ColumnMapping(customer_id=...) (YAML key customer_id:)"
    assert mapping_setting("amount", '"Unit Price" / 100') == (
        "ColumnMapping(amount='\"Unit Price\" / 100') (YAML key amount:)")
    assert mapping_setting("decimal_comma", True) == (
        "ColumnMapping(decimal_comma=True) (YAML key decimal_comma: true)")
    assert mapping_setting("missing_ids", ("GUEST", "0")) == (
        "ColumnMapping(missing_ids=['GUEST', '0']) (YAML key missing_ids: ['GUEST', '0'])")
    with command_line():
        assert mapping_key("customer_id") == "--customer-col (YAML key customer_id:)"
        assert mapping_setting("amount", '"Unit Price" / 100') == (
            "--amount '\"Unit Price\" / 100' (YAML key amount:)")
        assert mapping_setting("decimal_comma", True) == (
            "--decimal-comma (YAML key decimal_comma: true)")
        assert mapping_setting("missing_ids", ("GUEST", "0")) == (
            "--missing-ids 'GUEST,0' (YAML key missing_ids: ['GUEST', '0'])")


def test_mapping_is_frozen_and_strips_names() -> None:
    m = ColumnMapping(customer_id="  CustomerID ")
    assert m.customer_id == "CustomerID"
    with pytest.raises(ValidationError):
        m.customer_id = "other"  # type: ignore[misc]


def test_timestamp_format_must_be_a_strptime_format() -> None:
    with pytest.raises(ValidationError, match="strptime format"):
        ColumnMapping(timestamp_format="dd/mm/yyyy")


def test_every_mapping_field_has_a_flag() -> None:
    assert set(MAPPING_FLAGS) == set(ColumnMapping.model_fields)
    assert set(CONTRACT_COLUMNS) <= set(MAPPING_FLAGS)
    assert MAPPING_FLAGS["customer_id"] == "--customer-col"


def test_feature_config_defaults_and_validation() -> None:
    c = FeatureConfig()
    assert (c.churn_horizon_days, c.clv_horizon_days, c.stale_after_days) == (90, 365, 30)
    assert FeatureConfig(windows_days=(90, 30, 30)).windows_days == (30, 90)
    for bad in (
        {"churn_horizon_days": 0},
        {"clv_horizon_days": -1},
        {"windows_days": ()},
        {"windows_days": (30, -7)},
        {"snapshot_every_days": 0},
        {"stale_after_days": -1},
        {"horizon": 90},
    ):
        with pytest.raises(ValidationError):
            FeatureConfig(**bad)


def test_a_config_of_the_other_kind_says_how_to_pass_it() -> None:
    """build_features(..., config=TrainConfig(...)) and train(..., config=FeatureConfig(...))
    said only "config must be a FeatureConfig or a dict of its fields, not TrainConfig"."""
    from features.config import as_config
    from training.models import TrainConfig

    train_cfg = TrainConfig(features=FeatureConfig(churn_horizon_days=30))
    with pytest.raises(TypeError, match=r"pass its \.features"):
        FeatureConfig.of(train_cfg)
    with pytest.raises(TypeError, match=r"TrainConfig\(features=") as err:
        as_config(TrainConfig, FeatureConfig(churn_horizon_days=30))
    assert "not FeatureConfig" in str(err.value)


def test_a_dict_key_of_a_nested_config_says_where_it_goes() -> None:
    """{"churn_horizon_days": 30} as a TrainConfig got pydantic's "Extra inputs are not
    permitted": it belongs under "features"."""
    from features.config import as_config
    from training.models import TrainConfig

    with pytest.raises(ValueError, match=r"\{'features': \{'churn_horizon_days': 30\}\}"):
        as_config(TrainConfig, {"churn_horizon_days": 30, "num_threads": 1})
    with pytest.raises(ValidationError):  # any other problem: pydantic's own error
        as_config(TrainConfig, {"num_threads": -1})
    assert as_config(TrainConfig, {"features": {"churn_horizon_days": 30}}).features == \
        FeatureConfig(churn_horizon_days=30)


def test_a_date_given_where_the_mapping_goes_says_so() -> None:
    """train(df, "2011-12-01", mapping), in build_features' argument order (train and score
    take the mapping second), said only "mapping file 2011-12-01 does not exist"."""
    import datetime as dt

    import pandas as pd

    from training.pipeline import train

    df = pd.DataFrame({"c": [1], "t": ["2021-01-01"], "v": [1.0]})
    for date in ("2011-12-01", dt.date(2011, 12, 1), pd.Timestamp("2011-12-01")):
        with pytest.raises((FileNotFoundError, TypeError), match="looks like a date") as err:
            train(df, date, {"customer_id": "c", "timestamp": "t", "amount": "v"})
        assert "as_of=" in str(err.value)
    with pytest.raises(FileNotFoundError, match="mapping file nothere.yaml does not exist$"):
        ColumnMapping.coerce("nothere.yaml")
