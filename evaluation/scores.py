"""What a translation is scored by, for every method alike: reconstruction error (Table 2), the
dose-response of cell features (Fig. 4), encoder features (Table 1), and each translation against a
reference of its own and another's: its input (does it keep it?) or, on synthetic data, the truth
(is it this cell's response?). The demo and the reproduction both score with these.
"""
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import files
import method as M
from evaluation.features import feature_table, finite_mean
from evaluation.stats import (compare, feature_distance, holm, paired_interval, pearson,
                              spearman)

# -----------------------------------------------------------------------------
# running a method or an encoder over many images


def batched(fn, tensors, batch_size, device, desc=None):
    """fn over batches of the tensors (split alike along dim 0) on device; the results concatenated
    along the image dimension (-4), on the CPU."""
    chunks = list(zip(*(t.split(batch_size) for t in tensors)))
    with torch.no_grad():
        parts = [fn(*(t.to(device) for t in c)).cpu()
                 for c in tqdm(chunks, desc=desc, disable=desc is None)]
    return torch.cat(parts, -4)


@torch.no_grad()
def encode(images, encoder, batch_size=16, device="cpu"):
    """(N, C, H, W) images in [0, 1] -> (N, D) float64 features of any encoder callable
    (Inception or a domain one)."""
    out = [encoder(torch.as_tensor(np.asarray(images[i:i + batch_size]), dtype=torch.float32,
                                   device=device))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().cpu().numpy()


def fid(images1, images2, encoder, batch_size=16, device="cpu"):
    """FID (with an InceptionV3) or its analogue for any encoder; arrays in [0, 1] or folder
    paths."""
    sets = [files.read_stack(files.list_images([x])) if isinstance(x, (str, Path)) else x
            for x in (images1, images2)]
    return feature_distance(*(encode(x, encoder, batch_size, device) for x in sets))


def load_variants(path, device, ddim_steps, fixed_point_iters, projection=None,
                  projection_steps=None, precision=None):
    """(checkpoint, {name: method}) for Table 2: PhenDiff with plain (eq. 6) and exact inversion,
    a StyleGAN with its projection (W or W+), any other method (or a folder of CycleGAN pair runs)
    as it is. precision: PhenDiff's option (None: its default)."""
    path = M.checkpoint_path(path)
    given = {"precision": precision} if precision else {}
    if path.is_file():
        ckpt = M.load_checkpoint(path)
        if ckpt["method"] == "phendiff":
            build = lambda k: M.build(ckpt, device, ddim_steps=ddim_steps,  # noqa: E731
                                      fixed_point_iters=k, **given)
            return ckpt, {"plain eq. 6": build(0),
                          f"exact ({fixed_point_iters} fixed-point iters)":
                              build(fixed_point_iters)}
    options = dict(projection=projection, projection_steps=projection_steps, **given)
    options = {k: v for k, v in options.items() if v is not None}
    net, ckpt = M.load_translator(path, device, **options)
    return ckpt, {"translate to the own class": net}

# -----------------------------------------------------------------------------
# Table 2: reconstruction error


def reconstruction_error(x, rec):
    """Per-image errors of reconstructions rec of images x, both (N, C, H, W) in [-1, 1]:
    {"l2": Euclidean distance over all pixels and channels in these units, "mse" and "psnr": on
    [0, 1] (peak 1)}, each an (N,) array. rec is clamped to [-1, 1], as any saved image would be."""
    d = (torch.as_tensor(rec).clamp(-1, 1) - torch.as_tensor(x)).flatten(1).double().cpu()
    mse = (d / 2).pow(2).mean(1)
    return {"l2": d.norm(dim=1).numpy(), "mse": mse.numpy(),
            "psnr": (-10 * torch.log10(mse.clamp_min(1e-12))).numpy()}


def psnr(x, y):
    return reconstruction_error(x, y)["psnr"]


def table2_rows(x, recs):
    """Rows [method, variant, n, L2 mean, L2 sd, MSE, PSNR] of reconstructions {(method, variant):
    (N, C, H, W)} of the images x."""
    return [[m, v, len(x), e["l2"].mean(), e["l2"].std(), e["mse"].mean(), e["psnr"].mean()]
            for (m, v), r in recs.items() for e in [reconstruction_error(x, r)]]

# -----------------------------------------------------------------------------
# each translation against its own reference and another's: the input, or the truth


def feature_rows(images, channels, workers=1):
    """(N, F) cell features of images in [-1, 1] with these channel names, and the feature names."""
    kw = dict(golgi_channel=channels.index("golgi") if "golgi" in channels else None,
              nuclei_channel=channels.index("dna") if "dna" in channels else 0)
    table = feature_table(((images + 1) / 2).numpy(), workers=workers, **kw)
    return np.stack(list(table.values()), 1), list(table)


def feature_scale(real_cells):
    """Each feature's spread over real images (a list of (N, F) arrays), the unit of feature
    distances; a constant or absent feature gets nan and is left out of every distance."""
    scale = np.nanstd(np.concatenate(real_cells), 0)
    scale[~(scale > 0)] = np.nan
    return scale


def feature_distance_rows(f1, f2, scale):
    """Per-image RMS over features of (f1 - f2) / scale; features nan on a side left out."""
    d = (f1 - f2) / scale
    with np.errstate(invalid="ignore"):
        return np.sqrt(np.nanmean(d ** 2, 1))


def own_and_other(dist, share_closer_if_smaller):
    """Mean distance to the own reference, to another one (the next), share closer to the own:
    dist(shift) gives per-image distances to the references rolled by shift."""
    own, other = dist(0), dist(1)
    closer = own < other if share_closer_if_smaller else own > other
    return float(np.nanmean(own)), float(np.nanmean(other)), float(closer.mean())


AGAINST = ["psnr_own", "psnr_other", "closer_pixels", "feature_dist_own", "feature_dist_other",
           "closer_features"]


def against_references(translations, targets, refs, ref_cells, cells, scale):
    """Each translation against its own reference (the input, or the truth) and another's (the
    next one's), in pixels and cell features. translations {method: (classes, N, C, H, W)}; for
    target t, refs(t) the reference images and ref_cells(t) their features, cells(method, t) the
    translations'. Doing nothing is a method like any other (its translations are the inputs).
    Rows: method, target, then AGAINST: PSNR own / other, share closer to its own, feature distance
    own / other, share closer to its own."""
    rows = []
    for m, y in translations.items():
        for t in targets:
            fy = cells(m, t)
            px = own_and_other(lambda s: psnr(refs(t).roll(s, 0), y[t]), False)
            ft = own_and_other(lambda s: feature_distance_rows(np.roll(ref_cells(t), s, 0), fy,
                                                               scale), True)
            rows.append([m, t, *px, *ft])
    return rows

def gains(translations, base, targets, refs, ref_cells, cells, scale):
    """Each method's gain over `base` (doing nothing) against its own reference, image by image:
    rows [method, target, PSNR gain, low, high, feature-distance gain, low, high], each a paired
    t interval (95 %) over the images; positive = closer to the reference than `base`."""
    rows = []
    for m, y in translations.items():
        if m == base:
            continue
        for t in targets:
            px = paired_interval(psnr(refs(t), y[t]), psnr(refs(t), translations[base][t]))
            ft = paired_interval(feature_distance_rows(ref_cells(t), cells(base, t), scale),
                                 feature_distance_rows(ref_cells(t), cells(m, t), scale))
            rows.append([m, t, *px, *ft])
    return rows

# -----------------------------------------------------------------------------
# Fig. 4 and samples from noise


def feature_tables(sets, workers=1, **feature_kw):
    """{class: (N, C, H, W) in [0, 1]} -> {class: {feature: (N,) values}} (features.py)."""
    return {c: feature_table(np.asarray(x), workers=workers, **feature_kw)
            for c, x in sets.items()}


def dose_response(real, fake):
    """Fig. 4's numbers from the feature tables (feature_tables) of real and translated images of
    each class. Returns groups {compound: its classes by increasing dose}, means {(source, class):
    {feature: mean}} with source "real" or "translated", and r {compound: {feature: Pearson r
    across doses of real vs translated means}}."""
    groups = {k: [c for c in v if c in fake] for k, v in files.compounds(list(real)).items()
              if k != "DMSO"}
    groups = {k: v for k, v in groups.items() if len(v) >= 3}
    if not groups:
        raise ValueError("no compound has >= 3 concentrations among both the real and the "
                         "translated classes")
    means = {(src, c): {k: finite_mean(v) for k, v in tables[c].items()}
             for src, tables in (("real", real), ("translated", fake)) for cs in groups.values()
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
        groups, means, _ = dose_response(feature_tables(real, workers),
                                         feature_tables(fake, workers))
    except ValueError:  # no compound with 3 doses: spreads only
        return spreads, {}
    trends = {}
    for k, cs in groups.items():
        conc = np.array([files.parse_class(c)[1] for c in cs])
        trends[k] = tuple(spearman(conc, np.array([means[src, c][feature] for c in cs]))
                          for src in ("translated", "real"))
    return spreads, trends

# -----------------------------------------------------------------------------
# every method's Fig. 4 and Fig. 2b from cell features (the reproduction)


def fig4_rows(outputs, targets, classes, real_cells, cells, scale):
    """Fig. 4 (per compound with >= 3 doses: Pearson r across doses of real vs translated feature
    means, over the features whose real means follow dose) and the effect r (across features:
    real class mean - control mean against translations' mean - inputs' mean, any class count).
    Returns rows [method, median r, features, effect r at the top, mean effect r], {method: r}."""
    real_means = np.stack([np.nanmean(f, 0) for f in real_cells])
    groups = {g: [classes.index(c) for c in cs] for g, cs in files.compounds(classes).items()
              if g != "DMSO" and len(cs) >= 3}
    conc = {g: np.array([files.parse_class(classes[c])[1] for c in cs]) for g, cs in groups.items()}
    nf, fig4, rows = real_means.shape[1], {}, []
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a feature absent from every image: nan
        for m in outputs:
            if m == "identity":  # untranslated: constant means, every r undefined
                continue
            fake_means = np.stack([np.nanmean(cells("input"), 0)]
                                  + [np.nanmean(cells(f"{m}_{t}"), 0) for t in targets])
            r = {g: np.array([pearson(real_means[cs, j], fake_means[cs, j]) for j in range(nf)])
                 for g, cs in groups.items()}
            varying = {g: np.array([abs(spearman(conc[g], real_means[cs, j])) >= 0.8
                                    for j in range(nf)]) for g, cs in groups.items()}
            fig4[m] = np.concatenate([r[g][varying[g]] for g in groups]) if groups else np.array([])
            effect = [pearson((real_means[t] - real_means[0]) / scale,
                                (fake_means[t] - fake_means[0]) / scale) for t in targets]
            rows.append([m, np.nanmedian(fig4[m]) if np.isfinite(fig4[m]).any() else np.nan,
                         int(np.isfinite(fig4[m]).sum()), effect[-1],
                         _mean(effect)])
    return rows, fig4 if groups else {}


def _mean(v):
    """nanmean, and nan without a warning where no value is finite (no Golgi found, no effect)."""
    return np.nanmean(v) if np.isfinite(v).any() else np.nan


def golgi_tests(outputs, classes, real_cells, cells, names, first):
    """Fig. 2b: each Golgi feature, real control against real treated (Welch's t-test: other
    images) and against each method's translations of the control inputs (a paired t-test:
    translation i against its own input i; identity: no change, the test must find nothing).
    Holm's adjustment across the features of each source. Returns rows [feature, treated images,
    test, n control, n treated, means, t, p, Holm p, effect, low, high] and the boxes of the
    feature `first`."""
    rows, boxes = [], []
    golgi = sorted((f for f in names if f.startswith("golgi_")), key=lambda f: f != first)
    top = len(classes) - 1
    for f in golgi:
        j = names.index(f)
        for src, v, base, paired in [("real", real_cells[-1][:, j], real_cells[0][:, j], False)] + [
                (m, cells(f"{m}_{top}")[:, j], cells("input")[:, j], True) for m in outputs]:
            t, p, effect, lo, hi = compare(v, base, paired)
            rows.append([f, src, "paired t" if paired else "Welch t", int(np.isfinite(base).sum()),
                         int(np.isfinite(v).sum()), _mean(base), _mean(v), t, p, np.nan,
                         effect, lo, hi])
            if f == first:
                boxes += [] if boxes else [(f"real\n{classes[0]}", base[np.isfinite(base)])]
                boxes.append((f"{src}\n{classes[-1]}", v[np.isfinite(v)]))
    for src in dict.fromkeys(r[1] for r in rows):
        mine = [r for r in rows if r[1] == src]
        for r, adjusted in zip(mine, holm([r[8] for r in mine])):
            r[9] = adjusted
    return rows, boxes
