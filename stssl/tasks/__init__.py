"""Pretext tasks. ``TASKS`` maps registry names to task classes."""

from __future__ import annotations

from stssl.tasks.arrow import ArrowTask, make_arrow_batch
from stssl.tasks.base import PretextTask, TaskRequirements, merge_requirements
from stssl.tasks.clustering import SeLaTask, SwAVTask
from stssl.tasks.colorization import ColorizationTask
from stssl.tasks.cpc import CPCTask
from stssl.tasks.crw import CRWTask
from stssl.tasks.deepcluster import DeepClusterTask
from stssl.tasks.dense_contrastive import DenseContrastTask
from stssl.tasks.depth_motion import DepthMotionTask
from stssl.tasks.distill import BYOLTask, DINOTask
from stssl.tasks.future import FutureFeatureTask, FuturePixelTask, make_future_batch
from stssl.tasks.inpainting import InpaintingTask
from stssl.tasks.instance import MoCoTask, SimCLRTask
from stssl.tasks.jigsaw import JigsawTask, max_hamming_permutations
from stssl.tasks.masked import MaskedVideoTask, make_tube_mask
from stssl.tasks.opn import OPNTask, make_opn_batch, opn_classes
from stssl.tasks.pirl import PIRLTask
from stssl.tasks.relative_position import RelativePositionTask
from stssl.tasks.rotation import RotationTask
from stssl.tasks.shuffle_learn import ShuffleLearnTask, make_shuffle_learn_batch
from stssl.tasks.speed import SpeedTask, make_speed_batch
from stssl.tasks.vcop import VCOPTask, make_vcop_batch, order_permutations

__all__ = [
    "TASKS",
    "ArrowTask",
    "BYOLTask",
    "CPCTask",
    "CRWTask",
    "ColorizationTask",
    "DINOTask",
    "DeepClusterTask",
    "DenseContrastTask",
    "DepthMotionTask",
    "FutureFeatureTask",
    "FuturePixelTask",
    "InpaintingTask",
    "JigsawTask",
    "MaskedVideoTask",
    "MoCoTask",
    "OPNTask",
    "PIRLTask",
    "PretextTask",
    "RelativePositionTask",
    "RotationTask",
    "SeLaTask",
    "ShuffleLearnTask",
    "SimCLRTask",
    "SpeedTask",
    "SwAVTask",
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
    "simclr": SimCLRTask,
    "moco": MoCoTask,
    "byol": BYOLTask,
    "dino": DINOTask,
    "cpc": CPCTask,
    "pirl": PIRLTask,
    "deepcluster": DeepClusterTask,
    "sela": SeLaTask,
    "swav": SwAVTask,
    "crw": CRWTask,
    "dense_contrast": DenseContrastTask,
}
