"""The random-init models: built locally, saved like the Hub checkpoint whose shape they copy."""

import dataclasses
import json

import pytest
import torch
from conftest import run_config
from safetensors.torch import load_file

from poetry_sft.config.schema import Precision, RandomInitSpec
from poetry_sft.errors import ConfigError
from poetry_sft.model.random_init import random_model_dir


def test_the_real_shape_model_is_saved_in_bf16_as_qwen3_0_6b_is():
    from poetry_sft.evaluate.generate import load_model_dir

    assert run_config(["model=qwen3_0.6b_random"]).model.random_init.saved_precision is Precision.bf16
    # The same build at the tiny shape (seconds, not the 1.2 GB model): the weights the seed draws, in bf16
    fp32_dir = random_model_dir(RandomInitSpec())
    bf16_dir = random_model_dir(dataclasses.replace(RandomInitSpec(), saved_precision=Precision.bf16))
    assert json.loads((bf16_dir / "config.json").read_text())["dtype"] == "bfloat16"
    fp32, bf16 = (load_file(path / "model.safetensors") for path in (fp32_dir, bf16_dir))
    assert {t.dtype for t in fp32.values()} == {torch.float32} and {t.dtype for t in bf16.values()} == {
        torch.bfloat16
    }
    assert all(torch.equal(fp32[name].to(torch.bfloat16), bf16[name]) for name in fp32)
    assert load_model_dir(str(bf16_dir)).dtype == torch.bfloat16  # dtype="auto": as the Hub model loads


def test_saved_precision_auto_is_refused():
    with pytest.raises(ConfigError, match="saved_precision=auto: weights are saved in one dtype"):
        run_config(["model=qwen3_0.6b_random", "model.random_init.saved_precision=auto"])
