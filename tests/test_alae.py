"""StyleALAE: the latent reconstruction loss, which networks each step of Algorithm 1 trains and
with which Adam states (ALAE's code: two), its linear latent discriminator, translation by the
class-mean shift of the codes, and exact resume."""
import io

import pytest
import torch

import data
from baselines.alae import ALAE, ALAEConfig, latent_reconstruction_loss
from baselines.gan import adam_step


def test_latent_reconstruction_is_zero_exactly_when_the_encoder_inverts_the_generator():
    g = torch.Generator().manual_seed(0)
    A = torch.randn(6, 6, generator=g, dtype=torch.float64)  # F: z -> w
    B = torch.randn(20, 6, generator=g, dtype=torch.float64)  # G: w -> x, full column rank
    E = torch.linalg.pinv(B)  # E G = I on R^6
    z = torch.randn(32, 6, generator=g, dtype=torch.float64)
    F_, G_ = (lambda z: z @ A.T), (lambda w: w @ B.T)
    assert latent_reconstruction_loss(F_, G_, lambda x: x @ E.T, z).item() <= 1e-10
    E_off = E + 0.01 * torch.randn(E.shape, generator=g, dtype=torch.float64)
    assert latent_reconstruction_loss(F_, G_, lambda x: x @ E_off.T, z).item() > 1e-4


@pytest.fixture(scope="module")
def ds():
    return data.synthetic_dataset(n_per_class=6, image_size=16, seed=0,
                                  compounds=["latrunculin_b"]).select(
        ["DMSO", "latrunculin_b_1uM", "latrunculin_b_10uM"])


def tiny(seed=0, **overrides):
    torch.manual_seed(seed)
    return ALAE(ALAEConfig.preset("tiny", image_size=16, in_channels=3, num_classes=3, steps=4,
                                  **overrides))


@pytest.mark.parametrize("optimizers, step_iii", [(2, "EGF"), (3, "EG")])
def test_each_step_trains_its_own_networks_only(ds, optimizers, step_iii):
    """Steps I and II as Algorithm 1; step III trains E and G, and F too with ALAE's two Adam
    states (its code steps the (F, G) optimizer there, and F(z) feeds G; the target is fixed)."""
    net, x = tiny(optimizers=optimizers), ds.images[:8]
    z = lambda: torch.randn(8, net.config.z_dim)  # noqa: E731
    nets = {n: getattr(net, n) for n in "FGED"}
    for run, trained in ((lambda: net.d_step(x, z()), "DE"), (lambda: net.g_step(z()), "FG"),
                         (lambda: net.latent_step(z(), x), step_iii)):
        for m in nets.values():
            m.zero_grad(set_to_none=True)
        before = {n: [p.clone() for p in m.parameters()] for n, m in nets.items()}
        run()
        graded = {n for n, m in nets.items()
                  if any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())}
        moved = {n for n, m in nets.items()
                 if any(not torch.equal(a, p) for a, p in zip(before[n], m.parameters()))}
        assert graded == moved == set(trained), (trained, graded, moved)
        assert all(p.requires_grad for m in nets.values() for p in m.parameters())


@pytest.mark.parametrize("optimizers, steps_of_e", [(2, [2]), (3, [1, 1])])
def test_two_adam_states_carry_each_networks_moments_across_steps(ds, optimizers, steps_of_e):
    """ALAE's code: E's Adam moments are one state, updated in step I and again in step III;
    Algorithm 1 read as three optimizers gives E a state per step."""
    net = tiny(optimizers=optimizers)
    net.train_step((ds.images[:8], ds.labels[:8]), 0)
    e = next(net.E.parameters())
    counts = [int(getattr(net, o).state[e]["step"]) for o in net.optimizers
              if e in getattr(net, o).state]
    assert counts == steps_of_e


def test_latent_discriminator_is_affine_as_alaes(ds):
    """ALAE's MappingD has no activations: D(a) + D(b) = D(a + b) + D(0); an MLP's is not."""
    for linear in (True, False):
        D = tiny(d_linear=linear).D
        a, b = torch.randn(2, 4, D[0].weight.shape[1], generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            gap = (D(a) + D(b) - D(a + b) - D(torch.zeros_like(a))).abs().max().item()
        assert (gap < 1e-5) == linear, (linear, gap)


def test_pixel_term_is_off_as_published_and_reconstructs_when_on(ds):
    """pixel_weight 0: step III is exactly the latent reconstruction step of ALAE's code (the same
    weights and random stream after it, bitwise). 50: G(E(x)) comes much nearer the real x than
    the latent step alone brings it."""
    x = ds.images[:8]
    published, by_hand = tiny(), tiny()
    torch.manual_seed(1)
    published.latent_step(torch.randn(8, published.config.z_dim), x)
    rng = torch.get_rng_state()
    torch.manual_seed(1)
    adam_step(latent_reconstruction_loss(by_hand.F, by_hand.G, by_hand.E, torch.randn(
        8, by_hand.config.z_dim), through_f=True), by_hand.optimizer_d, by_hand.optimizer_g)
    assert torch.equal(rng, torch.get_rng_state())
    for a, b in zip([*published.E.parameters(), *published.F.parameters()],
                    [*by_hand.E.parameters(), *by_hand.F.parameters()]):
        assert torch.equal(a, b)
    pixel = {}
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        net = ALAE(ALAEConfig.preset("tiny", image_size=16, in_channels=3, num_classes=3,
                                     steps=4, pixel_weight=weight))
        pixel[weight] = [net.latent_step(torch.randn(8, net.config.z_dim), x)[1].item()
                         for _ in range(30)]
    assert pixel[50.0][-1] < 0.5 * pixel[0.0][-1]


def test_training_then_translation_is_the_decoded_class_mean_shift(ds):
    net = tiny()
    for step in range(3):
        values = net.train_step((ds.images[step * 6:step * 6 + 6], ds.labels[:6]), step)
        assert set(values) == set(ALAE.LOG)
        assert all(torch.isfinite(torch.tensor(v)) for v in values.values()), values
    net.refresh(ds)
    codes = net.encode(ds.images)
    assert torch.allclose(net.means[2], codes[ds.labels == 2].mean(0), atol=1e-5)
    x = ds.images[:4]
    assert torch.equal(net.translate(x, 0, 0), net.reconstruct(x, 0))
    f = net.encode(x)
    assert torch.equal(net.decode(f), net.decode(f))  # fixed noise: decode is a function
    out = net.translate_many(x, 0, [1, 2])
    for k, moved in zip((1, 2), out):
        assert torch.equal(moved, net.decode(f + (net.means[k] - net.means[0])))
    assert (out[0] - out[1]).abs().max() > 1e-4  # the classes' codes differ
    seen = []  # the codes that reach the decoder: each moved by exactly its mean difference
    net.decode = lambda w: seen.append(w) or w
    net.translate_many(x, 0, [1, 2])
    for k, w in zip((1, 2), seen):
        assert torch.equal(w, f + (net.means[k] - net.means[0]))


def test_resume_is_bitwise(ds):
    batch = (ds.images[:8], ds.labels[:8])

    def train(net, steps):
        for step in steps:
            torch.manual_seed(step)
            values = net.train_step(batch, step)
        return values

    net = tiny()
    train(net, range(2))
    buffer = io.BytesIO()
    torch.save(net.state_dict(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    a = train(net, range(2, 4))
    copy = tiny(seed=1)
    copy.load_state_dict(state)
    assert train(copy, range(2, 4)) == a
    for n in ALAE.NETS:
        for (k, p), q in zip(getattr(net, n).state_dict().items(),
                             getattr(copy, n).state_dict().values()):
            assert torch.equal(p, q), (n, k)


def test_config_has_alaes_defaults_and_checks_its_fields():
    c = ALAEConfig.preset("cpu")
    assert (c.r1_gamma, c.r1_every, c.lr, c.image_size, c.style_mixing) == (10.0, 1, 0.002, 32, 0.9)
    with pytest.raises(ValueError, match="--d-layers"):
        ALAEConfig.preset("tiny", d_layers=0)
