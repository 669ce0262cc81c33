"""Random bytes and mutated real frames against running SL 651 and HJ 212 servers over
TCP: whatever a connection sends, the server survives it, nothing escapes, and the next
connection's good frame is answered (hypothesis' deadline: no hang)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from simulators.hj212_station import Hj212Station
from simulators.sl651_rtu import Sl651Rtu
from tests.fieldserver_support import RunningServer
from tests.unit.test_field_decode_properties import HJ212, SL651, mutate

T0 = datetime(2026, 7, 1, 10, 0)
GOOD = {"sl651": Sl651Rtu().report(T0)[0], "hj212": Hj212Station().report(T0)[0]}
SEEDS = {"sl651": [*SL651, GOOD["sl651"]], "hj212": [*HJ212, GOOD["hj212"]]}
ONLINE = settings(
    max_examples=60,
    deadline=10_000,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)


@pytest.fixture(scope="module", params=["sl651", "hj212"])
def server(request: pytest.FixtureRequest) -> Iterator[RunningServer]:
    running = RunningServer(request.param)
    yield running
    running.close()


def _survives(server: RunningServer, junk: bytes) -> None:
    with server.connect() as bad:
        bad.sendall(junk)
    with server.connect() as sock:
        sock.sendall(GOOD[server.protocol])
        assert len(server.replies(sock, 1)) == 1


@ONLINE
@given(data=st.data())
def test_mutated_frames_then_a_good_one(server: RunningServer, data: st.DataObject) -> None:
    raw = data.draw(st.sampled_from(SEEDS[server.protocol]))
    frames = [mutate(data, raw) for _ in range(data.draw(st.integers(1, 3)))]
    _survives(server, b"".join(frames))


@ONLINE
@given(junk=st.binary(max_size=2048))
def test_random_bytes_then_a_good_one(server: RunningServer, junk: bytes) -> None:
    _survives(server, junk)
