"""The Grafana dashboard and its provisioning: every query names metrics (and labels) the worker really exposes.

The metric names come from the worker's own prometheus_client registry (``Metrics().registry``: what
``/metrics`` serves), with the sample suffixes prometheus_client writes (``_total``, ``_created``,
``_bucket``, ``_count``, ``_sum``), not from a list kept by hand. The PromQL helpers here are used by
tests/infra/test_alert_rules.py for the alert rules too.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml
from prometheus_client.metrics import MetricWrapperBase

from streaming.observability.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
GRAFANA = INFRA / "grafana"
DASHBOARDS = GRAFANA / "dashboards"
RULES_DIR = INFRA / "prometheus" / "rules"
COMPOSE = INFRA / "docker-compose.yml"

#: series Prometheus writes itself for every scrape target, and the labels every scraped series gets
SYNTHETIC = {
    "up": set(),
    "scrape_duration_seconds": set(),
    "scrape_samples_scraped": set(),
    "scrape_samples_post_metric_relabeling": set(),
    "scrape_series_added": set(),
    "ALERTS": {"alertname", "alertstate", "severity"},
}
TARGET_LABELS = {"job", "instance"}
# words of PromQL that look like names: binary and set operators, modifiers, literals
PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "start", "end"}
_GROUPING = r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)"


# -- the metrics the worker exposes ---------------------------------------------
@cache
def exposed_metrics() -> dict[str, frozenset[str]]:
    """Sample name -> its label names, as the worker's registry writes them (a child of each labelled metric
    is made for the read and removed afterwards)."""
    metrics = Metrics()
    wrappers = [m for m in vars(metrics).values() if isinstance(m, MetricWrapperBase)]
    made = []
    for m in wrappers:
        names = tuple(getattr(m, "_labelnames", ()))
        if names:
            m.labels(*["x"] * len(names))
            made.append((m, names))
    try:
        out: dict[str, set[str]] = {}
        for family in metrics.registry.collect():
            for sample in family.samples:
                out.setdefault(sample.name, set()).update(sample.labels)
    finally:
        for m, names in made:
            m.remove(*["x"] * len(names))
    return {name: frozenset(labels) for name, labels in out.items()}


def rule_files() -> list[Path]:
    return sorted(RULES_DIR.glob("*.yml"))


def rules() -> Iterator[dict[str, Any]]:
    for path in rule_files():
        for group in yaml.safe_load(path.read_text())["groups"]:
            yield from group["rules"]


@cache
def known_series() -> dict[str, frozenset[str]]:
    """What a query may name: the worker's samples, Prometheus's own per-target series, and the recording
    rules (with the labels of the series they are computed from, an upper bound)."""
    known = {**exposed_metrics()}
    known.update({name: frozenset(labels | TARGET_LABELS) for name, labels in SYNTHETIC.items()})
    for rule in rules():
        if "record" in rule:
            labels: set[str] = set()
            for name in promql_metric_names(rule["expr"]):
                labels |= known.get(name, frozenset())
            known[rule["record"]] = frozenset(labels)
    return known


# -- PromQL, lexically -------------------------------------------------------------
def _strip_strings(expr: str) -> str:
    return re.sub(r"\"(?:\\.|[^\"\\])*\"|'(?:\\.|[^'\\])*'|`[^`]*`", '""', expr)


def promql_metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression (a lexical reading, good for dashboard and alert queries):
    identifiers that are not functions (followed by "("), label names, keywords, durations or numbers."""
    expr = _strip_strings(expr)
    expr = re.sub(r"\{[^}]*\}", " ", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", " ", expr)  # ranges and subqueries
    expr = re.sub(_GROUPING, " ", expr)  # label lists
    expr = re.sub(r"\boffset\s+-?[\w.]+", " ", expr)
    tokens = re.findall(r"(?<![\w.:])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()", expr)
    return {t for t in tokens if t.lower() not in PROMQL_WORDS}


def promql_label_names(expr: str) -> set[str]:
    """Label names a PromQL expression uses: in matchers and in by/without/on/ignoring/group_* lists."""
    expr = _strip_strings(expr)
    used = set()
    for block in re.findall(r"\{([^}]*)\}", expr):
        used.update(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", block))
    for _, labels in re.findall(_GROUPING, expr):
        used.update(label.strip() for label in labels.split(",") if label.strip())
    return used - {"__name__"}


def promql_output_labels(expr: str) -> set[str]:
    """The labels a query's result can carry: its by-lists when it aggregates by some, else its series' labels."""
    grouped = [labels for word, labels in re.findall(_GROUPING, _strip_strings(expr)) if word == "by"]
    if grouped:
        return {label.strip() for labels in grouped for label in labels.split(",") if label.strip()}
    out: set[str] = set()
    for name in promql_metric_names(expr):
        out |= known_series().get(name, frozenset())
    return out | TARGET_LABELS


def check_query(expr: str) -> list[str]:
    """What is wrong with a query: names no series defines, labels none of its series has."""
    problems = []
    names = promql_metric_names(expr)
    if not names:
        problems.append(f"no metric in {expr!r}")
    available: set[str] = set(TARGET_LABELS)
    for name in sorted(names):
        if name not in known_series():
            problems.append(f"{name} in {expr!r} is not a metric the worker exposes (streaming/observability/metrics.py)")
        else:
            available |= known_series()[name]
    for label in sorted(promql_label_names(expr) - available):
        problems.append(f"label {label!r} in {expr!r} is on none of {sorted(names)}")
    return problems


def template_labels(text: str, variable: str) -> set[str]:
    """``{{label}}`` (Grafana legends) or ``{{ $labels.label }}`` (alert annotations) in a template."""
    if variable:
        return set(re.findall(r"\{\{[^}]*\$" + variable + r"\.(\w+)", text))
    return set(re.findall(r"\{\{\s*(\w+)\s*\}\}", text))


# -- the dashboards ------------------------------------------------------------------
def dashboards() -> dict[Path, dict[str, Any]]:
    return {path: json.loads(path.read_text()) for path in sorted(DASHBOARDS.glob("*.json"))}


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    out, todo = [], list(dashboard["panels"])
    while todo:
        panel = todo.pop(0)
        todo.extend(panel.get("panels", []))  # rows
        out.append(panel)
    return out


def queries() -> list[tuple[str, dict[str, Any]]]:
    """(panel title, target) for every PromQL target of every dashboard."""
    return [(p["title"], t) for d in dashboards().values() for p in panels(d) for t in p.get("targets", [])
            if t.get("expr")]


def compose_service(name: str) -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())["services"][name]


# -- tests -----------------------------------------------------------------------------
def test_the_helpers_read_promql_and_the_registry() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, stage) (rate(x_bucket{job="a", le!="b"}[1m] offset 5m))) / y'
            ' and on (stage) z > bool 1e-9')
    assert promql_metric_names(expr) == {"x_bucket", "y", "z"}
    assert promql_label_names(expr) == {"le", "stage", "job"}
    assert promql_output_labels("sum by (topic) (a) / sum by (topic) (b)") == {"topic"}
    assert template_labels("{{model}} {{ version }} on {{instance}}", "") == {"model", "version", "instance"}
    assert template_labels("worker {{ $labels.instance }} ({{ $value }})", "labels") == {"instance"}
    known = exposed_metrics()
    # counters with _total and _created, histograms with their three series, le on the buckets
    assert {"streaming_events_total", "streaming_events_created"} <= set(known)
    assert known["streaming_events_total"] == {"outcome"}
    assert {f"streaming_stage_seconds{s}" for s in ("_bucket", "_count", "_sum")} <= set(known)
    assert known["streaming_stage_seconds_bucket"] == {"stage", "le"}
    assert known["streaming_model_info"] == {"model", "version", "provider"}
    assert "streaming_kafka_requests_total" in known
    assert "streaming_events" not in known  # a counter is exposed only with its suffixes
    assert check_query("sum by (bogus) (rate(streaming_events_total[1m]))")
    assert check_query("rate(streaming_nope_total[1m])")


def test_every_panel_queries_real_metrics_and_labels() -> None:
    found = queries()
    assert found, "the dashboards have no queries"
    problems = []
    for title, target in found:
        problems += [f"{title}: {p}" for p in check_query(target["expr"])]
        legend = template_labels(target.get("legendFormat", ""), "")
        missing = legend - promql_output_labels(target["expr"])
        if missing:
            problems.append(f"{title}: legend {target['legendFormat']!r} names {sorted(missing)}, "
                            f"which {target['expr']!r} does not return")
    assert not problems, "\n".join(problems)


def test_the_operational_signals_have_panels() -> None:
    used: dict[str, list[dict[str, Any]]] = {}
    for _, target in queries():
        for name in promql_metric_names(target["expr"]):
            used.setdefault(name, []).append(target)
    for needed in (
        "streaming_events_total",
        "streaming_e2e_latency_seconds_bucket",
        "streaming_stage_seconds_bucket",
        "streaming_batch_size_bucket",
        "streaming_consumer_lag_messages",  # consumer lag
        "streaming_consumer_committed_lag_messages",
        "streaming_deadletter_total",  # dead letters
        "streaming_fallback_predictions_total",  # fallback
        "streaming_event_loop_lag_seconds",  # event-loop lag
        "streaming_model_info",  # the model version serving
        "streaming_model_refused_total",
        "streaming_feature_store_errors_total",
        "streaming_online_metric",
        "streaming_drift_state",
        "streaming_retrain_requests_total",
        "up",
    ):
        assert needed in used, f"no panel shows {needed}"
    # the model panel shows the version (a label of streaming_model_info, its value is always 1)
    assert any("version" in template_labels(t.get("legendFormat", ""), "") for t in used["streaming_model_info"])


def test_panels_are_well_formed() -> None:
    (datasource,) = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())[
        "datasources"
    ]
    for path, dashboard in dashboards().items():
        assert dashboard["uid"] and dashboard["title"]
        ps = panels(dashboard)
        ids = [p["id"] for p in ps]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        cells: dict[tuple[int, int], str] = {}
        for p in ps:
            assert p.get("title"), f"{path.name}: panel {p['id']} has no title"
            g = p["gridPos"]
            assert 0 <= g["x"] and g["x"] + g["w"] <= 24, f"{p['title']} is wider than the grid"
            for x in range(g["x"], g["x"] + g["w"]):
                for y in range(g["y"], g["y"] + g["h"]):
                    assert (x, y) not in cells, f"{p['title']} overlaps {cells[(x, y)]}"
                    cells[(x, y)] = p["title"]
            sources = [p.get("datasource")] + [t.get("datasource") for t in p.get("targets", [])]
            uids = {s["uid"] for s in sources if isinstance(s, dict) and "uid" in s}
            assert uids <= {datasource["uid"]}, f"{path.name}: {p['title']} uses datasources {uids}"
            refs = [t["refId"] for t in p.get("targets", [])]
            assert len(refs) == len(set(refs)), f"{p['title']}: duplicate refIds"


def test_provisioning_matches_the_compose_mounts() -> None:
    from tests.infra.test_compose import bind_mounts, container_ports, host_path

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


def test_grafana_is_not_open_to_anonymous_users() -> None:
    from tests.infra.test_compose import env_of, interpolate

    env = env_of("grafana")
    assert env.get("GF_AUTH_ANONYMOUS_ENABLED", "false") == "false", "anonymous access is on"
    assert "GF_AUTH_ANONYMOUS_ORG_ROLE" not in env
    assert env["GF_USERS_ALLOW_SIGN_UP"] == "false"
    # the admin password is the operator's (an environment variable, infra/.env), with a default to change
    password = env["GF_SECURITY_ADMIN_PASSWORD"]
    match = re.fullmatch(r"\$\{(\w+):-([^}]*)\}", password)
    assert match, f"GF_SECURITY_ADMIN_PASSWORD={password!r} is not taken from the environment"
    var = match.group(1)
    assert interpolate(password, {var: "s3cret"}) == "s3cret"
    ops = (ROOT / "docs" / "operations.md").read_text()
    assert var in ops, f"docs/operations.md does not say to set {var}"


def test_every_panel_is_in_the_docs() -> None:
    """docs/operations.md, "Grafana", has a row per panel."""
    ops = (ROOT / "docs" / "operations.md").read_text()
    section = ops[ops.index("\n## Grafana"):]
    section = section[:section.index("\n## ", 1)]
    documented = set(re.findall(r"^\| ([^|`]+?) \| `", section, flags=re.M))
    titles = {p["title"] for d in dashboards().values() for p in panels(d)}
    assert titles == documented, f"not documented: {sorted(titles - documented)}; gone: {sorted(documented - titles)}"
