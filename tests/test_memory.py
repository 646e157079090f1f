"""The memory plan against hand arithmetic, against what peft and autograd really allocate, and in the
directions that must hold whatever the constants (checkpointing, quantisation, chunked loss, batch)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # before anything imports huggingface_hub

import dataclasses
import re

import pytest
from memory_emulation import qwen3_config

from poetry_sft.model.memory import (
    GIB,
    Architecture,
    TrainingShape,
    lora_param_count,
    over_budget_message,
    plan_memory,
    suggest_fixes,
)

QWEN3_06B = Architecture(
    vocab_size=151936,
    hidden_size=1024,
    intermediate_size=3072,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    tie_word_embeddings=True,
)
# Small enough to build in milliseconds, with GQA (4 query heads share 2 kv heads) like Qwen3.
TINY = Architecture(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=192,
    num_hidden_layers=1,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=32,
    tie_word_embeddings=True,
)
QKVO = ("q_proj", "k_proj", "v_proj", "o_proj")


def shape(method: str = "lora", **overrides: object) -> TrainingShape:
    optimizer = "paged_adamw_8bit" if method == "qlora" else "adamw_torch"
    fields: dict = dict(
        method=method,
        weight_dtype="bf16",
        optimizer=optimizer,
        micro_batch_size=4,
        seq_len=256,
        gradient_checkpointing=True,
    )
    return TrainingShape(**(fields | overrides))


def build(arch: Architecture):
    import torch
    import transformers

    torch.manual_seed(0)
    return transformers.Qwen3ForCausalLM(qwen3_config(arch))


# --- parameter counts -------------------------------------------------------------------------


def test_hand_counted_params():
    # embed 10*4 + layer (q 4*4, k 4*2, v 4*2, o 4*4, gate/up/down 3*4*8, norms 4+4+2+2) + final norm 4
    arch = Architecture(10, 4, 8, 1, 2, 1, 2, tie_word_embeddings=True)
    assert arch.num_params == 40 + (16 + 8 + 8 + 16 + 96 + 12) + 4 == 200
    assert dataclasses.replace(arch, tie_word_embeddings=False).num_params == 240  # + lm_head 10*4
    # Qwen3-0.6B: 155,582,464 embedding + 28 * 15,730,944 per layer + 1,024 final norm
    assert QWEN3_06B.num_params == 596_049_920


def test_from_hf_config_reads_qwen3_06b():
    assert Architecture.from_hf_config(qwen3_config(QWEN3_06B)) == QWEN3_06B


@pytest.mark.parametrize("tied", [True, False])
def test_param_count_matches_built_model(tied: bool):
    arch = dataclasses.replace(TINY, num_hidden_layers=2, tie_word_embeddings=tied)
    model = build(arch)
    assert arch.num_params == sum(p.numel() for p in model.parameters())
    assert sorted(arch.param_shapes()) == sorted(tuple(p.shape) for p in model.parameters())


@pytest.mark.parametrize("targets", [QKVO, ("all-linear",), ("v_proj", "down_proj")])
def test_lora_param_count_matches_peft(targets: tuple[str, ...]):
    import peft

    arch = dataclasses.replace(TINY, num_hidden_layers=2)
    target_modules = "all-linear" if targets == ("all-linear",) else list(targets)
    model = peft.get_peft_model(build(arch), peft.LoraConfig(r=8, target_modules=target_modules))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert lora_param_count(arch, 8, targets) == trainable
    assert plan_memory(arch, shape("lora", lora_targets=targets)).items["lora"] == 4 * trainable  # fp32


# --- hand arithmetic --------------------------------------------------------------------------


def test_qlora_weights_hand_computed():
    # 440,401,920 quantised weights: 0.5 byte each, one uint8 absmax per 64 (6,881,280) and one fp32 per
    # 256 absmaxes, per tensor (q/o 128, k/v 64, gate/up/down 192 -> 3,840 bytes a layer); the
    # 155,648,000 others (embedding, norms) stay bf16 without kbit upcast, fp32 with it.
    quantised = 220_200_960 + 6_881_280 + 28 * 3_840
    plan = plan_memory(QWEN3_06B, shape("qlora", kbit_upcast=False))
    assert plan.items["weights"] == quantised + 155_648_000 * 2
    assert plan_memory(QWEN3_06B, shape("qlora")).items["weights"] == quantised + 155_648_000 * 4
    no_double = plan_memory(QWEN3_06B, shape("qlora", double_quant=False)).items["weights"]
    assert no_double == 220_200_960 + 4 * 6_881_280 + 155_648_000 * 4


def test_optimizer_states_hand_computed():
    lora = lora_param_count(QWEN3_06B, 8, QKVO)  # 28 * 8 * ((1024+2048) + 2*(1024+1024) + (2048+1024))
    assert lora == 28 * 8 * (3072 + 4096 + 3072)
    assert plan_memory(QWEN3_06B, shape("lora")).items["optimizer"] == 8 * lora  # 2 fp32 states
    full = QWEN3_06B.num_params
    assert plan_memory(QWEN3_06B, shape("full")).items["optimizer"] == 2 * 2 * full  # 2 bf16 states
    # bitsandbytes 8-bit: uint8 states + an fp32 absmax per 256 values (every matrix here is a multiple
    # of 256); tensors under 4096 values (the norms: 28 * 2,304 + 1,024) keep two fp32 states, and so does
    # the (tied) embedding, which transformers' Trainer overrides to 32-bit.
    small = 28 * 2304 + 1024
    embedding = 151_936 * 1024
    big = full - small - embedding
    eight_bit = plan_memory(QWEN3_06B, shape("full", optimizer="adamw_8bit")).items["optimizer"]
    assert eight_bit == 2 * big + 2 * 4 * (big // 256) + 8 * (small + embedding)


def test_layer_activations_hand_computed():
    # Per token and layer, full fine-tuning in bf16 with a padding mask (h=1024, q=2048, kv=1024, i=3072):
    # norms 2*(4h + 4 + 2h), q/k norms 4*(q+16) + 4*(kv+8) + 2*(q+kv), SDPA 2*(q + q + q + q) + 4*16
    # + mask 2*256, MLP 3*2i, Linear inputs 2h + 2h + 2i = 76,456 bytes.
    expected = 12_296 + 18_528 + 16_960 + 18_432 + 10_240
    one, three = (dataclasses.replace(QWEN3_06B, num_hidden_layers=n) for n in (1, 3))
    no_ckpt = shape("full", gradient_checkpointing=False)
    per_layer = (
        plan_memory(three, no_ckpt).items["activations"] - plan_memory(one, no_ckpt).items["activations"]
    ) / 2
    assert per_layer == expected * no_ckpt.tokens
    # Checkpointing keeps one bf16 hidden state per layer and token.
    ckpt = shape("full")
    per_layer = (
        plan_memory(three, ckpt).items["activations"] - plan_memory(one, ckpt).items["activations"]
    ) / 2
    assert per_layer == 2 * 1024 * ckpt.tokens


# --- against what autograd saves --------------------------------------------------------------


def saved_bytes_per_layer(make_model, tokens_shape: tuple[int, int]) -> float:
    """Bytes autograd saves for backward per decoder layer: a 3-layer model minus a 1-layer one, halved.

    Distinct storages only (views and tensors saved twice count once), parameters excluded.
    """
    import torch

    totals = []
    for layers in (1, 3):
        model = make_model(dataclasses.replace(TINY, num_hidden_layers=layers))
        model.train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        saved: dict[int, int] = {}

        def pack(t: torch.Tensor, params: set[int] = params, saved: dict[int, int] = saved) -> torch.Tensor:
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        batch, seq = tokens_shape
        ids = torch.randint(0, TINY.vocab_size, (batch, seq))
        mask = torch.ones(batch, seq, dtype=torch.long)
        mask[0, -3:] = 0  # one padded row: transformers builds a mask, SDPA repeats k/v
        with (
            torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
            torch.autocast("cpu", dtype=torch.bfloat16),  # what accelerate does for bf16=True
        ):
            backbone = model.get_base_model().model if hasattr(model, "get_base_model") else model.model
            backbone(input_ids=ids, attention_mask=mask, use_cache=False)
        totals.append(sum(saved.values()))
    return (totals[1] - totals[0]) / 2


def bf16_model(arch: Architecture):
    import torch

    return build(arch).to(torch.bfloat16)


def lora_model(targets: tuple[str, ...]):
    def make(arch: Architecture):
        import peft

        target_modules = "all-linear" if targets == ("all-linear",) else list(targets)
        config = peft.LoraConfig(r=8, target_modules=target_modules, lora_dropout=0.0)
        return peft.get_peft_model(bf16_model(arch), config)

    return make


def qlora_model(arch: Architecture):
    """What the trainer will hold: NF4 base, prepare_model_for_kbit_training, fp32 adapters."""
    import tempfile

    import peft
    import torch
    import transformers

    with tempfile.TemporaryDirectory() as tmp:
        build(arch).save_pretrained(tmp)
        quantization = transformers.BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = transformers.Qwen3ForCausalLM.from_pretrained(
            tmp, quantization_config=quantization, dtype=torch.bfloat16, device_map="cpu"
        )
    model = peft.prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    # fp32 adapters: TRL casts them to bf16, train/sft.keep_adapters_fp32 casts them back
    return peft.get_peft_model(model, peft.LoraConfig(r=8, target_modules=list(QKVO), lora_dropout=0.0))


# CPU dropout saves its scaled noise in the input's dtype where CUDA's fused kernel saves a bool mask,
# so the CPU measurement runs without LoRA dropout; everything else is the same autograd graph.
@pytest.mark.parametrize(
    ("make_model", "method", "targets"),
    [
        (bf16_model, "full", QKVO),
        (lora_model(QKVO), "lora", QKVO),
        (lora_model(("all-linear",)), "lora", ("all-linear",)),
        (qlora_model, "qlora", QKVO),
    ],
    ids=["full", "lora-qkvo", "lora-all-linear", "qlora-kbit-upcast"],
)
def test_layer_activations_match_autograd(make_model, method: str, targets: tuple[str, ...]):
    pytest.importorskip("peft")
    batch, seq = 2, 128
    measured = saved_bytes_per_layer(make_model, (batch, seq))
    run = shape(method, micro_batch_size=batch, seq_len=seq, gradient_checkpointing=False)
    run = dataclasses.replace(run, lora_targets=targets, lora_dropout=0.0)
    one, three = (dataclasses.replace(TINY, num_hidden_layers=n) for n in (1, 3))
    planned = (plan_memory(three, run).items["activations"] - plan_memory(one, run).items["activations"]) / 2
    # LoRA's fp32 adapters are cast to bf16 under autocast once per layer: a few KB not per token.
    assert planned == pytest.approx(measured, rel=0.02)


# --- directions that must hold ----------------------------------------------------------------


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_checkpointing_lowers_activations(method: str):
    on = plan_memory(QWEN3_06B, shape(method, gradient_checkpointing=True))
    off = plan_memory(QWEN3_06B, shape(method, gradient_checkpointing=False))
    assert on.items["activations"] < off.items["activations"] / 5
    assert on.total < off.total


@pytest.mark.parametrize("checkpointing", [True, False])
def test_qlora_below_lora_below_full(checkpointing: bool):
    # Without kbit upcast: peft's fp32 embedding makes qlora's residual stream and MLP fp32, which
    # outweighs the 4-bit weights when every layer's activations are kept (see the next test).
    totals = [
        plan_memory(QWEN3_06B, shape(m, gradient_checkpointing=checkpointing, kbit_upcast=False)).total
        for m in ("qlora", "lora", "full")
    ]
    assert totals == sorted(totals) and len(set(totals)) == 3


def test_kbit_upcast_doubles_residual_activations():
    upcast = plan_memory(QWEN3_06B, shape("qlora", gradient_checkpointing=True))
    bf16 = plan_memory(QWEN3_06B, shape("qlora", gradient_checkpointing=True, kbit_upcast=False))
    # checkpoints: 28 hidden states per token in fp32 instead of bf16; the final norm's 4h+4 and the
    # boolean mask's s bytes are the same
    h = QWEN3_06B.hidden_size
    assert upcast.items["activations"] / bf16.items["activations"] == pytest.approx(
        (28 * 4 * h + 4 * h + 4 + 256) / (28 * 2 * h + 4 * h + 4 + 256)
    )
    assert upcast.items["weights"] > bf16.items["weights"]


@pytest.mark.parametrize("method", ["full", "lora", "qlora"])
def test_chunked_loss_lowers_logits(method: str):
    chunked = plan_memory(QWEN3_06B, shape(method, chunked_loss=True)).items["logits"]
    full_logits = plan_memory(QWEN3_06B, shape(method, chunked_loss=False)).items["logits"]
    # 1024 tokens x 151,936 logits: 12 bytes each at the loss's backward, ~1.7 GiB.
    assert full_logits > 1024 * 151_936 * 12
    # What stays is the head's own work: tiles, casts and, for full fine-tuning, its weight's gradient.
    assert chunked < full_logits / (2 if method == "full" else 5)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_doubling_batch_doubles_activations(checkpointing: bool):
    small = plan_memory(QWEN3_06B, shape(micro_batch_size=4, gradient_checkpointing=checkpointing))
    large = plan_memory(QWEN3_06B, shape(micro_batch_size=8, gradient_checkpointing=checkpointing))
    assert large.items["activations"] / small.items["activations"] == pytest.approx(2.0, rel=0.02)
    assert large.items["weights"] == small.items["weights"]


def test_paged_states_are_outside_torch_counters():
    paged = plan_memory(QWEN3_06B, shape("full", optimizer="paged_adamw_8bit"))
    plain = plan_memory(QWEN3_06B, shape("full", optimizer="adamw_8bit"))
    assert paged.items["optimizer"] == plain.items["optimizer"]
    assert paged.paged > 0.95 * 2 * QWEN3_06B.num_params
    assert paged.reserved < plain.reserved and paged.total == pytest.approx(plain.total)
    # LoRA r=8 matrices are under bitsandbytes' 1e5-value paging threshold: nothing is paged.
    assert plan_memory(QWEN3_06B, shape("qlora")).paged == 0


# --- advice -----------------------------------------------------------------------------------


def planned_gib(fix: str) -> float:
    match = re.search(r"plans?:? ([\d.]+) GiB", fix)
    assert match, fix
    return float(match.group(1))


def test_full_finetuning_cannot_fit_4gb():
    run = shape("full", optimizer="adamw_8bit")
    plan = plan_memory(QWEN3_06B, run)
    fixes = suggest_fixes(QWEN3_06B, run, budget_gib=4)
    print(plan.table(), *fixes, sep="\n")
    # bf16 weights + gradients alone take 2.2 GiB, 8-bit states 1.1 GiB, the lm_head's gradient
    # accumulators 0.9 GiB: more than a 4 GiB card holds even at batch 1 with checkpointing.
    assert plan.items["weights"] + plan.items["gradients"] + plan.items["optimizer"] > 3.3 * GIB
    assert not plan.fits(4)
    assert (
        fixes[0].startswith("method=full cannot fit in 4 GiB: even batch 1") and planned_gib(fixes[0]) > 3.8
    )
    assert any(f.startswith("method=qlora") for f in fixes)
    assert all(planned_gib(f) <= 3.8 for f in fixes[1:])


def test_fixes_are_ordered_and_each_fits():
    run = shape("lora", micro_batch_size=8, seq_len=512, gradient_checkpointing=False)
    fixes = suggest_fixes(QWEN3_06B, run, budget_gib=8)
    print(*fixes, sep="\n")
    assert fixes[0].startswith("gradient_checkpointing=true")
    assert fixes[1].startswith("per_device_train_batch_size 8 -> 4 with gradient_accumulation_steps x2")
    assert len(fixes) == 2  # qlora keeps fp32 activations (kbit upcast): no better than either fix
    assert all(planned_gib(f) <= 8 * 0.95 for f in fixes)


def test_unchunked_logits_need_a_smaller_batch():
    # 4096 tokens x 151,936 logits x 12 bytes = 7 GiB: checkpointing alone cannot help.
    run = shape("lora", micro_batch_size=8, seq_len=512, gradient_checkpointing=False, chunked_loss=False)
    fixes = suggest_fixes(QWEN3_06B, run, budget_gib=8)
    print(*fixes, sep="\n")
    assert not any(f.startswith("gradient_checkpointing") for f in fixes)
    assert any(f.startswith("per_device_train_batch_size 8 -> ") for f in fixes)


def test_no_fixes_when_it_fits():
    assert suggest_fixes(QWEN3_06B, shape("qlora"), budget_gib=4) == []
    assert over_budget_message(QWEN3_06B, shape("qlora"), budget_gib=4) is None


def test_over_budget_message_has_breakdown_and_fixes():
    message = over_budget_message(QWEN3_06B, shape("full"), budget_gib=4)
    assert message is not None
    for text in ("exceeds 3.80 GiB", "weights", "gradients", "optimizer states", "activations", "fixes:"):
        assert text in message


def test_nothing_fits_says_so():
    fixes = suggest_fixes(QWEN3_06B, shape("qlora"), budget_gib=0.5)
    assert fixes[-1].startswith("nothing fits in 0.5 GiB")


def test_table_lists_every_component_and_totals():
    table = plan_memory(QWEN3_06B, shape("full", optimizer="paged_adamw_8bit")).table()
    for label in (
        "weights",
        "LoRA adapters",
        "gradients",
        "optimizer states",
        "CUDA context",
        "of which paged",
    ):
        assert label in table
    assert "max_memory_allocated" in table and "max_memory_reserved" in table


def test_bad_shape_names_the_allowed_values():
    with pytest.raises(ValueError, match="method='qlroa' is not one of full, lora, qlora"):
        shape("qlroa")
    with pytest.raises(ValueError, match="lora_targets='qproj'"):
        shape(lora_targets=("qproj",))
    with pytest.raises(ValueError, match="micro_batch_size=0 must be >= 1"):
        shape(micro_batch_size=0)


# --- against a step on fake tensors -----------------------------------------------------------

EMULATED = [
    shape(method, optimizer=optimizer, micro_batch_size=batch, seq_len=seq_len, gradient_checkpointing=ckpt)
    for method, optimizer in [
        ("qlora", "paged_adamw_8bit"),
        ("lora", "adamw_torch"),
        ("full", "adamw_torch"),
        ("full", "adamw_8bit"),
    ]
    for batch, seq_len in [(4, 256), (8, 512)]
    for ckpt in (True, False)
] + [
    shape("lora", lora_targets=("all-linear",), lora_r=64, gradient_checkpointing=False),
    shape("lora", weight_dtype="fp16", padded=False),
    shape("qlora", kbit_upcast=False, double_quant=False, lora_targets=("all-linear",)),
    shape("full", optimizer="adafactor", gradient_checkpointing=False),
    shape("full", optimizer="adamw_torch_fused", chunked_loss=True),
    shape("full", optimizer="sgd"),
]


def emulation_id(run: TrainingShape) -> str:
    parts = [run.method, run.optimizer, run.weight_dtype, f"b{run.micro_batch_size}", f"s{run.seq_len}"]
    parts.append("ckpt" if run.gradient_checkpointing else "nockpt")
    if run.targets:
        parts.append(f"{'+'.join(run.lora_targets)}-r{run.lora_r}")
    parts += [] if run.padded else ["unpadded"]
    parts += [] if run.kbit_upcast or run.method != "qlora" else ["noupcast"]
    return "-".join(parts)


def assert_plan_matches_emulation(arch: Architecture, run: TrainingShape, rel: float) -> None:
    from memory_emulation import emulated_peak

    measured = emulated_peak(arch, run)
    plan = plan_memory(arch, run)
    predicted = plan.allocated + plan.paged  # paged states are ordinary allocations on a CPU
    print(f"{emulation_id(run)}: emulated {measured / GIB:.3f} GiB, planned {predicted / GIB:.3f} GiB")
    assert predicted == pytest.approx(measured, rel=rel)


# The hardware profiles' shapes when this was written (conf/hardware, conf/method_hardware), at
# Qwen3-0.6B's width but 2 layers deep to stay fast.
PROFILES = [
    shape("qlora"),  # 4gb
    shape("lora", micro_batch_size=8, gradient_checkpointing=False),  # 8gb
    # full_8gb: fp32 master weights under bf16 autocast, Adafactor
    shape("full", weight_dtype="fp32", compute_dtype="bf16", optimizer="adafactor", micro_batch_size=8),
]


@pytest.mark.parametrize("run", PROFILES, ids=emulation_id)
def test_profiles_match_emulation(run: TrainingShape):
    assert_plan_matches_emulation(dataclasses.replace(QWEN3_06B, num_hidden_layers=2), run, rel=0.03)


@pytest.mark.slow
@pytest.mark.parametrize("run", EMULATED, ids=emulation_id)
def test_plan_matches_emulation(run: TrainingShape):
    # The gradients in flight in a layer's backward are an estimate: within 5% on a 4-layer model,
    # where they weigh most against the checkpoints.
    assert_plan_matches_emulation(dataclasses.replace(QWEN3_06B, num_hidden_layers=4), run, rel=0.05)
