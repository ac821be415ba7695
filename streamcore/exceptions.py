"""The one base exception of stylestream and its few subclasses."""


class StylestreamError(Exception):
    """Base class of every error stylestream raises on purpose."""


class InfrastructureError(StylestreamError):
    """The broker or Redis could not be started or reached."""


class BadInput(StylestreamError):
    """A message that can never be processed; it goes to the dead-letter topic with ``code``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class DeliveryError(StylestreamError):
    """Records the broker did not take (it went away, refused them, or did not answer in time).

    ``failed`` maps each record's key (the post id) to the reason.
    """

    def __init__(self, failed: dict[str, str]) -> None:
        self.failed = dict(failed)
        ids = list(self.failed)
        shown = ", ".join(ids[:10]) + (f" and {len(ids) - 10} more" if len(ids) > 10 else "")
        reasons = "; ".join(sorted(set(self.failed.values()))[:3])
        super().__init__(f"{len(ids)} record(s) not delivered: {shown} ({reasons})")
