"""The walkthrough notebook runs top to bottom on this machine, so it cannot rot."""

from __future__ import annotations

import re
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "walkthrough.ipynb"


def read(path: Path) -> nbformat.NotebookNode:
    nb: nbformat.NotebookNode = nbformat.read(path, as_version=4)  # type: ignore[no-untyped-call]
    return nb


def outputs(nb: nbformat.NotebookNode, kind: str) -> list[object]:
    found = []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if kind == "error" and out.get("output_type") == "error":
                found.append(out)
            elif kind in out.get("data", {}):
                found.append(out["data"][kind])
    return found


def test_committed_notebook_has_its_outputs() -> None:
    """Readable on a code-hosting page without running it: plots and numbers are there."""
    nb = read(NOTEBOOK)
    assert not outputs(nb, "error")
    assert len(outputs(nb, "image/png")) >= 5
    assert len(outputs(nb, "text/markdown")) >= 8


def test_notebook_executes_top_to_bottom(tmp_path: Path) -> None:
    nb = read(NOTEBOOK)
    for cell in nb.cells:  # run from clean: nothing carried over from the committed run
        if cell.cell_type == "code":
            cell.outputs = []
    NotebookClient(
        nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(ROOT)}}
    ).execute()
    assert not outputs(nb, "error")
    assert len(outputs(nb, "image/png")) >= 5
    verdict = re.compile(r"\*\*([a-z-]+)\*\*: (holds|\*\*does not hold\*\*) ")
    found = [m.groups() for md in outputs(nb, "text/markdown") if (m := verdict.match(str(md)))]
    assert found == [
        ("small-window", "holds"),
        ("sender-close", "holds"),
        ("receiver-close", "holds"),
        ("dead-peer", "holds"),
    ]
