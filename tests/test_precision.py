"""Precision: auto picks native bf16 only where the card has it; bf16 full fine-tuning follows fp32."""

from pathlib import Path

import pytest
import torch
from conftest import run_config, tiny_overrides

from poetry_sft.config.schema import Precision
from poetry_sft.model.loading import precision_choice, quantization_config
from poetry_sft.train.sft import build_trainer

CARDS = {  # name: (compute capability, what auto must pick)
    "Tesla T4": ((7, 5), Precision.fp16),
    "NVIDIA GeForce RTX 2080": ((7, 5), Precision.fp16),
    "NVIDIA GeForce RTX 3060": ((8, 6), Precision.bf16),
    "NVIDIA H100": ((9, 0), Precision.bf16),
}


def _fake_card(monkeypatch: pytest.MonkeyPatch, name: str, capability: tuple[int, int]) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    # what the old rule asked: true on a T4 too, since it counts emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)


@pytest.mark.parametrize("name", CARDS)
def test_auto_precision_follows_the_compute_capability(monkeypatch: pytest.MonkeyPatch, name: str):
    capability, expected = CARDS[name]
    _fake_card(monkeypatch, name, capability)
    precision, reason = precision_choice(Precision.auto)
    assert precision is expected
    assert reason.startswith(f"{expected}:") and f"{name} (sm_{capability[0]}{capability[1]})" in reason
    # the 4-bit base's compute dtype follows: no emulated bf16 matmuls on a T4
    compute = quantization_config(run_config(["method=qlora"]).method, precision).bnb_4bit_compute_dtype
    assert compute == (torch.float16 if expected is Precision.fp16 else torch.bfloat16)


def test_t4_reason_says_bf16_is_only_emulated(monkeypatch: pytest.MonkeyPatch):
    _fake_card(monkeypatch, "Tesla T4", (7, 5))
    assert precision_choice(Precision.auto)[1].startswith("fp16: Tesla T4 (sm_75) has no native bf16")


def test_cpu_trains_in_fp32_and_an_explicit_choice_is_kept(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert precision_choice(Precision.auto) == (Precision.fp32, "fp32: no CUDA GPU (CPU training)")
    _fake_card(monkeypatch, "Tesla T4", (7, 5))
    assert precision_choice(Precision.bf16)[0] is Precision.bf16


def _update(precision: str, poems_file: Path, tmp_path: Path, steps: int) -> dict[str, torch.Tensor]:
    overrides = tiny_overrides("full", poems_file, steps=steps) + [
        "model.random_init.initializer_range=0.02",  # Qwen3's init scale: bf16 rounding bites here
        "method.learning_rate=2e-5",  # the shipped full fine-tuning rate
        "train.warmup_ratio=0",
        f"train.precision={precision}",
    ]
    trainer = build_trainer(run_config(overrides), tmp_path / precision)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters()), "fp32 master weights"
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    trainer.train()
    return {n: p.detach().float() - before[n].float() for n, p in trainer.model.named_parameters()}


def test_bf16_full_fine_tuning_updates_every_weight_like_fp32(poems_file: Path, tmp_path: Path):
    steps = 5
    reference = _update("fp32", poems_file, tmp_path, steps)
    bf16 = _update("bf16", poems_file, tmp_path, steps)
    flat_ref = torch.cat([d.flatten() for d in reference.values()])
    flat_bf16 = torch.cat([bf16[n].flatten() for n in reference])
    cosine = torch.nn.functional.cosine_similarity(flat_ref, flat_bf16, dim=0).item()
    moved = (flat_bf16 != 0).float().mean().item()
    assert cosine >= 0.95, cosine
    assert moved >= 0.99, moved
    norms = [n for n in bf16 if "norm" in n]
    assert norms and all(bool((bf16[n] != 0).all()) for n in norms), "every RMSNorm weight moved"
