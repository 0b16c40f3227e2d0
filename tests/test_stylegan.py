"""The conditional StyleGAN2 and PhenEx projection: modulation statistics, equalised learning rate,
StyleGAN2-ADA's class mapping in D and adaptive augmentation, projection of the generator's own
images against real ones, W+ against W, the class-mean shift."""
import math

import pytest
import torch
import torch.nn.functional as F

import phendiff
from baselines import phenex
from baselines.stylegan import (Discriminator, EqualLinear, ModulatedConv2d, StyleGAN,
                                StyleGANConfig, augment)
from tests.helpers import fails


def test_demodulation_keeps_unit_variance():
    """For unit-variance input, each output channel's variance is the squared norm of its
    demodulated kernel, 1, whatever the style; without demodulation it follows the style."""
    torch.manual_seed(0)
    conv = ModulatedConv2d(64, 32, 3, w_dim=16)
    x, w = torch.randn(8, 64, 32, 32), 3 * torch.randn(8, 16)
    with torch.no_grad():
        out = conv(x, w)[..., 1:-1, 1:-1]  # away from the zero padding
    assert out.var((0, 2, 3)).mean().item() == pytest.approx(1.0, abs=0.05)
    conv.demodulate = False
    with torch.no_grad():
        assert abs(conv(x, w)[..., 1:-1, 1:-1].var().item() - 1.0) > 0.5


def test_equalised_learning_rate_scales_at_run_time():
    layer = EqualLinear(50, 7, bias_init=1.0, lr_mul=0.01)
    x = torch.randn(3, 50)
    expected = F.linear(x, layer.weight * 0.01 / math.sqrt(50), layer.bias * 0.01)
    torch.testing.assert_close(layer(x), expected)
    assert layer.weight.std().item() == pytest.approx(100, rel=0.2)  # stored as N(0, 1 / lr_mul)
    torch.testing.assert_close(layer.bias * 0.01, torch.ones(7))


def test_class_mapping_normalises_the_embedding_as_stylegan2_ada():
    """D's class vector goes through an embedding normalised to unit second moment (StyleGAN2-ADA's
    mapping), so scaling the embedding changes nothing; D's one linear embedding (before #28)
    scales with it."""
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0])
    for layers in (8, 0):
        torch.manual_seed(0)
        D = Discriminator(StyleGANConfig.preset("tiny", image_size=16, num_classes=3,
                                                d_mapping_layers=layers))
        with torch.no_grad():
            before = D(x, y)
            embed = D.cmap[0] if layers else D.cmap
            embed.weight.mul_(3), embed.bias.mul_(3)
            assert torch.allclose(D(x, y), before, atol=1e-5) == bool(layers)


def test_ada_moves_p_towards_the_target_by_the_images_seen():
    """StyleGAN2-ADA's rule: every 4 steps, p += sign(r_t - 0.6) x images / (ada_kimg x 1000),
    r_t the mean sign of D on real images over those steps; p never below 0; presets start at 0."""
    net = StyleGAN(StyleGANConfig.preset("tiny", image_size=16, num_classes=3, ada_kimg=0.1))
    assert net.augment_p == 0.0 and net.ada == (0.6, 0.1)
    sure, unsure = torch.ones(5, 1), torch.tensor([[1.0], [1], [1], [-1], [-1]])  # r_t 1, 0.2
    for step in range(3):  # nothing moves between adjustments
        net.adapt_augment(sure, step)
        assert net.augment_p == 0.0
    net.adapt_augment(sure, 3)
    assert net.augment_p == pytest.approx(20 / 100)  # 4 steps of 5 images, 100 images per unit
    for step in range(4, 12):  # r_t 0.2 < 0.6: down by 0.2, then held at 0
        net.adapt_augment(unsure, step)
    assert net.augment_p == 0.0
    fixed = StyleGAN(StyleGANConfig.preset("tiny", image_size=16, num_classes=3, ada_target=0))
    fixed.adapt_augment(sure, 3)
    assert fixed.augment_p == fixed.config.augment == 0.5


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    config = StyleGANConfig.preset("tiny", image_size=16, num_classes=3, z_dim=16, channel_base=256,
                                   channel_max=32)
    return StyleGAN(config, w_avg_samples=500)


def test_projection_finds_the_generators_own_images_and_w_plus_fits_better(net):
    """An image G made from a known w projects far better than a real one (which G, untrained
    here, cannot make), and on real images W+ (a w per layer) fits better than W."""
    G = net.G_ema
    means, w_std = net.class_means("cpu")
    y = torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        # half a standard deviation (per dimension, w_std / 4 for 16) from the class means
        own = G.synthesis(means[y][:, None].expand(-1, G.num_ws, -1)
                          + 0.5 * w_std / 4 * torch.randn(4, 1, 16))
    real = torch.rand(4, 3, 16, 16) * 2 - 1

    def psnr(x, space):
        ws, noise = phenex.project(G, x, means[y], w_std, net.D, space=space, steps=100)
        with torch.no_grad():
            mse = ((G.synthesis(ws, noise) - x) / 2).square().mean((1, 2, 3))
        return (-10 * torch.log10(mse)).mean().item()

    real_w = psnr(real, "w")
    assert psnr(own, "w") > real_w + 10
    assert psnr(real, "w+") > real_w


def test_class_mean_shift_to_the_source_is_the_reconstruction(net):
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    net.options["projection_steps"] = 5
    with torch.no_grad():
        torch.testing.assert_close(net.translate(x, 1, 1), net.reconstruct(x, 1))
        ws = torch.randn(2, net.G.num_ws, 16)
        means = net.class_means("cpu")[0]
        moved = phenex.shift(ws, means, torch.tensor([0, 1]), torch.tensor([2, 2]))
        torch.testing.assert_close(moved[0] - ws[0], (means[2] - means[0]).expand_as(ws[0]))


def test_truncation_pulls_samples_to_the_class_mean(net):
    y = torch.tensor([1, 1, 1, 1])
    full, none = net.sample(y, seed=3), net.sample(y, seed=3, psi=0.0)
    assert full.std(0).mean() > 10 * none.std(0).mean()  # psi 0: every sample is the mean w's


def test_training_step_and_augmentation(net):
    x, y = torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0])
    values = net.train_step((x, y), 0)  # step 0: with R1
    assert set(values) == {"g_adv", "d_adv", "r1", "augment_p", "lr"} and values["r1"] > 0
    assert all(math.isfinite(v) for v in values.values())
    assert torch.equal(augment(x, 0.0), x)
    moved = augment(x, 1.0, torch.Generator().manual_seed(0))
    assert moved.shape == x.shape and not torch.equal(moved, x)


def test_projection_options_are_checked(net, tmp_path):
    with pytest.raises(ValueError, match="--projection 'z': choose w or w"):
        StyleGAN(net.config, projection="z")
    with pytest.raises(ValueError, match="phendiff does not take projection"):
        phendiff.PhenDiff(phendiff.PhenDiffConfig.preset("tiny"), projection="w")
    assert "argument --projection: invalid choice" in fails(
        phendiff.main, ["translate", "--ckpt", "x", "--input", "y", "--source", "DMSO",
                        "--target", "DMSO", "--projection", "z"])
