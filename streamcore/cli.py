"""The ``stylestream`` command line."""

from __future__ import annotations

import logging
import time
from typing import Annotated, Optional

import typer
from rich.console import Console

from streamcore.settings import Settings

app = typer.Typer(help="Event-driven fashion classifier for Instagram posts.", no_args_is_help=True)
console = Console()
STAGES = ("text", "classify", "trainer")


def _settings() -> Settings:
    return Settings()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Also produce synthetic posts and print labels.")] = False,
    rate: Annotated[float, typer.Option(help="Demo posts per second.")] = 5.0,
) -> None:
    """Start the broker + Redis (unless external ones are configured), topics and all stages."""
    from streamcore.launcher import run_up

    run_up(_settings(), demo=demo, rate=rate, console=console)


@app.command()
def produce(
    count: Annotated[int, typer.Option(help="Number of posts.")] = 100,
    rate: Annotated[Optional[float], typer.Option(help="Posts per second (default: as fast as possible).")] = None,
    multi: Annotated[bool, typer.Option(help="Outfits of 2-4 items per image.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
) -> None:
    """Produce synthetic posts (images + captions) to the posts topic."""
    from streamcore.launcher import produce_synthetic

    settings = _settings()
    sent = produce_synthetic(settings, count=count, rate=rate, multi=multi, seed=seed)
    console.print(f"produced {sent} posts to {settings.topic('posts')}")


@app.command()
def tail(
    count: Annotated[Optional[int], typer.Option(help="Stop after N labels.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Replay the labels topic from the start.")] = False,
) -> None:
    """Print labels as they arrive."""
    from streamcore.client import StylestreamClient
    from streamcore.launcher import print_label

    with StylestreamClient(_settings()) as client:
        for n, label in enumerate(client.labels(from_beginning=from_beginning), 1):
            print_label(console, label)
            if count is not None and n >= count:
                break


@app.command()
def worker(stage: Annotated[str, typer.Argument(help="text | classify | trainer")]) -> None:
    """Run one stage against the configured Kafka/Redis (run many for scale-out)."""
    if stage == "text":
        from workers.text import run
    elif stage == "classify":
        from workers.classify import run
    elif stage == "trainer":
        console.print("[yellow]the trainer stage is not built yet (issue #6)[/]")
        raise typer.Exit(2)
    else:
        raise typer.BadParameter(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    run(_settings())


def _not_yet(name: str, issue: int) -> None:
    console.print(f"[yellow]`stylestream {name}` is not built yet (issue #{issue})[/]")
    raise typer.Exit(2)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def train(ctx: typer.Context) -> None:
    """Train a model (see issue #4)."""
    _not_yet("train", 4)


@app.command(name="eval", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def eval_(ctx: typer.Context) -> None:
    """Evaluate models and write the Table II report."""
    _not_yet("eval", 4)


@app.command()
def promote(ckpt: str) -> None:
    """Promote a checkpoint to serving."""
    _not_yet("promote", 6)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench(ctx: typer.Context) -> None:
    """Benchmarks."""
    _not_yet("bench", 5)


if __name__ == "__main__":
    app()
