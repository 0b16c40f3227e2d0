"""The GAN baselines: their losses against hand computations, what they learn on trivially separable
classes, exact resume, and every method through train.py and phendiff.py translate as a user
would."""
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

import method as M
import phendiff
import train
from baselines.cyclegan import CycleGAN, CycleGANConfig
from baselines.gan import (ImagePool, adversarial_loss, generator_loss, gradient_penalty,
                           linear_decay)
from baselines.stargan import StarGAN, StarGANConfig
from tests.helpers import fails, same, write_images

ROOT = Path(__file__).resolve().parent.parent
DATA = ["--data", "synthetic", "--compounds", "latrunculin_b", "--n-per-class", "4",
        "--image-size", "16", "--preset", "tiny", "--batch-size", "4", "--sample-every", "0",
        "--log-every", "1"]
PAIRS = "DMSO:latrunculin_b_10uM,DMSO:latrunculin_b_1uM"


# -----------------------------------------------------------------------------
# losses


def test_gradient_penalty_of_a_linear_critic():
    """critic(x) = <w, x>: its gradient is w at every point, so the penalty is (|w| - 1)^2, and its
    gradient with respect to w is 2 (|w| - 1) w / |w| (create_graph: the penalty trains the
    critic)."""
    w = torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    real, fake = torch.randn(5, 3, 4, 4), torch.randn(5, 3, 4, 4)
    gp = gradient_penalty(lambda x: (x * w).flatten(1).sum(1), real, fake)
    norm = w.detach().norm()
    assert gp.item() == pytest.approx((norm.item() - 1) ** 2, rel=1e-5)
    gp.backward()
    torch.testing.assert_close(w.grad, 2 * (norm - 1) * w.detach() / norm)


def test_learning_rate_decays_linearly_after_decay_from():
    assert ([linear_decay(s, 10, 0.5) for s in (0, 4, 5, 6, 9, 10)]
            == pytest.approx([1, 1, 1, 0.8, 0.2, 0]))


def test_adversarial_losses_closed_forms():
    z = torch.tensor([0.0, 2.0])
    assert (adversarial_loss("lsgan", z, True).item()
            == pytest.approx(((0 - 1) ** 2 + (2 - 1) ** 2) / 2))
    assert adversarial_loss("lsgan", z, False).item() == pytest.approx((0 + 4) / 2)
    assert (adversarial_loss("wgan", z, True).item() == -1
            and adversarial_loss("wgan", z, False).item() == 1)
    expected = (np.log(2) + np.log1p(np.exp(-2))) / 2  # -log sigmoid(z), averaged
    assert adversarial_loss("ns", z, True).item() == pytest.approx(expected, rel=1e-6)
    z = torch.tensor([-2.0, 0.5, 3.0])  # hinge: D's margins of 1 on each side, G's raw score
    assert adversarial_loss("hinge", z, True).item() == pytest.approx((3 + 0.5 + 0) / 3)
    assert adversarial_loss("hinge", z, False).item() == pytest.approx((0 + 1.5 + 4) / 3)
    assert generator_loss("hinge", z).item() == pytest.approx(-1.5 / 3)
    assert generator_loss("ns", z).item() == adversarial_loss("ns", z, True).item()
    with pytest.raises(ValueError, match="unknown GAN loss 'hinged'"):
        adversarial_loss("hinged", z, True)


def test_image_pool_mixes_old_fakes_and_restores():
    torch.manual_seed(0)
    pool = ImagePool(4)
    first = torch.arange(4.0).view(4, 1, 1, 1)
    assert torch.equal(pool.query(first), first)  # filling: the new fakes pass through
    out = pool.query(first + 10)
    old, new = (out < 10).sum().item(), (out >= 10).sum().item()
    assert old + new == 4 and 0 < old < 4  # about half are older fakes
    copy = ImagePool(4)
    copy.load_state_dict(pool.state_dict())
    torch.manual_seed(1)
    a = pool.query(first + 20)
    torch.manual_seed(1)
    assert torch.equal(a, copy.query(first + 20))
    assert torch.equal(ImagePool(0).query(first), first)


class Scaled(nn.Module):
    """x * a with a = 1: the identity, with a parameter so that the loss has a gradient."""

    def __init__(self):
        super().__init__()
        self.a = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.a


def test_cyclegan_cycle_and_identity_losses_vanish_for_identity_generators():
    net = CycleGAN(CycleGANConfig.preset("tiny", image_size=16, steps=10))
    net.G_ab, net.G_ba, net.G_ab_ema, net.G_ba_ema = Scaled(), Scaled(), Scaled(), Scaled()
    x, y = torch.rand(6, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 0, 1, 1, 0])
    values = net.train_step((x, y), 0)
    assert values["cycle"] == 0 and values["identity"] == 0 and values["d_a"] > 0
    # A -> B halves: both cycles and the identity on B are off by |x| / 2
    net.G_ab.a.data.fill_(0.5)
    values = net.train_step((x, y), 1)
    a, b = x[y == 0].abs().mean().item(), x[y == 1].abs().mean().item()
    assert values["cycle"] == pytest.approx(0.5 * (a + b), rel=1e-5)
    assert values["identity"] == pytest.approx(0.5 * b, rel=1e-5)


def test_cyclegan_translates_with_the_generator_of_the_target_domain():
    net = CycleGAN(CycleGANConfig.preset("tiny", image_size=16))
    x = torch.rand(3, 3, 16, 16)
    with torch.no_grad():
        to_b, to_a = net.G_ab_ema(x), net.G_ba_ema(x)
        torch.testing.assert_close(net.translate(x, 0, 1), to_b)
        # G_ba on domain A: trained as identity
        torch.testing.assert_close(net.reconstruct(x, 0), to_a)
        mixed = net.translate(x, 0, torch.tensor([1, 0, 1]))
    torch.testing.assert_close(mixed, torch.stack([to_b[0], to_a[1], to_b[2]]))


def bright_and_dark(n=64, size=16, seed=0):
    """Class 0 bright (+0.5), class 1 dark (-0.5), each with a blob and noise, in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size * 1.0), torch.arange(size * 1.0), indexing="ij")
    images = []
    for level in (0.5, -0.5):
        c = torch.rand(n, 2, generator=g) * (size - 6) + 3
        blob = torch.exp(-((yy - c[:, 0, None, None]) ** 2 + (xx - c[:, 1, None, None]) ** 2) / 8)
        images.append(level + 0.3 * blob[:, None]
                      + 0.05 * torch.randn(n, 3, size, size, generator=g))
    return torch.cat(images).clamp(-1, 1), torch.arange(2).repeat_interleave(n)


def test_stargan_learns_to_translate_bright_to_dark():
    """300 steps (60 generator steps) of the paper's losses on two trivially separable classes."""
    torch.manual_seed(0)
    x, y = bright_and_dark()
    net = StarGAN(StarGANConfig.preset("tiny", image_size=16, num_classes=2, steps=300, lr=1e-3))
    g = torch.Generator().manual_seed(0)
    for step in range(300):
        idx = torch.randint(0, len(x), (16,), generator=g)
        net.train_step((x[idx], y[idx]), step)
    with torch.no_grad():
        bright, dark = x[:8], x[-8:]
        # past the midpoint
        assert net.translate(bright, 0, 1).mean() < 0 < net.reconstruct(bright, 0).mean()
        assert net.translate(dark, 1, 0).mean() > 0 > net.reconstruct(dark, 1).mean()

# -----------------------------------------------------------------------------
# through the command lines, as a user would


KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
import method, torch, train
torch.set_num_threads(1)  # as in the test process: same kernels, same bits
cls, calls = method.method_class({method!r}), [0]
step = cls.train_step
def step_then_die(self, *a, **k):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *a, **k)
cls.train_step = step_then_die
train.main({argv!r})
"""


@pytest.mark.parametrize("name", ["stargan", "cyclegan", "stylegan", "dcvae"])
def test_gan_resume_after_sigkill_is_bitwise_exact(tmp_path, name):
    argv = DATA + ["--method", name, "--steps", "7", "--ckpt-every", "3",
                   "--pairs", "DMSO:latrunculin_b_10uM"]
    whole = M.load_method(train.main(argv + ["--out", str(tmp_path / "a")]))[1]
    killed = argv + ["--out", str(tmp_path / "b")]
    proc = subprocess.run([sys.executable, "-c", KILLED.format(root=str(ROOT), method=name,
                                                                kill_at=5, argv=killed)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    resumed = M.load_method(train.main(["--out", str(tmp_path / "b"), "--resume"]))[1]
    assert resumed["step"] == whole["step"] == 7 and resumed["method"] == name
    assert same(whole["state"], resumed["state"])  # nets, EMA, optimizers and the image pools


def test_every_method_round_trips_through_translate(tmp_path):
    inp = write_images(tmp_path / "in", n=3, size=16)
    quick = {"phendiff": (["--ddim-steps", "3"], dict(ddim_steps=3)),
             "stylegan": (["--projection-steps", "3"], dict(projection_steps=3))}
    for part in ("dino", "ganformer"):  # the DSAE's encoder and decoder, trained apart
        train.main(DATA + ["--method", part, "--steps", "2", "--out", str(tmp_path / part)])
    parts = ["--encoder", str(tmp_path / "dino"), "--decoder", str(tmp_path / "ganformer")]
    for name in ("phendiff", "stargan", "cyclegan", "stylegan", "dsae", "vae", "bigan", "alae",
                 "dcvae"):
        flags, options = quick.get(name, ([], {}))
        run = tmp_path / name
        train.main(DATA + ["--method", name, "--steps", "2", "--pairs", PAIRS, "--out", str(run)]
                   + (parts if name == "dsae" else []))
        out = tmp_path / f"t_{name}"
        # run/last.pt: also for CycleGAN, whose pair runs are run/<A>__<B>/last.pt
        phendiff.main(["translate", "--ckpt", str(run / "last.pt"), "--input", str(inp),
                       "--source", "DMSO",
                       "--target", "latrunculin_b_10uM", "latrunculin_b_1uM", "--out", str(out)] +
                      flags)
        net, ckpt = M.load_method(run, **options)
        x = phendiff.read_inputs(sorted(inp.iterdir()), ckpt)
        for target in ("latrunculin_b_10uM", "latrunculin_b_1uM"):
            assert len(list((out / target).glob("*.png"))) == 3
            with torch.no_grad():
                expected = net.translate(x, ckpt["classes"].index("DMSO"),
                                         ckpt["classes"].index(target))
            # PhenDiff samples both targets in one batch there and one here: float32
            # summation-order noise, 2e-6 of the values' scale for a model that moves images
            # (test_phendiff); the others translate each target on its own, bit for bit
            expected = expected.numpy() * 0.5 + 0.5
            np.testing.assert_allclose(np.load(out / f"{target}.npy"), expected, rtol=0,
                                       atol=2e-5 * np.abs(expected).max())
        phendiff.main(["reconstruct", "--ckpt", str(run), "--input", str(inp), "--source", "DMSO",
                       "--out", str(tmp_path / f"r_{name}")] +
                      flags)
        assert len(list((tmp_path / f"r_{name}" / "DMSO").glob("*.png"))) == 3
    runs = sorted(p.name for p in (tmp_path / "cyclegan").iterdir())
    assert runs == [".lock", "DMSO__latrunculin_b_10uM", "DMSO__latrunculin_b_1uM"]


def test_bad_inputs_end_in_one_line(tmp_path):
    inp = write_images(tmp_path / "in", n=1, size=16)
    assert "unknown method 'diffgan'; choose one of phendiff" in fails(
        train.main, DATA + ["--method", "diffgan", "--out", str(tmp_path / "x")])
    assert "class 'taxol_1uM' is not in the data" in fails(
        train.main, DATA + ["--method", "cyclegan", "--pairs", "DMSO:taxol_1uM",
                            "--out", str(tmp_path / "c")])
    assert "--d-layers" in fails(train.main, DATA + ["--method", "stargan", "--d-layers", "5",
                                                     "--out", str(tmp_path / "s")])
    train.main(DATA + ["--method", "stargan", "--steps", "1", "--out", str(tmp_path / "sg")])
    base = ["translate", "--input", str(inp), "--source", "DMSO", "--out", str(tmp_path / "t")]
    msg = fails(phendiff.main, base + ["--ckpt", str(tmp_path / "sg"), "--target", "DMSO",
                                       "--ddim-steps", "5"])
    assert "stargan does not take ddim_steps" in msg
    train.main(DATA + ["--method", "cyclegan", "--steps", "1", "--pairs", "DMSO:latrunculin_b_10uM",
                       "--out", str(tmp_path / "cg")])
    msg = fails(phendiff.main, base + ["--ckpt", str(tmp_path / "cg"),
                                       "--target", "latrunculin_b_1uM"])
    assert "unknown class 'latrunculin_b_1uM'" in msg and "latrunculin_b_10uM" in msg
    msg = fails(train.main, ["--out", str(tmp_path / "sg"), "--resume", "--method", "cyclegan"])
    assert "is a stargan run, not cyclegan" in msg
    assert not (tmp_path / "t").exists()  # every check came before any output
    train.main(DATA + ["--method", "cyclegan", "--steps", "1", "--pairs", PAIRS,
                       "--out", str(tmp_path / "cg2")])
    msg = fails(phendiff.main, ["translate", "--input", str(inp), "--source", "latrunculin_b_10uM",
                                "--target", "latrunculin_b_1uM", "--ckpt", str(tmp_path / "cg2"),
                                "--out", str(tmp_path / "t2")])
    assert ("no CycleGAN pair model translates latrunculin_b_10uM -> latrunculin_b_1uM; the pairs: "
            "DMSO <-> latrunculin_b_10uM, DMSO <-> latrunculin_b_1uM") in msg
