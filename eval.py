"""Evaluation: how the papers measure a translation, on folders of images, for every method.

Everything here scores images (folders, or arrays in [0, 1] / [-1, 1]) and encoders, never a
method's internals, so PhenDiff and every baseline are measured by the same code:

  FID        Frechet distance of InceptionV3 features (inception.py: the FID network, weights by
             path) or of any encoder's features
  Table 2    reconstruction error of real images: L2, MSE, PSNR, file by file
  features   CellProfiler-style per-image features (features.py); Fig. 4 correlations across doses
             and Fig. 2b's t-test are built on them
  represent  DSAE's representation quality: 1-NN and linear-probe F1 of encoders' features
             against floors (representation.py)

    python eval.py fid DIR1 DIR2 --inception-weights pt_inception-2015-12-05-6726825d.pth
    python eval.py table1 --real REAL_ROOT --fake TRANSLATED_ROOT --out runs/eval
    python eval.py recon --real DATA/DMSO --rec RECONSTRUCTED/DMSO --out runs/eval
    python eval.py recon --ckpt runs/x/last.pt --data synthetic --out runs/eval
    python eval.py fig4 --real REAL_ROOT --fake TRANSLATED_ROOT --out runs/eval
    python eval.py ttest --real R --fake F --feature golgi_area_mean --a DMSO --b nocodazole_1uM \
        --golgi-channel 0
    python eval.py samples --ckpt runs/stylegan --data synthetic --out runs/eval
    python eval.py represent --ckpt runs/dino --data synthetic --out runs/eval
    python eval.py bench
    python eval.py reproduce --data synthetic --compounds latrunculin_b --out results/NAME
"""
import argparse
import csv
import difflib
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import linalg, stats

import data
import files
import method as M
import plots
import representation as R
from features import FEATURES, cell_features, feature_table, finite_mean  # noqa: F401 (eval.X)
from inception import WEIGHTS_ENV, WEIGHTS_FILE, InceptionV3, load_inception  # noqa: F401

# -----------------------------------------------------------------------------
# Frechet distance, FID

def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians
    (Dowson & Landau 1982)."""
    mu1, mu2 = (np.atleast_1d(np.asarray(mu1, np.float64)),
                np.atleast_1d(np.asarray(mu2, np.float64)))
    s1, s2 = (np.atleast_2d(np.asarray(sigma1, np.float64)),
              np.atleast_2d(np.asarray(sigma2, np.float64)))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, "
                         f"sigma {s1.shape} vs {s2.shape}")
    product = s1 @ s2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular: handled below
        covmean = linalg.sqrtm(product)
    if (not np.isfinite(covmean).all()
            or np.abs(covmean @ covmean - product).max() > 1e-6 * np.abs(product).max()):
        # singular product (e.g. fewer images than feature dimensions): nudge both diagonals
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"sqrtm has a large imaginary component ({imag:.3g}); the covariances "
                             "are ill-conditioned, use more images")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@torch.no_grad()
def encode(images, encoder, batch_size=16, device="cpu"):
    """(N, C, H, W) images in [0, 1] -> (N, D) float64 features of any encoder callable
    (Inception or a domain one)."""
    out = [encoder(torch.as_tensor(np.asarray(images[i:i + batch_size]), dtype=torch.float32,
                                   device=device))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().cpu().numpy()


def feature_distance(f1, f2):
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets.

    With fewer images than dimensions (per-class FID: tens of images, 2048-d) the covariances are
    singular and sqrtm of a D x D product is slow and fragile. Tr (S1 S2)^(1/2) is then computed
    exactly as the nuclear norm of A1 A2^T / sqrt((n1-1)(n2-1)), A the centred features: its squared
    singular values are the non-zero eigenvalues of S1 S2."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    files.check_finite(f1, "the first feature set")
    files.check_finite(f2, "the second feature set")
    (n1, d), n2 = f1.shape, len(f2)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"need at least 2 images per set for a covariance, got {n1} and {n2}")
    if min(n1, n2) > d:
        return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False),
                                f2.mean(0), np.cov(f2, rowvar=False))
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    tr_covmean = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (a1 ** 2).sum() / (n1 - 1) + (a2 ** 2).sum() / (n2 - 1)
                 - 2 * tr_covmean)


def frechet_bootstrap(f1, f2, n_boot=200, seed=0, level=0.95):
    """(distance, low, high): the Frechet distance of two feature sets and its basic bootstrap
    interval. Both sets are resampled with replacement; a distance on few images is biased upward,
    and the resampled distances are biased about as much again, so the interval reflects them about
    the estimate, [2d - q_high, 2d - q_low], which centres it on the large-sample value."""
    d = feature_distance(f1, f2)
    g = np.random.default_rng(seed)
    boot = [feature_distance(f1[g.integers(0, len(f1), len(f1))],
                             f2[g.integers(0, len(f2), len(f2))]) for _ in range(n_boot)]
    q_low, q_high = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
    return d, 2 * d - q_high, 2 * d - q_low


def fid(images1, images2, encoder, batch_size=16, device="cpu"):
    """FID (with an InceptionV3) or its analogue for any encoder; arrays in [0, 1] or folder
    paths."""
    sets = [files.read_stack(files.list_images([x])) if isinstance(x, (str, Path)) else x
            for x in (images1, images2)]
    return feature_distance(*(encode(x, encoder, batch_size, device) for x in sets))

# -----------------------------------------------------------------------------
# Reconstruction error (Table 2)


def reconstruction_error(x, rec):
    """Per-image errors of reconstructions rec of images x, both (N, C, H, W) in [-1, 1]:
    {"l2": Euclidean distance over all pixels and channels in these units, "mse" and "psnr": on
    [0, 1] (peak 1)}, each an (N,) array. rec is clamped to [-1, 1], as any saved image would be."""
    d = (torch.as_tensor(rec).clamp(-1, 1) - torch.as_tensor(x)).flatten(1).double().cpu()
    mse = (d / 2).pow(2).mean(1)
    return {"l2": d.norm(dim=1).numpy(), "mse": mse.numpy(),
            "psnr": (-10 * torch.log10(mse.clamp_min(1e-12))).numpy()}


def variant_flags(p):
    """The flags of load_variants, for every command that reconstructs (recon, the demo)."""
    p.add_argument("--ddim-steps", type=files.integer(1), default=50,
                   help="phendiff: DDIM steps each way (%(default)s)")
    p.add_argument("--fixed-point-iters", type=files.integer(0), default=5,
                   help="phendiff: iterations of the exact-inversion row (%(default)s)")
    p.add_argument("--projection", choices=["w", "w+"], help="stylegan: PhenEx/W or W+ (w)")
    p.add_argument("--projection-steps", type=files.integer(1),
                   help="stylegan: projection steps per image (1000)")


def load_variants(path, device, ddim_steps, fixed_point_iters, projection=None,
                  projection_steps=None):
    """(checkpoint, {name: method}) for Table 2: PhenDiff with plain (eq. 6) and exact inversion,
    a StyleGAN with its projection (W or W+), any other method (or a folder of CycleGAN pair runs)
    as it is."""
    path = M.checkpoint_path(path)
    if path.is_file():
        ckpt = M.load_checkpoint(path)
        if ckpt["method"] == "phendiff":
            build = lambda k: M.build(ckpt, device, ddim_steps=ddim_steps,  # noqa: E731
                                      fixed_point_iters=k)
            return ckpt, {"plain eq. 6": build(0),
                          f"exact ({fixed_point_iters} fixed-point iters)":
                              build(fixed_point_iters)}
    options = dict(projection=projection, projection_steps=projection_steps)
    options = {k: v for k, v in options.items() if v is not None}
    net, ckpt = M.load_translator(path, device, **options)
    return ckpt, {"translate to the own class": net}

# -----------------------------------------------------------------------------
# statistics and Fig. 4


def pearson(a, b):
    """Pearson's r of the finite pairs; nan with fewer than 3 pairs or a constant side."""
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b):
    """Spearman's rho: Pearson's r of the (average) ranks of the finite pairs; nan when
    undefined."""
    ok = np.isfinite(a) & np.isfinite(b)
    return pearson(stats.rankdata(a[ok]), stats.rankdata(b[ok]))


def dose_response(real, fake, workers=1, **feature_kw):
    """Fig. 4's numbers. real, fake: {class: (N, C, H, W) in [0, 1]}. Returns groups {compound: its
    classes by increasing dose}, means {(source, class): {feature: mean}} with source "real" or
    "translated", and r {compound: {feature: Pearson r across doses of real vs translated
    means}}."""
    groups = {k: [c for c in v if c in fake] for k, v in files.compounds(list(real)).items()
              if k != "DMSO"}
    groups = {k: v for k, v in groups.items() if len(v) >= 3}
    if not groups:
        raise ValueError("no compound has >= 3 concentrations among both the real and the "
                         "translated classes")
    means = {(src, c): {k: finite_mean(v) for k, v in
                        feature_table(sets[c], workers=workers, **feature_kw).items()}
             for src, sets in (("real", real), ("translated", fake)) for cs in groups.values()
             for c in cs}
    names = list(next(iter(means.values())))
    r = {k: {n: pearson(np.array([means["real", c][n] for c in cs]),
                        np.array([means["translated", c][n] for c in cs])) for n in names}
         for k, cs in groups.items()}
    return groups, means, r


def spread(x):
    """Mean pairwise RMS distance between the images of a set (N, C, H, W), in their units."""
    flat = torch.as_tensor(np.asarray(x)).flatten(1).double()
    d = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])
    return float(d.sum() / (len(x) * (len(x) - 1)))


def sample_statistics(real, fake, feature, workers=1):
    """A generative method's samples from noise against real images, {class: (N, C, H, W) in
    [0, 1]} each: ({class: (real spread, sampled spread)}, {compound: (Spearman rho between dose
    and the feature's means of the samples, the same of real images)}). A collapsed generator
    samples a much smaller spread; one that learned the classes follows the real trend."""
    spreads = {c: (spread(real[c]), spread(fake[c])) for c in real}
    try:
        groups, means, _ = dose_response(real, fake, workers)
    except ValueError:  # no compound with 3 doses: spreads only
        return spreads, {}
    trends = {}
    for k, cs in groups.items():
        conc = np.array([files.parse_class(c)[1] for c in cs])
        trends[k] = tuple(spearman(conc, np.array([means[src, c][feature] for c in cs]))
                          for src in ("translated", "real"))
    return spreads, trends


def _check_feature(name, names):
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ValueError(f"unknown feature {name!r}; close matches: {', '.join(close) or 'none'} "
                         "(see eval.FEATURES for all names)")

# -----------------------------------------------------------------------------
# the commands


def read_classes(root):
    """root/<class>/<image> -> {class: (N, C, H, W) in raw units}."""
    return {c: files.read_stack(f) for c, f in files.class_folders(root).items()}


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows])
    print(f"wrote {path}")


def out(a, *writes):
    """The command's --out, checked against its inputs and earlier results before any compute."""
    inputs = [p for p in (getattr(a, k, None) for k in ("real", "fake", "rec", "path1", "path2"))
              if p]
    return files.out_folder(a.out, inputs, writes, a.overwrite)


def cmd_fid(a):
    folder = out(a, "fid.csv") if a.out else None
    net = load_inception(a.inception_weights, a.device)
    x1, x2 = (files.read_stack(files.list_images([p])) for p in (a.path1, a.path2))
    d = fid(x1, x2, net, a.batch_size, a.device)
    print(f"FID {d:.4f} ({len(x1)} vs {len(x2)} images)")
    if folder:
        write_csv(folder / "fid.csv", ["path1", "path2", "n1", "n2", "fid"],
                  [[a.path1, a.path2, len(x1), len(x2), d]])


def cmd_table1(a):
    """Table 1: FID of the translated images of each target class against the real ones."""
    folder = out(a, "table1.csv", "table1.png")
    net = load_inception(a.inception_weights, a.device)
    real, fake = read_classes(a.real), read_classes(a.fake)
    common = [c for c in fake if c in real]
    if not common:
        raise ValueError(f"no class of {a.fake} ({', '.join(fake)}) is among the real classes "
                         f"({', '.join(real)})")
    rows = [[c, len(real[c]), len(fake[c]), fid(real[c], fake[c], net, a.batch_size, a.device)]
            for c in common]
    mean = ["mean", sum(r[1] for r in rows), sum(r[2] for r in rows),
            float(np.mean([r[3] for r in rows]))]
    write_csv(folder / "table1.csv", ["class", "n_real", "n_translated", "fid"], rows + [mean])
    plots.bars(common, [r[3] for r in rows], "FID (translated vs real)", folder / "table1.png")


def recon_from_folders(a):
    """Real images and their reconstructions, matched by file name (stem): (names, x, rec) in
    [-1, 1]."""
    real = {f.stem: f for f in files.list_images([a.real])}
    rec = {f.stem: f for f in files.list_images([a.rec])}
    names = sorted(set(real) & set(rec))
    if not names:
        raise ValueError(f"no file of {a.rec} has the name of one in {a.real}; reconstructions are "
                         "matched to their inputs by file name")
    if len(names) < len(real):
        warnings.warn(f"{len(real) - len(names)} real image(s) have no reconstruction in {a.rec}")
    x, r = (torch.from_numpy(files.read_stack([d[n] for n in names])) * 2 - 1 for d in (real, rec))
    if x.shape != r.shape:
        raise ValueError(f"real images {tuple(x.shape[1:])} and reconstructions "
                         f"{tuple(r.shape[1:])} differ in shape")
    return names, x, {"reconstruction": r}


def recon_from_checkpoint(a):
    """The shortcut: n images of --data reconstructed by the checkpoint's method (every variant)."""
    ckpt, variants = load_variants(a.ckpt, a.device, a.ddim_steps, a.fixed_point_iters,
                                   a.projection, a.projection_steps)
    ds = data.load_dataset(a.data, image_size=ckpt["config"]["image_size"],
                           n_per_class=a.n_per_class, seed=a.seed,
                           normalization=ckpt.get("normalization"))
    known = [c in ckpt["classes"] for c in ds.classes]
    keep = [i for i, y in enumerate(ds.labels.tolist()) if known[y]]
    if not keep:
        raise ValueError(f"no class of {a.data} ({', '.join(ds.classes[:5])}, ...) is a class "
                         "of the checkpoint")
    order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    keep = [keep[i] for i in order]
    x = ds.images[keep]
    y = torch.tensor([ckpt["classes"].index(ds.classes[ds.labels[i]]) for i in keep])
    recs = {}
    with torch.no_grad():
        for name, m in variants.items():
            recs[name] = torch.cat([m.reconstruct(xb.to(a.device), yb.to(a.device)).cpu()
                                    for xb, yb in zip(x.split(a.batch_size),
                                                      y.split(a.batch_size))])
    return [f"{i}:{ckpt['classes'][c]}" for i, c in zip(keep, y.tolist())], x, recs


def cmd_recon(a):
    """Table 2: reconstruction error of real images, from folders or with a checkpoint's method."""
    if bool(a.ckpt) == bool(a.real and a.rec):
        raise ValueError("give either --real and --rec (folders matched by file name) or --ckpt "
                         "(with --data) to reconstruct first")
    folder = out(a, "recon.csv", "recon_per_image.csv", "recon.png")
    names, x, recs = recon_from_checkpoint(a) if a.ckpt else recon_from_folders(a)
    rows, per_image = [], []
    for variant, rec in recs.items():
        e = reconstruction_error(x, rec)
        rows.append([variant, len(x), e["l2"].mean(), e["l2"].std(), e["mse"].mean(),
                     e["psnr"].mean(), e["psnr"].std()])
        per_image += [[variant, n, e["l2"][j], e["mse"][j], e["psnr"][j]]
                      for j, n in enumerate(names)]
        print(f"{variant}: L2 {e['l2'].mean():.4f} ([-1, 1] units)  PSNR {e['psnr'].mean():.2f} dB")
    write_csv(folder / "recon.csv", ["reconstruction", "n", "l2_mean", "l2_std", "mse_mean",
                                     "psnr_mean", "psnr_std"], rows)
    write_csv(folder / "recon_per_image.csv", ["reconstruction", "image", "l2", "mse", "psnr"],
              per_image)
    plots.image_rows({"real": x, **recs}, folder / "recon.png")


def cmd_samples(a):
    """Samples from noise of a generative method (a StyleGAN) against real images of --data, class
    by class: spread (collapse) and the dose trend of a feature."""
    folder = out(a, "samples.csv", "samples.png")
    net, ckpt = M.load_method(a.ckpt, a.device)
    if not hasattr(net, "sample"):
        raise ValueError(f"{ckpt['method']} does not sample from noise; samples is for a StyleGAN")
    ds = data.load_dataset(a.data, image_size=ckpt["config"]["image_size"], n_per_class=a.n,
                           seed=a.seed, normalization=ckpt.get("normalization"))
    real, fake = {}, {}
    for c in ckpt["classes"]:
        if c in ds.classes:
            real[c] = (ds.images[ds.labels == ds.classes.index(c)][:a.n] + 1) / 2
            labels = torch.full((len(real[c]),), ckpt["classes"].index(c), device=a.device)
            with torch.no_grad():
                fake[c] = (net.sample(labels, seed=a.seed).cpu() + 1) / 2
    if not real:
        raise ValueError(f"no class of {a.data} is a class of the checkpoint")
    spreads, trends = sample_statistics(real, fake, a.feature, a.workers)
    write_csv(folder / "samples.csv", ["class", "n", "real_spread", "sampled_spread"],
              [[c, len(real[c]), *spreads[c]] for c in real])
    for k, (rho, rho_real) in trends.items():
        print(f"{k}: Spearman rho of dose and {a.feature} means: samples {rho:.2f}, "
              f"real {rho_real:.2f}")
    rows = list(real)[:10]
    plots.image_grid(torch.cat([fake[c][:8] * 2 - 1 for c in rows]), len(rows),
                     folder / "samples.png")


def cmd_fig4(a):
    """Fig. 4: per compound, Pearson r across concentrations between the per-class feature means
    of real and translated images, one r per feature, and the histogram of r over features."""
    if not a.fake:
        raise ValueError("fig4 needs --fake (the translated images, root/<class>/*.png)")
    folder = out(a, "fig4_means.csv", "fig4_correlations.csv", "fig4.png")
    real, fake = read_classes(a.real), read_classes(a.fake)
    groups, means, r = dose_response(real, fake, a.workers, nuclei_channel=a.nuclei_channel,
                                     golgi_channel=a.golgi_channel)
    names = list(next(iter(means.values())))
    write_csv(folder / "fig4_means.csv",
              ["compound", "class", "concentration_uM", "source"] + names,
              [[k, c, files.parse_class(c)[1], src] + [means[src, c][n] for n in names]
               for k, cs in groups.items() for c in cs for src in ("real", "translated")])
    write_csv(folder / "fig4_correlations.csv", ["compound", "feature", "pearson_r"],
              [[k, n, v] for k in groups for n, v in r[k].items()])
    plots.fig4(r, groups, folder / "fig4.png")


def cmd_ttest(a):
    """Fig. 2b: two-sided Welch t-test of one feature between two conditions, real and generated."""
    folder = out(a, "ttest.csv", "ttest.png")
    real = read_classes(a.real)
    sources = [("real", real)] + ([("generated", read_classes(a.fake))] if a.fake else [])
    for src, sets in sources:
        for c in (a.a, a.b):
            if c not in sets:
                raise ValueError(f"class {c!r} not in the {src} folder; it has: {', '.join(sets)}")
    kw = dict(nuclei_channel=a.nuclei_channel, golgi_channel=a.golgi_channel, channel_names=None)
    _check_feature(a.feature, list(cell_features(real[a.a][0], **kw)))
    rows, groups = [], []
    for src, sets in sources:
        va, vb = (feature_table(sets[c], workers=a.workers, **kw)[a.feature] for c in (a.a, a.b))
        va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
        t, p = stats.ttest_ind(va, vb, equal_var=False) if min(len(va), len(vb)) >= 2 \
            else (math.nan, math.nan)
        ma, mb = finite_mean(va), finite_mean(vb)
        rows.append([src, a.feature, a.a, a.b, len(va), len(vb), ma, mb, float(t), float(p)])
        groups += [(f"{src}\n{a.a}", va), (f"{src}\n{a.b}", vb)]
        print(f"{src:9s} {a.feature}: {a.a} {ma:.4g} vs {a.b} {mb:.4g}, Welch t {t:.3f}, p {p:.3g}")
    write_csv(folder / "ttest.csv", ["source", "feature", "class_a", "class_b", "n_a", "n_b",
                                     "mean_a", "mean_b", "t", "p"], rows)
    plots.boxes(groups, a.feature, "; ".join(f"{r[0]} p = {r[-1]:.2g}" for r in rows),
                folder / "ttest.png")


def cmd_represent(a):
    """DSAE's representation quality: 1-NN and linear-probe F1 of encoders' features against the
    floors (channel statistics, pixels, random weights), a table and a PCA map; for methods that
    decode, reconstructions (F1 against reconstruction: the paper's Fig. 2) and decoded paths."""
    loaded = [M.load_method(p, a.device) for p in a.ckpt]
    runs = [Path(p).name if Path(p).is_dir() else Path(p).stem for p in a.ckpt]
    runs = [r if runs.count(r) == 1 else f"{i + 1}_{r}" for i, r in enumerate(runs)]
    pngs = {i: f"interpolation_{runs[i]}.png"  # named by run: a longer list renames nothing
            for i, (net, _) in enumerate(loaded) if hasattr(net, "decode")}
    folder = out(a, "representation.md", "representation.csv", "map.png", "fig2.png",
                 *pngs.values())
    size = {ckpt["config"]["image_size"] for _, ckpt in loaded}
    if len(size) > 1:
        raise ValueError(f"the checkpoints take different image sizes ({sorted(size)}); compare "
                         "encoders of one size")
    ds = data.load_dataset(a.data, image_size=size.pop(), n_per_class=a.n_per_class, seed=a.seed,
                           compounds=a.compounds, normalization=loaded[0][1].get("normalization"),
                           fit=a.fit or loaded[0][1].get("args", {}).get("fit", "crop"))
    encoders, ckpt_names = {}, [f"{ckpt['method']} ({p})" for p, (_, ckpt) in zip(a.ckpt, loaded)]
    for i, (p, (net, ckpt)) in enumerate(zip(a.ckpt, loaded)):
        if ckpt["config"].get("in_channels", ds.images.shape[1]) != ds.images.shape[1]:
            raise ValueError(f"{p} takes {ckpt['config']['in_channels']}-channel images, "
                             f"{a.data} has {ds.images.shape[1]} channels")
        with torch.no_grad():
            net.encode(ds.images[:1].to(a.device))  # no encoder: one line before any work
        encoders[ckpt_names[i]] = net.encode
        encoders[f"{ckpt_names[i]} random weights"] = R.random_weights(ckpt, a.device).encode
    is_synthetic = ds.truth is not None
    block = a.block or (1 if is_synthetic else 4)
    ec50 = R.SYNTHETIC_EC50 if is_synthetic else None
    rows, maps, raw = R.represent(ds, encoders, a.control, a.every, block, ec50, a.batch_size,
                                  a.device)
    for r in rows:
        print(f"{r['features']:40s} {r['task']:9s} 1-NN F1 {r['knn_f1']:.3f}  linear F1 "
              f"{r['linear_f1']:.3f}  (chance {r['chance']:.3f})")
    about = [f"Data: {a.data}, {len(ds)} images of {len(ds.classes)} classes; held out: the first "
             f"of every {a.every} blocks of {block} image(s) of each class. Checkpoints: "
             f"{', '.join(a.ckpt)}."]
    if is_synthetic:
        about.append("Compounds: doses at or below the compound's EC50 (synthetic.COMPOUNDS) are "
                     "left out.")
    text = R.report(rows, about)
    test = torch.as_tensor(R.split(ds.labels.numpy(), a.every, block))
    x = ds.images[test]
    trivial = reconstruction_error(x, ds.images[~test].mean(0).expand_as(x))["mse"].mean()
    recon = {}
    for i, name in pngs.items():  # DSAE, the autoencoders: reconstructions, decoded paths
        net, f = loaded[i][0], raw[ckpt_names[i]]  # the features represent() encoded
        with torch.no_grad():
            rec = torch.cat([net.decode(fb.float().to(a.device)).cpu()
                             for fb in torch.from_numpy(f[test.numpy()]).split(a.batch_size)])
        recon[ckpt_names[i]] = reconstruction_error(x, rec)["mse"]
        paths, strips = R.interpolation(net.decode, f, ds, a.control, batch_size=a.batch_size,
                                        device=a.device)
        plots.image_grid(torch.cat(list(strips.values())), 4 * len(strips), folder / name)
        text += R.interpolation_report(paths, f"{name}, {a.ckpt[i]}", a.control)
    if recon:
        points = R.fig2_points(rows, recon)
        text += R.fig2_report(points, trivial)
        plots.f1_against_reconstruction(points, trivial, folder / "fig2.png")
    (folder / "representation.md").write_text(text)
    write_csv(folder / "representation.csv", R.COLUMNS, [[r[k] for k in R.COLUMNS] for r in rows])
    maps = {k: v for k, v in maps.items() if not k.endswith("random weights")}
    plots.feature_map(maps, ds.labels, ds.classes, folder / "map.png",
                      "PCA of features normalised to the control")


def cmd_bench(a):
    """Throughput of Inception features (random weights: the speed does not depend on them) and
    of cell_features, and the features' accuracy against the synthetic ground truth."""
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes slow the "
          "numbers down)")
    torch.manual_seed(0)
    net = InceptionV3().eval().to(a.device)
    x = torch.rand(a.batch_size, 3, 64, 64)
    encode(x, net, a.batch_size, a.device)  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.batches):
        encode(x, net, a.batch_size, a.device)  # ends with .cpu(): synchronised on a GPU too
    print(f"inception: {a.batches * a.batch_size / (time.perf_counter() - t0):.1f} images/s "
          f"(batch {a.batch_size}, 64x64 -> 299x299, {a.device}, "
          f"{torch.get_num_threads()} threads)")
    ds = data.synthetic_dataset("bbbc021", n_per_class=max(1, a.images // 25), image_size=64,
                                seed=a.seed)
    images = ((ds.images + 1) / 2).numpy()
    for workers in sorted({1, a.workers}):
        t0 = time.perf_counter()
        table = feature_table(images, workers=workers)
        print(f"cell_features: {len(images) / (time.perf_counter() - t0):.1f} images/s "
              f"({len(images)} synthetic 3x64x64 images, {len(table)} features, "
              f"{workers} worker(s))")
    truth = {k: np.array([t[k] for t in ds.truth])
             for k in ("n_cells", "actin_mean", "tubulin_mean", "dna_mean")}
    err = np.abs(table["nuclei_count"] - truth["n_cells"]).mean() / truth["n_cells"].mean()
    r = ", ".join(f"{f} r = {pearson(table[f], truth[k]):.3f}" for f, k in (
        ("cells_actin_mean", "actin_mean"), ("cells_tubulin_mean", "tubulin_mean"),
        ("nuclei_dna_mean", "dna_mean")))
    print(f"against the synthetic truth: nuclei_count mean abs error {100 * err:.1f} % of the mean "
          f"count; {r}")


def get_parser():
    p = files.Parser(prog="eval.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--out", default="runs/eval", help="output folder (%(default)s)")
    common.add_argument("--overwrite", action="store_true", help="replace earlier results in --out")
    compute = argparse.ArgumentParser(add_help=False)  # the commands that run a network
    compute.add_argument("--device", type=files.device, default=dev)
    incep = argparse.ArgumentParser(add_help=False, parents=[compute])
    incep.add_argument("--inception-weights", help=f"path to {WEIGHTS_FILE} (or set {WEIGHTS_ENV})")
    incep.add_argument("--batch-size", type=files.integer(1), default=16)
    feats = argparse.ArgumentParser(add_help=False, parents=[common])
    feats.add_argument("--real", required=True, help="real images, root/<class>/*.png")
    feats.add_argument("--fake", help="translated/generated images, same layout")
    feats.add_argument("--nuclei-channel", type=files.integer(0), default=2)
    feats.add_argument("--golgi-channel", type=files.integer(0),
                       help="channel with Golgi staining (golgi_* features)")
    feats.add_argument("--workers", type=files.integer(1), default=1,
                       help="processes for feature extraction")

    s = sub.add_parser("fid", parents=[incep], help="FID between two image folders")
    s.add_argument("path1")
    s.add_argument("path2")
    s.add_argument("--out", help="also write fid.csv here")
    s.add_argument("--overwrite", action="store_true", help="replace an earlier fid.csv in --out")
    s.set_defaults(run=cmd_fid)
    s = sub.add_parser("table1", parents=[incep, common],
                       help="Table 1: per-class FID, translated vs real")
    s.add_argument("--real", required=True, help="real images, root/<class>/*.png")
    s.add_argument("--fake", required=True, help="translated images, root/<target class>/*.png")
    s.set_defaults(run=cmd_table1)
    s = sub.add_parser("recon", parents=[common, compute], help="Table 2: reconstruction error")
    s.add_argument("--real", help="real images (a folder), matched by file name with --rec")
    s.add_argument("--rec", help="their reconstructions, e.g. OUT/DMSO of phendiff.py reconstruct")
    s.add_argument("--ckpt", help="or: reconstruct --data with this checkpoint of any method first")
    s.add_argument("--data", default="synthetic",
                   help="with --ckpt: synthetic | class folder | .npz | ...")
    s.add_argument("--n", type=files.integer(1), default=64, help="with --ckpt: number of images")
    s.add_argument("--n-per-class", type=files.integer(1), default=8,
                   help="with --ckpt: synthetic images per class")
    variant_flags(s)
    s.add_argument("--batch-size", type=files.integer(1), default=32)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=cmd_recon)
    s = sub.add_parser("samples", parents=[common, compute],
                       help="a StyleGAN's samples vs real images")
    s.add_argument("--ckpt", required=True, help="a checkpoint of a method that samples (stylegan)")
    s.add_argument("--data", default="synthetic", help="the real images, any --data source")
    s.add_argument("--n", type=files.integer(2), default=48, help="images per class (%(default)s)")
    s.add_argument("--feature", default="cells_actin_mean", help="feature whose dose trend to test")
    s.add_argument("--workers", type=files.integer(1), default=1)
    s.add_argument("--seed", type=int, default=1, help="of the real images and the samples")
    s.set_defaults(run=cmd_samples)
    sub.add_parser("fig4", parents=[feats], help="Fig. 4: feature correlations across doses"
                   ).set_defaults(run=cmd_fig4)
    s = sub.add_parser("ttest", parents=[feats], help="Fig. 2b: Welch t-test on one feature")
    s.add_argument("--feature", required=True,
                   help="a name from eval.FEATURES, e.g. golgi_area_mean")
    s.add_argument("--a", required=True, help="first condition (class name)")
    s.add_argument("--b", required=True, help="second condition (class name)")
    s.set_defaults(run=cmd_ttest)
    s = sub.add_parser("represent", parents=[common, compute],
                       help="DSAE: 1-NN / linear F1 of encoders' features against floors")
    s.add_argument("--ckpt", nargs="+", required=True, help="checkpoints of methods with encode")
    s.add_argument("--data", default="synthetic", help="any --data source")
    s.add_argument("--n-per-class", type=files.integer(2), default=40,
                   help="synthetic images per class (%(default)s)")
    s.add_argument("--compounds", nargs="+", help="keep DMSO and these compounds (default: all)")
    s.add_argument("--control", default="DMSO", help="the untreated class (%(default)s)")
    s.add_argument("--fit", choices=["crop", "resize"],
                   help="real images larger than the checkpoints' size: the centre crop or the "
                        "whole image resized (default: as the first checkpoint's run trained)")
    s.add_argument("--every", type=files.integer(2), default=5,
                   help="hold out every N-th block of images of each class (%(default)s)")
    s.add_argument("--block", type=files.integer(1),
                   help="images held out together (one site's crops): 1 for synthetic data, "
                        "else 4")
    s.add_argument("--batch-size", type=files.integer(1), default=64)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=cmd_represent)
    s = sub.add_parser("bench", parents=[compute],
                       help="feature extraction throughput and accuracy")
    s.add_argument("--batch-size", type=files.integer(1), default=16)
    s.add_argument("--batches", type=files.integer(1), default=4)
    s.add_argument("--images", type=files.integer(25), default=200)
    s.add_argument("--workers", type=files.integer(1), default=2)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(run=cmd_bench)
    import reproduce  # here, not at the top: reproduce.py builds on this module
    s = sub.add_parser("reproduce", parents=[incep],
                       help="both papers: train, translate, score every method; report.md")
    reproduce.add_arguments(s)
    s.set_defaults(run=reproduce.run)
    return p


def main(argv=None):
    files.run_command(get_parser(), argv)


if __name__ == "__main__":
    main()
