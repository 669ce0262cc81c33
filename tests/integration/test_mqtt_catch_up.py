"""Through real mosquitto: an ingest worker of the pool (``mqtt.processes`` > 1) is
"catching up" until the mark it published behind its session's backlog comes back, and
while it is, the pool holds the other workers' batches for its time-ordered merge
(``connectors.mqtt.pool``). A mark can be lost (a broker whose queue limit dropped it,
one restarted without its queue): the worker must not wait for it for ever, or the
whole ingest stands still behind a gateway that looks alive."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import connectors.mqtt.client_catchup as client_catchup
from connectors.mqtt.client import MqttIngest
from connectors.mqtt.mosquitto import Mosquitto
from connectors.mqtt.options import MqttOptions

pytestmark = pytest.mark.integration

CATCH_UP = "vigil-ingest/catch-up-test-0/catch-up"


async def _caught_up_after_a_lost_mark(broker: Mosquitto) -> bool:
    async def produce(readings: list[Any]) -> None:
        pass

    async def dead_letter(raw: bytes, reason: str, source: str) -> None:
        raise AssertionError(f"dead letter: {reason}")

    options = MqttOptions(
        host=broker.host,
        port=broker.port,
        client_id="catch-up-test-0",
        broker_drops_topic=None,
        catch_up_topic=CATCH_UP,
    )
    ingest = MqttIngest(options, produce, dead_letter)
    caught_up = asyncio.Event()
    ingest.on_caught_up = caught_up.set
    publish = ingest._client.publish
    lost: list[bytes] = []

    def losing_publish(topic: str, payload: Any = None, *args: Any, **kwargs: Any) -> Any:
        if topic == CATCH_UP and not lost:  # the first mark never reaches the queue
            lost.append(payload)
            return None
        return publish(topic, payload, *args, **kwargs)

    ingest._client.publish = losing_publish  # type: ignore[method-assign]
    await ingest.start()
    try:
        await asyncio.wait_for(caught_up.wait(), 30)
    except TimeoutError:
        return False
    finally:
        await ingest.stop()
    assert lost, "no mark was published"
    return not ingest.catching_up


def test_a_lost_catch_up_mark_is_not_waited_for_for_ever(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(client_catchup, "REMARK_S", 0.5)
    assert asyncio.run(_caught_up_after_a_lost_mark(mosquitto))
