"""streamcore.extras: a package of an extra that is not installed is named with the extra that brings it."""

from __future__ import annotations

import sys

import pytest

from streamcore.exceptions import StylestreamError
from streamcore.extras import MissingExtra, needs


def test_a_missing_package_names_its_extra(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what the import system reads as "not installed"
    with pytest.raises(MissingExtra) as caught, needs("train"):
        import matplotlib  # noqa: F401
    assert str(caught.value) == "matplotlib is not installed: pip install 'stylestream[train]'"
    assert isinstance(caught.value, StylestreamError) and isinstance(caught.value, ImportError)


def test_alternatives_are_all_named(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(MissingExtra, match=r"pip install 'stylestream\[cpu\]' or 'stylestream\[gpu\]'$"), \
            needs("cpu", "gpu"):
        import onnxruntime  # noqa: F401


def test_a_missing_module_of_stylestream_is_a_bug_not_an_extra() -> None:
    with pytest.raises(ModuleNotFoundError) as caught, needs("train"):
        import training.no_such_module  # noqa: F401
    assert not isinstance(caught.value, MissingExtra)

