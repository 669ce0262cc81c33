"""``vigil data check|repair``: the embedded log's integrity, for the operator.

``check`` reads the whole log (``engine.runtime.transport.integrity``) and prints one line
per problem (exit 1) or what it holds (exit 0). ``repair`` rebuilds it from what is
readable, prints what was lost, and keeps the damaged log beside it; the gateway must be
stopped (the log's lock is taken, so a running gateway makes it refuse).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import sys
from collections.abc import Iterator
from pathlib import Path

__all__ = ["add_parser", "damaged_message"]


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``data`` and its commands to the ``vigil`` command line."""
    data = sub.add_parser("data", help="check or repair the gateway's data directory")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="COMMAND")
    for name, func, text in (
        ("check", _check, "read the whole log; list damage and missing records (exit 1)"),
        ("repair", _repair, "rebuild the log from what is readable (the gateway stopped)"),
    ):
        cmd = data_sub.add_parser(name, help=text)
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("--config", help="the gateway's settings file (its data_dir)")
        where.add_argument("--data-dir", help="the data directory itself")
        cmd.set_defaults(func=func)


def damaged_message(data_dir: Path, detail: str, config: str | None) -> str:
    """The one message a start on a damaged log prints."""
    where = f"--config {config}" if config else f"--data-dir {data_dir}"
    return (
        f"vigil: the log in {data_dir} is damaged and readings may be missing; not starting "
        f"on it. {detail}\n"
        f"Details: vigil data check {where}. To keep what is readable (the damaged log is "
        f"kept as log.damaged-*): vigil data repair {where} (README: Storage)."
    )


def _data_dir(args: argparse.Namespace) -> Path:
    if args.data_dir:
        return Path(args.data_dir)
    from engine.runtime.config import load_settings

    return load_settings(args.config).data_dir


def _check(args: argparse.Namespace) -> int:
    from engine.runtime.config import ConfigError
    from engine.runtime.transport.integrity import check
    from engine.runtime.transport.log import LogDamaged

    try:
        data_dir = _data_dir(args)
        report = check(data_dir)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except LogDamaged as exc:
        print(f"{data_dir}: the log cannot be opened: {exc.detail}")
        return 1
    for line in report.problems:
        print(f"{data_dir}: {line}")
    total = sum(report.records.values())
    if report.ok:
        print(f"{data_dir}: the log is whole: {total} records in {len(report.records)} partitions")
    return 0 if report.ok else 1


@contextlib.contextmanager
def _exclusive(log_dir: Path) -> Iterator[None]:
    """Hold RocksDB's own lock file, as a running gateway does: one of us at a time."""
    with (log_dir / "LOCK").open("a") as f:
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            in_use = f"{log_dir} is in use (a gateway is running on it): stop it first"
            raise RuntimeError(in_use) from None
        yield


def _repair(args: argparse.Namespace) -> int:
    from engine.runtime.config import ConfigError
    from engine.runtime.transport.integrity import RepairFailed, repair

    try:
        data_dir = _data_dir(args)
        if not (data_dir / "log").is_dir():
            print(f"{data_dir}: no log to repair", file=sys.stderr)
            return 2
        with _exclusive(data_dir / "log"):
            report = repair(data_dir)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    except (RepairFailed, RuntimeError) as exc:
        print(f"vigil data repair: {exc}", file=sys.stderr)
        return 1
    for line in report.lost:
        print(f"{data_dir}: lost: {line}")
    total = sum(report.records.values())
    print(f"{data_dir}: repaired: {total} records kept in {len(report.records)} partitions")
    return 0
