"""data.py: the synthetic benchmark's ground truth, every loader on fabricated files in the real
layouts, normalisation, augmentation and the one-line errors. CPU, a few seconds."""
import csv

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import ndimage

import data
import files
from tools import prepare
from tests.helpers import fails


@pytest.fixture(scope="module")
def paired():
    """Every class's image i is the same field under another dose:
    shifts show without sampling noise."""
    return data.synthetic_dataset("bbbc021", n_per_class=24, image_size=32, seed=3, paired=True)


def by_class(ds, key):
    return {c: np.array([t[key] for t in ds.truth if t["class"] == c]) for c in ds.classes}


# ----------------------------------------------------------------------------- synthetic benchmark

def test_same_seed_same_images_and_streams_per_image():
    a = data.synthetic_dataset("bbbc021", n_per_class=3, image_size=32, seed=0)
    b = data.synthetic_dataset("bbbc021", n_per_class=3, image_size=32, seed=0)
    c = data.synthetic_dataset("bbbc021", n_per_class=2, image_size=32, seed=0)
    d = data.synthetic_dataset("bbbc021", n_per_class=3, image_size=32, seed=1)
    assert torch.equal(a.images, b.images) and a.truth[5]["actin_mean"] == b.truth[5]["actin_mean"]
    # n_per_class reshuffles nothing
    assert torch.equal(a.images.view(25, 3, 3, 32, 32)[:, :2], c.images.view(25, 2, 3, 32, 32))
    assert not torch.equal(a.images, d.images)
    lat = data.synthetic_dataset("bbbc021", n_per_class=3, image_size=32, seed=0,
                                 compounds=["latrunculin_b"])
    assert torch.equal(lat.images,
                       a.images[np.isin(a.labels, [a.classes.index(n) for n in lat.classes])])


def test_classes_channels_and_image_format():
    ds = data.synthetic_dataset("bbbc021", n_per_class=2, image_size=32)
    assert (len(ds.classes) == 25 and ds.classes[0] == "DMSO"
            and ds.channels == ["actin", "tubulin", "dna"])
    groups = files.compounds(ds.classes)
    assert list(groups) == ["DMSO", "herbimycin_a", "latrunculin_b", "nocodazole"]
    # each compound by increasing concentration
    assert ds.classes == [n for g in groups.values() for n in g]
    assert ("latrunculin_b_0.1uM" in ds.classes
            and files.parse_class("latrunculin_b_0.1uM") == ("latrunculin_b", 0.1))
    assert (files.parse_class("DMSO") == ("DMSO", 0.0)
            and files.parse_class("protein_synthesis") == ("protein_synthesis", None))
    for names in list(groups.values())[1:]:
        concs = [files.parse_class(n)[1] for n in names]
        assert len(concs) == 8 and concs == sorted(concs)
    assert ds.images.dtype == torch.float32 and ds.images.shape == (50, 3, 32, 32)
    assert ds.images.min() >= -1 and ds.images.max() <= 1 and ds.normalization == data.UNIT_NORM
    levels = (ds.images + 1) / 2 * 255
    assert torch.allclose(levels, levels.round(), atol=1e-3)  # 8-bit, so PNG round trips are exact
    assert ds.labels.tolist() == [i // 2 for i in range(50)] and len(ds.truth) == 50
    g = data.synthetic_dataset("golgi", n_per_class=2, image_size=32)
    assert g.classes == ["DMSO", "nocodazole_1uM"] and g.channels == ["golgi", "tubulin", "dna"]
    for key in ("n_cells", "nucleus_area_mean", "cell_area_mean", "golgi_mean", "tubulin_mean",
                "dna_mean", "golgi_fragments", "golgi_area_mean", "cell_golgi_fragments"):
        assert key in g.truth[0]
    t = ds.truth[0]
    assert all(len(t[k]) == t["n_cells"]
               for k in ("cell_area", "nucleus_area", "cell_actin", "cell_tubulin", "cell_dna"))


def test_dose_responses_monotone_with_the_promised_effect_sizes(paired):
    dmso = data.synthetic_dataset("bbbc021", n_per_class=300, image_size=16, seed=4, compounds=[])
    for compound, (concs, _, _, effects) in data.COMPOUNDS.items():
        names = ["DMSO"] + [files.class_name(compound, c) for c in concs]
        for p, e in effects.items():
            if p == "golgi_fragmentation":
                continue
            sd = np.std([t[p] for t in dmso.truth])
            # the image-to-image SD is as designed
            assert sd == pytest.approx(data.PARAMS[p][1], rel=0.15)
            means = np.array([by_class(paired, p)[n].mean() for n in names])
            # monotone in dose
            assert np.all(np.sign(e) * np.diff(means) >= 0), (compound, p, means)
            shift = (means - means[0]) / sd
            # invisible per image
            assert abs(shift[1]) < 0.25 and abs(shift[2]) < 0.25, (compound, p, shift)
            assert abs(shift[-1]) > 2, (compound, p, shift)  # obvious
    n = by_class(paired, "n_cells")
    assert n["latrunculin_b_10uM"].mean() < 0.7 * n["DMSO"].mean()


def otsu(v):
    hist, edges = np.histogram(v, 64)
    c, w = (edges[1:] + edges[:-1]) / 2, np.cumsum(hist)
    m = np.cumsum(hist * c)
    return c[((m[-1] * w / w[-1] - m) ** 2 / np.maximum(w * (w[-1] - w), 1)).argmax()]


def measure(x):
    """Pixel features with threshold masks: mean R, G in cells, mean B in nuclei, nuclear area, and
    tubulin texture (fine-scale contrast: filaments are sharp, diffuse tubulin is smooth)."""
    tot = ndimage.gaussian_filter(x.sum(0), 1)
    cells = tot > otsu(tot)
    nuc = ndimage.gaussian_filter(x[2], 1)
    nuc = nuc > otsu(nuc)
    return {"actin": x[0][cells].mean(), "tubulin": x[1][cells].mean(), "dna": x[2][nuc].mean(),
            "nuc_area": nuc.sum() / max(ndimage.label(nuc)[1], 1),
            "tub_texture": (np.abs(x[1] - ndimage.gaussian_filter(x[1], 1.5))[cells].mean()
                            / x[1][cells].mean())}


def test_dose_responses_measurable_on_pixels():
    ds = data.synthetic_dataset("bbbc021", n_per_class=16, image_size=64, seed=5,
                                compounds=["latrunculin_b", "nocodazole"], paired=True)
    feats = [measure(((x + 1) / 2).numpy()) for x in ds.images]
    f = {k: np.array([v[k] for v in feats]) for k in feats[0]}
    for k, t in (("actin", "actin_mean"), ("tubulin", "tubulin_mean"), ("dna", "dna_mean")):
        # truth intensities are what pixels show
        assert np.corrcoef(f[k], [x[t] for x in ds.truth])[0, 1] > 0.9, k
    mean = lambda k, c: f[k][ds.labels.numpy() == ds.classes.index(c)].mean()
    red = [mean("actin", c)
           for c in ("DMSO", "latrunculin_b_0.3uM", "latrunculin_b_1uM", "latrunculin_b_10uM")]
    assert np.all(np.diff(red) < 0) and red[-1] < 0.8 * red[0]
    assert mean("nuc_area", "nocodazole_3uM") > 1.15 * mean("nuc_area", "DMSO")
    # filaments -> diffuse
    assert mean("tub_texture", "nocodazole_3uM") < 0.8 * mean("tub_texture", "DMSO")
    g = data.synthetic_dataset("golgi", n_per_class=16, image_size=64, seed=5)
    frag = by_class(g, "golgi_fragments")
    assert frag["nocodazole_1uM"].mean() > 2.5 * frag["DMSO"].mean()
    red = [ndimage.gaussian_filter(x[0].numpy(), 0.7) for x in g.images]
    blobs = [ndimage.label(r > otsu(r))[1] for r in red]  # Golgi elements seen in the red channel
    assert np.mean(blobs[16:]) > 1.5 * np.mean(blobs[:16])


# ---------------------------------------------------------------------- normalisation, augmentation

def test_normalize_round_trip_numpy_and_torch():
    rng = np.random.default_rng(0)
    raw = rng.uniform(0.01, 0.2, (4, 3, 8, 8)).astype(np.float32)
    norm = data.percentiles(raw, 0, 100)
    x = data.normalize(raw, norm)
    assert x.min() == pytest.approx(-1) and x.max() == pytest.approx(1)
    np.testing.assert_allclose(data.denormalize(x, norm), raw, atol=1e-6)
    xt = data.normalize(torch.from_numpy(raw), norm)
    torch.testing.assert_close(data.denormalize(xt, norm), torch.from_numpy(raw), atol=1e-6, rtol=0)
    assert data.normalize(raw * 2, norm).max() == 1  # out of range is clipped


def test_augment_permutes_pixels_per_sample():
    x = torch.randn(64, 3, 8, 8)
    y = data.augment(x, torch.Generator().manual_seed(0))
    # same pixels, moved
    assert torch.equal(x.flatten(1).sort(1).values, y.flatten(1).sort(1).values)
    seen = {tuple(int((yi == t).all())
                  for t in (xi, xi.flip(-1), xi.flip(-2), xi.transpose(-1, -2)))
            for xi, yi in zip(x, y)}
    assert len(seen) > 3  # samples got different transforms
    assert torch.equal(y, data.augment(x, torch.Generator().manual_seed(0)))


def test_distributed_sampler_splits_the_dataset():
    ds = data.synthetic_dataset("golgi", n_per_class=5, image_size=16)
    parts = [list(torch.utils.data.DistributedSampler(ds, num_replicas=2, rank=r, shuffle=False))
             for r in (0, 1)]
    assert sorted(parts[0] + parts[1]) == list(range(10))
    x, y = next(iter(torch.utils.data.DataLoader(
        ds, batch_size=4, sampler=torch.utils.data.DistributedSampler(ds, 2, 1))))
    assert x.shape == (4, 3, 16, 16) and y.dtype == torch.long


# ---------------------------------------------------------------------- loaders on fabricated files

def save16(path, *channels):
    """16-bit TIFF or PNG, one page per channel
    (PIL writes 16-bit as single-channel 'I;16' pages)."""
    pages = [Image.fromarray(c.astype(np.uint16)) for c in channels]
    pages[0].save(path, save_all=len(pages) > 1, append_images=pages[1:])


def test_read_image_formats(tmp_path):
    rng = np.random.default_rng(0)
    a16 = rng.integers(0, 65536, (3, 10, 12)).astype(np.uint16)
    save16(tmp_path / "one.tif", a16[0])
    save16(tmp_path / "three.tif", *a16)
    save16(tmp_path / "one16.png", a16[0])
    rgb = rng.integers(0, 256, (10, 12, 3)).astype(np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.tif")
    np.save(tmp_path / "chw.npy", a16)
    np.save(tmp_path / "hwc.npy", rgb.astype(np.float32) / 7)
    np.testing.assert_array_equal(files.read_image(tmp_path / "one.tif"),
                                  a16[:1] / np.float32(65535))
    np.testing.assert_array_equal(files.read_image(tmp_path / "three.tif"), a16 / np.float32(65535))
    np.testing.assert_array_equal(files.read_image(tmp_path / "one16.png"),
                                  a16[:1] / np.float32(65535))
    np.testing.assert_array_equal(files.read_image(tmp_path / "rgb.png"),
                                  rgb.transpose(2, 0, 1) / np.float32(255))
    assert files.read_image(tmp_path / "gray.tif").shape == (1, 10, 12)
    np.testing.assert_array_equal(files.read_image(tmp_path / "chw.npy"), a16 / np.float32(65535))
    np.testing.assert_array_equal(files.read_image(tmp_path / "hwc.npy"),
                                  rgb.transpose(2, 0, 1).astype(np.float32) / 7)


@pytest.mark.filterwarnings("ignore:skipped 1 non-image")
def test_class_folder_loader(tmp_path):
    rng = np.random.default_rng(0)
    for cls in ("nocodazole_1uM", "DMSO", "nocodazole_0.1uM"):
        (tmp_path / cls).mkdir()
        for i in range(2):
            save16(tmp_path / cls / f"{i}.tif", *rng.integers(1000, 5000, (3, 20, 20)))
    (Image.fromarray(rng.integers(0, 256, (24, 24, 3)).astype(np.uint8))
     .save(tmp_path / "DMSO" / "x.png"))
    np.save(tmp_path / "DMSO" / "y.npy", rng.random((3, 20, 20)).astype(np.float32) * 0.1)
    (tmp_path / "DMSO" / "notes.txt").write_text("not an image")
    with pytest.warns(UserWarning, match="notes.txt"):
        ds = data.load_dataset(str(tmp_path), image_size=16)
    assert (ds.classes == ["DMSO", "nocodazole_0.1uM", "nocodazole_1uM"]
            and ds.labels.tolist() == [0] * 4 + [1, 1, 2, 2])
    assert ds.images.shape == (8, 3, 16, 16) and ds.images.min() == -1 and ds.images.max() == 1
    assert ds.channels == ["actin", "tubulin", "dna"] and len(ds.normalization["low"]) == 3
    resized = data.load_dataset(str(tmp_path), image_size=32, fit="resize",
                                compounds=["nocodazole"])
    assert resized.images.shape[-1] == 32 and len(resized.classes) == 3
    with pytest.raises(ValueError, match="smaller than image_size 32.*resize"):
        data.load_dataset(str(tmp_path), image_size=32)
    norm = {"low": [0, 0, 0], "high": [1, 1, 1]}
    again = data.load_dataset(str(tmp_path), image_size=16, normalization=norm)
    assert again.normalization == norm


def test_npz_loader_reorders_recognised_channels(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(500, 40000, (6, 68, 68, 3)).astype(np.uint16)
    np.savez(tmp_path / "crops.npz", images=images, labels=np.array([0, 1, 0, 1, 0, 1]),
             classes=np.array(["DMSO", "protein_synthesis"]),
             channels=np.array(["DNA", "tubulin", "actin"]))
    ds = data.load_dataset(str(tmp_path / "crops.npz"), image_size=64)
    assert (ds.classes == ["DMSO", "protein_synthesis"]
            and ds.channels == ["actin", "tubulin", "dna"])
    raw = data.denormalize(ds.images, ds.normalization).numpy()
    # DNA, tub, actin -> actin, tub, DNA
    centre = images[:, 2:66, 2:66].transpose(0, 3, 1, 2)[:, ::-1] / np.float32(65535)
    inside = (ds.images > -1) & (ds.images < 1)
    np.testing.assert_allclose(raw[inside], centre[inside.numpy()], atol=1e-5)
    np.savez(tmp_path / "plain.npz", images=rng.random((4, 16, 16)), labels=np.zeros(4, int),
             classes=np.array(["a"]))
    ds = data.load_dataset(str(tmp_path / "plain.npz"), image_size=16)
    assert ds.images.shape == (4, 1, 16, 16) and ds.channels == ["ch0"]


def test_sites_split_holds_out_whole_fields_of_view(tmp_path):
    rng = np.random.default_rng(0)
    site = np.array(["A_s1", "A_s1", "A_s2", "B_s1", "B_s2", "B_s2"])
    np.savez(tmp_path / "crops.npz", images=rng.integers(0, 9, (6, 8, 8, 3)).astype(np.uint16),
             labels=np.array([0, 0, 0, 1, 1, 1]), classes=np.array(["DMSO", "drug"]), site=site)
    prepare.main(["sites", "--data", str(tmp_path / "crops.npz"), "--test", "A_s2", "B_s1",
               "--out", str(tmp_path / "split")])
    with np.load(tmp_path / "split" / "train.npz") as tr, \
            np.load(tmp_path / "split" / "test.npz") as te:
        assert list(tr["site"]) == ["A_s1", "A_s1", "B_s2", "B_s2"]
        assert list(te["site"]) == ["A_s2", "B_s1"] and list(te["labels"]) == [0, 1]
        assert list(te["classes"]) == ["DMSO", "drug"]  # arrays not per crop are kept whole
    run = ["sites", "--data", str(tmp_path / "crops.npz"), "--out", str(tmp_path / "other")]
    assert "not in" in fails(prepare.main, run + ["--test", "C_s9"])
    assert "no images of class(es) ['drug']" in fails(prepare.main,
                                                      run + ["--test", "B_s1", "B_s2"])
    assert "already" in fails(prepare.main, run[:-1] + [str(tmp_path / "split"), "--test", "A_s2",
                                                      "B_s1"])


def fabricate_bbbc021(root, rng, h=40, w=48):
    """The official layout: BBBC021_v1_image.csv plus one 16-bit TIFF per channel
    in plate folders."""
    rows = []
    for i, (compound, conc) in enumerate([("DMSO", 0.0), ("latrunculin B", 0.3),
                                          ("latrunculin B", 1.0), ("taxol", 0.1), ("DMSO", 0.0)]):
        plate = f"Week1_2212{i % 2}"
        (root / plate).mkdir(parents=True, exist_ok=True)
        row = {"TableNumber": 1, "ImageNumber": i, "Image_Metadata_Plate_DAPI": plate,
               "Image_Metadata_Well_DAPI": "B02", "Replicate": 1,
               "Image_Metadata_Compound": compound, "Image_Metadata_Concentration": conc}
        for c, v in (("DAPI", 30000), ("Tubulin", 20000), ("Actin", 10000)):
            name = f"{plate}_B02_s{i}_w{c}.tif"
            save16(root / plate / name, rng.integers(v - 500, v + 500, (h, w)))
            row.update({f"Image_FileName_{c}": name, f"Image_PathName_{c}": plate})
        rows.append(row)
    with open(root / "BBBC021_v1_image.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def test_bbbc021_loader_and_prepare(tmp_path):
    root = tmp_path / "bbbc021"
    fabricate_bbbc021(root, np.random.default_rng(0))
    ds = data.load_dataset(str(root), image_size=16, compounds=["latrunculin B"], crops_per_site=3)
    assert (ds.classes == ["DMSO", "latrunculin_b_0.3uM", "latrunculin_b_1uM"]
            and ds.channels == ["actin", "tubulin", "dna"])
    assert (ds.images.shape == (12, 3, 16, 16)
            and ds.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2, 0, 0, 0])
    raw = data.denormalize(ds.images, ds.normalization).mean((0, 2, 3)) * 65535
    # actin -> R, tubulin -> G, DNA -> B
    np.testing.assert_allclose(raw.numpy(), [10000, 20000, 30000], rtol=0.01)
    assert data.load_dataset(str(root), image_size=16, fit="resize").images.shape == (5, 3, 16, 16)
    out = tmp_path / "prepared"
    prepare.main(["prepare", "--bbbc021", str(root), "--compounds", "latrunculin B", "--size", "16",
               "--out", str(out)])
    assert sorted(p.name for p in out.iterdir()) == ds.classes
    again = data.load_dataset(str(out), image_size=16)
    assert again.classes == ds.classes and len(again) == 4 * 4
    raw0 = data.read_raw(str(root), 16, ["latrunculin B"])[0]
    # 16-bit crops are lossless
    np.testing.assert_array_equal(files.read_image(out / "DMSO" / "000000.tif"), raw0[0])
    with pytest.raises(SystemExit):
        # --out is not empty
        prepare.main(["prepare", "--bbbc021", str(root), "--size", "16", "--out", str(out)])


def test_synthetic_command_writes_folders_that_load_back_identically(tmp_path, capsys):
    out = tmp_path / "syn"
    prepare.main(["synthetic", "--kind", "golgi", "--n-per-class", "3", "--size", "32",
               "--out", str(out)])
    ds = data.synthetic_dataset("golgi", 3, 32)
    back = data.load_dataset(str(out), image_size=32, normalization=data.UNIT_NORM)
    assert (back.classes == ds.classes and torch.equal(back.images, ds.images)
            and torch.equal(back.labels, ds.labels))
    rows = list(csv.DictReader(open(out / "truth.csv")))
    assert (len(rows) == 6 and rows[0]["file"] == "DMSO/DMSO_00000.png"
            and float(rows[3]["golgi_fragments"]) > 0)
    with pytest.raises(SystemExit):
        prepare.main(["synthetic", "--n-per-class", "1", "--size", "16", "--out", str(out)])
    assert "already holds" in capsys.readouterr().err
    prepare.main(["montage", "--out", str(tmp_path / "docs"), "--size", "16", "--rows", "1",
               "--scale", "1"])
    assert len(list((tmp_path / "docs").glob("montage_*.png"))) == 4


# ----------------------------------------------------------------------------- errors

def one_line_error(match, fn, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)


def test_bad_input_errors(tmp_path):
    one_line_error("does not exist", data.load_dataset, str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    one_line_error("no class sub-folders with images", data.load_dataset, str(tmp_path / "empty"))
    bad = tmp_path / "bad" / "DMSO"
    bad.mkdir(parents=True)
    (bad / "a.png").write_bytes(b"not a png")
    one_line_error(r"cannot read image .*a\.png", data.load_dataset, str(tmp_path / "bad"))
    mixed = tmp_path / "mixed"
    for cls, n in (("DMSO", 3), ("taxol_1uM", 1)):
        (mixed / cls).mkdir(parents=True)
        np.save(mixed / cls / "x.npy", np.zeros((16, 16, n), np.float32))
    one_line_error(r"x\.npy has 1 channel.* 3", data.load_dataset, str(mixed), image_size=16)
    (mixed / "taxol_1uM" / "x.npy").unlink()
    np.save(mixed / "taxol_1uM" / "x.npy", np.zeros((16, 16, 3), np.float32))
    one_line_error("unknown compound 'aspirin' in .*available: taxol", data.load_dataset,
                   str(mixed), 16, compounds=["aspirin"])
    one_line_error("unknown compound 'aspirin'; available: herbimycin_a, latrunculin_b, nocodazole",
                   data.synthetic_dataset, "bbbc021", 1, 16, compounds=["aspirin"])
    root = tmp_path / "bbbc021"
    fabricate_bbbc021(root, np.random.default_rng(0), 8, 8)
    one_line_error("unknown compound 'aspirin' in .*available: DMSO, latrunculin B, taxol",
                   data.load_dataset, str(root), 8, compounds=["aspirin"])
    lines = (root / "BBBC021_v1_image.csv").read_text().splitlines()
    (root / "BBBC021_v1_image.csv").write_text(
        "\n".join(l.replace("Image_Metadata_Compound", "Compound") for l in lines))
    one_line_error("lacks column.*Image_Metadata_Compound", data.load_dataset, str(root), 8)
    one_line_error("unknown synthetic kind", data.synthetic_dataset, "cells")


def test_synthetic_images_are_finite_when_cells_collide():
    """At 16 px two candidate cells can be pushed into the same corner (distance 0): image 137 of
    the Golgi set's DMSO class (seed 1) was NaN before the push divided by at least 1e-6."""
    x = data.synthetic_dataset("golgi", 140, 16, seed=1, compounds=None).images
    assert torch.isfinite(x).all()
