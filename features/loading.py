"""Load the input folder into typed Spark DataFrames, checking the data contract.

Every problem found is collected (file, column, a count and an example row) and all of
them are raised together in one :class:`DataValidationError` before anything is written.
Problems that do not stop a run are returned as warnings.
"""
from __future__ import annotations

import csv
import datetime as dt
import hashlib
import io
import os
from dataclasses import dataclass, field

from pyspark.errors import AnalysisException
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.storagelevel import StorageLevel

from ..storage import FileSystem, join
from .contract import EARLIEST_YEAR, LATEST_YEAR, SPARK_TYPES, TABLES, TableSpec

CORRUPT = "_corrupt_record"


@dataclass(frozen=True)
class Problem:
    """One kind of violation in one table column."""

    file: str
    column: str | None
    message: str
    count: int = 1
    example: str | None = None

    def __str__(self) -> str:
        where = f"{self.file}" + (f", column '{self.column}'" if self.column else "")
        text = f"{where}: {self.message}"
        if self.count > 1:
            text += f" ({self.count} rows)"
        if self.example is not None:
            text += f"; e.g. {self.example}"
        return text


class DataValidationError(ValueError):
    """The input folder breaks the data contract; nothing was written."""

    def __init__(self, data_dir: str, problems: list[Problem]):
        self.problems = problems
        lines = [f"{data_dir}: {len(problems)} problem(s) in the input data; "
                 "the run stopped before writing anything:"]
        lines += [f"  - {p}" for p in problems]
        super().__init__("\n".join(lines))


@dataclass
class Tables:
    """The validated input tables, typed as the contract says."""

    sales: DataFrame
    sale_images: DataFrame
    users: DataFrame
    visits: DataFrame
    purchases: DataFrame
    image_labels: DataFrame | None
    sale_versions: DataFrame | None = None  # optional: the sales' terms as they changed
    exposures: DataFrame | None = None  # optional: what the website showed (A/B reports)
    warnings: list[Problem] = field(default_factory=list)
    fingerprint: str = ""
    row_counts: dict[str, int] = field(default_factory=dict)
    # file name and newest ``ts`` of each table with events (None when empty)
    last_events: dict[str, tuple[str, dt.datetime | None]] = field(default_factory=dict)


def load_tables(spark: SparkSession, data_dir: str | os.PathLike) -> Tables:
    """Read and validate every table of the contract from ``data_dir``.

    Raises
    ------
    DataValidationError
        Listing every error found (missing files or columns, unparseable values,
        duplicate ids, unknown ids, sales that close before they open, ...).
    """
    data_dir = str(data_dir)
    errors: list[Problem] = []
    warnings: list[Problem] = []
    frames: dict[str, DataFrame | None] = {}
    names: dict[str, str] = {}
    last_events: dict[str, tuple[str, dt.datetime | None]] = {}
    files = FileSystem(spark, data_dir)
    digests: dict[str, str] = {}
    counts: dict[str, int] = {}
    for spec in TABLES:
        path = _find_table(files, data_dir, spec, errors)
        if path is None:
            frames[spec.name] = None
            continue
        names[spec.name] = path.rsplit("/", 1)[-1]
        try:
            raw = _read_raw(spark, files, path)
        except AnalysisException as err:  # a file Spark cannot read at all
            errors.append(Problem(names[spec.name], None, _unreadable(err)))
            frames[spec.name] = None
            continue
        frame, count, digest, newest = _type_table(raw, spec, names[spec.name], errors, warnings)
        if "ts" in spec.required:
            last_events[spec.name] = (names[spec.name], newest)
        frames[spec.name] = frame
        counts[spec.name], digests[spec.name] = count, digest
    if not errors:
        _check_cross_table(frames, names, errors, warnings)
    if errors:
        for frame in frames.values():
            if frame is not None:
                frame.unpersist()
        raise DataValidationError(data_dir, errors)
    fingerprint = hashlib.sha256(
        "|".join(f"{name}:{counts[name]}:{digests[name]}" for name in sorted(digests)).encode()
    ).hexdigest()
    return Tables(**frames, warnings=warnings, fingerprint=fingerprint, row_counts=counts,
                  last_events=last_events)


def _unreadable(err: AnalysisException) -> str:
    return f"cannot be read: {str(err).splitlines()[0]}"


def _find_table(files: FileSystem, data_dir: str, spec: TableSpec, errors: list[Problem]) -> str | None:
    found = [join(data_dir, f"{spec.name}.{ext}") for ext in ("csv", "parquet")
             if files.exists(join(data_dir, f"{spec.name}.{ext}"))]
    if len(found) > 1:
        errors.append(Problem(spec.name, None, "both a CSV and a Parquet version exist; "
                              "keep one so that it is clear which is read"))
        return None
    if not found:
        if spec.table_required:
            errors.append(Problem(f"{spec.name}.csv", None,
                                  f"missing: expected {spec.name}.csv or {spec.name}.parquet "
                                  f"in {data_dir}"))
        return None
    return found[0]


def _read_raw(spark: SparkSession, files: FileSystem, path: str) -> DataFrame:
    if path.endswith(".parquet"):
        return spark.read.parquet(path)
    if files.is_file(path):  # one file: read its header without a Spark job
        header = next(csv.reader(io.StringIO(_first_line(files, path))), [])
    else:
        header = spark.read.option("header", True).csv(path).columns
    schema = ", ".join([f"`{c}` string" for c in header] + [f"`{CORRUPT}` string"])
    return (spark.read.option("header", True).option("mode", "PERMISSIVE")
            .option("columnNameOfCorruptRecord", CORRUPT).schema(schema).csv(path))


def _first_line(files: FileSystem, path: str, chunk: int = 65536) -> str:
    """The first line of a text file (its header), without reading the whole file."""
    stream = files.fs.open(files.path(path))
    try:
        buffer = files.jvm.java.io.BufferedReader(files.jvm.java.io.InputStreamReader(stream, "UTF-8"), chunk)
        return (buffer.readLine() or "").lstrip("\ufeff")
    finally:
        stream.close()


def _type_table(raw: DataFrame, spec: TableSpec, file: str, errors: list[Problem],
                warnings: list[Problem]) -> tuple[DataFrame | None, int, str]:
    """Parse the contract's columns and count every single-table violation in one pass."""
    missing = [c for c in spec.required if c not in raw.columns]
    for column in missing:
        errors.append(Problem(file, column, f"required column is missing (columns found: "
                              f"{', '.join(c for c in raw.columns if c != CORRUPT)})"))
    if missing:
        return None, 0, "", None
    # Spark matches cached data by plan: a same-path read cached earlier in this session
    # would be served instead of the file as it is now.  Drop it first.
    raw.unpersist(blocking=True)
    raw = raw.persist(StorageLevel.MEMORY_AND_DISK)
    kinds = {**spec.required, **{c: k for c, k in spec.optional.items() if c in raw.columns}}
    typed_cols = {c: _parse(raw[c], raw.schema[c].dataType.simpleString(), kind)
                  for c, kind in kinds.items()}
    # Each check: (column, message, is_error, condition on raw/typed columns).
    checks = []
    if CORRUPT in raw.columns:
        checks.append((None, "malformed CSV line (wrong number of fields or bad quoting)", True,
                       raw[CORRUPT].isNotNull()))
    for c, kind in kinds.items():
        if c in spec.required:
            checks.append((c, "missing value", True, raw[c].isNull() | (F.trim(raw[c].cast("string")) == "")))
        if kind != "id" and kind != "string":
            checks.append((c, f"value is not a valid {kind}", True,
                           raw[c].isNotNull() & (F.trim(raw[c].cast("string")) != "") & typed_cols[c].isNull()))
        if kind in ("date", "timestamp"):
            year = F.year(typed_cols[c])
            checks.append((c, f"{kind} out of range {EARLIEST_YEAR}-{LATEST_YEAR}", True,
                           (year < EARLIEST_YEAR) | (year > LATEST_YEAR)))
        if kind == "double":
            checks.append((c, "value is not finite", True,
                           F.isnan(typed_cols[c]) | (F.abs(typed_cols[c]) == float("inf"))))
            checks.append((c, "negative value", True, typed_cols[c] < 0))
    checks += _table_rules(spec.name, typed_cols)
    aggregates = [F.count(F.lit(1)).alias("rows"),
                  F.sum(F.xxhash64(*[raw[c] for c in raw.columns]).cast("decimal(38,0)"))
                  .cast("string").alias("digest")]
    aggregates += [F.sum(F.when(cond, 1).otherwise(0)).alias(f"check{i}")
                   for i, (_, _, _, cond) in enumerate(checks)]
    if "ts" in kinds:  # for the freshness check (a stalled feed), in the same pass; a year out
        # of range is an error of its own, and would not even convert to a Python datetime
        in_range = F.year(typed_cols["ts"]).between(EARLIEST_YEAR, LATEST_YEAR)
        aggregates.append(F.max(F.when(in_range, typed_cols["ts"])).alias("newest"))
    summary = raw.agg(*aggregates).first()
    rows = summary["rows"]
    for i, (column, message, is_error, cond) in enumerate(checks):
        count = summary[f"check{i}"] or 0
        if count:
            example = _example(raw.filter(cond))
            (errors if is_error else warnings).append(Problem(file, column, message, count, example))
    if rows == 0:
        problem = Problem(file, None, "the table is empty", 0)
        (warnings if spec.may_be_empty else errors).append(problem)
    extra = [raw[c] for c in raw.columns
             if spec.keep_extra_columns and c not in kinds and c != CORRUPT]
    typed = raw.select(*[typed_cols[c].alias(c) for c in kinds], *extra)
    if spec.key:
        _check_duplicates(typed, spec.key, file, errors)
    return typed, rows, summary["digest"] or "0", summary["newest"] if "ts" in kinds else None


_TEMPORAL = {"date", "timestamp", "timestamp_ntz"}
_INTEGRAL = {"tinyint", "smallint", "int", "bigint"}


def _parse(column, source_type: str, kind: str):
    target = SPARK_TYPES[kind]
    if source_type == target:
        return column
    if kind in ("id", "string"):
        return column.cast("string")
    if source_type == "bigint" and target in _TEMPORAL:
        # a Parquet timestamp in nanoseconds, read as a long (nanosAsLong): to microseconds
        micros = F.timestamp_micros(F.floor(column / F.lit(1000)).cast("long"))
        return micros if target == "timestamp" else micros.cast(target)
    # typed sources (Parquet) convert directly, as their text would parse: not through a
    # string on every later read of the table
    if ((source_type in _TEMPORAL and target in _TEMPORAL)
            or (source_type in _INTEGRAL and target in ("int", "double"))
            or (source_type == "float" and target == "double")):
        return column.try_cast(target)
    return F.trim(column.cast("string")).try_cast(target)


def _table_rules(name: str, cols: dict) -> list:
    if name == "sales":
        return [("close_date", "close_date is before open_date", True,
                 cols["close_date"] < cols["open_date"])]
    if name == "sale_images":
        path = cols["image_path"]
        return [("image_path", "path must be relative to the data folder and stay inside it "
                 "(no leading '/', no '..', no drive letter)", True,
                 path.startswith("/") | path.startswith("\\") | path.rlike(r"(^|[/\\])\.\.([/\\]|$)")
                 | path.rlike(r"^[A-Za-z]:"))]
    return []


def _check_duplicates(typed: DataFrame, key: tuple[str, ...], file: str,
                      errors: list[Problem]) -> None:
    dupes = typed.groupBy(*key).count().filter("count > 1")
    summary = dupes.agg(F.count(F.lit(1)).alias("ids"), F.sum("count").alias("rows")).first()
    if summary["ids"]:
        example = _example(dupes.orderBy(*key))
        errors.append(Problem(file, ", ".join(key), f"duplicate id: {summary['ids']} id(s) appear "
                              f"more than once", summary["rows"], example))


def _example(rows: DataFrame) -> str:
    row = rows.limit(1).first().asDict()
    if row.get(CORRUPT) is not None:
        return f"line {row[CORRUPT]!r}"
    return "row {" + ", ".join(f"{k}: {'' if v is None else str(v)!r}"
                               for k, v in row.items() if k != CORRUPT) + "}"


def _check_cross_table(frames: dict, files: dict, errors: list[Problem],
                       warnings: list[Problem]) -> None:
    """Unknown sale and user ids, and events outside their sale's window: one pass per table."""
    sales = frames["sales"].select("sale_id", "open_date", "close_date", F.lit(True).alias("_known_sale"))
    users = frames["users"].select("user_id", F.lit(True).alias("_known_user"))
    for name in ("visits", "purchases", "sale_images", "sale_versions"):
        if frames.get(name) is None:  # an optional table that is absent
            continue
        # a sale's window only for events (sale_versions has columns of the same names)
        lookup = sales if name in ("visits", "purchases") else sales.select("sale_id", "_known_sale")
        joined = frames[name].join(F.broadcast(lookup), "sale_id", "left")
        checks = [("sale_id", "names a sale that is not in sales", errors,
                   F.col("_known_sale").isNull())]
        if name in ("visits", "purchases"):
            joined = joined.join(users, "user_id", "left")
            day = F.to_date("ts")
            checks += [("user_id", "names a user that is not in users", errors, F.col("_known_user").isNull()),
                       ("ts", "event outside its sale's open..close window (kept as history; never a "
                        "training example)", warnings, (day < F.col("open_date")) | (day > F.col("close_date")))]
        summary = joined.agg(*[F.sum(F.when(cond, 1).otherwise(0)).alias(f"check{i}")
                               for i, (*_, cond) in enumerate(checks)]).first()
        for i, (column, message, out, cond) in enumerate(checks):
            if summary[f"check{i}"]:
                example = _example(joined.filter(cond).select(*frames[name].columns))
                out.append(Problem(files[name], column, message, summary[f"check{i}"], example))
    labels = frames["image_labels"]
    if labels is not None:
        unknown = labels.join(frames["sale_images"].select("image_path"), "image_path", "left_anti")
        count = unknown.count()
        if count:
            warnings.append(Problem(files["image_labels"], "image_path",
                                    "labels an image that is not in sale_images", count, _example(unknown)))


def check_fresh(tables: Tables, data_dir: str, run_date: dt.date, max_lag_days: int | None) -> None:
    """Refuse a stalled feed: the newest visit or purchase more than ``max_lag_days`` before
    ``run_date`` would publish stale recommendations as if they were tonight's.

    Raises
    ------
    DataValidationError
        Naming each stale table and its newest event.
    """
    if max_lag_days is None:
        return
    problems = []
    for name, (file, newest) in sorted(tables.last_events.items()):
        if name not in ("visits", "purchases"):  # the feeds a night ranks from
            continue
        if newest is not None and (run_date - newest.date()).days > max_lag_days:  # empty: nothing stalled
            problems.append(Problem(file, "ts", f"the newest event is at {newest}, more than max_data_lag_days={max_lag_days} "
                                    f"days before the run date {run_date}: is the feed stalled? Fix the "
                                    "feed, or run with --allow-stale to rank anyway"))
    if problems:
        raise DataValidationError(data_dir, problems)
