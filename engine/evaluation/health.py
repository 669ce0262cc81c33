"""Quality control and sensor health for one rule on one partition.

The window chain's runner (``engine.evaluation.runners.windowed``) calls ``RuleHealth.check`` before
its windows see readings: it flags them with the rule's QC limits (``engine.evaluation.kernels.qc``:
gross range, step, stuck sensor, clock in the future) so that failed readings (and
suspect ones, when the rule's ``qc.drop`` lists ``suspect``) never raise or clear a
level, and reports health changes
(``engine.evaluation.kernels.health``): a run of QC failures, a sensor silent for longer than the
rule's ``stale_ms``, and their clearing. The early-firing kernel
(``engine.evaluation.kernels.tumbling_levels``) does the same QC and health in its own pass, with
its state in its per-sensor record.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from engine.contracts.ruleset import ThresholdRule
from engine.evaluation.kernels import health as hk
from engine.evaluation.kernels._common import NO_TS, Q_FAIL, Q_SUSPECT
from engine.evaluation.kernels.qc import QC_STATE_DTYPE, QCParams, new_qc_state, qc_batch

__all__ = [
    "FAIL_AFTER",
    "HealthChange",
    "RuleHealth",
    "drops_suspect",
    "health_changes",
    "health_summary",
    "qc_params",
]

#: Consecutive failed readings before a QC alert: one bad value is noise, three a fault.
FAIL_AFTER = 3


class HealthChange(NamedTuple):
    sensor: int
    kind: str  # "qc" or "silent"
    firing: bool
    at: int  # ms
    since: int  # ms: the first failed reading, or the last reading before the silence
    value: float


def qc_params(rule: ThresholdRule) -> QCParams:
    """The rule's limits; without any, only NaN and the clock checks run."""
    q = rule.qc
    if q is None:
        return QCParams.disabled(1)

    def one(x: float | None) -> npt.NDArray[np.float64]:
        return np.array([np.nan if x is None else x])

    return QCParams(
        fail_lo=one(q.min),
        fail_hi=one(q.max),
        suspect_lo=one(None),
        suspect_hi=one(None),
        spike=one(q.max_step),
        rate_per_h=one(None),
        flat_fail_n=q.flat_n,
        flat_suspect_n=max(0, q.flat_n - 1) if q.flat_n else 0,
    )


def drops_suspect(rule: ThresholdRule) -> bool:
    """Whether the rule leaves SUSPECT readings out of its windows (``qc.drop``)."""
    return rule.qc is not None and rule.qc.drop_suspect


class RuleHealth:
    """QC state and health state of one rule's sensors (dense index of its runner)."""

    def __init__(self, rule: ThresholdRule) -> None:
        self.rebind(rule)
        self.qc_state = new_qc_state(0)
        self.state = hk.new_health_state(0)

    def rebind(self, rule: ThresholdRule) -> None:
        self.rule = rule
        self.params = qc_params(rule)

    def grow(self, n: int) -> None:
        if n <= len(self.state):
            return
        size = max(n, 2 * len(self.state), 16)
        qc, state = new_qc_state(size), hk.new_health_state(size)
        qc[: len(self.qc_state)] = self.qc_state
        state[: len(self.state)] = self.state
        self.qc_state, self.state = qc, state

    def check(
        self,
        sensor: npt.NDArray[np.int32],
        ts: npt.NDArray[np.int64],
        value: npt.NDArray[np.float64],
        quality: npt.NDArray[np.uint8],
        now_ms: int,
        partition_ms: int = NO_TS,
    ) -> tuple[npt.NDArray[np.uint8], list[HealthChange]]:
        """Flags for the windows and the health changes.

        A flag is the more severe of the reading's and QC's; a SUSPECT reading that the
        rule drops reads FAIL here, since the windows leave FAIL and MISSING readings out.
        Health sees the true flags: a dropped suspect reading is no QC failure.
        ``partition_ms``: the partition's event time before the batch (silence ends only
        for a reading within ``stale`` of it, ``engine.evaluation.kernels.health``).
        """
        flags = qc_batch(self.qc_state, self.params, sensor, ts, value, now_ms, quality)
        current = hk.current_from(self.rule.stale_ms, partition_ms)
        changes = hk.observe(self.state, FAIL_AFTER, sensor, ts, value, flags, current)
        if drops_suspect(self.rule):
            flags[flags == Q_SUSPECT] = Q_FAIL
        return flags, health_changes(changes)

    def check_silence(self, watermark: int) -> list[HealthChange]:
        if self.rule.stale_ms <= 0 or len(self.state) == 0:
            return []
        return health_changes(hk.check_silence(self.state, self.rule.stale_ms, watermark))

    def snapshot(self, n: int) -> dict[str, Any]:
        return {"qc": self.qc_state[:n].tobytes(), "health": self.state[:n].tobytes()}

    def restore(self, saved: dict[str, Any], rows: list[int]) -> None:
        qc = np.frombuffer(saved["qc"], QC_STATE_DTYPE)
        state = np.frombuffer(saved["health"], hk.HEALTH_DTYPE)
        for j, i in enumerate(rows):
            if i >= 0:
                self.qc_state[i] = qc[j]
                self.state[i] = state[j]


_TEXT = {
    (
        "qc",
        True,
        "zh",
    ): "{name}({station}){metric}自 {since} 起质控失败(仪器卡滞或超出量程),读数暂不参与预警",
    ("qc", False, "zh"): "{name}({station}){metric}读数恢复正常({value:g})",
    ("silent", True, "zh"): "{name}({station}){metric}自 {since} 起无数据",
    ("silent", False, "zh"): "{name}({station}){metric}恢复报数",
    ("qc", True, "en"): "{name} ({station}) {metric} failing quality control since {since} "
    "(stuck or out of range); its readings are left out of the levels",
    ("qc", False, "en"): "{name} ({station}) {metric} readings good again ({value:g})",
    ("silent", True, "en"): "{name} ({station}): no {metric} reading since {since}",
    ("silent", False, "en"): "{name} ({station}) {metric} reporting again",
}


def health_summary(
    rule: ThresholdRule, station: str, labels: dict[str, str], change: HealthChange
) -> str:
    """The alert text of a health change, in the rule's language."""
    since = datetime.fromtimestamp(change.since / 1000, UTC).strftime("%Y-%m-%d %H:%MZ")
    template = _TEXT[(change.kind, change.firing, rule.lang)]
    return template.format(
        name=labels.get("name", station), station=station, metric=rule.metric, since=since,
        value=change.value,
    )  # fmt: skip


def health_changes(arrays: tuple[npt.NDArray[np.generic], ...]) -> list[HealthChange]:
    """Kernel output rows (sensor, kind, firing, ms, since ms, value) as changes."""
    sensor, kind, firing, at, since, value = (a.tolist() for a in arrays)
    return [
        HealthChange(s, "qc" if k == hk.QC else "silent", bool(f), t, b, v)
        for s, k, f, t, b, v in zip(sensor, kind, firing, at, since, value, strict=True)
    ]
