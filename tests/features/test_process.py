"""Which process made something, and whether it is provably gone (`features.process`)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

from features.process import gone_reason, process, this_process


def test_a_live_process_is_not_gone_and_an_ended_one_is() -> None:
    me = this_process()
    assert gone_reason(me) is None
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    ended = dataclasses.replace(me, pid=child.pid)
    assert gone_reason(ended) == f"pid {child.pid} on {me.host} is not running"


def test_a_reused_pid_is_another_process() -> None:
    """The pid runs, but started at another time than the one recorded: a reused pid."""
    parent = process(os.getppid())
    assert gone_reason(parent) is None  # its own start: alive
    reused = dataclasses.replace(parent, start="0badf00d")
    if this_process().start:  # /proc tells the start (Linux)
        assert gone_reason(reused) == (f"pid {parent.pid} on {parent.host} is another "
                                       f"process now")
    else:  # cannot tell: alive
        assert gone_reason(reused) is None


def test_another_machine_or_an_unknown_start_cannot_be_told() -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    elsewhere = dataclasses.replace(this_process(), host="other", machine="00000000",
                                    pid=child.pid)
    assert gone_reason(elsewhere) is None  # its pid means another process there
    unknown = dataclasses.replace(process(os.getppid()), start="")
    assert gone_reason(unknown) is None
