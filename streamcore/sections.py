"""The settings' sections: one settings class per concern. This module and :mod:`streamcore.settings` are
the only ones that read the environment.

A field's variable is its section's ``env_prefix`` (``STYLESTREAM_`` unless the section says otherwise) + its
name upper-cased, or its ``validation_alias`` where the name differs from the variable; the config file
named by ``STYLESTREAM_CONFIG_FILE`` uses the same names without the prefix, lower-case.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from streamcore.configfile import CONFIG_FILE_VARIABLE, read_config_file
from streamcore.rediskeys import RedisKeys
from streamcore.redisurl import check_redis_url, mask_url

#: Stage offsets added to ``metrics_port`` so several stages on one host don't collide.
STAGE_PORT_OFFSET = {"text": 0, "classify": 1, "trainer": 2, "up": 3, "profiles": 4, "catalogue": 5}
#: Names the file the other settings may come from; no setting of its own.
PREFIX = "STYLESTREAM_"
_SECRET_WORDS = re.compile(r"password|secret|token|credential", re.IGNORECASE)


class Section(BaseSettings):
    """One group of settings; a field's variable is the section's ``env_prefix`` + its name upper-cased, or
    its ``validation_alias`` where the name differs."""

    model_config = SettingsConfigDict(env_prefix=PREFIX, frozen=True, extra="ignore", validate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _blank_leaves_unset(cls, data: Any) -> Any:
        # `export STYLESTREAM_TRAINER_GATE_DATA=` (or a compose variable with no value) means unset, not the
        # current folder: a blank value of a setting that is unset by default leaves it unset.
        if not isinstance(data, dict):
            return data
        optional = {key for name, field in cls.model_fields.items() if field.default is None
                    for key in (name, field.validation_alias) if isinstance(key, str)}
        return {k: v for k, v in data.items() if not (k in optional and isinstance(v, str) and not v.strip())}

    @classmethod
    def variables(cls) -> dict[str, str]:
        """Field name → environment variable."""
        prefix = cls.model_config.get("env_prefix", PREFIX)
        return {name: field.validation_alias if isinstance(field.validation_alias, str) else
                f"{prefix}{name}".upper() for name, field in cls.model_fields.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, env_settings, _FileSource(settings_cls), file_secret_settings


#: One bootstrap server: a host name or address (IPv6 in brackets), and a port if not the default 9092.
_HOST_PORT = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[^\s:,\[\]]+)(:\d{1,5})?")


class KafkaSettings(Section):
    """The broker, topics and consumer groups. Unset ``bootstrap`` means "start the embedded broker"."""

    bootstrap: str | None = Field(None, validation_alias="STYLESTREAM_KAFKA")
    #: Each Kafka client gets the keys it accepts, keys none accepts are refused; TLS/SASL: :class:`SecuritySettings`.
    options: dict[str, Any] = Field(default_factory=dict, validation_alias="STYLESTREAM_KAFKA_OPTIONS")
    topic_prefix: str = ""
    partitions: int = Field(4, ge=1, le=1024)
    replication_factor: int = Field(1, ge=1)
    # 6 s keeps group joins ~3 s on the embedded broker; production may raise it.
    group_prefix: str = "stylestream"
    session_timeout_ms: int = Field(6000, ge=1000)
    heartbeat_interval_ms: int = Field(2000, ge=100)
    max_poll_interval_ms: int = Field(300_000, ge=1000)
    fetch_max_records: int = Field(500, ge=1)
    #: How long the broker may hold a fetch open waiting for data. It sets the floor of each hop's
    #: latency (500, the client default, gave p50 330 ms on the embedded broker; 50 gave 70 ms).
    fetch_max_wait_ms: int = Field(50, ge=0)
    #: How long the client (``produce``, the demo's producer) waits for the broker to take a post before it
    #: reports the post as not delivered.
    delivery_timeout_s: float = Field(30.0, ge=1)

    @field_validator("bootstrap")
    @classmethod
    def _host_ports(cls, value: str | None) -> str | None:
        # Every client splits it itself, and one with a bad port fails deep inside with a bare int() error.
        bad = [p for p in (value or "").split(",") if not _HOST_PORT.fullmatch(p.strip())]
        if value is not None and bad:
            raise ValueError(f"expected host[:port][,host[:port]...], got {bad[0]!r}")
        return value

    @field_validator("options")
    @classmethod
    def _no_security_in_options(cls, value: dict[str, Any]) -> dict[str, Any]:
        # aiokafka and kafka-python take TLS differently (context object vs file paths): the dedicated
        # fields are translated per library, a pass-through dict cannot be.
        misplaced = sorted(k for k in value if k.startswith(("security_", "ssl_", "sasl_")))
        if misplaced:
            raise ValueError(f"set {misplaced} with the STYLESTREAM_KAFKA_SECURITY_PROTOCOL / _SSL_* / _SASL_* "
                             "settings, not in kafka_options")
        if value:  # the check loads both Kafka libraries: not for every process that reads its settings
            from streamcore.kafka_options import check_options

            check_options(value)
        return value

    def __repr_args__(self):
        # Pass-through options may carry passwords.
        for name, value in super().__repr_args__():
            if name == "options":
                value = {k: "**********" if _SECRET_WORDS.search(k) else v for k, v in value.items()}
            yield name, value

    def topic(self, name: str) -> str:
        """Full topic name for a logical topic (``posts``, ``hints``...)."""
        return f"{self.topic_prefix}{name}"

    def group(self, stage: str) -> str:
        """Consumer group id of a stage; all replicas of a stage share it."""
        return f"{self.group_prefix}-{stage}"


class SecuritySettings(Section):
    """Kafka TLS and SASL (Redis takes TLS and ACL users in its URL, ``rediss://user:pass@...``). Secrets are
    SecretStr: they never appear in repr, logs or metrics."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_KAFKA_")

    protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", validation_alias="STYLESTREAM_KAFKA_SECURITY_PROTOCOL")
    ssl_cafile: Path | None = None
    ssl_certfile: Path | None = None
    ssl_keyfile: Path | None = None
    ssl_key_password: SecretStr | None = None
    ssl_check_hostname: bool = True
    sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None

    @model_validator(mode="after")
    def _complete(self) -> SecuritySettings:
        if self.protocol.startswith("SASL") and not (self.sasl_username and self.sasl_password):
            raise ValueError(f"kafka_security_protocol {self.protocol} needs kafka_sasl_username "
                             "and kafka_sasl_password")
        if self.ssl_keyfile and not self.ssl_certfile:
            raise ValueError("kafka_ssl_keyfile needs kafka_ssl_certfile")
        return self


class RedisSettings(Section):
    """Redis: unset ``url`` means "start the embedded Redis"."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_REDIS_")

    url: str | None = None
    #: Prefix of every Redis key (SPEC: ``stylestream``); another one isolates a deployment or a test.
    prefix: str = Field("stylestream", pattern=r"^[A-Za-z0-9_.-]+$")
    #: Talk to a Redis Cluster (every key one script touches shares a hash slot).
    cluster: bool = False
    #: Expiry of label keys in seconds; None keeps labels forever.
    label_ttl_s: int | None = Field(None, ge=1)
    stream_maxlen: int = Field(100_000, ge=1)

    @field_validator("url")
    @classmethod
    def _scheme(cls, value: str | None) -> str | None:
        # A blank value never gets here (unset); anything else fails now, not in the first connect.
        return None if value is None else check_redis_url(value)

    def __repr_args__(self):
        # The URL may carry a password.
        for name, value in super().__repr_args__():
            yield name, (mask_url(value) if name == "url" and value else value)

    @property
    def keys(self) -> RedisKeys:
        """The Redis key names under ``prefix``."""
        return RedisKeys(self.prefix)


class EmbeddedSettings(Section):
    """The development stack ``stylestream up`` starts when no broker or Redis is configured."""

    #: Where ``stylestream up`` (without ``--demo``) keeps the embedded broker's and Redis's data.
    data_dir: Path = Field(Path("./data"), validation_alias="STYLESTREAM_DATA_DIR")


class LimitsSettings(Section):
    """Input limits (SPEC "Post")."""

    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    max_text_bytes: int = Field(64 * 1024, ge=1)
    max_image_pixels: int = Field(40_000_000, ge=1)


class FetchSettings(Section):
    """Where a post's image is read: files under ``image_root``, and URLs."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_URL_")

    image_root: Path = Field(Path("./images"), validation_alias="STYLESTREAM_IMAGE_ROOT")
    #: Plain http only when allowed; one deadline for resolve + connect + download.
    allow_http: bool = False
    timeout_s: float = Field(5.0, gt=0)


class ServingSettings(Section):
    """The model a classifier serves: where the registry is, what runs it, how often it looks for another."""

    device: str = "auto"
    #: What runs the served model's backbone: ``auto`` = ONNX Runtime on a CPU (PyTorch eager on CUDA),
    #: ``onnx`` = ONNX Runtime on any device (its CUDA/TensorRT providers where installed), ``onnx_int8`` =
    #: the int8 artifact where a version has one, ``torch`` = PyTorch eager. A version without the artifact
    #: (or a host without onnxruntime) serves eager; a corrupt artifact refuses the version.
    runtime: Literal["auto", "onnx", "onnx_int8", "torch"] = "auto"
    model_dir: Path = Path("./models")
    #: How often a classifier checks the serving pointer in Redis for a new model.
    model_poll_s: float = Field(1.0, gt=0)
    #: Largest batch one forward gets on a CPU; bigger micro-batches run through the model in chunks of
    #: it, which bounds the activations' memory (~4.8 MB per image at 224 px). EfficientNet-Lite0 @224,
    #: large blocks kept on the heap (streamcore.runtime): 107/130/137/142/141 img/s at chunks of
    #: 4/8/16/32/64. GPUs take the whole micro-batch.
    cpu_forward_batch: int = Field(32, ge=1, le=4096)
    #: How an ONNX Runtime backbone on a CPU uses its threads: ``images`` = each thread runs whole images
    #: (one-thread runs taking the batch's images in turn; +20-35% img/s on 2 cores, and a core lent to a
    #: neighbour for a moment delays one image, not every operator), ``ops`` = every operator of the batch split
    #: across the threads. Batches with fewer images than threads run as ``ops`` either way.
    cpu_parallelism: Literal["images", "ops"] = "images"

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if value not in ("auto", "cpu", "cuda") and not value.startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {value!r}")
        return value


class ClassifySettings(Section):
    """The classifier's join, batching and decoding (``stylestream worker classify``)."""

    max_batch: int = Field(32, ge=1, le=4096)
    max_wait_ms: float = Field(20.0, ge=0)
    #: Batch size follows the queue: a batch leaves as soon as the model can take it (up to
    #: ``max_batch``); off = wait up to ``max_wait_ms`` after a batch's first item for more.
    adaptive_batching: bool = True
    hint_wait_ms: float = Field(2000.0, ge=0)
    #: A hint whose post has not arrived after this long is evicted (committed) as ``expired``.
    hint_hold_s: float = Field(300.0, gt=0)
    #: Posts held (waiting for hints or in a batch) before the classifier pauses fetching.
    max_inflight: int = Field(1024, ge=1)
    #: Bytes of held post records (waiting for hints or in a batch) before the posts partitions pause.
    max_inflight_bytes: int = Field(256 * 1024 * 1024, ge=1024)
    #: Bytes of hints held for posts not yet seen before the hints partitions pause.
    max_held_hint_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    #: Threads decoding images (Pillow releases the GIL); 0 = one per CPU core.
    decode_workers: int = Field(0, ge=0, le=256)
    #: For a CPU classifier with cores of its own: images beyond those the next batch lacks are decoded at
    #: idle priority (Linux ``SCHED_IDLE``), in the CPU time the forward leaves (its serial stretches, the
    #: gaps between batches), never stalling its OpenMP team by taking one of its cores. Off by default:
    #: next to other busy processes (text workers, a trainer, other pods) those decodes starve, and the
    #: classifier with them.
    decode_idle_priority: bool = False
    #: Store each label's fashion vector record (user, time, image embedding) beside it.
    fashion_vectors: bool = True


class TextSettings(Section):
    """The text stage (``stylestream worker text``)."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_TEXT_")

    #: Posts mined per executor call: the loop yields (and ships hints) between chunks.
    chunk_posts: int = Field(16, ge=1)


class TrainerSettings(Section):
    """The trainer stage (``stylestream worker trainer``): what it trains, when, the gate, the run lease and
    the live guard after a promotion."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_TRAINER_")

    #: The head the trainer trains; the classifier serves the head its checkpoint holds (and warns on a mismatch).
    head: str = Field("fusion", validation_alias="STYLESTREAM_HEAD")
    backbone: str = Field("tiny", validation_alias="STYLESTREAM_BACKBONE")
    interval_s: float | None = Field(3600.0, gt=0)
    min_feedback: int | None = Field(100, ge=1)
    gate_margin: float = Field(0.01, ge=0, le=1)
    max_posts: int = Field(10_000, ge=1)
    max_examples: int = Field(50_000, ge=1)
    n_train: int = Field(10_000, ge=10)
    n_test: int = Field(2_000, ge=10)
    epochs: int = Field(10, ge=1)
    pretrain_epochs: int = Field(4, ge=0)
    multi: bool = False
    cache_dir: Path = Path("cache/benchmark")
    #: Gate every candidate on real photos too (see ``training.real.gate``).
    real_gate: bool = True
    #: What the trainer continues while nothing is promoted: the packaged real-photo model, or a model it
    #: first trains from scratch on the synthetic benchmark.
    start_from: Literal["packaged", "benchmark"] = "packaged"
    #: Side of the square copy of each post's image the trainer keeps to learn from corrections.
    post_image_size: int = Field(288, ge=32, le=1024)
    #: A manifest (or folder per category) of real photos no model trains on: every candidate must also score
    #: at least the model it replaces there (category mAP, text silent).
    gate_data: Path | None = None
    #: Life of the run lease without renewal: a killed trainer's lease frees itself after this long.
    lease_ttl_s: float = Field(30.0, ge=1)
    #: The guard rolls back a newly promoted version whose labels agree with users' corrections this much
    #: less often than the previous version's did...
    guard_margin: float = Field(0.1, ge=0, le=1)
    #: ...once both versions have had at least this many of their labels corrected.
    guard_min_corrections: int = Field(50, ge=1)


class ProfilesSettings(Section):
    """Recommendations: style profiles (``stylestream worker profiles``) and ``stylestream recommend``."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_PROFILE_")

    #: Newest posts kept per user in a style profile, and the half-life of a post's weight in it.
    max_posts: int = Field(200, ge=1)
    half_life_days: float = Field(30.0, gt=0)
    #: Where ``stylestream recommend`` keeps its index snapshots (one folder per model version).
    index_dir: Path = Field(Path("./recommend-index"), validation_alias="STYLESTREAM_RECOMMEND_INDEX_DIR")


class UISettings(Section):
    """The review page (``stylestream ui``)."""

    model_config = SettingsConfigDict(env_prefix="STYLESTREAM_UI_")

    #: Interface the page listens on; another one exposes it (and its correction form) to that network.
    host: str = "127.0.0.1"
    #: Port of the page; 0 = any free port (printed when it starts).
    port: int = Field(8790, ge=0, le=65535)
    #: Token a person gives the page before it sends corrections; unset (or blank) = the page is read-only.
    token: SecretStr | None = None
    #: Niceness the page server takes when it starts (0-19): it yields the CPU to the stages on its machine.
    nice: int = Field(10, ge=0, le=19)


class MetricsSettings(Section):
    """Where a stage serves ``/metrics``, ``/healthz`` and ``/readyz``."""

    port: int = Field(9108, ge=0, le=65535, validation_alias="STYLESTREAM_METRICS_PORT")
    #: The container images set 0.0.0.0 so Prometheus can scrape.
    health_host: str = "127.0.0.1"

    def stage_port(self, stage: str) -> int:
        """Metrics port of a stage (0 keeps 0: an ephemeral port, used by tests)."""
        return self.port + STAGE_PORT_OFFSET.get(stage, 0) if self.port else 0


class FaultSettings(Section):
    """How a stage rides out a failing Redis or Kafka, and topics that disappear."""

    #: Ceiling of the exponential backoff between retries of a failed Redis/Kafka operation.
    retry_backoff_max_s: float = Field(5.0, gt=0)
    #: A Redis/Kafka operation failing for this long makes its stage report itself stuck (/readyz 503).
    stuck_after_s: float = Field(60.0, gt=0)
    #: A stage that finds one of its topics missing creates it again (configured partitions); when
    #: False it goes unready and says which topics are missing.
    recreate_topics: bool = True
    #: How often a stage checks that its topics exist (also checked whenever a write keeps failing).
    topic_check_s: float = Field(10.0, gt=0)
    #: The most a stopping stage spends on each of: finishing its in-flight work, its last commit, leaving its
    #: group; also the most any offset commit may take. Past it the stage goes on (or exits) with those offsets
    #: uncommitted, and the partition's next owner redoes their records: a broker that is gone cannot hold a stage.
    stop_timeout_s: float = Field(10.0, gt=0)


class _FileSource(PydanticBaseSettingsSource):
    """Values from the file named by ``STYLESTREAM_CONFIG_FILE`` (TOML or JSON), below env vars. Its keys are
    the variables' names without the prefix, lower-case, whatever their section."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:  # pragma: no cover
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = os.environ.get(CONFIG_FILE_VARIABLE, "").strip()
        if not path:
            return {}
        known = {v.removeprefix(PREFIX).lower() for section in _sections(Section) for v in section.variables().values()}
        values = read_config_file(Path(path), known)
        return {field: values[key] for field, variable in self.settings_cls.variables().items()
                if (key := variable.removeprefix(PREFIX).lower()) in values}


def _sections(base: type) -> list[type[Section]]:
    return [c for sub in base.__subclasses__() for c in (sub, *_sections(sub))]
