"""Settings come from env vars and a config file, env winning."""

import json

import pytest
from pydantic import ValidationError

from streamcore.settings import Settings


def test_defaults_match_the_spec():
    s = Settings()
    assert (s.partitions, s.max_batch, s.max_wait_ms, s.device, s.metrics_port) == (4, 32, 20.0, "auto", 9108)
    assert s.kafka is None and s.redis_url is None and s.topic("posts") == "posts"


def test_env_and_file(monkeypatch, tmp_path):
    cfg = tmp_path / "s.json"
    cfg.write_text(json.dumps({"max_batch": 8, "topic_prefix": "file."}))
    monkeypatch.setenv("STYLESTREAM_CONFIG_FILE", str(cfg))
    monkeypatch.setenv("STYLESTREAM_TOPIC_PREFIX", "env.")
    s = Settings()
    assert s.max_batch == 8
    assert s.topic("labels") == "env.labels"
    toml = tmp_path / "s.toml"
    toml.write_text('partitions = 12\nkafka_options = { client_id = "c1" }\nkafka_security_protocol = "SSL"\n')
    monkeypatch.setenv("STYLESTREAM_CONFIG_FILE", str(toml))
    s = Settings()
    assert s.partitions == 12 and s.kafka_options == {"client_id": "c1"} and s.kafka_security_protocol == "SSL"


def test_child_env_round_trips(monkeypatch):
    s = Settings(kafka="h:1", redis_url="redis://u:pw@r:2/0", max_batch=3, kafka_options={"client_id": "x"},
                 kafka_security_protocol="SASL_SSL", kafka_sasl_username="u", kafka_sasl_password="pw",
                 redis_label_ttl_s=60, health_host="0.0.0.0")
    for key, value in s.child_env().items():
        if key.startswith("STYLESTREAM_"):
            monkeypatch.setenv(key, value)
    assert Settings() == s


@pytest.mark.parametrize("field", [{"device": "tpu"}, {"partitions": 0}, {"max_batch": 0}])
def test_bad_values_fail_fast(field):
    with pytest.raises(ValidationError):
        Settings(**field)
