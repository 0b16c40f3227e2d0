"""Evaluation: how the paper measures a translation, runnable on any folders of real and translated images.

  FID        a handwritten InceptionV3 (the FID variant; state dict = pytorch-fid's weight file) and the
             Frechet distance; the same distance on features from any encoder you pass in.
  Table 2    reconstruction error: invert each image under its own class, regenerate, compare.
  features   CellProfiler-style per-image features with numpy/scipy (nuclei, cells, shape, intensity,
             texture, Golgi); the paper's Fig. 4 correlations and Fig. 2b t-test are built on them.

    python eval.py fid DIR1 DIR2 --inception-weights pt_inception-2015-12-05-6726825d.pth
    python eval.py table1 --real REAL_ROOT --fake TRANSLATED_ROOT --out runs/eval
    python eval.py recon --ckpt runs/ckpt.pt --data synthetic --out runs/eval
    python eval.py fig4 --real REAL_ROOT --fake TRANSLATED_ROOT --out runs/eval
    python eval.py ttest --real R --fake F --feature golgi_area_mean --a DMSO --b nocodazole_1uM --golgi-channel 0
    python eval.py bench
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
import torch.nn as nn
import torch.nn.functional as F
from scipy import linalg, ndimage, stats
from scipy.spatial import ConvexHull

# -----------------------------------------------------------------------------
# InceptionV3, FID variant. Names follow torchvision / pytorch-fid so that
# pt_inception-2015-12-05-6726825d.pth (a port of the TF FID graph) loads strictly.

WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_URL = "https://github.com/mseitzer/pytorch-fid/releases (tag fid_weights)"
WEIGHTS_ENV = "PHENDIFF_INCEPTION_WEIGHTS"


class BasicConv2d(nn.Module):
    """The unit everything is built from: bias-free conv, BatchNorm (TF's eps 0.001), ReLU."""

    def __init__(self, cin, cout, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x):
    # FID note: the TF graph averages over the valid pixels only; torchvision's network counts the
    # zero padding (count_include_pad=True), which darkens borders and shifts the features.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """35x35 block (Mixed_5b/c/d). FID note: branch_pool uses the padding-excluding average."""

    def __init__(self, cin, pool_features):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x):
        return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                          self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """35 -> 17 reduction (Mixed_6a); same as torchvision."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x):
        return torch.cat([self.branch3x3(x), self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                          F.max_pool2d(x, 3, stride=2)], 1)


class InceptionC(nn.Module):
    """17x17 block with factorised 7x7 convs (Mixed_6b..e). FID note: padding-excluding average pool."""

    def __init__(self, cin, c7):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, (7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, (1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, (7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, (1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        dbl = x
        for i in range(1, 6):
            dbl = getattr(self, f"branch7x7dbl_{i}")(dbl)
        return torch.cat([self.branch1x1(x), self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x))),
                          dbl, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """17 -> 8 reduction (Mixed_7a); same as torchvision."""

    def __init__(self, cin):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x):
        b = x
        for i in range(1, 5):
            b = getattr(self, f"branch7x7x3_{i}")(b)
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), b, F.max_pool2d(x, 3, stride=2)], 1)


class InceptionE(nn.Module):
    """8x8 block with split 1x3 / 3x1 convs (Mixed_7b, Mixed_7c). FID note: the TF graph pools
    differently in the two copies: Mixed_7b averages excluding padding, Mixed_7c takes a max
    (torchvision averages, padding included, in both)."""

    def __init__(self, cin, pool):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x):
        a = self.branch3x3_1(x)
        b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = F.max_pool2d(x, 3, stride=1, padding=1) if self.pool == "max" else _avg_pool(x)
        return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                          self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), self.branch_pool(pooled)], 1)


class InceptionV3(nn.Module):
    """(B, C, H, W) images in [0, 1] -> (B, 2048) pool3 features, as pytorch-fid computes them.

    Channel rule (applied to every set alike): 1 channel is replicated to RGB, 2 channels get a zero
    third channel, more than 3 keep the first three (reorder your channels if others matter more)."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b, self.Mixed_5c, self.Mixed_5d = InceptionA(192, 32), InceptionA(256, 64), InceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b, self.Mixed_6c = InceptionC(768, 128), InceptionC(768, 160)
        self.Mixed_6d, self.Mixed_6e = InceptionC(768, 160), InceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b, self.Mixed_7c = InceptionE(1280, "avg"), InceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # FID note: 1008 TF classes (torchvision: 1000); unused, kept to load strictly

    def forward(self, x):
        c = x.shape[1]
        x = x.expand(-1, 3, -1, -1) if c == 1 else torch.cat([x, torch.zeros_like(x[:, :1])], 1) if c == 2 else x[:, :3]
        x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # the TF graph expects [-1, 1]
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(F.max_pool2d(x, 3, stride=2)))
        x = F.max_pool2d(x, 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return x.mean((2, 3))  # (B, 2048)


def load_inception(path=None, device="cpu"):
    """The FID network with the published weights, from `path` or $PHENDIFF_INCEPTION_WEIGHTS; never downloads."""
    path = path or os.environ.get(WEIGHTS_ENV)
    if not path or not os.path.isfile(path):
        where = f" ({path} does not exist)" if path else ""
        raise FileNotFoundError(f"FID needs the Inception weights {WEIGHTS_FILE}{where}: download it from the "
                                f"pytorch-fid GitHub releases page, {WEIGHTS_URL}, and pass "
                                f"--inception-weights PATH or set {WEIGHTS_ENV}")
    net = InceptionV3()
    net.load_state_dict(torch.load(path, map_location="cpu", weights_only=True), strict=True)
    return net.eval().to(device)


# -----------------------------------------------------------------------------
# Frechet distance, FID

def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """d^2 = |mu1 - mu2|^2 + Tr(S1 + S2 - 2 (S1 S2)^(1/2)) between two Gaussians (Dowson & Landau 1982)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != mu1.shape * 2:
        raise ValueError(f"shape mismatch: mu {mu1.shape} vs {mu2.shape}, sigma {s1.shape} vs {s2.shape}")
    product = s1 @ s2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)  # singular: handled below
        covmean = linalg.sqrtm(product)
    if not np.isfinite(covmean).all() or np.abs(covmean @ covmean - product).max() > 1e-6 * np.abs(product).max():
        # singular product (e.g. fewer images than feature dimensions): nudge both diagonals
        offset = np.eye(len(mu1)) * eps
        covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
    if np.iscomplexobj(covmean):
        imag = np.abs(np.diagonal(covmean).imag).max()
        if imag > 1e-3:
            raise ValueError(f"sqrtm has a large imaginary component ({imag:.3g}); the covariances are "
                             "ill-conditioned, use more images")
        covmean = covmean.real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


@torch.no_grad()
def encode(images, encoder, batch_size=16, device="cpu"):
    """(N, C, H, W) images in [0, 1] -> (N, D) float64 features of any encoder callable (Inception or a domain one)."""
    out = [encoder(torch.as_tensor(np.asarray(images[i:i + batch_size]), dtype=torch.float32, device=device))
           for i in range(0, len(images), batch_size)]
    return torch.cat(out).double().cpu().numpy()


def feature_distance(f1, f2):
    """Frechet distance between the Gaussians fitted to two (N, D) feature sets.

    With fewer images than dimensions (per-class FID: tens of images, 2048-d) the covariances are singular
    and sqrtm of a D x D product is slow and fragile. Tr (S1 S2)^(1/2) is then computed exactly as the
    nuclear norm of A1 A2^T / sqrt((n1-1)(n2-1)), A the centred features: its squared singular values
    are the non-zero eigenvalues of S1 S2."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    (n1, d), n2 = f1.shape, len(f2)
    if n1 < 2 or n2 < 2:
        raise ValueError(f"need at least 2 images per set for a covariance, got {n1} and {n2}")
    if min(n1, n2) > d:
        return frechet_distance(f1.mean(0), np.cov(f1, rowvar=False), f2.mean(0), np.cov(f2, rowvar=False))
    a1, a2 = f1 - f1.mean(0), f2 - f2.mean(0)
    tr_covmean = np.linalg.svd(a1 @ a2.T, compute_uv=False).sum() / math.sqrt((n1 - 1) * (n2 - 1))
    diff = f1.mean(0) - f2.mean(0)
    return float(diff @ diff + (a1 ** 2).sum() / (n1 - 1) + (a2 ** 2).sum() / (n2 - 1) - 2 * tr_covmean)


def fid(images1, images2, encoder, batch_size=16, device="cpu"):
    """FID (with an InceptionV3) or its analogue for any encoder; images arrays in [0, 1] or folder paths."""
    sets = [read_folder(x) if isinstance(x, (str, Path)) else x for x in (images1, images2)]
    return feature_distance(*(encode(x, encoder, batch_size, device) for x in sets))


# -----------------------------------------------------------------------------
# Reconstruction error (Table 2)

@torch.no_grad()
def reconstruction_error(model, x, y, alpha, num_steps=50, fixed_point_iters=0, batch_size=32):
    """Invert each image under its own class and sample back (DDIM both ways). x in [-1, 1].

    Returns ({"l2", "mse", "psnr"} of (N,) arrays, reconstructions): l2 is the per-image Euclidean
    distance over all pixels and channels in model units [-1, 1]; mse and psnr are on [0, 1]
    (peak 1). Reconstructions are clamped to [-1, 1], as any saved image would be."""
    import ddim
    recs = []
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        z = ddim.invert(model, xb, yb, alpha, num_steps, fixed_point_iters=fixed_point_iters)
        recs.append(ddim.sample(model, z, yb, alpha, num_steps).clamp(-1, 1))
    rec = torch.cat(recs)
    d = (rec - x).flatten(1).double().cpu()
    mse = (d / 2).pow(2).mean(1)
    return {"l2": d.norm(dim=1).numpy(), "mse": mse.numpy(),
            "psnr": (-10 * torch.log10(mse.clamp_min(1e-12))).numpy()}, rec


# -----------------------------------------------------------------------------
# CellProfiler-style features. One image (C, H, W) in [0, 1] -> named floats.
# Nuclei: smooth + Otsu + distance-transform watershed; cells: watershed on the cytoplasm signal grown
# from the nuclei inside the cytoplasm foreground. Per-object values are averaged per image.

CHANNELS = ("actin", "tubulin", "dna")  # names used for 3-channel images; other counts get ch0, ch1, ...
GLCM_DISTANCES, GLCM_LEVELS = (1, 3), 8
_SHAPE = {"area": "area (pixels)", "perimeter": "boundary length (pixel edges x pi/4, Crofton estimate)",
          "eccentricity": "eccentricity of the same-second-moments ellipse (0 = circle)",
          "solidity": "area / convex hull area", "form_factor": "4 pi area / perimeter^2 (1 = disk)",
          "major_axis": "major axis length of the same-moments ellipse (pixels)",
          "minor_axis": "minor axis length of the same-moments ellipse (pixels)"}
_COMPARTMENTS = {"nuclei": "nucleus", "cytoplasm": "cytoplasm (cell minus nucleus)", "cells": "whole cell"}
_STATS = {"mean": "mean intensity", "integrated": "integrated (summed) intensity", "std": "intensity std"}
_TEXTURE = {"contrast": "GLCM contrast", "correlation": "GLCM correlation", "entropy": "GLCM entropy (bits)"}


def _feature_doc(channels):
    return {
        "nuclei_count": "number of nuclei (touching nuclei split by the watershed)",
        "nuclei_coverage": "fraction of the image covered by nuclei",
        "cells_coverage": "fraction of the image covered by cells",
        **{f"{o}_{k}": f"{d}, mean over {o}" for o in ("nuclei", "cells") for k, d in _SHAPE.items()},
        **{f"{o}_{c}_{s}": f"{d} of {c} in each {od}, mean over objects"
           for o, od in _COMPARTMENTS.items() for c in channels for s, d in _STATS.items()},
        **{f"image_{c}_mean": f"mean {c} intensity of the whole image" for c in channels},
        **{f"texture_{c}_{k}_{d}": f"{kd} of {c} at {d} px ({GLCM_LEVELS} levels after min-max scaling; "
           "horizontal + vertical, symmetric)" for c in channels for k, kd in _TEXTURE.items() for d in GLCM_DISTANCES},
        "golgi_count": "number of Golgi objects (only with golgi_channel)",
        "golgi_area_mean": "mean Golgi object area in pixels (only with golgi_channel)",
        "golgi_area_total": "total Golgi area in pixels (only with golgi_channel)",
        "golgi_area_per_cell": "total Golgi area / nuclei_count (only with golgi_channel)",
    }


# name -> description for 3-channel images (R actin, G tubulin, B DNA). With no nuclei, nuclei_count and
# the coverages are 0 and every per-object feature is NaN (undefined, not zero); a constant channel has
# NaN GLCM correlation. A 1-channel image has no cytoplasm signal: its cells are its nuclei. A nucleus cut
# by the image border is counted and measured only when over half of it is visible (see _counting_frame).
FEATURES = _feature_doc(CHANNELS)


def _otsu(s, min_contrast=None):
    """Otsu threshold of s; None when flat, or (with min_contrast) when the foreground is not min_contrast
    background standard deviations above the background (noise only: no objects)."""
    lo, hi = float(s.min()), float(s.max())
    if hi - lo < 1e-4:
        return None
    hist, edges = np.histogram(s, 256, (lo, hi))
    centers = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist)
    w1 = w0[-1] - w0
    m = np.cumsum(hist * centers)
    between = w0 * w1 * (m / np.maximum(w0, 1) - (m[-1] - m) / np.maximum(w1, 1)) ** 2
    t = edges[np.argmax(between[:-1]) + 1]
    if min_contrast is not None:
        bg, fg = s[s <= t], s[s > t]
        if fg.mean() - bg.mean() < min_contrast * bg.std():
            return None
    return t


def _renumber(keep, *labels):
    """Keep the labels l with keep[l] (never 0) and renumber them 1..n in every label image; -> (*images, n)."""
    keep = keep.copy()
    keep[0] = False
    mapping = np.zeros(len(keep), np.int32)
    mapping[keep] = np.arange(1, keep.sum() + 1)
    return (*(mapping[lab] for lab in labels), int(keep.sum()))


def watershed(cost, markers, mask, levels=32):
    """Marker-controlled watershed by immersion: the cost is quantised to `levels` and flooded level by
    level, every basin growing one pixel at a time (geodesic dilation) into the flooded pixels of mask.
    (scipy.ndimage.watershed_ift lets one marker flood its neighbours' basins on simple inputs.)"""
    lab = np.where(mask, markers, 0).astype(np.int32)
    lo, hi = cost[mask].min(), cost[mask].max()
    q = np.floor((cost - lo) / max(hi - lo, 1e-12) * (levels - 1))
    for level in range(levels):
        water = mask & (q <= level)
        while True:
            p = np.pad(lab, 1)  # largest 4-neighbour label: ties between basins go to the larger label
            grown = np.maximum(np.maximum(p[:-2, 1:-1], p[2:, 1:-1]), np.maximum(p[1:-1, :-2], p[1:-1, 2:]))
            new = water & (lab == 0) & (grown > 0)
            if not new.any():
                break
            lab[new] = grown[new]
    return lab


def segment_nuclei(dna, sigma=1.0, min_contrast=4.0):
    """Label image of nuclei (0 = background): Gaussian smoothing, Otsu, hole filling, then a watershed
    on the distance transform from one marker per distance peak splits touching nuclei."""
    s = ndimage.gaussian_filter(dna.astype(np.float64), sigma)
    t = _otsu(s, min_contrast)
    if t is None:
        return np.zeros(dna.shape, np.int32), 0
    mask = ndimage.binary_fill_holes(s > t)
    comps, n = ndimage.label(mask)
    dist = ndimage.distance_transform_edt(mask)
    radius = float(np.median(ndimage.maximum(dist, comps, np.arange(1, n + 1))))  # typical nucleus radius
    smooth = ndimage.gaussian_filter(dist, max(0.15 * radius, 0.5))
    peaks = (smooth == ndimage.maximum_filter(smooth, 2 * int(0.4 * radius) + 1)) & (dist >= 0.5 * radius)
    markers, m = ndimage.label(peaks, np.ones((3, 3)))
    # every component keeps a marker (a small nucleus beside a large one would lose its peak)
    for c in np.flatnonzero(ndimage.maximum(markers, comps, np.arange(1, n + 1)) == 0) + 1:
        m += 1
        markers[ndimage.maximum_position(dist, comps, c)] = m
    lab = watershed(-smooth, markers, mask)
    return _renumber(np.bincount(lab.ravel()) >= max(4, 0.1 * np.pi * radius ** 2), lab)


def segment_cells(nuclei, cyto, sigma=1.0):
    """Cells grown from the nuclei (same labels): watershed on the inverted cytoplasm signal, limited
    to its Otsu foreground; without a cytoplasm signal the cells are the nuclei."""
    if cyto is None:
        return nuclei.copy()
    s = ndimage.gaussian_filter(cyto.astype(np.float64), sigma)
    t = _otsu(s)
    fg = (nuclei > 0) if t is None else (s > t) | (nuclei > 0)
    return watershed(-s, nuclei, fg)


def _hull_pixels(mask):
    """Pixels whose centres lie in the convex hull of the object's pixel centres (as CellProfiler counts)."""
    pts = np.argwhere(mask).astype(np.float64)
    if np.linalg.matrix_rank(pts - pts[0]) < 2:
        return len(pts)  # a line: its own hull
    eq = ConvexHull(pts).equations  # rows (a, b, c): inside when a*y + b*x + c <= 0
    grid = np.indices(mask.shape).reshape(2, -1).T
    return int(((grid @ eq[:, :2].T + eq[:, 2]) <= 1e-9).all(1).sum())


def _shape(lab, n):
    """Per-object shape of labels 1..n (all non-empty) -> dict of (n,) arrays."""
    flat = lab.ravel()
    yy, xx = (a.ravel().astype(np.float64) for a in np.indices(lab.shape))
    count = lambda w=None: np.bincount(flat, w, minlength=n + 1)[1:]
    area = count()
    my, mx = count(yy) / area, count(xx) / area
    # second moments of the pixel squares (+1/12: a pixel's own variance, so one pixel is a circle)
    syy, sxx = count(yy * yy) / area - my ** 2 + 1 / 12, count(xx * xx) / area - mx ** 2 + 1 / 12
    sxy = count(yy * xx) / area - my * mx
    half, disc = (syy + sxx) / 2, np.sqrt(((syy - sxx) / 2) ** 2 + sxy ** 2)
    l1, l2 = half + disc, np.maximum(half - disc, 1e-12)
    p = np.pad(lab, 1)
    edges = np.zeros(n + 1)
    for a, b in ((p[1:], p[:-1]), (p[:, 1:], p[:, :-1])):
        d = a != b
        edges += np.bincount(a[d], minlength=n + 1) + np.bincount(b[d], minlength=n + 1)
    perimeter = edges[1:] * np.pi / 4
    hull = np.array([_hull_pixels(lab[sl] == i + 1) for i, sl in enumerate(ndimage.find_objects(lab, n))])
    return {"area": area, "perimeter": perimeter, "eccentricity": np.sqrt(1 - l2 / l1), "solidity": area / hull,
            "form_factor": 4 * np.pi * area / perimeter ** 2, "major_axis": 4 * np.sqrt(l1), "minor_axis": 4 * np.sqrt(l2)}


def _glcm(ch, d):
    """(contrast, correlation, entropy) of the symmetric grey-level co-occurrence matrix at offset d."""
    lo, hi = ch.min(), ch.max()
    if hi - lo < 1e-6 or min(ch.shape) <= d:
        return 0.0, math.nan, 0.0
    q = np.minimum(((ch - lo) / (hi - lo) * GLCM_LEVELS).astype(np.int64), GLCM_LEVELS - 1)
    pairs = np.concatenate([(q[:, :-d] * GLCM_LEVELS + q[:, d:]).ravel(), (q[:-d] * GLCM_LEVELS + q[d:]).ravel()])
    P = np.bincount(pairs, minlength=GLCM_LEVELS ** 2).reshape(GLCM_LEVELS, GLCM_LEVELS).astype(np.float64)
    P = (P + P.T) / (2 * P.sum())
    i = np.arange(GLCM_LEVELS, dtype=np.float64)
    marginal = P.sum(1)
    mu = marginal @ i
    var = marginal @ (i - mu) ** 2
    dev = i - mu
    corr = float(dev @ P @ dev / var) if var > 1e-12 else math.nan
    nz = P[P > 0]
    return float(P.ravel() @ ((i[:, None] - i[None]) ** 2).ravel()), corr, float(-(nz * np.log2(nz)).sum())


def _golgi(ch, n_cells):
    """Golgi objects: compact bright spots above the local background (white top-hat), Otsu, >= 2 px."""
    s = ndimage.gaussian_filter(ch.astype(np.float64), 0.7)
    s = s - ndimage.grey_opening(s, size=(7, 7))
    t = _otsu(s, min_contrast=4.0)
    area = np.bincount(ndimage.label(s > t)[0].ravel())[1:] if t is not None else np.zeros(0, np.int64)
    area = area[area >= 2]
    return {"golgi_count": float(len(area)), "golgi_area_mean": _mean(area), "golgi_area_total": float(area.sum()),
            "golgi_area_per_cell": float(area.sum()) / n_cells if n_cells else math.nan}


def _counting_frame(nuclei, cells, n):
    """Keep (count and measure) a nucleus cut by the image border only when over half a typical nucleus
    is visible, i.e. when its centre is likely inside the field, so that tiled fields count each cell once."""
    if n == 0:
        return nuclei, cells, 0
    area = np.bincount(nuclei.ravel(), minlength=n + 1)
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([nuclei[0], nuclei[-1], nuclei[:, 0], nuclei[:, -1]])] = True
    typical = np.median(area[1:][~edge[1:]] if (~edge[1:]).any() else area[1:])
    return _renumber(~edge | (area >= 0.5 * typical), nuclei, cells)


def _mean(a):
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else math.nan


def cell_features(image, nuclei_channel=2, golgi_channel=None, channel_names=None):
    """CellProfiler-style features of one image (C, H, W) in [0, 1]; names and meanings in FEATURES.

    Channels are named actin, tubulin, dna (3 channels) or ch0, ch1, ... unless channel_names is given;
    golgi_channel, if any, is named golgi. The cytoplasm signal is the mean of the other channels."""
    img = np.asarray(image, np.float64)
    if img.ndim == 2:
        img = img[None]
    C, H, W = img.shape
    if not 0 <= nuclei_channel < C or (golgi_channel is not None and not 0 <= golgi_channel < C):
        raise ValueError(f"nuclei_channel {nuclei_channel} / golgi_channel {golgi_channel} out of range "
                         f"for an image with {C} channels")
    names = list(channel_names or (CHANNELS if C == 3 else [f"ch{i}" for i in range(C)]))
    if golgi_channel is not None and not channel_names:
        names[golgi_channel] = "golgi"
    nuclei, n = segment_nuclei(img[nuclei_channel])
    other = [c for c in range(C) if c not in (nuclei_channel, golgi_channel)]
    cells = segment_cells(nuclei, img[other].mean(0) if other else None) if n else nuclei
    f = {"nuclei_coverage": float((nuclei > 0).mean()), "cells_coverage": float((cells > 0).mean())}
    nuclei, cells, n = _counting_frame(nuclei, cells, n)
    f["nuclei_count"] = float(n)
    for o, lab in (("nuclei", nuclei), ("cells", cells)):
        shape = _shape(lab, n) if n else {}
        f.update({f"{o}_{k}": _mean(shape.get(k, [])) for k in _SHAPE})
    cytoplasm = np.where(nuclei > 0, 0, cells)
    for o, lab in (("nuclei", nuclei), ("cytoplasm", cytoplasm), ("cells", cells)):
        area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        for c, name in enumerate(names):
            s = np.bincount(lab.ravel(), img[c].ravel(), minlength=n + 1)[1:]
            s2 = np.bincount(lab.ravel(), img[c].ravel() ** 2, minlength=n + 1)[1:]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = s / area
                std = np.sqrt(np.maximum(s2 / area - mean ** 2, 0))
            f.update({f"{o}_{name}_mean": _mean(mean), f"{o}_{name}_integrated": _mean(np.where(area > 0, s, np.nan)),
                      f"{o}_{name}_std": _mean(std)})
    for c, name in enumerate(names):
        f[f"image_{name}_mean"] = float(img[c].mean())
        for d in GLCM_DISTANCES:
            for k, v in zip(_TEXTURE, _glcm(img[c], d)):
                f[f"texture_{name}_{k}_{d}"] = v
    if golgi_channel is not None:
        f.update(_golgi(img[golgi_channel], n))
    return f


def feature_table(images, nuclei_channel=2, golgi_channel=None, channel_names=None, workers=1):
    """Features of a batch (N, C, H, W) in [0, 1] -> {name: (N,) array}; workers > 1 uses processes."""
    jobs = [(np.asarray(im), nuclei_channel, golgi_channel, channel_names) for im in images]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = pool.starmap(cell_features, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        rows = [cell_features(*job) for job in jobs]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}


# -----------------------------------------------------------------------------
# I/O: folders of images in raw units (data.read_image), outputs in a separate folder

def read_folder(path):
    """All images of a folder -> (N, C, H, W) float32 in raw units ([0, 1] for 8/16-bit files)."""
    import data
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"folder {str(path)!r} does not exist")
    files = sorted(f for f in path.iterdir() if f.suffix.lower() in data.IMAGE_SUFFIXES)
    if not files:
        raise ValueError(f"no images ({', '.join(sorted(data.IMAGE_SUFFIXES))}) in {str(path)!r}")
    images = [data.read_image(f) for f in files]
    if len({im.shape for im in images}) > 1:
        raise ValueError(f"images in {str(path)!r} differ in shape ({sorted({im.shape for im in images})[:3]}); "
                         "crop or resize them to one size")
    return np.stack(images)


def read_classes(root):
    """Class-folder layout root/<class>/*.png -> {class: (N, C, H, W)}, classes sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder {str(root)!r} does not exist")
    classes = {d.name: read_folder(d) for d in sorted(root.iterdir()) if d.is_dir()}
    if not classes:
        raise ValueError(f"{str(root)!r} has no class folders (expected root/<class>/*.png)")
    return classes


def _out_dir(out, *inputs):
    out = Path(out).resolve()
    for i in (Path(p).resolve() for p in inputs if p and Path(p).is_dir()):
        if out == i or i in out.parents:
            raise ValueError(f"--out {out} would mix outputs with the input {i}; choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows])
    print(f"wrote {path}")


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed), imported when first drawn."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, path):
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)
    print(f"wrote {path}")


def _pearson(a, b):
    ok = np.isfinite(a) & np.isfinite(b)
    a, b = a[ok], b[ok]
    if len(a) < 3 or a.std() < 1e-12 or b.std() < 1e-12:
        return math.nan
    return float(np.corrcoef(a, b)[0, 1])


def spearman(a, b):
    """Spearman's rho: Pearson's r of the (average) ranks of the finite pairs; nan when undefined."""
    from scipy.stats import rankdata
    ok = np.isfinite(a) & np.isfinite(b)
    return _pearson(rankdata(a[ok]), rankdata(b[ok]))


def _check_feature(name, names):
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ValueError(f"unknown feature {name!r}; close matches: {', '.join(close) or 'none'} "
                         "(see eval.FEATURES for all names)")


# -----------------------------------------------------------------------------
# the paper's analyses

def cmd_fid(a):
    net = load_inception(a.inception_weights, a.device)
    x1, x2 = read_folder(a.path1), read_folder(a.path2)
    d = fid(x1, x2, net, a.batch_size, a.device)
    print(f"FID {d:.4f} ({len(x1)} vs {len(x2)} images)")
    if a.out:
        _write_csv(_out_dir(a.out, a.path1, a.path2) / "fid.csv", ["path1", "path2", "n1", "n2", "fid"],
                   [[a.path1, a.path2, len(x1), len(x2), d]])


def cmd_table1(a):
    """Table 1: FID of the translated images of each target class against the real images of that class."""
    net = load_inception(a.inception_weights, a.device)
    real, fake = read_classes(a.real), read_classes(a.fake)
    common = [c for c in fake if c in real]
    if not common:
        raise ValueError(f"no class of {a.fake} ({', '.join(fake)}) is among the real classes ({', '.join(real)})")
    rows = [[c, len(real[c]), len(fake[c]), fid(real[c], fake[c], net, a.batch_size, a.device)] for c in common]
    out = _out_dir(a.out, a.real, a.fake)
    _write_csv(out / "table1.csv", ["class", "n_real", "n_translated", "fid"],
               rows + [["mean", sum(r[1] for r in rows), sum(r[2] for r in rows), float(np.mean([r[3] for r in rows]))]])
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 0.4 * len(rows) + 2), 3.5))
    ax.bar(range(len(rows)), [r[3] for r in rows])
    ax.set_xticks(range(len(rows)), common, rotation=90, fontsize=7)
    ax.set_ylabel("FID (translated vs real)")
    _save(fig, out / "table1.png")


def cmd_recon(a):
    """Table 2: reconstruction error of real images, plain and exact DDIM inversion."""
    import data
    import ddim
    import model as model_lib
    ckpt = model_lib.load_checkpoint(a.ckpt)
    net = model_lib.model_from_checkpoint(ckpt).to(a.device)
    alpha = ddim.make_schedule(ckpt["schedule"]["name"], ckpt["schedule"]["T"])
    ds = data.load_dataset(a.data, image_size=ckpt["config"]["image_size"], n_per_class=a.n_per_class, seed=a.seed,
                           normalization=ckpt.get("normalization"))
    known = [c in ckpt["classes"] for c in ds.classes]
    keep = [i for i, y in enumerate(ds.labels.tolist()) if known[y]]
    if not keep:
        raise ValueError(f"none of the classes of {a.data} ({', '.join(ds.classes[:5])}, ...) is a checkpoint class")
    keep = [keep[i] for i in torch.randperm(len(keep), generator=torch.Generator().manual_seed(a.seed))[:a.n]]
    x = ds.images[keep].to(a.device)
    y = torch.tensor([ckpt["classes"].index(ds.classes[ds.labels[i]]) for i in keep], device=a.device)
    out = _out_dir(a.out, a.data)
    rows, per_image, recs = [], [], {}
    for name, iters in (("plain", 0), ("exact", a.fixed_point_iters)):
        m, recs[name] = reconstruction_error(net, x, y, alpha, a.steps, iters, a.batch_size)
        rows.append([name, iters, a.steps, len(x), m["l2"].mean(), m["l2"].std(), m["mse"].mean(),
                     m["psnr"].mean(), m["psnr"].std()])
        per_image += [[name, i, ckpt["classes"][int(c)], m["l2"][j], m["mse"][j], m["psnr"][j]]
                      for j, (i, c) in enumerate(zip(keep, y.tolist()))]
        print(f"{name:5s} inversion: L2 {m['l2'].mean():.4f} ([-1,1] units)  PSNR {m['psnr'].mean():.2f} dB")
    _write_csv(out / "recon.csv", ["inversion", "fixed_point_iters", "steps", "n", "l2_mean", "l2_std",
                                   "mse_mean", "psnr_mean", "psnr_std"], rows)
    _write_csv(out / "recon_per_image.csv", ["inversion", "index", "class", "l2", "mse", "psnr"], per_image)
    plt = pyplot()
    k = min(8, len(x))
    fig, axes = plt.subplots(3, k, figsize=(1.5 * k, 4.8), squeeze=False)
    for r, (title, imgs) in enumerate((("real", x), ("plain", recs["plain"]), ("exact", recs["exact"]))):
        for j in range(k):
            im = ((imgs[j].clamp(-1, 1) + 1) / 2).permute(1, 2, 0).cpu().numpy()
            axes[r, j].imshow(im[..., :3] if im.shape[-1] >= 3 else im[..., 0], cmap="gray", vmin=0, vmax=1)
            axes[r, j].set_axis_off()
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    _save(fig, out / "recon.png")


def dose_response(real, fake, workers=1, **feature_kw):
    """Fig. 4's numbers. real, fake: {class: (N, C, H, W) in [0, 1]}. Returns groups {compound: its
    classes by increasing dose}, means {(source, class): {feature: mean}} with source "real" or
    "translated", and r {compound: {feature: Pearson r across concentrations of real vs translated means}}."""
    import data
    groups = {k: [c for c in v if c in fake] for k, v in data.compounds(list(real)).items() if k != "DMSO"}
    groups = {k: v for k, v in groups.items() if len(v) >= 3}
    if not groups:
        raise ValueError("no compound has >= 3 concentrations among both the real and the translated classes")
    means = {(src, c): {k: _mean(v) for k, v in feature_table(sets[c], workers=workers, **feature_kw).items()}
             for src, sets in (("real", real), ("translated", fake)) for cs in groups.values() for c in cs}
    names = list(next(iter(means.values())))
    r = {k: {n: _pearson(np.array([means["real", c][n] for c in cs]), np.array([means["translated", c][n] for c in cs]))
             for n in names} for k, cs in groups.items()}
    return groups, means, r


def plot_fig4(r, groups, path):
    """One histogram per compound of the per-feature r, real vs translated, across concentrations."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(groups), figsize=(3.5 * len(groups), 3), squeeze=False)
    for ax, (k, rk) in zip(axes[0], r.items()):
        v = np.array(list(rk.values()))
        v = v[np.isfinite(v)]
        ax.hist(v, bins=np.linspace(-1, 1, 21))
        ax.set_title(f"{k} ({len(groups[k])} conc.), median r {np.median(v) if len(v) else math.nan:.2f}", fontsize=8)
        ax.set_xlabel("Pearson r, real vs translated")
    axes[0, 0].set_ylabel("features")
    _save(fig, path)


def cmd_fig4(a):
    """Fig. 4: per compound, Pearson r across concentrations between the per-class feature means of
    real and translated images, one r per feature, and the histogram of r over features."""
    import data
    if not a.fake:
        raise ValueError("fig4 needs --fake (the translated images, root/<class>/*.png)")
    real, fake = read_classes(a.real), read_classes(a.fake)
    groups, means, r = dose_response(real, fake, a.workers, nuclei_channel=a.nuclei_channel,
                                     golgi_channel=a.golgi_channel)
    names = list(next(iter(means.values())))
    out = _out_dir(a.out, a.real, a.fake)
    _write_csv(out / "fig4_means.csv", ["compound", "class", "concentration_uM", "source"] + names,
               [[k, c, data.parse_class(c)[1], src] + [means[src, c][n] for n in names]
                for k, cs in groups.items() for c in cs for src in ("real", "translated")])
    _write_csv(out / "fig4_correlations.csv", ["compound", "feature", "pearson_r"],
               [[k, n, v] for k in groups for n, v in r[k].items()])
    plot_fig4(r, groups, out / "fig4.png")


def cmd_ttest(a):
    """Fig. 2b: two-sided Welch t-test of one feature between two conditions, real and generated."""
    real = read_classes(a.real)
    sources = [("real", real)] + ([("generated", read_classes(a.fake))] if a.fake else [])
    for src, sets in sources:
        for c in (a.a, a.b):
            if c not in sets:
                raise ValueError(f"class {c!r} not in the {src} folder; it has: {', '.join(sets)}")
    kw = dict(nuclei_channel=a.nuclei_channel, golgi_channel=a.golgi_channel, channel_names=None)
    _check_feature(a.feature, list(cell_features(real[a.a][0], **kw)))
    rows, boxes = [], []
    for src, sets in sources:
        va, vb = (feature_table(sets[c], workers=a.workers, **kw)[a.feature] for c in (a.a, a.b))
        va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
        t, p = stats.ttest_ind(va, vb, equal_var=False) if min(len(va), len(vb)) >= 2 else (math.nan, math.nan)
        rows.append([src, a.feature, a.a, a.b, len(va), len(vb), _mean(va), _mean(vb), float(t), float(p)])
        boxes += [(f"{src}\n{a.a}", va), (f"{src}\n{a.b}", vb)]
        print(f"{src:9s} {a.feature}: {a.a} {_mean(va):.4g} vs {a.b} {_mean(vb):.4g}, Welch t {t:.3f}, p {p:.3g}")
    out = _out_dir(a.out, a.real, a.fake)
    _write_csv(out / "ttest.csv", ["source", "feature", "class_a", "class_b", "n_a", "n_b", "mean_a", "mean_b",
                                   "t", "p"], rows)
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(1.4 * len(boxes) + 1, 3.5))
    ax.boxplot([v for _, v in boxes])
    ax.set_xticks(range(1, len(boxes) + 1), [n for n, _ in boxes], fontsize=7)
    ax.set_ylabel(a.feature)
    ax.set_title("; ".join(f"{r[0]} p = {r[-1]:.2g}" for r in rows), fontsize=8)
    _save(fig, out / "ttest.png")


def cmd_bench(a):
    """Throughput of Inception features (random weights: the speed does not depend on them) and cell_features."""
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes slow the numbers down)")
    torch.manual_seed(0)
    net = InceptionV3().eval().to(a.device)
    x = torch.rand(a.batch_size, 3, 64, 64)
    encode(x, net, a.batch_size, a.device)  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.batches):
        encode(x, net, a.batch_size, a.device)  # ends with .cpu(): synchronised on a GPU too
    print(f"inception: {a.batches * a.batch_size / (time.perf_counter() - t0):.1f} images/s "
          f"(batch {a.batch_size}, 64x64 -> 299x299, {a.device}, {torch.get_num_threads()} threads)")
    import data
    ds = data.synthetic_dataset("bbbc021", n_per_class=max(1, a.images // 25), image_size=64, seed=a.seed)
    images = ((ds.images + 1) / 2).numpy()
    for workers in sorted({1, a.workers}):
        t0 = time.perf_counter()
        table = feature_table(images, workers=workers)
        print(f"cell_features: {len(images) / (time.perf_counter() - t0):.1f} images/s "
              f"({len(images)} synthetic 3x64x64 images, {len(table)} features, {workers} worker(s))")
    truth = {k: np.array([t[k] for t in ds.truth]) for k in ("n_cells", "actin_mean", "tubulin_mean", "dna_mean")}
    err = np.abs(table["nuclei_count"] - truth["n_cells"]).mean() / truth["n_cells"].mean()
    r = ", ".join(f"{f} r = {_pearson(table[f], truth[k]):.3f}" for f, k in (
        ("cells_actin_mean", "actin_mean"), ("cells_tubulin_mean", "tubulin_mean"), ("nuclei_dna_mean", "dna_mean")))
    print(f"against the synthetic truth: nuclei_count mean abs error {100 * err:.1f} % of the mean count; {r}")


def main(argv=None):
    p = argparse.ArgumentParser(prog="eval.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    incep = argparse.ArgumentParser(add_help=False)
    incep.add_argument("--inception-weights", help=f"path to {WEIGHTS_FILE} (or set {WEIGHTS_ENV})")
    incep.add_argument("--batch-size", type=int, default=16)
    incep.add_argument("--device", default=dev)
    feats = argparse.ArgumentParser(add_help=False)
    feats.add_argument("--real", required=True, help="real images, root/<class>/*.png")
    feats.add_argument("--fake", help="translated/generated images, same layout")
    feats.add_argument("--nuclei-channel", type=int, default=2)
    feats.add_argument("--golgi-channel", type=int, help="channel with Golgi staining (adds golgi_* features)")
    feats.add_argument("--workers", type=int, default=1, help="processes for feature extraction")
    feats.add_argument("--out", default="runs/eval")

    s = sub.add_parser("fid", parents=[incep], help="FID between two image folders")
    s.add_argument("path1")
    s.add_argument("path2")
    s.add_argument("--out", help="also write fid.csv here")
    s = sub.add_parser("table1", parents=[incep], help="Table 1: per-class FID, translated vs real")
    s.add_argument("--real", required=True, help="real images, root/<class>/*.png")
    s.add_argument("--fake", required=True, help="translated images, root/<target class>/*.png")
    s.add_argument("--out", default="runs/eval")
    s = sub.add_parser("recon", help="Table 2: reconstruction error, plain and exact inversion")
    s.add_argument("--ckpt", required=True)
    s.add_argument("--data", default="synthetic", help="synthetic | synthetic-golgi | class folder | .npz | BBBC021 root")
    s.add_argument("--n", type=int, default=64, help="number of images")
    s.add_argument("--n-per-class", type=int, default=8, help="images per class generated for synthetic data")
    s.add_argument("--steps", type=int, default=50)
    s.add_argument("--fixed-point-iters", type=int, default=5, help="iterations for exact inversion")
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=dev)
    s.add_argument("--out", default="runs/eval")
    sub.add_parser("fig4", parents=[feats], help="Fig. 4: feature correlations across concentrations")
    s = sub.add_parser("ttest", parents=[feats], help="Fig. 2b: Welch t-test on one feature")
    s.add_argument("--feature", required=True, help="a name from eval.FEATURES, e.g. golgi_area_mean")
    s.add_argument("--a", required=True, help="first condition (class name)")
    s.add_argument("--b", required=True, help="second condition (class name)")
    s = sub.add_parser("bench", help="feature extraction throughput")
    s.add_argument("--batch-size", type=int, default=16)
    s.add_argument("--batches", type=int, default=4)
    s.add_argument("--images", type=int, default=200)
    s.add_argument("--workers", type=int, default=2)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default=dev)
    a = p.parse_args(argv)
    try:
        globals()[f"cmd_{a.cmd}"](a)
    except (ValueError, FileNotFoundError) as e:
        p.exit(2, f"eval.py {a.cmd}: error: {e}\n")


if __name__ == "__main__":
    main()
