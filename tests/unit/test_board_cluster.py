"""Every Kafka worker's station board merged for the page (``board_cluster``): a peer's
board as ``/api/board`` serves it (only the stations changed since the version asked,
all of them for another epoch), merged per metric newest first, this worker's own on
equal times; a peer that stops answering keeps its stations, marked stale, until a
board that answers has them as new."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from aiohttp.test_utils import make_mocked_request

from engine.contracts.batch import TelemetryBatch
from engine.runtime.dispatch.board import StationBoard
from engine.runtime.dispatch.board_cluster import ClusterBoard, board_route

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

    async def get_json(
        self, urls: Mapping[str, str], headers: Mapping[str, str], timeout_s: float
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, url in urls.items():
            self.asked.append(url)
            if name in self.down:
                out[name] = None
                continue
            parts = urlsplit(url)
            response = await self.handlers[name](
                make_mocked_request("GET", f"{parts.path}?{parts.query}")
            )
            assert response.body is not None
            out[name] = json.loads(bytes(response.body))  # type: ignore[arg-type]
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
