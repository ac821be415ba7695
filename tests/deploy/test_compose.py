"""deploy/docker-compose.yml: `docker compose config` where the docker client can run it, and always a
structural check (services, KRaft, replicas, ports, mounts) against the code's own settings."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML missing: it is a test extra (pip install -e .[test])")

from streamcore.settings import Settings
from tests.deploy.promql import DEPLOY

COMPOSE = DEPLOY / "docker-compose.yml"


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))


def _compose_cli() -> list[str] | None:
    """`docker compose` (v2 plugin) or `docker-compose`, if one runs here; neither needs an engine for config."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_accepts_the_file():
    cli = _compose_cli()
    if cli is None:
        pytest.skip("no `docker compose` plugin or docker-compose here; the structural tests below still run")
    done = subprocess.run([*cli, "-f", str(COMPOSE), "config", "--quiet"], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr


def test_the_stack_has_kafka_in_kraft_mode_redis_monitoring_and_the_workers():
    services = _compose()["services"]
    assert {"kafka", "redis", "prometheus", "grafana", "topics", "text", "classify", "trainer", "profiles",
            "catalogue"} <= set(services)
    assert not any("zookeeper" in name or "zookeeper" in str(s.get("image")) for name, s in services.items())
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]


@pytest.mark.parametrize("stage", ["text", "classify", "profiles", "catalogue"])
def test_workers_are_replicated_members_of_their_stage(stage):
    service = _compose()["services"][stage]
    assert service["command"] == ["worker", stage]
    assert re.fullmatch(r"\$\{[A-Z_]+_REPLICAS:-\d+\}", str(service["deploy"]["replicas"]))
    env = service["environment"]
    assert env["STYLESTREAM_KAFKA"].split(":")[0] == "kafka"
    assert env["STYLESTREAM_REDIS_URL"].startswith("redis://redis:")
    assert "ports" not in service, "replicas can't share a host port; Prometheus finds them by DNS"
    assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"


def test_gpu_classifier_reserves_one_gpu_and_uses_the_cuda_image():
    gpu = _compose()["services"]["classify-gpu0"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["args"]["DEVICE"] == "cuda"
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "device_ids": ["0"], "capabilities": ["gpu"]}]
    assert gpu["environment"]["STYLESTREAM_DEVICE"] == "cuda"


def test_references_resolve():
    compose = _compose()
    services, volumes = compose["services"], set(compose["volumes"])
    for name, service in services.items():
        for dep in service.get("depends_on", {}):
            assert dep in services, f"{name} depends on unknown {dep}"
        for mount in service.get("volumes", []):
            source = mount.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
            else:
                assert source in volumes, f"{name} uses undeclared volume {source}"
        if "build" in service:
            dockerfile = (COMPOSE.parent / service["build"]["context"] / service["build"]["dockerfile"]).read_text()
            assert re.search(rf"^FROM .* AS {service['build']['target']}$", dockerfile, re.MULTILINE)


def test_prometheus_scrapes_the_ports_the_workers_serve():
    port = int(_compose()["services"]["text"]["environment"]["STYLESTREAM_METRICS_PORT"])
    settings = Settings.named(metrics_port=port)
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    for stage in ("text", "classify", "trainer"):
        sd = jobs[f"stylestream-{stage}"]["dns_sd_configs"][0]
        assert stage in sd["names"]
        assert sd["port"] == settings.metrics.stage_port(stage)


def test_kafka_keeps_its_log_in_the_volume():
    kafka = _compose()["services"]["kafka"]
    (volume,) = [m for m in kafka["volumes"] if m.startswith("kafka-data:")]
    assert kafka["environment"]["KAFKA_LOG_DIRS"] == volume.split(":")[1]


@pytest.mark.parametrize("stage", ["text", "classify", "trainer", "classify-gpu0", "profiles", "catalogue"])
def test_workers_have_a_readiness_healthcheck_on_their_stage_port(stage):
    service = _compose()["services"][stage]
    metrics = Settings.named(metrics_port=int(service["environment"]["STYLESTREAM_METRICS_PORT"])).metrics
    port = metrics.stage_port("classify" if stage.startswith("classify") else stage)
    assert f"http://127.0.0.1:{port}/readyz" in " ".join(service["healthcheck"]["test"])


def test_the_trainer_consumes_feedback_and_writes_the_model_store_the_classifiers_read():
    services = _compose()["services"]
    trainer, classify = services["trainer"], services["classify"]
    assert trainer["command"] == ["worker", "trainer"]
    store = [m for m in trainer["volumes"] if m.split(":")[1] == trainer["environment"].get("STYLESTREAM_MODEL_DIR",
                                                                                                "/app/models")]
    assert store and not store[0].endswith(":ro")
    assert store[0].split(":")[0] in {m.split(":")[0] for m in classify["volumes"]}
