"""``stylestream recommend``: items for a user's style profile, or like a post, as JSON on stdout; and
``stylestream catalogue add`` / ``remove``: shops' items for the repository."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from streamcore.extras import needs
from workers.commands import quiet_kafka, settings


class Ranking(str, Enum):
    cover = "cover"
    parts = "parts"
    mmr = "mmr"
    plain = "plain"


def recommend(
    user: Annotated[str, typer.Argument(help="Whose style profile to recommend for.")] = "",
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="How many items.")] = 10,
    like: Annotated[str | None, typer.Option("--like", help="Items like this post instead of a user's.")] = None,
    ranking: Annotated[Ranking, typer.Option(
        help="Covering the garments and parts shown, xQuAD over parts, MMR, or plain similarity.")] = Ranking.cover,
) -> None:
    """Recommend repository items for USER's style profile, or items like a post (--like POST_ID), as JSON."""
    with needs("recommend"):
        from threadpoolctl import threadpool_limits

        from training.recommend.service import Recommender
    if bool(user) == bool(like):
        raise typer.BadParameter("name a USER or --like POST_ID" + (", not both" if user else ""))
    _check_text(user, "USER")
    _check_text(like or "", "--like")
    threadpool_limits(1)  # small matrices: a BLAS thread team only costs here
    config = settings()
    recommender = Recommender(config, index_dir=config.profiles.index_dir)
    if any(recommender.sync().values()):  # the next call starts from this snapshot
        recommender.save()
    answer = (recommender.more_like_this(like, k, ranking=ranking.value) if like
              else recommender.recommend(user, k, ranking=ranking.value))
    typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))


def _check_text(value: str, hint: str) -> None:
    """Refuse an argument that is not valid UTF-8 (the shell passed bytes Python could not decode): it names no
    profile or post, and cannot be printed back in the answer."""
    try:
        value.encode()
    except UnicodeEncodeError:
        raise typer.BadParameter(f"{value!r} is not valid UTF-8", param_hint=hint) from None


catalogue = typer.Typer(help="Shops' items on the catalogue topic: recommended beside the posts.", no_args_is_help=True)

#: How the files of the formats the classifier decodes begin (a WebP: RIFF, 4 bytes of size, WEBP).
_MAGIC = {"JPEG": (b"\xff\xd8\xff",), "PNG": (b"\x89PNG\r\n\x1a\n",), "WebP": (b"RIFF", b"WEBP")}


def _is_image(head: bytes) -> bool:
    """True when ``head`` (a file's first 12 bytes) begins a JPEG, PNG or WebP."""
    return any(head.startswith(parts[0]) and (len(parts) == 1 or head[8:12] == parts[1]) for parts in _MAGIC.values())


def _photos(photos: list[str]) -> list[str]:
    """Refuse, before anything is sent, a local file that is missing or is no JPEG, PNG or WebP (URLs are
    downloaded by the stage, which refuses what it cannot decode)."""
    for photo in photos:
        if photo.startswith(("http://", "https://")):
            continue
        try:
            with open(photo, "rb") as file:
                head = file.read(12)
        except OSError as exc:
            raise typer.BadParameter(f"cannot read {photo!r}: {exc.strerror or exc}", param_hint="PHOTO") from None
        if not _is_image(head):
            begins = f"it begins {head[:8].hex(' ')}" if head else "it is empty"
            raise typer.BadParameter(f"{photo!r} is not a JPEG, PNG or WebP image ({begins})", param_hint="PHOTO")
    return photos


def _item_id(value: str | None) -> str | None:
    from streamcore.exceptions import BadInput
    from streamcore.schemas import check_post_id

    try:
        return None if value is None else check_post_id(value)
    except BadInput as exc:
        raise typer.BadParameter(exc.detail) from None


@catalogue.command("add")
def add(
    photos: Annotated[list[str], typer.Argument(help="Image files (JPEG, PNG, WebP) or http(s) URLs.",
                                                metavar="PHOTO...", callback=_photos)],
    shop: Annotated[str, typer.Option(help="Whose items they are.")] = "catalogue",
    title: Annotated[str, typer.Option(help="The items' title (fixed once labelled: to change it, remove the item "
                                       "and add it again).")] = "",
    item_id: Annotated[str | None, typer.Option("--id", help="The item id (one photo only; default: a digest of it; "
                                                "1-128 of A-Z a-z 0-9 _ . : -).", callback=_item_id)] = None,
) -> None:
    """Send photos to the catalogue topic as a shop's items; the catalogue stage labels them with the serving model
    and they join the repository. Prints each item's id."""
    from streamcore.client import StylestreamClient

    if item_id is not None and len(photos) != 1:
        raise typer.BadParameter("--id names one item: give one photo", param_hint="--id")
    quiet_kafka()
    with StylestreamClient(settings()) as client:
        for photo in photos:
            try:
                delivery = client.add_catalogue_item(photo, item_id=item_id, title=title, shop=shop)
            except FileNotFoundError:
                raise typer.BadParameter(f"no image file {photo!r}", param_hint="PHOTO") from None
            typer.echo(delivery.post_id)


@catalogue.command("remove")
def remove(item_ids: Annotated[list[str], typer.Argument(help="The items' ids (as `add` printed them).",
                                                         metavar="ITEM_ID...")]) -> None:
    """Remove shops' items: a tombstone per item on the catalogue topic; the catalogue stage takes each out of the
    repository, so no recommendation names it again (an id it never labelled, such as a post's, is dead-lettered
    as ``not_catalogue_item``)."""
    from streamcore.client import StylestreamClient
    from streamcore.exceptions import BadInput
    from streamcore.schemas import check_post_id

    for item_id in item_ids:  # every id checked before any is sent
        try:
            check_post_id(item_id)
        except BadInput as exc:
            raise typer.BadParameter(str(exc), param_hint="ITEM_ID") from None
    quiet_kafka()
    with StylestreamClient(settings()) as client:
        for item_id in item_ids:
            client.remove_catalogue_item(item_id).wait()
            typer.echo(f"removal of {item_id} sent")


def register(app: typer.Typer) -> None:
    app.command()(recommend)
    app.add_typer(catalogue, name="catalogue")
