"""What the dataset card tells Hugging Face `datasets`, and which tars belong to a dataset at all.

The card describes the shards the manifest lists, nothing else: a stray tar in a set folder (an
interrupted copy, a file dropped there by hand) is neither read for the card nor named in its configs.

`datasets` loads a fakeforge folder with its `webdataset` loader, one column per member extension
(`jpg`/`png`/`webp`, `mask.png`, `json`). Sets differ in their members and in their per-sample JSON
(an attack records its distances, an inpainting its mask; fields that are null in one set are numbers in
another), so a schema inferred from one set's first samples cannot hold another's. The card therefore
declares the schema of the default config `all` (every set): every image member any set has (absent
ones are null), and a `json` column typed with the fields every sample carries (`SAMPLE_FIELDS`; `source_size`
is null where the source gave none);
set-specific metadata stays in each set's own config (schema inferred from that set, everything kept)
and in the tars. `ds.flatten()` turns `json` into top-level `json.label`, `json.set`, ... columns.
"""
from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLE_FIELDS", "default_config_name", "hub_header", "listed_tars", "member_extensions", "unlisted_tars"]

#: Per-sample JSON fields present in every set, with the `datasets` dtype they are declared with.
SAMPLE_FIELDS: dict[str, object] = {
    "label": "string", "set": "string", "key": "string", "generator": "string", "generator_type": "string",
    "model_id": "string", "source": "string", "set_hash": "string", "caption": "string", "caption_id": "string",
    "source_image_id": "string", "seed": "int64", "generated_size": ["int64"], "source_size": ["int64"],
    "image": {"width": "int64", "height": "int64", "format": "string", "quality": "int64", "resize": "string",
              "size": "int64"},
}
DEFAULT_CONFIG = "all"


def listed_tars(manifest: dict) -> dict[str, list[str]]:
    """Set name -> the tars the manifest lists for it (paths relative to the dataset folder)."""
    return {name: [t["name"] for t in info.get("tars") or [] if isinstance(t, dict) and t.get("name")]
            for name, info in (manifest.get("sets") or {}).items()}


def unlisted_tars(location: str | Path, manifest: dict) -> list[str]:
    """Tars inside set folders of the dataset at `location` that the manifest does not list (relative paths)."""
    from fakeforge.shards.reader import find_sets

    listed = {t for tars in listed_tars(manifest).values() for t in tars}
    try:
        found = find_sets(str(location))
    except (FileNotFoundError, ValueError):
        return []
    out = []
    for name, tars in found.items():
        for t in tars:
            rel = f"{name}/{str(t).rstrip('/').rsplit('/', 1)[-1]}"
            if rel not in listed:
                out.append(rel)
    return sorted(out)


def member_extensions(first_sample_members: dict[str, list[str]]) -> list[str]:
    """The image member extensions (`jpg`, `png`, `mask.png`, ...) over every set, in a stable order."""
    from fakeforge.shards.reader import IMAGE_KEYS

    found = {ext for exts in first_sample_members.values() for ext in exts
             if ext.rsplit(".", 1)[-1] in IMAGE_KEYS}
    return sorted(found, key=lambda e: (e.count("."), e))


def _feature(name: str, dtype) -> dict:
    if isinstance(dtype, dict):
        return {"name": name, "struct": [_feature(k, v) for k, v in dtype.items()]}
    if isinstance(dtype, list):  # [dtype]: a list of that type
        return {"name": name, "sequence": dtype[0]}
    return {"name": name, "dtype": dtype}


def hub_header(manifest: dict, image_members: list[str]) -> dict:
    """`configs` and `dataset_info` of the card's YAML header: the default config `all` (every listed tar,
    declared schema) first, then one config per set (its listed tars)."""
    tars = listed_tars(manifest)
    every = [t for name in tars for t in tars[name]]
    default = default_config_name(manifest)
    configs = [{"config_name": default, "default": True, "data_files": [{"split": "train", "path": every}]}]
    configs += [{"config_name": name, "data_files": [{"split": "train", "path": files}]}
                for name, files in tars.items()]
    features = [_feature(ext, "image") for ext in image_members]
    features += [_feature("json", SAMPLE_FIELDS), _feature("__key__", "string"), _feature("__url__", "string")]
    return {"configs": configs, "dataset_info": [{"config_name": default, "features": features}]}


def default_config_name(manifest: dict) -> str:
    """`all`, or `all_sets` when a set is itself named `all`."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG not in (manifest.get("sets") or {}) else f"{DEFAULT_CONFIG}_sets"
