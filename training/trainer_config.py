"""The trainer's knobs, from the ``trainer_*`` settings."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from streamcore.settings import Settings
from training.data.benchmark import BenchmarkConfig


class TrainerConfig(BaseModel):
    """The trainer's knobs. Build it with :meth:`from_settings`: the ``trainer_*`` defaults live in Settings."""

    model_config = ConfigDict(frozen=True)

    interval_s: float | None = Field(gt=0, description="retrain period; None: no schedule")
    min_feedback: int | None = Field(ge=1, description="new feedback examples that trigger a run; None: never")
    gate_margin: float = Field(ge=0, le=1, description="how much worse than serving a candidate may be")
    max_posts: int = Field(ge=1, description="posts kept for joining feedback")
    max_examples: int = Field(ge=1, description="feedback examples retained for training")
    backbone: str
    head: str
    multi: bool
    device: str
    n_train: int = Field(ge=10)
    n_test: int = Field(ge=10)
    image_size: int = Field(64, ge=32, description="benchmark and stored-post image side")
    epochs: int = Field(ge=1)
    pretrain_epochs: int = Field(ge=0, description="cold start only: end-to-end epochs before freezing")
    lr: float = Field(0.05, gt=0)
    seed: int = 0
    #: Also gate on real photos (the committed fixture): never replace a model that is right about photos by
    #: one that only learnt the synthetic benchmark.
    real_gate: bool = True
    #: While nothing is promoted: continue the packaged real-photo model, or train one on the benchmark.
    start_from: Literal["packaged", "benchmark"] = "packaged"
    post_image_size: int = Field(288, ge=32, description="side of the kept copy of a post's image")
    gate_data: Path | None = Field(None, description="a manifest of held-out real photos every candidate is gated on")
    cache_dir: Path | None

    @classmethod
    def from_settings(cls, settings: Settings, **overrides: object) -> TrainerConfig:
        """The trainer's settings plus the serving device."""
        trainer = settings.trainer
        knobs = {name: getattr(trainer, name) for name in
                 ("interval_s", "min_feedback", "gate_margin", "max_posts", "max_examples", "n_train", "n_test",
                  "epochs", "pretrain_epochs", "multi", "cache_dir", "real_gate", "backbone", "head", "start_from",
                  "post_image_size", "gate_data")}
        return cls(**{**knobs, "device": settings.serving.device, **overrides})

    def benchmark(self, *, multi: bool) -> BenchmarkConfig:
        return BenchmarkConfig(multi=multi, n_train=self.n_train, n_test=self.n_test, size=self.image_size,
                               seed=self.seed)
