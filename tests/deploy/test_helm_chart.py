"""The Helm chart renders the production settings of issue 8 (helm template, then assertions).

helm is the binary `make helm-lint` installs into .tools/bin (or one on PATH), promtool the one
`make promtool` unpacks there; without them these tests fail, they never skip.
kubernetes-validate checks the same renderings against the Kubernetes schemas in
.ci/deploy-checks.sh; the ServiceMonitor and the PrometheusRule, CRDs it has no schema for, are
checked field by field here, the rules also by `promtool check rules` and `promtool test rules`,
and their metric names against a real broker's /metrics.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from app.config import Settings, StoreSettings
from app.transport.server import GRACEFUL_SHUTDOWN_SECONDS
from tests.conftest import BrokerFactory, Emulator
from tests.contract import assert_error, assert_token, billing, orders
from tests.observability.test_metrics import rejected_payouts
from tests.support.promtool import promtool

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "paysera-token-broker"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
KUBERNETES_VERSION = "1.30.0"
NAMESPACE = "payments"
RELEASE = "tb"
UID = 10001

Obj = dict[str, Any]


def find_helm() -> str:
    """The helm binary: .tools/bin/helm (installed by `make helm-lint`), else one on PATH."""
    local = REPO / ".tools" / "bin" / "helm"
    if local.is_file() and os.access(local, os.X_OK):
        return str(local)
    on_path = shutil.which("helm")
    if on_path:
        return on_path
    pytest.fail(
        "helm is missing: neither .tools/bin/helm nor helm on PATH. "
        "Run `make helm-lint` (it installs helm into .tools/bin) and try again.",
        pytrace=False,
    )


@dataclass(frozen=True)
class Rendered:
    """The objects one `helm template` produced."""

    objects: tuple[Obj, ...]

    def all(self, kind: str) -> list[Obj]:
        """Every object of `kind`."""
        return [obj for obj in self.objects if obj["kind"] == kind]

    def one(self, kind: str) -> Obj:
        """The single object of `kind`; fails when there is none or several."""
        found = self.all(kind)
        assert len(found) == 1, f"expected one {kind}, rendered {len(found)}"
        return found[0]

    @property
    def kinds(self) -> set[str]:
        """The kinds rendered."""
        return {obj["kind"] for obj in self.objects}

    @property
    def deployment(self) -> Obj:
        """The Deployment."""
        return self.one("Deployment")

    @property
    def pod(self) -> Obj:
        """The Deployment's pod spec."""
        return self.deployment["spec"]["template"]["spec"]  # type: ignore[no-any-return]

    @property
    def container(self) -> Obj:
        """The broker container."""
        containers = self.pod["containers"]
        assert [c["name"] for c in containers] == ["token-broker"]
        return containers[0]  # type: ignore[no-any-return]

    @property
    def config_text(self) -> str:
        """config.toml as the ConfigMap carries it (the dashboard ConfigMap aside)."""
        (config_map,) = [c for c in self.all("ConfigMap") if "config.toml" in c.get("data", {})]
        return config_map["data"]["config.toml"]  # type: ignore[no-any-return]

    @property
    def config(self) -> dict[str, Any]:
        """config.toml, parsed."""
        return tomllib.loads(self.config_text)

    def env(self) -> dict[str, Obj]:
        """The container's env entries by name."""
        return {entry["name"]: entry for entry in self.container.get("env", [])}

    def volume(self, name: str) -> Obj:
        """The pod volume called `name`."""
        (volume,) = [v for v in self.pod["volumes"] if v["name"] == name]
        return volume  # type: ignore[no-any-return]

    def mount(self, name: str) -> Obj:
        """The container's mount of volume `name`."""
        (mount,) = [m for m in self.container["volumeMounts"] if m["name"] == name]
        return mount  # type: ignore[no-any-return]

    def container_port(self, name: str) -> int:
        """The containerPort named `name`."""
        (port,) = [p["containerPort"] for p in self.container["ports"] if p["name"] == name]
        return port  # type: ignore[no-any-return]


class RenderError(Exception):
    """helm template refused the values; the message is helm's."""


@cache
def _render(helm: str, files: tuple[str, ...], sets: tuple[tuple[str, str], ...]) -> Rendered:
    args = [helm, "template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", KUBERNETES_VERSION]
    for file in files:
        args += ["--values", file]
    for key, value in sets:
        args += ["--set-json", f"{key}={value}"]
    result = subprocess.run(args, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode != 0:
        raise RenderError(result.stderr)
    return Rendered(tuple(obj for obj in yaml.safe_load_all(result.stdout) if obj))


Render = Callable[..., Rendered]


@pytest.fixture(scope="session")
def render() -> Render:
    """render(*value_files, **{"dotted.key": value}) -> the rendered objects (cached)."""
    helm = find_helm()

    def _do(*files: Path | str, **sets: Any) -> Rendered:
        named = tuple(str(CHART / "ci" / f) if isinstance(f, str) else str(f) for f in files)
        return _render(helm, named, tuple((k, json.dumps(v)) for k, v in sorted(sets.items())))

    return _do


@pytest.fixture(scope="session")
def default(render: Render) -> Rendered:
    """The chart rendered with its default values."""
    return render()


def _values(name: str) -> dict[str, Any]:
    return yaml.safe_load((CHART / "ci" / name).read_text())  # type: ignore[no-any-return]


def _selector_matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# --- the default rendering --------------------------------------------------------------------


def test_default_renders_the_expected_objects_and_no_secret(default: Rendered) -> None:
    """Defaults give ConfigMap, Deployment, Service, ServiceAccount, PDB and the `helm test`
    Pod, and never a Secret."""
    assert default.kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "ServiceAccount",
        "PodDisruptionBudget",
        "Pod",
    }
    assert len(default.all("ConfigMap")) == 1  # no dashboard unless asked for
    assert all(obj["metadata"].get("namespace") == NAMESPACE for obj in default.objects)


def test_default_deployment_runs_three_replicas_and_rolls_without_losing_one(
    default: Rendered,
) -> None:
    """Three replicas; a rolling update adds a pod before removing one (maxUnavailable 0)."""
    spec = default.deployment["spec"]
    assert spec["replicas"] == 3
    assert spec["strategy"]["type"] == "RollingUpdate"
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert spec["strategy"]["rollingUpdate"]["maxSurge"] >= 1
    assert _selector_matches(
        spec["selector"]["matchLabels"], spec["template"]["metadata"]["labels"]
    )


def test_default_pods_spread_across_nodes_and_zones(default: Rendered) -> None:
    """Topology spread: hard across nodes, soft across zones, counting this Deployment's pods."""
    labels = default.deployment["spec"]["template"]["metadata"]["labels"]
    spread = {c["topologyKey"]: c for c in default.pod["topologySpreadConstraints"]}
    assert set(spread) == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    assert spread["kubernetes.io/hostname"]["whenUnsatisfiable"] == "DoNotSchedule"
    assert spread["topology.kubernetes.io/zone"]["whenUnsatisfiable"] == "ScheduleAnyway"
    for constraint in spread.values():
        assert constraint["maxSkew"] == 1
        assert _selector_matches(constraint["labelSelector"]["matchLabels"], labels)
        assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_default_probes_hit_live_and_ready_on_the_main_port(default: Rendered) -> None:
    """Startup and readiness probe /health/ready (which stays 200 through a Redis outage while
    the pod holds valid tokens), liveness /health/live; all on the plain-HTTP port."""
    container = default.container
    probes = {
        kind: container[f"{kind}Probe"]["httpGet"] for kind in ("startup", "liveness", "readiness")
    }
    assert probes["startup"]["path"] == "/health/ready"
    assert probes["liveness"]["path"] == "/health/live"
    assert probes["readiness"]["path"] == "/health/ready"
    for probe in probes.values():
        assert probe["port"] == "http"
        assert probe.get("scheme", "HTTP") == "HTTP"
    assert default.container_port("http") == default.config["server"]["port"] == 8080
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 30
    for kind in ("liveness", "readiness"):
        probe = container[f"{kind}Probe"]
        assert probe["timeoutSeconds"] < probe["periodSeconds"]


def test_probe_paths_are_values_limited_to_the_health_endpoints(render: Render) -> None:
    """A chart user may probe readiness on /health/live; any other path is refused."""
    loose = render(**{"probes.paths.readiness": "/health/live"})
    assert loose.container["readinessProbe"]["httpGet"]["path"] == "/health/live"
    with pytest.raises(RenderError, match="readiness"):
        render(**{"probes.paths.readiness": "/metrics"})


def test_default_security_context_is_locked_down(default: Rendered) -> None:
    """Non-root fixed UID, read-only root, no escalation, all capabilities dropped, seccomp."""
    pod_sc = default.pod["securityContext"]
    assert pod_sc["runAsNonRoot"] is True
    assert pod_sc["runAsUser"] == UID
    assert pod_sc["runAsGroup"] == UID
    assert pod_sc["seccompProfile"] == {"type": "RuntimeDefault"}
    sc = default.container["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["runAsUser"] == UID
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["privileged"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert default.pod["automountServiceAccountToken"] is False
    assert default.one("ServiceAccount")["automountServiceAccountToken"] is False
    assert default.pod["serviceAccountName"] == default.one("ServiceAccount")["metadata"]["name"]
    # The only writable path is /tmp, on node disk (proxy spools must not eat the memory limit)
    # and large enough for the proxy's default body limit (64 MiB).
    assert default.mount("tmp")["mountPath"] == "/tmp"
    assert "medium" not in default.volume("tmp")["emptyDir"]
    assert default.volume("tmp")["emptyDir"]["sizeLimit"] == "256Mi"
    for name in ("config", "credentials"):
        assert default.mount(name)["readOnly"] is True


def test_default_resources_have_requests_and_limits(default: Rendered) -> None:
    """CPU and memory requests and limits are set, memory limit at least the request."""
    resources = default.container["resources"]
    assert set(resources["requests"]) == {"cpu", "memory"}
    assert set(resources["limits"]) == {"cpu", "memory"}

    def mebibytes(quantity: str) -> int:
        number, unit = re.fullmatch(r"(\d+)(Mi|Gi)", quantity).groups()  # type: ignore[union-attr]
        return int(number) * (1024 if unit == "Gi" else 1)

    assert mebibytes(resources["limits"]["memory"]) >= mebibytes(resources["requests"]["memory"])


def test_default_secrets_come_from_existing_secrets(default: Rendered) -> None:
    """Client secret mounted from the credentials Secret, client ID and Redis password by ref."""
    credentials = "paysera-token-broker-credentials"
    volume = default.volume("credentials")["secret"]
    assert volume["secretName"] == credentials
    assert volume["defaultMode"] == 0o440
    assert volume["items"] == [
        {"key": "clients.checkout.client_secret", "path": "clients/checkout/client_secret"}
    ]
    mount = default.mount("credentials")["mountPath"]
    client = default.config["clients"]["checkout"]
    assert client["client_secret_file"] == f"{mount}/clients/checkout/client_secret"

    env = default.env()
    assert env["TOKEN_BROKER_CLIENTS__CHECKOUT__CLIENT_ID"]["valueFrom"]["secretKeyRef"] == {
        "name": credentials,
        "key": "clients.checkout.client_id",
    }
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"] == {
        "name": "redis",
        "key": "redis-password",
    }
    url = env["TOKEN_BROKER_STORE__REDIS_URL"]["value"]
    assert url == "redis://:$(REDIS_PASSWORD)@redis-master:6379/0"
    # Kubernetes expands $(VAR) only from variables defined earlier in the list.
    names = list(env)
    assert names.index("REDIS_PASSWORD") < names.index("TOKEN_BROKER_STORE__REDIS_URL")


def test_default_config_map_holds_no_secret(default: Rendered) -> None:
    """config.toml names secret files but carries no secret, API-key hash or password."""
    config = default.config
    for client in config["clients"].values():
        assert "client_secret" not in client
    for caller in config.get("callers", {}).values():
        assert "api_key_sha256" not in caller
    assert "@" not in config["store"]["redis_url"]
    assert not re.search(r"password|api_key_sha256\s*=|client_secret\s*=", default.config_text)


def test_checksum_annotation_is_the_rendered_config(render: Render, default: Rendered) -> None:
    """checksum/config is the SHA-256 of config.toml, so a config change rolls the pods."""
    annotations = default.deployment["spec"]["template"]["metadata"]["annotations"]
    expected = hashlib.sha256(default.config_text.rstrip("\n").encode()).hexdigest()
    assert annotations["checksum/config"] == expected
    changed = render(**{"config.budget.limit": 40})
    changed_annotation = changed.deployment["spec"]["template"]["metadata"]["annotations"]
    assert changed_annotation["checksum/config"] != annotations["checksum/config"]


def test_default_pdb_allows_one_voluntary_disruption(default: Rendered) -> None:
    """The PDB covers the broker's pods and lets one go at a time, unhealthy ones always."""
    pdb = default.one("PodDisruptionBudget")["spec"]
    assert pdb["maxUnavailable"] == 1
    assert "minAvailable" not in pdb
    assert pdb["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
    labels = default.deployment["spec"]["template"]["metadata"]["labels"]
    assert _selector_matches(pdb["selector"]["matchLabels"], labels)


def test_default_service_targets_the_pods_named_port(default: Rendered) -> None:
    """The Service selects the pods and forwards to their named HTTP port."""
    service = default.one("Service")["spec"]
    labels = default.deployment["spec"]["template"]["metadata"]["labels"]
    assert service["type"] == "ClusterIP"
    assert _selector_matches(service["selector"], labels)
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["ports"]] == [
        ("http", 8080, "http")
    ]


def test_default_shutdown_leaves_time_to_drain(default: Rendered) -> None:
    """preStop waits for endpoint removal (Kubernetes' `sleep` action, nothing needed in the
    image), and the grace period covers the pause plus the broker's whole drain of in-flight
    requests (GRACEFUL_SHUTDOWN_SECONDS)."""
    pre_stop = default.container["lifecycle"]["preStop"]
    assert set(pre_stop) == {"sleep"}
    sleep = pre_stop["sleep"]["seconds"]
    assert sleep >= 5
    assert sleep + GRACEFUL_SHUTDOWN_SECONDS < default.pod["terminationGracePeriodSeconds"]


@pytest.mark.parametrize(
    ("pause", "grace"), [(5, 26), (15, 30), (30, 30)], ids=["26 s", "pause 15", "pause 30"]
)
def test_a_grace_period_too_short_to_drain_is_refused(
    render: Render, pause: int, grace: int
) -> None:
    """A grace period shorter than the preStop pause + 20 s drain + 2 s fails the install."""
    with pytest.raises(RenderError, match="terminationGracePeriodSeconds must be at least"):
        render(preStopSleepSeconds=pause, terminationGracePeriodSeconds=grace)
    render(preStopSleepSeconds=pause, terminationGracePeriodSeconds=pause + 22)


def test_default_keep_alive_outlasts_load_balancer_idle_timeouts(default: Rendered) -> None:
    """config.toml keeps idle connections open longer than the usual load-balancer and mesh
    idle timeout (60 s), so a pooled connection is never closed just as it is reused."""
    assert default.config["server"]["keep_alive_seconds"] > 60


def test_default_container_starts_the_image_with_the_mounted_config(default: Rendered) -> None:
    """The container runs `serve --config` on the mounted ConfigMap, image tag = appVersion."""
    container = default.container
    assert container["args"] == ["serve", "--config", "/etc/token-broker/config.toml"]
    assert default.mount("config")["mountPath"] == "/etc/token-broker"
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert container["image"] == f"paysera-token-broker:{chart['appVersion']}"
    assert default.config["server"]["host"] == "0.0.0.0"


# --- every value set -------------------------------------------------------------------------


def _pod_environment(rendered: Rendered) -> Iterator[tuple[str, str]]:
    """The broker's environment as Kubernetes would build it, secrets replaced by stand-ins."""
    resolved: dict[str, str] = {}
    for name, entry in rendered.env().items():
        if "value" in entry:
            value = re.sub(r"\$\((\w+)\)", lambda m: resolved[m.group(1)], entry["value"])
        else:
            key = entry["valueFrom"]["secretKeyRef"]["key"]
            if key.endswith("api_key_sha256"):
                value = hashlib.sha256(key.encode()).hexdigest()
            elif name == "TOKEN_BROKER_STORE__REDIS_URL":
                value = "redis://:stand-in@redis:6379/0"
            else:
                value = f"stand-in-{key}"
        resolved[name] = value
        yield name, value


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "default")
def test_rendered_config_is_accepted_by_the_broker(
    render: Render, values: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """config.toml plus the pod's environment overrides load into the broker's Settings."""
    rendered = render(values) if values else render()
    for name in list(os.environ):
        if name.startswith("TOKEN_BROKER_"):
            monkeypatch.delenv(name)
    for name, value in _pod_environment(rendered):
        monkeypatch.setenv(name, value)
    settings = Settings(**rendered.config)
    assert settings.reference_problems() == []
    assert settings.server.port == rendered.container_port(
        "https" if settings.server.tls_enabled else "http"
    )
    if settings.server.ops_port is not None:
        assert settings.server.ops_port == rendered.container_port("ops")
    for name, client in settings.clients.items():
        assert client.client_secret is None
        assert str(client.client_secret_file).endswith(f"/clients/{name}/client_secret")
    if settings.store.redis_url is not None and "REDIS_PASSWORD" in rendered.env():
        assert ":stand-in-redis-password@" in settings.store.redis_url.get_secret_value()


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "default")
def test_every_value_set_keeps_the_production_settings(render: Render, values: Path | None) -> None:
    """Whatever the value set, the pod stays locked down, probed, limited and spread."""
    rendered = render(values) if values else render()
    sc = rendered.container["securityContext"]
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert rendered.pod["securityContext"]["runAsNonRoot"] is True
    assert rendered.deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    for kind in ("startup", "liveness", "readiness"):
        assert f"{kind}Probe" in rendered.container
    assert rendered.container["resources"]["limits"]["memory"]
    assert len(rendered.pod["topologySpreadConstraints"]) == 2
    assert "Secret" not in rendered.kinds


# --- mTLS --------------------------------------------------------------------------------------


def test_mtls_serves_https_and_moves_probes_to_the_ops_port(render: Render) -> None:
    """With TLS the main port is HTTPS; probes use the plain-HTTP ops port, which only it serves."""
    rendered = render("mtls-values.yaml")
    server = rendered.config["server"]
    assert server["tls_cert_file"] == "/etc/token-broker/tls/tls.crt"
    assert server["tls_key_file"] == "/etc/token-broker/tls/tls.key"
    assert server["tls_client_ca_file"] == "/etc/token-broker/tls/ca.crt"
    assert server["tls_client_cert_required"] is True
    assert server["ops_port"] == rendered.container_port("ops") == 9090
    assert rendered.container_port("https") == server["port"]
    for kind in ("startup", "liveness", "readiness"):
        assert rendered.container[f"{kind}Probe"]["httpGet"]["port"] == "ops"
    ports = {p["name"]: p for p in rendered.one("Service")["spec"]["ports"]}
    assert ports["https"]["targetPort"] == "https"
    assert ports["https"]["appProtocol"] == "https"
    assert ports["ops"]["targetPort"] == "ops"


def test_mtls_mounts_certificate_and_ca_so_renewals_reach_the_files(render: Render) -> None:
    """The TLS Secret and the CA are projected read-only, without subPath, and Reloader watches."""
    rendered = render("mtls-values.yaml")
    mount = rendered.mount("tls")
    assert mount == {"name": "tls", "mountPath": "/etc/token-broker/tls", "readOnly": True}
    sources = rendered.volume("tls")["projected"]["sources"]
    assert sources == [
        {
            "secret": {
                "name": "paysera-token-broker-tls",
                "items": [
                    {"key": "tls.crt", "path": "tls.crt"},
                    {"key": "tls.key", "path": "tls.key"},
                ],
            }
        },
        {"secret": {"name": "internal-ca", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
    ]
    reload = rendered.deployment["metadata"]["annotations"]["secret.reloader.stakater.com/reload"]
    assert set(reload.split(",")) == {
        "paysera-token-broker-credentials",
        "redis",
        "paysera-token-broker-tls",
        "internal-ca",
    }


def test_callers_api_key_hash_is_optional_only_for_certificate_callers(render: Render) -> None:
    """A caller with mtls_identities may lack an API-key hash; one without must have it."""
    rendered = render("production-values.yaml")
    env = rendered.env()
    orders = env["TOKEN_BROKER_CALLERS__ORDERS__API_KEY_SHA256"]["valueFrom"]["secretKeyRef"]
    billing = env["TOKEN_BROKER_CALLERS__BILLING__API_KEY_SHA256"]["valueFrom"]["secretKeyRef"]
    assert orders == {
        "name": "token-broker-credentials",
        "key": "callers.orders.api_key_sha256",
        "optional": True,
    }
    assert billing["optional"] is False
    assert billing["key"] == "callers.billing.api_key_sha256"
    # client_id set in values for checkout, read from the Secret for payouts.
    assert "TOKEN_BROKER_CLIENTS__CHECKOUT__CLIENT_ID" not in env
    assert rendered.config["clients"]["checkout"]["client_id"] == "12345"
    payouts = env["TOKEN_BROKER_CLIENTS__PAYOUTS__CLIENT_ID"]["valueFrom"]["secretKeyRef"]
    assert payouts["key"] == "clients.payouts.client_id"


# --- HPA, NetworkPolicy, ServiceMonitor, Redis ---------------------------------------------------


def test_hpa_owns_the_replica_count(render: Render) -> None:
    """With autoscaling the Deployment has no replicas field and the HPA scales it from 3."""
    rendered = render("hpa-values.yaml")
    assert "replicas" not in rendered.deployment["spec"]
    hpa = rendered.one("HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": rendered.deployment["metadata"]["name"],
    }
    assert hpa["spec"]["minReplicas"] == 3
    assert {m["resource"]["name"] for m in hpa["spec"]["metrics"]} == {"cpu", "memory"}
    assert rendered.one("PodDisruptionBudget")["spec"]["minAvailable"] == 2


def test_network_policy_admits_only_labelled_namespaces(render: Render) -> None:
    """Ingress only from namespaces (and pods) with the configured labels, to named ports."""
    rendered = render("networkpolicy-values.yaml")
    policy = rendered.one("NetworkPolicy")["spec"]
    labels = rendered.deployment["spec"]["template"]["metadata"]["labels"]
    assert _selector_matches(policy["podSelector"]["matchLabels"], labels)
    assert policy["policyTypes"] == ["Ingress", "Egress"]
    callers, metrics = policy["ingress"]
    for rule in (callers, metrics):
        for peer in rule["from"]:
            assert peer["namespaceSelector"]["matchLabels"], "an empty selector admits everyone"
    assert callers["from"] == [
        {
            "namespaceSelector": {"matchLabels": {"paysera-token-broker/client": "true"}},
            "podSelector": {"matchLabels": {"paysera-token-broker/access": "true"}},
        }
    ]
    assert callers["ports"] == [{"port": "http", "protocol": "TCP"}]


def test_network_policy_egress_reaches_only_dns_redis_and_upstream(render: Render) -> None:
    """Egress rules: DNS to kube-dns, Redis to its pods, HTTPS to public addresses."""
    policy = render("networkpolicy-values.yaml").one("NetworkPolicy")["spec"]
    dns, redis, upstream = policy["egress"]
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    assert dns["to"][0]["podSelector"]["matchLabels"] == {"k8s-app": "kube-dns"}
    assert redis["ports"] == [{"port": 6379, "protocol": "TCP"}]
    assert redis["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "redis"}}}]
    assert upstream["ports"] == [{"port": 443, "protocol": "TCP"}]
    assert "10.0.0.0/8" in upstream["to"][0]["ipBlock"]["except"]


def test_network_policy_admits_prometheus_to_the_ops_port_with_tls(render: Render) -> None:
    """With TLS on, callers reach the HTTPS port and Prometheus the ops port only."""
    policy = render("production-values.yaml").one("NetworkPolicy")["spec"]
    callers, metrics = policy["ingress"]
    assert callers["ports"] == [{"port": "https", "protocol": "TCP"}]
    assert metrics["ports"] == [{"port": "ops", "protocol": "TCP"}]
    assert metrics["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


@pytest.mark.parametrize(
    ("values", "port"), [("servicemonitor-values.yaml", "ops"), ("production-values.yaml", "ops")]
)
def test_service_monitor_scrapes_metrics_over_plain_http(
    render: Render, values: str, port: str
) -> None:
    """The ServiceMonitor (a CRD kubernetes-validate cannot check) is well formed and aimed."""
    rendered = render(values)
    monitor = rendered.one("ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert set(monitor["spec"]) == {"selector", "namespaceSelector", "endpoints"}
    service = rendered.one("Service")
    assert _selector_matches(
        monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"]
    )
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert set(endpoint) <= {"port", "path", "scheme", "interval", "scrapeTimeout"}
    assert endpoint["port"] == port
    assert port in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"
    assert endpoint["scheme"] == "http"
    for key in ("interval", "scrapeTimeout"):
        assert re.fullmatch(r"\d+(ms|s|m|h)", endpoint[key])


def test_service_monitor_labels_select_the_prometheus(render: Render) -> None:
    """serviceMonitor.labels land on the ServiceMonitor for Prometheus' selector."""
    monitor = render("servicemonitor-values.yaml").one("ServiceMonitor")
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_sentinel_url_gets_the_password_from_the_secret(render: Render) -> None:
    """A Sentinel URL carries the password as $(REDIS_PASSWORD), read from the Redis Secret."""
    rendered = render("sentinel-values.yaml")
    url = _values("sentinel-values.yaml")["redis"]["url"]
    assert rendered.config["store"]["redis_url"] == url
    env = rendered.env()
    scheme, rest = url.split("://", 1)
    assert env["TOKEN_BROKER_STORE__REDIS_URL"]["value"] == f"{scheme}://:$(REDIS_PASSWORD)@{rest}"
    assert env["REDIS_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "redis"


def test_sentinel_over_tls_url_renders_and_loads(render: Render) -> None:
    """A rediss+sentinel:// URL with its ssl_* options passes the schema, keeps its options and
    gets the password spliced in like a plain Sentinel URL; the broker accepts the result."""
    url = "rediss+sentinel://redis-node-0.redis-headless:26379/mymaster/0?ssl_ca_certs=/tls/ca.pem"
    rendered = render("sentinel-values.yaml", **{"redis.url": url})
    assert rendered.config["store"]["redis_url"] == url
    spliced = rendered.env()["TOKEN_BROKER_STORE__REDIS_URL"]["value"]
    assert spliced == url.replace("://", "://:$(REDIS_PASSWORD)@", 1)
    store = StoreSettings(redis_url=spliced.replace("$(REDIS_PASSWORD)", "stand-in"))
    assert store.redis_url is not None


def test_redis_url_from_a_secret_leaves_it_out_of_the_config(render: Render) -> None:
    """redis.urlSecret: the whole URL comes by secretKeyRef and config.toml names none."""
    rendered = render("production-values.yaml")
    assert "redis_url" not in rendered.config["store"]
    env = rendered.env()
    assert "REDIS_PASSWORD" not in env
    assert env["TOKEN_BROKER_STORE__REDIS_URL"]["valueFrom"]["secretKeyRef"] == {
        "name": "token-broker-redis",
        "key": "url",
    }


def test_redis_username_goes_into_the_url(render: Render) -> None:
    """An ACL user is put before the password reference."""
    env = render(**{"redis.auth.username": "broker"}).env()
    url = env["TOKEN_BROKER_STORE__REDIS_URL"]["value"]
    assert url == "redis://broker:$(REDIS_PASSWORD)@redis-master:6379/0"


def test_image_digest_wins_over_tag(render: Render) -> None:
    """A pinned digest is used as image@digest."""
    rendered = render("production-values.yaml")
    assert rendered.container["image"] == (
        "registry.example.com/platform/paysera-token-broker@sha256:" + "0123456789abcdef" * 4
    )


# --- values the chart refuses ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"clients.checkout.client_secret": "s3cret"}, "client_secret"),
        (
            {"callers.orders": {"clients": ["checkout"], "api_key_sha256": "0" * 64}},
            "api_key_sha256",
        ),
        ({"redis.url": "redis://:s3cret@redis:6379/0"}, "redis/url"),
        ({"redis.url": ""}, "in-memory store serves one instance only"),
        ({"callers.orders": {"clients": ["nope"]}}, 'unknown client "nope"'),
        ({"clients": {"Checkout": {}}}, "Checkout"),
        ({"clients.checkout": None}, "clients"),
        ({"tls.enabled": True}, "tls.existingSecret is required"),
        # Helm merges maps, so the default label goes only when nulled.
        (
            {"networkPolicy.ingress.namespaceLabels.paysera-token-broker/client": None},
            "minProperties",
        ),
        ({"credentials.existingSecret": ""}, "existingSecret"),
    ],
    ids=[
        "inline-client-secret",
        "inline-api-key-hash",
        "password-in-redis-url",
        "memory-store-with-replicas",
        "caller-names-unknown-client",
        "bad-client-name",
        "no-client",
        "tls-without-secret",
        "networkpolicy-open-to-all",
        "no-credentials-secret",
    ],
)
def test_chart_refuses_unsafe_or_broken_values(
    render: Render, sets: dict[str, Any], message: str
) -> None:
    """Inline secrets, credentials in URLs and inconsistent settings fail at render time."""
    with pytest.raises(RenderError, match=re.escape(message)):
        render(**sets)


def test_single_instance_may_use_the_memory_store(render: Render) -> None:
    """One replica without Redis renders, with no redis_url and no Redis environment."""
    rendered = render("single-instance-values.yaml")
    assert rendered.deployment["spec"]["replicas"] == 1
    assert "redis_url" not in rendered.config["store"]
    assert not {"REDIS_PASSWORD", "TOKEN_BROKER_STORE__REDIS_URL"} & set(rendered.env())


# --- monitoring: PrometheusRule, Grafana dashboard, `helm test` ------------------------------

FULLNAME = f"{RELEASE}-paysera-token-broker"
ALERTS = {
    "TokenBrokerRefreshFailing": "warning",
    "TokenBrokerNoValidToken": "critical",
    "TokenBrokerBudgetSaturated": "warning",
    "TokenBrokerStoreUnreachable": "critical",
    "TokenBrokerFleetSizeDisagreement": "warning",
}
_SELECTOR_NAME = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{")
_LABEL_VALUES = re.compile(r"label_values\(([a-zA-Z_:][a-zA-Z0-9_:]*)")


def rules_of(rendered: Rendered) -> list[Obj]:
    """Every rule of the rendered PrometheusRule."""
    groups = rendered.one("PrometheusRule")["spec"]["groups"]
    return [rule for group in groups for rule in group["rules"]]


def metric_names(promql: str) -> set[str]:
    """The metric names a PromQL expression selects (every selector of ours has matchers)."""
    return set(_SELECTOR_NAME.findall(promql)) | set(_LABEL_VALUES.findall(promql))


def dashboard_of(rendered: Rendered) -> Obj:
    """The Grafana dashboard JSON from its ConfigMap."""
    (config_map,) = [
        c for c in rendered.all("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    return json.loads(config_map["data"]["paysera-token-broker.json"])  # type: ignore[no-any-return]


def dashboard_queries(dashboard: Obj) -> list[str]:
    """Every PromQL query of the dashboard: panel targets and template variables."""
    queries = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            queries.append(variable["query"]["query"])
    return queries


def test_monitoring_objects_are_off_by_default(default: Rendered, render: Render) -> None:
    """No PrometheusRule or dashboard unless enabled; the `helm test` Pod only while enabled."""
    assert "PrometheusRule" not in default.kinds
    assert not [c for c in default.all("ConfigMap") if "dashboard" in c["metadata"]["name"]]
    assert "Pod" not in render(**{"helmTest.enabled": False}).kinds


@pytest.mark.parametrize("values", ["monitoring-values.yaml", "production-values.yaml"])
def test_prometheus_rule_has_the_five_alerts_for_this_release(render: Render, values: str) -> None:
    """Enabled, the PrometheusRule carries each alert with a severity, summary and description,
    every expression limited to this release's job and namespace."""
    rendered = render(values)
    rule_object = rendered.one("PrometheusRule")
    assert rule_object["apiVersion"] == "monitoring.coreos.com/v1"
    assert rule_object["metadata"]["namespace"] == NAMESPACE
    assert set(rule_object["spec"]) == {"groups"}
    rules = rules_of(rendered)
    assert {rule["alert"]: rule["labels"]["severity"] for rule in rules} == ALERTS
    selector = f'job="{FULLNAME}", namespace="{NAMESPACE}"'
    for rule in rules:
        assert set(rule) == {"alert", "expr", "for", "labels", "annotations"}
        assert re.fullmatch(r"\d+m", rule["for"])
        assert set(rule["annotations"]) == {"summary", "description"}
        selectors = re.findall(r"\{([^}]*)\}", rule["expr"])
        assert selectors and all(sel.startswith(selector) for sel in selectors), rule["expr"]


def test_prometheus_rule_labels_and_selector_come_from_values(render: Render) -> None:
    """Rule-object labels (for Prometheus' ruleSelector), alert labels, the saturation ratio and
    a custom series selector are taken from the values."""
    rendered = render("monitoring-values.yaml")
    assert (
        rendered.one("PrometheusRule")["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    )
    rules = rules_of(rendered)
    assert all(rule["labels"]["team"] == "payments" for rule in rules)
    (budget,) = [r for r in rules if r["alert"] == "TokenBrokerBudgetSaturated"]
    assert budget["expr"].rstrip().endswith(">= 0.8")
    custom = rules_of(
        render(**{"prometheusRule.enabled": True, "prometheusRule.selector": 'app="tb"'})
    )
    for rule in custom:
        assert set(re.findall(r"\{([^},]*)", rule["expr"])) == {'app="tb"'}


def _rule_file(rendered: Rendered, directory: Path) -> Path:
    """The rendered PrometheusRule's groups as a Prometheus rule file."""
    path = directory / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered.one("PrometheusRule")["spec"]["groups"]}))
    return path


def test_promtool_accepts_the_rendered_rules(render: Render, tmp_path: Path) -> None:
    """`promtool check rules` parses every expression and template of the rendered rules."""
    rules = _rule_file(render("monitoring-values.yaml"), tmp_path)
    result = promtool("check", "rules", str(rules))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(ALERTS)} rules found" in result.stdout


def _series(name: str, values: str, **labels: str) -> Obj:
    every = {"job": FULLNAME, "namespace": NAMESPACE, **labels}
    matchers = ",".join(f'{k}="{v}"' for k, v in sorted(every.items()))
    return {"series": f"{name}{{{matchers}}}", "values": values}


def _expected(rule: Obj, **labels: str) -> Obj:
    """The alert promtool should report for `rule` with these output labels."""
    every = {"job": FULLNAME, "namespace": NAMESPACE, **labels}

    def fill(text: str) -> str:
        return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: every[m.group(1)], text)

    return {
        "exp_labels": {**every, **rule["labels"]},
        "exp_annotations": {k: fill(v) for k, v in rule["annotations"].items()},
    }


def _alert_cases(rules: dict[str, Obj]) -> list[Obj]:
    """promtool unit tests: each alert fires on its condition, and not on its near misses."""
    up = "token_broker_upstream_token_requests_total"
    failing, no_token, budget, store, fleet = (
        rules[name]
        for name in (
            "TokenBrokerRefreshFailing",
            "TokenBrokerNoValidToken",
            "TokenBrokerBudgetSaturated",
            "TokenBrokerStoreUnreachable",
            "TokenBrokerFleetSizeDisagreement",
        )
    )
    return [
        {  # checkout only fails; payouts fails and succeeds (recovering): only checkout fires
            "interval": "1m",
            "input_series": [
                _series(up, "0+1x40", client="checkout", outcome="unavailable", instance="a"),
                _series(up, "1x40", client="checkout", outcome="ok", instance="a"),
                _series(up, "0+1x40", client="payouts", outcome="unavailable", instance="a"),
                _series(up, "0+1x40", client="payouts", outcome="ok", instance="a"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": failing["alert"], "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": failing["alert"],
                    "exp_alerts": [_expected(failing, client="checkout")],
                },
            ],
        },
        {  # checkout: no instance holds one and the broker keeps asking; payouts: nobody asked;
            # refunds: one instance holds a valid token
            "interval": "1m",
            "input_series": [
                _series("token_broker_token_valid", "0x30", client="checkout", instance="a"),
                _series("token_broker_token_valid", "0x30", client="checkout", instance="b"),
                _series(up, "0+1x30", client="checkout", outcome="unavailable", instance="a"),
                _series("token_broker_token_valid", "0x30", client="payouts", instance="a"),
                _series("token_broker_token_valid", "1x30", client="refunds", instance="a"),
                _series("token_broker_token_valid", "0x30", client="refunds", instance="b"),
                _series(up, "0+1x30", client="refunds", outcome="ok", instance="a"),
            ],
            "alert_rule_test": [
                {
                    "eval_time": "5m",
                    "alertname": no_token["alert"],
                    "exp_alerts": [_expected(no_token, client="checkout")],
                }
            ],
        },
        {  # 45 of 50 on both instances: saturated at the default 0.9; 40 of 50 is not
            "interval": "1m",
            "input_series": [
                _series("token_broker_budget_used", "45x20", instance="a"),
                _series("token_broker_budget_limit", "50x20", instance="a"),
                _series("token_broker_budget_used", "45x20", instance="b"),
                _series("token_broker_budget_limit", "50x20", instance="b"),
            ],
            "alert_rule_test": [
                {"eval_time": "3m", "alertname": budget["alert"], "exp_alerts": []},
                {
                    "eval_time": "10m",
                    "alertname": budget["alert"],
                    "exp_alerts": [_expected(budget)],
                },
            ],
        },
        {
            "interval": "1m",
            "input_series": [
                _series("token_broker_budget_used", "40x20", instance="a"),
                _series("token_broker_budget_limit", "50x20", instance="a"),
            ],
            "alert_rule_test": [
                {"eval_time": "10m", "alertname": budget["alert"], "exp_alerts": []}
            ],
        },
        {  # instance a lost Redis, b did not
            "interval": "1m",
            "input_series": [
                _series("token_broker_store_up", "0x10", instance="a"),
                _series("token_broker_store_up", "1x10", instance="b"),
            ],
            "alert_rule_test": [
                {"eval_time": "1m", "alertname": store["alert"], "exp_alerts": []},
                {
                    "eval_time": "5m",
                    "alertname": store["alert"],
                    "exp_alerts": [_expected(store, instance="a")],
                },
            ],
        },
        {  # a sees 3, b sees 2: disagreement
            "interval": "1m",
            "input_series": [
                _series("token_broker_fleet_instances", "3x30", instance="a"),
                _series("token_broker_fleet_instances", "2x30", instance="b"),
            ],
            "alert_rule_test": [
                {"eval_time": "5m", "alertname": fleet["alert"], "exp_alerts": []},
                {"eval_time": "15m", "alertname": fleet["alert"], "exp_alerts": [_expected(fleet)]},
            ],
        },
        {  # two scraped instances agree on 3 heartbeating: a third uses another store
            "interval": "1m",
            "input_series": [
                _series("token_broker_fleet_instances", "3x30", instance="a"),
                _series("token_broker_fleet_instances", "3x30", instance="b"),
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": fleet["alert"], "exp_alerts": [_expected(fleet)]}
            ],
        },
        {  # three scraped, three heartbeating: all is well
            "interval": "1m",
            "input_series": [
                _series("token_broker_fleet_instances", "3x30", instance=name) for name in "abc"
            ],
            "alert_rule_test": [
                {"eval_time": "15m", "alertname": fleet["alert"], "exp_alerts": []}
            ],
        },
    ]


def test_alerts_fire_on_their_conditions_under_promtool_test_rules(
    render: Render, tmp_path: Path
) -> None:
    """`promtool test rules` on synthetic series: each alert fires after its `for`, for the
    right client or instance, and not for healthy or never-requested clients."""
    rendered = render(**{"prometheusRule.enabled": True})
    rule_file = _rule_file(rendered, tmp_path)
    rules = {rule["alert"]: rule for rule in rules_of(rendered)}
    tests = {
        "rule_files": [str(rule_file)],
        "evaluation_interval": "1m",
        "tests": _alert_cases(rules),
    }
    test_file = tmp_path / "alerts_test.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = promtool("test", "rules", str(test_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_grafana_dashboard_config_map_is_labelled_for_the_sidecar(render: Render) -> None:
    """The dashboard ConfigMap carries the sidecar's label, the folder annotation, the chosen
    namespace, and a dashboard whose every query is scoped by the $namespace and $job variables."""
    rendered = render("monitoring-values.yaml")
    (config_map,) = [
        c for c in rendered.all("ConfigMap") if c["metadata"]["name"].endswith("-dashboard")
    ]
    metadata = config_map["metadata"]
    assert metadata["labels"]["grafana_dashboard"] == "1"
    assert metadata["annotations"] == {"grafana_folder": "Payments"}
    assert metadata["namespace"] == "monitoring"
    dashboard = dashboard_of(rendered)
    assert dashboard["uid"] == "paysera-token-broker"
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert set(variables) == {"datasource", "namespace", "job"}
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == "${datasource}"
            for selector in re.findall(r"\{([^}]*)\}", target["expr"]):
                assert 'namespace=~"$namespace"' in selector and 'job=~"$job"' in selector
    titles = " ".join(p["title"] for p in dashboard["panels"]).lower()
    for topic in ("upstream token requests", "budget used", "store", "fleet", "expiry"):
        assert topic in titles
    default_namespace = dashboard_of(render(**{"grafanaDashboard.enabled": True}))
    assert default_namespace == dashboard


@pytest.mark.parametrize("store_config", ["redis"], indirect=True)
async def test_rule_and_dashboard_metrics_exist_in_a_real_scrape(
    render: Render, broker: BrokerFactory, emulator: Emulator
) -> None:
    """Every metric the alerts and the dashboard query is one a real broker's /metrics exposes;
    the alerts' metrics carry samples after a short run (a fetch, a rejection, budget use)."""
    async with broker(clients=rejected_payouts(emulator)) as http:
        assert_token(await http.get("/token", headers=orders()))
        assert_error(
            await http.get("/token?client=payouts", headers=billing()),
            502,
            "upstream_invalid_client",
        )
        assert (await http.post("/budget/acquire", headers=orders())).status_code == 200
        text = (await http.get("/metrics")).text
    declared: set[str] = set()
    for kind_line in re.findall(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        name, kind = kind_line
        declared.add(name)
        if kind in ("histogram", "summary"):
            declared |= {f"{name}_sum", f"{name}_count", f"{name}_bucket"}
    sampled = {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }

    rendered = render("production-values.yaml")
    in_rules = set().union(*(metric_names(rule["expr"]) for rule in rules_of(rendered)))
    assert len(in_rules) >= 6
    assert in_rules <= sampled, f"alert metrics without samples: {sorted(in_rules - sampled)}"
    in_dashboard = set().union(
        *(metric_names(q) for q in dashboard_queries(dashboard_of(rendered)))
    )
    assert len(in_dashboard) >= 12
    assert in_dashboard <= declared, (
        f"dashboard metrics not exposed: {sorted(in_dashboard - declared)}"
    )


def _test_pod(rendered: Rendered) -> Obj:
    (pod,) = rendered.all("Pod")
    return pod


@pytest.mark.parametrize(
    ("values", "port"), [(None, 8080), ("mtls-values.yaml", 9090), ("production-values.yaml", 9090)]
)
def test_helm_test_pod_fetches_readiness_through_the_service(
    render: Render, values: str | None, port: int
) -> None:
    """The `helm test` hook runs the broker's image to GET /health/ready from the Service over
    plain HTTP (the ops port when TLS is on), and fails on anything but 200 (urllib raises)."""
    rendered = render(values) if values else render()
    pod = _test_pod(rendered)
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    assert "hook-succeeded" in pod["metadata"]["annotations"]["helm.sh/hook-delete-policy"]
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never"
    (container,) = spec["containers"]
    assert container["image"] == rendered.container["image"]
    command = container["command"]
    assert command[:2] == ["/opt/token-broker/bin/python", "-c"]
    assert "urllib.request.urlopen" in command[2]
    compile(command[2], "helm-test", "exec")  # the inline program is valid Python
    service = rendered.one("Service")
    assert command[3] == f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{port}/health/ready"
    assert port in {p["port"] for p in service["spec"]["ports"] if p["appProtocol"] == "http"}
    # The Service must never route callers to the test Pod.
    assert not _selector_matches(service["spec"]["selector"], pod["metadata"]["labels"])


@pytest.mark.parametrize("values", [None, *CI_VALUES], ids=lambda v: v.stem if v else "default")
def test_helm_test_pod_is_locked_down_like_the_broker(render: Render, values: Path | None) -> None:
    """The test Pod runs with the broker pod's security contexts, no service-account token and
    small resource limits."""
    rendered = render(values) if values else render()
    spec = _test_pod(rendered)["spec"]
    (container,) = spec["containers"]
    assert spec["securityContext"] == rendered.pod["securityContext"]
    assert container["securityContext"] == rendered.container["securityContext"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert spec["automountServiceAccountToken"] is False
    assert container["resources"]["limits"]["memory"]
    assert spec.get("imagePullSecrets") == rendered.pod.get("imagePullSecrets")


def test_network_policy_lets_the_helm_test_pod_reach_readiness(render: Render) -> None:
    """With a NetworkPolicy the test Pod (same namespace) may reach the health port only."""
    rendered = render("production-values.yaml")
    callers, health = rendered.one("NetworkPolicy")["spec"]["ingress"]
    pod_labels = _test_pod(rendered)["metadata"]["labels"]
    admitted = [
        peer
        for peer in health["from"]
        if _selector_matches(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels)
    ]
    assert admitted and admitted[0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": NAMESPACE
    }
    assert health["ports"] == [{"port": "ops", "protocol": "TCP"}]
    for peer in callers["from"]:
        assert not _selector_matches(peer.get("podSelector", {}).get("matchLabels", {}), pod_labels)
    off = render("production-values.yaml", **{"helmTest.enabled": False})
    assert len(off.one("NetworkPolicy")["spec"]["ingress"][1]["from"]) == 1


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ({"prometheusRule.severity": "page"}, "'/prometheusRule': additional properties"),
        ({"grafanaDashboard.label": "x"}, "'/grafanaDashboard': additional properties"),
        ({"helmTest.image": "busybox"}, "'/helmTest': additional properties"),
        ({"prometheusRule.budgetSaturationRatio": 1.5}, "'/prometheusRule/budgetSaturationRatio'"),
        # Helm merges maps, so the sidecar's label goes only when nulled.
        ({"grafanaDashboard.labels.grafana_dashboard": None}, "'/grafanaDashboard/labels'"),
    ],
    ids=["rule-typo", "dashboard-typo", "helm-test-typo", "ratio-above-one", "no-sidecar-label"],
)
def test_schema_refuses_unknown_or_bad_monitoring_values(
    render: Render, sets: dict[str, Any], message: str
) -> None:
    """The schema rejects misspelt monitoring keys and values the sidecar or rules cannot use."""
    with pytest.raises(RenderError, match=re.escape(message)):
        render(**sets)


def test_tracing_values_become_the_tracing_table(render: Render) -> None:
    """config.tracing renders [tracing] (absent by default, so tracing stays off)."""
    assert "tracing" not in render().config
    tracing = render("monitoring-values.yaml").config["tracing"]
    assert tracing == {
        "otlp_endpoint": "http://otel-collector.monitoring:4317",
        "sample_ratio": 0.25,
    }
    with pytest.raises(RenderError, match=re.escape("'/config/tracing'")):
        render(**{"config.tracing.endpoint": "http://c:4317"})
