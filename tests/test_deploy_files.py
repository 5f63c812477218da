"""The deploy files (deploy/compose.yaml, deploy/k8s/, deploy/Containerfile), checked statically.

No container engine or cluster runs here, so these check what can be checked without one: the Compose file
against the Compose specification's JSON schema (tests/data/compose-spec.json, vendored from the PyPI package
check-jsonschema 0.39.0, which ships it as check_jsonschema/builtin_schemas/vendor/compose-spec.json, with its
license beside it), the Kubernetes manifests against Kubernetes' own schemas (kubernetes-validate, strict),
and the facts the deployment relies on.
"""

from __future__ import annotations

import json
import re
from dataclasses import fields
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from deploy.settings import Settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))
KNOWN_SETTINGS = {f.metadata["env"] for f in fields(Settings)}
# Custom resources kubernetes-validate has no schema for; their fields are asserted below instead.
CUSTOM_KINDS = {("keda.sh/v1alpha1", "ScaledObject")}


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def k8s_resources() -> list[dict]:
    return [doc for path in K8S_FILES for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s(kind: str, name: str) -> dict:
    [found] = [r for r in k8s_resources() if r["kind"] == kind and r["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict) -> dict:
    return workload["spec"]["template"]["spec"]


def env_names(value) -> set[str]:
    """Every FLOKIT_* name mentioned anywhere in a parsed document (keys, values, env lists)."""
    return set(re.findall(r"\bFLOKIT_[A-Z0-9_]+", json.dumps(value)))


def test_compose_file_follows_the_compose_specification():
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    errors = [
        f"{list(e.path)}: {e.message}" for e in jsonschema.Draft202012Validator(schema).iter_errors(compose())
    ]
    assert errors == []


def test_compose_schema_rejects_a_broken_file():
    # The vendored schema really constrains: a misspelt service key is refused.
    schema = json.loads((ROOT / "tests" / "data" / "compose-spec.json").read_text())
    broken = compose()
    broken["services"]["api"]["comand"] = ["flokit", "api"]
    assert not jsonschema.Draft202012Validator(schema).is_valid(broken)


def test_compose_runs_the_whole_pipeline():
    services = compose()["services"]
    brokers = [s for name, s in services.items() if name.startswith("kafka-") and name != "kafka-init"]
    assert len(brokers) == 3
    assert {b["environment"]["KAFKA_NODE_ID"] for b in brokers} == {"1", "2", "3"}
    assert all(b["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller" for b in brokers)  # KRaft
    assert services["clickhouse"]["image"].startswith("clickhouse/clickhouse-server:")
    assert services["redis"]["image"].startswith("redis:")
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["migrate"]["command"] == ["flokit", "migrate"] and services["migrate"]["restart"] == "no"
    assert services["api"]["command"] == ["flokit", "api"] and services["api"]["deploy"]["replicas"] == 2
    assert services["consumer"]["command"] == ["flokit", "consumer"]
    assert services["consumer"]["depends_on"]["migrate"] == {"condition": "service_completed_successfully"}
    env = services["api"]["environment"]
    assert env["FLOKIT_KAFKA_BOOTSTRAP"].split(",") == ["kafka-1:9092", "kafka-2:9092", "kafka-3:9092"]
    assert (env["FLOKIT_REPLICATION_FACTOR"], env["FLOKIT_KAFKA_MIN_INSYNC_REPLICAS"]) == ("3", "2")
    scrape = DEPLOY / services["prometheus"]["volumes"][0].split(":")[0]
    assert yaml.safe_load(scrape.read_text())["scrape_configs"]


@pytest.mark.parametrize("path", K8S_FILES, ids=lambda p: p.name)
def test_k8s_manifests_follow_the_kubernetes_schemas(path):
    for doc in yaml.safe_load_all(path.read_text()):
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, "1.37", strict=True)  # raises ValidationError


def test_kubernetes_validate_rejects_a_broken_manifest():
    deployment = k8s("Deployment", "flokit-api")
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, "1.37", strict=True)


def test_front_door_probes_resources_disruption_budget_and_autoscaler():
    [api] = pod_spec(k8s("Deployment", "flokit-api"))["containers"]
    assert api["args"] == ["flokit", "api"]
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["resources"]["requests"]["cpu"] and api["resources"]["limits"]["memory"]
    selector = k8s("Deployment", "flokit-api")["spec"]["selector"]["matchLabels"]
    assert k8s("PodDisruptionBudget", "flokit-api")["spec"]["selector"]["matchLabels"] == selector
    hpa = k8s("HorizontalPodAutoscaler", "flokit-api")["spec"]
    assert hpa["scaleTargetRef"]["name"] == "flokit-api"
    assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]


def test_consumers_scale_on_their_consumer_groups_lag():
    config = k8s("ConfigMap", "flokit-settings")["data"]
    scaled = k8s("ScaledObject", "flokit-consumer")["spec"]
    assert scaled["scaleTargetRef"]["name"] == "flokit-consumer"
    [trigger] = scaled["triggers"]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["consumerGroup"] == config["FLOKIT_CONSUMER_GROUP"]
    assert trigger["metadata"]["topic"] == config["FLOKIT_TOPIC"]
    assert trigger["metadata"]["bootstrapServers"] == config["FLOKIT_KAFKA_BOOTSTRAP"]
    # A consumer beyond the partition count would only idle.
    assert scaled["maxReplicaCount"] <= int(config["FLOKIT_PARTITIONS"])
    assert pod_spec(k8s("Deployment", "flokit-consumer"))["containers"][0]["args"] == ["flokit", "consumer"]


def test_migration_job_runs_flokit_migrate():
    job = k8s("Job", "flokit-migrate")
    assert [c["args"] for c in pod_spec(job)["containers"]] == [["flokit", "migrate"]]
    assert [c["args"] for c in pod_spec(job)["initContainers"]] == [["flokit", "kafka", "init"]]


@pytest.mark.parametrize(
    "kind,name", [("Deployment", "flokit-api"), ("Deployment", "flokit-consumer"), ("Job", "flokit-migrate")]
)
def test_pods_run_without_privileges(kind, name):
    spec = pod_spec(k8s(kind, name))
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] != 0
    for container in spec["containers"] + spec.get("initContainers", []):
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]


def test_settings_and_secrets_come_from_the_config_map_and_the_secret():
    secret = k8s("Secret", "flokit-secrets")["stringData"]
    assert {"FLOKIT_REDIS_URL", "FLOKIT_CLICKHOUSE_URL"} <= set(secret)
    for name in ("flokit-api", "flokit-consumer"):
        sources = pod_spec(k8s("Deployment", name))["containers"][0]["envFrom"]
        assert {"configMapRef": {"name": "flokit-settings"}} in sources
        assert {"secretRef": {"name": "flokit-secrets"}} in sources


def test_every_flokit_variable_used_is_a_setting():
    used = (
        env_names(compose()) | env_names(k8s_resources()) | env_names((DEPLOY / "Containerfile").read_text())
    )
    assert used, "the deploy files set no FLOKIT_* variable at all?"
    assert used - KNOWN_SETTINGS == set()


def test_containerfile_is_multi_stage_and_runs_unprivileged_without_compilers():
    lines = [line.strip() for line in (DEPLOY / "Containerfile").read_text().splitlines()]
    stages = [i for i, line in enumerate(lines) if line.startswith("FROM ")]
    assert len(stages) >= 2
    run_stage = lines[stages[-1] :]
    assert any(line.startswith("COPY --from=") for line in run_stage)
    assert not any(re.search(r"build-essential|\bgcc\b|\bcc\b", line) for line in run_stage)
    [user] = [line for line in run_stage if line.startswith("USER ")]
    assert user.split()[1].split(":")[0] not in ("root", "0")
