"""Export a finished run as one GGUF file for llama.cpp, Ollama and LM Studio, with an Ollama Modelfile.

    poetry-sft export runs/<run> --format gguf [--quant f16|bf16|q8_0] [--out DIR]
    # default DIR: runs/<run>/gguf-<quant>; never overwritten

LoRA/QLoRA runs are merged first, exactly as `poetry-sft merge` does (into the unquantised
base). DIR then holds `<model>-<method>-<quant>.gguf`, an Ollama `Modelfile` and a README with the
`ollama create` / `llama-cli` commands. What the GGUF carries, each the usual cause of a broken export:

- the tokenizer: Qwen's byte-level BPE (`tokenizer.ggml.model=gpt2`, `pre=qwen2`), its merges, and
  the special tokens marked as control tokens;
- eos = `<|im_end|>` (the end of a chat turn, the token our poems end with), pad/bos = `<|endoftext|>`:
  a wrong eos is what makes exported models write forever;
- the chat template with thinking disabled: the run's template with `enable_thinking` fixed to false,
  so every chat app renders the empty `<think>\\n\\n</think>\\n\\n` block our prompts were trained with,
  and with the run's system prompt filled in when the chat has none;
- the run's sampling defaults (`general.sampling.*`: temperature, top_p, top_k, repeat penalty, and the
  repeat penalty's window, which llama.cpp's tools read as their defaults);
- tied embeddings: Qwen3-0.6B's lm_head *is* its embedding matrix; the file has no `output.weight`
  and llama.cpp reuses `token_embd.weight`, as for the original model.

Written with ggml's own `gguf` package (PyPI `gguf`, gguf-py from the llama.cpp repository): its
GGUFWriter, its Qwen3 tensor-name map and its Q8_0 quantiser. Not with llama.cpp's
`convert_hf_to_gguf.py`: that script is not on PyPI (it lives in the llama.cpp source tree and follows
its HEAD), and the packages that repackage it pin old gguf versions and pull in the whole converter for
what is, for one architecture, a name map and a few metadata keys. What is written here is only what
the package does not do: reading our merged model and tokenizer into those keys.

K-quants (Q4_K_M, Q5_K_M, ...) need llama.cpp's C++ quantiser (gguf-py has no K-quant encoder that
llama.cpp's importance-aware quantiser matches): export f16, then run `llama-quantize` (the message
gives the command).

Measured round trip on the tiny test model (bench/export_roundtrip.py; logits up to ~10): max |Δlogit|
against the merged HF model, read back by transformers' GGUF reader, f16 0.017, bf16 0.061, q8_0 0.25,
and 4/4 greedy poems identical for each (tests/test_export.py holds f16 to 0.05, bf16 to 0.15 and q8_0
to the same poems). Read by llama.cpp itself (`--llama-cpp`, llama-cpp-python 0.3.36 on a 2-core Xeon)
the gaps are larger, f16 0.021, bf16 0.082, q8_0 0.38, with 4/4 greedy poems identical for each.

What llama.cpp does differently, found by running it (written into the exported README):
- q8_0 crashed at the first token (SIGILL) in llama.cpp's weight repacking on a CPU with AMX;
  with repacking off (`--no-repack`) it runs;
- without Jinja rendering (`--jinja`, the default of older llama-cli/llama-server builds and of
  llama-completion), llama.cpp renders its built-in ChatML, chosen because the template contains
  `<|im_start|>`: no empty think block and no system prompt, a prompt the model never trained on. No
  template the file could carry changes that: the built-in formats are fixed, and none writes Qwen3's
  think block;
- llama.cpp and Ollama apply the repeat penalty to the last 64 tokens, transformers to the whole text
  (prompt included, and llama.cpp also counts the prompt): the file and the Modelfile set the window to
  hardware.max_length + generation.max_new_tokens tokens (`penalty_window`), which holds the whole text,
  so they penalise as `poetry-sft generate` does.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poetry_sft import atomic
from poetry_sft.config.schema import RunConfig
from poetry_sft.data.prompts import example_request
from poetry_sft.errors import ConfigError, PoetrySFTError, RunDirError, command, ensure_writable, is_disk_full
from poetry_sft.run import artifacts
from poetry_sft.run.model_card import write_card

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

FORMATS = ("gguf",)
QUANTS = ("f16", "bf16", "q8_0")
K_QUANT = re.compile(r"^(q[2-8]_k(_[sml])?|iq\d.*)$", re.IGNORECASE)
MODELFILE = "Modelfile"
README = "README.md"
END_OF_TURN = "<|im_end|>"
END_OF_TEXT = "<|endoftext|>"
# The assistant turn of Qwen3's template with thinking disabled: what every training prompt ends with.
EMPTY_THINK = "<think>\n\n</think>\n\n"


class ExportError(PoetrySFTError):
    """The export could not be written (disk full, permissions)."""


@dataclass
class Export:
    out: Path
    gguf_file: Path
    quant: str


def check_request(fmt: str, quant: str) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r} is not supported; choose {', '.join(FORMATS)}")
    if K_QUANT.match(quant):
        raise ConfigError(
            f"--quant {quant} is a llama.cpp K-/I-quant, which needs llama.cpp's own C++ quantiser; "
            "poetry_sft does not fake it. Fix: export f16 and quantise it with llama.cpp:\n"
            "  poetry-sft export RUN --quant f16\n"
            f"  llama-quantize RUN/gguf-f16/<name>-f16.gguf RUN/gguf-f16/<name>-{quant.upper()}.gguf "
            f"{quant.upper()}\n"
            "  (llama-quantize comes with llama.cpp: brew install llama.cpp, or its release binaries)"
        )
    if quant not in QUANTS:
        raise ConfigError(
            f"--quant {quant!r} is not one of {', '.join(QUANTS)}. Fix: pick one of them "
            "(K-quants such as q4_k_m: export f16, then llama-quantize)"
        )


def default_out(run_dir: Path, quant: str) -> Path:
    return run_dir / f"gguf-{quant}"


def export_run(run_dir: Path, fmt: str = "gguf", quant: str = "f16", out: Path | None = None) -> Export:
    """Merge (if needed) and write the GGUF, Modelfile and README into `out`, all or nothing."""
    check_request(fmt, quant)
    if not artifacts.is_finished(run_dir):
        if artifacts.is_run_dir(run_dir):
            raise artifacts.unfinished_error(run_dir)
        raise RunDirError(
            f"{run_dir} is not a finished run ({artifacts.METRICS_FILE} is missing): only a run that "
            "finished training is exported. Fix: let it finish (the same command resumes it), or pick a "
            "finished run"
        )
    out = out or default_out(run_dir, quant)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RunDirError(
            f"{out} exists and is not empty; it is never overwritten. Fix: choose another --out"
        )

    ensure_writable(out, "the export", "--out DIR")
    from poetry_sft.ship.merge import merged_model

    model, tokenizer, cfg, _ = merged_model(run_dir, compare=False)
    vocabulary = gguf_vocabulary(tokenizer, model.config.vocab_size)  # refuses non-BPE tokenizers early
    name = f"{cfg.model.name}-{cfg.method.name}-{quant}.gguf"
    try:
        with atomic.staged_directory(out, complete_marker=name) as staging:
            write_gguf(staging / name, model, tokenizer, cfg, quant, vocabulary)
            (staging / MODELFILE).write_text(modelfile(name, cfg), encoding="utf-8")
            card = write_card(staging, run_dir, cfg, "gguf", gguf_file=name)
            with card.open("a", encoding="utf-8") as readme:
                readme.write("\n" + export_readme(name, cfg, quant))
    except OSError as err:
        hint = "free some disk space" if is_disk_full(err, out) else "check the folder's permissions"
        raise ExportError(
            f"could not write the export to {out}: {err.strerror or err}. Nothing was left under {out}. "
            f"Fix: {hint}, or write elsewhere with --out"
        ) from err
    return Export(out, out / name, quant)


# ---------------------------------------------------------------------------------------------
# The tokenizer and the chat template


@dataclass
class Vocabulary:
    tokens: list[str]
    token_types: list[int]
    merges: list[str]


def gguf_vocabulary(tokenizer: PreTrainedTokenizerBase, vocab_size: int) -> Vocabulary:
    """Tokens (padded to the embedding's rows, as llama.cpp's converter does), types and merges."""
    import gguf

    backend = json.loads(tokenizer.backend_tokenizer.to_str())
    model = backend["model"]
    pre = json.dumps(backend.get("pre_tokenizer"))
    if model.get("type") != "BPE" or "ByteLevel" not in pre:
        raise ConfigError(
            f"GGUF stores byte-level BPE vocabularies (Qwen's); this run's tokenizer is {model.get('type')} "
            "(model=tiny's one-token-per-character vocabulary has no GGUF form). Fix: export a run of Qwen3 "
            "(or of a random model with model.random_init.vocabulary=qwen or qwen_small)"
        )
    vocab = tokenizer.get_vocab()
    if len(vocab) > vocab_size:
        raise ConfigError(
            f"the tokenizer has {len(vocab)} tokens but the model's embedding only {vocab_size} rows"
        )
    by_id = {i: token for token, i in vocab.items()}
    added = tokenizer.added_tokens_decoder
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif i in added:
            tokens.append(added[i].content)
            types.append(gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return Vocabulary(tokens, [int(t) for t in types], merges)


def no_think_chat_template(tokenizer: PreTrainedTokenizerBase, system_prompt: str) -> str:
    """The run's chat template, rendering what training rendered whoever calls it: thinking off (Qwen3's
    template reads `enable_thinking`, which llama.cpp and Ollama do not pass) and, when the chat has no
    system message, the run's system prompt (if it trained with one)."""
    prefix = "{%- set enable_thinking = false %}\n"
    if system_prompt:
        system = json.dumps(system_prompt, ensure_ascii=False)
        prefix += (
            "{%- if not messages or messages[0]['role'] != 'system' %}"
            f"{{%- set messages = [{{'role': 'system', 'content': {system}}}] + messages %}}"
            "{%- endif %}\n"
        )
    return prefix + tokenizer.chat_template


# ---------------------------------------------------------------------------------------------
# The GGUF file


def write_gguf(
    path: Path,
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    cfg: RunConfig,
    quant: str,
    vocabulary: Vocabulary,
) -> None:
    import gguf

    config = model.config.get_text_config()
    if config.model_type != "qwen3":
        raise ConfigError(f"export writes Qwen3 models; this run's model is {config.model_type}")
    arch = gguf.MODEL_ARCH.QWEN3
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_name(f"{cfg.model.name} {cfg.method.name} poet")
    writer.add_description("classical Chinese poetry fine-tune (poetry_sft)")
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)  # Qwen3-0.6B: 128, not hidden/heads = 64
    writer.add_value_length(head_dim)
    writer.add_rope_freq_base(float(_rope_theta(config)))
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    qtype = {
        "f16": gguf.GGMLQuantizationType.F16,
        "bf16": gguf.GGMLQuantizationType.BF16,
        "q8_0": gguf.GGMLQuantizationType.Q8_0,
    }[quant]
    file_type = {"f16": gguf.LlamaFileType.MOSTLY_F16, "bf16": gguf.LlamaFileType.MOSTLY_BF16}
    writer.add_file_type(file_type.get(quant, gguf.LlamaFileType.MOSTLY_Q8_0))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)

    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(vocabulary.tokens)
    writer.add_token_types(vocabulary.token_types)
    writer.add_token_merges(vocabulary.merges)
    writer.add_eos_token_id(_token_id(tokenizer, END_OF_TURN))
    writer.add_pad_token_id(_token_id(tokenizer, END_OF_TEXT))
    writer.add_bos_token_id(_token_id(tokenizer, END_OF_TEXT))
    writer.add_add_bos_token(False)  # Qwen prepends nothing
    writer.add_chat_template(no_think_chat_template(tokenizer, cfg.data.system_prompt))

    sampling = cfg.generation
    writer.add_sampling_temp(sampling.temperature if sampling.do_sample else 0.0)
    writer.add_sampling_top_p(sampling.top_p)
    writer.add_sampling_top_k(sampling.top_k)
    writer.add_sampling_penalty_repeat(sampling.repetition_penalty)
    writer.add_sampling_penalty_last_n(penalty_window(cfg))

    for name, data, data_type in gguf_tensors(model, qtype):
        writer.add_tensor(name, data, raw_dtype=data_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _token_id(tokenizer: PreTrainedTokenizerBase, token: str) -> int:
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int)  # one token in, one id out
    return token_id


def _rope_theta(config: Any) -> float:
    params: Any = getattr(config, "rope_parameters", None) or {}
    return float(params.get("rope_theta") or getattr(config, "rope_theta", 1_000_000.0))


def gguf_tensors(model: PreTrainedModel, qtype: Any):
    """(GGUF name, numpy data, GGML type) per weight. Norms stay f32 (as llama.cpp's converter keeps
    them); a tied lm_head is not written; rows Q8_0 cannot block (not a multiple of 32) fall back to f16."""
    import gguf
    import torch

    config = model.config.get_text_config()
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.QWEN3, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in model.state_dict().items():
        if tied and hf_name == "lm_head.weight":
            continue  # the same matrix as token_embd.weight; llama.cpp falls back to it
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ConfigError(f"no GGUF name for the weight {hf_name} (gguf {gguf.__name__} Qwen3 map)")
        data = tensor.detach().to(torch.float32).cpu().numpy()
        data_type = qtype if data.ndim > 1 else gguf.GGMLQuantizationType.F32
        if data_type == gguf.GGMLQuantizationType.Q8_0 and data.shape[-1] % 32:
            data_type = gguf.GGMLQuantizationType.F16
        yield name, gguf.quants.quantize(data, data_type), data_type


# ---------------------------------------------------------------------------------------------
# Beside the GGUF: Ollama's Modelfile and the README


def ollama_template() -> str:
    """Qwen3's chat turn in Ollama's Go-template syntax, thinking disabled (the empty think block), as in
    training. Ollama renders the prompt up to {{ .Response }}."""
    return (
        "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
        "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
        f"<|im_start|>assistant\n{EMPTY_THINK}{{{{ .Response }}}}<|im_end|>\n"
    )


def penalty_window(cfg: RunConfig) -> int:
    """How many tokens back llama.cpp and Ollama should apply the repeat penalty (their default: 64).
    transformers penalises every token of the text, prompt included; llama.cpp also counts the prompt, so a
    window that holds the longest prompt we trained with plus the longest poem we write gives the same
    penalty."""
    return cfg.hardware.max_length + cfg.generation.max_new_tokens


def modelfile(gguf_name: str, cfg: RunConfig) -> str:
    sampling = cfg.generation
    lines = [
        f"# Ollama: ollama create poet -f {MODELFILE}   (run in this folder)",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{ollama_template()}"""',
    ]
    if cfg.data.system_prompt:
        lines.append(f'SYSTEM """{cfg.data.system_prompt}"""')
    lines += [
        f'PARAMETER stop "{END_OF_TURN}"',
        f'PARAMETER stop "{END_OF_TEXT}"',
        f"PARAMETER temperature {sampling.temperature if sampling.do_sample else 0}",
        f"PARAMETER top_p {sampling.top_p}",
        f"PARAMETER top_k {sampling.top_k}",
        f"PARAMETER repeat_penalty {sampling.repetition_penalty}",
        f"PARAMETER repeat_last_n {penalty_window(cfg)}",  # the whole prompt and poem, as transformers does
        f"PARAMETER num_predict {sampling.max_new_tokens}",
    ]
    return "\n".join(lines) + "\n"


def _hint_note(cfg: RunConfig) -> str:
    """How to ask a rhyme-aware run (data.rhyme_hint) for a rhyme group, where our generate does it itself."""
    if not cfg.data.rhyme_hint:
        return ""
    from poetry_sft.poetry.rhyme_hint import level_group_labels

    return (
        "\nIt was trained with rhyme-aware prompts: end the request with 「押<韵部>韵，韵脚可用："
        "<a few characters of that group>。」, as above. The level-tone groups: "
        + "、".join(level_group_labels())
        + "; each group's commonest rhyme characters are in poetry_sft/poetry/rhyme_chars.json.\n"
    )


def export_readme(gguf_name: str, cfg: RunConfig, quant: str) -> str:
    sampling = cfg.generation
    prompt = example_request(cfg.data)
    f16_name, q4_name = (gguf_name.replace(f"-{quant}.gguf", f"-{q}.gguf") for q in ("f16", "Q4_K_M"))
    window = penalty_window(cfg)
    flags = (
        f"--temp {sampling.temperature} --top-p {sampling.top_p} --top-k {sampling.top_k} "
        f"--repeat-penalty {sampling.repetition_penalty} --repeat-last-n {window} "
        f"-n {sampling.max_new_tokens}"
    )
    no_repack = " --no-repack" if quant == "q8_0" else ""
    punctuation = (
        ""
        if sampling.penalize_punctuation
        else "\nThis run's own generation spares punctuation from the penalty "
        "(generation.penalize_punctuation=false); llama.cpp and Ollama cannot, so their poems may end lines "
        "later.\n"
    )
    return f"""## GGUF ({quant}): llama.cpp, Ollama, LM Studio

`{gguf_name}` holds the model (LoRA merged), its tokenizer, the chat template with thinking disabled,
eos `<|im_end|>` and the run's sampling defaults. Ask with the prompt it was trained on:

    {prompt}
{_hint_note(cfg)}

### llama.cpp

    llama-cli -m {gguf_name} --jinja -cnv {flags}{no_repack}
    llama-server -m {gguf_name} --jinja {flags}{no_repack}      # OpenAI-compatible API on :8080

Always pass `--jinja`: it renders the chat template stored in the file, with the empty think block
(`<think>\\n\\n</think>`) the model was trained after and the run's system prompt. Without it (the
default of older llama.cpp builds and of llama-completion) llama.cpp renders its built-in ChatML
instead: no think block and no system prompt, a prompt the model was never trained on.

`--repeat-last-n {window}` (also the file's default) applies the repeat penalty to the whole prompt and
poem, as `poetry-sft generate` (transformers) does; llama.cpp's own default is the last 64 tokens,
which samples differently.
{punctuation}{_q8_0_note() if quant == "q8_0" else ""}
### Ollama

    ollama create poet -f {MODELFILE}
    ollama run poet "{prompt}"

The Modelfile sets the same template, stop tokens and sampling (`repeat_last_n {window}`).

### LM Studio

    lms import {gguf_name}

or drag the file into LM Studio's "My Models"; it reads the chat template from the file.

### Smaller files (Q4_K_M)

K-quants need llama.cpp's quantiser; start from an f16 export:

    llama-quantize {f16_name} {q4_name} Q4_K_M
"""


def _q8_0_note() -> str:
    return """
**q8_0 on CPUs with AMX** (recent Intel Xeons: `grep -o amx_int8 /proc/cpuinfo`): llama.cpp repacks q8_0
weights for AMX when it loads them, and on such a CPU that crashed at the first token (Illegal
instruction; llama.cpp of llama-cpp-python 0.3.36). Turn repacking off, as the commands
above do: `--no-repack` (`-nr`) for llama-cli and llama-server. llama-cpp-python has no option for it
(an unknown keyword such as `use_extra_bufts=False` is silently ignored); set the model parameter
while the model loads:

    import llama_cpp
    from llama_cpp import llama_cpp as lib
    defaults = lib.llama_model_default_params
    def no_repack():
        params = defaults()
        params.use_extra_bufts = False
        return params
    lib.llama_model_default_params = no_repack
    llm = llama_cpp.Llama(model_path="MODEL-q8_0.gguf")

f16 and bf16 ran with repacking on.
"""


@command
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="poetry-sft export", description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a finished run directory (runs/...)")
    parser.add_argument("--format", default="gguf", help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--quant", default="f16", help=f"one of {', '.join(QUANTS)} (default f16)")
    parser.add_argument("--out", type=Path, help="where to write (default RUN_DIR/gguf-<quant>)")
    args = parser.parse_args(argv)
    result = export_run(args.run_dir, args.format, args.quant.lower(), args.out)
    size = result.gguf_file.stat().st_size / 2**20
    print(f"wrote {result.gguf_file} ({size:.1f} MiB), {MODELFILE} and {README} in {result.out}")
    print(f"Ollama: cd {result.out} && ollama create poet -f {MODELFILE} && ollama run poet")
    return 0
