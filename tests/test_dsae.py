"""DSAE: the feature-cycle loss, tau's least-squares start, assembly from trained parts, translation
by the class-mean shift, exact resume, and one-line errors for parts that do not fit."""
import pytest
import torch

import data
import method as M
import train
from baselines import stylegan
from baselines.autoencoders import class_means
from baselines.dino import DINO, DINOConfig
from baselines.dsae import DSAE, DSAEConfig, feature_cycle_loss, ridge_fit
from baselines.ganformer import GANformer, GANformerConfig
from tests.helpers import fails


def test_feature_cycle_loss_is_zero_exactly_when_the_decode_returns_the_image():
    E = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(6, 3, 4, 4)
    exact = lambda f: x  # noqa: E731 - G(tau(E(x))) = x
    loss, decoded = feature_cycle_loss(E, x, exact)
    assert loss.item() == 0 and torch.equal(decoded, x)
    off = lambda f: x + 0.1 * torch.randn_like(x)  # noqa: E731
    assert feature_cycle_loss(E, x, off)[0].item() > 1e-3


def test_feature_cycle_gradient_reaches_the_decoder_not_the_encoder():
    E = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 4)).requires_grad_(False)
    tau = torch.nn.Linear(4, 16)
    loss, _ = feature_cycle_loss(E, torch.randn(3, 1, 4, 4), lambda f: tau(f).view(3, 1, 4, 4))
    loss.backward()
    assert tau.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in E.parameters())


def test_ridge_fit_recovers_a_planted_linear_map():
    g = torch.Generator().manual_seed(0)
    f = torch.randn(500, 6, generator=g)
    W, b = torch.randn(4, 6, generator=g), torch.randn(4, generator=g)
    W_fit, b_fit = ridge_fit(f, f @ W.T + b, ridge=1e-9)
    assert torch.allclose(W_fit, W, atol=1e-4) and torch.allclose(b_fit, b, atol=1e-4)


@pytest.fixture(scope="module")
def parts(tmp_path_factory):
    """Tiny DINO and GANformer checkpoints (a few steps each) on a 3-class synthetic set."""
    folder = tmp_path_factory.mktemp("parts")
    ds = data.synthetic_dataset(n_per_class=6, image_size=16, seed=0,
                                compounds=["latrunculin_b"]).select(
        ["DMSO", "latrunculin_b_1uM", "latrunculin_b_10uM"])
    shape = dict(image_size=16, in_channels=3, num_classes=3, steps=4)
    torch.manual_seed(0)
    for name, cls, config in (("dino", DINO, DINOConfig.preset("tiny", **shape)),
                              ("gan", GANformer, GANformerConfig.preset("tiny", **shape))):
        net = cls(config)
        for step in range(2):
            net.train_step((ds.images[:8], ds.labels[:8]), step)
        M.save_checkpoint(M.make_checkpoint(net, ds, 2, {}), folder / f"{name}.pt")
    return ds, folder / "dino.pt", folder / "gan.pt"


def assembled(parts, **kw):
    ds, enc, dec = parts
    config = DSAEConfig.preset("tiny", image_size=16, num_classes=3, steps=4, encoder=str(enc),
                               decoder=str(dec), **{"tau_samples": 64, **kw})
    torch.manual_seed(0)
    net = DSAE(config)
    net.start(ds)
    return net


def test_start_loads_the_parts_and_tau_inverts_the_generator_better_than_chance(parts):
    ds, enc, dec = parts
    net = assembled(parts, tau_samples=512)
    dino = M.build(M.load_checkpoint(enc))
    x = ds.images[:4]
    assert torch.equal(net.encode(x), dino.encode(x))  # the DINO teacher's backbone
    gan = M.load_checkpoint(dec)["state"]["G_ema"]
    assert all(torch.equal(v, net.G_ema.state_dict()[k]) for k, v in gan.items())
    # tau(E(G(z))) ~ z: on new z the least-squares start explains part of z's variance (a random
    # map explains none; the tiny nets' 32 features can explain at most 32 of z's 80 dimensions)
    z = torch.randn(256, net.tau.out_features, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        back = net.tau(net.E(net.G_ema(z)))
    assert ((back - z).square().mean() / z.var()).item() < 0.97
    # the class means are those of the encoder's features on the training images
    f = net.encode(ds.images)
    assert torch.allclose(net.means[1], f[ds.labels == 1].mean(0), atol=1e-5)


def test_translation_is_the_decoded_class_mean_shift(parts):
    ds, _, _ = parts
    net = assembled(parts)
    x, y = ds.images[:3], ds.labels[:3]
    out = net.translate_many(x, y, [y, 2])
    assert torch.equal(out[0], net.reconstruct(x, y))
    assert torch.equal(out[0], net.decode(net.encode(x)))  # fixed noise: the same every call
    expected = net.decode(net.encode(x) + (net.means[2] - net.means[y]))
    assert torch.allclose(out[1], expected, atol=1e-6)


def test_fine_tuning_lowers_the_feature_cycle_loss_and_resumes_bitwise(parts):
    ds, _, _ = parts
    net = assembled(parts, lr=0.005, adv_weight=0.0)
    batch = (ds.images[:8], ds.labels[:8])
    with torch.no_grad():
        before = feature_cycle_loss(net.E, batch[0], net.decode)[0].item()
    for step in range(6):
        torch.manual_seed(step)
        values = net.train_step(batch, step)
    assert set(values) == set(DSAE.LOG)
    copy = DSAE(net.config)
    copy.load_state_dict(net.state_dict())
    torch.manual_seed(99)
    a = net.train_step(batch, 6)
    torch.manual_seed(99)
    assert copy.train_step(batch, 6) == a
    with torch.no_grad():
        after = feature_cycle_loss(copy.E, batch[0], copy.decode)[0].item()
    assert after < before


def test_decoding_pairs_the_generators_ema_with_taus(parts):
    """The paper decodes with EMA weights: after fine-tuning, decode is G_ema(tau_ema(f)), tau's
    EMA apart from tau; a checkpoint from before tau had an EMA decodes with its raw tau."""
    ds, _, _ = parts
    net = assembled(parts, lr=0.005)
    for step in range(3):
        net.train_step((ds.images[:8], ds.labels[:8]), step)
    f = net.encode(ds.images[:3])
    noise = stylegan.fixed_noise(net.G_ema.synthesis, 3, "cpu")
    assert not torch.equal(net.tau_ema.weight, net.tau.weight)
    with torch.no_grad():
        torch.testing.assert_close(net.decode(f), net.G_ema(net.tau_ema(f), noise))
    before = DSAE(net.config)
    before.load_state_dict({k: v for k, v in net.state_dict().items() if k != "tau_ema"})
    assert torch.equal(before.tau_ema.weight, net.tau.weight)


def test_parts_that_do_not_fit_are_one_line(parts, tmp_path):
    ds, enc, dec = parts
    run = ["--data", "synthetic", "--compounds", "latrunculin_b", "--n-per-class", "2",
           "--preset", "tiny", "--steps", "1", "--image-size", "16", "--method", "dsae"]
    assert "needs --encoder" in fails(train.main, run + ["--out", str(tmp_path / "a")])
    swapped = ["--encoder", str(dec), "--decoder", str(enc), "--out", str(tmp_path / "b")]
    assert "is a ganformer checkpoint" in fails(train.main, run + swapped)
    sizes = run[:-3] + ["32", "--method", "dsae", "--encoder", str(enc), "--decoder", str(dec),
                        "--out", str(tmp_path / "c")]
    assert "must agree" in fails(train.main, sizes)
    net = assembled(parts)
    with pytest.raises(ValueError, match="no training images"):
        class_means(net.encode, ds.images[:2], torch.zeros(2, dtype=torch.long), 3)
    with pytest.raises(ValueError, match="does not translate"):
        M.load_translator(enc)
