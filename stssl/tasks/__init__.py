"""Pretext tasks. ``TASKS`` maps registry names to task classes."""

from __future__ import annotations

from stssl.tasks.arrow import ArrowTask, make_arrow_batch
from stssl.tasks.base import PretextTask, TaskRequirements, merge_requirements
from stssl.tasks.colorization import ColorizationTask
from stssl.tasks.depth_motion import DepthMotionTask
from stssl.tasks.future import FutureFeatureTask, FuturePixelTask, make_future_batch
from stssl.tasks.inpainting import InpaintingTask
from stssl.tasks.jigsaw import JigsawTask, max_hamming_permutations
from stssl.tasks.masked import MaskedVideoTask, make_tube_mask
from stssl.tasks.opn import OPNTask, make_opn_batch, opn_classes
from stssl.tasks.relative_position import RelativePositionTask
from stssl.tasks.rotation import RotationTask
from stssl.tasks.shuffle_learn import ShuffleLearnTask, make_shuffle_learn_batch
from stssl.tasks.speed import SpeedTask, make_speed_batch
from stssl.tasks.vcop import VCOPTask, make_vcop_batch, order_permutations

__all__ = [
    "TASKS",
    "ArrowTask",
    "ColorizationTask",
    "DepthMotionTask",
    "FutureFeatureTask",
    "FuturePixelTask",
    "InpaintingTask",
    "JigsawTask",
    "MaskedVideoTask",
    "OPNTask",
    "PretextTask",
    "RelativePositionTask",
    "RotationTask",
    "ShuffleLearnTask",
    "SpeedTask",
    "TaskRequirements",
    "VCOPTask",
    "make_arrow_batch",
    "make_future_batch",
    "make_opn_batch",
    "make_shuffle_learn_batch",
    "make_speed_batch",
    "make_tube_mask",
    "make_vcop_batch",
    "max_hamming_permutations",
    "merge_requirements",
    "opn_classes",
    "order_permutations",
]

TASKS: dict[str, type[PretextTask]] = {
    "vcop": VCOPTask,
    "shuffle_learn": ShuffleLearnTask,
    "opn": OPNTask,
    "arrow": ArrowTask,
    "speed": SpeedTask,
    "future_pixels": FuturePixelTask,
    "future_features": FutureFeatureTask,
    "mae": MaskedVideoTask,
    "rotation": RotationTask,
    "jigsaw": JigsawTask,
    "colorization": ColorizationTask,
    "inpainting": InpaintingTask,
    "relative_position": RelativePositionTask,
    "depth_motion": DepthMotionTask,
}
