"""``stylestream recommend``: items for a user's style profile, or like a post, as JSON on stdout."""

from __future__ import annotations

import json
from enum import Enum
from typing import Annotated

import typer

from streamcore.extras import needs
from workers.commands import settings


class Ranking(str, Enum):
    parts = "parts"
    mmr = "mmr"
    plain = "plain"


def recommend(
    user: Annotated[str, typer.Argument(help="Whose style profile to recommend for.")] = "",
    k: Annotated[int, typer.Option("--k", min=1, max=1000, help="How many items.")] = 10,
    like: Annotated[str | None, typer.Option("--like", help="Items like this post instead of a user's.")] = None,
    ranking: Annotated[Ranking, typer.Option(help="Diverse over body parts, MMR, or plain similarity.")] = Ranking.parts,
) -> None:
    """Recommend repository items for USER's style profile, or items like a post (--like POST_ID), as JSON."""
    with needs("recommend"):
        from threadpoolctl import threadpool_limits

        from training.recommend.service import Recommender
    if not user and not like:
        raise typer.BadParameter("name a USER or --like POST_ID")
    threadpool_limits(1)  # small matrices: a BLAS thread team only costs here
    config = settings()
    recommender = Recommender(config, index_dir=config.recommend_index_dir)
    recommender.sync()
    recommender.save()
    answer = (recommender.more_like_this(like, k, ranking=ranking.value) if like
              else recommender.recommend(user, k, ranking=ranking.value))
    typer.echo(json.dumps(answer.to_dict(), ensure_ascii=False))


def register(app: typer.Typer) -> None:
    app.command()(recommend)
