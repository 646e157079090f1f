"""The studio's page logic: plain functions that return runs, poems, marks, previews and plots.

The Gradio layout (`app.py`) only calls these, so everything here is tested without a browser and
can be used from Python:

    studio = Studio(Path("runs"))
    for batch in studio.write(studio.list_runs()[0].name, "春夜喜雨", form="七言绝句", rhyme=True):
        for poem in batch.poems:
            print(poem.content, [flag.text for flag in poem.analysis.flags])

Every page input is checked here; a problem raises `StudioError`, whose message the page shows.
Only directories under the runs root can be opened: names are relative paths, resolved and confined.
"""

from __future__ import annotations

import dataclasses
import functools
import gc
import html
import json
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from poetry_sft import poetry
from poetry_sft.config.checks import sampling_problems
from poetry_sft.config.schema import PromptStyle, RunConfig, SamplingConfig
from poetry_sft.data.prompts import CHAT_CONTROL_TEXT
from poetry_sft.errors import PoetrySFTError
from poetry_sft.run import artifacts

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from poetry_sft.evaluate.generate import Poem

MAX_SUBJECT_CHARS = (
    64  # a title, a first line (七言: 8 with its comma) or a few keywords; more is not a prompt
)
MAX_POEMS = 8
MAX_BEST_OF = 16  # best-of-N candidates per poem: one batch of 16 is seconds for 0.6B on a GPU
MAX_NEW_TOKENS = 512
SCAN_DEPTH = 3  # runs/<name>, multirun/<sweep>/<job>: how deep under the root runs are looked for
_SKIP_DIRS = {artifacts.MODEL_DIR, artifacts.CHECKPOINTS_DIR, ".hydra", "merged", "__pycache__"}

# 五言绝句 -> 五绝, 七言律诗 -> 七律: the forms of poetry.FORM_TABLE by their short names
FORM_CHOICES: dict[str, str | None] = {
    "任意 any": None,
    **{name[0] + name[-2]: name for name in poetry.FORMS},
}
_SHORT_FORMS = ", ".join(label for label, form in FORM_CHOICES.items() if form)
SUBJECT_LABELS = {
    PromptStyle.title: "题目 Title",
    PromptStyle.form_theme: "题目 Title",
    PromptStyle.first_line: "首句 First line",
    PromptStyle.keywords: "意象 Keywords (明月、孤舟)",
}
FLAG_NAMES = {
    "shi_nian": "失粘 broken sticking",
    "shi_dui": "失对 broken opposition",
    "gu_ping": "孤平 lone level tone",
    "san_ping_wei": "三平尾 three level tones at the end",
    "off_rhyme": "出韵 off-rhyme",
}
SHOWN_SCORES = (
    "format_accuracy",
    "rhyme_rate",
    "tone_compliance",
    "tone_pass_rate",
    "distinct_1",
    "repeated_line_rate",
    "non_chinese_rate",
    "eos_termination_rate",
)


class StudioError(PoetrySFTError):
    """Input the page cannot use; the message names the problem and the fix, and the page shows it."""


# ---------------------------------------------------------------------------------------------
# Runs under the root


@dataclass(frozen=True)
class RunInfo:
    name: str  # the path relative to the runs root: the only handle the page ever sends back
    kind: str  # run | sweep
    status: str  # finished | training | failed | unfinished (runs); the job count (sweeps)
    model: str = ""
    method: str = ""
    hardware: str = ""
    prompt_style: str = ""
    eval_loss: float | None = None
    date: str = ""

    @property
    def label(self) -> str:
        if self.kind == "sweep":
            return f"{self.name} · sweep 搜索 ({self.status})"
        loss = f"eval_loss {self.eval_loss:.3f}" if self.eval_loss is not None else self.status
        return f"{self.name} · {self.model}/{self.method}/{self.hardware} · {loss} · {self.date}"


def _date(path: Path) -> str:
    return datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _run_status(run_dir: Path) -> str:
    if artifacts.is_finished(run_dir):
        return "finished"
    if (run_dir / artifacts.ERROR_FILE).is_file():
        return "failed"
    return "training" if (run_dir / artifacts.CHECKPOINTS_DIR).is_dir() else "unfinished"


def _read_json(path: Path) -> dict[str, Any]:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return payload if isinstance(payload, dict) else {}


def _run_info(root: Path, run_dir: Path) -> RunInfo:
    status = _run_status(run_dir)
    name = run_dir.relative_to(root).as_posix()
    try:
        cfg = artifacts.load_run_config(run_dir)
    except Exception:  # a config this version cannot read: listed, and opening it says why
        return RunInfo(name, "run", "unreadable config", date=_date(run_dir / artifacts.CONFIG_FILE))
    finished = run_dir / artifacts.METRICS_FILE
    return RunInfo(
        name,
        "run",
        status,
        model=cfg.model.name,
        method=str(cfg.method.name),
        hardware=cfg.hardware.name,
        prompt_style=str(cfg.data.prompt_style),
        eval_loss=_read_json(finished).get("eval_loss") if status == "finished" else None,
        date=_date(finished if status == "finished" else run_dir / artifacts.CONFIG_FILE),
    )


def _is_sweep(directory: Path) -> bool:
    return any(directory.glob("*/.hydra/overrides.yaml")) or (directory / "multirun.yaml").is_file()


def list_runs(root: Path) -> list[RunInfo]:
    """Runs (directories with config.yaml) and sweeps under `root`, newest first."""
    root = root.resolve()
    found: list[RunInfo] = []

    def scan(directory: Path, depth: int) -> None:
        try:
            children = sorted(p for p in directory.iterdir() if p.is_dir() and not p.is_symlink())
        except OSError:
            return
        for child in children:
            if child.name in _SKIP_DIRS or child.name.startswith("."):
                continue
            if (child / artifacts.CONFIG_FILE).is_file():
                found.append(_run_info(root, child))
            if _is_sweep(child):
                jobs = len(list(child.glob("*/.hydra/overrides.yaml")))
                found.append(RunInfo(child.relative_to(root).as_posix(), "sweep", f"{jobs} jobs"))
            if depth < SCAN_DEPTH and not (child / artifacts.CONFIG_FILE).is_file():
                scan(child, depth + 1)

    if root.is_dir():
        scan(root, 1)
    return sorted(found, key=lambda r: (r.date, r.name), reverse=True)


def resolve_under(root: Path, name: str) -> Path:
    """`root/name`, refusing anything that would leave `root`: absolute paths, `..`, links out."""
    if not isinstance(name, str) or not name.strip():
        raise StudioError("no run chosen: pick one from the list (refresh it if it is empty)")
    candidate = Path(name)
    if candidate.is_absolute() or name.startswith(("/", "\\")) or ".." in candidate.parts or "\0" in name:
        raise StudioError(
            f"{name!r} is not a run under the runs folder: only names from the list can be opened "
            "(no absolute paths, no ..). Fix: pick a run from the list, or restart with --runs <folder>"
        )
    resolved_root = root.resolve()
    path = (resolved_root / candidate).resolve()
    if path != resolved_root and not path.is_relative_to(resolved_root):
        raise StudioError(f"{name!r} leads outside the runs folder {root} (a link?): it cannot be opened")
    return path


def open_run(root: Path, name: str) -> tuple[Path, RunConfig]:
    """A finished run's directory and config; StudioError saying what is missing otherwise."""
    run_dir = resolve_under(root, name)
    if not run_dir.is_dir():
        raise StudioError(
            f"run {name} no longer exists under {root} (deleted or moved?). Fix: press 刷新 Refresh and "
            "pick another run"
        )
    if not (run_dir / artifacts.CONFIG_FILE).is_file():
        raise StudioError(
            f"{name} is not a poetry_sft run (no {artifacts.CONFIG_FILE}): pick a run directory written by "
            "`poetry-sft train`"
        )
    status = _run_status(run_dir)
    if status == "training":
        raise StudioError(
            f"run {name} is still training (or was interrupted): it has checkpoints but no "
            f"{artifacts.METRICS_FILE} yet. Fix: wait until it finishes (its curves are in 训练 Runs), "
            "or resume it with the same command"
        )
    if status != "finished":
        raise StudioError(
            f"run {name} did not finish ({status}: no {artifacts.METRICS_FILE}). Fix: pick a finished "
            "run, or train it again"
        )
    try:
        cfg = artifacts.load_run_config(run_dir)
    except PoetrySFTError as err:
        raise StudioError(f"run {name}: {err}") from err
    except Exception as err:  # written by another version of the schema
        raise StudioError(f"run {name}: its {artifacts.CONFIG_FILE} cannot be read ({err})") from err
    if not (run_dir / artifacts.MODEL_DIR).is_dir():
        raise StudioError(f"run {name} has no {artifacts.MODEL_DIR}/: it did not finish saving")
    return run_dir, cfg


# ---------------------------------------------------------------------------------------------
# Loaded models: an LRU, one lock


class ModelCache:
    """Values by key, the least recently used dropped (and its memory freed) beyond `capacity`."""

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = max(1, capacity)
        self._values: OrderedDict[Any, Any] = OrderedDict()
        self._lock = threading.RLock()

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        with self._lock:
            if key in self._values:
                self._values.move_to_end(key)
                return self._values[key]
            while len(self._values) >= self.capacity:  # free before loading: two big runs never coexist
                self._values.popitem(last=False)
                gc.collect()
            self._values[key] = value = make()
            return value

    def keys(self) -> list[Any]:
        with self._lock:
            return list(self._values)


# ---------------------------------------------------------------------------------------------
# Marks: 平仄, rhyme, rule breaks


@dataclass(frozen=True)
class CharMark:
    char: str
    tone: str  # 平 | 仄 | 平仄 (多音字, either) | "" (not in the table, or not a character)
    required: str = ""  # what the poem's pattern asks for here: 平 | 仄 | "" (free)
    rhyme: bool = False  # a line-final character that carries the poem's rhyme

    @property
    def breaks(self) -> bool:
        """The pattern asks for a tone this character cannot take."""
        return bool(self.required) and self.required not in self.tone


@dataclass(frozen=True)
class Flag:
    kind: str  # a key of FLAG_NAMES
    line: int  # 1-based

    @property
    def text(self) -> str:
        return f"第{self.line}句 line {self.line}: {FLAG_NAMES[self.kind]}"


@dataclass
class PoemAnalysis:
    lines: list[list[CharMark]]
    form: str  # classified shape: one of poetry.FORMS or "other"
    variant: str | None  # the best-matching standard pattern (仄起首句不入韵 ...), regulated forms only
    rhyme_group: str | None  # the 平水韵 group the even lines rhyme in (simplified name), if any
    flags: list[Flag]
    scores: dict[str, Any]


def _tone(char: str) -> str:
    tones = poetry.char_tones(char)
    return "".join(t for t in (poetry.LEVEL, poetry.OBLIQUE) if t in tones)


@functools.cache
def _simplified(name: str) -> str:
    import opencc

    return opencc.OpenCC("t2s").convert(name)


def _poem_rhyme(lines: list[str]) -> tuple[str | None, list[int], list[int]]:
    """(the group most even lines rhyme in, 1-based rhyme lines, 1-based off-rhyme lines).

    Ties go to the earliest even line, as in constrained decoding (the first even line picks the
    rhyme); line 1 rhymes when its final is in the group (首句入韵) and is never off-rhyme.
    """
    even = list(range(2, len(lines) + 1, 2))
    if not even:
        return None, [], []
    finals = {n: poetry.rhyme_groups(lines[n - 1][-1]) for n in even}
    counts = Counter(group for n in even for group in finals[n])
    if not counts:
        return None, [], []
    order = [group for n in even for group in sorted(finals[n])]  # earliest line first
    group = max(counts, key=lambda g: (counts[g], -order.index(g)))
    rhyming = [n for n in even if group in finals[n]]
    if group in poetry.rhyme_groups(lines[0][-1]):
        rhyming = [1, *rhyming]
    off = [n for n in even if group not in finals[n]] if len(even) > 1 else []
    return group, rhyming, off


def analyse_poem(
    content: str, requested_form: str | None = None, stopped_at_eos: bool | None = None
) -> PoemAnalysis:
    """Every character's tone, the rhyme, the broken rules and the scores of one poem."""
    answer = poetry.strip_thinking(content)
    lines = poetry.split_lines(answer)
    required = poetry.required_tones(answer)
    report = poetry.check_tones(answer)
    group, rhyming, off_rhyme = _poem_rhyme(lines) if lines else (None, [], [])
    marks = []
    for n, line in enumerate(lines, 1):
        wanted = required[n - 1] if required else [""] * len(line)
        marks.append(
            [
                CharMark(char, _tone(char), wanted[i], rhyme=n in rhyming and i == len(line) - 1)
                for i, char in enumerate(line)
            ]
        )
    flags: list[Flag] = []
    if report is not None:
        shi_nian, shi_dui = poetry.sticking_and_opposition(answer)
        for kind, numbers in (
            ("shi_nian", shi_nian),
            ("shi_dui", shi_dui),
            ("gu_ping", report.gu_ping_lines),
            ("san_ping_wei", report.san_ping_wei_lines),
        ):
            flags += [Flag(kind, n) for n in numbers]
    flags += [Flag("off_rhyme", n) for n in off_rhyme]
    flags.sort(key=lambda f: (f.line, list(FLAG_NAMES).index(f.kind)))
    scores = poetry.score_poems(
        [content], requested_form, stopped_at_eos=None if stopped_at_eos is None else [stopped_at_eos]
    )
    return PoemAnalysis(
        marks,
        poetry.classify_form(answer),
        report.variant if report else None,
        _simplified(group) if group else None,
        flags,
        scores,
    )


# ---------------------------------------------------------------------------------------------
# HTML for a poem (the page shows it as is; tests read it)

POEM_CSS = """
.sf-poem { font-size: 1.4em; line-height: 2.3; margin: .4em 0; }
.sf-line { white-space: nowrap; }
.sf-poem ruby { margin: 0 .08em; padding: 0 .05em; border-radius: 4px; }
.sf-poem rt { font-size: .45em; color: #666; }
.sf-ping rt { color: #1f6feb; }
.sf-ze rt { color: #b35900; }
.sf-rhyme { background: #ffe8a3; }
.sf-break { text-decoration: underline wavy #d1242f; }
.sf-break rt { color: #d1242f; font-weight: bold; }
.sf-flags { color: #d1242f; margin: .2em 0; padding-left: 1.2em; }
.sf-critic { font-weight: 600; margin-top: .3em; }
.sf-candidates li { font-size: .95em; }
.sf-ok { color: #1a7f37; }
.sf-meta { color: #555; font-size: .9em; }
.sf-scores td { padding: 0 .6em 0 0; font-size: .85em; }
.sf-prompt { color: #8c959f; }
.sf-trained { background: #dafbe1; color: #0a3622; outline: 1px solid #aceebb; }
.sf-chat { white-space: pre-wrap; font-family: monospace; line-height: 1.7; }
"""

_TONE_CLASS = {"平": "sf-ping", "仄": "sf-ze", "平仄": "sf-both", "": "sf-unknown"}


def _char_html(mark: CharMark) -> str:
    classes = (
        [_TONE_CLASS[mark.tone]]
        + (["sf-rhyme"] if mark.rhyme else [])
        + (["sf-break"] if mark.breaks else [])
    )
    note = mark.tone.replace("平仄", "平/仄") or "?"
    if mark.breaks:
        note += f"≠{mark.required}"
    title = f"{mark.char}: {note}" + (f"; 应 {mark.required}" if mark.required else "")
    return (
        f'<ruby class="{" ".join(classes)}" title="{html.escape(title)}">{html.escape(mark.char)}'
        f"<rt>{html.escape(note)}</rt></ruby>"
    )


def _fmt(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else "—" if value is None else html.escape(str(value))


def poem_html(title: str, content: str, analysis: PoemAnalysis, heading: str = "") -> str:
    lines = []
    for n, marks in enumerate(analysis.lines, 1):
        end = "，" if n % 2 else "。"
        line = f'<span class="sf-line">{"".join(map(_char_html, marks))}{end}</span>'
        lines.append(line + ("<br>" if n % 2 == 0 else ""))
    form = analysis.form if analysis.form != poetry.OTHER_FORM else "非格律 not a regulated form"
    meta = [f"{form}" + (f" · {analysis.variant}" if analysis.variant else "")]
    if analysis.rhyme_group:
        meta.append(f"韵 rhyme: {analysis.rhyme_group}")
    flags = (
        '<ul class="sf-flags">' + "".join(f"<li>{html.escape(f.text)}</li>" for f in analysis.flags) + "</ul>"
        if analysis.flags
        else '<div class="sf-ok">✓ 无破格 no rule broken</div>'
        if analysis.variant
        else ""
    )
    scores = "".join(
        f"<tr><td>{key}</td><td>{_fmt(analysis.scores.get(key))}</td></tr>"
        for key in SHOWN_SCORES
        if analysis.scores.get(key) is not None
    )
    body = "".join(lines) if lines else html.escape(content) or "（空 empty）"
    return (
        f'<div class="sf-card">{f"<h4>{html.escape(heading)}</h4>" if heading else ""}'
        f"<b>《{html.escape(title)}》</b>"
        f'<div class="sf-poem">{body}</div><div class="sf-meta">{" · ".join(map(html.escape, meta))}</div>'
        f'{flags}<table class="sf-scores">{scores}</table></div>'
    )


# ---------------------------------------------------------------------------------------------
# Writing


@dataclass
class WrittenPoem:
    model: str  # "fine-tuned" | "base"
    title: str
    content: str
    form: str | None
    stopped_at_eos: bool
    analysis: PoemAnalysis
    score: float | None = None  # the prosody critic's (poetry/critic.py)
    candidates: list[dict[str, Any]] | None = None  # best-of-N: every poem sampled, best first

    @property
    def html(self) -> str:
        heading = "微调 fine-tuned" if self.model == "fine-tuned" else "基座 base"
        return poem_html(self.title, self.content, self.analysis, heading) + candidates_html(
            self.score, self.candidates
        )


def candidates_html(score: float | None, candidates: list[dict[str, Any]] | None) -> str:
    """The critic's score, and with best-of-N every candidate with its score (the kept one first)."""
    if score is None:
        return ""
    line = f'<div class="sf-critic">评分 critic score {score:.2f}'
    if not candidates:
        return line + "</div>"
    rows = "".join(
        f"<li><b>{c['score']:.2f}</b> {html.escape(c['content']).replace(chr(10), ' / ')}"
        f" <small>(押韵 rhyme {c['parts']['rhyme']:.2f} · 格 form {c['parts']['form']:.2f} · "
        f"平仄 tones {c['parts']['tones']:.2f})</small></li>"
        for c in candidates
    )
    return (
        f"{line} · 择优 best of {len(candidates)}</div>"
        f'<details class="sf-candidates"><summary>候选 candidates ({len(candidates)})</summary>'
        f"<ol>{rows}</ol></details>"
    )


@dataclass
class WriteProgress:
    """What has been written so far; `write` yields one after each poem."""

    run: str
    poems: list[WrittenPoem] = field(default_factory=list)
    total: int = 0

    def of(self, model: str) -> list[WrittenPoem]:
        return [poem for poem in self.poems if poem.model == model]


def check_subject(subject: str, style: PromptStyle) -> str:
    """The title / first line / keywords as the prompt will use it; StudioError for unusable text."""
    what = SUBJECT_LABELS[style]
    text = (subject or "").strip()
    if not text:
        raise StudioError(f"the {what} is empty: type what the poem is about, e.g. 春夜喜雨")
    if len(text) > MAX_SUBJECT_CHARS:
        raise StudioError(
            f"the {what} is {len(text)} characters long; at most {MAX_SUBJECT_CHARS} make a prompt like the "
            "ones the run was trained on. Fix: shorten it"
        )
    if control := CHAT_CONTROL_TEXT.search(text):  # the one definition, beside training's (data/corpus.py)
        raise StudioError(
            f"the {what} contains {control[0]!r}, a control token of the chat template: it would end or "
            "forge a chat turn. Fix: remove it"
        )
    if any(ord(char) < 32 for char in text):
        raise StudioError(f"the {what} contains control characters (newlines, tabs): write it on one line")
    return text


def sampling_settings(
    cfg: RunConfig,
    form: str | None,
    rhyme: bool,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    best_of: int = 1,
) -> SamplingConfig:
    if form is not None:
        form = poetry.check_form_name(form)
    if rhyme and form is None:
        raise StudioError(f"押韵 rhyme needs a form: choose one of {_SHORT_FORMS}, or turn rhyme off")
    if cfg.data.prompt_style is PromptStyle.first_line and form is not None:
        raise StudioError(
            f"this run continues a given first line (data.prompt_style=first_line); a form ({form}) "
            "constrains a whole poem. Fix: choose 任意 any form, or pick a run trained on titles"
        )
    if cfg.data.prompt_style is PromptStyle.form_theme and form is None:
        raise StudioError(
            f"this run's prompts name the form (data.prompt_style=form_theme): choose one of {_SHORT_FORMS}"
        )
    if not 1 <= int(max_new_tokens) <= MAX_NEW_TOKENS:
        raise StudioError(f"max new tokens {max_new_tokens}: choose 1 to {MAX_NEW_TOKENS}")
    if not 1 <= int(best_of) <= MAX_BEST_OF:
        raise StudioError(f"best of {best_of}: choose 1 (plain sampling) to {MAX_BEST_OF}")
    if int(best_of) > 1 and float(temperature) <= 0:
        raise StudioError("best of N needs sampling (temperature > 0): greedy writes the same poem N times")
    sampling = dataclasses.replace(
        cfg.generation,
        form=form,
        rhyme=bool(rhyme),
        do_sample=float(temperature) > 0,
        temperature=float(temperature) if float(temperature) > 0 else cfg.generation.temperature,
        top_p=float(top_p),
        max_new_tokens=int(max_new_tokens),
        seed=int(seed),
        batch_size=1,
        best_of=int(best_of),
    )
    if problems := sampling_problems(sampling, key="sampling", rhyme_hint=cfg.data.rhyme_hint):
        raise StudioError("sampling settings: " + "; ".join(problems))
    return sampling


class Studio:
    """The page's state: the runs root, the loaded models, and the lock generation runs under."""

    def __init__(self, runs_root: Path, cache_size: int = 1) -> None:
        self.root = Path(runs_root)
        self.models = ModelCache(cache_size)
        self.loads = 0  # models loaded so far (each run's fine-tuned and base model once)
        # One generation at a time: generate_poems seeds torch's RNG (forked, but process-wide), and a
        # small CPU gains nothing from two at once. Concurrent requests queue here, each gets its own.
        self._generate_lock = threading.Lock()

    def list_runs(self) -> list[RunInfo]:
        return list_runs(self.root)

    def run_info(self, name: str) -> RunInfo:
        path = resolve_under(self.root, name)
        if not path.is_dir():
            raise StudioError(f"{name} no longer exists under {self.root}: press 刷新 Refresh")
        if (path / artifacts.CONFIG_FILE).is_file():
            return _run_info(self.root.resolve(), path)
        if _is_sweep(path):
            jobs = len(list(path.glob("*/.hydra/overrides.yaml")))
            return RunInfo(path.relative_to(self.root.resolve()).as_posix(), "sweep", f"{jobs} jobs")
        raise StudioError(f"{name} is neither a poetry_sft run (no config.yaml) nor a sweep")

    def _model(self, run_dir: Path, base: bool) -> tuple[Any, Any]:
        """The run's fine-tuned (or base) model and tokenizer, loaded once. The cache holds runs: each
        keeps the models it has loaded (fine-tuned, base), and switching runs frees the old run's."""
        from poetry_sft.evaluate.generate import load_run

        try:
            stamp = (run_dir / artifacts.METRICS_FILE).stat().st_mtime_ns  # a re-trained run is reloaded
        except FileNotFoundError as err:
            raise StudioError(f"{run_dir.name} was deleted or moved while open: press 刷新 Refresh") from err
        loaded: dict[bool, tuple[Any, Any]] = self.models.get((str(run_dir), stamp), dict)
        if base not in loaded:
            try:
                model, tokenizer, _ = load_run(run_dir, base=base)
            except PoetrySFTError as err:
                raise StudioError(str(err)) from err
            loaded[base] = (model, tokenizer)
            self.loads += 1
        return loaded[base]

    def _write_one(
        self, run_dir: Path, cfg: RunConfig, base: bool, subject: str, sampling: SamplingConfig
    ) -> Poem:
        from poetry_sft.evaluate.generate import generate_poems

        with self._generate_lock:
            try:
                model, tokenizer = self._model(run_dir, base)
                return generate_poems(model, tokenizer, [subject], cfg.data, sampling, critic=cfg.critic)[0]
            except (PoetrySFTError, ValueError) as err:
                raise StudioError(str(err)) from err

    def write(
        self,
        run: str,
        subject: str,
        *,
        form: str | None = None,
        rhyme: bool = False,
        temperature: float = 0.8,
        top_p: float = 0.9,
        max_new_tokens: int = 128,
        seed: int = 0,
        n_poems: int = 1,
        compare_base: bool = False,
        base_only: bool = False,
        best_of: int = 1,
    ) -> Iterator[WriteProgress]:
        """Write `n_poems` poems (seeds seed, seed+1, ...), yielding after each one; with
        `compare_base` the run's base model writes the same prompts beside them; `best_of` > 1: each poem
        is the prosody critic's best of that many, its candidates shown with their scores."""
        run_dir, cfg = open_run(self.root, run)
        text = check_subject(subject, cfg.data.prompt_style)
        if not 1 <= int(n_poems) <= MAX_POEMS:
            raise StudioError(f"{n_poems} poems: choose 1 to {MAX_POEMS}")
        sampling = sampling_settings(cfg, form, rhyme, temperature, top_p, max_new_tokens, seed, best_of)
        which = ["base"] if base_only else ["fine-tuned", *(["base"] if compare_base else [])]
        progress = WriteProgress(run, total=int(n_poems) * len(which))
        for i in range(int(n_poems)):
            for model in which:
                if not run_dir.is_dir():
                    raise StudioError(f"run {run} was deleted while writing: press 刷新 Refresh")
                poem = self._write_one(
                    run_dir, cfg, model == "base", text, dataclasses.replace(sampling, seed=sampling.seed + i)
                )
                analysis = analyse_poem(poem.content, poem.form, poem.stopped_at_eos)
                progress.poems.append(
                    WrittenPoem(
                        model,
                        poem.title,
                        poem.content,
                        poem.form,
                        poem.stopped_at_eos,
                        analysis,
                        poem.score,
                        poem.candidates,
                    )
                )
                yield dataclasses.replace(progress, poems=list(progress.poems))  # a snapshot per poem

    # -- 数据 Data --------------------------------------------------------------------------------

    def preview_data(self, run: str, n_examples: int = 3) -> DataPreview:
        """Training examples exactly as the trainer sees them: the run's data, prompt and tokenizer."""
        from poetry_sft.data.corpus import prepare_poems
        from poetry_sft.model.loading import load_tokenizer

        run_dir = resolve_under(self.root, run)
        if not (run_dir / artifacts.CONFIG_FILE).is_file():
            raise StudioError(f"{run} is not a poetry_sft run (no config.yaml): pick a run from the list")
        try:
            cfg = artifacts.load_run_config(run_dir)
        except Exception as err:
            raise StudioError(f"run {run}: its config cannot be read ({err})") from err
        tokenizer_dir = run_dir / artifacts.MODEL_DIR
        if not tokenizer_dir.is_dir():  # still training: the tokenizer the run started from
            from poetry_sft.model.loading import resolve_model_path

            tokenizer_dir = Path(resolve_model_path(cfg.model))
        try:
            tokenizer = load_tokenizer(str(tokenizer_dir))
            # A run's saved tokenizer.json can carry the left padding generation last used; the data
            # pipeline encodes in batches with the Rust backend, where that padding would be applied.
            if (backend := getattr(tokenizer, "backend_tokenizer", None)) is not None:
                backend.no_padding()
            prepared = prepare_poems(cfg.data, tokenizer, cfg.hardware.max_length)
        except PoetrySFTError as err:
            raise StudioError(f"run {run}: {err}") from err
        count = max(1, min(int(n_examples), 20, len(prepared.train)))
        examples = [
            example_view(tokenizer, row["input_ids"], row["labels"])
            for row in prepared.train.select(range(count))
        ]
        report = _read_json(run_dir / artifacts.DATA_REPORT_FILE) or prepared.report
        lengths = (
            prepared.train.data.column("length").to_pylist() + prepared.eval.data.column("length").to_pylist()
        )
        return DataPreview(run, examples, report, length_histogram(lengths, cfg.hardware.max_length))

    # -- 训练 Runs --------------------------------------------------------------------------------

    def overview(self, name: str) -> RunOverview:
        path = resolve_under(self.root, name)
        if not path.is_dir():
            raise StudioError(f"{name} no longer exists under {self.root}: press 刷新 Refresh")
        if (path / artifacts.CONFIG_FILE).is_file():
            return run_overview(name, path)
        if _is_sweep(path):
            return sweep_overview(name, path)
        raise StudioError(f"{name} is neither a poetry_sft run (no config.yaml) nor a sweep")


# ---------------------------------------------------------------------------------------------
# 数据 Data


@dataclass
class ExampleView:
    html: str
    prompt_tokens: int
    trained_tokens: int

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.trained_tokens


@dataclass
class DataPreview:
    run: str
    examples: list[ExampleView]
    report: dict[str, Any]
    histogram: Figure | None

    def dropped_table(self) -> str:
        dropped = self.report.get("dropped", {})
        rows = [f"| {reason} | {count:,} |" for reason, count in dropped.items() if count]
        r = self.report
        head = (
            f"**{r.get('rows_in', 0):,}** rows in 输入 → **{r.get('rows_out', 0):,}** out 保留 "
            f"({r.get('train_rows', 0):,} train 训练 / {r.get('eval_rows', 0):,} eval 验证)"
        )
        table = (
            "\n".join(["| dropped 丢弃原因 | rows |", "|---|---|", *rows])
            if rows
            else "nothing dropped 无丢弃"
        )
        return f"{head}\n\n{table}"


def example_view(tokenizer: Any, input_ids: list[int], labels: list[int]) -> ExampleView:
    """The rendered chat, token by token: masked prompt greyed, trained tokens highlighted."""
    spans = []
    for token_id, label in zip(input_ids, labels, strict=True):
        text = tokenizer.decode([token_id], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        css = "sf-prompt" if label == -100 else "sf-trained"
        spans.append(f'<span class="{css}">{html.escape(text)}</span>')
    prompt = sum(label == -100 for label in labels)
    legend = (
        f'<div class="sf-meta"><span class="sf-prompt">灰 grey: prompt, masked 不计损失 '
        f"({prompt} tokens)</span> · "
        f'<span class="sf-trained">绿 green: trained 计损失 ({len(labels) - prompt} tokens)</span></div>'
    )
    return ExampleView(f'{legend}<div class="sf-chat">{"".join(spans)}</div>', prompt, len(labels) - prompt)


def _figure(width: float = 6.0, height: float = 3.0) -> Figure:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="tight")


def length_histogram(lengths: list[int], max_length: int) -> Figure | None:
    if not lengths:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    ax.hist(lengths, bins=min(40, max(5, len(set(lengths)))), color="#4c72b0")
    ax.axvline(max_length, color="#d1242f", linestyle="--", label=f"max_length {max_length}")
    ax.set_xlabel("tokens per example")
    ax.set_ylabel("examples")
    ax.legend()
    return fig


# ---------------------------------------------------------------------------------------------
# 训练 Runs


@dataclass
class RunOverview:
    name: str
    kind: str  # run | sweep
    status: str
    metrics: dict[str, Any]
    loss_plot: Figure | None = None
    poetry_plot: Figure | None = None
    report_md: str = ""  # eval_report.md (runs) or summary.md (sweeps)
    summary_png: Path | None = None  # sweeps: summary.png
    history: list[dict[str, Any]] = field(default_factory=list)


def log_history(run_dir: Path) -> list[dict[str, Any]]:
    """Trainer's log history from the newest complete checkpoint, plus the final eval of metrics.json."""
    checkpoints = sorted(
        (
            p
            for p in (run_dir / artifacts.CHECKPOINTS_DIR).glob("checkpoint-*")
            if artifacts.is_complete_checkpoint(p)
        ),
        key=lambda p: int(p.name.split("-")[1]),
    )
    history = (
        list(artifacts.read_trainer_state(checkpoints[-1]).get("log_history", [])) if checkpoints else []
    )
    final = _read_json(run_dir / artifacts.METRICS_FILE)
    step = final.get("global_step")
    if (
        final.get("eval_loss") is not None
        and step is not None
        and not any(h.get("step") == step and "eval_loss" in h for h in history)
    ):
        history.append({"step": step, "eval_loss": final["eval_loss"]})
    return history


def loss_plot(history: list[dict[str, Any]]) -> Figure | None:
    series = {
        key: [(h["step"], h[key]) for h in history if isinstance(h.get(key), (int, float)) and "step" in h]
        for key in ("loss", "eval_loss")
    }
    if not any(series.values()):
        return None
    fig = _figure()
    ax = fig.add_subplot()
    for key, points in series.items():
        if points:
            ax.plot(
                *zip(*points, strict=True),
                marker="o",
                markersize=3,
                label="train loss" if key == "loss" else key,
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.legend()
    return fig


def poetry_plot(history: list[dict[str, Any]]) -> Figure | None:
    keys = sorted(
        {k for h in history for k in h if k.startswith("eval_poetry/") and k != "eval_poetry/n_poems"}
        - {"eval_poetry/n_regulated"}
    )
    series = {k: [(h["step"], h[k]) for h in history if isinstance(h.get(k), (int, float))] for k in keys}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    fig = _figure(6.0, 3.4)
    ax = fig.add_subplot()
    for key, points in series.items():
        ax.plot(*zip(*points, strict=True), marker="o", markersize=3, label=key.removeprefix("eval_poetry/"))
    ax.set_xlabel("step")
    ax.set_ylabel("score")
    ax.legend(fontsize=7, ncol=2)
    return fig


def run_overview(name: str, run_dir: Path) -> RunOverview:
    history = log_history(run_dir)
    report = run_dir / "eval_report.md"
    found = _read_json(run_dir / artifacts.METRICS_FILE)
    shown = {k: v for k, v in found.items() if k != "samples"}
    return RunOverview(
        name,
        "run",
        _run_status(run_dir),
        shown,
        loss_plot(history),
        poetry_plot(history),
        report.read_text(encoding="utf-8") if report.is_file() else "",
        history=history,
    )


def sweep_overview(name: str, sweep_dir: Path) -> RunOverview:
    """A sweep: its summary.md/png (from `poetry-sft sweep-report`), else a table of its jobs."""
    from poetry_sft.train.sweep_report import read_jobs

    summary = sweep_dir / "summary.md"
    jobs = read_jobs(sweep_dir)
    if summary.is_file():
        text = summary.read_text(encoding="utf-8")
    else:
        rows = [
            f"| {job.name} | {job.status} | {' '.join(f'{k}={v}' for k, v in job.overrides.items())} | "
            f"{_fmt(job.metrics.get('eval_loss'))} |"
            for job in jobs
        ]
        text = "\n".join(
            [
                "no summary.md yet (make one: `poetry-sft sweep-report " + name + "`)",
                "",
                "| job | status | overrides | eval_loss |",
                "|---|---|---|---|",
                *rows,
            ]
        )
    png = sweep_dir / "summary.png"
    counts = Counter(job.status for job in jobs)
    return RunOverview(
        name,
        "sweep",
        ", ".join(f"{n} {status}" for status, n in counts.items()) or "no jobs",
        {"jobs": len(jobs), **counts},
        report_md=text,
        summary_png=png if png.is_file() else None,
    )
