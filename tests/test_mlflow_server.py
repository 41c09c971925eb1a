"""MLflow as teams run it: one ``mlflow server`` (SQLite backend, artifacts served from a
local root) shared by ``salerank train`` and ``salerank nightly`` over HTTP, checked through
the client and in the MLflow UI in headless Chromium. This is the README's *A shared MLflow
server*."""
import json
import os
import sys
import time
import urllib.request

import pytest
import yaml
from mlflow import MlflowClient

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
MODEL = "salerank-metamodel"


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


def show(page, url: str, texts: list[str], screenshot, exact: tuple[str, ...] = ()) -> str:
    """Open ``url`` in the MLflow UI (a React app), wait until every one of ``texts`` is
    shown (those in ``exact`` as a whole element's text), screenshot it, and return the
    page's text."""
    page.goto(url)
    for text in texts:
        page.get_by_text(text, exact=text in exact).first.wait_for(state="visible", timeout=60_000)
    page.screenshot(path=str(screenshot), full_page=True)
    return page.locator("body").inner_text()


@pytest.mark.skipif(not os.path.exists(CHROMIUM), reason="Debian's chromium is not installed (.ci/run installs it)")
def test_train_and_nightly_against_a_shared_mlflow_server(world, world_dir, config, processes, tmp_path):
    from playwright.sync_api import sync_playwright

    day = world.last_date.isoformat()
    port = processes.free_port()
    url = f"http://127.0.0.1:{port}"
    server_dir, out, work = tmp_path / "server", tmp_path / "out", tmp_path / "work"
    server_dir.mkdir()
    work.mkdir()
    server_log = tmp_path / "mlflow-server.log"
    server = processes.start(["mlflow", "server", "--backend-store-uri", f"sqlite:///{server_dir / 'mlflow.db'}",
                              "--serve-artifacts", "--artifacts-destination", str(server_dir / "artifacts"),
                              "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
                             server_log, server_dir)
    wait_for_health(url, server, server_log, processes)

    conf = tmp_path / "shared.yaml"
    conf.write_text(yaml.safe_dump({**{key: config[key] for key in ("spark", "metamodel")},
                                    "mlflow": {"tracking_uri": url},
                                    "image_labelling": {"enabled": False}}))  # photos: not this test's point
    env = {key: value for key, value in os.environ.items() if not key.startswith("MLFLOW_")}
    common = ["--data", str(world_dir / "data"), "--date", day, "--out", str(out), "--conf", str(conf)]
    for job, extra in (("train", ["--alias", "champion"]), ("nightly", [])):
        log = tmp_path / f"{job}.log"
        began = time.monotonic()
        processes.finish(processes.start([sys.executable, "-m", "salerank.jobs.cli", job, *common, *extra],
                                         log, work, env), log)
        print(f"salerank {job}: {time.monotonic() - began:.1f} s")

    # everything went to the server: nothing tracked next to the outputs
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()
    client = MlflowClient(tracking_uri=url)
    experiment = client.get_experiment_by_name(config["mlflow"]["experiment"])
    runs = {run.info.run_name: run for run in client.search_runs([experiment.experiment_id])}
    trained, night = runs[f"train {day}"], runs[f"nightly {day}"]
    assert trained.info.status == night.info.status == "FINISHED"
    assert night.data.tags["model_version"] == f"{MODEL}/1" and night.data.tags["model_run_id"] == trained.info.run_id
    assert night.data.metrics["seconds_score"] > 0 and night.data.metrics["active_users"] > 0
    assert "night_report.html" in {a.path for a in client.list_artifacts(night.info.run_id)}
    # the report is stored by the server, under its artifact root, and served back by it
    assert night.info.artifact_uri.startswith("mlflow-artifacts:")
    stored = list((server_dir / "artifacts").rglob("night_report.html"))
    assert len(stored) == 1
    report = client.download_artifacts(night.info.run_id, "night_report.html", str(tmp_path))
    assert open(report, "rb").read() == stored[0].read_bytes()
    assert (out / "reports" / f"run_date={day}" / "index.html").read_bytes() == stored[0].read_bytes()
    version = client.get_model_version_by_alias(MODEL, "champion")
    assert version.version == "1" and version.run_id == trained.info.run_id
    published = json.loads((out / "manifests" / f"run_date={day}" / "manifest.json").read_text())
    assert published["model"]["version"] == "1" and published["model"]["run_id"] == trained.info.run_id

    # the same, as a team sees it in the MLflow UI
    run_page = f"{url}/#/experiments/{experiment.experiment_id}/runs/{night.info.run_id}"
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
