"""Qwen2-VL's patch Conv3d runs as a linear: same weights, the conv's result to fp32 rounding."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from encoder_service import Encoder
from encoder_service.towers.patch_projection import PatchProjection, is_patch_conv


@pytest.mark.parametrize("bias", [False, True])
def test_projection_equals_the_conv(bias: bool) -> None:
    torch.manual_seed(0)
    conv = nn.Conv3d(3, 16, kernel_size=(2, 14, 14), stride=(2, 14, 14), bias=bias)
    patches = torch.randn(37, 3, 2, 14, 14)  # [N, C, T, P, P]
    expected = conv(patches).view(-1, 16)
    projection = PatchProjection(conv)
    assert projection.weight is conv.weight
    torch.testing.assert_close(projection(patches), expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="do not match"):
        projection(torch.randn(4, 3, 2, 28, 28))


def test_only_kernel_equals_stride_convs_qualify() -> None:
    assert is_patch_conv(nn.Conv3d(3, 8, (2, 14, 14), stride=(2, 14, 14)))
    assert not is_patch_conv(nn.Conv3d(3, 8, (2, 14, 14), stride=(1, 14, 14)))
    assert not is_patch_conv(nn.Conv3d(3, 8, 3, stride=3, padding=1))
    with pytest.raises(ValueError):
        PatchProjection(nn.Conv3d(3, 8, 3, stride=1))


def test_a_loaded_qwen2_vl_tower_projects_patches_as_linear(
    qwen2_vl_image_encoder: Encoder,
) -> None:
    """Its image parity with HF's get_image_features is test_tower_parity's."""
    patch_embed = qwen2_vl_image_encoder.tower.module["visual"].patch_embed
    assert isinstance(patch_embed.proj, PatchProjection)
    assert patch_embed.proj.weight.abs().sum() > 0  # the checkpoint's kernel, not meta/empty
