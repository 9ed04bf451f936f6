"""The deployment files agree with each other and with what the server really exports.

Parses ``docker-compose.yml`` (+ the CPU override), ``docker/prometheus/prometheus.yml`` and its
rules, the Grafana provisioning and ``docker/grafana/dashboards/maskrt.json``, the ``Dockerfile``
and ``.dockerignore``, and checks service names, ports, the scrape target, mount paths, the data
source uid, and that every metric the dashboard and the rules use is one that
``maskrt.server.metrics`` registers. Also runs ``docker/entrypoint.sh`` with stand-ins for
``maskrt`` and the GPU probe (the engine-cache logic), and ``docker/healthcheck.py`` against a
local HTTP server.

Docker itself cannot run here: ``test_compose_config_with_docker`` runs ``docker compose config``
where a Compose v2 CLI exists and is skipped, with the reason, elsewhere.

``tests/test_prometheus.py`` imports the parsing helpers from this module.
"""

from __future__ import annotations

import copy
import functools
import http.server
import importlib
import inspect
import json
import os
import re
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from tools import program, without_root_privileges

ROOT = Path(__file__).resolve().parents[1]
DOCKER = ROOT / "docker"
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_CPU = ROOT / "docker-compose.cpu.yml"
COMPOSE_REPOSITORY = ROOT / "docker-compose.repository.yml"
PROMETHEUS_YML = DOCKER / "prometheus" / "prometheus.yml"
RULES_DIR = DOCKER / "prometheus" / "rules"
RULES_TESTS = DOCKER / "prometheus" / "tests"
DATASOURCES_DIR = DOCKER / "grafana" / "provisioning" / "datasources"
DASHBOARD_PROVIDERS_DIR = DOCKER / "grafana" / "provisioning" / "dashboards"
DASHBOARDS_DIR = DOCKER / "grafana" / "dashboards"
DASHBOARD = DASHBOARDS_DIR / "maskrt.json"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENTRYPOINT = DOCKER / "entrypoint.sh"
HEALTHCHECK = DOCKER / "healthcheck.py"

# docs/architecture.md, "Metrics": what the dashboard must show. Only gpu memory is GPU-only.
DESIGN_METRICS = {
    "maskrt_request_duration_seconds",
    "maskrt_queue_wait_seconds",
    "maskrt_preprocess_duration_seconds",
    "maskrt_inference_duration_seconds",
    "maskrt_postprocess_duration_seconds",
    "maskrt_batch_size",
    "maskrt_requests_total",
    "maskrt_images_total",
    "maskrt_detections_total",
    "maskrt_queue_depth",
    "maskrt_inflight_requests",
    "maskrt_model_info",
    "maskrt_gpu_memory_used_bytes",
}
GPU_ONLY_METRICS = {"maskrt_gpu_memory_used_bytes"}
# Series that Prometheus itself makes for every target.
PROMETHEUS_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}
GRAFANA_BUILTIN_VARS = {"__rate_interval", "__interval", "__range", "__interval_ms", "__range_s"}


# ---------------------------------------------------------------------------------------------
# Parsing helpers (shared with test_prometheus.py)


class ComposeLoader(yaml.SafeLoader):
    """YAML loader that knows Compose's merge tags (``!reset``, ``!override``)."""


class Reset:
    def __repr__(self) -> str:
        return "!reset"


class Override:
    def __init__(self, value):
        self.value = value


ComposeLoader.add_constructor("!reset", lambda loader, node: Reset())
ComposeLoader.add_constructor(
    "!override",
    lambda loader, node: Override(
        loader.construct_scalar(node)
        if isinstance(node, yaml.ScalarNode)
        else loader.construct_object(node, deep=True)
    ),
)


def load_compose(path: Path = COMPOSE) -> dict:
    return yaml.load(path.read_text(), Loader=ComposeLoader)


def merge_compose(base, override):
    """Compose's merge of an override file onto a base: mappings merge key by key, ``!reset``
    removes the key, ``!override`` replaces the value, sequences append what is new."""
    if isinstance(override, Override):
        return copy.deepcopy(override.value)
    if isinstance(base, dict) and isinstance(override, dict):
        out = copy.deepcopy(base)
        for key, value in override.items():
            if isinstance(value, Reset):
                out.pop(key, None)
            else:
                out[key] = merge_compose(base.get(key), value)
        return out
    if isinstance(base, list) and isinstance(override, list):
        return copy.deepcopy(base) + [x for x in copy.deepcopy(override) if x not in base]
    if isinstance(override, dict):
        return merge_compose({}, override)
    return copy.deepcopy(override)


def merged_compose(*paths: Path) -> dict:
    """The compose files merged in order, as ``docker compose -f A -f B ...`` merges them."""
    return functools.reduce(merge_compose, map(load_compose, paths))


def load_yaml(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def load_dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def iter_panels(panels: list[dict]):
    for panel in panels:
        yield panel
        yield from iter_panels(panel.get("panels", []))


def dashboard_exprs(dashboard: dict | None = None) -> list[tuple[str, str]]:
    """``(where, expr)`` of every panel target."""
    dashboard = dashboard or load_dashboard()
    out = []
    for panel in iter_panels(dashboard["panels"]):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel {panel['title']!r} target {target['refId']}", target["expr"]))
    return out


def dashboard_variable_queries(dashboard: dict | None = None) -> list[tuple[str, str]]:
    dashboard = dashboard or load_dashboard()
    out = []
    for var in dashboard["templating"]["list"]:
        if var["type"] == "query":
            query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            out.append((var["name"], query))
    return out


LABEL_VALUES = re.compile(
    r"^\s*label_values\(\s*(?P<selector>.+?)\s*,\s*(?P<label>[a-zA-Z_]\w*)\s*\)\s*$"
)


def rule_groups() -> list[tuple[Path, dict]]:
    files = sorted(RULES_DIR.glob("*.yml")) + sorted(RULES_DIR.glob("*.yaml"))
    return [(path, group) for path in files for group in load_yaml(path)["groups"]]


def rules() -> list[dict]:
    return [rule for _, group in rule_groups() for rule in group["rules"]]


def rule_exprs() -> list[tuple[str, str]]:
    return [(rule.get("record") or f"alert {rule['alert']}", rule["expr"]) for rule in rules()]


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)")


def metric_names(expr: str) -> set[str]:
    """Names of the series an expression selects: ``maskrt_*`` and Prometheus' own (``up``)
    metrics and recording-rule names (``level:metric:ops``). Grafana's ``label_values(sel, label)``
    counts as its selector."""
    m = LABEL_VALUES.match(expr)
    if m:
        expr = m.group("selector")
    bare = _MATCHERS.sub("{}", _STRING.sub('""', expr))
    names = set()
    for name in _IDENT.findall(bare):
        if name.startswith("maskrt") or ":" in name or name in PROMETHEUS_SERIES:
            names.add(name)
    return names


def template_vars(expr: str) -> set[str]:
    return set(re.findall(r"\$\{?(\w+)", expr))


def sample_names(family: str, kind: str) -> set[str]:
    """The sample names a prometheus_client metric family of this type exposes."""
    if kind == "histogram":
        return {f"{family}_bucket", f"{family}_sum", f"{family}_count"}
    if kind == "summary":
        return {family, f"{family}_sum", f"{family}_count"}
    if kind == "counter":
        return {f"{family}_total"}
    if kind == "info":
        return {f"{family}_info"}
    return {family}


def server_metrics() -> dict[str, dict]:
    """What ``maskrt.server.metrics`` really registers: ``{sample name: {"family", "type",
    "labels" (None where unknown)}}``.

    Found, in this order: prometheus_client metric objects among the module's globals (name, type
    and label names); metrics registered on a ``CollectorRegistry`` among its globals; metrics a
    class or factory of the module registers on a fresh registry passed as ``registry=``; the
    ``maskrt_*`` metrics of prometheus_client's default registry."""
    from prometheus_client import REGISTRY, CollectorRegistry
    from prometheus_client.metrics import MetricWrapperBase

    module = importlib.import_module("maskrt.server.metrics")
    found: dict[str, dict] = {}

    def add(family: str, kind: str, labels) -> None:
        for sample in sample_names(family, kind):
            found[sample] = {"family": family, "type": kind, "labels": labels}

    def add_wrapper(metric) -> None:
        add(metric._name, metric._type, tuple(metric._labelnames))

    def add_registry(registry) -> None:
        for family in registry.collect():
            if family.name.startswith("maskrt"):
                known = next((v for v in found.values() if v["family"] == family.name), None)
                if known is None:
                    add(family.name, family.type, None)

    for value in vars(module).values():
        if isinstance(value, MetricWrapperBase):
            add_wrapper(value)
        elif (
            isinstance(value, (list, tuple))
            and value
            and all(isinstance(v, MetricWrapperBase) for v in value)
        ):
            for v in value:
                add_wrapper(v)
    registries = [v for v in vars(module).values() if isinstance(v, CollectorRegistry)]
    for registry in registries:
        add_registry(registry)
    if not found:
        for obj in vars(module).values():
            if getattr(obj, "__module__", None) != module.__name__ or not callable(obj):
                continue
            try:
                params = inspect.signature(obj).parameters
            except (TypeError, ValueError):
                continue
            if "registry" not in params:
                continue
            required = [
                p
                for p in params.values()
                if p.default is inspect.Parameter.empty
                and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                and p.name != "registry"
            ]
            if required:
                continue
            registry = CollectorRegistry()
            made = obj(registry=registry)
            for value in vars(made).values() if hasattr(made, "__dict__") else []:
                if isinstance(value, MetricWrapperBase):
                    add_wrapper(value)
            add_registry(registry)
    if not found:
        add_registry(REGISTRY)
    return found


# ---------------------------------------------------------------------------------------------
# docker-compose.yml, prometheus.yml, Grafana provisioning


def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _default(value: str) -> str:
    """``${VAR:-default}`` -> ``default`` (what Compose uses when VAR is unset)."""
    return re.sub(r"\$\{\w+:-([^}]*)\}", r"\1", value)


def _container_ports(service: dict) -> set[int]:
    ports = set()
    for entry in service.get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(_default(str(entry)).rsplit(":", 1)[-1].split("/")[0]))
    return ports


def _mounts(service: dict) -> dict[str, str]:
    """container path -> source (bind path relative to the repo, or volume name)."""
    out = {}
    for entry in service.get("volumes", []):
        if isinstance(entry, dict):
            out[entry["target"]] = entry["source"]
        else:
            parts = entry.split(":")
            out[parts[1]] = parts[0]
    return out


def _flag(service: dict, name: str) -> str | None:
    for arg in service.get("command", []):
        if arg.startswith(f"--{name}="):
            return arg.split("=", 1)[1]
    return None


def _host_path(source: str) -> Path:
    assert source.startswith("./"), f"bind mount source {source!r} should be relative to the repo"
    return ROOT / source[2:]


def test_compose_services_ports_and_scrape_target():
    compose = load_compose()
    services = compose["services"]
    assert {"maskrt", "prometheus", "grafana"} <= set(services)
    maskrt, prom, grafana = services["maskrt"], services["prometheus"], services["grafana"]

    port = int(_env(maskrt)["MASKRT_PORT"])
    assert port in _container_ports(maskrt), (
        "the server's MASKRT_PORT must be the published container port"
    )
    assert int(_env(maskrt)["MASKRT_GRPC_PORT"]) in _container_ports(maskrt), (
        "the server's MASKRT_GRPC_PORT must be a published container port"
    )
    assert _env(maskrt)["MASKRT_HOST"] == "0.0.0.0", (
        "in a container the server listens on all interfaces"
    )

    config = load_yaml(PROMETHEUS_YML)
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert "maskrt" in jobs
    job = jobs["maskrt"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = [t for sc in job["static_configs"] for t in sc["targets"]]
    metrics_port = int(_env(maskrt).get("MASKRT_METRICS_PORT", port))
    assert targets == [f"maskrt:{metrics_port}"], (
        "Prometheus scrapes the compose service `maskrt` on MASKRT_METRICS_PORT (else MASKRT_PORT)"
    )
    if metrics_port != port:
        assert metrics_port not in _container_ports(maskrt), "the metrics port stays internal"
    assert "maskrt" in services

    # Prometheus' config and rules are mounted where its command line and rule_files look.
    mounts = _mounts(prom)
    config_file = _flag(prom, "config.file")
    assert config_file in mounts and _host_path(mounts[config_file]) == PROMETHEUS_YML
    for pattern in config["rule_files"]:
        rules_dir = str(Path(pattern).parent)
        assert rules_dir in mounts, f"rule_files {pattern!r}: {rules_dir} is not mounted"
        assert _host_path(mounts[rules_dir]) == RULES_DIR
        assert list(RULES_DIR.glob(Path(pattern).name)), f"no rule file matches {pattern!r}"
    tsdb = _flag(prom, "storage.tsdb.path")
    assert mounts.get(tsdb) in compose["volumes"], "Prometheus data must be on a named volume"
    assert 9090 in _container_ports(prom)

    # The server's cache (ONNX exports, engines) is a named volume at MASKRT_CACHE_DIR.
    cache = _env(maskrt)["MASKRT_CACHE_DIR"]
    assert _mounts(maskrt).get(cache) in compose["volumes"]

    # Grafana's provisioning and dashboards.
    gmounts = _mounts(grafana)
    assert _host_path(gmounts["/etc/grafana/provisioning"]) == DOCKER / "grafana" / "provisioning"
    providers = [
        p for f in sorted(DASHBOARD_PROVIDERS_DIR.glob("*.yml")) for p in load_yaml(f)["providers"]
    ]
    assert providers
    for provider in providers:
        path = provider["options"]["path"]
        assert path in gmounts and _host_path(gmounts[path]) == DASHBOARDS_DIR
    home = _env(grafana)["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    home_dir, home_file = home.rsplit("/", 1)
    assert _host_path(gmounts[home_dir]) / home_file == DASHBOARD
    assert 3000 in _container_ports(grafana)


def test_compose_datasource_points_at_prometheus_service():
    compose = load_compose()
    sources = [
        s for f in sorted(DATASOURCES_DIR.glob("*.yml")) for s in load_yaml(f)["datasources"]
    ]
    prom = [s for s in sources if s["type"] == "prometheus"]
    assert len(prom) == 1
    url = prom[0]["url"]
    m = re.fullmatch(r"http://([\w-]+):(\d+)/?", url)
    assert m, url
    assert m.group(1) in compose["services"] and m.group(1) == "prometheus"
    assert int(m.group(2)) in _container_ports(compose["services"]["prometheus"])
    # $__rate_interval needs the real scrape interval of the maskrt job.
    job = next(j for j in load_yaml(PROMETHEUS_YML)["scrape_configs"] if j["job_name"] == "maskrt")
    assert prom[0]["jsonData"]["timeInterval"] == job["scrape_interval"]


def test_compose_healthchecks_dependencies_gpu_and_images():
    compose = load_compose()
    services = compose["services"]
    for name, service in services.items():
        assert service.get("healthcheck", {}).get("test"), f"service {name} has no healthcheck"
        if "image" in service and "build" not in service:
            image = service["image"]
            assert ":" in image and not image.endswith(":latest"), (
                f"{name}: pin the image tag ({image})"
            )
    assert services["maskrt"]["healthcheck"]["test"] == ["CMD", "maskrt-healthcheck"]
    assert services["grafana"]["depends_on"]["prometheus"]["condition"] == "service_healthy"
    condition = services["prometheus"]["depends_on"]["maskrt"]["condition"]
    assert condition in ("service_started", "service_healthy")

    devices = services["maskrt"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert services["maskrt"]["build"]["target"] == "gpu"
    # the GPU start builds an engine: its start period must allow for that
    assert services["maskrt"]["healthcheck"]["start_period"] in ("30m", "20m", "15m")


def test_cpu_override_drops_the_gpu():
    merged = merged_compose(COMPOSE, COMPOSE_CPU)
    maskrt = merged["services"]["maskrt"]
    assert maskrt["build"]["target"] == "cpu"
    assert maskrt["image"] == "maskrt:cpu"
    assert not maskrt["deploy"]["resources"]["reservations"].get("devices")
    env = _env(maskrt)
    assert env["MASKRT_BACKEND"] == "onnxruntime" and env["MASKRT_DEVICE"] == "cpu"
    # everything the agreement checks above rely on is unchanged
    assert env["MASKRT_PORT"] == _env(load_compose()["services"]["maskrt"])["MASKRT_PORT"]
    assert set(merged["services"]) == set(load_compose()["services"])
    assert maskrt["healthcheck"]["test"] == ["CMD", "maskrt-healthcheck"]


def test_compose_config_with_docker():
    """``docker compose config`` (Compose v2, no daemon needed) on both variants."""
    docker = shutil.which("docker")
    if docker is None:
        pytest.skip("no docker CLI here")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip("the docker CLI here has no Compose v2 plugin (`docker compose version` fails)")
    repository = ["docker-compose.repository.yml"]
    for files in (
        ["docker-compose.yml"],
        ["docker-compose.yml", "docker-compose.cpu.yml"],
        ["docker-compose.yml", *repository],
        ["docker-compose.yml", "docker-compose.cpu.yml", *repository],
    ):
        args = [a for f in files for a in ("-f", f)]
        run = subprocess.run(
            [docker, "compose", *args, "config", "--quiet"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            # the repository's bind source must exist; Compose is asked about a stand-in
            env={**os.environ, "MASKRT_MODEL_REPOSITORY_DIR": str(ROOT / "examples")},
        )
        assert run.returncode == 0, run.stderr


@pytest.mark.parametrize(
    "base", [[COMPOSE], [COMPOSE, COMPOSE_CPU]], ids=["default", "cpu-override"]
)
def test_repository_override_mounts_the_repository_read_only(base):
    """docker-compose.repository.yml on the GPU or CPU stack: the server's MASKRT_MODEL_REPOSITORY
    is a read-only bind mount of ./model-repository (which git and the image build leave out),
    polled, and no single model is named beside it. Without the override the bundled model
    serves, as before."""
    plain = merged_compose(*base)
    merged = merged_compose(*base, COMPOSE_REPOSITORY)
    maskrt = merged["services"]["maskrt"]
    env = {k: _default(v) for k, v in _env(maskrt).items()}
    assert "MASKRT_MODEL" not in env  # the server refuses both (exit 2)
    assert "MASKRT_MODEL_REPOSITORY" not in _env(plain["services"]["maskrt"])
    (mount,) = [
        m
        for m in maskrt["volumes"]
        if isinstance(m, dict) and m["target"] == env["MASKRT_MODEL_REPOSITORY"]
    ]
    assert mount["type"] == "bind" and mount["read_only"] is True
    # a missing folder is an error, not an empty root-owned one made by the engine
    assert mount["bind"]["create_host_path"] is False
    source = _default(mount["source"])
    relative = _host_path(source).relative_to(ROOT).as_posix()
    assert dockerignored(f"{relative}/shapes/1/shapes.pt")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", f"{relative}/shapes/1/shapes.pt"], cwd=ROOT
    )
    assert ignored.returncode == 0, f"git would offer to commit the models in {source}"
    assert float(env["MASKRT_REPOSITORY_POLL_S"]) > 0
    # everything else is the stack without the override
    maskrt["volumes"].remove(mount)
    for name in ("MASKRT_MODEL_REPOSITORY", "MASKRT_REPOSITORY_POLL_S"):
        maskrt["environment"].pop(name)
    assert merged == plain


def test_example_repository_names_the_bundled_model_s_classes():
    """examples/model-repository is filled with the bundled checkpoint (README, docs/scaling.md):
    its config.yaml's labels must be that checkpoint's classes, or the model would fail to load.
    Read from the file's recorded config without torch."""
    from maskrt.model.config import DEFAULT_CHECKPOINT
    from maskrt.model.peek import read_index

    (config,) = (ROOT / "examples" / "model-repository").glob("*/config.yaml")
    assert config.parent.name == "shapes"
    (payload, _) = read_index(DEFAULT_CHECKPOINT)
    assert ["__background__", *load_yaml(config)["labels"]] == list(payload["config"]["classes"])


# ---------------------------------------------------------------------------------------------
# Dashboard


def test_dashboard_uses_the_provisioned_datasource():
    sources = [
        s for f in sorted(DATASOURCES_DIR.glob("*.yml")) for s in load_yaml(f)["datasources"]
    ]
    uid = next(s["uid"] for s in sources if s["type"] == "prometheus")
    dashboard = load_dashboard()
    refs = []
    for panel in iter_panels(dashboard["panels"]):
        if panel["type"] == "row":
            continue
        refs.append((panel["title"], panel["datasource"]))
        refs += [(f"{panel['title']}/{t['refId']}", t["datasource"]) for t in panel["targets"]]
    refs += [(f"variable {v['name']}", v["datasource"]) for v in dashboard["templating"]["list"]]
    wrong = [(where, ref) for where, ref in refs if ref != {"type": "prometheus", "uid": uid}]
    assert not wrong, f"data source must be {{type: prometheus, uid: {uid}}}: {wrong}"


def test_dashboard_structure():
    dashboard = load_dashboard()
    panels = list(iter_panels(dashboard["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"] and dashboard["title"]
    # no two panels overlap on the 24-column grid
    cells = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"{p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    # every $variable an expression uses is defined (or a Grafana built-in)
    defined = {v["name"] for v in dashboard["templating"]["list"]} | GRAFANA_BUILTIN_VARS
    for where, expr in dashboard_exprs(dashboard) + dashboard_variable_queries(dashboard):
        assert template_vars(expr) <= defined, f"{where}: undefined variable in {expr}"
    for name, query in dashboard_variable_queries(dashboard):
        assert LABEL_VALUES.match(query), f"variable {name}: expected label_values(selector, label)"


def test_dashboard_has_a_panel_for_each_serving_signal():
    titles = " | ".join(p["title"].lower() for p in iter_panels(load_dashboard()["panels"]))
    for words in (
        "request rate",
        "error",
        "request latency",
        "queue wait",
        "inference",
        "post-processing",
        "batch size distribution",
        "queue depth",
        "in-flight",
        "gpu memory",
    ):
        assert words in titles, f"no panel about {words!r}"
    exprs = " ".join(e for _, e in dashboard_exprs())
    for q in ("0.5", "0.95", "0.99"):
        assert (
            f"histogram_quantile({q}, sum by (le) (rate(maskrt_request_duration_seconds_bucket"
            in exprs
        )


def test_dashboard_covers_every_design_metric():
    used = set()
    for _, expr in dashboard_exprs():
        used |= metric_names(expr)
    families = set()
    for name in used:
        families.add(re.sub(r"_(bucket|sum|count)$", "", name))
    missing = DESIGN_METRICS - families
    assert not missing, f"docs/architecture.md metrics without a panel: {sorted(missing)}"


def test_dashboard_keeps_every_model_series_to_the_model_variable():
    """A model repository serves several models: the ``model`` variable lists them (the ``name``
    of ``maskrt_model_info``), and every panel of a metric labelled by model keeps to the models
    picked ("All" also keeps the requests that named no model, whose model label is empty)."""
    dashboard = load_dashboard()
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "model"]
    query = variable["query"]["query"]
    m = LABEL_VALUES.match(query)
    assert m and m.group("label") == "name" and metric_names(query) == {"maskrt_model_info"}
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    exported = server_metrics()
    unfiltered = []
    for where, expr in dashboard_exprs(dashboard):
        for name, matchers in re.findall(r"(maskrt_\w+)(\{[^{}]*\})", expr):
            labels = exported.get(name, {}).get("labels") or ()
            label = "name" if name == "maskrt_model_info" else "model"
            if label in labels and f'{label}=~"$model"' not in matchers:
                unfiltered.append(f"{where}: {name}{matchers}")
    assert not unfiltered, unfiltered
    per_model = [e for _, e in dashboard_exprs(dashboard) if re.search(r"by \([^)]*\bmodel\b", e)]
    assert len(per_model) >= 5, "per-model legends: request rate, latency, inference, load"


def test_alerts_watch_each_model():
    """One model of a repository failing must alert even when the others hide it in the job's
    totals: the request and queue alerts use the per-model recorded series."""
    recorded = {rule["record"]: rule["expr"] for rule in rules() if "record" in rule}
    for rule in rules():
        if rule.get("alert") in ("MaskrtHighErrorRate", "MaskrtHighLatency", "MaskrtQueueWaitHigh"):
            (name,) = metric_names(rule["expr"])
            assert name.startswith("job_model:"), rule["alert"]
            assert re.search(r"by \(job, model\b", recorded[name]), recorded[name]


# ---------------------------------------------------------------------------------------------
# The names the dashboard and the rules use are the names the server registers


def test_dashboard_and_rules_use_metrics_the_server_exports():
    exported = server_metrics()
    assert exported, "maskrt.server.metrics registers no maskrt_* metric"
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    problems = []
    for where, expr in dashboard_exprs() + dashboard_variable_queries() + rule_exprs():
        for name in metric_names(expr):
            if name in exported or name in recorded or name in PROMETHEUS_SERIES:
                continue
            if name in GPU_ONLY_METRICS:
                continue  # registered only when a GPU is present: test_gpu_only_metric_is_design_name
            problems.append(f"{where}: {name}")
    assert not problems, (
        "metrics not registered by maskrt.server.metrics (nor recorded by the rules): "
        + "; ".join(problems)
    )


def test_label_names_the_dashboard_and_rules_group_by_exist():
    exported = server_metrics()
    problems = []
    for where, expr in dashboard_exprs() + rule_exprs():
        names = [
            n for n in metric_names(expr) if n in exported and exported[n]["labels"] is not None
        ]
        if not names:
            continue
        available = {"job", "instance", "le"} | {
            label for n in names for label in exported[n]["labels"]
        }
        by_labels = {
            label.strip()
            for group in re.findall(r"\bby\s*\(([^)]*)\)", expr)
            for label in group.split(",")
            if label.strip()
        }
        matchers = " ".join(_MATCHERS.findall(expr))
        selector_labels = set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)\s*\"", matchers))
        missing = (by_labels | selector_labels) - available
        if missing:
            problems.append(f"{where}: {sorted(missing)} not among {sorted(available)}")
    assert not problems, "; ".join(problems)


def test_gpu_only_metric_is_design_name():
    """The GPU memory metric may be absent from a CPU registry; it must then be exactly the name
    docs/architecture.md fixes, and the panel must say it is GPU-only."""
    exported = server_metrics()
    gpu_panels = [
        p
        for p in iter_panels(load_dashboard()["panels"])
        if any("maskrt_gpu_memory_used_bytes" in t.get("expr", "") for t in p.get("targets", []))
    ]
    assert len(gpu_panels) == 1
    assert "gpu" in gpu_panels[0]["description"].lower()
    if "maskrt_gpu_memory_used_bytes" in exported:
        assert exported["maskrt_gpu_memory_used_bytes"]["type"] == "gauge"


def test_alerts_use_recorded_series():
    recorded = {rule["record"] for rule in rules() if "record" in rule}
    for rule in rules():
        if "alert" in rule:
            for name in metric_names(rule["expr"]):
                if ":" in name:
                    assert name in recorded, f"alert {rule['alert']} uses unrecorded {name}"
            assert rule["labels"]["severity"] in ("critical", "warning")
            assert rule["annotations"]["summary"]


# ---------------------------------------------------------------------------------------------
# Dockerfile and .dockerignore


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """``{stage name: [(INSTRUCTION, arguments)]}`` with line continuations joined; the global
    ARG defaults are substituted into FROM."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args, stages, current = {}, {}, None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        instr, _, rest = line.partition(" ")
        instr = instr.upper()
        if instr == "ARG" and current is None:
            name, _, value = rest.partition("=")
            args[name] = value.strip('"')
            continue
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)\s+AS\s+(\S+)", rest, re.IGNORECASE)
            assert m, f"every stage is named: FROM {rest}"
            image = re.sub(r"\$\{(\w+)\}", lambda g: args[g.group(1)], m.group(1))
            current = m.group(2)
            stages[current] = [("FROM", image)]
            continue
        stages[current].append((instr, rest))
    return stages


def test_dockerfile_targets_bases_user_and_healthcheck():
    stages = dockerfile_stages()
    assert {"gpu", "cpu"} <= set(stages)
    assert list(stages)[-1] == "gpu", "gpu is the default target (last stage)"
    for target in ("gpu", "cpu"):
        instrs = stages[target]
        base = instrs[0][1]
        if target == "gpu":
            assert re.fullmatch(r"nvcr\.io/nvidia/tensorrt:\d\d\.\d\d-py3", base), base
        else:
            assert re.fullmatch(r"python:3\.12-slim(-\w+)?", base), base
        users = [rest for instr, rest in instrs if instr == "USER"]
        assert users and users[-1] not in ("root", "0"), f"{target} must run as a non-root user"
        last_user = max(i for i, (instr, _) in enumerate(instrs) if instr == "USER")
        assert not any(instr == "RUN" for instr, _ in instrs[last_user:]), "no RUN after USER"
        health = [rest for instr, rest in instrs if instr == "HEALTHCHECK"]
        assert health and health[-1].endswith('CMD ["maskrt-healthcheck"]'), health
        assert ("ENTRYPOINT", '["maskrt-entrypoint"]') in instrs
        env = " ".join(rest for instr, rest in instrs if instr == "ENV")
        port = re.search(r"MASKRT_PORT=(\d+)", env).group(1)
        assert ("EXPOSE", port) in instrs
        # the gpu image tries TensorRT and stays up on torch when TensorRT cannot serve
        assert f"MASKRT_BACKEND={'auto' if target == 'gpu' else 'onnxruntime'}" in env
        cache = re.search(r"MASKRT_CACHE_DIR=(\S+)", env).group(1)
        assert cache == _env(load_compose()["services"]["maskrt"])["MASKRT_CACHE_DIR"]
    # compose builds targets that exist
    assert load_compose()["services"]["maskrt"]["build"]["target"] in stages
    assert load_compose(COMPOSE_CPU)["services"]["maskrt"]["build"]["target"] in stages
    # the GPU image builds the plugin with CMake and keeps the base image's TensorRT
    gpu_build = " ".join(rest for _, rest in stages["gpu-build"])
    assert "cmake -S /src/plugins" in gpu_build and "--system-site-packages" in gpu_build


def dockerignore_patterns() -> list[tuple[bool, re.Pattern]]:
    """.dockerignore as (negated, regex) pairs, in order (the last match wins)."""
    out = []
    for line in DOCKERIGNORE.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negated = line.startswith("!")
        pattern = line[1:] if negated else line
        pattern = pattern.strip("/")
        regex = ""
        i = 0
        while i < len(pattern):
            if pattern.startswith("**/", i):
                regex += "(?:.*/)?"
                i += 3
            elif pattern.startswith("**", i):
                regex += ".*"
                i += 2
            elif pattern[i] == "*":
                regex += "[^/]*"
                i += 1
            elif pattern[i] == "?":
                regex += "[^/]"
                i += 1
            elif pattern[i] == "[":
                j = pattern.index("]", i)
                regex += pattern[i : j + 1]
                i = j + 1
            else:
                regex += re.escape(pattern[i])
                i += 1
        out.append((negated, re.compile(regex)))
    return out


def dockerignored(path: str) -> bool:
    """Whether Docker leaves ``path`` (relative to the repo) out of the build context: the last
    pattern matching the path or one of its parent folders decides."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    ignored = False
    for negated, regex in dockerignore_patterns():
        if any(regex.fullmatch(c) for c in candidates):
            ignored = not negated
    return ignored


def test_dockerignore_lets_every_copy_source_through():
    sources = []
    for stage in dockerfile_stages().values():
        for instr, rest in stage:
            if instr == "COPY" and "--from=" not in rest:
                words = [w for w in rest.split() if not w.startswith("--")]
                sources += words[:-1]
    assert sources
    for source in sources:
        path = ROOT / source
        assert path.exists(), f"COPY {source}: no such file in the repo"
        assert not dockerignored(source), f"COPY {source}: excluded by .dockerignore"
        if path.is_dir():
            for f in path.rglob("*.py"):
                rel = f.relative_to(ROOT).as_posix()
                if "__pycache__" not in rel:
                    assert not dockerignored(rel), f"{rel} is needed but excluded by .dockerignore"


def test_dockerignore_keeps_the_context_small():
    for path in (
        ".git/HEAD",
        ".venv/bin/python",
        "runs/x/last.pt",
        "data/coco/x.jpg",
        "tests/test_x.py",
        "model/weights/x.onnx",
        "server/__pycache__/app.cpython-312.pyc",
        "plugins/build/lib.so",
        "x.plan",
        "docs/benchmarks.md",
        "model-repository/shapes/1/shapes.pt",  # docker-compose.repository.yml mounts it instead
    ):
        assert dockerignored(path), f"{path} should not be sent to the Docker daemon"
    for path in (
        "model/weights/shapes.pt",
        "plugins/CMakeLists.txt",
        "docker/entrypoint.sh",
        "pyproject.toml",
    ):
        assert not dockerignored(path), path


def test_scripts_are_executable_and_valid():
    for script in (ENTRYPOINT, HEALTHCHECK, DOCKER / "maskrt_env.py"):
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
    subprocess.run(["bash", "-n", str(ENTRYPOINT)], check=True)
    run = subprocess.run([program("shellcheck"), str(ENTRYPOINT)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout


# ---------------------------------------------------------------------------------------------
# docker/entrypoint.sh with stand-ins for `maskrt` and `maskrt-env`

FAKE_MASKRT = r"""#!/usr/bin/env bash
# stand-in for the maskrt CLI: logs its arguments and the cache environment it was given
echo "$*" >> "$FAKE_LOG"
echo "env MASKRT_CACHE_DIR=${MASKRT_CACHE_DIR:-} MASKRT_BUILD_ID=${MASKRT_BUILD_ID:-}" \
    "MASKRT_MODEL_REPOSITORY=${MASKRT_MODEL_REPOSITORY:-}" >> "$FAKE_LOG"
"""

FAKE_ENV = r"""#!/usr/bin/env bash
# stand-in for maskrt-env
case "$1" in
gpu) [[ -n "${FAKE_GPU:-}" ]] || { echo "no gpu" >&2; exit 3; }
     [[ -z "${FAKE_NO_TRT:-}" ]] || exit 4
     printf '%s\t%s\t%s\n' "$FAKE_GPU" "${FAKE_CC:-90}" "${FAKE_TRT:-10.14.1}" ;;
*) exit 2 ;;
esac
"""


@pytest.fixture
def entry(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("maskrt", FAKE_MASKRT), ("maskrt-env", FAKE_ENV)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    ckpt = tmp_path / "shapes.pt"
    ckpt.write_bytes(b"checkpoint bytes")
    (tmp_path / "build-id").write_text("abc123\n")
    log = tmp_path / "calls.log"
    base_env = {
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "MASKRT_CACHE_DIR": str(tmp_path / "cache"),
        "MASKRT_BUILD_ID_FILE": str(tmp_path / "build-id"),
    }

    def run(*args, prefix: tuple[str, ...] = (), **env):
        log.write_text("")
        proc = subprocess.run(
            [*prefix, "bash", str(ENTRYPOINT), *args],
            env={**base_env, **env},
            capture_output=True,
            text=True,
            timeout=60,
        )
        lines = [line for line in log.read_text().splitlines() if line]
        run.env = [line for line in lines if line.startswith("env ")]
        return proc, [line for line in lines if not line.startswith("env ")]

    run.tmp = tmp_path
    run.ckpt = ckpt
    return run


def _real_cli_accepts(calls: list[str]) -> None:
    """Every command the entrypoint ran parses with the real ``maskrt`` CLI (flags exist)."""
    from maskrt.cli import build_parser

    for call in calls:
        args = build_parser().parse_args(shlex.split(call))
        assert callable(args.func), call


def test_entrypoint_tensorrt_hands_the_model_to_the_server(entry):
    """The server exports and builds (cached in MASKRT_CACHE_DIR); the entrypoint checks the GPU,
    says what will happen and passes the cache directory and the image's build id on."""
    gpu = {"MASKRT_BACKEND": "tensorrt", "FAKE_GPU": "NVIDIA H100 80GB HBM3", "FAKE_CC": "90"}
    proc, calls = entry(**gpu)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["serve --backend tensorrt"]
    assert entry.env == [
        f"env MASKRT_CACHE_DIR={entry.tmp / 'cache'} MASKRT_BUILD_ID=abc123 MASKRT_MODEL_REPOSITORY="
    ]
    assert "NVIDIA H100 80GB HBM3 (sm_90), TensorRT 10.14.1" in proc.stderr
    assert "builds (first start on this GPU: minutes) or reuses the fp16 engine" in proc.stderr
    assert (entry.tmp / "cache").is_dir()
    _real_cli_accepts(calls)

    proc, calls = entry(
        "--log-format", "text", MASKRT_MODEL=str(entry.ckpt), MASKRT_ENGINE_PRECISION="fp32", **gpu
    )
    assert calls == [f"serve --backend tensorrt --model {entry.ckpt} --log-format text"]
    assert "reuses the fp32 engine" in proc.stderr
    _real_cli_accepts(calls)

    plan = entry.tmp / "given.plan"
    plan.write_bytes(b"plan")
    proc, calls = entry(MASKRT_MODEL=str(plan), **gpu)
    assert calls == [f"serve --backend tensorrt --model {plan}"]
    assert "serving the given engine" in proc.stderr


def test_entrypoint_auto_on_a_gpu_leaves_the_fallback_to_the_server(entry):
    """The gpu image's default (auto on cuda:0): the GPU is checked as for tensorrt, but a missing
    TensorRT is left to the server, which serves on torch and says why."""
    on_gpu = {"MASKRT_BACKEND": "auto", "MASKRT_DEVICE": "cuda:0"}
    proc, calls = entry(FAKE_GPU="NVIDIA H100 80GB HBM3", **on_gpu)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["serve --backend auto"]
    assert "NVIDIA H100 80GB HBM3 (sm_90), TensorRT 10.14.1" in proc.stderr
    proc, calls = entry(FAKE_GPU="NVIDIA T4", FAKE_NO_TRT="1", **on_gpu)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["serve --backend auto"]
    assert "cannot be imported: the server serves on the torch backend" in proc.stderr
    plan = entry.tmp / "given.plan"  # only TensorRT runs an engine
    plan.write_bytes(b"plan")
    proc, calls = entry(FAKE_GPU="NVIDIA T4", FAKE_NO_TRT="1", MASKRT_MODEL=str(plan), **on_gpu)
    assert proc.returncode == 1 and "tensorrt Python package" in proc.stderr and calls == []
    proc, calls = entry(**on_gpu)
    assert proc.returncode == 1 and "no NVIDIA GPU is visible" in proc.stderr and calls == []


def test_entrypoint_explains_a_missing_gpu(entry):
    proc, calls = entry(MASKRT_BACKEND="tensorrt")
    assert proc.returncode == 1
    assert "no NVIDIA GPU is visible" in proc.stderr and "NVIDIA Container Toolkit" in proc.stderr
    assert calls == []
    proc, _ = entry(MASKRT_BACKEND="tensorrt", FAKE_GPU="NVIDIA T4", FAKE_NO_TRT="1")
    assert proc.returncode == 1 and "tensorrt Python package" in proc.stderr
    proc, _ = entry(MASKRT_BACKEND="tensorrt", FAKE_GPU="NVIDIA T4", MASKRT_DEVICE="cpu")
    assert proc.returncode == 1 and "CUDA device" in proc.stderr


def test_entrypoint_onnxruntime_and_torch(entry):
    proc, calls = entry("--log-format", "text", MASKRT_BACKEND="onnxruntime")
    assert proc.returncode == 0, proc.stderr
    assert calls == ["serve --backend onnxruntime --log-format text"]
    proc, calls = entry(MASKRT_BACKEND="onnxruntime", MASKRT_MODEL=str(entry.ckpt))
    assert calls == [f"serve --backend onnxruntime --model {entry.ckpt}"]
    proc, calls = entry(MASKRT_BACKEND="torch")
    assert calls == ["serve --backend torch"]
    proc, calls = entry(MASKRT_BACKEND="auto")  # no GPU here: the server decides
    assert calls == ["serve --backend auto"] and "tries TensorRT" in proc.stderr
    _real_cli_accepts(calls)
    proc, calls = entry(
        MASKRT_BACKEND="onnxruntime", MASKRT_MODEL="MaskRCNN_ResNet50_FPN_Weights.COCO_V1"
    )
    assert calls == ["serve --backend onnxruntime --model MaskRCNN_ResNet50_FPN_Weights.COCO_V1"]
    _real_cli_accepts(calls)


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"MASKRT_BACKEND": "onnxruntime", "MASKRT_MODEL": "/x/model.plan"},
            "is a TensorRT engine",
        ),
        ({"MASKRT_BACKEND": "torch", "MASKRT_MODEL": "/x/model.plan"}, "is a TensorRT engine"),
        ({"MASKRT_BACKEND": "onnxruntime", "MASKRT_MODEL": "/nope/m.pt"}, "does not exist"),
        ({"MASKRT_BACKEND": "tpu"}, "MASKRT_BACKEND must be"),
        ({"MASKRT_BACKEND": "onnxruntime", "MASKRT_MAX_BATCH": "0"}, "MASKRT_MAX_BATCH"),
        (
            {"MASKRT_BACKEND": "tensorrt", "MASKRT_ENGINE_PRECISION": "int8"},
            "MASKRT_ENGINE_PRECISION",
        ),
    ],
)
def test_entrypoint_errors(entry, env, message):
    proc, calls = entry(**env)
    assert proc.returncode == 1 and message in proc.stderr and calls == []


def test_entrypoint_model_repository(entry):
    """A mounted repository goes to the server as MASKRT_MODEL_REPOSITORY (the server reads it and
    judges each model); the entrypoint names the model folders it sees, says what an empty one
    means, and stops at what fails every model: no such directory, or a model named beside it."""
    repository = entry.tmp / "models"
    (repository / "shapes" / "1").mkdir(parents=True)
    (repository / "shapes" / "1" / "shapes.pt").write_bytes(b"checkpoint bytes")
    (repository / "other" / "2").mkdir(parents=True)
    (repository / ".staging").mkdir()  # hidden: the server ignores it too
    (repository / "README.md").write_text("a file, not a model")
    on_cpu = {"MASKRT_BACKEND": "onnxruntime", "MASKRT_MODEL_REPOSITORY": str(repository)}
    proc, calls = entry(**on_cpu)
    assert proc.returncode == 0, proc.stderr
    assert calls == ["serve --backend onnxruntime"]
    assert entry.env[0].endswith(f" MASKRT_MODEL_REPOSITORY={repository}")
    assert f"serving the model repository {repository}: other shapes" in proc.stderr
    _real_cli_accepts(calls)

    empty = entry.tmp / "empty"
    empty.mkdir()
    proc, calls = entry(**{**on_cpu, "MASKRT_MODEL_REPOSITORY": str(empty)})
    assert proc.returncode == 0 and calls == ["serve --backend onnxruntime"], proc.stderr
    assert "holds no model folder yet: /readyz answers 503 until a model serves" in proc.stderr

    proc, calls = entry(**on_cpu, MASKRT_MODEL=str(entry.ckpt))
    assert proc.returncode == 1 and calls == []
    assert "MASKRT_MODEL_REPOSITORY" in proc.stderr and "are both set" in proc.stderr
    for missing in (entry.tmp / "not-mounted", entry.ckpt):
        proc, calls = entry(**{**on_cpu, "MASKRT_MODEL_REPOSITORY": str(missing)})
        assert proc.returncode == 1 and calls == []
        assert f"model repository '{missing}' is not a directory" in proc.stderr
        assert "mount it into the container" in proc.stderr


def test_entrypoint_unreadable_model_repository(entry):
    prefix = without_root_privileges()
    locked = entry.tmp / "locked"
    (locked / "shapes" / "1").mkdir(parents=True)
    locked.chmod(0o300)  # no read: nothing in it can be listed
    try:
        proc, calls = entry(
            MASKRT_BACKEND="onnxruntime", MASKRT_MODEL_REPOSITORY=str(locked), prefix=prefix
        )
    finally:
        locked.chmod(0o755)
    assert proc.returncode == 1 and calls == []
    assert f"model repository '{locked}' is not a directory uid" in proc.stderr


def test_entrypoint_runs_a_command_instead(entry):
    proc, calls = entry("echo", "hello")
    assert proc.returncode == 0 and proc.stdout == "hello\n" and calls == []


def test_entrypoint_unwritable_cache(entry):
    if os.geteuid() == 0:
        target = "/proc/maskrt-cache"  # not creatable, even by root
    else:
        ro = entry.tmp / "ro"
        ro.mkdir(mode=0o555)
        target = str(ro / "cache")
    proc, _ = entry(MASKRT_BACKEND="onnxruntime", MASKRT_CACHE_DIR=target)
    assert proc.returncode == 1 and "not writable" in proc.stderr


def test_entrypoint_read_only_cache_is_served(entry):
    """A read-only cache that exists (a volume filled once) is the server's to use."""
    prefix = without_root_privileges()
    ro = entry.tmp / "filled"
    ro.mkdir(mode=0o555)
    try:
        proc, calls = entry(MASKRT_BACKEND="onnxruntime", MASKRT_CACHE_DIR=str(ro), prefix=prefix)
    finally:
        ro.chmod(0o755)
    assert proc.returncode == 0 and calls == ["serve --backend onnxruntime"], proc.stderr
    assert "is read-only: the server uses what it holds" in proc.stderr


# ---------------------------------------------------------------------------------------------
# docker/healthcheck.py


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("status, expected", [(200, 0), (503, 1), (None, 1)])
def test_healthcheck_script(status, expected):
    port = _free_port()
    server = None
    if status is not None:

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                self.send_response(status if self.path == "/readyz" else 404)
                self.end_headers()

            def log_message(self, *args):
                pass

        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        env = {
            **os.environ,
            "MASKRT_PORT": str(port),
            "http_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9",
        }
        run = subprocess.run(
            [sys.executable, str(HEALTHCHECK)], env=env, capture_output=True, text=True, timeout=30
        )
        assert run.returncode == expected, run.stdout + run.stderr
    finally:
        if server:
            server.shutdown()
            server.server_close()
