"""Shape checks whose letters bind across tensors.

``check_shape(x, "B C T H W")`` checks the rank and returns the sizes bound to each letter; passing the
returned dict to the next call checks that letters agree across tensors. Integers in the pattern are exact
sizes, ``*`` matches any size, ``_`` skips. Set the environment variable ``STSSL_CHECKS=0`` to turn all
checks off (for example in tight inference loops).

Example:
    >>> import torch
    >>> sizes = check_shape(torch.zeros(2, 3, 4, 8, 8), "B 3 T H W")
    >>> sizes["T"]
    4
    >>> check_shape(torch.zeros(2, 3, 3), "B 3 3", sizes)["B"]
    2
    >>> check_shape(torch.zeros(5, 3, 3), "B 3 3", sizes)
    Traceback (most recent call last):
      ...
    ValueError: tensor: expected shape (B 3 3) with B=2, got (5, 3, 3)
"""

from __future__ import annotations

import os

import torch

__all__ = ["check_shape", "checks_enabled"]


def checks_enabled() -> bool:
    """Whether shape checks run (``STSSL_CHECKS`` is not ``0``)."""
    return os.environ.get("STSSL_CHECKS", "1") != "0"


def check_shape(
    x: torch.Tensor,
    pattern: str,
    sizes: dict[str, int] | None = None,
    *,
    name: str = "tensor",
) -> dict[str, int]:
    """Check ``x.shape`` against a space-separated ``pattern`` of letters, integers, ``*`` or ``_``.

    Args:
        x: the tensor to check.
        pattern: e.g. ``"B C T H W"`` or ``"B 3 3"``. Letters may carry a prime (``T'``).
        sizes: sizes bound by earlier calls; updated in place with new letters and returned.
        name: how the error message names ``x`` (e.g. ``"batch['video']"``).

    Returns:
        The dict of letter sizes (``sizes`` updated, or a new dict).

    Raises:
        ValueError: naming ``name``, the expected pattern and the actual shape.
    """
    bound: dict[str, int] = {} if sizes is None else sizes
    if not checks_enabled():  # no checks, but callers still read the sizes they bind
        letters = pattern.split()
        if len(letters) == x.dim():
            for letter, size in zip(letters, x.shape, strict=True):
                if letter not in ("*", "_") and not letter.isdigit():
                    bound.setdefault(letter, int(size))
        return bound
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor of shape ({pattern}), got {type(x).__name__}")
    letters = pattern.split()
    shape = tuple(x.shape)
    new: dict[str, int] = {}

    def fail() -> ValueError:
        known = {k: v for k, v in {**bound, **new}.items() if k in letters}
        with_sizes = (" with " + ", ".join(f"{k}={v}" for k, v in known.items())) if known else ""
        return ValueError(f"{name}: expected shape ({pattern}){with_sizes}, got {shape}")

    if len(letters) != len(shape):
        raise fail()
    for letter, size in zip(letters, shape, strict=True):
        if letter in ("*", "_"):
            continue
        if letter.isdigit():
            if int(letter) != size:
                raise fail()
            continue
        expected = bound.get(letter, new.get(letter))
        if expected is None:
            new[letter] = size
        elif expected != size:
            raise fail()
    bound.update(new)
    return bound
