"""Message schemas of the external contract (SPEC "Contract"): Post, Hints, Label, Feedback, DeadLetter, ModelUpdate.

These models are what the stages write and accept. :class:`LabelView` is the tolerant model readers use for labels
(new fields and heads appear without a schema bump). ``schemas/`` holds the JSON Schema files generated from them
(:mod:`streamcore.contract`).
"""

from __future__ import annotations

import binascii
from datetime import UTC, datetime
from typing import Annotated, Literal

import pybase64
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from streamcore.exceptions import BadInput

PostId = Annotated[str, StringConstraints(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:-]+$")]
_POST_ID = TypeAdapter(PostId)


def check_post_id(value: str) -> str:
    """``value`` when it is a valid post id (1-128 of ``[A-Za-z0-9_.:-]``).

    Raises:
        BadInput: it is not.
    """
    try:
        return _POST_ID.validate_python(value)
    except ValidationError:
        raise BadInput("bad_schema", f"not a post id: {value[:140]!r}") from None

def utcnow() -> datetime:
    """Timezone-aware now, the only clock used for message timestamps."""
    return datetime.now(UTC)


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=False)


#: What base64 tools put between lines (``base64`` wraps at 76 columns): not part of the data.
_B64_WHITESPACE = b" \t\n\r\f\v"


def decode_b64(text: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of standard base64 ``text`` (``+`` and ``/``, ``=`` padding), line breaks and other ASCII
    whitespace allowed anywhere; strict otherwise.

    Raises:
        BadInput: ``image_b64_invalid`` (other characters, the URL-safe alphabet, bad padding), or
            ``image_too_large`` when the decoded bytes would exceed ``max_bytes`` (checked before decoding).
    """
    try:
        raw = text.encode("ascii")
    except UnicodeEncodeError:
        raise BadInput("image_b64_invalid", "image.b64 is not valid base64: it holds non-ASCII characters") from None
    raw = raw.translate(None, _B64_WHITESPACE)
    if max_bytes is not None and len(raw) // 4 * 3 > max_bytes:
        raise BadInput("image_too_large", f"image.b64 decodes to about {len(raw) // 4 * 3} bytes, limit {max_bytes}")
    try:  # pybase64: SIMD, ~50x the stdlib on a 1080 px photo, same strict alphabet
        return pybase64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError) as exc:
        if b"-" in raw or b"_" in raw:
            raise BadInput("image_b64_invalid", "image.b64 uses the URL-safe alphabet ('-', '_'); send standard "
                                                "base64 ('+', '/')") from None
        raise BadInput("image_b64_invalid", f"image.b64 is not valid base64 (standard alphabet, line breaks "
                                            f"allowed): {exc}") from None


class ImageSource(_Message):
    """Exactly one of inline bytes (base64), an https URL, or a path relative to the image root."""

    # The rule of _exactly_one for JSON Schema readers: one source is a string, the others absent or null.
    model_config = ConfigDict(extra="forbid", frozen=True, json_schema_extra={"oneOf": [
        {"required": [name], "properties": {name: {"type": "string"}}} for name in ("b64", "url", "path")]})

    b64: str | None = None
    url: str | None = None
    path: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ImageSource:
        given = [k for k in ("b64", "url", "path") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"image needs exactly one of b64/url/path, got {given or 'none'}")
        return self

    def raw_bytes(self) -> bytes:
        """Decoded inline bytes; only for ``b64`` sources.

        Base64 is checked here, where the image is read, not at parse time: stages that never look at
        the image (the text miner) should neither pay for decoding it nor refuse the post over it.

        Raises:
            BadInput: ``image_b64_invalid``.
        """
        if self.b64 is None:
            raise ValueError("image has no inline bytes")
        return decode_b64(self.b64)


#: What the JSON Schema says of a text the model refuses NUL characters in (``Post._no_nul``).
_NO_NUL = {"pattern": "^[^\\u0000]*$"}


class Post(_Message):
    """``post/v1``: an Instagram post as it arrives on the ``posts`` topic."""

    schema_: Literal["post/v1"] = Field("post/v1", alias="schema")
    post_id: PostId
    #: RFC 3339, with its offset: a time without one would be read in each worker's own time zone.
    created_at: AwareDatetime
    user: str = Field(max_length=256, json_schema_extra=_NO_NUL)
    caption: str = Field("", json_schema_extra=_NO_NUL)
    comments: list[str] = Field(default_factory=list, max_length=10_000)
    hashtags: list[str] = Field(default_factory=list, max_length=1_000)
    user_tags: list[str] = Field(default_factory=list, max_length=1_000)
    image: ImageSource

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("caption", "user")
    @classmethod
    def _no_nul(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("text contains NUL characters")
        return value

    def text_bytes(self) -> int:
        """UTF-8 size of caption + comments, the quantity the text limit applies to."""
        return len(self.caption.encode()) + sum(len(c.encode()) for c in self.comments)


class _Term(_Message):
    term: str
    score: float = Field(ge=0.0, le=1.0)


class ScoredTerm(_Term):
    """An ontology term with its share of the class (scores of one class sum to 1)."""


class LabelTerm(_Term):
    """An ontology term with the model's probability, in [0, 1], that the photo shows it. Each term's probability
    is independent of the others': the scores of one class need not sum to 1."""

    # A ScoredTerm passed in Python is taken as its term and score: the two differ only in what the score means.
    model_config = ConfigDict(extra="forbid", frozen=True, from_attributes=True)


def _sums_to_one(terms: list[ScoredTerm]) -> list[ScoredTerm]:
    if terms and abs(sum(t.score for t in terms) - 1.0) > 1e-3:
        raise ValueError(f"scores must sum to 1 within a class, got {sum(t.score for t in terms):.4f}")
    return terms


class Hints(_Message):
    """``hints/v1``: the text miner's ranked fashion hints for one post (top 4 per class)."""

    schema_: Literal["hints/v1"] = Field("hints/v1", alias="schema")
    post_id: PostId
    miner_version: str
    categories: list[ScoredTerm] = Field(default_factory=list, max_length=4)
    subcategories: list[ScoredTerm] = Field(default_factory=list, max_length=4)
    materials: list[ScoredTerm] = Field(default_factory=list, max_length=4)
    patterns: list[ScoredTerm] = Field(default_factory=list, max_length=4)
    styles: list[ScoredTerm] = Field(default_factory=list, max_length=4)
    brands: list[ScoredTerm] = Field(default_factory=list, max_length=4)
    hashtags: list[str] = Field(default_factory=list)
    handles: list[str] = Field(default_factory=list)
    emojis: list[str] = Field(default_factory=list)

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("categories", "subcategories", "materials", "patterns", "styles", "brands")
    @classmethod
    def _percentages(cls, terms: list[ScoredTerm]) -> list[ScoredTerm]:
        return _sums_to_one(terms)

    @property
    def is_empty(self) -> bool:
        """True when the text named no category at all."""
        return not self.categories


HINT_CLASSES = ("categories", "subcategories", "materials", "patterns", "styles", "brands")


class HintsUsed(_Message):
    """What steered the model for one label."""

    source: Literal["mined", "predicted", "none"]
    categories: list[str] = Field(default_factory=list)


class Label(_Message):
    """``label/v1``: the classifier's output for one post."""

    schema_: Literal["label/v1"] = Field("label/v1", alias="schema")
    post_id: PostId
    model_version: str
    head: Literal["base", "fusion", "dynamic_pruning", "dynamic_layers", "dynamic_layers_pure"]
    categories: list[LabelTerm]
    subcategories: list[LabelTerm]
    attributes: list[LabelTerm]
    hints_used: HintsUsed
    received_at: datetime
    labeled_at: datetime
    #: Set when the model refuses to name garments: ``"no_garment"`` (the photo shows none); the
    #: categories, sub-categories and attributes are then empty. Absent otherwise.
    abstain: Literal["no_garment"] | None = None

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class Feedback(_Message):
    """``feedback/v1``: a user's correction of one post's labels on the ``feedback`` topic (ontology term names).

    ``categories: []`` says the photo shows no garment (a label's ``abstain: "no_garment"``); such a
    correction names no sub-category or attribute either. ``schema`` and ``sent_by`` are optional: records
    written before they existed still parse.
    """

    schema_: Literal["feedback/v1"] = Field("feedback/v1", alias="schema")
    post_id: PostId
    categories: list[str] = Field(max_length=64)
    subcategories: list[str] = Field(default_factory=list, max_length=256)
    attributes: list[str] = Field(default_factory=list, max_length=256)
    #: Who sent it: the name a person gave the review page, or the tool that wrote the record.
    sent_by: str | None = Field(None, min_length=1, max_length=128)

    # The JSON Schema says what the validator below does: no category, then no sub-category or attribute.
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True, json_schema_extra={
        "if": {"properties": {"categories": {"maxItems": 0}}, "required": ["categories"]},
        "then": {"properties": {"subcategories": {"maxItems": 0}, "attributes": {"maxItems": 0}}}})

    @model_validator(mode="after")
    def _no_garment_names_nothing(self) -> Feedback:
        if not self.categories and (self.subcategories or self.attributes):
            raise ValueError("a correction with no category says the photo shows no garment: it names no "
                             "sub-category or attribute either")
        return self

    @property
    def no_garment(self) -> bool:
        """The correction says the photo shows no garment."""
        return not self.categories


class DeadLetter(_Message):
    """A message a stage could not process, with the reason; ``original`` is base64 of the raw bytes.

    A letter must fit what the producer may send: a longer original is cut (``detail`` says so), and
    ``original_bytes`` / ``original_sha256`` describe the whole of it.
    """

    schema_: Literal["dead-letter/v1"] = Field("dead-letter/v1", alias="schema")  # optional on input
    error: str
    detail: str
    stage: str
    original: str
    topic: str
    partition: int
    offset: int
    original_bytes: int | None = None
    original_sha256: str | None = None


class ModelUpdate(_Message):
    """``model-update/v1`` on ``model-updates``: a checkpoint version was promoted to serving."""

    schema_: Literal["model-update/v1"] = Field("model-update/v1", alias="schema")
    version: str
    path: str
    metrics: dict[str, float] = Field(default_factory=dict)
    promoted_at: datetime


class _Tolerant(BaseModel):
    # Readers keep what they do not know (model_extra) instead of refusing the record.
    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class ScoredTermView(_Tolerant):
    """A scored term as a reader sees it."""

    term: str
    score: float


class HintsUsedView(_Tolerant):
    """``hints_used`` as a reader sees it: any source name."""

    source: str
    categories: list[str] = Field(default_factory=list)


class LabelView(_Tolerant):
    """A ``label/v1`` record as consumers read it: fields added later are kept in ``model_extra``, a head this
    version does not know is kept as its name; what a consumer needs (ids, terms, scores, times) is checked."""

    schema_: Literal["label/v1"] = Field("label/v1", alias="schema")
    post_id: str
    model_version: str
    head: str
    categories: list[ScoredTermView] = Field(default_factory=list)
    subcategories: list[ScoredTermView] = Field(default_factory=list)
    attributes: list[ScoredTermView] = Field(default_factory=list)
    hints_used: HintsUsedView
    received_at: datetime
    labeled_at: datetime
    abstain: str | None = None
