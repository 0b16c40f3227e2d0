"""Representation quality of encoders: how well frozen features tell phenotypes apart, the analyses
of the DSAE paper (Fonnegra et al.), for any features or any method with `encode`.

A feature set is judged by classifying held-out images (macro F1 of a cosine 1-NN classifier and of
a linear probe), over the classes of the data and over compounds (the analogue of the paper's
mechanism-of-action classes), always beside floors measured on the same images: per-channel
intensity statistics, raw pixels, and the same encoder with random weights. A learned encoder that
does not beat its floors has learned nothing the pixels did not already say.

Features are first standardised against the untreated (DMSO) population, as the paper does before
any map or centroid, to damp technical variation. The 2-D map is PCA; the interpolation helpers
give the straight line between two centroids in feature space and score a decoded path against the
dose-response (decoding is the method's job).
"""
import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

import files
import method as M
from benchmark import synthetic
from evaluation.features import feature_table, finite_mean
from evaluation.report import md_table

# -----------------------------------------------------------------------------
# feature sets: floors and encoders, each a function of a batch (B, C, H, W) in [-1, 1] -> (B, D)


def channel_statistics(images):
    """Floor: mean and std of each channel, (N, 2C); what any encoder gets for free."""
    x = torch.as_tensor(images).flatten(2).double()  # (N, C, HW)
    return torch.cat([x.mean(2), x.std(2, correction=0)], 1)


def pixels(images):
    """Floor: the flattened pixels, (N, C*H*W)."""
    return torch.as_tensor(images).flatten(1).double()


@torch.no_grad()
def encode_all(encode, images, batch_size=64, device="cpu"):
    """Features of every image, (N, D) float64 numpy, batch by batch; encode takes a batch in
    [-1, 1] on `device` (a method's `encode`, a floor, any callable)."""
    out = [torch.as_tensor(encode(x.to(device))).flatten(1).double().cpu()
           for x in torch.as_tensor(images).split(batch_size)]
    f = torch.cat(out).numpy()
    files.check_finite(f, "the features")
    return f


def random_weights(ckpt, device="cpu", seed=0):
    """Floor: the checkpoint's method built from its config with fresh seeded weights (nothing
    loaded), so that an encoder is compared with its own untrained architecture."""
    cls = M.method_class(ckpt["method"])
    try:
        config = cls.Config(**ckpt["config"])
    except TypeError as e:
        raise ValueError(f"{ckpt['method']} checkpoint with a config this code cannot read: "
                         f"{e}") from e
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev.index or 0] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        return cls(config, device)

# -----------------------------------------------------------------------------
# normalisation, maps


def normalise_to_control(features, labels, control, batches=None, mask=None, eps=1e-8):
    """(N, D) features minus the control population's mean, divided by its std, per dimension
    (a dimension constant in the control is only centred); per batch (plate) when `batches` gives
    each image's batch. mask: the images whose controls set the statistics (e.g. the training split,
    so that held-out images do not inform them)."""
    f, labels = np.asarray(features, np.float64), np.asarray(labels)
    batches = np.zeros(len(f), int) if batches is None else np.asarray(batches)
    mask = np.ones(len(f), bool) if mask is None else np.asarray(mask, bool)
    out = np.empty_like(f)
    for b in np.unique(batches):
        here = batches == b
        ref = f[here & mask & (labels == control)]
        if not len(ref):
            raise ValueError(f"batch {b} has no control images to normalise against")
        std = ref.std(0)
        out[here] = (f[here] - ref.mean(0)) / np.where(std > eps, std, 1.0)
    return out


def pca(features, k=2):
    """(scores (N, k), axes (k, D), explained variance ratio (k,)) of the centred features; each
    axis signed so that its largest loading is positive (the same map on every run). From the
    eigenvectors of the smaller of the two Gram matrices: for wide features (pixels: D >> N) the
    N x N one, whose eigenvectors u give the axes x^T u / s."""
    x = torch.as_tensor(np.asarray(features, np.float64))
    x = x - x.mean(0)
    wide = x.shape[1] > x.shape[0]
    s2, vec = torch.linalg.eigh(x @ x.T if wide else x.T @ x)  # ascending eigenvalues
    s2, vec = s2.flip(0)[:k].clamp_min(0), vec.flip(1)[:, :k]
    axes = (x.T @ vec / s2.sqrt().clamp_min(1e-150)).T if wide else vec.T
    axes = axes * torch.sign(axes.gather(1, axes.abs().argmax(1, keepdim=True)))
    ratio = s2 / x.pow(2).sum().clamp_min(1e-300)
    return (x @ axes.T).numpy(), axes.numpy(), ratio.numpy()

# -----------------------------------------------------------------------------
# classifiers and macro F1


def confusion(true, pred, num_classes):
    """(K, K) counts, rows = true class, columns = predicted."""
    m = np.zeros((num_classes, num_classes), int)
    np.add.at(m, (np.asarray(true), np.asarray(pred)), 1)
    return m


def macro_f1(true, pred, num_classes):
    """Mean over classes of F1 = 2 TP / (2 TP + FP + FN), over the classes that occur in `true` or
    in `pred` (as scikit-learn does): every class counts equally, however many images it has."""
    m = confusion(true, pred, num_classes)
    tp, n_true, n_pred = np.diag(m), m.sum(1), m.sum(0)
    seen = (n_true + n_pred) > 0
    return float((2 * tp[seen] / (n_true[seen] + n_pred[seen])).mean())


def chance_f1(true, num_classes):
    """Expected macro F1 of guessing uniformly at random: class k of test frequency p has precision
    p and recall 1/K, so F1 = 2 p / (1 + K p); 1/K for balanced classes."""
    p = np.bincount(np.asarray(true), minlength=num_classes) / len(true)
    p = p[p > 0]
    return float((2 * p / (1 + num_classes * p)).mean())


def nearest_neighbour(train_f, train_y, test_f, chunk=1024):
    """1-NN with cosine similarity: the label of the most similar training image."""
    a = F.normalize(torch.as_tensor(np.asarray(train_f, np.float64)), dim=1)
    b = F.normalize(torch.as_tensor(np.asarray(test_f, np.float64)), dim=1)
    idx = torch.cat([(q @ a.T).argmax(1) for q in b.split(chunk)])
    return np.asarray(train_y)[idx.numpy()]


def knn_f1(train_f, train_y, test_f, test_y, num_classes=None):
    k = num_classes or int(max(np.max(train_y), np.max(test_y))) + 1
    return macro_f1(test_y, nearest_neighbour(train_f, train_y, test_f), k)


def linear_probe(train_f, train_y, test_f, weight_decay=1e-3, steps=300):
    """Multinomial logistic regression on frozen features standardised on the training images:
    full-batch L-BFGS from zero weights (deterministic), cross-entropy + weight_decay/2 |W|^2.
    Returns the predicted labels of test_f. Wide features are fitted in the row space of the
    training images: the L2-regularised optimum lies in that span, so the predictions are the
    same at a fraction of the cost (800 images of 64x64x3 pixels: 33 s -> 5 s on one core)."""
    x, t = (torch.as_tensor(np.asarray(f, np.float64)) for f in (train_f, test_f))
    mu, sd = x.mean(0), x.std(0, correction=0)
    sd = torch.where(sd > 1e-8, sd, torch.ones_like(sd))
    x, t = (x - mu) / sd, (t - mu) / sd
    if x.shape[1] > x.shape[0]:  # coordinates in an orthonormal basis x^T u / s of the span
        s2, u = torch.linalg.eigh(x @ x.T)
        keep = s2 > s2.max().clamp_min(1e-300) * 1e-10
        u, s = u[:, keep], s2[keep].sqrt()
        x, t = u * s, t @ x.T @ u / s
    x, t = x.float(), t.float()
    classes, y = np.unique(np.asarray(train_y), return_inverse=True)
    y = torch.as_tensor(y)
    w = torch.zeros(x.shape[1], len(classes), requires_grad=True)
    b = torch.zeros(len(classes), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1, max_iter=steps, history_size=10,
                            line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y) + weight_decay / 2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return classes[(t @ w + b).argmax(1).numpy()]


def linear_probe_f1(train_f, train_y, test_f, test_y, num_classes=None, **kw):
    k = num_classes or int(max(np.max(train_y), np.max(test_y))) + 1
    return macro_f1(test_y, linear_probe(train_f, train_y, test_f, **kw), k)


def f1_interval(true, preds, num_classes, n_boot=1000, seed=0, level=0.95):
    """Macro F1 of each prediction set (a list, predictions of the same test images) with a
    percentile bootstrap interval over the test images, and, for two sets, the interval of their
    difference from the same resamples (paired). Returns [(f1, low, high) per set] and, with two
    sets, (difference, low, high) of the first minus the second as well."""
    true = np.asarray(true)
    g = np.random.default_rng(seed)
    idx = g.integers(0, len(true), (n_boot, len(true)))
    boot = np.array([[macro_f1(true[i], np.asarray(p)[i], num_classes) for p in preds]
                     for i in idx])
    q = [(1 - level) / 2, (1 + level) / 2]
    out = [(macro_f1(true, p, num_classes), *np.quantile(boot[:, j], q))
           for j, p in enumerate(preds)]
    if len(preds) == 2:
        diff = out[0][0] - out[1][0]
        return out, (diff, *np.quantile(boot[:, 0] - boot[:, 1], q))
    return out

# -----------------------------------------------------------------------------
# classes -> compounds, the held-out split


SYNTHETIC_EC50 = {k: v[1] for k, v in synthetic.COMPOUNDS.items()}  # µM


def compound_groups(classes, ec50=None):
    """{class: compound, or None when dropped}: classes named `<compound>_<conc>uM` join their
    compound (a name without a dose is its own group; DMSO stays DMSO). With ec50 ({compound:
    EC50 in µM}, e.g. SYNTHETIC_EC50), a dose at or below its compound's EC50 is dropped: there a
    single image barely differs from DMSO. Compounds missing from ec50 keep every dose."""
    groups = {}
    for c in classes:
        compound, conc = files.parse_class(c)
        low = ec50 is not None and compound in ec50 and conc is not None and conc <= ec50[compound]
        groups[c] = None if low else compound
    return groups


def split(labels, every=5, block=1):
    """Held-out mask: per class, the images in blocks of `block` consecutive ones (the crops of
    one site; BBBC021 cuts 4 per site), every `every`-th block from the first. Deterministic."""
    labels = np.asarray(labels)
    test = np.zeros(len(labels), bool)
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        test[idx] = (np.arange(len(idx)) // block) % every == 0
    return test


def _check_split(labels, test, names):
    for k, name in enumerate(names):
        n_train, n_test = int((~test & (labels == k)).sum()), int((test & (labels == k)).sum())
        if not (n_train and n_test):
            raise ValueError(f"class {name!r} has {n_train + n_test} image(s), {n_test} held out: "
                             "each class needs images to train on and held-out ones; give more "
                             "images per class (--n-per-class) or change --every / --block")

# -----------------------------------------------------------------------------
# the analysis


def represent(ds, encoders, control="DMSO", every=5, block=1, ec50=None, batch_size=64,
              device="cpu", weight_decay=1e-3, test=None):
    """Representation quality of each feature set on a dataset (an ImageDataset, images in
    [-1, 1]): encoders {name: encode(batch) -> (B, D)} and the floors channel statistics and pixels.
    Each set is normalised to the control's training images, then classified on the held-out split
    (`split`) by 1-NN and a linear probe, over the classes and over compound groups
    (`compound_groups` with ec50). test: a held-out mask of the images (default: `split`, every
    every-th block), e.g. whole sites that no encoder trained on. Returns (rows: one dict per
    feature set and task, with the test labels and both classifiers' predictions for intervals,
    maps: {name: (N, 2) PCA of the normalised features}, raw: {name: (N, D) features as
    encoded})."""
    y = ds.labels.numpy()
    if len(ds.classes) < 2:
        raise ValueError(f"need at least 2 classes to classify, the data has {len(ds.classes)}")
    if control not in ds.classes:
        raise ValueError(f"control class {control!r} is not in the data; it has: "
                         f"{', '.join(ds.classes[:8])}{', ...' if len(ds.classes) > 8 else ''}")
    test = split(y, every, block) if test is None else np.asarray(test, bool)
    _check_split(y, test, ds.classes)
    tasks = {"classes": (y, np.ones(len(y), bool), list(ds.classes))}
    groups = compound_groups(ds.classes, ec50)
    names = list(dict.fromkeys(g for g in groups.values() if g is not None))
    if len(names) >= 2 and len(names) < len(ds.classes):
        g = np.array([names.index(groups[c]) if groups[c] else -1 for c in ds.classes])[y]
        tasks["compounds"] = (g, g >= 0, names)
    sets = {**encoders, "channel statistics": channel_statistics, "pixels": pixels}
    rows, maps, raw = [], {}, {}
    for name, fn in sets.items():
        raw[name] = encode_all(fn, ds.images, batch_size, device)
        f = normalise_to_control(raw[name], y, ds.classes.index(control), mask=~test)
        maps[name] = pca(f, 2)[0]
        for task, (labels, keep, members) in tasks.items():
            tr, te = keep & ~test, keep & test
            k = len(members)
            knn = nearest_neighbour(f[tr], labels[tr], f[te])
            linear = linear_probe(f[tr], labels[tr], f[te], weight_decay=weight_decay)
            rows.append({"features": name, "dim": f.shape[1], "task": task, "classes": k,
                         "n_train": int(tr.sum()), "n_test": int(te.sum()),
                         "chance": chance_f1(labels[te], k),
                         "knn_f1": macro_f1(labels[te], knn, k),
                         "linear_f1": macro_f1(labels[te], linear, k),
                         "members": members, "true": labels[te], "knn": knn, "linear": linear})
            (_, *rows[-1]["knn_ci"]), (_, *rows[-1]["linear_ci"]) = f1_interval(
                labels[te], [knn, linear], k)[0]
    return rows, maps, raw


COLUMNS = ["features", "dim", "task", "classes", "n_train", "n_test", "chance", "knn_f1",
           "knn_low", "knn_high", "linear_f1", "linear_low", "linear_high"]


def csv_rows(rows):
    """The rows of representation.csv (COLUMNS)."""
    return [[r["features"], r["dim"], r["task"], r["classes"], r["n_train"], r["n_test"],
             r["chance"], r["knn_f1"], *r["knn_ci"], r["linear_f1"], *r["linear_ci"]]
            for r in rows]


def report(rows, about):
    """representation.md's lines: the table with bootstrap intervals, the first feature set against
    each other one on the same test images (paired), and what every number is. about: lines on
    the data."""
    ci = lambda v, lo_hi: f"{v:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"  # noqa: E731
    lines = [*about, "", *md_table(
        ["features", "dim", "task", "classes", "train / test images", "chance",
         "1-NN F1 [95 %]", "linear F1 [95 %]"],
        [[r["features"], r["dim"], r["task"], r["classes"], f"{r['n_train']} / {r['n_test']}",
          f"{r['chance']:.3f}", ci(r["knn_f1"], r["knn_ci"]), ci(r["linear_f1"], r["linear_ci"])]
         for r in rows])]
    first = rows[0]["features"]
    paired = []
    for r in rows:
        base = next(b for b in rows if b["features"] == first and b["task"] == r["task"])
        if r["features"] == first:
            continue
        cells = []
        for clf in ("knn", "linear"):
            _, (d, lo, hi) = f1_interval(r["true"], [base[clf], r[clf]], r["classes"])
            word = "higher" if lo > 0 else "lower" if hi < 0 else "within noise"
            cells.append(f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}] {word}")
        paired.append([r["features"], r["task"], *cells])
    compounds = next((r["members"] for r in rows if r["task"] == "compounds"), None)
    lines += ["", f"**{first} against each feature set, paired** (the F1 difference on the same "
              "test images, first minus other, percentile bootstrap over the images; higher / "
              "lower: the interval excludes 0)", "",
              *md_table(["features", "task", "1-NN F1 difference", "linear F1 difference"],
                        paired),
              "", "- F1: macro F1 (the mean over classes of each class's F1) on held-out images; "
              "[95 %]: a percentile bootstrap over the test images (1,000 resamples).",
              "- 1-NN F1: the class of the most cosine-similar training image.",
              "- linear F1: a multinomial logistic regression on the frozen features (standardised "
              "on the training images; L-BFGS, weight decay 1e-3).",
              "- chance: the expected macro F1 of guessing uniformly at random.",
              "- every feature set is first standardised against the untreated control's training "
              "images (mean 0, std 1 per dimension), as the DSAE paper does.",
              "- floors: channel statistics (mean and std of each channel), pixels (the flattened "
              "image) and, for a checkpoint, the same method with random weights (seeded); an "
              "encoder that does not beat them has learned nothing they do not already hold. One "
              "random initialisation is one draw: another seed's floor can differ by as much as "
              "the gaps between encoders.",
              "- the intervals are over test images only: a second training seed of the same "
              "encoder varies too, which they do not show.",
              "- task classes: every class of the data; task compounds: images grouped by compound "
              "(mechanism-of-action analogue)"
              + (f": {', '.join(compounds)}." if compounds else ".")]
    return lines


def fig2_points(rows, recon, task="classes"):
    """The DSAE paper's Fig. 2 as points: {name: (linear F1, 1-NN F1, reconstruction MSE or None,
    perceptual distance or None)} for every feature set of `rows` on `task`; recon {name: ((N,)
    per-image MSE, (N,) perceptual distances or None)} for the sets that reconstruct (the floors
    and random weights do not)."""
    mean = lambda v: None if v is None else float(np.mean(v))  # noqa: E731
    return {r["features"]: (r["linear_f1"], r["knn_f1"],
                            *(map(mean, recon[r["features"]]) if r["features"] in recon
                              else (None, None))) for r in rows if r["task"] == task}


def perceptual_distance(encode, x, rec, batch_size=64, device="cpu"):
    """1 - cosine similarity of the features of each image and its reconstruction, per image:
    the DSAE paper measures reconstruction by a perceptual (VGG) distance; no VGG weights are
    here, so a network of this project stands in for it (the reproduction's domain encoder)."""
    fx, fr = (F.normalize(torch.as_tensor(encode_all(encode, v, batch_size, device)), dim=1)
              for v in (x, rec))
    return (1 - (fx * fr).sum(1)).numpy()


def psnr(mse):
    return -10 * math.log10(max(mse, 1e-12))


def fig2_report(points, trivial, perceptual_name=None):
    """The lines of fig2_points; trivial: (MSE, perceptual distance or None) of predicting the
    mean training image; perceptual_name: the network whose features measure it."""
    fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
    rows = [[name, f"{lin:.3f}", f"{knn:.3f}", fmt(mse, ".4f"),
             fmt(None if mse is None else psnr(mse), ".1f"), fmt(per, ".4f")]
            for name, (lin, knn, mse, per) in points.items()]
    rows.append(["mean training image (trivial reconstruction)", "-", "-", f"{trivial[0]:.4f}",
                 f"{psnr(trivial[0]):.1f}", fmt(trivial[1], ".4f")])
    return ["", "## F1 against reconstruction (the DSAE paper's Fig. 2)", "",
            *md_table(["features", "linear F1", "1-NN F1", "reconstruction MSE", "PSNR (dB)",
                       "perceptual distance"], rows),
            "", "Reconstruction: decode(encode(x)) of the held-out images, MSE on [0, 1] "
            "intensities, averaged over images; the trivial reconstruction predicts every image by "
            "the per-pixel mean of the training images. Perceptual distance: the paper's axis is a "
            "VGG distance, and no VGG weights are here; 1 − cosine similarity of the features of "
            "image and reconstruction in "
            + (perceptual_name or "no network (give `--perceptual`)") + " stands in for it."]

# -----------------------------------------------------------------------------
# latent interpolation: the geometry, and the score of a decoded path


def interpolate(a, b, k):
    """k points on the straight line from a to b, both ends included: (k, D)."""
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    t = torch.linspace(0, 1, k, dtype=torch.float64)[:, None]
    return a + t * (b - a)


def path_features(features, labels, source, target, k):
    """k points from the centroid of class `source` to that of `target` (labels equal to them).
    Per-dimension standardisation is affine, so the line in raw features is the same line and the
    same fractions in normalised ones: decode raw points."""
    f, labels = torch.as_tensor(np.asarray(features, np.float64)), torch.as_tensor(labels)
    for c in (source, target):
        if not (labels == c).any():
            raise ValueError(f"class {c} has no images to take a centroid of")
    return interpolate(f[labels == source].mean(0), f[labels == target].mean(0), k)


def path_trend(decoded, feature="cells_actin_mean", **feature_kw):
    """A decoded path against the dose-response: decoded (k, C, H, W) or (k, n, C, H, W) images in
    [-1, 1], point 0 the untreated end. Returns (the feature's mean at each point (k,), Spearman rho
    between position and that mean; nan with fewer than 3 finite points or a constant feature).
    On the synthetic benchmark the path toward Latrunculin B should lose actin: rho near -1."""
    x = torch.as_tensor(decoded)
    x = x[:, None] if x.dim() == 4 else x
    k, n = x.shape[:2]
    table = feature_table(((x.flatten(0, 1) + 1) / 2).cpu().numpy(), **feature_kw)
    if feature not in table:
        raise ValueError(f"unknown feature {feature!r}; see eval.FEATURES for the names")
    v = table[feature]
    means = np.array([finite_mean(v[i * n:(i + 1) * n]) for i in range(k)])
    ok = np.isfinite(means)
    if ok.sum() < 3 or np.ptp(means[ok]) < 1e-12:
        return means, math.nan
    return means, float(stats.spearmanr(np.arange(k)[ok], means[ok])[0])


def dose_series(classes, control="DMSO"):
    """{compound: its classes from the control up the doses}, for every compound of the data; a
    class without a concentration in its name (real data: "protein_synthesis") is a series of its
    own, [control, class]."""
    series = {}
    for c in classes:
        compound, conc = files.parse_class(c)
        if c != control:
            series.setdefault(compound if conc is not None else c, []).append((conc or 0, c))
    return {k: [control] + [c for _, c in sorted(v)] for k, v in series.items()}


@torch.no_grad()
def interpolation(decode, features, ds, control="DMSO", k=8, cells=16, batch_size=64,
                  device="cpu", feature="cells_actin_mean"):
    """Decoded paths from the control toward each compound's top dose, in a method's feature space
    (decode: features (B, D) -> images): the line between the two centroids (one image a point),
    and the first `cells` control images each moved by the same fractions of the centroid
    difference. Scored against the real dose series (the first `cells` images of each dose) by
    the feature's Spearman rho along the path. Returns (rows, {compound: strip of 4 x k images:
    the centroid path, then three of the moved cells})."""
    y = ds.labels.numpy()
    src = ds.classes.index(control)
    f = torch.as_tensor(np.asarray(features), dtype=torch.float32)

    def run(points):  # (n, D) -> images (n, C, H, W), decoded in batches
        return torch.cat([decode(points[i:i + batch_size].to(device)).cpu()
                          for i in range(0, len(points), batch_size)])

    rows, strips = [], {}
    for compound, series in dose_series(ds.classes, control).items():
        dst = ds.classes.index(series[-1])
        line = path_features(f.numpy(), y, src, dst, k).float()  # (k, D)
        own = f[y == src][:cells]
        moved = own[None] + torch.linspace(0, 1, k)[:, None, None] * (line[-1] - line[0])
        centroid = run(line)
        paths = run(moved.flatten(0, 1)).unflatten(0, (k, len(own)))  # (k, cells, C, H, W)
        n = min(cells, *(int((y == ds.classes.index(c)).sum()) for c in series))
        real = torch.stack([ds.images[y == ds.classes.index(c)][:n] for c in series])
        rows.append({"compound": compound, "target": series[-1], "feature": feature,
                     "centroid_rho": path_trend(centroid, feature)[1],
                     "cells_rho": path_trend(paths, feature)[1],
                     "real_rho": path_trend(real, feature)[1], "cells": len(own), "k": k})
        strips[compound] = torch.cat([centroid, paths[:, :3].transpose(0, 1).flatten(0, 1)])
    return rows, strips


def interpolation_report(rows, what, control="DMSO"):
    """The lines of `interpolation`'s rows."""
    return ["", f"## Interpolation ({what})", "",
            f"Spearman rho of {rows[0]['feature'] if rows else 'the feature'} along decoded "
            f"paths of {rows[0]['k'] if rows else 0} points from {control} to the top dose, "
            "beside the real dose series:", "",
            *md_table(["compound", "to", "centroid path", "control cells moved (mean)",
                       "real doses"],
                      [[r["compound"], r["target"], f"{r['centroid_rho']:.2f}",
                        f"{r['cells_rho']:.2f} ({r['cells']} cells)", f"{r['real_rho']:.2f}"]
                       for r in rows])]
