"""The pipeline benchmark's references: the model, the decoder and the ingest path alone, on the same host state."""


from __future__ import annotations

import base64
import os
import statistics
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from serving.images import decode_image, decode_scaled, to_chw
from serving.predict import EncodedJpeg, Predictor
from streamcore.schemas import Hints, Post
from streamcore.serde import decode_post, encode
from streamcore.settings import Settings
from streamcore.sinks import fingerprint


def timed_rate(step: Callable[[], int], *, repeats: int) -> tuple[float, float]:
    """Median items/s of ``repeats`` timed runs of ``step`` (which returns how many items it did), and the
    median CPU milliseconds per item of this process, all threads (steadier than wall time on a shared host)."""
    rates, cpu = [], []
    for _ in range(repeats):
        wall, used = time.perf_counter(), time.process_time()
        done = step()
        rates.append(done / (time.perf_counter() - wall))
        cpu.append((time.process_time() - used) * 1000 / done)
    return statistics.median(rates), statistics.median(cpu)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def measure_model_alone(predictor: Predictor, hints: list[Hints], batch: int, images: int) -> tuple[float, float]:
    size = predictor.image_size
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    rows, ids, stamps = list(pixels), [f"m{i}" for i in range(batch)], [0] * batch
    batch_hints = [hints[i % len(hints)] for i in range(batch)]

    staged = predictor.stage(rows, batch_hints)  # on the device already, as nvJPEG leaves photos

    def step(rounds: int) -> int:
        for _ in range(rounds):
            predictor.label_json(predictor.infer(staged), ids, stamps)
        return rounds * batch

    step(1)  # warm-up (cuDNN autotuning, allocator)
    return timed_rate(lambda: step(max(1, images // batch)), repeats=3)


def measure_decode_alone(predictor: Predictor, blobs: list[bytes], *, images: int, threads: int, cuda_batches: Sequence[int],
                  cuda_images: int, max_pixels: int) -> dict:
    size = predictor.image_size
    work = [blobs[i % len(blobs)] for i in range(images)]

    def serial(fn: Callable[[bytes], object]) -> Callable[[], int]:
        return lambda: sum(1 for b in work if fn(b) is not None)

    def old(b: bytes):
        return to_chw(decode_image(b, max_pixels=max_pixels), size)

    def new(b: bytes):
        return decode_scaled(b, size, max_pixels=max_pixels)

    with ThreadPoolExecutor(threads) as pool:
        def parallel() -> int:
            return sum(1 for _ in pool.map(new, work))

        result = {"old_full_decode_1_core": round(timed_rate(serial(old), repeats=3)[0], 1),
                  "new_dct_scaled_1_core": round(timed_rate(serial(new), repeats=3)[0], 1),
                  f"new_dct_scaled_{threads}_threads": round(timed_rate(parallel, repeats=3)[0], 1)}
    if predictor.cuda:
        for batch in cuda_batches:
            encoded = [EncodedJpeg(work[i % len(work)]) for i in range(batch)]
            predictor.stage(encoded, [None] * batch)  # warm-up
            rounds = max(1, cuda_images // batch)

            def staged(encoded: list[EncodedJpeg] = encoded, rounds: int = rounds) -> int:
                return sum(predictor.stage(encoded, [None] * len(encoded)).images.shape[0] for _ in range(rounds))

            result[f"nvjpeg_batch_{batch}"] = round(timed_rate(staged, repeats=3)[0], 1)
    return result


def measure_ingest_alone(posts: list[Post], settings: Settings, *, images: int, threads: int) -> dict:
    """Posts per second through what the classifier does to a message before its image is decoded: parse and
    validate, fingerprint (SHA-256), base64 → JPEG bytes. Old: stdlib base64, all of it on the event loop's
    one thread; new: pybase64, in the parse/decode threads."""
    raw = [encode(posts[i % len(posts)]) for i in range(images)]

    def old(value: bytes) -> bytes:
        post = decode_post(value, settings.limits)
        fingerprint(value)
        return base64.b64decode(post.image.b64, validate=True)

    def new(value: bytes) -> bytes:
        post = decode_post(value, settings.limits)
        fingerprint(value)
        return post.image.raw_bytes()

    with ThreadPoolExecutor(threads) as pool:
        return {"old_stdlib_1_core": round(timed_rate(lambda: sum(1 for v in raw if old(v)), repeats=3)[0], 1),
                "new_1_core": round(timed_rate(lambda: sum(1 for v in raw if new(v)), repeats=3)[0], 1),
                f"new_{threads}_threads": round(timed_rate(lambda: sum(1 for _ in pool.map(new, raw)), repeats=3)[0], 1)}
