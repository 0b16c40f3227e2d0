"""representation.py against hand counts and planted structure, and `eval.py represent` end to end
on a stand-in encoder method."""
import csv
from dataclasses import dataclass

import numpy as np
import pytest
import torch

import data
import eval as E
import method as M
from evaluation import representation as R
from tests.helpers import fails

# -----------------------------------------------------------------------------
# macro F1, classifiers


def test_macro_f1_matches_a_hand_count():
    true = [0, 0, 0, 1, 1, 2, 2]
    pred = [0, 0, 1, 1, 2, 2, 0]
    assert R.confusion(true, pred, 3).tolist() == [[2, 1, 0], [0, 1, 1], [1, 0, 1]]
    # class 0: TP 2, FP 1, FN 1 -> 4/6; class 1: TP 1, FP 1, FN 1 -> 2/4; class 2: the same
    assert R.macro_f1(true, pred, 3) == pytest.approx((4 / 6 + 2 / 4 + 2 / 4) / 3)
    # a class never true nor predicted does not count; one predicted but never true counts as 0
    assert R.macro_f1([0, 1], [0, 1], 5) == 1.0
    assert R.macro_f1([0, 0], [0, 3], 4) == pytest.approx((2 / 3 + 0) / 2)
    assert R.chance_f1([0, 1, 2, 0, 1, 2], 3) == pytest.approx(1 / 3)


def test_knn_is_perfect_on_separable_features_and_uses_the_cosine():
    rng = np.random.default_rng(0)
    centres = 5 * np.eye(4, 16)
    y = np.repeat(np.arange(4), 10)
    f = centres[y] + 0.1 * rng.standard_normal((40, 16))
    test = R.split(y, every=5)
    assert R.knn_f1(f[~test], y[~test], f[test], y[test]) == 1.0
    # cosine, not Euclidean distance: (1.5, 2) is nearer to (1, 0) but points along (0, 10)
    assert R.nearest_neighbour([[1.0, 0], [0, 10]], [0, 1], [[1.5, 2]]).tolist() == [1]


# fewer dimensions than training images, and more (fitted in their row space)
@pytest.mark.parametrize("d, at_least", [(50, 0.9), (400, 0.7)])
def test_linear_probe_finds_one_informative_dimension_among_noisy_ones(d, at_least):
    rng = np.random.default_rng(1)
    y = np.repeat([0, 1], 100)
    f = 3 * rng.standard_normal((200, d))  # noisy dimensions swamp the distances ...
    f[:, 0] = y + 0.2 * rng.standard_normal(200)  # ... the class lives in dimension 0
    test = R.split(y, every=4)
    knn = R.knn_f1(f[~test], y[~test], f[test], y[test])
    probe = R.linear_probe_f1(f[~test], y[~test], f[test], y[test])
    assert probe > at_least and probe > knn + 0.2


def test_split_holds_out_whole_blocks_of_each_class():
    y = np.array([0] * 10 + [1] * 5)
    assert np.flatnonzero(R.split(y, every=2, block=2)).tolist() == [0, 1, 4, 5, 8, 9, 10, 11, 14]

# -----------------------------------------------------------------------------
# normalisation, PCA, compounds, interpolation


def test_normalise_to_control_per_batch():
    rng = np.random.default_rng(2)
    f = rng.standard_normal((60, 3)) * [1, 5, 0] + [2, -1, 7]  # a constant third dimension
    labels, batches = np.tile([0, 1, 2], 20), np.repeat([0, 1], 30)
    f[batches == 1] += 10  # a plate effect
    out = R.normalise_to_control(f, labels, 1, batches=batches)
    for b in (0, 1):
        ctrl = out[(labels == 1) & (batches == b)]
        assert np.allclose(ctrl.mean(0), 0) and np.allclose(ctrl.std(0), [1, 1, 0])
    with pytest.raises(ValueError, match="batch 1 has no control"):
        R.normalise_to_control(f, labels, 1, batches=batches, mask=batches == 0)


@pytest.mark.parametrize("n, d", [(200, 5), (30, 60)])  # tall, and wide as pixels are
def test_pca_recovers_a_planted_line(n, d):
    rng = np.random.default_rng(3)
    direction = rng.standard_normal(d)
    direction /= np.linalg.norm(direction)
    f = rng.standard_normal((n, 1)) * 5 * direction + 0.1 * rng.standard_normal((n, d)) + 4
    scores, axes, ratio = R.pca(f, 2)
    assert abs(axes[0] @ direction) > 0.999 and 0.9 < ratio[0] < 1 and ratio[1] < 0.05
    assert np.allclose(axes @ axes.T, np.eye(2), atol=1e-9)
    assert scores.shape == (n, 2) and abs(scores.mean(0)).max() < 1e-9


def test_compound_groups_of_synthetic_class_names():
    classes = data.synthetic_classes()[0]
    groups = R.compound_groups(classes)
    assert groups["DMSO"] == "DMSO" and groups["latrunculin_b_0.003uM"] == "latrunculin_b"
    assert set(groups.values()) == {"DMSO", "latrunculin_b", "nocodazole", "herbimycin_a"}
    above = R.compound_groups(classes, R.SYNTHETIC_EC50)  # EC50: Lat B 0.3, Noc 0.05, Herb A 1
    kept = [c for c, g in above.items() if g]
    assert kept == ["DMSO", "herbimycin_a_3uM", "herbimycin_a_10uM", "herbimycin_a_30uM",
                    "latrunculin_b_1uM", "latrunculin_b_3uM", "latrunculin_b_10uM",
                    "nocodazole_0.1uM", "nocodazole_0.3uM", "nocodazole_1uM", "nocodazole_3uM"]
    assert R.compound_groups(["control", "drug_x_1uM"], R.SYNTHETIC_EC50) == {
        "control": "control", "drug_x_1uM": "drug_x"}  # real names: the prefix, every dose


def test_interpolate_and_path_between_centroids():
    p = R.interpolate([0.0, 2.0], [4.0, -2.0], 5)
    assert p.tolist() == [[0, 2], [1, 1], [2, 0], [3, -1], [4, -2]]
    f, labels = np.array([[0.0, 0], [2, 0], [10, 10], [10, 12]]), np.array([0, 0, 1, 1])
    assert R.path_features(f, labels, 0, 1, 3).tolist() == [[1, 0], [5.5, 5.5], [10, 11]]

# -----------------------------------------------------------------------------
# floors and the synthetic benchmark


@pytest.fixture(scope="module")
def latb():
    """DMSO and Latrunculin B, 32x32, 20 images per class."""
    return data.synthetic_dataset(n_per_class=20, image_size=32, compounds=["latrunculin_b"])


def test_channel_statistics_separate_dmso_from_the_top_latrunculin_dose(latb):
    ds = latb.select(["DMSO", "latrunculin_b_10uM"])
    f, y = R.channel_statistics(ds.images).numpy(), ds.labels.numpy()
    assert f.shape == (40, 6) and R.pixels(ds.images).shape == (40, 3 * 32 * 32)
    assert f[y == 1, 0].mean() < f[y == 0, 0].mean()  # the actin channel falls with dose
    test = R.split(y, every=4)
    assert R.knn_f1(f[~test], y[~test], f[test], y[test]) >= 0.9


def test_path_trend_of_a_real_dose_series_loses_actin(latb):
    doses = [latb.images[latb.labels == k][:2] for k in (0, 3, 5, 7, 8)]  # DMSO ... 10 uM
    means, rho = R.path_trend(torch.stack(doses))
    assert means.shape == (5,) and rho < -0.8

# -----------------------------------------------------------------------------
# represent() and eval.py represent


@dataclass
class FakeConfig:
    image_size: int = 16
    in_channels: int = 3
    num_classes: int = 2
    steps: int = 1


class FakeEncoder(M.Method):
    """A stand-in method whose encoder is a linear map of the channel statistics."""
    name = "fake_encoder"
    Config = FakeConfig

    def __init__(self, config, device="cpu"):
        self.config, self.net = config, torch.nn.Linear(2 * config.in_channels, 4).to(device)

    def encode(self, x):
        return self.net(R.channel_statistics(x).float())

    def state_dict(self):
        return {"net": self.net.state_dict()}

    def load_state_dict(self, state):
        self.net.load_state_dict(state["net"])


class FakeTranslator(FakeEncoder):
    name = "fake_translator"
    encode = M.Method.encode  # "... has no encoder"


class FakeAutoencoder(FakeEncoder):
    """The exact autoencoder: the features are the pixels, decoding reshapes them back."""
    name = "fake_autoencoder"

    def encode(self, x):
        return x.flatten(1)

    def decode(self, f):
        c = self.config
        return f.float().view(len(f), c.in_channels, c.image_size, c.image_size)


def checkpoint(cls, path, **config):
    net = cls(FakeConfig(**config))
    M.save_checkpoint({"version": M.CHECKPOINT_VERSION, "method": cls.name,
                       "config": vars(net.config), "classes": ["DMSO"], "state": net.state_dict()},
                      path)
    return path


@pytest.fixture
def fakes(monkeypatch, tmp_path):
    for cls in (FakeEncoder, FakeTranslator, FakeAutoencoder):
        monkeypatch.setitem(M.METHODS, cls.name, (__name__, cls.__name__))
    return (checkpoint(FakeEncoder, tmp_path / "enc.pt"),
            checkpoint(FakeTranslator, tmp_path / "t.pt"))


def test_random_weights_are_seeded_and_not_the_checkpoints(fakes):
    ckpt = M.load_checkpoint(fakes[0])
    a, b = R.random_weights(ckpt, seed=0), R.random_weights(ckpt, seed=0)
    assert torch.equal(a.net.weight, b.net.weight)
    assert not torch.equal(a.net.weight, M.build(ckpt).net.weight)


def test_represent_command_end_to_end(fakes, tmp_path, capsys):
    argv = ["represent", "--ckpt", str(fakes[0]), "--compounds", "latrunculin_b",
            "--n-per-class", "5", "--out", str(tmp_path / "r")]
    E.main(argv)
    with open(tmp_path / "r" / "representation.csv") as f:
        rows = list(csv.DictReader(f))
    names = [f"fake_encoder ({fakes[0]})", f"fake_encoder ({fakes[0]}) random weights",
             "channel statistics", "pixels"]
    assert [r["features"] for r in rows] == [n for n in names for _ in range(2)]
    assert [r["task"] for r in rows[:2]] == ["classes", "compounds"]
    assert [r["classes"] for r in rows[:2]] == ["9", "2"]  # DMSO vs Lat B above its EC50
    assert all(0 <= float(r[k]) <= 1 for r in rows for k in ("chance", "knn_f1", "linear_f1"))
    md = (tmp_path / "r" / "representation.md").read_text()
    # the table (a row per feature set and task), then the first set against each other one
    assert md.count("\n| ") == (1 + len(rows)) + (1 + len(rows) - 2) and "latrunculin_b" in md
    assert all(float(r["knn_low"]) <= float(r["knn_f1"]) <= float(r["knn_high"]) for r in rows)
    assert (tmp_path / "r" / "map.png").stat().st_size > 1000
    assert "already holds" in fails(E.main, argv)


def test_represent_bad_inputs_give_one_line(fakes, tmp_path):
    run = ["represent", "--compounds", "latrunculin_b", "--out", str(tmp_path / "r")]
    assert "fake_translator has no encoder" in fails(E.main, run + ["--ckpt", str(fakes[1])])
    msg = fails(E.main, run + ["--ckpt", str(fakes[0]), "--n-per-class", "2", "--every", "2",
                               "--block", "2"])
    assert "class 'DMSO' has 2 image(s), 2 held out" in msg
    grey = checkpoint(FakeEncoder, tmp_path / "grey.pt", in_channels=1)
    msg = fails(E.main, run + ["--ckpt", str(grey)])
    assert "takes 1-channel images, synthetic has 3 channels" in msg
    msg = fails(E.main, run + ["--ckpt", str(fakes[0]), "--control", "untreated"])
    assert "control class 'untreated' is not in the data" in msg
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_an_exact_autoencoder_decodes_a_path_that_loses_actin(fakes, tmp_path):
    """Pixels as features: DMSO cells moved toward the top Latrunculin B dose lose actin along the
    path as the real dose series does, and the section does not spill into the table."""
    ckpt = checkpoint(FakeAutoencoder, tmp_path / "ae.pt", image_size=32)
    E.main(["represent", "--ckpt", str(ckpt), "--compounds", "latrunculin_b", "--n-per-class", "8",
            "--out", str(tmp_path / "r")])
    md = (tmp_path / "r" / "representation.md").read_text()
    row = next(line for line in md.splitlines() if line.startswith("| latrunculin_b |"))
    _, cells, real = (float(c.split()[0]) for c in row.split("|")[3:6])
    assert cells < -0.8 and real < -0.8, row
    with open(tmp_path / "r" / "representation.csv") as f:
        assert len(list(csv.DictReader(f))) == 8  # 4 feature sets x 2 tasks
    assert (tmp_path / "r" / "interpolation_ae.png").stat().st_size > 1000
    fig2 = md[md.index("## F1 against reconstruction"):].splitlines()
    exact = next(line for line in fig2 if line.startswith(f"| fake_autoencoder ({ckpt})"))
    assert exact.split("|")[4].strip() == "0.0000"  # decode(encode(x)) = x
    trivial = next(line for line in fig2 if line.startswith("| mean training image"))
    assert float(trivial.split("|")[4]) > 0.001
    assert next(line for line in fig2 if line.startswith("| pixels")).split("|")[4].strip() == "-"
    assert (tmp_path / "r" / "fig2.png").stat().st_size > 1000


def test_dose_series_orders_doses_and_keeps_a_class_without_dose():
    classes = ["DMSO", "latrunculin_b_1uM", "latrunculin_b_0.1uM", "protein_synthesis"]
    assert R.dose_series(classes) == {
        "latrunculin_b": ["DMSO", "latrunculin_b_0.1uM", "latrunculin_b_1uM"],
        "protein_synthesis": ["DMSO", "protein_synthesis"]}


def test_represent_trains_the_probes_on_other_sites(fakes, tmp_path):
    """--train-data: the probes train on one file and are tested on all of another (whole
    held-out sites), so no image of a test site is on the training side."""
    for name, seed, n in (("train", 0, 6), ("test", 1, 3)):
        ds = data.synthetic_dataset(n_per_class=n, image_size=16, seed=seed,
                                    compounds=["latrunculin_b"])
        images = ((ds.images + 1) / 2).permute(0, 2, 3, 1).numpy()  # (N, H, W, C) in [0, 1]
        np.savez(tmp_path / f"{name}.npz", images=images, labels=ds.labels.numpy(),
                 classes=np.array(ds.classes))
    E.main(["represent", "--ckpt", str(fakes[0]), "--data", str(tmp_path / "test.npz"),
            "--train-data", str(tmp_path / "train.npz"), "--out", str(tmp_path / "r")])
    with open(tmp_path / "r" / "representation.csv") as f:
        row = next(csv.DictReader(f))
    assert (row["n_train"], row["n_test"]) == ("54", "27")  # 9 classes x 6, 9 x 3
    assert "no site on both sides" in (tmp_path / "r" / "representation.md").read_text()
