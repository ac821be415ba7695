"""Image refusals: every way a post's image can be bad has its own reason code."""

from __future__ import annotations

import base64
import io
import random

import pytest
from PIL import Image

from serving.images import decode_image, load_image, refusals
from streamcore.exceptions import BadInput
from streamcore.schemas import ImageSource
from streamcore.settings import Settings
from training.synthetic.images import draw_garment, jpeg_bytes

JPEG = jpeg_bytes(draw_garment("dresses", "striped", "red", rng=random.Random(0)))


def _code(fn, *args, **kwargs) -> str:
    with pytest.raises(BadInput) as info:
        fn(*args, **kwargs)
    return info.value.code


def test_decodes_jpeg_png_webp_to_rgb():
    for fmt in ("PNG", "WEBP"):
        buf = io.BytesIO()
        Image.new("L", (40, 30), 128).save(buf, format=fmt)
        img = decode_image(buf.getvalue(), max_pixels=10_000)
        assert img.mode == "RGB" and img.size == (40, 30)
    assert decode_image(JPEG, max_pixels=10**6).size == (96, 96)


def test_refusals():
    assert _code(decode_image, b"", max_pixels=100) == "image_empty"
    assert _code(decode_image, JPEG[: len(JPEG) // 2], max_pixels=10**6) == "image_undecodable"
    assert _code(decode_image, b"GIF89a not really", max_pixels=10**6) == "image_undecodable"
    assert _code(decode_image, JPEG, max_pixels=96 * 96 - 1) == "image_too_large"
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="BMP")
    assert _code(decode_image, buf.getvalue(), max_pixels=10**6) == "image_format"


def test_decompression_bomb_is_refused_before_decoding():
    buf = io.BytesIO()
    Image.new("1", (20_000, 20_000)).save(buf, format="PNG")  # 400 Mpx that compress to ~50 kB
    assert len(buf.getvalue()) < 200_000
    assert _code(decode_image, buf.getvalue(), max_pixels=40_000_000) == "image_too_large"


def test_paths_stay_inside_the_image_root(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "ok.jpg").write_bytes(JPEG)
    (tmp_path / "secret.jpg").write_bytes(JPEG)
    settings = Settings.named(image_root=tmp_path / "root")
    assert load_image(ImageSource(path="ok.jpg"), settings).size == (96, 96)
    assert _code(load_image, ImageSource(path="../secret.jpg"), settings) == "path_refused"
    assert _code(load_image, ImageSource(path=str(tmp_path / "secret.jpg")), settings) == "path_refused"
    assert _code(load_image, ImageSource(path="a\x00b.jpg"), settings) == "path_refused"
    assert _code(load_image, ImageSource(path="missing.jpg"), settings) == "path_unreadable"


@pytest.mark.parametrize("url", ["https://127.0.0.1:6379/x.jpg", "https://localhost/a.png", "https://10.1.2.3/a.jpg",
                                 "https://169.254.169.254/latest/meta-data", "https://[::1]/a.jpg",
                                 "http://example.com/a.jpg", "file:///etc/passwd", "ftp://example.com/a.jpg"])
def test_private_and_non_http_urls_are_refused_without_a_request(url):
    assert _code(load_image, ImageSource(url=url), Settings()) == "url_refused"


def test_inline_bytes():
    assert load_image(ImageSource(b64=base64.b64encode(JPEG).decode()), Settings()).mode == "RGB"


@pytest.mark.parametrize("data", [b"definitely not an image", b"GIF89a not really", b"\x00" * 64])
def test_undecodable_bytes_are_described_without_memory_addresses(data):
    with pytest.raises(BadInput) as info:
        decode_image(data, max_pixels=10**6)
    detail = info.value.detail
    assert info.value.code == "image_undecodable"
    assert "0x" not in detail and "object at" not in detail
    assert data[:4].hex(" ") in detail  # what the bytes start with, to tell a format from garbage


def test_no_refusal_carries_an_object_repr():
    with pytest.raises(BadInput) as info, refusals():
        raise OSError(f"broken stream {io.BytesIO()!r}")
    assert "0x" not in info.value.detail and info.value.detail.startswith("OSError: broken stream")
