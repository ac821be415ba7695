"""The predictor's batch path: labels built from one packed score table are the model's, and valid.

CUDA tests (nvJPEG decoding, AMP) run where CUDA is present and are skipped elsewhere.
"""

from __future__ import annotations

import io
import random

import numpy as np
import pytest
import torch
from PIL import Image

from serving.images import EncodedJpeg, decode_scaled, orientation
from serving.models import build_model, hint_tensors
from serving.ontology import load_ontology
from serving.predict import Predictor
from streamcore.exceptions import BadInput
from streamcore.schemas import Hints, Label, ScoredTerm
from training.synthetic.images import draw_garment, jpeg_bytes, photo_like

ONTOLOGY = load_ontology()
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
#: The device-decoding path (torchvision's decode_jpeg; nvJPEG on CUDA) runs on the CPU too.
DEVICES = ["cpu", pytest.param("cuda", marks=cuda)]


def _predictor(device: str = "cpu", backbone: str = "tiny", size: int | None = None, chunk: int | None = None) -> Predictor:
    torch.manual_seed(0)
    model = build_model(backbone=backbone, head="dynamic_layers", ontology=ONTOLOGY, weights="random", image_size=size)
    return Predictor(model, ONTOLOGY, version="v-test", device=torch.device(device), cpu_forward_batch=chunk)


def _hint(post_id: str) -> Hints:
    return Hints(post_id=post_id, miner_version="t", categories=[ScoredTerm(term=ONTOLOGY.category_names[2], score=1.0)])


def test_labels_validate_and_carry_the_models_top_scores():
    predictor = _predictor()
    size = predictor.image_size
    images = list(torch.randint(0, 256, (6, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1)))
    hints = [_hint("p0"), None, _hint("p2"), None, None, _hint("p5")]
    ids, stamps = [f"p{i}" for i in range(6)], [1_700_000_000_000 + i for i in range(6)]
    raw = predictor.label_json(predictor.infer(predictor.stage(images, hints)), ids, stamps)
    labels = [Label.model_validate_json(r) for r in raw]  # the contract's validation, field by field

    with torch.inference_mode():  # reference: the model called directly, per-item top-k on the host
        tensors = hint_tensors(hints, ONTOLOGY)
        out = predictor.model(predictor.model.preprocess(torch.stack(images)), tensors.categories,
                              tensors.attributes, tensors.subcategories)
        probs = torch.softmax(out.categories.float(), 1)
    for i, label in enumerate(labels):
        assert label.post_id == ids[i] and label.model_version == "v-test" and label.head == "dynamic_layers"
        assert label.received_at.timestamp() * 1000 == pytest.approx(stamps[i], abs=1)
        values, indices = probs[i].topk(5)
        assert [t.term for t in label.categories] == [ONTOLOGY.category_names[j] for j in indices.tolist()]
        assert [t.score for t in label.categories] == pytest.approx(values.tolist(), abs=1e-5)
        assert len(label.subcategories) == 5 and len(label.attributes) == 5
        assert label.hints_used.source == ("mined" if hints[i] is not None else "predicted")
        routed = [ONTOLOGY.category_names[k] for k in out.routes[i].nonzero().flatten().tolist()]
        assert label.hints_used.categories == routed
    again = predictor.predict(images, hints, ids, stamps)
    assert [a.model_copy(update={"labeled_at": b.labeled_at}) for a, b in zip(again, labels)] == labels
    assert all(t.score == round(t.score, 6) for t in labels[0].categories)


def test_a_batch_run_in_cpu_sized_chunks_gives_the_same_labels():
    images = list(torch.randint(0, 256, (7, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)))
    hints = [_hint("a"), None, None, _hint("d"), None, None, _hint("g")]
    ids = list("abcdefg")
    whole = _predictor().predict(images, hints, ids, [0] * 7)
    chunked = _predictor(chunk=3).predict(images, hints, ids, [0] * 7)  # 3 + 3 + 1
    for a, b in zip(whole, chunked):
        assert a.post_id == b.post_id and a.hints_used == b.hints_used
        for level in ("categories", "subcategories", "attributes"):
            assert [t.term for t in getattr(a, level)] == [t.term for t in getattr(b, level)]
            assert [t.score for t in getattr(a, level)] == pytest.approx([t.score for t in getattr(b, level)], abs=1e-5)


def test_images_prepared_for_another_input_size_are_resized():
    predictor = _predictor()
    odd = torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8)
    staged = predictor.stage([odd], [None])
    assert tuple(staged.images.shape) == (1, 3, predictor.image_size, predictor.image_size)


def test_on_cpu_prepare_decodes_to_model_size_and_refuses_bad_bytes():
    predictor = _predictor()
    photo = jpeg_bytes(photo_like("shoes", "plain", "black", size=512, rng=random.Random(0)))
    prepared = predictor.prepare(photo, max_pixels=10**8)
    assert isinstance(prepared, torch.Tensor) and tuple(prepared.shape) == (3, 64, 64)
    with pytest.raises(BadInput, match="image_too_large"):  # refused on the header, before any decode
        predictor.prepare(photo, max_pixels=100)
    with pytest.raises(BadInput, match="image_undecodable"):
        predictor.prepare(photo[:1000], max_pixels=10**8)


# -- CUDA --------------------------------------------------------------------------------------------
@cuda
def test_cuda_prepare_leaves_complete_jpegs_encoded_and_decodes_the_rest():
    predictor = _predictor("cuda")
    photo = jpeg_bytes(photo_like("shoes", "plain", "black", size=512, rng=random.Random(0)))
    assert isinstance(predictor.prepare(photo, max_pixels=10**8), EncodedJpeg)
    with pytest.raises(BadInput, match="image_undecodable"):  # truncated: the CPU decoder's verdict
        predictor.prepare(photo[: len(photo) // 2], max_pixels=10**8)


@pytest.mark.parametrize("device", DEVICES)
def test_device_decoding_of_a_batch_matches_the_cpu_decode(device):
    predictor = _predictor(device, size=224)
    blobs = [jpeg_bytes(draw_garment(c, "checked", "blue", size=1080, rng=random.Random(i)))
             for i, c in enumerate(["dresses", "shoes", "bags"])]
    blobs.append(jpeg_bytes(photo_like("skirts", "striped", "red", size=720, rng=random.Random(9))))  # other shape
    staged = predictor.stage([EncodedJpeg(b) for b in blobs], [None] * len(blobs))
    assert staged.images.device.type == device and tuple(staged.images.shape) == (4, 3, 224, 224)
    assert not staged.refused
    for row, blob in zip(staged.images.cpu(), blobs):
        cpu = decode_scaled(blob, 224, max_pixels=10**8).astype(int)
        assert np.abs(row.numpy().astype(int) - cpu).mean() < 4


@pytest.mark.parametrize("device", DEVICES)
def test_device_decoding_turns_phone_photos_upright(device):
    predictor = _predictor(device, size=224)
    stored = draw_garment("dresses", "checked", "blue", size=720, rng=random.Random(4)).crop((0, 0, 720, 480))
    blobs = []
    for value in (6, 3, 8):
        exif = Image.Exif()
        exif[0x0112] = value
        buf = io.BytesIO()
        stored.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
        blobs.append(buf.getvalue())
    items = [EncodedJpeg(b, orientation(Image.open(io.BytesIO(b)))) for b in blobs]
    assert [i.orientation for i in items] == [6, 3, 8]
    staged = predictor.stage(items, [None] * len(items))
    for row, blob in zip(staged.images.cpu(), blobs):
        cpu = decode_scaled(blob, 224, max_pixels=10**8).astype(int)  # upright (tested against Pillow)
        assert np.abs(row.numpy().astype(int) - cpu).mean() < 4


@pytest.mark.parametrize("device", DEVICES)
def test_an_image_the_device_cannot_decode_is_refused_alone_and_the_rest_is_labelled(device):
    predictor = _predictor(device)
    good = jpeg_bytes(draw_garment("dresses", "plain", "red", size=256, rng=random.Random(0)))
    broken = b"\xff\xd8" + bytes(range(256)) * 8 + b"\xff\xd9"  # JPEG markers around garbage
    items = [EncodedJpeg(good), EncodedJpeg(broken), EncodedJpeg(good)]
    raw = predictor.label_json(predictor.infer(predictor.stage(items, [None] * 3)), ["a", "b", "c"], [0, 0, 0])
    assert isinstance(raw[1], BadInput) and raw[1].code == "image_undecodable"
    assert [Label.model_validate_json(raw[i]).post_id for i in (0, 2)] == ["a", "c"]


@cuda
def test_cuda_labels_agree_with_cpu_labels():
    cpu, gpu = _predictor("cpu"), _predictor("cuda")
    images = list(torch.randint(0, 256, (8, 3, 64, 64), dtype=torch.uint8, generator=torch.Generator().manual_seed(2)))
    hints = [None, _hint("b")] * 4
    ids = [f"x{i}" for i in range(8)]
    on_cpu, on_gpu = cpu.predict(images, hints, ids, [0] * 8), gpu.predict(images, hints, ids, [0] * 8)
    for i, (a, b) in enumerate(zip(on_cpu, on_gpu)):  # AMP on the GPU: scores within fp16 precision
        assert a.hints_used.source == b.hints_used.source
        if hints[i] is not None:  # hinted routes are the hint's; unhinted ones follow near-tied logits
            assert a.hints_used.categories == b.hints_used.categories
        assert [t.score for t in a.categories] == pytest.approx([t.score for t in b.categories], abs=2e-2)
