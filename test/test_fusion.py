"""Position injection, view alignment and cross-attention fusion against their equations."""
import math

import torch

from vlm2_ros.model.attention import CrossAttention
from vlm2_ros.model.fusion import FusionConfig, GeometryFusion, pool_to_grid

torch.manual_seed(0)


def test_cross_attention_matches_softmax_formula_single_head():
    attn = CrossAttention(dim=2, num_heads=1)
    with torch.no_grad():
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, attn.out_proj):
            lin.weight.copy_(torch.eye(2))
            lin.bias.zero_()
    q = torch.tensor([[[1.0, 0.0]]])
    kv = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    # scores = q.k / sqrt(2) = [1/sqrt2, 0]; weights = softmax; out = weights @ v
    w0 = math.exp(1 / math.sqrt(2)) / (math.exp(1 / math.sqrt(2)) + 1.0)
    expected = torch.tensor([[[w0, 1 - w0]]])
    assert torch.allclose(attn(q, kv), expected, atol=1e-6)


def test_cross_attention_mask_excludes_context():
    attn = CrossAttention(dim=4, num_heads=2)
    q, kv = torch.randn(1, 3, 4), torch.randn(1, 5, 4)
    mask = torch.tensor([[True, True, False, False, False]])
    assert torch.allclose(attn(q, kv, mask), attn(q, kv[:, :2]), atol=1e-6)


def test_pool_to_grid_averages_each_cell():
    points = torch.arange(4 * 4 * 3, dtype=torch.float32).view(1, 4, 4, 3)
    pooled = pool_to_grid(points, (2, 2))
    assert pooled.shape == (1, 4, 3)
    assert torch.allclose(pooled[0, 0], points[0, :2, :2].reshape(-1, 3).mean(0))
    assert torch.allclose(pooled[0, 3], points[0, 2:, 2:].reshape(-1, 3).mean(0))


def _small_fusion():
    config = FusionConfig(dim=8, geometry_dim=6, num_heads=2, position_hidden_dim=5, position_scale_m=2.0)
    return GeometryFusion(config).eval(), config


def test_position_injection_matches_equation():
    fusion, config = _small_fusion()
    inj = fusion.injection
    semantic, points, conf = torch.randn(2, 4, 8), torch.randn(2, 4, 3), torch.rand(2, 4, 1)
    out, gate = inj(semantic, points, conf)
    x = points / config.position_scale_m
    phi = inj.phi.fc2(torch.nn.functional.gelu(inj.phi.fc1(x)))
    a = torch.sigmoid(inj.gate(torch.cat([inj.gate_norm(semantic), phi, conf], -1)))
    assert torch.allclose(gate, a) and ((a >= 0) & (a <= 1)).all()
    assert torch.allclose(out, semantic + a * phi, atol=1e-6)


def test_injection_gate_closed_leaves_semantic_tokens_unchanged():
    fusion, _ = _small_fusion()
    with torch.no_grad():
        fusion.injection.gate.weight.zero_()
        fusion.injection.gate.bias.fill_(-1e4)  # a_t -> 0: noisy points are shut out
    semantic = torch.randn(1, 4, 8)
    out, gate = fusion.injection(semantic, torch.randn(1, 4, 3) * 100, torch.zeros(1, 4, 1))
    assert torch.all(gate < 1e-6) and torch.allclose(out, semantic)


def test_view_alignment_matches_equation_and_appends_global_view_token():
    fusion, _ = _small_fusion()
    al = fusion.alignment
    g, z = torch.randn(2, 5, 6), torch.randn(2, 1, 6)
    out = al(g, z)
    assert out.shape == (2, 6, 8)  # hw + 1 tokens
    view = al.psi_v(z).expand(2, 5, 6)
    expected_patches = al.align(torch.cat([g, view], -1))
    assert torch.allclose(out[:, :5], expected_patches, atol=1e-6)
    assert torch.allclose(out[:, 5:], al.psi_g(z), atol=1e-6)


def test_fusion_is_residual_cross_attention_over_aligned_geometry():
    fusion, _ = _small_fusion()
    semantic_grid = torch.randn(2, 2, 3, 8)
    points, conf = torch.randn(2, 6, 9, 3), torch.rand(2, 6, 9)
    g, z = torch.randn(2, 10, 6), torch.randn(2, 1, 6)
    out = fusion(semantic_grid, points, conf, g, z)
    assert out.fused.shape == (2, 6, 8) and out.injection_gate.shape == (2, 6, 1)
    assert out.patch_points.shape == (2, 6, 3)
    injected, _ = fusion.injection(semantic_grid.reshape(2, 6, 8), pool_to_grid(points, (2, 3)),
                                   pool_to_grid(conf.unsqueeze(-1), (2, 3)))
    context = fusion.context_norm(fusion.alignment(g, z))
    expected = injected + fusion.cross_attention(fusion.query_norm(injected), context)
    assert torch.allclose(out.fused, expected, atol=1e-6)


def test_fusion_runs_in_bfloat16():
    fusion, _ = _small_fusion()
    fusion = fusion.to(torch.bfloat16)
    out = fusion(torch.randn(1, 2, 3, 8, dtype=torch.bfloat16), torch.randn(1, 6, 9, 3, dtype=torch.bfloat16),
                 torch.rand(1, 6, 9, dtype=torch.bfloat16), torch.randn(1, 10, 6, dtype=torch.bfloat16),
                 torch.randn(1, 1, 6, dtype=torch.bfloat16))
    assert out.fused.dtype == torch.bfloat16 and torch.isfinite(out.fused.float()).all()
