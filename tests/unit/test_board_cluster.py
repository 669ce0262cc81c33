"""Every Kafka worker's station board merged for the page (``board_cluster``): a peer's
board as ``/api/board`` serves it (only the stations changed since the version asked,
all of them for another epoch), merged per metric newest first, this worker's own on
equal times; a peer that stops answering keeps its stations, marked stale, until a
board that answers has them as new. A big board comes in pages of ``PAGE_STATIONS``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp.test_utils import make_mocked_request

from engine.contracts.batch import TelemetryBatch
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_cluster import PAGE_STATIONS, ClusterBoard, board_route

STEP = 300_000
T0 = 1_719_792_000_000


def _feed(board: StationBoard, *rows: tuple[str, int, float]) -> None:
    rows_ = [(s, "water_level", T0 + i * STEP, v) for s, i, v in rows]
    board.observe(TelemetryBatch.from_rows(rows_))


class _Peers:
    """Stands for ``OwnerForwarder.get_json``: each URL's board answered in process; a
    URL in ``down`` answers nothing."""

    def __init__(self, boards: dict[str, tuple[StationBoard, str]]) -> None:
        self.handlers = {url: board_route(b, epoch) for url, (b, epoch) in boards.items()}
        self.down: set[str] = set()
        self.asked: list[str] = []
        #: The number of stations in each answer, in order.
        self.sizes: list[int] = []
        #: Called before each request is answered, with the number answered so far.
        self.before: Callable[[int], None] = lambda answered: None

    async def get_json(
        self, urls: Mapping[str, str], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, url in urls.items():
            self.asked.append(url)
            self.before(len(self.sizes))
            if name in self.down:
                out[name] = None
                continue
            parts = urlsplit(url)
            response = await self.handlers[name](
                make_mocked_request("GET", f"{parts.path}?{parts.query}")
            )
            assert response.body is not None
            out[name] = json.loads(bytes(response.body))  # type: ignore[arg-type]
            self.sizes.append(len(out[name]["stations"]))
        return out


def test_boards_merge_newest_first_and_a_silent_peer_stays_shown() -> None:
    async def go() -> None:
        mine, theirs = StationBoard(), StationBoard()
        _feed(mine, ("A", 0, 1.0), ("B", 0, 2.0))
        _feed(theirs, ("B", 1, 2.5), ("C", 0, 3.0), ("C", 1, 3.1))

        async def members() -> list[str]:
            return ["http://self", "http://peer"]

        peers = _Peers({"http://peer": (theirs, "peer-epoch")})
        merged = ClusterBoard(mine, peers, members, {})  # type: ignore[arg-type]
        peers.handlers["http://self"] = board_route(mine, merged.epoch)
        await merged.refresh(max_age_s=0)
        # B: the peer's later reading wins, with its trace; C only the peer has.
        assert {s: (merged.of(s)["water_level"].value) for s in "ABC"} == {
            "A": 1.0, "B": 2.5, "C": 3.1,
        }  # fmt: skip
        assert merged.of("C")["water_level"].trace(STEP) == [(T0, 3.0), (T0 + STEP, 3.1)]
        assert not any(merged.stale(s) for s in "ABC")
        # This worker found itself by its epoch, and is not asked again.
        peers.asked.clear()
        version = merged.version
        await merged.refresh(max_age_s=0)
        assert [urlsplit(u).netloc for u in peers.asked] == ["peer"]
        assert merged.version == version  # nothing changed
        # The next poll asks for what changed since: C's new reading only.
        _feed(theirs, ("C", 2, 3.2))
        peers.asked.clear()
        await merged.refresh(max_age_s=0)
        assert "since=1" in peers.asked[0] and "epoch=peer-epoch" in peers.asked[0]
        assert merged.version == version + 1 and merged.of("C")["water_level"].value == 3.2

        # The peer stops answering: its stations stay, stale; then this worker takes
        # C over (read back): as new, its own wins, no longer stale.
        peers.down.add("http://peer")
        await merged.refresh(max_age_s=0)
        assert merged.version == version + 2
        assert merged.of("C")["water_level"].value == 3.2 and merged.stale("C")
        assert merged.stale("B") and not merged.stale("A")
        _feed(mine, ("C", 0, 3.0), ("C", 1, 3.1), ("C", 2, 3.2))
        assert merged.of("C")["water_level"].value == 3.2 and not merged.stale("C")

    asyncio.run(go())


def test_board_route_sends_everything_to_another_epoch() -> None:
    async def go() -> None:
        board = StationBoard()
        _feed(board, ("A", 0, 1.0))
        _feed(board, ("B", 0, float("nan")))
        route = board_route(board, "e1")

        async def get(query: str) -> Any:
            response = await route(make_mocked_request("GET", f"/api/board?{query}"))
            return json.loads(bytes(response.body))  # type: ignore[arg-type]

        assert set((await get("since=1&epoch=e1"))["stations"]) == {"B"}
        assert set((await get("since=2&epoch=e1"))["stations"]) == set()
        everything = await get("since=2&epoch=old")
        assert everything["version"] == 2 and set(everything["stations"]) == {"A", "B"}
        assert everything["stations"]["B"]["water_level"][1] is None  # NaN: null

    asyncio.run(go())


def test_an_owner_that_does_not_follow_pages_gets_the_whole_board() -> None:
    """An owner of a version before paging (a rolling upgrade) does not send
    ``pages=1``: it takes the answer's ``version`` as everything it asked for, so the
    answer holds every changed station, in one page."""

    async def go() -> None:
        board = StationBoard()
        ids = [f"S{i:05d}" for i in range(PAGE_STATIONS + 500)]
        board.observe(TelemetryBatch.from_rows([(s, "water_level", T0, 1.0) for s in ids]))
        route = board_route(board, "e1")

        async def get(query: str) -> Any:
            response = await route(make_mocked_request("GET", f"/api/board?{query}"))
            return json.loads(bytes(response.body))  # type: ignore[arg-type]

        old = await get("since=0&epoch=e1")
        assert len(old["stations"]) == len(ids) and old["next"] is None
        paged = await get("since=0&epoch=e1&pages=1")
        assert len(paged["stations"]) == PAGE_STATIONS and paged["next"] is not None

    asyncio.run(go())


def test_a_big_board_comes_whole_in_bounded_pages_whatever_changes_between_them() -> None:
    """5,000 stations on a peer, all changed in one version (a read-back merges its
    board in one step): its first poll comes in pages of at most ``PAGE_STATIONS``, cut
    by station within that version; the owner follows them in the same poll and ends
    with every station. Readings taken between two pages -- of a station already sent
    and of one not yet sent -- are on the merged board as new; then the polls ask for
    what changed since, as before."""

    async def go() -> None:
        mine, theirs = StationBoard(), StationBoard()
        ids = [f"S{i:05d}" for i in range(5_000)]
        theirs.observe(TelemetryBatch.from_rows([(s, "water_level", T0, 1.0) for s in ids]))

        async def members() -> list[str]:
            return ["http://peer"]

        peers = _Peers({"http://peer": (theirs, "peer-epoch")})

        def between_pages(answered: int) -> None:
            if answered == 1:  # after the first page: S00000 was in it, S04999 not
                _feed(theirs, ("S00000", 1, 2.0), ("S04999", 1, 3.0))
                peers.before = lambda answered: None

        peers.before = between_pages
        merged = ClusterBoard(mine, peers, members, {})  # type: ignore[arg-type]
        await merged.refresh(max_age_s=0)

        assert peers.sizes and max(peers.sizes) <= PAGE_STATIONS  # each answer bounded
        assert len(peers.sizes) == -(-5_000 // PAGE_STATIONS)  # the pages, in one poll
        shown = {s: merged.of(s)["water_level"].value for s in ids}
        assert shown == {**dict.fromkeys(ids, 1.0), "S00000": 2.0, "S04999": 3.0}
        assert not any(merged.stale(s) for s in ids)

        # Caught up: the next polls ask since the board's version, one page each.
        peers.asked.clear()
        peers.sizes.clear()
        _feed(theirs, ("S02500", 2, 4.0))
        await merged.refresh(max_age_s=0)
        assert len(peers.asked) == 1 and f"since={theirs.version - 1}&" in peers.asked[0]
        assert "after=" not in peers.asked[0] and peers.sizes == [1]
        assert merged.of("S02500")["water_level"].value == 4.0
        await merged.refresh(max_age_s=0)
        assert peers.sizes == [1, 0]

    asyncio.run(go())


def test_a_page_not_answered_is_asked_again_at_the_next_poll() -> None:
    async def go() -> None:
        theirs = StationBoard()
        ids = [f"S{i:05d}" for i in range(5_000)]
        theirs.observe(TelemetryBatch.from_rows([(s, "water_level", T0, 1.0) for s in ids]))

        async def members() -> list[str]:
            return ["http://peer"]

        peers = _Peers({"http://peer": (theirs, "peer-epoch")})
        peers.before = lambda answered: peers.down.add("http://peer") if answered == 1 else None
        merged = ClusterBoard(StationBoard(), peers, members, {})  # type: ignore[arg-type]
        await merged.refresh(max_age_s=0)
        # The first page is shown, stale: the peer did not answer the second.
        assert peers.sizes == [PAGE_STATIONS] and len(peers.asked) == 2
        first = ids[:PAGE_STATIONS]
        assert all(merged.of(s) and merged.stale(s) for s in first)
        assert not any(merged.of(s) for s in ids[PAGE_STATIONS:])

        peers.down.clear()
        peers.before = lambda answered: None
        peers.asked.clear()
        await merged.refresh(max_age_s=0)
        assert f"after={first[-1]}" in peers.asked[0]  # where the pages stopped
        assert all(merged.of(s) and not merged.stale(s) for s in ids)

    asyncio.run(go())
