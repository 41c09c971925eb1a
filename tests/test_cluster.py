"""End to end as a team runs it: a Spark standalone master and worker started from the
installed pyspark, one ``mlflow server`` (SQLite backend, artifacts stored and served by it),
the wheel shipped to the executors with ``--py-files``, ``train`` then ``nightly`` by
``spark-submit`` with ``file://`` URIs, from a working directory outside the repository, both
tracking to the server; checked through the MLflow client and in the MLflow UI in headless
Chromium. These are the README's commands (*spark-submit*, *A shared MLflow server*)."""
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

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SPARK_HOME = Path(pyspark.__file__).resolve().parent
WHEEL = "salerank-0.1.0-py3-none-any.whl"
TOP_K = 10
CHROMIUM = "/usr/bin/chromium"
MODEL = "salerank-metamodel"


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


def wait_for_health(url: str, server, log, processes) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert server.poll() is None, f"mlflow server exited:\n{processes.tail(log)}"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as answer:
                if answer.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, f"mlflow server not healthy:\n{processes.tail(log)}"
        time.sleep(0.5)


def start_mlflow_server(processes, server_dir: Path, log: Path) -> str:
    """``mlflow server`` as the README starts it, on a free port; its URL once healthy."""
    server_dir.mkdir()
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    server = processes.start(["mlflow", "server", "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
                              "--serve-artifacts", "--artifacts-destination", str(server_dir / "artifacts"),
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"], log, server_dir)
    wait_for_health(url, server, log, processes)
    return url


def show(page, url: str, texts: list[str], screenshot, exact: tuple[str, ...] = ()) -> str:
    """Open ``url`` in the MLflow UI (a React app), wait until every one of ``texts`` is
    shown (those in ``exact`` as a whole element's text), screenshot it, and return the
    page's text."""
    page.goto(url)
    for text in texts:
        page.get_by_text(text, exact=text in exact).first.wait_for(state="visible", timeout=60_000)
    page.screenshot(path=str(screenshot), full_page=True)
    return page.locator("body").inner_text()


@pytest.mark.skipif(shutil.which("java") is None, reason="Java is not installed (Spark needs Java 17)")
@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_train_and_nightly_by_spark_submit_on_a_standalone_cluster_with_a_shared_mlflow_server(
        spark, world, world_dir, night_config, night, processes, tmp_path):
    from playwright.sync_api import sync_playwright

    day = world.last_date.isoformat()
    data = world_dir / "data"
    out, server_dir = tmp_path / "out", tmp_path / "server"
    work = tmp_path / "work"  # the working directory of every command: not the repository
    work.mkdir()
    url = start_mlflow_server(processes, server_dir, tmp_path / "mlflow-server.log")
    conf = tmp_path / "team.yaml"  # the suite's night settings (so that its night compares), and the server
    conf.write_text(yaml.safe_dump({**{key: night_config[key] for key in ("spark", "metamodel", "experiments")},
                                    "mlflow": {"tracking_uri": url}}))
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

    cluster = check_output_contract(out, day, f"{MODEL}/1")
    # the suite's night in local mode, from the same data and configuration, into another OUT
    alone = check_output_contract(night[1], day, f"{MODEL}/1")
    differ = {name: (entry, alone["outputs"].get(name)) for name, entry in cluster["outputs"].items()
              if entry != alone["outputs"].get(name)}
    assert not differ and cluster["outputs"].keys() == alone["outputs"].keys(), differ  # rows, checksums
    assert cluster["model"]["content_version"] == alone["model"]["content_version"]
    assert cluster["data_fingerprint"] == alone["data_fingerprint"]

    # everything went to the server: nothing tracked next to the outputs
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(night_config["mlflow"]["experiment"])
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    trained, nightly = runs[f"train {day}"], runs[f"nightly {day}"]
    assert trained.info.status == nightly.info.status == "FINISHED"
    # the executors imported salerank from the shipped wheel, not from the source tree
    for run in (trained, nightly):
        origin = run.data.tags.get("executor_salerank", "")
        assert WHEEL in origin and not origin.startswith(str(REPO)), (run.info.run_name, origin)
    assert nightly.data.tags["model_version"] == f"{MODEL}/1"
    assert nightly.data.tags["model_run_id"] == trained.info.run_id
    assert nightly.data.metrics["seconds_score"] > 0 and nightly.data.metrics["active_users"] > 0
    # the report is stored by the server, under its artifact root, and served back by it
    assert "night_report.html" in {a.path for a in client.list_artifacts(nightly.info.run_id)}
    assert nightly.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list((server_dir / "artifacts").rglob("night_report.html"))
    assert len(stored) == 1
    report = client.download_artifacts(nightly.info.run_id, "night_report.html", str(tmp_path))
    assert open(report, "rb").read() == stored[0].read_bytes()
    assert (out / "reports" / f"run_date={day}" / "index.html").read_bytes() == stored[0].read_bytes()
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1" and version.run_id == trained.info.run_id
    assert cluster["model"]["version"] == "1" and cluster["model"]["run_id"] == trained.info.run_id

    # the same, as a team sees it in the MLflow UI
    run_page = f"{url}/#/experiments/{experiment.experiment_id}/runs/{nightly.info.run_id}"
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        text = show(page, run_page, [f"nightly {day}", "seconds_score"], tmp_path / "run.png",
                    exact=("seconds_score",))
        assert f"{MODEL}/1" in text  # the model_version tag
        show(page, f"{run_page}/artifacts", ["night_report.html"], tmp_path / "artifacts.png",
             exact=("night_report.html",))
        text = show(page, f"{url}/#/models/{MODEL}", ["Version 1", "champion"], tmp_path / "model.png")
        browser.close()
    print(f"screenshots in {tmp_path}")
