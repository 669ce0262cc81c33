"""Product profiles: how each NB-IoT product's payloads become (metric, ts_ms, value).

A profile is data (``products.yaml``, validated once into frozen models), not code:

* ``binary``: a compact payload of ``prefix`` skipped bytes, then whole records of
  ``record_size`` bytes. Each field is read at its offset in the record as ``type``
  (u8/i8/u16/i16/u32/i32/f32/f64) in ``byte_order`` and becomes ``raw * scale +
  offset`` in the metric's unit. A record's ``time`` field (epoch seconds, unsigned)
  dates it; several records are a store-and-forward backlog, given back in payload
  order. A product without a time field takes exactly one record, at arrival time.
* ``senml``: SenML JSON or CBOR (``connectors.nbiot.senml``); the record names are the
  metrics, their units checked against (or converted to) the profile's ``units``.

``lwm2m``, ``opaque`` and ``properties`` say how the carriers' platforms name the same
metrics (OneNET ``ds_id``, the binary container, CTWing decoded properties).

Every failure is a ``PayloadError`` with a reason that names the product and the
offending offset or field; nothing else is raised, whatever the bytes.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from connectors.ingest import PayloadError
from connectors.nbiot.yaml_file import load_yaml

__all__ = ["BUILTIN", "Decoded", "Product", "Products", "load_products"]

BUILTIN = Path(__file__).with_name("products.yaml")

_FORMATS = {"u8": "B", "i8": "b", "u16": "H", "i16": "h", "u32": "I", "i32": "i"}
_FORMATS.update({"f32": "f", "f64": "d"})
FieldType = Literal["u8", "i8", "u16", "i16", "u32", "i32", "f32", "f64"]

#: (metric, ts_ms or None for "when it arrived", value in the metric's unit).
Decoded = tuple[str, int | None, float]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldSpec(_Frozen):
    metric: str = Field(min_length=1)
    offset: int = Field(ge=0)
    type: FieldType
    scale: float = 1.0
    #: Added after scaling (a sensor's zero, in the metric's unit).
    add: float = 0.0

    @property
    def size(self) -> int:
        return struct.calcsize(_FORMATS[self.type])


class TimeSpec(_Frozen):
    offset: int = Field(ge=0)
    type: Literal["u32"] = "u32"  # epoch seconds: NB-IoT modules keep network time


class Product(_Frozen):
    name: str = Field(min_length=1)
    kind: Literal["binary", "senml"]
    byte_order: Literal["big", "little"] = "big"
    prefix: int = Field(0, ge=0, le=255)
    record_size: int = Field(0, ge=0, le=1024)
    time: TimeSpec | None = None
    fields: tuple[FieldSpec, ...] = ()
    lwm2m: Mapping[str, str] = Field(default_factory=dict)
    opaque: str | None = None
    properties: Mapping[str, str] = Field(default_factory=dict)
    units: Mapping[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _layout(self) -> Product:
        if self.kind == "senml":
            return self
        if not self.fields or self.record_size == 0:
            raise ValueError("a binary product needs fields and record_size")
        spans = [(f.offset, f.size, f.metric) for f in self.fields]
        if self.time is not None:
            spans.append((self.time.offset, 4, "time"))
        for offset, size, name in spans:
            if offset + size > self.record_size:
                raise ValueError(
                    f"{name}: bytes {offset}..{offset + size - 1} overrun record_size "
                    f"{self.record_size}"
                )
        return self

    @cached_property
    def _record(self) -> struct.Struct:
        """One struct for the whole record: time first (if any), then the fields."""
        order = ">" if self.byte_order == "big" else "<"
        layout = [(f.offset, _FORMATS[f.type]) for f in self.fields]
        if self.time is not None:
            layout.insert(0, (self.time.offset, "I"))
        # Pad bytes between offsets; fields may overlap nowhere (checked by the offsets
        # being read separately below when they do).
        fmt, at = order, 0
        for offset, code in layout:
            if offset < at:
                return struct.Struct("")  # overlapping fields: read one by one
            fmt += f"{offset - at}x{code}"
            at = offset + struct.calcsize(order + code)
        return struct.Struct(fmt + f"{self.record_size - at}x")

    def decode_binary(self, payload: bytes) -> list[Decoded]:
        """A binary payload -> readings, record by record in payload order."""
        body = len(payload) - self.prefix
        if body <= 0 or body % self.record_size:
            raise PayloadError(
                f"product {self.name}: payload of {len(payload)} bytes is not {self.prefix} "
                f"prefix bytes and whole records of {self.record_size}"
            )
        count = body // self.record_size
        if count > 1 and self.time is None:
            raise PayloadError(
                f"product {self.name}: {count} records but no time field to date them"
            )
        record = self._record
        out: list[Decoded] = []
        for i in range(count):
            start = self.prefix + i * self.record_size
            if record.size:
                values = record.unpack_from(payload, start)
            else:
                values = self._unpack_each(payload, start)
            ts: int | None = None
            if self.time is not None:
                ts = int(values[0]) * 1000
                values = values[1:]
            for spec, raw in zip(self.fields, values, strict=True):
                value = float(raw) * spec.scale + spec.add
                if not math.isfinite(value):
                    raise PayloadError(
                        f"product {self.name}: {spec.metric} at byte "
                        f"{start + spec.offset} is not a finite number"
                    )
                out.append((spec.metric, ts, value))
        return out

    def _unpack_each(self, payload: bytes, start: int) -> tuple[float | int, ...]:
        order = ">" if self.byte_order == "big" else "<"
        out: list[float | int] = []
        if self.time is not None:
            out.append(struct.unpack_from(order + "I", payload, start + self.time.offset)[0])
        for f in self.fields:
            out.append(struct.unpack_from(order + _FORMATS[f.type], payload, start + f.offset)[0])
        return tuple(out)


class _File(_Frozen):
    products: tuple[Product, ...]


@dataclass(frozen=True)
class Products:
    """Profiles by name."""

    by_name: Mapping[str, Product]

    def get(self, name: str) -> Product:
        product = self.by_name.get(name)
        if product is None:
            raise PayloadError(f"no product profile {name!r}")
        return product


def load_products(*paths: Path) -> Products:
    """The built-in profiles, then each file's (a later name replaces an earlier one).

    Raises ValueError with ``file: products.N.field: message`` lines.
    """
    by_name: dict[str, Product] = {}
    for path in (BUILTIN, *paths):
        by_name.update((p.name, p) for p in load_yaml(path, _File).products)
    return Products(by_name)
