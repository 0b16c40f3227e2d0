"""CellProfiler-style features of cell images with numpy/scipy: what the paper measures on real
and translated images (its Fig. 4 correlations and Fig. 2b t-test are built on these).

One image (C, H, W) in [0, 1] -> named floats (FEATURES says what each means). Nuclei: smooth +
Otsu + distance-transform watershed; cells: a watershed on the cytoplasm signal grown from the
nuclei inside the cytoplasm foreground. Per-object values are averaged per image.
"""
import math

import numpy as np
from scipy import ndimage
from scipy.spatial import ConvexHull

import files

GLCM_DISTANCES, GLCM_LEVELS = (1, 3), 8
_SHAPE = {"area": "area (pixels)",
          "perimeter": "boundary length (pixel edges x pi/4, Crofton estimate)",
          "eccentricity": "eccentricity of the same-second-moments ellipse (0 = circle)",
          "solidity": "area / convex hull area",
          "form_factor": "4 pi area / perimeter^2 (1 = disk)",
          "major_axis": "major axis length of the same-moments ellipse (pixels)",
          "minor_axis": "minor axis length of the same-moments ellipse (pixels)"}
_COMPARTMENTS = {"nuclei": "nucleus", "cytoplasm": "cytoplasm (cell minus nucleus)",
                 "cells": "whole cell"}
_STATS = {"mean": "mean intensity", "integrated": "integrated (summed) intensity",
          "std": "intensity std"}
_TEXTURE = {"contrast": "GLCM contrast", "correlation": "GLCM correlation",
            "entropy": "GLCM entropy (bits)"}


def _feature_doc(channels):
    return {
        "nuclei_count": "number of nuclei (touching nuclei split by the watershed)",
        "nuclei_coverage": "fraction of the image covered by nuclei",
        "cells_coverage": "fraction of the image covered by cells",
        **{f"{o}_{k}": f"{d}, mean over {o}"
           for o in ("nuclei", "cells") for k, d in _SHAPE.items()},
        **{f"{o}_{c}_{s}": f"{d} of {c} in each {od}, mean over objects"
           for o, od in _COMPARTMENTS.items() for c in channels for s, d in _STATS.items()},
        **{f"image_{c}_mean": f"mean {c} intensity of the whole image" for c in channels},
        **{f"texture_{c}_{k}_{d}": f"{kd} of {c} at {d} px ({GLCM_LEVELS} levels after min-max "
           "scaling; horizontal + vertical, symmetric)"
           for c in channels for k, kd in _TEXTURE.items() for d in GLCM_DISTANCES},
        "golgi_count": "number of Golgi objects (only with golgi_channel)",
        "golgi_area_mean": "mean Golgi object area in pixels (only with golgi_channel)",
        "golgi_area_total": "total Golgi area in pixels (only with golgi_channel)",
        "golgi_area_per_cell": "total Golgi area / nuclei_count (only with golgi_channel)",
    }


# name -> description for 3-channel images (R actin, G tubulin, B DNA). With no nuclei,
# nuclei_count and the coverages are 0 and every per-object feature is NaN (undefined, not zero);
# a constant channel has NaN GLCM correlation. A 1-channel image has no cytoplasm signal: its cells
# are its nuclei. A nucleus cut by the image border is counted and measured only when over half of
# it is visible (see _counting_frame).
FEATURES = _feature_doc(files.CHANNELS)


def _otsu(s, min_contrast=None):
    """Otsu threshold of s; None when flat, or (with min_contrast) when the foreground is not
    min_contrast background standard deviations above the background (noise only: no objects)."""
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
    """Keep the labels l with keep[l] (never 0) and renumber them 1..n in every label image;
    -> (*images, n)."""
    keep = keep.copy()
    keep[0] = False
    mapping = np.zeros(len(keep), np.int32)
    mapping[keep] = np.arange(1, keep.sum() + 1)
    return (*(mapping[lab] for lab in labels), int(keep.sum()))


def watershed(cost, markers, mask, levels=32):
    """Marker-controlled watershed by immersion: the cost is quantised to `levels` and flooded
    level by level, every basin growing one pixel at a time (geodesic dilation) into the flooded
    pixels of mask. (scipy.ndimage.watershed_ift lets one marker flood its neighbours' basins on
    simple inputs.)"""
    lab = np.where(mask, markers, 0).astype(np.int32)
    lo, hi = cost[mask].min(), cost[mask].max()
    q = np.floor((cost - lo) / max(hi - lo, 1e-12) * (levels - 1))
    for level in range(levels):
        water = mask & (q <= level)
        while True:
            # largest 4-neighbour label: ties between basins go to the larger label
            p = np.pad(lab, 1)
            grown = np.maximum(np.maximum(p[:-2, 1:-1], p[2:, 1:-1]),
                               np.maximum(p[1:-1, :-2], p[1:-1, 2:]))
            new = water & (lab == 0) & (grown > 0)
            if not new.any():
                break
            lab[new] = grown[new]
    return lab


def segment_nuclei(dna, sigma=1.0, min_contrast=4.0):
    """Label image of nuclei (0 = background): Gaussian smoothing, Otsu, hole filling, then a
    watershed on the distance transform from one marker per distance peak splits touching nuclei."""
    s = ndimage.gaussian_filter(dna.astype(np.float64), sigma)
    t = _otsu(s, min_contrast)
    if t is None:
        return np.zeros(dna.shape, np.int32), 0
    mask = ndimage.binary_fill_holes(s > t)
    comps, n = ndimage.label(mask)
    dist = ndimage.distance_transform_edt(mask)
    # typical nucleus radius
    radius = float(np.median(ndimage.maximum(dist, comps, np.arange(1, n + 1))))
    smooth = ndimage.gaussian_filter(dist, max(0.15 * radius, 0.5))
    peaks = ((smooth == ndimage.maximum_filter(smooth, 2 * int(0.4 * radius) + 1))
             & (dist >= 0.5 * radius))
    markers, m = ndimage.label(peaks, np.ones((3, 3)))
    # every component keeps a marker (a small nucleus beside a large one would lose its peak)
    for c in np.flatnonzero(ndimage.maximum(markers, comps, np.arange(1, n + 1)) == 0) + 1:
        m += 1
        markers[ndimage.maximum_position(dist, comps, c)] = m
    lab = watershed(-smooth, markers, mask)
    return _renumber(np.bincount(lab.ravel()) >= max(4, 0.1 * np.pi * radius ** 2), lab)


def segment_cells(nuclei, cyto, sigma=1.0):
    """Cells grown from the nuclei (same labels): watershed on the inverted cytoplasm signal,
    limited to its Otsu foreground; without a cytoplasm signal the cells are the nuclei."""
    if cyto is None:
        return nuclei.copy()
    s = ndimage.gaussian_filter(cyto.astype(np.float64), sigma)
    t = _otsu(s)
    fg = (nuclei > 0) if t is None else (s > t) | (nuclei > 0)
    return watershed(-s, nuclei, fg)


def _hull_pixels(mask):
    """Pixels whose centres lie in the convex hull of the object's pixel centres (as CellProfiler
    counts)."""
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
    hull = np.array([_hull_pixels(lab[sl] == i + 1)
                     for i, sl in enumerate(ndimage.find_objects(lab, n))])
    return {"area": area, "perimeter": perimeter, "eccentricity": np.sqrt(1 - l2 / l1),
            "solidity": area / hull, "form_factor": 4 * np.pi * area / perimeter ** 2,
            "major_axis": 4 * np.sqrt(l1), "minor_axis": 4 * np.sqrt(l2)}


def _glcm(ch, d):
    """(contrast, correlation, entropy) of the symmetric grey-level co-occurrence matrix at
    offset d."""
    lo, hi = ch.min(), ch.max()
    if hi - lo < 1e-6 or min(ch.shape) <= d:
        return 0.0, math.nan, 0.0
    q = np.minimum(((ch - lo) / (hi - lo) * GLCM_LEVELS).astype(np.int64), GLCM_LEVELS - 1)
    pairs = np.concatenate([(q[:, :-d] * GLCM_LEVELS + q[:, d:]).ravel(),
                            (q[:-d] * GLCM_LEVELS + q[d:]).ravel()])
    P = (np.bincount(pairs, minlength=GLCM_LEVELS ** 2).reshape(GLCM_LEVELS, GLCM_LEVELS)
         .astype(np.float64))
    P = (P + P.T) / (2 * P.sum())
    i = np.arange(GLCM_LEVELS, dtype=np.float64)
    marginal = P.sum(1)
    mu = marginal @ i
    var = marginal @ (i - mu) ** 2
    dev = i - mu
    corr = float(dev @ P @ dev / var) if var > 1e-12 else math.nan
    nz = P[P > 0]
    return (float(P.ravel() @ ((i[:, None] - i[None]) ** 2).ravel()), corr,
            float(-(nz * np.log2(nz)).sum()))


def _golgi(ch, n_cells):
    """Golgi objects: compact bright spots above the local background (white top-hat), Otsu,
    >= 2 px."""
    s = ndimage.gaussian_filter(ch.astype(np.float64), 0.7)
    s = s - ndimage.grey_opening(s, size=(7, 7))
    t = _otsu(s, min_contrast=4.0)
    area = (np.bincount(ndimage.label(s > t)[0].ravel())[1:] if t is not None
            else np.zeros(0, np.int64))
    area = area[area >= 2]
    return {"golgi_count": float(len(area)), "golgi_area_mean": finite_mean(area),
            "golgi_area_total": float(area.sum()),
            "golgi_area_per_cell": float(area.sum()) / n_cells if n_cells else math.nan}


def _counting_frame(nuclei, cells, n):
    """Keep (count and measure) a nucleus cut by the image border only when over half a typical
    nucleus is visible, i.e. when its centre is likely inside the field, so that tiled fields count
    each cell once."""
    if n == 0:
        return nuclei, cells, 0
    area = np.bincount(nuclei.ravel(), minlength=n + 1)
    edge = np.zeros(n + 1, bool)
    edge[np.concatenate([nuclei[0], nuclei[-1], nuclei[:, 0], nuclei[:, -1]])] = True
    typical = np.median(area[1:][~edge[1:]] if (~edge[1:]).any() else area[1:])
    return _renumber(~edge | (area >= 0.5 * typical), nuclei, cells)


def finite_mean(a):
    a = np.asarray(a, np.float64)
    a = a[np.isfinite(a)]
    return float(a.mean()) if len(a) else math.nan


def cell_features(image, nuclei_channel=2, golgi_channel=None, channel_names=None):
    """CellProfiler-style features of one image (C, H, W) in [0, 1]; names and meanings in FEATURES.

    Channels are named actin, tubulin, dna (3 channels) or ch0, ch1, ... unless channel_names is
    given; golgi_channel, if any, is named golgi. The cytoplasm signal is the mean of the other
    channels."""
    img = np.asarray(image, np.float64)
    if img.ndim == 2:
        img = img[None]
    C, H, W = img.shape
    if not 0 <= nuclei_channel < C or (golgi_channel is not None and not 0 <= golgi_channel < C):
        raise ValueError(f"nuclei_channel {nuclei_channel} / golgi_channel {golgi_channel} "
                         f"out of range for an image with {C} channels")
    names = list(channel_names or files.channel_names(C))
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
        f.update({f"{o}_{k}": finite_mean(shape.get(k, [])) for k in _SHAPE})
    cytoplasm = np.where(nuclei > 0, 0, cells)
    for o, lab in (("nuclei", nuclei), ("cytoplasm", cytoplasm), ("cells", cells)):
        area = np.bincount(lab.ravel(), minlength=n + 1)[1:]
        for c, name in enumerate(names):
            s = np.bincount(lab.ravel(), img[c].ravel(), minlength=n + 1)[1:]
            s2 = np.bincount(lab.ravel(), img[c].ravel() ** 2, minlength=n + 1)[1:]
            with np.errstate(invalid="ignore", divide="ignore"):
                mean = s / area
                std = np.sqrt(np.maximum(s2 / area - mean ** 2, 0))
            f.update({f"{o}_{name}_mean": finite_mean(mean),
                      f"{o}_{name}_integrated": finite_mean(np.where(area > 0, s, np.nan)),
                      f"{o}_{name}_std": finite_mean(std)})
    for c, name in enumerate(names):
        f[f"image_{name}_mean"] = float(img[c].mean())
        for d in GLCM_DISTANCES:
            for k, v in zip(_TEXTURE, _glcm(img[c], d)):
                f[f"texture_{name}_{k}_{d}"] = v
    if golgi_channel is not None:
        f.update(_golgi(img[golgi_channel], n))
    return f


def feature_table(images, nuclei_channel=2, golgi_channel=None, channel_names=None, workers=1):
    """Features of a batch (N, C, H, W) in [0, 1] -> {name: (N,) array}; workers > 1 uses
    processes."""
    jobs = [(np.asarray(im), nuclei_channel, golgi_channel, channel_names) for im in images]
    if workers > 1 and len(jobs) > 1:
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            rows = pool.starmap(cell_features, jobs, chunksize=max(1, len(jobs) // (4 * workers)))
    else:
        rows = [cell_features(*job) for job in jobs]
    return {k: np.array([r[k] for r in rows]) for k in rows[0]} if rows else {}
