"""The dataset card (`README.md`, Hugging Face datasets style) and a sample-grid PNG per set.

The card's YAML header declares one `configs` entry per set (`data_files: <set>/*.tar`), so
`datasets.load_dataset(OUT, "<set>")` reads a set with its metadata through the webdataset loader;
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


def dataset_card(manifest: dict, build: dict, audit: dict | None = None, grids: dict[str, str] | None = None) -> str:
    """The card's text from the manifest, the resolved build config and (optionally) the audit."""
    rows = _set_rows(manifest, build)
    total = int(manifest.get("total", sum(r["count"] for r in rows)))
    header = {
        "pretty_name": build.get("description") or "fakeforge dataset",
        "license": "other",
        "task_categories": ["image-classification"],
        "tags": ["fake-image-detection", "synthetic-images", "webdataset", "fakeforge"],
        "size_categories": [_size_category(total)],
        "configs": [{"config_name": r["name"], "data_files": f"{r['name']}/*.tar"} for r in rows],
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
              f"ds = load_dataset('path/to/this/folder', '{rows[0]['name'] if rows else 'SET'}', split='train')",
              "```", "", "Check integrity with `fakeforge verify <this folder>`.", ""]
    return "\n".join(lines)


def write_dataset_card(out_dir: str | Path, audit: dict | None = None, grids: bool = True) -> str:
    """Write `OUT/README.md` (and the sample grids) from `manifest.json` and `build_config.yaml`; OUT may
    be a local folder or an fsspec URL. Returns where the card was written."""
    from fakeforge.shards.reader import find_sets
    from fakeforge.shards.store import Store

    store = Store(out_dir, "dataset")
    manifest = store.read_json("manifest.json")
    if manifest is None:
        raise FileNotFoundError(f"no manifest.json in '{store}': the build did not finish (rerun the build command)")
    build = yaml.safe_load(store.read_bytes("build_config.yaml") or b"") or {}
    grid_paths: dict[str, str] = {}
    if grids and manifest.get("sets"):
        tars = find_sets(str(out_dir))
        for name in manifest["sets"]:
            rel = write_sample_grid(store, name, tars.get(name, []))
            if rel is not None:
                grid_paths[name] = rel
    store.write_bytes(CARD, dataset_card(manifest, build, audit, grid_paths).encode())
    return store.show(CARD)
