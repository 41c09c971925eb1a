"""The data contract: a valid folder loads; every violation is reported with file, column,
count and an example, and all of them are reported at once."""
import shutil

import pandas as pd
import pytest

from salerank.features.loading import DataValidationError, load_tables


@pytest.fixture()
def data(world_dir, tmp_path):
    """A private copy of the small world's data folder, to break."""
    return shutil.copytree(world_dir / "data", tmp_path / "data")


def edit(data, table, change):
    path = data / f"{table}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame)
    frame.to_csv(path, index=False)


def problems(spark, data):
    with pytest.raises(DataValidationError) as caught:
        load_tables(spark, data)
    return caught.value.problems, str(caught.value)


def test_valid_world_loads_typed(tables, world):
    assert tables.row_counts["visits"] == len(world.visits)
    assert dict(tables.sales.dtypes)["open_date"] == "date"
    assert dict(tables.visits.dtypes)["ts"] == "timestamp"
    assert dict(tables.sales.dtypes)["price"] == "double"
    assert "signup_channel" in tables.users.columns  # users' own attributes are kept
    assert len(tables.fingerprint) == 64


def test_parquet_input_loads_like_csv(spark, world, tmp_path, tables):
    for name in world.tables:
        getattr(world, name).to_parquet(tmp_path / f"{name}.parquet", index=False)
    loaded = load_tables(spark, tmp_path)
    assert loaded.row_counts == tables.row_counts
    # typed columns (dates, timestamps, prices) convert directly, to the same values as text
    for name, key in (("sales", ["sale_id"]), ("visits", ["user_id", "sale_id", "ts"]),
                      ("purchases", ["user_id", "sale_id", "ts"])):
        expected = getattr(tables, name).toPandas().sort_values(key, ignore_index=True)
        got = getattr(loaded, name).toPandas().sort_values(key, ignore_index=True)
        pd.testing.assert_frame_equal(got[expected.columns], expected)


def test_parquet_in_nanoseconds_loads_like_csv(spark, world, tmp_path, tables):
    """pandas writes timestamps in nanoseconds by default: read as they are, not refused."""
    for name in world.tables:
        frame = getattr(world, name)
        for column in ("ts", "open_date", "close_date"):
            if column in frame.columns:
                frame = frame.assign(**{column: pd.to_datetime(frame[column])})  # datetime64[ns]
        frame.to_parquet(tmp_path / f"{name}.parquet", index=False)
    loaded = load_tables(spark, tmp_path)
    assert loaded.row_counts == tables.row_counts
    for name, key in (("sales", ["sale_id"]), ("visits", ["user_id", "sale_id", "ts"])):
        expected = getattr(tables, name).toPandas().sort_values(key, ignore_index=True)
        got = getattr(loaded, name).toPandas().sort_values(key, ignore_index=True)
        pd.testing.assert_frame_equal(got[expected.columns], expected)


def test_fingerprint_changes_with_content(spark, data, tables):
    edit(data, "purchases", lambda f: f.loc.__setitem__((0, "amount"), "1.0"))
    assert load_tables(spark, data).fingerprint != tables.fingerprint


def test_every_single_table_problem_is_reported_at_once(spark, data):
    def break_sales(f):
        f.loc[3, "open_date"] = "2025-13-45"
        f.loc[4, "close_date"] = "2020-01-01"   # before its open date
        f.loc[5, "sale_id"] = f.loc[6, "sale_id"]  # duplicate id
        f.loc[7, "price"] = "cheap"
    edit(data, "sales", break_sales)
    edit(data, "visits", lambda f: f.loc.__setitem__((10, "ts"), "yesterday"))
    edit(data, "users", lambda f: f.drop(columns="user_id", inplace=True))
    found, text = problems(spark, data)
    by_column = {(p.file, p.column): p for p in found}
    assert "2025-13-45" in str(by_column[("sales.csv", "open_date")])
    assert "not a valid date" in by_column[("sales.csv", "open_date")].message
    assert "before open_date" in by_column[("sales.csv", "close_date")].message
    assert "duplicate id" in by_column[("sales.csv", "sale_id")].message
    assert by_column[("sales.csv", "sale_id")].count == 2
    assert "cheap" in str(by_column[("sales.csv", "price")])
    assert "yesterday" in str(by_column[("visits.csv", "ts")])
    assert "required column is missing" in by_column[("users.csv", "user_id")].message
    assert "stopped before writing anything" in text


def test_unknown_ids_are_counted_with_an_example(spark, data):
    def unknown(f):
        f.loc[0:2, "user_id"] = "ghost"
        f.loc[5, "sale_id"] = "s99999"
    edit(data, "purchases", unknown)
    found, _ = problems(spark, data)
    users = next(p for p in found if p.column == "user_id")
    assert users.file == "purchases.csv" and users.count == 3 and "ghost" in str(users)
    sales = next(p for p in found if p.column == "sale_id")
    assert "s99999" in str(sales) and "not in sales" in sales.message


def test_missing_table_and_ambiguous_table(spark, data, world):
    (data / "visits.csv").unlink()
    world.users.to_parquet(data / "users.parquet", index=False)
    found, text = problems(spark, data)
    assert any(p.file == "visits.csv" and "missing" in p.message for p in found)
    assert any(p.file == "users" and "both a CSV and a Parquet" in p.message for p in found)


def test_path_traversal_and_malformed_lines(spark, data):
    (data / "sale_images.csv").write_text(
        "sale_id,image_path\ns00001,img/ok.jpg\ns00001,../../etc/passwd\ns00002,/abs/path.jpg\n")
    with open(data / "visits.csv", "a") as f:
        f.write('u000001,s00001,2025-03-02 10:00:00,extra,"fields\n')
    found, _ = problems(spark, data)
    traversal = next(p for p in found if p.column == "image_path")
    assert traversal.count == 2 and "stay inside" in traversal.message
    assert any(p.file == "visits.csv" and "malformed CSV line" in p.message for p in found)


def test_empty_sales_is_an_error_but_empty_images_a_warning(spark, data, tables):
    assert not tables.warnings
    edit(data, "sale_images", lambda f: f.drop(f.index, inplace=True))
    edit(data, "image_labels", lambda f: f.drop(f.index, inplace=True))
    assert any("sale_images" in p.file and "empty" in p.message for p in load_tables(spark, data).warnings)
    edit(data, "sales", lambda f: f.drop(f.index, inplace=True))
    found, _ = problems(spark, data)
    assert any(p.file == "sales.csv" and "empty" in p.message for p in found)


def test_events_outside_windows_are_warnings(spark, data):
    edit(data, "visits", lambda f: f.loc.__setitem__((0, "ts"), "2024-01-01 00:00:00"))
    loaded = load_tables(spark, data)
    outside = [p for p in loaded.warnings if "outside" in p.message]
    assert len(outside) == 1 and outside[0].count == 1 and "2024-01-01" in str(outside[0])
