"""Exponential-moving-average (EMA) targets: a frozen copy of an online network, moved towards it after each step.

Used by :class:`~stssl.tasks.future.FutureFeatureTask`, and meant for the other teacher-student methods (BYOL,
MoCo, DINO, V-JEPA): the "target" or "teacher" network is ``target = m * target + (1 - m) * online``.

- :func:`ema_momentum`: the momentum at update ``k``, constant or BYOL's cosine ramp.
- :func:`ema_update_`: one in-place update of a module from another (parameters averaged, buffers copied).
- :class:`EMATarget`: the bookkeeping around it. The copy is made lazily (:meth:`EMATarget.ensure`, usually on the
  owning task's first forward, since the task does not hold the encoder before), frozen, and saved in checkpoints
  with the count of updates (the ``ema_updates`` buffer, so a resumed run continues the ramp). A checkpoint loaded
  before the copy exists is kept aside and applied when it is made.

When to update is the caller's business, and it is explicit: a task calls :meth:`EMATarget.update` from its
:meth:`~stssl.tasks.base.PretextTask.on_optimizer_step` hook, which :class:`~stssl.modules.SSLModule` calls once
per real optimizer step (and a pure-PyTorch loop calls after ``optimizer.step()``).
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

__all__ = ["EMATarget", "ema_momentum", "ema_update_"]


def ema_momentum(step: int, base: float, end: float | None = None, total_steps: int | None = None) -> float:
    """EMA momentum at update ``step``: constant ``base``, or BYOL's cosine ramp from ``base`` to ``end``.

    ``m = end - (end - base) * (cos(pi * min(step / total_steps, 1)) + 1) / 2``: ``base`` at step 0, ``end`` from
    ``total_steps`` on.

    Example:
        >>> ema_momentum(10, 0.99)
        0.99
        >>> [round(ema_momentum(s, 0.99, 1.0, 100), 4) for s in (0, 50, 100, 200)]
        [0.99, 0.995, 1.0, 1.0]
    """
    if end is None:
        return float(base)
    if total_steps is None or total_steps < 1:
        raise ValueError(f"ema_momentum: a ramp to end={end} needs total_steps >= 1, got {total_steps}")
    progress = min(max(step, 0) / total_steps, 1.0)
    return float(end - (end - base) * (math.cos(math.pi * progress) + 1.0) / 2.0)


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """In place: ``target_param = momentum * target_param + (1 - momentum) * online_param``; buffers copied.

    Floating-point parameters are averaged with one ``torch._foreach_lerp_`` call (few kernel launches on GPU);
    buffers (BatchNorm running statistics, counters) and any non-float parameters are copied from ``online`` with
    one ``torch._foreach_copy_``, not averaged.

    Args:
        target: the EMA copy (same architecture as ``online``).
        online: the trained module.
        momentum: in ``[0, 1]``; 1 keeps ``target``, 0 copies ``online``.

    Raises:
        ValueError: if ``momentum`` is out of range, or the two modules' parameter or buffer names differ.

    Example:
        >>> target, online = nn.Linear(2, 1), nn.Linear(2, 1)
        >>> expected = 0.9 * target.weight + 0.1 * online.weight
        >>> ema_update_(target, online, 0.9)
        >>> torch.allclose(target.weight, expected)
        True
    """
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"ema_update_: momentum must be in [0, 1], got {momentum}")
    pairs: list[tuple[str, dict[str, torch.Tensor], dict[str, torch.Tensor]]] = [
        ("parameter", dict(target.named_parameters()), dict(online.named_parameters())),
        ("buffer", dict(target.named_buffers()), dict(online.named_buffers())),
    ]
    averaged: list[torch.Tensor] = []
    towards: list[torch.Tensor] = []
    copied: list[torch.Tensor] = []
    sources: list[torch.Tensor] = []
    for kind, tgt, src in pairs:
        if tgt.keys() != src.keys():
            raise ValueError(
                f"ema_update_: target and online {kind}s differ: only in target {sorted(tgt.keys() - src.keys())}, "
                f"only in online {sorted(src.keys() - tgt.keys())}"
            )
        for key, t in tgt.items():
            s = src[key].detach()
            if kind == "parameter" and t.is_floating_point():
                averaged.append(t)
                towards.append(s.to(device=t.device, dtype=t.dtype))
            else:
                copied.append(t)
                sources.append(s)
    if averaged:
        torch._foreach_lerp_(averaged, towards, 1.0 - momentum)
    if copied:
        torch._foreach_copy_(copied, sources)


class EMATarget(nn.Module):
    """A frozen EMA copy of an online module, made lazily, updated on request, saved in checkpoints.

    The copy is ``copy.deepcopy(online)`` with ``requires_grad=False``, registered as the submodule ``module``
    (so it follows ``.to(device)`` and is saved under ``<prefix>module.*``). It is made by :meth:`ensure`, under
    ``torch.inference_mode(False)`` so that a copy made during Lightning's validation (inference mode) stays
    updatable. Its parameters are never in an optimizer. Its train/eval mode follows this module's.

    Args:
        momentum: EMA momentum (at the start of the ramp), in ``[0, 1]``.
        end: with ``total_steps``, ramp the momentum to this value on a cosine (BYOL); ``None``: constant.
        total_steps: updates over which the momentum ramps (e.g. ``trainer.estimated_stepping_batches``).
        owner: how error messages name the caller.

    Attributes:
        module: the copy, or ``None`` before :meth:`ensure`.
        ema_updates: ``()`` int64 buffer, the updates applied so far (checkpointed: the ramp resumes).

    Example:
        >>> online = nn.Linear(2, 1)
        >>> ema = EMATarget(momentum=0.5)
        >>> target = ema.ensure(online)  # a frozen copy, equal to online
        >>> with torch.no_grad():
        ...     _ = online.weight.add_(1.0)  # an optimizer step
        >>> ema.update(online)  # the momentum used
        0.5
        >>> int(ema.ema_updates), torch.allclose(target.weight, online.weight - 0.5)
        (1, True)
    """

    module: nn.Module | None
    ema_updates: torch.Tensor

    def __init__(
        self,
        momentum: float = 0.996,
        end: float | None = None,
        total_steps: int | None = None,
        owner: str = "EMATarget",
    ) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0 or (end is not None and not 0.0 <= end <= 1.0):
            raise ValueError(f"{owner}: ema and ema_end must be in [0, 1], got {momentum}, {end}")
        if end is not None and (total_steps is None or total_steps < 1):
            raise ValueError(f"{owner}: ema_end={end} needs total_steps >= 1, got {total_steps}")
        self.momentum = float(momentum)
        self.end = None if end is None else float(end)
        self.total_steps = None if total_steps is None else int(total_steps)
        self.owner = owner
        self.module = None
        self.register_buffer("ema_updates", torch.zeros((), dtype=torch.long))
        self._updates = 0  # a host copy of ema_updates (no device sync per step)
        self._pending: dict[str, torch.Tensor] | None = None  # a loaded copy's state, applied by ensure()

    def momentum_at(self, update: int) -> float:
        """The momentum of update number ``update`` (0-based)."""
        return ema_momentum(update, self.momentum, self.end, self.total_steps)

    @property
    def last_momentum(self) -> float:
        """The momentum of the last update applied (of the first one, before any)."""
        return self.momentum_at(max(self._updates - 1, 0))

    def ensure(self, online: nn.Module) -> nn.Module:
        """Return the copy, making it from ``online`` first if there is none (or from a loaded checkpoint's state).

        Making the copy is not an update: :attr:`ema_updates` is unchanged. The copy's train/eval mode is set to
        this module's on every call: a copy made during Lightning's sanity-check validation (eval mode) is not
        among the modules whose mode Lightning restores when training starts, so it would stay in eval mode.
        """
        if self.module is not None:
            if self.module.training != self.training:
                self.module.train(self.training)
            return self.module
        with torch.inference_mode(False), torch.no_grad():
            target = copy.deepcopy(online)
            for p in target.parameters():
                p.requires_grad_(False)
                p.grad = None
            if self._pending is not None:
                target.load_state_dict(self._pending)
                self._pending = None
        target.train(self.training)
        self.module = target
        return target

    def update(self, online: nn.Module) -> float:
        """Apply one EMA update towards ``online`` (making the copy first if needed); return the momentum used.

        Call it once per optimizer step of ``online``; every call counts in :attr:`ema_updates`.
        """
        target = self.ensure(online)
        momentum = self.momentum_at(self._updates)
        with torch.inference_mode(False):
            ema_update_(target, online, momentum)
            self._updates += 1
            self.ema_updates.fill_(self._updates)
        return momentum

    def forward(self, *args: object, **kwargs: object) -> object:
        """Run the copy (no gradient is tracked into it: its parameters are frozen)."""
        if self.module is None:
            raise RuntimeError(f"{self.owner}: the EMA copy does not exist yet; call ensure(online) first")
        return self.module(*args, **kwargs)

    def _save_to_state_dict(self, destination, prefix, keep_vars):  # type: ignore[no-untyped-def]
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.module is None and self._pending is not None:  # loaded but not made yet: save what was loaded
            for key, value in self._pending.items():
                destination[f"{prefix}module.{key}"] = value

    def _load_from_state_dict(  # type: ignore[no-untyped-def]
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # Before the copy exists there is no submodule to load into: keep its entries for ensure().
        if self.module is None:
            sub = f"{prefix}module."
            keys = [k for k in state_dict if k.startswith(sub)]
            if keys:
                self._pending = {k[len(sub):]: state_dict.pop(k) for k in keys}
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )
        self._updates = int(self.ema_updates)
