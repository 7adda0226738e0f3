"""The production stack (infra/) agrees with the settings module and the metric names.

No Docker engine is needed: the files are parsed, not run.
"""

from __future__ import annotations

import glob
import json
import re
import shlex
from functools import cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streaming.errors import ConfigError
from streaming.settings import FIELDS, PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
COMPOSE = INFRA / "docker-compose.yml"
PROMETHEUS = INFRA / "prometheus" / "prometheus.yml"
GRAFANA = INFRA / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
METRICS_SOURCE = ROOT / "streaming" / "observability" / "metrics.py"

SERVICES = {"kafka", "kafka-init", "redis", "worker", "prometheus", "alertmanager", "grafana"}
# PromQL words that are not metric names (functions are recognised by the "(" that follows them).
PROMQL_KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "inf",
    "nan",
    "atan2",
}


# -- helpers -------------------------------------------------------------------
@cache
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def service(name: str) -> dict[str, Any]:
    return compose()["services"][name]


def env_of(name: str) -> dict[str, str]:
    """A service's environment as strings, whether written as a mapping or a list."""
    env = service(name).get("environment") or {}
    if isinstance(env, list):
        return dict(item.split("=", 1) for item in env)
    return {k: "" if v is None else str(v).lower() if isinstance(v, bool) else str(v) for k, v in env.items()}


def worker_settings() -> Settings:
    return Settings.from_env(env_of("worker"))


def container_ports(name: str) -> set[int]:
    """Container-side ports a service publishes or exposes."""
    ports: set[int] = set()
    for entry in [*service(name).get("ports", []), *service(name).get("expose", [])]:
        if isinstance(entry, dict):
            ports.add(int(entry["target"]))
        else:
            ports.add(int(str(entry).split("/")[0].rsplit(":", 1)[-1]))
    return ports


def published_ports(name: str) -> set[int]:
    """Host-side ports a service publishes."""
    ports: set[int] = set()
    for entry in service(name).get("ports", []):
        if isinstance(entry, dict):
            ports.add(int(entry["published"]))
        else:
            parts = str(entry).split("/")[0].split(":")
            ports.add(int(parts[-2] if len(parts) > 1 else parts[-1]))
    return ports


def bind_mounts(name: str) -> dict[str, Path]:
    """A service's bind mounts: container path -> host path (relative paths are relative to infra/)."""
    mounts: dict[str, Path] = {}
    for entry in service(name).get("volumes", []):
        if isinstance(entry, dict):
            if entry.get("type") != "bind":
                continue
            src, dst = entry["source"], entry["target"]
        else:
            src, dst = str(entry).split(":")[:2]
            if not src.startswith((".", "/")):
                continue  # a named volume
        mounts[str(PurePosixPath(dst))] = (INFRA / src).resolve()
    return mounts


def host_path(mounts: dict[str, Path], container_path: str) -> Path | None:
    """Where a container path comes from, by the longest mount that holds it."""
    path = PurePosixPath(container_path)
    for dst in sorted(mounts, key=len, reverse=True):
        if path == PurePosixPath(dst) or PurePosixPath(dst) in path.parents:
            return mounts[dst] / path.relative_to(dst)
    return None


def worker_build() -> tuple[Path, Path]:
    build = service("worker")["build"]
    context = (INFRA / build["context"]).resolve()
    return context, context / build["dockerfile"]


def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", path.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def worker_image_files() -> dict[str, Path]:
    """Container path -> host path for the worker: the Dockerfile's COPY lines, then the bind mounts over them."""
    context, dockerfile = worker_build()
    files: dict[str, Path] = {}
    workdir = PurePosixPath("/")
    for word, rest in dockerfile_instructions(dockerfile):
        if word == "WORKDIR":
            workdir = workdir / rest
        elif word == "COPY" and "--from" not in rest:
            *sources, dest = [t for t in shlex.split(rest) if not t.startswith("--")]
            if len(sources) == 1 and "*" not in sources[0]:
                files[str(workdir / dest)] = context / sources[0]
    return files | bind_mounts("worker")


def kafka_listeners(var: str) -> dict[str, tuple[str, int]]:
    """KAFKA_LISTENERS / KAFKA_ADVERTISED_LISTENERS as name -> (host, port)."""
    out = {}
    for item in env_of("kafka")[var].split(","):
        name, _, address = item.strip().partition("://")
        host, _, port = address.rpartition(":")
        out[name] = (host, int(port))
    return out


def internal_kafka_address() -> tuple[str, int]:
    name = env_of("kafka")["KAFKA_INTER_BROKER_LISTENER_NAME"]
    return kafka_listeners("KAFKA_ADVERTISED_LISTENERS")[name]


def init_topic_commands() -> list[list[str]]:
    """The kafka-topics.sh --create commands of kafka-init, as argument lists."""
    command = service("kafka-init")["command"]
    script = command if isinstance(command, str) else "\n".join(command)
    return [
        shlex.split(part) for part in re.split(r"\n|&&|;", script) if "kafka-topics.sh" in part and "--create" in part
    ]


def option(args: list[str], name: str) -> str:
    for i, arg in enumerate(args):
        if arg == name:
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {' '.join(args)}")


@cache
def prometheus_config() -> dict[str, Any]:
    return yaml.safe_load(PROMETHEUS.read_text())


def scrape_targets(job: str) -> list[str]:
    (config,) = [c for c in prometheus_config()["scrape_configs"] if c["job_name"] == job]
    return [t for sc in config["static_configs"] for t in sc["targets"]]


def exposed_metric_names() -> set[str]:
    """The sample names streaming/observability/metrics.py exposes, from its source."""
    source = METRICS_SOURCE.read_text()
    names: set[str] = set()
    for kind, name in re.findall(r"\b(Counter|Gauge|Histogram)\(\s*[\"']([^\"']+)[\"']", source):
        if kind == "Counter":
            names.add(name.removesuffix("_total") + "_total")
        elif kind == "Histogram":
            names.update(f"{name}{suffix}" for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a lexical approximation, good for dashboard queries)."""
    expr = re.sub(r"\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'", '""', expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges and subqueries
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)  # label lists
    tokens = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {t for t in tokens if t.lower() not in PROMQL_KEYWORDS}


def dashboard_exprs() -> list[str]:
    exprs = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        dashboard = json.loads(path.read_text())
        panels = list(dashboard["panels"])
        while panels:
            panel = panels.pop()
            panels.extend(panel.get("panels", []))  # rows
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
    return exprs


# -- the compose file ----------------------------------------------------------
def test_services_exist() -> None:
    services = compose()["services"]
    assert SERVICES <= set(services), f"missing services: {sorted(SERVICES - set(services))}"
    assert service("kafka-init")["image"] == service("kafka")["image"]


def test_worker_starts_after_topics_and_redis() -> None:
    depends = service("worker")["depends_on"]
    assert depends["kafka-init"]["condition"] == "service_completed_successfully"
    assert depends["redis"]["condition"] == "service_healthy"
    assert service("kafka-init")["depends_on"]["kafka"]["condition"] == "service_healthy"
    for name in ("kafka", "redis"):
        assert service(name).get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert service("worker")["restart"] == "unless-stopped"


def test_worker_image_runs_the_worker() -> None:
    context, dockerfile = worker_build()
    assert (context / "pyproject.toml").is_file(), f"build context {context} is not the repository root"
    assert dockerfile.is_file()
    (cmd,) = [rest for word, rest in dockerfile_instructions(dockerfile) if word == "CMD"]
    assert json.loads(cmd) == ["streaming", "worker"]


def test_worker_environment_is_known_settings() -> None:
    env = env_of("worker")
    streaming_vars = [name for name in env if name.startswith(PREFIX)]
    assert streaming_vars, "the worker is not configured with STREAMING_* variables"
    unknown = [name for name in streaming_vars if name.removeprefix(PREFIX).lower() not in FIELDS]
    assert not unknown, f"not settings (see streaming/settings.py FIELDS): {unknown}"
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        pytest.fail(f"the worker's environment does not parse: {exc}")
    # the stack's broker and Redis, not the embedded local ones
    assert settings.broker_url and settings.redis_url


def test_worker_paths_exist_in_the_image() -> None:
    settings = worker_settings()
    files = worker_image_files()
    for setting, must_exist in (
        ("pipeline", "."),
        ("models_dir", "."),
        ("schemas_dir", "registry.json"),
    ):
        container_path = getattr(settings, setting)
        assert container_path.startswith("/"), f"{setting}={container_path!r} should be absolute in the container"
        path = host_path(files, container_path)
        assert path is not None, f"{setting}={container_path!r} is neither copied into the image nor mounted"
        assert (path / must_exist).exists(), f"{setting}={container_path!r} comes from {path}, which is missing"
    assert str(PurePosixPath(settings.models_dir)) in bind_mounts("worker"), "the model registry is not mounted"


# -- ports and addresses agree -------------------------------------------------
def test_metrics_port_matches_prometheus_and_expose() -> None:
    settings = worker_settings()
    assert settings.metrics_port != 0, "metrics are disabled"
    assert settings.metrics_host == "0.0.0.0", "other containers cannot reach a /metrics bound to loopback"
    targets = scrape_targets("streaming-worker")
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host == "worker" and host in compose()["services"]
        assert int(port) == settings.metrics_port, f"Prometheus scrapes {target}"
    assert settings.metrics_port in container_ports("worker")
    health = service("worker").get("healthcheck")
    if health:
        assert f":{settings.metrics_port}/" in " ".join(health["test"])
    (job,) = [c for c in prometheus_config()["scrape_configs"] if c["job_name"] == "streaming-worker"]
    assert job.get("scrape_interval") == "5s"


def test_broker_url_is_the_internal_kafka_listener() -> None:
    host, port = internal_kafka_address()
    assert host == "kafka" and host in compose()["services"]
    name = env_of("kafka")["KAFKA_INTER_BROKER_LISTENER_NAME"]
    assert kafka_listeners("KAFKA_LISTENERS")[name][1] == port
    for server in worker_settings().broker_url.split(","):
        assert server.strip() == f"{host}:{port}"
    # the host listener is published on the port it advertises
    host_listener = [a for n, a in kafka_listeners("KAFKA_ADVERTISED_LISTENERS").items() if a[0] == "localhost"]
    assert host_listener and host_listener[0][1] in published_ports("kafka")


def test_redis_url_is_the_redis_service() -> None:
    url = urlsplit(worker_settings().redis_url)
    assert url.scheme == "redis"
    assert url.hostname == "redis" and url.hostname in compose()["services"]
    command = service("redis").get("command", [])
    args = shlex.split(command) if isinstance(command, str) else [str(a) for a in command]
    listens = int(args[args.index("--port") + 1]) if "--port" in args else 6379
    assert (url.port or 6379) == listens
    assert listens in container_ports("redis")
    assert args[args.index("--appendonly") + 1] == "yes"


def test_kafka_init_creates_the_settings_topics() -> None:
    settings = worker_settings()
    commands = init_topic_commands()
    created = [option(args, "--topic") for args in commands]
    assert sorted(created) == sorted(Settings().topics.values())
    assert sorted(created) == sorted(settings.topics.values())
    host, port = internal_kafka_address()
    for args in commands:
        assert "--if-not-exists" in args
        assert int(option(args, "--partitions")) == settings.topic_partitions
        assert option(args, "--bootstrap-server") == f"{host}:{port}"
    kafka = env_of("kafka")
    assert int(kafka["KAFKA_NUM_PARTITIONS"]) == settings.topic_partitions
    assert kafka["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_prometheus_alerts_to_alertmanager() -> None:
    targets = [
        t
        for am in prometheus_config()["alerting"]["alertmanagers"]
        for sc in am["static_configs"]
        for t in sc["targets"]
    ]
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host in compose()["services"]
        assert int(port) in container_ports(host)
    config = yaml.safe_load((INFRA / "alertmanager" / "alertmanager.yml").read_text())
    receivers = {r["name"] for r in config["receivers"]}
    assert config["route"]["receiver"] in receivers
    assert "alertname" in config["route"]["group_by"]


# -- rules and dashboards parse and name real metrics --------------------------
def test_rule_files_parse() -> None:
    mounts = bind_mounts("prometheus")
    assert host_path(mounts, "/etc/prometheus/prometheus.yml") == PROMETHEUS.resolve()
    files: list[str] = []
    for pattern in prometheus_config()["rule_files"]:
        local = host_path(mounts, pattern)
        assert local is not None, f"rule_files {pattern} is not mounted into the container"
        files.extend(glob.glob(str(local)))
    assert files, "no rule files match rule_files"
    alerts = []
    for path in files:
        for group in yaml.safe_load(Path(path).read_text())["groups"]:
            assert group["name"] and group["rules"]
            for rule in group["rules"]:
                assert rule["expr"]
                if "alert" in rule:
                    alerts.append(rule["alert"])
                    assert rule["labels"]["severity"]
                    assert rule["annotations"]["summary"] and rule["annotations"]["runbook_url"]
    assert "StreamingWorkerDown" in alerts


def test_promql_metric_names_helper() -> None:
    expr = 'histogram_quantile(0.99, sum by (le, stage) (rate(x_bucket{job="a", le!="b"}[1m] offset 5m))) / y'
    assert promql_metric_names(expr) == {"x_bucket", "y"}
    assert "streaming_events_total" in exposed_metric_names()
    assert "streaming_e2e_latency_seconds_bucket" in exposed_metric_names()


def test_dashboard_metrics_exist() -> None:
    exprs = dashboard_exprs()
    assert exprs, "the dashboards have no queries"
    known = exposed_metric_names()
    used: set[str] = set()
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        for name in names:
            assert name.startswith("streaming_"), f"{name} in {expr!r}"
            assert name in known, f"{name} in {expr!r} is not defined in {METRICS_SOURCE.name}"
        used |= names
    for needed in (
        "streaming_events_total",
        "streaming_e2e_latency_seconds_bucket",
        "streaming_stage_seconds_bucket",
        "streaming_batch_size_bucket",
        "streaming_feature_store_errors_total",
        "streaming_online_metric",
        "streaming_drift_state",
        "streaming_retrain_requests_total",
    ):
        assert needed in used, f"no panel shows {needed}"


def test_grafana_provisioning_matches_the_mounts() -> None:
    mounts = bind_mounts("grafana")
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    url = urlsplit(datasource["url"])
    assert url.hostname == "prometheus" and url.port in container_ports("prometheus")
    assert datasource["isDefault"] is True
    (provider,) = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "dashboards.yml").read_text())["providers"]
    assert host_path(mounts, provider["options"]["path"]) == DASHBOARDS.resolve()
    assert host_path(mounts, "/etc/grafana/provisioning") == (GRAFANA / "provisioning").resolve()
    for path in DASHBOARDS.glob("*.json"):
        panels = json.loads(path.read_text())["panels"]
        sources = [p["datasource"] for p in panels] + [t["datasource"] for p in panels for t in p.get("targets", [])]
        uids = {s["uid"] for s in sources if isinstance(s, dict) and "uid" in s}
        assert uids <= {datasource["uid"]}, f"{path.name} uses datasources {uids}"
    env = env_of("grafana")
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
