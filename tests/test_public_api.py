"""The public surface is what __all__ says, and all of it exists."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["demo", "analysis"])
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


def test_format_versions_agree() -> None:
    import analysis
    import demo

    assert demo.FORMAT_VERSION == analysis.FORMAT_VERSION
