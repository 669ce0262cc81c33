"""``vigil alerts list|ack|close|silence|silences``: people's actions against a running
gateway, through its API (``engine/runtime/dispatch/api.py``).

The gateway is found, and its token and certificate taken, as
``engine.tools.web_target`` says for every command that calls the API (``--url``,
``--config`` or ``$VIGIL_URL``; ``--token-env``, ``$VIGIL_TOKEN`` or ``--config``'s
``web.token_env``; ``--cacert``). An alert may be named
by a unique prefix of its fingerprint. Exit status: 0 done, 1 the gateway refused (its
message is printed), 2 the gateway could not be reached or the arguments are wrong.
"""

from __future__ import annotations

import argparse
import sys
from datetime import UTC, datetime
from typing import Any

from engine.tools.web_target import add_target_args, web_target

__all__ = ["add_parser"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    alerts = sub.add_parser("alerts", help="list, acknowledge, close and silence alerts")
    add_target_args(alerts, required=False)
    cmds = alerts.add_subparsers(dest="alerts_command", required=True, metavar="COMMAND")
    ls = cmds.add_parser("list", help="the alerts the dispatcher knows, newest first")
    ls.add_argument("--all", action="store_true", help="closed and resolved ones too")
    ls.set_defaults(func=_list)
    ack = cmds.add_parser("ack", help="acknowledge an alert: its repeats and escalation stop")
    ack.add_argument("fingerprint", help="the alert's fingerprint (or a unique prefix)")
    ack.add_argument("--by", required=True, help="who takes it")
    ack.add_argument("--note", default="")
    ack.set_defaults(func=_ack)
    close = cmds.add_parser("close", help="close a resolved alert with feedback")
    close.add_argument("fingerprint")
    close.add_argument("--by", required=True)
    close.add_argument("--feedback", required=True, help="what was done, what was learnt")
    close.set_defaults(func=_close)
    silence = cmds.add_parser("silence", help="hold back alerts matching labels for a while")
    silence.add_argument("matchers", nargs="+", help="e.g. station=HZ003 'rule_id=~\"flood.*\"'")
    silence.add_argument("--duration", required=True, help="e.g. 2h, 30m")
    silence.add_argument("--author", required=True)
    silence.add_argument("--comment", default="")
    silence.set_defaults(func=_silence)
    silences = cmds.add_parser("silences", help="list silences; --expire ID ends one now")
    silences.add_argument("--expire", metavar="ID")
    silences.set_defaults(func=_silences)


class _Refused(Exception):
    pass


def _call(args: argparse.Namespace, method: str, path: str, body: Any = None) -> Any:
    import httpx

    target = web_target(args)
    response = httpx.request(
        method, target.base + path, json=body, headers=target.headers,
        verify=target.verify, timeout=30,
    )  # fmt: skip
    try:
        data = response.json()
    except ValueError:
        data = {"error": response.text}
    if response.status_code >= 400:
        raise _Refused(data.get("error", f"HTTP {response.status_code}"))
    return data


def _resolve(args: argparse.Namespace, prefix: str) -> str:
    alerts = _call(args, "GET", "/api/alerts")["alerts"]
    found = [a["fingerprint"] for a in alerts if a["fingerprint"].startswith(prefix)]
    if len(found) == 1:
        return str(found[0])
    if not found:
        raise _Refused(f"no alert {prefix!r}")
    raise _Refused(f"{prefix!r} names {len(found)} alerts; give more of the fingerprint")


def _time(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%MZ")


def _list(args: argparse.Namespace) -> None:
    for a in _call(args, "GET", "/api/alerts")["alerts"]:
        if not args.all and a["status"] in ("resolved", "closed"):
            continue
        who = ""
        if a["acknowledged"]:
            who = f" by {a['acknowledged']['by']} at {_time(a['acknowledged']['at'])}"
        hidden = f" [{a['hidden']}]" if a["hidden"] else ""
        print(
            f"{a['fingerprint'][:12]}  {a['status'] + who:<14} {a['level']:<7} "
            f"{_time(a['at'])}  {a['station']}  {a['summary']}{hidden}"
        )


def _ack(args: argparse.Namespace) -> None:
    fp = _resolve(args, args.fingerprint)
    a = _call(args, "POST", f"/api/alerts/{fp}/ack", {"by": args.by, "note": args.note})["alert"]
    print(f"{fp}: acknowledged by {a['acknowledged']['by']} at {_time(a['acknowledged']['at'])}")


def _close(args: argparse.Namespace) -> None:
    fp = _resolve(args, args.fingerprint)
    body = {"by": args.by, "feedback": args.feedback}
    a = _call(args, "POST", f"/api/alerts/{fp}/close", body)["alert"]
    print(f"{fp}: closed by {a['closed']['by']} at {_time(a['closed']['at'])}")


def _silence(args: argparse.Namespace) -> None:
    body = {"matchers": args.matchers, "duration": args.duration, "author": args.author,
            "comment": args.comment}  # fmt: skip
    s = _call(args, "POST", "/api/silences", body)["silence"]
    print(f"{s['id']}: {', '.join(s['matchers'])} until {_time(s['ends_at'])} ({s['state']})")


def _silences(args: argparse.Namespace) -> None:
    if args.expire:
        s = _call(args, "DELETE", f"/api/silences/{args.expire}")["silence"]
        print(f"{s['id']}: expired")
        return
    for s in _call(args, "GET", "/api/silences")["silences"]:
        print(
            f"{s['id']:<4} {s['state']:<8} {_time(s['starts_at'])} .. {_time(s['ends_at'])}  "
            f"{', '.join(s['matchers'])}  by {s['author']}: {s['comment']}"
        )


def run(args: argparse.Namespace) -> int:
    import logging

    import httpx

    logging.getLogger("httpx").setLevel(logging.WARNING)  # not a line per request

    try:
        args.func(args)
    except _Refused as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    except httpx.HTTPError as exc:
        print(f"cannot reach the gateway at {web_target(args).base}: {exc}", file=sys.stderr)
        return 2
    except ValueError as exc:  # --config names a gateway without a web port
        print(f"vigil alerts: {exc}", file=sys.stderr)
        return 2
    return 0
