"""eval.py against known answers: closed-form Frechet distances, the weight file's layout, features
against the synthetic ground truth, and every analysis command end to end on tiny inputs."""
import csv
import dataclasses
import math

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import eval as E


def rand_cov(rng, d):
    a = rng.standard_normal((d, d))
    return a @ a.T + 0.1 * np.eye(d)


# -----------------------------------------------------------------------------
# Frechet distance

def test_frechet_identical_is_zero():
    rng = np.random.default_rng(0)
    mu, s = rng.standard_normal(6), rand_cov(rng, 6)
    assert abs(E.frechet_distance(mu, s, mu, s)) < 1e-8


def test_frechet_equal_covariances_is_mean_distance():
    rng = np.random.default_rng(1)
    mu1, mu2, s = rng.standard_normal(6), rng.standard_normal(6), rand_cov(rng, 6)
    assert E.frechet_distance(mu1, s, mu2, s) == pytest.approx(((mu1 - mu2) ** 2).sum(), rel=1e-6)


def test_frechet_diagonal_covariances():
    rng = np.random.default_rng(2)
    mu1, mu2, a, b = rng.standard_normal(5), rng.standard_normal(5), rng.random(5) + 0.1, rng.random(5) + 0.1
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert E.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-6)


def test_frechet_singular_and_bad_shapes():
    s = np.diag([1.0, 0.0, 0.0])  # singular: the eps safeguard must keep the result finite
    assert math.isfinite(E.frechet_distance(np.zeros(3), s, np.ones(3), s))
    with pytest.raises(ValueError, match="shape"):
        E.frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


@pytest.mark.parametrize("n", [4, 40])  # fewer images than dimensions (nuclear-norm path) and more (sqrtm)
def test_feature_distance_matches_eigenvalue_formula(n):
    rng = np.random.default_rng(n)
    f1, f2 = rng.standard_normal((n, 10)), 1.5 * rng.standard_normal((n + 3, 10)) + 0.2
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    tr = np.sqrt(np.clip(np.linalg.eigvals(s1 @ s2).real, 0, None)).sum()
    expected = ((f1.mean(0) - f2.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr
    assert E.feature_distance(f1, f2) == pytest.approx(expected, rel=1e-6)
    assert E.fid(f1[:, :3, None, None], f1[:, :3, None, None], lambda x: x.flatten(1)) == pytest.approx(0, abs=1e-9)


# -----------------------------------------------------------------------------
# InceptionV3

@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """A random-weight network saved like the published file: (net, path)."""
    torch.manual_seed(0)
    net = E.InceptionV3().eval()
    path = tmp_path_factory.mktemp("weights") / E.WEIGHTS_FILE
    torch.save(net.state_dict(), path)
    return net, path


def test_inception_state_dict_layout():
    net = E.InceptionV3()
    sd = net.state_dict()
    assert len(sd) == 566
    assert sum(isinstance(m, E.BasicConv2d) for m in net.modules()) == 94
    shapes = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
              "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1), "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
              "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3), "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
              "Mixed_7c.branch_pool.bn.num_batches_tracked": (), "fc.weight": (1008, 2048), "fc.bias": (1008,)}
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert all(m.eps == 0.001 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(k.startswith("AuxLogits") for k in sd)


def test_inception_reloads_strictly_and_gives_2048_features(inception):
    net, path = inception
    loaded = E.load_inception(str(path))
    x = torch.rand(2, 3, 32, 32)
    f = E.encode(x, loaded)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())
    torch.save({"fc.bias": torch.zeros(1008)}, path.parent / "broken.pth")  # strict: missing keys fail
    with pytest.raises(RuntimeError, match="Missing key"):
        E.load_inception(str(path.parent / "broken.pth"))


def test_inception_fid_pooling():
    # Mixed_7c pools by max, the others average without the padding: a constant map stays constant at
    # the border under both, whereas torchvision's padded average would dim the corners to 4/9.
    x = torch.ones(1, 2, 5, 5)
    assert torch.allclose(E._avg_pool(x), x)
    assert E.InceptionV3().Mixed_7c.pool == "max" and E.InceptionV3().Mixed_7b.pool == "avg"


def test_missing_weights_message(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(E.WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=E.WEIGHTS_FILE) as err:
        E.load_inception()
    assert "pytorch-fid" in str(err.value) and "releases" in str(err.value)
    with pytest.raises(SystemExit) as ex:
        E.main(["fid", str(tmp_path), str(tmp_path)])
    assert ex.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert E.WEIGHTS_FILE in msg and "\n" not in msg


# -----------------------------------------------------------------------------
# cell features

@pytest.fixture(scope="module")
def synthetic():
    import data
    ds = data.synthetic_dataset("bbbc021", n_per_class=3, image_size=64, seed=1)
    return ((ds.images + 1) / 2).numpy(), ds.truth


def test_features_named_and_documented(synthetic):
    f = E.cell_features(synthetic[0][0])
    assert set(f) == {k for k in E.FEATURES if not k.startswith("golgi")}
    assert len(f) >= 60
    assert {"golgi_count", "golgi_area_mean"} <= set(E.cell_features(synthetic[0][0], golgi_channel=0))


def test_features_against_synthetic_truth(synthetic):
    x, truth = synthetic
    tab = E.feature_table(x)
    n = np.array([t["n_cells"] for t in truth])
    assert np.abs(tab["nuclei_count"] - n).mean() / n.mean() < 0.10
    for feature, key in (("cells_actin_mean", "actin_mean"), ("cells_tubulin_mean", "tubulin_mean"),
                         ("nuclei_dna_mean", "dna_mean")):
        v, t = tab[feature], np.array([d[key] for d in truth])
        ok = np.isfinite(v)
        assert ok.mean() > 0.95 and np.corrcoef(v[ok], t[ok])[0, 1] > 0.9, feature
    ok = np.isfinite(tab["nuclei_area"])
    assert np.corrcoef(tab["nuclei_area"][ok], [t["nucleus_area_mean"] for t, k in zip(truth, ok) if k])[0, 1] > 0.8


def test_golgi_features_see_fragmentation():
    import data
    ds = data.synthetic_dataset("golgi", n_per_class=12, image_size=64, seed=0)  # DMSO vs nocodazole
    tab = E.feature_table(((ds.images + 1) / 2).numpy(), golgi_channel=0)
    y = ds.labels.numpy()
    assert tab["golgi_count"][y == 1].mean() > 1.5 * tab["golgi_count"][y == 0].mean()
    fragments = [d["golgi_fragments"] * d["n_cells"] for d in ds.truth]  # mean per cell x cells
    assert np.corrcoef(tab["golgi_count"], fragments)[0, 1] > 0.6


def test_feature_table_workers_match(synthetic):
    a, b = E.feature_table(synthetic[0][:4]), E.feature_table(synthetic[0][:4], workers=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_features_on_empty_and_noise_images():
    rng = np.random.default_rng(0)
    for img in (np.zeros((3, 64, 64)), np.full((3, 64, 64), 0.5), rng.random((3, 64, 64))):
        f = E.cell_features(img)
        assert f["nuclei_count"] == 0 and math.isnan(f["nuclei_area"]) and math.isnan(f["cells_actin_mean"])
        assert f["cells_coverage"] == 0


def nuclei_field(rng, size=256, n=40):
    """A real-looking DAPI field: elliptical nuclei of radius 8-13 px, some touching, textured, blurred,
    with a background gradient and shot noise. Returns (image (1, H, W), number of nuclei)."""
    yy, xx = np.indices((size, size))
    img, centres = np.zeros((size, size)), []
    while len(centres) < n:
        r = rng.uniform(8, 13)
        y, x = rng.uniform(r, size - r, 2)
        if any(np.hypot(y - cy, x - cx) < 0.9 * (r + cr) for cy, cx, cr in centres):
            continue
        centres.append((y, x, r))
        a, b, th = r * rng.uniform(1, 1.25), r / rng.uniform(1, 1.25), rng.uniform(0, np.pi)
        u, v = (yy - y) * np.cos(th) + (xx - x) * np.sin(th), (xx - x) * np.cos(th) - (yy - y) * np.sin(th)
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        img[inside] = rng.uniform(0.4, 0.9) * (1 + 0.2 * rng.standard_normal(inside.sum()))
    img = ndimage.gaussian_filter(img, 1.5) + 0.05 + 0.05 * xx / size
    return np.clip(rng.poisson(img * 200) / 200, 0, 1)[None], n


def test_one_channel_real_like_nuclei_count():
    rng = np.random.default_rng(3)
    img, n = nuclei_field(rng)
    f = E.cell_features(img, nuclei_channel=0)
    assert abs(f["nuclei_count"] - n) <= 0.1 * n
    assert 0.9 < f["nuclei_solidity"] <= 1 and math.isnan(f["cytoplasm_ch0_mean"])


def test_shape_of_a_disk():
    yy, xx = np.indices((64, 64))
    f = E.cell_features((np.hypot(yy - 32, xx - 30) < 12).astype(float)[None], nuclei_channel=0)
    assert f["nuclei_count"] == 1
    assert f["nuclei_area"] == pytest.approx(np.pi * 144, rel=0.1)
    assert f["nuclei_perimeter"] == pytest.approx(2 * np.pi * 12, rel=0.1)
    assert f["nuclei_form_factor"] == pytest.approx(1, abs=0.1) and f["nuclei_eccentricity"] < 0.1
    assert f["nuclei_solidity"] == pytest.approx(1, abs=0.02)


# -----------------------------------------------------------------------------
# reconstruction error

def test_reconstruction_error_units(monkeypatch):
    import ddim
    x = torch.rand(3, 3, 8, 8) * 1.6 - 0.8
    zero_eps = lambda x_t, t, y: torch.zeros_like(x_t)  # DDIM with eps = 0 inverts exactly
    alpha = ddim.make_schedule("linear")
    m, rec = E.reconstruction_error(zero_eps, x, torch.zeros(3, dtype=torch.long), alpha, num_steps=5)
    assert torch.allclose(rec, x, atol=1e-5) and m["l2"].max() < 1e-3
    monkeypatch.setattr(ddim, "sample", lambda model, z, y, alpha, n: x + 0.1)  # off by 0.1 in [-1, 1]
    m, _ = E.reconstruction_error(zero_eps, x, torch.zeros(3, dtype=torch.long), alpha, num_steps=5)
    np.testing.assert_allclose(m["l2"], 0.1 * math.sqrt(3 * 8 * 8), rtol=1e-5)
    np.testing.assert_allclose(m["mse"], 0.05 ** 2, rtol=1e-5)
    np.testing.assert_allclose(m["psnr"], -10 * math.log10(0.05 ** 2), rtol=1e-5)


# -----------------------------------------------------------------------------
# the commands, end to end

def write_classes(root, sets):
    """{class: (N, 3, H, W) in [0, 1]} -> root/<class>/<i>.png (8-bit RGB)."""
    for name, x in sets.items():
        (root / name).mkdir(parents=True)
        for i, im in enumerate(x):
            Image.fromarray((np.asarray(im).transpose(1, 2, 0) * 255).round().astype(np.uint8)).save(root / name / f"{i}.png")
    return root


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """DMSO + latrunculin B at 3 doses, 4 images each: real, and 'translated' = real + mild noise."""
    import data
    ds = data.synthetic_dataset("bbbc021", n_per_class=4, image_size=64, seed=2, compounds=["latrunculin_b"])
    x = ((ds.images + 1) / 2).numpy()
    keep = ["DMSO", *ds.classes[3::2][:3]]
    real = {c: x[ds.labels.numpy() == ds.classes.index(c)] for c in keep}
    rng = np.random.default_rng(0)
    fake = {c: np.clip(v + 0.01 * rng.standard_normal(v.shape), 0, 1) for c, v in real.items()}
    root = tmp_path_factory.mktemp("folders")
    return write_classes(root / "real", real), write_classes(root / "fake", fake), keep


def test_cmd_fid_and_table1(inception, folders, tmp_path):
    _, weights = inception
    real, fake, classes = folders
    c = classes[-1]
    for name, src in (("real", real), ("fake", fake)):  # 2 images per set: Inception is slow on a CPU
        (tmp_path / name / c).mkdir(parents=True)
        for f in sorted((src / c).iterdir())[:2]:
            (tmp_path / name / c / f.name).write_bytes(f.read_bytes())
    E.main(["fid", str(tmp_path / "fake" / c), str(tmp_path / "fake" / c), "--inception-weights", str(weights),
            "--device", "cpu", "--out", str(tmp_path / "fid")])
    assert float(read_csv(tmp_path / "fid" / "fid.csv")[0]["fid"]) == pytest.approx(0, abs=1e-6)
    E.main(["table1", "--real", str(tmp_path / "real"), "--fake", str(tmp_path / "fake"), "--inception-weights",
            str(weights), "--device", "cpu", "--out", str(tmp_path / "t1")])
    rows = read_csv(tmp_path / "t1" / "table1.csv")
    assert [r["class"] for r in rows] == [c, "mean"] and [r["n_real"] for r in rows] == ["2", "2"]
    assert float(rows[0]["fid"]) > 0 and (tmp_path / "t1" / "table1.png").stat().st_size > 0


def test_cmd_fig4(folders, tmp_path):
    real, fake, _ = folders
    E.main(["fig4", "--real", str(real), "--fake", str(fake), "--out", str(tmp_path)])
    r = {row["feature"]: float(row["pearson_r"]) for row in read_csv(tmp_path / "fig4_correlations.csv")}
    assert len(r) >= 60 and r["cells_actin_mean"] > 0.9  # the 'translation' is the real image plus noise
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
        E.main(["ttest", "--real", str(real), "--feature", "cell_actin_mean", "--a", classes[0], "--b", classes[1]])
    assert "cells_actin_mean" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # outputs never go inside an input folder
        E.main(["ttest", "--real", str(real), "--feature", "nuclei_count", "--a", classes[0], "--b", classes[1],
                "--out", str(real / "results")])
    assert "input" in capsys.readouterr().err and not (real / "results").exists()


def test_cmd_recon(tmp_path):
    import data
    import model as model_lib
    classes = data.synthetic_classes("bbbc021")[0]
    torch.manual_seed(0)
    cfg = model_lib.UNetConfig.preset("tiny", num_classes=len(classes))
    net = model_lib.UNet(cfg)
    model_lib.save_checkpoint({"version": 1, "config": dataclasses.asdict(cfg), "classes": classes,
                               "channels": data.CHANNELS, "schedule": {"name": "linear", "T": 1000},
                               "normalization": data.UNIT_NORM, "model": net.state_dict(), "ema": net.state_dict(),
                               "optimizer": {}, "step": 0, "rng": {}, "args": {}}, tmp_path / "ckpt.pt")
    E.main(["recon", "--ckpt", str(tmp_path / "ckpt.pt"), "--data", "synthetic", "--n", "2", "--n-per-class", "1",
            "--steps", "2", "--fixed-point-iters", "1", "--device", "cpu", "--out", str(tmp_path / "out")])
    rows = read_csv(tmp_path / "out" / "recon.csv")
    assert [r["inversion"] for r in rows] == ["plain", "exact"] and all(int(r["n"]) == 2 for r in rows)
    assert all(float(r["psnr_mean"]) > 0 for r in rows)
    assert len(read_csv(tmp_path / "out" / "recon_per_image.csv")) == 4 and (tmp_path / "out" / "recon.png").exists()


def test_spearman_is_scipys_on_the_finite_pairs_and_nan_when_undefined():
    from scipy.stats import spearmanr
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 4, 8).astype(float), rng.normal(size=8)  # ties in a: average ranks, as scipy
    assert E.spearman(a, b) == pytest.approx(spearmanr(a, b)[0], abs=1e-12)
    a[2], b[5] = np.nan, np.inf
    ok = np.isfinite(a) & np.isfinite(b)
    assert E.spearman(a, b) == pytest.approx(spearmanr(a[ok], b[ok])[0], abs=1e-12)
    assert E.spearman(np.arange(8.0), -np.exp(np.arange(8.0))) == pytest.approx(-1.0)  # monotone, not linear
    assert math.isnan(E.spearman(np.arange(8.0), np.ones(8)))  # constant: undefined
    assert math.isnan(E.spearman(np.arange(2.0), np.arange(2.0)))  # fewer than 3 pairs
