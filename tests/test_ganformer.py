"""GANformer, the DSAE's decoder: duplex attention against a naive loop, the identity at
initialisation, k = 0 as the plain StyleGAN2, training, exact resume, seeded samples."""
import copy
import math

import pytest
import torch

from baselines import ganformer, stylegan
from baselines.ganformer import DuplexAttention, GANformer, GANformerConfig, grid_encoding


def naive_attention(q, k, v, heads):
    """Per batch, head and query: the softmax over the keys written out, token by token."""
    B, Tq, D = q.shape
    d, out = D // heads, torch.zeros_like(q)
    for b in range(B):
        for h in range(heads):
            s = slice(h * d, (h + 1) * d)
            for i in range(Tq):
                scores = [float(q[b, i, s] @ k[b, t, s]) / math.sqrt(d) for t in range(len(k[b]))]
                e = [math.exp(x - max(scores)) for x in scores]
                out[b, i, s] = sum(e[t] / sum(e) * v[b, t, s] for t in range(len(e)))
    return out


def naive_duplex(block, x, y):
    """The block's equations, positions (row-major) and normalisation written out."""
    B, C, H, W = x.shape
    tokens = torch.stack([x[:, :, r, c] for r in range(H) for c in range(W)], 1)  # (B, HW, C)

    def norm(t):
        return (t - t.mean(-1, keepdim=True)) / (t.var(-1, unbiased=False, keepdim=True)
                                                 + 1e-5).sqrt()

    grid, pos = block.grid(norm(tokens)), block.pos(block.encoding)
    k_x, v_x, q_x = grid[..., :C], grid[..., C:2 * C], grid[..., 2 * C:]
    y2 = y + block.gather_out(naive_attention(block.gather(norm(y)), k_x + pos[:, :C], v_x,
                                              block.heads))
    kv = block.spread(norm(y2))
    a = naive_attention(q_x + pos[:, C:], kv[..., :C], kv[..., C:], block.heads)
    mod = block.modulation(a)
    out = tokens + mod[..., :C] * norm(tokens) + mod[..., C:]
    return torch.stack([out[:, r * W + c] for r in range(H) for c in range(W)], 2).view(x.shape), y2


def random_block():
    torch.manual_seed(0)
    block = DuplexAttention(channels=8, w_dim=6, res=4, heads=2, pos_dim=8).double()
    x, y = torch.randn(2, 8, 4, 4, dtype=torch.double), torch.randn(2, 3, 6, dtype=torch.double)
    return block, x, y


def test_duplex_attention_matches_a_naive_loop():
    block, x, y = random_block()
    with torch.no_grad():
        for layer in (block.gather_out, block.modulation):  # zero at first: make both ways count
            layer.weight.normal_()
        got, want = block(x, y), naive_duplex(block, x, y)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w)
    assert (got[0] - x).abs().mean() > 0.1 and (got[1] - y).abs().mean() > 0.1


def test_block_is_the_identity_at_initialisation_and_learns():
    block, x, y = random_block()
    x2, y2 = block(x, y)
    assert torch.equal(x2, x) and torch.equal(y2, y)
    x2.square().sum().backward()
    assert block.modulation.weight.grad.abs().sum() > 0  # the zero layer is trained at once


def test_grid_encoding_is_separable_in_rows_and_columns():
    enc = grid_encoding(8, 16).view(8, 8, 16)  # [row, col]
    assert torch.equal(enc[:, :, :8], enc[:1, :, :8].expand(8, -1, -1))  # x part: the column's
    assert torch.equal(enc[:, :, 8:], enc[:, :1, 8:].expand(-1, 8, -1))  # y part: the row's
    torch.testing.assert_close(enc[0, :, :8], enc[:, 0, 8:])
    assert len({tuple(e.tolist()) for e in enc.view(64, 16)}) == 64  # every position its own


def test_no_components_is_the_plain_unconditional_stylegan2():
    """k = 0: the same weights (names, shapes, values from the same seed) and the same images as
    stylegan.py's generator with one class."""
    c = GANformerConfig.preset("tiny", image_size=16, components=0, num_classes=5)
    torch.manual_seed(0)
    G = ganformer.Generator(c)
    torch.manual_seed(0)
    S = stylegan.Generator(stylegan.StyleGANConfig.preset("tiny", image_size=16, num_classes=1))
    a, b = G.state_dict(), S.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    z = torch.randn(3, 1, c.z_dim)
    noise = [torch.randn(3, 1, layer.res, layer.res) for layer in S.synthesis.layers]
    for layer in S.synthesis.layers:  # noise counts too
        layer.noise_strength.data.fill_(0.3)
    G.load_state_dict(S.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(G(z, noise), S(z[:, 0], torch.zeros(3, dtype=torch.long), noise))
    with_k = ganformer.Generator(GANformerConfig.preset("tiny", image_size=16, attention_from=8))
    layers = with_k.synthesis.layers
    assert [layers[int(j)].res for j in with_k.synthesis.attention] == [8, 8, 16, 16]


@pytest.fixture(scope="module")
def config():
    return GANformerConfig.preset("tiny", image_size=16, num_classes=3, components=3)


def test_training_runs_and_resumes_bitwise(config):
    torch.manual_seed(0)
    net = GANformer(config)
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 7, 2, 1])  # labels: ignored
    for step in range(2):  # step 0 with R1
        values = net.train_step((x, y), step)
        assert set(values) == set(GANformer.LOG) and all(map(math.isfinite, values.values()))
    saved = copy.deepcopy(net.state_dict())
    torch.manual_seed(1)
    other = GANformer(config)
    other.load_state_dict(saved)
    results = []
    for m in (net, other):
        torch.manual_seed(2)
        results.append((m.train_step((x, y), 2), m.state_dict()))
    assert results[0][0] == results[1][0]
    for name, state in results[0][1].items():
        other_state = results[1][1][name]
        if not isinstance(state, dict):  # the augmentation probability and ADA's counts
            assert state == other_state, name
        elif not name.startswith("optimizer"):
            assert all(torch.equal(v, other_state[k]) for k, v in state.items()), name
    assert results[0][1]["optimizer_g"]["state"][0]["exp_avg"].equal(
        results[1][1]["optimizer_g"]["state"][0]["exp_avg"])


def test_samples_are_seeded_and_it_does_not_translate(config):
    torch.manual_seed(0)
    net = GANformer(config)
    for layer in net.G_ema.synthesis.layers:  # noise counts: it must come from the seed too
        layer.noise_strength.data.fill_(0.5)
    y = torch.tensor([0, 0, 0])
    a, b, c = net.sample(y, seed=3), net.sample(y, seed=3), net.sample(y, seed=4)
    assert torch.equal(a, b) and not torch.allclose(a, c) and a.shape == (3, 3, 16, 16)
    for layer in net.G_ema.synthesis.layers:
        layer.noise_strength.data.zero_()
    same = net.sample(y, seed=3, psi=0.0)  # every w the mean w, no noise: one image
    torch.testing.assert_close(same, same[:1].expand_as(same))
    G = net.G_ema
    z = torch.randn(2, *G.latent_shape)
    with torch.no_grad():
        torch.testing.assert_close(G.generate(z.flatten(1)), G.generate(z))  # tau's flat latent
    assert GANformer.TRANSLATES is False
    with pytest.raises(ValueError, match="ganformer is a decoder"):
        net.reconstruct(torch.zeros(1, 3, 16, 16), 0)


def test_config_errors():
    with pytest.raises(ValueError, match="--heads 3 must divide"):
        GANformerConfig.preset("tiny", heads=3)
    with pytest.raises(ValueError, match="--attention-from must be a power of two"):
        GANformerConfig.preset("tiny", attention_from=6)
    with pytest.raises(ValueError, match="--pos-dim must be a multiple of 4"):
        GANformerConfig.preset("tiny", pos_dim=6)
