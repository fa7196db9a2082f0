"""Several processes under ``torchrun``: one process group, sharded work, exact reductions, rank-0 output.

``torchrun --nproc_per_node N -m modeldoctor COMMAND ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_from_env` joins the group (``nccl`` for CUDA, ``gloo`` otherwise) with a timeout,
so a rank that fails ends the run instead of leaving the others waiting.  Without those variables every helper
here is the one-process identity, so the library runs unchanged in a single process.
"""

from __future__ import annotations

import datetime
import os
import re
import signal
import socket
import threading
import time
from collections.abc import Sequence
from types import FrameType
from typing import Any, TypeVar

import torch
import torch.distributed as dist

T = TypeVar("T")
# What a rank sees when a peer died or a collective timed out (backend, store and network errors alike).
PeerFailure = dist.DistError if dist.is_available() else RuntimeError
# gloo reports a dead peer as a plain RuntimeError ("Connection reset by peer", "Connection closed by peer").
PEER_MESSAGE = re.compile(r"connection (reset|closed|refused)|broken pipe|timed out|timeout", re.IGNORECASE)
DEFAULT_TIMEOUT_S = 600.0  # a collective waiting longer than this fails the rank (MODELDOCTOR_DIST_TIMEOUT)
_peers: list[tuple[str, int]] = []  # (host, pid) of every rank, by rank: which one was lost


class Stopped(BaseException):
    """The launcher's SIGTERM: torchrun stops the surviving ranks when one of them fails.  A BaseException, as
    KeyboardInterrupt is, so that no ``except Exception`` on the way swallows it."""


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """Only rank 0 writes files and prints results."""
    return rank() == 0


def init_from_env(device: torch.device) -> torch.device:
    """Join the process group torchrun describes (no-op in a single process); returns this rank's device.

    A bare ``cuda`` becomes ``cuda:LOCAL_RANK``; the backend is ``nccl`` on CUDA, ``gloo`` on CPU (and MPS)."""
    if not launched() or active():
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.type == "cuda":
        device = torch.device("cuda", local if device.index is None else device.index)
        torch.cuda.set_device(device)
    timeout = datetime.timedelta(seconds=float(os.environ.get("MODELDOCTOR_DIST_TIMEOUT", DEFAULT_TIMEOUT_S)))
    kwargs: dict[str, Any] = {"device_id": device} if device.type == "cuda" else {}
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timeout, **kwargs)
    _peers[:] = all_gather_object((socket.gethostname(), os.getpid()))
    if threading.current_thread() is threading.main_thread():  # the only thread that may set a handler
        signal.signal(signal.SIGTERM, _stopped)
    return device


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise Stopped


def ignore_stops() -> None:
    """No further :class:`Stopped` (this rank is already leaving because a peer was lost)."""
    if launched():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` says that another rank is gone (or silent past the timeout), not that this rank failed."""
    if isinstance(exc, (Stopped, PeerFailure)):
        return True
    return isinstance(exc, RuntimeError) and launched() and PEER_MESSAGE.search(str(exc)) is not None


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] in ("Z", "X")  # ended, not yet reaped by the launcher
    except FileNotFoundError:
        return True
    except OSError:
        return False


def lost_ranks(wait_s: float = 1.0) -> list[int]:
    """The ranks whose process has ended, checked on this host for up to ``wait_s`` (a killed peer's socket closes
    before its process has ended); with two ranks the other one, the only peer this rank can have lost."""
    host, deadline = socket.gethostname(), time.monotonic() + wait_s
    while True:
        lost = [r for r, (where, pid) in enumerate(_peers) if where == host and pid != os.getpid() and _gone(pid)]
        if lost or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    if not lost and len(_peers) == 2:
        lost = [1 - [pid for _, pid in _peers].index(os.getpid())] if os.getpid() in [p for _, p in _peers] else []
    return lost


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce(tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """``tensor`` summed (``op="sum"``), or its minimum / maximum, over every rank; a new tensor on its device.

    Sums of disjoint fills (each entry non-zero on one rank only) are exact: ``x + 0 = x``."""
    if not active():
        return tensor.clone()
    ops = {"sum": dist.ReduceOp.SUM, "min": dist.ReduceOp.MIN, "max": dist.ReduceOp.MAX}
    buffer = tensor.detach().to(_comm_device(), copy=True).contiguous()
    dist.all_reduce(buffer, op=ops[op])
    return buffer.to(tensor.device)


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every rank (every rank must call this)."""
    return bool(all_reduce(torch.tensor([int(flag)]), "min").item()) if active() else flag


def all_gather_object(obj: T) -> list[T]:
    """Every rank's ``obj``, by rank (picklable objects only)."""
    if not active():
        return [obj]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T, src: int = 0) -> T:
    """Rank ``src``'s ``obj`` on every rank (picklable objects only)."""
    if not active():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_comm_device())
    return box[0]


def shard(items: Sequence[T]) -> list[T]:
    """This rank's share of ``items``: every ``world_size``-th one, starting at ``rank``."""
    return list(items[rank()::world_size()])


def barrier() -> None:
    if active():
        dist.barrier()


def average_gradients(params: Sequence[torch.Tensor]) -> None:
    """Data parallelism's one collective per step: every parameter's gradient replaced by its mean over the ranks
    (one flat buffer per dtype, summed in float32 or wider); parameters without a gradient count as zero."""
    if not active():
        return
    world = world_size()
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        groups.setdefault((p.grad.dtype, p.grad.device), []).append(p.grad)
    for grads in groups.values():
        flat = torch.cat([g.reshape(-1) for g in grads])
        total = all_reduce(flat) / world
        offset = 0
        for g in grads:
            g.copy_(total[offset:offset + g.numel()].view_as(g))
            offset += g.numel()


def broadcast_module(module: torch.nn.Module, src: int = 0) -> None:
    """Every parameter and buffer of ``module`` set to rank ``src``'s values (start of training, and buffers such
    as BatchNorm running statistics before each evaluation)."""
    if not active():
        return
    for tensor in [*module.parameters(), *module.buffers()]:
        buffer = tensor.detach().to(_comm_device(), copy=True)
        dist.broadcast(buffer, src=src)
        with torch.no_grad():
            tensor.copy_(buffer.to(tensor.device))
