"""The import graph of poetry_sft, read from the source (imports inside functions count too)."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "poetry_sft"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the poetry_sft modules it imports anywhere in its source."""
    modules = {_module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {alias.name for alias in node.names if alias.name in modules}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("poetry_sft"):
                submodules = {f"{node.module}.{alias.name}" for alias in node.names}
                edges |= (submodules & modules.keys()) or {node.module}
        graph[name] = edges - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return None

    return next((cycle for node in sorted(graph) if node not in state and (cycle := visit(node))), None)


def test_the_import_graph_has_no_cycle():
    graph = import_graph()
    assert len(graph) > 20
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_cycles():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_poetry_domain_is_a_leaf():
    for module, imports in import_graph().items():
        if module.startswith("poetry_sft.poetry"):
            outside = {m for m in imports if not m.startswith("poetry_sft.poetry")}
            assert not outside, f"{module} imports {sorted(outside)}"


def test_the_schema_imports_nothing_of_ours_but_errors():
    assert import_graph()["poetry_sft.config.schema"] <= {"poetry_sft.errors"}


# The layers, bottom to top (poetry_sft/__init__.py says what each holds). A module may import its own
# layer and the ones below it, never one above: the folders read as the pipeline, and a lower layer can be
# used (and tested) without the machinery above it.
LAYERS = (
    ("poetry_sft.errors", "poetry_sft.paths", "poetry_sft.atomic"),
    ("poetry_sft.poetry",),
    ("poetry_sft.config",),
    ("poetry_sft.data",),
    ("poetry_sft.model",),
    ("poetry_sft.run",),
    ("poetry_sft.evaluate",),
    ("poetry_sft.train",),
    ("poetry_sft.ship",),
    ("poetry_sft.studio",),
    # the command, and the old entry points' shims
    ("poetry_sft.cli", "poetry_sft.__main__", "poetry_sft.studio.__main__", "poetry_sft"),
)
# `python -m poetry_sft.generate` and friends from older scripts: one-line shims into the cli
LEGACY_ENTRY_POINTS = (
    "generate",
    "score",
    "report",
    "merge",
    "export",
    "push",
    "plan",
    "doctor",
    "sweep_report",
)


def layer_of(module: str) -> int:
    if module.removeprefix("poetry_sft.") in LEGACY_ENTRY_POINTS:
        return len(LAYERS) - 1
    matches = [
        (len(prefix), index)
        for index, layer in enumerate(LAYERS)
        for prefix in layer
        if module == prefix or (prefix != "poetry_sft" and module.startswith(prefix + "."))
    ]
    assert matches, f"{module} is in no layer: add it to tests/test_architecture.py LAYERS"
    return max(matches)[1]


def test_every_module_has_a_layer_and_imports_only_downward():
    upward = [
        f"{module} (layer {layer_of(module)}) imports {imported} (layer {layer_of(imported)})"
        for module, imports in import_graph().items()
        for imported in sorted(imports)
        if layer_of(imported) > layer_of(module)
    ]
    assert not upward, "\n".join(upward)


def test_the_layering_check_catches_an_upward_import():
    assert layer_of("poetry_sft.data.corpus") < layer_of("poetry_sft.train.sft")
    assert layer_of("poetry_sft.generate") == layer_of("poetry_sft.cli")  # a shim sits with the command
    assert layer_of("poetry_sft.poetry.critic") == 1


def test_the_old_entry_points_are_shims_without_logic():
    for name in LEGACY_ENTRY_POINTS:
        source = (PACKAGE / f"{name}.py").read_text(encoding="utf-8")
        code = [line for line in source.splitlines()[1:] if line.strip() and not line.startswith('"""')]
        assert len(code) == 3 and "run_verb(" in code[-1], f"poetry_sft/{name}.py: {code}"
        assert "argparse" not in source and "sys.argv" not in source
