"""The banded local attention equals the official formulation (unfold keys, dense scatter of weights)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trek_tracker.modeling.attention import GlobalGatedPropagation, local_window_attention


def official_local_attention(q, k, v, bias, max_dis, dilation):
    """A direct transcription of the maths: every window position, out-of-image ones masked to -1e8."""
    b, d, h, w = q.shape
    win = 2 * max_dis + 1
    pad = max_dis * dilation
    unf_k = F.unfold(F.pad(k, (pad,) * 4), win, dilation=dilation).view(b, d, win * win, h * w)
    logits = (q.view(b, d, 1, h * w) * unf_k).sum(1) + bias.view(b, win * win, h * w)
    ones = torch.ones(1, 1, h, w)
    outside = 1 - F.unfold(F.pad(ones, (pad,) * 4), win, dilation=dilation).view(1, win * win, h * w)
    attn = torch.softmax(logits - outside * 1e8, dim=1)  # (b, K, HW)
    unf_v = F.unfold(F.pad(v, (pad,) * 4), win, dilation=dilation).view(b, v.shape[1], win * win, h * w)
    out = (unf_v * attn.unsqueeze(1)).sum(2)  # (b, C, HW)
    return out.permute(2, 0, 1)


@pytest.mark.parametrize("h,w,max_dis,dilation", [(9, 13, 7, 1), (5, 4, 7, 1), (12, 10, 3, 2), (1, 20, 2, 1)])
def test_local_attention_matches_official_maths(h, w, max_dis, dilation):
    g = torch.Generator().manual_seed(h * 100 + w)
    b, d, c = 2, 8, 6
    q, k = torch.randn(b, d, h, w, generator=g), torch.randn(b, d, h, w, generator=g)
    v = torch.randn(b, c, h, w, generator=g)
    bias = torch.randn(b, (2 * max_dis + 1) ** 2, h, w, generator=g)
    expected = official_local_attention(q, k, v, bias, max_dis, dilation)
    got = local_window_attention(q, k, v, bias, max_dis=max_dis, dilation=dilation)
    assert got.shape == (h * w, b, c)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    # Forcing many small bands of query rows must not change the result.
    banded = local_window_attention(q, k, v, bias, max_dis=max_dis, dilation=dilation, max_block_elements=1)
    torch.testing.assert_close(banded, got, rtol=1e-6, atol=1e-6)


def test_local_attention_ignores_keys_outside_the_window():
    h, w, max_dis = 10, 10, 2
    q, k = torch.randn(1, 4, h, w), torch.randn(1, 4, h, w)
    v = torch.randn(1, 3, h, w)
    bias = torch.zeros(1, 25, h, w)
    base = local_window_attention(q, k, v, bias, max_dis=max_dis)
    v2 = v.clone()
    v2[..., 9, 9] += 100.0  # only queries within 2 rows/cols of (9, 9) can see it
    changed = (local_window_attention(q, k, v2, bias, max_dis=max_dis) - base).abs().sum((1, 2)).view(h, w)
    assert changed[7:, 7:].gt(0).all()
    assert changed[:7].eq(0).all() and changed[:, :7].eq(0).all()


def test_global_gated_propagation_is_gated_softmax_attention():
    torch.manual_seed(0)
    m = GlobalGatedPropagation(4, 6, 5).eval()
    q, k = torch.randn(12, 1, 4), torch.randn(7, 1, 4)
    v, u = torch.randn(7, 1, 6), torch.randn(12, 1, 6)
    attn = torch.softmax(q[:, 0] @ k[:, 0].T / 2.0, dim=-1)
    expected = m.projection(m.dw_conv((attn @ v[:, 0]).unsqueeze(1) * u, (3, 4)))
    torch.testing.assert_close(m(q, k, v, u, (3, 4)), expected)


def test_window_index_cached_under_inference_mode_still_trains():
    """The window index is cached across calls; one first built during validation (inference mode) must
    not break a later training step on the same grid."""
    from trek_tracker.modeling.attention import _window_index

    _window_index.cache_clear()
    q = torch.randn(1, 4, 6, 7, requires_grad=True)
    k, v, bias = torch.randn(1, 4, 6, 7), torch.randn(1, 3, 6, 7), torch.randn(1, 25, 6, 7)
    with torch.inference_mode():
        local_window_attention(q.detach(), k, v, bias, max_dis=2)
    local_window_attention(q, k, v, bias, max_dis=2).sum().backward()
    assert q.grad is not None and q.grad.abs().sum() > 0


def test_local_attention_under_cuda_autocast_precision_policy(monkeypatch):
    """CUDA autocast runs matrix products in half precision and softmax in float32; the window attention
    must combine the two (it crashed in GPU training at step 1). Simulated on CPU: half-precision inputs,
    a float32 softmax."""
    import trek_tracker.modeling.attention as attention

    real_softmax = torch.softmax
    monkeypatch.setattr(attention.torch, "softmax", lambda x, dim: real_softmax(x.float(), dim=dim))
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 8, 6, 7, generator=g), torch.randn(1, 8, 6, 7, generator=g)
    v, bias = torch.randn(1, 5, 6, 7, generator=g), torch.randn(1, 25, 6, 7, generator=g)
    reference = local_window_attention(q, k, v, bias, max_dis=2)
    half = local_window_attention(*(t.to(torch.bfloat16) for t in (q, k, v, bias)), max_dis=2)
    assert half.dtype == torch.bfloat16
    assert torch.allclose(half.float(), reference, atol=0.05)
