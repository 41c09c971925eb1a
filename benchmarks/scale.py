"""The nightly run at scale, against the hardware floor and against peers, on the same data.

    python benchmarks/scale.py --users 100000 [--open-sales 1000] [--out /tmp/salerank-scale]
        [--peers floor,path,implicit,spark_als[,spark_als_subset]] [--rank-depth N] [--conf FILE]

1. ``synthetic.py`` writes USERS users, ~OPEN_SALES sales open on the run date, four weeks of
   visits and purchases (Parquet, in the data contract; photos off).
2. ``salerank train`` (3 training days) registers the meta-model; then ``salerank nightly``
   runs the whole night (load, fit, score, export, report, publish, evaluate), with every
   stage timed. The score stage is broken down by executor time per step (histories, each
   recommender, meta-model, top-k). The peak memory of the process tree, and of each process
   in it on its own (the driver's Python, the JVM, the largest Python worker), is sampled
   during the training and during the night.
3. Floors and peers, on the same users and open sales:
   - ``floor``: a dense GEMM of user factors x open-sale factors (32 dimensions, float32, all
     cores) and a top 10 per user by ``argpartition``, in blocks of 10,000 users. No real
     scorer can beat it.
   - ``implicit``: ALS (32 factors) fitted on the visits, then the batch
     ``recommend(users, user_items, N=10, items=<open sales>, filter_already_liked_items=True)``.
   - ``spark_als``: the whole job a team would otherwise run: visits read and indexed, Spark
     MLlib ALS (rank 32, implicit preferences) fitted, ``recommendForAllUsers(10)`` written as
     Parquet (``spark_als_subset`` also times ``recommendForUserSubset``). MLlib ranks every
     sale it knows, not only the open ones, and cannot be restricted to them.
   - ``path``: the score stage's own Spark work with almost nothing scored: the same
     ``score_users`` path (events shuffled into histories, Arrow batches to the Python
     workers, 20 ranked rows per user back, cached and counted, as the night does), ranking
     two scores that are the same for every user (popularity, days open), so each block
     ranks one row and no (user, sale) pair is computed. What the night spends above it is
     the scoring itself.
   Fitting times are printed but kept out of the ratios: the nightly score stage is compared
   with the peers' scoring calls.
"""
from __future__ import annotations

import argparse
import copy
import datetime as dt
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from synthetic import generate

PAGE = os.sysconf("SC_PAGE_SIZE")


class PeakMemory(threading.Thread):
    """Samples the resident memory of this process and all its descendants, every ``every``
    seconds: the peak of their sum, and the peak of each kind of process on its own, the
    driver's Python (this process), the JVM (driver and, in local mode, executors), the
    largest Python worker (a scoring task's memory, which should not grow with the users),
    the largest backbone child of a worker, and the largest other descendant."""

    KINDS = ("tree", "driver_python", "jvm", "python_worker", "backbone", "other")

    def __init__(self, every: float = 0.5):
        super().__init__(daemon=True)
        self.every, self.running = every, True
        self.peaks = dict.fromkeys(self.KINDS, 0)

    @staticmethod
    def tree_rss(root: int) -> dict[str, int]:
        """RSS of ``root`` and its descendants: their sum, and the largest of each kind."""
        parents, rss, names = {}, {}, {}
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as f:
                    stat = f.read()
                fields = stat.rsplit(")", 1)[1].split()
                parents[int(entry)] = int(fields[1])
                rss[int(entry)] = int(fields[21]) * PAGE
                names[int(entry)] = stat[stat.index("(") + 1:stat.rindex(")")]
            except (OSError, IndexError, ValueError):
                continue
        sizes, stack = dict.fromkeys(PeakMemory.KINDS, 0), [root]
        while stack:
            pid = stack.pop()
            size, name = rss.get(pid, 0), names.get(pid, "")
            kind = ("driver_python" if pid == root else "jvm" if name == "java"
                    else PeakMemory.python_kind(pid) if name.startswith("python") else "other")
            sizes["tree"] += size
            sizes[kind] = max(sizes[kind], size)
            stack += [child for child, parent in parents.items() if parent == pid]
        return sizes

    @staticmethod
    def python_kind(pid: int) -> str:
        """A worker's backbone child (``image_labelling/backbone_process.py``) or a worker."""
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                return "backbone" if b"backbone_process" in f.read() else "python_worker"
        except OSError:
            return "python_worker"

    def run(self):
        while self.running:
            for kind, size in self.tree_rss(os.getpid()).items():
                self.peaks[kind] = max(self.peaks[kind], size)
            time.sleep(self.every)

    @staticmethod
    def describe(peaks: dict[str, int]) -> str:
        return ", ".join(f"{kind} {size / 2**30:.2f}" for kind, size in peaks.items())

    def stop(self) -> dict[str, int]:
        self.running = False
        self.join()
        return dict(self.peaks)


def timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def gemm_top10(n_users: int, n_open: int, factors: int = 32, block: int = 10_000, seed: int = 0) -> float:
    """Seconds for users x open-sale scores and a sorted top 10 per user, blockwise."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(seed)
    items = rng.standard_normal((n_open, factors), dtype=np.float32)
    users = rng.standard_normal((n_users, factors), dtype=np.float32)
    start = time.perf_counter()
    with threadpool_limits(os.cpu_count()):
        for lo in range(0, n_users, block):
            scores = users[lo:lo + block] @ items.T
            top = np.argpartition(-scores, 10, axis=1)[:, :10]
            order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
            np.take_along_axis(top, order, axis=1)
    return time.perf_counter() - start


def interactions(data: Path):
    visits = pd.read_parquet(data / "visits.parquet", columns=["user_id", "sale_id"])
    users = pd.Index(sorted(visits.user_id.unique()))
    sales = pd.read_parquet(data / "sales.parquet")
    items = pd.Index(sales.sale_id)
    rows, cols = users.get_indexer(visits.user_id), items.get_indexer(visits.sale_id)
    matrix = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(len(users), len(items)))
    matrix.sum_duplicates()
    return matrix, users, items, sales


def implicit_peer(data: Path, run_date: dt.date) -> dict:
    from implicit.cpu.als import AlternatingLeastSquares

    matrix, users, items, sales = interactions(data)
    open_ids = np.flatnonzero(((sales.open_date <= run_date) & (sales.close_date >= run_date)).to_numpy())
    model = AlternatingLeastSquares(factors=32, iterations=15, random_state=0)
    _, fit = timed(model.fit, matrix, show_progress=False)
    userids = np.arange(len(users))
    _, score = timed(model.recommend, userids, matrix, N=10, items=open_ids, filter_already_liked_items=True)
    return {"fit": fit, "recommend": score, "users": len(users), "items": len(open_ids)}


def spark_als_peer(spark, data: Path, out: Path, subset: bool = False) -> dict:
    """The whole job a team would otherwise run: visits read and indexed, MLlib ALS fitted,
    ``recommendForAllUsers(10)`` written as Parquet; each part timed, and the job."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    start = time.perf_counter()
    visits = spark.read.parquet(str(data / "visits.parquet"))
    users = visits.select("user_id").distinct().withColumn(
        "user", F.row_number().over(Window.orderBy("user_id")) - 1)
    sales = spark.read.parquet(str(data / "sales.parquet")).select("sale_id").withColumn(
        "item", F.monotonically_increasing_id().cast("int"))
    ratings = (visits.join(users, "user_id").join(sales, "sale_id")
               .groupBy("user", "item").agg(F.count(F.lit(1)).cast("float").alias("rating"))).cache()
    ratings.count()
    prepare = time.perf_counter() - start
    als = ALS(rank=32, maxIter=5, implicitPrefs=True, userCol="user", itemCol="item", ratingCol="rating",
              seed=0, coldStartStrategy="drop")
    model, fit = timed(als.fit, ratings)
    _, every = timed(lambda: model.recommendForAllUsers(10).write.mode("overwrite").parquet(
        str(out / "spark-als-recommendations")))
    job = time.perf_counter() - start
    result = {"prepare": prepare, "fit": fit, "recommendForAllUsers": every, "job": job,
              "items": model.itemFactors.count()}
    if subset:
        _, result["recommendForUserSubset"] = timed(
            lambda: model.recommendForUserSubset(users.select("user"), 10).count())
    ratings.unpersist()
    return result


def spark_path_peer(spark, data: Path, run_date: dt.date, config: dict) -> tuple[float, float]:
    """Seconds for the score stage's Spark work alone (see ``path`` above): a first run, as
    cold as the night's score stage, and a second."""
    from salerank.features.history import Catalog, ScoringContext
    from salerank.features.loading import load_tables
    from salerank.metamodel.signals import DaysOpen
    from salerank.metamodel.ranking import RANKING_SCHEMA, RankTopK
    from salerank.recommenders import Popularity, fit_all
    from salerank.recommenders.scoring import score_users

    tables = load_tables(spark, str(data))
    context = ScoringContext.build(tables, Catalog.from_tables(spark, tables), run_date)
    active = context.active_users(config["active_lookback_days"]).cache()
    active.count()
    fitted = fit_all([Popularity(**config["recommenders"]["popularity"]), DaysOpen()], context)
    emit = RankTopK(None, config["top_k"], ("popularity", "days_open"))

    def stage():
        ranked = score_users(context, fitted, active, emit, RANKING_SCHEMA,
                             config["spark"]["scoring_partitions"]).cache()
        ranked.count()
        ranked.unpersist()

    seconds = [timed(stage)[1] for _ in range(2)]  # the first also compiles the plan, as the night's does
    active.unpersist()
    return seconds[0], seconds[1]


def peers_alone(spark, data: Path, out: Path, wanted: list[str], run_date: dt.date) -> None:
    """``--peers-only``: the peers that need nothing of the night, timed and saved as they end."""
    peers = {}
    if "implicit" in wanted:
        peers["implicit"] = implicit_peer(data, run_date)
    if "spark_als" in wanted:
        memory = PeakMemory()
        memory.start()
        peers["spark_als"] = spark_als_peer(spark, data, out, subset="spark_als_subset" in wanted)
        peers["spark_als"]["peak_bytes"] = memory.stop()
    (out / "peers.json").write_text(json.dumps(peers, indent=2))
    print(json.dumps(peers, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--open-sales", type=int, default=1000)
    parser.add_argument("--out", default="/tmp/salerank-scale")
    parser.add_argument("--peers", default="floor,path,implicit,spark_als")
    parser.add_argument("--partitions", type=int, default=8, help="spark.scoring_partitions")
    parser.add_argument("--rank-depth", type=int, default=None,
                        help="metamodel.rank_depth (default: the configuration's; 0: exact ranks)")
    parser.add_argument("--world", default="skewed", choices=("skewed", "zipf"),
                        help="benchmarks/synthetic.py's world (zipf: no taste, Zipf-distributed sale popularity)")
    parser.add_argument("--train-users", type=int, default=None,
                        help="train the night's model on this many users' data of the same world (generated "
                             "beside it); default: the night's own users. Training is not what is measured")
    parser.add_argument("--conf", help="a configuration file merged under the benchmark's settings "
                                       "(its nights are kept apart, under nights-STEM)")
    parser.add_argument("--peers-only", action="store_true",
                        help="no training and no night: only the peers that do not need the night's counts "
                             "(implicit, spark_als), in their own Spark session, into peers.json")
    args = parser.parse_args()

    from salerank.conf import load_config
    from salerank.jobs.pipeline import run_nightly, run_training
    from salerank.jobs.spark import get_spark

    import mlflow

    out = Path(args.out) / (f"{args.users}" if args.world == "skewed" else f"{args.users}-{args.world}")
    nights = out / ("nights" if args.rank_depth is None else f"nights-depth{args.rank_depth}")  # 0: exact
    if args.conf:
        nights = nights.with_name(f"{nights.name}-{Path(args.conf).stem}")
    data = out / "data"
    train_data = data if args.train_users is None else out.with_name(out.name.replace(
        str(args.users), str(args.train_users), 1)) / "data"
    for folder, users in {data: args.users, train_data: args.train_users or args.users}.items():
        if not (folder / "sizes.json").exists():
            sizes, seconds = timed(generate, users, args.open_sales, folder, world=args.world,
                                   purchase_rate=0.05 if args.world == "zipf" else 0.04)
            print(f"generated {json.dumps(sizes)} in {seconds:.0f} s")
    sizes = json.loads((data / "sizes.json").read_text())
    run_date = dt.date.fromisoformat(sizes["run_date"])
    config = load_config(args.conf, overrides={
        "image_labelling": {"enabled": False}, "metamodel": {"train_days": 3, "validation_days": 1,
                      **({} if args.rank_depth is None else {"rank_depth": args.rank_depth or None})},
        "spark": {"scoring_partitions": args.partitions, "driver_memory": "8g"},
        "experiments": [{"name": "meta-vs-pop", "salt": "scale", "start": str(run_date), "end": str(run_date),
                         "variants": [{"name": "control", "strategy": "popularity", "weight": 1},
                                      {"name": "treatment", "strategy": "metamodel", "weight": 1}]}]})
    spark = get_spark(config)
    if args.peers_only:
        peers_alone(spark, data, out, args.peers.split(","), run_date)
        return
    # training only provides the registered model the night scores with; it is not what is
    # measured, so its BPR may use every core (the night's keeps the default: one thread)
    training_config = copy.deepcopy(config)
    training_config["recommenders"]["bpr"]["threads"] = os.cpu_count()
    memory = PeakMemory()
    memory.start()
    _, train_seconds = timed(run_training, spark, str(train_data), run_date, str(nights), training_config,
                             alias="champion")
    train_peaks = memory.stop()
    memory = PeakMemory()
    memory.start()
    result, night_seconds = timed(run_nightly, spark, str(data), run_date, str(nights), config)
    peaks = memory.stop()
    metrics = mlflow.get_run(result.mlflow_run_id).data.metrics
    steps = {k[len("seconds_score."):]: v for k, v in metrics.items() if k.startswith("seconds_score.")}
    fits = {k[len("seconds_fit."):]: v for k, v in metrics.items() if k.startswith("seconds_fit.")}

    def save(peers: dict) -> None:
        """``results.json``: written once the night is done (the peers can take longer than
        it), and again with the peers."""
        (out / "results.json").write_text(json.dumps({
            "sizes": sizes, "active_users": result.active_users, "open_sales": result.open_sales,
            "train_seconds": train_seconds, "train_users": args.train_users or args.users,
            "night_seconds": night_seconds, "peak_bytes": peaks, "train_peak_bytes": train_peaks,
            "stages": result.timings, "fits": fits, "score_steps": steps, "peers": peers}, indent=2, default=str))

    save({})
    print(f"night done in {night_seconds:.1f} s; peak memory (GiB): {PeakMemory.describe(peaks)}", flush=True)
    peers = {}
    wanted = args.peers.split(",") if args.peers else []
    if "floor" in wanted:
        peers["floor"] = gemm_top10(result.active_users, result.open_sales)
    if "path" in wanted:
        peers["path"] = spark_path_peer(spark, data, run_date, config)
    if "implicit" in wanted:
        peers["implicit"] = implicit_peer(data, run_date)
    if "spark_als" in wanted:
        peers["spark_als"] = spark_als_peer(spark, data, out, subset="spark_als_subset" in wanted)

    score = result.timings["score"]
    print(f"\nmachine: {platform.machine()}, {os.cpu_count()} cores, {platform.processor() or ''}; "
          f"{dt.date.today()}")
    print(f"data: {json.dumps(sizes)}; active users {result.active_users}, open sales {result.open_sales}")
    print(f"training (3 days of {args.train_users or args.users} users, registered): {train_seconds:.1f} s; "
          f"peak memory (GiB): {PeakMemory.describe(train_peaks)}")
    print(f"whole night: {night_seconds:.1f} s; "
          f"peak memory during the night (GiB): {PeakMemory.describe(peaks)}")
    print("\nnight stages (wall seconds):")
    print(pd.Series(result.timings).round(1).to_string())
    print("\nfit stage (driver), seconds by recommender and signal:")
    print(pd.Series(fits).round(1).to_string())
    print("\nscore stage, executor seconds by step (summed over tasks):")
    print(pd.Series(steps).round(1).to_string())
    if "floor" in peers:
        print(f"\nfloor: GEMM + top-10 for {result.active_users} x {result.open_sales}: {peers['floor']:.2f} s; "
              f"score stage / floor = {score / peers['floor']:.1f}x")
    if "path" in peers:
        cold, warm = peers["path"]
        line = (f"Spark path alone (histories in, 20 rows per user out, nothing scored per pair): "
                f"{cold:.2f} s (again: {warm:.2f} s)")
        if "floor" in peers:
            line += (f"; path / floor = {cold / peers['floor']:.1f}x, "
                     f"(score stage - path) / floor = {(score - cold) / peers['floor']:.1f}x")
        print(line)
    if "implicit" in peers:
        p = peers["implicit"]
        print(f"implicit ALS: fit {p['fit']:.1f} s, recommend(items=open) for {p['users']} users "
              f"x {p['items']} sales: {p['recommend']:.1f} s; score stage / implicit = {score / p['recommend']:.2f}x")
    if "spark_als" in peers:
        p = peers["spark_als"]
        subset = (f", recommendForUserSubset {p['recommendForUserSubset']:.1f} s"
                  if "recommendForUserSubset" in p else "")
        print(f"Spark ALS job: {p['job']:.1f} s (read and index {p['prepare']:.1f} s, fit {p['fit']:.1f} s, "
              f"recommendForAllUsers written {p['recommendForAllUsers']:.1f} s{subset}); {p['items']} items; "
              f"score stage / recommendForAllUsers = {score / p['recommendForAllUsers']:.2f}x, "
              f"whole night / Spark ALS job = {night_seconds / p['job']:.2f}x")
    save(peers)


if __name__ == "__main__":
    main()
