"""Write poems with a finished run (its adapter on the base, or its full model), or with a base model alone.

    poetry-sft generate runs/<run> --title 春夜喜雨 --title 登高
    poetry-sft generate runs/<run> --titles-file titles.txt --form 七言绝句 --rhyme --out a.jsonl
    poetry-sft generate runs/<run> --base --titles-file titles.txt --out before.jsonl
    poetry-sft generate --model ./qwen3-0.6b --title 春夜喜雨

Sampling settings come from the run's `generation.*` config (defaults: config.SamplingConfig); flags
override them. `--out` writes JSON Lines with title, form, content and stopped_at_eos, which
`poetry-sft score poems.jsonl` reads.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from poetry_sft.config.checks import sampling_problems
from poetry_sft.config.schema import CriticConfig, DataConfig, PromptStyle, RunConfig, SamplingConfig
from poetry_sft.data import datafiles
from poetry_sft.data.prompts import asked_rhyme_group, generation_prompt, refuse_control_tokens
from poetry_sft.errors import ConfigError, command, ensure_writable
from poetry_sft.model.loading import load_tokenizer, resolve_model_path, resolve_precision
from poetry_sft.poetry import FORMS, THINK_CLOSE, THINK_OPEN, score_poems
from poetry_sft.poetry.critic import critique
from poetry_sft.run import artifacts

if TYPE_CHECKING:
    from transformers import GenerationConfig, LogitsProcessor, PreTrainedModel, PreTrainedTokenizerBase

    from poetry_sft.poetry.constrained import FormConstrainedLogitsProcessor

# Qwen3's reasoning tags. A poem never needs them, so generation may not emit them at all: together with
# the chat template's empty think block (thinking disabled) no <think> block can appear in a poem.
THINK_TOKENS = (THINK_OPEN, THINK_CLOSE)


@dataclass
class Poem:
    """One generation; `asdict` gives the record `poetry-sft score` reads."""

    title: str
    content: str
    form: str | None  # the form that was asked for (None: any)
    stopped_at_eos: bool  # False: cut off by max_new_tokens
    rhyme_group: str | None = None  # the 韵部 a rhyme-aware prompt asked for (data.rhyme_hint), full name
    score: float | None = None  # the prosody critic's score (poetry/critic.py) and its parts
    parts: dict[str, float] | None = None
    # best-of-N: every poem sampled for this title ({content, stopped_at_eos, score, parts}), best first
    candidates: list[dict[str, Any]] | None = None


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_model_dir(name_or_path: str) -> PreTrainedModel:
    """A plain transformers model (Hub id or directory) in its saved dtype, on the GPU if there is one."""
    from transformers import AutoModelForCausalLM

    from poetry_sft.model.loading import _explain_load_failure

    with _explain_load_failure("model", name_or_path):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, dtype="auto")
    return model.to(_device()).eval()


def load_base(cfg: RunConfig, dequantized: bool = False) -> PreTrainedModel:
    """The base a run's adapter was trained on: for QLoRA the same 4-bit NF4 base as in training (the
    adapter learned to correct that model, not the unquantised one: on the tiny model 0 of 6 greedy poems
    agreed between the two), unless `dequantized`; otherwise the saved weights."""
    path = resolve_model_path(cfg.model)
    if not cfg.method.quantized or dequantized:
        return load_model_dir(path)
    from transformers import AutoModelForCausalLM

    from poetry_sft.model.loading import _explain_load_failure, compute_dtype, quantization_config

    precision = resolve_precision(cfg.train.precision)
    with _explain_load_failure("model", path):
        model = AutoModelForCausalLM.from_pretrained(
            path,
            quantization_config=quantization_config(cfg.method, precision),
            dtype=compute_dtype(precision),
            device_map={"": _device()},
        )
    return model.eval()


def load_run(
    run_dir: Path, base: bool = False, dequantized_base: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, RunConfig]:
    """The trained model of a finished run, ready to generate: adapter-on-base, or the full model.

    `base=True` gives the model the run started from instead (same tokenizer, same prompts), for a
    before/after comparison. A QLoRA run's base is its 4-bit base, as in training; `dequantized_base=True`
    puts the adapter on the unquantised weights instead (what `merge` bakes in).
    """
    cfg = artifacts.load_run_config(run_dir)
    model_dir = run_dir / artifacts.MODEL_DIR
    if not model_dir.is_dir():
        raise artifacts.unfinished_error(run_dir)
    tokenizer = load_tokenizer(str(model_dir))
    if base:
        return load_base(cfg, dequantized_base), tokenizer, cfg
    if (model_dir / "adapter_config.json").is_file():
        from peft import PeftModel

        # typed as the model it wraps: a PeftModel forwards generate() and the rest to it
        adapted = PeftModel.from_pretrained(load_base(cfg, dequantized_base), model_dir)
        model = cast("PreTrainedModel", adapted)
    else:
        model = load_model_dir(str(model_dir))
    return model.eval(), tokenizer, cfg


def token_ids(tokenizer: PreTrainedTokenizerBase, tokens: tuple[str, ...]) -> list[int]:
    """Ids of the tokens the vocabulary has as single tokens (unknown ones map to unk or None)."""
    ids = [tokenizer.convert_tokens_to_ids(token) for token in tokens]
    return [i for i in ids if isinstance(i, int) and i != tokenizer.unk_token_id]


def eos_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The tokenizer's end token plus any the model's generation config names (Qwen3: <|endoftext|> too)."""
    configured = model.generation_config.eos_token_id
    configured = [] if configured is None else [configured] if isinstance(configured, int) else configured
    return list(dict.fromkeys([tokenizer.eos_token_id, *configured]))


def generation_config(
    sampling: SamplingConfig, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, max_new_tokens: int
) -> GenerationConfig:
    """Every setting explicit, so a run's poems do not depend on the generation_config.json of the base."""
    from transformers import GenerationConfig

    sampled = (
        {"temperature": sampling.temperature, "top_p": sampling.top_p, "top_k": sampling.top_k}
        if sampling.do_sample
        else {}
    )
    return GenerationConfig(
        max_new_tokens=max_new_tokens,
        do_sample=sampling.do_sample,
        # with penalize_punctuation=false the penalty is a logits processor instead (penalty_processor)
        repetition_penalty=sampling.repetition_penalty if sampling.penalize_punctuation else 1.0,
        eos_token_id=eos_token_ids(model, tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        suppress_tokens=token_ids(tokenizer, THINK_TOKENS) or None,
        use_cache=True,  # generation has no packed sequences: the KV cache is safe and fast here
        **sampled,
    )


def form_processor(
    tokenizer: PreTrainedTokenizerBase, sampling: SamplingConfig, max_new_tokens: int
) -> FormConstrainedLogitsProcessor:
    from poetry_sft.poetry.constrained import FormConstrainedLogitsProcessor

    assert sampling.form is not None
    processor = FormConstrainedLogitsProcessor(
        tokenizer,
        sampling.form,
        prompt_length=0,
        rhyme=sampling.rhyme,
        rhyme_group=sampling.rhyme_group,
        eos_token_id=tokenizer.eos_token_id,
        couplet_newline=sampling.couplet_newline,
    )
    # A token holds at least one character, so layout + end token is the budget that can never cut a poem.
    needed = len(processor.layout) + 1
    if max_new_tokens < needed:
        raise ConfigError(
            f"max_new_tokens={max_new_tokens} can cut a {sampling.form} short ({needed - 1} characters and "
            f"the end token): raise generation.max_new_tokens (or --max-new-tokens) to at least {needed}"
        )
    return processor


def penalty_processor(tokenizer: PreTrainedTokenizerBase, sampling: SamplingConfig) -> LogitsProcessor | None:
    """The repetition penalty that spares punctuation, where the settings ask for it."""
    if sampling.penalize_punctuation or sampling.repetition_penalty == 1:
        return None
    from poetry_sft.poetry.penalty import PunctuationExemptRepetitionPenalty, punctuation_token_ids

    return PunctuationExemptRepetitionPenalty(sampling.repetition_penalty, punctuation_token_ids(tokenizer))


def generate_poems(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    titles: list[str],
    data_cfg: DataConfig,
    sampling: SamplingConfig | None = None,
    *,
    constrain: bool = True,
    max_new_tokens: int | None = None,
    critic: CriticConfig | None = None,
    best_of: int | None = None,
) -> list[Poem]:
    """One poem per title, in left-padded batches of `sampling.batch_size`.

    With `sampling.form` and `constrain`, decoding is constrained to that form (and rhyme); the eval
    callback and the report pass `constrain=False` to measure what the model writes on its own.
    Generation stops at the end token; each poem records whether it got there, and the prosody critic's
    score (`critic`: the run's critic.* weights). Best-of-N (`best_of`, default sampling.best_of): N poems
    per title come out of the same generate() call (num_return_sequences), and the critic keeps the best.
    """
    import torch

    sampling = sampling or SamplingConfig()
    n = sampling.best_of if best_of is None else best_of
    budget = max_new_tokens or sampling.max_new_tokens
    gen_config = generation_config(sampling, model, tokenizer, budget)
    gen_config.num_return_sequences = n
    weights = dataclasses.asdict(critic or CriticConfig())
    if sampling.form and constrain and data_cfg.prompt_style is PromptStyle.first_line:
        raise ConfigError(
            f"--form / generation.form={sampling.form} constrains a whole poem, but this run continues a "
            "given first line (data.prompt_style=first_line): leave the form out, or train another style"
        )
    processor = form_processor(tokenizer, sampling, budget) if sampling.form and constrain else None
    penalty = penalty_processor(tokenizer, sampling)
    was_training = model.training
    model.eval()
    # A private RNG stream: the eval callback generates mid-training, and reseeding the global generator
    # there would replay the same dropout masks after every evaluation.
    cuda_devices = [model.device] if model.device.type == "cuda" else []
    try:
        with torch.random.fork_rng(devices=cuda_devices), torch.no_grad():
            torch.manual_seed(sampling.seed)
            poems: list[Poem] = []
            for start in range(0, len(titles), sampling.batch_size):
                batch = titles[start : start + sampling.batch_size]
                requests = [
                    (title, asked_rhyme_group(data_cfg, title, sampling.rhyme_group)) for title in batch
                ]
                candidates = _generate_batch(
                    model, tokenizer, requests, data_cfg, gen_config, processor, sampling.form, penalty
                )
                poems += [_best(group, weights) for group in _per_title(candidates, n)]
    finally:
        model.train(was_training)
    return poems


def score_generated(poems: list[Poem], form: str | None, critic: CriticConfig) -> dict[str, Any]:
    """score_poems of generated poems, with what each records: whether it stopped, its title (the
    critic's title-copy penalty) and the rhyme group its prompt asked for."""
    return score_poems(
        [poem.content for poem in poems],
        form,
        stopped_at_eos=[poem.stopped_at_eos for poem in poems],
        critic_weights=dataclasses.asdict(critic),
        titles=[poem.title for poem in poems],
        rhyme_groups=[poem.rhyme_group for poem in poems],
    )


def _per_title(poems: list[Poem], n: int) -> list[list[Poem]]:
    return [poems[start : start + n] for start in range(0, len(poems), n)]


def _best(candidates: list[Poem], weights: dict[str, float]) -> Poem:
    """The candidate the critic scores highest (the first on ties), with every candidate recorded."""
    for poem in candidates:
        verdict = critique(
            poem.content,
            weights,
            form=poem.form,
            rhyme_group=poem.rhyme_group,
            title=poem.title,
            stopped_at_eos=poem.stopped_at_eos,
        )
        poem.score, poem.parts = round(verdict.score, 4), {k: round(v, 4) for k, v in verdict.parts.items()}
    ranked = sorted(candidates, key=lambda poem: -(poem.score or 0.0))
    best = ranked[0]
    if len(candidates) > 1:
        fields = ("content", "stopped_at_eos", "score", "parts")
        best.candidates = [{name: getattr(poem, name) for name in fields} for poem in ranked]
    return best


def _generate_batch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    requests: list[tuple[str, str | None]],
    data_cfg: DataConfig,
    gen_config: GenerationConfig,
    processor: FormConstrainedLogitsProcessor | None,
    form: str | None,
    penalty: LogitsProcessor | None = None,
) -> list[Poem]:
    """Poems for (title, rhyme group asked for) requests: gen_config.num_return_sequences of each, in
    order. `form` is recorded as asked for, constrained or not: score measures format accuracy against it."""
    from transformers import LogitsProcessorList

    prompts = [
        generation_prompt(tokenizer, data_cfg, title, form=form, rhyme_group=group)
        for title, group in requests
    ]
    inputs = tokenizer(
        prompts, return_tensors="pt", padding=True, padding_side="left", add_special_tokens=False
    ).to(model.device)
    width = inputs["input_ids"].shape[1]
    if processor is not None:
        processor.prompt_length = width  # the constraint starts after this batch's padded prompts
    output = model.generate(  # type: ignore[operator]  # transformers types generate() as a Tensor attribute
        **inputs,
        generation_config=gen_config,
        # the penalty first, as generate() orders its own: the form's mask then has the last word
        logits_processor=LogitsProcessorList([p for p in (penalty, processor) if p is not None]),
    )
    stops = set(gen_config.eos_token_id)
    poems = []
    n = gen_config.num_return_sequences or 1
    expanded = [
        request for request in requests for _ in range(n)
    ]  # generate() keeps each prompt's N together
    for (title, group), row in zip(expanded, output[:, width:].tolist(), strict=True):
        end = next((i for i, token in enumerate(row) if token in stops), None)
        # Special tokens stay in the text: a stray <|im_start|> should count against the poem.
        content = str(tokenizer.decode(row[:end], skip_special_tokens=False)).strip()
        if data_cfg.prompt_style is PromptStyle.first_line:  # the model wrote the rest: the poem is both
            content = title + ("\n" if title.endswith(("。", "？", "！", "；")) else "") + content
        poems.append(Poem(title, content, form, stopped_at_eos=end is not None, rhyme_group=group))
    return poems


def sample_finished_run(run_dir: Path, titles: list[str]) -> list[dict[str, object]]:
    """Reload what the run saved (not the in-memory model) and write one poem per title."""
    model, tokenizer, cfg = load_run(run_dir)
    poems = generate_poems(model, tokenizer, titles, cfg.data, cfg.generation)
    for poem in poems:
        print(f"\n《{poem.title}》\n{poem.content}")
    return [dataclasses.asdict(poem) for poem in poems]


# ---------------------------------------------------------------------------------------------
# The command


def read_titles(path: Path) -> list[str]:
    """Titles from a text file (one per line; blank lines and # comments skipped) or .jsonl (`title`).
    An empty, blank or non-UTF-8 file and a broken JSON line are named with the fix (data/datafiles.py)."""
    text = datafiles.read_text(path, what="titles")  # a folder or a missing file: named with the fix
    if path.suffix != ".jsonl":
        lines = (line.strip() for line in text.splitlines())
        return [line for line in lines if line and not line.startswith("#")]
    titles = []
    for number, record in datafiles.json_lines(path, text):
        if not isinstance(record.get("title"), str):
            raise ConfigError(f'{path}:{number}: each line must be an object with a "title" string')
        titles.append(record["title"])
    return titles


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="poetry-sft generate",
        description="Write poems with a finished run, or with a base model alone.",
    )
    parser.add_argument("run_dir", type=Path, nargs="?", help="a finished run directory (runs/...)")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--base", action="store_true", help="use the run's base model, not what it trained")
    which.add_argument("--model", help="any model instead (Hub id or directory, e.g. a merged run)")
    parser.add_argument(
        "--dequantized-base",
        action="store_true",
        help="QLoRA runs: put the adapter on the unquantised base (what merge bakes in), not the 4-bit "
        "base it was trained on",
    )
    parser.add_argument(
        "--title",
        action="append",
        default=[],
        help="poem title/theme; repeat for more. What the run's prompts ask for: the first line for a "
        "data.prompt_style=first_line run, keywords (明月、孤舟) for a keywords run",
    )
    parser.add_argument("--titles-file", type=Path, help="titles, one per line (or .jsonl with 'title')")
    parser.add_argument("--per-title", type=int, default=1, help="poems per title (default 1)")
    parser.add_argument("--form", choices=FORMS, help="constrain decoding to this form")
    parser.add_argument("--rhyme", action="store_true", help="with --form: the even lines rhyme (平水韵)")
    parser.add_argument("--out", type=Path, help="write the poems here as JSON Lines (never overwritten)")
    parser.add_argument("--greedy", action="store_true", help="deterministic decoding instead of sampling")
    for name, kind in _SAMPLING_FLAGS.items():
        flag, help_ = "--" + name.replace("_", "-"), f"overrides generation.{name}" + _FLAG_HELP.get(name, "")
        if kind is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_)
        else:
            parser.add_argument(flag, type=kind, help=help_)
    return parser


# What a flag does, where its setting's name does not say it (the setting's comment in SamplingConfig does).
_FLAG_HELP = {
    "best_of": ": sample N poems per title in one batch, keep the prosody critic's best (1: plain sampling)",
    "rhyme_group": ": with --rhyme, the 平水韵 group (七阳); a rhyme-aware run's prompts ask for it",
}
# Sampling settings that get a flag of their own, read from SamplingConfig: a new setting is a new flag.
# (form, rhyme and do_sample have their own flags above; the rest only concern the training run.)
_NOT_FLAGS = {
    *("form", "rhyme", "do_sample"),  # flags of their own
    *("eval_titles", "num_eval_poems", "eval_max_new_tokens", "report", "showcase"),  # the training run's
}
_SAMPLING_FLAGS: dict[str, type] = {
    f.name: {"int": int, "float": float, "bool": bool, "str | None": str}[str(f.type)]
    for f in dataclasses.fields(SamplingConfig)
    if f.name not in _NOT_FLAGS
}


def _sampling(base: SamplingConfig, args: argparse.Namespace, rhyme_hint: bool) -> SamplingConfig:
    flags = {name: getattr(args, name) for name in _SAMPLING_FLAGS}
    changes: dict[str, Any] = {name: value for name, value in flags.items() if value is not None}
    if args.greedy:
        changes["do_sample"] = False
    if args.form:
        changes["form"] = args.form
    if args.rhyme:
        changes["rhyme"] = True
    sampling = dataclasses.replace(base, **changes)
    problems = sampling_problems(sampling, as_flags=True, rhyme_hint=rhyme_hint)
    if problems:
        raise ConfigError(
            "invalid sampling settings:\n  - "
            + "\n  - ".join(problems)
            + "\n  Fix: change "
            + ("that flag" if len(problems) == 1 else "those flags")
            + " (poetry-sft generate --help lists them)"
        )
    return sampling


def _settings(args: argparse.Namespace) -> tuple[DataConfig, SamplingConfig, CriticConfig]:
    """The prompts, sampling and critic a generation uses, read before any model loads: the run's, a
    merged run's copy, or (a bare --model) the schema's defaults."""
    if args.run_dir is None:
        if not args.model:
            raise ConfigError("give a run directory (runs/...) or --model NAME_OR_PATH")
        saved = Path(args.model) / artifacts.RUN_CONFIG_IN_MODEL  # a merged run: prompt as it trained
        if saved.is_file():
            cfg = artifacts.read_run_config(saved)
            return cfg.data, cfg.generation, cfg.critic
        # no run: the schema's default prompt, what runs train on unless data.prompt_template is set
        return DataConfig(path="none"), SamplingConfig(), CriticConfig()
    cfg = artifacts.load_run_config(args.run_dir)
    return cfg.data, cfg.generation, cfg.critic


def _load(args: argparse.Namespace) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    if args.model:
        return load_model_dir(args.model), load_tokenizer(args.model)
    model, tokenizer, _ = load_run(args.run_dir, base=args.base, dequantized_base=args.dequantized_base)
    return model, tokenizer


@command
def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    titles = args.title + (read_titles(args.titles_file) if args.titles_file else [])
    if not titles:
        raise ConfigError("no titles: give --title TITLE (repeatable) or --titles-file FILE")
    if args.per_title < 1:
        raise ConfigError(f"--per-title {args.per_title} must be at least 1")
    if args.out and args.out.exists():
        raise ConfigError(f"{args.out} exists and is never overwritten. Fix: choose another --out path")
    if args.out:
        ensure_writable(args.out, "the poems", "--out PATH")
    if wordless := [title for title in titles if not any(char.isalnum() for char in title)]:
        raise ConfigError(  # the prompt would be 《》 or 《，。》: the model is asked nothing
            f"the title {wordless[0]!r} has no words (empty, or punctuation only), so the prompt would ask "
            "for nothing.\n  Fix: give a title with words, e.g. --title 春夜喜雨"
        )
    refuse_control_tokens(None, "the title", titles)  # before the model loads; generation_prompt checks again
    data_cfg, sampling, critic = _settings(args)
    sampling = _sampling(sampling, args, data_cfg.rhyme_hint)  # the flags, checked before the model loads
    model, tokenizer = _load(args)
    repeated = [title for title in titles for _ in range(args.per_title)]
    poems = generate_poems(model, tokenizer, repeated, data_cfg, sampling, critic=critic)
    for poem in poems:
        picked = f"best of {sampling.best_of}, " if sampling.best_of > 1 else ""
        print(f"《{poem.title}》 ({picked}critic {poem.score:.2f})\n{poem.content}\n")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        lines = [json.dumps(dataclasses.asdict(poem), ensure_ascii=False) for poem in poems]
        args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"wrote {len(poems)} poems to {args.out}; score them: poetry-sft score {args.out}")
    return 0
