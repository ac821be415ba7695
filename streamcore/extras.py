"""Optional parts of the install (pyproject.toml's extras): a missing one is named with the extra that brings it.

The production install holds what the workers need; training, benchmarks, the recommender, the embedded
development stack and ONNX Runtime are extras. Code that needs one imports it inside :func:`needs`, so a user
without it reads one line (``pip install 'stylestream[train]'``) instead of a traceback ending in
``ModuleNotFoundError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from streamcore.exceptions import StylestreamError

_OURS = frozenset({"streamcore", "training", "workers"})


class MissingExtra(StylestreamError, ImportError):
    """A package of an optional dependency group is not installed (an ``ImportError``, so code that falls back
    when an optional package is missing still does)."""


def install_hint(*extras: str) -> str:
    """``pip install 'stylestream[a]'`` (``or 'stylestream[b]'`` for each alternative)."""
    return "pip install " + " or ".join(f"'stylestream[{extra}]'" for extra in extras)


@contextmanager
def needs(*extras: str) -> Iterator[None]:
    """Imports inside the block come from one of ``extras``; a missing package raises :class:`MissingExtra`.

    A missing module of stylestream itself is a bug, not a missing extra: it propagates unchanged.
    """
    try:
        yield
    except ModuleNotFoundError as exc:
        if not exc.name or exc.name.partition(".")[0] in _OURS:
            raise
        raise MissingExtra(f"{exc.name} is not installed: {install_hint(*extras)}", name=exc.name) from exc
