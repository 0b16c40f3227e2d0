"""Statistics of the comparison: Fréchet distances between feature sets and their intervals, and
correlations that tolerate missing values.

A Fréchet distance (FID when the features are InceptionV3's) compares two image populations by
the Gaussians fitted to their features. On the few hundred images per class of a microscopy
comparison it is biased upward and noisy, so it never goes without its interval.
"""
import math
import warnings

import numpy as np
from scipy import linalg, stats

import files

# -----------------------------------------------------------------------------
# Fréchet distance


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

# -----------------------------------------------------------------------------
# correlations


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
