"""eval.py against known answers: closed-form Frechet distances, reconstruction errors, statistics,
and every analysis command end to end on tiny inputs."""
import csv
import math

import numpy as np
import pytest
import torch
from PIL import Image

import eval as E
from evaluation import commands, scores, stats


def rand_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# -----------------------------------------------------------------------------
# Frechet distance

def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(6), rand_cov(rng, 6)
    assert abs(stats.frechet_distance(mu, s, mu, s)) < 1e-8


def test_frechet_equal_covariances_is_mean_distance():
    rng = np.random.default_rng(1)
    mu1, mu2, s = rng.standard_normal(6), rng.standard_normal(6), rand_cov(rng, 6)
    assert stats.frechet_distance(mu1, s, mu2, s) == pytest.approx(((mu1 - mu2) ** 2).sum(),
                                                                   rel=1e-6)


def test_frechet_diagonal_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2, a, b = (rng.standard_normal(5), rng.standard_normal(5),
                      rng.random(5) + 0.1, rng.random(5) + 0.1)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert stats.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected,
                                                                                     rel=1e-6)


def test_frechet_singular_and_bad_shapes():
    s = np.diag([1.0, 0.0, 0.0])  # singular: the eps safeguard must keep the result finite
    assert math.isfinite(stats.frechet_distance(np.zeros(3), s, np.ones(3), s))
    with pytest.raises(ValueError, match="shape"):
        stats.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


# fewer images than dimensions (nuclear-norm path) and more (sqrtm)
@pytest.mark.parametrize("n", [4, 40])
def test_feature_distance_matches_eigenvalue_formula(n):
    rng = np.random.default_rng(n)
    f1, f2 = rng.standard_normal((n, 10)), 1.5 * rng.standard_normal((n + 3, 10)) + 0.2
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    tr = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert stats.feature_distance(f1, f2) == pytest.approx(expected, rel=1e-6)
    assert (scores.fid(f1[:, :3, None, None], f1[:, :3, None, None], lambda x: x.flatten(1))
            == pytest.approx(0, abs=1e-9))


# -----------------------------------------------------------------------------
# reconstruction error

def test_reconstruction_error_units():
    x = torch.rand(3, 3, 8, 8) * 1.6 - 0.8
    e = scores.reconstruction_error(x, x)
    assert e["l2"].max() == 0 and (e["psnr"] >= 119).all()  # the 1e-12 floor of the MSE
    e = scores.reconstruction_error(x, x + 0.1)  # off by 0.1 in [-1, 1]
    np.testing.assert_allclose(e["l2"], 0.1 * math.sqrt(3 * 8 * 8), rtol=1e-5)
    np.testing.assert_allclose(e["mse"], 0.05 ** 2, rtol=1e-5)
    np.testing.assert_allclose(e["psnr"], -10 * math.log10(0.05 ** 2), rtol=1e-5)
    far = torch.full_like(x, 0.9)
    # clamped to 1
    np.testing.assert_allclose(scores.reconstruction_error(x, far + 5)["l2"],
                               scores.reconstruction_error(x, far + 0.1)["l2"])


def test_phendiff_reconstruction_is_exact_with_a_zero_model():
    """DDIM with eps = 0 inverts exactly: a zero-initialised UNet reconstructs every image."""
    import phendiff
    config = phendiff.PhenDiffConfig.preset("tiny", image_size=16, num_classes=2)
    net = phendiff.PhenDiff(config, ddim_steps=5)
    x = torch.rand(3, 3, 16, 16) * 1.6 - 0.8
    rec = net.reconstruct(x, torch.tensor([0, 1, 1]))
    assert scores.reconstruction_error(x, rec)["l2"].max() < 1e-3


# -----------------------------------------------------------------------------
# the commands, end to end

def write_classes(root, sets):
    """{class: (N, 3, H, W) in [0, 1]} -> root/<class>/<i>.png (8-bit RGB)."""
    for name, x in sets.items():
        (root / name).mkdir(parents=True)
        for i, im in enumerate(x):
            (Image.fromarray((np.asarray(im).transpose(1, 2, 0) * 255).round().astype(np.uint8))
             .save(root / name / f"{i}.png"))
    return root


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """DMSO + latrunculin B at 3 doses, 4 images each:
    real, and 'translated' = real + mild noise."""
    import data
    ds = data.synthetic_dataset("bbbc021", n_per_class=4, image_size=64, seed=2,
                                compounds=["latrunculin_b"])
    x = ((ds.images + 1) / 2).numpy()
    keep = ["DMSO", *ds.classes[3::2][:3]]
    real = {c: x[ds.labels.numpy() == ds.classes.index(c)] for c in keep}
    rng = np.random.default_rng(0)
    fake = {c: np.clip(v + 0.01 * rng.standard_normal(v.shape), 0, 1) for c, v in real.items()}
    root = tmp_path_factory.mktemp("folders")
    return write_classes(root / "real", real), write_classes(root / "fake", fake), keep


def test_cmd_fid_and_table1(inception_weights, folders, tmp_path):
    _, weights = inception_weights
    real, fake, classes = folders
    c = classes[-1]
    # 2 images per set: Inception is slow on a CPU
    for name, src in (("real", real), ("fake", fake)):
        (tmp_path / name / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:2]:
            (tmp_path / name / c / f.name).write_bytes(f.read_bytes())
    E.main(["fid", str(tmp_path / "fake" / c), str(tmp_path / "fake" / c),
            "--inception-weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "fid")])
    assert float(read_csv(tmp_path / "fid" / "fid.csv")[0]["fid"]) == pytest.approx(0, abs=1e-6)
    E.main(["table1", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"),
            "--inception-weights", str(weights), "--device", "cpu", "--out", str(tmp_path / "t1")])
    rows = read_csv(tmp_path / "t1" / "table1.csv")
    assert [r["class"] for r in rows] == [c, "mean"] and [r["n_real"] for r in rows] == ["2", "2"]
    assert float(rows[0]["fid"]) > 0 and (tmp_path / "t1" / "table1.png").stat().st_size > 0


def test_cmd_fig4(folders, tmp_path):
    real, fake, _ = folders
    E.main(["fig4", "--real", str(real), "--fake", str(fake), "--out", str(tmp_path)])
    r = {row["feature"]: float(row["pearson_r"])
         for row in read_csv(tmp_path / "fig4_correlations.csv")}
    # the 'translation' is the real image plus noise
    assert len(r) >= 60 and r["cells_actin_mean"] > 0.9
    assert len(read_csv(tmp_path / "fig4_means.csv")) == 6 and (tmp_path / "fig4.png").exists()


def test_cmd_ttest(folders, tmp_path, capsys):
    real, fake, classes = folders
    E.main(["ttest", "--real", str(real), "--fake", str(fake), "--feature", "cells_actin_mean",
            "--a", classes[0], "--b", classes[-1], "--out", str(tmp_path)])
    rows = read_csv(tmp_path / "ttest.csv")
    assert [r["source"] for r in rows] == ["real", "generated"]
    assert all(0 <= float(r["p"]) <= 1 and int(r["n_a"]) == 4 for r in rows)
    assert (tmp_path / "ttest.png").exists()
    with pytest.raises(SystemExit):
        E.main(["ttest", "--real", str(real), "--feature", "cell_actin_mean", "--a", classes[0],
                "--b", classes[1], "--out", str(tmp_path / "bad")])
    assert "cells_actin_mean" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # outputs never go inside an input folder
        E.main(["ttest", "--real", str(real), "--feature", "nuclei_count", "--a", classes[0],
                "--b", classes[1], "--out", str(real / "results")])
    assert "input" in capsys.readouterr().err and not (real / "results").exists()


def test_cmd_recon_from_a_checkpoint_and_from_folders(tmp_path, capsys):
    import data
    import method as M
    import phendiff
    classes = data.synthetic_classes("bbbc021")[0]
    torch.manual_seed(0)
    net = phendiff.PhenDiff(phendiff.PhenDiffConfig.preset("tiny", num_classes=len(classes)))
    ds = data.ImageDataset(torch.zeros(1, 3, 32, 32), torch.zeros(1), classes,
                           ["actin", "tubulin", "dna"], data.UNIT_NORM)
    M.save_checkpoint(M.make_checkpoint(net, ds, 0, {}), tmp_path / "ckpt.pt")
    E.main(["recon", "--ckpt", str(tmp_path / "ckpt.pt"), "--data", "synthetic", "--n", "2",
            "--n-per-class", "1", "--ddim-steps", "2", "--fixed-point-iters", "1",
            "--device", "cpu", "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "recon.csv")
    assert [r["reconstruction"] for r in rows] == ["plain eq. 6", "exact (1 fixed-point iters)"]
    assert all(int(r["n"]) == 2 and float(r["psnr_mean"]) > 0 for r in rows)
    assert (len(read_csv(tmp_path / "out" / "recon_per_image.csv")) == 4
            and (tmp_path / "out" / "recon.png").exists())

    # from folders, matched by file name: an image and its reconstruction off by 10 grey levels
    real, rec = tmp_path / "real", tmp_path / "rec"
    for folder, shift in ((real, 0), (rec, 10)):
        folder.mkdir()
        for name in ("a", "b"):
            Image.fromarray(np.full((8, 8, 3), 100 + shift, np.uint8)).save(folder / f"{name}.png")
    E.main(["recon", "--real", str(real), "--rec", str(rec), "--out", str(tmp_path / "f")])
    row = read_csv(tmp_path / "f" / "recon.csv")[0]
    assert (int(row["n"]) == 2 and float(row["psnr_mean"])
            == pytest.approx(-10 * math.log10((10 / 255) ** 2), rel=1e-4))
    with pytest.raises(SystemExit):  # an earlier result is not silently replaced
        E.main(["recon", "--real", str(real), "--rec", str(rec), "--out", str(tmp_path / "f")])
    assert "--overwrite" in capsys.readouterr().err


def test_spearman_is_scipys_on_the_finite_pairs_and_nan_when_undefined():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    # ties in a: average ranks, as scipy
    a, b = rng.integers(0, 4, 8).astype(float), rng.normal(size=8)
    assert stats.spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    a[2], b[5] = np.nan, np.inf
    ok = np.isfinite(a) & np.isfinite(b)
    assert stats.spearman(a, b) == pytest.approx(spearmanr(a[ok], b[ok])[0], abs=1e-12)
    # monotone, not linear
    assert stats.spearman(np.arange(8.0), -np.exp(np.arange(8.0))) == pytest.approx(-1.0)
    assert math.isnan(stats.spearman(np.arange(8.0), np.ones(8)))  # constant: undefined
    assert math.isnan(stats.spearman(np.arange(2.0), np.arange(2.0)))  # fewer than 3 pairs


def test_sample_statistics_see_a_collapse_and_the_dose_trend(folders):
    real_root, _, classes = folders
    real = commands.read_classes(real_root)
    spreads, trends = scores.sample_statistics(real, real, "cells_actin_mean")
    assert all(a == b > 0 for a, b in spreads.values())  # the real images as "samples"
    assert trends["latrunculin_b"][0] == trends["latrunculin_b"][1]
    collapsed = {c: np.repeat(x[:1], len(x), 0) for c, x in real.items()}
    spreads, _ = scores.sample_statistics(real, collapsed, "cells_actin_mean")
    assert all(b == 0 < a for a, b in spreads.values())
    x = torch.rand(5, 3, 4, 4)
    d = torch.cdist(x.flatten(1), x.flatten(1)) / math.sqrt(48)
    assert scores.spread(x) == pytest.approx(float(d.sum() / 20), rel=1e-6)


def test_holm_adjusts_as_the_step_down_procedure():
    adjusted = stats.holm([0.01, 0.04, 0.03, math.nan, 0.2])
    # sorted 0.01, 0.03, 0.04, 0.2 -> 4 x 0.01, 3 x 0.03, max(0.09, 2 x 0.04), max(0.09, 0.2)
    np.testing.assert_allclose(adjusted[[0, 2, 1, 4]], [0.04, 0.09, 0.09, 0.2])
    assert math.isnan(adjusted[3])


def test_a_paired_design_sees_a_small_shift_that_welch_misses():
    """Translations of the same images that all move a feature by a little: the paired test finds
    it (tiny sd of the differences), Welch's test between the two sets does not (large spread of
    images); effects come with intervals that hold them."""
    g = np.random.default_rng(0)
    before = g.normal(10, 3, size=40)
    after = before + 0.3 + g.normal(0, 0.1, size=40)
    t, p_paired, effect, low, high = stats.compare(after, before, paired=True)
    assert p_paired < 1e-6 and effect > 2 and low < effect < high
    _, p_welch, d, low, high = stats.compare(after, before, paired=False)
    assert p_welch > 0.5 and low < d < high and low < 0 < high
    mean, low, high = stats.paired_interval(after, before)
    assert low < 0.3 < high and low < mean < high
