"""The ``stylestream`` commands by theme (:mod:`.stream`, :mod:`.photo`, :mod:`.models`); :mod:`workers.cli`
puts them on one Typer app. A command imports what it runs inside its body, so ``--help`` loads no model."""

from __future__ import annotations

import logging

from rich.console import Console

from streamcore.settings import Settings

#: Tables and progress for people; data (labels as JSON) goes to stdout through ``typer.echo``.
console = Console()
#: Failures: what was not delivered, what was refused.
errors = Console(stderr=True)


def settings() -> Settings:
    """The settings of this run (``STYLESTREAM_*``, the config file); invalid ones raise, and the CLI says so in
    one line."""
    return Settings()


def quiet_kafka() -> None:
    """Leave broker trouble to the command's own one-line report: kafka-python logs each failed connection
    attempt as an error (``-v`` keeps them)."""
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("kafka").setLevel(logging.CRITICAL)
