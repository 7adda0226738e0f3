"""The alert rules, checked and unit-tested by the real promtool; every alert has a test and a runbook."""

from __future__ import annotations

import re
import shutil
import subprocess

import yaml

from streaming.settings import project_root

ROOT = project_root()
RULES = ROOT / "infra" / "prometheus" / "rules" / "streaming.yml"
TESTS = ROOT / "infra" / "prometheus" / "tests" / "streaming_test.yml"


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs it (Debian package prometheus)"
    return path


def alerts() -> list[dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r for g in groups for r in g["rules"] if "alert" in r]


def test_promtool_checks_the_rules() -> None:
    done = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_promtool_unit_tests_pass() -> None:
    done = subprocess.run([promtool(), "test", "rules", str(TESTS)], capture_output=True, text=True, timeout=120,
                          cwd=TESTS.parent)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


def test_every_alert_is_tested_firing_and_has_a_runbook() -> None:
    tests = yaml.safe_load(TESTS.read_text())["tests"]
    fired = {case["alertname"] for t in tests for case in t.get("alert_rule_test", []) if case["exp_alerts"]}
    ops = (ROOT / "docs" / "operations.md").read_text()
    anchors = {re.sub(r"[^a-z0-9]", "", h.lower()) for h in re.findall(r"^### (.+)$", ops, flags=re.M)}
    names = [a["alert"] for a in alerts()]
    assert len(names) >= 10
    for name in names:
        assert name in fired, f"{name} has no promtool test in which it fires"
        assert name.lower() in anchors, f"{name} has no runbook section in docs/operations.md"
    for a in alerts():
        assert a["annotations"]["runbook_url"] == f"docs/operations.md#{a['alert'].lower()}"
        assert a["labels"]["severity"] in ("page", "ticket", "info")
