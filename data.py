"""Datasets for PhenDiff: a synthetic cell-painting benchmark with known dose-responses, and
loaders for real microscopy (class folders, .npz arrays, the BBBC021 image set).

Every source becomes an ImageDataset: images float32 (N, C, H, W) in [-1, 1], labels, class
names, channel names and the intensity normalisation that maps raw units to [-1, 1] (it goes
into checkpoints so translation can map new images the same way and back).
Channel order of 3-channel cell images: R = actin, G = tubulin, B = DNA (Golgi set: R = Golgi).

    python data.py synthetic --kind bbbc021 --n-per-class 200 --size 64 --out DIR   # PNG folders + truth.csv
    python data.py synthetic --bench                                                # images/s per CPU core
    python data.py prepare --bbbc021 ROOT --compounds "latrunculin B" --size 128 --out DIR
    python data.py montage --out docs/       # one PNG per compound, DMSO -> top dose
    python data.py table                     # compound -> parameters -> EC50 -> effect at the top dose
"""
import argparse
import csv
import re
import time
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from scipy import fft as sp_fft, ndimage

CHANNELS = ["actin", "tubulin", "DNA"]
GOLGI_CHANNELS = ["golgi", "tubulin", "DNA"]  # the Golgi set shows Golgi in red instead of actin
UNIT_NORM = {"low": [0.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}

# -----------------------------------------------------------------------------
# The synthetic benchmark's ground truth. Each image draws its own value of every parameter
# (image-to-image SD), each cell scatters around it (cell-to-cell SD); a compound shifts the
# image-level value by E * c^h / (c^h + EC50^h) image SDs. Lengths are pixels at 64x64.
#            name                   DMSO mean, image SD, cell SD, clip low, clip high
PARAMS = {"cell_density":        (6.0, 1.2, 0.0, 1.0, 12.0),   # expected cells per field
          "cell_radius":         (10.5, 0.8, 1.2, 5.0, 16.0),  # cytoplasm extent
          "nucleus_radius":      (5.4, 0.3, 0.5, 2.5, 8.0),    # sqrt(major * minor semi-axis)
          "nucleus_roundness":   (0.78, 0.04, 0.06, 0.4, 1.0), # minor / major axis
          "cortical_actin":      (0.70, 0.08, 0.10, 0.0, 1.0), # actin ring at the cell edge
          "actin_fibres":        (0.30, 0.05, 0.08, 0.0, 1.0), # stress-fibre amplitude
          "actin_aggregates":    (0.03, 0.02, 0.03, 0.0, 1.0), # bright actin puncta
          "tubulin_contrast":    (0.60, 0.07, 0.05, 0.0, 1.0), # 1 = filaments, 0 = diffuse
          "golgi_fragmentation": (0.08, 0.05, 0.08, 0.0, 1.0)} # 0 = compact ribbon, 1 = scattered
#   compound: (concentrations in uM, EC50 uM, Hill slope, {parameter: shift at saturation in image SDs})
COMPOUNDS = {
    "latrunculin_b": ((0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10), 0.3, 1.2,
                      {"cortical_actin": -6.0, "actin_fibres": -5.0, "actin_aggregates": 5.0, "cell_radius": -3.0,
                       "cell_density": -2.5}),
    "nocodazole": ((0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3), 0.05, 1.5,
                   {"tubulin_contrast": -7.0, "cell_radius": 3.0, "nucleus_radius": 3.0,
                    "nucleus_roundness": 3.0, "golgi_fragmentation": 10.0}),
    "herbimycin_a": ((0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30), 1.0, 1.2,
                     {"actin_fibres": 2.8, "cell_radius": 2.6}),
}
GOLGI_DOSE = ("nocodazole", 1.0)  # the two-class Golgi set: DMSO vs this


def dose_shift(compound, c):
    """Shift of each parameter, in image-to-image SDs, at concentration c (uM): a Hill curve."""
    if compound == "DMSO":
        return {}
    _, ec50, h, effects = COMPOUNDS[compound]
    return {p: e * c**h / (c**h + ec50**h) for p, e in effects.items()}


def class_name(compound, concentration):
    return "DMSO" if compound == "DMSO" else f"{compound}_{concentration:g}uM"


def parse_class(name):
    """'latrunculin_b_0.1uM' -> ('latrunculin_b', 0.1); 'DMSO' -> ('DMSO', 0.0); else (name, None)."""
    if name.upper() == "DMSO":
        return "DMSO", 0.0
    m = re.fullmatch(r"(.+)_([0-9.]+(?:e-?[0-9]+)?)u[mM]", name)
    return (m[1], float(m[2])) if m else (name, None)


def compounds(classes):
    """compound -> its class names by increasing concentration (DMSO and undosed names included)."""
    out = {}
    for name in classes:
        out.setdefault(parse_class(name)[0], []).append(name)
    return {k: sorted(v, key=lambda n: parse_class(n)[1] or 0.0) for k, v in out.items()}


def safe_name(name):
    """Folder-safe compound name: 'Latrunculin B' -> 'latrunculin_b'; DMSO stays DMSO."""
    return "DMSO" if name.upper() == "DMSO" else re.sub(r"[^a-z0-9.+-]+", "_", name.lower()).strip("_")


def _chosen(compounds, available, where=""):
    """Safe names of the chosen compounds plus DMSO (the control is always kept), or None for all."""
    if compounds is None:
        return None
    unknown = [c for c in compounds if safe_name(c) not in map(safe_name, available)]
    if unknown:
        raise ValueError(f"unknown compound {unknown[0]!r}{where}; available: {', '.join(sorted(available))}")
    return {"DMSO", *map(safe_name, compounds)}

# -----------------------------------------------------------------------------
# Dataset, normalisation, augmentation


class ImageDataset(torch.utils.data.Dataset):
    """All images in memory as one tensor: map-style, so DistributedSampler splits it by index."""

    def __init__(self, images, labels, classes, channels, normalization, truth=None):
        self.images, self.labels = images, labels  # (N, C, H, W) float32 in [-1, 1], (N,) long
        self.classes, self.channels = list(classes), list(channels)
        self.normalization, self.truth = normalization, truth

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]


def _norm_arrays(x, norm):
    """low, high shaped (C, 1, 1) to broadcast over (..., C, H, W), as numpy or as a tensor like x."""
    lo, hi = (np.asarray(norm[k], np.float32).reshape(-1, 1, 1) for k in ("low", "high"))
    if torch.is_tensor(x):
        return torch.as_tensor(lo, device=x.device), torch.as_tensor(hi, device=x.device)
    return lo, hi


def normalize(raw, norm):
    """Raw units (..., C, H, W) -> [-1, 1], clipped: low percentile -> -1, high -> +1."""
    lo, hi = _norm_arrays(raw, norm)
    x = (raw - lo) / (hi - lo) * 2 - 1
    return x.clamp(-1, 1) if torch.is_tensor(x) else np.clip(x, -1, 1).astype(np.float32)


def denormalize(x, norm):
    """[-1, 1] -> raw units, for measuring translated images in the original intensity scale."""
    lo, hi = _norm_arrays(x, norm)
    return (x + 1) / 2 * (hi - lo) + lo


def percentiles(raw, low=0.1, high=99.9, max_values=2_000_000):
    """Per-channel percentile normalisation of the training set (raw (N, C, H, W)), subsampled."""
    c = raw.shape[1]
    flat = np.moveaxis(raw, 1, 0).reshape(c, -1)
    flat = flat[:, :: max(1, flat.shape[1] // max_values)]
    lo, hi = np.percentile(flat, low, axis=1), np.percentile(flat, high, axis=1)
    hi = np.maximum(hi, lo + 1e-6)  # a constant channel must not divide by zero
    return {"low": lo.astype(float).tolist(), "high": hi.astype(float).tolist()}


def augment(batch, generator=None):
    """Per-sample random flips and 90-degree rotations (the 8 symmetries of the square): cells
    have no preferred orientation; intensities are left alone (they carry the phenotype)."""
    square = batch.shape[-1] == batch.shape[-2]  # transposes only for square images
    g = torch.randint(0, 8 if square else 4, (len(batch),), generator=generator).to(batch.device)
    out = batch.clone()
    for k in range(8):
        idx = (g == k).nonzero().flatten()
        if len(idx):
            x = batch[idx].flip(-1) if k & 1 else batch[idx]
            x = x.flip(-2) if k & 2 else x
            out[idx] = x.transpose(-1, -2) if k & 4 else x
    return out

# -----------------------------------------------------------------------------
# Synthetic cell painting: a field of MCF-7-like cells per image. Candidate cells are spread
# apart, then thinned to the image's density; each pixel belongs to the nearest cell in
# radius-normalised distance, so touching cells share an edge. Each channel is a closed-form
# function of the pixel's owner cell; then optical blur, gain, background and shot noise.
# All images of a batch render at once with numpy (about 2 ms of one core per 64x64 image).

K = 18  # candidate cells per padded field
NU, NCU, NCZ, NG = 10, 14, 12, 16  # uniforms per image, per cell; normals per cell; Golgi elements per cell


@lru_cache(maxsize=4)
def _textures(size, seed=1234):
    """Smooth unit-variance noise banks (fine, coarse) that images crop at random offsets."""
    rng, s = np.random.default_rng(seed), size / 64
    banks = [ndimage.gaussian_filter(rng.standard_normal((4 * size + 64,) * 2), sig * s, mode="wrap")
             for sig in (0.8, 4.0)]
    return [(b / b.std()).astype(np.float32) for b in banks]


def _crop_texture(bank, u, hp):
    """(B, hp, hp) windows of a texture bank at offsets given by uniforms u (B, 2)."""
    off = (u * (len(bank) - hp)).astype(int)
    return np.lib.stride_tricks.sliding_window_view(bank, (hp, hp))[off[:, 0], off[:, 1]]


def _draw(seed, stream, index, size, golgi):
    """All random numbers of one image from its own stream: images do not depend on n_per_class."""
    rng = np.random.default_rng([seed, int(golgi), stream, index])
    return (rng.random(NU + K * NCU + golgi * K * NG * 3, dtype=np.float32),
            rng.standard_normal(len(PARAMS) + 4 + K * NCZ + 3 * size * size, dtype=np.float32))


def _quad(a, b, ang):
    """Coefficients (x^2, y^2, xy) of the unit quadratic form of an ellipse with semi-axes a, b."""
    c, s = np.cos(ang), np.sin(ang)
    return c**2 / a**2 + s**2 / b**2, s**2 / a**2 + c**2 / b**2, 2 * c * s * (1 / a**2 - 1 / b**2)


def _render(draws, shift, size, golgi):
    """Render a batch of one condition (shift: parameter -> image SDs). Returns the noisy images
    (B, 3, H, W) in [0, 1], per-image truth (dict of (B,) arrays) and per-cell truth (list of dicts)."""
    uni, nrm = (np.stack(a) for a in zip(*draws))
    B, s, nz = len(uni), size / 64, len(PARAMS) + 4
    u_img, u, u_g = uni[:, :NU], uni[:, NU:NU + K * NCU].reshape(B, K, NCU), uni[:, NU + K * NCU:].reshape(B, K, -1)
    z_img, z = nrm[:, :nz], nrm[:, nz:nz + K * NCZ].reshape(B, K, NCZ)
    pix = nrm[:, nz + K * NCZ:].reshape(B, 3, size, size)
    pad = int(round(4 * s))  # render margin: cells enter from outside, the FFT blur does not wrap
    hp = size + 2 * pad
    P = {name: np.clip(mean + sd * (z_img[:, j] + shift.get(name, 0.0)), lo, hi)
         for j, (name, (mean, sd, _, lo, hi)) in enumerate(PARAMS.items())}

    def cell(name, col):  # per-cell values scattered around the image's value (B, kp)
        return np.clip(P[name][:, None] + PARAMS[name][2] * z[:, :, col], *PARAMS[name][3:]).astype(np.float32)

    # layout: candidates pushed apart (independent of dose), then thinned to the image's density
    pos = u[:, :, :2] * hp
    for _ in range(4):
        d = pos[:, :, None] - pos[:, None]  # (B, K, K, 2)
        dist = np.sqrt((d**2).sum(-1)) + np.eye(K, dtype=np.float32)
        pos = np.clip(pos + 0.3 * ((np.clip(14 * s - dist, 0, None) / dist)[..., None] * d).sum(2), 0, hp - 1)
    present = u[:, :, 2] < P["cell_density"][:, None] * (hp / size) ** 2 / K
    present[np.arange(B), ((pos - hp / 2) ** 2).sum(-1).argmin(1)] = True  # at least one cell in view
    order = np.argsort(~present, axis=1, kind="stable")
    kp = present.sum(1).max()  # render only the present cells
    take = lambda a: np.take_along_axis(a, order[:, :kp].reshape(B, kp, *[1] * (a.ndim - 2)), 1)
    pos, u, z, u_g, present = take(pos), take(u), take(z), take(u_g), take(present)

    # per-cell geometry (B, kp): elliptic cell, elliptic nucleus near its centre, centrosome beside it
    R, rn, rnd = cell("cell_radius", 0) * s, cell("nucleus_radius", 1) * s, cell("nucleus_roundness", 2)
    theta, elong = 2 * np.pi * u[:, :, 3], 1 + 0.7 * u[:, :, 4]
    polar = lambda r, a: r[..., None] * np.stack([np.cos(a), np.sin(a)], -1)
    nc = pos + polar(0.15 * R * u[:, :, 5], 2 * np.pi * u[:, :, 6])
    cang = 2 * np.pi * u[:, :, 7]
    cc = nc + polar(1.2 * rn + 1.5 * s, cang)
    qa, qc, qb = _quad(R * np.sqrt(elong), R / np.sqrt(elong), theta)
    grid = np.arange(hp, dtype=np.float32) + 0.5
    dx, dy = grid - pos[:, :, 0, None], grid - pos[:, :, 1, None]  # (B, kp, W), (B, kp, H)
    d2 = (qb[..., None] * dx)[:, :, None, :] * dy[..., None] + (qa[..., None] * dx**2)[:, :, None, :]
    d2 += (qc[..., None] * dy**2)[..., None]  # (B, kp, H, W) squared radius-normalised distance
    d2[~present] = np.inf
    owner = d2.argmin(1)[:, None]
    d1 = np.sqrt(np.take_along_axis(d2, owner, 1))[:, 0]
    np.put_along_axis(d2, owner, np.inf, 1)
    d_next = np.sqrt(d2.min(1))  # the second-nearest cell: where the two are equal, cells touch
    owner = owner[:, 0]

    # every pixel reads its owner cell's parameters: (F, B, H, W)
    feats = [nc[..., 0], nc[..., 1], *_quad(rn / np.sqrt(rnd), rn * np.sqrt(rnd), theta + 0.3 * z[:, :, 3]),
             cc[..., 0], cc[..., 1], R, cell("cortical_actin", 5), cell("actin_fibres", 6),
             cell("actin_aggregates", 4), cell("tubulin_contrast", 7),
             theta + 0.4 * z[:, :, 8], (2.6 + 1.4 * u[:, :, 8]) * s, 2 * np.pi * u[:, :, 9],  # stress fibres
             np.floor(18 + 14 * u[:, :, 10]), 2 * np.pi * u[:, :, 11], 2 * np.pi * u[:, :, 12],  # microtubules
             (u[:, :, 13] - 0.5) * 0.6 / s, 0.55 * (1 + 0.15 * z[:, :, 9]), 0.32 * (1 + 0.15 * z[:, :, 10])]
    idx = (owner + kp * np.arange(B)[:, None, None]).reshape(-1)
    (ncx, ncy, qna, qnc, qnb, ccx, ccy, Rp, cort, fib, agg, contrast, fang, lam, fph, nfil, ph1, ph2, twist,
     dna_i, tub_i) = np.stack(feats).astype(np.float32).reshape(len(feats), -1)[:, idx].reshape(len(feats), B, hp, hp)
    fine, coarse = (_crop_texture(b, u_img[:, 2 * i:2 * i + 2], hp) for i, b in enumerate(_textures(size)))
    fine2 = _crop_texture(_textures(size)[0], u_img[:, 4:6], hp)
    X, Y = grid[None, None, :], grid[None, :, None]

    edge = np.minimum(1 - d1 - 0.12 * coarse, 0.5 * (d_next - d1))  # to the cell boundary, in cell radii
    inside = np.clip(edge * 10, 0, 1)
    ex, ey = X - ncx, Y - ncy
    dn = np.sqrt(qna * ex**2 + qnc * ey**2 + qnb * ex * ey)
    nuc = np.clip((1 - dn) * 6, 0, 1) * inside
    dna = dna_i * nuc * (0.7 + 0.3 * np.sqrt(np.clip(1 - dn**2, 0, 1))) * (1 + 0.2 * fine)
    t = X * np.cos(fang) + Y * np.sin(fang)  # stress fibres: wavy parallel bundles, denser at the periphery
    fibres = fib * ((1 + np.cos(2 * np.pi * t / lam + fph + 2 * coarse)) / 2) ** 4 * (0.2 + 0.8 * d1)
    fibres *= np.clip(1 + 0.7 * fine, 0, None)
    puncta = agg * 3 * np.clip(fine2 - 1, 0, None)  # actin aggregates once filaments are lost
    actin = inside * (0.1 + cort * np.exp(-((edge / 0.14) ** 2)) + (fibres + puncta) * (1 - 0.6 * nuc))
    ex, ey = X - ccx, Y - ccy
    rho, psi = np.sqrt(ex**2 + ey**2), np.arctan2(ey, ex)  # microtubules radiate from the centrosome
    fil = ((1 + np.cos(nfil * psi + twist * rho + ph1)) / 2) ** 6  # two crossing sets of curved filaments
    fil += ((1 + np.cos((nfil + 5) * psi - twist * rho + ph2)) / 2) ** 6
    fil *= np.clip(1 + 0.3 * fine, 0, None) / 0.451  # mean 1, so contrast moves texture, not intensity
    tub = tub_i * inside * (0.4 + 0.8 * np.exp(-rho / (0.5 * Rp))) * (1 - contrast + contrast * fil) * (1 - 0.6 * nuc)
    sig = np.stack([actin, tub, dna], 1)
    blur = (0.5 + 0.5 * u_img[:, 6]) * s
    sigma = np.stack([blur] * 3, 1)
    if golgi:  # Golgi elements splatted as points, then blurred: a compact ribbon or scattered puncta
        frag = cell("golgi_fragmentation", 11)[..., None]
        n_frag = 1 + np.floor(frag[..., 0] * 15.99).astype(int)
        f_of = np.arange(NG) % n_frag[..., None]  # element -> its fragment (B, kp, NG)
        ua, ur = (np.take_along_axis(u_g[..., i * NG:(i + 1) * NG], f_of, 2) for i in range(2))  # per fragment
        ang = cang[..., None] + (1.2 + 5.1 * frag) * (ua - 0.5) + 0.9 * (1 - frag) * (u_g[..., 2 * NG:] - 0.5)
        rad = (1.1 * rn + 1.2 * s)[..., None] + frag * np.clip(0.85 * R - 1.1 * rn - 1.2 * s, 0, None)[..., None] * ur
        gp = (nc[:, :, None] + polar(rad, ang)).astype(int).clip(0, hp - 1)  # (B, kp, NG, 2)
        flat = (np.arange(B)[:, None, None] * hp + gp[..., 1]) * hp + gp[..., 0]
        keep = (owner.reshape(-1)[flat] == np.arange(kp)[None, :, None]) & present[..., None]
        splat = np.bincount(flat.reshape(-1), (keep * (1 + 2 * frag) * s * s).reshape(-1), B * hp * hp)
        sig[:, 0] = inside * 0.04 + splat.reshape(B, hp, hp)
        sigma[:, 0] = np.sqrt(blur**2 + (0.6 * s) ** 2)

    # optics and camera: blur (FFT; the pad absorbs the wrap-around), gain, background, shot noise, 8 bits
    f = (np.fft.fftfreq(hp)[:, None] ** 2 + np.fft.rfftfreq(hp)[None] ** 2).astype(np.float32)
    sig = sp_fft.irfft2(sp_fft.rfft2(sig) * np.exp(-2 * np.pi**2 * sigma[..., None, None] ** 2 * f), s=(hp, hp))
    gain = np.exp(0.12 * z_img[:, -4:-3] + 0.06 * z_img[:, -3:])  # (B, 3): shared and per-channel parts
    bg = 0.01 + 0.03 * u_img[:, 7:10]
    clean = np.clip(bg[:, :, None, None] * (1 + 0.3 * coarse[:, None]) + gain[:, :, None, None] * sig, 0, 1)
    crop = (slice(None), slice(pad, pad + size), slice(pad, pad + size))
    clean = clean[:, :, pad:pad + size, pad:pad + size]
    photons = 150 * np.exp(1.2 * u_img[:, 0])
    noisy = clean + np.sqrt(clean / photons[:, None, None, None] + 0.004**2) * pix
    noisy = np.round(np.clip(noisy, 0, 1) * 255).astype(np.float32) / 255  # as written to PNG

    # truth: masks from the noise-free geometry inside the view; intensities of the noise-free image;
    # a cell counts when its nucleus centre is in view
    cmask, nmask = inside[crop] > 0.5, nuc[crop] > 0.5
    lab = np.where(cmask, owner[crop] + kp * np.arange(B)[:, None, None], -1).reshape(-1) + 1
    count = lambda m, w=1: np.bincount(lab, (m * w).reshape(-1), B * kp + 1)[1:].reshape(B, kp)
    area, narea = count(cmask), count(nmask)
    counted = present & (nc >= pad).all(-1) & (nc < pad + size).all(-1) & (area > 0)
    n = counted.sum(1)
    per_image = lambda v: (v * counted).sum(1) / np.maximum(n, 1)
    mean_in = lambda m, x: (m * x).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
    red = (GOLGI_CHANNELS if golgi else CHANNELS)[0]
    truth = {"n_cells": n, f"{red}_mean": mean_in(cmask, clean[:, 0]), "tubulin_mean": mean_in(cmask, clean[:, 1]),
             "dna_mean": mean_in(nmask, clean[:, 2]), "cell_area_mean": per_image(area),
             "nucleus_area_mean": per_image(narea),
             **{k: v for k, v in P.items() if golgi or k != "golgi_fragmentation"},
             "gain_r": gain[:, 0], "gain_g": gain[:, 1], "gain_b": gain[:, 2], "background": bg.mean(1),
             "blur": blur / s, "photons": photons}
    cells = {"cell_area": area, "nucleus_area": narea, f"cell_{red}": count(cmask, clean[:, 0]) / np.maximum(area, 1),
             "cell_tubulin": count(cmask, clean[:, 1]) / np.maximum(area, 1),
             "cell_dna": count(nmask, clean[:, 2]) / np.maximum(narea, 1)}
    if golgi:
        cells["cell_golgi_fragments"], cells["cell_golgi_area"] = n_frag, count(cmask & (sig[:, 0][crop] > 0.15))
        truth["golgi_fragments"], truth["golgi_area_mean"] = per_image(n_frag), per_image(cells["cell_golgi_area"])
    return noisy, truth, [{k: v[b][counted[b]] for k, v in cells.items()} for b in range(B)]


def synthetic_classes(kind="bbbc021", compounds=None):
    """(class names, (compound, concentration) per class) of a synthetic set, in class order."""
    if kind not in ("bbbc021", "golgi"):
        raise ValueError(f"unknown synthetic kind {kind!r}; choose bbbc021 or golgi")
    keep = _chosen(compounds, [GOLGI_DOSE[0]] if kind == "golgi" else COMPOUNDS)
    conds = [("DMSO", 0.0)] + ([GOLGI_DOSE] if kind == "golgi" else
                               [(c, x) for c in sorted(COMPOUNDS) for x in COMPOUNDS[c][0]])
    conds = [c for c in conds if keep is None or c[0] in keep]
    return [class_name(*c) for c in conds], conds


def synthetic_dataset(kind="bbbc021", n_per_class=200, image_size=64, seed=0, compounds=None, paired=False):
    """The synthetic benchmark. Image i of a class comes from its own random stream (seed, class, i);
    paired=True gives every class the same streams, so image i of each class is the same field
    under another dose (ground-truth counterfactuals)."""
    classes, conds = synthetic_classes(kind, compounds)
    all_classes, golgi = synthetic_classes(kind)[0], kind == "golgi"
    images, labels, truth = [], [], []
    for label, (name, (compound, conc)) in enumerate(zip(classes, conds)):
        shift, stream = dose_shift(compound, conc), 0 if paired else all_classes.index(name)
        for start in range(0, n_per_class, 32):
            draws = [_draw(seed, stream, i, image_size, golgi) for i in range(start, min(start + 32, n_per_class))]
            x, t, cells = _render(draws, shift, image_size, golgi)
            t = {k: v.tolist() for k, v in t.items()}
            truth += [{"class": name, "compound": compound, "concentration": conc,
                       **{k: v[b] for k, v in t.items()}, **c} for b, c in enumerate(cells)]
            images.append(x)
            labels += [label] * len(x)
    x = torch.from_numpy(np.concatenate(images)) * 2 - 1
    norm = {k: list(v) for k, v in UNIT_NORM.items()}  # a copy: callers may edit theirs
    return ImageDataset(x, torch.tensor(labels), classes, GOLGI_CHANNELS if golgi else CHANNELS, norm, truth)

# -----------------------------------------------------------------------------
# Real data: read raw (N, C, H, W) arrays, then normalise. Raw units = dtype range scaled to [0, 1].

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".npy"}
BBBC021_CSV = "BBBC021_v1_image.csv"
BBBC021_CHANNELS = {"actin": "Actin", "tubulin": "Tubulin", "DNA": "DAPI"}  # ours -> BBBC021's column suffix
BBBC021_COLUMNS = ([f"Image_{k}_{c}" for k in ("FileName", "PathName") for c in ("DAPI", "Tubulin", "Actin")]
                   + ["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Replicate",
                      "Image_Metadata_Compound", "Image_Metadata_Concentration"])
CHANNEL_ALIASES = {"actin": ("actin", "phalloidin"), "tubulin": ("tubulin",), "DNA": ("dna", "dapi", "hoechst")}


def _unit(a):
    """Scale by the dtype's range: uint8 / 255, uint16 (and PIL's 32-bit 'I' mode) / 65535, floats as is."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind in "ui":
        return a.astype(np.float32) / 65535
    return a.astype(np.float32)


def _pil_array(im):
    if im.mode in ("P", "CMYK", "YCbCr", "1"):
        im = im.convert("RGBA" if "transparency" in im.info else "RGB") if im.mode != "1" else im.convert("L")
    a = np.asarray(im)
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder == ">" else a


def read_image(path):
    """One image file -> float32 (C, H, W) in raw units. PNG/TIFF 8- or 16-bit with 1-4 channels;
    multi-page TIFFs give one channel per page (how 16-bit multi-channel images are stored); .npy as
    (H, W), (H, W, C) or (C, H, W) with C <= 8."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, allow_pickle=False)
            a = np.moveaxis(a, 0, -1) if a.ndim == 3 and a.shape[0] <= 8 < a.shape[-1] else a
        else:
            with Image.open(path) as im:
                pages = []
                for i in range(getattr(im, "n_frames", 1)):
                    im.seek(i)
                    pages.append(_pil_array(im))
            a = pages[0] if len(pages) == 1 else np.stack(pages, -1)
    except Exception as e:  # PIL and numpy raise many types for a bad file; one message for all
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"cannot read image {path}: {reason}; replace or remove the file") from e
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[-1] > 8 or a.dtype.kind not in "uifb":
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) numeric image, got {a.dtype} {a.shape}")
    return np.ascontiguousarray(np.moveaxis(_unit(a), -1, 0))


def fit_size(x, size, fit, name):
    """(N, C, H, W) -> (N, C, size, size). 'crop': centre crop (keeps the pixel scale, so cell sizes
    stay comparable); 'resize': centre square, then area-average or bilinear resize."""
    h, w = x.shape[-2:]
    if fit == "crop" and min(h, w) < size:
        raise ValueError(f"{name} is {h}x{w}, smaller than image_size {size}; "
                         "use fit='resize' (--fit resize) or a smaller size")
    if fit not in ("crop", "resize"):
        raise ValueError(f"unknown fit {fit!r}; choose crop or resize")
    m = size if fit == "crop" else min(h, w)
    x = x[..., (h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    if m != size:
        x = torch.from_numpy(np.ascontiguousarray(x))
        x = torch.nn.functional.interpolate(x, (size, size), mode="area") if m > size else \
            torch.nn.functional.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = x.numpy()
    return x


def _class_key(name):
    """DMSO first, then compounds alphabetically, each by increasing concentration."""
    compound, conc = parse_class(name)
    return compound != "DMSO", compound, conc or 0.0


def _read_folder(root, size, fit):
    files, skipped = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        for f in sorted(p for p in d.iterdir() if p.is_file() and not p.name.startswith(".")):
            (files.setdefault(d.name, []) if f.suffix.lower() in IMAGE_SUFFIXES else skipped).append(f)
    if skipped:
        warnings.warn(f"skipped {len(skipped)} non-image file(s) in {root}, e.g. {skipped[0]}")
    if not files:
        raise ValueError(f"{root} has no class sub-folders with images; expected {root}/<class>/<image>.png|tif|npy")
    classes = sorted(files, key=_class_key)
    raw, labels, first = [], [], None
    for label, c in enumerate(classes):
        for f in files[c]:
            x = read_image(f)
            first = first or (f, len(x))
            if len(x) != first[1]:
                raise ValueError(f"{f} has {len(x)} channel(s) but {first[0]} has {first[1]}; "
                                 "convert all images to the same channels")
            raw.append(fit_size(x[None], size, fit, f))
            labels.append(label)
    c = first[1]
    return np.concatenate(raw), np.array(labels), classes, CHANNELS if c == 3 else [f"channel{i}" for i in range(c)]


def _read_npz(path, size, fit):
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("images", "labels", "classes") if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks array(s) {', '.join(missing)}; "
                             "expected images (N, H, W, C), labels (N,), classes (K,)")
        images, labels, classes = f["images"], f["labels"].astype(np.int64), [str(c) for c in f["classes"]]
        channels = [str(c) for c in f["channels"]] if "channels" in f.files else None
    if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{path}: labels must be (N,) indices into the {len(classes)} classes")
    raw = fit_size(np.moveaxis(_unit(images if images.ndim == 4 else images[..., None]), -1, 1), size, fit, path)
    roles = [next((k for k, names in CHANNEL_ALIASES.items() if any(n in c.lower() for n in names)), c)
             for c in channels or []]
    if set(CHANNELS) <= set(roles):  # recognised cell-painting channels: reorder to R = actin, G = tubulin, B = DNA
        perm = [roles.index(c) for c in CHANNELS] + [i for i, r in enumerate(roles) if r not in CHANNELS]
        raw, channels = raw[:, perm], [roles[i] for i in perm]
    return raw, labels, classes, channels or [f"channel{i}" for i in range(raw.shape[1])]


def _read_bbbc021(root, size, fit, compounds, crops_per_site, seed):
    """BBBC021 fields of view via the official metadata: three 16-bit TIFFs per site, one class per
    compound-concentration, DMSO always included; crops_per_site random crops (fit='crop') or the
    centre square resized (fit='resize')."""
    path = root / BBBC021_CSV
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BBBC021_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; "
                             "expected the official BBBC021_v1_image.csv header")
        rows = list(reader)
    keep = _chosen(compounds, {r["Image_Metadata_Compound"] for r in rows}, f" in {path}")
    rows = [r for r in rows if keep is None or safe_name(r["Image_Metadata_Compound"]) in keep]
    names = [class_name(safe_name(r["Image_Metadata_Compound"]), float(r["Image_Metadata_Concentration"] or 0))
             for r in rows]
    classes = sorted(set(names), key=_class_key)
    rng, raw, labels = np.random.default_rng(seed), [], []
    for r, name in zip(rows, names):
        x = np.concatenate([read_image(root / r[f"Image_PathName_{c}"] / r[f"Image_FileName_{c}"])[:1]
                            for c in BBBC021_CHANNELS.values()])
        h, w = x.shape[1:]
        if fit == "crop" and min(h, w) >= size:
            ys, xs = rng.integers(0, h - size + 1, crops_per_site), rng.integers(0, w - size + 1, crops_per_site)
            x = np.stack([x[:, i:i + size, j:j + size] for i, j in zip(ys, xs)])
        else:
            x = fit_size(x[None], size, fit, root / r["Image_PathName_DAPI"] / r["Image_FileName_DAPI"])
        raw.append(x)
        labels += [classes.index(name)] * len(x)
    return np.concatenate(raw), np.array(labels), classes, CHANNELS


def _select(data, compounds, source):
    """Keep DMSO and the chosen compounds' classes of (raw, labels, classes, channels)."""
    raw, labels, classes, channels = data
    chosen = _chosen(compounds, {parse_class(c)[0] for c in classes} - {"DMSO"}, f" in {source}")
    if chosen is None:
        return data
    keep = [i for i, c in enumerate(classes) if parse_class(c)[0] in chosen]
    mask = np.isin(labels, keep)
    return raw[mask], np.searchsorted(keep, labels[mask]), [classes[i] for i in keep], channels


def read_raw(source, image_size=64, compounds=None, fit="crop", crops_per_site=4, seed=0):
    """A real-data source -> (raw (N, C, H, W) float32, labels (N,), classes, channels)."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data source {source!r} does not exist; pass synthetic, synthetic-golgi, a class folder, "
                         "an .npz file or a BBBC021 root")
    if (path / BBBC021_CSV).is_file():
        return _read_bbbc021(path, image_size, fit, compounds, crops_per_site, seed)
    if path.is_dir():
        return _select(_read_folder(path, image_size, fit), compounds, path)
    if path.suffix.lower() == ".npz":
        return _select(_read_npz(path, image_size, fit), compounds, path)
    raise ValueError(f"unsupported data source {source!r}; expected a class folder, an .npz file "
                     f"or a folder with {BBBC021_CSV}")


def load_dataset(source, image_size=64, kind="bbbc021", n_per_class=200, seed=0, compounds=None,
                 fit="crop", crops_per_site=4, normalization=None):
    """Every --data flag goes through here. source: 'synthetic' | 'synthetic-golgi' | class folder |
    .npz | BBBC021 root. Real data are normalised by per-channel 0.1/99.9 percentiles of this set,
    unless a normalisation (e.g. from a checkpoint) is given."""
    if source in ("synthetic", "synthetic-golgi"):
        kind = "golgi" if source == "synthetic-golgi" else kind
        return synthetic_dataset(kind, n_per_class, image_size, seed, compounds)
    raw, labels, classes, channels = read_raw(source, image_size, compounds, fit, crops_per_site, seed)
    norm = normalization or percentiles(raw)
    x = torch.from_numpy(normalize(raw, norm))
    return ImageDataset(x, torch.from_numpy(labels).long(), classes, channels, norm)

# -----------------------------------------------------------------------------
# Command line: write the synthetic set or a BBBC021 subset as class folders, montages, the effect table


def _out_folder(out, force, source=None):
    """Outputs never overwrite inputs: refuse the source folder itself, and a non-empty folder unless --force."""
    out = Path(out).resolve()
    if source is not None and (out == Path(source).resolve() or Path(source).resolve() in out.parents):
        raise ValueError(f"output folder {out} is inside the input {source}; choose a folder outside it")
    if out.exists() and any(out.iterdir()) and not force:
        raise ValueError(f"output folder {out} is not empty; choose a new folder or pass --force to write into it")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _to_uint8(x):
    """[-1, 1] (..., C, H, W) tensor -> (..., H, W, C) uint8, exact for images that came from 8-bit."""
    return np.moveaxis(np.clip(np.round((x.numpy() + 1) / 2 * 255), 0, 255).astype(np.uint8), -3, -1)


def cmd_synthetic(args):
    if args.bench:  # the per-core number: one thread, numpy's FFT is single-threaded already
        torch.set_num_threads(1)
        synthetic_dataset(args.kind, 2, args.size, args.seed)  # warm-up: texture banks
        t, cpu = time.perf_counter(), time.process_time()
        ds = synthetic_dataset(args.kind, args.n_per_class, args.size, args.seed, args.compounds)
        t, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"{len(ds)} synthetic {args.kind} images of {args.size}x{args.size} in {t:.2f} s wall, {cpu:.2f} s CPU "
              f"(one thread): {len(ds) / cpu:.0f} images/s per CPU core")
        return
    if not args.out:
        raise ValueError("pass --out DIR to write the images (or --bench to time the generator)")
    out = _out_folder(args.out, args.force)
    ds = synthetic_dataset(args.kind, args.n_per_class, args.size, args.seed, args.compounds)
    rows, seen = [], {}
    for x, label, t in zip(_to_uint8(ds.images), ds.labels.tolist(), ds.truth):
        name = ds.classes[label]
        seen[name] = seen.get(name, -1) + 1
        path = Path(name) / f"{name}_{seen[name]:05d}.png"
        (out / name).mkdir(exist_ok=True)
        Image.fromarray(x).save(out / path)
        rows.append({"file": path.as_posix(), **{k: v for k, v in t.items() if np.ndim(v) == 0}})
    with open(out / "truth.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} images in {len(ds.classes)} class folders and truth.csv to {out}")


def cmd_prepare(args):
    if not (Path(args.bbbc021) / BBBC021_CSV).is_file():
        raise ValueError(f"{args.bbbc021} has no {BBBC021_CSV}; pass the BBBC021 root folder")
    out = _out_folder(args.out, args.force, args.bbbc021)
    raw, labels, classes, _ = read_raw(args.bbbc021, args.size, args.compounds, args.fit, args.crops_per_site,
                                       args.seed)
    for i, (x, label) in enumerate(zip(raw, labels)):
        (out / classes[label]).mkdir(exist_ok=True)
        pages = [Image.fromarray(c) for c in np.round(x * 65535).astype(np.uint16)]  # 16-bit, one page per channel
        pages[0].save(out / classes[label] / f"{i:06d}.tif", save_all=True, append_images=pages[1:])
    print(f"wrote {len(raw)} 16-bit crops (actin, tubulin, DNA pages) in {len(classes)} class folders to {out}")


def cmd_montage(args):
    """One PNG per compound: columns DMSO -> highest dose, rows = the same field under every dose."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = [("bbbc021", c) for c in sorted(COMPOUNDS)] + [("golgi", "golgi")]
    for kind, compound in sets:
        chosen = None if kind == "golgi" else [compound]
        ds = synthetic_dataset(kind, args.rows, args.size, args.seed, chosen, paired=True)
        tile, gap, head = args.size * args.scale, 4, 24
        font = ImageFont.load_default(size=min(14, tile // 13))
        im = Image.new("RGB", (len(ds.classes) * (tile + gap) - gap, head + args.rows * (tile + gap) - gap), "white")
        draw = ImageDraw.Draw(im)
        for j, name in enumerate(ds.classes):
            c, conc = parse_class(name)
            label = c if c == "DMSO" else f"{c.replace('_', ' ')} {conc:g} uM"
            draw.text((j * (tile + gap) + 2, 4), label, fill="black", font=font)
            for r, i in enumerate((ds.labels == j).nonzero().flatten().tolist()):
                field = Image.fromarray(_to_uint8(ds.images[i])).resize((tile, tile), Image.NEAREST)
                im.paste(field, (j * (tile + gap), head + r * (tile + gap)))
        im.save(out / f"montage_{compound}.png")
        print(f"wrote {out / f'montage_{compound}.png'}")


def effect_table(n_per_class=200, seed=0):
    """Markdown tables measured on the truth of paired images: each compound's parameter shifts (in
    image SDs of DMSO) at the two lowest and the top dose, then what they do to measurable quantities."""
    ds, golgi = (synthetic_dataset(kind, n_per_class, 64, seed, paired=True) for kind in ("bbbc021", "golgi"))
    mean = lambda c, k, d=ds: float(np.mean([t[k] for t in d.truth if t["class"] == c]))
    sd = lambda k: float(np.std([t[k] for t in ds.truth if t["class"] == "DMSO"]))
    lines = ["| compound | EC50 (µM) | Hill | parameter | shift at 2 lowest doses (SD) | shift at top dose (SD) "
             "| DMSO → top dose |", "|---|---|---|---|---|---|---|"]
    for compound in sorted(COMPOUNDS):
        concs, ec50, h, effects = COMPOUNDS[compound]
        names = [class_name(compound, c) for c in concs]
        for p in effects:
            if p == "golgi_fragmentation":
                continue  # rendered in the Golgi set only
            shifts = [(mean(n, p) - mean("DMSO", p)) / sd(p) for n in (names[0], names[1], names[-1])]
            lines.append(f"| {compound} | {ec50:g} | {h:g} | {p} | {shifts[0]:+.2f}, {shifts[1]:+.2f} "
                         f"| {shifts[2]:+.2f} | {mean('DMSO', p):.3g} → {mean(names[-1], p):.3g} |")
    obs = ["n_cells", "cell_area_mean", "nucleus_area_mean", "actin_mean", "tubulin_mean", "dna_mean"]
    lines += ["", "| compound (top dose) | " + " | ".join(obs) + " |", "|---" * (len(obs) + 1) + "|",
              "| DMSO | " + " | ".join(f"{mean('DMSO', k):.3g}" for k in obs) + " |"]
    for compound in sorted(COMPOUNDS):
        top = class_name(compound, COMPOUNDS[compound][0][-1])
        cells = [f"{mean(top, k):.3g} ({mean(top, k) / mean('DMSO', k) - 1:+.0%})" for k in obs]
        lines.append(f"| {top} | " + " | ".join(cells) + " |")
    obs = ["n_cells", "golgi_fragments", "golgi_area_mean", "golgi_mean"]
    lines += ["", "| Golgi set | " + " | ".join(obs) + " |", "|---" * (len(obs) + 1) + "|"]
    lines += [f"| {c} | " + " | ".join(f"{mean(c, k, golgi):.3g}" for k in obs) + " |" for c in golgi.classes]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="phendiff datasets: synthetic benchmark, BBBC021 preparation, montages")
    sub = p.add_subparsers(dest="command", required=True)
    syn = sub.add_parser("synthetic", help="write the synthetic set as class folders of PNG + truth.csv")
    syn.add_argument("--kind", default="bbbc021", choices=["bbbc021", "golgi"])
    syn.add_argument("--bench", action="store_true", help="time the generator on one CPU thread; writes nothing")
    pre = sub.add_parser("prepare", help="cut a BBBC021 subset into class folders of 16-bit TIFF crops")
    pre.add_argument("--bbbc021", required=True, help=f"BBBC021 root (holds {BBBC021_CSV})")
    pre.add_argument("--fit", default="crop", choices=["crop", "resize"],
                     help="random crops, or the centre square resized")
    pre.add_argument("--crops-per-site", type=int, default=4)
    mon = sub.add_parser("montage", help="one PNG per compound, DMSO -> top dose, the same fields in every column")
    mon.add_argument("--out", default="docs")
    mon.add_argument("--rows", type=int, default=4)
    mon.add_argument("--scale", type=int, default=3, help="nearest-neighbour upscaling for visibility")
    tab = sub.add_parser("table", help="print the compound -> parameter -> EC50 -> top-dose effect table")
    for s in (syn, pre):
        s.add_argument("--out", required=s is pre, help="output folder (new or empty)")
        s.add_argument("--force", action="store_true",
                       help="write into a non-empty folder, overwriting same-named files")
        s.add_argument("--compounds", nargs="+", help="keep DMSO and these compounds (default: all)")
    for s, size in ((syn, 64), (pre, 128), (mon, 64)):
        s.add_argument("--size", type=int, default=size)
    for s in (syn, tab):
        s.add_argument("--n-per-class", type=int, default=200)
    for s in (syn, pre, mon, tab):
        s.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        if args.command == "table":
            print(effect_table(args.n_per_class, args.seed))
        else:
            {"synthetic": cmd_synthetic, "prepare": cmd_prepare, "montage": cmd_montage}[args.command](args)
    except ValueError as e:
        p.error(str(e))


if __name__ == "__main__":
    main()
