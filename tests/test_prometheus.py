"""A real Prometheus scrapes a real ``maskrt serve`` and answers every expression we ship.

``test_every_dashboard_and_rule_expression_returns_data`` starts ``maskrt serve`` on 127.0.0.1
(default model, no GPU needed), sends it a short bounded load (30 requests over about 8 s,
including a few deliberate 400 and 415 answers so that the error panels have something to show),
runs Prometheus on ``docker/prometheus/prometheus.yml`` (the target rewritten to that server, 1 s
scrape and rule evaluation, the rule files of ``docker/prometheus/rules/``) and evaluates, through
Prometheus' HTTP API, every PromQL expression of the Grafana dashboard (its variables substituted
as Grafana would with "All" selected), every dashboard variable query, every recording rule (and
the series it recorded) and every alert rule (its condition must evaluate; the quantity it
compares must have data). Each must return data with a finite value, except the GPU memory
expressions, which must return nothing when the server runs on the CPU (the metric exists only on a
GPU) and data when it runs on a GPU.

The promtool tests check the config and the rules and run the rules' unit tests
(``docker/prometheus/tests/``).

Prometheus comes from Debian's ``prometheus`` package. Where ``prometheus``/``promtool`` are not on
PATH the fixture installs the package with apt-get, but only when it runs as root and either
``CI=true`` or ``MASKRT_INSTALL_PROMETHEUS=1`` is set (a plain ``pytest`` on a developer's machine
never changes its system packages). Where Prometheus is still missing (not installed, or the
install failed) the tests fail under ``CI=true`` and skip, with the reason, elsewhere.
"""

from __future__ import annotations

import io
import math
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from test_docker_config import (
    GPU_ONLY_METRICS,
    LABEL_VALUES,
    PROMETHEUS_YML,
    ROOT,
    RULES_DIR,
    RULES_TESTS,
    _mounts,
    dashboard_exprs,
    dashboard_variable_queries,
    load_compose,
    load_dashboard,
    metric_names,
    rules,
    sample_names,
)
from tools import ON_CI, missing

HOST = "127.0.0.1"  # every request of this module goes to this machine only


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def prometheus_tools() -> tuple[str, str]:
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prom and promtool:
        return prom, promtool
    if not (ON_CI or os.environ.get("MASKRT_INSTALL_PROMETHEUS") == "1"):
        missing(
            "Prometheus is not installed: `apt-get install prometheus` (Debian), or set "
            "MASKRT_INSTALL_PROMETHEUS=1 (as root) to let the test set-up install it"
        )
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        missing(
            "Prometheus is not installed and cannot be: installing Debian's `prometheus` "
            "package needs root and apt-get"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd, limit in (
        (["apt-get", "update"], 300),
        (["apt-get", "install", "-y", "--no-install-recommends", "prometheus"], 600),
    ):
        step = f"Prometheus could not be installed: `{' '.join(cmd)}`"
        try:
            run = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit)
        except subprocess.TimeoutExpired:
            missing(f"{step} took over {limit} s")
        if run.returncode != 0:
            missing(f"{step} failed: {run.stderr.strip()[-500:]}")
    prom, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if not (prom and promtool):
        missing("Debian's prometheus package installed no prometheus/promtool on PATH")
    return prom, promtool


def rules_dir_in_container(config: dict) -> dict[str, Path]:
    """Each rule_files pattern of the shipped config -> the same pattern on this machine, through
    the compose file's mount of docker/prometheus/rules."""
    mounts = _mounts(load_compose()["services"]["prometheus"])
    out = {}
    for pattern in config["rule_files"]:
        folder, name = pattern.rsplit("/", 1)
        out[pattern] = ROOT / mounts[folder].removeprefix("./") / name
    return out


def local_config(tmp: Path, target_port: int, prom_port: int, interval: str = "1s") -> Path:
    """docker/prometheus/prometheus.yml as it runs in compose, pointed at this machine."""
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    config["global"]["scrape_interval"] = interval
    config["global"]["evaluation_interval"] = interval
    config["rule_files"] = [str(p) for p in rules_dir_in_container(config).values()]
    for job in config["scrape_configs"]:
        job["scrape_interval"] = interval
        job["scrape_timeout"] = interval
        port = target_port if job["job_name"] == "maskrt" else prom_port
        for static in job["static_configs"]:
            static["targets"] = [f"{HOST}:{port}"]
    path = tmp / "prometheus.yml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


# ---------------------------------------------------------------------------------------------
# promtool


def test_promtool_check_config(prometheus_tools, tmp_path):
    _, promtool = prometheus_tools
    config = local_config(tmp_path, 8000, 9090, interval="15s")
    run = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "SUCCESS" in run.stdout + run.stderr
    # the untouched file too (its rule_files glob matches nothing outside the container)
    run = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_YML)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_check_rules(prometheus_tools):
    _, promtool = prometheus_tools
    files = sorted(str(p) for p in RULES_DIR.glob("*.yml"))
    run = subprocess.run([promtool, "check", "rules", *files], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_promtool_rule_unit_tests(prometheus_tools):
    _, promtool = prometheus_tools
    files = sorted(str(p) for p in RULES_TESTS.glob("*.yml"))
    assert files
    run = subprocess.run(
        [promtool, "test", "rules", *files], capture_output=True, text=True, cwd=RULES_TESTS
    )
    assert run.returncode == 0, run.stdout + run.stderr


def test_rules_and_dashboard_select_every_inference_endpoint_and_only_those():
    """The request rules and the dashboard's "All" endpoints agree, and take the app's inference
    routes (/predict, /v2 infer) and gRPC's ModelInfer, not its probes or metadata."""
    from maskrt.server.app import create_app
    from maskrt.server.middleware import route_paths
    from maskrt.server.settings import Settings

    selectors = {
        m for rule in rules() for m in re.findall(r'endpoint=~"([^"]+)"', rule.get("expr", ""))
    }
    assert len(selectors) == 1, selectors
    (selector,) = selectors
    (variable,) = [v for v in load_dashboard()["templating"]["list"] if v["name"] == "endpoint"]
    assert variable["allValue"] == selector
    assert variable["regex"] == f"/^({selector})$/"
    paths = set(route_paths(create_app(Settings()).routes))
    inference = {p for p in paths if re.fullmatch(selector, p)}
    assert inference == {
        "/predict",
        "/predict/batch",
        "/v2/models/{name}/infer",
        "/v2/models/{name}/versions/{version}/infer",
    }
    assert re.fullmatch(selector, "ModelInfer")
    assert not re.fullmatch(selector, "ModelMetadata")


# ---------------------------------------------------------------------------------------------
# Live: maskrt serve + Prometheus


class Proc:
    """A child process of this test with its output in a file; stopped by ``stop``."""

    def __init__(self, name: str, cmd: list[str], log: Path, env: dict | None = None):
        self.name, self.log = name, log
        self.file = log.open("wb")
        self.popen = subprocess.Popen(
            cmd, stdout=self.file, stderr=subprocess.STDOUT, env=env, cwd=log.parent
        )

    def output(self, tail: int = 4000) -> str:
        self.file.flush()
        return self.log.read_text(errors="replace")[-tail:]

    def check_alive(self) -> None:
        if self.popen.poll() is not None:
            pytest.fail(f"{self.name} exited with {self.popen.returncode}:\n{self.output()}")

    def stop(self) -> None:
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(20)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        self.file.close()


def wait_until(what: str, check, timeout: float, procs: list[Proc], every: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            p.check_alive()
        try:
            value = check()
        except httpx.HTTPError:
            value = None
        if value:
            return value
        time.sleep(every)
    pytest.fail(
        f"timed out after {timeout:.0f} s waiting for {what}\n"
        + "\n".join(f"--- {p.name}:\n{p.output()}" for p in procs)
    )


def png_images(count: int) -> list[bytes]:
    """Small PNGs of the synthetic shapes (so that the model finds something); plain random
    rectangles where the shapes generator is unavailable."""
    from PIL import Image, ImageDraw

    out = []
    for i in range(count):
        try:
            from maskrt.model.shapes import generate

            image = Image.fromarray(generate(7, i).image)
        except ImportError:
            image = Image.new("RGB", (200, 160), (30 * i % 255, 90, 160))
            ImageDraw.Draw(image).rectangle([20 + 5 * i, 30, 120, 110], fill=(240, 200, 20))
        buf = io.BytesIO()
        image.save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def send_load(base: str) -> list[int]:
    """30 requests over about 8 s from 3 threads: 22 single /predict, 2 /predict/batch of 3
    images, 3 undecodable images (400) and 3 text bodies (415), the bad ones spread over the run."""
    images = png_images(6)
    plan = []
    for i in range(30):
        if i % 10 == 3:
            plan.append(("bad-image", None))
        elif i % 10 == 7:
            plan.append(("bad-type", None))
        elif i in (12, 24):
            plan.append(("batch", None))
        else:
            plan.append(("single", images[i % len(images)]))
    statuses: list[int] = []
    lock = threading.Lock()
    deadline = time.monotonic() + 120

    def worker(items):
        with httpx.Client(base_url=base, timeout=60, trust_env=False) as client:
            for kind, data in items:
                if time.monotonic() > deadline:
                    return
                if kind == "single":
                    r = client.post("/predict", files={"image": ("x.png", data, "image/png")})
                elif kind == "batch":
                    files = [("images", (f"{j}.png", images[j], "image/png")) for j in range(3)]
                    r = client.post("/predict/batch", files=files)
                elif kind == "bad-image":
                    bad = {"image": ("x.png", b"this is not a png", "image/png")}
                    r = client.post("/predict", files=bad)
                else:
                    r = client.post(
                        "/predict", content=b"hello", headers={"content-type": "text/plain"}
                    )
                with lock:
                    statuses.append(r.status_code)
                time.sleep(0.8)

    threads = [threading.Thread(target=worker, args=(plan[k::3],)) for k in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return statuses


def substitute(expr: str, job: str, window: str) -> str:
    """Dashboard variables as Grafana fills them with the defaults ("All" for multi-value ones)."""
    values = {"__rate_interval": window, "__interval": window, "__range": window}
    for var in load_dashboard()["templating"]["list"]:
        if var["name"] == "job":
            values["job"] = job
        elif var.get("includeAll"):
            values[var["name"]] = var.get("allValue") or ".*"
        else:
            current = var.get("current", {}).get("value")
            values[var["name"]] = current if isinstance(current, str) else ".*"
    out = re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], expr)
    return re.sub(r"\$(\w+)", lambda m: values[m.group(1)], out)


def finite(result: list[dict]) -> bool:
    return any(math.isfinite(float(r["value"][1])) for r in result)


def exported_names(text: str) -> set[str]:
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(maxsplit=3)
            family = (
                name[: -len("_total")] if kind == "counter" and name.endswith("_total") else name
            )
            names |= sample_names(family, kind) | {name}
        elif line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_every_dashboard_and_rule_expression_returns_data(prometheus_tools, tmp_path):
    prom_bin, _ = prometheus_tools
    port, metrics_port, prom_port = _free_port(), _free_port(), _free_port()
    base, prom_base = f"http://{HOST}:{port}", f"http://{HOST}:{prom_port}"
    job = next(
        j["job_name"]
        for j in yaml.safe_load(PROMETHEUS_YML.read_text())["scrape_configs"]
        if j["job_name"] == "maskrt"
    )

    env = {**os.environ, "MASKRT_MAX_BATCH": "4", "MASKRT_MAX_DELAY_MS": "20"}
    env["MASKRT_METRICS_PORT"] = str(metrics_port)  # as docker-compose.yml serves them
    env.pop("MASKRT_API_KEYS", None)
    env["MASKRT_GRPC_PORT"] = "0"
    procs: list[Proc] = []
    try:
        serve = [sys.executable, "-m", "maskrt", "serve", "--host", HOST, "--port", str(port)]
        server = Proc("maskrt serve", serve, tmp_path / "server.log", env=env)
        procs.append(server)
        http = httpx.Client(timeout=10, trust_env=False)
        wait_until(
            "GET /readyz = 200", lambda: http.get(f"{base}/readyz").status_code == 200, 600, procs
        )

        config = local_config(tmp_path, metrics_port, prom_port)
        prom = Proc(
            "prometheus",
            [
                prom_bin,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                f"--web.listen-address={HOST}:{prom_port}",
                "--log.level=warn",
            ],
            tmp_path / "prometheus.log",
        )
        procs.append(prom)

        def query(expr: str) -> list[dict]:
            r = http.get(f"{prom_base}/api/v1/query", params={"query": expr})
            body = r.json()
            assert body["status"] == "success", f"{expr}: {body}"
            return body["data"]["result"]

        wait_until(
            "Prometheus ready",
            lambda: http.get(f"{prom_base}/-/ready").status_code == 200,
            60,
            procs,
        )
        wait_until(
            "a first successful scrape of maskrt",
            lambda: any(r["value"][1] == "1" for r in query(f'up{{job="{job}"}}')),
            60,
            procs,
        )

        load_start = time.monotonic()
        statuses = send_load(base)
        ok = sum(200 <= s < 300 for s in statuses)
        assert len(statuses) == 30 and ok >= 20, f"load answered {sorted(statuses)}"
        assert 400 in statuses and 415 in statuses, f"expected some 400 and 415: {sorted(statuses)}"
        time.sleep(4)  # a few more scrapes and rule evaluations after the last request
        window = f"{math.ceil(time.monotonic() - load_start) + 10}s"

        exposition = http.get(f"http://{HOST}:{metrics_port}/metrics").text
        exported = exported_names(exposition)
        device = {r["metric"].get("device") for r in query(f'maskrt_model_info{{job="{job}"}}')}
        assert device, "maskrt_model_info has no series"
        on_gpu = any(d and d.startswith("cuda") for d in device)

        problems, report = [], []

        def check(where: str, expr: str) -> None:
            result = query(expr)
            uses_gpu_metric = bool(metric_names(expr) & GPU_ONLY_METRICS)
            if uses_gpu_metric and not on_gpu:
                if result:
                    problems.append(f"{where}: expected no data on the CPU, got {result}")
                report.append(f"{where}: no data, as expected on the CPU (GPU-only metric)")
                return
            if not result:
                problems.append(f"{where}: no data for {expr}")
            elif not finite(result):
                problems.append(f"{where}: only non-finite values {result} for {expr}")
            else:
                report.append(f"{where}: {len(result)} series")

        # the names used exist in the live exposition (GPU-only ones on a GPU only)
        for where, expr in dashboard_exprs() + dashboard_variable_queries():
            for name in metric_names(expr):
                if name.startswith("maskrt") and ":" not in name and name not in exported:
                    if name in GPU_ONLY_METRICS and not on_gpu:
                        continue
                    problems.append(f"{where}: {name} is not in GET /metrics")
        if not on_gpu:
            gpu_samples = [
                line
                for line in exposition.splitlines()
                if line
                and not line.startswith("#")
                and re.split(r"[{\s]", line, maxsplit=1)[0] in GPU_ONLY_METRICS
            ]
            assert not gpu_samples, f"GPU-only samples exported on the CPU: {gpu_samples}"
            report.append(
                f"{sorted(GPU_ONLY_METRICS)}: no samples in GET /metrics on the CPU, "
                "as docs/architecture.md says"
            )

        for where, expr in dashboard_exprs():
            check(where, substitute(expr, job, window))

        for name, q in dashboard_variable_queries():
            m = LABEL_VALUES.match(q)
            selector, label = substitute(m.group("selector"), job, window), m.group("label")
            result = query(selector)
            if not result or not all(label in r["metric"] for r in result):
                problems.append(f"variable {name}: {selector} has no series with label {label}")
            else:
                values = sorted({r["metric"][label] for r in result})
                report.append(f"variable {name}: {values}")

        for rule in rules():
            if "record" in rule:
                check(f"recording rule {rule['record']} (expr)", rule["expr"])
                check(f"recording rule {rule['record']} (recorded series)", rule["record"])
            else:
                where = f"alert {rule['alert']}"
                query(rule["expr"])  # the condition evaluates (empty: not firing)
                m = re.fullmatch(
                    r"(?s)\s*(.+?)\s*(?:>|<|>=|<=|==|!=)\s*[-+\d.eE]+\s*", rule["expr"]
                )
                assert m, f"{where}: expected `<quantity> <op> <number>`"
                check(f"{where} (quantity)", m.group(1))

        print("\n".join(report))
        assert not problems, "\n".join(problems)
    finally:
        for p in reversed(procs):
            p.stop()
