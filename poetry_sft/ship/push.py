"""Upload a finished run's adapter, merged model or GGUF export to the Hugging Face Hub, with its model card.

    poetry-sft push runs/<run> --repo user/name [--private] [--what adapter|merged|gguf]

`adapter` (default for LoRA/QLoRA; the full model for a full run) uploads runs/<run>/model; `merged`
uploads runs/<run>/merged (poetry-sft merge first); `gguf` the newest runs/<run>/gguf-*
folder (poetry-sft export first). The folder's README.md is the model card, with the repo id
filled into its usage snippet. Offline (HF_HUB_OFFLINE=1) or without a token it stops before any
upload and says how to log in; the token is never printed. In mainland China set HF_ENDPOINT to a
mirror that accepts uploads, or publish on ModelScope instead.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from poetry_sft.errors import ConfigError, ResourceNotFoundError, RunDirError, command
from poetry_sft.run import artifacts
from poetry_sft.run.model_card import CARD_FILE, write_card

WHAT = ("adapter", "merged", "gguf")


def folder_to_push(run_dir: Path, what: str) -> Path:
    if not artifacts.is_finished(run_dir):
        if artifacts.is_run_dir(run_dir):
            raise artifacts.unfinished_error(run_dir)
        raise RunDirError(
            f"{run_dir} is not a poetry_sft run ({artifacts.CONFIG_FILE} and {artifacts.METRICS_FILE} are "
            "missing). Fix: name a finished run directory, runs/<run>"
        )
    if what == "adapter":
        folder = run_dir / artifacts.MODEL_DIR
    elif what == "merged":
        folder = run_dir / "merged"
    else:
        exports = sorted(run_dir.glob("gguf-*"), key=lambda p: p.stat().st_mtime)
        folder = exports[-1] if exports else run_dir / "gguf-f16"
    if not folder.is_dir():
        make = {"merged": "poetry-sft merge", "gguf": "poetry-sft export"}.get(what, "")
        raise RunDirError(
            f"{folder} does not exist. Fix: {make} {run_dir} first" if make else f"{folder} is missing"
        )
    return folder


def check_hub_access() -> str:
    """The token, or a ResourceNotFoundError naming the fix (offline mode, no login). Never prints it."""
    from huggingface_hub import get_token

    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        raise ResourceNotFoundError(
            "HF_HUB_OFFLINE is set, so nothing can be uploaded. Fix: unset HF_HUB_OFFLINE (and, in mainland "
            "China, set HF_ENDPOINT to a reachable mirror) and push again"
        )
    token = get_token()
    if not token:
        raise ResourceNotFoundError(
            "no Hugging Face token found. Fix: `hf auth login` (or `huggingface-cli login`), or set HF_TOKEN "
            "to a write token from https://huggingface.co/settings/tokens"
        )
    return token


def push(run_dir: Path, repo: str, what: str = "adapter", private: bool = False) -> str:
    if what not in WHAT:
        raise ConfigError(f"--what {what!r} is not one of {', '.join(WHAT)}")
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(f"--repo {repo!r} must be user/name (or org/name)")
    folder = folder_to_push(run_dir, what)
    token = check_hub_access()
    from huggingface_hub import HfApi

    cfg = artifacts.load_run_config(run_dir)
    card = (folder / CARD_FILE).read_text(encoding="utf-8") if (folder / CARD_FILE).is_file() else None
    if card is None or "REPO" in card:
        kind = (
            "gguf"
            if what == "gguf"
            else "adapter"
            if cfg.method.uses_adapter and what == "adapter"
            else "merged"
        )
        gguf_file = next((p.name for p in folder.glob("*.gguf")), None)
        text = card if card else Path(write_card(folder, run_dir, cfg, kind, gguf_file=gguf_file)).read_text()
        (folder / CARD_FILE).write_text(text.replace('"REPO"', f'"{repo}"'), encoding="utf-8")
    api = HfApi(token=token)
    url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    api.upload_folder(
        repo_id=repo,
        folder_path=str(folder),
        repo_type="model",
        commit_message=f"poetry_sft: {what} of {run_dir.name}",
    )
    return str(url)


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poetry-sft push", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory (runs/...)")
    parser.add_argument("--repo", required=True, help="user/name on the Hub")
    parser.add_argument("--private", action="store_true", help="create the repo private")
    parser.add_argument("--what", default="adapter", help=f"one of {', '.join(WHAT)} (default adapter)")
    args = parser.parse_args(argv)
    url = push(args.run_dir, args.repo, args.what, args.private)
    print(f"uploaded to {url}")
    return 0
