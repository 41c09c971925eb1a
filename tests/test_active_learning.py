"""Active learning: uncertain photos typical of the pool come first."""
import numpy as np
import pandas as pd
import pytest

from salerank.image_labelling.active_learning import density, propose, uncertainty


def test_uncertainty_peaks_at_one_half():
    u = uncertainty(np.array([[0.5, 0.5], [0.99, 0.01], [0.5, 0.01]]))
    assert u[0] == pytest.approx(1.0) and u[1] < 0.1 and u[1] < u[2] < u[0]


def test_outliers_are_not_proposed_over_typical_uncertain_photos():
    rng = np.random.default_rng(0)
    cluster = rng.normal(0, 0.05, (50, 8)) + np.eye(8)[0]
    outlier = np.eye(8)[[7]]
    embeddings = np.vstack([cluster, outlier])
    assert density(embeddings)[-1] < density(embeddings)[:-1].min()
    probability = np.full((51, 3), 0.9)
    probability[10] = probability[-1] = 0.5  # equally uncertain: the typical one wins
    best, scores = propose(probability, embeddings, n=2)
    assert best[0] == 10 and scores[10] > scores[-1]


@pytest.mark.slow
def test_label_next_proposes_unlabelled_photos(world, world_dir, tmp_path):
    from salerank.jobs.cli import main

    out = tmp_path / "next.csv"
    assert main(["label-next", "--data", str(world_dir / "data"), "--n", "5", "--out", str(out)]) == 0
    proposed = pd.read_csv(out)
    assert len(proposed) == 5 and proposed.score.is_monotonic_decreasing
    assert not set(proposed.image_path) & set(world.image_labels.image_path)
    assert set(proposed.image_path) <= set(world.sale_images.image_path)


def test_a_batch_takes_one_photo_per_cluster_not_near_duplicates():
    rng = np.random.default_rng(1)
    dense = rng.normal(0, 0.02, (40, 8)) + np.eye(8)[0]
    other = rng.normal(0, 0.02, (20, 8)) + np.eye(8)[1]
    embeddings = np.vstack([dense, other])
    probability = np.full((60, 3), 0.5)  # all equally uncertain: density alone ranks
    top, _ = propose(probability, embeddings, n=2, candidates=1)
    diverse, _ = propose(probability, embeddings, n=2, candidates=30)
    assert (top < 40).all()  # plain top-n spends the batch on the denser cluster
    assert sorted(diverse >= 40) == [False, True]


def test_cold_start_proposes_the_centre_of_each_cluster():
    rng = np.random.default_rng(2)
    centres = np.eye(8)[:3]
    embeddings = np.vstack([rng.normal(0, 0.05, (30, 8)) + c for c in centres])
    best, scores = propose(None, embeddings, n=3)
    assert sorted(best // 30) == [0, 1, 2]
    for i in best:  # the chosen one is its cluster's most central photo
        members = np.arange(i // 30 * 30, i // 30 * 30 + 30)
        assert scores[i] == scores[members].max()


def test_label_next_with_nothing_left_to_label_says_so(world, world_dir, tmp_path, capsys):
    """Every photo of sale_images labelled: exit 2 and the reason, before any model loads;
    --n 0 likewise."""
    import shutil

    from salerank.jobs.cli import main

    data = tmp_path / "data"
    shutil.copytree(world_dir / "data", data)
    every = pd.DataFrame({"image_path": sorted(set(world.sale_images.image_path)), "tag": "beach"})
    every.to_csv(data / "image_labels.csv", index=False)
    assert main(["label-next", "--data", str(data), "--n", "5"]) == 2
    err = capsys.readouterr().err
    assert f"nothing left to label: all {len(every)} photos of sale_images have a label" in err
    assert "Traceback" not in err
    assert main(["label-next", "--data", str(world_dir / "data"), "--n", "0"]) == 2
    assert "--n must be at least 1, got 0" in capsys.readouterr().err
