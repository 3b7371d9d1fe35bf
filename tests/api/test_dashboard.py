"""The Grafana dashboard and the alerting rules in deploy/ read metrics the service exposes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import yaml

from tests.api.conftest import MemberWithPoints

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
DOCS = Path(__file__).resolve().parents[2] / "docs"
METRIC = re.compile(r"\bloyalty_[a-z_]+\b")


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "loyalty-ledger.json").read_text())
    return [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]


def alert_rules() -> list[dict[str, str]]:
    rules: list[dict[str, str]] = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yaml").read_text())[
        "groups"
    ][0]["rules"]
    return rules


async def test_every_metric_of_the_dashboard_and_the_alerts_is_exposed(
    member_with_points: MemberWithPoints,
) -> None:
    api = member_with_points.api
    exposed = {
        line.split("{")[0].split(" ")[0]
        for line in (await api.client.get("/metrics")).text.splitlines()
        if line and not line.startswith("#")
    }
    expressions = dashboard_expressions() + [rule["expr"] for rule in alert_rules()]

    used = {name for expr in expressions for name in METRIC.findall(expr)}

    assert len(used) >= 15
    assert used <= exposed, used - exposed


def test_each_alert_is_explained_in_the_operations_guide() -> None:
    guide = (DOCS / "guides" / "operations.md").read_text()
    for rule in alert_rules():
        assert f"`{rule['alert']}`" in guide, rule["alert"]
        assert rule["labels"]["severity"] in ("page", "warning", "info")
