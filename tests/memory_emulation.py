"""Measure a training step's peak memory without a GPU: the real model code on fake tensors.

Fake tensors carry shapes and dtypes but no data, so a step at Qwen3-0.6B's width costs seconds on a
CPU. torch's MemTracker counts the bytes of live storages (rounded like the CUDA caching allocator),
i.e. what ``torch.cuda.max_memory_allocated`` reports. The step is the steady state of gradient
accumulation: a whole accumulation cycle and all but one micro-batch of the next run untracked, then
the last micro-batch's forward and backward, gradient clipping and ``optimizer.step()`` are tracked,
with the previous micro-batches' gradients and the optimizer states alive, as in HF's Trainer.

Where a CPU run would differ from CUDA, the CUDA behaviour is mirrored:

* TRL's fused LM head folds its tiles in place in Triton and accumulates into fp32 with
  ``addmm(out_dtype=fp32)``; the torch fallback's fp32 copies of each tile are skipped.
* CUDA's fused dropout saves a bool mask (CPU dropout saves its noise in the input's dtype).
* bitsandbytes' Linear4bit cannot wrap a fake tensor; ``Fake4bit`` stores what it stores (packed
  NF4 + absmax) and computes like it (bf16 matmul on a dequantised weight, output in the input dtype).
* Paged optimizer states fall back to ordinary allocations on CPU: compare with ``allocated + paged``.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from unittest import mock

import bitsandbytes as bnb
import peft
import torch
import transformers
import trl.kernels.chunked_logprob as chunked_logprob
import trl.trainer.utils as trl_utils
from torch._subclasses.fake_tensor import FakeTensorMode, unset_fake_temporarily
from torch.distributed._tools.mem_tracker import MemTracker
from transformers.optimization import Adafactor

from poetry_sft.model.memory import Architecture, TrainingShape

TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


def emulated_peak(arch: Architecture, shape: TrainingShape, accumulation: int = 2) -> float:
    """Peak bytes of one steady-state micro-batch + optimizer step of ``shape`` on ``arch``."""

    compute = getattr(torch, TORCH_DTYPES[shape.compute_dtype or shape.weight_dtype])
    with _cuda_like_cpu(), FakeTensorMode(allow_non_fake_inputs=True):
        model = _build(arch, shape)
        params = [p for p in model.parameters() if p.requires_grad]
        with unset_fake_temporarily():  # bitsandbytes builds its quantisation maps from data
            optimizer = _optimizer(shape.optimizer, params, model)
        batch = _batch(arch, shape)

        def micro_batch() -> None:
            with torch.autocast("cpu", dtype=compute):
                loss = model(**batch, fused_lm_head=True).loss
            (loss / accumulation).backward()

        for _ in range(accumulation):
            micro_batch()
        _step(optimizer, params)
        for _ in range(accumulation - 1):
            micro_batch()

        tracker = MemTracker()
        tracker.track_external(model, optimizer)
        for param in model.parameters():  # MemTracker hooks every gradient; frozen ones cannot take a hook
            if not param.requires_grad:
                tracker._param_to_grad_hook_handles[param] = (_NoHook(), _NoHook())
        with tracker:
            micro_batch()
            _step(optimizer, params)
        ((_, peak),) = tracker.get_tracker_snapshot("peak").items()
        return float(peak["Total"])


class _NoHook:
    def remove(self) -> None:
        pass


def _step(optimizer, params) -> None:

    torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)  # HF's max_grad_norm=1.0
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _batch(arch: Architecture, shape: TrainingShape) -> dict:

    ids = torch.randint(0, arch.vocab_size, (shape.micro_batch_size, shape.seq_len))
    attention_mask = torch.ones_like(ids)
    if shape.padded:
        attention_mask[0, -3:] = 0
    return {"input_ids": ids, "attention_mask": attention_mask, "labels": ids}


def qwen3_config(arch: Architecture, max_position_embeddings: int = 1024) -> transformers.Qwen3Config:
    """The transformers config of `arch` (what the plan's arithmetic is checked against)."""
    return transformers.Qwen3Config(
        vocab_size=arch.vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_hidden_layers,
        num_attention_heads=arch.num_attention_heads,
        num_key_value_heads=arch.num_key_value_heads,
        head_dim=arch.head_dim,
        tie_word_embeddings=arch.tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
        attn_implementation="sdpa",
    )


def _build(arch: Architecture, shape: TrainingShape):
    """The model as SFTTrainer holds it: quantised + upcast (qlora), fused head, adapters, checkpointing."""

    config = qwen3_config(arch, max_position_embeddings=max(1024, shape.seq_len))
    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(getattr(torch, TORCH_DTYPES[shape.weight_dtype]))
    try:
        model = transformers.Qwen3ForCausalLM(config)
    finally:
        torch.set_default_dtype(default_dtype)
    if shape.method == "qlora":
        for layer in model.model.layers:
            for parent in (layer.self_attn, layer.mlp):
                for name, child in list(parent.named_children()):
                    if isinstance(child, torch.nn.Linear):
                        setattr(parent, name, Fake4bit(child, shape.double_quant))
        if shape.kbit_upcast:
            model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    trl_utils.add_fused_lm_head(model, outputs=("log_probs", "entropy", "is_top1"))  # what SFTTrainer adds
    if shape.method != "full":
        targets = "all-linear" if "all-linear" in shape.lora_targets else list(shape.lora_targets)
        lora = peft.LoraConfig(r=shape.lora_r, target_modules=targets, lora_dropout=shape.lora_dropout)
        model = peft.get_peft_model(model, lora)
    if shape.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if shape.method != "full":
            model.enable_input_require_grads()
    model.train()
    return model


def _optimizer(name: str, params: list, model: torch.nn.Module):

    # What transformers' Trainer builds for each `optim` (torch picks foreach on CUDA by default).
    builders = {
        "adamw_torch": lambda: torch.optim.AdamW(params, lr=1e-5, foreach=True),
        "adamw_torch_fused": lambda: torch.optim.AdamW(params, lr=1e-5, fused=True),
        "adamw_8bit": lambda: bnb.optim.AdamW(params, lr=1e-5, optim_bits=8),
        "paged_adamw_8bit": lambda: bnb.optim.AdamW(params, lr=1e-5, optim_bits=8, is_paged=True),
        "paged_adamw_32bit": lambda: bnb.optim.AdamW(params, lr=1e-5, optim_bits=32, is_paged=True),
        "adafactor": lambda: Adafactor(params, lr=1e-5, scale_parameter=False, relative_step=False),
        "sgd": lambda: torch.optim.SGD(params, lr=1e-5),
    }
    optimizer = builders[name]()
    if "8bit" in name:  # as transformers' Trainer does: embeddings keep 32-bit states
        manager = bnb.optim.GlobalOptimManager.get_instance()
        manager.initialize()  # the singleton may hold modules of earlier optimizers in this process
        for module in model.modules():
            if isinstance(module, torch.nn.Embedding):
                manager.register_module_override(module, "weight", {"optim_bits": 32})
    return optimizer


class _Matmul4bit(torch.autograd.Function):
    """bitsandbytes' MatMul4Bit, memory-wise: dequantise, matmul, save nothing of the input."""

    @staticmethod
    def forward(ctx, x, weight, out_features, in_features):
        ctx.shape = (out_features, in_features)
        return x @ torch.empty(out_features, in_features, dtype=x.dtype).t()

    @staticmethod
    def backward(ctx, grad):
        return grad @ torch.empty(ctx.shape, dtype=grad.dtype), None, None, None


class Fake4bit(torch.nn.Linear):
    """Linear4bit's storage (packed NF4 + absmax) and dtype behaviour (bf16 compute, input's dtype out)."""

    def __init__(self, linear: torch.nn.Linear, double_quant: bool) -> None:
        torch.nn.Module.__init__(self)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        numel = self.in_features * self.out_features
        blocks = math.ceil(numel / 64)
        self.weight = torch.nn.Parameter(torch.empty(numel // 2, 1, dtype=torch.uint8), requires_grad=False)
        self.register_parameter("bias", None)
        self.register_buffer(
            "absmax", torch.empty(blocks, dtype=torch.uint8 if double_quant else torch.float32)
        )
        if double_quant:
            self.register_buffer("absmax2", torch.empty(math.ceil(blocks / 256), dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = _Matmul4bit.apply(x.to(torch.bfloat16), self.weight, self.out_features, self.in_features)
        return out.to(x.dtype)


@contextlib.contextmanager
def _cuda_like_cpu() -> Iterator[None]:

    module_to = torch.nn.Module.to

    def to_unless_noop(self, *args, **kwargs):
        # Fake parameters cannot be swapped by Module.to(): skip conversions that change nothing.
        device, dtype, _, _ = torch._C._nn._parse_to(*args, **kwargs)
        tensors = [*self.parameters(), *self.buffers()]
        same_device = device is None or all(t.device.type == torch.device(device).type for t in tensors)
        same_dtype = dtype is None or all(t.dtype == dtype or not t.is_floating_point() for t in tensors)
        return self if same_device and same_dtype else module_to(self, *args, **kwargs)

    def cuda_dropout(x, p=0.5, training=True, inplace=False):
        return torch.native_dropout(x, p, training)[0] if training and p > 0 else x

    patches = [
        mock.patch.object(chunked_logprob, "_forward_tile", lambda *a, **k: None),
        mock.patch.object(chunked_logprob, "_backward_tile", lambda *a, **k: None),
        mock.patch.object(chunked_logprob, "_addmm_fp32", lambda acc, a, b: None),
        # Score every position through a reshape copy instead of a boolean-index copy: the same
        # bytes when every label counts, without a data-dependent shape.
        mock.patch.object(trl_utils, "_use_triton", lambda device: False),
        mock.patch.object(torch.nn.functional, "dropout", cuda_dropout),
        mock.patch.object(torch.nn.Module, "to", to_unless_noop),
        # peft casts new adapters to the base dtype, then back to fp32: create them in fp32.
        mock.patch.object(
            peft.tuners.tuners_utils.BaseTunerLayer,
            "_move_adapter_to_device_of_base_layer",
            lambda *a, **k: None,
        ),
    ]
    with contextlib.ExitStack() as stack:
        for patch in patches:
            stack.enter_context(patch)
        yield
