"""A stalled dispatcher owner on the Kafka runtime: the worker that owns the dispatcher
is stopped (SIGSTOP: alive, holding its sockets, not answering), not killed. The group
evicts it after its session timeout, the other worker takes the dispatcher over and
people go on being told; when the stopped worker runs again (SIGCONT) it must not tell
anybody anything: the new owner's transactional producer has fenced it, and what it
would send from its stale state belongs to the new owner.

The owner is stopped while the duty room's receiver is away, so that it holds a
notification it could not deliver yet (and the route repeats an unacknowledged red
every few seconds, so that a repeat falls due while it stands still). The receiver
comes back; the new owner delivers the held notification. Each key is
``receiver:group:n``; a woken owner that sent what it held, or made a group's n-th
message itself, would send a key twice. So: every key arrives once, with one body, and
each group's messages are numbered without a gap."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

import yaml

from tests.integration.http_receiver import HttpReceiver
from tests.integration.kafka_load import WorkerProcess
from tests.integration.test_dispatch_gateway import wait_for
from tests.integration.test_dispatch_kafka import (
    STEP,
    T0,
    Workers,
    _api,
    _hook,
    _posts,
    _took_over,
    _with_station,
    hooks,
)

__all__ = ["hooks"]

REPEAT = "4s"


def _holding(worker: WorkerProcess) -> bool:
    """``worker`` owns the dispatcher and holds a notification it could not deliver."""
    status, doc = _api(worker, "/api/outbox")
    return status == 200 and any(doc["pending"].values())


def _routes(hooks: HttpReceiver) -> dict[str, Any]:
    return {
        "version": 1,
        "receivers": [_hook("duty", hooks.url + "/duty")],
        "route": {
            "receivers": ["duty"],
            "group_by": ["station"],
            "group_wait": "0s",
            "group_interval": "1s",
            "repeat_interval": REPEAT,
        },
    }


def test_a_stopped_owner_is_fenced_and_sends_nothing_when_it_runs_again(
    kafka_bootstrap: str, tmp_path: Path, hooks: HttpReceiver
) -> None:
    ws = Workers(kafka_bootstrap, tmp_path, hooks)
    (tmp_path / "routing.yaml").write_text(yaml.safe_dump(_routes(hooks), sort_keys=False))
    stopped = None
    servers = [hooks]
    try:
        w1, w2 = ws.start_ready("w1", "w2")

        # HZ001 goes red and nobody takes it: the owner tells the duty room, then again
        # every few seconds.
        ws.red("HZ001", T0)
        wait_for("HZ001's repeat", lambda: len(_with_station(hooks, "/duty", "HZ001")) >= 2)

        # The receiver goes away; the owner makes HZ001's next repeat and holds it.
        port = hooks.port
        hooks.__exit__(None, None, None)
        owner = wait_for(
            "the owner to hold a notification",
            lambda: next((w for w in (w1, w2) if _holding(w)), None),
        )
        other = w2 if owner is w1 else w1
        owner.proc.send_signal(signal.SIGSTOP)
        stopped = owner
        back = HttpReceiver(port=port).__enter__()
        servers.append(back)

        # Evicted after its session timeout; the other worker takes over and tells
        # the duty room of a new red, and goes on repeating HZ001.
        wait_for("the other worker to take over", lambda: _took_over(other), timeout=180)
        ws.red("NB101", T0 + 2 * STEP)
        wait_for("NB101's notification", lambda: _with_station(back, "/duty", "NB101"))

        # The stopped owner runs again, with HZ001's repeat (and more) overdue in its
        # stale state. It lets go, whichever it learns first: that its consumer was
        # evicted, or that its producer was fenced (its next store fails). The new owner
        # keeps going.
        released = owner.tail(10**7).count("dispatcher: released")
        owner.proc.send_signal(signal.SIGCONT)
        stopped = None
        wait_for(
            "the woken worker to let go",
            lambda: owner.tail(10**7).count("dispatcher: released") > released,
            timeout=120,
        )
        # Witness: after it let go, the owner (whichever the group picks now) repeats
        # NB101 twice more; whatever the woken worker sent before would have come first.
        seen = len(_with_station(back, "/duty", "NB101"))
        wait_for(
            "two more repeats of NB101",
            lambda: len(_with_station(back, "/duty", "NB101")) >= seen + 2,
            timeout=120,
        )

        # Nothing fenced the worker that had taken over: the woken one did not take the
        # dispatcher back on its stale assignment (only the group may give it back).
        assert "ProducerFenced" not in other.tail(10**7), ws.logs()

        bodies: dict[str, list[str]] = {}
        for body in _posts(hooks, "/duty") + _posts(back, "/duty"):
            bodies.setdefault(body["key"], []).append(json.dumps(body, sort_keys=True))
        one_body = {k: v for k, v in bodies.items() if len(set(v)) > 1}
        assert one_body == {}, f"keys sent with different bodies: {one_body}\n{ws.logs()}"
        again = {k: len(v) for k, v in bodies.items() if len(v) > 1}
        assert again == {}, f"keys sent more than once: {again}\n{ws.logs()}"
        # Each group's messages are numbered 1..N: none lost, none made twice.
        groups: dict[str, list[int]] = {}
        for key in bodies:
            _, group, n = key.split(":")
            groups.setdefault(group, []).append(int(n))
        for group, numbers in groups.items():
            assert sorted(numbers) == list(range(1, len(numbers) + 1)), (group, numbers)
        assert other.proc.poll() is None, other.tail()
    finally:
        if stopped is not None:
            stopped.proc.send_signal(signal.SIGCONT)
        for w in ws.workers.values():
            w.kill()
        for server in servers[1:]:
            server.__exit__(None, None, None)
