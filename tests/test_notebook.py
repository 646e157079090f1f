"""The Colab notebook runs as is, switched to the tiny offline model on CPU by its parameter cell."""

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "colab_t4_qlora.ipynb"


def test_colab_notebook_runs_on_cpu_with_the_tiny_model(tmp_path: Path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    (parameters,) = [c for c in notebook.cells if "parameters" in c.metadata.get("tags", [])]
    assert "TINY = False" in parameters.source, "the notebook ships for the T4"
    parameters.source = parameters.source.replace("TINY = False", "TINY = True")
    nbclient.NotebookClient(notebook, timeout=1800, resources={"metadata": {"path": str(tmp_path)}}).execute()

    run = tmp_path / "runs" / "colab_qlora"
    assert (run / "metrics.json").is_file() and (run / "merged" / "config.json").is_file()
    assert list((run / "gguf-q8_0").glob("*.gguf")) and (run / "gguf-q8_0" / "Modelfile").is_file()
    outputs = "".join(o.get("text", "") for c in notebook.cells for o in c.get("outputs", []))
    assert "# Evaluation report" in outputs and "《春夜喜雨》" in outputs
    assert "merged/" in outputs and "the same next token at" in outputs  # merge's check
