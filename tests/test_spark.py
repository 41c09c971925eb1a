"""The session's environment and resources: what executors get, and what is released."""
import os
import stat

import pytest

import salerank
from salerank.jobs.spark import ENVIRONMENT, ExecutorSetupError, executor_salerank


def test_executors_get_the_environment_the_driver_sets_for_itself(spark):
    conf = spark.sparkContext.getConf()
    names = sorted(ENVIRONMENT)
    assert {n: conf.get(f"spark.executorEnv.{n}") for n in names} == {n: os.environ[n] for n in names}
    on_worker = spark.sparkContext.parallelize([0], 1).map(lambda _: [os.environ.get(n) for n in names])
    assert on_worker.collect()[0] == [os.environ[n] for n in names]


def test_executor_salerank_says_where_executors_load_it_from_or_how_to_ship_it(spark, tmp_path):
    assert executor_salerank(spark) == salerank.__file__  # local mode: the same installation
    # an executor whose interpreter has no site-packages (-S), so no salerank, and runs
    # elsewhere than in the repository (whose salerank/ it would import from the working folder)
    interpreter = tmp_path / "python-without-site"
    interpreter.write_text(f'#!/bin/sh\ncd "{tmp_path}" && exec {spark.sparkContext.pythonExec} -S "$@"\n')
    interpreter.chmod(interpreter.stat().st_mode | stat.S_IXUSR)
    context = spark.sparkContext
    saved, context.pythonExec = context.pythonExec, str(interpreter)
    try:
        with pytest.raises(ExecutorSetupError, match=r"--py-files dist/salerank-\*\.whl"):
            executor_salerank(spark)
    finally:
        context.pythonExec = saved


def test_released_destroys_scoring_broadcasts_on_failure_as_on_success(spark, hand_context):
    from salerank.metamodel.ranking import RANKING_SCHEMA, RankTopK
    from salerank.recommenders import Popularity
    from salerank.recommenders.scoring import released, score_users

    def pickled_broadcasts():  # the driver keeps each live broadcast's pickle in this folder
        return set(os.listdir(spark.sparkContext._temp_dir))

    def scored():
        fitted = [Popularity().fit(hand_context)]
        return score_users(hand_context, fitted, hand_context.active_users(30),
                           RankTopK(None, 2, ("popularity",)), RANKING_SCHEMA, 1)

    before = pickled_broadcasts()
    with released():
        frame = scored()
        assert frame.count() == 3 * 2 and len(pickled_broadcasts() - before) == 1
    assert pickled_broadcasts() == before
    with pytest.raises(Exception, match="destroyed"):
        frame.count()  # the state it reads is gone
    with pytest.raises(ZeroDivisionError), released():
        scored().count()
        1 / 0
    assert pickled_broadcasts() == before
