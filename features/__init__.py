"""lifecast.features: the data contract, point-in-time features, labels and segments.

Transactions in (any of CSV, Parquet, a pandas DataFrame, a database table), one row per
customer out. See DESIGN.md for the contract and the time semantics. Importing this
package runs nothing: no connections, no folders, no logging set up.
"""

from features.config import ColumnMapping, FeatureConfig
from features.contract import (
    DataValidationError,
    StaleDataWarning,
    Transactions,
    ValidationReport,
    load_transactions,
)
from features.pipeline import (
    build_features,
    build_labels,
    build_snapshots,
    build_training_frame,
)
from features.registry import feature_definitions, feature_names

__all__ = [
    "ColumnMapping",
    "DataValidationError",
    "FeatureConfig",
    "StaleDataWarning",
    "Transactions",
    "ValidationReport",
    "build_features",
    "build_labels",
    "build_snapshots",
    "build_training_frame",
    "demo_data_path",
    "DEMO_MAPPING",
    "feature_definitions",
    "feature_names",
    "load_transactions",
]


def demo_data_path() -> str:
    """Path of the bundled Online Retail extract (CC BY 4.0, see features/data/README.md)."""
    from importlib.resources import files

    return str(files("features") / "data" / "online_retail_sample.parquet")


#: The column mapping of the bundled demo data (UCI Online Retail).
DEMO_MAPPING = ColumnMapping(
    customer_id="CustomerID",
    timestamp="InvoiceDate",
    amount="Quantity * UnitPrice",
    order_id="InvoiceNo",
    product_id="StockCode",
    quantity="Quantity",
)
