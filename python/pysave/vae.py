"""The VAE with Gene Block Attention (paper sections 3.1-3.3). Knows nothing of AnnData.

Encoder: [0, 1] expression -> gene blocks (L tokens of K genes) -> a per-block projection to
the hidden size m -> pre-LN AdaLN Transformer -> flatten -> mu, log-variance (d).
Decoder: z (d) -> latent tokens of K_l values -> projection -> AdaLN Transformer -> flatten
-> genes. Both are conditioned, so a cell can be encoded under its own conditions and decoded
under others (transfer, batch correction).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .layers import AdaLNTransformer, ConditionEmbedding

LIKELIHOODS = ("bernoulli", "gaussian", "nb")


class BlockEncoder(nn.Module):
    def __init__(self, block_index: torch.Tensor, n_genes: int, hidden: int, depth: int, n_heads: int, cond_dim: int, latent_dim: int, dropout: float,
                 gelu_approximate: str = "none", feed_forward_size: int | None = None):
        super().__init__()
        n_blocks, block_size = block_index.shape
        # Padding (-1) reads a zero column appended after the last gene.
        self.register_buffer("gather_index", torch.where(block_index < 0, n_genes, block_index), persistent=False)
        # A projection of its own per block: genes sit at arbitrary positions in different blocks.
        self.token_weight = nn.Parameter(torch.randn(n_blocks, block_size, hidden) / math.sqrt(block_size))
        self.token_bias = nn.Parameter(torch.zeros(n_blocks, hidden))
        self.transformer = AdaLNTransformer(hidden, depth, n_heads, cond_dim, dropout, gelu_approximate, feed_forward_size)
        self.to_stats = nn.Linear(n_blocks * hidden, 2 * latent_dim)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        padded = F.pad(x, (0, 1))  # the zero column for padding
        # index_select, not padded[:, index]: the same gather, ~5x faster on the CPU (0.2 against 0.9 ms a minibatch)
        blocks = padded.index_select(1, self.gather_index.flatten()).view(x.shape[0], *self.gather_index.shape)  # (N, L, K)
        return torch.einsum("nlk,lkm->nlm", blocks, self.token_weight) + self.token_bias

    def forward(self, x: torch.Tensor, cond: torch.Tensor, cond_index=None, return_weights: bool = False):
        out = self.transformer(self.tokens(x), cond, cond_index, return_weights=return_weights)
        h, weights = out if return_weights else (out, None)
        mu, logvar = self.to_stats(h.flatten(1)).chunk(2, dim=-1)
        logvar = logvar.clamp(-12.0, 8.0)
        return (mu, logvar, weights) if return_weights else (mu, logvar)


class TokenDecoder(nn.Module):
    def __init__(self, n_genes: int, latent_dim: int, latent_token_size: int, hidden: int, depth: int, n_heads: int, cond_dim: int, dropout: float,
                 head_size: int | None = None, gelu_approximate: str = "none", feed_forward_size: int | None = None):
        super().__init__()
        if latent_dim % latent_token_size:
            raise ValueError(f"latent size {latent_dim} is not a multiple of the latent token size {latent_token_size}")
        n_tokens = latent_dim // latent_token_size
        self.token_size = latent_token_size
        self.token_proj = nn.Linear(latent_token_size, hidden)
        self.position = nn.Parameter(torch.randn(n_tokens, hidden) * 0.02)
        self.transformer = AdaLNTransformer(hidden, depth, n_heads, cond_dim, dropout, gelu_approximate, feed_forward_size)
        # Flatten -> genes through a bottleneck of `head_size` units (default `hidden`): the paper's
        # direct (tokens*hidden x genes) matrix (head_size=0) reaches 10^8 weights at 30,000 genes.
        head_size = hidden if head_size is None else head_size
        if head_size == 0:
            self.to_genes = nn.Linear(n_tokens * hidden, n_genes)
        else:
            self.to_genes = nn.Sequential(nn.Linear(n_tokens * hidden, head_size), nn.GELU(approximate=gelu_approximate), nn.Linear(head_size, n_genes))

    def forward(self, z: torch.Tensor, cond: torch.Tensor, cond_index=None) -> torch.Tensor:
        tokens = self.token_proj(z.view(z.shape[0], -1, self.token_size)) + self.position
        return self.to_genes(self.transformer(tokens, cond, cond_index).flatten(1))


class BlockAttentionVAE(nn.Module):
    """Conditional VAE over gene blocks; ``forward`` returns the loss terms of a minibatch."""

    def __init__(
        self,
        block_index: torch.Tensor,
        n_genes: int,
        n_categories: list[int],
        hidden: int = 256,
        cond_dim: int = 512,
        latent_dim: int = 128,
        latent_token_size: int = 8,
        n_encoder_layers: int = 3,
        n_decoder_layers: int = 3,
        n_heads: int = 4,
        dropout: float = 0.0,
        likelihood: str = "bernoulli",
        decoder_head_size: int | None = None,
        gelu_approximate: str = "none",
        feed_forward_size: int | None = None,
    ):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}")
        self.likelihood = likelihood
        self.condition_embedding = ConditionEmbedding(n_categories, cond_dim)
        self.encoder = BlockEncoder(block_index, n_genes, hidden, n_encoder_layers, n_heads, cond_dim, latent_dim, dropout,
                                    gelu_approximate, feed_forward_size)
        self.decoder = TokenDecoder(n_genes, latent_dim, latent_token_size, hidden, n_decoder_layers, n_heads, cond_dim, dropout,
                                    decoder_head_size, gelu_approximate, feed_forward_size)
        if likelihood == "nb":
            self.log_theta = nn.Parameter(torch.zeros(n_genes))
        self.latent_dim = latent_dim

    def encode(self, x, codes, return_weights: bool = False):
        cond, index = self.condition_embedding.unique(codes)
        return self.encoder(x, cond, index, return_weights=return_weights)

    def decode_raw(self, z, codes) -> torch.Tensor:
        cond, index = self.condition_embedding.unique(codes)
        return self.decoder(z, cond, index)

    def decode_mean(self, z, codes) -> torch.Tensor:
        """Expected expression on the [0, 1] scale (bernoulli, gaussian) or as fractions of the
        library (nb: each row sums to 1)."""
        out = self.decode_raw(z, codes)
        if self.likelihood == "bernoulli":
            return torch.sigmoid(out)
        if self.likelihood == "gaussian":
            return out.clamp(0.0, 1.0)
        return torch.softmax(out, dim=-1)

    def loss(self, x, codes, counts=None, kl_weight: float = 0.5, generator=None) -> dict:
        mu, logvar = self.encode(x, codes)
        eps = torch.randn(mu.shape, generator=generator, device=mu.device)
        z = mu + torch.exp(0.5 * logvar) * eps
        out = self.decode_raw(z, codes)
        if self.likelihood == "bernoulli":
            recon = F.binary_cross_entropy_with_logits(out, x, reduction="none").sum(-1)
        elif self.likelihood == "gaussian":
            recon = F.mse_loss(out, x, reduction="none").sum(-1)
        else:
            recon = -negative_binomial_log_prob(counts, torch.softmax(out, -1) * counts.sum(-1, keepdim=True), self.log_theta.exp()).sum(-1)
        kl = 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(-1)
        recon, kl = recon.mean(), kl.mean()
        return {"loss": recon + kl_weight * kl, "reconstruction": recon, "kl": kl}


def negative_binomial_log_prob(x: torch.Tensor, mean: torch.Tensor, theta: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """log NB(x; mean, inverse dispersion theta), the scVI parameterisation."""
    log_theta_mu = torch.log(theta + mean + eps)
    return (
        theta * (torch.log(theta + eps) - log_theta_mu)
        + x * (torch.log(mean + eps) - log_theta_mu)
        + torch.lgamma(x + theta)
        - torch.lgamma(theta)
        - torch.lgamma(x + 1)
    )
