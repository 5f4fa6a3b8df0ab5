"""Region (visual prompt) encoder: one LLM-width embedding per region mask.

VisionLLM v2 averages the vision tower's features at points inside the mask and
lifts them to the LLM width. Here the average is taken over the whole mask at
patch-grid resolution: each patch is weighted by the fraction of it the mask
covers (an area resize), which is what averaging bilinear samples inside the mask
converges to, and a mask smaller than one patch still lands on the patch that
holds it. The pooled vector goes through a small MLP to the LLM width and replaces
the `<region>` token embedding.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class RegionError(ValueError):
    """Region masks or indices do not fit the images they refer to."""


class RegionEncoder(nn.Module):
    def __init__(self, vision_dim: int, llm_dim: int) -> None:
        super().__init__()
        # Attribute names are checkpoint keys: region_encoder.mlp.{0,2}.{weight,bias}
        self.mlp = nn.Sequential(nn.Linear(vision_dim, llm_dim), nn.GELU(), nn.Linear(llm_dim, llm_dim))

    def forward(
        self,
        patch_features: torch.Tensor,  # (N_img, P, C_vis), P a square grid, no CLS
        region_masks: torch.Tensor,  # (N_reg, S, S), 1 inside the region
        region_image_index: torch.Tensor,  # (N_reg,) long, which image each region is on
    ) -> torch.Tensor:  # (N_reg, D)
        weights = self.patch_weights(region_masks, patch_features.shape[1])  # (N_reg, P)
        check_image_index(region_image_index, len(weights), patch_features.shape[0])
        feats = patch_features[region_image_index]  # (N_reg, P, C_vis)
        pooled = torch.einsum("rp,rpc->rc", weights.to(feats.dtype), feats)  # (N_reg, C_vis)
        return self.mlp(pooled)

    @staticmethod
    def patch_weights(region_masks: torch.Tensor, num_patches: int) -> torch.Tensor:
        """Per-patch share of each mask, summing to 1 per region: (N_reg, S, S) -> (N_reg, P)."""
        grid = math.isqrt(num_patches)
        if grid * grid != num_patches:
            raise RegionError(f"vision features have {num_patches} patches, not a square grid")
        if region_masks.dim() != 3 or region_masks.shape[1] != region_masks.shape[2]:
            raise RegionError(f"region_masks must be (N_reg, S, S), got {tuple(region_masks.shape)}")
        if region_masks.shape[1] % grid:
            raise RegionError(f"mask side {region_masks.shape[1]} is not a multiple of the patch grid {grid}")
        cover = F.adaptive_avg_pool2d(region_masks.float().clamp(0, 1)[:, None], grid).flatten(
            1
        )  # (N_reg, P)
        total = cover.sum(-1, keepdim=True)  # (N_reg, 1)
        empty = (total[:, 0] <= 0).nonzero().flatten().tolist()
        if empty:
            raise RegionError(f"region masks {empty} are empty; a region needs at least one pixel inside")
        return cover / total


def check_image_index(region_image_index: torch.Tensor, num_regions: int, num_images: int) -> None:
    if region_image_index.shape != (num_regions,):
        raise RegionError(
            f"region_image_index must be ({num_regions},) to match region_masks, got {tuple(region_image_index.shape)}"
        )
    if num_regions and (region_image_index.min() < 0 or region_image_index.max() >= num_images):
        raise RegionError(
            f"region_image_index {region_image_index.tolist()} out of range for {num_images} images"
        )
