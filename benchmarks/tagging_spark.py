"""The night's tagging path through Spark against the bare backbone, in images/s per core (issue 18)

    python benchmarks/tagging_spark.py [--data ../shared/data/intel-scenes] [--photos 3000]

The first PHOTOS photos of ``train/`` (sorted) tagged as a night tags them: ``tag_images``
with the ImageNet tagger, the photos read by the executors through Spark's ``binaryFile``
source, hashed, decoded and embedded by each Python worker's backbone child process, the tags
cached, in local mode on every core; timed from the call to the cached tags counted. A night
starts the children and ends them once its photos are tagged, so each run pays their start
(TensorFlow imported, the backbone built). Two runs, a third of the photos then all of them,
each as cold as a night, give the whole path's rate and, from their difference, its rate once
the children run (the start-up drops out). Against it, in this process after the Spark runs
(their children have exited): the bare backbone's forward pass on the same photos already
decoded, same batch size, on every core, warm. Prints each in images/s and per core, the
ratios (goal: at least 0.9), and the peak memory of each kind of process while Spark tags
(``scale.PeakMemory``).
"""
from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

from scale import PeakMemory


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
                                              / "intel-scenes"))
    parser.add_argument("--photos", type=int, default=3000)
    args = parser.parse_args()

    from salerank.conf import load_config
    from salerank.image_labelling.stage import tag_images
    from salerank.image_labelling.tagger import Backbone, Tagger
    from salerank.jobs.spark import get_spark

    data = Path(args.data).resolve()
    paths = sorted(str(p.relative_to(data)) for p in (data / "train").rglob("*.jpg"))[:args.photos]
    config = load_config(overrides={"spark": {"master": "local[*]", "driver_memory": "4g"}})
    spark = get_spark(config)
    name = config["image_labelling"]["backbone"]
    cores = os.cpu_count()

    def tag(photos: list[str]) -> tuple[float, dict]:
        images = spark.createDataFrame([(f"s{i:05d}", p) for i, p in enumerate(photos)],
                                       "sale_id string, image_path string")
        memory = PeakMemory()
        memory.start()
        start = time.perf_counter()
        result = tag_images(images, None, data.as_uri(), None, config, config["seed"], tagger=Tagger(name))
        tagged = result.tags.select("image_path").distinct().count()
        seconds = time.perf_counter() - start
        peaks = memory.stop()
        assert tagged == len(photos) and not result.failures, (tagged, result.failures[:3])
        result.release()
        return seconds, peaks

    third = paths[:len(paths) // 3]
    third_seconds, _ = tag(third)
    spark_seconds, peaks = tag(paths)
    spark.stop()

    backbone = Backbone(name, config["image_labelling"]["weights_cache_dir"])
    _, arrays, _ = backbone.read([str(data / p) for p in paths])
    backbone.embed_arrays(arrays[:backbone.batch_size])  # built and warm, as the workers' children are after a batch
    start = time.perf_counter()
    backbone.embed_arrays(arrays)
    bare_seconds = time.perf_counter() - start

    n = len(paths)
    print(f"machine: {platform.machine()}, {cores} cores; {n} photos of {data.name}, backbone {name}, "
          f"batch {backbone.batch_size}")
    print(f"whole tagging path through Spark: {spark_seconds:.1f} s, {n / spark_seconds:.1f} images/s, "
          f"{n / spark_seconds / cores:.1f} per core")
    print(f"bare backbone (decoded, warm):    {bare_seconds:.1f} s, {n / bare_seconds:.1f} images/s, "
          f"{n / bare_seconds / cores:.1f} per core")
    marginal = (n - len(third)) / (spark_seconds - third_seconds)
    print(f"  {len(third)} photos: {third_seconds:.1f} s; the children running (the difference): "
          f"{marginal:.1f} images/s, {marginal / cores:.1f} per core")
    print(f"ratio whole path / bare backbone: {bare_seconds / spark_seconds:.2f} with the start-up, "
          f"{marginal * bare_seconds / n:.2f} without")
    print(f"peak memory while Spark tags (GiB): {PeakMemory.describe(peaks)}")


if __name__ == "__main__":
    main()
