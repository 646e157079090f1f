"""`poetry-sft <verb> ...` (also `python -m poetry_sft <verb> ...`): one command, its verbs under it, as
`trl sft|dpo|grpo`, `llamafactory-cli train|chat|export` and `axolotl train|merge-lora` do.

    poetry-sft --help                       every verb, one line each
    poetry-sft <verb> --help                that verb's options
    poetry-sft method=qlora hardware=8gb    no verb, a Hydra override or flag first: `train`

Each verb is a module with `main(argv) -> exit code` and its own parser (train's is Hydra); this file only
dispatches. Why a table and argparse, not argparse sub-parsers or Typer/Click: the verbs already own their
parsers, Hydra must keep parsing train's command line, and a table names each verb without importing it,
so `poetry-sft --help` starts in a fraction of a second (sub-parsers would build every verb's parser, and
import its module, first). Shell completion: argparse has none built in (argcomplete would be one more
dependency), so there is none.
"""

from __future__ import annotations

import difflib
import importlib
import sys

from poetry_sft.errors import USER_ERROR_EXIT, ConfigError, print_error

PROG = "poetry-sft"

# verb -> (module with main(argv), one line for `poetry-sft --help`). Grouped in pipeline order.
VERBS: dict[str, tuple[str, str]] = {
    "train": (
        "poetry_sft.train.command",
        "fine-tune (Hydra: method=qlora hardware=4gb, recipe=demo, -m sweeps)",
    ),
    "plan": ("poetry_sft.model.plan", "the memory plan of a run: will it fit the card? (nothing loads)"),
    "doctor": ("poetry_sft.model.doctor", "torch, CUDA, bitsandbytes, the card, the profile it would pick"),
    "generate": ("poetry_sft.evaluate.generate", "write poems with a run or any model (--best-of N, --form)"),
    "score": ("poetry_sft.evaluate.score", "score a file of poems: form, rhyme, 平仄, diversity, critic"),
    "report": ("poetry_sft.evaluate.report", "base vs fine-tuned on the same titles: eval_report.md"),
    "sweep-report": ("poetry_sft.train.sweep_report", "rebuild a sweep's summary (csv, md, png)"),
    "merge": ("poetry_sft.ship.merge", "bake a LoRA/QLoRA adapter into a plain transformers model"),
    "export": ("poetry_sft.ship.export", "GGUF + Ollama Modelfile for Ollama, llama.cpp, LM Studio"),
    "push": ("poetry_sft.ship.push", "upload a run, its merged model or its GGUF to the Hugging Face Hub"),
    "studio": ("poetry_sft.studio.command", "the 诗坊 Poem studio in the browser (needs .[studio])"),
}


def usage() -> str:
    width = max(map(len, VERBS))
    lines = [
        f"usage: {PROG} <verb> [options]      (or: python -m poetry_sft <verb> [options])",
        "",
        "Fine-tune Qwen3-0.6B into a classical Chinese poet, then write, judge and ship its poems.",
        "",
        "verbs:",
        *(f"  {verb:<{width}}  {line}" for verb, (_, line) in VERBS.items()),
        "",
        f"{PROG} <verb> --help shows a verb's options. With no verb and a Hydra override or flag first",
        f"({PROG} method=qlora hardware=8gb, {PROG} -m method=lora,qlora, {PROG} --cfg job) it trains.",
    ]
    return "\n".join(lines)


def is_train_argument(arg: str) -> bool:
    """A Hydra override (key=value, +key=value, ~key) or flag (--cfg, -m): the command line trains."""
    return "=" in arg or arg.startswith(("-", "+", "~"))


def run_verb(verb: str, argv: list[str] | None = None) -> int:
    """The verb's main(argv); argv None: this process's own arguments (the old `python -m` entry points)."""
    module = importlib.import_module(VERBS[verb][0])
    code = module.main(sys.argv[1:] if argv is None else argv)
    return code if isinstance(code, int) else 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
    if argv[0] == "--version":
        from importlib.metadata import version

        print(f"{PROG} {version('poetry-sft')}")
        return 0
    verb = argv[0].replace("_", "-")
    if verb in VERBS:
        return run_verb(verb, argv[1:])
    if is_train_argument(argv[0]):
        return run_verb("train", argv)
    close = difflib.get_close_matches(verb, VERBS, n=1, cutoff=0.5)
    hint = f" Did you mean '{PROG} {close[0]}'?" if close else ""
    print_error(
        ConfigError(
            f"'{argv[0]}' is not a verb of {PROG}.{hint}\n  Fix: use one of {', '.join(VERBS)} "
            f"({PROG} --help lists them), or give Hydra overrides (key=value) to train."
        )
    )
    return USER_ERROR_EXIT
