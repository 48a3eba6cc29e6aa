"""Several processes, one result: torchrun's ranks as compsrt uses them (``torch.distributed`` only).

``torchrun --nproc-per-node N -m compsrt.calib ...`` (or ``-m compsrt.eval``, ``-m compsrt.cli``)
starts N copies of a command with ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``LOCAL_WORLD_SIZE``,
``MASTER_ADDR`` and ``MASTER_PORT`` set. :func:`session` reads them, joins the process group (gloo
on the CPU; nccl on CUDA, each rank on ``cuda:LOCAL_RANK``) and yields a :class:`Dist`: this rank,
the number of ranks, which items it takes (:meth:`Dist.shard`, :meth:`Dist.batch_slice`) and the
few collectives compsrt needs, each named for its error message. Without torchrun's variables it
yields ``Dist()``, one process whose collectives do nothing, and a run takes the code paths it
always took.

Decisions (resume or not, which images to run, keep-best, the time budget's stop) are made by
rank 0 and broadcast (:meth:`Dist.decide`), so the ranks never disagree about how many
collectives follow; a user mistake rank 0 finds is raised on every rank with the same message.

Failures: when another rank dies its sockets close and the collective waiting on it fails at
once; a rank that hangs is given up on after the timeout, ``COMPSRT_DIST_TIMEOUT_S`` seconds
(default 1800: longer than anything one rank does alone, such as rank 0's bound search or its
writing of the outputs). Either way :class:`RanksLost` (a :class:`~compsrt.errors.CompsrtError`)
names the step, and the command-line tools print it as one line and exit 2. With nccl a hung
collective is ended by PyTorch's own watchdog after the timeout, with its message; under
torchrun the agent also stops every other worker as soon as one exits with an error.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch
from torch import Tensor

from .errors import CompsrtError

TIMEOUT_ENV = "COMPSRT_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0
_ENV_INTS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
T = TypeVar("T")


class RanksLost(CompsrtError):
    """A collective failed: another rank stopped (its own output says why) or did not answer in time."""


def launched(env: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by torchrun (or anything that sets ``WORLD_SIZE``)."""
    return "WORLD_SIZE" in (os.environ if env is None else env)


def prog_name(name: str, env: Mapping[str, str] | None = None) -> str:
    """``name`` on rank 0 and in a plain run; ``name[rank R]`` on the other ranks, for their error lines."""
    env = os.environ if env is None else env
    rank = env.get("RANK", "0") if launched(env) else "0"
    return name if rank == "0" else f"{name}[rank {rank}]"


def _env_int(env: Mapping[str, str], name: str, default: str | None = None) -> int:
    raw = env.get(name, default)
    try:
        value = int(raw)   # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise CompsrtError(f"environment variable {name}={raw!r}: not a whole number; start the command "
                           "with torchrun, which sets it") from None
    if value < 0:
        raise CompsrtError(f"environment variable {name}={value}: must not be negative; start the command "
                           "with torchrun")
    return value


def timeout_seconds(env: Mapping[str, str] | None = None) -> float:
    """``COMPSRT_DIST_TIMEOUT_S`` (seconds a rank waits for the others in a collective), default 1800."""
    env = os.environ if env is None else env
    raw = env.get(TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise CompsrtError(f"environment variable {TIMEOUT_ENV}={raw!r}: give a number of seconds above 0")
    return value


def rank_device(device: torch.device, local_rank: int, local_world: int) -> torch.device:
    """The device this rank computes on: ``cuda`` becomes ``cuda:LOCAL_RANK`` (one GPU per rank)."""
    if device.type != "cuda":
        return device
    if device.index is not None:
        if local_world > 1:
            raise CompsrtError(f"--device {device}: with {local_world} ranks on this node each rank takes its own "
                               "GPU (cuda:LOCAL_RANK); give --device cuda")
        return device
    if local_rank >= torch.cuda.device_count():
        raise CompsrtError(f"local rank {local_rank} needs cuda:{local_rank} but this node has "
                           f"{torch.cuda.device_count()} GPU(s); start at most that many ranks per node "
                           "(torchrun --nproc-per-node)")
    return torch.device("cuda", local_rank)


def _why(e: BaseException) -> str:
    """The first line of a backend error, without gloo's ``[path/file.cc:123] `` prefix, shortened."""
    line = (str(e).strip().splitlines() or [type(e).__name__])[0]
    line = re.sub(r"^\[[^\]]*:\d+\]\s*", "", line)
    return line if len(line) <= 160 else line[:157] + "..."


@dataclass(frozen=True)
class Dist:
    """This process's place among the ranks. ``Dist()``: a plain run (one process, no group)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))   # where this rank computes
    joined: bool = False        # a process group exists (started by torchrun): the collectives communicate
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that decides, prints and writes files."""
        return self.rank == 0

    @property
    def comm_device(self) -> torch.device:
        """Where collective buffers live: the rank's GPU under nccl, else the CPU (gloo)."""
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def shard(self, n: int) -> range:
        """The indices of ``n`` items this rank takes: ``rank, rank + world, ...`` (disjoint, covering all)."""
        return range(self.rank, n, self.world)

    def batch_slice(self, n: int) -> slice:
        """This rank's contiguous part of a batch of ``n``: sizes differ by at most one, in rank order."""
        return slice(self.rank * n // self.world, (self.rank + 1) * n // self.world)

    # -- collectives (each does nothing in a plain run) ------------------------------------------

    def _run(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except RuntimeError as e:   # gloo and nccl failures (DistBackendError is a RuntimeError)
            raise RanksLost(f"rank {self.rank} of {self.world}: {what} failed: another rank stopped or did not answer "
                            f"within {self.timeout_s:g} s ({_why(e)}); the failing rank's own error says why") from None

    def all_reduce_(self, t: Tensor, what: str) -> Tensor:
        """Sum ``t`` over the ranks, in place (on :attr:`comm_device`); returns it."""
        if self.joined:
            import torch.distributed as tdist

            self._run(what, lambda: tdist.all_reduce(t))
        return t

    def broadcast_(self, tensors: Sequence[Tensor], what: str) -> None:
        """Overwrite ``tensors`` (any shapes, dtypes, devices) with rank 0's values: one broadcast per dtype."""
        if not self.joined or not tensors:
            return
        import torch.distributed as tdist

        for dtype in dict.fromkeys(t.dtype for t in tensors):
            group = [t for t in tensors if t.dtype == dtype]
            flat = torch.cat([t.detach().reshape(-1).to(self.comm_device) for t in group])
            self._run(what, lambda: tdist.broadcast(flat, 0))
            with torch.no_grad():
                for t, part in zip(group, flat.split([t.numel() for t in group])):
                    t.copy_(part.view_as(t))

    def _bytes(self, data: bytes) -> Tensor:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).to(self.comm_device) if data else \
            torch.zeros(0, dtype=torch.uint8, device=self.comm_device)

    def broadcast_bytes(self, data: bytes | None, what: str) -> bytes:
        """Rank 0's ``data`` on every rank (the others pass None)."""
        if not self.joined:
            return data or b""
        import torch.distributed as tdist

        size = torch.tensor([len(data or b"")], dtype=torch.int64, device=self.comm_device)
        self._run(what, lambda: tdist.broadcast(size, 0))
        buf = self._bytes(data or b"") if self.is_main else torch.empty(int(size), dtype=torch.uint8,
                                                                         device=self.comm_device)
        self._run(what, lambda: tdist.broadcast(buf, 0))
        return bytes(buf.cpu().numpy())

    def broadcast_json(self, obj: Any, what: str) -> Any:
        """Rank 0's ``obj`` (anything JSON holds) on every rank; the others pass None. No pickle."""
        if not self.joined:
            return obj
        data = self.broadcast_bytes(json.dumps(obj).encode() if self.is_main else None, what)
        return json.loads(data.decode())

    def all_gather_json(self, obj: Any, what: str) -> list[Any]:
        """Every rank's ``obj`` (anything JSON holds), in rank order, on every rank. No pickle."""
        if not self.joined:
            return [obj]
        import torch.distributed as tdist

        data = json.dumps(obj).encode()
        sizes = [torch.zeros(1, dtype=torch.int64, device=self.comm_device) for _ in range(self.world)]
        mine = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
        self._run(what, lambda: tdist.all_gather(sizes, mine))
        longest = max(int(s) for s in sizes)
        padded = torch.zeros(longest, dtype=torch.uint8, device=self.comm_device)
        padded[:len(data)] = self._bytes(data)
        bufs = [torch.empty(longest, dtype=torch.uint8, device=self.comm_device) for _ in range(self.world)]
        self._run(what, lambda: tdist.all_gather(bufs, padded))
        return [json.loads(bytes(b[:int(s)].cpu().numpy()).decode()) for b, s in zip(bufs, sizes)]

    def decide(self, fn: Callable[[], T], what: str) -> T:
        """``fn()`` run on rank 0 alone, its JSON result given to every rank; a user error it raises
        (CompsrtError, OSError) is raised on every rank as a CompsrtError with its message. In a
        plain run: ``fn()``, whatever it raises."""
        if not self.joined:
            return fn()
        msg: Any = None
        if self.is_main:
            try:
                msg = {"ok": fn()}
            except (CompsrtError, OSError) as e:
                msg = {"error": str(e)}
        msg = self.broadcast_json(msg, what)
        if "error" in msg:
            raise CompsrtError(msg["error"])
        return msg["ok"]

    def barrier(self, what: str) -> None:
        """Wait for every rank (a one-element all-reduce, so a lost rank fails it like any collective)."""
        if self.joined:
            self.all_reduce_(torch.zeros(1, device=self.comm_device), what)

    @contextlib.contextmanager
    def rank0_file(self, path: Path, what: str) -> Iterator[Path]:
        """``path`` as rank 0 has it, for reading: rank 0 gets ``path``; the others, whose file system
        may not hold it, a private temporary copy of its bytes, deleted afterwards."""
        data = self.broadcast_bytes(Path(path).read_bytes() if self.is_main and self.joined else None, what)
        if self.is_main or not self.joined:
            yield Path(path)
            return
        with tempfile.TemporaryDirectory(prefix="compsrt_rank_") as tmp:
            copy = Path(tmp) / Path(path).name
            copy.write_bytes(data)
            yield copy


@contextlib.contextmanager
def session(device: torch.device, env: Mapping[str, str] | None = None) -> Iterator[Dist]:
    """The :class:`Dist` of this process on ``device``: a joined process group when torchrun started
    it (left again on exit), else ``Dist(device=device)``.

    Raises:
        CompsrtError: torchrun's variables malformed, a CUDA rank without its GPU, no
            ``torch.distributed`` in this PyTorch, or the other ranks not joining within the timeout.
    """
    env = os.environ if env is None else env
    if not launched(env):
        yield Dist(device=device)
        return
    import torch.distributed as tdist

    if not tdist.is_available():
        raise CompsrtError("this PyTorch has no torch.distributed; run the command without torchrun")
    rank, world, local_rank = (_env_int(env, k) for k in _ENV_INTS)
    local_world = _env_int(env, "LOCAL_WORLD_SIZE", str(world))
    if world < 1 or rank >= world:
        raise CompsrtError(f"RANK={rank} with WORLD_SIZE={world}: need 0 <= RANK < WORLD_SIZE; start the command "
                           "with torchrun")
    timeout = timeout_seconds(env)
    device = rank_device(device, local_rank, local_world)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    try:
        tdist.init_process_group(backend, rank=rank, world_size=world, timeout=timedelta(seconds=timeout))
    except (RuntimeError, ValueError) as e:
        where = f"{env.get('MASTER_ADDR', '?')}:{env.get('MASTER_PORT', '?')}"
        raise CompsrtError(f"rank {rank} of {world}: could not join the other ranks at {where} ({_why(e)}); check "
                           "that every rank was started with the same --rdzv/--master settings") from None
    try:
        yield Dist(rank, world, local_rank, device, True, timeout)
    finally:
        tdist.destroy_process_group()
