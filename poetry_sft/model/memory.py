"""Plan peak GPU memory for a training run before anything is loaded.

Pure arithmetic over the model's shape and the run's settings, so a config that cannot fit fails in
milliseconds, with a breakdown and concrete fixes, instead of with a CUDA OOM after the model loaded.

The plan follows what the installed stack actually does (read in the sources of torch 2.13,
transformers 5.23, peft 0.21, TRL 1.16 and bitsandbytes 0.50), for a Qwen3-style decoder:

* Weights: full/lora keep every weight in ``weight_dtype``. qlora stores the decoder's Linear weights
  as NF4 (0.5 byte/param) plus blockwise absmax (blocksize 64: fp32 absmax = 0.5 bit/param, or with
  double quant an 8-bit absmax plus an fp32 one per 256 blocks = 0.127 bit/param). Embeddings, norms
  and an untied lm_head are not quantised; peft's ``prepare_model_for_kbit_training`` upcasts them to
  fp32 (``kbit_upcast``), which also turns the residual stream and bitsandbytes' Linear outputs into
  fp32 (``Linear4bit`` casts its output back to its input's dtype).
* LoRA adapters: r*(in+out) per targeted Linear. peft stores them in fp32 (``autocast_adapter_dtype``
  defaults to True); TRL's SFTTrainer then casts the adapters of a quantised model to bf16.
* Gradients: one per trainable parameter, in its dtype. Gradient accumulation keeps them alive during
  the next micro-batch's backward, so they are counted alongside the activations.
* Optimizer: torch AdamW keeps 2 states in the parameter's dtype and its default foreach step makes a
  parameter-sized temporary (``_foreach_sqrt``); the fused one does not. bitsandbytes 8-bit Adam keeps
  2 uint8 states plus an fp32 absmax per 256 values, but fp32 states for tensors under 4096 values;
  its paged variants put states of >= 1e5 values in CUDA managed memory, which torch's allocator does
  not count and the driver can evict to CPU RAM under pressure.
* Activations: bytes that autograd saves for backward, per token and decoder layer, derived below in
  ``_layer_saved_bytes`` (SDPA: no seq^2 attention matrix; RMSNorm saves an fp32 copy of its input).
  Gradient checkpointing keeps each layer's input and recomputes one layer at a time in backward.
* Logits: TRL's SFTTrainer scores tokens with a fused, chunked LM head (``chunked_loss=True``): tiles
  of 4096 tokens x 32768 vocab, fp32 gradient accumulators, never the (tokens, 151k) logits. The plain
  ``model(labels=...)`` loss materialises the logits, an fp32 copy, fp32 log-probs and their gradient.
* Phases: the persistent state (weights, adapters, gradients, optimizer states) carries through the
  step; on top of it come, one after the other, the LM head's backward and each layer's backward (both
  beside the saved activations), the embedding's backward and the optimizer step. The peak is the
  largest of these.
* Overhead: a fragmentation margin on top of the allocator's peak, and the CUDA context, which torch's
  counters never see.

``MemoryPlan`` says which measured number each total predicts: ``allocated`` is
``torch.cuda.max_memory_allocated()``, ``reserved`` is ``torch.cuda.max_memory_reserved()``, and
``total`` (what must fit in the card) adds the CUDA context and paged optimizer states.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from poetry_sft.config.schema import OPTIMIZERS  # the optimizers a run may choose; each is modelled here

GIB = 1024**3
MIB = 1024**2

DTYPE_BYTES = {"bf16": 2, "fp16": 2, "fp32": 4}
METHODS = ("full", "lora", "qlora")
LINEAR_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

# Typical with torch 2.x + CUDA 12 lazy module loading: 300-500 MiB, never in torch's counters.
CUDA_CONTEXT_BYTES = 450 * MIB
# cuBLAS/cuBLASLt workspaces, allocated through torch's caching allocator.
CUBLAS_WORKSPACE_BYTES = 32 * MIB
# Reserved minus allocated at peak: block rounding and fragmentation from varying-size temporaries.
# A first guess, to be calibrated against torch.cuda.max_memory_reserved() on a GPU.
FRAGMENTATION = 0.10
# Fraction of the card kept free by `fits`: plan error plus the display/driver's share of the card.
DEFAULT_HEADROOM = 0.05

NF4_BLOCKSIZE = 64  # bitsandbytes' default 4-bit blocksize: one absmax per 64 weights
NESTED_BLOCKSIZE = 256  # double quant: the 8-bit absmaxes get an fp32 absmax per 256 of them
BNB_8BIT_BLOCKSIZE = 256  # 8-bit optimizer states: one fp32 absmax per 256 values
BNB_MIN_8BIT_SIZE = 4096  # smaller tensors keep fp32 optimizer states
BNB_MIN_PAGED_SIZE = 100_000  # smaller tensors are not paged
TRL_TOKEN_CHUNK = 4096  # trl/kernels/chunked_logprob.py TOKEN_CHUNK_SIZE
TRL_VOCAB_CHUNK = 32768  # trl/trainer/utils.py _CHUNKED_LOGPROB_CHUNK_SIZE


@dataclass(frozen=True)
class Architecture:
    """What the plan needs from a Qwen3-style decoder config (no biases, q/k RMSNorm, SwiGLU MLP)."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool

    @classmethod
    def from_hf_config(cls, config: Any) -> Architecture:
        """Read a transformers config (duck-typed, so no import of transformers here)."""
        if hasattr(config, "get_text_config"):
            config = config.get_text_config()
        heads = config.num_attention_heads
        return cls(
            vocab_size=config.vocab_size,
            hidden_size=config.hidden_size,
            intermediate_size=config.intermediate_size,
            num_hidden_layers=config.num_hidden_layers,
            num_attention_heads=heads,
            num_key_value_heads=getattr(config, "num_key_value_heads", None) or heads,
            head_dim=getattr(config, "head_dim", None) or config.hidden_size // heads,
            tie_word_embeddings=getattr(config, "tie_word_embeddings", True),
        )

    @property
    def q_dim(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def linear_shapes(self) -> dict[str, tuple[int, int]]:
        """(in_features, out_features) of each Linear in one decoder layer."""
        h, q, kv, i = self.hidden_size, self.q_dim, self.kv_dim, self.intermediate_size
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    def norm_sizes(self) -> list[int]:
        """Weights of one layer's RMSNorms: input, post-attention, and q/k norms over head_dim."""
        return [self.hidden_size, self.hidden_size, self.head_dim, self.head_dim]

    def param_shapes(self) -> list[tuple[int, ...]]:
        """Shape of every parameter tensor (a tied lm_head shares the embedding's)."""
        layer: list[tuple[int, ...]] = [(o, i) for i, o in self.linear_shapes().values()]
        layer += [(n,) for n in self.norm_sizes()]
        embeddings = [(self.vocab_size, self.hidden_size)] * (1 if self.tie_word_embeddings else 2)
        return embeddings + layer * self.num_hidden_layers + [(self.hidden_size,)]

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.param_shapes())


@dataclass(frozen=True)
class TrainingShape:
    """The settings of a run that decide its memory."""

    method: str  # "full" | "lora" | "qlora"
    weight_dtype: str  # "bf16" | "fp16" | "fp32": stored weights (qlora: the parts that are not quantised)
    optimizer: str  # HF `optim` name, one of OPTIMIZERS
    micro_batch_size: int  # per_device_train_batch_size
    seq_len: int  # tokens per sequence (max_length; with packing the full length)
    gradient_checkpointing: bool
    lora_r: int = 8
    lora_targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")  # or ("all-linear",)
    lora_dropout: float = 0.05  # > 0 makes every adapter save a mask and its own copy of its input
    # TRL's SFTTrainer computes the loss with a fused, chunked LM head unless a compute_loss_func or
    # label smoothing asks for full logits; False plans the plain `model(labels=...)` loss.
    chunked_loss: bool = True
    compute_dtype: str | None = None  # autocast dtype; None: same as weight_dtype
    padded: bool = True  # batches padded to the longest: SDPA gets a mask and k/v repeated to all heads
    kbit_upcast: bool = True  # qlora: prepare_model_for_kbit_training upcasts unquantised params to fp32
    double_quant: bool = True  # qlora: bnb_4bit_use_double_quant
    dora: bool = False  # DoRA (method.use_dora): a trained magnitude per output row of every adapter
    # GRPO (stage=grpo): logits are materialised for the completion positions only (TRL's logits_to_keep),
    # `loss_tokens` of them per micro-batch; before each round of steps the model generates
    # `generation_batch` sequences of `generation_tokens` (prompt + completion) with a KV cache; beta > 0
    # on a fully trained model keeps a frozen reference copy of the weights.
    loss_tokens: int | None = None  # None: every token of the micro-batch (SFT)
    generation_batch: int = 0  # 0: no generation phase (SFT)
    generation_tokens: int = 0
    reference_weights: bool = False

    def __post_init__(self) -> None:
        _check_choice("method", self.method, METHODS)
        _check_choice("weight_dtype", self.weight_dtype, tuple(DTYPE_BYTES))
        _check_choice("compute_dtype", self.compute_dtype or self.weight_dtype, tuple(DTYPE_BYTES))
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        for target in self.lora_targets:
            _check_choice("lora_targets", target, (*LINEAR_MODULES, "all-linear"))
        for name in ("micro_batch_size", "seq_len", "lora_r"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)} must be >= 1")
        if not 0 <= self.lora_dropout < 1:
            raise ValueError(f"lora_dropout={self.lora_dropout} must be in [0, 1)")

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.seq_len

    @property
    def targets(self) -> tuple[str, ...]:
        """Targeted Linear names (none for full); peft's all-linear is every Linear but the output layer."""
        if self.method == "full":
            return ()
        return LINEAR_MODULES if "all-linear" in self.lora_targets else self.lora_targets


def _check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not one of {', '.join(allowed)}")


# Held through the whole step (paged optimizer states aside, in torch's counters).
PERSISTENT = ("weights", "reference", "lora", "gradients", "optimizer")
ROW_LABELS = {
    "weights": "weights",
    "reference": "reference model (GRPO beta > 0, full)",
    "lora": "LoRA adapters",
    "gradients": "gradients",
    "optimizer": "optimizer states",
    "activations": "activations saved for backward",
    "logits": "  LM head + loss (+ activations)",
    "recompute": "  one layer's backward (+ activations)",
    "embedding_grad": "  embedding backward",
    "optimizer_step": "  optimizer step",
    "generation": "  generation: KV cache + logits (GRPO)",
    "allocator": "allocator margin",
    "cuda_context": "CUDA context",
}
PHASES_HEADER = "temporaries, the largest phase counts:"
GRPO_ROWS = ("reference", "generation")


def _peak_of_phases(items: dict[str, float]) -> float:
    """The largest of the step's phases, on top of the persistent state. Backward starts with the LM
    head and then runs layer by layer, both on top of the saved activations; the embedding's backward
    ends it and the optimizer step follows, once the activations are freed."""
    backward = items["activations"] + max(items["logits"], items["recompute"])
    return max(backward, items["embedding_grad"], items["optimizer_step"], items["generation"])


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes by component. Not all of them coexist: ``allocated`` adds the persistent ones (weights,
    adapters, gradients, optimizer states) to the largest phase of a step (``_peak_of_phases``)."""

    items: dict[str, float]
    paged: float = 0.0  # part of items["optimizer"] in CUDA managed memory (outside torch's counters)
    notes: tuple[str, ...] = ()

    @property
    def allocated(self) -> float:
        """Predicts ``torch.cuda.max_memory_allocated()``."""
        persistent = sum(self.items[name] for name in PERSISTENT) - self.paged
        return persistent + _peak_of_phases(self.items)

    @property
    def reserved(self) -> float:
        """Predicts ``torch.cuda.max_memory_reserved()``."""
        return self.allocated + self.items["allocator"]

    @property
    def total(self) -> float:
        """What the card must hold: reserved + paged optimizer states + CUDA context (nvidia-smi's peak)."""
        return self.reserved + self.paged + self.items["cuda_context"]

    def fits(self, budget_gib: float, headroom: float = DEFAULT_HEADROOM) -> bool:
        """Whether ``total`` leaves at least ``headroom`` (a fraction) of a ``budget_gib`` card free."""
        return self.total <= budget_gib * GIB * (1 - headroom)

    def table(self) -> str:
        """One line per component in GiB, then the totals and the number each one predicts."""
        lines = [f"{'component':<44}{'GiB':>8}"]
        for name, label in ROW_LABELS.items():
            if name == "logits":
                lines.append(PHASES_HEADER)
            if name in GRPO_ROWS and not self.items[name]:
                continue  # an SFT run has neither
            lines.append(f"{label:<44}{self.items[name] / GIB:>8.3f}")
        if self.paged:
            lines.append(f"{'  of which paged (managed memory)':<44}{self.paged / GIB:>8.3f}")
        lines += [
            f"{'allocated  -> torch max_memory_allocated':<44}{self.allocated / GIB:>8.3f}",
            f"{'reserved   -> torch max_memory_reserved':<44}{self.reserved / GIB:>8.3f}",
            f"{'total      -> on the card (+context, paged)':<44}{self.total / GIB:>8.3f}",
        ]
        return "\n".join(lines + [f"note: {note}" for note in self.notes])


def lora_param_count(arch: Architecture, r: int, targets: tuple[str, ...]) -> int:
    """Adapter parameters peft creates: A (r x in) and B (out x r) per targeted Linear per layer."""
    return sum(math.prod(s) for s in _lora_shapes(arch, r, targets))


def plan_memory(arch: Architecture, shape: TrainingShape) -> MemoryPlan:
    """Predict the peak memory of one training step of ``shape`` on ``arch``."""
    tensors = _trainable_shapes(arch, shape)
    param_bytes = _trainable_bytes_per_param(shape)
    trainable = sum(math.prod(s) for s in tensors) * param_bytes
    embedding = (arch.vocab_size, arch.hidden_size)
    optimizer, paged = _optimizer_state_bytes(tensors, param_bytes, shape.optimizer, embedding)
    items = {
        "weights": _weight_bytes(arch, shape),
        "reference": _weight_bytes(arch, shape) if shape.reference_weights else 0.0,
        "lora": trainable if shape.method != "full" else 0.0,
        "gradients": trainable,
        "optimizer": optimizer,
        "activations": _activation_bytes(arch, shape),
        "logits": _loss_head_bytes(arch, shape),
        "recompute": _layer_backward_bytes(arch, shape),
        "embedding_grad": _embedding_backward_bytes(arch, shape),
        "optimizer_step": _optimizer_step_bytes(tensors, param_bytes, shape.optimizer),
        "generation": _generation_bytes(arch, shape),
    }
    dynamic = items["gradients"] + _peak_of_phases(items)
    items["allocator"] = FRAGMENTATION * dynamic + CUBLAS_WORKSPACE_BYTES
    items["cuda_context"] = CUDA_CONTEXT_BYTES
    return MemoryPlan(items=items, paged=paged, notes=_notes(shape, paged))


def _notes(shape: TrainingShape, paged: float) -> tuple[str, ...]:
    notes = []
    if paged:
        notes.append("paged optimizer states live in CUDA managed memory: torch does not count them and the")
        notes.append("driver evicts them to CPU RAM under pressure (slower steps instead of an OOM)")
    if shape.method == "full" and shape.weight_dtype == "fp16":
        notes.append("Trainer(fp16=True) cannot unscale fp16 gradients: full fp16 needs weight_dtype=fp32")
    if shape.method == "qlora" and shape.kbit_upcast:
        notes.append(
            "kbit_upcast: prepare_model_for_kbit_training's fp32 embedding makes the residual stream"
        )
        notes.append(
            "and the MLP fp32 too; TRL's SFTTrainer does not call it (kbit_upcast=False plans without)"
        )
    return tuple(notes)


# --- persistent state -------------------------------------------------------------------------


def _lora_shapes(arch: Architecture, r: int, targets: tuple[str, ...]) -> list[tuple[int, ...]]:
    names = LINEAR_MODULES if "all-linear" in targets else targets
    shapes = arch.linear_shapes()
    per_layer: list[tuple[int, ...]] = []
    for name in names:
        fan_in, fan_out = shapes[name]
        per_layer += [(r, fan_in), (fan_out, r)]
    return per_layer * arch.num_hidden_layers


def _trainable_shapes(arch: Architecture, shape: TrainingShape) -> list[tuple[int, ...]]:
    """Every trainable tensor: the whole model, or the LoRA A and B matrices."""
    if shape.method == "full":
        return arch.param_shapes()
    shapes = _lora_shapes(arch, shape.lora_r, shape.lora_targets)
    if shape.dora:  # peft's lora_magnitude_vector: one value per output row of each adapted Linear
        shapes += [(arch.linear_shapes()[n][1],) for n in shape.targets] * arch.num_hidden_layers
    return shapes


def _trainable_bytes_per_param(shape: TrainingShape) -> int:
    if shape.method in ("lora", "qlora"):
        # peft's autocast_adapter_dtype=True keeps LoRA adapters in fp32 whatever the base dtype; TRL casts
        # QLoRA's to bf16, and train/sft.keep_adapters_fp32 casts them back (bf16 lost their small steps)
        return 4
    return DTYPE_BYTES[shape.weight_dtype]


def _weight_bytes(arch: Architecture, shape: TrainingShape) -> float:
    if shape.method != "qlora":
        return arch.num_params * DTYPE_BYTES[shape.weight_dtype]
    quantised = [i * o for i, o in arch.linear_shapes().values()] * arch.num_hidden_layers
    kept = arch.num_params - sum(quantised)  # embeddings, norms and an untied lm_head stay unquantised
    kept_bytes = 4 if shape.kbit_upcast else DTYPE_BYTES[shape.weight_dtype]
    return sum(_nf4_bytes(n, shape.double_quant) for n in quantised) + kept * kept_bytes


def _nf4_bytes(numel: int, double_quant: bool) -> float:
    blocks = math.ceil(numel / NF4_BLOCKSIZE)
    if not double_quant:
        return numel / 2 + 4 * blocks  # an fp32 absmax per block
    return numel / 2 + blocks + 4 * math.ceil(blocks / NESTED_BLOCKSIZE)  # uint8 absmaxes + their fp32 absmax


def _optimizer_state_bytes(
    tensors: list[tuple[int, ...]], param_bytes: int, optimizer: str, embedding: tuple[int, ...] | None = None
) -> tuple[float, float]:
    """(state bytes, of which paged) for the trainable tensors. transformers' Trainer registers a 32-bit
    override for every nn.Embedding with bitsandbytes' 8-bit optimizers: `embedding` (its shape, when
    trainable) gets fp32 states."""
    total = paged = 0.0
    for tensor_shape in tensors:
        numel = math.prod(tensor_shape)
        embedding_override = tensor_shape == embedding
        if embedding_override:
            embedding = None  # one nn.Embedding; an untied lm_head of the same shape stays 8-bit
        if optimizer in ("adamw_torch", "adamw_torch_fused"):
            state = 2 * numel * param_bytes  # exp_avg and exp_avg_sq take the parameter's dtype
        elif (
            optimizer in ("adamw_8bit", "paged_adamw_8bit")
            and numel >= BNB_MIN_8BIT_SIZE
            and not embedding_override
        ):
            state = 2 * (numel + 4 * math.ceil(numel / BNB_8BIT_BLOCKSIZE))
        elif optimizer in ("adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit"):
            state = 8 * numel  # bitsandbytes' 32-bit states are fp32 whatever the parameter's dtype
        elif optimizer == "adafactor":
            # transformers' Adafactor (no first moment by default): a row and a column second-moment
            # vector for a matrix, a full one for a vector, in the gradient's dtype.
            factored = len(tensor_shape) >= 2
            state = param_bytes * (sum(tensor_shape[-2:]) if factored else numel)
        else:
            state = 0  # sgd without momentum (HF's default) keeps no state
        total += state
        if optimizer.startswith("paged_") and numel >= BNB_MIN_PAGED_SIZE:
            paged += 2 * numel * (1 if "8bit" in optimizer else 4)  # the absmax arrays are not paged
    return total, paged


def _optimizer_step_bytes(tensors: list[tuple[int, ...]], param_bytes: int, optimizer: str) -> float:
    """Temporaries of ``optimizer.step()``, which runs after backward freed the activations."""
    numels = [math.prod(s) for s in tensors]
    if optimizer == "adamw_torch":
        return sum(numels) * param_bytes  # foreach AdamW: sqrt(exp_avg_sq) of every parameter at once
    if optimizer == "adafactor":
        # One parameter at a time in fp32: the update and its successor (or its negation) alive
        # together, plus fp32 copies of a 16-bit gradient and parameter.
        return 4 * max(numels) * (2 if param_bytes == 4 else 4)
    return 0.0  # fused AdamW, bitsandbytes and SGD update in place


# --- activations ------------------------------------------------------------------------------


def _dtypes(shape: TrainingShape) -> tuple[int, int, int]:
    """Bytes per element of (matmul outputs, residual stream, frozen-Linear outputs).

    Matmuls run in the autocast dtype. The residual stream is fp32 when the embedding is fp32 (fp32
    weights or kbit upcast), since embedding, residual adds and RMSNorm are not autocast. bitsandbytes'
    Linear4bit casts its output back to its input's dtype, so qlora's projections follow the residual.
    """
    act = DTYPE_BYTES[shape.compute_dtype or shape.weight_dtype]
    fp32_embedding = shape.weight_dtype == "fp32" or (shape.method == "qlora" and shape.kbit_upcast)
    res = 4 if fp32_embedding else act
    lin = res if shape.method == "qlora" else act
    return act, res, lin


def _layer_saved_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """Bytes one decoder layer saves for backward, per token (b*s tokens, s = seq_len).

    Autograd saves a Linear's input only when its weight trains, and a product's factor only when the
    other factor needs a gradient, so frozen layers save less than trained ones. Per layer:

    * each of the 2 RMSNorms over h: its input upcast to fp32 (4h) and 1/rms (4); a trained norm weight
      also keeps the normalised input (res*h). q_norm/k_norm do the same over the q and kv widths.
    * SDPA (flash / memory-efficient kernels, no seq^2 probabilities): q, k, v, output and an fp32
      logsumexp per head. With a padding mask transformers repeats k/v to every head and torch turns
      the boolean mask into an additive (b, 1, s, s) bias per layer, saved for backward (act*s per token).
    * SwiGLU MLP: gate output (saved by SiLU), SiLU output and up output (saved by the product).
    * Trained base Linears (full): one copy of each distinct input (q/k/v share theirs, o's is SDPA's
      output, gate/up share theirs, down's is the product); a cast from an fp32 residual is per Linear.
    * Each LoRA adapter: its dropout mask (1 byte, bool on CUDA) and its own input copy in the compute
      dtype, saved by lora_A; lora_A's output (r values) saved by lora_B. Without dropout and without a
      cast, adapters share their input tensor instead of copying it.
    """
    act, res, lin = _dtypes(shape)
    h, q, kv, i = arch.hidden_size, arch.q_dim, arch.kv_dim, arch.intermediate_size
    heads, kv_heads = arch.num_attention_heads, arch.num_key_value_heads
    full = shape.method == "full"

    norms = 2 * (4 * h + 4 + (res * h if full else 0))
    qk_norms = 4 * (q + heads) + 4 * (kv + kv_heads) + (lin * (q + kv) if full else 0)
    kv_saved = q if shape.padded else kv
    attention = act * (2 * q + 2 * kv_saved) + 4 * heads + (act * shape.seq_len if shape.padded else 0)
    mlp = 3 * lin * i
    dora = sum(2 * act * arch.linear_shapes()[n][1] for n in shape.targets) if shape.dora else 0
    return norms + qk_norms + attention + mlp + _linear_input_bytes(arch, shape) + dora


def _linear_input_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """Inputs saved for the Linears' own backward (full) and the LoRA adapters', per token."""
    act, res, lin = _dtypes(shape)
    shapes = arch.linear_shapes()
    # Which tensor each Linear reads, and that tensor's dtype: norm outputs follow the residual,
    # SDPA's output is in the compute dtype, the SwiGLU product follows the projections' dtype.
    site_dtype = {"attn_in": res, "attn_out": act, "mlp_in": res, "mlp_mid": lin}
    site_of = {
        "q_proj": "attn_in",
        "k_proj": "attn_in",
        "v_proj": "attn_in",
        "o_proj": "attn_out",
        "gate_proj": "mlp_in",
        "up_proj": "mlp_in",
        "down_proj": "mlp_mid",
    }
    already_saved = {"attn_out"}  # SDPA saves its output; a consumer that reads it uncast adds nothing
    adapter_dtype = _trainable_bytes_per_param(shape) if shape.method != "full" else act
    total = 0.0
    shared_sites: set[str] = set()
    consumers = LINEAR_MODULES if shape.method == "full" else shape.targets
    for name in consumers:
        fan_in, _ = shapes[name]
        site = site_of[name]
        if shape.method != "full":
            total += act * shape.lora_r  # lora_A's output, saved by lora_B
            if shape.lora_dropout > 0:
                total += fan_in * (1 + act)  # bool mask + this adapter's own dropout output
                continue
        # The Linear (base or lora_A) saves its input after autocast: uncast it is the shared site tensor.
        uncast = site_dtype[site] == act and (shape.method == "full" or adapter_dtype == act)
        if not uncast:
            total += fan_in * act
        elif site not in already_saved and site not in shared_sites:
            shared_sites.add(site)
            total += fan_in * act
    return total


def _activation_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """Saved for backward at its start: every layer's activations, or only every layer's input when
    checkpointing, plus the final RMSNorm's (outside the checkpointed layers) and the boolean
    (b, 1, s, s) padding mask that every layer reads."""
    _, res, _ = _dtypes(shape)
    h = arch.hidden_size
    per_layer = res * h if shape.gradient_checkpointing else _layer_saved_bytes(arch, shape)
    final_norm = 4 * h + 4 + (res * h if shape.method == "full" else 0)
    mask = shape.seq_len if shape.padded else 0
    return shape.tokens * (arch.num_hidden_layers * per_layer + final_norm + mask)


def _layer_backward_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """A layer's backward on top of the saved activations: its recomputed activations when
    checkpointing, and the gradients in flight at the peak, in the MLP's backward (which runs first):
    its three intermediates' gradients, and a down_proj adapter's input gradient on its way back
    through the casts and dropout in the adapter's dtype. A trained tied lm_head's gradient waits
    meanwhile for the embedding's, to be summed into one."""
    act, res, lin = _dtypes(shape)
    recompute = _layer_saved_bytes(arch, shape) if shape.gradient_checkpointing else 0.0
    in_flight = 3 * lin * arch.intermediate_size
    if "down_proj" in shape.targets:
        in_flight += 2 * max(_trainable_bytes_per_param(shape), res) * arch.intermediate_size
    head_trains_tied = shape.method == "full" and arch.tie_word_embeddings
    waiting_head_grad = (
        arch.vocab_size * arch.hidden_size * DTYPE_BYTES[shape.weight_dtype] if head_trains_tied else 0
    )
    return shape.tokens * (recompute + in_flight) + waiting_head_grad + _dora_weight_bytes(arch, shape)


def _dora_weight_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """DoRA's weight norm materialises, per adapted Linear and step, the (dequantised) base weight, B @ A
    and their sum in fp32: three (out, in) matrices of the largest adapted Linear at a time."""
    if not shape.dora:
        return 0.0
    return 3 * 4 * max(math.prod(arch.linear_shapes()[n]) for n in shape.targets)


def _embedding_backward_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """A trained embedding's backward builds a dense (vocab, hidden) gradient; tied, the lm_head's
    gradient is still waiting beside it (the engine sums them in place)."""
    if shape.method != "full":
        return 0.0
    grad = arch.vocab_size * arch.hidden_size * DTYPE_BYTES[shape.weight_dtype]
    # fp32 master weights: the fused head's fp32 gradient is not cast to the weight's dtype, and one
    # more (vocab, hidden) gradient is alive when the two are summed (seen in tests/memory_emulation.py).
    copies = (2 if arch.tie_word_embeddings else 1) + (1 if shape.weight_dtype == "fp32" else 0)
    return grad * copies


def _loss_head_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """Peak of the LM head and loss, reached in their backward (the first thing backward runs)."""
    act, res, _ = _dtypes(shape)
    n, h, vocab = shape.tokens, arch.hidden_size, arch.vocab_size
    head_trains = shape.method == "full"
    head_dtype = _head_weight_bytes(shape)
    if not shape.chunked_loss:
        # logits (act) -> .float() -> log_softmax saves fp32 log-probs; backward holds those, nll's
        # fp32 gradient and log_softmax's fp32 gradient at once, then casts it for the head's matmul.
        # GRPO keeps only the completion positions' logits (loss_tokens).
        logits = (shape.loss_tokens or n) * vocab * max(act + 8, 12)
        head_grad = vocab * h * head_dtype if head_trains else 0
        return logits + n * h * act + head_grad
    # TRL fused head: saves the scored hidden states (a boolean-index copy) and fp32 per-token stats.
    # Its backward recomputes the logits tile by tile into one (4096, 32768) buffer, accumulates the
    # hidden states' gradient in fp32 (returned as a copy unless the hidden states are fp32), casts a
    # hidden-state chunk and, for an lm_head stored in another dtype, each vocabulary chunk of the
    # weight (two alive while the loop rebinds it); a trained head accumulates its gradient in fp32.
    saved = n * h * res + 3 * 4 * n
    tile = min(n, TRL_TOKEN_CHUNK) * min(vocab, TRL_VOCAB_CHUNK) * act
    hidden_cast = min(n, TRL_TOKEN_CHUNK) * h * act if res != act else 0
    weight_cast = 2 * min(vocab, TRL_VOCAB_CHUNK) * h * act if head_dtype != act else 0
    grad_hidden = n * h * (4 + (res if res != 4 else 0))
    grad_weight = vocab * h * (4 + (head_dtype if head_dtype != 4 else 0)) if head_trains else 0
    return saved + tile + hidden_cast + weight_cast + grad_hidden + grad_weight


def _generation_bytes(arch: Architecture, shape: TrainingShape) -> float:
    """GRPO's sampling phase (no gradients): the KV cache of the whole generation batch at full length, the
    last position's logits with their fp32 copy and softmax (sampling), and one step's hidden states."""
    if not shape.generation_batch:
        return 0.0
    act, res, _ = _dtypes(shape)
    batch, tokens = shape.generation_batch, shape.generation_tokens
    kv_cache = 2 * arch.num_hidden_layers * arch.kv_dim * tokens * batch * act
    sampling = batch * arch.vocab_size * (act + 4 + 4)
    step = batch * (arch.hidden_size * res + arch.intermediate_size * 3 * act)
    return kv_cache + sampling + step


def _head_weight_bytes(shape: TrainingShape) -> int:
    if shape.method == "qlora" and shape.kbit_upcast:
        return 4
    return DTYPE_BYTES[shape.weight_dtype]


# --- advice -----------------------------------------------------------------------------------


def suggest_fixes(
    arch: Architecture, shape: TrainingShape, budget_gib: float, headroom: float = DEFAULT_HEADROOM
) -> list[str]:
    """Concrete changes that make ``shape`` fit, least disruptive first, each with its own plan.

    Empty when the plan already fits. Says so plainly when the method cannot fit at any setting.
    """

    def fits(candidate: TrainingShape) -> bool:
        return plan_memory(arch, candidate).fits(budget_gib, headroom)

    def total(candidate: TrainingShape) -> float:
        return plan_memory(arch, candidate).total

    def fix(candidate: TrainingShape) -> str:
        return f"{_describe(shape, candidate)} (plan: {total(candidate) / GIB:.2f} GiB)"

    if fits(shape):
        return []
    # Changes that keep what is trained, each on its own, else all together.
    same_method = [c for c in _single_changes(shape) if fits(c)]
    if batch := _largest_fitting_batch(shape, fits):
        same_method.append(batch)
    if not same_method and (combined := _fit_within_method(shape, fits)):
        same_method.append(combined)
    fixes = [fix(c) for c in same_method]
    if not same_method:
        frugal = _most_frugal(shape)
        fixes.append(
            f"method={shape.method} cannot fit in {budget_gib:g} GiB: even batch 1 with gradient "
            f"checkpointing, chunked loss and {frugal.optimizer} plans {total(frugal) / GIB:.2f} GiB"
        )
    # Another method changes what is trained: worth it only where it buys memory the fixes above do not.
    best = min((total(c) for c in same_method), default=math.inf)
    smaller = [_fit_within_method(_as_method(shape, m), fits) for m in _smaller_methods(shape.method)]
    fixes += [fix(c) for c in smaller if c and total(c) < best]
    if not same_method and not any(smaller):
        frugal = _most_frugal(_as_method(shape, "qlora"))
        fixes.append(
            f"nothing fits in {budget_gib:g} GiB: the smallest plan (qlora, batch 1, gradient checkpointing, "
            f"seq_len {shape.seq_len}) needs {total(frugal) / GIB:.2f} GiB"
        )
    return fixes


def over_budget_message(
    arch: Architecture, shape: TrainingShape, budget_gib: float, headroom: float = DEFAULT_HEADROOM
) -> str | None:
    """None when the run fits, else the breakdown and the fixes, ready for an error message."""
    plan = plan_memory(arch, shape)
    if plan.fits(budget_gib, headroom):
        return None
    limit = budget_gib * (1 - headroom)
    fixes = "\n".join(f"  - {fix}" for fix in suggest_fixes(arch, shape, budget_gib, headroom))
    return (
        f"planned peak {plan.total / GIB:.2f} GiB exceeds {limit:.2f} GiB "
        f"({budget_gib:g} GiB card, {headroom:.0%} kept free)\n{plan.table()}\nfixes:\n{fixes}"
    )


FitsBudget = Callable[[TrainingShape], bool]


def _single_changes(shape: TrainingShape) -> list[TrainingShape]:
    """Changes that keep what is trained and the batch, cheapest first: speed, then optimizer precision."""
    changes = []
    if not shape.gradient_checkpointing:
        changes.append(replace(shape, gradient_checkpointing=True))
    if not shape.chunked_loss:
        changes.append(replace(shape, chunked_loss=True))
    if shape.optimizer in ("adamw_torch", "adamw_torch_fused", "paged_adamw_32bit"):
        changes.append(replace(shape, optimizer="adamw_8bit"))
    if shape.method == "full" and shape.optimizer not in ("adafactor", "sgd"):
        # Factored second moment, no first moment: ~0 states where 8-bit AdamW keeps ~2 bytes/param.
        changes.append(replace(shape, optimizer="adafactor"))
    return changes


def _largest_fitting_batch(shape: TrainingShape, fits: FitsBudget) -> TrainingShape | None:
    """The largest divisor of the micro-batch that fits: more accumulation keeps the effective batch."""
    batch = shape.micro_batch_size
    for smaller in range(batch - 1, 0, -1):
        if batch % smaller == 0 and fits(candidate := replace(shape, micro_batch_size=smaller)):
            return candidate
    return None


def _fit_within_method(shape: TrainingShape, fits: FitsBudget) -> TrainingShape | None:
    """The first variant that fits, applying the single changes cumulatively, then a smaller batch."""
    candidate = shape
    for change in [shape, *_single_changes(shape)]:
        candidate = _merge(candidate, change, shape)
        if fits(candidate):
            return candidate
        if smaller := _largest_fitting_batch(candidate, fits):
            return smaller
    return None


def _merge(current: TrainingShape, change: TrainingShape, original: TrainingShape) -> TrainingShape:
    """Apply to ``current`` whatever ``change`` altered relative to ``original``."""
    names = ("gradient_checkpointing", "chunked_loss", "optimizer")
    altered = {n: getattr(change, n) for n in names if getattr(change, n) != getattr(original, n)}
    return replace(current, **altered)


def _smaller_methods(method: str) -> list[str]:
    return {"full": ["lora", "qlora"], "lora": ["qlora"], "qlora": []}[method]


def _as_method(shape: TrainingShape, method: str) -> TrainingShape:
    # qlora trains with bitsandbytes' paged 8-bit AdamW (the QLoRA paper's recipe, pinned by the config).
    optimizer = "paged_adamw_8bit" if method == "qlora" else shape.optimizer
    weight_dtype = "bf16" if shape.weight_dtype == "fp32" else shape.weight_dtype
    return replace(shape, method=method, optimizer=optimizer, weight_dtype=weight_dtype)


def _most_frugal(shape: TrainingShape) -> TrainingShape:
    frugal = shape
    for change in _single_changes(shape):
        frugal = _merge(frugal, change, shape)
    return replace(frugal, micro_batch_size=1)


def _describe(original: TrainingShape, changed: TrainingShape) -> str:
    """The settings ``changed`` alters, in config terms."""
    parts = []
    if changed.method != original.method:
        parts.append(f"method={changed.method}")
    if changed.weight_dtype != original.weight_dtype:
        parts.append(f"weights in {changed.weight_dtype}")
    if changed.gradient_checkpointing != original.gradient_checkpointing:
        parts.append(f"gradient_checkpointing={str(changed.gradient_checkpointing).lower()}")
    if changed.micro_batch_size != original.micro_batch_size:
        ratio = original.micro_batch_size / changed.micro_batch_size
        parts.append(
            f"per_device_train_batch_size {original.micro_batch_size} -> {changed.micro_batch_size} "
            f"with gradient_accumulation_steps x{ratio:g}"
        )
    if changed.chunked_loss != original.chunked_loss:
        parts.append("chunked loss (TRL's fused LM head, no compute_loss_func or label smoothing)")
    if changed.optimizer != original.optimizer:
        parts.append(f"optimizer {original.optimizer} -> {changed.optimizer}")
    return ", ".join(parts) or "as configured"
