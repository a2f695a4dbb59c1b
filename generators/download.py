"""The pass-through generator of downloaded sets (DALLE-2/3, DiffusionDB, DeeperForensics, DFDC, FF++, ...).

The images of a downloaded set are the samples: each source image goes through the same writer and
encoding policy as every other set, labelled with the source's `label` ("real" or "fake") and
recorded with the published set's name and where it came from (file, shard, archive, video frame).
"""
from __future__ import annotations

from typing import ClassVar

from generators.base import Generator, GeneratorConfig, GenRequest, GenResult

_PROVENANCE = ("download_set", "file_name", "shard", "shard_key", "image_name", "part_id", "video", "frame_index",
               "frame_file", "frames_in_video", "seed", "step", "cfg", "sampler")


class DownloadedImage(Generator):
    """Returns each request's source image unchanged, labelled with its source's label."""

    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig
    needs_source_image = True
    label = "fake"
    #: the set's label is `source.label` (fakeforge.builder.config.set_label)
    label_from_source: ClassVar[bool] = True

    def generate(self, requests: list[GenRequest]) -> list[GenResult]:
        out = []
        for r in requests:
            if r.image is None:
                out.append(GenResult(error="no source image"))
            elif r.meta.get("label") not in ("real", "fake"):
                out.append(GenResult(error="the download generator needs a downloaded-set source with a label "
                                           "(source.kind folder/shards/diffusiondb/frames and source.label)"))
            else:
                extra = {"label": r.meta["label"], "source_image_id": r.source_image_id}
                # DiffusionDB's own seed/step/cfg describe the original generation, not ours: keep them apart
                extra["download"] = {k: r.meta[k] for k in _PROVENANCE if k in r.meta}
                out.append(GenResult(image=r.image, extra=extra))
        return out

    def settings(self) -> dict:
        return {"type": "download"}
