"""What a surviving torchrun rank says when a peer is lost: which rank, and the command that continues the run."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Sequence

from modeldoctor.core import distributed


def relaunch_command(argv: Sequence[str], resumable: bool) -> str:
    """The torchrun command line that runs ``argv`` again on as many processes, with ``--resume`` when the command
    has it (continuing from its last saved epoch)."""
    per_node = os.environ.get("LOCAL_WORLD_SIZE", os.environ.get("WORLD_SIZE", "1"))
    nodes = int(os.environ.get("WORLD_SIZE", per_node)) // max(1, int(per_node))
    launcher = ["torchrun", "--nproc_per_node", per_node, *(["--nnodes", str(nodes)] if nodes > 1 else [])]
    again = [*argv, *(["--resume"] if resumable and "--resume" not in argv else [])]
    return shlex.join([*launcher, "-m", "modeldoctor", *again])


def reason(exc: BaseException) -> str:
    """The telling part of a backend's message: "Read error [127.0.0.1]:28874: Connection reset by peer" without
    the source location before it and the advice after it."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", first).split(". ")[0][:160]


def peer_lost_line(exc: BaseException, argv: Sequence[str], resumable: bool) -> str:
    """One line: the lost rank(s) (when this host can tell), why this rank stopped, and what to run next."""
    lost = distributed.lost_ranks()
    who = f"lost rank {', '.join(map(str, lost))}" if lost else "lost a peer rank"
    why = "stopped by the launcher" if isinstance(exc, distributed.Stopped) else reason(exc)
    return f"{who} ({why}); {'resume' if resumable else 'run it again'} with: {relaunch_command(argv, resumable)}"
