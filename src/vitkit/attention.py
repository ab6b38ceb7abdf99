"""Self-attention and multi-head self-attention (paper appendix A, eqs. 5-8).

    [q, k, v] = z U_qkv                      (5)   one matmul computes W_q x, W_k x and W_v x
    A = softmax(q k^T / sqrt(D_h))           (6)   scores of every query against every key
    SA(z) = A v                              (7)   a weighted sum of the values
    MSA(z) = [SA_1(z); ...; SA_k(z)] U_msa   (8)   heads side by side, concatenated, projected

Two paths compute (6)-(7): ``attention`` spells them out and can hand back A; the fused path
calls ``torch.nn.functional.scaled_dot_product_attention`` (flash / memory-efficient kernels)
and never materialises A. The module switches to the explicit path by itself whenever the caller
asks for the attention probabilities, so attention maps never silently vanish.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .errors import ConfigError


def attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, dropout_p: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scaled dot-product attention written out: returns (A v, A).

    q, k, v: (..., N, D_h). A: (..., N_q, N_k), each row a probability distribution over keys.
    """
    # Scaling q rather than the scores is the same product, and it keeps torch.compile from
    # rewriting this written-out path into the fused kernel, whose CPU backward is the slow one.
    scores = (q / math.sqrt(q.shape[-1])) @ k.transpose(-2, -1)  # (..., N, N)
    probs = scores.softmax(dim=-1)
    weights = F.dropout(probs, p=dropout_p) if dropout_p > 0 else probs
    return weights @ v, probs


class MultiHeadAttention(nn.Module):
    """Multi-head self-attention with fused q/k/v projection (eq. 5) and output projection (eq. 8).

    ``qkv`` holds W_q, W_k and W_v stacked as one (3D, D) matrix so the three projections are one
    matmul; its rows are [W_q; W_k; W_v], each split into heads of D/heads rows.
    """

    def __init__(
        self,
        width: int,
        num_heads: int,
        qkv_bias: bool = True,
        attention_dropout: float = 0.0,
        dropout: float = 0.0,
        fused: bool = True,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ConfigError(f"width={width} is not divisible by num_heads={num_heads}")
        self.num_heads = num_heads
        self.head_dim = width // num_heads
        self.fused = fused
        self.attention_dropout = attention_dropout
        self.qkv = nn.Linear(width, 3 * width, bias=qkv_bias)
        self.proj = nn.Linear(width, width)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, return_attention: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, N, D) -> (MSA(x) of shape (B, N, D), A of shape (B, heads, N, N) or None)."""
        b, n, d = x.shape
        # (B, N, 3D) -> (B, N, 3, heads, D/heads) -> q, k, v each (B, heads, N, D/heads).
        # Views only; in the backward their gradients stack straight back into the (B, N, 3D)
        # layout of the qkv output, so no extra permuted copy is made (a permute to
        # (3, B, heads, N, D/heads) would need one).
        qkv = self.qkv(x).view(b, n, 3, self.num_heads, self.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(2))
        dropout_p = self.attention_dropout if self.training else 0.0
        if self.fused and not return_attention:
            out, probs = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout_p), None
        else:
            out, probs = attention(q, k, v, dropout_p)
        out = out.transpose(1, 2).reshape(b, n, d)  # (B, heads, N, D/heads) -> (B, N, D): concatenate heads
        return self.proj_drop(self.proj(out)), probs
