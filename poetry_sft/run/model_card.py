"""The model card (README.md) of a finished run, a merged model or a GGUF export: Chinese and English.

The Hub reads its YAML header (base model, library, languages, license, tags); `write_card` builds it
with huggingface_hub's ModelCardData and checks it by parsing the written file back. The body comes from
the run's own files: config.yaml, data_report.json, metrics.json, eval_report.json (when the report ran).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from poetry_sft.config.schema import RunConfig
from poetry_sft.data.prompts import example_request
from poetry_sft.run import artifacts

CARD_FILE = "README.md"
KINDS = ("adapter", "merged", "gguf")  # what the directory holds
# The data sets we know the licence of; others: the card asks the user to state it.
DATA_LICENSES = {
    "larryvrh/Chinese-Poems": "see https://huggingface.co/datasets/larryvrh/Chinese-Poems",
    "sample": "poems in the public domain (classical, centuries old), shipped with poetry_sft",
}
HUB_BASE = {"qwen3_0.6b": "Qwen/Qwen3-0.6B"}  # model.name -> Hub id, for random-init stand-ins none


def _read(run_dir: Path, name: str) -> dict[str, Any]:
    path = run_dir / name
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def card_text(run_dir: Path, cfg: RunConfig, kind: str = "adapter", gguf_file: str | None = None) -> str:
    from huggingface_hub import ModelCard, ModelCardData

    metrics = _read(run_dir, artifacts.METRICS_FILE)
    data_report = _read(run_dir, artifacts.DATA_REPORT_FILE)
    eval_report = _read(run_dir, "eval_report.json")
    base = HUB_BASE.get(cfg.model.name) or (None if cfg.model.random_init else cfg.model.name_or_path)
    tags = ["poetry", "classical-chinese-poetry", "trl", "sft", cfg.method.name]
    if kind == "gguf":
        tags += ["gguf", "ollama", "llama.cpp"]
    data = ModelCardData(
        base_model=base,
        library_name="peft" if kind == "adapter" and cfg.method.uses_adapter else "transformers",
        language=["zh", "en"],
        license="apache-2.0",  # Qwen3's licence
        pipeline_tag="text-generation",
        tags=tags,
        datasets=[cfg.data.path] if "/" in cfg.data.path and not Path(cfg.data.path).exists() else None,
    )
    prompt = example_request(cfg.data)
    body = f"""
# {cfg.model.name} · {cfg.method.name} · 古典诗词 / classical Chinese poet

{_kind_line(kind, cfg)}

## 简介 / Summary

- 基座 Base model: `{cfg.model.name_or_path}`{" (random-init test model)" if cfg.model.random_init else ""}
- 方法 Method: `{cfg.method.name}` (trains: {cfg.method.trains}, base: {cfg.method.base}{_adapter(cfg)})
- 训练框架 Trained with: TRL `SFTTrainer` via poetry_sft (its Hydra config: `config.yaml` of the run)
- 提示 Prompt (chat template, thinking disabled / 关闭思考): `{prompt}`

## 数据 / Data

- 来源 Source: `{cfg.data.path}` — 许可 licence: {DATA_LICENSES.get(cfg.data.path, "(state it here)")}
- {_data_line(data_report)}

## 超参数 / Hyperparameters

| key | value |
|---|---|
| learning rate | {cfg.method.learning_rate} |
| optimizer | {cfg.optimizer} |
| batch × accumulation | {_batch(cfg)} |
| max length | {cfg.hardware.max_length} |
| epochs / max steps | {cfg.train.num_train_epochs} / {cfg.train.max_steps} |
| scheduler, warmup | {cfg.train.lr_scheduler_type}, {cfg.train.warmup_ratio} |
| precision | {cfg.train.precision} |
| hardware profile | {cfg.hardware.name} ({cfg.hardware.vram_gib} GiB) |

## 结果 / Results

{_results(metrics, eval_report)}

## 显存 / Memory

{_memory(metrics)}

## 用法 / Usage

{_usage(run_dir, cfg, kind, gguf_file, prompt)}

## 用途与局限 / Intended use and limits

- 用于创作与学习古典诗词；不保证格律、史实或原创性。For writing and studying classical-style Chinese
  poems; form, rhyme, facts and originality are not guaranteed (`poetry-sft score` measures form).
- 小模型会重复、会编造；请勿用于需要事实准确的场合。A small model repeats itself and invents; not for
  anything that needs facts.
- 训练数据中的诗作可能被原样复述。It may reproduce poems of its training data verbatim.
"""
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n{body}")
    return str(card)


def write_card(out_dir: Path, run_dir: Path, cfg: RunConfig, kind: str = "adapter", **kw: Any) -> Path:
    """Write `<out_dir>/README.md` and check that the Hub metadata header parses back."""
    from huggingface_hub import ModelCard

    path = out_dir / CARD_FILE
    path.write_text(card_text(run_dir, cfg, kind, **kw), encoding="utf-8")
    parsed = ModelCard.load(path)
    assert parsed.data.language == ["zh", "en"], "the card's metadata header did not parse back"
    return path


def write_run_card(run_dir: Path, cfg: RunConfig) -> Path:
    """The finished run's card, in the run directory and beside the saved adapter/model."""
    kind = "adapter" if cfg.method.uses_adapter else "merged"
    write_card(run_dir / artifacts.MODEL_DIR, run_dir, cfg, kind)
    return write_card(run_dir, run_dir, cfg, kind)


def _kind_line(kind: str, cfg: RunConfig) -> str:
    if kind == "gguf":
        return "GGUF（已合并 LoRA），用于 Ollama / llama.cpp / LM Studio。GGUF, LoRA merged, for those apps."
    if kind == "merged" and cfg.method.uses_adapter:
        return "已合并的完整模型。The adapter merged into its base: a plain transformers model."
    if kind == "merged":
        return "完整微调的模型。A full fine-tune: a plain transformers model."
    return "LoRA 适配器，需加载在基座上。A LoRA adapter: load it on its base model (peft)."


def _batch(cfg: RunConfig) -> str:
    return f"{cfg.hardware.per_device_train_batch_size} × {cfg.hardware.gradient_accumulation_steps}"


def _adapter(cfg: RunConfig) -> str:
    if not cfg.method.uses_adapter:
        return ""
    return f", r={cfg.method.r}, alpha={cfg.method.lora_alpha}, targets={list(cfg.method.target_modules)}"


def _data_line(report: dict[str, Any]) -> str:
    if not report:
        return "数据报告缺失 / no data_report.json"
    dropped = {k: v for k, v in report.get("dropped", {}).items() if v}
    tokens = report.get("tokens", {})
    return (
        f"{report.get('rows_in')} rows in → {report.get('rows_out')} kept (train {report.get('train_rows')}, "
        f"eval {report.get('eval_rows')}); dropped: {dropped or 'none'}; tokens per example p50 "
        f"{tokens.get('p50')}, p90 {tokens.get('p90')} (`data_report.json`)"
    )


def _number(value: Any) -> str:
    """A metric for a table: 3 significant digits, "–" where it could not be measured (None)."""
    return f"{value:.3g}" if isinstance(value, (int, float)) else "–"


def _results(metrics: dict[str, Any], eval_report: dict[str, Any]) -> str:
    lines = [
        f"- eval loss 验证损失: {metrics.get('eval_loss', 'n/a'):.4f}"
        if isinstance(metrics.get("eval_loss"), float)
        else "- eval loss: n/a",
        f"- steps: {metrics.get('global_step')}, trained tokens: {metrics.get('trained_tokens')}, "
        f"tokens/s: {metrics.get('tokens_per_s')}",
    ]
    poetry = {k: v for k, v in metrics.items() if k.startswith("eval_poetry/")}
    if poetry:
        lines.append(
            "- poetry metrics at the last eval: "
            + ", ".join(f"{k[12:]} {_number(v)}" for k, v in poetry.items())
        )
    scores = eval_report.get("scores") if eval_report else None
    if scores:
        keys = [k for k, v in scores["finetuned"].items() if isinstance(v, (int, float)) or v is None]
        lines += ["", "| metric 指标 | base 基座 | fine-tuned 微调 |", "|---|---|---|"]
        base, tuned = scores["base"], scores["finetuned"]
        lines += [f"| {k} | {_number(base.get(k))} | {_number(tuned[k])} |" for k in keys]
    return "\n".join(lines)


def _memory(metrics: dict[str, Any]) -> str:
    planned = metrics.get("planned_peak_gib")
    measured = metrics.get("peak_gpu_reserved_gib") or metrics.get("peak_cpu_rss_gib")
    where = "GPU reserved" if "peak_gpu_reserved_gib" in metrics else "CPU RSS"
    return f"- planned peak 计划: {planned} GiB · measured peak 实测 ({where}): {measured} GiB"


def _usage(run_dir: Path, cfg: RunConfig, kind: str, gguf_file: str | None, prompt: str) -> str:
    if kind == "gguf":
        return (  # --jinja: llama.cpp renders the file's template (thinking off), not its built-in ChatML
            f"```sh\nllama-cli -m {gguf_file} --jinja -cnv\n"
            "ollama create poet -f Modelfile\n"
            f'ollama run poet "{prompt}"\n```'
        )
    load = (
        "from peft import AutoPeftModelForCausalLM as Model"
        if kind == "adapter" and cfg.method.uses_adapter
        else "from transformers import AutoModelForCausalLM as Model"
    ) + '\nmodel = Model.from_pretrained("REPO")'
    system = (
        f'{{"role": "system", "content": "{cfg.data.system_prompt}"}}, ' if cfg.data.system_prompt else ""
    )
    return f"""```python
{load}
from transformers import AutoTokenizer
tokenizer = AutoTokenizer.from_pretrained("REPO")
messages = [{system}{{"role": "user", "content": "{prompt}"}}]
text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True,
                                     enable_thinking=False)  # 关闭思考: as in training
ids = tokenizer(text, return_tensors="pt").to(model.device)
out = model.generate(**ids, max_new_tokens={cfg.generation.max_new_tokens}, do_sample=True,
                     temperature={cfg.generation.temperature}, top_p={cfg.generation.top_p},
                     repetition_penalty={cfg.generation.repetition_penalty})
print(tokenizer.decode(out[0, ids.input_ids.shape[1]:], skip_special_tokens=True))
```

Ollama: `poetry-sft export RUN --quant q8_0`,
then `ollama create poet -f RUN/gguf-q8_0/Modelfile`."""
