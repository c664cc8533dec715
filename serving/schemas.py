"""Requests and responses of the prediction service (pydantic v2).

Every endpoint takes one JSON object and validates it here, so a bad request is refused with
a 4xx naming the field before any work is done (the service turns pydantic's errors into
``{"error": "<field>: <message>", "detail": [...]}``). The constraints:

* ``/predict``: ``customer_ids``, 1 to `MAX_IDS` (1,000) ids (`CustomerId`: a string of
  1-128 characters without control characters, or a JSON integer, read as its decimal
  string). Duplicates are answered once.
* ``/score``: 1 to `MAX_SCORE_CUSTOMERS` (100) customers (distinct ids, `CustomerId` as
  for ``/predict``: 13047 and ``"13047"`` are the same customer), each with 1 to
  `MAX_TRANSACTIONS` (1,000) transactions: ``timestamp`` (ISO 8601; a timezone offset is
  converted to UTC, a naive value is read as UTC; from 1900 on and at most `CLOCK_SKEW` (5
  minutes) ahead of the server clock, and before ``as_of`` when it is given), ``amount``
  (finite, ``|amount| <= 1e9``; negative for a return) and optionally ``order_id``,
  ``product_id``, ``category``, ``channel``, ``quantity``, ``discount``. ``as_of`` (optional,
  default: now) is the cutoff the features are computed at. The request body is also bounded
  in bytes by the service (``LIFECAST_MAX_BODY_BYTES``, 2 MB by default), which binds before
  the counts for large payloads.
* ``/high_risk``: ``churn_risk``, risk bands to keep (default ``["high"]``: the high-risk
  customers only; null or an empty list: every customer), ``min_churn_probability`` in
  [0, 1] (default 0), ``min_value`` >= 0 (default
  0; predicted values are never negative, so a negative threshold would mean "no filter",
  which 0 already is; customers without a predicted value never pass), ``segments`` (names of
  `features.segments.SEGMENTS`; null or an empty list: every segment), ``limit`` 1-10,000
  (default 100), ``offset`` >= 0, ``format`` ``json`` or ``csv``, ``batch_id`` (optional:
  the first page's, so that a rescore between pages is a 409, not a page of another batch).
* ``/segments``: optional ``format``.

Unknown fields are refused (``extra="forbid"``) and types are strict (``"5"`` is not a number,
``5`` is not a string), except timestamps, which are ISO 8601 text, and customer ids, which
may also be JSON integers (`CustomerId`). Every answer gives ``customer_id`` as a string.

The ``EXAMPLE_*`` constants are the examples the OpenAPI page shows; tests reuse them.
"""

from __future__ import annotations

import math
import numbers
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from features.segments import RISK_BANDS, SEGMENTS, STAGES

__all__ = [
    "CLOCK_SKEW",
    "EXAMPLE_HIGH_RISK_REQUEST",
    "EXAMPLE_PREDICT_REQUEST",
    "EXAMPLE_SCORE_REQUEST",
    "EXAMPLE_SEGMENTS_REQUEST",
    "MAX_IDS",
    "MAX_LIMIT",
    "MAX_SCORE_CUSTOMERS",
    "MAX_TRANSACTIONS",
    "MAX_INTEGER_ID",
    "RISK_BANDS",
    "CustomerError",
    "CustomerId",
    "CustomerPrediction",
    "ErrorResponse",
    "HighRiskRequest",
    "HighRiskResponse",
    "ModelVersions",
    "PredictRequest",
    "PredictResponse",
    "Reason",
    "ScoreCustomer",
    "ScoreRequest",
    "ScoreResponse",
    "SegmentRow",
    "SegmentsRequest",
    "SegmentsResponse",
    "Transaction",
    "canonical_customer_id",
    "utc_naive",
]

MAX_IDS = 1_000
MAX_SCORE_CUSTOMERS = 100
MAX_TRANSACTIONS = 1_000
MAX_LIMIT = 10_000
MAX_OFFSET = 2**31 - 1
MAX_ABS_AMOUNT = 1e9  # the feature engine sums money as DECIMAL(18, 6): below 1e12
#: How far ahead of the server clock a transaction timestamp may be (clients' clocks drift).
CLOCK_SKEW = timedelta(minutes=5)
EARLIEST = datetime(1900, 1, 1)

_STRICT = ConfigDict(extra="forbid", strict=True)

# 1-128 characters, no control characters (they have no place in an id and break CSV/logs)
Identifier = Annotated[
    str, StringConstraints(min_length=1, max_length=128, pattern=r"^[^\x00-\x1f\x7f]+$")
]

#: The largest integer id taken as a JSON number (in absolute value): 2^53 - 1, JavaScript's
#: Number.MAX_SAFE_INTEGER. Every JSON client holds the integers up to it exactly; from 2^53
#: on, a client that reads numbers as doubles (JavaScript, and many others) may already have
#: rounded the id to a neighbour (2^53 + 1 is sent as 2^53), so the server cannot know which
#: customer was meant. The same bound as the loader's for ids in a float column
#: (`features.contract`: 2^53 or more is an error there).
MAX_INTEGER_ID = 2**53 - 1
IntegerId = Annotated[int, Field(ge=-MAX_INTEGER_ID, le=MAX_INTEGER_ID)]
_SEND = 'send the id as a string ("13047") or as an integer (13047)'


def canonical_customer_id(value: Any) -> Any:
    """A customer id as the customer store holds it: a string is kept as it is (the string
    constraints of `Identifier` check it next); an integer (a JSON integer, or a Python or
    NumPy one in a direct call) becomes its decimal string, the loader's rule
    (`features.contract` reads integer ids, and whole-number float ids such as Online
    Retail's 13047.0, as BIGINT, which the store holds as ``str(n)``): 13047 is the customer
    ``"13047"``, -5 is ``"-5"`` and 0 (also sent as ``-0``, the same JSON integer) is
    ``"0"``.

    Refused, with a message that says what to send: booleans; integers beyond
    `MAX_INTEGER_ID` in absolute value (send them as strings); floats, even whole-number ones
    such as 13047.0 or -0.0, because what reaches the server is the double the JSON number
    was parsed to, not its text: ``13047.0000000000000001`` and ``1.3047e4`` arrive as
    13047.0 and ``1e-400`` as 0.0, so taking a whole-number float would take ids the client
    never wrote as integers. (The OpenAPI specification defines its integer as "a JSON
    number without a fraction or exponent part"; a JSON Schema validator would count 13047.0
    as one, this service does not.) Clients whose ids are integers write them without a
    decimal point (JavaScript's JSON.stringify, Python's json with an int, Go, .NET); a
    13047.0 comes from an id held in a double, such as a pandas column with gaps, the path
    on which ids beyond 2^53 are silently rounded: the fix belongs in the client
    (``int(id)``, or ``.astype("Int64")``), not a guess here. Anything else (null, objects,
    arrays) is no id.
    """
    if isinstance(value, str):
        return value
    if isinstance(value, bool):  # before int: bool is an int in Python
        raise ValueError(f"{'true' if value else 'false'} is a boolean, not a customer id: "
                         f"{_SEND}")
    if isinstance(value, numbers.Integral):  # int, and NumPy's integers in direct calls
        n = int(value)
        if abs(n) > MAX_INTEGER_ID:
            shown = str(n) if abs(n) < 10**30 else "an integer of more than 30 digits"
            raise ValueError(
                f"{shown} is beyond 2^53 - 1 ({MAX_INTEGER_ID:,}) in absolute value, where "
                f"JSON clients that read numbers as doubles (JavaScript) round integers to a "
                f"neighbour: send this id as a string"
                + (f' ("{n}")' if abs(n) < 10**30 else ""))
        return str(n)
    if isinstance(value, float):
        raise ValueError(_float_message(value))
    kind = {type(None): "null", dict: "an object", list: "an array"}.get(
        type(value), f"a value of type {type(value).__name__}")
    raise ValueError(f"got {kind}, which is not a customer id: {_SEND}")


def _float_message(value: float) -> str:
    """Why the float ``value`` is not taken as a customer id, and what to send instead."""
    head = f"{value!r} is a float (a number with a decimal point or an exponent), not an id"
    if math.isfinite(value) and value == math.trunc(value) and abs(value) <= MAX_INTEGER_ID:
        n = int(value)  # -0.0 too: its integer is 0
        return f'{head}: send the integer without a decimal point ({n}) or a string ("{n}")'
    if math.isfinite(value) and value == math.trunc(value):
        return (f"{head}, and a float this large may be another id rounded: send the id as a "
                f"string, read from the source as an integer or text")
    return f"{head}: send the id as a string or as an integer without a decimal point"


#: A customer id in a request: `Identifier`, or an integer (`canonical_customer_id`). The
#: OpenAPI document shows both types; the validated value is always the string.
CustomerId = Annotated[
    Identifier,
    BeforeValidator(canonical_customer_id, json_schema_input_type=Identifier | IntegerId),
]
_ID_TYPES = (f"a string (1-128 characters, no control characters) or an integer of at most "
             f"2^53 - 1 ({MAX_INTEGER_ID:,}) in absolute value, which is read as its decimal "
             f'string (13047 is the customer "13047"; send larger ids as strings). Floats '
             f"(even 13047.0), booleans and null are refused")
#: A customer store batch id as the answers give it (`training.store`: a timestamp and a
#: random suffix).
BatchId = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                           pattern=r"^[^\x00-\x1f\x7f]+$")]
OptionalText = Annotated[
    str, StringConstraints(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")
] | None
SegmentName = Literal[SEGMENTS]  # type: ignore[valid-type]
RiskBand = Literal[RISK_BANDS]  # type: ignore[valid-type]
Stage = Literal[STAGES]  # type: ignore[valid-type]
Format = Literal["json", "csv"]


def utc_naive(value: datetime) -> datetime:
    """An aware datetime converted to UTC and made naive; a naive one is taken as UTC."""
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    return value


def _now() -> datetime:
    return datetime.now(UTC).replace(tzinfo=None)


_ISO_HINT = "must be an ISO 8601 date or datetime text, e.g. 2011-12-09T12:50:00"


def _iso_text(value: Any) -> Any:
    """Timestamps come as ISO 8601 text, read here with `datetime.fromisoformat` (the
    extended and the basic form: ``2011-10-02``, ``20111002``, ``2011-10-02T12:50Z``).
    Not pydantic's own parsing: it reads a number, or text made only of digits, as Unix
    seconds (``"20111002"`` became 1970-08-21, with no error)."""
    if isinstance(value, datetime):
        return value
    if not isinstance(value, str):
        raise ValueError(_ISO_HINT)
    try:
        return datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(f"{_ISO_HINT}; got {value[:40]!r}") from None


def _not_future(value: datetime) -> datetime:
    value = utc_naive(value)
    if value < EARLIEST:
        raise ValueError(f"must be on or after {EARLIEST:%Y-%m-%d}")
    limit = _now() + CLOCK_SKEW
    if value > limit:
        raise ValueError(
            f"is in the future ({value.isoformat()} is after the server time "
            f"{_now().isoformat(timespec='seconds')} UTC plus "
            f"{int(CLOCK_SKEW.total_seconds() // 60)} minutes of clock skew)"
        )
    return value


Timestamp = Annotated[
    datetime, Field(strict=False), BeforeValidator(_iso_text), AfterValidator(_not_future)
]


def _finite_amount(value: float) -> float:
    if not math.isfinite(value) or abs(value) > MAX_ABS_AMOUNT:
        raise ValueError(f"must be a finite number with absolute value at most {MAX_ABS_AMOUNT:g}")
    return value


Amount = Annotated[float, Field(allow_inf_nan=False), AfterValidator(_finite_amount)]
OptionalAmount = Annotated[
    float, Field(allow_inf_nan=False, ge=-MAX_ABS_AMOUNT, le=MAX_ABS_AMOUNT)
] | None

# -- examples (shown on the OpenAPI page, reused by the tests) --------------------------------

EXAMPLE_PREDICT_REQUEST: dict[str, Any] = {"customer_ids": ["13047", "14646"]}
EXAMPLE_SCORE_REQUEST: dict[str, Any] = {
    "customers": [
        {
            "customer_id": "new-0001",
            "transactions": [
                {"timestamp": "2011-10-02T10:15:00", "amount": 54.5, "order_id": "A-1001"},
                {"timestamp": "2011-11-20T16:40:00", "amount": 120.0, "order_id": "A-1002"},
                {"timestamp": "2011-11-20T16:40:00", "amount": -20.0, "order_id": "A-1002C"},
            ],
        }
    ],
    "as_of": "2011-12-10T00:00:00",
}
EXAMPLE_HIGH_RISK_REQUEST: dict[str, Any] = {
    "churn_risk": ["high"],
    "min_churn_probability": 0.5,
    "min_value": 100.0,
    "segments": ["At Risk", "Can't Lose Them"],
    "limit": 100,
    "offset": 0,
    "format": "json",
}
EXAMPLE_SEGMENTS_REQUEST: dict[str, Any] = {"format": "json"}


# -- requests ----------------------------------------------------------------------------------


class PredictRequest(BaseModel):
    """Customers to look up in the current batch of the customer store."""

    model_config = ConfigDict(**_STRICT, json_schema_extra={"example": EXAMPLE_PREDICT_REQUEST})

    customer_ids: list[CustomerId] = Field(
        min_length=1, max_length=MAX_IDS,
        description=f"1 to {MAX_IDS:,} customer ids, each {_ID_TYPES}. Unknown ids come "
                    f"back in `errors`. Answers give every `customer_id` as a string.",
    )


class Transaction(BaseModel):
    """One purchase line or order of the caller's history (the data contract's columns)."""

    model_config = _STRICT

    timestamp: Timestamp = Field(description="When it happened (ISO 8601; naive = UTC).")
    amount: Amount = Field(description="Net revenue; negative for a return.")
    order_id: OptionalText = None
    product_id: OptionalText = None
    category: OptionalText = None
    channel: OptionalText = None
    quantity: OptionalAmount = None
    discount: OptionalAmount = None


class ScoreCustomer(BaseModel):
    """One customer and their own recent history."""

    model_config = _STRICT

    customer_id: CustomerId = Field(
        description=f"The customer: {_ID_TYPES}. The answer gives it as a string.")
    transactions: list[Transaction] = Field(min_length=1, max_length=MAX_TRANSACTIONS)


class ScoreRequest(BaseModel):
    """Real-time scoring from the caller's transactions (not the store)."""

    model_config = ConfigDict(**_STRICT, json_schema_extra={"example": EXAMPLE_SCORE_REQUEST})

    customers: list[ScoreCustomer] = Field(min_length=1, max_length=MAX_SCORE_CUSTOMERS)
    as_of: Timestamp | None = Field(
        None, description="Cutoff of the features (default: now); transactions must be "
                          "before it.")

    @model_validator(mode="after")
    def _consistent(self) -> ScoreRequest:
        """Each customer once, every transaction before ``as_of``: the first error found,
        located at its field (``customers[1].customer_id``, ``customers[0].transactions[2]
        .timestamp``) as pydantic locates a field's own errors (a ValueError raised here
        had no location: ``"loc": []``)."""
        seen: set[str] = set()
        for i, customer in enumerate(self.customers):
            if customer.customer_id in seen:
                _invalid(("customers", i, "customer_id"), customer.customer_id,
                         f"{customer.customer_id!r} appears more than once (an integer id is "
                         f"the same customer as its string); send each customer once with "
                         f"all their transactions")
            seen.add(customer.customer_id)
            if self.as_of is None:
                continue
            for j, tx in enumerate(customer.transactions):
                if tx.timestamp >= self.as_of:
                    _invalid(("customers", i, "transactions", j, "timestamp"),
                             tx.timestamp.isoformat(),
                             f"{tx.timestamp.isoformat()} is not before as_of "
                             f"{self.as_of.isoformat()} (features only see events before the "
                             f"cutoff)")
        return self


def _invalid(loc: tuple[str | int, ...], value: Any, message: str) -> None:
    """Raise a validation error of one field (``loc``) with ``message``: from a model
    validator, a ValidationError's errors keep their location (a ValueError's is empty)."""
    raise ValidationError.from_exception_data("ScoreRequest", [InitErrorDetails(
        type=PydanticCustomError("value_error", "{message}", {"message": message}),
        loc=loc, input=value)])


class HighRiskRequest(BaseModel):
    """Filters and page of the ranked list (by value at risk, highest first). By default
    only the customers whose `churn_risk` is `high`; `"churn_risk": null` ranks every
    customer."""

    model_config = ConfigDict(**_STRICT,
                              json_schema_extra={"example": EXAMPLE_HIGH_RISK_REQUEST})

    churn_risk: list[RiskBand] | None = Field(
        default=["high"], max_length=len(RISK_BANDS),
        description="Keep the customers in these churn risk bands (the `churn_risk` of each "
                    "customer, as the customer store holds it: high from a churn "
                    "probability of 0.6 with the default bands). Default `[\"high\"]`: "
                    "the high-risk customers only. Null or an empty list: every band, "
                    "the ranked list of every customer scored.")
    min_churn_probability: float = Field(
        0.0, ge=0.0, le=1.0, allow_inf_nan=False,  # NaN: "a finite number", not "<= 1"
        description="Minimum churn probability (applies together with `churn_risk`).")
    min_value: float = Field(0.0, ge=0.0, allow_inf_nan=False,
                             description="Minimum predicted value (CLV).")
    segments: list[SegmentName] | None = Field(
        None, max_length=len(SEGMENTS),
        description="Keep these segments only (null or empty: every segment).")
    limit: int = Field(100, ge=1, le=MAX_LIMIT)
    offset: int = Field(0, ge=0, le=MAX_OFFSET)
    format: Format = "json"
    batch_id: BatchId | None = Field(
        None, description="The `batch_id` of the first page, sent with the pages that follow: "
                          "when `lifecast score` has rescored the customer store since, the "
                          "answer is 409 (start again at offset 0) instead of a page of the "
                          "new batch, whose order differs (pages of two batches skip some "
                          "customers and repeat others). Null: the current batch.")


class SegmentsRequest(BaseModel):
    """Options of the segment summary."""

    model_config = ConfigDict(**_STRICT,
                              json_schema_extra={"example": EXAMPLE_SEGMENTS_REQUEST})

    format: Format = "json"


# -- responses ---------------------------------------------------------------------------------

#: An instant in an answer (``as_of``), as the service sends it: ISO 8601 without an offset,
#: in UTC like the requests' naive timestamps, e.g. ``2011-12-10T00:00:00`` (microseconds
#: when there are any). Not JSON schema's ``date-time``, which the document said before: that
#: is RFC 3339, whose offset is required, so a client generated from the document (or
#: schemathesis) refused every answer.
AnsweredTime = Annotated[datetime, WithJsonSchema({
    "type": "string",
    "pattern": r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,6})?$",
    "description": "ISO 8601 date and time without an offset, in UTC (e.g. "
                   "2011-12-10T00:00:00; with microseconds when there are any).",
    "examples": ["2011-12-10T00:00:00"],
})]

_ANSWERED_ID = ('Always a string, as the customer store holds it: an id sent as the integer '
                '13047 comes back as "13047".')


class Reason(BaseModel):
    """One of the features that moved the churn score most (LightGBM SHAP contribution)."""

    feature: str
    value: float | None = Field(description="The feature's value (null when missing).")
    contribution: float = Field(description="Contribution to the raw churn score (log-odds).")
    direction: Literal["raises", "lowers"]


class ModelVersions(BaseModel):
    churn: str
    clv: str


class CustomerPrediction(BaseModel):
    """The per-customer output of DESIGN.md."""

    customer_id: str = Field(description=_ANSWERED_ID)
    as_of: AnsweredTime
    churn_probability: float
    churn_risk: RiskBand
    predicted_clv: float
    expected_orders: float | None
    p_alive: float | None
    rfm_score: str
    segment: str
    lifecycle_stage: str
    value_at_risk: float
    reasons: list[Reason] = Field(
        description="The features that moved the churn score most, largest first (up to "
                    "the model's top_reasons, 3 by default; fewer when fewer features moved "
                    "it, none from a model that learned nothing).")
    model_versions: ModelVersions


class CustomerError(BaseModel):
    customer_id: str = Field(description=_ANSWERED_ID)
    error: str


class PredictResponse(BaseModel):
    """Customers of the store's current batch, every field from the service's models."""

    batch_id: str = Field(description="The customer store batch the features came from.")
    as_of: AnsweredTime = Field(
        description="The batch's cutoff: the features, and so every field of every "
                    "prediction, describe the customers as of this instant (events before "
                    "it).")
    batch_model_versions: ModelVersions = Field(
        description="The models that scored the batch: its stored scores, which /high_risk "
                    "and /segments return, are theirs. After a new champion they differ "
                    "from the predictions' `model_versions` until `lifecast score` rescores "
                    "the store with it (or, when the store was rescored first, until the "
                    "service is restarted to serve it): /predict still computes every "
                    "model-dependent field (churn, value, reasons, RFM score, segment, "
                    "lifecycle stage) with the service's models from the batch's features, "
                    "so one answer never mixes two models.")
    predictions: list[CustomerPrediction]
    errors: list[CustomerError] = Field(description="Ids that could not be answered, and why.")


class ScoreResponse(BaseModel):
    """Customers scored from their posted transactions, every field from the service's
    models."""

    batch_id: str = Field(
        description="The customer store batch whose population's BG/NBD + Gamma-Gamma "
                    "baseline gave the baseline features (`expected_orders`, `p_alive` and "
                    "the models' inputs from it): the store's current batch, as /predict's "
                    "`batch_id`; the previous one only while the service is still loading a "
                    "batch just written by `lifecast score`.")
    as_of: AnsweredTime = Field(
        description="The cutoff the transactions were scored at (events before it count): "
                    "the request's `as_of`, else the time of the request (just after the "
                    "latest transaction if that is later: a client clock running ahead).")
    predictions: list[CustomerPrediction]
    errors: list[CustomerError] = Field(
        description="Customers that could not be scored, and why.")


class HighRiskResponse(BaseModel):
    batch_id: str
    as_of: AnsweredTime
    total: int = Field(description="Customers matching the filters (all pages).")
    limit: int
    offset: int
    customers: list[CustomerPrediction]


class SegmentRow(BaseModel):
    segment: str
    customers: int
    share: float
    mean_churn_probability: float | None
    total_value_at_risk: float
    total_predicted_clv: float


class SegmentsResponse(BaseModel):
    batch_id: str
    as_of: AnsweredTime
    segments: list[SegmentRow]


class ErrorResponse(BaseModel):
    """Body of every 4xx/5xx answer."""

    error: str
    detail: list[dict[str, Any]] | None = None
