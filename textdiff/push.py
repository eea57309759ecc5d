"""`textdiff push RUN REPO_ID`: upload a run directory to the Hugging Face hub, model card included, for users
online (`TextDiffusionPipeline.from_pretrained` / `AutoModel.from_pretrained` on a hub id fetch it back).

Before anything is sent the run is checked (a textdiff config.json, weights from its back-end, a tokenizer, no
pickle anywhere), its README.md model card is written afresh, and the files are listed: the ones a run needs to
load, plus metrics.jsonl and loss.png when present, plus checkpoints/ with --checkpoints. `--dry-run` stops there.
The upload itself is huggingface_hub's `create_repo` + `upload_folder` (a token from `huggingface-cli login` or
$HF_TOKEN).
"""

from __future__ import annotations

import sys
from pathlib import Path

from textdiff.errors import TextdiffError

NEEDED = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json")
EXTRAS = ("README.md", "special_tokens_map.json", "metrics.jsonl", "loss.png")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("push", help="upload a run directory (with its model card) to the Hugging Face hub")
    p.add_argument("run", help="run directory")
    p.add_argument("repo_id", help="hub repository, e.g. your-name/kjv-masked")
    p.add_argument("--private", action="store_true", help="create the repository private")
    p.add_argument("--revision", help="branch to push to (default: main)")
    p.add_argument("--checkpoints", action="store_true", help="also upload checkpoints/ (optimizer state: large)")
    p.add_argument("--message", default="Upload a textdiff run", help="commit message")
    p.add_argument("--dry-run", action="store_true", dest="dry_run", help="check, write the card, list the files; "
                                                                          "upload nothing")


def check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise TextdiffError(f"repository id {repo_id!r}: {str(e).splitlines()[0]}") from None
    if "/" not in repo_id:
        raise TextdiffError(f"repository id {repo_id!r}: write it as NAMESPACE/NAME (your user or organisation)")


def plan(run: Path, checkpoints: bool = False) -> list[str]:
    """The files to upload, relative to the run (after checking that it is a loadable textdiff run)."""
    from textdiff import checkpoint as ckpt
    from textdiff import rundir

    cfg = rundir.read_config(run)  # also refuses pickles
    missing = [f for f in NEEDED if not (run / f).is_file()]
    if missing:
        raise TextdiffError(f"{run}: {', '.join(missing)} missing; a run to push needs {', '.join(NEEDED)}")
    ckpt.check_backend(run / "model.safetensors", cfg.get("backend", cfg["recipe"]["backend"]["name"]))
    files = [f for f in NEEDED + EXTRAS if (run / f).is_file()]
    if checkpoints:
        files += sorted(str(p.relative_to(run)) for d in ckpt.list_checkpoints(run) for p in d.iterdir() if p.is_file())
    return files


def upload(run: Path, repo_id: str, files: list[str], private: bool, revision, message: str) -> str:
    """create_repo + upload_folder of exactly `files`; returns the commit's URL. Any hub failure is one line."""
    from huggingface_hub import HfApi

    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        info = api.upload_folder(folder_path=str(run), repo_id=repo_id, allow_patterns=files, revision=revision,
                                 commit_message=message, repo_type="model")
    except Exception as e:  # offline mode, no token, no access, network: say which, on one line
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise TextdiffError(f"push to {repo_id}: the hub refused or could not be reached ({type(e).__name__}: "
                            f"{reason})") from None
    return str(getattr(info, "commit_url", info))


def run(args) -> None:
    from textdiff.modelcard import write_model_card

    run_dir = Path(args.run)
    check_repo_id(args.repo_id)
    files = plan(run_dir, args.checkpoints)
    write_model_card(run_dir)
    if "README.md" not in files:
        files.insert(len(NEEDED), "README.md")
    size = sum((run_dir / f).stat().st_size for f in files)
    print(f"{args.repo_id}: {len(files)} files, {size / 1e6:.1f} MB: {', '.join(files)}")
    if args.dry_run:
        print("dry run: nothing uploaded", file=sys.stderr)
        return
    print(f"uploaded: {upload(run_dir, args.repo_id, files, args.private, args.revision, args.message)}")
