"""SL 651-2014 element identifiers (Table C.1) and what Vigil makes of them: data, not code.

HEX mode: an element is a lead byte, a definition byte (high 5 bits: byte count, low 3
bits: decimals) and the value in BCD with the decimal point removed. The special leads
F0..FC have fixed layouts (``connectors.sl651.body``); FF leads a two-byte user
extension (FF, id, definition).

``metric`` is the Vigil metric a value feeds (unit in ``unit``); None means the element is
decoded and shown (``vigil decode``) but not ingested. To ingest another element, give it
a metric here. Rain increments (DRP's 5-minute values and PN05) share ``rainfall``: the
kernels take a sensor's reading at a time it already has as a redelivery, so an hourly
report repeating the timed reports' 5-minute rain does not count it twice.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ELEMENTS", "ELEMENTS_BY_CODE", "SERIES", "STATION_TYPES", "Element", "Series"]


class Element(NamedTuple):
    code: str  # the ASCII-mode identifier of Table C.1
    name: str
    metric: str | None = None
    unit: str | None = None


class Series(NamedTuple):
    """F4..FC: twelve 5-minute values within the hour after the group's observation time."""

    width: int  # bytes per value, unsigned binary (not BCD)
    scale: float  # value = raw * scale, in ``unit``
    invalid: int  # the raw value that means "no data"


ELEMENTS: dict[int, Element] = {
    0xF0: Element("TT", "observation time"),
    0xF1: Element("ST", "station address"),
    0xF2: Element("RGZS", "manual entry"),
    0xF3: Element("PIC", "picture"),
    0xF4: Element("DRP", "5-minute rain within the hour", "rainfall", "mm"),
    0xF5: Element("DRZ1", "5-minute relative water level 1", "water_level_relative", "m"),
    0xF6: Element("DRZ2", "5-minute relative water level 2", "water_level_relative_2", "m"),
    0xF7: Element("DRZ3", "5-minute relative water level 3", "water_level_relative_3", "m"),
    0xF8: Element("DRZ4", "5-minute relative water level 4", "water_level_relative_4", "m"),
    0xF9: Element("DRZ5", "5-minute relative water level 5", "water_level_relative_5", "m"),
    0xFA: Element("DRZ6", "5-minute relative water level 6", "water_level_relative_6", "m"),
    0xFB: Element("DRZ7", "5-minute relative water level 7", "water_level_relative_7", "m"),
    0xFC: Element("DRZ8", "5-minute relative water level 8", "water_level_relative_8", "m"),
    0x01: Element("AC", "cross-section area"),
    0x02: Element("AI", "air temperature", "air_temperature", "Cel"),
    0x03: Element("C", "water temperature", "water_temperature", "Cel"),
    0x04: Element("DRxnn", "time-step code"),
    0x05: Element("DT", "period length"),
    0x06: Element("ED", "daily evaporation"),
    0x07: Element("EJ", "current evaporation"),
    0x08: Element("FL", "air pressure"),
    0x09: Element("GH", "gate opening height"),
    0x0A: Element("GN", "gate number"),
    0x0B: Element("GS", "water-conveyance device type"),
    0x0C: Element("GT", "number of open gates"),
    0x0D: Element("GTP", "ground temperature"),
    0x0E: Element("H", "groundwater depth", "groundwater_depth", "m"),
    0x0F: Element("HW", "wave height"),
    0x10: Element("M10", "soil moisture at 10 cm"),
    0x11: Element("M20", "soil moisture at 20 cm"),
    0x12: Element("M30", "soil moisture at 30 cm"),
    0x13: Element("M40", "soil moisture at 40 cm"),
    0x14: Element("M50", "soil moisture at 50 cm"),
    0x15: Element("M60", "soil moisture at 60 cm"),
    0x16: Element("M80", "soil moisture at 80 cm"),
    0x17: Element("M100", "soil moisture at 100 cm"),
    0x18: Element("MST", "humidity"),
    0x19: Element("NS", "number of running units"),
    0x1A: Element("P1", "1-hour rain", "rainfall_1h", "mm"),
    0x1B: Element("P2", "2-hour rain", "rainfall_2h", "mm"),
    0x1C: Element("P3", "3-hour rain", "rainfall_3h", "mm"),
    0x1D: Element("P6", "6-hour rain", "rainfall_6h", "mm"),
    0x1E: Element("P12", "12-hour rain", "rainfall_12h", "mm"),
    0x1F: Element("PD", "daily rain", "rainfall_day", "mm"),
    0x20: Element("PJ", "rain since the start of the day", "rainfall_today", "mm"),
    0x21: Element("PN01", "1-minute rain", "rainfall_1min", "mm"),
    0x22: Element("PN05", "5-minute rain", "rainfall", "mm"),
    0x23: Element("PN10", "10-minute rain", "rainfall_10min", "mm"),
    0x24: Element("PN30", "30-minute rain", "rainfall_30min", "mm"),
    0x25: Element("PR", "storm rain", "rainfall_storm", "mm"),
    0x26: Element("PT", "cumulative rain", "rainfall_total", "mm"),
    0x27: Element("Q", "instantaneous flow", "discharge", "m3/s"),
    **{0x27 + i: Element(f"Q{i}", f"intake/outlet flow {i}") for i in range(1, 9)},
    0x30: Element("QA", "total outflow", "outflow", "m3/s"),
    0x31: Element("QZ", "conveyance device flow"),
    0x32: Element("SW", "sediment discharge"),
    0x33: Element("UC", "wind direction"),
    0x34: Element("UE", "wind force (grade)"),
    0x35: Element("US", "wind speed"),
    0x36: Element("VA", "mean cross-section velocity", "velocity_mean", "m/s"),
    0x37: Element("VJ", "instantaneous velocity", "velocity", "m/s"),
    0x38: Element("VT", "supply voltage", "voltage", "V"),
    0x39: Element("Z", "river stage / tide level", "water_level", "m"),
    0x3A: Element("ZB", "tail-water level", "tailwater_level", "m"),
    0x3B: Element("ZU", "head-water (reservoir) level", "reservoir_level", "m"),
    **{0x3B + i: Element(f"Z{i}", f"intake/outlet water level {i}") for i in range(1, 9)},
    0x44: Element("SQ", "sediment concentration"),
    0x45: Element("ZT", "status and alarm bits"),
    0x46: Element("pH", "pH", "ph", "1"),
    0x47: Element("DO", "dissolved oxygen"),
    0x48: Element("COND", "conductivity"),
    0x49: Element("TURB", "turbidity"),
    0x4A: Element("CODMN", "permanganate index"),
    0x4B: Element("REDOX", "redox potential"),
    0x4C: Element("NH4N", "ammonia nitrogen"),
    0x4D: Element("TP", "total phosphorus"),
    0x4E: Element("TN", "total nitrogen"),
    0x4F: Element("TOC", "total organic carbon"),
    0x50: Element("CU", "copper"),
    0x51: Element("ZN", "zinc"),
    0x52: Element("SE", "selenium"),
    0x53: Element("AS", "arsenic"),
    0x54: Element("THG", "total mercury"),
    0x55: Element("CD", "cadmium"),
    0x56: Element("PB", "lead"),
    0x57: Element("CHLA", "chlorophyll a"),
    # Water pressure in kPa: the piezometers of a dam's seepage monitoring.
    0x58: Element("WP1", "water pressure 1", "seepage_pressure", "kPa"),
    **{
        0x57 + i: Element(f"WP{i}", f"water pressure {i}", f"seepage_pressure_{i}", "kPa")
        for i in range(2, 9)
    },
    **{0x5F + i: Element(f"SYL{i}", f"water meter {i} remaining volume") for i in range(1, 9)},
    **{0x67 + i: Element(f"SBL{i}", f"water meter {i} hourly volume") for i in range(1, 9)},
    0x70: Element("VTA", "AC phase A voltage"),
    0x71: Element("VTB", "AC phase B voltage"),
    0x72: Element("VTC", "AC phase C voltage"),
    0x73: Element("VIA", "AC phase A current"),
    0x74: Element("VIB", "AC phase B current"),
    0x75: Element("VIC", "AC phase C current"),
}

#: Binary 5-minute series: DRP in 0.1 mm (FF = invalid), DRZn in 0.01 m (FFFF = invalid).
SERIES: dict[int, Series] = {
    0xF4: Series(1, 0.1, 0xFF),
    **{lead: Series(2, 0.01, 0xFFFF) for lead in range(0xF5, 0xFD)},
}

#: ASCII-mode identifier -> lead byte.
ELEMENTS_BY_CODE: dict[str, int] = {e.code: lead for lead, e in ELEMENTS.items()}

#: Station-type byte (HEX mode) / letter (ASCII mode) -> kind.
STATION_TYPES: dict[int, str] = {
    0x50: "rain",
    0x48: "river",
    0x4B: "reservoir",
    0x5A: "sluice/dam",
    0x44: "pump",
    0x54: "tide",
    0x4D: "soil moisture",
    0x47: "groundwater",
    0x51: "water quality",
    0x49: "intake",
    0x4F: "outfall",
}
