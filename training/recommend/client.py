"""The Python client with recommendations: everything :class:`~streamcore.client.StylestreamClient` does, plus
``recommend(user, k)`` and ``more_like_this(post_id, k)``::

    with RecommendClient(Settings.named(kafka="broker:9092", redis_url="redis://cache:6379")) as client:
        client.add_catalogue_item("dress.jpg", title="Linen midi dress", shop="atelier")
        answer = client.recommend("anna.styles", k=10)
        for item in answer.items:
            print(item.post_id, item.catalogue, item.facet, item.terms)

Needs the ``recommend`` extra. It reads what ``stylestream recommend`` reads: the repositories and profiles in Redis, and the index snapshots
under ``recommend_index_dir`` (loaded once, then caught up with the repository streams before every answer). The
recommendation code needs the ontology and the index, which the transport layer (:mod:`streamcore`) does not
carry, so this class lives with them.
"""

from __future__ import annotations

from pathlib import Path

from streamcore.client import StylestreamClient
from streamcore.extras import needs
from streamcore.settings import Settings

with needs("recommend"):
    from training.recommend.service import Answer, Recommender


class RecommendClient(StylestreamClient):
    """A :class:`StylestreamClient` that also answers recommendations."""

    def __init__(self, settings: Settings, *, index_dir: Path | None = None) -> None:
        super().__init__(settings)
        self._index_dir = index_dir if index_dir is not None else settings.profiles.index_dir
        self._recommender: Recommender | None = None

    def _caught_up(self) -> Recommender:
        if self._recommender is None:
            self._recommender = Recommender(self.settings, index_dir=self._index_dir, redis=self._redis_client())
        self._recommender.sync()
        return self._recommender

    def recommend(self, user: str, k: int = 10, *, ranking: str = "cover") -> Answer:
        """The k repository items (posts and catalogue items) for ``user``'s style profile, diversified over the
        garments and body parts the profile shows; an empty answer when the user has no profile yet.

        Raises:
            ValueError: ``k`` below 1, an unknown ranking, or a user name that is not valid UTF-8.
        """
        return self._caught_up().recommend(user, k, ranking=ranking)

    def more_like_this(self, post_id: str, k: int = 10, *, ranking: str = "cover") -> Answer:
        """The k items most like one indexed post (or catalogue item), diversified the same way.

        Raises:
            ValueError: ``k`` below 1, or an unknown ranking.
        """
        return self._caught_up().more_like_this(post_id, k, ranking=ranking)
