"""An MQTT ingest worker process: ``python -m connectors.mqtt.worker FD``, started by
``connectors.mqtt.pool`` with one end of a socket pair as file descriptor ``FD``.

The worker is a ``MqttIngest`` (a member of the gateway's shared subscription) whose
``produce`` and ``dead_letter`` are requests to the gateway process, the only writer of
the embedded log: it receives, decodes and batches, sends a batch's readings and dead
letters, and acknowledges the batch's messages to the broker only when the gateway has
answered that they are durable. A worker whose gateway goes away (its socket closes:
the gateway died or was killed) exits at once, acknowledging nothing more, so the broker
redelivers what it had not acknowledged to the next member with its client id.

Frames, both ways: a 4-byte big-endian length, then a pickle (both ends are this tree,
one trusted parent and its child). The gateway sends first
``("start", index, options, stations, admission, paused_because, log_level)``, then ``("done",)``
for each request in order, ``("stations", stations)``, ``("pause", why)``, ``("resume",)``
and ``("stop",)``. The worker sends the requests ``("produce", sensors)``
(``sensors``: a batch's readings as one ``(station, metric, ts list, value list)`` per
sensor, in the order they came: the batch's ``ReadingBlock`` s merged, for the pickle's
cost; a message's block per sensor cost more to pickle and unpickle than to decode)
and ``("dead", raw, reason, source)`` (one at a time: ``deliver`` awaits each) and the
notices ``("seq", topic, seqs, received_ms)``, ``("drops", total)``, ``("caught-up",)``
(after the last batch of the backlog its session held: ``MqttIngest.catching_up``),
``("session", present)`` (the first CONNACK's "session present", from a retiring
worker: ``MqttOptions.retire``; it exits 0 once ``MqttIngest.retired``) and, every
``REPORT_S``, ``("state", connected, error, since_ms, failures, subscribed, counters)``.

SIGTERM, SIGINT and SIGHUP are the gateway's to act on (systemd and a terminal send them
to every process of the service): the worker ignores them and stops on ``("stop",)`` as
``MqttIngest.stop`` does, reading the gateway's answers meanwhile: the batch in hand is
written, acknowledged and fenced before it leaves the broker (within
``connectors.mqtt.client.STOP_TIMEOUT_S``). The gateway takes a worker that has not
reported for ``connectors.mqtt.pool.SILENT_REPORTS`` periods for hung and kills it.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
import pickle
import signal
import socket
import struct
import sys
from typing import Any

from connectors.mqtt.client import MqttIngest
from engine.contracts.batch import ReadingBlock

__all__ = ["REPORT_S", "read_frame", "write_frame"]

log = logging.getLogger(__name__)

_LENGTH = struct.Struct("!I")
#: How often a worker reports its connection state and counters (seconds).
REPORT_S = 0.5


async def read_frame(reader: asyncio.StreamReader) -> Any:
    """The next frame's object; ``asyncio.IncompleteReadError`` at the end of the stream."""
    (n,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    return pickle.loads(await reader.readexactly(n))


def write_frame(writer: asyncio.StreamWriter, obj: Any) -> None:
    """Queue one frame (whole: frames never interleave); the caller drains."""
    body = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(body)) + body)


class _Gateway:
    """The worker's end of the socket: requests wait for their ``done`` in order."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer
        self._waiting: collections.deque[asyncio.Future[None]] = collections.deque()

    async def send(self, *frame: Any) -> None:
        write_frame(self._writer, frame)
        await self._writer.drain()

    async def request(self, *frame: Any) -> None:
        done = asyncio.get_running_loop().create_future()
        self._waiting.append(done)
        await self.send(*frame)
        await done

    def done(self) -> None:
        """The gateway's answer to the oldest request: durable."""
        waiting = self._waiting.popleft()
        if not waiting.done():  # cancelled meanwhile (the ingest stopping)
            waiting.set_result(None)

    async def produce(self, readings: list[Any]) -> None:
        sensors: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        for block in readings:
            assert isinstance(block, ReadingBlock)  # what ``MqttIngest._decode`` returns
            columns = sensors.get((block.station, block.metric))
            if columns is None:
                sensors[block.station, block.metric] = (list(block.ts), list(block.value))
            else:
                columns[0].extend(block.ts)
                columns[1].extend(block.value)
        await self.request("produce", [(*sensor, *c) for sensor, c in sensors.items()])

    async def dead_letter(self, raw: bytes, reason: str, source: str) -> None:
        await self.request("dead", raw, reason, source)

    async def drops(self, total: int) -> None:
        await self.send("drops", total)

    def sequence(self, topic: str, seqs: list[int], received_ms: int) -> None:
        write_frame(self._writer, ("seq", topic, seqs, received_ms))  # drained by the next

    def caught_up(self) -> None:
        write_frame(self._writer, ("caught-up",))  # drained by the next

    def session(self, present: bool) -> None:
        write_frame(self._writer, ("session", present))  # drained by the next


async def _listen(
    reader: asyncio.StreamReader, ingest: MqttIngest, gateway: _Gateway, stop: asyncio.Event
) -> None:
    """The gateway's frames, ``stop`` set by its ``("stop",)``; read on while the ingest
    stops (its batch in hand waits for its ``done``). The gateway gone, the process
    ends at once."""
    while True:
        try:
            frame = await read_frame(reader)
        except (asyncio.IncompleteReadError, ConnectionError):
            log.error("the gateway process is gone: exiting, the broker keeps what is unacked")
            os._exit(1)
        kind = frame[0]
        if kind == "done":
            gateway.done()
        elif kind == "stations":
            ingest.known_stations = frame[1]
        elif kind == "pause":
            ingest.pause(frame[1])
        elif kind == "resume":
            ingest.resume()
        elif kind == "stop":
            stop.set()


def _listener_ended(task: asyncio.Task[None]) -> None:
    """The listener failed (a frame it could not take): this worker would go on
    reporting while no answer reaches its batch in hand, a share of ingest dead behind
    a live watchdog. End the process instead: the pool starts it again, and the broker
    redelivers what it had not acknowledged."""
    if not task.cancelled() and task.exception() is not None:
        log.critical("reading the gateway's frames failed: exiting", exc_info=task.exception())
        os._exit(1)


async def _report(ingest: MqttIngest, gateway: _Gateway, every_s: float | None) -> None:
    """The connection state and counters, every ``every_s`` (None: once)."""
    while True:
        c = ingest.connection
        state = (c.connected, c.error, c.since_ms, c.failures, ingest.subscribed.is_set())
        await gateway.send("state", *state, dict(ingest.counters))
        if every_s is None:
            return
        await asyncio.sleep(every_s)


async def _serve(sock: socket.socket) -> int:
    reader, writer = await asyncio.open_unix_connection(sock=sock)
    _, index, options, stations, admission, paused, level = await read_frame(reader)
    logging.basicConfig(
        level=level,
        format=f"%(asctime)s %(levelname)s mqtt-worker-{index}[%(process)d] %(name)s: %(message)s",
    )
    gateway = _Gateway(writer)
    ingest = MqttIngest(
        options,
        gateway.produce,
        gateway.dead_letter,
        known_stations=stations,
        on_broker_drops=gateway.drops,
        admission=admission,
        on_sequence=gateway.sequence,
    )
    ingest.on_caught_up = gateway.caught_up
    if options.retire:
        ingest.on_session = gateway.session
    if paused is not None:
        ingest.pause(paused)
    await ingest.start()
    stop = asyncio.Event()
    listening = asyncio.ensure_future(_listen(reader, ingest, gateway, stop))
    listening.add_done_callback(_listener_ended)
    tasks: list[asyncio.Future[Any]] = [
        asyncio.ensure_future(stop.wait()),
        asyncio.ensure_future(ingest.join()),
        asyncio.ensure_future(_report(ingest, gateway, REPORT_S)),
    ]
    retired = None if ingest.retired is None else asyncio.shield(ingest.retired)
    if retired is not None:
        tasks.append(retired)
    done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    gave_up = None if retired is None or retired not in done else retired.exception()
    ended = retired is not None and retired in done and gave_up is None
    if isinstance(gave_up, ConnectionRefusedError):
        # The broker refuses this client id (its ACLs): no session of it to take.
        log.info("MQTT ingest: %s: %s", options.client_id, gave_up)
        ended = True
    failed = tasks[0] not in done and not ended
    if failed:
        log.error("MQTT ingest worker failed", exc_info=next(iter(done)).exception())
    # Still listening and reporting: the batch in hand is written when the gateway
    # answers, then acknowledged and fenced (``MqttIngest.stop``).
    await ingest.stop()
    for task in [*tasks, listening]:
        task.cancel()
    await _report(ingest, gateway, None)  # the final counts
    return 1 if failed else 0


def main(argv: list[str]) -> int:
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    return asyncio.run(_serve(socket.socket(fileno=int(argv[1]))))


if __name__ == "__main__":
    sys.exit(main(sys.argv))
