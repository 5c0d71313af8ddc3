"""Shared network parts: condition embeddings and pre-LN Transformer blocks with AdaLN.

AdaLN follows the paper's eq. (2): from the condition vector each block computes a shift
(beta), a scale (gamma) and a gate (alpha) for its attention and feed-forward sub-layers.
The modulation is zero-initialised (adaLN-Zero), so every block starts as the identity.
The feed-forward GELU is exact (erf) by default: torch's CPU kernel for the tanh approximation
took 2.8x as long forward and backward (benchmarks/README.md, "Speed"); models saved with the tanh
form keep it (``gelu_approximate``).
LayerNorm only, never BatchNorm: a minibatch of one cell behaves like any other.
"""
from __future__ import annotations

import functools
import logging
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts


class ConditionEmbedding(nn.Module):
    """One learned table per condition key, with a last [MASK] row; the vectors are summed."""

    def __init__(self, n_categories: list[int], dim: int):
        super().__init__()
        self.tables = nn.ModuleList(nn.Embedding(n + 1, dim) for n in n_categories)
        for table in self.tables:
            nn.init.normal_(table.weight, std=0.02)
        self.mask_codes = list(n_categories)

    def forward(self, codes: torch.Tensor) -> torch.Tensor:
        return sum(table(codes[:, j]) for j, table in enumerate(self.tables))

    def unique(self, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings of the distinct condition rows and, per cell, the row to use.

        A minibatch holds few distinct combinations, so the AdaLN modulations are computed
        once per combination and gathered, not once per cell.
        """
        # One integer key per row (mixed radix, first column most significant): a 1-D unique is
        # far faster than unique(dim=0) and gives the same rows in the same (lexicographic) order.
        if math.prod(n + 1 for n in self.mask_codes) >= 2 ** 62:  # the key would overflow int64
            distinct, inverse = torch.unique(codes, dim=0, return_inverse=True)
            return self(distinct), inverse
        key = torch.zeros(codes.shape[0], dtype=torch.long, device=codes.device)
        for j, n in enumerate(self.mask_codes):
            key = key * (n + 1) + codes[:, j].long()
        _, first, inverse = _unique_first(key)
        return self(codes[first]), inverse

    def random_mask(self, codes: torch.Tensor, p: float, generator: torch.Generator | None = None,
                    p_all: float = 0.0) -> torch.Tensor:
        """Replace each condition of each cell by [MASK] with probability ``p`` (paper eq. 13), and
        every condition of a cell at once with probability ``p_all`` (classifier-free guidance's
        usual dropout, so the unconditional field keeps its share however many conditions there are)."""
        if p <= 0 and p_all <= 0:
            return codes
        # Draw only what is used, so that models trained without p_all keep their random stream.
        hit = torch.rand(codes.shape, generator=generator, device=codes.device) < p if p > 0 else torch.zeros_like(codes, dtype=torch.bool)
        if p_all > 0:
            hit |= torch.rand((codes.shape[0], 1), generator=generator, device=codes.device) < p_all
        mask = torch.tensor(self.mask_codes, device=codes.device).expand_as(codes)
        return torch.where(hit, mask, codes)

    def all_masked(self, n: int, device) -> torch.Tensor:
        return torch.tensor(self.mask_codes, device=device).expand(n, -1).clone()


def _unique_first(key: torch.Tensor):
    """Sorted distinct values of a 1-D tensor, the position of one occurrence of each, and the inverse."""
    distinct, inverse = torch.unique(key, return_inverse=True)
    first = torch.empty(len(distinct), dtype=torch.long, device=key.device)
    first.scatter_(0, inverse, torch.arange(len(key), device=key.device))
    return distinct, first, inverse


# Up to this many tokens, attention on the CPU is computed directly (softmax(QK^T)V): the fused CPU
# kernel costs 3-5x more on the flow's 4 tokens, and in training (forward + backward) the direct
# form was 5% faster in fp32 and 1.4x in bf16 at the fast network's 16 tokens (benchmarks/README.md,
# "Speed"). Longer sequences, and GPUs (not measured here), keep the fused kernel.
DIRECT_ATTENTION_MAX_TOKENS = 32


class ExactGELU(nn.GELU):
    """``nn.GELU()`` (exact, erf) whose compiled CPU training keeps its slope from the forward pass.

    Compiled, inductor recomputes erf and exp from the saved input in the backward pass: 3 of the
    4.5 ms a feed-forward GELU took per step (13% of the compiled bf16 step; benchmarks/README.md,
    "GELU's slope kept"). Here the forward also computes the slope Phi(x) + x phi(x), the backward
    is one product, and a must-save checkpoint policy stops the partitioner from recomputing it.
    The slope is kept in fp32, so values and gradients are bit-identical to ``F.gelu`` compiled
    (tested). Eager runs (the default training, all sampling) call ``F.gelu`` as before.
    """

    def __init__(self):
        super().__init__(approximate="none")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() and x.device.type == "cpu" and x.requires_grad:
            return checkpoint(_gelu_keeping_slope, x, use_reentrant=False, context_fn=_MUST_SAVE)
        return F.gelu(x)


def _gelu_keeping_slope(x: torch.Tensor) -> torch.Tensor:
    # The arithmetic of inductor's own GELU forward and backward, in the same order (bit-identical).
    # Written with plain ops and no autograd.Function, which torch's compile cache cannot hold:
    # value and slope come from a detached input; slope * (x - x.detach()), zero in value, carries
    # the gradient. (An infinite input gives NaN here where F.gelu gives inf: training has failed by then.)
    xf = x.float()
    xd = xf.detach()
    cdf = 0.5 * (1 + torch.erf(xd * 0.7071067811865476))
    slope = cdf + xd * (torch.exp(-0.5 * xd * xd) * 0.3989422804014327)
    return (xd * cdf + slope * (xf - xd)).to(x.dtype)


def _must_save(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE


_MUST_SAVE = functools.partial(create_selective_checkpoint_contexts, _must_save)
# Names the policy for torch's compile cache, which otherwise skips graphs with a policy: every
# process would trace and partition again (a 24 s warm-up against 8 s). Change it with the policy.
_MUST_SAVE.cache_hash = "pysave.layers.ExactGELU: every op of the slope must be saved, v1"


class _DropSelectiveCheckpointWarning(logging.Filter):
    """torch warns once that a checkpoint policy under torch.compile must not hold in-place ops;
    ExactGELU's holds none, and the warning would only worry users of train(torch_compile=True)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "context_fn is passed to torch.utils.checkpoint" not in record.getMessage()


logging.getLogger("torch._higher_order_ops.wrap").addFilter(_DropSelectiveCheckpointWarning())


def feed_forward_activation(gelu_approximate: str) -> nn.Module:
    return ExactGELU() if gelu_approximate == "none" else nn.GELU(approximate=gelu_approximate)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class AdaLNBlock(nn.Module):
    """Pre-LN Transformer block whose LayerNorms are modulated by a condition vector."""

    def __init__(self, dim: int, n_heads: int, cond_dim: int, feed_forward_size: int | None = None, dropout: float = 0.0,
                 gelu_approximate: str = "none"):
        super().__init__()
        if dim % n_heads:
            raise ValueError(f"hidden size {dim} is not divisible by {n_heads} heads")
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        hidden = 4 * dim if feed_forward_size is None else feed_forward_size
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), feed_forward_activation(gelu_approximate), nn.Dropout(dropout),
                                 nn.Linear(hidden, dim))
        self.modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))
        nn.init.zeros_(self.modulation[1].weight)
        nn.init.zeros_(self.modulation[1].bias)
        self.dropout = dropout

    def attention(self, x: torch.Tensor, return_weights: bool):
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        direct = t <= DIRECT_ATTENTION_MAX_TOKENS and x.device.type == "cpu" and not (self.training and self.dropout)
        if return_weights or direct:
            weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
            out = weights @ v
            weights = weights if return_weights else None
        else:
            weights = None
            out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(out.transpose(1, 2).reshape(b, t, d)), weights

    def forward(self, h: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor | None = None,
                return_weights: bool = False):
        mod = self.modulation(cond)
        if cond_index is not None:
            mod = mod[cond_index]
        shift1, scale1, gate1, shift2, scale2, gate2 = mod.chunk(6, dim=-1)
        attn_out, weights = self.attention(modulate(self.norm1(h), shift1, scale1), return_weights)
        h = h + gate1.unsqueeze(1) * attn_out
        h = h + gate2.unsqueeze(1) * self.mlp(modulate(self.norm2(h), shift2, scale2))
        return (h, weights) if return_weights else h


class AdaLNTransformer(nn.Module):
    """A stack of :class:`AdaLNBlock` followed by a modulated final LayerNorm."""

    def __init__(self, dim: int, depth: int, n_heads: int, cond_dim: int, dropout: float = 0.0, gelu_approximate: str = "none",
                 feed_forward_size: int | None = None):
        super().__init__()
        self.blocks = nn.ModuleList(AdaLNBlock(dim, n_heads, cond_dim, feed_forward_size, dropout, gelu_approximate)
                                    for _ in range(depth))
        self.final_norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.final_modulation = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        nn.init.zeros_(self.final_modulation[1].weight)
        nn.init.zeros_(self.final_modulation[1].bias)

    def forward(self, h: torch.Tensor, cond: torch.Tensor, cond_index: torch.Tensor | None = None,
                return_weights: bool = False):
        """``cond`` holds one row per cell, or one per distinct condition with ``cond_index``
        giving each cell's row."""
        weights = None
        for i, block in enumerate(self.blocks):
            if return_weights and i == len(self.blocks) - 1:
                h, weights = block(h, cond, cond_index, return_weights=True)
            else:
                h = block(h, cond, cond_index)
        final = self.final_modulation(cond)
        shift, scale = (final if cond_index is None else final[cond_index]).chunk(2, dim=-1)
        h = modulate(self.final_norm(h), shift, scale)
        return (h, weights) if return_weights else h


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of flow time t in [0, 1] (scaled by 1000 as in diffusion models)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
