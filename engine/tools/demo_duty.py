"""The demo's people on duty: they read what reaches the desk and act on it.

The duty officer acknowledges the first orange alert from the CLI (``vigil alerts ack``);
the section head takes what was escalated to them through the signed link in the message.
"""

from __future__ import annotations

import queue
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from engine.tools.demo_desk import Arrival, Desk

__all__ = ["DUTY_OFFICER", "SECTION_HEAD", "DutyRoom", "duty_summary"]

DUTY_OFFICER = "Duty officer Li"
SECTION_HEAD = "Section head Wang"


class DutyRoom:
    """Prints what reaches the desk and acts as the people on duty would: the duty
    officer acknowledges the first orange alert from the CLI (``vigil alerts ack``);
    the section head takes what was escalated to them through the signed link."""

    def __init__(self, desk: Desk, url: str) -> None:
        self.desk = desk
        self.url = url
        self.received: list[Arrival] = []
        self.acked: list[str] = []  # stations acknowledged from the CLI
        self.escalated: list[str] = []  # stations escalated to the section head
        self.taken: list[str] = []  # stations the section head took through the link
        self.all_clears = 0

    def poll(self) -> None:
        while True:
            try:
                arrival = self.desk.arrivals.get_nowait()
            except queue.Empty:
                return
            self.received.append(arrival)
            self._show(arrival)
            if arrival.path == "/duty-room" and not self.acked:
                self._acknowledge(arrival.body)
            elif arrival.path == "/section-head":
                self._take(arrival.body)

    def count(self, path: str) -> int:
        return sum(1 for a in self.received if a.path == path)

    def _show(self, a: Arrival) -> None:
        if a.path == "mail":
            print(f"    ✉ duty-mail     {a.body['subject']}", flush=True)
            return
        b = a.body
        if b["status"] == "resolved":
            self.all_clears += 1
        alerts = ", ".join(
            f"{x['station']} {x['level'] if x['state'] == 'firing' else 'cleared'}"
            for x in b["alerts"]
        )
        where = "/".join(b["group_labels"].values()) or "-"
        note = f"  ({b['note']})" if b["note"] else ""
        signed = "" if a.signed else "  UNSIGNED"
        print(
            f"    ⇒ {a.path[1:]:<13} #{b['key'].rsplit(':', 1)[1]} {b['status'].upper()} "
            f"{b['level']}: {where}: {alerts}{note}{signed}",
            flush=True,
        )

    def _acknowledge(self, body: dict[str, Any]) -> None:
        orange = [a for a in body["alerts"] if a["state"] == "firing" and a["level"] == "orange"]
        if not orange:
            return
        alert = orange[0]
        args = ["ack", alert["fingerprint"][:12], "--by", DUTY_OFFICER, "--note", "patrol sent"]
        print(f'  $ vigil alerts ack {args[1]} --by "{DUTY_OFFICER}" --note "patrol sent"')
        done = subprocess.run(
            [sys.executable, "-m", "engine.tools.cli", "alerts", "--url", self.url, *args],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        print("    " + (done.stdout or done.stderr).strip(), flush=True)
        if done.returncode == 0:
            self.acked.append(alert["station"])

    def _take(self, body: dict[str, Any]) -> None:
        for alert in body["alerts"]:
            self.escalated.append(alert["station"])
            link = alert.get("ack_url")
            if alert["state"] != "firing" or not link:
                continue
            page = httpx.get(link, timeout=30)  # the confirm page: opening it does nothing
            done = httpx.post(link, data={"name": SECTION_HEAD}, timeout=30)
            if page.status_code == 200 and f"Acknowledged by {SECTION_HEAD}." in done.text:
                self.taken.append(alert["station"])
                print(f"  {SECTION_HEAD} opens the link in the message: "
                      f"{alert['station']} acknowledged", flush=True)  # fmt: skip


def duty_summary(duty: DutyRoom, log: Path) -> None:
    blue = len(log.read_text().splitlines()) if log.exists() else 0
    signed = "all signed" if all(a.signed for a in duty.received) else "SOME UNSIGNED"
    print(
        f"  notifications: duty-room {duty.count('/duty-room')}, duty-mail "
        f"{duty.count('mail')}, section-head {duty.count('/section-head')} ({signed}); "
        f"duty-log {blue}"
    )
    print(f"  acknowledged from the CLI by {DUTY_OFFICER}: {', '.join(duty.acked) or 'none'}")
    print(
        f"  escalated to the section head: {', '.join(sorted(set(duty.escalated))) or 'none'}; "
        f"taken through the link: {', '.join(duty.taken) or 'none'}"
    )
    print(f"  all-clear messages: {duty.all_clears}")
