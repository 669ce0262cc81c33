"""Realistic river-gauge traffic for the live-versus-replay differential harness.

``generate(spec, start_ms)`` returns the MQTT messages a fleet of river gauges with rain
gauges sends, in the order they arrive at the gateway, each with its simulated arrival
time: seeded and deterministic (the same spec and start give the same messages).
``Traffic.readings()`` is the set of readings they carry, what ``vigil replay`` is run on.

What a gateway meets in the field, and what the generator makes of it:

* stations from a registry (``tests/differential/stations.yaml``), each gauge reporting
  its water level (m) and rainfall (mm per 5 min) every 5 minutes, a reading arriving
  seconds after its event time;
* ``floods`` storms and flood hydrographs per station (``simulators.river.FloodWave``)
  that cross the rainfall levels and take gauges through blue, yellow, orange and red
  and back, so that a sensor has several alert episodes;
* stations that appear long after the start (installed, or first switched on, mid-run);
* store-and-forward backlogs: a device out of coverage for up to ``max_backlog_h``
  (from any report time) uploads its buffered readings, in order, as one JSON list
  per metric when it is back, before its next live reading (first in, first out);
* outages: gaps never uploaded (shorter than the rules' ``stale``);
* duplicates: a message delivered twice (device retries, broker redeliveries), and
  backlogs uploaded twice;
* out-of-order readings within a sensor: a reading that arrives after its sensor's next
  one, at most ``max_shuffle_ms`` after its own time (within the gateway's lateness);
* bursts: an uplink that stalls for minutes, then delivers every station's readings at
  once;
* QoS: a share of the stations publish at QoS 0, the rest at QoS 1.

The last ``tail_h`` hours are plain (no rain, no disorder): every station reports in
order, up to ``end_ms``, so that every partition's event time reaches the end (see
``tests.differential.compare.cutoff``).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import random
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import yaml

from simulators.river import FloodWave

__all__ = [
    "REGISTRY",
    "RULES",
    "Message",
    "Traffic",
    "TrafficSpec",
    "generate",
    "spec_from_env",
]

HERE = Path(__file__).resolve().parent / "differential"
#: The harness's station registry and rules (the flood pack, ``stale`` above every gap).
REGISTRY = HERE / "stations.yaml"
RULES = HERE / "flood.yaml"

STEP_MS = 5 * 60_000  # the gauges' reporting interval
HOUR_MS = 3_600_000
#: 2024-06-30T16:00Z: the in-process harness's start; the live one starts near now.
T0 = 1_719_763_200_000

Reading = tuple[str, str, int, float]  # station, metric, ts (ms), value


@dataclass(frozen=True)
class TrafficSpec:
    """What to generate. Counts are upper bounds where the run is too short for them."""

    seed: int = 0
    stations: int = 12  # the first n of the registry
    hours: float = 30.0  # from the start to the beginning of the plain tail
    late_starters: int = 3  # stations whose first reading comes 10-60 % into the run
    backlogs: int = 4  # coverage gaps uploaded afterwards as one list per metric
    max_backlog_h: float = 2.0
    outages: int = 1  # gaps of 0.5-2 h never uploaded
    duplicate_rate: float = 0.03  # share of messages delivered twice
    shuffle_rate: float = 0.03  # share of readings delivered after their sensor's next
    max_shuffle_ms: int = 8 * 60_000  # how late such a reading arrives (< the lateness)
    bursts: int = 3  # uplink stalls of 10-30 min, then everything at once
    floods: int = 2  # flood waves (each after a storm) per station
    qos0_share: float = 0.3  # share of stations publishing at QoS 0
    tail_h: float = 3.0  # plain, in-order reporting at the end


@dataclass(frozen=True)
class Message:
    """One MQTT publish: a station's readings of one metric, as the device sends them."""

    arrival_ms: int  # when it reaches the gateway (simulated wall clock, ms)
    station: str
    metric: str
    readings: tuple[tuple[int, float], ...]  # (ts ms, value), in payload order
    qos: int
    kind: str  # "live", "backlog", "duplicate", "shuffled", "burst": for reports

    @property
    def topic(self) -> str:
        return f"vigil/{self.station}/{self.metric}"

    def payload(self) -> bytes:
        """``{"value", "ts"}``, or a JSON list of them for several readings."""
        items = [{"value": v, "ts": t} for t, v in self.readings]
        return json.dumps(items[0] if len(items) == 1 else items).encode()


@dataclass(frozen=True)
class Traffic:
    spec: TrafficSpec
    start_ms: int
    end_ms: int  # the time of the last reading; every station reports at it
    stations: tuple[str, ...]
    messages: tuple[Message, ...]  # in arrival order

    @property
    def disorder_ms(self) -> int:
        """How much later than the replay's an alert may come when readings arrive out
        of order (ms; 0 without such readings): a reading arrives up to
        ``max_shuffle_ms`` after its own time, and one that reaches the gateway after
        its window closed for its sensor cannot start a ``for`` run any more: the run
        starts at the sensor's next reading, one reporting interval on."""
        return self.spec.max_shuffle_ms + STEP_MS if self.spec.shuffle_rate > 0 else 0

    def readings(self) -> list[Reading]:
        """The distinct readings of all messages, by (ts, station, metric)."""
        seen: dict[tuple[str, str, int], float] = {}
        for m in self.messages:
            for ts, value in m.readings:
                old = seen.setdefault((m.station, m.metric, ts), value)
                assert old == value, f"two values for {m.station}/{m.metric} at {ts}"
        return sorted(((s, mt, t, v) for (s, mt, t), v in seen.items()), key=lambda r: r[2:0:-1])

    def write_csv(self, path: Path) -> None:
        """The readings as ``vigil replay``'s long CSV (``station,metric,ts,value``)."""
        with path.open("w", newline="", encoding="utf-8") as f:
            out = csv.writer(f)
            out.writerow(["station", "metric", "ts", "value"])
            out.writerows(self.readings())

    def describe(self) -> str:
        kinds = Counter(m.kind for m in self.messages)
        qos0 = sum(1 for m in self.messages if m.qos == 0)
        return (
            f"{self.spec}, start_ms={self.start_ms}: {len(self.messages)} messages "
            f"({dict(sorted(kinds.items()))}, {qos0} at QoS 0), "
            f"{len(self.readings())} distinct readings"
        )


def spec_from_env(default: TrafficSpec, env: str = "VIGIL_DIFF_SPEC") -> TrafficSpec:
    """``default`` with the fields the environment variable sets, e.g.
    ``VIGIL_DIFF_SPEC="backlogs=0,shuffle_rate=0"`` (to narrow a failure down)."""
    raw = os.environ.get(env, "").strip()
    if not raw:
        return default
    changes: dict[str, object] = {}
    for item in raw.split(","):
        name, _, value = item.partition("=")
        name = name.strip()
        changes[name] = type(getattr(default, name))(value.strip())
    return dataclasses.replace(default, **changes)  # type: ignore[arg-type]


def registry_stations() -> list[dict[str, object]]:
    return list(yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))["stations"])


def _wave(rng: random.Random, station: dict[str, object], to_peak_h: float) -> FloodWave:
    """A flood wave that peaks below blue, at yellow, orange or red, or above red."""
    warning = float(station["warning_level"])  # type: ignore[arg-type]
    guaranteed = float(station["guaranteed_level"])  # type: ignore[arg-type]
    record = float(station["historical_max_level"])  # type: ignore[arg-type]
    peak = rng.choice(
        [
            warning - 0.5,
            warning - 0.15,
            (warning + guaranteed) / 2,
            (guaranteed + record) / 2,
            record + 0.2,
        ]
    )
    base = warning - rng.uniform(1.0, 1.8)
    return FloodWave(str(station["id"]), base, peak, to_peak_h, rng.uniform(2.0, 4.0), 0.01)


def generate(spec: TrafficSpec, start_ms: int = T0) -> Traffic:
    """The messages of ``spec`` from ``start_ms`` (ms, a multiple of 5 min) on."""
    rng = random.Random(spec.seed)
    fleet = registry_stations()[: max(1, spec.stations)]
    ids = [str(s["id"]) for s in fleet]
    main_end = start_ms + int(spec.hours * HOUR_MS) // STEP_MS * STEP_MS
    end_ms = main_end + int(spec.tail_h * HOUR_MS) // STEP_MS * STEP_MS

    # Per station: first reading, floods, QoS.
    late = set(rng.sample(ids, min(spec.late_starters, max(0, len(ids) - 1))))
    first: dict[str, int] = {}
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    qos = {sid: 0 if rng.random() < spec.qos0_share else 1 for sid in ids}
    for station in fleet:
        sid = str(station["id"])
        offset_h = rng.uniform(0.1, 0.6) * spec.hours if sid in late else 0.0
        first[sid] = start_ms + int(offset_h * HOUR_MS) // STEP_MS * STEP_MS
        # Each flood in its own part of the station's time: a storm, then the river's wave.
        part_h = (spec.hours - offset_h) / max(1, spec.floods)
        floods = []
        for k in range(max(1, spec.floods)):
            begin_h = offset_h + k * part_h
            wave = _wave(rng, station, rng.uniform(1.5, max(2.0, 0.4 * part_h)))
            storm_h = begin_h + rng.uniform(0.0, 0.5 * part_h)
            storm_mm = rng.choice([0.0, 1.5, 4.0, 8.0])  # mm per 5 min at the storm's peak
            floods.append((begin_h, wave, storm_h, storm_mm))
        base = floods[0][1].base
        level, rain = [], []
        for ts in range(first[sid], end_ms + 1, STEP_MS):
            t_h = (ts - start_ms) / HOUR_MS
            stage = base + sum(w.level(t_h - b) - w.base for b, w, _, _ in floods)
            level.append((ts, round(stage + rng.gauss(0.0, 0.01), 3)))
            storm = sum(mm * math.exp(-(((t_h - h) / 1.5) ** 2)) for _, _, h, mm in floods)
            storm = storm if ts <= main_end else 0.0  # the tail: no rain
            rain.append((ts, round(max(0.0, storm + rng.gauss(0.0, 0.2 * storm)), 1)))
        series[(sid, "water_level")] = level
        series[(sid, "rainfall")] = rain

    def gap(hours_lo: float, hours_hi: float) -> tuple[str, int, int] | None:
        """A station and [from, to) within its main period, or None when it is too short."""
        sid = rng.choice(ids)
        length = int(rng.uniform(hours_lo, hours_hi) * HOUR_MS) // STEP_MS * STEP_MS
        lo, hi = first[sid] + STEP_MS, main_end - length - STEP_MS
        if length <= 0 or hi <= lo:
            return None
        g0 = lo + (rng.randrange(hi - lo) // STEP_MS) * STEP_MS
        return sid, g0, g0 + length

    messages: list[Message] = []
    taken: dict[str, list[tuple[int, int]]] = {}  # station -> gaps, which never overlap

    def free(sid: str, g0: int, g1: int) -> bool:
        return all(g1 <= a or b <= g0 for a, b in taken.get(sid, []))

    for _ in range(spec.backlogs):
        g = gap(0.5, spec.max_backlog_h)
        if g is None:
            continue
        # At any report time: a device that falls silent in the middle of a window
        # has that window decided on what was known, and again when its backlog comes.
        sid, g0, g1 = g
        if not free(sid, g0, g1):
            continue
        taken.setdefault(sid, []).append((g0, g1))
        # First in, first out: the buffer goes before the device's next live reading
        # (which arrives 0.5-20 s after its time). A reading older than its sensor's
        # newest can only be taken where its window is still open (engine.evaluation.kernels).
        arrival = g1 + rng.randrange(400)
        for metric in ("water_level", "rainfall"):
            buffered = tuple(r for r in series[(sid, metric)] if g0 <= r[0] < g1)
            messages.append(Message(arrival, sid, metric, buffered, qos[sid], "backlog"))
            if rng.random() < 0.25:  # the device did not see the acknowledgement: again
                again = arrival + rng.randrange(1_000, 120_000)
                messages.append(Message(again, sid, metric, buffered, qos[sid], "duplicate"))
    for _ in range(spec.outages):
        g = gap(0.5, 2.0)
        if g is not None and free(*g):
            taken.setdefault(g[0], []).append((g[1], g[2]))

    for (sid, metric), rows in series.items():
        for ts, value in rows:
            if any(a <= ts < b for a, b in taken.get(sid, [])):
                continue  # in a backlog (sent above) or an outage (never sent)
            kind, arrival = "live", ts + rng.randrange(500, 20_000)
            if ts <= main_end and rng.random() < spec.shuffle_rate:
                # After the sensor's next reading, still within the lateness.
                kind = "shuffled"
                latest = max(STEP_MS + 20_001, spec.max_shuffle_ms)
                arrival = ts + rng.randrange(STEP_MS + 20_000, latest)
            m = Message(arrival, sid, metric, ((ts, value),), qos[sid], kind)
            messages.append(m)
            if ts <= main_end and rng.random() < spec.duplicate_rate:
                again = arrival + rng.randrange(1_000, 120_000)
                messages.append(Message(again, sid, metric, m.readings, qos[sid], "duplicate"))

    messages.sort(key=lambda m: m.arrival_ms)
    # Bursts: the uplink stalls; what was sent meanwhile arrives at once when it is back.
    for _ in range(spec.bursts):
        length = rng.randrange(10, 31) * 60_000
        if main_end - length <= start_ms:
            break
        b0 = start_ms + rng.randrange(main_end - length - start_ms)
        b1 = b0 + length
        # Everything sent meanwhile waits, retries and late readings too: a retry
        # cannot overtake the message it repeats.
        messages = [
            Message(b1, m.station, m.metric, m.readings, m.qos,
                    "burst" if m.kind == "live" else m.kind)
            if b0 <= m.arrival_ms < b1
            else m
            for m in messages
        ]  # fmt: skip
    # Stable: a burst's messages keep the order in which they were sent.
    messages.sort(key=lambda m: m.arrival_ms)
    return Traffic(spec, start_ms, end_ms, tuple(ids), tuple(messages))
