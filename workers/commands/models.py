"""Commands about models: ``train``, ``eval``, ``import``, ``promote``, ``rollback``, ``export-onnx``, ``bench``.

``train``, ``eval``, ``export-onnx`` and ``bench WHICH`` hand their arguments to the argparse parser of the module
that runs them (``--help`` included): those modules are also run as ``python -m``.
"""

from __future__ import annotations

import importlib
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import click
import typer
from typer.core import TyperCommand

from streamcore.exceptions import StylestreamError
from streamcore.extras import needs
from workers.commands import console, settings

if TYPE_CHECKING:
    from serving.registry import Registry

#: Options go through to argparse, ``--help`` too.
_PASS_THROUGH = {"allow_extra_args": True, "ignore_unknown_options": True, "help_option_names": []}


class Bench(str, Enum):
    """The benchmarks, by the name ``stylestream bench`` takes."""

    heads = "heads"
    pipeline = "pipeline"
    text = "text"
    miner = "miner"
    scale_out = "scale-out"
    runtime = "runtime"
    profiles = "profiles"
    recommend_index = "recommend-index"


_BENCH_MODULES = {
    Bench.heads: "training.bench_heads",
    Bench.pipeline: "workers.benchmarks.pipeline",
    Bench.text: "workers.benchmarks.text",
    Bench.miner: "training.text.evaluate",
    Bench.scale_out: "workers.benchmarks.scale_out",
    Bench.runtime: "workers.benchmarks.runtime",
    Bench.profiles: "workers.benchmarks.profiles",
    Bench.recommend_index: "training.recommend.bench_index",
}


class Dataset(str, Enum):
    """The public labelled-photo datasets ``stylestream import`` reads."""

    clothing_dataset = "clothing-dataset"
    co_parsing = "co-parsing"


def train(ctx: typer.Context) -> None:
    """Train a model and write a checkpoint directory: on labelled real photos with --data MANIFEST, else on the
    synthetic benchmark (see: train --help, train --data x --help)."""
    with needs("train"):
        if any(a == "--data" or a.startswith("--data=") for a in ctx.args):
            from training.real.cli import main
        else:
            from training.train import main
        code = main(ctx.args)
    raise typer.Exit(code)


def import_(
    dataset: Annotated[Dataset, typer.Argument(help="The dataset.")],
    root: Annotated[Path, typer.Argument(help="the dataset's checkout", exists=True, file_okay=False)],
    out: Annotated[Path | None, typer.Option(help="manifest to write (JSONL); ROOT/manifest.jsonl by default")] = None,
    garment_crops: Annotated[bool, typer.Option(help="co-parsing: also a region per large garment of each "
                                                     "training photo, with the garments the mask shows in it")] = False,
) -> None:
    """Turn a public labelled-photo dataset into a manifest for train --data (mapping: docs/real-photos.md)."""
    if garment_crops and dataset is not Dataset.co_parsing:
        raise typer.BadParameter("only co-parsing has masks to cut garment regions from", param_hint="--garment-crops")
    from training.real.importers import import_clothing_dataset, import_co_parsing
    from training.real.manifest import write_manifest

    importer = {Dataset.clothing_dataset: import_clothing_dataset, Dataset.co_parsing: import_co_parsing}[dataset]
    report = importer(root, garment_crops=True) if garment_crops and dataset is Dataset.co_parsing else importer(root)
    out = out or root / "manifest.jsonl"
    records = report.records
    if out.resolve().parent != root.resolve():  # image paths are relative to the manifest's folder
        records = [r.model_copy(update={"image": str((root / r.image).resolve())}) for r in records]
    write_manifest(records, out)
    summary = report.summary()
    console.print(f"{summary['records']} records → {out}; kept {summary['kept']}; dropped {summary['dropped']}")


def eval_(ctx: typer.Context) -> None:
    """Table II: every head x backbone, with and without hints (see: eval --help)."""
    with needs("train"):
        from training.evaluate import main

        code = main(ctx.args)
    raise typer.Exit(code)


def promote(ckpt: Annotated[str, typer.Argument(
        help="a published version, a checkpoint directory to publish, or 'default' for the packaged model")]) -> None:
    """Make a checkpoint the serving model; running classifiers hot-swap to it."""
    from serving.promotion import promote as do_promote
    from serving.registry import Registry
    from training.onnx_export import build_or_skip

    if not ckpt.strip():
        raise typer.BadParameter("give a published version or a checkpoint directory", param_hint="'CKPT'")
    config = settings()
    registry = Registry(config.serving.model_dir)
    version = _packaged(registry) if ckpt == "default" and "default" not in registry.versions() else None
    version = version or _published(registry, ckpt)
    if version is None:  # a checkpoint directory is published first (with its ONNX backbone)
        version = registry.publish(Path(ckpt), build=build_or_skip).version
    update = do_promote(config, version)
    console.print(f"serving [bold]{update.version}[/] ({update.path})")


def _packaged(registry: Registry) -> str:
    """The packaged model's version in ``registry``, published under its own name the first time."""
    from serving.registry import default_entry
    from training.onnx_export import build_or_skip

    entry = default_entry()
    if entry.version not in registry.versions():
        registry.publish(entry.path, name=entry.version, build=build_or_skip)
    return entry.version


def _published(registry: Registry, ckpt: str) -> str | None:
    """The published version ``ckpt`` names, or None where it is a checkpoint directory to publish.

    A published version wins over a folder of the same name under the working directory, and a path to a
    published version's own folder promotes that version: neither is published again as a new one. Only a folder
    holding a checkpoint's files is published: ``.`` or another folder is never copied into the registry.

    Raises:
        StylestreamError: ``ckpt`` is neither a published version nor a checkpoint directory.
    """
    from serving.checkpoint import CONFIG_FILE, WEIGHTS_FILE
    from serving.registry import CHECKSUM_FILE

    source = Path(ckpt)
    here = source.resolve() if source.is_dir() else None
    if here is not None and here.parent == registry.root.resolve() and here.name in registry.versions():
        return here.name
    try:
        return registry.get(ckpt).version
    except ValueError as exc:  # not a version name: ../x, /abs, .
        problem = str(exc)
    except KeyError:
        unsealed = (registry.root / ckpt).is_dir()
        problem = (f"its folder in {registry.root} has no {CHECKSUM_FILE} (not published)" if unsealed
                   else f"no published version {ckpt!r} in {registry.root}")
    if all((source / name).is_file() for name in (WEIGHTS_FILE, CONFIG_FILE)):
        return None
    folder = f" (the folder {ckpt!r} holds no {CONFIG_FILE} and {WEIGHTS_FILE})" if source.is_dir() else ""
    raise StylestreamError(f"not promoted: {ckpt!r} is neither a checkpoint directory nor a published version"
                           f"{folder}: {problem}")


def rollback() -> None:
    """Serve the version promoted before the current one (after the first promotion: promote default)."""
    from serving.promotion import rollback as do_rollback

    try:
        update = do_rollback(settings())
    except KeyError as exc:  # the registry no longer holds the version to go back to
        raise StylestreamError(f"not rolled back: {exc.args[0] if exc.args else exc}") from exc
    console.print(f"rolled back: serving [bold]{update.version}[/]")


def export_onnx(ctx: typer.Context) -> None:
    """Add a version's backbone exported to ONNX (and int8) to it, for the ONNX Runtime (see: export-onnx --help)."""
    from training.onnx_export import main

    raise typer.Exit(main(ctx.args, model_dir=settings().serving.model_dir))


class _HelpBeforeArguments(TyperCommand):
    """``bench --help`` is this command's help; ``bench WHICH --help`` goes through to WHICH's parser."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args[:1] in (["--help"], ["-h"]):
            typer.echo(ctx.get_help())
            ctx.exit(0)
        return super().parse_args(ctx, args)


def bench(ctx: typer.Context, which: Annotated[Bench, typer.Argument(help="The benchmark.", metavar="WHICH")]) -> None:
    """Benchmarks: print a table and write a JSON report under reports/ (see: bench WHICH --help)."""
    with needs("index-bench" if which is Bench.recommend_index else "bench"):
        result = importlib.import_module(_BENCH_MODULES[which]).main(ctx.args)
    raise typer.Exit(result if isinstance(result, int) else 0)


def register(app: typer.Typer) -> None:
    app.command(context_settings=_PASS_THROUGH)(train)
    app.command(name="import")(import_)
    app.command(name="eval", context_settings=_PASS_THROUGH)(eval_)
    app.command()(promote)
    app.command()(rollback)
    app.command(name="export-onnx", context_settings=_PASS_THROUGH)(export_onnx)
    app.command(cls=_HelpBeforeArguments, context_settings=_PASS_THROUGH)(bench)
