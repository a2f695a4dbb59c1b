"""The dataset card (`README.md`, Hugging Face datasets style) and a sample-grid PNG per set.

The card's YAML header declares a default config `all` (every set, one declared schema) and one config
per set, each listing the manifest's tars (`fakeforge.shards.hub`), so `datasets.load_dataset(OUT)` reads
the whole build and `datasets.load_dataset(OUT, "<set>")` one set with all its metadata;
the body says what was built, from what, with which generators and settings, under which licences,
and what is known to differ between the real and the fake sets (the shortcut audit, when given).
"""
from __future__ import annotations

import io
import logging
from pathlib import Path

import yaml
from PIL import Image

log = logging.getLogger(__name__)

CARD = "README.md"
GRID_DIR = "_card"
#: Licence notes per source kind (the generated images additionally follow each model's licence).
SOURCE_LICENCES = {
    "coco": "COCO: annotations CC BY 4.0; images from Flickr under their own licences "
            "(https://cocodataset.org/#termsofuse)",
    "flickr30k": "Flickr30k: images from Flickr under their owners' terms, for non-commercial research "
                 "(see the dataset's terms of use)",
    "demo": "synthetic shapes drawn by fakeforge's demo source (no third-party content)",
    "photos": "sample photos shipped with scikit-image and scikit-learn (public domain or CC licences; "
              "each sample's json names its photo)",
    "imagefolder": "your image folder (its own licence applies)",
    "imagenet": "ImageNet: non-commercial research under the ImageNet terms of access",
    "folder": "the downloaded dataset's own licence",
}


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "1M<n<10M"


def _first_members(tars: list) -> list[str]:
    """Member extensions of a set's first sample (`jpg`, `json`, `mask.png`, ...)."""
    from fakeforge.shards.reader import iter_members

    first, exts = None, []
    for key, ext, _data in iter_members(tars, lambda _key, _ext: True):
        if first is not None and key != first:
            break
        first = key
        exts.append(ext)
    return exts


def _first_samples(tars: list, n: int) -> list[tuple[str, bytes]]:
    from fakeforge.shards.reader import IMAGE_KEYS, iter_members

    out: list[tuple[str, bytes]] = []
    for key, _ext, data in iter_members(tars, lambda _key, ext: ext in IMAGE_KEYS):
        out.append((key, data))
        if len(out) >= n:
            break
    return out


def write_sample_grid(store, set_name: str, tars: list, n: int = 16, cell: int = 128) -> str | None:
    """`_card/<set>.png` in the dataset `store`: the first `n` images of a set in a grid of `cell`-pixel
    tiles; returns its path relative to the dataset (None for a set without images)."""
    from fakeforge.images import ImageLoadError, load_rgb

    samples = _first_samples(tars, n)
    if not samples:
        return None
    cols = min(4, len(samples))
    rows = (len(samples) + cols - 1) // cols
    grid = Image.new("RGB", (cols * cell, rows * cell), (245, 245, 245))
    for i, (_key, data) in enumerate(samples):
        try:
            img = load_rgb(data)
        except ImageLoadError:
            continue
        img.thumbnail((cell, cell))
        grid.paste(img, ((i % cols) * cell + (cell - img.width) // 2, (i // cols) * cell + (cell - img.height) // 2))
    buf = io.BytesIO()
    grid.save(buf, format="PNG")
    rel = f"{GRID_DIR}/{set_name}.png"
    store.write_bytes(rel, buf.getvalue())
    return rel


def _set_rows(manifest: dict, build: dict) -> list[dict]:
    by_name = {s.get("name"): s for s in build.get("sets") or [] if isinstance(s, dict)}
    rows = []
    for name, info in manifest.get("sets", {}).items():
        spec = by_name.get(name, {})
        source = {**(build.get("source") or {}), **(spec.get("source") or {})}
        rows.append({"name": name, "label": info.get("label"), "generator": info.get("generator"),
                     "model": info.get("model_id"), "count": info.get("count", 0), "failed": info.get("failed", 0),
                     "source": source.get("kind", "?"), "settings": spec.get("generator")})
    return rows


def zoo_model_lines(manifest: dict) -> list[str]:
    """A table per zoo set (sets whose manifest entry has `models`): samples, failures and fault per model."""
    lines: list[str] = []
    for name, info in manifest.get("sets", {}).items():
        models = info.get("models")
        if not models:
            continue
        lines += [f"### Models of set {name}", "", "| model | samples | failed samples | model failure |",
                  "|---|---|---|---|"]
        for model, m in models.items():
            fault = f"{m['failure']['class']}: {m['failure']['reason']}" if m.get("failure") else "-"
            lines.append(f"| {model} | {m.get('written', 0)} | {m.get('failed', 0)} | {fault.replace('|', '/')} |")
        lines.append("")
    return lines


def dataset_card(manifest: dict, build: dict, audit: dict | None = None, grids: dict[str, str] | None = None,
                 image_members: list[str] | None = None) -> str:
    """The card's text from the manifest, the resolved build config, (optionally) the audit, and the image
    member extensions of the sets (`jpg`, `png`, `mask.png`: the default config's image columns)."""
    from fakeforge.shards.hub import default_config_name, hub_header

    rows = _set_rows(manifest, build)
    total = int(manifest.get("total", sum(r["count"] for r in rows)))
    header = {
        "pretty_name": build.get("description") or "fakeforge dataset",
        "license": "other",
        "task_categories": ["image-classification"],
        "tags": ["fake-image-detection", "synthetic-images", "webdataset", "fakeforge"],
        "size_categories": [_size_category(total)],
        **hub_header(manifest, image_members if image_members is not None else ["jpg", "png", "webp"]),
    }
    tiny = bool(manifest.get("tiny") or build.get("tiny"))
    lines = ["---", yaml.safe_dump(header, sort_keys=False).strip(), "---", "",
             f"# {header['pretty_name']}", "",
             "Real and generated images for fake-image detection, built by fakeforge as WebDataset shards: "
             "each sample is "
             "`<key>.<jpg|png|webp>` + `<key>.json` (label, generator, model, caption, seed, all settings).", ""]
    if tiny:
        lines += ["> **Built with tiny random-weight twins** (`--tiny`): the fakes are noise-like test images, not "
                  "what the named models make. Use this dataset to test pipelines, never to measure detectors.", ""]
    lines += ["## Sets", "", "| set | label | samples | failed | source | generator | model |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['name']} | {r['label']} | {r['count']} | {r['failed']} | {r['source']} | "
                     f"{r['generator']} | {r['model'] or '-'} |")
    lines += ["", f"Total: {total} samples; config hash `{manifest.get('config_hash')}`.", ""]
    lines += zoo_model_lines(manifest)
    if grids:
        lines += ["## Samples", ""]
        for name, rel in grids.items():
            lines += [f"**{name}**", "", f"![{name}]({rel})", ""]
    image = build.get("image") or {}
    lines += ["## How it was made", "",
              f"Image policy for real and fake alike: format {image.get('format', 'jpeg')}, quality "
              f"{image.get('quality', '-')}, resize `{image.get('resize', 'none')}` to {image.get('size', '-')}. "
              f"Build seed {build.get('seed', 0)}; every sample's seed derives from its key.", "",
              "Generator settings per set (as resolved; every sample's json repeats them):", "", "```yaml",
              yaml.safe_dump({r["name"]: r["settings"] for r in rows}, sort_keys=False).strip(), "```", ""]
    kinds = sorted({r["source"] for r in rows})
    lines += ["## Sources and licences", ""]
    lines += [f"- **{k}**: {SOURCE_LICENCES.get(k, 'see the source dataset')}" for k in kinds]
    models = sorted({r["model"] for r in rows if r["model"]})
    if models:
        lines.append("- **generated images**: each model's licence applies (see its model card): "
                     + ", ".join(f"`{m}`" for m in models))
    lines += ["", "## Known biases and limitations", "",
              "- Captions come from the source dataset; generated images inherit its content and its biases.",
              "- Generators, steps, guidance and resolutions are one choice each (above); other settings give "
              "other artefacts.",
              "- Real images went through their original camera/JPEG pipeline before this policy; fakes did not "
              "(a double-compression difference the policy can reduce, not remove)."]
    if audit:
        flagged = audit.get("flagged") or []
        lines.append("- Shortcut audit (format features only, see below): " +
                     (f"**flagged** {', '.join(flagged)}" if flagged else "no real/fake pair flagged."))
        from fakeforge.audit import markdown as audit_markdown

        lines += ["", audit_markdown(audit)]
    lines += ["", "## Loading", "", "```python", "import webdataset as wds",
              f"ds = wds.WebDataset('{rows[0]['name'] if rows else 'SET'}/000000.tar', shardshuffle=False)"
              ".decode('pil')", "# or, with Hugging Face datasets:", "from datasets import load_dataset",
              "every = load_dataset('path/to/this/folder', split='train')   # every set, one schema "
              f"(config '{default_config_name(manifest)}')",
              f"one = load_dataset('path/to/this/folder', '{rows[0]['name'] if rows else 'SET'}', split='train')"
              "   # one set, all its metadata",
              "every.flatten()   # json.label, json.set, ... as top-level columns",
              "```", "", "Check integrity with `fakeforge verify <this folder>`.", ""]
    return "\n".join(lines)


def write_dataset_card(out_dir: str | Path, audit: dict | None = None, grids: bool = True) -> str:
    """Write `OUT/README.md` (and the sample grids) from `manifest.json` and `build_config.yaml`; OUT may
    be a local folder or an fsspec URL. Only the tars the manifest lists are read (an unlisted one, e.g.
    an interrupted copy, is ignored: `fakeforge.shards.hub.unlisted_tars` names them). Returns where
    the card was written."""
    from fakeforge.shards.hub import listed_tars, member_extensions
    from fakeforge.shards.store import Store

    store = Store(out_dir, "dataset")
    manifest = store.read_json("manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in '{store}': the build did not finish (rerun the build command)")
    build = yaml.safe_load(store.read_bytes("build_config.yaml") or b"") or {}
    tars = {name: [store.url(t) for t in files] for name, files in listed_tars(manifest).items()}
    grid_paths: dict[str, str] = {}
    if grids:
        for name, files in tars.items():
            rel = write_sample_grid(store, name, files)
            if rel is not None:
                grid_paths[name] = rel
    members = member_extensions({name: _first_members(files[:1]) for name, files in tars.items()})
    store.write_bytes(CARD, dataset_card(manifest, build, audit, grid_paths, members).encode())
    return store.show(CARD)
