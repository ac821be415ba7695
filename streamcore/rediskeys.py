"""Redis key names (SPEC "Redis keys")."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RedisKeys:
    """Redis key names (SPEC "Redis keys" with the default prefix ``stylestream``).

    Redis Cluster: keys used together carry a hash tag equal to the name of the contract key they belong
    with (``{stylestream:label:ID}:post`` hashes like ``stylestream:label:ID``), so one script or
    transaction touches one slot while the contract names stay as documented.
    """

    prefix: str = "stylestream"

    def label(self, post_id: str) -> str:
        """The Label JSON of one post."""
        return f"{self.prefix}:label:{post_id}"

    def thumb(self, post_id: str) -> str:
        """Hash beside a label: a small JPEG of the post's photo (``jpeg``) and its ``caption``, for the page."""
        return f"{{{self.label(post_id)}}}:thumb"

    def correction(self, post_id: str) -> str:
        """The last correction of a post sent from the review page (its ``feedback`` JSON)."""
        return f"{{{self.label(post_id)}}}:correction"

    def post_meta(self, post_id: str) -> str:
        """Hash beside a label: the fingerprint of the post it was made from, whether it reached the stream."""
        return f"{{{self.label(post_id)}}}:post"

    def of_post(self, post_id: str) -> list[str]:
        """Every key held for one post's label: the label and what lies beside it (one hash slot)."""
        return [self.label(post_id), self.post_meta(post_id), self.label_vector(post_id), self.thumb(post_id),
                self.correction(post_id)]

    def label_vector(self, post_id: str) -> str:
        """Beside a label: its post's fashion vector record (user, creation time, image embedding)."""
        return f"{{{self.label(post_id)}}}:vec"

    @property
    def labels_stream(self) -> str:
        return f"{self.prefix}:labels"

    @property
    def model_current(self) -> str:
        return f"{self.prefix}:model:current"

    @property
    def model_history(self) -> str:
        """Promotion history; in the serving pointer's slot so promote/rollback run as one transaction."""
        return f"{{{self.model_current}}}:history"

    @property
    def model_chosen(self) -> str:
        """The version an operator last promoted by hand: the trainer's gate never lets a candidate fall below it."""
        return f"{{{self.model_current}}}:chosen"

    @property
    def model_events(self) -> str:
        """Log of promotions and rollbacks (JSON: kind, version, time, reason), newest first; same slot."""
        return f"{{{self.model_current}}}:events"

    @property
    def trainer(self) -> str:
        """Prefix of the trainer's state keys: one hash tag, so its scripts and transactions use one slot."""
        return f"{{{self.prefix}:trainer}}:"

    @property
    def run_lease(self) -> str:
        """The trainer's run lease; in the serving pointer's slot, so promotion checks it in the same script."""
        return f"{{{self.model_current}}}:lease"

    def guard(self, version: str) -> str:
        """The live guard's tally of one model version (its ``:posts`` set shares the tag)."""
        return f"{{{self.prefix}:guard:{version}}}"
