"""ImageNet-1k class indices: the standard order (sorted WordNet ids) as shipped with timm."""
from __future__ import annotations

import functools
import re

from fakeforge.config import ConfigError

WNID = re.compile(r"^n\d{8}$")


@functools.lru_cache(maxsize=1)
def imagenet_classes() -> tuple[dict[str, int], list[str]]:
    """(wnid -> index, index -> short class name) of ImageNet-1k, from timm's bundled synset list."""
    try:
        from timm.data import ImageNetInfo
    except ImportError as exc:
        raise ConfigError(f"ImageNet labels need timm's synset list, but timm is not installed ({exc}); "
                          "install the extra: pip install 'fakeforge[attacks]'") from None
    info = ImageNetInfo()
    wnids = list(info.label_names())
    names = [info.index_to_description(i).split(",")[0].strip() for i in range(len(wnids))]
    return {w: i for i, w in enumerate(wnids)}, names
