"""Per-frame 2D ResNets (the monodepth2 depth and pose encoders) behind the video :class:`Encoder` contract.

The network is torchvision's ResNet (``torchvision.models.resnet``: ``BasicBlock``/``Bottleneck``) assembled
with a width knob and configurable depths; module names mirror torchvision (``conv1``, ``bn1``, ``layer1`` …
``layer4``), so at ``width=64`` a torchvision ``resnet18``/``resnet34``/``resnet50`` state dict (without
``fc``) loads as is, and the parameter counts match torchvision's without the classifier.

Frames are folded into the batch (``B C T H W -> (B T) C H W``), encoded independently, and unfolded back, so
every pyramid stage is ``(B, C_i, T, H_i, W_i)`` with stride ``(1, s, s)``. The pyramid has five stages, as in
monodepth2: the stem after its ReLU (``/2``, before the max-pool), then ``layer1`` (``/4``) … ``layer4``
(``/32``). Every convolution pads, so a stage's size is ``ceil(H / s)`` for any input size.

Inputs are not normalised here (monodepth2 subtracts 0.45 and divides by 0.225 inside its encoder): the caller
normalises, as for every stssl encoder.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import torch
from einops import rearrange
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from stssl.checks import check_shape
from stssl.encoders.base import Encoder
from stssl.types import EncoderSpec

__all__ = [
    "FrameEncoder2D",
    "resnet18_2d",
    "resnet34_2d",
    "resnet50_2d",
    "resnet18_2d_tiny",
    "resnet50_2d_tiny",
]

Block = Literal["basic", "bottleneck"]
_BLOCKS: dict[str, type[BasicBlock] | type[Bottleneck]] = {"basic": BasicBlock, "bottleneck": Bottleneck}


class FrameEncoder2D(Encoder):
    """A 2D ResNet applied to every frame of a clip; five-stage pyramid from ``/2`` to ``/32``.

    Args:
        block: ``"basic"`` (ResNet-18/34) or ``"bottleneck"`` (ResNet-50 and deeper; 4x channel expansion).
        width: channels of the stem and the first stage's planes; stages have ``width * (1, 2, 4, 8)`` planes
            (times 4 for bottlenecks). 64 is the standard size.
        layers: residual blocks per stage; ``(2, 2, 2, 2)`` is ResNet-18, ``(3, 4, 6, 3)`` ResNet-34/50.
        in_channels: input channels; ``3 * n`` for a pose network fed ``n`` channel-stacked RGB frames.

    Shape:
        input ``(B, C, T, H, W)`` with ``C == in_channels``; pyramid stage ``i`` is
        ``(B, spec.channels[i], T, ceil(H / 2^(i+1)), ceil(W / 2^(i+1)))``, strides ``(1, 2, 2)`` …
        ``(1, 32, 32)``. :meth:`forward_frames` is the same network on ``(N, C, H, W)`` images.

    Example:
        >>> enc = FrameEncoder2D(width=8, layers=(1, 1, 1, 1))
        >>> out = enc(torch.zeros(2, 3, 4, 64, 96))
        >>> [tuple(p.shape) for p in out.pyramid][::2]
        [(2, 8, 4, 32, 48), (2, 16, 4, 8, 12), (2, 64, 4, 2, 3)]
        >>> enc.spec.strides[-1], tuple(out.pooled.shape)
        ((1, 32, 32), (2, 64))
    """

    def __init__(
        self,
        block: Block = "basic",
        width: int = 64,
        layers: Sequence[int] = (2, 2, 2, 2),
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if block not in _BLOCKS:
            raise ValueError(f"FrameEncoder2D: unknown block {block!r}; choose from {list(_BLOCKS)}")
        if len(layers) != 4 or any(int(n) < 1 for n in layers):
            raise ValueError(f"FrameEncoder2D: layers must be 4 positive block counts, got {tuple(layers)}")
        if width < 1:
            raise ValueError(f"FrameEncoder2D: width must be >= 1, got {width}")
        if in_channels < 1:
            raise ValueError(f"FrameEncoder2D: in_channels must be >= 1, got {in_channels}")
        block_cls = _BLOCKS[block]
        self.block = block
        self.conv1 = nn.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        channels = [width]
        for i, n_blocks in enumerate(layers):
            planes = width * 2**i
            stride = 1 if i == 0 else 2
            out_planes = planes * block_cls.expansion
            downsample = None
            if stride != 1 or inplanes != out_planes:
                downsample = nn.Sequential(
                    nn.Conv2d(inplanes, out_planes, kernel_size=1, stride=stride, bias=False),
                    nn.BatchNorm2d(out_planes),
                )
            blocks: list[nn.Module] = [block_cls(inplanes, planes, stride, downsample)]
            blocks += [block_cls(out_planes, planes) for _ in range(1, int(n_blocks))]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            inplanes = out_planes
            channels.append(out_planes)
        strides = tuple((1, 2**k, 2**k) for k in range(1, 6))
        self.spec = EncoderSpec(channels=tuple(channels), strides=strides, in_channels=in_channels)
        self._init_weights()

    def _init_weights(self) -> None:
        # torchvision's ResNet initialisation (zero_init_residual=False).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_frames(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The five-stage pyramid of independent images.

        Args:
            images: ``(N, C, H, W)`` with ``C == spec.in_channels``.

        Returns:
            Five ``(N, spec.channels[i], ceil(H / 2^(i+1)), ceil(W / 2^(i+1)))`` tensors, shallow to deep.
        """
        check_shape(
            images, f"N {self.spec.in_channels} H W", name=f"{type(self).__name__}.forward_frames images"
        )
        x = self.relu(self.bn1(self.conv1(images)))
        feats = [x]
        x = self.maxpool(x)
        for i in range(1, 5):
            x = getattr(self, f"layer{i}")(x)
            feats.append(x)
        return tuple(feats)

    def forward_features(self, video: torch.Tensor) -> tuple[torch.Tensor, ...]:
        batch = video.shape[0]
        frames = rearrange(video, "b c t h w -> (b t) c h w")
        return tuple(rearrange(f, "(b t) c h w -> b c t h w", b=batch) for f in self.forward_frames(frames))

    def load_torchvision_state_dict(
        self, state_dict: Mapping[str, torch.Tensor], strict: bool = True
    ) -> None:
        """Load a torchvision ResNet state dict (e.g. ImageNet weights the caller has on disk).

        ``fc.*`` entries are dropped. When ``spec.in_channels`` is a multiple ``n`` of the checkpoint's input
        channels (a pose encoder on ``n`` stacked frames), ``conv1.weight`` is tiled ``n`` times along its input
        axis and divided by ``n``, so a stack of ``n`` identical frames gives the pretrained response (as
        monodepth2 does).

        Raises:
            ValueError: when ``conv1.weight`` cannot be adapted to ``spec.in_channels``.
        """
        state = {k: v for k, v in state_dict.items() if not k.startswith("fc.")}
        w = state.get("conv1.weight")
        if w is not None and w.shape[1] != self.spec.in_channels:
            if w.ndim != 4 or self.spec.in_channels % w.shape[1]:
                raise ValueError(
                    f"{type(self).__name__}.load_torchvision_state_dict: state_dict['conv1.weight'] has shape "
                    f"{tuple(w.shape)}; cannot tile its {w.shape[1] if w.ndim > 1 else '?'} input channels to "
                    f"in_channels={self.spec.in_channels}"
                )
            n = self.spec.in_channels // w.shape[1]
            state["conv1.weight"] = w.repeat(1, n, 1, 1) / n
        self.load_state_dict(state, strict=strict)


def resnet18_2d(**kwargs) -> FrameEncoder2D:
    """Per-frame ResNet-18 (11,176,512 parameters, as torchvision's ``resnet18`` without ``fc``)."""
    return FrameEncoder2D(**{"block": "basic", "width": 64, "layers": (2, 2, 2, 2), **kwargs})


def resnet34_2d(**kwargs) -> FrameEncoder2D:
    """Per-frame ResNet-34 (21,284,672 parameters, as torchvision's ``resnet34`` without ``fc``)."""
    return FrameEncoder2D(**{"block": "basic", "width": 64, "layers": (3, 4, 6, 3), **kwargs})


def resnet50_2d(**kwargs) -> FrameEncoder2D:
    """Per-frame ResNet-50 (23,508,032 parameters, as torchvision's ``resnet50`` without ``fc``)."""
    return FrameEncoder2D(**{"block": "bottleneck", "width": 64, "layers": (3, 4, 6, 3), **kwargs})


def resnet18_2d_tiny(**kwargs) -> FrameEncoder2D:
    """A CPU preset: basic blocks, width 16, one block per stage (pyramid channels 16, 16, 32, 64, 128)."""
    return FrameEncoder2D(**{"block": "basic", "width": 16, "layers": (1, 1, 1, 1), **kwargs})


def resnet50_2d_tiny(**kwargs) -> FrameEncoder2D:
    """A CPU preset with bottlenecks: width 8, one block per stage (pyramid channels 8, 32, 64, 128, 256)."""
    return FrameEncoder2D(**{"block": "bottleneck", "width": 8, "layers": (1, 1, 1, 1), **kwargs})
