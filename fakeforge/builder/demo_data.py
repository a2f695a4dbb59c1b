"""`--demo-data`: dry-run any build config anywhere by replacing every source with built-in data.

Every set's source becomes the real sample photos shipped with scikit-image/scikit-learn/matplotlib
(`source.kind: photos`, 8 images a set unless `--limit` says otherwise), keeping only each set's
selection seed, so sets still draw different photos. Sets that pass a downloaded dataset through
unchanged (generator type `download`: DALLE, DiffusionDB, face-swap frames...) have nothing to dry-run
and are left out, with one log line each. The output folder gets a `_demo` suffix unless `--output` is
given, so a dry run never occupies the folder of the real build. Together with `--tiny`, every shipped
build config (and every pipeline, `fakeforge run --demo-data`) runs offline in minutes.
"""
from __future__ import annotations

import logging

log = logging.getLogger("fakeforge.builder")

DEMO_LIMIT = 8
#: what a set keeps of its own source under --demo-data (its draw from the photos, not its files)
_KEPT = ("seed",)


def _generator_type(spec) -> str | None:
    from generators import resolve_generator_spec

    try:
        return resolve_generator_spec(spec).get("type")
    except Exception:  # noqa: BLE001 - an unknown preset is reported by the normal resolution, with its key
        return None


def use_demo_data(raw: dict) -> dict:
    """The build config `raw` (plain data, overrides applied) with every source replaced (see module doc)."""
    common = raw.get("source") if isinstance(raw.get("source"), dict) else {}
    raw["source"] = {"kind": "photos", "limit": DEMO_LIMIT, "seed": common.get("seed", 0),
                     "captions_per_image": common.get("captions_per_image", 1)}
    sets = []
    for s in raw.get("sets") or []:
        if isinstance(s, dict):
            if _generator_type(s.get("generator")) == "download":
                log.info("--demo-data: set '%s' passes a downloaded dataset through; left out of the dry run",
                         s.get("name"))
                continue
            own = s.get("source") if isinstance(s.get("source"), dict) else {}
            s = {**s, "source": {k: v for k, v in own.items() if k in _KEPT}}
            s.pop("optional", None)
        sets.append(s)
    raw["sets"] = sets
    raw["output"] = f"{raw.get('output') or 'runs/build'}_demo"
    return raw
