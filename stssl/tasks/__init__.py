"""Pretext tasks. ``TASKS`` maps registry names to task classes."""

from __future__ import annotations

from stssl.tasks.base import PretextTask, TaskRequirements, merge_requirements
from stssl.tasks.depth_motion import DepthMotionTask
from stssl.tasks.vcop import VCOPTask, make_vcop_batch, order_permutations

__all__ = ["TASKS", "DepthMotionTask", "PretextTask", "TaskRequirements", "VCOPTask", "make_vcop_batch", "merge_requirements",
           "order_permutations"]

TASKS: dict[str, type[PretextTask]] = {
    "vcop": VCOPTask,
    "depth_motion": DepthMotionTask,
}
