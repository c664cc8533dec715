"""Typed configuration shared by every stage.

`ColumnMapping` maps a user's column names onto the data contract of DESIGN.md
(``customer_id, timestamp, amount`` plus optional ``order_id, quantity, product_id,
category, channel, discount``). It is applied once, at the boundary, by
`features.contract.load_transactions`; everything after that uses the contract's names.

`FeatureConfig` holds the time semantics: horizons, snapshot spacing and the
lookback windows of the behavioural features.
"""

from __future__ import annotations

import datetime as dt
import difflib
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from features.naming import named

#: Contract columns that a mapping may fill, in output order.
REQUIRED_COLUMNS: tuple[str, ...] = ("customer_id", "timestamp", "amount")
OPTIONAL_COLUMNS: tuple[str, ...] = (
    "order_id",
    "quantity",
    "product_id",
    "category",
    "channel",
    "discount",
)
CONTRACT_COLUMNS: tuple[str, ...] = REQUIRED_COLUMNS + OPTIONAL_COLUMNS

#: Command-line flag that sets each `ColumnMapping` field; the YAML key is the field name.
#: Error messages quote these, so the command line should use the same spellings.
MAPPING_FLAGS: dict[str, str] = {
    "customer_id": "--customer-col",
    "timestamp": "--timestamp-col",
    "amount": "--amount",
    "order_id": "--order-col",
    "quantity": "--quantity-col",
    "product_id": "--product-col",
    "category": "--category-col",
    "channel": "--channel-col",
    "discount": "--discount-col",
    "timestamp_format": "--timestamp-format",
    "decimal_comma": "--decimal-comma",
    "missing_ids": "--missing-ids",
}


def mapping_key(key: str) -> str:
    """How a message names the `ColumnMapping` field ``key`` to its reader: by its flag on
    the command line, ``--amount (YAML key amount:)``, and by the field a Python caller
    sets otherwise, ``ColumnMapping(amount=...) (YAML key amount:)`` (a dict or YAML file
    given as ``mapping=`` has the same key)."""
    return f"{named(MAPPING_FLAGS[key], f'ColumnMapping({key}=...)')} (YAML key {key}:)"


def mapping_setting(key: str, value: Any) -> str:
    """The `ColumnMapping` field ``key`` set to ``value``, as its reader writes it:
    ``--amount 'Price / 100' (YAML key amount:)`` on the command line, else
    ``ColumnMapping(amount='Price / 100') (YAML key amount:)``. A switch is
    ``--decimal-comma (YAML key decimal_comma: true)``, a list of ids
    ``--missing-ids 'GUEST,0' (YAML key missing_ids: ['GUEST', '0'])``."""
    flag = MAPPING_FLAGS[key]
    yaml_value = ""
    if isinstance(value, bool):
        cli = flag if value else f"--no-{flag.removeprefix('--')}"
        python, yaml_value = repr(value), f" {str(value).lower()}"
    elif isinstance(value, (list, tuple)):
        cli = f"{flag} '{','.join(value)}'"
        python = yaml_value = repr(list(value))
        yaml_value = f" {yaml_value}"
    else:
        cli, python = f"{flag} '{value}'", repr(value)
    return f"{named(cli, f'ColumnMapping({key}={python})')} (YAML key {key}:{yaml_value})"


#: Text that starts like a year-first date ("2011-12-01", "2011/12/01 10:00"): given as a
#: mapping, it is a cutoff passed in the mapping's place, not a YAML file name.
_DATE_LIKE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}(?:$|[ T])")


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader refusing a key given twice in one mapping: plain YAML keeps the
    last silently, so ``customer_id: cid`` then ``customer_id: inv`` read the second."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, (str, int, float, bool, type(None))):
                continue  # an unhashable or odd key: SafeLoader's own error names it
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {key!r} is given twice; keep one", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


class ColumnMapping(BaseModel):
    """Which of the user's columns is which contract column.

    Every value is the name of a column in the user's data, except ``amount``, which may
    also be an arithmetic expression over columns (``"Quantity * UnitPrice"``; quote a name
    with spaces in double quotes: ``"\\"Unit Price\\" * Qty"``). A field left as ``None``
    means the data has no such column. The defaults are the contract names themselves,
    so data already in contract form needs no mapping.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    customer_id: str = "customer_id"
    timestamp: str = "timestamp"
    amount: str = "amount"
    order_id: str | None = None
    quantity: str | None = None
    product_id: str | None = None
    category: str | None = None
    channel: str | None = None
    discount: str | None = None
    #: strptime format of a text timestamp column (e.g. ``"%d/%m/%Y %H:%M"``); ``None`` lets
    #: the loader parse ISO 8601 text (with or without a UTC offset) or the format DuckDB sniffs.
    timestamp_format: str | None = None
    #: numbers in text columns (amount and the columns of an amount expression, quantity,
    #: discount) use ',' as the decimal point and '.' or a space between thousands, as in
    #: '1.234,50' (German, French, ... exports); ``False``: '.' is the decimal point.
    decimal_comma: bool = False
    #: customer id values that stand for "no customer" in this data, such as the id of
    #: guest checkouts or a walk-in account ('0', 'GUEST'): their rows are dropped and
    #: counted like rows without a customer id (blank, 'NA', 'null', ...). On the command
    #: line, comma-separated: ``--missing-ids '0,GUEST'``.
    missing_ids: tuple[str, ...] = ()

    @field_validator("customer_id", "timestamp", "amount")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value or not value.strip():
            raise ValueError("must name a column (or, for amount, an expression)")
        return value.strip()

    @field_validator("missing_ids", mode="before")
    @classmethod
    def _id_list(cls, value: Any) -> tuple[str, ...]:
        if value is None:
            return ()
        if isinstance(value, str):
            value = value.split(",")
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ValueError("must be a list of customer ids, e.g. ['0', 'GUEST']")
        ids = []
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (str, int)):
                raise ValueError(f"{item!r} is no customer id: give ids as text or whole "
                                 f"numbers, e.g. ['0', 'GUEST']")
            text = str(item).strip()
            if text:
                ids.append(text)
        return tuple(dict.fromkeys(ids))

    @field_validator("timestamp_format")
    @classmethod
    def _strptime_format(cls, value: str | None) -> str | None:
        if value is not None and "%" not in value:
            raise ValueError(
                f"{value!r} is not a strptime format; write it with % codes, e.g. '%d/%m/%Y %H:%M'"
            )
        return value

    @classmethod
    def from_yaml(cls, path: str | Path) -> ColumnMapping:
        """Read a mapping from a YAML file whose keys are contract column names."""
        path = Path(path)
        try:
            with path.open(encoding="utf-8") as f:  # errors then name the file
                raw = yaml.load(f, Loader=_UniqueKeyLoader)
        except FileNotFoundError:
            raise FileNotFoundError(f"mapping file {path} does not exist") from None
        except yaml.YAMLError as exc:
            raise ValueError(f"mapping file {path} is not valid YAML: {exc}") from None
        if raw is None:
            raise ValueError(
                f"mapping file {path} is empty: write one line per column, e.g. "
                f"'customer_id: CustomerID'"
            )
        if not isinstance(raw, dict):
            raise ValueError(
                f"mapping file {path} must hold a mapping of contract column to your column, "
                f"e.g. 'customer_id: CustomerID'"
            )
        raw = raw.get("columns", raw)
        try:
            return cls(**raw)
        except ValidationError as exc:
            raise ValueError(f"mapping file {path}: {_pydantic_message(exc)}") from None

    @classmethod
    def coerce(cls, value: ColumnMapping | dict | str | Path | None) -> ColumnMapping:
        """``value`` as a mapping: itself, the default (contract names) for None, a dict
        of contract column -> user column, or the path of a YAML mapping file; a dict or a
        file is checked the same way (`ValueError` naming the unknown or bad key)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        looks_like_date = (
            f"the mapping {str(value)!r} looks like a date: train and score take the mapping "
            f"second (train(transactions, mapping, as_of)), build_features and backtest "
            f"third (build_features(transactions, cutoff, mapping)); pass the date by name, "
            f"as_of=... or cutoff=..."
        )
        if isinstance(value, (dt.date, np.datetime64)):
            raise TypeError(looks_like_date)
        if isinstance(value, (str, Path)):
            if (isinstance(value, str) and _DATE_LIKE.match(value.strip())
                    and not Path(value).exists()):
                raise FileNotFoundError(looks_like_date)
            return cls.from_yaml(value)
        if isinstance(value, dict):
            try:
                return cls(**value)
            except ValidationError as exc:
                raise ValueError(f"column mapping: {_pydantic_message(exc)}") from None
        raise TypeError(
            f"mapping must be a ColumnMapping, a dict of contract column -> your column "
            f"(e.g. {{'customer_id': 'CustomerID'}}), the path of a YAML mapping file or "
            f"None, got {type(value).__name__}"
        )

    def with_overrides(self, **overrides: Any) -> ColumnMapping:
        """A copy with the given (non-None) fields replaced, as command-line flags do; an
        empty string unsets an optional field (``--order-col ''`` drops the YAML file's
        order_id). An invalid value raises ValueError naming its flag (its field outside the
        command line, `features.naming`), in one line."""
        data = self.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            if isinstance(value, str) and not value.strip():
                if key in REQUIRED_COLUMNS:
                    raise ValueError(f"{named(MAPPING_FLAGS.get(key, key), key)} cannot be "
                                     f"empty: name the column that holds the {key}")
                value = None
            data[key] = value
        try:
            return ColumnMapping(**data)
        except ValidationError as exc:
            parts = []
            for err in exc.errors():
                key = str(err["loc"][0]) if err["loc"] else "mapping"
                parts.append(f"{named(MAPPING_FLAGS.get(key, key), key)}: "
                             f"{err['msg'].removeprefix('Value error, ')}")
            raise ValueError("; ".join(parts)) from None

    def present(self) -> dict[str, str]:
        """Contract column -> user column (or expression) for the columns that are mapped."""
        return {
            k: v for k, v in self.model_dump().items() if v is not None and k in CONTRACT_COLUMNS
        }


ConfigT = TypeVar("ConfigT", bound=BaseModel)

#: The longest span in days a horizon or window may have (100 years): beyond it date
#: arithmetic overflows, and no customer log needs it.
MAX_DAYS = 36_500


class FeatureConfig(BaseModel):
    """Time semantics and feature options; one object passed to every stage.

    Horizons and windows are in days. A training frame stacks snapshots every
    ``snapshot_every_days`` days, going back at most ``n_snapshots`` cutoffs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    churn_horizon_days: int = Field(90, gt=0, le=MAX_DAYS)
    clv_horizon_days: int = Field(365, gt=0, le=MAX_DAYS)
    windows_days: tuple[int, ...] = (30, 90, 180, 365)
    trend_window_days: int = Field(90, gt=0, le=MAX_DAYS)
    snapshot_every_days: int = Field(30, gt=0, le=MAX_DAYS)
    n_snapshots: int = Field(12, gt=0)
    #: warn when the cutoff is this many days after the last event (stale data)
    stale_after_days: int = Field(30, ge=0)

    @field_validator("windows_days")
    @classmethod
    def _positive_windows(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 or w > MAX_DAYS for w in value):
            raise ValueError(f"windows_days must be day counts from 1 to {MAX_DAYS:,}")
        return tuple(sorted(set(value)))

    @classmethod
    def of(cls, config: FeatureConfig | Mapping[str, Any] | None) -> FeatureConfig:
        """``config`` as a FeatureConfig (`as_config`): every function that takes a config
        accepts a dict of its fields too (``{"churn_horizon_days": 30}``)."""
        return as_config(cls, config)


def as_config(cls: type[ConfigT], config: ConfigT | Mapping[str, Any] | None) -> ConfigT:
    """``config`` as a ``cls`` (a pydantic config class): itself, the defaults for None, or
    one made from a dict of its fields."""
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if isinstance(config, Mapping):
        try:
            return cls(**config)
        except ValidationError as exc:
            _raise_if_nested_keys(cls, config, exc)
            raise
    given = type(config).__name__
    hint = ""
    if isinstance(getattr(config, "features", None), cls):  # a TrainConfig for features
        hint = f": pass its .features (the {cls.__name__} it holds)"
    else:
        holder = next((name for name, f in cls.model_fields.items()
                       if f.annotation is type(config)), None)
        if holder:  # a FeatureConfig for training
            hint = f": wrap it, {cls.__name__}({holder}=<this {given}>)"
    raise TypeError(f"config must be a {cls.__name__} or a dict of its fields, not "
                    f"{given}{hint}")


def _raise_if_nested_keys(cls: type[BaseModel], config: Mapping[str, Any],
                          exc: ValidationError) -> None:
    """Raise a ValueError that says where they go when every problem of ``exc`` is a key
    of ``config`` that is not a field of ``cls`` but of one of its nested configs (a
    TrainConfig given ``churn_horizon_days``, which is a field of its ``features``)."""
    nested = {name: f.annotation for name, f in cls.model_fields.items()
              if isinstance(f.annotation, type) and issubclass(f.annotation, BaseModel)}
    moves: dict[str, dict[str, Any]] = {}
    for err in exc.errors():
        key = err["loc"][0] if len(err["loc"]) == 1 else None
        home = next((name for name, sub in nested.items() if key in sub.model_fields), None)
        if err["type"] != "extra_forbidden" or home is None:
            return
        moves.setdefault(home, {})[key] = config[key]
    keys = [repr(k) for sub in moves.values() for k in sub]
    raise ValueError(
        f"{', '.join(keys)} {'is not a field' if len(keys) == 1 else 'are not fields'} of "
        f"{cls.__name__} but of its " + " and ".join(moves) + ": give them as "
        + str(moves)
    ) from None


def _pydantic_message(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "mapping"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(loc, list(ColumnMapping.model_fields), n=1)
            guess = f"did you mean '{close[0]}'? " if close else ""
            parts.append(
                f"unknown key '{loc}' ({guess}allowed: {', '.join(ColumnMapping.model_fields)})"
            )
        else:
            parts.append(f"{loc}: {err['msg']}")
    return "; ".join(parts)
