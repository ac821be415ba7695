"""JSON (de)serialisation of contract messages, turning every failure into a dead-letter reason."""

from __future__ import annotations

from typing import TypeVar

from pydantic import BaseModel, ValidationError

from streamcore.exceptions import BadInput
from streamcore.schemas import Post
from streamcore.sections import LimitsSettings

M = TypeVar("M", bound=BaseModel)


def encode(message: BaseModel) -> bytes:
    """Compact JSON with contract field names (``schema``, not ``schema_``)."""
    return message.model_dump_json(by_alias=True, exclude_none=True).encode()


def decode(raw: bytes | None, model: type[M], *, max_bytes: int, tolerant: bool = False) -> M:
    """Parse and validate one message; ``tolerant``: fields ``model`` does not know (at any depth) are ignored, as
    a reader of a record another version may have written does.

    Raises:
        BadInput: ``empty``, ``too_large``, ``bad_encoding``, ``bad_json`` or ``bad_schema``.
    """
    if not raw:
        raise BadInput("empty", "message value is empty")
    if len(raw) > max_bytes:
        raise BadInput("too_large", f"message is {len(raw)} bytes, limit {max_bytes}")
    try:
        return model.model_validate_json(raw, extra="ignore" if tolerant else None)
    except ValidationError as exc:
        errors = exc.errors()
        if errors and errors[0]["type"] == "json_invalid":
            try:
                raw.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise BadInput("bad_encoding", f"not UTF-8: {bad}") from None
            raise BadInput("bad_json", f"not JSON: {errors[0]['msg']}") from None
        detail = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in errors[:5])
        raise BadInput("bad_schema", detail) from None


def decode_post(raw: bytes | None, limits: LimitsSettings) -> Post:
    """A validated ``post/v1`` within the configured size limits."""
    post = decode(raw, Post, max_bytes=limits.max_message_bytes)
    if post.text_bytes() > limits.max_text_bytes:
        raise BadInput("text_too_long", f"caption+comments are {post.text_bytes()} bytes, limit {limits.max_text_bytes}")
    return post
