"""``stylestream classify PHOTO``: one label for one photo, with no broker or Redis, as a classifier makes it."""

from __future__ import annotations

import time
import uuid
from typing import Annotated

import typer

from workers.commands import settings


def classify(
    photo: Annotated[str, typer.Argument(help="A local image file (JPEG, PNG, WebP) or an http(s) URL.",
                                         metavar="PHOTO")],
    caption: Annotated[str, typer.Option(help="The post's caption: mined for hints, as the text stage does.")] = "",
    post_id: Annotated[str | None, typer.Option(help="post_id of the label (default: a random one).")] = None,
    model: Annotated[str | None, typer.Option(
        help="Registry version to serve (default: the newest in STYLESTREAM_MODEL_DIR, else the packaged model).",
    )] = None,
) -> None:
    """Print the label/v1 record of one photo as one JSON line (no Kafka or Redis needed)."""
    from serving.predict import Predictor
    from serving.registry import Registry
    from streamcore.client import image_source
    from streamcore.exceptions import BadInput
    from streamcore.schemas import check_post_id
    from streamcore.sources import load_bytes

    if post_id is not None:
        try:
            check_post_id(post_id)
        except BadInput as exc:
            raise typer.BadParameter(f"{exc.detail}: 1-128 of A-Z a-z 0-9 _ . : -", param_hint="--post-id") from None
    config = settings()
    try:
        source = image_source(photo)
    except FileNotFoundError:
        raise typer.BadParameter(f"no image file {photo!r}", param_hint="PHOTO") from None
    if model is not None:
        try:
            Registry(config.serving.model_dir).get(model)
        except (KeyError, ValueError) as exc:
            raise typer.BadParameter(str(exc).strip("'\""), param_hint="--model") from None
    post_id = post_id or uuid.uuid4().hex
    received_ms = int(time.time() * 1000)
    image = load_bytes(source, config)  # the classifier's checks: size, URL policy
    hints = None
    if caption:
        from training.text import TextMiner

        hints = TextMiner.load().mine_text(caption, post_id=post_id)
    predictor = Predictor.load(config, model)
    prepared = predictor.prepare(image, max_pixels=config.limits.max_image_pixels)
    label = predictor.predict([prepared], [hints], [post_id], [received_ms])[0]
    typer.echo(label.model_dump_json(by_alias=True, exclude_none=True))


def register(app: typer.Typer) -> None:
    app.command()(classify)
