"""End to end on a real cluster: a Spark standalone master and worker started from the
installed pyspark, the wheel shipped to the executors with ``--py-files``, ``train`` then
``nightly`` by ``spark-submit`` with ``file://`` URIs, from a working directory outside the
repository. These are the README's commands (*spark-submit*)."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pyspark
import pytest
import yaml
from mlflow import MlflowClient

from salerank.jobs.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
WHEEL = "salerank-0.1.0-py3-none-any.whl"
TOP_K = 10


def wait_for_worker(webui_port: int, daemons: dict, processes) -> None:
    """Until the master's web UI lists one alive worker."""
    deadline = time.monotonic() + 120
    while True:
        for job, log in daemons.items():
            assert job.poll() is None, f"{log.name} exited:\n{processes.tail(log)}"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{webui_port}/json/", timeout=5) as answer:
                if json.load(answer).get("aliveworkers") == 1:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "no worker registered:\n" + "\n".join(
            processes.tail(log) for log in daemons.values())
        time.sleep(0.5)


def check_output_contract(out: Path, day: str, model_version: str) -> dict:
    """The night's recommendations and manifest, as readers may rely on them."""
    assert (out / "manifests" / f"run_date={day}" / "_SUCCESS").exists()
    recs = pd.read_parquet(out / "recommendations" / f"run_date={day}")
    assert list(recs.columns) == ["user_id", "rank", "sale_id", "score", "model_version"]
    assert len(recs) > 0 and (recs.model_version == model_version).all()
    for _, ranking in recs.groupby("user_id"):
        ranks = sorted(ranking["rank"])
        assert ranks == list(range(1, len(ranks) + 1)) and len(ranks) <= TOP_K
        assert ranking.sale_id.is_unique
    manifest = json.loads((out / "manifests" / f"run_date={day}" / "manifest.json").read_text())
    assert manifest["outputs"][f"recommendations/run_date={day}"]["rows"] == len(recs)
    return manifest


def runs_by_name(out: Path) -> dict:
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    experiments = [e.experiment_id for e in client.search_experiments()]
    return {run.info.run_name: run for run in client.search_runs(experiments)}


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed (Spark needs Java 17)")
def test_train_and_nightly_by_spark_submit_on_a_standalone_cluster(spark, world, world_dir, config, processes,
                                                                   tmp_path):
    day = world.last_date.isoformat()
    data = world_dir / "data"
    out, local_out = tmp_path / "out", tmp_path / "local-out"
    work = tmp_path / "work"  # the working directory of every command: not the repository
    work.mkdir()
    conf = tmp_path / "small.yaml"
    conf.write_text(yaml.safe_dump({key: config[key] for key in ("spark", "metamodel")}))
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(REPO)],
                   cwd=work, check=True)
    wheel = dist / WHEEL
    assert wheel.exists(), sorted(p.name for p in dist.iterdir())

    env = {key: value for key, value in os.environ.items()
           if not key.startswith(("PYSPARK_GATEWAY", "SPARK_", "MLFLOW_"))}
    env.update(SPARK_HOME=str(SPARK_HOME), SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               SPARK_LOG_DIR=str(tmp_path / "logs"), SPARK_WORKER_DIR=str(tmp_path / "worker"))
    port, master_ui, worker_port, worker_ui = (processes.free_port() for _ in range(4))
    master_url = f"spark://127.0.0.1:{port}"
    spark_class, spark_submit = str(SPARK_HOME / "bin" / "spark-class"), str(SPARK_HOME / "bin" / "spark-submit")
    logs = tmp_path / "master.log", tmp_path / "worker.log"
    master = processes.start([spark_class, "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
                              "--port", str(port), "--webui-port", str(master_ui)], logs[0], work, env)
    worker = processes.start([spark_class, "org.apache.spark.deploy.worker.Worker", master_url,
                              "--host", "127.0.0.1", "--port", str(worker_port), "--webui-port", str(worker_ui),
                              "--cores", "2", "--memory", "4g"], logs[1], work, env)
    wait_for_worker(master_ui, {master: logs[0], worker: logs[1]}, processes)

    common = ["--data", data.as_uri(), "--date", day, "--out", out.as_uri(), "--conf", str(conf)]
    for job, extra in (("train", ["--alias", "champion"]), ("nightly", [])):
        log = tmp_path / f"{job}.log"
        began = time.monotonic()
        processes.finish(processes.start([spark_submit, "--master", master_url, "--py-files", str(wheel),
                                          str(REPO / "jobs" / f"{job}.py"), *common, *extra], log, work, env), log)
        print(f"spark-submit {job}: {time.monotonic() - began:.1f} s")
    # the standalone cluster ran both: the master lists them as completed applications
    with urllib.request.urlopen(f"http://127.0.0.1:{master_ui}/json/", timeout=5) as answer:
        assert len(json.load(answer)["completedapps"]) == 2
    processes.stop_all()  # the cluster is not needed any more

    cluster = check_output_contract(out, day, "salerank-metamodel/1")

    # the same night in local mode, from the same data and configuration, into another OUT
    began = time.monotonic()
    local = ["--data", data.as_uri(), "--date", day, "--out", local_out.as_uri(), "--conf", str(conf)]
    assert main(["train", *local, "--alias", "champion"]) == 0
    assert main(["nightly", *local]) == 0
    print(f"local mode train + nightly: {time.monotonic() - began:.1f} s")
    alone = check_output_contract(local_out, day, "salerank-metamodel/1")
    differ = {name: (entry, alone["outputs"].get(name)) for name, entry in cluster["outputs"].items()
              if entry != alone["outputs"].get(name)}
    assert not differ and cluster["outputs"].keys() == alone["outputs"].keys(), differ  # rows, checksums
    assert cluster["model"]["content_version"] == alone["model"]["content_version"]
    assert cluster["data_fingerprint"] == alone["data_fingerprint"]
    # the executors imported salerank from the shipped wheel, not from the source tree
    runs = runs_by_name(out)
    for name in (f"train {day}", f"nightly {day}"):
        origin = runs[name].data.tags.get("executor_salerank", "")
        assert WHEEL in origin and not origin.startswith(str(REPO)), (name, origin)
