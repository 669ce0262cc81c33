"""Payload authentication for devices that reach the gateway directly: an HMAC over the
payload with a counter, and the counters that reject replays.

A device with a key sends a *sealed* payload::

    counter (u32, big-endian) | body | tag (8 bytes)

``tag`` is the first 8 bytes of HMAC-SHA256(key, identity UTF-8 | 0x00 | counter | body):
the identity is inside the MAC, so a sealed payload cannot be moved to another device.
The counter rises with every new payload of the device. The gateway keeps, per device,
the last accepted counter and tag (``Counters``, RocksDB, written with fsync); a payload
is accepted once its uplink is taken (``connectors.nbiot.uplink``: one refused whole
leaves no counter, so sent again it is decoded again):

* ``counter > last`` and ``counter <= last + WINDOW``: new, accepted;
* ``counter == last`` with the same tag: the device sending again a payload whose answer
  it missed (the gateway died before answering): acknowledged, not ingested twice;
* anything else is a replay or out of window: ``PayloadError``, dead-lettered.

A device never heard from before is accepted at any counter (trust on first use);
from then on its counters are kept across restarts. The new counters of a batch are
written (``flush``) after its readings are durable and before it is acknowledged, so a
crash in between makes the device's retry a duplicate of readings already in the log,
never a loss.
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch, WriteOptions

from connectors.ingest import PayloadError

__all__ = ["TAG_BYTES", "WINDOW", "AuthError", "Counters", "seal", "unseal"]

TAG_BYTES = 8
#: How far ahead of the last accepted counter a new one may be.
WINDOW = 1 << 20
_COUNTER = struct.Struct(">I")
_STATE = struct.Struct(">I8s")


class AuthError(PayloadError):
    """A payload that fails authentication (bad tag, replay, out of window)."""


def _tag(key: bytes, identity: str, counter: int, body: bytes) -> bytes:
    mac = hmac.new(key, identity.encode() + b"\x00" + _COUNTER.pack(counter), hashlib.sha256)
    mac.update(body)
    return mac.digest()[:TAG_BYTES]


def seal(key: bytes, identity: str, counter: int, body: bytes) -> bytes:
    """What a device sends: ``body`` sealed with its counter (simulators, tests)."""
    return _COUNTER.pack(counter) + body + _tag(key, identity, counter, body)


def unseal(key: bytes, identity: str, payload: bytes) -> tuple[int, bytes, bytes]:
    """(counter, body, tag) of a sealed payload whose tag verifies; AuthError otherwise."""
    if len(payload) < _COUNTER.size + TAG_BYTES:
        raise AuthError(f"sealed payload of {len(payload)} bytes is too short")
    (counter,) = _COUNTER.unpack_from(payload)
    body, tag = payload[_COUNTER.size : -TAG_BYTES], payload[-TAG_BYTES:]
    if not hmac.compare_digest(tag, _tag(key, identity, counter, body)):
        raise AuthError(f"bad HMAC for device {identity} (counter {counter})")
    return counter, body, tag


class Counters:
    """The last accepted (counter, tag) per device, durable in ``path`` (RocksDB)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        options = Options(raw_mode=True)
        options.create_if_missing(True)
        self._db = Rdict(str(path), options)
        self._sync = WriteOptions()
        self._sync.sync = True
        #: Accepted since the last flush, not yet durable.
        self._pending: dict[str, tuple[int, bytes]] = {}

    def _last(self, identity: str) -> tuple[int, bytes] | None:
        state = self._pending.get(identity)
        if state is None:
            raw = self._db.get(identity.encode())
            if raw is not None:
                counter, tag = _STATE.unpack(raw)
                state = (counter, tag)
        return state

    def check(self, identity: str, counter: int, tag: bytes) -> bool:
        """True: new; False: the last payload again (acknowledge, do not ingest).
        Raises AuthError for a replay or a counter out of window."""
        last = self._last(identity)
        if last is None:
            return True
        last_counter, last_tag = last
        if counter == last_counter and hmac.compare_digest(tag, last_tag):
            return False
        if counter <= last_counter:
            raise AuthError(
                f"replayed counter {counter} for device {identity} (last {last_counter})"
            )
        if counter > last_counter + WINDOW:
            raise AuthError(
                f"counter {counter} for device {identity} is out of window (last {last_counter})"
            )
        return True

    def accept(self, identity: str, counter: int, tag: bytes) -> None:
        """Record an accepted payload; durable at the next ``flush``."""
        self._pending[identity] = (counter, tag)

    def flush(self) -> None:
        """Make the accepted counters durable (one fsynced write)."""
        if not self._pending:
            return
        batch = WriteBatch(raw_mode=True)
        for identity, (counter, tag) in self._pending.items():
            batch.put(identity.encode(), _STATE.pack(counter, tag))
        self._db.write(batch, self._sync)
        self._pending.clear()

    def close(self) -> None:
        self._db.close()
