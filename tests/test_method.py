"""method.py: checkpoints (atomic, weights-only, one-line errors, the previous layout), the
registry, config presets and flag ranges, and the training helpers every method shares."""
import argparse
import dataclasses
import os
from pathlib import Path

import pytest
import torch

import data
import method as M
import phendiff
from model import UNetConfig

ROOT = Path(__file__).resolve().parent.parent


def tiny_phendiff(**overrides):
    torch.manual_seed(0)
    config = phendiff.PhenDiffConfig.preset("tiny", image_size=16, num_classes=2, **overrides)
    net = phendiff.PhenDiff(config)
    with torch.no_grad():  # leave the zero initialisation, so that outputs are not trivially 0
        for p in net.model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    M.update_ema(net.ema, net.model, 0.0)
    return net


def dataset(classes=("DMSO", "drug")):
    return data.ImageDataset(torch.zeros(2, 3, 16, 16), torch.tensor([0, 1]), classes,
                             ["actin", "tubulin", "dna"], {"low": [0.0] * 3, "high": [1.0] * 3})


def test_checkpoint_round_trip_rebuilds_the_method(tmp_path):
    net = tiny_phendiff(prediction="v")
    path = tmp_path / "run" / "last.pt"
    M.save_checkpoint(M.make_checkpoint(net, dataset(), 7, {"lr": 1e-3}), path)
    assert os.listdir(path.parent) == ["last.pt"]  # no temp file left behind
    torch.load(path, weights_only=True)  # plain types and tensors only
    loaded, ckpt = M.load_method(path.parent)  # a run folder holding last.pt, or the file itself
    assert (ckpt["step"] == 7 and ckpt["classes"] == ["DMSO", "drug"]
            and ckpt["method"] == "phendiff")
    loaded, ckpt = M.load_method(path)
    assert isinstance(loaded, phendiff.PhenDiff) and loaded.config == net.config
    assert loaded.model.prediction == "v"  # what the output means travels with the checkpoint
    x, t, y = torch.randn(2, 3, 16, 16), torch.tensor([3, 700]), torch.tensor([0, 1])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x, t, y), net.model(x, t, y), rtol=0, atol=0)
        torch.testing.assert_close(loaded.ema(x, t, y), net.ema(x, t, y), rtol=0, atol=0)


def test_failed_save_keeps_the_old_file(tmp_path):
    path = tmp_path / "ckpt.pt"
    M.save_checkpoint({"version": 2}, path)
    with pytest.raises(Exception):
        M.save_checkpoint({"version": 2, "bad": lambda: 0}, path)  # lambdas do not pickle
    assert (os.listdir(tmp_path) == ["ckpt.pt"]
            and torch.load(path, weights_only=True) == {"version": 2})


def test_bad_checkpoint_files_raise_one_line_value_errors(tmp_path):
    net = tiny_phendiff()
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint")
    plain = tmp_path / "weights.pt"
    torch.save(net.model.state_dict(), plain)
    future = tmp_path / "future.pt"
    torch.save({**M.make_checkpoint(net, dataset(), 0, {}), "version": 3}, future)
    pickled = tmp_path / "pickled.pt"
    # weights_only refuses objects
    torch.save({"version": 2, "args": argparse.Namespace(lr=1e-3)}, pickled)
    partial = tmp_path / "partial.pt"
    torch.save({"version": 2, "method": "phendiff"}, partial)
    other = tmp_path / "other.pt"
    torch.save({**M.make_checkpoint(net, dataset(), 0, {}), "method": "diffgan"}, other)
    cases = [(tmp_path / "missing.pt", "no such file"), (text, "cannot be read"),
             (pickled, "cannot be read"), (plain, "not a phendiff checkpoint"),
             (future, "version 3"), (partial, "missing entries"),
             (other, "unknown method 'diffgan'.*phendiff, cyclegan, stargan")]
    for path, reason in cases:
        with pytest.raises(ValueError, match=reason) as err:
            M.load_method(path)
        assert "\n" not in str(err.value)
        assert str(path) in str(err.value) or "unknown method" in str(err.value)


def test_weights_that_do_not_fit_the_config_are_one_line(tmp_path):
    ckpt = M.make_checkpoint(tiny_phendiff(), dataset(), 0, {})
    ckpt["config"]["base_channels"] = 32
    with pytest.raises(ValueError, match="do not fit its config") as err:
        M.build(ckpt)
    assert "\n" not in str(err.value)


def test_version_1_checkpoints_load_as_phendiff(tmp_path):
    """The layout before the method interface: UNet config, schedule, model/ema at the top level."""
    net = tiny_phendiff()
    v1 = dict(version=1,
              config=dataclasses.asdict(UNetConfig.preset("tiny", image_size=16, num_classes=2)),
              classes=["DMSO", "drug"], channels=["actin", "tubulin", "DNA"],
              schedule={"name": "cosine", "T": 500},
              normalization={"low": [0.0] * 3, "high": [1.0] * 3}, model=net.model.state_dict(),
              ema=net.ema.state_dict(), step=3)
    torch.save(v1, tmp_path / "v1.pt")
    loaded, ckpt = M.load_method(tmp_path / "v1.pt")
    assert (ckpt["from_version"] == 1 and loaded.config.schedule == "cosine"
            and len(loaded.alpha) == 500)
    x, t, y = torch.randn(1, 3, 16, 16), torch.tensor([10]), torch.tensor([1])
    with torch.no_grad():
        torch.testing.assert_close(loaded.ema(x, t, y), net.ema(x, t, y), rtol=0, atol=0)


def test_the_shipped_demo_model_loads():
    net, ckpt = M.load_method(ROOT / "checkpoints" / "demo.pt")
    assert (isinstance(net, phendiff.PhenDiff) and len(ckpt["classes"]) == 25
            and net.model.prediction == "v")


def test_presets_and_ranges_of_configs():
    assert phendiff.PhenDiffConfig.preset("paper").lr == 1e-4
    cpu = phendiff.PhenDiffConfig.preset("cpu")  # the demo model's architecture
    assert ((cpu.image_size, cpu.base_channels, cpu.channel_mult, cpu.prediction)
            == (32, 32, (1, 2, 2), "v"))
    with pytest.raises(ValueError,
                       match="unknown preset 'huge'; choose one of tiny, cpu, small, paper"):
        phendiff.PhenDiffConfig.preset("huge")
    for field, value, message in (("lr", float("nan"), "--lr must be a finite number > 0"),
                                  ("grad_clip", -1.0, "--grad-clip must be a finite number > 0"),
                                  ("ema_decay", 1.0,
                                   r"--ema-decay must be a finite number in \[0, 1\)"),
                                  ("warmup", -3, "--warmup must be a finite number >= 0")):
        with pytest.raises(ValueError, match=message):
            phendiff.PhenDiffConfig.preset("tiny", **{field: value})


def test_ema_and_lr_helpers():
    a, b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)
    expected = 0.9 * a.weight.detach() + 0.1 * b.weight.detach()
    M.update_ema(a, b, 0.9)
    torch.testing.assert_close(a.weight.detach(), expected)
    assert M.ema_decay(0, 0.999) == pytest.approx(0.1) and M.ema_decay(10**6, 0.999) == 0.999
    M.average_gradients(a.parameters())  # one process: nothing to average, nothing changes


def test_unknown_method_and_options():
    with pytest.raises(ValueError, match="unknown method 'vqgan'"):
        M.method_class("vqgan")
    with pytest.raises(ValueError, match="phendiff does not take projection"):
        phendiff.PhenDiff(phendiff.PhenDiffConfig.preset("tiny"), projection="w")
