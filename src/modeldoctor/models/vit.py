"""``tiny-vit``: a small class-token vision transformer for tests and the small-data benchmarks.

x → Conv2d(patch × patch, stride patch) → (B, N, D) tokens, a class token prepended, learned position embeddings
(bilinearly resized to the input's patch grid, so any size ≥ one patch works) → ``depth`` pre-norm blocks
(x + MHA(LN(x)), x + MLP(LN(x))) → LN → the class token → Linear.  The patches of the last block's output reach
the logits only through the class token, as in ViT and DeiT.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


@torch.fx.wrap
def _resized(pos: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Position embeddings (1, D, g, g) resized to ``like``'s grid (B, D, h, w), as tokens (1, h·w, D)."""
    grid = F.interpolate(pos, size=like.shape[-2:], mode="bilinear", align_corners=False)
    return grid.flatten(2).transpose(1, 2)


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: int = 2) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


class TinyViT(nn.Module):
    num_prefix_tokens = 1

    def __init__(self, num_classes: int, in_channels: int = 3, patch: int = 4, dim: int = 32, depth: int = 2,
                 heads: int = 2, grid: int = 7) -> None:
        super().__init__()
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, dim, grid, grid) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        patches = self.patch_embed(x)
        tokens = patches.flatten(2).transpose(1, 2) + _resized(self.pos_embed, patches)
        x = torch.cat([self.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1)
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
