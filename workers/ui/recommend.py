"""The page's recommendations: items like a post, or for a user, from the recommender ``stylestream recommend`` uses.

The index lives in this process (loaded from the CLI's snapshots, caught up with the repository streams before
each answer); answers are computed one at a time on a worker thread, off the page's event loop.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from streamcore.extras import needs
from streamcore.settings import Settings


class Recommendations:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._recommender: Any = None
        self._lock = threading.Lock()  # one index, one answer at a time

    def _answer(self, user: str, like: str, k: int) -> dict:
        with self._lock:
            if self._recommender is None:
                with needs("recommend"):
                    from training.recommend.service import Recommender
                self._recommender = Recommender(self.settings, index_dir=self.settings.profiles.index_dir)
            self._recommender.sync()
            answer = self._recommender.more_like_this(like, k) if like else self._recommender.recommend(user, k)
            return answer.to_dict()

    async def answer(self, *, user: str = "", like: str = "", k: int = 10) -> dict:
        """``Answer.to_dict()`` for a user's profile or for items like one post."""
        return await asyncio.get_running_loop().run_in_executor(None, self._answer, user, like, k)
