"""``vigil status`` and ``vigil dead-letters``: a running gateway, seen through its API.

Both talk to the gateway's web port (``engine.runtime.services.observe``), found and
called as ``engine.tools.web_target`` says (``--url`` or ``--config``, the token from
``--token-env``, ``$VIGIL_TOKEN`` or the settings' ``web.token_env``, ``--cacert``).

``status`` prints readiness with each check's reason, the connectors and their state
(the NB-IoT ingest's uplinks by path and outcome, refused uplinks by reason, readings
dropped for a metric their station does not report, unregistered devices: the
``vigil_nbiot_*`` families of ``/metrics``), readings/s, per-partition lag, the rules
running (count, version), active alerts by level and the last hour's dead letters by
reason class; ``--json`` prints the API's JSON.
Exit status: 0 ready, 1 not ready, 2 the gateway could not be asked.

``dead-letters`` prints the dead-letter topic, oldest first (``--since`` 1h / ISO 8601 /
epoch ms; ``--reason`` a class such as ``not_json`` or words of the reason), and with
``--follow`` keeps printing new ones. What a device sent is never written raw to the
terminal: UTF-8 text is shown with every non-printable character escaped, anything
else as hex (up to 64 bytes) or base64. ``--json`` prints one JSON object per dead
letter with the bytes in base64.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from datetime import UTC, datetime
from typing import Any

from engine.tools.web_target import add_target_args, web_target

__all__ = ["add_parser", "show_bytes", "show_text"]

_NAMED_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\\": "\\\\"}


class _Unreachable(Exception):
    """The gateway could not be asked; the message says why."""


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``status`` and ``dead-letters`` to the ``vigil`` command line."""
    status = sub.add_parser("status", help="a running gateway's state, from its web API")
    _add_target_args(status)
    status.add_argument("--json", action="store_true", help="print the API's JSON")
    status.set_defaults(func=_status)

    dead = sub.add_parser("dead-letters", help="read the dead-letter topic of a running gateway")
    _add_target_args(dead)
    dead.add_argument(
        "--since", help="from this time on: a duration ago (30m, 1h, 2d), ISO 8601, or epoch ms"
    )
    dead.add_argument(
        "--reason", help="a reason class (not_json, bad_value, unknown_station, late, ...) "
        "or words of the reason",
    )  # fmt: skip
    dead.add_argument("--follow", "-f", action="store_true", help="keep printing new ones")
    dead.add_argument("--json", action="store_true", help="one JSON object per dead letter")
    dead.add_argument("--interval", type=float, default=1.0, help="--follow poll, s (1)")
    dead.set_defaults(func=_dead_letters)


def _add_target_args(parser: argparse.ArgumentParser) -> None:
    add_target_args(parser, required=True)
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per request (10)")


# ---- talking to the gateway ----------------------------------------------------------------


class _Api:
    """GETs JSON from the gateway; raises ``_Unreachable`` with a reason."""

    def __init__(self, args: argparse.Namespace) -> None:
        import httpx

        target = web_target(args)
        self.base = target.base
        self.token_envs = target.token_envs
        self._client = httpx.Client(
            headers=target.headers, verify=target.verify, timeout=args.timeout
        )

    def get(self, path: str, **params: Any) -> tuple[int, Any]:
        import httpx

        url = self.base + path
        try:
            r = self._client.get(url, params={k: v for k, v in params.items() if v is not None})
        except httpx.HTTPError as exc:
            raise _Unreachable(f"cannot reach {url}: {exc}") from exc
        if r.status_code == 401:
            raise _Unreachable(
                f"{url}: 401, the gateway wants a bearer token: set " + " or ".join(self.token_envs)
            )
        try:
            return r.status_code, r.json()
        except ValueError as exc:
            raise _Unreachable(f"{url}: {r.status_code}, not JSON: {r.text[:200]!r}") from exc


# ---- status --------------------------------------------------------------------------------


def _status(args: argparse.Namespace) -> int:
    try:
        code, body = _Api(args).get("/vigil/status")
    except (_Unreachable, ValueError) as exc:
        print(f"vigil status: {exc}", file=sys.stderr)
        return 2
    if code != 200:
        print(f"vigil status: the gateway answered {code}: {body}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(body, indent=2, ensure_ascii=False))
    else:
        print(format_status(body))
    return 0 if body["ready"]["ready"] else 1


def format_status(s: dict[str, Any]) -> str:
    """The status body as a screen for people."""
    ready = s["ready"]
    lines = [
        f"{s['app_id']} (pid {s['pid']}, up {_duration(s['uptime_s'])}): "
        f"{'READY' if ready['ready'] else 'NOT READY'}"
    ]
    for name, check in ready["checks"].items():
        lines.append(f"  {name:<7} {'ok' if check['ok'] else 'FAIL':<5} {check['detail']}")
        lines += [f"          {show_text(e)}" for e in check.get("errors", [])]
    lines.append("connectors:")
    for c in s["connectors"] or [{"name": "(none in this process)"}]:
        counters = ", ".join(f"{k} {v}" for k, v in sorted(c.get("counters", {}).items()))
        state = c.get("state", "")
        where = c.get("broker", c.get("listen", ""))
        lines.append(f"  {c['name']:<7} {state:<12} {where}  {counters}".rstrip())
        if "uplinks" in c:
            lines += _nbiot_lines(c)
        seq = c.get("sequences")
        if seq and seq["devices"]:
            worst = ", ".join(f"{d} {n}" for d, n in seq["lost_by_device"].items())
            lines.append(
                f"          sequence numbers: {seq['devices']} devices, {seq['lost']} messages "
                f"lost on the way, {seq['duplicates']} duplicates, {seq['restarts']} restarts"
                + (f"; lost: {worst}" if worst else "")
            )
    rate = s["readings_per_s"]
    lines.append(
        f"readings/s (last minute): received {_num(rate['received'])}, "
        f"evaluated {_num(rate['evaluated'])}"
    )
    lag = s["lag"]
    per = "  ".join(
        f"{p}: {v['lag']}" for p, v in sorted(lag["partitions"].items(), key=lambda x: int(x[0]))
    )
    lines.append(f"lag (telemetry batches): total {lag.get('total_lag')}  {per}".rstrip())
    rules = s["rules"]
    lines.append(f"rules: {rules['count']} running, version {rules['version']}")
    lines.append(
        "active alerts: " + _by_key(s["active_alerts"], ("red", "orange", "yellow", "blue"))
    )
    lines.append("dead letters, last hour: " + _by_key(s["dead_letters_last_hour"]))
    return "\n".join(lines)


def _nbiot_lines(c: dict[str, Any]) -> list[str]:
    """The NB-IoT ingest's counts, under its connector line (identities and SenML
    metric names are a device's words: escaped)."""
    uplinks = "; ".join(
        f"{path} {_by_key(outcomes, ('taken', 'duplicate', 'refused'))}"
        for path, outcomes in sorted(c["uplinks"].items())
    )
    lines = [
        f"          uplinks: {uplinks or 'none'}",
        f"          refused: {_by_key(c['refused'])}",
    ]
    dropped = f"          readings dropped (metric not reported): {c['readings_dropped']}"
    if c.get("unreported_top"):
        dropped += "; by station/metric: " + show_text(_by_key(c["unreported_top"]))
    lines.append(dropped)
    if c["unknown_devices"]:
        lines.append(
            f"          unregistered devices: {c['unknown_devices']}; "
            + show_text(_by_key(c.get("unknown_top", {})))
        )
    return lines


def _by_key(counts: dict[str, int], order: tuple[str, ...] = ()) -> str:
    keys = [k for k in order if k in counts] + sorted(k for k in counts if k not in order)
    return ", ".join(f"{k} {counts[k]}" for k in keys) or "none"


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:g}"


def _duration(seconds: float) -> str:
    s = int(seconds)
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"


# ---- dead letters --------------------------------------------------------------------------


def _since_ms(text: str) -> int:
    """``1h`` (that long ago), ISO 8601 with an offset, or epoch ms."""
    from rules.durations import parse_duration_ms
    from rules.times import to_ms

    try:
        return int(time.time() * 1000) - parse_duration_ms(text)
    except ValueError:
        pass
    try:
        return to_ms(text)
    except ValueError:
        raise ValueError(
            f"--since: expected a duration (30m, 1h), ISO 8601 with an offset or epoch ms, "
            f"got {text!r}"
        ) from None


def _dead_letters(args: argparse.Namespace) -> int:
    try:
        api = _Api(args)
        since = _since_ms(args.since) if args.since else None
    except (_Unreachable, ValueError) as exc:
        print(f"vigil dead-letters: {exc}", file=sys.stderr)
        return 2
    start: int | None = None
    try:
        while True:
            code, page = api.get(
                "/vigil/dead-letters", start=start, since=since, reason=args.reason, limit=500
            )
            if code != 200:
                print(f"vigil dead-letters: {page.get('error', page)}", file=sys.stderr)
                return 2
            for record in page["records"]:
                print(json.dumps(record) if args.json else format_dead_letter(record), flush=True)
            start = page["next"]
            if start < page["end"]:
                continue  # more kept than one page
            if not args.follow:
                return 0
            time.sleep(args.interval)
    except _Unreachable as exc:
        print(f"vigil dead-letters: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def format_dead_letter(r: dict[str, Any]) -> str:
    """One dead letter for a terminal: every device-written part escaped."""
    at = datetime.fromtimestamp(r["received_at"] / 1000, UTC).isoformat(timespec="milliseconds")
    payload = base64.b64decode(r["payload_b64"])
    cut = f", first {len(payload)} shown" if r["truncated"] else ""
    return (
        f"{at.replace('+00:00', 'Z')}  #{r['offset']}  {r['class']}  {show_text(r['source'])}\n"
        f"  reason: {show_text(r['reason'])}\n"
        f"  payload ({r['size']} bytes{cut}): {show_bytes(payload)}"
    )


def show_text(text: str) -> str:
    """``text`` with every character that is not printable escaped (controls, terminal
    escape sequences, bidi overrides): safe to write to a terminal, one line."""
    out = []
    for ch in text:
        if ch in _NAMED_ESCAPES:
            out.append(_NAMED_ESCAPES[ch])
        elif ch.isprintable():
            out.append(ch)
        elif ord(ch) < 0x100:
            out.append(f"\\x{ord(ch):02x}")
        elif ord(ch) < 0x10000:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(f"\\U{ord(ch):08x}")
    return "".join(out)


def show_bytes(raw: bytes) -> str:
    """Raw bytes for a terminal: ``text "..."`` (UTF-8, escaped by ``show_text``, and
    ``"`` as ``\\"``) when at most a quarter of the characters are not printable, else
    ``hex ...`` (up to 64 bytes) or ``base64 ...``."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None:
        odd = sum(1 for ch in text if not ch.isprintable() and ch not in "\n\r\t")
        if odd * 4 <= len(text):  # mostly text: escaped, it reads better than hex
            quoted = show_text(text).replace('"', '\\"')
            return f'text "{quoted}"'
    if len(raw) <= 64:
        return f"hex {raw.hex(' ')}"
    return f"base64 {base64.b64encode(raw).decode()}"
