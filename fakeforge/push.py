"""`fakeforge push OUT --repo ID`: upload a verified build to a Hugging Face hub dataset repo.

The build is verified first (`fakeforge.shards.verify.verify_dataset`); an unverified or incomplete one is
refused. What goes up is the card (README.md), its `_card/` pictures, the manifest and the tars the manifest
lists, never the lock file, stray tars or temp files. `huggingface_hub` does the transfer: files already
on the hub (same content) are not sent again, so rerunning an interrupted push resumes it.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from fakeforge.shards.manifest import MANIFEST
from fakeforge.shards.verify import VerifyError, read_manifest_checked, verify_dataset
from fakeforge.shards.store import Store

CARD = "README.md"
CARD_DIR = "_card"


class PushError(Exception):
    """A build that cannot be pushed (unverified, offline, hub refusal), in one line."""


def upload_selection(out_dir: str | Path) -> list[str]:
    """The paths, relative to `out_dir` and sorted, that a push uploads: README.md, every plain file under
    `_card/`, manifest.json and each tar the manifest lists. Raises PushError when the card or a listed tar
    is missing; the caller verifies the build first."""
    root = Path(out_dir)
    try:
        manifest = read_manifest_checked(Store(root, what="dataset"))
    except VerifyError as exc:
        raise PushError(str(exc)) from None
    if not (root / CARD).is_file():
        raise PushError(f"'{root / CARD}' (the dataset card) is missing: rerun the build command to write it")
    chosen = {CARD, MANIFEST}
    card_dir = root / CARD_DIR
    if card_dir.is_dir():
        chosen |= {p.relative_to(root).as_posix() for p in card_dir.rglob("*")
                   if p.is_file() and not p.is_symlink() and not p.name.startswith(".")}
    for info in manifest["sets"].values():
        for t in info["tars"]:
            if not (root / t["name"]).is_file():
                raise PushError(f"shard '{root / t['name']}' listed in the manifest is missing")
            chosen.add(Path(t["name"]).as_posix())
    return sorted(chosen)


def push(out_dir: str | Path, repo_id: str, private: bool = False, revision: str | None = None,
         token: str | None = None) -> str:
    """Verify `out_dir`, then upload `upload_selection(out_dir)` to the hub dataset repo `repo_id` (created
    if absent, `private` then; on branch `revision`, created from main if absent). Returns the commit URL.
    Raises PushError in one line: unverified build, HF_HUB_OFFLINE set, or the hub's refusal."""
    try:
        summary = verify_dataset(out_dir)
    except VerifyError as exc:
        raise PushError(f"refusing to push an unverified build: {exc}") from None
    files = upload_selection(out_dir)
    from huggingface_hub import HfApi, constants
    from huggingface_hub.errors import HfHubHTTPError

    if constants.HF_HUB_OFFLINE:
        raise PushError(f"HF_HUB_OFFLINE is set: cannot reach the hub to push '{out_dir}' "
                        f"({summary['samples']} samples, {len(files)} files); unset it and rerun")
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, repo_type="dataset", exist_ok=True)
        info = api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=str(out_dir),
                                 allow_patterns=files, revision=revision,
                                 commit_message=f"fakeforge push: {summary['samples']} samples, "
                                                f"{summary['tars']} tars")
    except (HfHubHTTPError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PushError(f"the hub refused the push to '{repo_id}': {first}") from None
    return str(getattr(info, "commit_url", info))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out", metavar="OUT", help="a built dataset folder (holds manifest.json and README.md)")
    parser.add_argument("--repo", required=True, help="hub dataset repo id, e.g. user/afp_test")
    parser.add_argument("--private", action="store_true", help="create the repo private (if it does not exist)")
    parser.add_argument("--revision", default=None, metavar="BRANCH", help="push to this branch (created if absent)")
    parser.epilog = "example:\n  huggingface-cli login && fakeforge push runs/antifakeprompt_test --repo me/afp_test"


def run(args: argparse.Namespace) -> int:
    """The `fakeforge push` command: 0 when pushed, 2 with one line otherwise."""
    try:
        url = push(args.out, args.repo, private=args.private, revision=args.revision)
    except PushError as exc:
        print(f"fakeforge push: error: {exc}", file=sys.stderr)
        return 2
    print(f"pushed {args.out} to {args.repo}: {url}")
    return 0
