"""Model, tokenizer, quantisation and adapter configuration for one run.

Only configuration lives here: SFTTrainer wraps the model with `peft_config` itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, cast

from poetry_sft.config.schema import MethodConfig, ModelConfig, ModelHub, Precision, RunConfig
from poetry_sft.errors import ConfigError, ResourceNotFoundError
from poetry_sft.model.random_init import random_model_dir

if TYPE_CHECKING:
    import torch
    from peft import LoraConfig
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


def resolve_model_path(cfg: ModelConfig) -> str:
    """A Hub id or local directory; random-init models are built into the cache first, and with
    model.hub=modelscope a Hub id is downloaded from ModelScope into its cache."""
    if cfg.random_init:
        return str(random_model_dir(cfg.random_init))
    if cfg.hub is ModelHub.modelscope and not Path(cfg.name_or_path).is_dir():
        return modelscope_download(cfg.name_or_path, cfg.revision)
    return cfg.name_or_path


def modelscope_download(model_id: str, revision: str | None = None) -> str:
    """The local directory of `model_id` from ModelScope. Offline it fails at once, as the Hub path does."""
    try:
        from modelscope import snapshot_download
    except ImportError as err:
        raise ConfigError(
            "model.hub=modelscope needs the modelscope package. Fix: pip install 'poetry-sft[modelscope]'"
        ) from err
    with _explain_load_failure("model", model_id):
        if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
            raise OSError("offline (HF_HUB_OFFLINE=1): ModelScope is not contacted")
        return snapshot_download(model_id, **({"revision": revision} if revision else {}))


def resolve_precision(precision: Precision) -> Precision:
    return precision_choice(precision)[0]


def precision_choice(precision: Precision) -> tuple[Precision, str]:
    """The precision a run trains in, and why ("fp16: Tesla T4 (sm_75) has no native bf16").

    `torch.cuda.is_bf16_supported()` is also true where bf16 is only emulated (T4, RTX 20xx, GTX 10/16xx:
    compute capability < 8.0), so auto asks for the compute capability instead: bf16 from Ampere (sm_80) on.
    """
    import torch

    if precision is not Precision.auto:
        return precision, f"{precision}: set by train.precision"
    if not torch.cuda.is_available():
        return Precision.fp32, "fp32: no CUDA GPU (CPU training)"
    major, minor = torch.cuda.get_device_capability(0)
    card = f"{torch.cuda.get_device_name(0)} (sm_{major}{minor})"
    if major >= 8:
        return Precision.bf16, f"bf16: {card} has native bf16"
    return Precision.fp16, f"fp16: {card} has no native bf16 (only emulated), so fp16 mixed precision"


def _dtype(precision: Precision) -> torch.dtype:
    import torch

    return {Precision.bf16: torch.bfloat16, Precision.fp16: torch.float16, Precision.fp32: torch.float32}[
        precision
    ]


def load_tokenizer(name_or_path: str, revision: str | None = None) -> PreTrainedTokenizerBase:
    from transformers import AutoTokenizer

    with _explain_load_failure("tokenizer", name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, revision=revision)
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is not None:
        # A run's saved tokenizer.json can carry the left padding that batched generation switched on;
        # data preparation encodes poems one by one and must see them unpadded.
        backend.no_padding()
    if tokenizer.pad_token is None or tokenizer.pad_token_id == tokenizer.eos_token_id:
        # Padding with eos would mask every end-of-poem token out of the loss: the model never learns to stop.
        tokenizer.pad_token = "<|endoftext|>"
    return tokenizer


def load_model(cfg: RunConfig, name_or_path: str) -> PreTrainedModel:
    """The base model in the method's dtype: 4-bit NF4 for qlora, bf16/fp16/fp32 otherwise."""
    from transformers import AutoModelForCausalLM

    precision = resolve_precision(cfg.train.precision)
    kwargs: dict[str, Any] = {
        "attn_implementation": cfg.model.attn_implementation,
        "revision": cfg.model.revision,
    }
    if cfg.method.quantized:
        kwargs["quantization_config"] = quantization_config(cfg.method, precision)
        kwargs["dtype"] = compute_dtype(precision)
    elif not cfg.method.uses_adapter:
        # fp32 master weights under bf16/fp16 autocast. bf16 weights lose every AdamW step smaller than their
        # ulp (2^-8 relative): at lr 2e-5 only 30% of the elements of the tiny model at Qwen3's init scale
        # moved in a step and RMSNorm weights (~1.0) never did; fp32 masters move all of them
        # (tests/test_precision.py). Chosen over a stochastic-rounding/Kahan bf16 optimizer (torchao,
        # torch-optimi) because it needs no extra package and works with every optimizer we offer,
        # including bitsandbytes' 8-bit ones; the cost is 2 more bytes a parameter for weights and
        # gradients, which the memory plan counts (poetry_sft/model/plan.py).
        kwargs["dtype"] = _dtype(Precision.fp32)
    else:
        kwargs["dtype"] = _dtype(precision)
    with _explain_load_failure("model", name_or_path):
        model = AutoModelForCausalLM.from_pretrained(name_or_path, **kwargs)
    if cfg.method.quantized:
        from peft import prepare_model_for_kbit_training

        # Norms/embeddings to fp32 for stable 4-bit training; gradient checkpointing as the profile says.
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.hardware.gradient_checkpointing
        )
    return model


def load_for_training(
    cfg: RunConfig, name_or_path: str, adapter_dir: Path | None = None
) -> tuple[PreTrainedModel, LoraConfig | None]:
    """The model a trainer gets and the peft config it wraps it with (None: nothing to wrap). With
    `adapter_dir` (a stage on a LoRA/QLoRA run: artifacts.init_adapter_dir) that adapter is loaded onto
    the base and trains on; otherwise the method's new adapter, if it has one."""
    model = load_model(cfg, name_or_path)
    if adapter_dir is None:
        return model, peft_config(cfg.method)
    from peft import PeftModel

    with _explain_load_failure("adapter", str(adapter_dir)):
        adapted = PeftModel.from_pretrained(model, str(adapter_dir), is_trainable=True)
    return cast("PreTrainedModel", adapted), None  # a PeftModel generates and trains as the model it wraps


def _compute_precision(precision: Precision) -> Precision:
    # 4-bit matmuls dequantise into the compute dtype; bf16 also works on CPU (bitsandbytes >= 0.45).
    return Precision.bf16 if precision in (Precision.bf16, Precision.fp32) else Precision.fp16


def compute_dtype(precision: Precision) -> torch.dtype:
    """What a 4-bit base computes in for a run trained in `precision`."""
    return _dtype(_compute_precision(precision))


def quantization_config(method: MethodConfig, precision: Precision):
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=method.bnb_4bit_quant_type,
        bnb_4bit_use_double_quant=method.bnb_4bit_use_double_quant,
        bnb_4bit_compute_dtype=compute_dtype(precision),
    )


def peft_config(method: MethodConfig) -> LoraConfig | None:
    """The adapter as peft describes it; SFTTrainer wraps the model with it. None: all weights train."""
    if not method.uses_adapter:
        return None
    from peft import LoraConfig

    targets = method.target_modules
    init = {"true": True, "false": False}.get(method.init_lora_weights, method.init_lora_weights)
    return LoraConfig(
        task_type="CAUSAL_LM",
        r=method.r,
        lora_alpha=method.lora_alpha,
        lora_dropout=method.lora_dropout,
        target_modules="all-linear" if list(targets) == ["all-linear"] else list(targets),
        use_dora=method.use_dora,
        use_rslora=method.use_rslora,
        # A config string that config.method_problems checked against peft's choices; peft's Literal
        # cannot hold them all (it spells pissa_niter_N as "pissa_niter_[number of iters]").
        init_lora_weights=init,  # type: ignore[arg-type]
    )


class _explain_load_failure:
    """Turn the Hub's many failure types into one message that says how to work offline."""

    def __init__(self, what: str, name_or_path: str) -> None:
        self.what, self.name_or_path = what, name_or_path

    def __enter__(self) -> None:
        return None

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or not isinstance(exc, (OSError, ValueError, ConnectionError)):
            return  # not swallowed: the exception, if any, propagates unchanged
        local = Path(self.name_or_path).expanduser()
        if local.is_dir():  # a folder, but not a model's: empty, a download cut short, the wrong level
            raise ResourceNotFoundError(local_model_dir_problem(local, self.what, exc)) from exc
        raise ResourceNotFoundError(
            f"could not load the {self.what} '{self.name_or_path}': {str(exc).splitlines()[0]}\n"
            "  It is neither a local directory nor reachable on the Hugging Face Hub (offline? typo?).\n"
            "  Fix: download it where there is network (huggingface-cli download Qwen/Qwen3-0.6B "
            "--local-dir ./qwen3-0.6b; from mainland China: HF_ENDPOINT=https://hf-mirror.com, or "
            "modelscope download --model Qwen/Qwen3-0.6B --local_dir ./qwen3-0.6b) and run with "
            "model.name_or_path=./qwen3-0.6b,\n"
            "  or try the offline demo model: model=tiny"
        ) from exc


def local_model_dir_problem(folder: Path, what: str = "model", err: BaseException | None = None) -> str:
    """A local folder named as a model that does not hold one, in words: what is (not) in it, and the fix."""
    entries = sorted(p.name for p in folder.iterdir())
    held = (
        f"it holds {', '.join(entries[:6])}{' ...' if len(entries) > 6 else ''}" if entries else "it is empty"
    )
    why = f" ({str(err).splitlines()[0][:200]})" if err is not None and str(err) else ""
    return (
        f"could not load the {what} from the folder {folder}: {held}, not a model's config.json, weights "
        f"and tokenizer{why}.\n  Fix: download the model into it (hf download Qwen/Qwen3-0.6B --local-dir "
        f"{folder}; from mainland China: modelscope download --model Qwen/Qwen3-0.6B --local_dir {folder}), "
        "or name the folder that holds config.json"
    )
