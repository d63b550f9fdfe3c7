"""The pretext-task contract.

A task is an ``nn.Module`` holding its own heads. ``forward(batch, encoder) -> TaskOutput``: it generates its
labels from the batch with a pure, seeded function (``make_<task>_batch``), runs the encoder, and returns a loss
and detached logs. Tasks declare what they need from the data in :attr:`PretextTask.requires`; the
:class:`~stssl.modules.SSLModule` checks the first batch against the union of its tasks' requirements.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stssl.encoders.base import Encoder
from stssl.seeding import seeded_generator
from stssl.types import EncoderSpec, TaskOutput

__all__ = ["PretextTask", "TaskRequirements", "merge_requirements"]


@dataclass(frozen=True)
class TaskRequirements:
    """What a task needs from each batch.

    Attributes:
        min_frames: the fewest frames ``batch["video"]`` must have (``T``).
        intrinsics: whether ``batch["K"]`` must be present.
        labels: whether ``batch["label"]`` must be present.
        index: whether ``batch["index"]`` (each clip's dataset item, ``(B,)`` int64) must be present: tasks with a
            per-item memory (PIRL's bank, DeepCluster's features). :class:`~stssl.data.ClipDataset` provides it.
    """

    min_frames: int = 1
    intrinsics: bool = False
    labels: bool = False
    index: bool = False


def merge_requirements(reqs: list[TaskRequirements]) -> TaskRequirements:
    """The union of several tasks' requirements."""
    return TaskRequirements(
        min_frames=max((r.min_frames for r in reqs), default=1),
        intrinsics=any(r.intrinsics for r in reqs),
        labels=any(r.labels for r in reqs),
        index=any(r.index for r in reqs),
    )


class PretextTask(nn.Module):
    """Base class of pretext tasks.

    Args:
        weight: the task's weight in a multi-task sum.
        name: the name used in logs (``train/<name>/<metric>``); defaults to the class's ``default_name``.
        seed: seeds the task's label generator, so runs are reproducible.

    Subclasses set ``default_name``, implement :meth:`build` (create heads once the encoder is known),
    :attr:`requires` and :meth:`forward`, and :meth:`on_optimizer_step` if they keep state that follows the
    optimizer (an EMA target).
    """

    default_name: str = "task"

    def __init__(self, weight: float = 1.0, name: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if weight < 0:
            raise ValueError(f"{type(self).__name__}: weight must be >= 0, got {weight}")
        self.weight = float(weight)
        self.name = name or self.default_name
        self.seed = int(seed)
        self._calls = 0

    @property
    def requires(self) -> TaskRequirements:
        return TaskRequirements()

    def build(self, spec: EncoderSpec) -> None:
        """Create the task's heads for an encoder with this spec. Called once, before training."""

    def on_optimizer_step(self, encoder: Encoder) -> None:
        """Called once after each real optimizer step (no-op by default); tasks with EMA targets update them here.

        :class:`~stssl.modules.SSLModule` calls it for every task after each step of its optimizer that was taken
        (not per micro-batch under gradient accumulation, not on an AMP step skipped for non-finite gradients,
        never in validation). A pure-PyTorch loop calls it itself::

            loss = sum(task.weight * task(batch, encoder, gen).loss for task in tasks)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            for task in tasks:
                task.on_optimizer_step(encoder)

        Args:
            encoder: the online encoder, after the step.
        """

    def next_generator(self) -> torch.Generator:
        """A generator for a call made without one (standalone use): seeded from ``(seed, call count)``."""
        self._calls += 1
        return seeded_generator(self.seed, self._calls - 1)

    def forward(
        self, batch: dict, encoder: Encoder, generator: torch.Generator | None = None
    ) -> TaskOutput:  # pragma: no cover - abstract
        raise NotImplementedError
