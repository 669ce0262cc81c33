"""A stop that hangs ends the process past its deadline, with what it waited for."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from engine.runtime.stopping import EXIT_STOP_TIMEOUT

STOP = textwrap.dedent(
    """
    import asyncio, logging, sys
    from engine.runtime.stopping import arm_stop_deadline

    async def leave_the_group_that_never_answers():
        await asyncio.Event().wait()

    async def main():
        arm_stop_deadline(asyncio.get_running_loop(), 1.0)
        arm_stop_deadline(asyncio.get_running_loop(), 60.0)  # the first deadline holds
        if sys.argv[1] == "hangs":
            await asyncio.create_task(leave_the_group_that_never_answers(), name="leave")

    logging.basicConfig(level=logging.INFO)
    asyncio.run(main())
    """
)


def _stop(how: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", STOP, how], capture_output=True, text=True, timeout=30
    )


def test_a_stop_that_hangs_exits_with_its_stacks() -> None:
    done = _stop("hangs")
    assert done.returncode == EXIT_STOP_TIMEOUT, done.stderr
    assert "the stop did not finish in 1 s" in done.stderr
    assert "task leave:" in done.stderr
    assert "leave_the_group_that_never_answers" in done.stderr
    assert "thread MainThread:" in done.stderr


def test_a_stop_in_time_exits_as_it_would() -> None:
    done = _stop("ends")
    assert done.returncode == 0, done.stderr
    assert "did not finish" not in done.stderr
