"""The alert rules and where their alerts go, checked by the real tools.

promtool checks and unit-tests the rules; a real Prometheus, started as compose starts it, renders the
runbook links (absolute, from an external label set through the environment); amtool checks the
Alertmanager configuration and its routes. Every alert has a firing test, a runbook section and queries
that name real metrics.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

from streaming.infra.processes import free_port
from streaming.settings import project_root
from tests.infra.test_compose import command_of, prometheus_config, resolved_env
from tests.infra.test_grafana import check_query, promql_output_labels, template_labels

ROOT = project_root()
RULES = ROOT / "infra" / "prometheus" / "rules" / "streaming.yml"
TESTS = ROOT / "infra" / "prometheus" / "tests" / "streaming_test.yml"
ALERTMANAGER = ROOT / "infra" / "alertmanager" / "alertmanager.yml"
OPERATIONS = ROOT / "docs" / "operations.md"
RUNBOOK = "{{ $externalLabels.runbook_base }}/operations.md#"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs it (Debian package prometheus)"
    return path


def amtool() -> str:
    path = shutil.which("amtool")
    assert path, "amtool is missing: `make test` installs it (Debian package prometheus-alertmanager)"
    return path


def alerts() -> list[dict[str, Any]]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def github_anchor(heading: str) -> str:
    """The anchor GitHub (and most Markdown renderers) give a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def doc_anchors(path: Path) -> set[str]:
    return {github_anchor(h) for h in re.findall(r"^#{1,6} (.+)$", path.read_text(), flags=re.M)}


def runbook_base() -> str:
    """The runbook base URL as the compose stack sets it (external label, expanded from the environment)."""
    base = str(prometheus_config()["global"]["external_labels"]["runbook_base"])
    env = resolved_env("prometheus")
    return re.sub(r"\$\{(\w+)\}", lambda m: env.get(m.group(1), ""), base)


# -- promtool ----------------------------------------------------------------------
def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_checks_the_config() -> None:
    done = subprocess.run([promtool(), "check", "config", "--syntax-only",
                           str(ROOT / "infra" / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run([promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


# -- every alert: tested, documented, real metrics -------------------------------------------
def test_every_alert_is_tested_firing_and_has_a_runbook() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    anchors = doc_anchors(OPERATIONS)
    names = [a["alert"] for a in alerts()]
    assert len(names) >= 10
    assert len(names) == len(set(names))
    for a in alerts():
        name = a["alert"]
        assert name in fired, f"{name} has no promtool test in which it fires"
        url = a["annotations"]["runbook_url"]
        assert url == RUNBOOK + name.lower(), f"{name}: runbook_url {url!r}"
        assert url.rpartition("#")[2] in anchors, f"{name} has no runbook section in docs/operations.md"
        assert a["labels"]["severity"] in ("page", "ticket", "info")


def test_runbook_urls_are_absolute() -> None:
    base = runbook_base()
    assert not base.endswith("/"), f"runbook_base {base!r}: no trailing slash (the rules add /operations.md)"
    for a in alerts():
        url = urlsplit(a["annotations"]["runbook_url"].replace("{{ $externalLabels.runbook_base }}", base))
        assert url.scheme in ("http", "https") and url.netloc, f"{a['alert']}: {url.geturl()!r} is not absolute"
        assert url.path.endswith("/operations.md") and url.fragment in doc_anchors(OPERATIONS)


def test_rule_queries_name_real_metrics_and_labels() -> None:
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    problems = []
    for rule in rules:
        name = rule.get("alert") or rule["record"]
        problems += [f"{name}: {p}" for p in check_query(rule["expr"])]
        if "alert" in rule:
            labels = promql_output_labels(rule["expr"]) | set(rule.get("labels", {})) | {"alertname"}
            for key, text in rule.get("annotations", {}).items():
                missing = template_labels(text, "labels") - labels
                if missing:
                    problems.append(f"{name}: annotation {key} uses $labels {sorted(missing)}, which the alert lacks")
    assert not problems, "\n".join(problems)


# -- a real Prometheus renders the runbook links ------------------------------------------------
def _get(url: str) -> Any:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read()) if resp.headers.get_content_type() == "application/json" else resp.status
    except (urllib.error.URLError, OSError, ValueError):
        return None


def test_a_real_prometheus_renders_absolute_runbook_urls(tmp_path: Path) -> None:
    """Prometheus started with compose's flags and prometheus.yml's external_labels, RUNBOOK_BASE_URL in its
    environment: StreamingWorkerDown (its worker target refuses connections) fires with an absolute runbook_url.

    (The rule unit tests cannot show this: Debian's promtool 2.42 has no external_labels in test files.)"""
    binary = shutil.which("prometheus")
    assert binary, "prometheus is missing: `make test` installs it (Debian package prometheus)"
    base = "https://runbooks.test/streaming/docs"
    env = resolved_env("prometheus", {"RUNBOOK_BASE_URL": base})
    assert env["RUNBOOK_BASE_URL"] == base
    config = prometheus_config()
    (tmp_path / "rules.yml").write_text(re.sub(r"for: \d+[smh]", "for: 0s", RULES.read_text()))
    port, dead = free_port(), free_port()
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {**config["global"], "scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [{"job_name": "streaming-worker", "static_configs": [{"targets": [f"127.0.0.1:{dead}"]}]}],
    }))
    flags = [f for f in command_of("prometheus") if not f.startswith(("--config.file", "--storage.tsdb.path"))]
    assert "--enable-feature=expand-external-labels" in flags
    argv = [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}", *flags]
    log = (tmp_path / "prometheus.log").open("w")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env={"PATH": "/usr/bin:/bin", **env})
    try:
        def firing() -> list[dict[str, Any]]:
            body = _get(f"http://127.0.0.1:{port}/api/v1/alerts") or {}
            return [a for a in body.get("data", {}).get("alerts", [])
                    if a["labels"]["alertname"] == "StreamingWorkerDown" and a["state"] == "firing"]

        deadline = time.monotonic() + 60
        got = firing()
        while not got and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            got = firing()
        assert got, (tmp_path / "prometheus.log").read_text()[-3000:]
        assert got[0]["annotations"]["runbook_url"] == f"{base}/operations.md#streamingworkerdown"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# -- Alertmanager -------------------------------------------------------------------------------
def _uncommented_examples(text: str) -> str:
    """The configuration with its commented examples (``# key: ...`` lines) turned on."""
    return re.sub(r"^(\s*)# ?(\s*(?:- )?[a-z_]+:.*)$", r"\1\2", text, flags=re.M)


def test_amtool_checks_the_alertmanager_config() -> None:
    done = subprocess.run([amtool(), "check-config", str(ALERTMANAGER)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_the_commented_receiver_examples_are_valid(tmp_path: Path) -> None:
    text = _uncommented_examples(ALERTMANAGER.read_text())
    config = yaml.safe_load(text)
    kinds = {key for r in config["receivers"] for key in r if key.endswith("_configs")}
    assert {"webhook_configs", "slack_configs", "email_configs"} <= kinds, kinds
    (tmp_path / "alertmanager.yml").write_text(text)
    done = subprocess.run([amtool(), "check-config", str(tmp_path / "alertmanager.yml")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("severity", ["page", "ticket", "info"])
def test_each_severity_reaches_a_receiver(severity: str) -> None:
    """Pages and tickets go to a receiver with an integration; info stays in the UI."""
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    names = [a["alert"] for a in alerts() if a["labels"]["severity"] == severity]
    assert names, f"no alert has severity {severity}"
    for name in names:
        done = subprocess.run([amtool(), "config", "routes", "test", f"--config.file={ALERTMANAGER}",
                               f"alertname={name}", f"severity={severity}"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        (receiver,) = done.stdout.split()
        integrations = [k for k in receivers[receiver] if k.endswith("_configs")]
        if severity == "info":
            assert receiver == config["route"]["receiver"]
        else:
            assert integrations, f"{name} ({severity}) goes to {receiver}, which notifies nobody"
    if severity == "page":
        (route,) = [r for r in config["route"]["routes"] if r["receiver"] == "oncall"]
        assert any(h.get("send_resolved") for h in receivers["oncall"]["webhook_configs"])
        assert route["repeat_interval"]


def test_inhibitions_name_real_alerts() -> None:
    names = {a["alert"] for a in alerts()}
    for rule in yaml.safe_load(ALERTMANAGER.read_text()).get("inhibit_rules", []):
        for matcher in rule["source_matchers"] + rule["target_matchers"]:
            m = re.fullmatch(r'alertname(=~|=)"([^"]*)"', matcher)
            assert m, matcher
            pattern = m.group(2) if m.group(1) == "=~" else re.escape(m.group(2))
            assert any(re.fullmatch(pattern, n) for n in names), f"{matcher} matches no alert"


def test_the_severity_table_in_the_docs_matches_the_rules() -> None:
    """docs/operations.md, "Alerting": the alerts listed per severity are the rules' (names without "Streaming")."""
    rows = re.findall(r"^\| `(page|ticket|info)` \| ([^|]+) \|", OPERATIONS.read_text(), flags=re.M)
    assert {severity for severity, _ in rows} == {"page", "ticket", "info"}
    for severity, listed in rows:
        documented = {"Streaming" + n.strip() for n in listed.split(",")}
        actual = {a["alert"] for a in alerts() if a["labels"]["severity"] == severity}
        assert documented == actual, f"{severity}: the docs list {sorted(documented)}, the rules {sorted(actual)}"
