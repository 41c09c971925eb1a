"""The ``salerank`` command line.

Exit status: 0 on success, 2 when the input data or configuration is at fault or another
run of the date holds its lease (the reason on stderr, nothing published), 1 on any other
failure; 3 when ``train --alias`` registered a version but left the alias where it was (the new
version is worse than the one holding it).
"""
from __future__ import annotations

import argparse
import datetime as dt
import sys
from pathlib import Path

from ..conf import ConfigError, load_config
from ..features.loading import DataValidationError
from ..metamodel.training import TrainingDataError
from ..storage import FileSystem, is_local, join, local_path
from .lease import LeaseHeldError

INPUT_ERRORS = (DataValidationError, ConfigError, TrainingDataError, LeaseHeldError)


def _date(text: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a date in YYYY-MM-DD form: {text!r}") from None


def _config(args) -> dict:
    """The configuration of ``--conf``: a local file is read before Spark starts (its
    ``spark`` settings apply to a local-mode launch); a Hadoop URI through Spark."""
    if args.conf is None or is_local(args.conf):
        return load_config(args.conf and local_path(args.conf))
    from .spark import get_spark

    files = FileSystem(get_spark(load_config()), args.conf)
    return load_config(args.conf, read_text=lambda p: files.read_text(p) if files.is_file(p) else None)


def _config_and_data(args) -> dict:
    """The configuration of ``--conf``, once ``--data`` is known to be a folder (on any
    Hadoop file system)."""
    from .spark import get_spark

    from .tracking import tracking_uri  # imports MLflow: after the console has set its environment

    config = _config(args)
    if args.command in ("nightly", "train", "backtest", "ab"):
        tracking_uri(config, args.out)  # OUT's tracking store, checked before Spark starts
    if not FileSystem(get_spark(config), args.data).is_dir(args.data):
        raise ConfigError(f"--data {args.data}: no such folder")
    return config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="salerank", description=(
        "Nightly recommendations of time-limited sales, on Spark."))
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = commands.add_parser("demo", help="generate a demo world and run the nightly pipeline on it",
                               description="Write a generated world to OUT/data (its hidden truth to "
                                           "OUT/truth) and run the nightly pipeline on its last day into OUT.")
    demo.add_argument("--out", required=True, help="output folder")
    demo.add_argument("--seed", type=int, default=42, help="seed of the world and the pipeline (default 42)")
    demo.add_argument("--users", type=int, default=2000, help="number of users (default 2000)")
    demo.add_argument("--days", type=int, default=75, help="days of history (default 75)")
    demo.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")

    nightly = commands.add_parser(
        "nightly", help="recommend the sales open on a date",
        description="Rank, for every active user, the top sales open on DATE with the registered "
                    "meta-model that carries registry.alias (see `salerank train`), into "
                    "OUT/recommendations/run_date=DATE/, and export the A/B experiments running on "
                    "DATE to OUT/exports/run_date=DATE/. Everything is published at once, with "
                    "OUT/manifests/run_date=DATE/{manifest.json,_SUCCESS} last.")
    nightly.add_argument("--data", required=True, help="input folder in the data contract")
    nightly.add_argument("--date", required=True, type=_date, help="run date, YYYY-MM-DD")
    nightly.add_argument("--out", required=True, help="output folder")
    nightly.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")
    nightly.add_argument("--wait", action="store_true",
                         help="wait for another run of the same date to finish instead of exiting 2")
    nightly.add_argument("--allow-stale", action="store_true",
                         help="rank even when the newest visit or purchase is more than "
                              "max_data_lag_days before DATE (a stalled feed; exit 2 without it)")

    train = commands.add_parser(
        "train", help="train the meta-model and register it in the MLflow model registry",
        description="Train the meta-model on the days before DATE (as the nightly run of DATE would "
                    "see them) and register it as a new version of registry.model_name in the MLflow "
                    "tracking store (OUT/mlflow.db unless configured). With --alias, move that alias "
                    "(e.g. champion, which the nightly run scores with) to the new version, but only "
                    "if its NDCG@top_k on its validation days is at most registry.promotion_tolerance "
                    "below that of the version holding the alias, on the same examples (both scores "
                    "are printed and logged to MLflow). Exit status: 0 when the alias moved (or none "
                    "was asked for); 3 when the new version is worse: it is registered, the alias "
                    "stays; 2 when the alias holder cannot be compared (it needs features this "
                    "configuration does not produce): registered, the alias stays.")
    train.add_argument("--data", required=True, help="input folder in the data contract")
    train.add_argument("--date", required=True, type=_date, help="train on the days before it, YYYY-MM-DD")
    train.add_argument("--out", required=True, help="output folder (holds the default MLflow store)")
    train.add_argument("--alias", help="alias to move to the new version if it is not worse (default: none)")
    train.add_argument("--force", action="store_true",
                       help="with --alias: move it even if the new version is worse or cannot be compared")
    train.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")
    train.add_argument("--wait", action="store_true",
                       help="wait for another run holding OUT's image cache to finish instead of exiting 2")

    backtest = commands.add_parser(
        "backtest", help="replay a range of dates and measure every model",
        description="For each date D in [START, END]: train on the days before D, rank the sales "
                    "open on D with the meta-model and with each recommender alone, and compare "
                    "with what the users bought. Writes OUT/metrics.json and each day's top-k per "
                    "model under OUT/recommendations/model=NAME/run_date=D/. Every mean comes with "
                    "a 95% interval from a bootstrap over the (user, day) pairs, and the meta-model "
                    "is compared with each recommender alone by a paired bootstrap (B - A, its "
                    "interval, and 'no detectable difference' when the interval covers 0).")
    backtest.add_argument("--data", required=True, help="input folder in the data contract")
    backtest.add_argument("--start", required=True, type=_date, help="first date, YYYY-MM-DD")
    backtest.add_argument("--end", required=True, type=_date, help="last date, YYYY-MM-DD")
    backtest.add_argument("--out", required=True, help="output folder")
    backtest.add_argument("--truth-days", type=int, default=1,
                          help="purchases in [D, D+N) of the sales open on D are the truth (default 1)")
    backtest.add_argument("--users", choices=("active", "all"), default="active",
                          help="rank the nightly run's active users (default), or those and every "
                               "buyer of the truth window, with or without history (all)")
    backtest.add_argument("--new-sale-days", type=int, default=2,
                          help="a sale counts as new in its first N days, for the breakdown (default 2)")
    backtest.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")
    backtest.add_argument("--wait", action="store_true",
                          help="wait for another backtest into the same OUT to finish instead of exiting 2")
    backtest.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                          help="bootstrap resamples of the (user, day) pairs for the 95%% intervals "
                               "(default 1000; 0: none), seeded by the configuration's seed")
    backtest.add_argument("--compare", nargs=2, action="append", metavar=("A", "B"),
                          help="print B - A with its paired 95%% interval for each metric, instead of "
                               "the meta-model against each recommender (repeatable; e.g. "
                               "--compare popularity content); metrics.json holds both")

    label = commands.add_parser(
        "label-next", help="propose the next photos to hand-label (active learning)",
        description="Rank the sale photos that have no hand label by how much labelling them "
                    "should teach the tagger (its uncertainty, weighted by how typical the photo "
                    "is of the unlabelled pool) and print the best N as CSV: add their tags to "
                    "image_labels.")
    label.add_argument("--data", required=True, help="input folder in the data contract")
    label.add_argument("--n", type=int, default=50, help="photos to propose (default 50)")
    label.add_argument("--out", help="write the CSV here instead of standard output")
    label.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")

    ab = commands.add_parser("ab", help="A/B experiments: `salerank ab report`",
                             description="Measure the A/B experiments that the nightly run exports.")
    ab_commands = ab.add_subparsers(dest="ab_command", required=True, metavar="AB_COMMAND")
    report = ab_commands.add_parser(
        "report", help="conversion, revenue and uplift per variant",
        description="From the published exports of EXPERIMENT in OUT and the purchases in DATA "
                    "(and its optional exposures table: what the website showed): per variant, the "
                    "users exposed, conversion (a purchase within WINDOW days of their first exposure) "
                    "and revenue per user, the uplift over the first variant with 95%% confidence "
                    "intervals (CUPED-adjusted too), the minimal detectable effect, and a "
                    "sample-ratio-mismatch check. Only users whose whole window the data covers are "
                    "counted. Prints a table, writes OUT/ab_reports/EXPERIMENT.json and logs an MLflow "
                    "run. See docs/exports.md.")
    report.add_argument("--data", required=True, help="input folder in the data contract (for the purchases)")
    report.add_argument("--out", required=True, help="the nightly run's output folder")
    report.add_argument("--experiment", required=True, help="experiment name, as in the configuration")
    report.add_argument("--window-days", type=int, default=7,
                        help="count each user's purchases over this many days from their first exposure (default 7)")
    report.add_argument("--cuped-days", type=int, default=28,
                        help="adjust by each user's purchases over this many days before their first "
                             "exposure (CUPED; default 28, 0: off)")
    report.add_argument("--effect", type=float, default=0.05,
                        help="report the users needed to detect this relative uplift (default 0.05)")
    report.add_argument("--conf", help="YAML configuration merged over conf/default.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    from .console import console

    args = build_parser().parse_args(argv)
    out = None if args.command == "label-next" else args.out  # label-next's --out is its CSV
    with console(args.command, out):  # salerank's lines and errors; the rest to a log file
        try:
            if args.command == "demo":
                return run_demo(args)
            if args.command == "label-next":
                return run_label_next(args)
            if args.command == "backtest":
                return run_backtest_command(args)
            if args.command == "train":
                return run_train_command(args)
            if args.command == "ab":
                return run_ab_report(args)
            return run_nightly_command(args)
        except INPUT_ERRORS as err:
            print(f"salerank {args.command}: error: {err}", file=sys.stderr)
            return 2


def run_nightly_command(args) -> int:
    from ..jobs.pipeline import run_nightly
    from .spark import get_spark

    config = _config_and_data(args)
    if args.allow_stale:
        config["max_data_lag_days"] = None
    result = run_nightly(get_spark(config), args.data, args.date, args.out, config, wait=args.wait)
    print(f"{result.rows} recommendations for {result.active_users} users with {result.model_version} "
          f"in {result.output}; manifest in {result.manifest}")
    print("stages: " + ", ".join(f"{name} {seconds:.1f} s" for name, seconds in result.timings.items())
          + f"; total {sum(result.timings.values()):.1f} s")
    return 0


def run_train_command(args) -> int:
    from ..jobs.pipeline import run_training
    from .spark import get_spark

    if args.force and not args.alias:
        raise ConfigError("--force moves an alias: give --alias too")
    config = _config_and_data(args)
    result = run_training(get_spark(config), args.data, args.date, args.out, config, args.alias,
                          wait=args.wait, force=args.force)
    if result.promotion is None:
        print(f"registered {result.model_version} (no alias moved)")
        return 0
    print(f"registered {result.model_version}: {result.promotion.summary(result.model_version)}")
    return 0 if result.promotion.moves_alias else 3


def run_ab_report(args) -> int:
    import json

    import mlflow

    from ..features.loading import load_tables
    from .ab_report import ab_report, report_table
    from .spark import get_spark
    from .tracking import start_run

    config = _config_and_data(args)
    spark = get_spark(config)
    report = ab_report(spark, load_tables(spark, args.data), args.out, args.experiment, args.window_days,
                       args.cuped_days, args.effect)
    print(report_table(report))
    target = join(args.out, "ab_reports", f"{args.experiment}.json")
    FileSystem(spark, target).write_bytes(target, json.dumps(report, indent=2).encode())  # whole or not at all
    with start_run(config, args.out, run_name=f"ab report {args.experiment}"):
        mlflow.set_tags({"experiment": args.experiment, "sample_ratio_mismatch": report["sample_ratio"]["mismatch"],
                         "exposure_source": report["exposure_source"], "complete": report["coverage"]["complete"]})
        mlflow.log_metrics({"srm_p_value": report["sample_ratio"]["p_value"],
                            "users_counted": report["coverage"]["users_counted"],
                            "users_window_open": report["coverage"]["users_window_open"]})
        for variant, entry in report["variants"].items():
            mlflow.log_metrics({f"{variant}.users": entry["users"], f"{variant}.conversion": entry["conversion"],
                                f"{variant}.revenue_per_user": entry["revenue_per_user"]})
            for kind in ("uplift", "cuped_uplift"):
                for metric, uplift in entry.get(kind, {}).items():
                    if uplift["uplift"] is not None:
                        mlflow.log_metrics({f"{variant}.{metric}_{kind}{suffix}": uplift[key]
                                            for suffix, key in (("", "uplift"), ("_low", "low"), ("_high", "high"))})
        mlflow.log_dict(report, "ab_report.json")
    print(f"report in {target}")
    return 0


def run_backtest_command(args) -> int:
    from .. import recommenders
    from ..metamodel.ranking import FALLBACK
    from .replay import comparison_pairs, comparison_text, overall_text, run_backtest
    from .spark import get_spark

    config = _config_and_data(args)
    if args.end < args.start:
        raise ConfigError(f"--end {args.end} is before --start {args.start}")
    if args.truth_days < 1 or args.new_sale_days < 1:
        raise ConfigError("--truth-days and --new-sale-days must be at least 1")
    if args.bootstrap < 0:
        raise ConfigError(f"--bootstrap must be at least 0, got {args.bootstrap}")
    # a misspelt model stops before any work (image_themes is checked once the photos are known)
    comparison_pairs([*[r.name for r in recommenders.from_config(config, with_images=True)], FALLBACK],
                     args.compare or [])
    result = run_backtest(get_spark(config), args.data, args.start, args.end, args.out, config,
                          args.truth_days, args.users, args.new_sale_days, wait=args.wait,
                          replicates=args.bootstrap, compare=args.compare)
    print(overall_text(result.metrics))
    print("\n" + comparison_text(result.metrics, args.compare))
    print(f"metrics in {join(args.out, 'metrics.json')}; recommendations in {join(args.out, 'recommendations')}")
    return 0


def run_demo(args) -> int:
    from ..world import WorldConfig, generate_world, truth_metrics
    from .pipeline import run_nightly, run_training
    from .spark import get_spark

    if not is_local(args.out):
        raise ConfigError(f"--out {args.out}: the demo writes its generated world to a local folder; "
                          "give a local path (train and nightly take any Hadoop URI)")
    args.out = local_path(args.out)
    config = load_config(args.conf and local_path(args.conf), overrides={"seed": args.seed})
    world = generate_world(WorldConfig(n_users=args.users, n_days=args.days), seed=args.seed)
    data_dir = world.write(args.out)
    print(f"demo world: {len(world.users)} users, {len(world.sales)} sales, {len(world.visits)} visits, "
          f"{len(world.purchases)} purchases in {data_dir} (truth in {Path(args.out) / 'truth'})")
    if not config["experiments"]:
        config["experiments"] = [demo_experiment(world.last_date)]
    spark = get_spark(config)
    trained = run_training(spark, str(data_dir), world.last_date, args.out, config,
                           alias=config["registry"]["alias"])
    print(f"registered {trained.model_version} with alias {config['registry']['alias']!r}")
    result = run_nightly(spark, str(data_dir), world.last_date, args.out, config, keep_rankings=True)
    print(f"{result.rows} recommendations for {result.active_users} users in {result.output}; "
          f"A/B exports in {Path(args.out) / 'exports' / f'run_date={world.last_date}'}; "
          f"manifest in {result.manifest}")
    if result.metrics is not None:
        print(f"\nagainst the purchases on {world.last_date}:\n"
              f"{result.metrics.drop(columns='users').round(4).to_string()}")
    open_ids = sorted(world.sales.loc[(world.sales["open_date"] <= world.last_date.isoformat())
                                      & (world.sales["close_date"] >= world.last_date.isoformat()), "sale_id"])
    if result.rankings is not None:
        truth = truth_metrics(result.rankings, world.user_truth, world.sale_truth, open_ids, config["top_k"])
        print(f"\nagainst the world's true preferences:\n{truth.round(4).to_string()}")
    print(f"\nMLflow: mlflow ui --backend-store-uri sqlite:///{Path(args.out).resolve() / 'mlflow.db'} --workers 1")
    return 0


def demo_experiment(day: dt.date) -> dict:
    """The demo's A/B test: the meta-model against popularity, half and half."""
    return {"name": "meta-vs-popularity", "salt": "demo", "start": day.isoformat(),
            "end": (day + dt.timedelta(days=27)).isoformat(),
            "variants": [{"name": "control", "strategy": "popularity", "weight": 1},
                         {"name": "treatment", "strategy": "metamodel", "weight": 1}]}


def run_label_next(args) -> int:
    import numpy as np
    import pandas as pd

    from ..features.loading import load_tables
    from ..image_labelling.active_learning import propose
    from ..image_labelling.stage import embed_in_chunks, photo_bytes, train_tagger
    from ..image_labelling.tagger import Backbone
    from .spark import get_spark

    config = _config_and_data(args)
    spark = get_spark(config)
    tables = load_tables(spark, args.data)
    photos = sorted(tables.sale_images.select("image_path").distinct().toPandas()["image_path"])
    labels = tables.image_labels.toPandas() if tables.image_labels is not None else pd.DataFrame(
        columns=["image_path", "tag"])
    labelled = set(labels["image_path"])
    unlabelled = [p for p in photos if p not in labelled]
    if args.n < 1:
        raise ConfigError(f"label-next: --n must be at least 1, got {args.n}")
    if not unlabelled:
        raise ConfigError(f"label-next: nothing left to label: all {len(photos)} photos of sale_images "
                          "have a label in image_labels" if photos else
                          "label-next: nothing to label: sale_images lists no photo")
    settings = config["image_labelling"]
    backbone = Backbone(settings["backbone"], settings["weights_cache_dir"])
    pool = embed_in_chunks(backbone, spark, args.data, unlabelled)
    for failure in pool.failures:
        print(f"salerank label-next: skipped {failure.path}: {failure.reason}", file=sys.stderr)
    if not pool.paths:
        raise ConfigError(f"label-next: none of the {len(unlabelled)} unlabelled photos could be read "
                          "(see the skipped photos above)")
    probability = None  # no labels yet: propose the most typical photo of each region
    if len(labels):
        tagger, _ = train_tagger(backbone, labels, photo_bytes(spark, args.data, sorted(labelled)), config["seed"])
        probability = tagger.predict_proba(pool.vectors)
    best, scores = propose(probability, pool.vectors, args.n, seed=config["seed"])
    table = pd.DataFrame({"image_path": np.array(pool.paths)[best], "score": scores[best]})
    if args.out:
        FileSystem(spark, args.out).write_bytes(args.out, table.to_csv(index=False).encode())
    else:
        table.to_csv(sys.stdout, index=False)
    return 0


if __name__ == "__main__":  # python -m salerank.jobs.cli, as the end-to-end tests start it
    sys.exit(main())
