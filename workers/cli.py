"""The ``stylestream`` command line (also ``python -m workers.cli``): the composition root.

Each command imports what it runs inside its body, so ``worker classify`` never loads the text miner,
``worker text`` never loads the image models, and ``--help`` loads neither.
"""

from __future__ import annotations

import logging
import threading
from contextlib import closing
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from streamcore.runtime import tune_process
from streamcore.settings import Settings
from workers import STAGES

app = typer.Typer(help="Event-driven fashion classifier for Instagram posts.", no_args_is_help=True)
console = Console()


def _settings() -> Settings:
    return Settings()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    tune_process()  # before any command loads torch: OpenMP reads its wait policy once
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("aiokafka", "kafka"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # kafka-python's I/O thread warns whenever the GIL kept it waiting >100 ms (image work in the
    # demo's producer thread does): not actionable for a user.
    logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)


@app.command()
def up(
    demo: Annotated[bool, typer.Option(help="Also produce posts of real photos and print labels.")] = False,
    rate: Annotated[float, typer.Option(help="Demo posts per second.")] = 5.0,
    ui: Annotated[bool, typer.Option(help="Also serve the review page (see `ui`).")] = True,
) -> None:
    """Start the broker + Redis (unless external ones are configured), topics and all stages."""
    from workers.launcher import run_up

    run_up(_settings(), demo=demo, rate=rate, console=console, ui=ui)


@app.command()
def ui() -> None:
    """Serve the review page: live labels with their photos, corrections, the model's record (docs/ui.md)."""
    from workers.ui.server import run

    run(_settings(), announce=console.print)


@app.command()
def produce(
    count: Annotated[int, typer.Option(help="Number of posts.")] = 100,
    rate: Annotated[float | None, typer.Option(help="Posts per second (default: as fast as possible).")] = None,
    multi: Annotated[bool, typer.Option(help="Outfits of 2-4 items per image.")] = False,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    real: Annotated[bool, typer.Option(help="Real photos (the packaged fixture) with generated captions.")] = False,
) -> None:
    """Produce generated posts (images + captions) to the posts topic: drawn garments, or real photos."""
    from workers.launcher import produce_synthetic

    settings = _settings()
    sent = produce_synthetic(settings, count=count, rate=rate, multi=multi, seed=seed, real=real)
    console.print(f"produced {sent} posts to {settings.topic('posts')}")


@app.command()
def tail(
    count: Annotated[int | None, typer.Option(help="Stop after N labels.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Replay the labels topic from the start.")] = False,
) -> None:
    """Print labels as they arrive."""
    from streamcore.client import StylestreamClient
    from workers.launcher import ctrl_c_sets, print_label

    stop = threading.Event()
    with ctrl_c_sets(stop), StylestreamClient(_settings()) as client, \
            closing(client.labels(from_beginning=from_beginning, stop=stop)) as labels:
        for n, label in enumerate(labels, 1):
            print_label(console, label)
            if count is not None and n >= count:
                break


@app.command()
def topics() -> None:
    """Create the contract topics with the configured partitions (idempotent; for deploy jobs)."""
    from streamcore.kafka import ensure_topics

    settings = _settings()
    created = ensure_topics(settings)
    console.print(f"created {created or 'nothing'}; {settings.partitions} partitions each")


@app.command()
def worker(stage: Annotated[str, typer.Argument(help="text | classify | trainer")]) -> None:
    """Run one stage against the configured Kafka/Redis (run many for scale-out)."""
    if stage == "text":
        from workers.text import run
    elif stage == "classify":
        from workers.classify import run
    elif stage == "trainer":
        from workers.trainer import run
    else:
        raise typer.BadParameter(f"stage must be one of {', '.join(STAGES)}, got {stage!r}")
    run(_settings())


_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


@app.command(context_settings=_PASS_THROUGH)
def train(ctx: typer.Context) -> None:
    """Train a model and write a checkpoint directory: on labelled real photos with ``--data MANIFEST``, else on
    the synthetic benchmark (``train --help``, ``train --data x --help`` for options)."""
    if any(a == "--data" or a.startswith("--data=") for a in ctx.args):
        from training.real.cli import main
    else:
        from training.train import main

    raise typer.Exit(main(ctx.args))


@app.command(name="import")
def import_(
    dataset: Annotated[str, typer.Argument(help="clothing-dataset | co-parsing")],
    root: Annotated[Path, typer.Argument(help="the dataset's checkout", exists=True, file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="manifest to write (JSONL); ROOT/manifest.jsonl by default")] = None,
) -> None:
    """Turn a public labelled-photo dataset into a manifest for ``train --data`` (mapping: docs/real-photos.md)."""
    from training.real.importers import import_clothing_dataset, import_co_parsing
    from training.real.manifest import write_manifest

    importers = {"clothing-dataset": import_clothing_dataset, "co-parsing": import_co_parsing}
    if dataset not in importers:
        raise typer.BadParameter(f"choose one of {', '.join(importers)}, got {dataset!r}")
    report = importers[dataset](root)
    out = out or root / "manifest.jsonl"
    records = report.records
    if out.resolve().parent != root.resolve():  # image paths are relative to the manifest's folder
        records = [r.model_copy(update={"image": str((root / r.image).resolve())}) for r in records]
    write_manifest(records, out)
    summary = report.summary()
    console.print(f"{summary['records']} records → {out}; kept {summary['kept']}; dropped {summary['dropped']}")


@app.command(name="eval", context_settings=_PASS_THROUGH)
def eval_(ctx: typer.Context) -> None:
    """Table II: every head x backbone, with and without hints (``eval --help`` for options)."""
    from training.evaluate import main

    raise typer.Exit(main(ctx.args))


@app.command()
def promote(ckpt: Annotated[str, typer.Argument(help="a published version, or a checkpoint directory to publish")]) -> None:
    """Make a checkpoint the serving model; running classifiers hot-swap to it."""
    from training.promotion import promote_path_or_version

    update = promote_path_or_version(_settings(), ckpt)
    console.print(f"serving [bold]{update.version}[/] ({update.path})")


@app.command()
def rollback() -> None:
    """Serve the version that was serving before the current one."""
    from training.promotion import rollback as do_rollback

    update = do_rollback(_settings())
    console.print(f"rolled back: serving [bold]{update.version}[/]")


_BENCHES = {
    "heads": "training.bench_heads",
    "pipeline": "workers.benchmarks.pipeline",
    "text": "workers.benchmarks.text",
    "miner": "training.text.evaluate",
    "scale-out": "workers.benchmarks.scale_out",
}


@app.command(context_settings=_PASS_THROUGH)
def bench(ctx: typer.Context,
          which: Annotated[str, typer.Argument(help=" | ".join(_BENCHES))]) -> None:
    """Benchmarks: print a table and write a JSON report under reports/ (``bench WHICH --help``)."""
    import importlib

    if which not in _BENCHES:
        raise typer.BadParameter(f"choose one of {', '.join(_BENCHES)}, got {which!r}")
    result = importlib.import_module(_BENCHES[which]).main(ctx.args)
    raise typer.Exit(result if isinstance(result, int) else 0)


if __name__ == "__main__":
    app()
