"""The review page: ``ui``."""

from __future__ import annotations

import typer

from workers.commands import console, settings


def ui() -> None:
    """Serve the review page: live labels with their photos, corrections, the model's record (docs/ui.md)."""
    from workers.ui.server import run

    run(settings(), announce=console.print)


def register(app: typer.Typer) -> None:
    app.command()(ui)
