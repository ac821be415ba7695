"""Settings come from env vars and a config file, env winning; every variable keeps its name across sections."""

import json
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from streamcore.sections import KafkaSettings, RedisSettings
from streamcore.settings import Settings

#: Every variable the settings have ever been read from; sections must not rename any.
VARIABLES = ["KAFKA", "REDIS_URL", "TOPIC_PREFIX", "PARTITIONS", "REPLICATION_FACTOR", "MAX_BATCH", "MAX_WAIT_MS", "DEVICE", "RUNTIME", "METRICS_PORT", "MODEL_DIR", "DATA_DIR", "IMAGE_ROOT", "HINT_WAIT_MS", "MAX_INFLIGHT", "MODEL_POLL_S", "HEAD", "BACKBONE", "DECODE_WORKERS", "DECODE_IDLE_PRIORITY", "ADAPTIVE_BATCHING", "CPU_FORWARD_BATCH", "GROUP_PREFIX", "SESSION_TIMEOUT_MS", "HEARTBEAT_INTERVAL_MS", "MAX_POLL_INTERVAL_MS", "FETCH_MAX_RECORDS", "FETCH_MAX_WAIT_MS", "MAX_MESSAGE_BYTES", "MAX_TEXT_BYTES", "MAX_IMAGE_PIXELS", "REDIS_STREAM_MAXLEN", "REDIS_PREFIX", "TRAINER_INTERVAL_S", "TRAINER_MIN_FEEDBACK", "TRAINER_GATE_MARGIN", "TRAINER_MAX_POSTS", "TRAINER_MAX_EXAMPLES", "TRAINER_N_TRAIN", "TRAINER_N_TEST", "TRAINER_EPOCHS", "TRAINER_PRETRAIN_EPOCHS", "TRAINER_MULTI", "TRAINER_CACHE_DIR", "TRAINER_REAL_GATE", "TRAINER_START_FROM", "TRAINER_POST_IMAGE_SIZE", "TRAINER_GATE_DATA", "TRAINER_LEASE_TTL_S", "TRAINER_GUARD_MARGIN", "TRAINER_GUARD_MIN_CORRECTIONS", "MAX_INFLIGHT_BYTES", "MAX_HELD_HINT_BYTES", "HINT_HOLD_S", "RETRY_BACKOFF_MAX_S", "DELIVERY_TIMEOUT_S", "STUCK_AFTER_S", "RECREATE_TOPICS", "TOPIC_CHECK_S", "STOP_TIMEOUT_S", "TEXT_CHUNK_POSTS", "KAFKA_OPTIONS", "FASHION_VECTORS", "PROFILE_MAX_POSTS", "PROFILE_HALF_LIFE_DAYS", "RECOMMEND_INDEX_DIR", "KAFKA_SECURITY_PROTOCOL", "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE", "KAFKA_SSL_KEY_PASSWORD", "KAFKA_SSL_CHECK_HOSTNAME", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD", "REDIS_CLUSTER", "REDIS_LABEL_TTL_S", "HEALTH_HOST", "URL_ALLOW_HTTP", "URL_TIMEOUT_S", "UI_HOST", "UI_PORT", "UI_TOKEN", "UI_NICE", "CPU_PARALLELISM"]
#: A valid value other than the default, where the type alone does not give one.
_OTHER = {"DEVICE": "cpu", "RUNTIME": "torch", "CPU_PARALLELISM": "ops", "HEAD": "base", "BACKBONE": "efficientnet_lite0", "REDIS_PREFIX": "other",
          "KAFKA_SECURITY_PROTOCOL": "SSL", "KAFKA_SASL_MECHANISM": "SCRAM-SHA-256", "KAFKA_OPTIONS": '{"client_id": "c"}',
          "HEALTH_HOST": "0.0.0.0", "UI_HOST": "0.0.0.0", "TRAINER_START_FROM": "benchmark", "KAFKA_SSL_KEYFILE": None,
          "REDIS_URL": "redis://elsewhere:6379/0"}


def _other_value(variable: str, default: object) -> str:
    if variable in _OTHER:
        return _OTHER[variable]
    if isinstance(default, bool):
        return str(not default).lower()
    if isinstance(default, float):
        return str(default / 2)  # within every bound: all floats are positive with an upper bound, if any, above
    if isinstance(default, int):
        return str(default + 1)
    return "/tmp/elsewhere" if isinstance(default, Path) else "7"  # unset paths, numbers, names, secrets alike


@pytest.mark.parametrize("variable", VARIABLES)
def test_every_variable_still_sets_its_setting(monkeypatch, variable):
    name = variable.lower()
    section, field = Settings.NAMES[name]
    default = getattr(getattr(Settings(), section), field)
    value = _other_value(variable, default)
    if value is None:  # a client key needs its certificate
        monkeypatch.setenv("STYLESTREAM_KAFKA_SSL_CERTFILE", "/tmp/cert.pem")
        value = "/tmp/key.pem"
    monkeypatch.setenv(f"STYLESTREAM_{variable}", value)
    got = getattr(getattr(Settings(), section), field)
    assert got != default
    shown = got.get_secret_value() if isinstance(got, SecretStr) else got
    assert str(shown) == value or json.dumps(shown) == value or str(shown).lower() == value
    assert Settings.named(**{name: got}) == Settings()  # the name without the prefix, as in the config file


def test_no_setting_outside_the_variables():
    assert sorted(Settings.NAMES) == sorted(v.lower() for v in VARIABLES)


def test_defaults_match_the_spec():
    s = Settings()
    assert (s.kafka.partitions, s.classify.max_batch, s.classify.max_wait_ms, s.serving.device,
            s.metrics.port) == (4, 32, 20.0, "auto", 9108)
    assert s.kafka.bootstrap is None and s.redis.url is None and s.kafka.topic("posts") == "posts"


def test_a_section_reads_the_environment_alone(monkeypatch):
    monkeypatch.setenv("STYLESTREAM_KAFKA", "h:1")
    monkeypatch.setenv("STYLESTREAM_REDIS_PREFIX", "alone")
    assert KafkaSettings().bootstrap == "h:1" and RedisSettings().keys.label("p") == "alone:label:p"


def test_env_and_file(monkeypatch, tmp_path):
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"max_batch": 8, "topic_prefix": "file."}))
    monkeypatch.setenv("STYLESTREAM_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("STYLESTREAM_TOPIC_PREFIX", "env.")
    s = Settings()
    assert s.classify.max_batch == 8
    assert s.kafka.topic("labels") == "env.labels"
    toml = tmp_path / "s.toml"
    toml.write_text('partitions = 12\nkafka_options = { client_id = "c1" }\nkafka_security_protocol = "SSL"\n'
                    'head = "base"\ntrainer_epochs = 3\n')
    monkeypatch.setenv("STYLESTREAM_CONFIG_FILE", str(toml))
    s = Settings()
    assert s.kafka.partitions == 12 and s.kafka.options == {"client_id": "c1"} and s.security.protocol == "SSL"
    assert (s.trainer.head, s.trainer.epochs) == ("base", 3)


def test_child_env_round_trips(monkeypatch):
    s = Settings.named(kafka="h:1", redis_url="redis://u:pw@r:2/0", max_batch=3, kafka_options={"client_id": "x"},
                       kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="pw",
                       redis_label_ttl_s=60, health_host="0.0.0.0", ui_token="t", head="base")
    for key, value in s.child_env().items():
        if key.startswith("STYLESTREAM_"):
            monkeypatch.setenv(key, value)
    assert Settings() == s


def test_given_names_what_was_set_and_not_what_was_left_at_its_default(monkeypatch):
    monkeypatch.setenv("STYLESTREAM_TRAINER_EPOCHS", "3")
    settings = Settings.named(max_batch=8)
    assert {"trainer_epochs", "max_batch"} <= settings.given()
    assert not {"trainer_n_train", "partitions"} & settings.given()


def test_replace_validates_and_keeps_the_rest():
    s = Settings.named(kafka="h:1", max_batch=3)
    other = s.replace(max_batch=5, trainer_epochs=2)
    assert (other.classify.max_batch, other.trainer.epochs, other.kafka.bootstrap) == (5, 2, "h:1")
    assert s.classify.max_batch == 3
    with pytest.raises(ValidationError):
        s.replace(max_batch=0)
    with pytest.raises(TypeError, match="no setting"):
        s.replace(batch_size=4)


@pytest.mark.parametrize("field", [{"device": "tpu"}, {"partitions": 0}, {"max_batch": 0}])
def test_bad_values_fail_fast(field):
    with pytest.raises(ValidationError):
        Settings.named(**field)


def test_a_blank_variable_leaves_a_setting_that_is_unset_by_default_unset(monkeypatch):
    for name in ("TRAINER_GATE_DATA", "KAFKA_SSL_CAFILE", "REDIS_LABEL_TTL_S", "KAFKA", "UI_TOKEN"):
        monkeypatch.setenv(f"STYLESTREAM_{name}", " ")
    s = Settings()
    assert (s.trainer.gate_data, s.security.ssl_cafile, s.redis.label_ttl_s, s.kafka.bootstrap, s.ui.token) == (
        None, None, None, None, None)


@pytest.mark.parametrize(("name", "text", "says"), [
    ("c.toml", b"\xff\xfe max_batch = 3", "can't decode"),
    ("c.json", b'{"max_bach": 3}', "no such setting: max_bach"),
    ("c.json", b"[1, 2]", "expected a table of settings"),
    ("c.json", b'"max_batch"', "expected a table of settings"),
    ("c.toml", b"max_batch = ", "config file"),
])
def test_a_config_file_that_cannot_be_used_is_one_clear_error(monkeypatch, tmp_path, name, text, says):
    from streamcore.exceptions import StylestreamError

    (tmp_path / name).write_bytes(text)
    monkeypatch.setenv("STYLESTREAM_CONFIG_FILE", str(tmp_path / name))
    with pytest.raises(StylestreamError, match=says):
        Settings()
    monkeypatch.setenv("STYLESTREAM_CONFIG_FILE", str(tmp_path))
    with pytest.raises(StylestreamError, match="Is a directory"):
        Settings()


@pytest.mark.parametrize("servers", ["h:notaport", "a:1,", "h:1:2", "two words:1"])
def test_bootstrap_servers_are_hosts_with_numeric_ports(monkeypatch, servers):
    monkeypatch.setenv("STYLESTREAM_KAFKA", servers)
    with pytest.raises(ValidationError, match="expected host"):
        Settings()


@pytest.mark.parametrize("url", ["notaurl", "redis:host", "http://h:6379", "localhost:6379", "redis://h:99999",
                                 "redis://h:port/0"])
def test_a_redis_url_redis_cannot_use_fails_when_settings_are_read(monkeypatch, url):
    monkeypatch.setenv("STYLESTREAM_REDIS_URL", url)
    with pytest.raises(ValidationError, match="expected a URL starting with redis://|port") as refused:
        Settings()
    assert "url" in str(refused.value)


@pytest.mark.parametrize("url", ["redis://h:6379/0", "REDIS://h", "rediss://u:p@h:6380", "unix:///run/redis.sock"])
def test_the_redis_url_schemes_redis_takes_are_kept(monkeypatch, url):
    monkeypatch.setenv("STYLESTREAM_REDIS_URL", url)
    assert Settings().redis.url == url
    monkeypatch.setenv("STYLESTREAM_REDIS_URL", " ")  # blank is still unset: the embedded Redis
    assert Settings().redis.url is None
