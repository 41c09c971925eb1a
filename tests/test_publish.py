"""A night's output appears all at once or not at all."""
import pytest
from pyspark.errors import PySparkException
from pyspark.sql import functions as F

from salerank.jobs.publish import PublishError, publish_parquet


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
