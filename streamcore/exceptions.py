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
