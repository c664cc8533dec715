"""A lower bound for the product's feature build on DuckDB: the work no plan can skip.

Every plan of the product's feature set on a relational engine has to group the rows by
(customer, order), since order values, order counts and purchase days are per order, and
has to find the distinct (customer, product) pairs, since ``distinct_products`` counts
them. `features_duckdb_floor` runs just that, as one hand-written DuckDB query on the same
parquet file, with the same cutoff filter and the product's DuckDB settings (threads: at least
`features.contract.MIN_DUCKDB_THREADS`, on both cores): the
two hash aggregations, one small aggregation per customer (orders, net spend, first and
last order time) and the join of the two per-customer results. It computes none of the
other 25 feature columns, no purchase-day window, no sort, no cast to the money type.

Its time, beside the product's and the pandas reference's in the same run
(``bench/features.py --steps product,duckdb-floor,pandas-full``), says how much of the
product's time the rest of the feature set costs, and how far the "4x faster than pandas"
target is within reach of any DuckDB plan on this machine: if the floor alone is not 4x
faster than pandas, no plan on this engine can be.

Transactions (a parquet path) in, one row per customer with an order before the cutoff out.
"""

from __future__ import annotations

import pandas as pd

FLOOR_SQL = """
SELECT o.customer_id, o.n_orders, o.net_spend, o.first_ts, o.last_ts,
       coalesce(p.distinct_products, 0) AS distinct_products
FROM (
    SELECT customer_id, count(*) AS n_orders, sum(value) AS net_spend,
           min(ts) AS first_ts, max(ts) AS last_ts
    FROM (
        SELECT customer_id, order_id, min("timestamp") AS ts, sum(amount) AS value
        FROM read_parquet($path)
        WHERE "timestamp" < $cutoff
        GROUP BY customer_id, order_id
    )
    GROUP BY customer_id
) AS o
LEFT JOIN (
    SELECT customer_id, count(*) AS distinct_products
    FROM (
        SELECT customer_id, product_id
        FROM read_parquet($path)
        WHERE "timestamp" < $cutoff AND product_id IS NOT NULL AND amount >= 0
        GROUP BY customer_id, product_id
    )
    GROUP BY customer_id
) AS p ON o.customer_id = p.customer_id
"""


def features_duckdb_floor(path: str, cutoff: str | pd.Timestamp) -> pd.DataFrame:
    """The floor query on ``path`` (columns ``customer_id``, ``timestamp``, ``amount``,
    ``order_id``, ``product_id``) at ``cutoff``: one row per customer, in no order."""
    import duckdb

    from features.contract import raise_thread_floor

    con = duckdb.connect()
    try:
        # the same allocator and thread settings as the product's own DuckDB databases
        con.execute("SET allocator_background_threads = true")
        raise_thread_floor(con)
        params = {"path": str(path), "cutoff": pd.Timestamp(cutoff).to_pydatetime()}
        return con.sql(FLOOR_SQL, params=params).to_arrow_table().to_pandas()
    finally:
        con.close()
