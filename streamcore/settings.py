"""The one typed settings object. This is the only module that reads the environment."""

from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

#: Stage offsets added to ``metrics_port`` so several stages on one host don't collide.
STAGE_PORT_OFFSET = {"text": 0, "classify": 1, "trainer": 2, "up": 3}


class Settings(BaseSettings):
    """All configuration, from ``STYLESTREAM_*`` environment variables and an optional TOML/JSON file.

    ``kafka``/``redis_url`` unset means "start the embedded broker / Redis". Kafka security options
    (``kafka_options``) and Redis TLS/ACL (in the URL, ``rediss://user:pass@...``) pass through.
    """

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_", frozen=True, extra="ignore")

    kafka: str | None = None
    redis_url: str | None = None
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1)
    max_batch: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(20.0, ge=0)
    device: str = "auto"
    metrics_port: int = Field(9108, ge=0, le=65535)
    model_dir: Path = Path("./models")
    image_root: Path = Path("./images")
    hint_wait_ms: float = Field(2000.0, ge=0)
    #: Posts held by the classifier (waiting for hints or in a batch) before it pauses fetching.
    max_inflight: int = Field(1024, ge=1)
    #: How often a classifier checks the serving pointer in Redis for a new model.
    model_poll_s: float = Field(1.0, gt=0)
    head: str = "fusion"  # issue 14: late fusion beats the dynamic heads in Table II (README)
    backbone: str = "tiny"

    # Consumer behaviour. 6 s keeps group joins ~3 s on the embedded broker; production may raise it.
    group_prefix: str = "stylestream"
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(2000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    fetch_max_records: int = Field(500, ge=1)
    #: How long the broker may hold a fetch open waiting for data. It sets the floor of each hop's
    #: latency (500, the client default, gave p50 330 ms on the embedded broker; 50 gave 70 ms).
    fetch_max_wait_ms: int = Field(50, ge=0)

    # Input limits (SPEC "Post").
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_text_bytes: int = Field(64 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)

    redis_stream_maxlen: int = Field(100_000, ge=1)
    #: Prefix of every Redis key (SPEC: ``stylestream``); another one isolates a deployment or a test.
    redis_prefix: str = Field("stylestream", pattern=r"^[A-Za-z0-9_.-]+$")

    # Trainer stage (``stylestream worker trainer``).
    trainer_interval_s: float | None = Field(3600.0, gt=0)
    trainer_min_feedback: int | None = Field(100, ge=1)
    trainer_gate_margin: float = Field(0.01, ge=0, le=1)
    trainer_max_posts: int = Field(10_000, ge=1)
    trainer_max_examples: int = Field(50_000, ge=1)
    trainer_n_train: int = Field(10_000, ge=10)
    trainer_n_test: int = Field(2_000, ge=10)
    trainer_epochs: int = Field(10, ge=1)
    trainer_pretrain_epochs: int = Field(4, ge=0)
    trainer_multi: bool = False
    trainer_cache_dir: Path = Path("cache/benchmark")
    kafka_options: dict[str, Any] = Field(default_factory=dict)

    config_file: Path | None = None

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls, env_settings), file_secret_settings

    def child_env(self) -> dict[str, str]:
        """Environment for a child process that should see these settings (``kafka``, ``redis_url``...)."""
        env = dict(os.environ)
        for name, value in self.model_dump(exclude={"kafka_options", "config_file"}, exclude_none=True).items():
            env[f"STYLESTREAM_{name.upper()}"] = str(value)
        if self.kafka_options:
            env["STYLESTREAM_KAFKA_OPTIONS"] = json.dumps(self.kafka_options)
        return env

    @property
    def keys(self) -> RedisKeys:
        """The Redis key names under ``redis_prefix``."""
        return RedisKeys(self.redis_prefix)

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic (``posts``, ``hints``...)."""
        return f"{self.topic_prefix}{name}"

    def group(self, stage: str) -> str:
        """Consumer group id of a stage; all replicas of a stage share it."""
        return f"{self.group_prefix}-{stage}"

    def stage_metrics_port(self, stage: str) -> int:
        """Metrics port of a stage (0 keeps 0: an ephemeral port, used by tests)."""
        return self.metrics_port + STAGE_PORT_OFFSET.get(stage, 0) if self.metrics_port else 0


@dataclass(frozen=True)
class RedisKeys:
    """Redis key names (SPEC "Redis keys" with the default prefix ``stylestream``)."""

    prefix: str = "stylestream"

    def label(self, post_id: str) -> str:
        """The Label JSON of one post."""
        return f"{self.prefix}:label:{post_id}"

    def source(self, post_id: str) -> str:
        """``topic/partition/offset`` of the message a post was first labelled from."""
        return f"{self.prefix}:source:{post_id}"

    @property
    def labels_stream(self) -> str:
        return f"{self.prefix}:labels"

    @property
    def model_current(self) -> str:
        return f"{self.prefix}:model:current"

    @property
    def model_history(self) -> str:
        return f"{self.prefix}:model:history"


class _FileSource(PydanticBaseSettingsSource):
    """Values from the file named by ``STYLESTREAM_CONFIG_FILE`` (TOML or JSON), below env vars."""

    def __init__(self, settings_cls: type[BaseSettings], env: PydanticBaseSettingsSource) -> None:
        super().__init__(settings_cls)
        self._env = env

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = self._env().get("config_file")
        if not path:
            return {}
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)


TOPICS = ("posts", "hints", "labels", "posts.dlq", "model-updates", "feedback")
