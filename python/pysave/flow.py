"""Latent flow matching (paper section 3.4): path, velocity network and ODE solvers.

Three small pieces, each testable alone (the torchcfm layout): a stateless linear probability
path, a conditional Transformer velocity field over latent tokens (AdaLN on time + condition
embeddings, its own [MASK] rows for condition masking), and a sampler that integrates
dx/dt = v from noise (t = 0) to data (t = 1) with classifier-free guidance.
"""
from __future__ import annotations

import torch
from torch import nn

from .layers import AdaLNTransformer, ConditionEmbedding, timestep_embedding

# Fixed-grid solvers take ``n_steps`` steps: Euler costs one network pass per step, midpoint two,
# rk4 four (torchdiffeq's 3/8 rule). dopri5 is adaptive (rtol/atol) and ignores ``n_steps``.
SOLVERS = ("euler", "midpoint", "rk4", "dopri5")


class LinearPath:
    """x_t = (1 - t) x0 + t x1 with target velocity x1 - x0 (paper eqs. 8-9)."""

    @staticmethod
    def sample(x1: torch.Tensor, generator: torch.Generator | None = None):
        x0 = torch.randn(x1.shape, generator=generator, device=x1.device)
        t = torch.rand(x1.shape[0], generator=generator, device=x1.device)
        xt = (1 - t[:, None]) * x0 + t[:, None] * x1
        return t, xt, x1 - x0


class VelocityField(nn.Module):
    """v_theta(x_t, t, c): a Transformer over tokens of the (standardised) latent."""

    def __init__(self, latent_dim: int, n_categories: list[int], token_size: int = 16, hidden: int = 128,
                 depth: int = 3, n_heads: int = 4, cond_dim: int = 256, gelu_approximate: str = "none"):
        super().__init__()
        if latent_dim % token_size:
            raise ValueError(f"latent size {latent_dim} is not a multiple of the flow token size {token_size}")
        self.token_size = token_size
        self.time_dim = 128
        self.condition_embedding = ConditionEmbedding(n_categories, cond_dim)
        self.time_mlp = nn.Sequential(nn.Linear(self.time_dim, cond_dim), nn.SiLU(), nn.Linear(cond_dim, cond_dim))
        self.token_proj = nn.Linear(token_size, hidden)
        self.position = nn.Parameter(torch.randn(latent_dim // token_size, hidden) * 0.02)
        self.transformer = AdaLNTransformer(hidden, depth, n_heads, cond_dim, gelu_approximate=gelu_approximate)
        self.out = nn.Linear(hidden, token_size)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def condition(self, t: torch.Tensor, codes: torch.Tensor, distinct=None):
        """Condition rows for the AdaLN layers and each cell's row (None: one row per cell).

        While sampling, all cells share t, so the rows are computed per distinct condition;
        ``distinct`` is ``condition_embedding.unique(codes)``, computed once per ODE solve.
        """
        if t.numel() > 1 and bool((t == t[0]).all()):
            cond, index = distinct if distinct is not None else self.condition_embedding.unique(codes)
            return self.time_mlp(timestep_embedding(t[:1], self.time_dim)) + cond, index
        return self.time_mlp(timestep_embedding(t, self.time_dim)) + self.condition_embedding(codes), None

    def forward(self, x: torch.Tensor, t: torch.Tensor, codes: torch.Tensor, return_weights: bool = False, distinct=None):
        tokens = self.token_proj(x.view(x.shape[0], -1, self.token_size)) + self.position
        cond, index = self.condition(t, codes, distinct)
        out = self.transformer(tokens, cond, index, return_weights=return_weights)
        h, weights = out if return_weights else (out, None)
        v = self.out(h).flatten(1)
        return (v, weights) if return_weights else v

    def loss(self, x1: torch.Tensor, codes: torch.Tensor, mask_prob: float, generator=None,
             mask_all_prob: float = 0.0) -> torch.Tensor:
        """Flow-matching MSE with each condition masked independently with ``mask_prob``, and all
        of a cell's conditions at once with ``mask_all_prob``."""
        t, xt, target = LinearPath.sample(x1, generator)
        codes = self.condition_embedding.random_mask(codes, mask_prob, generator, mask_all_prob)
        return ((self(xt, t, codes) - target) ** 2).mean()


def guided_velocity(field: VelocityField, codes: torch.Tensor, guidance: float | torch.Tensor):
    """v = (1 - w) v(x, t) + w v(x, t, c) (paper eq. 12); w = 1 needs a single pass.

    ``guidance`` is one w for every row, or a tensor of one w per row (generation's default gives
    combinations never seen in training their own w); a per-row w always takes both passes, so a
    row's velocity does not depend on the weights of the rows solved beside it."""
    per_row = isinstance(guidance, torch.Tensor)
    uncond = field.condition_embedding.all_masked(codes.shape[0], codes.device)
    # The codes are fixed for the whole solve: find their distinct rows once, not at every pass.
    single = None if per_row else codes if guidance == 1.0 else uncond if guidance == 0.0 else None
    used = torch.cat([codes, uncond]) if single is None else single
    distinct = field.condition_embedding.unique(used)
    weight = guidance.to(codes.device, torch.float32)[:, None] if per_row else guidance

    def velocity(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tt = t.expand(x.shape[0]) if t.dim() == 0 else t
        # .to(x.dtype): under bf16 autocast the network answers in bf16; the ODE state stays fp32.
        if single is not None:
            return field(x, tt, used, distinct=distinct).to(x.dtype)
        both = field(torch.cat([x, x]), torch.cat([tt, tt]), used, distinct=distinct).to(x.dtype)
        v_cond, v_uncond = both.chunk(2)
        return (1 - weight) * v_uncond + weight * v_cond

    return velocity


# Cells integrated together on the CPU: all steps of 1,024 cells at a time keep the activations in
# cache; 4,096 at once ran at 0.63x the speed (benchmarks/README.md, "Speed"). Rows are independent,
# so the split changes nothing but speed. On a GPU the whole chunk goes at once.
CPU_SOLVE_ROWS = 1024


@torch.no_grad()
def sample_latents(field: VelocityField, codes: torch.Tensor, guidance: float | torch.Tensor = 1.0, n_steps: int = 50,
                   solver: str = "euler", generator: torch.Generator | None = None,
                   rtol: float = 1e-5, atol: float = 1e-5) -> torch.Tensor:
    """Integrate the guided ODE from N(0, I) at t = 0 to t = 1, one latent per row of ``codes``
    (``guidance``: one w, or one per row as in :func:`guided_velocity`)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver must be one of {SOLVERS}")
    latent_dim = field.position.shape[0] * field.token_size
    # Drawn where the generator lives, then moved: a CUDA generator's stream does not continue
    # across calls of other sizes, a CPU one's does, so chunked sampling repeats the unchunked one.
    noise_device = generator.device if generator is not None else codes.device
    x = torch.randn((codes.shape[0], latent_dim), generator=generator, device=noise_device).to(codes.device)
    # dopri5's step sizes depend on every row it integrates, so it keeps the chunk whole.
    rows = CPU_SOLVE_ROWS if x.device.type == "cpu" and solver != "dopri5" else len(x)
    per_row = isinstance(guidance, torch.Tensor)
    if per_row and guidance.shape != (len(codes),):
        raise ValueError(f"per-row guidance needs one weight per row of codes ({len(codes)}), got shape {tuple(guidance.shape)}")
    return torch.cat([_solve(field, x[s:s + rows], codes[s:s + rows], guidance[s:s + rows] if per_row else guidance,
                             n_steps, solver, rtol, atol)
                      for s in range(0, len(x), rows)])


def _solve(field, x, codes, guidance, n_steps, solver, rtol, atol) -> torch.Tensor:
    velocity = guided_velocity(field, codes, guidance)
    if solver == "euler":
        dt = 1.0 / n_steps
        for i in range(n_steps):
            t = torch.full((x.shape[0],), i * dt, device=x.device)
            x = x + dt * velocity(t, x)
        return x
    from torchdiffeq import odeint

    if solver == "dopri5":
        times = torch.tensor([0.0, 1.0], device=x.device)
        return odeint(velocity, x, times, method="dopri5", rtol=rtol, atol=atol)[-1]
    # Fixed grid: with no step_size, torchdiffeq steps exactly between the given times.
    grid = torch.linspace(0.0, 1.0, n_steps + 1, device=x.device)
    return odeint(velocity, x, grid, method=solver)[-1]


@torch.no_grad()
def transport_latents(field: VelocityField, x: torch.Tensor, source_codes: torch.Tensor, target_codes: torch.Tensor,
                      guidance: float = 1.0, n_steps: int = 50) -> torch.Tensor:
    """Move standardised latents from their conditions to others through the flow: integrate the
    ODE backwards (t = 1 -> 0) under ``source_codes`` to the cells' noise, then forwards under
    ``target_codes`` (Euler, ``n_steps`` each way). The noise keeps what the flow does not tie to
    the conditions (the cell's own state); the way back adds what the target conditions change."""
    dt = 1.0 / n_steps
    back = guided_velocity(field, source_codes, guidance)
    for i in range(n_steps):
        t = torch.full((x.shape[0],), 1.0 - i * dt, device=x.device)
        x = x - dt * back(t, x)
    forward = guided_velocity(field, target_codes, guidance)
    for i in range(n_steps):
        t = torch.full((x.shape[0],), i * dt, device=x.device)
        x = x + dt * forward(t, x)
    return x
