"""The resolution curriculum: :class:`ResolutionCurriculum` resizes each batch to the side its step is scheduled at.

The input side grows from ``resolution_start`` x full (a multiple of the patch) to full over
``resolution_ramp_end`` of the run (:class:`~trilevel.schedules.ResolutionSchedule`); the model
resamples its position embeddings (timm's ``dynamic_img_size``). After EfficientTrain /
EfficientTrain++ (Wang et al., ICCV 2023, TPAMI 2024).
"""

from __future__ import annotations

import torch.nn.functional as F

from ..events import Callback
from ..state import State

__all__ = ["ResolutionCurriculum"]


class ResolutionCurriculum(Callback):
    """At ``STEP_START``: ``state.step.img_size`` from ``state.resolution``, and the batch resized to it.

    Nothing happens without a curriculum (``state.resolution`` None; ``img_size`` stays None).
    The resize is bilinear with antialiasing, ``(B, C, H, W) -> (B, C, side, side)``, done on the
    device before mixup.
    """

    def step_start(self, state: State) -> None:
        if state.resolution is None:
            return
        step = state.step
        side = state.resolution(step.progress)
        step.img_size = side
        if side != step.images.shape[-1]:  # fewer tokens by resizing
            step.images = F.interpolate(step.images, size=(side, side), mode="bilinear", antialias=True,
                                        align_corners=False)
