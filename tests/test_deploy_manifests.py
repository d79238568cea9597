"""docker-compose.yml and deploy/k8s: every command and flag exists in `meshserve`, ports agree,
every service has a health check (and the compose one really asks grpc.health.v1)."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from gateway.tools.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
K8S = ROOT / "deploy" / "k8s"
COMPONENTS = {"gateway", "lm", "encoder-image", "encoder-video", "encoder-audio"}
DNS_TARGET = re.compile(r"^dns:///([a-z0-9-]+):(\d+)$")
COMPOSE_VARIABLE = re.compile(r"\$\{(\w+)(?::?-([^}]*))?\}")


# ------------------------------------------------------------------------------ helpers


def sub_parser(command: str) -> argparse.ArgumentParser:
    subparsers = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    return subparsers.choices[command]


def parse_command(argv: list[str]) -> argparse.Namespace:
    """Parses `meshserve ARGV` exactly as the container would; fails on any unknown flag."""
    command, *rest = argv
    parser = sub_parser(command)
    help_text = parser.format_help()
    for token in rest:
        if token.startswith("--"):
            flag = token.split("=", 1)[0]
            assert re.search(rf"{re.escape(flag)}\b", help_text), f"{command} has no {flag}"
    try:
        args, unknown = parser.parse_known_args(rest)
    except SystemExit as exc:  # argparse already printed why
        raise AssertionError(f"`meshserve {' '.join(argv)}` does not parse") from exc
    assert unknown == [], f"`meshserve {command}` does not know {unknown}"
    return args


def expand_compose(value: Any) -> Any:
    """${VAR:-default} -> default (what compose runs with an empty environment)."""
    if isinstance(value, str):
        return COMPOSE_VARIABLE.sub(lambda m: m[2] if m[2] is not None else "", value)
    if isinstance(value, list):
        return [expand_compose(v) for v in value]
    if isinstance(value, dict):
        return {k: expand_compose(v) for k, v in value.items()}
    return value


def dns_targets(args: argparse.Namespace) -> list[tuple[str, str, int]]:
    """(modality or "lm", host name, port) for every backend the gateway is pointed at."""
    targets = [("lm", *_split_dns(args.lm))]
    for value in args.encoder:
        modality, _, address = value.partition("=")
        targets.append((modality, *_split_dns(address)))
    return targets


def _split_dns(target: str) -> tuple[str, int]:
    match = DNS_TARGET.match(target)
    assert match, f"{target!r} is not a dns:///NAME:PORT target (replicas need one)"
    return match[1], int(match[2])


# ------------------------------------------------------------------------------ compose


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return expand_compose(yaml.safe_load(COMPOSE.read_text()))


def compose_services(compose: dict[str, Any]) -> dict[str, tuple[dict, argparse.Namespace]]:
    return {
        name: (service, parse_command([str(t) for t in service["command"]]))
        for name, service in compose["services"].items()
    }


def names_of(name: str, service: dict[str, Any]) -> set[str]:
    aliases = service.get("networks", {}).get("default", {}) or {}
    return {name, *aliases.get("aliases", [])}


def test_compose_has_every_component_built_from_one_dockerfile(compose: dict) -> None:
    services = compose["services"]
    assert set(services) >= COMPONENTS
    for name, service in services.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile", name
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        assert "models:/models" in service["volumes"] and service["environment"]["MODEL"], name
    assert "models" in compose["volumes"]


def test_compose_commands_exist_and_ports_match(compose: dict) -> None:
    for name, (service, args) in compose_services(compose).items():
        assert args.host == "0.0.0.0", f"{name} must listen beyond the container's loopback"
        assert [int(p) for p in service["expose"]] == [args.port, args.metrics_port], name
        assert service["labels"]["prometheus.io/scrape"] == "true", name
        assert service["labels"]["prometheus.io/port"] == str(args.metrics_port), name
        test = " ".join(service["healthcheck"]["test"])
        assert f"127.0.0.1:{args.port}" in test and "health_status" in test, name
        if service["command"][0] == "encoder":
            assert name.removeprefix("encoder-") == args.modality, name
    gateway_service, gateway = compose_services(compose)["gateway"]
    published = gateway_service["ports"][0].rsplit(":", 1)[1]
    assert int(published) == gateway.port


def test_compose_gateway_reaches_every_replica_by_dns_name(compose: dict) -> None:
    services = compose_services(compose)
    _, gateway = services["gateway"]
    for modality, host, port in dns_targets(gateway):
        owners = [
            (name, args)
            for name, (service, args) in services.items()
            if host in names_of(name, service)
        ]
        assert owners, f"no compose service answers to {host}"
        for name, args in owners:
            assert args.port == port, f"{name} listens on {args.port}, the gateway dials {port}"
            assert modality == "lm" or args.modality == modality, name


def test_compose_gateway_reads_its_api_key_from_a_secret(compose: dict) -> None:
    service, gateway = compose_services(compose)["gateway"]
    (secret,) = service["secrets"]
    assert gateway.api_key is None, "a key in the command line shows in process lists"
    assert gateway.api_key_file == f"/run/secrets/{secret}"
    assert compose["secrets"][secret] == {"environment": "MESHSERVE_API_KEY"}
    backends = [name for name in compose["services"] if name != "gateway"]
    assert all("secrets" not in compose["services"][name] for name in backends)


def test_compose_cuda_profile_reserves_a_gpu_for_the_lm(compose: dict) -> None:
    services = compose_services(compose)
    cuda = [
        (name, service, args)
        for name, (service, args) in services.items()
        if "cuda" in service.get("profiles", [])
    ]
    assert cuda, "no service in the cuda profile"
    for name, service, args in cuda:
        assert service["command"][0] == "lm" and args.device == "cuda", name
        assert service["build"]["args"]["VARIANT"] == "cuda"
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert any("gpu" in d["capabilities"] and d["driver"] == "nvidia" for d in devices)
        assert "lm" in names_of(name, service)  # the gateway's dns:///lm finds it
    assert "profiles" not in services["lm"][0], "plain `docker compose up` needs an LM"


def test_dockerfile_selects_cpu_or_cuda_by_build_arg() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^ARG VARIANT=cpu$", text, re.M)
    assert "AS base-cpu" in text and "AS base-cuda" in text and "FROM base-${VARIANT}" in text
    assert 'ENTRYPOINT ["meshserve"]' in text
    for folder in ("protos", "gateway", "encoder_service", "lm_service", "kernels"):
        assert f"COPY {folder} ./{folder}" in text


@pytest.fixture
def health_server() -> Iterator[tuple[int, health.HealthServicer]]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield port, servicer
    finally:
        server.stop(0).wait()


def test_compose_healthcheck_asks_grpc_health(compose: dict, health_server: tuple) -> None:
    port, servicer = health_server
    snippets = {
        re.sub(r"127\.0\.0\.1:\d+", "{address}", service["healthcheck"]["test"][-1])
        for service in compose["services"].values()
    }
    assert len(snippets) == 1, snippets  # one check, differing only in the port
    check = snippets.pop().replace("{address}", f"127.0.0.1:{port}")
    assert compose["services"]["lm"]["healthcheck"]["test"][:3] == ["CMD", "python", "-c"]

    def run() -> int:
        return subprocess.run([sys.executable, "-c", check], cwd=ROOT, timeout=60).returncode

    servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    assert run() == 1
    servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    assert run() == 0


# --------------------------------------------------------------------------- kubernetes


@pytest.fixture(scope="module")
def k8s() -> list[dict[str, Any]]:
    documents = []
    for path in sorted(K8S.glob("*.yaml")):
        documents += [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    return documents


def of_kind(documents: list[dict], kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for doc in documents if doc["kind"] == kind}


def container_args(deployment: dict) -> tuple[dict, argparse.Namespace]:
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    argv = [str(a).replace("$(MODEL)", "Qwen/Qwen2-VL-2B-Instruct") for a in container["args"]]
    return container, parse_command(argv)


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    manifests = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == manifests


def test_k8s_deployments_have_commands_probes_and_resources(k8s: list[dict]) -> None:
    deployments = of_kind(k8s, "Deployment")
    assert set(deployments) == COMPONENTS
    for name, deployment in deployments.items():
        container, args = container_args(deployment)
        assert args.host == "0.0.0.0", name
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"grpc": args.port, "metrics": args.metrics_port}, name
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true", name
        assert annotations["prometheus.io/port"] == str(args.metrics_port), name
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert container[probe]["grpc"]["port"] == args.port, f"{name} {probe}"
        assert container["resources"]["requests"], name
        env = {e["name"] for e in container["env"]}
        assert "MODEL" in env and any(a == "$(MODEL)" for a in container["args"]), name
        pod = deployment["spec"]["template"]
        assert (
            deployment["spec"]["selector"]["matchLabels"].items()
            <= pod["metadata"]["labels"].items()
        )
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        assert grace > args.grace_seconds, f"{name}: SIGKILL would cut the drain short"


HEALTH_NAMES = {
    "gateway": "meshserve.v1.Gateway",
    "lm": "meshserve.v1.LanguageModel",
    "encoder-image": "meshserve.v1.Encoder",
    "encoder-video": "meshserve.v1.Encoder",
    "encoder-audio": "meshserve.v1.Encoder",
}


def test_k8s_readiness_asks_the_service_and_liveness_only_the_process(k8s: list[dict]) -> None:
    """Ready: the service's own health name (the gateway's is NOT_SERVING while its backends
    are down). Alive: LIVENESS_SERVICE, so a gateway waiting for its LM is not restarted."""
    from protos.meshserve.v1 import encoder_pb2, gateway_pb2, lm_pb2
    from protos.server import LIVENESS_SERVICE

    served = {
        f"meshserve.v1.{name}"
        for module, name in (
            (gateway_pb2, "Gateway"),
            (lm_pb2, "LanguageModel"),
            (encoder_pb2, "Encoder"),
        )
        if name in module.DESCRIPTOR.services_by_name
    }
    for name, deployment in of_kind(k8s, "Deployment").items():
        container, _ = container_args(deployment)
        assert container["readinessProbe"]["grpc"]["service"] == HEALTH_NAMES[name] in served
        assert container["livenessProbe"]["grpc"]["service"] == LIVENESS_SERVICE, name
        started = LIVENESS_SERVICE if name == "gateway" else HEALTH_NAMES[name]
        assert container["startupProbe"]["grpc"]["service"] == started, name


def test_k8s_gateway_takes_its_api_key_from_a_secret(k8s: list[dict]) -> None:
    deployments = of_kind(k8s, "Deployment")
    container, args = container_args(deployments["gateway"])
    assert args.api_key is None and args.api_key_file is None
    env = {e["name"]: e for e in container["env"]}
    assert env["MESHSERVE_API_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "meshserve-api-key"
    assert not of_kind(k8s, "Secret"), "the key is created by the operator, never committed"
    for name in set(deployments) - {"gateway"}:
        backend, _ = container_args(deployments[name])
        assert "MESHSERVE_API_KEY" not in {e["name"] for e in backend["env"]}, name


def test_k8s_lm_requests_a_gpu(k8s: list[dict]) -> None:
    container, args = container_args(of_kind(k8s, "Deployment")["lm"])
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert args.device == "cuda"


def test_k8s_headless_services_match_deployments(k8s: list[dict]) -> None:
    deployments = of_kind(k8s, "Deployment")
    services = of_kind(k8s, "Service")
    for name, deployment in deployments.items():
        service = services[name]
        assert service["spec"].get("clusterIP") == "None", f"{name} needs a headless Service"
        labels = deployment["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name
        _, args = container_args(deployment)
        (port,) = service["spec"]["ports"]
        assert port["port"] == args.port and port["targetPort"] == "grpc", name


def test_k8s_gateway_dials_headless_services_on_their_ports(k8s: list[dict]) -> None:
    deployments = of_kind(k8s, "Deployment")
    services = of_kind(k8s, "Service")
    _, gateway = container_args(deployments["gateway"])
    modalities = set()
    for modality, host, port in dns_targets(gateway):
        assert host in services and services[host]["spec"]["clusterIP"] == "None", host
        _, backend = container_args(deployments[host])
        assert backend.port == port, f"{host} listens on {backend.port}, gateway dials {port}"
        assert modality == "lm" or backend.modality == modality
        modalities.add(modality)
    assert modalities == {"lm", "image", "video", "audio"}


def test_k8s_hpa_scales_an_encoder(k8s: list[dict]) -> None:
    hpas = of_kind(k8s, "HorizontalPodAutoscaler")
    assert hpas
    deployments = of_kind(k8s, "Deployment")
    for hpa in hpas.values():
        target = hpa["spec"]["scaleTargetRef"]
        assert target["kind"] == "Deployment" and target["name"] in deployments
        assert target["name"].startswith("encoder-")
        assert 1 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
        assert hpa["spec"]["metrics"]


def test_k8s_model_config_and_volume(k8s: list[dict]) -> None:
    (config,) = of_kind(k8s, "ConfigMap").values()
    assert config["data"]["MODEL"]
    claims = of_kind(k8s, "PersistentVolumeClaim")
    for name, deployment in of_kind(k8s, "Deployment").items():
        volumes = deployment["spec"]["template"]["spec"]["volumes"]
        assert any(v["persistentVolumeClaim"]["claimName"] in claims for v in volumes), name


def test_deploy_readme_explains_independent_scaling() -> None:
    text = (ROOT / "deploy" / "README.md").read_text()
    for phrase in ("--scale encoder-image", "kubectl scale deployment/lm", "headless", "dns:///"):
        assert phrase in text
