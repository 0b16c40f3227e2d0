"""The second paper's autoencoders (VAE, BiGAN, DC-VAE): their losses against closed forms, BiGAN's
pairs, DC-VAE's reference schedule, translation by the class-mean shift of codes, and a VAE that
learns."""
import math

import pytest
import torch

import data
import train
from baselines.autoencoders import (VAE, BiGAN, class_means, joint_scores, kl_divergence,
                                    reparameterise)
from baselines.dcvae import DCVAE, centred, info_nce, multiscale_info_nce
from tests.helpers import fails

SHAPE = dict(image_size=16, in_channels=3, num_classes=3, steps=4)


def test_kl_divergence_matches_the_closed_form_and_monte_carlo():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(4, 5, generator=g), torch.randn(4, 5, generator=g)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(4, 5), torch.ones(4, 5))
    exact = torch.distributions.kl_divergence(q, p).sum(1)
    torch.testing.assert_close(kl_divergence(mu, logvar), exact)
    z = q.sample((200000,))  # E_q[log q(z) - log p(z)]
    mc = (q.log_prob(z) - p.log_prob(z)).sum(-1).mean(0)
    torch.testing.assert_close(kl_divergence(mu, logvar), mc, atol=0.05, rtol=0.01)
    assert kl_divergence(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max() == 0  # q = p


def test_reparameterisation_gradient_is_unbiased_on_a_quadratic():
    """d/dmu E[(z - a)^2] = 2 (mu - a) and d/dsigma = 2 sigma, for z ~ N(mu, sigma^2): the mean of
    the reparameterised gradients over many draws converges to both."""
    torch.manual_seed(0)
    a, n = 0.3, 400000
    mu = torch.full((n, 1), 1.5, requires_grad=True)
    logvar = torch.full((n, 1), math.log(0.8 ** 2), requires_grad=True)
    (reparameterise(mu, logvar) - a).square().sum().backward()
    assert abs(mu.grad.mean().item() - 2 * (1.5 - a)) < 0.01
    sigma_grad = logvar.grad.mean().item() * 2 / 0.8  # d/dsigma = d/dlogvar * dlogvar/dsigma
    assert abs(sigma_grad - 2 * 0.8) < 0.01


def test_bigan_discriminator_sees_image_code_pairs():
    """D(x, E(x)) is the real pair, D(G(z), z) the fake: swapping either half fails."""
    seen = []

    def D(x, z):
        seen.append((x, z))
        return torch.zeros(len(x), 1)

    x, code, fake, z = (torch.full((2, 1), float(v)) for v in (1, 2, 3, 4))
    joint_scores(D, x, code, fake, z)
    (rx, rz), (fx, fz) = seen
    assert torch.equal(rx, x) and torch.equal(rz, code)  # real: the image and its code
    assert torch.equal(fx, fake) and torch.equal(fz, z)  # fake: the sample and its noise


def test_info_nce_is_log_batch_at_uniform_similarity_and_zero_when_separated():
    q = torch.ones(8, 4)
    assert abs(info_nce(q, q, 0.1).item() - math.log(8)) < 1e-6
    eye = torch.eye(8)
    assert info_nce(eye, eye, 0.01).item() < 1e-6  # each query only like its own key
    assert info_nce(eye, eye.roll(1, 0), 0.01).item() > 50  # the wrong keys: large


def test_multiscale_info_nce_is_the_mean_over_scales():
    g = torch.Generator().manual_seed(0)
    q, k = ([torch.randn(8, 4, generator=g) for _ in range(2)] for _ in range(2))
    both = (info_nce(q[0], k[0], 0.1) + info_nce(q[1], k[1], 0.1)) / 2
    torch.testing.assert_close(multiscale_info_nce(q, k, 0.1, [None, None]), both)
    assert abs(info_nce(torch.ones(8, 4), torch.ones(8, 4), 0.1, torch.ones(24, 4)).item()
               - math.log(32)) < 1e-6  # the queue's negatives count as the batch's do


def test_info_nce_from_the_queue_alone_ignores_the_batchs_other_keys():
    """DC-VAE's code (as MoCo): the positive against the queue only, log(1 + queue) when all are
    alike, and the other rows of the batch's keys change nothing."""
    q, k, queue = torch.ones(8, 4), torch.ones(8, 4), torch.ones(24, 4)
    assert abs(info_nce(q, k, 0.1, queue, in_batch=False).item() - math.log(25)) < 1e-6
    g = torch.Generator().manual_seed(0)
    q, k, queue = (torch.randn(n, 4, generator=g) for n in (8, 8, 24))
    others = k.clone()
    others[1:] = torch.randn(7, 4, generator=g)  # rows 1.. are others' keys for query 0
    alone = [info_nce(q[:1], keys, 0.1, queue, in_batch=False) for keys in (k, others)]
    batch = [info_nce(q[:1], keys, 0.1, queue) for keys in (k, others)]
    assert torch.equal(alone[0], alone[1]) and not torch.equal(batch[0], batch[1])


def test_dcvae_queue_is_a_ring_of_the_latest_keys():
    net = DCVAE(DCVAE.Config.preset("tiny", **SHAPE, queue=5, contrastive_dim=2))
    for start in (0, 3):  # 3 keys per batch: the second batch wraps around
        keys = [torch.arange(start, start + 3.0)[:, None].repeat(1, 2) * s for s in (1, -1)]
        net.enqueue(keys)
    assert net.queue[0, :, 0].tolist() == [5, 1, 2, 3, 4]  # key 5 overwrote the oldest, key 0
    assert net.queue[1, :, 0].tolist() == [-5, -1, -2, -3, -4] and int(net.queue_at) == 1
    # more keys in one step than the ring holds (a large global batch): the last 5 of them
    net.enqueue([torch.arange(10, 17.0)[:, None].repeat(1, 2) * s for s in (1, -1)])
    assert net.queue[0, :, 0].tolist() == [16, 12, 13, 14, 15] and int(net.queue_at) == 1


@pytest.fixture(scope="module")
def ds():
    return data.synthetic_dataset(n_per_class=6, image_size=16, seed=0,
                                  compounds=["latrunculin_b"]).select(
        ["DMSO", "latrunculin_b_1uM", "latrunculin_b_10uM"])


@pytest.mark.parametrize("cls", [VAE, BiGAN, DCVAE])
def test_translation_moves_the_code_by_the_class_mean_difference(ds, cls):
    torch.manual_seed(0)
    net = cls(cls.Config.preset("tiny", **SHAPE))
    for step in range(3):  # DC-VAE: E and G learn at step 0, D alone at steps 1 and 2
        values = net.train_step((ds.images[:8], ds.labels[:8]), step)
        assert set(values) <= set(cls.LOG) and all(math.isfinite(v) for v in values.values())
        assert (set(values) == set(cls.LOG)) == (cls is not DCVAE or step == 0)
    net.refresh(ds)
    torch.testing.assert_close(net.means, class_means(net.encode, ds.images, ds.labels, 3))
    x = ds.images[:4]
    with torch.no_grad():
        moved = net.translate_many(x, 0, [0, 2])
        torch.testing.assert_close(moved[0], net.reconstruct(x, 0))
        shift = net.means[2] - net.means[0]
        torch.testing.assert_close(moved[1], net.decode(net.encode(x) + shift))
        assert not torch.allclose(moved[1], moved[0])


def test_dcvae_centred_embeddings_tell_real_images_apart_but_not_one_repeated_image():
    """--centre (a departure): at initialisation the real images' centred embeddings already pick
    each image out of the batch at both scales (uncentred, all pointed one way: InfoNCE =
    log(batch), and training with in-batch negatives sat there for 1,200 steps). One image
    repeated with faint noise, centred by the real images' mean as the reconstructions are,
    cannot: InfoNCE stays near log(batch) (centred by its own mean, the noise alone told the
    copies apart, and the decoder learned to do just that)."""
    torch.manual_seed(0)
    images = data.synthetic_dataset(n_per_class=16, image_size=32, seed=0,
                                    compounds=["latrunculin_b"]).images[:64]
    net = DCVAE(DCVAE.Config.preset("cpu", **{**SHAPE, "image_size": 32}))
    copies = images[:1] + 0.003 * torch.randn_like(images)
    with torch.no_grad():
        real, same = net.D(images)[1], net.D(copies)[1]
    centres = [e.mean(0) for e in real]
    assert len(real) == 2
    for r, s, own in zip(centred(real, centres), centred(same, centres), centred(same, [
            e.mean(0) for e in same])):
        t = net.config.temperature
        assert info_nce(r, r, t) < 0.5 * math.log(64)
        assert info_nce(s, r, t) > 0.9 * math.log(64)
        assert info_nce(own, own, t) < 0.5 * math.log(64)  # the failure the real centre avoids


def train_beside_a_blind_discriminator(net, x, y, logged):
    """20 steps: (whether E or G moved, the logged reconstruction error at each step)."""
    nets = lambda: (*net.E.parameters(), *net.G.parameters())  # noqa: E731
    before = [p.clone() for p in nets()]
    errors = [net.train_step((x, y), step)[logged] for step in range(20)]
    return any(not torch.equal(p, q) for p, q in zip(before, nets())), errors


def test_bigan_cycle_term_reaches_encoder_and_generator(ds):
    """With a blind D (constant output, frozen) BiGAN's adversarial loss gives E and G no gradient,
    so only ALICE's cycle term can move them: with cycle_weight 0 they stay put, with 10 the
    reconstruction error falls step after step."""
    for weight in (0.0, 10.0):
        torch.manual_seed(0)
        net = BiGAN(BiGAN.Config.preset("tiny", **SHAPE, cycle_weight=weight, lr=1e-3), ema=False)
        net.D.joint[-1].weight.data.zero_()
        net.optimizer_d.param_groups[0]["lr"] = 0.0
        moved, cycle = train_beside_a_blind_discriminator(net, ds.images[:8], ds.labels[:8],
                                                          "cycle")
        assert moved == (weight > 0)
        if weight:
            assert cycle[-1] < 0.8 * cycle[0]


class BlindDiscriminator(torch.nn.Module):
    """A DC-VAE discriminator that outputs zeros for every image (logit and both embeddings): no
    adversarial or contrastive gradient reaches E and G through it."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x):
        h = self.w * x.flatten(1)[:, :2]
        return h[:, :1], [h, h]


def test_dcvae_pixel_term_reaches_encoder_and_generator(ds):
    """With a blind D and no KL only the pixel term can move E and G: with pixel_weight 0 (as
    published) they stay put, with 50 the reconstruction error falls step after step."""
    for weight in (0.0, 50.0):
        torch.manual_seed(0)
        net = DCVAE(DCVAE.Config.preset("tiny", **SHAPE, pixel_weight=weight, kl_weight=0.0,
                                        queue=4, contrastive_dim=2, lr=1e-3, n_critic=1),
                    ema=False)
        net.D, net.D_key = BlindDiscriminator(), BlindDiscriminator()
        net.optimizer_d = torch.optim.SGD(net.D.parameters(), lr=0.0)
        moved, mse = train_beside_a_blind_discriminator(net, ds.images[:8], ds.labels[:8], "mse")
        assert moved == (weight > 0)
        if weight:
            assert mse[-1] < 0.8 * mse[0]


BEFORE_28 = dict(gan_loss="ns", n_critic=1, beta1=0.5, beta2=0.999, in_batch_negatives=True,
                 centre=True, queue=20, kl_weight=1e-4, sample_factor=1)


@pytest.mark.parametrize("flags, learns", [(dict(queue=20, n_critic=3), [0, 3]),
                                           (BEFORE_28, [0, 1, 2, 3, 4])])
def test_dcvae_reference_schedule(ds, flags, learns):
    """DC-VAE's code: D's adversarial step at every step moves D (its logit) alone; at every
    n_critic-th step, from the first on, E and G learn too, D's embeddings learn InfoNCE with
    them (the contrastive step leaves the logit alone), D_key moves, the queue takes the keys and
    the EMAs move. The flags of the recipe before #28 (n_critic 1): all of it at every step."""
    torch.manual_seed(0)
    net = DCVAE(DCVAE.Config.preset("tiny", **SHAPE, **flags))
    x, y = ds.images[:8], ds.labels[:8]
    nets = {"E": net.E, "G": net.G, "logit": net.D.logit, "embed": net.D.embed,
            "D_key": net.D_key, "G_ema": net.G_ema}

    def moved(run):
        before = {n: [p.clone() for p in m.parameters()] for n, m in nets.items()}
        at = int(net.queue_at)
        run()
        return {n for n, m in nets.items()
                if any(not torch.equal(p, q) for p, q in zip(before[n], m.parameters()))} | (
            {"queue"} if int(net.queue_at) != at else set())

    steps = [moved(lambda: net.train_step((x, y), step)) for step in range(5)]
    learner = {"E", "G", "logit", "embed", "D_key", "G_ema", "queue"}
    assert steps == [learner if step in learns else {"logit"} for step in range(5)]
    assert int(net.queue_at) == len(learns) * len(x) % 20  # the learning steps' keys
    assert moved(lambda: net.contrastive_step(x)) == {"E", "G", "embed", "D_key", "queue"}


def test_vae_encode_is_the_mean_of_the_posterior(ds):
    torch.manual_seed(0)
    net = VAE(VAE.Config.preset("tiny", **SHAPE))
    x = ds.images[:4]
    torch.testing.assert_close(net.encode(x), net.E_ema(x)[:, :8])  # tiny latent_dim 8
    assert torch.equal(net.encode(x), net.encode(x))  # no sampling in encode


def test_vae_learns_to_reconstruct_a_batch(ds):
    """The evidence bound falls and the EMA-free reconstruction beats the batch's mean image."""
    torch.manual_seed(0)
    net = VAE(VAE.Config.preset("tiny", **SHAPE, lr=2e-3), ema=False)
    x = ds.images[:8]
    trivial = (x - x.mean(0)).square().mean()
    first = net.train_step((x, ds.labels[:8]), 0)["mse"]
    for step in range(1, 150):
        last = net.train_step((x, ds.labels[:8]), step)["mse"]
    assert last < 0.5 * first
    net.G.eval()
    with torch.no_grad():
        assert (net.reconstruct(x, 0) - x).square().mean() < trivial


def test_bad_settings_end_in_one_line(tmp_path):
    run = ["--data", "synthetic", "--compounds", "latrunculin_b", "--n-per-class", "2",
           "--preset", "tiny", "--steps", "1", "--out", str(tmp_path / "r")]
    assert "--latent-dim must be a finite number > 0" in fails(
        train.main, run + ["--method", "vae", "--image-size", "16", "--latent-dim", "0"])
    assert "power-of-two image size" in fails(
        train.main, run + ["--method", "bigan", "--image-size", "24"])
    assert "--temperature: must be a finite number, got nan" in fails(
        train.main, run + ["--method", "dcvae", "--image-size", "16", "--temperature", "nan"])
    assert "--pixel-weight must be a finite number >= 0" in fails(
        train.main, run + ["--method", "dcvae", "--image-size", "16", "--pixel-weight", "-1"])
    assert "--queue 0 leaves InfoNCE without negatives" in fails(
        train.main, run + ["--method", "dcvae", "--image-size", "16", "--queue", "0"])
    assert "dcvae --centre needs 2 or more images per step" in fails(
        train.main, run + ["--method", "dcvae", "--image-size", "16", "--centre",
                           "--batch-size", "1", "--out", str(tmp_path / "c")])
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())
