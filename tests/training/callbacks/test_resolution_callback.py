"""ResolutionCurriculum (trilevel.training.callbacks.resolution): each batch at its step's side."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from trilevel.schedules import ResolutionSchedule
from trilevel.training.callbacks import ResolutionCurriculum


def state_at(progress, schedule):
    images = torch.rand(2, 1, 28, 28)
    return SimpleNamespace(resolution=schedule, step=SimpleNamespace(progress=progress, images=images, img_size=None))


def test_the_batch_is_resized_to_the_scheduled_side():
    schedule = ResolutionSchedule(28, 7, 0.5, 0.8)
    state = state_at(0.0, schedule)
    original = state.step.images
    ResolutionCurriculum().step_start(state)
    assert state.step.img_size == 14 and state.step.images.shape == (2, 1, 14, 14)
    expected = F.interpolate(original, size=(14, 14), mode="bilinear", antialias=True, align_corners=False)
    assert torch.equal(state.step.images, expected)


def test_at_full_side_the_batch_is_left_as_it_is():
    state = state_at(1.0, ResolutionSchedule(28, 7, 0.5, 0.8))
    original = state.step.images
    ResolutionCurriculum().step_start(state)
    assert state.step.img_size == 28 and state.step.images is original


def test_without_a_curriculum_nothing_happens():
    state = state_at(0.0, None)
    ResolutionCurriculum().step_start(state)
    assert state.step.img_size is None and state.step.images.shape[-1] == 28
