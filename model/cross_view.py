"""Dual-branch cross-view interaction (supplementary Table A rows 18–23): CVA and VSF.

The multi-view graph ``G`` of a group is (B, V·21, D), view-major (view v owns tokens
v·21 … v·21+20). Each of the 2 layers computes, from the same input G (Table A's "Add" of rows
17, 18, 19 and of 20, 21, 22)::

    G ← G + CVA(G) + VSF(G)

where CVA and VSF return *updates* (their own residual paths are folded into the outer one):

* CVA (cross-view attention): ``a = MHA(LN(G))`` (4 heads, pre-LayerNorm) over all V·21
  tokens; ``m = MLP(LN(G + a))``; CVA(G) = a + m, i.e. a pre-LN transformer block minus its
  input.
* VSF (view-shared fusion): per view ``LN → GraphConv → LeakyReLU → Dropout(0.1) → GraphConv →
  LeakyReLU`` (learnable 21×21 adjacency, identity at initialisation, row-normalised by its
  absolute row sums), then the max over the pooled views, broadcast back to every view.

Invalid views (``view_mask`` False) are never attended to and never enter the max pooling. In
training, random view masking lets each view attend to a random subset of the other valid views
(always itself) and pools VSF over a random non-empty subset of the valid views; the random
choice is drawn once per forward and shared by both layers. In eval mode all valid views are
used.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .hand_model import NUM_JOINTS
from .single_view import MLP

NUM_HEADS = 4


def view_access(view_mask: torch.Tensor, keep_prob: float = 1.0) -> torch.Tensor:
    """Which view may attend to which: (B, V) valid mask → (B, V_query, V_key) bool.

    A query view attends to itself always and to each other valid view with probability
    ``keep_prob`` (1.0: all of them); never to an invalid view.
    """
    b, v = view_mask.shape
    eye = torch.eye(v, dtype=torch.bool, device=view_mask.device).expand(b, v, v)
    allowed = view_mask[:, None, :].expand(b, v, v)
    if keep_prob < 1.0:
        allowed = allowed & (torch.rand(b, v, v, device=view_mask.device) < keep_prob)
    return allowed | eye


def pool_views(view_mask: torch.Tensor, keep_prob: float = 1.0) -> torch.Tensor:
    """Views entering VSF's max pooling: a random subset (each valid view with ``keep_prob``) of
    the valid views, all valid views where the draw left none."""
    if keep_prob >= 1.0:
        return view_mask
    chosen = view_mask & (torch.rand(view_mask.shape, device=view_mask.device) < keep_prob)
    empty = ~chosen.any(dim=1, keepdim=True)
    return torch.where(empty, view_mask, chosen)


def token_attention_mask(access: torch.Tensor, num_heads: int, joints: int = NUM_JOINTS) -> torch.Tensor:
    """(B, V, V) allowed views → MultiheadAttention's (B·heads, V·21, V·21) mask (True = blocked)."""
    tok = access.repeat_interleave(joints, dim=1).repeat_interleave(joints, dim=2)
    return (~tok).repeat_interleave(num_heads, dim=0)


class CrossViewAttention(nn.Module):
    """CVA: pre-LN multi-head self-attention over all joint tokens + a residual MLP block.

    Returns the update (block output minus input)."""

    def __init__(self, dim: int, num_heads: int = NUM_HEADS, hidden: Optional[int] = None) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, num_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, dim, hidden=hidden)

    def forward(self, g: torch.Tensor, attn_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """g (B, L, D), attn_mask (B·heads, L, L) bool (True = blocked) → update (B, L, D)."""
        x = self.norm1(g)
        a, _ = self.attn(x, x, x, attn_mask=attn_mask, need_weights=False)
        return a + self.mlp(self.norm2(g + a))


class GraphConv(nn.Module):
    """X (…, 21, C_in) → A_norm · X W + b with a learnable 21×21 adjacency (identity at init)."""

    def __init__(self, in_features: int, out_features: int, num_nodes: int = NUM_JOINTS) -> None:
        super().__init__()
        self.adjacency = nn.Parameter(torch.eye(num_nodes))
        self.linear = nn.Linear(in_features, out_features)

    def normalized_adjacency(self) -> torch.Tensor:
        a = self.adjacency
        return a / a.abs().sum(dim=-1, keepdim=True).clamp_min(1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.normalized_adjacency() @ self.linear(x)


class ViewSharedFusion(nn.Module):
    """VSF: per-view graph regression, max-pooled over (a subset of) the valid views, broadcast back."""

    def __init__(self, dim: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.gc1 = GraphConv(dim, dim)
        self.gc2 = GraphConv(dim, dim)
        self.act = nn.LeakyReLU(0.1)
        self.dropout = nn.Dropout(dropout)

    def forward(self, g: torch.Tensor, pool_mask: torch.Tensor) -> torch.Tensor:
        """g (B, V·21, D), pool_mask (B, V) bool → (B, V·21, D), the same pooled graph for every view."""
        b, v = pool_mask.shape
        x = g.view(b, v, NUM_JOINTS, -1)
        x = self.act(self.gc2(self.dropout(self.act(self.gc1(self.norm(x))))))
        x = x.masked_fill(~pool_mask[:, :, None, None], float("-inf"))
        pooled = x.amax(dim=1)  # (B, 21, D)
        pooled = torch.where(torch.isfinite(pooled), pooled, torch.zeros_like(pooled))  # no view pooled
        return pooled[:, None].expand(b, v, NUM_JOINTS, pooled.shape[-1]).reshape(g.shape)


@dataclass
class CrossViewOutput:
    graph: torch.Tensor  # (B, V·21, D): G* after the last layer
    layers: list[dict[str, torch.Tensor]] = field(default_factory=list)  # per layer: cva, vsf, out (traced)


class CrossViewInteraction(nn.Module):
    """``num_layers`` × (G ← G + CVA(G) + VSF(G)) with view masking."""

    def __init__(self, dim: int, num_layers: int = 2, num_heads: int = NUM_HEADS, dropout: float = 0.1,
                 view_keep_prob: float = 0.5) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"token width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.view_keep_prob = view_keep_prob
        self.cva = nn.ModuleList(CrossViewAttention(dim, num_heads) for _ in range(num_layers))
        self.vsf = nn.ModuleList(ViewSharedFusion(dim, dropout) for _ in range(num_layers))

    def forward(self, g: torch.Tensor, view_mask: torch.Tensor, trace: bool = False,
                view_keep_prob: float | None = None) -> CrossViewOutput:
        """g (B, V·21, D), view_mask (B, V) bool (True = valid) → :class:`CrossViewOutput`.
        ``view_keep_prob``: this call's view-masking keep probability in training (None: the module's)."""
        keep = (self.view_keep_prob if view_keep_prob is None else view_keep_prob) if self.training else 1.0
        attn_mask = token_attention_mask(view_access(view_mask, keep), self.num_heads)
        pool_mask = pool_views(view_mask, keep)
        layers = []
        for cva, vsf in zip(self.cva, self.vsf):
            c, f = cva(g, attn_mask), vsf(g, pool_mask)
            g = g + c + f
            if trace:
                layers.append(dict(cva=c, vsf=f, out=g))
        return CrossViewOutput(graph=g, layers=layers)
