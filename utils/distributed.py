"""Process-group setup for ``python pretrain.py`` (one process) and ``torchrun`` (gloo on
CPU, nccl on CUDA; multi-node through torchrun's rendezvous flags)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from utils.errors import ConfigError


@dataclass
class DistEnv:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def choose_device(device: str, local_rank: int, world_size: int) -> torch.device:
    """This rank's device for ``device``: auto (cuda when there is one, else cpu), cpu, cuda
    (local rank r on device r modulo the devices there are) or mps (Apple's GPU, one
    process). ConfigError when the machine has no such device."""
    if device == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(
                "device=mps: this torch has no MPS device (Apple silicon with torch's macOS build); "
                "device=cpu, or auto, runs on the CPU"
            )
        if world_size > 1:
            raise ConfigError("device=mps runs one process: torch has no process-group backend for MPS")
        return torch.device("mps")
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if not use_cuda:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("device=cuda: no CUDA device is available (device=cpu, or auto, runs on the CPU)")
    dev = torch.device("cuda", local_rank % torch.cuda.device_count())
    torch.cuda.set_device(dev)
    return dev


def init_distributed(device: str = "auto") -> DistEnv:
    """Reads torchrun's RANK/WORLD_SIZE/LOCAL_RANK (without them, a single process), takes
    this rank's device (``choose_device``) and starts the process group: nccl on CUDA, gloo
    on the CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = choose_device(device, local_rank, world_size)
    if world_size > 1:
        dist.init_process_group(
            backend="nccl" if dev.type == "cuda" else "gloo",
            store=_attempt_store(world_size),
            rank=rank,
            world_size=world_size,
        )
    return DistEnv(rank, world_size, local_rank, dev)


def _attempt_store(world_size: int) -> dist.Store | None:
    """Under torchrun, the agent's store with a prefix per restart attempt (None: the default
    env:// rendezvous). torchrun keeps one store across ``--max-restarts`` attempts, so the
    process group's keys of a failed attempt (its ranks' addresses) are still there and a
    restarted rank may read a dead peer's address (gloo: "connectFullMesh ... Connection
    refused", seen in about half of the restarts here)."""
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT")
    if attempt is None or os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    store = dist.TCPStore(
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=False, timeout=timedelta(minutes=10)
    )
    return dist.PrefixStore(f"arcforge/attempt_{attempt}/", store)


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor, env: DistEnv) -> torch.Tensor:
    if env.distributed:
        dist.all_reduce(tensor)
    return tensor


def cleanup_distributed(env: DistEnv) -> None:
    """Destroy the process group. Free DDP modules first (callers ``del`` them): gloo runs
    otherwise crash at exit about one time in ten."""
    if env.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
