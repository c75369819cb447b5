"""The MLP's training loop, in one process or in each of torchrun's processes (DDP).

One run, any number of processes, one model:

- Every process draws the same permutation of the training rows from the same seeded
  generator, cuts it into global batches of ``batch_size`` rows and takes its own share of each
  (``batch[rank::world]``). Each process's loss is its rows' summed loss scaled by
  ``world / len(batch)``, so DDP's mean of the gradients is exactly the gradient of the global
  batch's mean loss: N processes take the same optimizer steps as one, up to float summation
  order.
- The rows reach the device through a DataLoader (pinned memory and non-blocking copies on
  CUDA); the whole global batch is fetched by one index, not row by row.
- On CUDA: bf16 autocast where the device supports it, fp16 with a gradient scaler where it
  does not, TF32 matmuls, optional ``torch.compile``. Weights stay float32, so evaluation and
  the ONNX export are the same with or without them. CPU runs in float32.
- Rank 0 owns everything outside the loop (MLflow, checkpoints, registration); it broadcasts
  the checkpoint it resumes from, so every rank resumes from the same state.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``;
without them this is a single process and nothing distributed is started.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch


@dataclass(frozen=True)
class World:
    """This process's place among torchrun's (rank 0 of 1 without torchrun)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> World:
        env = dict(os.environ if env is None else env)
        try:
            world = cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)),
                        int(env.get("LOCAL_RANK", 0)))  # fmt: skip
        except ValueError as exc:
            raise ValueError(f"RANK, WORLD_SIZE and LOCAL_RANK must be integers: {exc}") from None
        if world.size < 1 or not 0 <= world.rank < world.size:
            raise ValueError(f"rank {world.rank} is not in a world of {world.size}")
        return world

    @property
    def leader(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def device_for(world: World) -> torch.device:
    """The process's own GPU (``LOCAL_RANK``) when the pod has GPUs, else the CPU."""
    import torch

    if torch.cuda.is_available():
        index = world.local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


@contextlib.contextmanager
def process_group(world: World, device: torch.device | None) -> Iterator[None]:
    """NCCL between GPUs, gloo on CPU; nothing for a single process."""
    if not world.distributed:
        yield
        return
    import torch.distributed as dist

    cuda = device is not None and device.type == "cuda"
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size,
                            device_id=device if cuda else None)  # fmt: skip
    try:
        yield
    finally:
        dist.destroy_process_group()


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not world.distributed:
        return value
    import torch.distributed as dist

    box = [value if world.leader else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


@dataclass(frozen=True)
class Precision:
    """What autocast runs in: ``None`` is float32."""

    dtype: torch.dtype | None
    scaled: bool  # fp16 needs a gradient scaler; bf16 and float32 do not

    @property
    def name(self) -> str:
        return "float32" if self.dtype is None else str(self.dtype).removeprefix("torch.")

    @classmethod
    def choose(cls, device: torch.device, amp: bool) -> Precision:
        import torch

        if not amp or device.type != "cuda":
            return cls(None, False)
        if torch.cuda.is_bf16_supported():
            return cls(torch.bfloat16, False)
        return cls(torch.float16, True)


class GlobalBatchSampler:
    """This rank's share of each global batch of one seeded permutation per epoch.

    The generator is shared state: every rank draws from an identically seeded one, so the
    permutations agree, and the checkpoint stores it so a resumed run continues the sequence.
    """

    def __init__(self, rows: int, batch_size: int, world: World, generator: Any) -> None:
        self.rows, self.batch_size, self.world, self.generator = rows, batch_size, world, generator

    def __iter__(self) -> Iterator[tuple[Any, int]]:
        import torch

        order = torch.randperm(self.rows, generator=self.generator)
        for start in range(0, self.rows, self.batch_size):
            batch = order[start : start + self.batch_size]
            yield batch[self.world.rank :: self.world.size], len(batch)

    def __len__(self) -> int:
        return -(-self.rows // self.batch_size)


class _Rows:
    """Rows fetched a batch at a time (the sampler yields index tensors, not single rows)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __getitem__(self, item: tuple[torch.Tensor, int]) -> tuple[Any, Any, int]:
        rows, global_size = item
        return self.x[rows], self.y[rows], global_size

    def __len__(self) -> int:
        return len(self.x)


def loader(x: torch.Tensor, y: torch.Tensor, sampler: GlobalBatchSampler,
           device: torch.device) -> Any:  # fmt: skip
    from torch.utils.data import DataLoader

    return DataLoader(
        _Rows(x, y),  # type: ignore[arg-type]
        sampler=sampler,
        batch_size=None,
        pin_memory=device.type == "cuda",
    )


# Fault injection for resume tests and chaos drills: "RANK:EPOCH:STEP" makes that rank die
# (exit 137, as the kernel's OOM killer would leave it) before that step of that epoch.
KILL_ENV = "HELMSMAN_FAULT_KILL_RANK"


def _fault(world: World) -> tuple[int, int] | None:
    given = os.environ.get(KILL_ENV, "")
    if not given:
        return None
    rank, epoch, step = (int(part) for part in given.split(":"))
    return (epoch, step) if rank == world.rank else None


@dataclass(frozen=True)
class LoopOptions:
    batch_size: int
    learning_rate: float
    weight_decay: float
    amp: bool = True
    compile: bool = False


@dataclass
class Trained:
    net: torch.nn.Sequential  # the bare network (not the DDP wrapper), on the device
    history: list[dict[str, float]]
    resumed_from_epoch: int | None
    precision: str
    samples: int  # training rows this rank stepped through (for throughput)


def train(
    net: torch.nn.Sequential,
    data: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    validation: tuple[npt.NDArray[np.float32], npt.NDArray[np.float32]],
    epochs: int,
    seed: int,
    options: LoopOptions,
    world: World,
    device: torch.device,
    state: dict[str, Any] | None = None,
    after_epoch: Callable[[int, dict[str, float], dict[str, Any]], None] | None = None,
) -> Trained:
    """Train ``net`` on standardized rows for ``epochs``; resume from ``state`` (a checkpoint:
    ``after_epoch``'s third argument, which rank 0 saves) when given.

    ``after_epoch(epoch, metrics, state)`` runs on rank 0 after each epoch.
    """
    import torch

    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    net = net.to(device)
    optimizer = torch.optim.AdamW(
        net.parameters(), lr=options.learning_rate, weight_decay=options.weight_decay
    )
    generator = torch.Generator().manual_seed(seed)
    first_epoch, history, resumed = 0, [], None
    if state is not None:
        net.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        generator.set_state(state["generator"])
        first_epoch, history, resumed = state["epoch"] + 1, list(state["history"]), state["epoch"]

    model: Any = net
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[device.index] if device.index is not
                                        None else None)  # fmt: skip
    if options.compile:
        model = torch.compile(model)
    precision = Precision.choose(device, options.amp)
    scaler = torch.amp.GradScaler("cuda", enabled=precision.scaled)
    loss_sum = torch.nn.BCEWithLogitsLoss(reduction="sum")
    x, y = (torch.as_tensor(a) for a in data)
    x_val, y_val = (torch.as_tensor(a, device=device) for a in validation)
    sampler = GlobalBatchSampler(len(x), options.batch_size, world, generator)
    rows = loader(x, y, sampler, device)
    samples = 0
    fault = _fault(world)

    for epoch in range(first_epoch, epochs):
        model.train()
        total = torch.zeros((), dtype=torch.float64, device=device)
        for step, (xb, yb, global_size) in enumerate(rows):
            if fault == (epoch, step):
                # A preempted or OOM-killed rank: gone mid-epoch, no checkpoint, no cleanup.
                os._exit(137)
            xb = xb.to(device, non_blocking=True)
            yb = yb.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=precision.dtype,
                                enabled=precision.dtype is not None):  # fmt: skip
                summed = loss_sum(model(xb).squeeze(1).float(), yb)
            # DDP averages gradients over ranks: scaled so the average is the global batch's.
            scaler.scale(summed * (world.size / global_size)).backward()
            scaler.step(optimizer)
            scaler.update()
            total += summed.detach()
            samples += len(xb)
        if world.distributed:
            import torch.distributed as dist

            dist.all_reduce(total)
        metrics: dict[str, float] = {"train_loss": float(total) / len(x)}
        if world.leader:
            net.eval()
            with torch.no_grad():
                logits = net(x_val).squeeze(1)
                metrics["val_loss"] = float(torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y_val))  # fmt: skip
                metrics["val_accuracy"] = float(((logits > 0).float() == y_val).float().mean())
            history.append(metrics)
            if after_epoch is not None:
                checkpoint = {
                    "epoch": epoch,
                    "model": {k: v.detach().cpu() for k, v in net.state_dict().items()},
                    "optimizer": optimizer.state_dict(),
                    "generator": generator.get_state(),
                    "history": history,
                }
                after_epoch(epoch, metrics, checkpoint)
    return Trained(net, history, resumed, precision.name, samples)
