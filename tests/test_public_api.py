"""The public surface is what __all__ says, all of it exists, and the package ships whole."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# The source folders and the import names they are installed under (pyproject.toml).
FOLDERS = {"demo": "bufdemo", "analysis": "bufdemo.analysis"}


@pytest.mark.parametrize("package", ["bufdemo", "bufdemo.analysis"])
def test_all_is_complete_and_importable(package: str) -> None:
    module = importlib.import_module(package)
    exported = module.__all__
    assert sorted(exported) == sorted(set(exported))
    for name in exported:
        assert hasattr(module, name), f"{package}.{name} is in __all__ but missing"
    public = {
        name
        for name, value in vars(module).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith(package)
    }
    assert public <= set(exported), f"public names missing from {package}.__all__"


def test_the_api_reads_as_documented() -> None:
    from bufdemo import RunConfig, analysis, run_experiment

    assert callable(run_experiment)
    assert RunConfig().messages > 0
    assert analysis.load_run is importlib.import_module("bufdemo.analysis.load").load_run


def test_importing_the_package_leaves_the_heavy_parts_for_later() -> None:
    """Every process bufdemo starts imports the package first (but the transmit
    timestamps' reader, which is the standard library only: test_txstamps): the
    orchestration, the analysis stack and the experiment's configuration load only
    when used."""
    code = (
        "import sys, bufdemo.experiment.txstamps; "
        "print(*sorted(m for m in sys.modules if m.startswith(('bufdemo', 'pandas', 'numpy'))))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    assert "bufdemo.experiment.txstamps" in loaded
    for heavy in ("bufdemo.experiment.run", "bufdemo.experiment.config", "bufdemo.analysis"):
        assert heavy not in loaded
    assert "pandas" not in loaded
    assert "numpy" not in loaded


def test_format_version_is_defined_once() -> None:
    import bufdemo
    from bufdemo import analysis, runformat

    assert bufdemo.FORMAT_VERSION is runformat.FORMAT_VERSION
    assert analysis.FORMAT_VERSION is runformat.FORMAT_VERSION


def test_every_source_package_is_listed_for_the_wheel() -> None:
    """A folder with an __init__.py that pyproject.toml does not list would be left out
    of the wheel: every command would fail for anyone who installs with pip."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {v: k for k, v in FOLDERS.items()}
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert set(config["packages"]) == found


def test_only_bufdemo_is_a_top_level_import_name() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert {name.split(".")[0] for name in config["packages"]} == {"bufdemo"}


def test_python_m_bufdemo_prints_the_version_from_any_directory(tmp_path: Path) -> None:
    import bufdemo

    proc = subprocess.run(
        [sys.executable, "-m", "bufdemo", "--version"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"bufdemo {bufdemo.__version__}"
    assert bufdemo.__version__ != "0+unknown"


def test_no_submodule_shadows_a_function_of_the_same_name() -> None:
    """Importing ``bufdemo.analysis.X`` sets the attribute X on the package: a module
    named like an exported function would replace it (``analysis.compare`` did)."""
    import pkgutil

    from bufdemo import analysis

    modules = {m.name for m in pkgutil.iter_modules(analysis.__path__)}
    for name in modules:
        importlib.import_module(f"bufdemo.analysis.{name}")
    for name in analysis.__all__:
        assert not isinstance(getattr(analysis, name), type(analysis)), name


def test_no_generated_run_is_tracked() -> None:
    """Runs stay out of git: no tracked file is a run directory's meta.json or table."""
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout (an sdist or an export)")
    listed = subprocess.run(
        ["git", "-C", str(ROOT), "ls-files"], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    runs = [p for p in listed if Path(p).name in ("meta.json", "sends.csv", "summary.json")]
    assert runs == []
