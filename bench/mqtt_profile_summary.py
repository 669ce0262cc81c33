"""The top frames of each thread of a py-spy speedscope profile (``bench/mqtt_e2e.py
--profile``), by self and by inclusive samples: the ``*-summary.txt`` files beside the
profiles in ``bench/results/``.

    .venv/bin/python bench/mqtt_profile_summary.py PROFILE.speedscope.json [--top 25]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path


def _name(frame: dict[str, object]) -> str:
    file = str(frame.get("file", "")).split("site-packages/")[-1]
    return f"{frame['name']} ({file}:{frame.get('line', '')})"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("profile", type=Path)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--min-samples", type=int, default=20, help="threads with fewer: left out")
    args = ap.parse_args()
    doc = json.loads(args.profile.read_text())
    frames = doc["shared"]["frames"]
    for profile in doc["profiles"]:
        samples: list[list[int]] = profile["samples"]
        if len(samples) < args.min_samples:
            continue
        own: Counter[int] = Counter(s[-1] for s in samples if s)
        inclusive: Counter[int] = Counter(i for s in samples for i in set(s))
        print(f"=== {profile['name']}: {len(samples)} samples")
        for title, counts in (("self", own), ("inclusive", inclusive)):
            print(f" -- {title}")
            for i, n in counts.most_common(args.top):
                print(f"  {100 * n / len(samples):5.1f}%  {_name(frames[i])}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
