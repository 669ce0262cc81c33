"""Ready-made bodies for the group robots where Chinese duty groups live.

- **WeCom (企业微信) group robot**: ``POST <webhook url with key=...>`` with
  ``{"msgtype": "markdown", "markdown": {"content": ...}}`` (at most 4096 bytes of UTF-8)
  or ``{"msgtype": "text", "text": {"content": ..., "mentioned_mobile_list": [...]}}``
  (at most 2048 bytes). The ``key`` in the URL is the credential: give the URL through
  ``url_env``. A robot takes at most 20 messages a minute.
- **DingTalk (钉钉) custom robot**: ``POST <webhook url with access_token=...>`` with
  ``{"msgtype": "markdown", "markdown": {"title": ..., "text": ...}, "at": {...}}`` or
  ``{"msgtype": "text", "text": {"content": ...}, "at": {...}}``. With 加签 (signing)
  on, the query adds ``timestamp`` (ms) and ``sign`` = Base64(HMAC-SHA256(key=secret,
  message=f"{timestamp}\\n{secret}")), URL-encoded; DingTalk refuses a timestamp more
  than an hour off.

Both answer HTTP 200 with ``{"errcode": 0, "errmsg": "ok"}`` on success and a non-zero
``errcode`` otherwise; ``robot_refusal`` reads that. Over-long content is cut at a
character boundary with a closing mark rather than refused.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from datetime import tzinfo
from typing import Any, Literal

from connectors.sinks.render import Lang, format_time, level_name, render_line, render_text
from engine.contracts.alerts import Level
from engine.contracts.notification import Notification

__all__ = [
    "RobotKind",
    "dingtalk_body",
    "dingtalk_sign",
    "fit_utf8",
    "render_markdown",
    "robot_refusal",
    "wecom_body",
]

RobotKind = Literal["wecom", "dingtalk"]

WECOM_MARKDOWN_BYTES = 4096
WECOM_TEXT_BYTES = 2048
#: DingTalk documents no exact figure for its robots; 18,000 bytes stays below the
#: 20,000 that users report as the point where it refuses a message.
DINGTALK_BYTES = 18_000

#: errcodes that mean "later": WeCom -1 (system busy) and 45009 (API frequency limit,
#: 20 messages a minute a robot); DingTalk 130101 (sending too fast). Everything else
#: (bad key, bad signature, keyword not matched, bad body) is permanent.
_RETRYABLE_ERRCODES = {
    "wecom": {-1, 45009},
    "dingtalk": {-1, 130101},
}

# WeCom markdown has three colours: info (green), comment (grey), warning (orange-red).
_WECOM_COLOUR = {
    Level.NONE: "info",
    Level.BLUE: "comment",
    Level.YELLOW: "warning",
    Level.ORANGE: "warning",
    Level.RED: "warning",
}
_CUT = "\n…"


def fit_utf8(text: str, max_bytes: int) -> str:
    """``text`` if its UTF-8 is at most ``max_bytes``; else its longest prefix that fits
    with ``"\\n…"`` after it, never splitting a character."""
    raw = text.encode()
    if len(raw) <= max_bytes:
        return text
    room = max_bytes - len(_CUT.encode())
    return raw[:room].decode(errors="ignore") + _CUT


def dingtalk_sign(secret: str, timestamp_ms: int) -> str:
    """DingTalk's ``sign`` query parameter before URL encoding (httpx encodes it)."""
    message = f"{timestamp_ms}\n{secret}".encode()
    digest = hmac.new(secret.encode(), message, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def render_markdown(n: Notification, lang: Lang, tz: tzinfo, wecom_colour: bool) -> str:
    """A robot's markdown: the line as a heading (coloured on WeCom), the note, then per
    alert its level, summary, details and a ``[确认](link)``."""
    head = render_line(n, lang)
    if wecom_colour:
        head = f'<font color="{_WECOM_COLOUR[Level.parse(n.level)]}">{head}</font>'
    out = [f"### {head}"]
    if n.note:
        out.append(f"> {n.note}")
    ordered = sorted(n.alerts, key=lambda a: (not n.is_firing(a), -Level.parse(n.shown_level(a))))
    for a in ordered:
        if a.fingerprint in n.latched:
            tag = level_name(n.latched[a.fingerprint], lang) + (
                "(数据已恢复,待确认后解除)" if lang == "zh" else ", latched: data cleared"
            )
        elif a.state == "firing":
            tag = level_name(a.level, lang)
        else:
            tag = (
                f"{level_name(a.previous_level, 'zh')}解除"
                if lang == "zh"
                else f"all clear (was {level_name(a.previous_level, 'en')})"
            )
        since = format_time(a.started_at, tz)
        detail = (
            f"{a.station} · {a.metric} {a.value:g}(阈值 {a.threshold:g})· 开始 {since}"
            if lang == "zh"
            else f"{a.station} · {a.metric} {a.value:g} (threshold {a.threshold:g}) · since {since}"
        )
        out.append(f"**{tag}** {a.summary}  \n{detail}")
        link = n.links.get(a.fingerprint)
        if link:
            out.append(f"[{'确认' if lang == 'zh' else 'Acknowledge'}]({link})")
    out.append(f"Vigil · {format_time(n.created_at, tz)}")
    return "\n\n".join(out)


def wecom_body(
    n: Notification,
    msgtype: Literal["markdown", "text"],
    lang: Lang,
    tz: tzinfo,
    mention_mobiles: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The JSON body for a WeCom group robot. Mentions work in text messages only
    (WeCom ignores them in markdown)."""
    if msgtype == "markdown":
        content = fit_utf8(render_markdown(n, lang, tz, wecom_colour=True), WECOM_MARKDOWN_BYTES)
        return {"msgtype": "markdown", "markdown": {"content": content}}
    text: dict[str, Any] = {"content": fit_utf8(render_text(n, lang, tz), WECOM_TEXT_BYTES)}
    if mention_mobiles:
        text["mentioned_mobile_list"] = list(mention_mobiles)
    return {"msgtype": "text", "text": text}


def dingtalk_body(
    n: Notification,
    msgtype: Literal["markdown", "text"],
    lang: Lang,
    tz: tzinfo,
    mention_mobiles: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The JSON body for a DingTalk custom robot. A mention shows only if the content
    names the person (``@138...``), so the mobiles are appended to the content too."""
    at = {"atMobiles": list(mention_mobiles), "isAtAll": False}
    tail = "".join(f" @{m}" for m in mention_mobiles)
    if msgtype == "markdown":
        text = fit_utf8(render_markdown(n, lang, tz, wecom_colour=False) + tail, DINGTALK_BYTES)
        return {
            "msgtype": "markdown",
            "markdown": {"title": render_line(n, lang), "text": text},
            "at": at,
        }
    content = fit_utf8(render_text(n, lang, tz) + tail, DINGTALK_BYTES)
    return {"msgtype": "text", "text": {"content": content}, "at": at}


def robot_refusal(kind: RobotKind, answer: Any) -> tuple[str, bool] | None:
    """None if the robot's JSON answer means delivered; else (reason, retryable)."""
    if not isinstance(answer, dict) or "errcode" not in answer:
        return f"not a {kind} robot's answer: {str(answer)[:200]!r}", False
    code = answer["errcode"]
    if code == 0:
        return None
    reason = f"{kind} errcode {code}: {answer.get('errmsg', '')}"
    return reason, code in _RETRYABLE_ERRCODES[kind]
