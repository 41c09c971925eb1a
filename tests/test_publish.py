"""A night's output appears all at once or not at all."""
import datetime as dt
import json

import pandas as pd
import pytest
from pyspark.errors import PySparkException
from pyspark.sql import functions as F

from salerank.jobs.publish import Night, PublishError, publish_parquet
from salerank.storage import FileSystem


def test_publish_replaces_and_a_failed_write_leaves_the_previous_output(spark, tmp_path):
    target = str(tmp_path / "recommendations" / "run_date=2025-01-01")
    assert publish_parquet(spark.range(5), target) == 5
    assert publish_parquet(spark.range(7), target) == 7
    assert spark.read.parquet(target).count() == 7

    failing = spark.range(100).withColumn(
        "id", F.when(F.col("id") == 60, F.raise_error(F.lit("boom"))).otherwise(F.col("id")))
    with pytest.raises(PySparkException, match="boom"):
        publish_parquet(failing.repartition(4), target)
    assert sorted(r.id for r in spark.read.parquet(target).collect()) == list(range(7))
    # no staging or half-written folder is left beside it
    assert [p.name for p in (tmp_path / "recommendations").iterdir()] == ["run_date=2025-01-01"]


def test_row_count_check(spark, tmp_path):
    target = str(tmp_path / "out")
    with pytest.raises(PublishError, match="expected 4"):
        publish_parquet(spark.range(3), target, expected_rows=4)
    assert not (tmp_path / "out").exists()


DAY = dt.date(2025, 1, 2)


def publish_night(spark, out, rows: int, commit=True) -> Night:
    night = Night(spark, str(out), DAY)
    night.write_parquet(spark.range(rows), "recommendations")
    lines = spark.createDataFrame([(f'{{"user_id": "u{i}"}}',) for i in range(rows)], "value string")
    night.write_jsonl(lines, "exports", "exp", "treatment.jsonl")
    if commit:
        night.commit({"run_date": DAY.isoformat()})
    return night


def published(out):
    recs = out / "recommendations" / f"run_date={DAY}"
    export = out / "exports" / f"run_date={DAY}" / "exp" / "treatment.jsonl"
    manifest = json.loads((out / "manifests" / f"run_date={DAY}" / "manifest.json").read_text())
    return (pd.read_parquet(recs).id.tolist(), len(export.read_text().splitlines()),
            manifest["outputs"][f"recommendations/run_date={DAY}"]["rows"],
            (out / "manifests" / f"run_date={DAY}" / "_SUCCESS").exists())


def test_a_night_is_published_with_its_manifest_and_an_abandoned_one_changes_nothing(spark, tmp_path):
    publish_night(spark, tmp_path, 3)
    assert published(tmp_path) == ([0, 1, 2], 3, 3, True)
    publish_night(spark, tmp_path, 5, commit=False).abandon()  # crashed before its commit
    assert published(tmp_path) == ([0, 1, 2], 3, 3, True)
    assert not list((tmp_path / "_staging").iterdir())


def test_a_crash_inside_the_commit_is_finished_by_the_next_run(spark, tmp_path, monkeypatch):
    publish_night(spark, tmp_path, 3)
    moves = []
    real_replace = FileSystem.replace

    def crash_after_first_move(self, staged, target):
        if moves:
            raise KeyboardInterrupt("killed")
        moves.append(target.toString())
        real_replace(self, staged, target)

    monkeypatch.setattr(FileSystem, "replace", crash_after_first_move)
    night = publish_night(spark, tmp_path, 5, commit=False)
    with pytest.raises(KeyboardInterrupt):
        night.commit({"run_date": DAY.isoformat()})
    night.abandon()
    monkeypatch.undo()
    # half moved: the date's marker is withdrawn, so no reader takes it as complete
    assert len(moves) == 1 and not (tmp_path / "manifests" / f"run_date={DAY}").exists()
    Night(spark, str(tmp_path), DAY)  # the next run of the date finishes the commit first
    assert published(tmp_path) == ([0, 1, 2, 3, 4], 5, 5, True)
    assert not list((tmp_path / "_staging").iterdir())


def test_an_empty_export_is_an_empty_file(spark, tmp_path):
    night = Night(spark, str(tmp_path), DAY)
    entry = night.write_jsonl(spark.createDataFrame([], "value string"), "exports", "exp", "control.jsonl")
    night.commit({})
    assert entry["rows"] == 0
    assert (tmp_path / "exports" / f"run_date={DAY}" / "exp" / "control.jsonl").read_text() == ""


def test_an_export_written_in_parallel_is_one_file_in_the_frames_order(spark, tmp_path):
    night = Night(spark, str(tmp_path), DAY)
    users = spark.range(5000).select(F.format_string("u%05d", (F.col("id") * 7919) % 5000).alias("user_id"))
    # sorted over 7 partitions (orderBy's own would be coalesced into one at this size)
    lines = (users.repartitionByRange(7, "user_id").sortWithinPartitions("user_id")
             .select(F.to_json(F.struct("user_id")).alias("value")))
    assert lines.rdd.getNumPartitions() == 7  # so the parts are joined, not renamed
    entry = night.write_jsonl(lines, "exports", "exp", "control.jsonl")
    folder = tmp_path / "_staging"
    written = [p for p in folder.rglob("*") if p.is_file()]
    assert [p.name for p in written] == ["control.jsonl"]  # no part file or checksum left beside it
    expected = [f'{{"user_id":"u{i:05d}"}}' for i in range(5000)]
    assert written[0].read_text().splitlines() == expected
    assert entry["rows"] == 5000


def test_a_rerun_withdraws_the_outputs_it_no_longer_produces(spark, tmp_path):
    """An experiment that has ended since the first run of the date: its exports go with
    the same commit, so the night is exactly what its manifest lists. Other dates stay."""
    publish_night(spark, tmp_path, 3)
    other = Night(spark, str(tmp_path), DAY + dt.timedelta(days=1))
    other.write_jsonl(spark.createDataFrame([('{"user_id": "u9"}',)], "value string"), "exports", "exp", "t.jsonl")
    other.commit({})
    rerun = Night(spark, str(tmp_path), DAY)
    rerun.write_parquet(spark.range(2), "recommendations")
    rerun.commit({"run_date": DAY.isoformat()})
    manifest = json.loads((tmp_path / "manifests" / f"run_date={DAY}" / "manifest.json").read_text())
    assert list(manifest["outputs"]) == [f"recommendations/run_date={DAY}"]
    assert not (tmp_path / "exports" / f"run_date={DAY}").exists()
    assert (tmp_path / "exports" / f"run_date={DAY + dt.timedelta(days=1)}" / "exp" / "t.jsonl").exists()
    assert len(pd.read_parquet(tmp_path / "recommendations" / f"run_date={DAY}")) == 2
    with pytest.raises(ValueError, match="not a part of a night"):
        rerun.staged("typo")


def test_paths_are_uris(spark, tmp_path):
    """``file://`` URIs work wherever a path does, and a URI's authority survives a join."""
    from salerank.storage import join

    assert join("s3a://bucket", "out", "x") == "s3a://bucket/out/x"
    assert join("hdfs://nn:8020/sales/", "/in") == "hdfs://nn:8020/sales/in"
    assert join("/abs", "a") == "/abs/a" and join("rel", "a") == "rel/a"
    uri = (tmp_path / "out").as_uri()
    assert publish_parquet(spark.range(3), join(uri, "part")) == 3
    files = FileSystem(spark, uri)
    files.write_bytes(join(uri, "a", "b.json"), b"{}")
    assert files.read_text(join(uri, "a", "b.json")) == "{}" and files.names(join(uri, "a")) == ["b.json"]
    assert files.create_new(join(uri, "once"), b"1") and not files.create_new(join(uri, "once"), b"2")
    assert files.read_text(join(uri, "once")) == "1"


def test_a_plain_path_is_where_fs_default_fs_says(spark, config):
    """On a cluster whose fs.defaultFS is HDFS, ``--out /sales/out`` is on HDFS: the tracking
    store must not default to a SQLite file on the driver's disk."""
    from salerank.conf import ConfigError
    from salerank.jobs.tracking import tracking_uri
    from salerank.storage import resolves_locally

    hadoop = spark.sparkContext._jsc.hadoopConfiguration()
    before = hadoop.get("fs.defaultFS")
    assert resolves_locally("/sales/out") and tracking_uri(config, "/sales/out").startswith("sqlite:///")
    hadoop.set("fs.defaultFS", "hdfs://127.0.0.1:1")  # nothing listens there: no call is made
    try:
        assert not resolves_locally("/sales/out") and resolves_locally("file:///sales/out")
        with pytest.raises(ConfigError, match="not on the local file system"):
            tracking_uri(config, "/sales/out")
    finally:
        hadoop.set("fs.defaultFS", before)
    assert resolves_locally("/sales/out")
