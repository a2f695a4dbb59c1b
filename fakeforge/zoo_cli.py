"""`fakeforge zoo list` (a models file from the Hugging Face hub) and `fakeforge zoo report` (per-model counts).

    fakeforge zoo list --task text-to-image --library diffusers --sort downloads --limit 50 > models.yaml
    fakeforge zoo report runs/my_zoo

The listing is what a build consumes (`generator: {type: zoo, models_file: models.yaml}`), so it is
reviewed and pinned before generation: every entry carries the commit (`revision`) it was listed at and
its pipeline class from its `model_index.json`; models whose index cannot be read (gated, not diffusers)
or whose pipeline the installed diffusers lacks are written commented out, with the reason.
"""
from __future__ import annotations

from fakeforge.shards.manifest import zoo_models, zoo_models_of_specs  # noqa: F401  (read here)

import argparse
import json
import sys
import time
from pathlib import Path

import yaml

SORTS = ("downloads", "likes", "trending_score", "created_at", "last_modified")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="zoo_command", metavar="ZOO_COMMAND", required=True)
    lst = sub.add_parser("list", help="write a models file (YAML, to stdout) from the Hugging Face hub listing")
    lst.add_argument("--task", default="text-to-image", help="hub pipeline tag (default text-to-image)")
    lst.add_argument("--library", default="diffusers", help="hub library tag (default diffusers)")
    lst.add_argument("--sort", default="downloads", choices=SORTS, help="hub sort key (default downloads)")
    lst.add_argument("--limit", type=int, default=20, help="how many models (default 20)")
    lst.add_argument("--licence", "--license", dest="licences", action="append", default=[], metavar="LICENCE",
                     help="only models under this licence tag, e.g. openrail++ (repeatable: any of them)")
    lst.add_argument("--search", default=None, help="only model ids containing this text")
    rep = sub.add_parser("report", help="per-model samples and failures of the zoo sets of a built dataset")
    rep.add_argument("dataset", help="dataset folder (or URL) holding manifest.json")
    rep.add_argument("--json", action="store_true", help="print JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    return _list(args) if args.zoo_command == "list" else _report(args)


def _say(line: str) -> int:
    print(f"fakeforge zoo: error: {line}", file=sys.stderr)
    return 2


def _pipeline_of(api, model_id: str, revision: str | None) -> tuple[str | None, str | None]:
    """(pipeline class, None) from the model's model_index.json, or (None, why not)."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(model_id, "model_index.json", revision=revision)
        return json.loads(Path(path).read_text()).get("_class_name"), None
    except Exception as exc:  # noqa: BLE001 - a model we cannot read is listed commented out, with the reason
        from generators.zoo import classify

        return None, f"{classify(exc)}: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}"


def models_yaml(infos: list, pipelines: dict[str, tuple[str | None, str | None]], command: str) -> str:
    """The models file for hub listing `infos` (huggingface_hub ModelInfo), `pipelines` model id ->
    (class, problem). Entries the installed diffusers cannot run are commented out with the reason."""
    import diffusers

    lines = [f"# {command}", f"# listed {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; review, then build "
             "with  generator: {type: zoo, models_file: THIS_FILE}", "models:"]
    for info in infos:
        pipeline, problem = pipelines.get(info.id, (None, "not read"))
        if pipeline and not hasattr(diffusers, pipeline):
            problem = f"unsupported pipeline: {pipeline} is not in diffusers {diffusers.__version__}"
        licence = next((t.split(":", 1)[1] for t in (info.tags or []) if t.startswith("license:")), "?")
        lines.append(f"  # {info.id}: {info.downloads or 0} downloads, licence {licence}"
                     + (", gated" if getattr(info, "gated", False) else ""))
        entry = {"name": info.id, "model_id": info.id, "revision": info.sha, "pipeline": pipeline, "weight": 1}
        text = yaml.safe_dump([{k: v for k, v in entry.items() if v is not None}], sort_keys=False,
                              default_flow_style=True, width=400).strip()
        text = text[1:-1] if text.startswith("[") else text
        lines.append(f"  # skipped ({problem}): - {text}" if problem else f"  - {text}")
    return "\n".join(lines) + "\n"


def _list(args: argparse.Namespace) -> int:
    if args.limit < 1:
        return _say(f"--limit {args.limit} must be a positive integer")
    from huggingface_hub import HfApi
    from huggingface_hub.errors import OfflineModeIsEnabled

    api = HfApi()
    filters = [args.library] + [f"license:{lic}" for lic in args.licences]
    try:
        infos = list(api.list_models(pipeline_tag=args.task, filter=filters, sort=args.sort, limit=args.limit,
                                     search=args.search, expand=["sha", "downloads", "tags", "gated"]))
    except OfflineModeIsEnabled:
        return _say("the Hugging Face hub is not reachable in offline mode (HF_HUB_OFFLINE is set): list models on "
                    "a machine with network access, or write the models file by hand (docs/zoo.md)")
    except OSError as exc:
        return _say(f"cannot reach the Hugging Face hub ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})")
    pipelines = {}
    for info in infos:
        pipelines[info.id] = _pipeline_of(api, info.id, info.sha)
    command = "fakeforge zoo list " + " ".join(sys.argv[3:] if sys.argv[1:3] == ["zoo", "list"] else [])
    sys.stdout.write(models_yaml(infos, pipelines, command.strip()))
    return 0


def _report(args: argparse.Namespace) -> int:
    models = zoo_models(args.dataset)
    if not models:
        return _say(f"'{args.dataset}' has no finished zoo set (no manifest.json with per-model counts)")
    if args.json:
        print(json.dumps(models, indent=2))
        return 0
    for set_name, per_model in models.items():
        print(f"set {set_name}: {len(per_model)} models")
        for name, m in per_model.items():
            fault = f"  FAILED [{m['failure']['class']}] {m['failure']['reason']}" if m.get("failure") else ""
            print(f"  {name:40s} {m['written']:7d} samples {m['failed']:5d} failed{fault}")
    return 0
