"""Synthetic transaction logs in the data contract of DESIGN.md, at any size.

The generator follows a Pareto/NBD-like story, vectorised with numpy (no per-customer
Python loop) and deterministic for a given ``(n_rows, seed)``:

- each customer is acquired (first purchase) at a uniform time across the period;
- while alive, they buy at a gamma-distributed rate (orders per day); the repeat orders of a
  customer are a Poisson process, so given their count they are uniform over the alive span;
- they drop out after an exponential lifetime whose rate is itself gamma-distributed;
- an order has 1-4 lines; a line's unit price is lognormal around a per-customer mean and its
  quantity is geometric, so ``amount = unit price * quantity``;
- about 3% of all rows are returns: a copy of a purchased line with negated amount and quantity,
  1-14 days after the purchase, under an order id of its own (so it is not a purchase order).

Customers are generated in chunks (``chunk_customers`` at a time, each chunk with its own
random stream), so `write_parquet` can write 50M rows while holding one chunk (~2M rows) in
memory. Rows within a chunk are in time order, as a real log would be; the file as a whole is
a sequence of such chunks. The last chunk is cut to exactly ``n_rows`` rows by keeping whole
customers and, for the one customer on the boundary, their earliest rows.

Column types: ``customer_id`` int64, ``timestamp`` datetime64[s], ``amount`` float64,
``order_id`` int64, ``product_id`` int64, ``quantity`` int64 (in parquet the timestamps are
stored, and read back, as milliseconds; their values are still whole seconds). Note that
DESIGN.md types ``customer_id`` and ``order_id`` as strings; integers are used here because
that is what large logs usually carry and what the benchmark brief asks for.

Run ``python bench/synthetic.py N PATH [--seed S]`` to write a file from the command line.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "GENERATOR_VERSION",
    "SCHEMA",
    "SyntheticParams",
    "generate_transactions",
    "iter_chunks",
    "write_parquet",
]

#: Bump when the generated data changes, so cached files are regenerated.
GENERATOR_VERSION = 1

SECONDS_PER_DAY = 86_400
CUSTOMER_ID_BASE = 1_000_000
DEFAULT_CHUNK_CUSTOMERS = 200_000
ROW_GROUP_SIZE = 1_000_000
#: Rough rows per customer with the default parameters; only used to size chunks.
ROWS_PER_CUSTOMER = 10.0

#: Arrow schema of the generated table (and of the parquet file it is written to).
SCHEMA = pa.schema(
    [
        ("customer_id", pa.int64()),
        ("timestamp", pa.timestamp("s")),
        ("amount", pa.float64()),
        ("order_id", pa.int64()),
        ("product_id", pa.int64()),
        ("quantity", pa.int64()),
    ]
)


@dataclass(frozen=True)
class SyntheticParams:
    """Parameters of the generating process (defaults give ~10 rows per customer).

    Rates are per day. With the defaults a customer places ~5.2 orders over the two years
    on average (median 2, 36% one-off buyers, a long tail to ~150), each of ~1.9 lines.
    """

    #: gamma shape and scale of the purchase rate (orders per day while alive)
    rate_shape: float = 0.8
    rate_scale: float = 1 / 40
    #: gamma shape and scale of the dropout rate (per day); lifetime ~ exponential(rate)
    dropout_shape: float = 1.0
    dropout_scale: float = 1 / 250
    #: lognormal unit price: log-mean over customers, spread between and within customers
    price_log_mean: float = math.log(12.0)
    price_sigma_customer: float = 0.6
    price_sigma_line: float = 0.5
    #: quantity per line ~ geometric(p) >= 1
    quantity_p: float = 0.6
    #: probability of 1, 2, 3, 4 lines per order
    lines_probs: tuple[float, float, float, float] = (0.45, 0.30, 0.15, 0.10)
    #: probability that a purchased line is returned (0.031 -> ~3% of all rows are returns)
    return_prob: float = 0.031
    #: a return happens uniformly this many days after the purchase
    return_delay_days: tuple[float, float] = (1.0, 14.0)
    #: size of the product catalogue (popularity is skewed towards low ids)
    n_products: int = 50_000


def _chunk_size(n_rows: int, chunk_customers: int | None) -> int:
    if chunk_customers is not None:
        if chunk_customers <= 0:
            raise ValueError("chunk_customers must be positive")
        return chunk_customers
    guess = math.ceil(n_rows / ROWS_PER_CUSTOMER * 1.1) + 100
    return min(DEFAULT_CHUNK_CUSTOMERS, guess)


def _generate_chunk(
    rng: np.random.Generator,
    n_customers: int,
    customer_offset: int,
    order_offset: int,
    start_s: int,
    days: int,
    params: SyntheticParams,
) -> tuple[dict[str, np.ndarray], int]:
    """One chunk of customers; returns the columns (time-ordered) and the number of orders."""
    p = params
    c = n_customers
    # --- customers ---------------------------------------------------------------------
    acquired = rng.uniform(0.0, days, c)  # days since start
    rate = rng.gamma(p.rate_shape, p.rate_scale, c)
    dropout = rng.gamma(p.dropout_shape, p.dropout_scale, c)
    lifetime = rng.exponential(1.0, c) / dropout
    alive_until = np.minimum(acquired + lifetime, float(days))
    span = alive_until - acquired
    n_orders_c = 1 + rng.poisson(rate * span)
    price_mu_c = p.price_log_mean + p.price_sigma_customer * rng.standard_normal(c)

    # --- orders ------------------------------------------------------------------------
    n_orders = int(n_orders_c.sum())
    order_cust = np.repeat(np.arange(c, dtype=np.int64), n_orders_c)
    first_pos = np.cumsum(n_orders_c) - n_orders_c
    order_day = acquired[order_cust] + rng.random(n_orders) * span[order_cust]
    order_day[first_pos] = acquired  # the first order is the acquisition
    order_ts = start_s + np.floor(order_day * SECONDS_PER_DAY).astype(np.int64)
    # order ids increase with time within the chunk
    order_rank = np.empty(n_orders, dtype=np.int64)
    order_rank[np.argsort(order_ts, kind="stable")] = np.arange(n_orders, dtype=np.int64)
    order_id = order_offset + order_rank

    # --- lines -------------------------------------------------------------------------
    n_lines_o = 1 + rng.choice(len(p.lines_probs), size=n_orders, p=np.asarray(p.lines_probs))
    n_lines = int(n_lines_o.sum())
    line_order = np.repeat(np.arange(n_orders, dtype=np.int64), n_lines_o)
    line_cust = order_cust[line_order]
    unit_price = np.exp(price_mu_c[line_cust] + p.price_sigma_line * rng.standard_normal(n_lines))
    unit_price = np.maximum(np.round(unit_price, 2), 0.01)
    quantity = rng.geometric(p.quantity_p, n_lines).astype(np.int64)
    amount = np.round(unit_price * quantity, 2)
    product = 1 + np.floor(p.n_products * rng.random(n_lines) ** 3).astype(np.int64)
    line_ts = order_ts[line_order]
    line_oid = order_id[line_order]

    # --- returns -----------------------------------------------------------------------
    returned = np.flatnonzero(rng.random(n_lines) < p.return_prob)
    lo, hi = p.return_delay_days
    delay = np.floor(rng.uniform(lo, hi, returned.size) * SECONDS_PER_DAY).astype(np.int64)
    ret_ts = line_ts[returned] + delay
    in_period = ret_ts < start_s + days * SECONDS_PER_DAY
    returned, ret_ts = returned[in_period], ret_ts[in_period]
    n_ret = returned.size
    ret_oid = order_offset + n_orders + np.arange(n_ret, dtype=np.int64)

    cols = {
        "customer_id": np.concatenate([line_cust, line_cust[returned]]),
        "timestamp": np.concatenate([line_ts, ret_ts]),
        "amount": np.concatenate([amount, -amount[returned]]),
        "order_id": np.concatenate([line_oid, ret_oid]),
        "product_id": np.concatenate([product, product[returned]]),
        "quantity": np.concatenate([quantity, -quantity[returned]]),
    }
    order = np.lexsort((cols["order_id"], cols["timestamp"]))
    out = {k: v[order] for k, v in cols.items()}
    out["customer_id"] += CUSTOMER_ID_BASE + customer_offset
    return out, n_orders + n_ret


def _truncate(cols: dict[str, np.ndarray], keep: int) -> dict[str, np.ndarray]:
    """Keep ``keep`` rows: whole customers in id order, then the earliest rows of the next."""
    by_customer = np.argsort(cols["customer_id"], kind="stable")  # stable: time order kept
    mask = np.zeros(cols["customer_id"].size, dtype=bool)
    mask[by_customer[:keep]] = True
    return {k: v[mask] for k, v in cols.items()}


def iter_chunks(
    n_rows: int,
    seed: int = 0,
    start: str | pd.Timestamp = "2020-01-01",
    days: int = 730,
    params: SyntheticParams | None = None,
    chunk_customers: int | None = None,
) -> Iterator[pa.Table]:
    """Yield the log as arrow tables of one customer chunk each, ``n_rows`` rows in all."""
    if n_rows < 0:
        raise ValueError("n_rows must be >= 0")
    if days <= 0:
        raise ValueError("days must be positive")
    params = params or SyntheticParams()
    size = _chunk_size(n_rows, chunk_customers)
    start_s = int(pd.Timestamp(start).normalize().value // 1_000_000_000)
    root = np.random.SeedSequence(seed)
    remaining = n_rows
    customer_offset = 0
    order_offset = 1
    while remaining > 0:
        rng = np.random.default_rng(root.spawn(1)[0])
        cols, n_ids = _generate_chunk(
            rng, size, customer_offset, order_offset, start_s, days, params
        )
        if cols["customer_id"].size > remaining:
            cols = _truncate(cols, remaining)
        remaining -= cols["customer_id"].size
        customer_offset += size
        order_offset += n_ids
        arrays = [
            pa.array(cols["timestamp"].astype("datetime64[s]"))
            if name == "timestamp"
            else pa.array(cols[name])
            for name in SCHEMA.names
        ]
        yield pa.Table.from_arrays(arrays, schema=SCHEMA)


def generate_transactions(
    n_rows: int,
    seed: int = 0,
    start: str | pd.Timestamp = "2020-01-01",
    days: int = 730,
    params: SyntheticParams | None = None,
    chunk_customers: int | None = None,
) -> pd.DataFrame:
    """A synthetic transaction log of exactly ``n_rows`` rows as a pandas DataFrame.

    ``start`` is the first day of the period and ``days`` its length; every row falls in
    ``[start, start + days)``. About one customer per ten rows. The same arguments always
    give the same frame, equal to what `write_parquet` writes for them.
    """
    tables = list(
        iter_chunks(
            n_rows, seed, start=start, days=days, params=params, chunk_customers=chunk_customers
        )
    )
    if not tables:
        return SCHEMA.empty_table().to_pandas()
    return pa.concat_tables(tables).to_pandas()


def write_parquet(
    n_rows: int,
    path: str | os.PathLike[str],
    seed: int = 0,
    start: str | pd.Timestamp = "2020-01-01",
    days: int = 730,
    params: SyntheticParams | None = None,
    chunk_customers: int | None = None,
    row_group_size: int = ROW_GROUP_SIZE,
) -> Path:
    """Write the log of `generate_transactions` to a parquet file, one chunk at a time.

    Memory stays at one chunk of customers (~2M rows, a few hundred MB) whatever ``n_rows``
    is. The file is written under a temporary name and renamed when complete, so a reader
    never sees a partial file. Parquet has no second resolution: the timestamps (whole
    seconds) are stored as milliseconds and read back as ``datetime64[ms]``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        with pq.ParquetWriter(tmp, SCHEMA, compression="snappy") as writer:
            for table in iter_chunks(
                n_rows,
                seed,
                start=start,
                days=days,
                params=params,
                chunk_customers=chunk_customers,
            ):
                writer.write_table(table, row_group_size=row_group_size)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write a synthetic transaction log to parquet.")
    parser.add_argument("n_rows", type=float, help="number of rows, e.g. 1e6")
    parser.add_argument("path", help="output parquet file")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    write_parquet(int(args.n_rows), args.path, seed=args.seed)
    print(f"wrote {int(args.n_rows):,} rows to {args.path} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(_main())
