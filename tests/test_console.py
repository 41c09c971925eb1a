"""The console of a command: salerank's stages and results, not its libraries' banners."""
import re
import subprocess
import sys

import pytest
import yaml

NOISE = ("tensorflow", "oneDNN", "absl", "log4j", "WARN ", "alembic", "🏃", "py4j", "mlflow.store")


@pytest.mark.slow
def test_a_demo_prints_salerank_lines_only_and_names_its_log_file(config, tmp_path):
    """One whole demo (training and a night, photos tagged, a new MLflow store) run as a
    program: every library's output is in the log file it names, none on the console."""
    conf = tmp_path / "small.yaml"
    conf.write_text(yaml.safe_dump({key: config[key] for key in ("spark", "metamodel")}))
    out = tmp_path / "out"
    job = subprocess.run(
        [sys.executable, "-c", "import sys; from salerank.jobs.cli import main; sys.exit(main(sys.argv[1:]))",
         "demo", "--out", str(out), "--users", "300", "--days", "30", "--conf", str(conf)],
        capture_output=True, text=True, timeout=1200)
    console = job.stdout + job.stderr
    assert job.returncode == 0, console
    for line in ("salerank: stage images ...", "salerank: stage train done in",
                 "salerank: stage score done in", "salerank: stage publish done in"):
        assert line in job.stderr, console
    assert "registered salerank-metamodel/1" in job.stdout
    for noise in NOISE:
        assert noise not in console, (noise, console)
    logs = list((out / "logs").glob("salerank-demo-*.log"))
    assert len(logs) == 1 and re.fullmatch(r"salerank-demo-\d{8}T\d{6}Z\.log", logs[0].name)
    assert job.stderr.rstrip().endswith(f"salerank: details in {logs[0]}")
    details = logs[0].read_text(encoding="utf-8")
    for redirected in ("log4j", "alembic"):  # the JVM's and MLflow's
        assert redirected in details
