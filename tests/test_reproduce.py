"""The reproduction pipeline: the bootstrap interval of a Frechet distance, the domain encoder's
ranking, the pairing of the ground truth, and `eval.py reproduce` end to end on two tiny methods."""
import argparse
import csv

import numpy as np
import pytest
import torch

import data
import eval as E
from evaluation import reproduce as P
from evaluation import scores, stats
from baselines import encoders


def test_bootstrap_interval_covers_the_large_sample_value():
    """On 60 images per set a Frechet distance is biased far upward; the basic bootstrap interval
    is centred back on the large-sample (analytic) value, in most seeds."""
    d, rng = 8, np.random.default_rng(0)
    a = rng.normal(size=(d, d)) * 0.3
    cov, mu = np.eye(d) + a @ a.T, np.full(d, 0.3)
    truth = stats.frechet_distance(np.zeros(d), np.eye(d), mu, cov)
    chol, covered, plain = np.linalg.cholesky(cov), 0, []
    for seed in range(12):
        g = np.random.default_rng(100 + seed)
        f1, f2 = g.normal(size=(60, d)), mu + g.normal(size=(60, d)) @ chol.T
        est, low, high = stats.frechet_bootstrap(f1, f2, 100, seed)
        covered += low <= truth <= high
        plain.append(est)
    assert np.mean(plain) > 1.2 * truth  # the bias the interval must correct
    assert covered >= 10


def test_domain_distance_ranks_real_above_untreated_above_noise():
    """The domain encoder's Frechet distance to real 10 µM images: other real 10 µM images are
    closest, untreated images farther, noise farthest."""
    kw = dict(image_size=16, compounds=["latrunculin_b"])
    train = data.synthetic_dataset(n_per_class=48, seed=0, **kw).select(
        ["DMSO", "latrunculin_b_10uM"])
    test = data.synthetic_dataset(n_per_class=48, seed=1, **kw)
    net = encoders.train_domain_encoder(train, steps=60, batch_size=32)
    feats = lambda x: scores.encode((x + 1) / 2, net, 64)  # noqa: E731
    target = feats(test.images[test.labels == 8])
    real = feats(train.images[train.labels == 1])
    untreated = feats(test.images[test.labels == 0])
    noise = feats(torch.rand(48, 3, 16, 16) * 2 - 1)
    d = [stats.feature_distance(f, target) for f in (real, untreated, noise)]
    assert d[0] < d[1] < d[2], d


def test_ground_truth_is_the_same_field_under_each_dose():
    """evaluation_sets' truth[k][i] is input i's field under class k: same nuisance draws (gain,
    background), closer to its own input than to the others at the lowest dose."""
    a = argparse.Namespace(synthetic=True, kind="bbbc021", image_size=16, train_n=4, n=6,
                           compounds=["latrunculin_b"], seed=0)
    _, te, truth = P.evaluation_sets(a)
    x = te.images[te.labels == 0]
    assert truth.shape == (9, 6, 3, 16, 16) and torch.equal(truth[0], x)
    err = ((truth[1][:, None] - x[None]) ** 2).flatten(2).mean(2)  # (truth i, input j)
    assert (err.argmin(1) == torch.arange(6)).all()
    paired = data.synthetic_dataset(n_per_class=6, seed=1, paired=True, image_size=16,
                                    compounds=["latrunculin_b"])
    by_class = [[t for t in paired.truth if t["class"] == c] for c in paired.classes]
    for key in ("gain_r", "background"):
        assert all(by_class[k][i][key] == by_class[0][i][key] for k in range(9) for i in range(6))
        assert len({by_class[0][i][key] for i in range(6)}) == 6


def rows(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_reproduce_end_to_end_and_resume(tmp_path, capsys):
    """Two tiny methods trained, translated and scored; every table written; the identity floor
    at the lowest dose is the near-perfect answer it must be; a second run skips every stage."""
    argv = ["reproduce", "--preset", "tiny", "--methods", "stargan,vae", "--compounds",
            "latrunculin_b", "--image-size", "16", "--train-n", "8", "--n", "6", "--n-recon", "4",
            "--represent-n", "10", "--boot", "10", "--workers", "1", "--device", "cpu",
            "--out", str(tmp_path / "out"), "--work", str(tmp_path / "work")]
    E.main(argv)
    out = tmp_path / "out"
    report = (out / "report.md").read_text()
    for heading in ("Table 1", "Table 2", "Error against the truth", "keep its input", "Fig. 4",
                    "second paper's Fig. 2"):
        assert heading in report
    t1 = rows(out / "table1.csv")
    assert {r["method"] for r in t1} == {"stargan", "vae", "identity", P.FLOOR}
    assert len(t1) == 4 * 8 and all(float(r["low"]) <= float(r["high"]) for r in t1)
    cf = [r for r in rows(out / "counterfactual.csv") if r["method"] == "identity"]
    assert len(cf) == 8 and float(cf[0]["psnr_own_truth"]) > 40  # 0.003 µM: barely any change
    assert float(cf[0]["psnr_own_truth"]) > float(cf[-1]["psnr_own_truth"]) + 15
    assert {r["method"] for r in rows(out / "table2.csv")} == {"stargan", "vae",
                                                               "mean training image"}
    assert (out / "fig2" / "fig2.png").exists() and (out / "counterfactual.png").exists()
    weights = (tmp_path / "work" / "stargan" / "last.pt").stat().st_mtime
    capsys.readouterr()
    E.main(argv)
    said = capsys.readouterr().out
    assert "[skip] train stargan" in said and "[skip] outputs vae" in said
    assert (tmp_path / "work" / "stargan" / "last.pt").stat().st_mtime == weights
    with pytest.raises(SystemExit):  # other images on the same cache: refused before any work
        E.main([*argv, "--n", "5"])
    assert "another setup" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--methods", "stargan,diffusers"], "unknown 'diffusers'"),
    (["--data", "some.npz"], "needs --test"),
    (["--ckpt", "stargan"], "NAME=PATH"),
    (["--ckpt", "stargan=/no/such/run"], "does not exist"),
])
def test_reproduce_bad_input(tmp_path, capsys, extra, message):
    with pytest.raises(SystemExit):
        E.main(["reproduce", "--out", str(tmp_path / "o"), "--work", str(tmp_path / "w"), *extra])
    assert message in capsys.readouterr().err


def test_reproduce_golgi_t_test(tmp_path):
    """On the Golgi set: Fig. 2b's rows, real and translated; doing nothing changes nothing."""
    out = tmp_path / "out"
    E.main(["reproduce", "--data", "synthetic-golgi", "--preset", "tiny", "--methods", "stargan",
            "--image-size", "16", "--train-n", "8", "--n", "8", "--n-recon", "4", "--boot", "10",
            "--workers", "1", "--device", "cpu", "--out", str(out), "--work", str(tmp_path / "w")])
    t = [r for r in rows(out / "fig2b.csv") if r["feature"] == P.GOLGI_FEATURE]
    assert [r["treated_images"] for r in t] == ["real", "stargan", "identity"]
    assert float(t[2]["p"]) == pytest.approx(1.0) and "Fig. 2b" in (out / "report.md").read_text()
