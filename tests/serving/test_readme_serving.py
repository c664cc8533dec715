"""README's *Serving* examples work on the demo data: the customers they name are in the
bundled extract, and the /score example (a customer's whole history, with the fields the
demo's mapping gives the batch, at the batch's as-of) answers what /predict answers for
that customer. The service is called with the README's request bodies exactly as written."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _serving_section() -> str:
    text = (ROOT / "README.md").read_text()
    start = text.index("\n## Serving\n")
    end = text.index("\n## ", start + 1)
    return text[start:end]


def _curl_bodies() -> dict[str, list[dict]]:
    """The JSON bodies of the section's curl examples, by endpoint."""
    bodies: dict[str, list[dict]] = {}
    for path, body in re.findall(r"curl [^\n]*localhost:\d+(/\w+).*?-d '(.*?)'",
                                 _serving_section(), flags=re.S):
        bodies.setdefault(path, []).append(json.loads(body))
    return bodies


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    """The bundled demo data on the contract, as `make demo` maps it."""
    from features import DEMO_MAPPING, demo_data_path, load_transactions

    return load_transactions(demo_data_path(), DEMO_MAPPING).to_pandas()


@pytest.fixture(scope="module")
def svc(service_env):
    from serving.service import Lifecast

    instance = Lifecast()
    yield instance
    instance._close()


def test_the_examples_name_customers_of_the_demo_data(demo) -> None:
    section = _serving_section()
    bodies = _curl_bodies()
    ids = {c for b in bodies.get("/predict", []) for c in b["customer_ids"]}
    ids |= {c["customer_id"] for b in bodies.get("/score", []) for c in b["customers"]}
    # and the ids in the endpoint table
    for listed in re.findall(r'"customer_ids": \[([^\]]*)\]', section):
        ids |= set(re.findall(r'"([^"]+)"', listed))
    known = set(demo["customer_id"].astype(str))
    assert ids and ids <= known, f"not in the demo data: {sorted(ids - known)}"
    assert set(bodies) >= {"/predict", "/score"}, "a curl example of /predict and /score"


def test_the_score_example_is_the_customers_history_at_the_batch_as_of(demo, world) -> None:
    [body] = _curl_bodies()["/score"]
    assert pd.Timestamp(body["as_of"]) == world.as_of  # what `lifecast score` scored at
    for customer in body["customers"]:
        rows = demo[demo["customer_id"].astype(str) == customer["customer_id"]]
        rows = rows[rows["timestamp"] < world.as_of].sort_values(["timestamp", "order_id"])
        sent = customer["transactions"]
        assert len(sent) == len(rows), customer["customer_id"]
        for tx, (_, row) in zip(sent, rows.iterrows(), strict=True):
            assert pd.Timestamp(tx["timestamp"]) == row["timestamp"]
            assert tx["amount"] == pytest.approx(row["amount"], abs=1e-9)
            assert (tx["order_id"], tx["product_id"]) == (row["order_id"], row["product_id"])


def test_the_score_example_answers_what_predict_answers(svc) -> None:
    bodies = _curl_bodies()
    [score_body], [predict_body] = bodies["/score"], bodies["/predict"]
    scored = svc.score(**score_body)
    assert scored.errors == []
    stored = {p.customer_id: p for p in asyncio.run(svc.predict(**predict_body)).predictions}
    assert {p.customer_id for p in scored.predictions} <= set(stored)
    for p in scored.predictions:
        s = stored[p.customer_id]
        assert p.as_of == s.as_of
        assert p.churn_probability == pytest.approx(s.churn_probability, abs=1e-9)
        assert p.predicted_clv == pytest.approx(s.predicted_clv, rel=1e-9, abs=1e-9)
        assert p.expected_orders == pytest.approx(s.expected_orders, rel=1e-9)
        assert p.p_alive == pytest.approx(s.p_alive, rel=1e-9)
        assert (p.rfm_score, p.segment, p.lifecycle_stage, p.churn_risk) == (
            s.rfm_score, s.segment, s.lifecycle_stage, s.churn_risk)
        assert [r.feature for r in p.reasons] == [r.feature for r in s.reasons]
