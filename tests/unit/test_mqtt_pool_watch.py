"""The ingest pool's watchdog (``MqttIngestPool._tick``), tick by tick: a worker silent
for ``SILENT_REPORTS`` on-time ticks is taken for hung (logged, counted, not
subscribed, killed); one that reports, one whose request the pool is handling, and
ticks late because the pool's own loop was held up do not count. Mocks at unit level:
the processes are stand-ins (tests/integration/test_mqtt_processes.py freezes a real
worker with SIGSTOP)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from connectors.mqtt.options import MqttOptions
from connectors.mqtt.pool import MqttIngestPool
from connectors.mqtt.pool_worker import SILENT_REPORTS, START_TIMEOUT_S, WorkerView


class _Process:
    """A worker process's stand-in: alive until ``kill``."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.killed = False

    def kill(self) -> None:
        self.killed = True


async def _nothing(*args: Any) -> None:
    return None


def _pool() -> tuple[MqttIngestPool, list[WorkerView], list[_Process]]:
    """A pool whose two workers run, reported and are subscribed."""
    pool = MqttIngestPool(MqttOptions(processes=2, broker_drops_topic=None), _nothing, _nothing)
    processes = [_Process(100 + k) for k in range(2)]
    for w, process in zip(pool._workers, processes, strict=True):
        w.process = process  # type: ignore[assignment]
        w.reported = w.subscribed = True
    pool._update_subscribed()
    assert pool.state == "subscribed"
    return pool, pool._workers, processes


def test_a_worker_silent_for_five_on_time_ticks_is_hung(caplog: pytest.LogCaptureFixture) -> None:
    pool, workers, processes = _pool()
    for tick in range(SILENT_REPORTS - 1):
        workers[1].heard = True  # worker 1 reports every period, worker 0 is silent
        pool._tick(float(tick), on_time=True)
    assert not processes[0].killed and pool.state == "subscribed"
    workers[1].heard = True
    pool._tick(float(SILENT_REPORTS), on_time=True)
    assert processes[0].killed and not processes[1].killed
    assert pool.counters["worker_hangs"] == 1
    assert pool.state != "subscribed"  # /readyz fails until it is back
    assert workers[0].connection.error == "worker hung (silent for 2.5 s): restarting"
    assert "MQTT ingest worker 0 (pid 100) is hung (silent for 2.5 s)" in caplog.text


def test_a_report_or_a_request_in_hand_keeps_a_worker() -> None:
    pool, workers, processes = _pool()
    for tick in range(4 * SILENT_REPORTS):
        workers[0].heard = tick % SILENT_REPORTS == 0  # a report now and then
        workers[1].busy = True  # the pool is writing its batch: it waits for us
        pool._tick(float(tick), on_time=True)
    assert not any(p.killed for p in processes)
    assert pool.counters["worker_hangs"] == 0


def test_late_ticks_do_not_count_against_a_worker() -> None:
    """Ticks late by more than a period: the pool's loop was held up, and the workers'
    frames may be waiting unread."""
    pool, _, processes = _pool()
    for tick in range(SILENT_REPORTS - 1):
        pool._tick(float(tick), on_time=True)
    for tick in range(10):
        pool._tick(float(10 + tick), on_time=False)
    assert not any(p.killed for p in processes)
    pool._tick(30.0, on_time=True)
    assert all(p.killed for p in processes)
    assert pool.counters["worker_hangs"] == 2


def test_a_worker_without_a_first_report_is_hung_after_the_start_timeout() -> None:
    pool, workers, processes = _pool()
    workers[0].reported, workers[0].started_at = False, 0.0
    for tick in range(3 * SILENT_REPORTS):
        workers[1].heard = True
        pool._tick(float(tick), on_time=True)  # importing its modules: not silent yet
    assert not processes[0].killed
    pool._tick(START_TIMEOUT_S + 1, on_time=True)
    assert processes[0].killed and pool.counters["worker_hangs"] == 1


def test_an_exited_worker_is_left_to_its_restart() -> None:
    pool, workers, processes = _pool()
    processes[0].returncode = -9
    for tick in range(2 * SILENT_REPORTS):
        workers[1].heard = True
        pool._tick(float(tick), on_time=True)
    assert not processes[0].killed and pool.counters["worker_hangs"] == 0


def test_a_failing_watchdog_ends_the_ingest_rather_than_watch_no_more(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Without its watchdog a hung worker would go unseen: the failure goes to ``join``
    (the gateway ends, its supervisor starts it again)."""
    pool, _, _ = _pool()
    monkeypatch.setattr("connectors.mqtt.pool_watch.REPORT_S", 0.001)

    def broken(now: float, *, on_time: bool) -> None:
        raise RuntimeError("a bug in the watchdog")

    async def run() -> BaseException | None:
        pool._failed = asyncio.get_running_loop().create_future()
        pool._tick = broken  # type: ignore[method-assign]
        await asyncio.wait_for(pool._watch(), 10)
        return pool._failed.exception()

    assert repr(asyncio.run(run())) == "RuntimeError('a bug in the watchdog')"


def test_a_state_frame_read_after_the_kill_does_not_make_a_hung_worker_subscribed() -> None:
    pool, workers, processes = _pool()
    for tick in range(SILENT_REPORTS):
        workers[1].heard = True
        pool._tick(float(tick), on_time=True)
    assert processes[0].killed and pool.state != "subscribed"
    frame = ("state", True, None, 0, 0, True, {})  # sent before the SIGSTOP, read now
    asyncio.run(pool._handle(workers[0], frame))
    assert not workers[0].subscribed and pool.state != "subscribed"
