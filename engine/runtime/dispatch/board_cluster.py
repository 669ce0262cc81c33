"""The duty room's station board of a whole Kafka app: every worker's own board merged.

A Kafka worker's board holds the stations of the telemetry partitions it evaluates
(``board_kafka``), but the page's station list and live stream are served by the
dispatcher's owner (the other workers forward them, ``forwarding``). So the owner merges
its board with every peer's: the peers are the dispatcher group's members
(``forwarding.group_members``: each worker's client id carries its web port), and each
serves its own board at ``GET /api/board?since=<version>&epoch=<epoch>`` (``board_route``):
the stations changed after that version of its board, each with its readings and traces
in full; all of them when ``epoch`` is not the board's (a first poll, or the peer
restarted and counts versions anew). A poll is then the stations that reported since the
last one (at 10,000 stations every 5 minutes, about 17 a poll), and the peer's work one
pass over its stations' versions.

Paged: an answer holds at most ``PAGE_STATIONS`` stations. A first poll of 10,000
stations would otherwise be several MB, about 2 s to serialise and send: at the poll's
timeout, so the owner might never get a big peer's first answer. When more stations
changed than a page holds, the peer sends the first ones in the order (version that last
changed the station, its name) and ``next``, where the next page starts: ``since`` and
``after`` (the page's last station). The owner asks for that page at once, and so on,
each page a request with its own timeout, until it holds what the peer's board held at
the first answer; then it goes on with ``since`` as before. A station changed while the
pages come moves to the end of that order (its version is the board's newest), so it
comes again, as it is then: nothing is missed, whatever changes between two pages.

Why pull from the owner rather than push from each worker: the owner moves, and the
dispatcher group already says where the workers are; a worker that does not answer is
then simply one whose copy is not refreshed. Why the whole station at once, traces
included: a station is a few metrics of 72 points, and its last value and sparkline then
never come from two different moments.

Merging, per station and metric, the newest reading (event time) wins, with its trace;
of equal times this worker's own, then a peer that answered its last poll. A peer that
does not answer (killed, partitioned) keeps its stations as last known, not blank, and
``stale`` says so for each station whose shown reading came from it (the page greys the
row). When its partitions move to another worker, that worker reads them back and its
readings, at least as new, win; a peer gone from the group for ``FORGET_S`` is dropped.

Live: while a page's stream waits (``changed_since``), one poll loop per worker asks the
peers at most every ``POLL_S`` seconds, each with ``PEER_TIMEOUT_S`` to answer, and the
group's members are looked up at most every ``MEMBERS_TTL_S``; a peer's new readings, or
a peer that stops answering, move the merged ``version`` and the page reloads its
stations. Requests go with this worker's own token (``web.token_env``, the same for every
worker of the app) and, with ``web.tls``, the forwarder's TLS context.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol
from urllib.parse import quote

import msgspec
from aiohttp import web

from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.forwarding import OwnerForwarder

__all__ = ["PAGE_STATIONS", "POLL_S", "ClusterBoard", "RemoteReading", "board_route"]

log = logging.getLogger("vigil.dispatch")

#: Least seconds between two polls of the peers' boards.
POLL_S = 0.5
#: Seconds a peer has to answer a poll (each page of one).
PEER_TIMEOUT_S = 2.0
#: Most stations in one answer of ``/api/board``: at 10,000 stations a fifth of the
#: board, ~0.4 s to serialise and send, well within ``PEER_TIMEOUT_S``.
PAGE_STATIONS = 2_000
#: Seconds the dispatcher group's member list is reused before it is described again.
MEMBERS_TTL_S = 5.0
#: Seconds a peer absent from the group keeps its stations here (its partitions are read
#: back by the worker that takes them over well before).
FORGET_S = 600.0


class Reading(Protocol):
    """A sensor's last reading as the page shows it (``board.LastReading``'s fields)."""

    ts: int
    value: float
    quality: int

    def trace(self, bucket_ms: int) -> list[tuple[int, float]]: ...


class RemoteReading:
    """A peer's ``LastReading`` as it sent it: ``ts`` (epoch ms), ``value``, ``quality``
    and its trace's points ``(ts, value)``, oldest first."""

    __slots__ = ("points", "quality", "ts", "value")

    def __init__(self, ts: int, value: float, quality: int, points: list[tuple[int, float]]):
        self.ts, self.value, self.quality, self.points = ts, value, quality, points

    def trace(self, bucket_ms: int) -> list[tuple[int, float]]:
        return self.points


def _nan(value: float | None) -> float:
    return float("nan") if value is None else float(value)


Route = Callable[[web.Request], Awaitable[web.Response]]


def changed_page(
    board: StationBoard, since: int, after: str | None, limit: int
) -> tuple[list[str], tuple[int, str] | None]:
    """The stations of ``board`` changed after ``since`` (a board version) -- with
    ``after``, also those last changed at ``since`` itself whose name sorts after it --
    at most ``limit``, and, when more are left, where the next page starts: the version
    that last changed the page's last station, and its name. Pages follow the order
    (version that last changed the station, name): one station per place, and a station
    changed later moves past every page already given."""
    touched = board.touched
    if after is None:
        changed = board.changed(since)
    else:
        changed = [s for s in board.changed(since - 1) if (touched[s], s) > (since, after)]
    if len(changed) <= limit:
        return changed, None  # the usual poll: no sort
    page = sorted(changed, key=lambda s: (touched[s], s))[:limit]
    return page, (touched[page[-1]], page[-1])


def board_route(board: StationBoard, epoch: str) -> Route:
    """The handler of ``GET /api/board?since=<version>&epoch=<epoch>[&after=<station>][&pages=1]``:
    this worker's own board (module docstring), as ``{"epoch", "version", "stations":
    {station: {metric: [ts, value, quality, [[ts, value], ...]]}}, "next"}`` (a value that
    is not a number as null): at most ``PAGE_STATIONS`` stations (``changed_page``), and
    ``next`` the ``since`` and ``after`` of the next page, or null when none is left.
    ``version`` is the board's now, whatever the page."""

    async def handler(request: web.Request) -> web.Response:
        after = request.query.get("after")
        try:
            since = int(request.query.get("since", "0"))
        except ValueError:
            since, after = 0, None
        if request.query.get("epoch") != epoch:
            since, after = 0, None
        # Pages only for an owner that follows them (``pages=1``): one of a version
        # before paging, in a rolling upgrade, takes ``version`` as all it asked for
        # and would never ask for the stations past the first page.
        limit = PAGE_STATIONS if request.query.get("pages") == "1" else len(board.touched)
        page, more = changed_page(board, since, after, limit)
        stations = {
            s: {m: [r.ts, r.value, r.quality, r.trace(board.bucket_ms)]
                for m, r in board.of(s).items()}
            for s in page
        }  # fmt: skip
        body = {
            "epoch": epoch, "version": board.version, "stations": stations,
            "next": None if more is None else {"since": more[0], "after": more[1]},
        }  # fmt: skip
        return web.Response(body=msgspec.json.encode(body), content_type="application/json")

    return handler


class _Peer:
    """What this worker holds of one peer's board."""

    def __init__(self, seen_at: float) -> None:
        self.epoch = ""
        #: Where the next poll starts: after this version of the peer's board and, when
        #: ``after`` is set (a page with more to come), after that station of it.
        self.version = 0
        self.after: str | None = None
        #: The peer's board version at its last answer.
        self.head = 0
        self.stations: dict[str, dict[str, RemoteReading]] = {}
        #: Whether it answered the last poll.
        self.answered = False
        #: Loop time it was last a member of the group.
        self.seen_at = seen_at

    @property
    def position(self) -> tuple[int, str]:
        """Where the next poll starts, as ``changed_page`` orders the stations."""
        return self.version, "" if self.after is None else self.after

    def take(self, answer: Mapping[str, Any]) -> bool:
        """Take a poll's answer (one page); whether anything shown changed. An answer
        that does not parse changes nothing (KeyError, TypeError, ValueError)."""
        epoch, head, more = answer["epoch"], int(answer["version"]), answer.get("next")
        version, after = (head, None) if more is None else (int(more["since"]), more["after"])
        if not isinstance(after, str | None):
            raise TypeError(f"next page after {after!r}")
        stations = {
            station: {
                m: RemoteReading(int(ts), _nan(v), int(q), [(int(t), _nan(x)) for t, x in pts])
                for m, (ts, v, q, pts) in metrics.items()
            }
            for station, metrics in answer["stations"].items()
        }
        moved = not self.answered or bool(stations)
        self.answered = True
        if epoch != self.epoch:
            self.epoch, self.stations, moved = epoch, {}, True
        self.version, self.after, self.head = version, after, head
        self.stations.update(stations)
        return moved


class ClusterBoard:
    """This worker's ``local`` board merged with its peers' (module docstring), read as a
    ``StationBoard`` is by the page (``of``, ``stale``, ``version``, ``changed_since``).
    ``members`` gives the dispatcher group's members' URLs (this worker's among them:
    known by the ``epoch`` it answers with); ``headers`` go with each poll."""

    def __init__(
        self,
        local: StationBoard,
        forwarder: OwnerForwarder,
        members: Callable[[], Awaitable[list[str]]],
        headers: Mapping[str, str],
    ) -> None:
        self.local = local
        self.bucket_ms = local.bucket_ms
        self.forwarder = forwarder
        self.members = members
        self.headers = dict(headers)
        #: This process's board's identity in ``/api/board`` (versions restart with it).
        self.epoch = uuid.uuid4().hex
        self._peers: dict[str, _Peer] = {}
        self._self_urls: set[str] = set()
        self._urls: list[str] = []
        self._urls_at = float("-inf")
        self._refreshed_at = float("-inf")
        self._moves = 0
        self._moved = asyncio.Event()
        self._lock = asyncio.Lock()
        self._watched_until = 0.0
        self._poller: asyncio.Task[None] | None = None

    @property
    def version(self) -> int:
        """Moves whenever this worker's board or a peer's shown stations change."""
        return self.local.version + self._moves

    def _merged(self, station: str) -> tuple[dict[str, Reading], bool]:
        """The station's newest reading per metric, and whether one came from a peer
        that did not answer its last poll."""
        own = self.local.of(station)
        best: dict[str, tuple[Reading, bool]] = {m: (r, False) for m, r in own.items()}
        peers = sorted(self._peers.values(), key=lambda p: not p.answered)  # answering first
        for peer in peers:
            for m, r in peer.stations.get(station, {}).items():
                if m not in best or r.ts > best[m][0].ts:
                    best[m] = (r, not peer.answered)
        return {m: r for m, (r, _) in best.items()}, any(s for _, s in best.values())

    def of(self, station: str) -> dict[str, Reading]:
        """The station's sensors by metric, the newest of every worker's board."""
        return self._merged(station)[0]

    def stale(self, station: str) -> bool:
        """Whether a reading ``of`` gives came from a peer that did not answer its last poll."""
        return self._merged(station)[1]

    async def refresh(self, max_age_s: float = POLL_S) -> None:
        """Poll the peers, unless a poll ended less than ``max_age_s`` seconds ago (one at
        a time: a caller that waited for another's poll takes its result)."""
        loop = asyncio.get_running_loop()
        async with self._lock:
            if loop.time() - self._refreshed_at < max_age_s:
                return
            try:
                await self._poll()
            finally:
                self._refreshed_at = loop.time()

    async def _poll(self) -> None:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if now - self._urls_at >= MEMBERS_TTL_S:
            # Asked again after MEMBERS_TTL_S either way: a broker away must not hold up
            # every poll (and the page's station list) for its timeouts.
            self._urls_at = now
            try:
                self._urls = await asyncio.wait_for(self.members(), PEER_TIMEOUT_S)
            except Exception as exc:  # the broker away: ask the peers known
                log.warning("station board: could not list the workers: %r", exc)
        for url in self._urls:
            if url not in self._self_urls:
                self._peers.setdefault(url, _Peer(now)).seen_at = now
        # The members only: a peer gone from the group is not asked.
        asked = [url for url, p in self._peers.items() if p.seen_at == now]
        answers = await self._ask(asked)
        moved = False
        for url, peer in list(self._peers.items()):
            moved |= self._take(url, peer, answers.get(url))
            if now - peer.seen_at > FORGET_S and url in self._peers:
                del self._peers[url]
                moved = True
        # A peer with pages left (a first poll of a big board): the next ones now, until
        # what its board held at this poll's answer is here (its version then: later
        # changes wait for the next poll). Each page moves the peer's position on; one
        # that does not (no answer, or the peer restarted) ends it until the next poll.
        follow = {
            url: p.head
            for url in asked
            if isinstance(answers.get(url), dict)
            and (p := self._peers.get(url)) is not None
            and p.after is not None
        }
        while follow:
            before = {url: self._peers[url].position for url in follow}
            answers = await self._ask(list(follow))
            for url in follow:
                moved |= self._take(url, self._peers[url], answers.get(url))
            follow = {
                url: head
                for url, head in follow.items()
                if (p := self._peers.get(url)) is not None
                and p.after is not None
                and before[url] < p.position
                and p.version <= head
            }
        if moved:
            self._moves += 1
            self._moved.set()
            self._moved = asyncio.Event()

    async def _ask(self, urls: list[str]) -> dict[str, Any]:
        """Each of ``urls``' board from where this worker's copy of it stands
        (``board_route``): URL -> the answer, or None."""
        asks = {}
        for url in urls:
            p = self._peers[url]
            query = f"since={p.version}&epoch={p.epoch}&pages=1"
            if p.after is not None:
                query += f"&after={quote(p.after, safe='')}"
            asks[url] = f"{url}/api/board?{query}"
        return await self.forwarder.get_json(asks, self.headers, PEER_TIMEOUT_S)

    def _take(self, url: str, peer: _Peer, answer: Any) -> bool:
        """Take ``peer``'s answer (None: it did not answer); whether anything shown
        changed."""
        if isinstance(answer, dict) and answer.get("epoch") == self.epoch:
            self._self_urls.add(url)  # this worker, as the broker sees it
            del self._peers[url]
            return False
        if isinstance(answer, dict):
            try:
                return peer.take(answer)
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("station board: %s answered %r", url, exc)
                return False
        if peer.answered:
            peer.answered = False
            return True
        return False

    async def changed_since(self, version: int, timeout_s: float) -> int:
        """``version`` once it differs from the one given, or after ``timeout_s`` seconds;
        the peers are polled meanwhile (``POLL_S``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        self._watched_until = max(self._watched_until, deadline)
        if self._poller is None or self._poller.done():
            self._poller = asyncio.create_task(self._poll_while_watched())
        while self.version == version and (left := deadline - loop.time()) > 0:
            waits = {
                asyncio.ensure_future(self.local.changed_since(self.local.version, left)),
                asyncio.ensure_future(self._moved.wait()),
            }
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()
        return self.version

    async def _poll_while_watched(self) -> None:
        loop = asyncio.get_running_loop()
        while loop.time() < self._watched_until:
            try:
                await self.refresh()
            except Exception:  # display only: the next poll tries again
                log.exception("station board: a poll of the workers failed")
            await asyncio.sleep(POLL_S)

    async def stop(self) -> None:
        """Stop polling (the worker stops)."""
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._poller
