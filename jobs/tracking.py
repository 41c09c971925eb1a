"""MLflow tracking: a SQLite store next to the outputs unless configured otherwise."""
from __future__ import annotations

import os
from pathlib import Path

import mlflow

# What the user's environment says, read before any run: mlflow.set_tracking_uri also
# writes $MLFLOW_TRACKING_URI, so reading it later would send a second run in the same
# process (another OUT) to the first run's store.
ENVIRONMENT_URI = os.environ.get("MLFLOW_TRACKING_URI")


def tracking_uri(config: dict, out_dir: str) -> str:
    """``mlflow.tracking_uri`` from the config, else ``$MLFLOW_TRACKING_URI`` (as it was when
    salerank started), else ``sqlite:///OUT/mlflow.db``."""
    configured = config["mlflow"]["tracking_uri"] or ENVIRONMENT_URI
    if configured:
        return configured
    return f"sqlite:///{Path(out_dir).resolve() / 'mlflow.db'}"


def start_run(config: dict, out_dir: str, run_name: str) -> mlflow.ActiveRun:
    """Start a run in the configured experiment (artifacts under ``OUT/mlartifacts``
    when the experiment is created here)."""
    mlflow.set_tracking_uri(tracking_uri(config, out_dir))
    name = config["mlflow"]["experiment"]
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is None:
        artifacts = (Path(out_dir).resolve() / "mlartifacts").as_uri()
        experiment_id = mlflow.create_experiment(name, artifact_location=artifacts)
    else:
        experiment_id = experiment.experiment_id
    return mlflow.start_run(experiment_id=experiment_id, run_name=run_name)
