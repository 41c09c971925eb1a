import numpy as np
import pandas as pd

from salerank.world import WorldConfig, generate_world, utility

TINY = WorldConfig(n_users=150, n_days=12, sales_per_day=4)


def test_same_seed_same_world_and_other_seed_differs():
    a, b, c = generate_world(TINY, seed=1), generate_world(TINY, seed=1), generate_world(TINY, seed=2)
    for name in a.tables + ("user_truth", "sale_truth"):
        pd.testing.assert_frame_equal(getattr(a, name), getattr(b, name))
    assert not a.visits.equals(c.visits)


def test_events_happen_inside_sale_windows(world):
    for events in (world.visits, world.purchases):
        merged = events.merge(world.sales, on="sale_id")
        date = merged["ts"].str[:10]
        assert ((date >= merged["open_date"]) & (date <= merged["close_date"])).all()


def test_purchases_follow_the_true_utility(world):
    """Bought sales have a clearly higher true utility than the visited ones on average."""
    u = pd.DataFrame(utility(world.user_truth, world.sale_truth),
                     index=world.user_truth["user_id"], columns=world.sale_truth["sale_id"])
    bought = np.mean([u.at[r.user_id, r.sale_id] for r in world.purchases.itertuples()])
    visited = np.mean([u.at[r.user_id, r.sale_id] for r in world.visits.itertuples()])
    overall = u.to_numpy().mean()
    assert bought > visited + 0.5 > overall + 1.0


def test_written_world_keeps_truth_apart(world, world_dir):
    assert sorted(p.name for p in (world_dir / "data").iterdir()) == sorted(
        [f"{t}.csv" for t in world.tables] + ["images"])
    assert {p.name for p in (world_dir / "truth").iterdir()} == {
        "users.parquet", "sales.parquet", "photos.parquet"}
    assert len(list((world_dir / "data" / "images").iterdir())) == len(world.sale_images)


def test_every_sale_has_photos_of_its_themes(world):
    photos = world.sale_images.merge(world.photo_scenes, on="image_path")
    assert set(photos.sale_id) == set(world.sales.sale_id)
    assert photos.groupby("sale_id").size().between(1, 3).all()
    truth = world.sale_truth.set_index("sale_id")
    assert all(truth.at[r.sale_id, f"theme_{r.theme}"] > 0 for r in photos.itertuples())
    labelled = world.image_labels.merge(world.photo_scenes, on="image_path")
    assert 0.2 < len(labelled) / len(photos) < 0.4 and (labelled.tag == labelled.theme).all()
