"""PhenDiff translation against the Gaussian oracle, and the command line on a tiny checkpoint."""
import math
import re
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import ddim
import method as M
import phendiff
from data import ImageDataset
from evaluation import plots
from tests.helpers import fails, write_images

# ---------------------------------------------------------------------------------------------
# the method, with an analytic eps-model: class y is N(mu_y, sigma_y^2 I)


class GaussianOracle:
    """The optimal eps for Gaussian classes: sqrt(1-a)(x - sqrt(a) mu) / (a sigma^2 + 1 - a)."""

    def __init__(self, mu, sigma, alpha):
        self.mu, self.sigma, self.alpha, self.null_label = mu, sigma, alpha, None

    def __call__(self, x, t, y):
        a = self.alpha[t].view(-1, 1, 1, 1).to(x.dtype)
        mu, s = self.mu[y], self.sigma[y].view(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s ** 2 + 1 - a)


@pytest.fixture
def oracle():
    g = torch.Generator().manual_seed(0)
    alpha = ddim.make_schedule("linear")
    mu = torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64) * 0.5
    sigma = torch.tensor([0.3, 0.6, 0.15], dtype=torch.float64)
    return GaussianOracle(mu, sigma, alpha), alpha, g


def test_translate_matches_closed_form(oracle):
    net, alpha, g = oracle
    x = net.mu[0] + net.sigma[0] * torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64)
    for target in (1, 2):
        expected = net.mu[target] + net.sigma[target] / net.sigma[0] * (x - net.mu[0])
        got = phendiff.translate(net, x, 0, target, alpha, 1000)
        rel = (got - expected).norm() / expected.norm()
        assert rel < 0.02, (target, rel)
        # translating with the wrong source class must not give the same answer
        wrong = phendiff.translate(net, x, 1, target, alpha, 1000)
        assert (wrong - expected).norm() / expected.norm() > 0.1


def test_translate_many_shares_one_inversion_and_batches_the_targets(oracle):
    net, alpha, g = oracle
    x = net.mu[0] + net.sigma[0] * torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64)
    for max_batch, calls_expected in ((256, 2 * 20), (3, 3 * 20)):
        calls = []
        counting = lambda x, t, y: calls.append(len(x)) or net(x, t, y)  # noqa: E731
        many = phendiff.translate_many(counting, x, 0, [1, 2], alpha, 20, max_batch=max_batch)
        # one inversion + one sampling of both targets (6 images), or one per target
        assert len(calls) == calls_expected and max(calls) == min(6, max_batch)
        for i, target in enumerate((1, 2)):
            torch.testing.assert_close(many[i], phendiff.translate(net, x, 0, target, alpha, 20))


def test_reconstruct_exact_beats_plain(oracle):
    net, alpha, g = oracle
    x = net.mu[1] + net.sigma[1] * torch.randn(4, 2, 8, 8, generator=g, dtype=torch.float64)
    plain = (phendiff.reconstruct(net, x, 1, alpha, 10) - x).norm()
    exact = (phendiff.reconstruct(net, x, 1, alpha, 10, fixed_point_iters=20) - x).norm()
    assert exact < plain / 100


def test_dose_series_order_and_difference_map(oracle):
    net, alpha, g = oracle
    classes = ["DMSO", "taxol_3uM", "taxol_0.1uM"]  # stored out of dose order on purpose
    x = net.mu[0] + net.sigma[0] * torch.randn(2, 2, 8, 8, generator=g, dtype=torch.float64)
    names, series = phendiff.dose_series(net, x, 0, classes, "taxol", alpha, 50)
    assert names == ["taxol_0.1uM", "taxol_3uM"]
    torch.testing.assert_close(series[0], phendiff.translate(net, x, 0, 2, alpha, 50))
    with pytest.raises(ValueError, match="unknown compound 'nocodazole'.*taxol"):
        phendiff.dose_series(net, x, 0, classes, "nocodazole", alpha, 50)
    d = plots.difference_map(x, x + 0.5)
    assert d.shape == (2, 8, 8) and torch.allclose(d, torch.full_like(d, 0.25))


# ---------------------------------------------------------------------------------------------
# the command line on a tiny random checkpoint

CLASSES = ["DMSO", "latrunculin_b_1uM", "latrunculin_b_3uM"]


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    net = phendiff.PhenDiff(phendiff.PhenDiffConfig.preset("tiny", image_size=16,
                                                           num_classes=len(CLASSES)))
    with torch.no_grad():  # leave the zero initialisation so the translation is not the identity
        for p in net.ema.parameters():
            p.add_(0.02 * torch.randn_like(p))
    ds = ImageDataset(torch.zeros(1, 3, 16, 16), torch.zeros(1), CLASSES,
                      ["actin", "tubulin", "dna"], {"low": [0.0] * 3, "high": [1.0] * 3})
    path = tmp_path / "tiny.pt"
    M.save_checkpoint(M.make_checkpoint(net, ds, 0, {}), path)
    return path


def test_cli_writes_translations(ckpt, tmp_path, capsys):
    inp = write_images(tmp_path / "in")
    (inp / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="notes.txt"):
        # --target latrunculin_b = its 2 doses
        phendiff.main(["translate", "--ckpt", str(ckpt), "--input", str(inp), "--source", "DMSO",
                       "--target", "latrunculin_b", "--ddim-steps", "5", "--out", str(out)])
    for t in ("latrunculin_b_1uM", "latrunculin_b_3uM"):
        assert sorted(p.name for p in (out / t).iterdir()) == ["cell_0.png", "cell_1.png",
                                                                 "cell_2.png"]
        arr = np.load(out / f"{t}.npy")
        assert arr.shape == (3, 3, 16, 16) and np.isfinite(arr).all()
    assert (out / "grid.png").stat().st_size > 0
    assert (out / "files.txt").read_text().split() == ["cell_0.png", "cell_1.png", "cell_2.png"]
    timing = re.search(r"3 images x 2 targets in ([\d.]+) s: ([\d.]+) translations/s .*"
                       r"reading ([\d.]+) s, translating ([\d.]+) s, writing ([\d.]+) s",
                       capsys.readouterr().out)
    total, rate, *parts = map(float, timing.groups())
    assert abs(sum(parts) - total) <= 0.15 and rate > 0  # the parts (rounded) make the whole
    # the PNG holds the same translation as the .npy (identity normalisation: raw = display scale)
    png = np.asarray(Image.open(out / "latrunculin_b_3uM" / "cell_1.png")) / 255
    assert np.abs(png.transpose(2, 0, 1)
                  - np.load(out / "latrunculin_b_3uM.npy")[1].clip(0, 1)).max() < 1 / 255 + 1e-6
    # deterministic: a second run gives the same numbers; one target alone, the same up to the
    # rounding of a narrower batch (the targets are sampled together). That rounding is float32
    # summation-order noise through 10 UNet evaluations, measured at 2e-6 of the values' scale
    # (raw units: this untrained model's outputs reach ~50), so the bound is relative to that
    # scale, 10x the noise; a swapped target or a shifted image moves elements by 0.1 to 1 of it
    def same_up_to_rounding(a, b):
        np.testing.assert_allclose(a, b, rtol=0, atol=2e-5 * np.abs(b).max())

    for target, out2, check in (("latrunculin_b", tmp_path / "out2", np.testing.assert_array_equal),
                                ("latrunculin_b_3uM", tmp_path / "out3", same_up_to_rounding)):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            phendiff.main(["translate", "--ckpt", str(ckpt), "--input", str(inp), "--source",
                           "DMSO", "--target", target, "--ddim-steps", "5", "--out", str(out2)])
        check(np.load(out2 / "latrunculin_b_3uM.npy"), np.load(out / "latrunculin_b_3uM.npy"))


def test_cli_bad_input(ckpt, tmp_path):
    inp = write_images(tmp_path / "in")
    base = ["translate", "--ckpt", str(ckpt), "--input", str(inp), "--source", "DMSO",
            "--ddim-steps", "2"]
    msg = fails(phendiff.main, base + ["--target", "taxol", "--out", str(tmp_path / "o1")])
    assert "unknown class 'taxol'" in msg and "latrunculin_b_3uM" in msg and "\n" not in msg

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not a png at all")
    msg = fails(phendiff.main, ["translate", "--ckpt", str(ckpt), "--input", str(bad),
                                "--source", "DMSO",
               "--target", "DMSO", "--out", str(tmp_path / "o2")])
    assert "broken.png" in msg

    grey = write_images(tmp_path / "grey", channels=1)
    msg = fails(phendiff.main, ["translate", "--ckpt", str(ckpt), "--input", str(grey),
                                "--source", "DMSO",
               "--target", "DMSO", "--out", str(tmp_path / "o3")])
    assert "1 channels" in msg and "3" in msg

    msg = fails(phendiff.main, base + ["--target", "DMSO", "--out", str(inp / "sub")])
    assert "overlaps the input folder" in msg

    not_ckpt = tmp_path / "x.pt"
    torch.save({"hello": 1}, not_ckpt)
    msg = fails(phendiff.main, ["translate", "--ckpt", str(not_ckpt), "--input", str(inp),
                                "--source", "DMSO",
               "--target", "DMSO", "--out", str(tmp_path / "o4")])
    assert "x.pt" in msg and "not a phendiff checkpoint" in msg



def test_cli_error_mid_translation_closes_the_progress_bar(ckpt, tmp_path, monkeypatch):
    """An error in the second of three batches (say, out of memory) is one line of its own, not
    appended to a progress bar left open."""
    calls = []

    def fail_second(self, x, y_source, targets):
        calls.append(len(x))
        if len(calls) == 2:
            raise ValueError("out of memory at this batch: lower --batch-size")
        return torch.zeros(len(targets), *x.shape)
    monkeypatch.setattr(phendiff.PhenDiff, "translate_many", fail_second)
    inp = write_images(tmp_path / "in")
    line = fails(phendiff.main, ["translate", "--ckpt", str(ckpt), "--input", str(inp),
                                 "--source", "DMSO", "--target", "DMSO", "--batch-size", "1",
                                 "--out", str(tmp_path / "o")])
    assert calls == [1, 1] and line.startswith("phendiff.py translate: error: out of memory")

def test_cli_other_sizes_are_cropped_with_a_warning(ckpt, tmp_path):
    inp = write_images(tmp_path / "big", n=1, size=24)
    with pytest.warns(UserWarning, match="centre-cropped"):
        phendiff.main(["translate", "--ckpt", str(ckpt), "--input", str(inp / "cell_0.png"),
                       "--source", "DMSO", "--target", "DMSO", "--ddim-steps", "2",
                       "--out", str(tmp_path / "o")])
    assert np.load(tmp_path / "o" / "DMSO.npy").shape == (1, 3, 16, 16)


def test_export_drops_optimizer_state(ckpt, tmp_path):
    phendiff.main(["export", "--ckpt", str(ckpt), "--out", str(tmp_path / "slim.pt")])
    slim, full = M.load_checkpoint(tmp_path / "slim.pt"), M.load_checkpoint(ckpt)
    assert "optimizer" not in slim["state"] and "rng" not in slim and slim["classes"] == CLASSES
    x, t, y = torch.zeros(1, 3, 16, 16), torch.tensor([10]), torch.tensor([1])
    torch.testing.assert_close(M.build(slim).ema(x, t, y), M.build(full).ema(x, t, y))
    export = ["export", "--ckpt", str(ckpt), "--out"]
    assert "--overwrite" in fails(phendiff.main, export + [str(tmp_path / "slim.pt")])
    assert "overwrite the input" in fails(phendiff.main, export + [str(ckpt),
                                         "--overwrite"])


def test_demo_micro_writes_every_artefact(tmp_path):
    """The demo end to end at a micro setting: a 1-step model of DMSO + Latrunculin B trained by
    the recorded command, judged on its own classes only (the README's 9-class check)."""
    out = tmp_path / "demo"
    phendiff.main(["demo", "--out", str(out), "--train", "--n", "3", "--ddim-steps", "2",
                   "--n-recon", "2", "--workers", "1", "--train-args",
                   "--steps 1 --n-per-class 4 --base-channels 16 --sample-every 0 --log-every 1 "
                   "--compounds latrunculin_b"])
    assert (out / "train" / "last.pt").exists()
    for name in ("dose_series.png", "translation.png", "dose_response.png",
                 "fig4_correlations.png"):
        assert (out / name).stat().st_size > 1000, name
    report = (out / "report.md").read_text()
    for needle in ("Latrunculin B", "Spearman", "median Pearson r", "plain eq. 6",
                   "exact (5 fixed-point", "![](dose_series.png)", "PSNR to the own truth",
                   "Command: `python phendiff.py demo"):
        assert needle in report, needle
    # both targets judged, whatever the verdict; only the model's own classes
    assert len(re.findall(r"\| (PASS|FAIL) \|", report)) == 2
    assert ("| latrunculin_b | 8 |" in report and "nocodazole" not in report
            and "herbimycin" not in report)


def test_against_the_truth_tells_this_cells_response_from_another_cells():
    """scores.against_references with the truth as references (what the demo and the reproduction
    report): the truth itself scores perfectly and is always closer to its own field; another
    field's truth (a sampler that ignores its input) never is; doing nothing scores the distance
    the drug puts between the input and its truth."""
    from data import synthetic_dataset
    from evaluation import scores
    ds = synthetic_dataset(n_per_class=4, image_size=32, seed=1, compounds=["latrunculin_b"],
                           paired=True)
    truth = torch.stack([ds.images[ds.labels == i] for i in range(len(ds.classes))])
    x, top = truth[0], 8  # DMSO fields; 10 uM
    outputs = {"exact": truth, "sampler": truth.roll(1, 1), "identity": x.expand_as(truth)}
    feats = lambda images: scores.feature_rows(images, ds.channels)[0]  # noqa: E731
    scale = scores.feature_scale([feats(t) for t in truth])
    rows = {r[0]: r[2:] for r in scores.against_references(
        outputs, [top], lambda t: truth[t], lambda t: feats(truth[t]),
        lambda m, t: feats(outputs[m][t]), scale)}
    psnr_own, psnr_other, closer_px, feat_own, feat_other, closer_feat = rows["exact"]
    assert psnr_own > 100 and closer_px == 1.0 and feat_own == 0 and closer_feat == 1.0
    psnr_own, psnr_other, closer_px, feat_own, feat_other, closer_feat = rows["sampler"]
    assert closer_px == 0.0 and psnr_own < psnr_other and feat_own > feat_other
    nothing = rows["identity"]
    assert nothing[0] == pytest.approx(scores.psnr(truth[top], x).mean())
    assert nothing[3] > 0.3  # the drug moves the features by a fraction of their spread


def test_guidance_is_refused_without_label_dropout(ckpt, tmp_path):
    """A model trained with p_uncond 0 never learned the null label: --guidance is refused with
    the reason and the fix; the same model with label dropout in its config accepts it."""
    inp = write_images(tmp_path / "in")
    message = fails(phendiff.main, ["translate", "--ckpt", str(ckpt), "--input", str(inp),
                                    "--source", "DMSO", "--target", "DMSO", "--guidance", "2",
                                    "--out", str(tmp_path / "o")])
    assert "--p-uncond" in message and "null label" in message
    config = phendiff.PhenDiffConfig.preset("tiny", image_size=16, num_classes=3, p_uncond=0.1)
    assert phendiff.PhenDiff(config, guidance=2.0).options["guidance"] == 2.0


def test_inversion_command_writes_the_sweep_the_trajectory_and_the_latents(ckpt, tmp_path):
    """eval.py inversion on a tiny untrained model: a row per (steps, iterations), every figure
    written (that exact inversion round-trips is tested on the Gaussian oracle, test_ddim.py)."""
    import csv
    import eval as E
    out = tmp_path / "inv"
    E.main(["inversion", "--ckpt", str(ckpt), "--n", "3", "--steps", "2", "4", "--iters", "0",
            "3", "--trajectory-steps", "4", "--out", str(out), "--device", "cpu"])
    with open(out / "inversion.csv") as f:
        psnr = {(int(r["ddim_steps"]), int(r["fixed_point_iters"])): float(r["psnr_mean"])
                for r in csv.DictReader(f)}
    assert set(psnr) == {(2, 0), (2, 3), (4, 0), (4, 3)} and all(map(math.isfinite, psnr.values()))
    for name in ("inversion.png", "trajectory.png", "latents.png", "inversion.md"):
        assert (out / name).stat().st_size > 500, name
