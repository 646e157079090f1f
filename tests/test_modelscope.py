"""model.hub=modelscope: the base model comes from ModelScope (stubbed at the package boundary, offline)."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
from conftest import run_config

from poetry_sft.config.schema import ModelConfig, ModelHub
from poetry_sft.errors import ResourceNotFoundError
from poetry_sft.model.loading import load_tokenizer, resolve_model_path


@pytest.fixture
def fake_modelscope(monkeypatch, tmp_path: Path) -> list:
    calls: list = []

    def snapshot_download(model_id: str, **kwargs) -> str:
        calls.append((model_id, kwargs))
        return str(tmp_path / "ms-cache" / model_id)

    monkeypatch.setitem(sys.modules, "modelscope", types.SimpleNamespace(snapshot_download=snapshot_download))
    return calls


def test_modelscope_downloads_the_hub_id_and_returns_its_directory(fake_modelscope, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    cfg = ModelConfig(name="q", name_or_path="Qwen/Qwen3-0.6B", hub=ModelHub.modelscope, revision="v1")
    assert resolve_model_path(cfg) == str(tmp_path / "ms-cache" / "Qwen/Qwen3-0.6B")
    assert fake_modelscope == [("Qwen/Qwen3-0.6B", {"revision": "v1"})]
    # The default hub and local directories never touch ModelScope.
    assert resolve_model_path(ModelConfig(name="q", name_or_path="Qwen/Qwen3-0.6B")) == "Qwen/Qwen3-0.6B"
    local = ModelConfig(name="q", name_or_path=str(tmp_path), hub=ModelHub.modelscope)
    assert resolve_model_path(local) == str(tmp_path) and len(fake_modelscope) == 1


def test_offline_modelscope_fails_at_once_with_the_hub_paths_message(fake_modelscope):
    cfg = ModelConfig(name="q", name_or_path="Qwen/Qwen3-0.6B", hub=ModelHub.modelscope)
    with pytest.raises(ResourceNotFoundError) as modelscope_error:
        resolve_model_path(cfg)  # conftest: HF_HUB_OFFLINE=1
    assert fake_modelscope == [], "nothing is downloaded offline"
    with pytest.raises(ResourceNotFoundError) as hub_error:
        load_tokenizer("Qwen/Qwen3-0.6B")
    fix = str(hub_error.value).split("\n", 1)[1]
    assert str(modelscope_error.value).split("\n", 1)[1] == fix and "modelscope download" in fix


def test_model_hub_is_a_checked_choice():
    assert run_config(["model=qwen3_0.6b", "model.hub=modelscope"]).model.hub is ModelHub.modelscope
    with pytest.raises(Exception, match="hub"):
        run_config(["model=qwen3_0.6b", "model.hub=baidu"])
