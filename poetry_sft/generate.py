"""Write poems with a finished run: reload its adapter (on the base it was trained from) or full model.

python -m poetry_sft.generate runs/<run> --title 春夜喜雨 --title 登高
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from poetry_sft import artifacts
from poetry_sft.config import DataConfig, RunConfig
from poetry_sft.data import generation_prompt
from poetry_sft.errors import PoetrySFTError, RunDirError
from poetry_sft.modeling import load_tokenizer, resolve_model_path

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def load_run(run_dir: Path) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, RunConfig]:
    """The trained model of a finished run, ready to generate: adapter-on-base, or the full model."""
    from transformers import AutoModelForCausalLM

    cfg = artifacts.load_run_config(run_dir)
    model_dir = run_dir / artifacts.MODEL_DIR
    if not model_dir.is_dir():
        raise RunDirError(f"{run_dir} has no {artifacts.MODEL_DIR}/: the run did not finish saving")
    tokenizer = load_tokenizer(str(model_dir))
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        # An unquantised base: the adapter was trained on the same weights (4-bit-rounded for qlora).
        base = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model), dtype="auto")
        model = PeftModel.from_pretrained(base, model_dir)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto")
    return model.eval(), tokenizer, cfg


def generate_poems(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    titles: list[str],
    data_cfg: DataConfig,
    max_new_tokens: int = 96,
    do_sample: bool = True,
    temperature: float = 0.8,
    top_p: float = 0.9,
    seed: int = 0,
) -> list[str]:
    """One poem per title, in one left-padded batch; generation stops at the tokenizer's eos."""
    import torch

    torch.manual_seed(seed)
    tokenizer.padding_side = "left"
    prompts = [generation_prompt(tokenizer, data_cfg, title) for title in titles]
    batch = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
    with torch.no_grad():
        output = model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature,
            top_p=top_p,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    new_tokens = output[:, batch["input_ids"].shape[1] :]
    return [text.strip() for text in tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def sample_finished_run(run_dir: Path, titles: list[str]) -> list[dict[str, str]]:
    """Reload what the run saved (not the in-memory model) and write one poem per title."""
    model, tokenizer, cfg = load_run(run_dir)
    poems = generate_poems(model, tokenizer, titles, cfg.data, seed=cfg.train.seed)
    for title, poem in zip(titles, poems, strict=True):
        print(f"\n《{title}》\n{poem}")
    return [{"title": t, "poem": p} for t, p in zip(titles, poems, strict=True)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m poetry_sft.generate", description=__doc__.splitlines()[0]
    )
    parser.add_argument("run_dir", type=Path, help="a finished run directory (runs/...)")
    parser.add_argument("--title", action="append", required=True, help="poem title/theme; repeat for more")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--greedy", action="store_true", help="deterministic decoding instead of sampling")
    args = parser.parse_args(argv)
    try:
        model, tokenizer, cfg = load_run(args.run_dir)
    except PoetrySFTError as err:
        sys.exit(f"error: {err}")
    poems = generate_poems(
        model,
        tokenizer,
        args.title,
        cfg.data,
        max_new_tokens=args.max_new_tokens,
        do_sample=not args.greedy,
        temperature=args.temperature,
    )
    for title, poem in zip(args.title, poems, strict=True):
        print(f"《{title}》\n{poem}\n")


if __name__ == "__main__":
    main()
