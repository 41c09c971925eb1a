"""The nightly pipeline: the one place that wires the stages together.

Each stage is a plain function from named inputs to named outputs (``load_tables``,
``training_examples``, ``train_metamodel``, ``score_users``, ``publish_parquet``,
``ranking_metrics``); this module only decides which stage reads what, times them and
records the run in MLflow.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field

import mlflow
import pandas as pd
from pyspark.sql import SparkSession
from pyspark.sql import functions as F

from .. import recommenders as recs
from ..conf import flatten
from ..features.history import Catalog, ScoringContext, purchases_on
from ..features.themes import Themes, fit_themes, theme_table
from ..image_labelling.stage import PER_KEYS, sale_embeddings, tag_images
from ..recommenders.visual import similar_open_sales
from ..features.loading import check_fresh, load_tables
from ..metamodel.evaluation import ranking_metrics
from ..metamodel.ranking import METAMODEL, RANKING_SCHEMA, fallback_lists, rank_users
from ..metamodel.signals import signals_from_config
from ..metamodel.training import TrainingDataError, cached_day, feature_names, fit_metamodel
from ..recommenders.scoring import released
from ..storage import FileSystem, join
from .experiments import export_lines, fallback_lines, model_version_column, parse_experiments
from .image_artefacts import ImageArtefacts, pinned_artefacts
from .lease import hold
from .night_report import night_report
from .publish import Night, PublishError, publish_parquet
from .registry import Promotion, PromotionError, judge_promotion, load_metamodel, register_metamodel
from .spark import executor_salerank
from .tracking import start_run, tracking_uri

log = logging.getLogger("salerank")

RECOMMENDATIONS_SCHEMA = "user_id string, rank int, sale_id string, score double, model_version string"


@dataclass
class NightlyResult:
    run_date: dt.date
    output: str
    rows: int
    active_users: int
    open_sales: int
    model_version: str | None  # NAME/VERSION in the model registry
    metrics: pd.DataFrame | None  # per strategy, against purchases on the run date
    timings: dict[str, float] = field(default_factory=dict)
    mlflow_run_id: str = ""
    rankings: pd.DataFrame | None = None  # every strategy's top-k, when asked for
    manifest: str = ""


@dataclass
class TrainingResult:
    as_of: dt.date
    model_version: str  # NAME/VERSION in the model registry
    metrics: dict
    mlflow_run_id: str
    promotion: Promotion | None = None  # what became of the alias, when one was asked for


class Stages:
    """Times each stage, logs it to the console and keeps the figures for MLflow."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        log.info("stage %s ...", name)
        start = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - start, 3)
        log.info("stage %s done in %.1f s", name, self.seconds[name])
        mlflow.log_metric(f"seconds_{name}", self.seconds[name])


def recommendations_path(out_dir: str, run_date: dt.date) -> str:
    return join(out_dir, "recommendations", f"run_date={run_date.isoformat()}")


def _load(spark, data_dir, config, stages):
    """The input tables, the catalogue, and whether the photos' themes are used."""
    with stages("load"):
        # first, so that a cluster without salerank on its executors fails in seconds, saying so
        location = executor_salerank(spark)
        log.info("executors import salerank from %s", location)
        mlflow.set_tag("executor_salerank", location)
        tables = load_tables(spark, data_dir)
        for warning in tables.warnings:
            log.warning("data warning: %s", warning)
        catalog = Catalog.from_tables(spark, tables)
    mlflow.set_tag("data_fingerprint", tables.fingerprint)
    mlflow.log_metrics({f"rows_{name}": float(n) for name, n in tables.row_counts.items()})
    with_images = bool(config["image_labelling"]["enabled"] and tables.row_counts.get("sale_images"))
    return tables, catalog, with_images


def run_training(spark: SparkSession, data_dir: str, as_of: dt.date, out_dir: str, config: dict,
                 alias: str | None = None, wait: bool = False, force: bool = False) -> TrainingResult:
    """Train the meta-model on the days before ``as_of`` and register it as a new version of
    ``registry.model_name``. With ``alias``, move it to the new version if that is not worse
    than the version holding it (``registry.judge_promotion``; ``force``: whatever the scores):
    the result's ``promotion`` says which. Holds the lease ``image_cache`` (training writes the
    image cache): ``wait`` waits for its holder instead of raising ``LeaseHeldError``.

    Raises PromotionError, once the version is registered and the run finished, when the
    version holding ``alias`` cannot be compared with the new one (and not ``force``)."""
    tracking_uri(config, out_dir)  # a remote OUT without a tracking store stops before any work
    stages = Stages()
    with (hold(spark, out_dir, "image_cache", config, wait=wait),
          start_run(config, out_dir, run_name=f"train {as_of}") as run):
        mlflow.log_params({**flatten(config), "data_dir": str(data_dir), "as_of": str(as_of)})
        tables, catalog, with_images = _load(spark, data_dir, config, stages)
        artefacts = None  # the tagger and themes, registered with the version (image_artefacts.py)
        if with_images:
            with stages("images"):
                themes, artefacts, embeddings = run_image_stage(tables, data_dir, out_dir, config)
                catalog = catalog.with_themes(themes.sale_themes, themes.sale_attributes, embeddings)
        with stages("train"):
            model, metrics, examples = _train(tables, catalog, recs.from_config(config, with_images), as_of, config)
        promotion = None
        if alias:
            with stages("promotion"):
                promotion = judge_promotion(model, examples, metrics, config, alias, force)
        with stages("register"):
            registered = register_metamodel(model, config, alias if promotion and promotion.moves_alias else None,
                                            images=artefacts.metadata() if artefacts else None)
        mlflow.set_tag("registered_model_version", registered.label)
    if promotion and promotion.decision == "incomparable":
        raise PromotionError(f"registered {registered.label} without moving the alias: "
                             f"{promotion.summary(registered.label)}. Compare them otherwise (salerank "
                             f"backtest), then move it with --force or by hand")
    return TrainingResult(as_of, registered.label, metrics, run.info.run_id, promotion)


def run_nightly(spark: SparkSession, data_dir: str, run_date: dt.date, out_dir: str,
                config: dict, keep_rankings: bool = False, wait: bool = False) -> NightlyResult:
    """Recommend, for every user active before ``run_date``, the top sales open on it, with
    the registered meta-model that carries ``registry.alias``; export the A/B experiments
    running that night. Every output of the night is published together (see ``Night``).

    ``keep_rankings`` also returns every strategy's top-k (the meta-model and each
    recommender alone) as pandas: for small worlds, tests and the demo.

    The run holds the lease ``nightly-run_date=D`` throughout (``jobs/lease.py``): another
    live run of the date raises ``LeaseHeldError``, or with ``wait`` is waited for.
    """
    tracking_uri(config, out_dir)  # a remote OUT without a tracking store stops before any work
    # taken before Night: its crash recovery must only ever see the staging of dead runs
    with hold(spark, out_dir, f"nightly-run_date={run_date.isoformat()}", config, wait=wait) as lease:
        night = Night(spark, out_dir, run_date, guard=lease.check)
        try:
            return _nightly(spark, data_dir, run_date, out_dir, config, keep_rankings, night)
        except BaseException:
            night.abandon()  # nothing of this run was published
            raise


def _nightly(spark, data_dir, run_date, out_dir, config, keep_rankings, night) -> NightlyResult:
    stages = Stages()
    # cached frames and scoring broadcasts are released on failure as on success (last in, first out)
    with start_run(config, out_dir, run_name=f"nightly {run_date}") as run, ExitStack() as release:
        release.enter_context(released())
        mlflow.log_params({**flatten(config), "data_dir": str(data_dir), "run_date": str(run_date)})
        mlflow.set_tag("run_date", str(run_date))
        tables, catalog, with_images = _load(spark, data_dir, config, stages)
        check_fresh(tables, str(data_dir), run_date, config["max_data_lag_days"])
        prototypes = recs.from_config(config, with_images=with_images)
        strategies = [METAMODEL, *[r.name for r in prototypes]]
        experiments = [e for e in parse_experiments(config, strategies) if e.running_on(run_date)]
        scorers = prototypes + signals_from_config(config)
        ranked_names = tuple(r.name for r in prototypes) if config["metamodel"]["ranks"] else ()
        registered = load_metamodel(config, feature_names(scorers, ranked_names))
        mlflow.set_tags({"model_version": registered.label, "model_run_id": registered.run_id})
        themes = None
        if with_images:  # exactly the champion's tagger and themes (exit 2 without them)
            pinned = pinned_artefacts(registered, config["image_labelling"]["backbone"])
            # the image cache is shared with training and other dates: wait for it
            with stages("images"), hold(spark, out_dir, "image_cache", config, wait=True):
                themes, _, embeddings = run_image_stage(tables, data_dir, out_dir, config, night, pinned)
                catalog = catalog.with_themes(themes.sale_themes, themes.sale_attributes, embeddings)
        context = ScoringContext.build(tables, catalog, run_date)
        active = context.active_users(config["active_lookback_days"]).cache()
        release.callback(active.unpersist)
        n_active, n_open = active.count(), len(context.open_idx)
        mlflow.log_metrics({"active_users": float(n_active), "open_sales": float(n_open)})
        log.info("%d active users, %d sales open on %s", n_active, n_open, run_date)
        # each single recommender's own top-k is only worth its cost (a top-k per strategy
        # per user) when there is something to compare it with: the run date's purchases
        evaluating = bool(n_active and n_open) and (
            keep_rankings or purchases_on(tables, catalog, run_date).limit(1).count() > 0)
        strategies = None if evaluating else (
            METAMODEL, *sorted({v.strategy for e in experiments for v in e.variants} - {METAMODEL}))
        fitted = []
        if n_active and n_open:
            timers, fits = {}, {}
            with stages("fit"):  # on the driver: the sale-side state that scoring broadcasts
                fitted = recs.fit_all(prototypes + signals_from_config(config), context, fits)
            log.info("fit, seconds: %s", ", ".join(f"{k} {v:.1f}" for k, v in fits.items()))
            mlflow.log_metrics({f"seconds_fit.{name}": v for name, v in fits.items()})
            with stages("score"):
                ranked = rank_users(context, prototypes, registered.model, active, config, timers,
                                    strategies, fitted).cache()
                release.callback(ranked.unpersist)
                ranked.count()  # scored here, not by the first write
                # for the users with no list tonight: the meta-model's, and each exported strategy's
                fallback = fallback_lists(context, prototypes, registered.model, config, (METAMODEL, *sorted(
                    {v.strategy for e in experiments for v in e.variants} - {METAMODEL})), fitted).cache()
                release.callback(fallback.unpersist)
            _log_score_steps(timers)
        else:
            log.warning("nothing to rank on %s (%d active users, %d open sales): publishing an "
                        "empty output", run_date, n_active, n_open)
            ranked = spark.createDataFrame([], RANKING_SCHEMA)
            fallback = ranked.drop("user_id")
        with stages("export"):
            recommendations = (ranked.filter(F.col("strategy") == METAMODEL)
                               .select("user_id", "rank", "sale_id", "score",
                                       F.lit(registered.label).alias("model_version")))
            rows = night.write_parquet(recommendations, "recommendations")["rows"]
            if catalog.embeddings is not None and n_open:  # "you may also like", by the photos
                similar = similar_open_sales(catalog, context.open_idx, exact_max=config["image_labelling"][
                    "similar_sales_exact_max"], seed=config["seed"])
                night.write_parquet(spark.createDataFrame(similar, SIMILAR_SCHEMA), "similar_sales")
            fallback_rows = night.write_parquet(fallback.select(
                "strategy", "rank", "sale_id", "score", model_version_column(METAMODEL, registered.label)),
                "fallback")["rows"]
            exported = {e.name: _export(night, ranked, fallback, active, e, run_date, registered.label)
                        for e in experiments}
        with stages("report"):
            _report(night, context, tables, ranked, themes, fitted, data_dir, config, {
                "model": registered.label, "active users": n_active, "open sales": n_open,
                **{f"experiment {name}": ", ".join(f"{v}: {n} users" for v, n in users.items())
                   for name, users in exported.items()}})
        with stages("publish"):
            _check_night(night, rows, n_active, n_open, config["top_k"], exported, fallback_rows,
                         fallback.select("strategy").distinct().count())
            manifest = night.commit(_manifest(config, tables, registered, run_date, n_active, n_open,
                                              experiments, exported))
        output = recommendations_path(out_dir, run_date)
        log.info("published %d recommendations to %s (manifest %s)", rows, output, manifest)
        metrics, rankings = None, None
        if evaluating:
            with stages("evaluate"):
                metrics = _evaluate(tables, catalog, context, ranked, config["top_k"])
            if keep_rankings:
                rankings = ranked.toPandas()
        return NightlyResult(run_date, output, rows, n_active, n_open, registered.label, metrics,
                             stages.seconds, run.info.run_id, rankings, manifest)


SIMILAR_SCHEMA = "sale_id string, rank int, similar_sale_id string, similarity double"


def _log_score_steps(timers: dict) -> None:
    """Where the score stage's executor time went (summed over tasks)."""
    seconds = {step: round(clock.value, 3) for step, clock in timers.items()}
    log.info("score stage, executor seconds: %s", ", ".join(f"{k} {v:.1f}" for k, v in seconds.items()))
    mlflow.log_metrics({f"seconds_score.{step}": v for step, v in seconds.items()})


def _export(night, ranked, fallback, active, experiment, run_date, model_label) -> dict:
    """Stage one JSON Lines file per variant under ``exports/EXPERIMENT/``, and ``fallback.jsonl``
    (each variant's list for a user not in its file); return the users per variant."""
    lines = export_lines(ranked, active, experiment, run_date, model_label, METAMODEL).cache()
    users, files = {}, {}
    try:
        for variant in experiment.variants:
            one = lines.filter(F.col("variant") == variant.name).orderBy("user_id")  # written in parallel
            files[variant.name] = night.write_jsonl(one.select("value"), "exports", experiment.name,
                                                    f"{variant.name}.jsonl")
            users[variant.name] = files[variant.name]["rows"]
    finally:
        lines.unpersist()
    fallback_file = night.write_jsonl(fallback_lines(fallback, experiment, run_date, model_label, METAMODEL),
                                      "exports", experiment.name, "fallback.jsonl")
    # the experiment's own manifest, beside its files, for the website team (docs/exports.md)
    manifest = {"experiment": experiment.name, "run_date": run_date.isoformat(), "salt": experiment.salt,
                "model_version": model_label,
                "complete_when_exists": f"manifests/run_date={run_date.isoformat()}/_SUCCESS",
                "variants": {v.name: {"file": f"{v.name}.jsonl", "strategy": v.strategy, "weight": v.weight,
                                      "users": files[v.name]["rows"], "checksum": files[v.name]["checksum"]}
                             for v in experiment.variants},
                "fallback": {"file": "fallback.jsonl", "lines": fallback_file["rows"],
                             "checksum": fallback_file["checksum"]}}
    night.write_bytes(json.dumps(manifest, indent=2, sort_keys=True).encode(), "exports", experiment.name,
                      "manifest.json")
    log.info("experiment %s: %s", experiment.name, ", ".join(f"{v} {n} users" for v, n in users.items()))
    mlflow.log_metrics({f"export.{experiment.name}.{v}": float(n) for v, n in users.items()})
    return users


def _report(night, context, tables, ranked, themes, fitted, data_dir, config, summary) -> None:
    """Stage the night's HTML report (see ``night_report``) and log it to MLflow."""
    # the night's fitted recommender (none when nobody was ranked: then no user is shown)
    image_themes = next((r for r in fitted if r.name == "image_themes"), None)
    page = night_report(context, tables, ranked, themes, image_themes, str(data_dir), summary,
                        config["report"]["sample_users"], config["seed"])
    night.write_bytes(page.encode(), "reports", "index.html")
    mlflow.log_text(page, "night_report.html")


def _check_night(night, rows, n_active, n_open, k, exported, fallback_rows, fallback_lists) -> None:
    """What must hold before anything is published."""
    expected = n_active * min(k, n_open)
    # a user who already bought most open sales may get fewer than k
    if rows > expected or (n_active and n_open and rows == 0):
        raise PublishError(f"recommendations: {rows} rows for {n_active} users and {n_open} open "
                           f"sales (at most {expected} expected)")
    # business rules (caps, exclusions) may shorten a list, never lengthen it
    if fallback_rows > fallback_lists * min(k, n_open) or (n_active and n_open and not fallback_rows):
        raise PublishError(f"fallback: {fallback_rows} rows in {fallback_lists} lists for {n_open} open "
                           f"sales (at most {min(k, n_open)} per list expected)")
    for name, users in exported.items():
        if sum(users.values()) > n_active:
            raise PublishError(f"exports/{name}: {sum(users.values())} users exported, only "
                               f"{n_active} active")


def _manifest(config, tables, registered, run_date, n_active, n_open, experiments, exported) -> dict:
    """What the night published and from what: enough to tell two nights apart or equal."""
    config_hash = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return {
        "run_date": run_date.isoformat(),
        "active_users": n_active,
        "open_sales": n_open,
        "model": {"name": registered.name, "version": registered.version,
                  "alias": config["registry"]["alias"], "run_id": registered.run_id,
                  "content_version": registered.model.version_},
        "config_sha256": config_hash,
        "data_fingerprint": tables.fingerprint,
        # "order": the declared order of the variants (the control first); the keys are sorted
        "experiments": {e.name: {"salt": e.salt, "order": [v.name for v in e.variants], "variants": {
            v.name: {"strategy": v.strategy, "weight": v.weight, "users": exported[e.name][v.name]}
            for v in e.variants}} for e in experiments},
    }


def run_image_stage(tables, data_dir, out_dir, config, night=None,
                    pinned: ImageArtefacts | None = None) -> tuple[Themes, ImageArtefacts, pd.DataFrame | None]:
    """Tag the photos (cached by content and tagger version), stage the tags and the themes
    in ``night`` when given, and return the themes (``sale_themes``: each sale's weights) with
    what computed them, and with ``image_labelling.visual_similarity`` each sale's embedding
    (``stage.sale_embeddings``; else None). With ``pinned`` (a registered version's tagger and
    themes), exactly those, the hand labels unread; without, a tagger trained on the hand labels
    and themes fitted on its tags, both logged to the active run (training registers them)."""
    spark = tables.sales.sparkSession
    cache_path = join(out_dir, "image_cache")
    cache = spark.read.parquet(cache_path) if FileSystem(spark, out_dir).exists(cache_path) else None
    result = tag_images(tables.sale_images, None if pinned else tables.image_labels, str(data_dir), cache,
                        config, config["seed"], pinned.tagger if pinned else None)
    for path, reason in result.failures[:20]:
        log.warning("image skipped: %s: %s", path, reason)
    if len(result.failures) > 20:
        log.warning("... and %d more images skipped", len(result.failures) - 20)
    try:
        if night is not None:
            night.write_parquet(result.tags, "image_tags")
        tags = result.tags.toPandas()
        embeddings = (sale_embeddings(result.embeddings.toPandas())
                      if config["image_labelling"]["visual_similarity"] else None)
        publish_parquet(result.cache, cache_path)  # after the last read of the old cache
    finally:
        result.release()  # on failure as on success
    mlflow.set_tag("tagger_version", result.tagger_version)
    mlflow.log_metric("images_skipped", float(len(result.failures)))
    if result.metrics:
        mlflow.log_metrics({f"tagger_{k}": v for k, v in result.metrics.items() if k not in PER_KEYS})
        for key in PER_KEYS:
            mlflow.log_dict(result.metrics[key], f"tagger/{key}_metrics.json")
    if tags.empty:
        raise TrainingDataError("no sale photo could be tagged: see the skipped images above")
    themes = pinned.themes.transform(tags) if pinned else fit_themes(tags, config["image_labelling"]["themes"],
                                                                     config["seed"])
    long = themes.sale_themes.reset_index().melt(id_vars="sale_id", var_name="theme", value_name="weight")
    if night is not None:
        night.write_parquet(spark.createDataFrame(long[long["weight"] > 0]), "themes", "sale_themes")
        night.write_parquet(spark.createDataFrame(themes.theme_tags), "themes", "theme_tags")
    table = theme_table(themes, tags.drop_duplicates("sale_id").set_index("sale_id")["image_path"])
    mlflow.log_text(table.map(" ".join).to_csv(), "themes.csv")
    artefacts = pinned or ImageArtefacts(result.tagger, themes.model)
    if pinned is None:
        artefacts.log()
    mlflow.set_tag("themes_version", themes.model.version)
    log.info("%d themes (%s): %s", len(themes.names), themes.model.version, ", ".join(themes.names))
    return themes, artefacts, embeddings


def _train(tables, catalog, prototypes, as_of, config):
    """Fit the meta-model for ``as_of`` and log its metrics, tuning grid, calibration and
    coefficients to the active run. Returns the model, its metrics and its examples."""
    days: dict = {}  # each training day's examples, as fit_metamodel computed them
    model, metrics, report = fit_metamodel(tables, catalog, prototypes, as_of, config, days)
    mlflow.log_metrics(metrics)
    if report["grid"]:
        mlflow.log_text(pd.DataFrame(report["grid"]).to_csv(index=False), "metamodel_validation_grid.csv")
    if "reliability" in report:
        mlflow.log_text(report["reliability"].to_csv(), "metamodel_reliability.csv")
        mlflow.log_figure(reliability_figure(report["reliability"]), "metamodel_reliability.png")
    # the published probability on the unsampled pairs it was calibrated on (the backtest
    # measures it on later days)
    mlflow.log_text(report["calibration"].to_csv(), "metamodel_calibration.csv")
    mlflow.set_tag("model_content_version", model.version_)
    if model.kind == "logistic":  # trees have no weights to show
        mlflow.log_dict(model.coefficients_, "metamodel_coefficients.json")
        if model.fallback_ is not None:  # the weights of the list for users with no history
            mlflow.log_dict(model.fallback_.coefficients_, "fallback_coefficients.json")
    training_days = sorted(key for key in days if key == cached_day(key))  # not (PAIRS, day)
    examples = pd.concat([days[day] for day in training_days if len(days[day])], ignore_index=True)
    return model, metrics, examples


def reliability_figure(table: pd.DataFrame):
    """The reliability curve: observed purchase rate against mean predicted probability."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 5))
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfectly calibrated")
    axis.plot(table["predicted"], table["observed"], marker="o", label="meta-model")
    for x, y, n in zip(table["predicted"], table["observed"], table["examples"]):
        axis.annotate(str(n), (x, y), textcoords="offset points", xytext=(4, -10), fontsize=7)
    axis.set_xlabel("predicted purchase probability (sampled negatives)")
    axis.set_ylabel("observed purchase rate")
    axis.set_title("Meta-model calibration on the validation days")
    axis.legend(fontsize=8)
    plt.close(figure)
    return figure


def _evaluate(tables, catalog, context, ranked, k) -> pd.DataFrame | None:
    """Score the night's rankings against the purchases made on the run date, if any."""
    bought = (purchases_on(tables, catalog, context.as_of).select("user_id", "sale_id").distinct()
              .join(ranked.select("user_id").distinct(), "user_id"))
    truth = bought.toPandas()
    if truth.empty:
        log.info("no purchases of open sales by active users on %s: no evaluation", context.as_of)
        return None
    recommended = ranked.join(bought.select("user_id").distinct(), "user_id").toPandas()
    # no revenue here: the quick evaluation's truth carries no amounts (the backtest's does)
    metrics = ranking_metrics(recommended, truth, k).drop(columns=f"revenue@{k}")
    log.info("evaluation against purchases on %s (%d users):\n%s", context.as_of,
             int(metrics["users"].iloc[0]), metrics.drop(columns="users").round(4).to_string())
    for strategy, row in metrics.iterrows():
        mlflow.log_metrics({f"{strategy}.{name.replace('@', '_at_')}": float(value)
                            for name, value in row.items() if name != "users"})
    mlflow.log_text(json.dumps(metrics.to_dict(orient="index"), indent=2), "evaluation.json")
    return metrics
