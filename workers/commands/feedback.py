"""``stylestream correct``: a user's correction of one post's label, sent to the ``feedback`` topic.

The same rules as the review page's form (:func:`workers.ui.corrections.check`): terms from the ontology, one
category unless the model the trainer continues is multi-label, and ``--no-garment`` (no category at all) only
for such a model. Refused here, a correction never reaches the trainer to be dead-lettered there.
"""

from __future__ import annotations

from typing import Annotated

import typer
from redis.exceptions import RedisError

from workers.commands import errors, quiet_kafka, settings


def correct(
    post_id: Annotated[str, typer.Argument(help="The post whose label is wrong.", metavar="POST_ID")],
    categories: Annotated[list[str] | None, typer.Argument(
        help="Every garment category the photo shows (ontology names).", metavar="[CATEGORY]...")] = None,
    sub: Annotated[list[str] | None, typer.Option("--sub", help="A sub-category it shows (repeat the option).")] = None,
    attr: Annotated[list[str] | None, typer.Option("--attr", help="An attribute it shows (repeat the option).")] = None,
    no_garment: Annotated[bool, typer.Option("--no-garment", help="The photo shows no garment: the label should "
                                                                  "abstain.")] = False,
    by: Annotated[str, typer.Option("--by", help="Who sends it (kept in the record as sent_by).")] = "stylestream correct",
) -> None:
    """Correct a post's label: send the categories (--sub, --attr) its photo shows, or --no-garment, to the
    feedback topic; the trainer learns from it at its next run. Prints where the record landed."""
    from serving.ontology import load_ontology
    from streamcore.client import StylestreamClient
    from training.continued import learns_multi
    from workers.ui.corrections import Refused, check

    if no_garment == bool(categories):
        raise typer.BadParameter("name the categories the photo shows, or --no-garment (not both)",
                                 param_hint="CATEGORY")
    config = settings()
    quiet_kafka()
    with StylestreamClient(config) as client:
        try:
            version, labelled = client.serving_version(), client.label(post_id) is not None
        except (RedisError, ValueError):  # Redis away or not configured: judged by what serves with no pointer
            version, labelled = None, True
        body = {"post_id": post_id, "categories": categories or [], "subcategories": sub or [],
                "attributes": attr or [], "sent_by": by}
        try:
            feedback = check(body, load_ontology(), multi=learns_multi(config, version))
        except Refused as exc:
            raise typer.BadParameter(str(exc), param_hint="POST_ID / CATEGORY") from None
        delivery = client.send_feedback(feedback).wait()
    if not labelled:  # sent all the same: the trainer may hold the post after its label expired
        errors.print(f"[yellow]no label is stored for {post_id}: the trainer learns from the correction once it holds "
                     "the post (until then it waits: stylestream_trainer_held_feedback)[/]")
    typer.echo(f"feedback {delivery.partition}/{delivery.offset}: "
               f"{'shows no garment' if feedback.no_garment else ', '.join(feedback.categories)}")


def register(app: typer.Typer) -> None:
    app.command()(correct)
