"""features.py against known answers: the synthetic ground truth, a real-looking nuclei field, a
disk's shape, empty and noise images, Golgi fragmentation."""
import math

import numpy as np
import pytest
from scipy import ndimage

from evaluation import features as F


@pytest.fixture(scope="module")
def synthetic():
    import data
    ds = data.synthetic_dataset("bbbc021", n_per_class=3, image_size=64, seed=1)
    return ((ds.images + 1) / 2).numpy(), ds.truth


def test_features_named_and_documented(synthetic):
    f = F.cell_features(synthetic[0][0])
    assert set(f) == {k for k in F.FEATURES if not k.startswith("golgi")}
    assert len(f) >= 60
    assert ({"golgi_count", "golgi_area_mean"}
            <= set(F.cell_features(synthetic[0][0], golgi_channel=0)))


def test_features_against_synthetic_truth(synthetic):
    x, truth = synthetic
    tab = F.feature_table(x)
    n = np.array([t["n_cells"] for t in truth])
    assert np.abs(tab["nuclei_count"] - n).mean() / n.mean() < 0.10
    for feature, key in (("cells_actin_mean", "actin_mean"), ("cells_tubulin_mean", "tubulin_mean"),
                         ("nuclei_dna_mean", "dna_mean")):
        v, t = tab[feature], np.array([d[key] for d in truth])
        ok = np.isfinite(v)
        assert ok.mean() > 0.95 and np.corrcoef(v[ok], t[ok])[0, 1] > 0.9, feature
    ok = np.isfinite(tab["nuclei_area"])
    assert np.corrcoef(tab["nuclei_area"][ok],
                       [t["nucleus_area_mean"] for t, k in zip(truth, ok) if k])[0, 1] > 0.8


def test_golgi_features_see_fragmentation():
    import data
    # DMSO vs nocodazole
    ds = data.synthetic_dataset("golgi", n_per_class=12, image_size=64, seed=0)
    tab = F.feature_table(((ds.images + 1) / 2).numpy(), golgi_channel=0)
    y = ds.labels.numpy()
    assert tab["golgi_count"][y == 1].mean() > 1.5 * tab["golgi_count"][y == 0].mean()
    fragments = [d["golgi_fragments"] * d["n_cells"] for d in ds.truth]  # mean per cell x cells
    assert np.corrcoef(tab["golgi_count"], fragments)[0, 1] > 0.6


def test_feature_table_workers_match(synthetic):
    a, b = F.feature_table(synthetic[0][:4]), F.feature_table(synthetic[0][:4], workers=2)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_features_on_empty_and_noise_images():
    rng = np.random.default_rng(0)
    for img in (np.zeros((3, 64, 64)), np.full((3, 64, 64), 0.5), rng.random((3, 64, 64))):
        f = F.cell_features(img)
        assert (f["nuclei_count"] == 0 and math.isnan(f["nuclei_area"])
                and math.isnan(f["cells_actin_mean"]))
        assert f["cells_coverage"] == 0


def nuclei_field(rng, size=256, n=40):
    """A real-looking DAPI field: elliptical nuclei of radius 8-13 px, some touching, textured,
    blurred, with a background gradient and shot noise.
    Returns (image (1, H, W), number of nuclei)."""
    yy, xx = np.indices((size, size))
    img, centres = np.zeros((size, size)), []
    while len(centres) < n:
        r = rng.uniform(8, 13)
        y, x = rng.uniform(r, size - r, 2)
        if any(np.hypot(y - cy, x - cx) < 0.9 * (r + cr) for cy, cx, cr in centres):
            continue
        centres.append((y, x, r))
        a, b, th = r * rng.uniform(1, 1.25), r / rng.uniform(1, 1.25), rng.uniform(0, np.pi)
        u, v = ((yy - y) * np.cos(th) + (xx - x) * np.sin(th),
                (xx - x) * np.cos(th) - (yy - y) * np.sin(th))
        inside = (u / a) ** 2 + (v / b) ** 2 <= 1
        img[inside] = rng.uniform(0.4, 0.9) * (1 + 0.2 * rng.standard_normal(inside.sum()))
    img = ndimage.gaussian_filter(img, 1.5) + 0.05 + 0.05 * xx / size
    return np.clip(rng.poisson(img * 200) / 200, 0, 1)[None], n


def test_one_channel_real_like_nuclei_count():
    rng = np.random.default_rng(3)
    img, n = nuclei_field(rng)
    f = F.cell_features(img, nuclei_channel=0)
    assert abs(f["nuclei_count"] - n) <= 0.1 * n
    assert 0.9 < f["nuclei_solidity"] <= 1 and math.isnan(f["cytoplasm_ch0_mean"])


def test_shape_of_a_disk():
    yy, xx = np.indices((64, 64))
    f = F.cell_features((np.hypot(yy - 32, xx - 30) < 12).astype(float)[None], nuclei_channel=0)
    assert f["nuclei_count"] == 1
    assert f["nuclei_area"] == pytest.approx(np.pi * 144, rel=0.1)
    assert f["nuclei_perimeter"] == pytest.approx(2 * np.pi * 12, rel=0.1)
    assert f["nuclei_form_factor"] == pytest.approx(1, abs=0.1) and f["nuclei_eccentricity"] < 0.1
    assert f["nuclei_solidity"] == pytest.approx(1, abs=0.02)
