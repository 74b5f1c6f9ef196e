"""Hand-computed checks of the architecture family's layers (chapters 19, 20, 23, 26, 33)."""
from __future__ import annotations

import cmath
import math

import pytest
import torch
import torch.nn as nn
from timm.layers import Attention, Mlp

from repro.errors import ParameterError
from repro.layers.crrelu import CRReLU
from repro.layers.hard_attention_gate import (HardAttentionGate, gate_parameters, gradient_routing_step,
                                              split_gate_parameters)
from repro.layers.kan_attention import FourierKANOperator, KANAttention
from repro.layers.spectral_filter import SpectralBlock, SpectralFilter
from repro.layers.weighted_conv import WeightedConv2d, density_matrix, density_parameters


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


# -- CRReLU (20) ---------------------------------------------------------------------------
def test_crrelu_values_by_hand() -> None:
    act = CRReLU()
    assert act.eps.item() == pytest.approx(0.01)
    x = torch.tensor([-1.0, 0.0, 1.0, 2.0], dtype=torch.float64)
    act = act.double()
    # ReLU(x) + 0.01·x·exp(−x²/2); exp(−1/2) = 0.6065306597, exp(−2) = 0.1353352832.
    expected = torch.tensor([-0.006065306597, 0.0, 1.006065306597, 2.002706705665], dtype=torch.float64)
    # ε is stored in float32 (0.01 → 0.0099999998), hence 1e-9.
    torch.testing.assert_close(act(x), expected, atol=1e-9, rtol=0)


def test_crrelu_eps_zero_is_relu() -> None:
    act = CRReLU(eps_init=0.0)
    x = torch.randn(100)
    assert torch.equal(act(x), torch.relu(x))


def test_crrelu_gradients_by_hand() -> None:
    act = CRReLU().double()
    x = torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64, requires_grad=True)
    act(x).sum().backward()
    # d/dε = Σ x·exp(−x²/2)
    d_eps = -math.exp(-0.5) + 0.5 * math.exp(-0.125) + 2 * math.exp(-2)
    assert act.eps.grad.item() == pytest.approx(d_eps, abs=1e-12)
    # d/dx = 1[x>0] + ε(1 − x²)exp(−x²/2)
    d_x = [0.0, 1 + 0.01 * 0.75 * math.exp(-0.125), 1 - 0.03 * math.exp(-2)]
    torch.testing.assert_close(x.grad, torch.tensor(d_x, dtype=torch.float64))


def test_crrelu_in_timm_mlp_has_its_own_eps() -> None:
    mlps = [Mlp(4, 8, act_layer=CRReLU) for _ in range(2)]
    assert all(isinstance(m.act, CRReLU) for m in mlps)
    assert mlps[0].act.eps is not mlps[1].act.eps


# -- weighted convolution (23) -------------------------------------------------------------
def test_density_matrix_closed_form() -> None:
    phi = density_matrix(torch.tensor([0.7], dtype=torch.float64))
    expected = torch.tensor([[0.49, 0.7, 0.49], [0.7, 1.0, 0.7], [0.49, 0.7, 0.49]], dtype=torch.float64)
    torch.testing.assert_close(phi, expected)
    alpha = torch.tensor([0.5, 0.8, 1.0, 0.8, 0.5], dtype=torch.float64)
    torch.testing.assert_close(density_matrix(torch.tensor([0.5, 0.8], dtype=torch.float64)),
                               alpha[:, None] * alpha[None, :])


def test_weighted_conv_den_one_equals_conv2d_exactly() -> None:
    w = WeightedConv2d(3, 5, 3, den=1.0, padding=1, stride=2)
    ref = nn.Conv2d(3, 5, 3, padding=1, stride=2)
    ref.load_state_dict({"weight": w.weight.detach().clone(), "bias": w.bias.detach().clone()})
    x = torch.randn(2, 3, 9, 9)
    assert torch.equal(w(x), ref(x))


def test_weighted_conv_by_hand() -> None:
    # Ones in, ones kernel, no padding: the single output is Σ Φ = (Σ α)² = (0.5 + 1 + 0.5)² = 4.
    w = WeightedConv2d(1, 1, 3, den=0.5, bias=False)
    nn.init.ones_(w.weight)
    assert w(torch.ones(1, 1, 3, 3)).item() == pytest.approx(4.0)
    # A single tap: an impulse at a corner meets Φ's corner d² = 0.25 times the tap weight.
    x = torch.zeros(1, 1, 3, 3)
    x[0, 0, 0, 0] = 1.0
    w.weight.data.fill_(2.0)
    assert w(x).item() == pytest.approx(2.0 * 0.25)


def test_weighted_conv_learnable_den_and_errors() -> None:
    w = WeightedConv2d(2, 2, 5, den=[0.27, 0.54], learnable_den=True, padding=2)
    assert list(density_parameters(w)) == [w.den]
    w(torch.randn(1, 2, 6, 6)).sum().backward()
    assert w.den.grad is not None and w.den.grad.shape == (2,)
    assert list(density_parameters(WeightedConv2d(2, 2, 3, den=0.7))) == []
    with pytest.raises(ParameterError):
        WeightedConv2d(2, 2, 4)
    with pytest.raises(ParameterError):
        WeightedConv2d(2, 2, 5, den=[0.1, 0.2, 0.3])


# -- spectral filter (33) ------------------------------------------------------------------
def _naive_filter(x: torch.Tensor, w_half: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Orthonormal full 2-D DFT by loops, times the half-spectrum filter extended by Hermitian
    symmetry, inverse DFT by loops, real part. x [h·w, C]."""
    X = x.reshape(h, w, -1).double()
    C = X.shape[-1]
    out = torch.zeros(h, w, C, dtype=torch.float64)
    for c in range(C):
        spec = {}
        for k1 in range(h):
            for k2 in range(w):
                s = sum(X[n1, n2, c].item() * cmath.exp(-2j * math.pi * (k1 * n1 / h + k2 * n2 / w))
                        for n1 in range(h) for n2 in range(w)) / math.sqrt(h * w)
                g = w_half[k1, k2, c] if k2 <= w // 2 else w_half[(-k1) % h, w - k2, c].conj()
                spec[k1, k2] = s * complex(g)
        for n1 in range(h):
            for n2 in range(w):
                v = sum(spec[k1, k2] * cmath.exp(2j * math.pi * (k1 * n1 / h + k2 * n2 / w))
                        for k1 in range(h) for k2 in range(w)) / math.sqrt(h * w)
                out[n1, n2, c] = v.real
    return out.reshape(h * w, C)


def test_spectral_filter_matches_naive_dft() -> None:
    h, w, C = 3, 4, 2  # odd and even axes, so the Nyquist column is exercised
    f = SpectralFilter(C, (h, w))
    assert f.complex_weight.shape == (h, w // 2 + 1, C, 2)
    x = torch.randn(1, h * w, C)
    expected = _naive_filter(x[0], f.filter.detach().to(torch.complex128), h, w)
    torch.testing.assert_close(f(x)[0].double(), expected, atol=1e-5, rtol=0)


def test_spectral_filter_all_pass_is_identity() -> None:
    f = SpectralFilter(3, (4, 5))
    with torch.no_grad():
        f.complex_weight[..., 0] = 1.0
        f.complex_weight[..., 1] = 0.0
    x = torch.randn(2, 20, 3)
    torch.testing.assert_close(f(x), x, atol=1e-6, rtol=0)


def test_spectral_filter_phase_ramp_is_circular_shift() -> None:
    # W[k1, k2] = exp(−2πi·k2/w) delays every row by one token: y[n1, n2] = x[n1, n2 − 1].
    h, w = 4, 4
    f = SpectralFilter(2, (h, w))
    k2 = torch.arange(w // 2 + 1, dtype=torch.float64)
    ramp = torch.exp(-2j * math.pi * k2 / w)
    with torch.no_grad():
        f.complex_weight[..., 0] = ramp.real.float()[None, :, None]
        f.complex_weight[..., 1] = ramp.imag.float()[None, :, None]
    x = torch.randn(1, h * w, 2)
    expected = torch.roll(x.reshape(1, h, w, 2), shifts=1, dims=2).reshape(1, h * w, 2)
    torch.testing.assert_close(f(x), expected, atol=1e-6, rtol=0)


def test_spectral_block_shape_and_bad_grid() -> None:
    blk = SpectralBlock(8, (8, 8), mlp_ratio=2.0)
    x = torch.randn(2, 64, 8)
    assert blk(x).shape == x.shape
    with pytest.raises(ParameterError):
        blk(torch.randn(2, 65, 8))


# -- hard-attention gates and gradient routing (19) ----------------------------------------
def test_gate_forward_by_hand() -> None:
    g = HardAttentionGate(2)
    with torch.no_grad():
        g.theta.copy_(torch.tensor([0.0, math.log(3.0)]))  # σ = 0.5, 0.75
    torch.testing.assert_close(g(torch.tensor([[2.0, 4.0]])), torch.tensor([[1.0, 3.0]]))
    conv_gate = HardAttentionGate(2, channel_axis=1)
    conv_gate.theta.data.copy_(g.theta.data)
    out = conv_gate(torch.ones(1, 2, 2, 2))
    torch.testing.assert_close(out[0, :, 0, 0], torch.tensor([0.5, 0.75]))


def test_gate_init_is_half_open() -> None:
    g = HardAttentionGate(256)
    # Xavier-normal of a 1×D fan with gain 1: std √(2/257) ≈ 0.088.
    assert 0.06 < g.theta.std().item() < 0.12
    assert (g.values() - 0.5).abs().max().item() < 0.15


def _tiny_gated() -> nn.Sequential:
    model = nn.Sequential(HardAttentionGate(1), nn.Linear(1, 1, bias=False))
    with torch.no_grad():
        model[0].theta.zero_()
        model[1].weight.fill_(1.0)
    return model


def _half_sq(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * ((out - y) ** 2).sum()


@pytest.mark.parametrize("accumulate", [True, False])
def test_gradient_routing_by_hand(accumulate: bool) -> None:
    # ŷ = w·x·σ(θ), x = 2, y = 0, w = 1, θ = 0, L = ŷ²/2.
    # Pass 1: ŷ = 1, ∂L/∂θ = ŷ·w·x·σ(1−σ) = 0.5, ∂L/∂w = ŷ·x·σ = 1. Gate SGD lr 1: θ₁ = −0.5.
    # Pass 2: s = σ(−0.5) = 0.3775406688, ŷ = 2s, ∂L/∂w = ŷ·x·s = ŷ² = 0.5701478...
    # Main SGD lr 0.1: w₁ = 1 − 0.1·(1 + ŷ²) with accumulation, 1 − 0.1·ŷ² without.
    model = _tiny_gated()
    gates, others = split_gate_parameters(model)
    assert gates == [model[0].theta] and others == [model[1].weight]
    gate_opt = torch.optim.SGD(gates, lr=1.0)
    main_opt = torch.optim.SGD(others, lr=0.1)
    x, y = torch.tensor([[2.0]]), torch.tensor([[0.0]])
    l1, l2 = gradient_routing_step(model, _half_sq, x, y, main_opt, gate_opt,
                                   gate_clip=None, main_clip=None, accumulate=accumulate)
    s = 1 / (1 + math.exp(0.5))
    yhat2_sq = (2 * s) ** 2
    assert l1 == pytest.approx(0.5)
    assert l2 == pytest.approx(0.5 * yhat2_sq)
    assert model[0].theta.item() == pytest.approx(-0.5)  # the main step leaves gates alone
    w1 = 1 - 0.1 * ((1.0 if accumulate else 0.0) + yhat2_sq)
    assert model[1].weight.item() == pytest.approx(w1, abs=1e-6)


def test_gradient_routing_clips_gate_norm() -> None:
    # The gate gradient 0.5 is clipped to norm 0.1, so θ₁ = −0.1 with lr 1.
    model = _tiny_gated()
    gates, others = split_gate_parameters(model)
    gradient_routing_step(model, _half_sq, torch.tensor([[2.0]]), torch.tensor([[0.0]]),
                          torch.optim.SGD(others, lr=0.0), torch.optim.SGD(gates, lr=1.0),
                          gate_clip=0.1, main_clip=None)
    assert model[0].theta.item() == pytest.approx(-0.1, abs=1e-5)
    assert model[0].theta.grad is None
    assert gate_parameters(model) == [model[0].theta]


# -- Fourier-KArAt (26) --------------------------------------------------------------------
def test_karat_basis_closed_form() -> None:
    op = FourierKANOperator(1, 2, grid=2, rank=1)
    b = op.basis(torch.full((1, 1, 2, 2), math.pi / 3, dtype=torch.float64))
    # [cos(π/3), cos(2π/3), sin(π/3), sin(2π/3)]
    expected = torch.tensor([0.5, -0.5, math.sqrt(3) / 2, math.sqrt(3) / 2], dtype=torch.float64)
    torch.testing.assert_close(b[0, 0, 1, 0], expected)


def test_karat_operator_two_tokens_by_hand() -> None:
    # G = 1, r = 1: u_k = Σ_q a_q cos(A_kq) + b_q sin(A_kq) with a = [1, 0], b = [0, 1],
    # so u_k = cos(A_k0) + sin(A_k1); σ_k = W u_k with W = [1, 2]ᵀ.
    op = FourierKANOperator(1, 2, grid=1, rank=1).double()
    with torch.no_grad():
        op.coef.copy_(torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]]))  # [h, r, q, (a, b)]
        op.w.copy_(torch.tensor([[[1.0], [2.0]]]))
    A = torch.tensor([[[[0.0, math.pi / 2], [math.pi / 3, math.pi]]]], dtype=torch.float64)
    # row 0: cos 0 + sin(π/2) = 2; row 1: cos(π/3) + sin π = 0.5
    expected = torch.tensor([[[[2.0, 4.0], [0.5, 1.0]]]], dtype=torch.float64)
    torch.testing.assert_close(op(A), expected)


def test_karat_operator_matches_naive_loop_and_param_count() -> None:
    h, N, G, r = 2, 5, 3, 4
    op = FourierKANOperator(h, N, grid=G, rank=r).double()
    assert sum(p.numel() for p in op.parameters()) == h * (2 * G * r * N + N * r)
    A = torch.randn(2, h, N, N, dtype=torch.float64)
    out = op(A)
    a, b, W = op.coef[..., :G], op.coef[..., G:], op.w
    for bi in range(2):
        for hi in range(h):
            for k in range(N):
                u = [sum(a[hi, p, q, m - 1] * math.cos(m * A[bi, hi, k, q]) + b[hi, p, q, m - 1]
                         * math.sin(m * A[bi, hi, k, q]) for q in range(N) for m in range(1, G + 1))
                     for p in range(r)]
                for pp in range(N):
                    ref = sum(W[hi, pp, p] * u[p] for p in range(r))
                    assert out[bi, hi, k, pp].item() == pytest.approx(ref.item(), abs=1e-9)


class _Softmax(nn.Module):
    def forward(self, scores: torch.Tensor) -> torch.Tensor:
        return scores.softmax(-1)


def test_kan_attention_plumbing_matches_timm_attention() -> None:
    # With the operator swapped for softmax the layer must be exactly timm's attention.
    ref = Attention(8, num_heads=2, qkv_bias=True)
    ref.fused_attn = False
    kan = KANAttention(8, 2, num_tokens=5, qkv_bias=True)
    kan.load_state_dict(ref.state_dict(), strict=False)
    kan.operator = _Softmax()
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(kan(x), ref(x))


def test_kan_attention_universal_shares_operator() -> None:
    op = FourierKANOperator(2, 5)
    blocks = nn.ModuleList([KANAttention(8, 2, 5, operator=op) for _ in range(3)])
    assert all(b.operator is op for b in blocks)
    own = sum(p.numel() for p in KANAttention(8, 2, 5).parameters())
    shared = sum(p.numel() for p in blocks.parameters())
    per_op = 2 * (2 * 3 * 12 * 5 + 5 * 12)
    assert shared == 3 * (own - per_op) + per_op
    assert blocks[0](torch.randn(2, 5, 8)).shape == (2, 5, 8)
    with pytest.raises(ParameterError):
        blocks[0](torch.randn(2, 6, 8))


# -- CoSwin local branch (22) --------------------------------------------------------------
def _swin_pair(fuse: str):
    from timm.models.swin_transformer import SwinTransformerBlock

    from repro.layers.coswin_block import CoSwinBlock
    co = CoSwinBlock(8, 8, num_heads=2, window_size=4, shift_size=2, fuse=fuse).eval()
    ref = SwinTransformerBlock(8, (8, 8), num_heads=2, window_size=4, shift_size=2).eval()
    ref.load_state_dict({k: v for k, v in co.state_dict().items() if not k.startswith("local")})
    return co, ref


def test_coswin_zero_gate_is_swin() -> None:
    co, ref = _swin_pair("gate")
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(co(x), ref(x))


def test_coswin_local_branch_by_hand() -> None:
    # Centre-tap depthwise kernel, identity 1×1 conv, zero biases, eval BN (mean 0, var 1):
    # Local(z) = GELU(z / √(1 + 1e-5)); the block adds it to Swin's attention branch.
    co, ref = _swin_pair("add")
    with torch.no_grad():
        co.local.dw.weight.zero_()
        co.local.dw.weight[:, 0, 1, 1] = 1.0
        co.local.dw.bias.zero_()
        co.local.pw.weight.copy_(torch.eye(8)[:, :, None, None])
        co.local.pw.bias.zero_()
    z = torch.randn(1, 8, 8, 8)
    expected = torch.nn.functional.gelu(z / math.sqrt(1 + 1e-5))
    torch.testing.assert_close(co.local(z), expected)
    x = torch.randn(2, 8, 8, 8)
    torch.testing.assert_close(co._attn(co.norm1(x)), ref._attn(ref.norm1(x)) + co.local(co.norm1(x)))


def test_coswin_bad_window() -> None:
    from repro.layers.coswin_block import CoSwinBlock
    with pytest.raises(ParameterError):
        CoSwinBlock(8, 8, window_size=3)
    with pytest.raises(ParameterError):
        CoSwinBlock(8, 8, window_size=4, shift_size=4)
    with pytest.raises(ParameterError):
        CoSwinBlock(8, 8, fuse="concat")
