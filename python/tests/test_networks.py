import pytest
import torch

from pysave.flow import LinearPath, VelocityField, guided_velocity, sample_latents
from pysave.layers import AdaLNBlock, ConditionEmbedding, ExactGELU
from pysave.vae import BlockAttentionVAE, negative_binomial_log_prob


def test_adaln_block_starts_as_identity_and_conditions_matter_after_training_signal():
    block = AdaLNBlock(16, 2, 8)
    h = torch.randn(3, 5, 16)
    assert torch.allclose(block(h, torch.randn(3, 8)), h)  # adaLN-Zero
    torch.nn.init.normal_(block.modulation[1].weight)
    a = block(h, torch.zeros(3, 8) + 1)
    b = block(h, torch.zeros(3, 8) - 1)
    assert not torch.allclose(a, b)


def test_condition_masking_rate():
    emb = ConditionEmbedding([3, 5], 4)
    codes = torch.zeros(20000, 2, dtype=torch.long)
    masked = emb.random_mask(codes, 0.6, torch.Generator().manual_seed(0))
    rate = (masked == torch.tensor([3, 5])).float().mean(0)
    assert torch.allclose(rate, torch.tensor([0.6, 0.6]), atol=0.02)


def test_masking_all_conditions_at_once_trains_the_unconditional_case_whatever_their_number():
    emb = ConditionEmbedding([3, 5, 2, 4], 4)
    codes = torch.zeros(40000, 4, dtype=torch.long)
    all_masked = lambda out: (out == torch.tensor([3, 5, 2, 4])).all(1).float().mean().item()
    # Per-condition masking alone reaches every condition masked only with p^K (0.3^4 = 0.8%).
    assert abs(all_masked(emb.random_mask(codes, 0.3, torch.Generator().manual_seed(0))) - 0.3 ** 4) < 0.002
    both = emb.random_mask(codes, 0.3, torch.Generator().manual_seed(0), p_all=0.1)
    assert abs(all_masked(both) - (0.1 + 0.9 * 0.3 ** 4)) < 0.006
    # Per condition, the rate is p_all + (1 - p_all) p.
    rate = (both == torch.tensor([3, 5, 2, 4])).float().mean(0)
    assert torch.allclose(rate, torch.full((4,), 0.1 + 0.9 * 0.3), atol=0.01)
    assert abs(all_masked(emb.random_mask(codes, 0.0, torch.Generator().manual_seed(0), p_all=0.2)) - 0.2) < 0.01
    # Without p_all the random stream is the one models were trained with before it existed.
    g = torch.Generator().manual_seed(1)
    old = torch.where(torch.rand(codes.shape, generator=g) < 0.3, torch.tensor([3, 5, 2, 4]).expand_as(codes), codes)
    assert torch.equal(emb.random_mask(codes, 0.3, torch.Generator().manual_seed(1), p_all=0.0), old)


def _vae(likelihood):
    index = torch.arange(24).view(4, 6)
    index[3, 4:] = -1  # padding
    return BlockAttentionVAE(index, 22, [2, 3], hidden=16, cond_dim=8, latent_dim=16, latent_token_size=8,
                             n_encoder_layers=1, n_decoder_layers=1, n_heads=2, likelihood=likelihood)


@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian", "nb"])
def test_vae_loss_and_one_cell_minibatch(likelihood):
    torch.manual_seed(0)
    vae = _vae(likelihood).train()
    counts = torch.poisson(torch.full((1, 22), 2.0))
    x = (torch.log1p(counts) / 3).clamp(0, 1)
    codes = torch.tensor([[1, 2]])
    terms = vae.loss(x, codes, counts)  # a minibatch of ONE cell must not crash (LayerNorm, no BatchNorm)
    assert torch.isfinite(terms["loss"]) and terms["kl"] >= 0
    terms["loss"].backward()
    mean = vae.decode_mean(torch.zeros(1, 16), codes)
    assert mean.shape == (1, 22)
    if likelihood == "nb":
        assert torch.allclose(mean.sum(-1), torch.ones(1))


@pytest.mark.parametrize("head_size, widths", [(None, [16]), (40, [40]), (0, [])])
def test_decoder_head_size(head_size, widths):
    index = torch.arange(24).view(4, 6)
    vae = BlockAttentionVAE(index, 24, [2], hidden=16, cond_dim=8, latent_dim=16, latent_token_size=8,
                            n_encoder_layers=1, n_decoder_layers=1, n_heads=2, decoder_head_size=head_size)
    layers = [m for m in vae.decoder.to_genes.modules() if isinstance(m, torch.nn.Linear)]
    # flattened tokens (2 x 16) -> [head] -> 24 genes; 0 is the paper's eq. (6), one linear map
    assert [m.out_features for m in layers] == widths + [24]
    assert layers[0].in_features == 32
    assert vae.decode_mean(torch.zeros(3, 16), torch.zeros(3, 1, dtype=torch.long)).shape == (3, 24)


def test_encoder_reads_padding_as_zero():
    vae = _vae("bernoulli")
    blocks = vae.encoder.gather_index
    assert (blocks[3, 4:] == 22).all()
    x = torch.rand(2, 22)
    tokens_in = torch.nn.functional.pad(x, (0, 1))[:, blocks]
    assert (tokens_in[:, 3, 4:] == 0).all()


def test_negative_binomial_matches_torch_distribution():
    x = torch.tensor([0.0, 3.0, 10.0])
    mean = torch.tensor([1.0, 2.5, 8.0])
    theta = torch.tensor([2.0, 0.5, 10.0])
    ref = torch.distributions.NegativeBinomial(total_count=theta, logits=torch.log(mean) - torch.log(theta)).log_prob(x)
    assert torch.allclose(negative_binomial_log_prob(x, mean, theta), ref, atol=1e-5)


def test_linear_path():
    x1 = torch.randn(1000, 4)
    t, xt, u = LinearPath.sample(x1, torch.Generator().manual_seed(0))
    x0 = x1 - u
    assert torch.allclose(xt, (1 - t[:, None]) * x0 + t[:, None] * x1, atol=1e-6)
    assert 0 <= t.min() and t.max() <= 1


def test_flow_sampling_shapes_solvers_and_guidance():
    torch.manual_seed(0)
    field = VelocityField(32, [2, 3], token_size=16, hidden=16, depth=1, n_heads=2, cond_dim=16).eval()
    torch.nn.init.normal_(field.out.weight, std=0.1)
    codes = torch.tensor([[0, 1], [1, 2]])
    z = sample_latents(field, codes, 1.0, 10, "euler", torch.Generator().manual_seed(1))
    assert z.shape == (2, 32) and torch.isfinite(z).all()
    z_fine = sample_latents(field, codes, 1.0, 400, "euler", torch.Generator().manual_seed(1))
    z_ode = sample_latents(field, codes, 1.0, 0, "dopri5", torch.Generator().manual_seed(1))
    assert torch.allclose(z_fine, z_ode, atol=2e-2)  # fine Euler converges to the adaptive solution
    # higher-order fixed grids: closer to the adaptive solution than Euler at the same step count
    err = {s: (sample_latents(field, codes, 1.0, 5, s, torch.Generator().manual_seed(1)) - z_ode).abs().max()
           for s in ("euler", "midpoint", "rk4")}
    assert err["rk4"] < err["midpoint"] < err["euler"], err
    assert err["rk4"] < 1e-3
    # guidance: w = 0 is the unconditional field, w = 2 extrapolates beyond the conditional one. AdaLN's
    # zero start makes a fresh field ignore its conditions: every weight drawn, so that they matter.
    for p in field.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x, t = torch.randn(2, 32), torch.full((2,), 0.3)
    masked = field.condition_embedding.all_masked(2, "cpu")
    v_c, v_u = field(x, t, codes), field(x, t, masked)
    assert (v_c - v_u).abs().max() > 1e-2
    assert torch.allclose(guided_velocity(field, codes, 0.0)(t, x), v_u, atol=1e-6)
    assert torch.allclose(guided_velocity(field, codes, 2.0)(t, x), 2 * v_c - v_u, atol=1e-5)
    # one w per row: each row as with its own w alone (w = 1 gives the conditional field exactly)
    per_row = guided_velocity(field, codes, torch.tensor([1.0, 2.0]))(t, x)
    assert torch.allclose(per_row[0], v_c[0], atol=1e-6) and torch.allclose(per_row[1], 2 * v_c[1] - v_u[1], atol=1e-5)
    z_rows, z_w1, z_w2 = (sample_latents(field, codes, w, 10, "euler", torch.Generator().manual_seed(1))
                          for w in (torch.tensor([1.0, 2.0]), 1.0, 2.0))
    assert torch.allclose(z_rows[0], z_w1[0], atol=1e-5) and torch.allclose(z_rows[1], z_w2[1], atol=1e-5)
    assert (z_w1[1] - z_w2[1]).abs().max() > 1e-2  # so the rows did take different weights
    with pytest.raises(ValueError, match="one weight per row"):
        sample_latents(field, codes, torch.tensor([1.0, 2.0, 3.0]), 2, "euler")


def test_flow_loss_decreases_on_a_simple_target():
    torch.manual_seed(0)
    field = VelocityField(16, [2], token_size=8, hidden=32, depth=1, n_heads=2, cond_dim=16)
    opt = torch.optim.Adam(field.parameters(), lr=3e-3)
    codes = torch.randint(0, 2, (256, 1))
    x1 = torch.randn(256, 16) * 0.1 + codes.float() * 3  # two well-separated conditional modes
    first = None
    for step in range(200):
        loss = field.loss(x1, codes, mask_prob=0.3)
        opt.zero_grad()
        loss.backward()
        opt.step()
        first = first if first is not None else loss.item()
    assert float(loss) < 0.6 * first
    field.eval()
    z = sample_latents(field, torch.tensor([[0]] * 200 + [[1]] * 200), 1.0, 50)
    assert z[:200].mean() < 1.0 < z[200:].mean()  # the condition picks the mode


def test_direct_attention_matches_the_fused_kernel(monkeypatch):
    # Short sequences take softmax(QK^T)V (faster on the CPU); values and gradients are the fused kernel's.
    import pysave.layers as layers

    torch.manual_seed(0)
    block = AdaLNBlock(32, 4, 8)
    torch.nn.init.normal_(block.modulation[1].weight, std=0.1)
    h, cond = torch.randn(50, 4, 32, requires_grad=True), torch.randn(50, 8)

    def run():
        out = block(h, cond)
        grad, = torch.autograd.grad(out.square().sum(), h)
        return out.detach(), grad

    direct = run()
    monkeypatch.setattr(layers, "DIRECT_ATTENTION_MAX_TOKENS", 0)
    fused = run()
    assert torch.allclose(direct[0], fused[0], atol=1e-5) and torch.allclose(direct[1], fused[1], atol=1e-4)
    assert not torch.equal(direct[0], h)  # the block did something


@pytest.mark.parametrize("bf16", [False, True])
def test_compiled_gelu_keeps_its_slope_and_gives_the_plain_gelus_bits(bf16):
    # Compiled on the CPU, inductor recomputes erf in the backward pass of F.gelu; ExactGELU's
    # backward only multiplies by the slope its forward kept. Same values, same gradients.
    from torch._dynamo.utils import counters
    from torch._inductor.utils import run_and_get_code

    def run(activation):
        torch._dynamo.reset()
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(16, 64), activation, torch.nn.Linear(64, 16))
        compiled, x = torch.compile(net), torch.randn(48, 16)

        def step():
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = compiled(x)
            out.float().square().sum().backward()
            return out.detach()

        out, code = run_and_get_code(step)
        return out, [p.grad for p in net.parameters()], [c.count(".erf()") for c in code]

    plain_out, plain_grads, plain_erfs = run(torch.nn.GELU())
    counters.clear()
    out, grads, erfs = run(ExactGELU())
    # torch's compile cache can hold the graphs (an autograd.Function, or a policy without a
    # cache_hash, would make every process trace and partition again)
    assert counters["aot_autograd"]["autograd_cache_bypass"] == 0
    assert plain_erfs == [1, 1] and erfs == [1, 0]  # forward and backward graphs: erf only forward
    assert torch.equal(out, plain_out)
    assert all(torch.equal(g, p) for g, p in zip(grads, plain_grads))
    x = torch.randn(100)
    assert torch.equal(ExactGELU()(x), torch.nn.functional.gelu(x))  # eager: F.gelu itself


def test_unique_conditions_match_unique_rows():
    emb = ConditionEmbedding([3, 5, 2], 6)
    codes = torch.stack([torch.randint(0, n + 1, (300,), generator=torch.Generator().manual_seed(n)) for n in (3, 5, 2)], 1)
    rows, index = emb.unique(codes)
    distinct, inverse = torch.unique(codes, dim=0, return_inverse=True)
    assert torch.equal(rows, emb(distinct)) and torch.equal(index, inverse)
    assert torch.equal(rows[index], emb(codes))


def test_sampling_in_row_blocks_equals_one_solve(monkeypatch):
    import pysave.flow as flow

    torch.manual_seed(0)
    field = VelocityField(16, [3], token_size=8, hidden=16, depth=1, n_heads=2, cond_dim=8).eval()
    for p in field.parameters():
        torch.nn.init.normal_(p, std=0.1)
    codes = torch.randint(0, 4, (37, 1))
    whole = sample_latents(field, codes, 2.0, 5, "midpoint", torch.Generator().manual_seed(3))
    monkeypatch.setattr(flow, "CPU_SOLVE_ROWS", 8)
    blocks = sample_latents(field, codes, 2.0, 5, "midpoint", torch.Generator().manual_seed(3))
    assert torch.allclose(whole, blocks, atol=1e-6)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 sampling: the ODE state stays fp32
        low = sample_latents(field, codes, 2.0, 5, "midpoint", torch.Generator().manual_seed(3))
    assert low.dtype == torch.float32 and not torch.equal(low, whole)
    assert ((low - whole).norm() / whole.norm()) < 0.02
