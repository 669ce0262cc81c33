"""HJ 212-2017 codes and what Vigil makes of them: data, not code (FACTS.md §2.2).

``POLLUTANTS`` maps a pollutant code to the Vigil metric and unit; a code not listed is
decoded and shown (``vigil decode``) but not ingested. Units: the a34xxx particulate
codes are taken as µg/m³, the unit the engine's AQI stage expects; FACTS.md notes that
some analysers send ng/m³ (open item 2), which a station's registry entry must then say.

A metric's name says its averaging period, so that the AQI stage (hourly values in
``pm2_5`` ...) never mixes a real-time value with an hourly mean: the hourly data (2061)
feed the plain name, real-time (2011) ``_rt``, minute (2051) ``_minute``, daily (2031)
``_day``; ``-Min``/``-Max``/``-Cou`` add ``_min``/``_max``/``_total``.
"""

from __future__ import annotations

from engine.contracts.batch import Quality

__all__ = ["DATA_COMMANDS", "FIELD_SUFFIX", "FLAG_QUALITY", "POLLUTANTS", "SYSTEM_CODES"]

POLLUTANTS: dict[str, tuple[str, str]] = {
    "a34004": ("pm2_5", "ug/m3"),
    "a34002": ("pm10", "ug/m3"),
    "a34001": ("tsp", "ug/m3"),
    "a21004": ("no2", "ug/m3"),
    "a21026": ("so2", "ug/m3"),
    "a21005": ("co", "mg/m3"),
    "a05024": ("o3", "ug/m3"),
    "a01001": ("air_temperature", "Cel"),
    "a01002": ("relative_humidity", "%RH"),
    "a01006": ("air_pressure", "kPa"),
    "a01007": ("wind_speed", "m/s"),
    "a01008": ("wind_direction", "deg"),
    # Surface-water codes from the standard's Appendix B (not in FACTS.md: check units
    # against the analyser before alerting on them).
    "w01001": ("ph", "1"),
    "w01003": ("turbidity", "NTU"),
    "w01009": ("dissolved_oxygen", "mg/L"),
    "w01010": ("water_temperature", "Cel"),
    "w01014": ("conductivity", "uS/cm"),
    "w01018": ("cod", "mg/L"),
    "w01019": ("permanganate_index", "mg/L"),
    "w21001": ("total_nitrogen", "mg/L"),
    "w21003": ("ammonia_nitrogen", "mg/L"),
    "w21011": ("total_phosphorus", "mg/L"),
}

#: CN -> the metric-name suffix of that data kind (see the module docstring).
DATA_COMMANDS: dict[str, str] = {"2011": "_rt", "2051": "_minute", "2061": "", "2031": "_day"}

#: CP field suffix -> metric-name suffix; other suffixes (-Flag, -SampleTime ...) are
#: not values.
FIELD_SUFFIX: dict[str, str] = {"Rtd": "", "Avg": "", "Min": "_min", "Max": "_max",
                                "Cou": "_total"}  # fmt: skip

#: Data flag -> Vigil quality (the kernels' QC may lower it further, never raise it).
FLAG_QUALITY: dict[str, Quality] = {
    "N": Quality.GOOD,  # normal
    "S": Quality.GOOD,  # manually set, valid
    "F": Quality.FAIL,  # instrument stopped
    "M": Quality.FAIL,  # maintenance
    "D": Quality.FAIL,  # fault
    "C": Quality.FAIL,  # calibration
    "T": Quality.FAIL,  # above the measuring range
    "B": Quality.FAIL,  # communication error with the data logger
}

SYSTEM_CODES: dict[str, str] = {
    "21": "surface water",
    "22": "air quality",
    "23": "noise",
    "24": "groundwater",
    "27": "VOC",
    "31": "air pollution source",
    "32": "surface-water pollution source",
    "39": "construction dust",
    "91": "system interaction",
}
