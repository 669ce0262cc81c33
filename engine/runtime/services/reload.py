"""What a reload changes, and what it says: the settings file re-read, with the settings
that can change at once applied and the others named in the log; the log line of a new
rule set, with the rules it added and removed.

The gateway (``engine.runtime.services.gateway``) reloads on SIGHUP and when the rule or
station files change; the rules themselves come through ``services.rules_source``.
"""

from __future__ import annotations

import logging
from collections.abc import Sized
from pathlib import Path
from typing import Any

from engine.contracts.ruleset import RuleSet
from engine.runtime.config import ConfigError, Settings, load_settings

__all__ = ["RELOADABLE", "log_rules_change", "reread_settings"]

log = logging.getLogger(__name__)

#: Settings that SIGHUP applies at once; a change to any other needs a restart.
RELOADABLE = ("rules", "stations", "retention_hours")


def reread_settings(current: Settings, path: Path) -> Settings:
    """``current`` with the reloadable settings of the file at ``path`` applied; other
    changed settings are named in the log. A file that does not validate is logged, one
    line per problem, and changes nothing."""
    try:
        new = load_settings(path)
    except ConfigError as exc:
        for line in str(exc).splitlines():
            log.error("settings reload rejected, the running settings stay: %s", line)
        return current
    changed = [k for k in Settings.model_fields if getattr(new, k) != getattr(current, k)]
    now = [k for k in changed if k in RELOADABLE]
    later = [k for k in changed if k not in RELOADABLE]
    updated = current
    if now:
        updated = current.model_copy(update={k: getattr(new, k) for k in now})
        log.warning("settings reloaded: %s", ", ".join(now))
    if later:
        log.warning("settings changed that apply at the next restart: %s", ", ".join(later))
    return updated


def log_rules_change(
    old: RuleSet, new: RuleSet, stations: Sized, old_stations: Sized | None
) -> None:
    """Say which rules a new rule set version added and removed, and the station count
    before and after; nothing when the version is the same."""
    if new.version == old.version:
        return
    ids = {r.rule_id for r in _all_rules(new)}
    before = {r.rule_id for r in _all_rules(old)}
    added, removed = sorted(ids - before), sorted(before - ids)
    log.warning(
        "rules reloaded: version %s -> %s, %d rules (added: %s; removed: %s), "
        "%d stations (were %d)",
        old.version,
        new.version,
        len(ids),
        ", ".join(added) or "none",
        ", ".join(removed) or "none",
        len(stations),
        len(old_stations or ()),
    )


def _all_rules(ruleset: RuleSet) -> list[Any]:
    return [*ruleset.rules, *ruleset.compound, *ruleset.derived, *ruleset.corroboration]
