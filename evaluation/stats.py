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


def _blocks(n, groups):
    """Jackknife groups: index i goes to group i % g, g = min(n, groups)."""
    g = min(n, groups)
    return [np.arange(n) % g == k for k in range(g)]


def _jackknife(distance, sizes, groups):
    """(bias-corrected estimate, standard error) of distance(*keeps), keeps one boolean mask per
    sample, by the grouped jackknife over each sample in turn. A Fréchet distance on n images is
    biased upward by about c / n per sample (Chong & Forsyth 2020); deleting one of g groups raises
    that by c / (n (g - 1)), so each sample's leave-a-group-out mean, scaled by g - 1, estimates
    its bias. The variance adds the samples' jackknife variances."""
    full = [np.ones(n, bool) for n in sizes]
    d = distance(*full)
    estimate, var = d, 0.0
    for s, n in enumerate(sizes):
        blocks = _blocks(n, groups)
        loo = np.array([distance(*[~b if k == s else m for k, m in enumerate(full)])
                        for b in blocks])
        g = len(blocks)
        estimate -= (g - 1) * (loo.mean() - d)
        var += (g - 1) / g * ((loo - loo.mean()) ** 2).sum()
    return float(estimate), math.sqrt(var)


def frechet_interval(f1, f2, level=0.95, groups=32):
    """(estimate, low, high): the Fréchet distance between two feature sets with its bias removed
    (the jackknife of `_jackknife`; the plain distance on 64 images in 16 dimensions is ~3.5x the
    truth) and a `level` interval. The interval is normal on the square-root scale (the
    2-Wasserstein distance), so it stays within [0, inf) and holds its estimate; on the Gaussian
    oracle of tests/test_eval.py it covers the true distance in >= 85 % of seeds."""
    f1, f2 = np.asarray(f1, np.float64), np.asarray(f2, np.float64)
    est, se = _jackknife(lambda a, b: feature_distance(f1[a], f2[b]), (len(f1), len(f2)), groups)
    est, z = max(est, 0.0), stats.norm.ppf((1 + level) / 2)
    # the delta method on sqrt(d): se / (2 sqrt(d)), its slope capped near d = 0 (at d = se)
    w, se_w = math.sqrt(est), se / (2 * math.sqrt(max(est, se, 1e-300)))
    return est, max(w - z * se_w, 0.0) ** 2, (w + z * se_w) ** 2


def frechet_difference(fa, fb, ref, paired=True, level=0.95, groups=32):
    """(difference, low, high) of d(fa, ref) - d(fb, ref), bias-corrected, with a normal `level`
    interval. paired: fa and fb are images of the same inputs (two methods' translations of one
    set), so the jackknife deletes an input from both at once, and what the inputs share cancels.
    "A below B" is a claim only when high < 0."""
    fa, fb, ref = (np.asarray(f, np.float64) for f in (fa, fb, ref))
    if paired and len(fa) != len(fb):
        raise ValueError(f"paired sets need as many images: {len(fa)} and {len(fb)}")
    if paired:
        dist = lambda i, r: feature_distance(fa[i], ref[r]) - feature_distance(fb[i], ref[r])  # noqa
        est, se = _jackknife(dist, (len(fa), len(ref)), groups)
    else:
        dist = lambda i, j, r: feature_distance(fa[i], ref[r]) - feature_distance(fb[j], ref[r])  # noqa
        est, se = _jackknife(dist, (len(fa), len(fb), len(ref)), groups)
    z = stats.norm.ppf((1 + level) / 2)
    return est, est - z * se, est + z * se


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

# -----------------------------------------------------------------------------
# tests of features: paired where the design is paired, Welch where not, corrected for many


def paired_interval(a, b, level=0.95):
    """(mean of a - b, low, high) over the finite pairs, a t interval: per-image scores of two
    methods (or of a method and doing nothing) on the same images."""
    d = np.asarray(a, np.float64) - np.asarray(b, np.float64)
    d = d[np.isfinite(d)]
    if len(d) < 2:
        return math.nan, math.nan, math.nan
    half = stats.t.ppf((1 + level) / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
    return float(d.mean()), float(d.mean() - half), float(d.mean() + half)


def compare(a, b, paired, level=0.95):
    """(t, p, effect, low, high): a two-sided test of a feature between two image sets, paired
    (a[i] is the translation of b[i]: ttest_rel on the finite pairs) or not (Welch's t-test), and
    the standardised effect with its normal-approximation interval: d_z = mean difference / sd of
    the differences when paired, Cohen's d with the pooled sd otherwise."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if paired:
        ok = np.isfinite(a) & np.isfinite(b)
        a, b = a[ok], b[ok]
    else:
        a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    if min(len(a), len(b)) < 2:
        return (math.nan,) * 5
    if paired:
        diff = a - b
        t, p = stats.ttest_rel(a, b)
        sd, n_eff = diff.std(ddof=1), len(diff)
        effect = diff.mean() / sd if sd > 0 else math.nan
        se = math.sqrt(1 / n_eff + effect ** 2 / (2 * n_eff))
    else:
        t, p = stats.ttest_ind(a, b, equal_var=False)
        pooled = math.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1))
                           / (len(a) + len(b) - 2))
        effect = (a.mean() - b.mean()) / pooled if pooled > 0 else math.nan
        se = math.sqrt(1 / len(a) + 1 / len(b) + effect ** 2 / (2 * (len(a) + len(b))))
    z = stats.norm.ppf((1 + level) / 2)
    return float(t), float(p), float(effect), float(effect - z * se), float(effect + z * se)


def holm(p):
    """Holm's step-down adjustment of p-values (family-wise error across the tests of one
    question); nan stays nan."""
    p = np.asarray(p, np.float64)
    ok = np.flatnonzero(np.isfinite(p))
    order = ok[np.argsort(p[ok])]
    adjusted = np.full_like(p, np.nan)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p[i]))
        adjusted[i] = running
    return adjusted
