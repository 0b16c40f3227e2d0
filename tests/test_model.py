"""The UNet's contracts: identity at init, class conditioning, presets, any channel count."""
import copy

import pytest
import torch

import ddim
from model import UNet, UNetConfig, count_parameters


def tiny(**overrides):
    torch.manual_seed(0)
    return UNet(UNetConfig.preset("tiny", **{"num_classes": 2, **overrides}))


def inputs(config, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    x = torch.randn(batch, config.in_channels, s, s, generator=g)
    return (x, torch.randint(0, 1000, (batch,), generator=g),
            torch.randint(0, config.num_classes, (batch,), generator=g))


def randomise_(model):
    """Replace the zero initialisations, so that outputs are non-trivial."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    return model


def test_output_is_exactly_zero_at_init():
    model = tiny()
    x, t, y = inputs(model.config)
    out = model(x, t, y)
    assert out.shape == x.shape and torch.equal(out, torch.zeros_like(x))


def test_output_depends_on_class_after_a_few_steps():
    """Two classes of near-constant images at +0.5 and -0.5: the optimal eps at x_t = 0 is
    -sqrt(a(1-a)) mu_y / (a sigma^2 + 1 - a), so eps(y=1) - eps(y=0) must turn positive.
    (Its optimum, ~0.75 at t = 300, takes long to reach: the class can also be read off x_t,
    so y is learned slowly.)"""
    model = tiny(image_size=8)
    alpha = ddim.make_schedule("linear")
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    g = torch.Generator().manual_seed(0)
    y = torch.arange(32) % 2
    x0 = (0.5 - y.float()).view(-1, 1, 1, 1) + 0.1 * torch.randn(32, 3, 8, 8, generator=g)
    losses = []
    for _ in range(20):
        loss = ddim.loss(model, x0, y, alpha, generator=g)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5])
    model.eval()
    with torch.no_grad():
        x, t = torch.zeros(2, 3, 8, 8), torch.full((2,), 300)
        eps = model(x, t, torch.tensor([0, 1]))
    assert (eps[1] - eps[0]).mean().item() > 0.05


def test_null_class_is_the_extra_last_embedding_row():
    model = tiny(num_classes=5)
    assert model.null_label == 5 and model.class_emb.num_embeddings == 6
    x, t, _ = inputs(model.config, batch=2)
    assert model(x, t, torch.full((2,), model.null_label)).shape == x.shape


def test_paper_preset_size_and_layout():
    config = UNetConfig.preset("paper", num_classes=25)
    with torch.device("meta"):  # no memory, no time: just the shapes
        model = UNet(config)
    assert 63e6 <= count_parameters(model) <= 70e6, count_parameters(model)
    assert (config.image_size == 128
            and {config.base_channels * m for m in config.channel_mult} == {128, 256, 512})
    assert [len(level.blocks) for level in model.encoder] == [2, 2, 2]
    assert [len(level.blocks) for level in model.decoder] == [3, 3, 3]
    # the lowest resolution
    assert config.attn_resolutions == (128 // 2 ** (len(config.channel_mult) - 1),)


def test_small_and_tiny_sizes():
    assert count_parameters(UNet(UNetConfig.preset("tiny"))) < 1e6
    assert 1e6 < count_parameters(UNet(UNetConfig.preset("small"))) < 10e6


@pytest.mark.parametrize("channels", [1, 5])
def test_any_number_of_input_channels(channels):
    # 24: GroupNorm groups must divide it
    model = randomise_(tiny(in_channels=channels, base_channels=24))
    x, t, y = inputs(model.config, batch=2)
    out = model(x, t, y)
    assert out.shape == x.shape and out.abs().mean() > 0


def test_channels_last_gives_the_same_output():
    model = randomise_(tiny()).eval()
    x, t, y = inputs(model.config)
    with torch.no_grad():
        ref = model(x, t, y)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last),
                                                          t, y)
    # other conv kernels, so other summation orders: float32 noise of 2e-6 of the output's scale
    # (measured), bounded at 10x that; near-zero outputs get no tighter a bound than large ones
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5 * ref.abs().max().item())


def test_bf16_autocast_stays_close_to_fp32():
    """The GPU training path runs the UNet under bf16 autocast (fp32 weights); CPU autocast runs
    the same ops in bf16, so the gap can be bounded here: within a few % of the output's scale."""
    model = randomise_(tiny()).eval()
    x, t, y = inputs(model.config)
    with torch.no_grad():
        ref = model(x, t, y)
        with torch.autocast("cpu", torch.bfloat16):
            out = model(x, t, y)
    assert out.dtype == torch.bfloat16
    err = (out.float() - ref).norm() / ref.norm()
    assert err < 0.03, f"bf16 autocast relative error {err:.4f}"


def test_fused_adamw_takes_the_same_step():
    """The GPU path's fused AdamW (one kernel) against the default implementation: the same
    parameters after three steps, to float rounding. Not compared: the conv biases that a group
    norm cancels, whose gradients are rounding noise (~1e-10) that Adam scales up to whole steps
    in either implementation."""
    a = randomise_(tiny())
    b = copy.deepcopy(a)
    x, t, y = inputs(a.config)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-3, weight_decay=0.01, fused=f)
            for m, f in ((a, None), (b, True))]
    for _ in range(3):
        for m, opt in zip((a, b), opts):
            opt.zero_grad()
            m(x, t, y).square().mean().backward()
            opt.step()
    compared = 0
    for p, q in zip(a.parameters(), b.parameters()):
        if p.grad.abs().max() > 1e-7:
            torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)
            compared += p.numel()
    assert compared > 0.9 * sum(p.numel() for p in a.parameters())


def test_bad_configs_and_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="paper, small, tiny"):
        UNetConfig.preset("huge")
    with pytest.raises(ValueError, match="base_chanels"):
        UNetConfig.preset("tiny", base_chanels=8)
    with pytest.raises(ValueError, match="image_size 30"):
        UNetConfig.preset("tiny", image_size=30)
    with pytest.raises(ValueError, match="attn_resolutions"):
        UNetConfig.preset("tiny", attn_resolutions=(5,))
    with pytest.raises(ValueError, match="'x0'.*'eps'.*'v'"):
        UNetConfig.preset("tiny", prediction="x0")
    model = tiny()
    with pytest.raises(ValueError, match="3 channels"):
        model(torch.zeros(1, 4, 32, 32), torch.zeros(1, dtype=torch.long),
              torch.zeros(1, dtype=torch.long))
