"""Every bad input a user can give ends in one line that names the flag or file, exit code 2, no
traceback, and leaves every input file as it was; kills and concurrent runs lose nothing."""
import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval as E
from evaluation import stats
import files
from tools import prepare
import method as M
import phendiff
import train
from tests.helpers import fails, write_images

ROOT = Path(__file__).resolve().parent.parent
TINY = ["--method", "phendiff", "--preset", "tiny", "--image-size", "16", "--base-channels", "8",
        "--channel-mult", "1,2", "--attn-resolutions", "8", "--data", "synthetic", "--compounds",
        "latrunculin_b", "--n-per-class", "2", "--batch-size", "4", "--sample-every", "0"]


def hashes(folder):
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).rglob("*"))
            if p.is_file()}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 2-step PhenDiff run and a dataset root of images: (run folder, dataset root)."""
    root = tmp_path_factory.mktemp("bad")
    train.main(TINY + ["--steps", "2", "--out", str(root / "run")])
    write_images(root / "data" / "DMSO", n=2, size=16)
    write_images(root / "data" / "latrunculin_b_10uM", n=2, size=16)
    return root / "run", root / "data"


def translate(run, inputs, *extra):
    return ["translate", "--ckpt", str(run), "--input", *map(str, inputs), "--source", "DMSO",
            "--ddim-steps", "2", *extra]


def test_translate_refuses_what_would_mix_or_replace(run, tmp_path):
    ckpt, root = run
    before = hashes(root)
    for out, why in ((root, "overlaps the input folder"), (root / "DMSO", "overlaps the input"),
                     (root / "DMSO" / "x", "overlaps the input")):
        assert why in fails(phendiff.main, translate(ckpt, [root / "DMSO"], "--target", "DMSO",
                                                     "--out", str(out)))
    phendiff.main(translate(ckpt, [root / "DMSO"], "--target", "DMSO",
                            "--out", str(tmp_path / "t")))
    again = translate(ckpt, [root / "DMSO"], "--target", "latrunculin_b_10uM", "--out",
                      str(tmp_path / "t"))
    assert "already holds" in fails(phendiff.main, again)  # grid.png, files.txt of the first call
    into_a_file = translate(ckpt, [root / "DMSO"], "--target", "DMSO",
                            "--out", str(root / "DMSO" / "cell_0.png"))
    assert "is a file" in fails(phendiff.main, into_a_file)
    assert hashes(root) == before


@pytest.mark.parametrize("flags, message", [
    (["--fixed-point-iters", "-3"], "argument --fixed-point-iters: must be at least 0, got -3"),
    (["--guidance", "nan"], "argument --guidance: must be a finite number, got nan"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--ddim-steps", "two"], "argument --ddim-steps: expected an integer, got 'two'"),
    (["--device", "tpu"], "argument --device: unknown device 'tpu'"),
    (["--device", "cuda:7"], "argument --device: cuda:7: no such CUDA device is visible"),
])
def test_translate_flags(run, tmp_path, flags, message):
    ckpt, root = run
    assert message in fails(phendiff.main, translate(ckpt, [root / "DMSO"], "--target", "DMSO",
                                                     "--out", str(tmp_path / "o"), *flags))
    assert not (tmp_path / "o").exists()


def test_nan_pixels_and_edited_checkpoints(run, tmp_path):
    ckpt, root = run
    nan = tmp_path / "nan"
    nan.mkdir()
    image = np.full((16, 16, 3), 0.5, np.float32)
    image[3, 4, 1] = np.nan
    np.save(nan / "cell.npy", image)
    msg = fails(phendiff.main, translate(ckpt, [nan], "--target", "DMSO",
                                         "--out", str(tmp_path / "o")))
    assert "cell.npy has 1 NaN or infinite value" in msg
    edited = M.load_checkpoint(ckpt / "last.pt")
    edited["config"]["base_chanels"] = 8  # a typo in an edited config
    M.save_checkpoint(edited, tmp_path / "edited.pt")
    edited_run = translate(tmp_path / "edited.pt", [root / "DMSO"], "--target", "DMSO",
                           "--out", str(tmp_path / "o"))
    msg = fails(phendiff.main, edited_run)
    assert "config this code cannot read" in msg and "base_chanels" in msg
    edited["config"].pop("base_chanels")
    edited["config"]["base_channels"] = 16  # weights of another width
    M.save_checkpoint(edited, tmp_path / "edited.pt")
    msg = fails(phendiff.main, edited_run)
    assert "weights do not fit its config" in msg


@pytest.mark.parametrize("flags, message", [
    (["--grad-clip", "-1"], "--grad-clip must be a finite number > 0, got -1.0"),
    (["--lr", "0"], "--lr must be a finite number > 0, got 0.0"),
    (["--lr", "inf"], "argument --lr: must be a finite number, got inf"),
    (["--image-size", "0"], "argument --image-size: must be at least 8, got 0"),
    (["--batch-size", "0"], "argument --batch-size: must be at least 1, got 0"),
    (["--n-per-class", "-1"], "argument --n-per-class: must be at least 1, got -1"),
    (["--ema-decay", "1.5"], "--ema-decay must be a finite number in [0, 1), got 1.5"),
    (["--device", "tpu"], "argument --device: unknown device 'tpu'"),
    pytest.param(["--device", "cuda"], "argument --device: cuda: no such CUDA device is visible",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible")),
    (["--method", "stargan", "--base-channels", "8"], "unrecognized arguments: --base-channels"),
])
def test_train_flags(tmp_path, flags, message):
    assert message in fails(train.main, TINY + flags + ["--out", str(tmp_path / "r")])
    assert not (tmp_path / "r").exists()  # refused before the run folder was made


def test_nan_training_data_names_the_file(tmp_path):
    images = np.random.default_rng(0).random((4, 16, 16, 3)).astype(np.float32)
    images[2, 0, 0, 0] = np.inf
    np.savez(tmp_path / "bad.npz", images=images, labels=np.array([0, 0, 1, 1]),
             classes=np.array(["DMSO", "drug"]))
    msg = fails(train.main, TINY[:10] + ["--data", str(tmp_path / "bad.npz"),
                                         "--out", str(tmp_path / "r")])
    assert "bad.npz has 1 NaN or infinite value" in msg


def test_resume_with_another_architecture_and_of_a_run_that_never_saved(run, tmp_path):
    ckpt, _ = run
    msg = fails(train.main, ["--out", str(ckpt), "--resume", "--steps", "3",
                             "--base-channels", "16"])
    assert "does not fit the flags given now" in msg
    dead = tmp_path / "dead"  # a run that failed before its first checkpoint
    dead.mkdir()
    (dead / "log.csv").write_text("step,loss\n")
    (dead / ".lock").write_text("12345")
    train.main(TINY + ["--steps", "1", "--out", str(dead), "--resume"])  # starts it
    assert M.load_checkpoint(dead / "last.pt")["step"] == 1
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.docx").write_text("not a run")
    msg = fails(train.main, TINY + ["--out", str(tmp_path / "mine"), "--resume"])
    assert "files of no run (thesis.docx)" in msg


def test_a_second_run_in_a_folder_is_refused(tmp_path):
    with files.locked(tmp_path / "r"):
        assert (tmp_path / "r" / ".lock").read_text() == str(os.getpid())
        msg = fails(train.main, TINY + ["--steps", "1", "--out", str(tmp_path / "r"), "--resume"])
    assert f"in use by another process (pid {os.getpid()})" in msg
    train.main(TINY + ["--steps", "1", "--out", str(tmp_path / "r"), "--resume"])  # released: fine


KILLED_IN_SAVE = """
import os, signal, sys
sys.path.insert(0, {root!r})
import torch, method, train
torch.set_num_threads(1)
calls, save = [0], torch.save
def save_then_die(obj, f, *a, **k):
    calls[0] += 1
    if calls[0] == 2:  # the second checkpoint: half written, then killed
        f.write(b"half a checkpoint")
        f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return save(obj, f, *a, **k)
torch.save = save_then_die
train.main({argv!r})
"""


def test_kill_during_a_save_keeps_the_last_checkpoint_and_cleans_up(tmp_path):
    argv = TINY + ["--steps", "4", "--ckpt-every", "2", "--out", str(tmp_path / "r")]
    proc = subprocess.run([sys.executable, "-c", KILLED_IN_SAVE.format(root=str(ROOT), argv=argv)],
                          cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert M.load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 2
    assert list((tmp_path / "r").glob(".*.tmp"))  # the interrupted save's temp file
    train.main(["--out", str(tmp_path / "r"), "--resume"])
    assert not list((tmp_path / "r").glob(".*.tmp"))
    assert M.load_checkpoint(tmp_path / "r" / "last.pt")["step"] == 4


def test_eval_and_data_commands(run, tmp_path, inception_weights):
    ckpt, root = run
    assert "argument --n: must be at least 1, got 0" in fails(
        E.main, ["recon", "--ckpt", str(ckpt), "--n", "0", "--out", str(tmp_path / "e")])
    assert "argument --n-per-class: must be at least 1, got -1" in fails(
        prepare.main, ["synthetic", "--n-per-class", "-1", "--out", str(tmp_path / "s")])
    assert "argument --size: must be at least 8, got 0" in fails(
        prepare.main, ["synthetic", "--size", "0", "--out", str(tmp_path / "s")])
    (tmp_path / "broken.pth").write_bytes(b"\x00" * 100)  # a truncated weights file
    msg = fails(E.main, ["fid", str(root / "DMSO"), str(root / "DMSO"), "--inception-weights",
                         str(tmp_path / "broken.pth")])
    assert "broken.pth is not the Inception weights file" in msg
    with pytest.raises(ValueError, match="first feature set has 1 NaN"):
        stats.feature_distance(np.array([[np.nan, 0.0], [1.0, 1.0]]), np.eye(2))
    assert not any((tmp_path / n).exists() for n in ("e", "s"))


def test_translate_other_sizes_by_crop_or_resize(run, tmp_path):
    ckpt, _ = run
    big = write_images(tmp_path / "big", n=1, size=24)
    with pytest.warns(UserWarning, match="resized"):
        phendiff.main(translate(ckpt, [big], "--target", "DMSO", "--fit", "resize",
                                "--out", str(tmp_path / "o")))
    assert np.load(tmp_path / "o" / "DMSO.npy").shape == (1, 3, 16, 16)
