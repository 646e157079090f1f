"""The demo's ending: what training changed, side by side, in the terminal and in `<run>/showcase.md`.

For the same titles: the untrained model's poem, the trained model's (both unconstrained: what each
writes on its own), and the trained model's with `--form 五言绝句 --rhyme` (constrained decoding); then
the scores of both models over every eval title (from the eval report), and the loss curve as a PNG.
Switched on by `generation.showcase=true` (recipes/demo.yaml); needs `generation.report=true`.
"""

from __future__ import annotations

import dataclasses
import json
import unicodedata
from pathlib import Path
from typing import Any

from poetry_sft.run import artifacts

SHOWCASE_FILE = "showcase.md"
CURVE_FILE = "loss_curve.png"
SHOWN_TITLES = 3
CONSTRAINED_FORM = "五言绝句"
SCORE_ROWS = (
    ("regulated_form_rate", "5/7-character layout (绝句/律诗 shape) / 格律版式"),
    ("eos_termination_rate", "stops by itself at <|im_end|> / 自行结束"),
    ("rhyme_rate", "even lines rhyme (平水韵) / 押韵"),
    ("distinct_2", "distinct character pairs / 多样性"),
)


def _width(text: str) -> int:
    return sum(2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _pad(text: str, width: int) -> str:
    return text + " " * max(width - _width(text), 0)


def side_by_side(columns: list[tuple[str, str]], width: int = 30) -> str:
    """Columns of (heading, poem) as text, each poem line by line, wide characters counted twice."""
    cells = [[heading, *(poem or "(empty)").splitlines()] for heading, poem in columns]
    cells = [[line if _width(line) <= width else line[: width // 2 - 1] + "…" for line in c] for c in cells]
    rows = max(len(c) for c in cells)
    return "\n".join(
        "  ".join(_pad(c[i] if i < len(c) else "", width) for c in cells).rstrip() for i in range(rows)
    )


def plot_loss(history: list[dict[str, Any]], path: Path) -> Path | None:
    """Train (and eval) loss over steps as a PNG; None where matplotlib is not installed."""
    return plot_history(history, path, [("loss", "train loss"), ("eval_loss", "eval loss")], ylabel="loss")


def plot_history(
    history: list[dict[str, Any]], path: Path, keys: list[tuple[str, str]], ylabel: str
) -> Path | None:
    """Curves of log-history keys over steps ((key, label) each) as a PNG; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    for key, label in keys:
        points = [(h["step"], h[key]) for h in history if key in h]
        if points:
            ax.plot(*zip(*points, strict=True), marker="o" if key.startswith("eval") else None, label=label)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.legend(fontsize="small")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def showcase(run_dir: Path) -> str:
    """Write `showcase.md` and the loss curve into the run directory; return the text shown."""
    from poetry_sft.evaluate.generate import generate_poems, load_run
    from poetry_sft.evaluate.report import REPORT_JSON

    report = json.loads((run_dir / REPORT_JSON).read_text(encoding="utf-8"))
    pairs = report["poems"][:: report["per_title"]][:SHOWN_TITLES]
    model, tokenizer, cfg = load_run(run_dir)
    constrained = dataclasses.replace(cfg.generation, form=CONSTRAINED_FORM, rhyme=True)
    ruled = generate_poems(model, tokenizer, [p["title"] for p in pairs], cfg.data, constrained)
    blocks = []
    for pair, poem in zip(pairs, ruled, strict=True):
        blocks.append(f"《{pair['title']}》")
        blocks.append(
            side_by_side(
                [
                    ("untrained / 训练前", pair["base"]["content"]),
                    ("trained / 训练后", pair["finetuned"]["content"]),
                    (f"trained, {CONSTRAINED_FORM} + rhyme", poem.content),
                ]
            )
        )
        blocks.append("")
    base, tuned = report["scores"]["base"], report["scores"]["finetuned"]
    n = base["n_poems"]
    table = [
        f"scores over {n} poems each (titles {', '.join(report['titles'][:4])}, …; seed "
        f"{report['sampling']['seed']}; unconstrained):",
        f"  {'metric':<58}{'untrained':>10}{'trained':>10}",
        *(
            f"  {_pad(label, 58)}{_fmt(base.get(key)):>10}{_fmt(tuned.get(key)):>10}"
            for key, label in SCORE_ROWS
        ),
    ]
    history = _log_history(run_dir)
    curve = plot_loss(history, run_dir / CURVE_FILE) if history else None
    text = "\n".join(
        [*blocks, *table, "", f"loss curve: {curve}" if curve else "loss curve: (install matplotlib)"]
    )
    (run_dir / SHOWCASE_FILE).write_text("```\n" + text + "\n```\n", encoding="utf-8")
    return text


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{value:.2f}"


def _log_history(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / artifacts.LOG_HISTORY_FILE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else []
