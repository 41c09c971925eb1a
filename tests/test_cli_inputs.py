"""Broken inputs through the command line: each gets a clear message naming the file,
column and value, exit status 2, no stack trace, and nothing published."""
import datetime as dt
import shutil

import pandas as pd
import pytest
import yaml

from salerank.jobs.cli import main


@pytest.fixture()
def data(world_dir, tmp_path):
    """A private copy of the small world's data folder, to break."""
    return shutil.copytree(world_dir / "data", tmp_path / "data")


@pytest.fixture(scope="module")
def conf_file(config, tmp_path_factory):
    path = tmp_path_factory.mktemp("conf") / "small.yaml"
    path.write_text(yaml.safe_dump({key: config[key] for key in ("spark", "metamodel")}))
    return path


def edit(data, table, change):
    path = data / f"{table}.csv"
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    change(frame)
    frame.to_csv(path, index=False)


def set_value(table, row, column, value):
    return lambda data: edit(data, table, lambda f: f.loc.__setitem__((row, column), value))


def drop_column(table, column):
    return lambda data: edit(data, table, lambda f: f.drop(columns=column, inplace=True))


def duplicate_row(table, row):
    return lambda data: edit(data, table, lambda f: f.loc.__setitem__(len(f), f.loc[row]))


def empty_table(table):
    return lambda data: edit(data, table, lambda f: f.drop(f.index, inplace=True))


def append_line(table, line):
    def change(data):
        with open(data / f"{table}.csv", "a") as f:
            f.write(line + "\n")
    return change


BROKEN = {
    "missing column": (drop_column("purchases", "ts"),
                       ["purchases.csv, column 'ts': required column is missing"]),
    "wrong type": (set_value("visits", 4, "ts", "yesterday"),
                   ["visits.csv, column 'ts': value is not a valid timestamp", "'yesterday'"]),
    "not a number": (set_value("sales", 2, "price", "cheap"),
                     ["sales.csv, column 'price': value is not a valid double", "'cheap'"]),
    "duplicate id": (duplicate_row("users", 3), ["users.csv, column 'user_id': duplicate id"]),
    "unknown sale": (set_value("purchases", 0, "sale_id", "s99999"),
                     ["purchases.csv, column 'sale_id'", "not in sales", "'s99999'"]),
    "unknown user": (set_value("visits", 0, "user_id", "ghost"),
                     ["visits.csv, column 'user_id'", "'ghost'"]),
    "date out of range": (set_value("sales", 1, "open_date", "1850-01-01"),
                          ["sales.csv, column 'open_date': date out of range 1990-2100", "'1850-01-01'"]),
    "close before open": (set_value("sales", 1, "close_date", "1999-01-01"),
                          ["sales.csv, column 'close_date': close_date is before open_date"]),
    "empty sales": (empty_table("sales"), ["sales.csv: the table is empty"]),
    "empty users": (empty_table("users"), ["users.csv: the table is empty"]),
    "path traversal": (set_value("sale_images", 0, "image_path", "../../etc/passwd"),
                       ["sale_images.csv, column 'image_path': path must be relative", "'../../etc/passwd'"]),
    "absolute path": (set_value("sale_images", 1, "image_path", "/etc/passwd"),
                      ["sale_images.csv, column 'image_path'", "'/etc/passwd'"]),
    "huge number": (set_value("sales", 0, "price", "1e999"),
                    ["sales.csv, column 'price': value is not finite", "'1e999'"]),
    "huge year": (set_value("purchases", 1, "ts", "99999-01-01 00:00:00"),
                  ["purchases.csv, column 'ts'", "99999-01-01"]),
    "negative amount": (set_value("purchases", 1, "amount", "-5"),
                        ["purchases.csv, column 'amount': negative value", "'-5'"]),
    "malformed line": (append_line("visits", 'u000001,s00001,2025-03-02 10:00:00,extra,"open'),
                       ["visits.csv: malformed CSV line"]),
    "missing table": (lambda data: (data / "visits.csv").unlink(), ["visits.csv", "missing"]),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_input_is_named_and_nothing_is_published(case, data, tmp_path, conf_file, world, capsys):
    breakage, expected = BROKEN[case]
    breakage(data)
    out = tmp_path / "out"
    code = main(["nightly", "--data", str(data), "--date", str(world.last_date), "--out", str(out),
                 "--conf", str(conf_file)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err and "salerank nightly: error:" in err
    for fragment in expected:
        assert fragment in err
    published = [p for p in ("recommendations", "exports", "manifests", "reports") if (out / p).exists()]
    assert published == []


def test_missing_data_folder_and_bad_configuration(data, tmp_path, world, conf_file, capsys):
    day, out = str(world.last_date), str(tmp_path / "out")
    code = main(["nightly", "--data", str(tmp_path / "nowhere"), "--date", day, "--out", out])
    assert code == 2 and "--data " in capsys.readouterr().err
    typo = tmp_path / "typo.yaml"
    typo.write_text("metamodel: {train_dayz: 3}\n")
    code = main(["nightly", "--data", str(data), "--date", day, "--out", out, "--conf", str(typo)])
    err = capsys.readouterr().err
    assert code == 2 and "train_dayz" in err and "Traceback" not in err
    experiment = tmp_path / "experiment.yaml"
    experiment.write_text(yaml.safe_dump({**yaml.safe_load(conf_file.read_text()), "experiments": [{
        "name": "x", "salt": "s", "start": "2025-01-01", "end": "2025-12-31",
        "variants": [{"name": "a", "strategy": "popularity", "weight": 1},
                     {"name": "b", "strategy": "magic", "weight": 1}]}]}))
    code = main(["nightly", "--data", str(data), "--date", day, "--out", out, "--conf", str(experiment)])
    err = capsys.readouterr().err
    assert code == 2 and "experiments[0].variants[1]: unknown strategy 'magic'" in err
    code = main(["ab", "report", "--data", str(data), "--out", out, "--experiment", "x"])
    err = capsys.readouterr().err
    assert code == 2 and "no published export of the experiment 'x'" in err
    assert not (tmp_path / "out" / "manifests").exists()


def test_a_stalled_feed_stops_the_night_unless_allowed(data, tmp_path, world, conf_file, capsys):
    """Three days after the newest event (max_data_lag_days: 2): exit 2 naming both tables and
    their newest event; --allow-stale goes on (and stops later: no model is registered here)."""
    late = str(world.last_date + dt.timedelta(days=3))
    newest = pd.to_datetime(world.visits["ts"]).max()
    args = ["nightly", "--data", str(data), "--date", late, "--out", str(tmp_path / "out"), "--conf", str(conf_file)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"visits.csv, column 'ts': the newest event is at {newest}" in err
    assert "purchases.csv, column 'ts'" in err and "--allow-stale" in err
    assert main([*args, "--allow-stale"]) == 2
    err = capsys.readouterr().err
    assert "max_data_lag_days" not in err and "salerank train" in err


@pytest.mark.parametrize("command", ["nightly", "train"])
def test_a_remote_out_without_a_tracking_store_stops_before_any_work(command, data, world, conf_file, capsys):
    """A SQLite store "under" hdfs:// would be lost with the container: say how to set one.
    (Nothing listens on port 1: any attempt to work there would fail differently.)"""
    code = main([command, "--data", str(data), "--date", str(world.last_date), "--out",
                 "hdfs://127.0.0.1:1/sales/out", "--conf", str(conf_file)])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "hdfs://127.0.0.1:1/sales/out is not on the local file system" in err
    assert "MLFLOW_TRACKING_URI" in err and "tracking_uri" in err
