"""Stations in the registry store, for deployments with too many for a YAML file.

The store keeps each station as the JSON of ``rules.station.Station.document()`` under
``s`` + its id (a rule curve with its points: the store needs no curve file);
``rules.registry.load_registry(store folder)`` reads them back into a
``Registry`` (in id order), so rules select stations from a store as from a file.
Stations are validated by ``load_registry`` before they are written: a store only
holds stations that passed it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rocksdict import Rdict, WriteBatch

from rules.store.db import STATION, open_reader, open_writer, read_meta, remove_keys, write_meta

__all__ = [
    "put_stations",
    "remove_stations",
    "station_documents",
    "station_ids",
    "station_metrics",
]


def put_stations(store: Path, documents: Iterable[dict[str, Any]]) -> tuple[int, int]:
    """Upsert stations (``{"id": ..., ...}`` documents); returns (added, updated)."""
    db = open_writer(store)
    try:
        count = int(read_meta(db, "stations", 0))
        added = updated = 0
        batch = WriteBatch(raw_mode=True)
        for doc in documents:
            key = STATION + str(doc["id"]).encode()
            if db.get(key) is None:
                added += 1
            else:
                updated += 1
            batch.put(key, json.dumps(doc, ensure_ascii=False).encode())
        write_meta(batch, "stations", count + added)
        db.write(batch)
        db.flush()
        return added, updated
    finally:
        db.close()


def remove_stations(store: Path, ids: Iterable[str]) -> tuple[int, list[str]]:
    """Remove stations by id; returns how many were removed and the ids not found.
    Devices that name a removed station stay, and are refused by their next import."""
    return remove_keys(store, STATION, "stations", ids)


def _stations(db: Rdict) -> Iterator[tuple[bytes, bytes]]:
    it = db.iter()
    it.seek(STATION)
    while it.valid():
        key = it.key()
        if not key.startswith(STATION):
            break
        yield key, it.value()
        it.next()


def station_documents(store: Path) -> Iterator[dict[str, Any]]:
    """The stations of the store at ``store``, in id order (StoreMissing if none)."""
    db = open_reader(store)
    try:
        for _key, raw in _stations(db):
            yield json.loads(raw)
    finally:
        db.close()


def station_ids(store: Path) -> set[str]:
    """The ids of the store's stations; empty when there is no store yet."""
    if not (store / "CURRENT").exists():
        return set()
    db = open_reader(store)
    try:
        return {key[1:].decode() for key, _raw in _stations(db)}
    finally:
        db.close()


def station_metrics(store: Path) -> dict[str, frozenset[str]]:
    """Station id -> the metrics it reports, of the store's stations; empty when there
    is no store yet."""
    if not (store / "CURRENT").exists():
        return {}
    return {doc["id"]: frozenset(doc.get("metrics") or ()) for doc in station_documents(store)}
