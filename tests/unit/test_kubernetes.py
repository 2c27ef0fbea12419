"""deploy/kubernetes/: the manifests pass the Kubernetes schemas, give the containers only
settings the service reads, keep every credential in a Secret, and keep the promises the
README makes (one beat, a grace period that covers a job, probes that ask no broker, KEDA
scaling the worker Deployment on every queue)."""

from __future__ import annotations

import math
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import fakeredis
import kubernetes_validate
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry, Counter, start_http_server
from pydantic import SecretStr

import worker.observability  # noqa: F401 (defines the worker's metrics)
from apis.config import ApiSettings
from brokers import ALL_QUEUES
from settings import WorkerSettings, setting_models, setting_names
from worker.backlog import BacklogCollector

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
EXAMPLE_SECRETS = KUBERNETES / "secrets.example.yaml"
KEDA = {
    "redis": KUBERNETES / "keda" / "redis.yaml",
    "rabbitmq": KUBERNETES / "keda" / "rabbitmq.yaml",
}

# One recent release, named: kubernetes-validate bundles the schemas of many, offline.
KUBERNETES_VERSION = "1.35.0"

# Names read by what runs in the containers besides the settings models: Flower's login,
# the CLI's RabbitMQ management API, prometheus-client's multiprocess directory, and the
# OpenTelemetry SDK's variables the README documents ("Tracing").
TOOLING_NAMES = frozenset(
    {
        "FLOWER_BASIC_AUTH",
        "RABBITMQ_MANAGEMENT_URL",
        "PROMETHEUS_MULTIPROC_DIR",
        "OTEL_TRACES_EXPORTER",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_SERVICE_NAME",
        "OTEL_RESOURCE_ATTRIBUTES",
        "OTEL_TRACES_SAMPLER",
        "OTEL_TRACES_SAMPLER_ARG",
        "OTEL_SDK_DISABLED",
    }
)
# Names whose value is, or may carry, a credential: the models' SecretStr fields, every
# URL that may hold a password, and Flower's logins.
CREDENTIALS = frozenset(
    {
        name.upper()
        for cls in setting_models()
        for name, field in cls.model_fields.items()
        if SecretStr in getattr(field.annotation, "__args__", (field.annotation,))
    }
    | {
        "REDIS_URL",
        "CELERY_BROKER_URL",
        "CELERY_RESULT_BACKEND",
        "RABBITMQ_MANAGEMENT_URL",
        "FLOWER_BASIC_AUTH",
    }
)
PLACEHOLDER = "CHANGE-ME"
# What the warm shutdown needs beyond the longest job: the hand-back, the last
# acknowledgements and result writes, closing the connections.
SHUTDOWN_MARGIN_SECONDS = 10


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def kustomization() -> dict[str, Any]:
    (doc,) = documents(KUBERNETES / "kustomization.yaml")
    return doc


def applied() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/kubernetes` creates."""
    return [doc for name in kustomization()["resources"] for doc in documents(KUBERNETES / name)]


def every_manifest() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(KUBERNETES.rglob("*.yaml")):
        if path.name != "kustomization.yaml":
            for doc in documents(path):
                yield f"{path.relative_to(KUBERNETES)}:{doc['kind']}/{doc['metadata']['name']}", doc


def find(kind: str, name: str, docs: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    (doc,) = [
        doc
        for doc in (applied() if docs is None else docs)
        if doc["kind"] == kind and doc["metadata"]["name"] == name
    ]
    return doc


def deployments() -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for doc in applied() if doc["kind"] == "Deployment"}


def worker_deployment() -> dict[str, Any]:
    return deployments()["api-layer-worker"]


def containers() -> Iterator[tuple[str, dict[str, Any]]]:
    for name, deployment in deployments().items():
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield f"{name}/{container['name']}", container


def example_secrets() -> dict[str, dict[str, str]]:
    return {doc["metadata"]["name"]: doc["stringData"] for doc in documents(EXAMPLE_SECRETS)}


def environment(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment as Kubernetes builds it, the example Secrets standing
    in for the real ones: envFrom sources in order, then env."""
    secrets = example_secrets()
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            env.update(find("ConfigMap", source["configMapRef"]["name"])["data"])
        else:
            env.update(secrets[source["secretRef"]["name"]])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            ref = var["valueFrom"]["secretKeyRef"]
            env[var["name"]] = secrets[ref["name"]][ref["key"]]
    return env


@pytest.mark.parametrize(
    "doc", [doc for _, doc in every_manifest()], ids=[name for name, _ in every_manifest()]
)
def test_every_manifest_passes_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    """Each object validates strictly (no unknown field) against Kubernetes' own schema;
    KEDA's kinds, which the schemas do not hold, are checked by the KEDA tests below."""
    if doc["apiVersion"].startswith("keda.sh/"):
        with pytest.raises(kubernetes_validate.SchemaNotFoundError):
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        return
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_can_fail() -> None:
    """A misspelt field of a Deployment is refused by the same strict validation."""
    broken = yaml.safe_load(yaml.safe_dump(worker_deployment()))
    broken["spec"]["template"]["spec"]["terminationGracePeriod"] = 180
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_kustomization_applies_every_manifest_but_the_examples_and_keda() -> None:
    """`kubectl apply -k` creates every manifest except the placeholder Secrets (never
    applied over real ones) and the two ScaledObjects (one is picked per broker)."""
    listed = set(kustomization()["resources"])
    on_disk = {path.name for path in KUBERNETES.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk - {EXAMPLE_SECRETS.name}
    assert {path.parent.name for path in KEDA.values()} == {"keda"}
    assert {path.name for path in (KUBERNETES / "keda").iterdir()} == {
        path.name for path in KEDA.values()
    }


@pytest.mark.parametrize("name", [name for name, _ in containers()])
def test_every_variable_given_to_a_container_is_a_setting_the_service_reads(name: str) -> None:
    """A misspelt or retired name in a ConfigMap, a Secret or an env entry fails here."""
    container = dict(containers())[name]
    unknown = set(environment(container)) - setting_names() - TOOLING_NAMES
    assert unknown == set(), f"{name}: not read by the service: {sorted(unknown)}"


def test_the_name_check_knows_the_redis_and_tooling_names() -> None:
    """The Redis (Sentinel, TLS) settings are among the names read, and a typo is not."""
    assert {"REDIS_URL", "REDIS_PASSWORD", "REDIS_SENTINELS"} <= setting_names()
    assert {"SEMAPHORE_API_TOKEN", "REDIS_PASSWORD", "REDIS_SENTINEL_PASSWORD"} <= CREDENTIALS
    assert "WORKER_CONCURENCY" not in setting_names() | TOOLING_NAMES


def test_credentials_come_only_from_secrets() -> None:
    """No credential in the ConfigMap or as a literal env value; Secrets hold only
    credentials, placeholders marked CHANGE-ME, and the applied files hold no Secret."""
    config = find("ConfigMap", "api-layer-worker-config")
    assert set(config["data"]) & CREDENTIALS == set()
    for name, container in containers():
        for var in container.get("env", []):
            assert "value" not in var or var["name"] not in CREDENTIALS, name
    assert [doc for doc in applied() if doc["kind"] == "Secret"] == []
    for secret, values in example_secrets().items():
        for key, value in values.items():
            assert PLACEHOLDER in value, f"{secret}/{key} is not a placeholder"
    assert set(example_secrets()["api-layer-worker"]) <= CREDENTIALS


def test_flower_alone_gets_its_login_and_is_never_open() -> None:
    """Flower reads FLOWER_BASIC_AUTH from its own Secret, refuses an empty one, and its
    Service stays inside the cluster."""
    flower = deployments()["api-layer-worker-flower"]
    (container,) = flower["spec"]["template"]["spec"]["containers"]
    (login,) = [var for var in container["env"] if var["name"] == "FLOWER_BASIC_AUTH"]
    assert login["valueFrom"]["secretKeyRef"] == {
        "name": "api-layer-worker-flower",
        "key": "FLOWER_BASIC_AUTH",
    }
    assert 'test -n "$FLOWER_BASIC_AUTH"' in container["command"][-1]
    for name, other in containers():
        if not name.startswith("api-layer-worker-flower/"):
            assert "FLOWER_BASIC_AUTH" not in environment(other), name
    service = find("Service", "api-layer-worker-flower")
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert service["spec"]["selector"] == flower["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("broker", ["redis", "rabbitmq"])
def test_the_manifests_environment_is_a_valid_configuration(
    broker: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker starts on it with either broker: values pass the settings' checks, and
    no broker-specific setting is set that the other broker would refuse."""
    (container,) = worker_deployment()["spec"]["template"]["spec"]["containers"]
    env = environment(container)
    if broker == "redis":
        env.pop("CELERY_BROKER_URL")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    settings = WorkerSettings()
    ApiSettings()
    assert settings.broker_url.startswith("amqp://" if broker == "rabbitmq" else "redis://")


def test_the_grace_period_covers_the_longest_job() -> None:
    """terminationGracePeriodSeconds >= TASK_TIME_LIMIT (as set, or its default) plus a
    margin, so the warm shutdown lets every running job finish."""
    (container,) = worker_deployment()["spec"]["template"]["spec"]["containers"]
    env = environment(container)
    default = WorkerSettings.model_fields["task_time_limit"].default
    limit = float(env.get("TASK_TIME_LIMIT", default))
    grace = worker_deployment()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= math.ceil(limit) + SHUTDOWN_MARGIN_SECONDS


def probe_paths(container: dict[str, Any]) -> list[str]:
    return [container[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe")]


def test_worker_probes_ask_the_metrics_port_for_one_counter() -> None:
    """Both probes are HTTP GETs on METRICS_PORT, restricted to a series the worker
    exports that is not one of the gauges read from Redis; no exec, no inspect ping."""
    (container,) = worker_deployment()["spec"]["template"]["spec"]["containers"]
    port = int(environment(container).get("METRICS_PORT", 9808))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    gauges = {
        family.name
        for family in BacklogCollector(
            queues=(), depths=None, results=None, failures_key="", circuit_keys={}
        ).describe()
    }
    exported = {
        family.name + "_total" if family.type == "counter" else family.name
        for family in REGISTRY.collect()
    }
    for probe in ("readinessProbe", "livenessProbe"):
        assert set(container[probe]) & {"exec", "grpc", "tcpSocket"} == set()
        get = container[probe]["httpGet"]
        assert ports[get["port"]] == port != 0
        names = parse_qs(urlsplit(get["path"]).query)["name[]"]
        assert names
        assert set(names) <= exported
        assert not any(name.startswith(tuple(gauges)) for name in names)


def test_the_probe_path_reads_no_gauge_but_a_full_scrape_does() -> None:
    """Over a real prometheus-client server, the probe's request leaves the Redis-read
    gauges alone (nothing asks the broker), while /metrics reads them."""
    asked: list[tuple[str, ...]] = []

    def depths(queues: tuple[str, ...]) -> dict[str, int]:
        asked.append(tuple(queues))
        return dict.fromkeys(queues, 0)

    registry = CollectorRegistry(auto_describe=True)
    Counter("apiworker_jobs", "Finished jobs.", ["task", "state"], registry=registry).labels(
        "t", "SUCCESS"
    ).inc()
    registry.register(
        BacklogCollector(
            queues=ALL_QUEUES,
            depths=depths,
            results=fakeredis.FakeRedis(),
            failures_key="events:failures",
            circuit_keys={},
            cache_seconds=0,
        )
    )
    server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        (container,) = worker_deployment()["spec"]["template"]["spec"]["containers"]
        for path in probe_paths(container):
            with urllib.request.urlopen(base + path, timeout=5) as answer:
                body = answer.read().decode()
            assert answer.status == 200
            assert 'apiworker_jobs_total{state="SUCCESS",task="t"} 1.0' in body
            assert "apiworker_queue_depth" not in body
        assert asked == []
        with urllib.request.urlopen(base + "/metrics", timeout=5) as answer:
            assert "apiworker_queue_depth" in answer.read().decode()
        assert asked == [ALL_QUEUES]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_exactly_one_beat_stopped_before_the_next_starts() -> None:
    """Beat is one replica with the Recreate strategy: a rollout never runs two."""
    beats = [
        (name, d)
        for name, d in deployments().items()
        for c in d["spec"]["template"]["spec"]["containers"]
        if "beat" in c["command"]
    ]
    assert len(beats) == 1
    _, beat = beats[0]
    assert beat["spec"]["replicas"] == 1
    assert beat["spec"]["strategy"] == {"type": "Recreate"}


def test_every_deployment_selects_its_own_pods_and_the_budget_the_workers() -> None:
    """Selectors match their template's labels and no other Deployment's; the
    PodDisruptionBudget selects exactly the worker pods and lets one go at a time."""
    labels = {
        name: d["spec"]["template"]["metadata"]["labels"] for name, d in deployments().items()
    }
    for name, deployment in deployments().items():
        selector = deployment["spec"]["selector"]["matchLabels"]
        matched = {other for other, pod in labels.items() if selector.items() <= pod.items()}
        assert matched == {name}
    budget = find("PodDisruptionBudget", "api-layer-worker")
    assert (
        budget["spec"]["selector"]["matchLabels"]
        == (worker_deployment()["spec"]["selector"]["matchLabels"])
    )
    assert budget["spec"]["maxUnavailable"] == 1


# KEDA's own parameter names for the two scalers (keda.sh/docs, "Redis Lists" and
# "RabbitMQ Queue"), and what each trigger must name.
KEDA_TRIGGERS = {
    "redis": (
        "redis",
        {"address", "host", "port", "databaseIndex", "enableTLS", "listName", "listLength"},
        "listName",
        "listLength",
        {"password", "username"},
    ),
    "rabbitmq": (
        "rabbitmq",
        {"protocol", "mode", "queueName", "value", "vhostName", "activationValue"},
        "queueName",
        "value",
        {"host"},
    ),
}


@pytest.mark.parametrize("broker", sorted(KEDA))
def test_keda_scales_the_worker_deployment_on_every_queue(broker: str) -> None:
    """keda.sh/v1alpha1 ScaledObject on the worker Deployment, one trigger per queue of
    the broker's kind with KEDA's parameter names, never below the budget's two pods."""
    docs = documents(KEDA[broker])
    assert {doc["apiVersion"] for doc in docs} == {"keda.sh/v1alpha1"}
    scaled = find("ScaledObject", "api-layer-worker", docs)
    spec = scaled["spec"]
    assert spec["scaleTargetRef"] == {"name": worker_deployment()["metadata"]["name"]}
    assert 2 <= spec["minReplicaCount"] <= spec["maxReplicaCount"]
    kind, allowed, queue_key, target_key, _ = KEDA_TRIGGERS[broker]
    triggers = spec["triggers"]
    assert {trigger["type"] for trigger in triggers} == {kind}
    assert sorted(trigger["metadata"][queue_key] for trigger in triggers) == sorted(ALL_QUEUES)
    for trigger in triggers:
        metadata = trigger["metadata"]
        assert set(metadata) <= allowed
        assert all(isinstance(value, str) for value in metadata.values())
        assert int(metadata[target_key]) > 0
        if broker == "rabbitmq":
            assert metadata["mode"] == "QueueLength"
        assert "password" not in metadata
        assert "@" not in str(metadata.get("host", ""))


@pytest.mark.parametrize("broker", sorted(KEDA))
def test_keda_reads_its_credentials_from_a_secret(broker: str) -> None:
    """Every trigger authenticates through a TriggerAuthentication in the same file whose
    parameters come from keys the example Secrets define."""
    docs = documents(KEDA[broker])
    secrets = example_secrets()
    *_, parameters = KEDA_TRIGGERS[broker]
    for trigger in find("ScaledObject", "api-layer-worker", docs)["spec"]["triggers"]:
        auth = find("TriggerAuthentication", trigger["authenticationRef"]["name"], docs)
        refs = auth["spec"]["secretTargetRef"]
        assert {ref["parameter"] for ref in refs} <= parameters
        for ref in refs:
            assert ref["key"] in secrets[ref["name"]], ref


POLICY_JOB = KUBERNETES / "rabbitmq" / "policy-job.yaml"


def test_a_rabbitmq_deployment_has_a_job_that_applies_the_policies_before_the_workers() -> None:
    """The Job runs `apiworker rabbitmq apply-policy` once, is ordered before the workers
    (Argo CD's PreSync hook; the README's `kubectl wait`), reads only names the service
    reads, and is the only one given the policy user's management URL."""
    (job,) = documents(POLICY_JOB)
    assert job["kind"] == "Job"
    assert job["metadata"]["annotations"]["argocd.argoproj.io/hook"] == "PreSync"
    (container,) = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["apiworker", "rabbitmq", "apply-policy"]
    env = environment(container)
    assert set(env) - setting_names() - TOOLING_NAMES == set()
    assert env["RABBITMQ_MANAGEMENT_URL"].startswith("https://")
    (management,) = [var for var in container["env"] if var["name"] == "RABBITMQ_MANAGEMENT_URL"]
    admin = management["valueFrom"]["secretKeyRef"]["name"]
    assert admin == "api-layer-worker-rabbitmq-admin"
    for name, other in containers():
        sources = {source.get("secretRef", {}).get("name") for source in other.get("envFrom", [])}
        assert admin not in sources, name
        assert "RABBITMQ_MANAGEMENT_URL" not in environment(other), name
    assert f"job/{job['metadata']['name']}" in (ROOT / "README.md").read_text()
    assert POLICY_JOB.name not in kustomization()["resources"]
