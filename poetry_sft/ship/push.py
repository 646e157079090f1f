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
import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from poetry_sft.errors import ConfigError, ResourceNotFoundError, RunDirError, command
from poetry_sft.run import artifacts
from poetry_sft.run.model_card import CARD_FILE, card_text

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
        if not folder.is_dir() and not artifacts.load_run_config(run_dir).method.uses_adapter:
            folder = run_dir / artifacts.MODEL_DIR  # a full run's model is already the standalone model
    else:
        exports = sorted(run_dir.glob("gguf-*"), key=lambda p: p.stat().st_mtime)
        folder = exports[-1] if exports else run_dir / "gguf-f16"
    if not folder.is_dir():
        make = {"merged": "poetry-sft merge", "gguf": "poetry-sft export"}.get(what, "")
        raise RunDirError(
            f"{folder} does not exist. Fix: {make} {run_dir} first" if make else f"{folder} is missing"
        )
    return folder


def hub_offline_variable() -> str | None:
    """The variable that puts huggingface_hub offline (it reads TRANSFORMERS_OFFLINE too), or None."""
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        if os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on"):
            return name
    return None


def check_hub_access() -> str:
    """The token, or a ResourceNotFoundError naming the fix (offline mode, no login). Never prints it."""
    from huggingface_hub import get_token

    if variable := hub_offline_variable():
        raise ResourceNotFoundError(
            f"{variable} is set, so nothing can be uploaded. Fix: unset {variable} (and, in mainland "
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
        raise ConfigError(
            f"--what {what!r} is not something push uploads. Fix: --what adapter (the run's model/, the "
            "default), merged (after poetry-sft merge) or gguf (after poetry-sft export)"
        )
    if repo.count("/") != 1 or not all(repo.split("/")):
        raise ConfigError(
            f"--repo {repo!r} is not a Hub repo id. Fix: --repo <your user or org>/<name>, e.g. --repo "
            f"me/{repo.strip('/').replace('/', '-') or 'qwen3-poet'}"
        )
    folder = folder_to_push(run_dir, what)
    token = check_hub_access()
    cfg = artifacts.load_run_config(run_dir)
    card = (folder / CARD_FILE).read_text(encoding="utf-8") if (folder / CARD_FILE).is_file() else None
    if card is None:
        kind = (
            "gguf"
            if what == "gguf"
            else "adapter"
            if cfg.method.uses_adapter and what == "adapter"
            else "merged"
        )
        gguf_file = next((p.name for p in folder.glob("*.gguf")), None)
        card = card_text(run_dir, cfg, kind, gguf_file=gguf_file)
    card = card.replace('"REPO"', f'"{repo}"')  # the usage snippet, for this repo (the local copy keeps REPO)
    with _explain_hub_failure(repo):
        return _upload(folder, repo, card, private, token, f"poetry_sft: {what} of {run_dir.name}")


def _upload(folder: Path, repo: str, card: str, private: bool, token: str, message: str) -> str:
    """The folder and its card as one commit: a cut connection leaves no half-uploaded revision on the Hub,
    and the local folder is never written."""
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    url = api.create_repo(repo, private=private, exist_ok=True, repo_type="model")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != CARD_FILE
    )
    operations = [
        CommitOperationAdd(path_in_repo=p.relative_to(folder).as_posix(), path_or_fileobj=str(p))
        for p in files
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_FILE, path_or_fileobj=card.encode("utf-8")))
    api.create_commit(repo_id=repo, operations=operations, commit_message=message, repo_type="model")
    return str(url)


@contextlib.contextmanager
def _explain_hub_failure(repo: str) -> Iterator[None]:
    """The Hub unreachable, offline mode, a refused token: one message, not an httpx traceback."""
    from huggingface_hub import constants
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    endpoint = constants.ENDPOINT
    nothing = "Nothing was uploaded (the files go up as one commit)."
    try:
        yield
    except OfflineModeIsEnabled as err:
        raise ResourceNotFoundError(
            f"huggingface_hub is in offline mode ({err}). {nothing} Fix: unset HF_HUB_OFFLINE and "
            "TRANSFORMERS_OFFLINE, then push again"
        ) from err
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        why = {
            401: "the Hub refused the token (expired or mistyped)",
            403: f"the token may not write to {repo} (a read-only token, or another user's or org's name)",
        }.get(status or 0, f"the Hub answered {status}: {str(err).splitlines()[0][:200]}")
        raise ResourceNotFoundError(
            f"could not upload to {repo} on {endpoint}: {why}. {nothing} Fix: `hf auth login` with a write "
            "token (https://huggingface.co/settings/tokens), and push to your own user/name or an org you "
            "can write to"
        ) from err
    except Exception as err:
        if not _is_network_error(err):
            raise
        detail = str(err).splitlines()[0][:200] if str(err) else ""
        raise ResourceNotFoundError(
            f"could not reach {endpoint} ({type(err).__name__}: {detail}). "
            f"{nothing} Fix: check the connection (and HF_ENDPOINT, a proxy, a mirror that accepts uploads), "
            "then push again"
        ) from err


def _is_network_error(err: BaseException) -> bool:
    """httpx's or requests' connection, timeout, proxy and TLS errors (huggingface_hub uses either)."""
    seen: BaseException | None = err
    while seen is not None:
        module = type(seen).__module__.split(".")[0]
        if module.startswith(("httpx", "httpcore", "requests", "urllib3")) or isinstance(
            seen, (ConnectionError, TimeoutError)
        ):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


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
