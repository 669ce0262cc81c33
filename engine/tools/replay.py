"""``vigil replay``: a deterministic event-time backtest through the live kernels.

Readings (``engine.tools.replay_input``: a CSV file or standard input, streamed and sorted in
bounded memory) are fed stably sorted by event time, in batches, to the same
``PartitionProcessor`` the live engine runs, with no lateness. The result does not
depend on batch size or machine.

At the end of the input every open window is closed, as if time had moved on (a level
the last readings left is stepped down or kept as they say). Silence is not: a gauge is
silent only when the input's own event time has run ``stale`` past its last reading,
as a live gateway judges it from the same readings. Past the last reading nothing is
known, and a replay that raised "no reading since" for every gauge at the end of its
file would answer wrong in silence (the live gateway raises those from its wall clock,
which a replay does not have).

``coverage(pairs, ruleset, stations)`` says which readings no rule read (a station id
that lost its leading zero in a spreadsheet, a misspelt metric), so that a replay never
reports "0 alerts" for readings it ignored without saying so.
"""

from __future__ import annotations

import difflib
from collections import Counter
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from engine.contracts.alerts import AlertEvent
from engine.contracts.ruleset import RuleSet
from engine.evaluation.corroboration import Corroborator
from engine.evaluation.derive.aqi import POLLUTANTS, AqiDeriver
from engine.evaluation.kernels.windows import END_OF_INPUT
from engine.evaluation.processor import PartitionProcessor
from engine.tools.replay_input import Progress, Reading, SortedReadings

__all__ = [
    "AlertDiff",
    "MetricRow",
    "computed_values",
    "coverage",
    "diff_alerts",
    "readers_of",
    "replay",
]

END_OF_TIME = END_OF_INPUT  # the flush: every window closes
SHOWN = 10  # unread station/metric pairs listed before "... and N more"


def _sorted(readings: Sequence[Reading] | SortedReadings) -> SortedReadings:
    return readings if isinstance(readings, SortedReadings) else SortedReadings.of(readings)


def replay(
    ruleset: RuleSet,
    readings: Sequence[Reading] | SortedReadings,
    batch_size: int = 10_000,
    *,
    flush: bool = True,
    progress: Progress | None = None,
) -> list[AlertEvent]:
    """The alert events the engine would have sent for ``readings``.

    With ``flush`` the windows still open after the last reading are closed, as if time
    had moved on (never raising silence past the last reading, see the module); without
    it the result is what a live engine has sent by then.
    """
    ordered = _sorted(readings)
    proc = PartitionProcessor(ruleset, lateness_ms=0)
    events: list[AlertEvent] = []
    done = 0
    if progress is not None:
        progress.start("evaluating", len(ordered), "readings")
    for offset, batch in enumerate(ordered.batches(batch_size)):
        events.extend(proc.process(batch, offset))
        done += len(batch)
        if progress is not None:
            progress.update(done, done)
    if progress is not None:
        progress.done()
    if flush:
        events += [e for e in proc.close_windows(END_OF_TIME) if not e.rule_id.endswith("#silent")]
    if ruleset.corroboration:
        corroborator = Corroborator(ruleset.corroboration)
        events += corroborator.run(events)  # in event time, as the live stage takes them
    return events


def readers_of(ruleset: RuleSet) -> dict[str, set[str]]:
    """Station -> the metrics some rule, derivation or AQI reads there."""
    out: dict[str, set[str]] = {}
    for rule in ruleset.rules:
        for station in rule.stations:
            out.setdefault(station, set()).add(rule.metric)
            if rule.metric == AqiDeriver.metric:
                out[station].update(POLLUTANTS)
    for derived in ruleset.derived:
        for station in derived.stations:
            out.setdefault(station, set()).add(derived.source)
        for station in derived.against_stations:
            if derived.against is not None:
                out.setdefault(station, set()).add(derived.against)
    for compound in ruleset.compound:
        for station in compound.stations:
            out.setdefault(station, set()).update(c.metric for c in compound.conditions)
    return out


def coverage(
    pairs: Counter[tuple[str, str]], ruleset: RuleSet, stations: Collection[str]
) -> tuple[list[str], int]:
    """Warnings for the readings no rule read, by (station, metric), most first, and
    how many readings that is.

    ``pairs``: readings per (station, metric); ``stations``: the registry's ids, for
    the likely match of an unknown id (``8211520`` -> ``08211520``: a spreadsheet drops
    leading zeros) and the reason a known one was not read.
    """
    readers = readers_of(ruleset)
    unread = [(n, s, m) for (s, m), n in pairs.items() if m not in readers.get(s, ())]
    unread.sort(key=lambda t: (-t[0], t[1], t[2]))
    lines = [_why_unread(n, s, m, readers, stations) for n, s, m in unread[:SHOWN]]
    if len(unread) > SHOWN:
        rest = sum(n for n, _, _ in unread[SHOWN:])
        lines.append(f"... and {len(unread) - SHOWN} more station/metric pairs ({rest} readings)")
    return lines, sum(n for n, _, _ in unread)


def _why_unread(
    n: int, station: str, metric: str, readers: dict[str, set[str]], stations: Collection[str]
) -> str:
    head = f"{n} reading{'s' if n != 1 else ''} of {station!r} {metric!r} read by no rule"
    if station not in stations:
        return f"{head}: no station {station!r} in the registry{_likely_station(station, stations)}"
    reads = sorted(readers.get(station, ()))
    if not reads:
        return f"{head}: no rule selects station {station!r}"
    close = difflib.get_close_matches(metric, reads, n=1, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(reads[:8]) + (", ..." if len(reads) > 8 else "")
    return f"{head}: the rules read {shown} at {station!r}{hint}"


def _likely_station(station: str, stations: Collection[str]) -> str:
    zeros = [s for s in stations if s.lstrip("0") == station.lstrip("0") and s != station]
    close = zeros or difflib.get_close_matches(station, list(stations), n=1, cutoff=0.75)
    return f" (did you mean {close[0]!r}?)" if close else ""


@dataclass(frozen=True)
class MetricRow:
    """One computed value: a closed window's aggregate, or a derived metric's value."""

    source: str  # the rule id, or "derive.aqi"
    station: str
    metric: str
    kind: str  # the window aggregate, or "hourly" for derived AQI
    ts: int  # ms: the window's end, or the derived value's hour
    value: float
    #: e.g. the primary pollutant(s) of an AQI, and ``; incomplete: no pm10_24h`` when
    #: an input of its method was missing (``engine.evaluation.derive.aqi.AqiHour.detail``)
    detail: str = ""


def computed_values(
    ruleset: RuleSet, readings: Sequence[Reading] | SortedReadings, batch_size: int = 10_000
) -> list[MetricRow]:
    """Every closed window's aggregate and every derived value over ``readings``.

    Computed by the window chain (a shadow of ``replay``; the early-firing runner keeps
    no per-window output), with the same derivations the live engine makes.
    """
    from engine.evaluation.runners.windowed import WindowedRunner

    proc = PartitionProcessor(ruleset, lateness_ms=0, early_firing=False)
    runners: dict[str, WindowedRunner] = {}
    for rule in ruleset.rules:
        runner = proc.runner(rule.rule_id)
        assert isinstance(runner, WindowedRunner)
        runner.closed = []
        runners[rule.rule_id] = runner
    if proc.aqi is not None:
        proc.aqi.record = []
    for offset, batch in enumerate(_sorted(readings).batches(batch_size)):
        proc.process(batch, offset)
    proc.close_windows(END_OF_TIME)
    rows: list[MetricRow] = []
    for rid, runner in runners.items():
        rule = runner.rule
        for sensor, end, value in runner.closed or ():
            station = runner.sensors.stations[sensor]
            rows.append(MetricRow(rid, station, rule.metric, rule.aggregate, end, value))
    for hour in (proc.aqi.record or []) if proc.aqi is not None else []:
        rows.append(
            MetricRow("derive.aqi", hour.station, "aqi", "hourly", hour.hour, hour.aqi,
                      hour.detail)
        )  # fmt: skip
    rows.sort(key=lambda r: (r.ts, r.source, r.station))
    return rows


@dataclass(frozen=True)
class AlertDiff:
    """How a rule change alters the alerts over the same readings."""

    added: list[AlertEvent]
    removed: list[AlertEvent]
    moved: list[tuple[AlertEvent, AlertEvent]]  # (old, new): same transition, other time
    unchanged: int

    @property
    def changed(self) -> bool:
        return bool(self.added or self.removed or self.moved)


def diff_alerts(old: Sequence[AlertEvent], new: Sequence[AlertEvent]) -> AlertDiff:
    """Pair transitions by (rule, station, metric, from, to) in time order; each list of
    the result is in time order (``moved`` by the old time), whatever the rules' order."""

    def grouped(events: Sequence[AlertEvent]) -> dict[tuple[str, ...], list[AlertEvent]]:
        out: dict[tuple[str, ...], list[AlertEvent]] = {}
        for e in sorted(events, key=lambda e: e.at):
            key = (e.rule_id, e.station, e.metric, e.previous_level, e.level)
            out.setdefault(key, []).append(e)
        return out

    a, b = grouped(old), grouped(new)
    added: list[AlertEvent] = []
    removed: list[AlertEvent] = []
    moved: list[tuple[AlertEvent, AlertEvent]] = []
    unchanged = 0
    for key in sorted(a.keys() | b.keys()):
        olds, news = a.get(key, []), b.get(key, [])
        for o, n in zip(olds, news, strict=False):
            if o.at == n.at:
                unchanged += 1
            else:
                moved.append((o, n))
        removed.extend(olds[len(news) :])
        added.extend(news[len(olds) :])
    added.sort(key=lambda e: (e.at, e.rule_id, e.station))
    removed.sort(key=lambda e: (e.at, e.rule_id, e.station))
    moved.sort(key=lambda pair: (pair[0].at, pair[1].at, pair[0].rule_id, pair[0].station))
    return AlertDiff(added, removed, moved, unchanged)
