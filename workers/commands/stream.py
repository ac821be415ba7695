"""Commands that run or feed the stream: ``up``, ``produce``, ``tail``, ``topics``, ``worker``."""

from __future__ import annotations

import threading
from contextlib import closing
from enum import Enum
from typing import Annotated

import typer

from workers.commands import console, errors, quiet_kafka, settings


class Stage(str, Enum):
    """A stream stage, as ``stylestream worker`` takes it (the members are :data:`workers.STAGES`)."""

    text = "text"
    classify = "classify"
    trainer = "trainer"
    profiles = "profiles"
    catalogue = "catalogue"


def _positive(value: float | None) -> float | None:
    if value is not None and not 0 < value < float("inf"):  # also refuses nan, which compares false both ways
        raise typer.BadParameter(f"must be a finite number more than 0, got {value:g}")
    return value


def up(
    demo: Annotated[bool, typer.Option(help="Also produce posts of real photos and print labels.")] = False,
    rate: Annotated[float, typer.Option(help="Demo posts per second.", callback=_positive)] = 5.0,
    ui: Annotated[bool, typer.Option(help="Also serve the review page (see `ui`).")] = True,
) -> None:
    """Start the broker + Redis (unless external ones are configured), topics and all stages."""
    from workers.launcher import run_up

    raise typer.Exit(run_up(settings(), demo=demo, rate=rate, console=console, ui=ui))


def produce(
    file: Annotated[typer.FileBinaryRead | None, typer.Option(
        "--file", "-f", metavar="FILE",
        help="Send the post/v1 records of this JSON-lines file ('-': standard input) instead of generated "
             "posts.")] = None,
    count: Annotated[int | None, typer.Option(
        min=1, help="Number of posts (generated: 100 by default; from a file: all of them).")] = None,
    rate: Annotated[float | None, typer.Option(
        help="Posts per second (default: as fast as possible).", callback=_positive)] = None,
    multi: Annotated[bool, typer.Option(help="Generated outfits of 2-4 items per image.")] = False,
    seed: Annotated[int, typer.Option(min=0, help="Random seed of generated posts.")] = 0,
    real: Annotated[bool, typer.Option(help="Generated posts of real photos (the packaged fixture).")] = False,
) -> None:
    """Produce posts to the posts topic: your own (--file) or generated ones (drawn garments, or real photos).

    Exits 1 when a line is not a valid post (it is not sent) or the broker did not take a post.
    """
    from streamcore.exceptions import DeliveryError
    from workers.launcher import produce_lines, produce_synthetic, report_undelivered

    if file is not None and (multi or real):
        raise typer.BadParameter("--multi and --real shape generated posts; a file's posts are sent as they are")
    config = settings()
    quiet_kafka()
    refused = []

    def refuse(line: int, reason: str) -> None:
        refused.append(line)
        errors.print(f"line {line} not sent: {reason}", markup=False, highlight=False, soft_wrap=True)

    try:
        if file is not None:
            sent = produce_lines(config, file, count=count, rate=rate, on_refused=refuse)
        else:
            sent = produce_synthetic(config, count=100 if count is None else count, rate=rate, multi=multi,
                                     seed=seed, real=real)
    except DeliveryError as failure:
        report_undelivered(errors, failure)
        raise typer.Exit(1) from None
    console.print(f"produced {sent} posts to {config.kafka.topic('posts')}")
    if refused:
        errors.print(f"{len(refused)} line(s) refused")
        raise typer.Exit(1)


def tail(
    count: Annotated[int | None, typer.Option(min=1, help="Stop after N labels.")] = None,
    from_beginning: Annotated[bool, typer.Option(help="Replay the labels topic from the start.")] = False,
    json_lines: Annotated[bool, typer.Option("--json", help="Print each label/v1 record as one JSON line.")] = False,
) -> None:
    """Print labels as they arrive (Ctrl-C stops)."""
    from streamcore.client import StylestreamClient
    from workers.launcher import ctrl_c_sets, print_label

    config = settings()
    quiet_kafka()
    stop = threading.Event()
    with ctrl_c_sets(stop), StylestreamClient(config) as client, \
            closing(client.labels(from_beginning=from_beginning, stop=stop)) as labels:
        for n, label in enumerate(labels, 1):
            if json_lines:
                typer.echo(label.model_dump_json(by_alias=True, exclude_none=True))
            else:
                print_label(console, label)
            if count is not None and n >= count:
                break
    if client.skipped_labels:
        errors.print(f"skipped {client.skipped_labels.total()} label record(s) that could not be read: "
                     f"{dict(client.skipped_labels)}", highlight=False)


def topics() -> None:
    """Create the contract topics with the configured partitions and size limit (idempotent; for deploy jobs)."""
    from streamcore.kafka import ensure_topics, topic_max_bytes, undersized_topics

    config = settings()
    quiet_kafka()
    created = ensure_topics(config)
    console.print(f"created {created or 'nothing'}; {config.kafka.partitions} partitions each", soft_wrap=True)
    for topic, limit in undersized_topics(config).items():
        errors.print(f"warning: {topic} takes records up to {limit} bytes, posts may have "
                     f"{config.limits.max_message_bytes}: set its max.message.bytes to {topic_max_bytes(config.limits)} "
                     "(docs/contract.md)", highlight=False, soft_wrap=True)


def worker(stage: Annotated[Stage, typer.Argument(help="The stage to run.", metavar="STAGE")]) -> None:
    """Run one stage against the configured Kafka/Redis (run many for scale-out)."""
    if stage.value == "text":
        from workers.text import run
    elif stage.value == "classify":
        from workers.classify import run
    elif stage.value == "trainer":
        from workers.trainer import run
    elif stage.value == "profiles":
        from workers.profiles import run
    else:
        from workers.catalogue import run
    run(settings())


def register(app: typer.Typer) -> None:
    for command in (up, produce, tail, topics, worker):
        app.command()(command)
