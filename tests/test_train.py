"""train.py end to end on the CPU: exact resume after SIGKILL, learning, faults (several processes:
test_torchrun.py)."""
import argparse
import csv
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

import data
import ddim
import method as M
import train
from tests.helpers import fails
from method import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# a ~20k-parameter UNet on 16x16 images: every run below takes seconds
SMALL = ["--preset", "tiny", "--image-size", "16", "--base-channels", "8", "--channel-mult", "1,2",
         "--num-res-blocks", "1", "--attn-res", "8", "--sample-every", "0", "--log-every", "1"]
SYNTH = ["--data", "synthetic", "--compounds", "latrunculin_b", "--n-per-class", "4",
         "--batch-size", "4"]


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small run fastest on one thread; two threads crawl when other jobs share the
    cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def weights_equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


KILLED = """
import os, signal, sys
sys.path.insert(0, {root!r})
import ddim, torch, train
torch.set_num_threads(1)  # as in the test process: same kernels, same bits
calls, loss = [0], ddim.loss
def loss_then_die(*a, **k):
    calls[0] += 1
    if calls[0] == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
    return loss(*a, **k)
ddim.loss = loss_then_die
train.main({argv!r})
"""


def test_sigkill_and_resume_is_bitwise_exact(tmp_path):
    # grad accumulation, label dropout, model dropout and augmentation all draw random numbers
    argv = SMALL + SYNTH + ["--steps", "8", "--ckpt-every", "3", "--keep", "1", "--grad-accum", "2",
                            "--p-uncond", "0.3", "--dropout", "0.1", "--sample-every", "4",
                            "--ddim-steps", "2"]
    whole = load_checkpoint(train.main(argv + ["--out", str(tmp_path / "a")]))

    killed = argv + ["--out", str(tmp_path / "b")]  # SIGKILL inside step 7 (13th of 16 micro-steps)
    proc = subprocess.run([sys.executable, "-c", KILLED.format(root=ROOT, kill_at=13, argv=killed)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert load_checkpoint(tmp_path / "b" / "last.pt")["step"] == 6
    assert "not empty" in fails(train.main, killed)
    resumed = load_checkpoint(train.main(["--out", str(tmp_path / "b"), "--resume"]))

    assert resumed["step"] == whole["step"] == 8
    for key in ("model", "ema"):
        assert weights_equal(whole["state"][key], resumed["state"][key]), key
    opt_a, opt_b = whole["state"]["optimizer"], resumed["state"]["optimizer"]
    assert opt_a["param_groups"] == opt_b["param_groups"]
    assert all(weights_equal(opt_a["state"][i], opt_b["state"][i]) for i in opt_a["state"])
    # --keep 1
    assert sorted(p.name for p in (tmp_path / "b").glob("ckpt_*.pt")) == ["ckpt_0000008.pt"]
    with open(tmp_path / "b" / "log.csv") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == list(range(1, 9))  # no rows twice


def two_colour_classes(path, n=64, size=16):
    """Class 'red' is red-dominant, class 'blue' blue-dominant, each with a random blob and
    noise."""
    g = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    images = []
    for i in range(2 * n):
        cy, cx = g.uniform(3, size - 3, 2)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 8)
        colour = np.array([0.8, 0.3, 0.2] if i < n else [0.2, 0.3, 0.8])[:, None, None]
        images.append(np.clip(colour * (0.5 + 0.5 * blob) + g.normal(0, 0.03, (3, size, size)),
                              0, 1))
    np.savez(path, images=np.stack(images).transpose(0, 2, 3, 1).astype(np.float32),  # (N, H, W, C)
             labels=np.repeat([0, 1], n),
             classes=np.array(["red", "blue"]))


def test_fits_two_classes_and_generates_by_class(tmp_path):
    two_colour_classes(tmp_path / "two.npz")
    path = train.main(SMALL + ["--data", str(tmp_path / "two.npz"), "--steps", "200",
                               "--batch-size", "16", "--warmup", "20", "--log-every", "10",
                               "--sample-every", "200", "--ddim-steps", "10",
                               "--out", str(tmp_path / "r")])
    with open(tmp_path / "r" / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert float(rows[-1]["loss"]) < 0.5 * float(rows[0]["loss"])
    assert np.isfinite(float(rows[-1]["recon_psnr"]))
    assert ((tmp_path / "r" / "samples_0000200.png").exists()
            and (tmp_path / "r" / "loss.png").exists())

    # Generate each class from the latents of the other class's images (PhenDiff's use of the
    # model): after 200 steps samples from pure noise are not yet faithful, class-conditional
    # generation is.
    method, ckpt = M.load_method(path)
    model, alpha = method.ema, ddim.make_schedule("linear")
    images = data.load_dataset(str(tmp_path / "two.npz"), image_size=16)
    for source, target in ((0, 1), (1, 0)):
        x = images.images[images.labels == source][:8]
        z = ddim.invert(model, x, torch.full((8,), source), alpha, 20)
        moved = (ddim.sample(model, z, torch.full((8,), target), alpha, 20).mean((0, 2, 3))
                 - x.mean((0, 2, 3)))
        red_to_blue = ckpt["classes"][target] == "blue"
        assert (moved[2] - moved[0] > 0.5) if red_to_blue else (moved[0] - moved[2] > 0.5), moved


def test_per_class_batches_hold_every_class_and_depend_on_the_step_alone():
    """CycleGAN's draw: --batch-size images of each class on each rank, no image on two ranks in
    one step, and step s gives the same batch whatever came before (resume needs no loader
    state); a class too small for it is refused by name."""
    labels = torch.tensor([0] * 6 + [1] * 10)
    ds = data.ImageDataset(torch.arange(16.0).view(16, 1, 1, 1), labels, ["A", "B"], ["c"],
                           {"low": [0.0], "high": [1.0]})
    args = argparse.Namespace(seed=0, batch_size=2, no_augment=True)
    ranks = [train.Batches(ds, args, r, 2, torch.device("cpu"), per_class=True) for r in (0, 1)]
    seen = set()
    for step in range(6):  # class A: one batch per epoch and rank, B: two; each its own epochs
        (x0, y0), (x1, y1) = (get(step) for get in ranks)
        assert y0.tolist() == y1.tolist() == [0, 0, 1, 1]
        assert not set(x0.flatten().tolist()) & set(x1.flatten().tolist())
        seen |= set(x0.flatten().tolist()) | set(x1.flatten().tolist())
    assert seen == set(range(16))  # reshuffled every epoch: no image of either class left out
    fresh = train.Batches(ds, args, 1, 2, torch.device("cpu"), per_class=True)
    assert torch.equal(fresh(5)[0], ranks[1](5)[0])
    args.batch_size = 4
    with pytest.raises(ValueError, match="class A has 6 images, which do not fill one batch of "
                                         "4 x 2 processes: lower --batch-size"):
        train.Batches(ds, args, 0, 2, torch.device("cpu"), per_class=True)


def test_logged_values_follow_the_log_and_foreign_names_are_a_bug(tmp_path):
    values, stopping = train.reduce_values({"b": 2.0}, ("a", "b"), 0, 1, "cpu", tmp_path, 1)
    assert values == {"b": 2.0} and not stopping  # "a" not returned at this step: no value
    with pytest.raises(AssertionError, match=r"returned \['c'\], which are not in the method's "
                                             "LOG"):
        train.reduce_values({"a": 1.0, "c": 3.0}, ("a", "b"), 0, 1, "cpu", tmp_path, 1)


def test_refuses_reused_out_and_bad_arguments(tmp_path):
    (tmp_path / "notes.txt").write_text("an earlier run")
    base = SMALL + SYNTH + ["--out"]
    assert "--resume" in fails(train.main, base + [str(tmp_path)])
    assert "no checkpoint" in fails(train.main, base + [str(tmp_path), "--resume"])
    new = str(tmp_path / "new")
    assert "argument --steps: must be at least 1, got 0" in fails(train.main,
                                                                  base + [new, "--steps", "0"])
    assert "argument --lr: must be a finite number, got nan" in fails(train.main,
                                                                      base + [new, "--lr", "nan"])
    assert "--lr must be a finite number > 0, got -1" in fails(train.main,
                                                               base + [new, "--lr", "-1"])
    assert "unknown preset 'huge'" in fails(train.main, base + [new, "--preset", "huge"])
    assert not (tmp_path / "new").exists()


def test_nan_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    calls, loss = [0], ddim.loss

    def nan_at_fifth(*a, **k):
        calls[0] += 1
        return loss(*a, **k) * (float("nan") if calls[0] == 5 else 1.0)

    monkeypatch.setattr(ddim, "loss", nan_at_fifth)
    msg = fails(train.main, SMALL + SYNTH + ["--steps", "10", "--ckpt-every", "2",
                                             "--out", str(tmp_path)])
    assert re.search("non-finite values .* at step 5: stopped without saving.*last.pt", msg), msg
    ckpt = torch.load(tmp_path / "last.pt", weights_only=True)
    assert ckpt["step"] == 4 and not (tmp_path / "ckpt_0000005.pt").exists()
    assert all(torch.isfinite(v).all() for v in ckpt["state"]["model"].values())


def test_sigterm_checkpoints_then_exits(tmp_path, monkeypatch):
    calls, loss = [0], ddim.loss

    def term_at_third(*a, **k):
        calls[0] += 1
        if calls[0] == 3:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives mid-step: the step finishes first
        return loss(*a, **k)

    monkeypatch.setattr(ddim, "loss", term_at_third)
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(SystemExit) as e:
        train.main(SMALL + SYNTH + ["--steps", "10", "--ckpt-every", "100", "--out", str(tmp_path)])
    assert e.value.code == 128 + signal.SIGTERM
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is before
