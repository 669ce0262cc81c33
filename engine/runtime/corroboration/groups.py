"""The groups' state as the corroboration stage's tables hold it (their layout is
``engine.runtime.corroboration.wire``): read back into ``GroupState`` objects after a
rebalance (``read_states``), and a release's due events taken by a group, a late
event's recompute included (``GroupState.take_all``), as the group's alerts and the
tables' changes (``take_due``), written once those alerts are durable (``write``).

The stage (``engine.runtime.corroboration.stage``) owns the tables and the states; this
module holds no state of its own.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any, NamedTuple

from engine.contracts.alerts import AlertEvent, Level
from engine.contracts.ruleset import CorroborationRule
from engine.evaluation.corroboration import GroupState, Outcome, Taken, corroboration_event
from engine.runtime.corroboration.wire import (
    SEP,
    decode_firing,
    decode_taken,
    encode_firing,
    encode_taken,
)

__all__ = ["GroupTables", "Write", "read_states", "take_due", "write"]

log = logging.getLogger(__name__)

#: A table's entry to write: (table, key, before, after) (``write``); ``...`` as
#: ``before``: not known, written unless ``after`` is None and the key is absent.
Write = tuple[Any, str, object, object]


class GroupTables(NamedTuple):
    """The changelog-backed Faust tables of the groups' state (``wire.TABLES``)."""

    stations: Any  # ``rule\x1fgroup\x1fstation`` -> [entry ms or None, latest ms]
    firing: Any  # ``rule\x1fgroup`` -> the firing entry (``wire.encode_firing``)
    history: Any  # ``rule\x1fgroup\x1fstation\x1fat`` -> a taken transition


def read_states(tables: GroupTables, history_ms: int) -> dict[str, GroupState]:
    """Each group's state (by ``rule\\x1fgroup``), as the tables hold it."""
    entered: dict[str, dict[str, int]] = {}
    last: dict[str, dict[str, int]] = {}
    for skey, (entry, latest) in tables.stations.items():
        group_key, station = skey.rsplit(SEP, 1)
        last.setdefault(group_key, {})[station] = latest
        if entry is not None:
            entered.setdefault(group_key, {})[station] = entry
    firing = {k: decode_firing(v) for k, v in tables.firing.items()}
    history: dict[str, dict[tuple[int, str], Taken]] = {}
    for hkey, value in tables.history.items():
        rule_id, group, station, at = hkey.split(SEP)
        history.setdefault(f"{rule_id}{SEP}{group}", {})[int(at), station] = decode_taken(value)
    return {
        k: GroupState(
            entered.get(k), firing.get(k, (None, None))[0], last.get(k), history.get(k),
            history_ms=history_ms, told=firing.get(k, (None, None))[1],
        )
        for k in last.keys() | firing.keys() | history.keys()
    }  # fmt: skip


def take_due(
    tables: GroupTables,
    state: GroupState,
    rule: CorroborationRule,
    key: str,
    events: list[tuple[str, int, Level, str]],
    counters: Counter[str],
) -> tuple[list[AlertEvent], list[Write]]:
    """A group's due transitions, (station, at ms, level, metric) each, in event time,
    into its ``state`` (group ``key``: ``rule\\x1fgroup``): the group's alerts they raise,
    and the tables' changes that keep the tables in step with ``state``. What could not
    be done as a replay would is counted in ``counters`` and logged."""
    group = key.split(SEP, 1)[1]
    firing_before = encode_firing(state.firing_since, state.told)
    outcome = state.take_all(rule, [(s, at, level) for s, at, level, _ in events])
    metric = events[0][3]  # one source rule, one metric
    alerts = [corroboration_event(rule, group, metric, c) for c in outcome.raised]
    writes: list[Write] = []
    for station, before in outcome.stations.items():
        after = [state.entered.get(station), state.last.get(station)]
        writes.append((tables.stations, f"{key}{SEP}{station}", list(before), after))
    writes.append(
        (tables.firing, key, firing_before, encode_firing(state.firing_since, state.told))
    )
    for (at, station), taken in outcome.history.items():
        hkey = f"{key}{SEP}{station}{SEP}{at}"
        writes.append((tables.history, hkey, ..., None if taken is None else encode_taken(taken)))
    _count(counters, rule, group, outcome)
    return alerts, writes


def _count(counters: Counter[str], rule: CorroborationRule, group: str, outcome: Outcome) -> None:
    """Count and log what ``take_all`` could not do as a replay would."""
    counters["corroboration_revised_events"] += outcome.revised
    if outcome.too_old:
        counters["corroboration_too_old_events"] += outcome.too_old
        log.warning(
            "corroboration: %d event(s) of %s in %s older than its history "
            "(corroboration_history_s): taken in arrival order",
            outcome.too_old,
            rule.rule_id,
            group,
        )
    for change in outcome.withdrawn:
        counters["corroboration_withdrawn_alerts"] += 1
        log.warning(
            "corroboration: %s in %s sent %s at %d (started %d), which late events "
            "show did not happen; it cannot be taken back",
            rule.rule_id,
            group,
            "a raise" if change.firing else "an all-clear",
            change.at,
            change.since,
        )


def write(writes: list[Write]) -> None:
    """Write each changed entry to its table (a changelog record); None deletes it."""
    for table, key, before, after in writes:
        if after != before:
            if after is None:
                if key in table:
                    del table[key]
            else:
                table[key] = after
