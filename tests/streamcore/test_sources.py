"""Image sources read where the image is used: files under the image root (regular files only, capped like
downloads, never blocking), inline base64 (line breaks allowed), and the one path rule of client and classifier."""

from __future__ import annotations

import base64
import io
import os
import socket
import threading
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from streamcore.exceptions import BadInput
from streamcore.schemas import ImageSource
from streamcore.settings import Settings
from streamcore.sources import check_image, load_bytes

#: Long enough for a loaded machine, short enough that a read that blocks fails the test instead of the suite.
GUARD_S = 10


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 90)).save(buf, format="PNG")
    return buf.getvalue()


def _refusal(source: ImageSource, settings: Settings, *, unblock: Path | None = None) -> BadInput:
    """The refusal of ``source``, read on a daemon thread so that a read that blocks fails here (after opening
    ``unblock``, a FIFO, for writing to release it) instead of hanging the suite."""
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(load_bytes(source, settings))
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            outcome.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(GUARD_S)
    if worker.is_alive():
        if unblock is not None:
            os.close(os.open(unblock, os.O_WRONLY | os.O_NONBLOCK))  # the blocked reader sees end of file
        pytest.fail(f"reading {source} did not return within {GUARD_S}s")
    (result,) = outcome
    assert isinstance(result, BadInput), f"{source} was read: {result!r:.80}"
    return result


def test_a_fifo_under_the_root_is_refused_without_blocking(tmp_path) -> None:
    os.mkfifo(tmp_path / "fifo.jpg")
    refusal = _refusal(ImageSource(path="fifo.jpg"), Settings.named(image_root=tmp_path), unblock=tmp_path / "fifo.jpg")
    assert refusal.code == "path_unreadable" and "not a regular file" in refusal.detail


def test_devices_and_directories_are_not_regular_files(tmp_path) -> None:
    (tmp_path / "dev").symlink_to("/dev")  # an image root that is a link to /dev: its devices are inside it
    settings = Settings.named(image_root=tmp_path / "dev")
    refusal = _refusal(ImageSource(path="null"), settings)
    assert refusal.code == "path_unreadable" and "not a regular file" in refusal.detail
    (tmp_path / "shop").mkdir()
    refusal = _refusal(ImageSource(path="shop"), Settings.named(image_root=tmp_path))
    assert refusal.code == "path_unreadable" and "not a regular file" in refusal.detail


def test_a_link_to_a_device_outside_the_root_is_refused(tmp_path) -> None:
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    assert _refusal(ImageSource(path="zero.jpg"), Settings.named(image_root=tmp_path)).code == "path_refused"


def test_a_socket_under_the_root_is_refused(tmp_path) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(tmp_path / "sock.jpg"))
        server.listen()
        assert _refusal(ImageSource(path="sock.jpg"), Settings.named(image_root=tmp_path)).code == "path_unreadable"


def test_files_are_capped_like_downloads_and_not_read_past_the_cap(tmp_path) -> None:
    settings = Settings.named(image_root=tmp_path, max_message_bytes=4096)
    (tmp_path / "fits.jpg").write_bytes(b"x" * 4096)
    assert load_bytes(ImageSource(path="fits.jpg"), settings) == b"x" * 4096
    with open(tmp_path / "huge.jpg", "wb") as huge:
        huge.truncate(64 * 1024 * 1024)  # sparse: no disk, but read whole it would be 64 MiB of memory
    tracemalloc.start()
    try:
        refusal = _refusal(ImageSource(path="huge.jpg"), settings)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert refusal.code == "image_too_large" and "4096" in refusal.detail
    assert peak < 1024 * 1024  # never read whole: a cap's worth of bytes, not 64 MiB
    (tmp_path / "over.jpg").write_bytes(b"x" * 4097)
    assert _refusal(ImageSource(path="over.jpg"), settings).code == "image_too_large"


def test_links_inside_the_root_are_followed(tmp_path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "look.jpg").write_bytes(b"photo")
    (tmp_path / "look.jpg").symlink_to(tmp_path / "real" / "look.jpg")
    (tmp_path / "alias").symlink_to("real")
    settings = Settings.named(image_root=tmp_path)
    assert load_bytes(ImageSource(path="look.jpg"), settings) == b"photo"
    assert load_bytes(ImageSource(path="alias/look.jpg"), settings) == b"photo"


def test_a_loop_of_links_is_unreadable(tmp_path) -> None:
    (tmp_path / "loop.jpg").symlink_to("loop.jpg")
    assert _refusal(ImageSource(path="loop.jpg"), Settings.named(image_root=tmp_path)).code == "path_unreadable"


@pytest.mark.parametrize("path", ["a/../b.jpg", "..", "a/..", "", "/b.jpg", "b\x00.jpg"])
def test_one_path_rule_for_client_and_classifier(tmp_path, path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b.jpg").write_bytes(b"photo")
    assert _refusal(ImageSource(path=path), Settings.named(image_root=tmp_path)).code == "path_refused"
    with pytest.raises(ValueError, match="image.path"):
        check_image(ImageSource(path=path))


def test_an_empty_path_says_so(tmp_path) -> None:
    refusal = _refusal(ImageSource(path=""), Settings.named(image_root=tmp_path))
    assert "empty" in refusal.detail and "directory" not in refusal.detail.lower()


def test_mime_wrapped_base64_is_read(tmp_path) -> None:
    png = _png()
    wrapped = base64.encodebytes(png).decode()  # 76 columns, as the base64 tool writes it
    assert "\n" in wrapped.strip()
    for text in (wrapped, wrapped.replace("\n", "\r\n"), " " + wrapped + "\t"):
        check_image(ImageSource(b64=text))
        assert load_bytes(ImageSource(b64=text), Settings()) == png


@pytest.mark.parametrize("text", [base64.urlsafe_b64encode(b"\xfb\xff\xfe\xfb").decode(), "-_-_"])
def test_url_safe_base64_is_refused_by_name(text) -> None:
    refusal = _refusal(ImageSource(b64=text), Settings())
    assert refusal.code == "image_b64_invalid" and "URL-safe" in refusal.detail


@pytest.mark.parametrize("text", ["***not base64***", "QUJD\u00a0REVG", "QUJDRA"])
def test_other_bad_base64_is_still_refused(text) -> None:
    assert _refusal(ImageSource(b64=text), Settings()).code == "image_b64_invalid"
    with pytest.raises(ValueError):
        check_image(ImageSource(b64=text))


def test_inline_bytes_over_the_cap_are_refused_before_decoding() -> None:
    text = base64.encodebytes(b"x" * 2000).decode()
    refusal = _refusal(ImageSource(b64=text), Settings.named(max_message_bytes=1024))
    assert refusal.code == "image_too_large" and "1024" in refusal.detail
