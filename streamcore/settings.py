"""The one typed settings object. This is the only module that reads the environment."""

from __future__ import annotations

import json
import os
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

#: Stage offsets added to ``metrics_port`` so several stages on one host don't collide.
STAGE_PORT_OFFSET = {"text": 0, "classify": 1, "trainer": 2, "up": 3, "profiles": 4, "catalogue": 5}


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
    #: What runs the served model's backbone: ``auto`` = ONNX Runtime on a CPU (PyTorch eager on CUDA),
    #: ``onnx`` = ONNX Runtime on any device (its CUDA/TensorRT providers where installed), ``onnx_int8`` =
    #: the int8 artifact where a version has one, ``torch`` = PyTorch eager. A version without the artifact
    #: (or a host without onnxruntime) serves eager; a corrupt artifact refuses the version.
    runtime: Literal["auto", "onnx", "onnx_int8", "torch"] = "auto"
    metrics_port: int = Field(9108, ge=0, le=65535)
    model_dir: Path = Path("./models")
    #: Where ``stylestream up`` (without ``--demo``) keeps the embedded Redis's append-only file.
    data_dir: Path = Path("./data")
    image_root: Path = Path("./images")
    hint_wait_ms: float = Field(2000.0, ge=0)
    #: Posts held by the classifier (waiting for hints or in a batch) before it pauses fetching.
    max_inflight: int = Field(1024, ge=1)
    #: How often a classifier checks the serving pointer in Redis for a new model.
    model_poll_s: float = Field(1.0, gt=0)
    #: The head the trainer trains; the classifier serves the head its checkpoint holds (and warns on a mismatch).
    head: str = "fusion"
    backbone: str = "tiny"

    # Classifier data path.
    #: Threads decoding images for the classifier (Pillow releases the GIL); 0 = one per CPU core.
    decode_workers: int = Field(0, ge=0, le=256)
    #: For a CPU classifier with cores of its own: images beyond those the next batch lacks are decoded at
    #: idle priority (Linux ``SCHED_IDLE``), in the CPU time the forward leaves (its serial stretches, the
    #: gaps between batches), never stalling its OpenMP team by taking one of its cores. Off by default:
    #: next to other busy processes (text workers, a trainer, other pods) those decodes starve, and the
    #: classifier with them (2 cores, two busy loops beside it, max_batch 32: 34 img/s on, 57 off).
    decode_idle_priority: bool = False
    #: Batch size follows the queue: a batch leaves as soon as the model can take it (up to
    #: ``max_batch``); off = wait up to ``max_wait_ms`` after a batch's first item for more.
    adaptive_batching: bool = True
    #: Largest batch one forward gets on a CPU; bigger micro-batches run through the model in chunks of
    #: it, which bounds the activations' memory (~4.8 MB per image at 224 px). EfficientNet-Lite0 @224 on
    #: the project's machine, large blocks kept on the heap (streamcore.runtime): 107/130/137/142/141
    #: img/s at chunks of 4/8/16/32/64. GPUs take the whole micro-batch.
    cpu_forward_batch: int = Field(32, ge=1, le=4096)

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
    #: Gate every candidate on real photos too (see ``training.real.gate``).
    trainer_real_gate: bool = True
    # One training run at a time across replicas, and the live guard after a promotion.
    #: Life of the run lease without renewal: a killed trainer's lease frees itself after this long.
    trainer_lease_ttl_s: float = Field(30.0, ge=1)
    #: The guard rolls back a newly promoted version whose labels agree with users' corrections this much
    #: less often than the previous version's did...
    trainer_guard_margin: float = Field(0.1, ge=0, le=1)
    #: ...once both versions have had at least this many of their labels corrected.
    trainer_guard_min_corrections: int = Field(50, ge=1)
    # Fault tolerance and bounded state.
    #: Bytes of held post records (waiting for hints or in a batch) before the posts partitions pause.
    max_inflight_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    #: Bytes of hints held for posts not yet seen before the hints partitions pause.
    max_held_hint_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: A hint whose post has not arrived after this long is evicted (committed) as ``expired``.
    hint_hold_s: float = Field(300.0, gt=0)
    #: Ceiling of the exponential backoff between retries of a failed Redis/Kafka operation.
    retry_backoff_max_s: float = Field(5.0, gt=0)
    #: How long the client (``produce``, the demo's producer) waits for the broker to take a post before it
    #: reports the post as not delivered.
    delivery_timeout_s: float = Field(30.0, ge=1)
    #: A Redis/Kafka operation failing for this long makes its stage report itself stuck (/readyz 503).
    stuck_after_s: float = Field(60.0, gt=0)
    #: A stage that finds one of its topics missing creates it again (configured partitions); when
    #: False it goes unready and says which topics are missing.
    recreate_topics: bool = True
    #: How often a stage checks that its topics exist (also checked whenever a write keeps failing).
    topic_check_s: float = Field(10.0, gt=0)
    #: Posts mined per executor call in the text stage: the loop yields (and ships hints) between chunks.
    text_chunk_posts: int = Field(16, ge=1)
    kafka_options: dict[str, Any] = Field(default_factory=dict)

    # Recommendations (``stylestream worker profiles``, ``stylestream recommend``).
    #: The classifier stores each label's fashion vector record (user, time, image embedding) beside it.
    fashion_vectors: bool = True
    #: Newest posts kept per user in a style profile, and the half-life of a post's weight in it.
    profile_max_posts: int = Field(200, ge=1)
    profile_half_life_days: float = Field(30.0, gt=0)
    #: Where ``stylestream recommend`` keeps its index snapshots (one folder per model version).
    recommend_index_dir: Path = Path("./recommend-index")

    # Security and interoperability (Kafka TLS/SASL, Redis Cluster + label TTL, URL fetching,
    # health bind address). Secrets are SecretStr: they never appear in repr, logs or metrics.
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_key_password: SecretStr | None = None
    kafka_ssl_check_hostname: bool = True
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    #: Talk to a Redis Cluster (every key one script touches shares a hash slot).
    redis_cluster: bool = False
    #: Expiry of label keys in seconds; None keeps labels forever.
    redis_label_ttl_s: int | None = Field(None, ge=1)
    #: Interface of /metrics, /healthz, /readyz; the container images set 0.0.0.0 so Prometheus can scrape.
    health_host: str = "127.0.0.1"
    #: Image URLs: plain http only when allowed; one deadline for resolve + connect + download.
    url_allow_http: bool = False
    url_timeout_s: float = Field(5.0, gt=0)

    # The review page (``stylestream ui``).
    #: Interface the page listens on; another one exposes it (and its correction form) to that network.
    ui_host: str = "127.0.0.1"
    #: Port of the page; 0 = any free port (printed when it starts).
    ui_port: int = Field(8790, ge=0, le=65535)
    #: Token a person gives the page before it sends corrections; unset = the page is read-only.
    ui_token: SecretStr | None = None

    config_file: Path | None = None

    @field_validator("kafka_options")
    @classmethod
    def _no_security_in_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        # aiokafka and kafka-python take TLS differently (context object vs file paths): the dedicated
        # fields are translated per library, a pass-through dict cannot be.
        misplaced = sorted(k for k in value if k.startswith(("security_", "ssl_", "sasl_")))
        if misplaced:
            raise ValueError(f"set {misplaced} with the STYLESTREAM_KAFKA_SECURITY_PROTOCOL / _SSL_* / _SASL_* "
                             "settings, not in kafka_options")
        return value

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        if self.kafka_security_protocol.startswith("SASL") and not (
                self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(f"kafka_security_protocol {self.kafka_security_protocol} needs kafka_sasl_username "
                             "and kafka_sasl_password")
        if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
            raise ValueError("kafka_ssl_keyfile needs kafka_ssl_certfile")
        return self

    def __repr_args__(self):
        # The Redis URL and pass-through Kafka options may carry passwords; SecretStr fields mask themselves.
        for name, value in super().__repr_args__():
            if name == "redis_url" and value:
                value = _mask_url(value)
            elif name == "kafka_options":
                value = {k: "**********" if _SECRET_WORDS.search(k) else v for k, v in value.items()}
            yield name, value

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
            env[f"STYLESTREAM_{name.upper()}"] = str(value.get_secret_value() if isinstance(value, SecretStr) else value)
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


_SECRET_WORDS = re.compile(r"password|secret|token|credential", re.IGNORECASE)


def _mask_url(url: str) -> str:
    """``url`` with its password (if any) replaced by asterisks."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")[2]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:**********@{netloc}"))


@dataclass(frozen=True)
class RedisKeys:
    """Redis key names (SPEC "Redis keys" with the default prefix ``stylestream``).

    Redis Cluster: keys used together carry a hash tag equal to the name of the contract key they belong
    with (``{stylestream:label:ID}:post`` hashes like ``stylestream:label:ID``), so one script or
    transaction touches one slot while the contract names stay as documented.
    """

    prefix: str = "stylestream"

    def label(self, post_id: str) -> str:
        """The Label JSON of one post."""
        return f"{self.prefix}:label:{post_id}"

    def thumb(self, post_id: str) -> str:
        """Hash beside a label: a small JPEG of the post's photo (``jpeg``) and its ``caption``, for the page."""
        return f"{{{self.label(post_id)}}}:thumb"

    def correction(self, post_id: str) -> str:
        """The last correction of a post sent from the review page (its ``feedback`` JSON)."""
        return f"{{{self.label(post_id)}}}:correction"

    def post_meta(self, post_id: str) -> str:
        """Hash beside a label: the fingerprint of the post it was made from, whether it reached the stream."""
        return f"{{{self.label(post_id)}}}:post"

    def label_vector(self, post_id: str) -> str:
        """Beside a label: its post's fashion vector record (user, creation time, image embedding)."""
        return f"{{{self.label(post_id)}}}:vec"

    @property
    def labels_stream(self) -> str:
        return f"{self.prefix}:labels"

    @property
    def model_current(self) -> str:
        return f"{self.prefix}:model:current"

    @property
    def model_history(self) -> str:
        """Promotion history; in the serving pointer's slot so promote/rollback run as one transaction."""
        return f"{{{self.model_current}}}:history"

    @property
    def model_events(self) -> str:
        """Log of promotions and rollbacks (JSON: kind, version, time, reason), newest first; same slot."""
        return f"{{{self.model_current}}}:events"

    @property
    def trainer(self) -> str:
        """Prefix of the trainer's state keys: one hash tag, so its scripts and transactions use one slot."""
        return f"{{{self.prefix}:trainer}}:"

    @property
    def run_lease(self) -> str:
        """The trainer's run lease; in the serving pointer's slot, so promotion checks it in the same script."""
        return f"{{{self.model_current}}}:lease"

    def guard(self, version: str) -> str:
        """The live guard's tally of one model version (its ``:posts`` set shares the tag)."""
        return f"{{{self.prefix}:guard:{version}}}"


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


TOPICS = ("posts", "hints", "labels", "posts.dlq", "model-updates", "feedback", "catalogue")
