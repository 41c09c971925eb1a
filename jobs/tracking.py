"""MLflow tracking: a SQLite store next to the outputs unless configured otherwise."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow

from ..conf import ConfigError
from ..storage import local_path, resolves_locally, scheme

# What the user's environment says, read before any run: mlflow.set_tracking_uri also
# writes $MLFLOW_TRACKING_URI, so reading it later would send a second run in the same
# process (another OUT) to the first run's store.
ENVIRONMENT_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(config: dict, out_dir: str) -> str:
    """``mlflow.tracking_uri`` from the config, else ``$MLFLOW_TRACKING_URI`` (as it was when
    salerank started), else ``sqlite:///OUT/mlflow.db`` for a local OUT.

    Raises
    ------
    ConfigError
        When OUT is not on the local file system and no store is configured: a SQLite file
        "under" ``hdfs://...`` would land in the container's scratch space and the registered
        model would be gone before the nightly run looks for it.
    """
    configured = config["mlflow"]["tracking_uri"] or ENVIRONMENT_URI
    if configured:
        return configured
    if not resolves_locally(out_dir):
        raise ConfigError(
            f"--out {out_dir} is not on the local file system, and no MLflow tracking store is "
            "configured: the default SQLite store under OUT only works for a local OUT. Point "
            "salerank at your team's MLflow server, either with `mlflow: {tracking_uri: "
            "http://HOST:5000}` in --conf or with MLFLOW_TRACKING_URI=http://HOST:5000 (see the "
            "README, 'A shared MLflow server')")
    return f"sqlite:///{Path(local_path(out_dir)).resolve() / 'mlflow.db'}"


def start_run(config: dict, out_dir: str, run_name: str) -> mlflow.ActiveRun:
    """Start a run in the configured experiment. An experiment created here keeps its
    artifacts under ``OUT/mlartifacts`` with a local store; a tracking server (http) keeps
    them where the server says (its artifact root), so that every client can read them."""
    uri = tracking_uri(config, out_dir)
    mlflow.set_tracking_uri(uri)
    name = config["mlflow"]["experiment"]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        experiment_id = experiment.experiment_id
    elif scheme(uri) in ("http", "https", "databricks"):
        experiment_id = mlflow.create_experiment(name)
    elif not resolves_locally(out_dir):  # MLflow's default would be ./mlruns: a container's scratch
        raise ConfigError(
            f"MLflow experiment {name!r} does not exist in {uri}, and OUT ({out_dir}) is not local: "
            "create it with an artifact location every job can reach (mlflow experiments create "
            "--experiment-name NAME --artifact-location URI), or use a tracking server (http)")
    else:
        artifacts = (Path(local_path(out_dir)).resolve() / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifacts)
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
