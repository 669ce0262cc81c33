"""Hypothesis: whatever the cells of a devices CSV, every row is either stored exactly
as written or rejected with a problem at its line; the import never fails on a row."""

from __future__ import annotations

import csv
import re
import tempfile
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from engine.contracts.devices import Device
from rules.store import DeviceRegistry, import_devices, make_imei

STATIONS = {"HZ001", "HZ002", "A B"}
# Any text a UTF-8 file can hold but line breaks and NUL (a quoted line break moves
# the line number of the row).
text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=12
)
cells = st.fixed_dictionaries({
    "station": st.sampled_from(sorted(STATIONS)) | text,
    "product": st.sampled_from(["waterlog-v1", "manhole-v1"]) | text,
    "key": st.sampled_from(["", "00112233445566778899aabbccddeeff", "0011"]) | text,
    "metrics": st.sampled_from(["", "a:b", "a:b;c:d"]) | text,
    "deleted": st.sampled_from(["", "0", "no"]) | text,
    "id_type": st.sampled_from(["", "imei"]) | text,
})  # fmt: skip


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(cells, min_size=1, max_size=30), bad_identity=st.lists(st.booleans()))
def test_rows_are_stored_as_written_or_rejected_at_their_line(
    rows: list[dict[str, str]], bad_identity: list[bool]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "d.csv"
        ids = []
        with path.open("w", newline="", encoding="utf-8") as fh:
            out = csv.writer(fh)
            out.writerow(["identity", "id_type", "station", "product", "key", "metrics",
                          "deleted"])  # fmt: skip
            for n, row in enumerate(rows):
                broken = n < len(bad_identity) and bad_identity[n]
                ids.append(make_imei(86123456, n)[:-1] + "x" if broken else make_imei(86123456, n))
                out.writerow([ids[-1], row["id_type"], row["station"], row["product"], row["key"],
                              row["metrics"], row["deleted"]])  # fmt: skip
        report = import_devices(Path(tmp) / "r", path, STATIONS, max_problems=10_000)
        bad_lines = {int(m.group(1)) for p in report.problems if (m := re.match(r".*?:(\d+):", p))}
        assert report.rows == len(rows)
        assert report.rejected == len(bad_lines)
        assert report.added + report.removed + report.not_registered + report.rejected == len(rows)
        with DeviceRegistry(Path(tmp) / "r") as reg:
            for n, (identity, row) in enumerate(zip(ids, rows, strict=True)):
                device = reg.lookup(identity)
                if n + 2 in bad_lines or row["deleted"].strip().lower() in ("1", "true", "yes"):
                    assert device is None
                    continue
                assert device is not None, (n, row, report.problems)
                metrics = dict(
                    p.partition(":")[::2] for p in row["metrics"].split(";") if p.strip()
                )
                key = bytes.fromhex(row["key"].strip()) if row["key"].strip() else None
                metrics = {k.strip(): v.strip() for k, v in metrics.items()}
                station, product = row["station"].strip(), row["product"].strip()
                assert device == Device(identity, station, product, key, metrics)
