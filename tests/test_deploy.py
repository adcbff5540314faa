"""deploy/: the Kubernetes manifests validate against the Kubernetes API schemas and agree with each other, with
`segany serve`'s flags and settings, and with the container image's Dockerfile (no cluster or Docker engine needed)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from segany.cli.main import build_parser
from segany.cli.serve import settings_from

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
K8S = DEPLOY / "k8s"
DOCKERFILE = DEPLOY / "container" / "Dockerfile"
KUBERNETES_VERSION = "1.30.0"  # the oldest version the manifests are checked against (grpc probes: GA in 1.27)


def _documents() -> list[dict]:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = []
    for name in kustomization["resources"]:
        docs += [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]
    return docs


def _one(kind: str, name: str) -> dict:
    (doc,) = [d for d in _documents() if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


def _container(deployment: str) -> dict:
    (container,) = _one("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def labels_of(deployment: str) -> dict:
    return _one("Deployment", deployment)["spec"]["template"]["metadata"]["labels"]


def test_kustomization_lists_every_manifest():
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"]
    assert sorted(listed) == sorted(p.name for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


def test_manifests_validate_against_the_kubernetes_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = _documents()
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "Service", "PodDisruptionBudget",
                                          "HorizontalPodAutoscaler", "NetworkPolicy"}
    for doc in docs:
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on unknown or mistyped fields
    broken = json.loads(json.dumps(_one("Deployment", "segany")))
    broken["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["prot"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):  # the check has teeth
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_the_service_pod_runs_valid_segany_serve_settings():
    container = _container("segany")
    env = _one("ConfigMap", "segany-settings")["data"]
    assert all(key.startswith("SEGANY_") for key in env)
    args = build_parser().parse_args(["serve", *container["args"]])
    settings = settings_from(args, env)  # every variable parses and the whole validates
    from segany.service.settings import ENV_PREFIX, Settings

    fields = {ENV_PREFIX + name.upper() for name in Settings.__dataclass_fields__}
    assert set(env) <= fields, set(env) - fields  # a misspelt variable would be silently ignored
    assert settings.host == "0.0.0.0" and settings.redis_url and settings.torch_threads == 2
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": settings.port, "metrics": settings.metrics_port}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == settings.port  # grpc.health.v1: NOT_SERVING until warm
    pod = _one("Deployment", "segany")["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > settings.grace_seconds  # in-flight calls finish before SIGKILL
    annotations = _one("Deployment", "segany")["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == settings.metrics_port
    assert int(container["resources"]["requests"]["cpu"]) == settings.torch_threads
    from segany.cache import parse_bytes

    # the bounded buffers fit the memory limit with room for the process itself: `segany serve` with the shipped
    # model and an empty cache measured 860 MiB RSS here (920 MiB after one 1200x1800 image)
    bounded = settings.cache_bytes + settings.encode_queue_bytes + 2 * settings.max_receive_message_bytes
    assert bounded + (920 << 20) <= parse_bytes(container["resources"]["limits"]["memory"].replace("Gi", "GiB"))


def test_services_select_their_pods_and_the_redis_url_names_the_redis_service():
    for name in ("segany", "segany-redis"):
        service, deployment = _one("Service", name), _one("Deployment", name)
        labels = labels_of(name)
        assert service["spec"]["selector"].items() <= labels.items()
        assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
        named_ports = {p["name"] for p in deployment["spec"]["template"]["spec"]["containers"][0]["ports"]}
        assert {p["targetPort"] for p in service["spec"]["ports"]} <= named_ports
    url = urlparse(_one("ConfigMap", "segany-settings")["data"]["SEGANY_REDIS_URL"])
    (redis_port,) = _one("Service", "segany-redis")["spec"]["ports"]
    assert (url.scheme, url.hostname, url.port) == ("redis", "segany-redis", redis_port["port"])
    policy = _one("NetworkPolicy", "segany-redis")["spec"]  # only segany pods reach Redis, on its port
    assert policy["podSelector"]["matchLabels"].items() <= labels_of("segany-redis").items()
    (rule,) = policy["ingress"]
    assert [p["podSelector"]["matchLabels"].items() <= labels_of("segany").items() for p in rule["from"]] == [True]
    assert [p["port"] for p in rule["ports"]] == [redis_port["port"]]
    for kind in ("PodDisruptionBudget", "HorizontalPodAutoscaler"):
        target = _one(kind, "segany")["spec"]
        if kind == "PodDisruptionBudget":
            assert target["selector"]["matchLabels"].items() <= labels_of("segany").items()
        else:
            assert target["scaleTargetRef"]["name"] == "segany"


def _dockerfile() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(instruction, arguments) of every step and of the final stage's steps, continuation lines joined."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    steps = [tuple(line.split(None, 1)) for line in lines]
    last_from = max(i for i, (op, _) in enumerate(steps) if op == "FROM")
    return steps, steps[last_from:]


def test_the_image_runs_what_the_pod_expects():
    all_steps, final = _dockerfile()
    ops = dict(final)
    command = json.loads(ops["ENTRYPOINT"]) + json.loads(ops["CMD"])
    assert command[:2] == ["segany", "serve"]
    settings = settings_from(build_parser().parse_args(command[1:]), {})
    container = _container("segany")
    assert command[2:] == container["args"]  # the pod's args are the image's defaults, spelt out
    exposed = {int(p) for p in ops["EXPOSE"].split()}
    assert exposed == {settings.port, settings.metrics_port} == {p["containerPort"] for p in container["ports"]}
    pod = _one("Deployment", "segany")["spec"]["template"]["spec"]
    assert int(ops["USER"]) == pod["securityContext"]["runAsUser"]  # non-root, the same uid
    env = dict(item.split("=", 1) for item in shlex.split(ops["ENV"]))
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert env["SEGANY_HOME"] in mounts and "/tmp" in mounts  # writable places under a read-only root filesystem
    for op, args in all_steps:  # everything copied from the context exists and is let through the ignore file
        if op == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (DEPLOY.parent / source).exists(), source
    ignore = [line for line in (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    assert ignore[0] == "*" and {"!pyproject.toml", "!README.md", "!segany/"} <= set(ignore)


@pytest.mark.slow
def test_the_wheel_carries_the_model_the_protocol_and_the_demo(tmp_path):
    """The image installs segany from a wheel, not from the checkout: everything `segany serve` reads at run time
    must be package data."""
    import subprocess
    import sys
    import zipfile

    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(DEPLOY.parent)], check=True, capture_output=True)
    (wheel,) = tmp_path.glob("segany-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for needed in ("segany/weights/segany-lite.pt", "segany/service/proto/segany_pb2.py",
                   "segany/service/proto/segany_pb2_grpc.py", "segany/service/static/index.html",
                   "segany/service/static/demo.js", "segany/cli/main.py"):
        assert needed in names, needed
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "segany = segany.cli.main:main" in zipfile.ZipFile(wheel).read(entry_points).decode()
