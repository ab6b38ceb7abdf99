import math

import pytest
import torch

from vitkit.attention import MultiHeadAttention, attention


def test_single_head_attention_matches_hand_computation():
    """Three 2-d tokens, identity-free weights: every step of q k^T / sqrt(d), softmax, A v by hand."""
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]])  # (B=1, N=3, D=2)
    w_q = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    w_k = torch.tensor([[0.0, 1.0], [1.0, 0.0]])
    w_v = torch.tensor([[1.0, 1.0], [0.0, 1.0]])
    w_o = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mha = MultiHeadAttention(2, num_heads=1)
    with torch.no_grad():
        mha.qkv.weight.copy_(torch.cat([w_q, w_k, w_v]))
        mha.qkv.bias.zero_()
        mha.proj.weight.copy_(w_o)
        mha.proj.bias.zero_()

    tokens = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]

    def matvec(w, v):
        return [sum(w[i][j] * v[j] for j in range(2)) for i in range(2)]

    wq, wk, wv = w_q.tolist(), w_k.tolist(), w_v.tolist()
    q = [matvec(wq, t) for t in tokens]
    k = [matvec(wk, t) for t in tokens]
    v = [matvec(wv, t) for t in tokens]
    expected, expected_probs = [], []
    for i in range(3):
        scores = [sum(q[i][d] * k[j][d] for d in range(2)) / math.sqrt(2) for j in range(3)]
        exps = [math.exp(s) for s in scores]
        probs = [e / sum(exps) for e in exps]
        expected_probs.append(probs)
        expected.append([sum(probs[j] * v[j][d] for j in range(3)) for d in range(2)])

    for fused in (True, False):
        mha.fused = fused
        out, probs = mha(x, return_attention=True)
        assert torch.allclose(out[0], torch.tensor(expected), atol=1e-6)
        assert torch.allclose(probs[0, 0], torch.tensor(expected_probs), atol=1e-6)
        out2, maybe_probs = mha(x)
        assert (maybe_probs is None) == fused  # the fused path never materialises A
        assert torch.allclose(out2[0], torch.tensor(expected), atol=1e-6)


@pytest.mark.parametrize("heads", [1, 4])
def test_fused_and_explicit_paths_agree(heads):
    torch.manual_seed(0)
    mha = MultiHeadAttention(32, heads).eval()
    x = torch.randn(3, 17, 32)
    mha.fused = True
    fused, _ = mha(x)
    mha.fused = False
    explicit, probs = mha(x)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert probs.shape == (3, heads, 17, 17)
    assert torch.allclose(probs.sum(-1), torch.ones(3, heads, 17), atol=1e-6)


def test_heads_are_independent_attentions_concatenated():
    """MSA = concat of per-head SA (eq. 8): compute each head with `attention` on its slice."""
    torch.manual_seed(1)
    d, h = 12, 3
    mha = MultiHeadAttention(d, h).eval()
    x = torch.randn(2, 5, d)
    out, _ = mha(x)
    q, k, v = (x @ w.T + b for w, b in zip(mha.qkv.weight.chunk(3), mha.qkv.bias.chunk(3), strict=True))
    heads = []
    for i in range(h):
        sl = slice(i * d // h, (i + 1) * d // h)
        heads.append(attention(q[..., sl], k[..., sl], v[..., sl])[0])
    expected = mha.proj(torch.cat(heads, dim=-1))
    assert torch.allclose(out, expected, atol=1e-5)
