"""The data contract: the tables salerank reads and the columns they must have.

One input folder holds each table as ``NAME.csv`` or ``NAME.parquet`` (a file or a
Spark/Hive-style folder of part files).  ``docs/data-contract.md`` documents it for users;
this module is the single source of truth the loader checks against.
"""
from __future__ import annotations

from dataclasses import dataclass, field

# Column kinds and the Spark type each is parsed into.
SPARK_TYPES = {
    "id": "string",
    "string": "string",
    "date": "date",
    "timestamp": "timestamp",
    "double": "double",
    "int": "int",
}


@dataclass(frozen=True)
class TableSpec:
    name: str
    required: dict[str, str]
    optional: dict[str, str] = field(default_factory=dict)
    key: tuple[str, ...] = ()
    table_required: bool = True
    # The table may be empty (a warning) instead of an error.
    may_be_empty: bool = True
    # Columns not named here are kept as they are (users' own attributes).
    keep_extra_columns: bool = False


SALES = TableSpec(
    "sales",
    required={"sale_id": "id", "title": "string", "open_date": "date", "close_date": "date"},
    optional={"description": "string", "destination": "string", "category": "string",
              "price": "double"},
    key=("sale_id",),
    may_be_empty=False,
)
SALE_IMAGES = TableSpec(
    "sale_images",
    required={"sale_id": "id", "image_path": "string"},
    optional={"position": "int"},
)
USERS = TableSpec("users", required={"user_id": "id"}, key=("user_id",), may_be_empty=False,
                  keep_extra_columns=True)
VISITS = TableSpec("visits", required={"user_id": "id", "sale_id": "id", "ts": "timestamp"})
PURCHASES = TableSpec(
    "purchases",
    required={"user_id": "id", "sale_id": "id", "ts": "timestamp"},
    optional={"amount": "double"},
)
IMAGE_LABELS = TableSpec(
    "image_labels", required={"image_path": "string", "tag": "string"}, table_required=False,
)

# the versions of a sale's terms (an extension, an early close, a new price), each in effect
# from ``valid_from``: read as of each day, so that a later change does not leak into the past
SALE_VERSIONS = TableSpec(
    "sale_versions", required={"sale_id": "id", "valid_from": "timestamp"},
    optional={"open_date": "date", "close_date": "date", "price": "double"}, table_required=False,
)
# what the website actually showed, for ``salerank ab report`` (docs/exports.md)
EXPOSURES = TableSpec(
    "exposures", required={"user_id": "id", "experiment": "string", "variant": "string", "ts": "timestamp"},
    table_required=False,
)

TABLES = (SALES, SALE_IMAGES, USERS, VISITS, PURCHASES, IMAGE_LABELS, SALE_VERSIONS, EXPOSURES)

# Timestamps and dates outside this range are errors (a typo such as year 20244 or 0202).
EARLIEST_YEAR, LATEST_YEAR = 1990, 2100
