"""deploy/k8s: valid YAML, the expected kinds, and (with kubernetes-validate) valid against the API schema."""

from __future__ import annotations

import pytest

yaml = pytest.importorskip("yaml", reason="PyYAML missing: it is a test extra (pip install -e .[test])")

from streamcore.settings import Settings
from tests.deploy.promql import DEPLOY, exported_names

K8S_VERSION = "1.30"
DOCS = [(path.name, doc) for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def _by_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCS if doc["kind"] == kind}


def test_the_expected_objects_exist():
    kinds = {(doc["kind"], doc["metadata"]["name"]) for _, doc in DOCS}
    assert {("Deployment", "stylestream-text"), ("Deployment", "stylestream-classify"),
            ("Deployment", "stylestream-classify-gpu"), ("HorizontalPodAutoscaler", "stylestream-text"),
            ("HorizontalPodAutoscaler", "stylestream-classify"), ("ConfigMap", "stylestream-settings"),
            ("Secret", "stylestream-credentials"), ("Job", "stylestream-topics"),
            ("Deployment", "stylestream-trainer"), ("Deployment", "stylestream-profiles"),
            ("Deployment", "stylestream-catalogue")} <= kinds
    assert all(doc["metadata"].get("namespace") == "stylestream" for _, doc in DOCS if doc["kind"] != "Namespace")


@pytest.mark.parametrize(("name", "doc"), DOCS, ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in DOCS])
def test_manifest_matches_the_kubernetes_schema(name, doc):
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def test_the_schema_check_rejects_a_broken_manifest():
    kubernetes_validate = pytest.importorskip("kubernetes_validate", reason="pip install kubernetes-validate")
    broken = yaml.safe_load(yaml.safe_dump(_by_kind("Deployment")["stylestream-text"]))
    broken["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)


def test_settings_keys_are_real_settings():
    fields = {f"STYLESTREAM_{name.upper()}" for name in Settings.NAMES}
    config = _by_kind("ConfigMap")["stylestream-settings"]["data"]
    secret = _by_kind("Secret")["stylestream-credentials"]["stringData"]
    assert set(config) | set(secret) <= fields, sorted((set(config) | set(secret)) - fields)
    assert "STYLESTREAM_REDIS_URL" in secret and "STYLESTREAM_REDIS_URL" not in config


def test_deployments_probe_and_scrape_their_stage_port():
    settings = Settings.named(metrics_port=int(_by_kind("ConfigMap")["stylestream-settings"]["data"]["STYLESTREAM_METRICS_PORT"]))
    for deployment in _by_kind("Deployment").values():
        pod = deployment["spec"]["template"]
        container = pod["spec"]["containers"][0]
        stage = container["args"][1]
        port = settings.metrics.stage_port(stage)
        assert container["args"] == ["worker", stage]
        assert container["ports"] == [{"name": "metrics", "containerPort": port}]
        assert pod["metadata"]["annotations"]["prometheus.io/port"] == str(port)
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert {e["configMapRef"]["name"] for e in container["envFrom"] if "configMapRef" in e} == {"stylestream-settings"}


def test_one_gpu_per_gpu_classifier_and_hpas_bounded_by_partitions():
    gpu = _by_kind("Deployment")["stylestream-classify-gpu"]["spec"]["template"]["spec"]["containers"][0]
    assert gpu["resources"]["limits"]["nvidia.com/gpu"] == 1
    partitions = int(_by_kind("ConfigMap")["stylestream-settings"]["data"]["STYLESTREAM_PARTITIONS"])
    hpas = _by_kind("HorizontalPodAutoscaler")
    for hpa in hpas.values():
        assert hpa["spec"]["maxReplicas"] <= partitions
        assert hpa["spec"]["scaleTargetRef"]["name"] in _by_kind("Deployment")
    lag = [m for m in hpas["stylestream-classify"]["spec"]["metrics"] if m["type"] == "Pods"]
    assert lag and lag[0]["pods"]["metric"]["name"] == "stylestream_consumer_lag"
    assert lag[0]["pods"]["metric"]["name"] in exported_names()


OPERATOR_DOCS = [doc for path in sorted((DEPLOY / "k8s" / "operators").glob("*.yaml"))
                 for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]


def test_every_worker_deployment_has_a_disruption_budget():
    budgets = _by_kind("PodDisruptionBudget")
    for name, deployment in _by_kind("Deployment").items():
        if deployment["spec"]["replicas"] > 1 or name != "stylestream-trainer":
            matching = [b for b in budgets.values()
                        if b["spec"]["selector"]["matchLabels"] == deployment["spec"]["selector"]["matchLabels"]]
            assert matching and matching[0]["spec"]["maxUnavailable"] == 1, name


def test_pods_run_as_the_images_numeric_user():
    dockerfile = (DEPLOY / "Dockerfile").read_text(encoding="utf-8")
    user = int(next(line.split()[1].split(":")[0] for line in dockerfile.splitlines() if line.startswith("USER ")))
    for _, doc in DOCS:
        if doc["kind"] in ("Deployment", "Job"):
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] == user, doc["metadata"]["name"]


def test_only_the_trainer_writes_the_model_store():
    writers = []
    for name, deployment in _by_kind("Deployment").items():
        for mount in deployment["spec"]["template"]["spec"]["containers"][0].get("volumeMounts", []):
            if mount["name"] == "models" and not mount.get("readOnly"):
                writers.append(name)
    assert writers == ["stylestream-trainer"]


def test_operator_manifests_target_the_real_workers():
    deployments = _by_kind("Deployment")
    monitors = [d for d in OPERATOR_DOCS if d["kind"] == "PodMonitor"]
    assert monitors and all(e["port"] == "metrics" for m in monitors for e in m["spec"]["podMetricsEndpoints"])
    labels = monitors[0]["spec"]["selector"]["matchLabels"]
    assert all(labels.items() <= d["spec"]["template"]["metadata"]["labels"].items() for d in deployments.values())
    (scaled,) = [d for d in OPERATOR_DOCS if d["kind"] == "ScaledObject"]
    assert scaled["spec"]["scaleTargetRef"]["name"] in deployments
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka" and trigger["metadata"]["consumerGroup"] == Settings().kafka.group("classify")
    partitions = int(_by_kind("ConfigMap")["stylestream-settings"]["data"]["STYLESTREAM_PARTITIONS"])
    assert scaled["spec"]["maxReplicaCount"] <= partitions
