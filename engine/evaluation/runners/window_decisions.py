"""How the window chain decides its closed windows: each window's aggregate through the
levels kernel (``engine.evaluation.kernels.levels``, with the thresholds of the window's
date when the rule has a calendar), and the windows the watermark closed while their
sensor was silent: decided provisionally (a raise at once, a lowering once it is final),
held, and decided again once final (``WindowDecisions._close_held``).

``WindowDecisions`` owns that side of ``engine.evaluation.runners.windowed.WindowedRunner``:
the sensors' level state, their episodes and held windows. The runner owns the readings'
side (QC, order, the windows kernel) and hands it the windows that close.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from engine.contracts.ruleset import ThresholdRule
from engine.evaluation.kernels import levels as lv
from engine.evaluation.kernels import windows as win
from engine.evaluation.kernels._common import NO_TS
from engine.evaluation.runners.base import RawTransition, SensorIndex, gathered_thresholds

__all__ = ["Held", "WindowDecisions"]


class Held(NamedTuple):
    """A window the watermark closed while its sensor was silent, not yet final."""

    end: int  # ms
    value: float  # its aggregate then
    #: The sensor's breach runs (levels' ``since``) and level before that provisional
    #: decision, to decide the window again from; None in older snapshots (``since``
    #: None: the decision was not applied; ``level`` None: keep the level it sent).
    since: list[int] | None
    level: int | None


class Redo(NamedTuple):
    """A held window decided again (``WindowDecisions._unhold``)."""

    end: int  # ms
    value: float  # its aggregate now
    sent: int  # the level its sensor's alerts last sent
    before: int  # the level before the provisional decision
    episode: int  # the episode's start then (ms)


class WindowDecisions:
    """Closed windows -> level transitions for one rule's sensors (dense index of
    ``sensors``): each sensor's level state, the start of its episode and its held
    window. Sized by ``grow``, as the runner's other per-sensor arrays are."""

    def __init__(self, sensors: SensorIndex, bucket_ms: int) -> None:
        self.sensors = sensors
        self.bucket_ms = bucket_ms  # the windows' step (ms; the kernel's clock unit)
        self.levels = lv.new_levels_state(0)
        self.episode = np.zeros(0, np.int64)  # when each sensor's episode began (ms)
        #: Windows the watermark closed while their sensor was silent, not yet final:
        #: sensor -> its held window (see _close_held).
        self.held: dict[int, Held] = {}
        self.held_end = np.zeros(0, np.int64)  # per sensor: its held window's end, or NO_TS
        self._moved: set[int] = set()  # held sensors with a reading past their window
        self.params = self._params(0)
        self._with_thresholds = 0  # rows of self.params whose thresholds are set

    @property
    def rule(self) -> ThresholdRule:
        return self.sensors.rule

    def _params(self, n: int) -> lv.LevelParams:
        rule = self.rule
        return lv.LevelParams(
            gathered_thresholds(self.sensors, n), rule.direction, rule.deadband, rule.for_ms
        )

    def grow(self, n: int) -> None:
        """Room for ``n`` sensors (at least; doubling), keeping the state; the sensors
        indexed since the last call take the rule's thresholds."""
        size = len(self.levels)
        if n > size:
            size = max(n, 2 * size, 16)
            levels = lv.new_levels_state(size)
            levels[: len(self.levels)] = self.levels
            self.levels = levels
            grown = size - len(self.episode)
            self.episode = np.concatenate([self.episode, np.zeros(grown, np.int64)])
            self.held_end = np.concatenate([self.held_end, np.full(grown, NO_TS)])
            thresholds = np.full((size, 4), np.nan)
            thresholds[: len(self.params.thresholds)] = self.params.thresholds
            rule = self.rule
            self.params = lv.LevelParams(thresholds, rule.direction, rule.deadband, rule.for_ms)
        # Only the stations indexed since the last call: a pass over all of them for
        # every batch that brings a new one would be quadratic at millions of sensors.
        thresholds = self.params.thresholds
        for i in range(self._with_thresholds, n):
            row = self.sensors.rule_row(self.sensors.stations[i])
            if row is not None:
                thresholds[i] = self.rule.thresholds[row]
        self._with_thresholds = max(self._with_thresholds, n)

    def rebind(self) -> None:
        """The thresholds of the rule ``sensors`` was bound to anew, keeping the state."""
        self.params = self._params(len(self.levels))
        self._with_thresholds = len(self.sensors.stations)

    def taken(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        accepted: npt.NDArray[np.bool_],
    ) -> None:
        """Readings the windows took (``accepted``): a held window is final once its
        sensor has a reading past it."""
        if self.held:
            end = self.held_end[sensor]
            moved = accepted & (end != NO_TS) & (ts >= end)
            self._moved.update(sensor[moved].tolist())

    def decide(
        self, closed: win.ClosedWindows, ending: bool, clock: npt.NDArray[np.void]
    ) -> list[RawTransition]:
        """The transitions of the ``closed`` windows (ends in true time) and of the held
        windows now final; ``ending``: the input ends (every held window is final);
        ``clock``: the windows kernel's per-sensor clocks (``win.WindowState.clock``),
        which tell whether a held window's sensor has moved past it."""
        if len(closed.sensor) == 0 and not ((ending or self._moved) and self.held):
            return []
        if not self.held and not closed.provisional.any():
            return self._evaluate(closed.sensor, closed.window_end, closed.value)
        return self._close_held(closed, ending, clock["next_close"])

    def saved(self, n: int) -> dict[str, Any]:
        """The state of the first ``n`` sensors, for the runner's snapshot."""
        return {
            "levels": self.levels[:n].tobytes(),
            "episode": self.episode[:n].tobytes(),
            "held": [[s, *held] for s, held in self.held.items()],
        }

    def restore(self, saved: dict[str, Any], rows: list[int]) -> None:
        """The state of a snapshot (``saved``) whose sensor ``j`` is row ``rows[j]`` here
        (-1: no longer selected); the sensors must have room (``grow``)."""
        levels = np.frombuffer(saved["levels"], lv.LEVELS_STATE_DTYPE)
        episode = np.frombuffer(saved["episode"], np.int64)
        for j, i in enumerate(rows):
            if i >= 0:
                self.levels[i] = levels[j]
                self.episode[i] = episode[j]
        self.held.clear()
        self.held_end[:] = NO_TS
        for s, end, value, since, *level in saved.get("held", []):  # older: none, or no level
            if rows[s] >= 0:
                self._hold(rows[s], Held(end, value, since, level[0] if level else None))

    def _close_held(
        self, closed: win.ClosedWindows, ending: bool, next_close: npt.NDArray[np.int64]
    ) -> list[RawTransition]:
        """Decide closed windows where some are, or were, provisional (the watermark closed
        them while their sensor was silent; ``engine.evaluation.kernels.windows``).

        A provisional window may raise its sensor's level at once, on what is known (a
        warning is never held back), but never lower it: a silence is no evidence that
        the water went down, and the gauge may be holding the readings that show it did
        not. The window is held until it is final: its sensor's backlog reopened it and
        it closed again, or the sensor has a reading past it, or the input ends. It is
        then decided again from the sensor's level state as it was before the
        provisional decision, as the replay (which never made that decision) decides it,
        and the transition goes from the level already sent (an alert cannot be taken
        back): a raise in two steps at the window's end (yellow on what was known, orange
        with the backlog) where the replay has one, or a raise lowered at that same time.
        A held window that closes provisionally again is a provisional decision again:
        applied only when it raises above the level sent."""
        rows: list[tuple[int, int, float, bool]] = []  # (end, sensor, value, provisional)
        redo: dict[int, Redo] = {}  # sensors whose held window is decided again
        for s, end, value, prov in zip(closed.sensor.tolist(), closed.window_end.tolist(),
                                       closed.value.tolist(), closed.provisional.tolist(),
                                       strict=True):  # fmt: skip
            held = self.held.get(s)
            if held is not None and end >= held.end:
                redo[s] = self._unhold(s, held.value)
                if end > held.end:  # final as it was
                    rows.append((held.end, s, held.value, False))
                else:  # reopened by the backlog: this row is the window again
                    redo[s] = redo[s]._replace(value=value)
            rows.append((end, s, value, prov))
        bucket_ms = self.bucket_ms
        back = self.rule.kernel_shift_ms + self.rule.window_closed_right
        final = [
            s
            for s, held in self.held.items()
            if ending or (s in self._moved and next_close[s] * bucket_ms - back >= held.end)
        ]  # not reopened: final as it was
        for s in final:
            held = self.held[s]
            redo[s] = self._unhold(s, held.value)
            rows.append((held.end, s, held.value, False))
        self._moved.clear()
        rows.sort()
        # A sensor's provisional window is its last row: evaluated after its others.
        prov_rows = [r for r in rows if r[3]]
        again = {s: redo.pop(s) for end, s, _, _ in prov_rows if s in redo and redo[s].end == end}
        decided = np.array([r for r in rows if not r[3]], np.float64).reshape(-1, 4)
        out = self._from_sent(
            self._evaluate(decided[:, 1].astype(np.int64), decided[:, 0].astype(np.int64),
                           decided[:, 2]),
            redo,
        )  # fmt: skip
        if prov_rows:
            s = np.array([r[1] for r in prov_rows], np.int64)
            before = self.levels[s].copy()
            episode = self.episode[s].copy()
            raised = self._evaluate(s, np.array([r[0] for r in prov_rows], np.int64),
                                    np.array([r[2] for r in prov_rows]))  # fmt: skip
            up: set[int] = set()
            for j, (end, sensor, value, _) in enumerate(prov_rows):
                level = int(before["level"][j])
                self._hold(sensor, Held(end, value, before["since"][j].tolist(), level))
                sent = again[sensor].sent if sensor in again else level
                if self.levels["level"][sensor] > sent:
                    up.add(sensor)
                else:  # not applied: the state as it was, at the level sent
                    self.levels[sensor] = before[j]
                    self.levels["level"][sensor] = sent
                    self.episode[sensor] = episode[j]
            raised = [t for t in raised if t.sensor in up]
            out += self._from_sent(raised, {s: r for s, r in again.items() if s in up})
            out.sort(key=lambda t: t.at)  # stable: each sensor's in time order
        return out

    def _from_sent(self, out: list[RawTransition], redo: dict[int, Redo]) -> list[RawTransition]:
        """``out`` (transitions of windows decided again from the state before their
        provisional decision, ``_unhold``) with each ``redo`` sensor's transition at its
        held window's end going from the level sent to the level decided: none when
        they are the same; a lowering to the level before when the kernel, deciding from
        that level, changed nothing."""
        if not redo:
            return out
        at_end = {t.sensor: t for t in out if t.sensor in redo and t.at == redo[t.sensor].end}
        kept = [t for t in out if at_end.get(t.sensor) is not t]
        for s, r in redo.items():
            t = at_end.get(s)
            to, value = (t.to_level, t.value) if t is not None else (r.before, r.value)
            if to == r.sent:
                continue
            # the threshold of the higher level: entered on a raise, left on a lowering
            threshold = t.threshold if t is not None and to > r.sent else self._threshold(
                s, r.end, r.sent)  # fmt: skip
            started = r.end if r.sent == 0 else r.episode  # a raise from none starts one
            kept.append(RawTransition(s, r.sent, to, r.end, value, threshold, started))
        kept.sort(key=lambda t: t.at)  # stable: each sensor's in time order
        return kept

    def _threshold(self, s: int, end: int, level: int) -> float:
        """Sensor ``s``'s threshold of ``level`` (1-4) for the window ending at ``end``."""
        calendar = self.rule.calendar
        if calendar is None:
            return float(self.params.thresholds[s, level - 1])
        row = int(self.sensors.rule_rows()[s])
        return float(calendar.period(end - 1)[2][row, level - 1]) if row >= 0 else math.nan

    def _hold(self, s: int, held: Held) -> None:
        self.held[s] = held
        self.held_end[s] = held.end

    def _unhold(self, s: int, value: float) -> Redo:
        """Release ``s``'s held window and put its level state back as it was before the
        provisional decision; returns what deciding the window again needs."""
        held = self.held.pop(s)
        self.held_end[s] = NO_TS
        sent, episode = int(self.levels["level"][s]), int(self.episode[s])
        if held.since is not None:
            self.levels["since"][s] = held.since
        if held.level is not None:
            self.levels["level"][s] = held.level
        return Redo(held.end, value, sent, int(self.levels["level"][s]), episode)

    def _evaluate(
        self,
        sensor: npt.NDArray[np.int64],
        end: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> list[RawTransition]:
        calendar = self.rule.calendar
        if calendar is None or not len(end):
            return self._evaluate_with(self.params, sensor, end, value)
        # Thresholds that vary with the date: each window is judged with those of its
        # last instant, period by period (a sensor's windows stay in time order).
        out: list[RawTransition] = []
        left = np.ones(len(end), bool)
        while left.any():
            _, stop, table = calendar.period(int(end[left].min()) - 1)
            pick = left & (end - 1 < stop)
            thresholds = gathered_thresholds(self.sensors, len(self.levels), 0, table)
            rule = self.rule
            params = lv.LevelParams(thresholds, rule.direction, rule.deadband, rule.for_ms)
            out += self._evaluate_with(params, sensor[pick], end[pick], value[pick])
            left &= ~pick
        return out

    def _evaluate_with(
        self,
        params: lv.LevelParams,
        sensor: npt.NDArray[np.int64],
        end: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
    ) -> list[RawTransition]:
        tr = lv.levels_evaluate(self.levels, params, sensor, end, value)
        out = []
        for s, f, t, at, v, h, kind in zip(*(a.tolist() for a in tr), strict=True):
            if kind != lv.LEVEL:
                continue
            if f == 0:
                self.episode[s] = at
            out.append(RawTransition(s, f, t, at, v, h, int(self.episode[s])))
        return out
