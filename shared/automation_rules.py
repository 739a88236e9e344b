"""Automation rules: alerts that pass a rule get an intervention, through the same desk a person uses.

Each rule turns one new alert into at most one `InterventionRequest`, acted as `system:automation`,
with the idempotency key `rule:<rule name>:<alert id>`: one alert, one action per rule, and a
replayed alert (the topic read again, the console restarted before committing offsets) acts no more.

- `SeverityRule`: an alert of this severity on this stream -> an action on its entity (default: high
  on transactions -> require extra authentication);
- `EntityBurstRule`: the alert that brings an entity to `alerts` alerts within `within_s` -> an action
  on it (default: 5 in an hour -> lock the account), unless that control is already in that state.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from shared.alert_inbox import entity_alert_count
from shared.console_store import ConsoleStore, StoreUnavailable
from shared.interventions import (
    SYSTEM_ACTOR,
    Action,
    InterventionDesk,
    InterventionRequest,
    Outcome,
    entity_controls,
)
from shared.logs import get_logger

log = get_logger("fleetwatch.console")

_CONTROL_STATE = {
    Action.LOCK_ACCOUNT: ("account", "locked"),
    Action.REQUIRE_STEP_UP: ("authentication", "step_up_required"),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class SeverityRule:
    name: str
    stream: str
    severity: str
    action: Action = Action.REQUIRE_STEP_UP

    def reason(self, alert: dict[str, Any], store: ConsoleStore) -> str | None:
        if alert["stream"] == self.stream and alert["severity"] == self.severity:
            return f"{self.severity}-severity {self.stream} alert (detectors {', '.join(alert['fired'])})"
        return None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntityBurstRule:
    name: str
    alerts: int
    within_s: float
    action: Action = Action.LOCK_ACCOUNT

    def __post_init__(self) -> None:
        if self.alerts < 1 or self.within_s <= 0:
            raise ValueError("an entity burst rule needs alerts >= 1 and within_s > 0")

    def reason(self, alert: dict[str, Any], store: ConsoleStore) -> str | None:
        if not alert["entity"]:
            return None
        control = _CONTROL_STATE.get(self.action)
        if control and entity_controls(store, alert["entity"]).get(control[0]) == control[1]:
            return None  # already in the state this rule would set
        since = (datetime.fromisoformat(alert["detected_at"]) - timedelta(seconds=self.within_s)).isoformat(
            timespec="milliseconds"
        )
        with store.transaction() as tx:
            count = entity_alert_count(tx, alert["entity"], since)
        if count >= self.alerts:
            return f"{count} alerts for {alert['entity']} within {self.within_s:.0f}s (rule: {self.alerts})"
        return None


AutomationRule = SeverityRule | EntityBurstRule


def run_rules(
    rules: list[AutomationRule], desk: InterventionDesk, store: ConsoleStore, alert: dict[str, Any]
) -> list[Outcome]:
    """Apply every rule the alert passes (an alert summary of `alert_inbox`: id, stream, severity, entity ...).
    A rule that fails is logged and the others still run; a store that does not answer stops them all (raised:
    the caller runs them again later)."""
    outcomes = []
    for rule in rules:
        try:
            outcome = _apply_rule(rule, desk, store, alert)
        except StoreUnavailable:
            raise
        except Exception:  # one rule's failure (a bug, a refused action) must not cost the other rules or alerts
            log.exception("automation rule failed on an alert", rule=rule.name, alert=alert["id"])
            continue
        if outcome is not None:
            outcomes.append(outcome)
    return outcomes


def _apply_rule(
    rule: AutomationRule, desk: InterventionDesk, store: ConsoleStore, alert: dict[str, Any]
) -> Outcome | None:
    reason = rule.reason(alert, store)
    if reason is None:
        return None
    target = alert["event_id"] if rule.action is Action.BLOCK_TRANSACTION else alert["entity"]
    if not target:
        return None
    return desk.apply(
        InterventionRequest(
            action=rule.action,
            target=target,
            reason=f"rule {rule.name}: {reason}",
            actor=SYSTEM_ACTOR,
            request_id=f"automation:{alert['id']}",
            alert_id=alert["id"],
            idempotency_key=f"rule:{rule.name}:{alert['id']}",
        )
    )
