"""Request schemas without a service (fast tier): customer ids sent as JSON integers.

CRM systems send their integer customer ids as JSON numbers. `serving.schemas.CustomerId`
takes a JSON integer as well as a string and turns it into the string the customer store
holds (the loader's rule, checked against the loader here); everything else that is not a
string (booleans, floats even when whole, integers beyond 2^53 - 1, null, objects, arrays)
is refused with a message naming what to send. The service-level checks (the same customer
found, the HTTP answer) are in test_service.py and test_service_integration.py.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from serving.schemas import (
    MAX_INTEGER_ID,
    CustomerError,
    CustomerPrediction,
    PredictRequest,
    ScoreRequest,
    canonical_customer_id,
)

_TX = {"timestamp": "2011-11-01T10:00:00", "amount": 10.0}


def predict_ids(raw: str) -> list[str]:
    """``customer_ids`` of a /predict body whose id list is the JSON text ``raw``, parsed
    as BentoML parses a request (``model_validate_json``: pydantic's own JSON parser)."""
    return PredictRequest.model_validate_json(f'{{"customer_ids": [{raw}]}}').customer_ids


def refusal(body: str, model=PredictRequest) -> dict:
    """The one error of validating the JSON text ``body``."""
    with pytest.raises(ValidationError) as info:
        model.model_validate_json(body)
    errors = info.value.errors()
    assert len(errors) == 1, errors
    return errors[0]


@pytest.mark.parametrize(("raw", "expected"), [
    ("13047", "13047"),
    ('"13047"', "13047"),
    ("-5", "-5"),
    ("0", "0"),
    ("-0", "0"),  # the JSON integer zero written with a sign: the parser reads 0
    (str(MAX_INTEGER_ID), "9007199254740991"),
    (str(-MAX_INTEGER_ID), "-9007199254740991"),
    ('"007"', "007"),  # strings are kept as they are: not read as numbers
    ('"13047.0"', "13047.0"),
])
def test_integer_ids_are_their_decimal_strings(raw: str, expected: str) -> None:
    assert predict_ids(raw) == [expected]


def test_an_integer_and_its_string_are_the_same_id_in_one_list() -> None:
    assert predict_ids('13047, "13047", 14646') == ["13047", "13047", "14646"]


def test_integers_of_a_direct_call_python_and_numpy() -> None:
    """A notebook passing ids from a pandas column: Python and NumPy integers."""
    ids = pd.Series([13047, -5], dtype="int64")
    assert PredictRequest.model_validate({"customer_ids": [ids[0], int(ids[1])]}
                                         ).customer_ids == ["13047", "-5"]
    assert PredictRequest(customer_ids=[np.int32(7)]).customer_ids == ["7"]


@given(st.integers(min_value=-MAX_INTEGER_ID, max_value=MAX_INTEGER_ID))
def test_every_integer_in_range_reads_as_its_string(n: int) -> None:
    as_number = PredictRequest.model_validate_json(json.dumps({"customer_ids": [n]}))
    as_text = PredictRequest.model_validate_json(json.dumps({"customer_ids": [str(n)]}))
    assert as_number.customer_ids == as_text.customer_ids == [str(n)]


# (JSON text of the id, words the message must hold)
REFUSED = [
    ("true", ("boolean", "as a string", "as an integer")),
    ("false", ("boolean",)),
    # floats, even whole ones: the server sees the parsed double, never the text
    ("13047.0", ("float", "13047", '"13047"', "without a decimal point")),
    ("1.3047e4", ("float", "13047")),
    ("-0.0", ("float", "(0)", '"0"')),
    ("-0e0", ("float",)),
    ("1.5", ("float", "as a string")),
    ("1e-400", ("float",)),  # parsed as 0.0: not the id 0
    ("NaN", ("float",)),
    ("1E400", ("float",)),
    ("1e300", ("float", "as a string")),
    # beyond what a double holds exactly: JavaScript would have rounded it
    (str(2**53), ("2^53 - 1", "as a string", f'"{2**53}"')),
    (str(2**53 + 1), ("2^53 - 1", "as a string", f'"{2**53 + 1}"')),
    (str(-(2**53)), ("2^53 - 1", "as a string")),
    ("1" + "0" * 40, ("more than 30 digits", "as a string")),
    ("null", ("null", "as a string")),
    ('{"id": 13047}', ("object",)),
    ("[13047]", ("array",)),
]


@pytest.mark.parametrize(("raw", "words"), REFUSED, ids=[r for r, _ in REFUSED])
def test_other_json_values_are_refused_naming_what_to_send(raw: str, words) -> None:
    error = refusal(f'{{"customer_ids": ["12347", {raw}]}}')
    assert error["loc"] == ("customer_ids", 1)  # the field and the index
    for word in words:
        assert word in error["msg"], (word, error["msg"])


@pytest.mark.parametrize(("value", "word"), [
    (True, "boolean"), (np.float64(13047.0), "float"), (13047.0, "float"),
    (-0.0, "float"), (2**53, "as a string"), (10**5000, "more than 30 digits"),
    (b"13047", "bytes"),
], ids=["bool", "numpy-float", "float", "negative-zero", "2**53", "10**5000", "bytes"])
def test_direct_calls_are_refused_the_same(value, word) -> None:
    with pytest.raises(ValidationError) as info:
        PredictRequest.model_validate({"customer_ids": [value]})
    [error] = info.value.errors()
    assert error["loc"] == ("customer_ids", 0) and word in error["msg"], error["msg"]


def test_string_constraints_still_apply() -> None:
    for raw in ('""', json.dumps("x" * 129), '"a\\u0000b"'):
        assert refusal(f'{{"customer_ids": [{raw}]}}')["loc"] == ("customer_ids", 0)


def _score_body(*ids) -> str:
    return json.dumps({"customers": [{"customer_id": c, "transactions": [_TX]} for c in ids]})


def test_score_takes_an_integer_customer_id() -> None:
    req = ScoreRequest.model_validate_json(_score_body(13047, "14646"))
    assert [c.customer_id for c in req.customers] == ["13047", "14646"]


def test_score_duplicates_are_found_across_integer_and_string() -> None:
    for ids in ((13047, "13047"), ("13047", 13047), (13047, 13047), (0, "0")):
        error = refusal(_score_body(*ids), ScoreRequest)
        assert error["loc"] == ("customers", 1, "customer_id")  # it was (): the msg said it
        assert "more than once" in error["msg"]
    ScoreRequest.model_validate_json(_score_body(13047, "013047"))  # different customers


@pytest.mark.parametrize(("raw", "word"), [
    ("13047.0", '"13047"'), ("true", "boolean"), ("9007199254740993", "as a string"),
    ("null", "null")])
def test_score_refusals_name_the_customer(raw: str, word: str) -> None:
    body = f'{{"customers": [{{"customer_id": "a", "transactions": [{json.dumps(_TX)}]}}, ' \
           f'{{"customer_id": {raw}, "transactions": [{json.dumps(_TX)}]}}]}}'
    error = refusal(body, ScoreRequest)
    assert error["loc"] == ("customers", 1, "customer_id") and word in error["msg"]


def _id_types(schema: dict) -> dict[str, dict]:
    return {branch["type"]: branch for branch in schema["anyOf"]}


def test_the_json_schema_shows_both_types_and_says_answers_are_strings() -> None:
    predict = PredictRequest.model_json_schema()["properties"]["customer_ids"]
    score = ScoreRequest.model_json_schema()["$defs"]["ScoreCustomer"]["properties"][
        "customer_id"]
    for types, description in ((_id_types(predict["items"]), predict["description"]),
                               (_id_types(score), score["description"])):
        assert set(types) == {"string", "integer"}
        assert (types["integer"]["minimum"], types["integer"]["maximum"]) == (
            -MAX_INTEGER_ID, MAX_INTEGER_ID)
        assert types["string"]["maxLength"] == 128 and types["string"]["minLength"] == 1
        assert "as a string" in description and "13047.0" in description
    # what the service answers: a string, always
    for model in (CustomerPrediction, CustomerError):
        field = model.model_json_schema(mode="serialization")["properties"]["customer_id"]
        assert field["type"] == "string" and "Always a string" in field["description"]


def test_the_rule_is_the_loaders() -> None:
    """The id a JSON integer becomes is the id the customer store holds for that customer,
    whether the transaction log had the ids as integers or as whole-number floats (a pandas
    column with gaps, as in Online Retail): the features' ``customer_id``, which scoring
    writes to the store."""
    from features import build_features, load_transactions

    ids = [13047, -5, 0, MAX_INTEGER_ID]
    n = len(ids)
    base = {"timestamp": pd.to_datetime(["2011-01-03"] * n), "amount": [10.0] * n}
    as_int = pd.DataFrame({"customer_id": pd.array(ids, dtype="int64"), **base})
    as_float = pd.DataFrame({"customer_id": [13047.0, -5.0, -0.0, float(MAX_INTEGER_ID),
                                             np.nan],
                             "timestamp": pd.to_datetime(["2011-01-03"] * (n + 1)),
                             "amount": [10.0] * (n + 1)})
    expected = sorted(canonical_customer_id(i) for i in ids)
    for frame in (as_int, as_float):
        feats = build_features(load_transactions(frame), "2011-02-01")
        assert sorted(feats["customer_id"].tolist()) == expected
    assert expected == sorted(predict_ids(", ".join(map(str, ids))))
