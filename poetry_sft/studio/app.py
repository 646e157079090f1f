"""The 诗坊 Poem studio page: a Gradio layout over `poetry_sft.studio.logic`.

Nothing here decides anything: each handler calls the logic layer and turns a `StudioError` into
a message in the page (and a toast), so bad input never takes the server down.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # before gradio is imported: no telemetry calls

import gradio as gr  # noqa: E402

from poetry_sft.config.schema import PromptStyle  # noqa: E402
from poetry_sft.studio.logic import (  # noqa: E402
    FORM_CHOICES,
    MAX_BEST_OF,
    MAX_NEW_TOKENS,
    MAX_POEMS,
    POEM_CSS,
    SUBJECT_LABELS,
    Studio,
    StudioError,
)

TITLE = "诗坊 Poem studio"
# Which model writes: the run's, its base (the model it started from), or both side by side.
MODEL_CHOICES = {"微调 fine-tuned": "fine-tuned", "基座 base": "base", "对比 both": "both"}
# System fonts only: they carry the CJK glyphs, and no theme font (a GoogleFont would be fetched from
# fonts.googleapis.com) is loaded from anywhere; the browser test checks no request leaves the studio.
THEME = gr.themes.Default(
    font=["system-ui", "Noto Sans CJK SC", "PingFang SC", "Microsoft YaHei", "sans-serif"],
    font_mono=["ui-monospace", "Noto Sans Mono CJK SC", "monospace"],
)
CSS = (
    POEM_CSS
    + """
.sf-message { color: #d1242f; font-weight: 600; }
"""
)


def _message(err: Exception | str) -> str:
    return f'<div class="sf-message" role="alert">⚠ {err}</div>'


def _unexpected(err: Exception) -> str:
    return _message(f"unexpected error 意外错误: {type(err).__name__}: {err}")


def _choices(studio: Studio, kind: str | None = None) -> list[tuple[str, str]]:
    return [(run.label, run.name) for run in studio.list_runs() if kind is None or run.kind == kind]


def build(studio: Studio) -> gr.Blocks:
    runs = _choices(studio, "run")
    all_dirs = _choices(studio)
    first_run = runs[0][1] if runs else None

    with gr.Blocks(title=TITLE) as page:
        gr.Markdown(
            f"# {TITLE}\n写诗、评诗、比较：每个字标平仄，韵脚与平水韵部高亮，破格处标出。 "
            "Write, judge and compare poems: every character marked 平/仄, the rhyme and its 平水韵 group "
            f"highlighted, broken rules flagged. Runs from `{studio.root}`."
        )
        with gr.Tabs():
            # -- 写诗 Write -------------------------------------------------------------------
            with gr.Tab("写诗 Write", id="write"):
                with gr.Row():
                    run = gr.Dropdown(
                        runs, value=first_run, label="训练结果 Run", scale=4, elem_id="write-run"
                    )
                    refresh = gr.Button("刷新 Refresh", scale=1, size="sm")
                run_info = gr.Markdown(elem_id="run-info")
                with gr.Row():
                    subject = gr.Textbox(
                        label="题目 Title", placeholder="春夜喜雨", scale=3, elem_id="subject"
                    )
                    form = gr.Radio(list(FORM_CHOICES), value="任意 any", label="体裁 Form", scale=3)
                    rhyme = gr.Checkbox(label="押韵 Rhyme (平水韵)", value=False, scale=1)
                with gr.Accordion("采样 Sampling", open=False):
                    with gr.Row():
                        temperature = gr.Slider(
                            0, 2, value=0.8, step=0.05, label="temperature (0: greedy 贪心)"
                        )
                        top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="top_p")
                        max_new_tokens = gr.Slider(
                            8, MAX_NEW_TOKENS, value=128, step=8, label="max new tokens"
                        )
                    with gr.Row():
                        seed = gr.Number(value=0, precision=0, label="seed 随机种子")
                        n_poems = gr.Slider(1, MAX_POEMS, value=1, step=1, label="首数 Poems")
                        best_of = gr.Slider(
                            1,
                            MAX_BEST_OF,
                            value=1,
                            step=1,
                            label="择优 Best of N (the prosody critic keeps the best of N samples)",
                            elem_id="best-of",
                        )
                with gr.Row():
                    which = gr.Radio(
                        list(MODEL_CHOICES),
                        value="微调 fine-tuned",
                        label="模型 Model",
                        scale=2,
                        elem_id="which",
                    )
                    write_button = gr.Button("写诗 Write", variant="primary", elem_id="write-button", scale=4)
                write_message = gr.HTML(elem_id="write-message")
                with gr.Row():
                    tuned_poems = gr.HTML(elem_id="poems-tuned")
                    base_poems = gr.HTML(elem_id="poems-base")

            # -- 数据 Data --------------------------------------------------------------------
            with gr.Tab("数据 Data", id="data"):
                gr.Markdown(
                    "训练样本与训练器所见一致：灰色为提示（不计损失），绿色为训练的诗与结束符。 "
                    "Training examples as the trainer sees them: the masked prompt grey, the trained "
                    "tokens (poem + `<|im_end|>`) green."
                )
                with gr.Row():
                    data_run = gr.Dropdown(runs, value=first_run, label="训练结果 Run", scale=4)
                    n_examples = gr.Slider(1, 10, value=3, step=1, label="样本数 Examples", scale=2)
                    preview_button = gr.Button("预览 Preview", scale=1, elem_id="preview-button")
                data_message = gr.HTML()
                with gr.Row():
                    data_report = gr.Markdown(elem_id="data-report")
                    histogram = gr.Plot(label="长度分布 Length histogram")
                examples = gr.HTML(elem_id="data-examples")

            # -- 训练 Runs --------------------------------------------------------------------
            with gr.Tab("训练 Runs", id="runs"):
                with gr.Row():
                    dir_choice = gr.Dropdown(
                        all_dirs,
                        value=all_dirs[0][1] if all_dirs else None,
                        label="运行或搜索 Run or sweep",
                        scale=4,
                    )
                    show_button = gr.Button("显示 Show", scale=1, elem_id="show-button")
                runs_message = gr.HTML()
                with gr.Row():
                    losses = gr.Plot(label="损失 Loss")
                    poetry = gr.Plot(label="诗歌指标 eval_poetry/*")
                with gr.Row():
                    run_metrics = gr.Markdown(elem_id="run-metrics")
                    report = gr.Markdown(elem_id="run-report")
                summary_png = gr.Image(label="搜索汇总 Sweep summary", visible=False, type="pil")

        # -- handlers ---------------------------------------------------------------------------

        def on_refresh() -> tuple[Any, Any, Any]:
            fresh, every = _choices(studio, "run"), _choices(studio)
            return gr.update(choices=fresh), gr.update(choices=fresh), gr.update(choices=every)

        def on_run(name: str | None) -> tuple[str, Any]:
            if not name:
                return "没有训练结果 no runs yet: train one (`poetry-sft train recipe=demo`)", gr.update()
            try:
                info = studio.run_info(name)
            except StudioError as err:
                return _message(err), gr.update()
            label = (
                SUBJECT_LABELS.get(PromptStyle(info.prompt_style), "题目 Title")
                if info.prompt_style
                else None
            )
            loss = f"{info.eval_loss:.4f}" if info.eval_loss is not None else "—"
            text = (
                f"**{info.model}** · {info.method} · {info.hardware} · prompt style {info.prompt_style} · "
                f"eval_loss {loss} · {info.status} · {info.date}"
            )
            return text, gr.update(label=label) if label else gr.update()

        def on_write(
            name: str | None,
            text: str,
            form_label: str,
            rhymed: bool,
            temp: float,
            p: float,
            budget: float,
            seed_value: float | None,
            count: float,
            model_choice: str,
            candidates: float,
        ) -> Iterator[tuple[str, str | dict[str, Any], str | dict[str, Any]]]:
            try:
                progress = studio.write(
                    name or "",
                    text,
                    form=FORM_CHOICES.get(form_label),
                    rhyme=rhymed,
                    temperature=temp,
                    top_p=p,
                    max_new_tokens=int(budget),
                    seed=int(seed_value or 0),
                    n_poems=int(count),
                    best_of=int(candidates),
                    compare_base=MODEL_CHOICES.get(model_choice) == "both",
                    base_only=MODEL_CHOICES.get(model_choice) == "base",
                )
                yield "写诗中 writing…", "", ""
                for state in progress:
                    done = f"{len(state.poems)}/{state.total}"
                    yield (
                        f"写诗中 writing… {done}" if len(state.poems) < state.total else f"✓ {done}",
                        "".join(poem.html for poem in state.of("fine-tuned")),
                        "".join(poem.html for poem in state.of("base")),
                    )
            except StudioError as err:
                gr.Warning(str(err))
                yield _message(err), gr.update(), gr.update()
            except Exception as err:  # the server stays up; the page says what broke
                yield _unexpected(err), gr.update(), gr.update()

        def on_preview(name: str | None, count: float) -> tuple[str, str, Any, str]:
            try:
                view = studio.preview_data(name or "", int(count))
            except StudioError as err:
                gr.Warning(str(err))
                return _message(err), "", None, ""
            except Exception as err:
                return _unexpected(err), "", None, ""
            shown = "".join(
                f"<h4>样本 example {i} · {e.total} tokens "
                f"({e.prompt_tokens} prompt + {e.trained_tokens} trained)</h4>{e.html}"
                for i, e in enumerate(view.examples, 1)
            )
            return "", view.dropped_table(), view.histogram, shown

        def on_show(name: str | None) -> tuple[str, str, Any, Any, str, Any]:
            try:
                overview = studio.overview(name or "")
            except StudioError as err:
                gr.Warning(str(err))
                return _message(err), "", None, None, "", gr.update(visible=False)
            except Exception as err:
                return _unexpected(err), "", None, None, "", gr.update(visible=False)
            rows = "\n".join(
                f"| {key} | {value:.4g} |" if isinstance(value, float) else f"| {key} | {value} |"
                for key, value in overview.metrics.items()
            )
            head = f"**{overview.name}** · {overview.kind} · {overview.status}"
            table = f"{head}\n\n| metric | value |\n|---|---|\n{rows}"
            image = gr.update(visible=False)
            if overview.summary_png is not None:
                from PIL import Image

                image = gr.update(value=Image.open(overview.summary_png), visible=True)
            return "", table, overview.loss_plot, overview.poetry_plot, overview.report_md, image

        refresh.click(on_refresh, outputs=[run, data_run, dir_choice])
        run.change(on_run, inputs=run, outputs=[run_info, subject])
        page.load(on_run, inputs=run, outputs=[run_info, subject])
        write_inputs = [
            run,
            subject,
            form,
            rhyme,
            temperature,
            top_p,
            max_new_tokens,
            seed,
            n_poems,
            which,
            best_of,
        ]
        write_outputs = [write_message, tuned_poems, base_poems]
        write_button.click(on_write, inputs=write_inputs, outputs=write_outputs)
        subject.submit(on_write, inputs=write_inputs, outputs=write_outputs)
        preview_button.click(
            on_preview,
            inputs=[data_run, n_examples],
            outputs=[data_message, data_report, histogram, examples],
        )
        show_button.click(
            on_show,
            inputs=dir_choice,
            outputs=[runs_message, run_metrics, losses, poetry, report, summary_png],
        )
    return page
