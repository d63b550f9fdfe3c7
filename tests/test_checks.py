from __future__ import annotations

import pytest
import torch

from stssl.checks import check_shape
from stssl.tasks.vcop import make_vcop_batch


def test_sizes_bind_across_tensors_and_errors_name_the_input() -> None:
    sizes = check_shape(torch.zeros(2, 3, 4), "B C T", name="video")
    assert sizes == {"B": 2, "C": 3, "T": 4}
    with pytest.raises(ValueError, match=r"labels: expected shape \(B\) with B=2, got \(3,\)"):
        check_shape(torch.zeros(3), "B", sizes, name="labels")


def test_disabled_checks_still_bind_sizes(monkeypatch) -> None:
    """STSSL_CHECKS=0 skips the checks, not the sizes callers read (they index ``sizes["T"]``)."""
    monkeypatch.setenv("STSSL_CHECKS", "0")
    assert check_shape(torch.zeros(2, 3, 4), "B 3 T") == {"B": 2, "T": 4}
    assert check_shape(torch.zeros(5), "B", {"B": 2}) == {"B": 2}  # no error, earlier binding kept
    out = make_vcop_batch(torch.rand(2, 1, 12, 4, 4), 3, 4, generator=torch.Generator().manual_seed(0))
    assert out.clips.shape == (2, 3, 1, 4, 4, 4)
