"""The synthetic cell-painting benchmark of PhenDiff: real screens never tell you what a compound
truly did to each cell, so we render cells whose phenotype parameters and dose-responses are
known, and score translations against that truth.

The ground truth (PARAMS, COMPOUNDS, dose_shift) sits beside the renderer that obeys it; data.py
turns rendered batches into datasets. numpy and scipy only: every image comes from its own random
stream (draw), so a set is the same on any machine and for any n_per_class.
"""
from functools import lru_cache
from types import SimpleNamespace

import numpy as np
from scipy import fft as sp_fft, ndimage

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
#   compound: (concentrations in uM, EC50 uM, Hill slope,
#              {parameter: shift at saturation in image SDs})
COMPOUNDS = {
    "latrunculin_b": ((0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10), 0.3, 1.2,
                      {"cortical_actin": -6.0, "actin_fibres": -5.0, "actin_aggregates": 5.0,
                       "cell_radius": -3.0, "cell_density": -2.5}),
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

# -----------------------------------------------------------------------------
# Synthetic cell painting: a field of MCF-7-like cells per image. Candidate cells are spread
# apart, then thinned to the image's density; each pixel belongs to the nearest cell in
# radius-normalised distance, so touching cells share an edge. Each channel is a closed-form
# function of the pixel's owner cell; then optical blur, gain, background and shot noise.
# All images of a batch render at once with numpy (about 2 ms of one core per 64x64 image).

K = 18  # candidate cells per padded field
# uniforms per image, per cell; normals per cell; Golgi elements per cell
NU, NCU, NCZ, NG = 10, 14, 12, 16
# What each per-cell random number drives, in stream order (NCU uniforms, NCZ normals). A normal
# named after a PARAMS entry scatters that parameter around the image's value (cell-to-cell SD).
CELL_UNIFORMS = ("x", "y", "presence", "orientation", "elongation", "nucleus_offset",
                 "nucleus_direction", "centrosome_direction", "fibre_period", "fibre_phase",
                 "n_filaments", "filament_phase1", "filament_phase2", "filament_twist")
CELL_NORMALS = ("cell_radius", "nucleus_radius", "nucleus_roundness", "nucleus_tilt",
                "actin_aggregates", "cortical_actin", "actin_fibres", "tubulin_contrast",
                "fibre_tilt", "dna_intensity", "tubulin_intensity", "golgi_fragmentation")
GOLGI_UNIFORMS = ("fragment_angle", "fragment_radius", "element_angle")  # NG of each per cell
assert len(CELL_UNIFORMS) == NCU and len(CELL_NORMALS) == NCZ


@lru_cache(maxsize=4)
def _textures(size, seed=1234):
    """Smooth unit-variance noise banks (fine, coarse) that images crop at random offsets."""
    rng, s = np.random.default_rng(seed), size / 64
    banks = [ndimage.gaussian_filter(rng.standard_normal((4 * size + 64,) * 2), sig * s,
                                     mode="wrap")
             for sig in (0.8, 4.0)]
    return [(b / b.std()).astype(np.float32) for b in banks]


def _crop_texture(bank, u, hp):
    """(B, hp, hp) windows of a texture bank at offsets given by uniforms u (B, 2)."""
    off = (u * (len(bank) - hp)).astype(int)
    return np.lib.stride_tricks.sliding_window_view(bank, (hp, hp))[off[:, 0], off[:, 1]]


def draw(seed, stream, index, size, golgi):
    """All random numbers of one image from its own stream: images do not depend on n_per_class."""
    rng = np.random.default_rng([seed, int(golgi), stream, index])
    return (rng.random(NU + K * NCU + golgi * K * NG * 3, dtype=np.float32),
            rng.standard_normal(len(PARAMS) + 4 + K * NCZ + 3 * size * size, dtype=np.float32))


def _quad(a, b, ang):
    """Coefficients (x^2, y^2, xy) of the unit quadratic form of an ellipse with semi-axes a, b."""
    c, s = np.cos(ang), np.sin(ang)
    return c**2 / a**2 + s**2 / b**2, s**2 / a**2 + c**2 / b**2, 2 * c * s * (1 / a**2 - 1 / b**2)


def _polar(r, a):
    """Offsets (..., 2) of length r in direction a."""
    return r[..., None] * np.stack([np.cos(a), np.sin(a)], -1)


def render(draws, shift, size, golgi):
    """Render a batch of one condition (shift: parameter -> image SDs). Returns the noisy images
    (B, 3, H, W) in [0, 1], per-image truth (dict of (B,) arrays) and per-cell truth (list of
    dicts). Images render on a padded square of side hp = size + 2 pad, cropped at the end."""
    img, candidates = _unpack(draws, shift, size)
    cells = _layout(img, candidates)
    _cell_geometry(img, cells)
    owner, d1, d_next = _ownership(img, cells)
    m = _pixel_maps(img, cells, owner)
    edge, inside, nuc, dna = _cell_and_nucleus(img, m, d1, d_next)
    if golgi:
        red, n_frag = _golgi(img, cells, owner, inside)
    else:
        red, n_frag = _actin(img, m, d1, edge, inside, nuc), None
    sig = np.stack([red, _tubulin(img, m, inside, nuc), dna], 1)
    sig, clean, noisy = _optics(img, sig, golgi)
    truth, per_cell = _truth(img, cells, owner, inside, nuc, sig, clean, n_frag)
    return noisy, truth, per_cell


def _unpack(draws, shift, size):
    """The batch's random numbers as named arrays. Per image (B,): the parameters P, texture
    windows and camera settings. Per candidate cell: dicts of (B, K) uniforms and normals named
    by CELL_UNIFORMS / CELL_NORMALS, and (B, K, NG) Golgi uniforms."""
    uni, nrm = (np.stack(a) for a in zip(*draws))
    B, s, nz = len(uni), size / 64, len(PARAMS) + 4
    u_img, u = uni[:, :NU], uni[:, NU:NU + K * NCU].reshape(B, K, NCU)
    u_g = uni[:, NU + K * NCU:].reshape(B, K, -1)
    z_img, z = nrm[:, :nz], nrm[:, nz:nz + K * NCZ].reshape(B, K, NCZ)
    pad = int(round(4 * s))  # render margin: cells enter from outside, the FFT blur does not wrap
    hp = size + 2 * pad
    grid = np.arange(hp, dtype=np.float32) + 0.5
    P = {name: np.clip(mean + sd * (z_img[:, j] + shift.get(name, 0.0)), lo, hi)
         for j, (name, (mean, sd, _, lo, hi)) in enumerate(PARAMS.items())}
    fine, coarse = (_crop_texture(b, u_img[:, 2 * i:2 * i + 2], hp)
                    for i, b in enumerate(_textures(size)))
    img = SimpleNamespace(
        B=B, s=s, size=size, pad=pad, hp=hp, grid=grid, X=grid[None, None, :],
        Y=grid[None, :, None], P=P, fine=fine, coarse=coarse,
        fine2=_crop_texture(_textures(size)[0], u_img[:, 4:6], hp),
        blur=(0.5 + 0.5 * u_img[:, 6]) * s,
        gain=np.exp(0.12 * z_img[:, -4:-3] + 0.06 * z_img[:, -3:]),  # (B, 3): shared + per channel
        background=0.01 + 0.03 * u_img[:, 7:10],
        photons=150 * np.exp(1.2 * u_img[:, 0]),  # reuses the fine texture's offset u_img[:, 0]
        pixel_noise=nrm[:, nz + K * NCZ:].reshape(B, 3, size, size))
    candidates = SimpleNamespace(
        u=dict(zip(CELL_UNIFORMS, np.moveaxis(u, -1, 0))),
        z=dict(zip(CELL_NORMALS, np.moveaxis(z, -1, 0))),
        golgi={name: u_g[..., i * NG:(i + 1) * NG] for i, name in enumerate(GOLGI_UNIFORMS)})
    return img, candidates


def _layout(img, cand):
    """Candidates pushed apart (independent of dose), then thinned to the image's density. Returns
    the cells: only as many as the fullest image has (kp), present ones first, with their position
    pos (B, kp, 2), present (B, kp), random numbers (as in cand) and parameters p (B, kp)."""
    B, hp, s = img.B, img.hp, img.s
    pos = np.stack([cand.u["x"], cand.u["y"]], -1) * hp
    for _ in range(4):
        d = pos[:, :, None] - pos[:, None]  # (B, K, K, 2)
        dist = np.maximum(np.sqrt((d**2).sum(-1)), 1e-6)  # two cells clipped to one corner: 0
        push = ((np.clip(14 * s - dist, 0, None) / dist)[..., None] * d).sum(2)
        pos = np.clip(pos + 0.3 * push, 0, hp - 1)
    present = cand.u["presence"] < img.P["cell_density"][:, None] * (hp / img.size) ** 2 / K
    present[np.arange(B), ((pos - hp / 2) ** 2).sum(-1).argmin(1)] = True  # >= 1 cell in view
    order = np.argsort(~present, axis=1, kind="stable")
    kp = present.sum(1).max()  # render only the present cells
    take = lambda a: np.take_along_axis(a, order[:, :kp].reshape(B, kp, *[1] * (a.ndim - 2)), 1)
    cells = SimpleNamespace(kp=kp, pos=take(pos), present=take(present),
                            u={k: take(v) for k, v in cand.u.items()},
                            z={k: take(v) for k, v in cand.z.items()},
                            golgi={k: take(v) for k, v in cand.golgi.items()})
    # per-cell values of the parameters, scattered around the image's value
    cells.p = {name: np.clip(img.P[name][:, None] + PARAMS[name][2] * cells.z[name],
                             *PARAMS[name][3:]).astype(np.float32)
               for name in PARAMS if name in cells.z}
    return cells


def _cell_geometry(img, cells):
    """Per-cell geometry (B, kp): elliptic cell, elliptic nucleus near its centre, centrosome
    beside it. Adds to cells: R, rn, rnd, theta, elong, nc, cang, cc."""
    s, u, p = img.s, cells.u, cells.p
    R, rn, rnd = p["cell_radius"] * s, p["nucleus_radius"] * s, p["nucleus_roundness"]
    theta, elong = 2 * np.pi * u["orientation"], 1 + 0.7 * u["elongation"]
    nc = cells.pos + _polar(0.15 * R * u["nucleus_offset"], 2 * np.pi * u["nucleus_direction"])
    cang = 2 * np.pi * u["centrosome_direction"]
    cc = nc + _polar(1.2 * rn + 1.5 * s, cang)
    vars(cells).update(R=R, rn=rn, rnd=rnd, theta=theta, elong=elong, nc=nc, cang=cang, cc=cc)


def _ownership(img, cells):
    """Each pixel belongs to the nearest cell in radius-normalised distance. Returns the owner
    (B, hp, hp), the distance d1 to it and d_next to the second-nearest cell, in cell radii."""
    R, elong, pos, grid = cells.R, cells.elong, cells.pos, img.grid
    qa, qc, qb = _quad(R * np.sqrt(elong), R / np.sqrt(elong), cells.theta)
    dx, dy = grid - pos[:, :, 0, None], grid - pos[:, :, 1, None]  # (B, kp, W), (B, kp, H)
    d2 = ((qb[..., None] * dx)[:, :, None, :] * dy[..., None]
          + (qa[..., None] * dx**2)[:, :, None, :])
    d2 += (qc[..., None] * dy**2)[..., None]  # (B, kp, H, W) squared radius-normalised distance
    d2[~cells.present] = np.inf
    owner = d2.argmin(1)[:, None]
    d1 = np.sqrt(np.take_along_axis(d2, owner, 1))[:, 0]
    np.put_along_axis(d2, owner, np.inf, 1)
    d_next = np.sqrt(d2.min(1))  # the second-nearest cell: where the two are equal, cells touch
    return owner[:, 0], d1, d_next


def _pixel_maps(img, cells, owner):
    """Every pixel reads its owner cell's parameters: a namespace of (B, hp, hp) float32 maps."""
    s, u, z, p = img.s, cells.u, cells.z, cells.p
    nucleus_q = _quad(cells.rn / np.sqrt(cells.rnd), cells.rn * np.sqrt(cells.rnd),
                      cells.theta + 0.3 * z["nucleus_tilt"])
    per_cell = {
        "nucleus_x": cells.nc[..., 0], "nucleus_y": cells.nc[..., 1],
        **dict(zip(("nucleus_qxx", "nucleus_qyy", "nucleus_qxy"), nucleus_q)),
        "centrosome_x": cells.cc[..., 0], "centrosome_y": cells.cc[..., 1], "radius": cells.R,
        **{name: p[name] for name in
           ("cortical_actin", "actin_fibres", "actin_aggregates", "tubulin_contrast")},
        # stress fibres
        "fibre_angle": cells.theta + 0.4 * z["fibre_tilt"],
        "fibre_period": (2.6 + 1.4 * u["fibre_period"]) * s,
        "fibre_phase": 2 * np.pi * u["fibre_phase"],
        # microtubules
        "n_filaments": np.floor(18 + 14 * u["n_filaments"]),
        "filament_phase1": 2 * np.pi * u["filament_phase1"],
        "filament_phase2": 2 * np.pi * u["filament_phase2"],
        "filament_twist": (u["filament_twist"] - 0.5) * 0.6 / s,
        # stain intensities
        "dna_intensity": 0.55 * (1 + 0.15 * z["dna_intensity"]),
        "tubulin_intensity": 0.32 * (1 + 0.15 * z["tubulin_intensity"])}
    idx = (owner + cells.kp * np.arange(img.B)[:, None, None]).reshape(-1)
    return SimpleNamespace(**{name: v.astype(np.float32).reshape(-1)[idx].reshape(owner.shape)
                              for name, v in per_cell.items()})


def _cell_and_nucleus(img, m, d1, d_next):
    """Soft masks and the DNA channel (B, hp, hp): edge (distance to the cell boundary, in cell
    radii), inside (the cell), nuc (the nucleus) and dna."""
    edge = np.minimum(1 - d1 - 0.12 * img.coarse, 0.5 * (d_next - d1))
    inside = np.clip(edge * 10, 0, 1)
    ex, ey = img.X - m.nucleus_x, img.Y - m.nucleus_y
    dn = np.sqrt(m.nucleus_qxx * ex**2 + m.nucleus_qyy * ey**2 + m.nucleus_qxy * ex * ey)
    nuc = np.clip((1 - dn) * 6, 0, 1) * inside
    dna = (m.dna_intensity * nuc * (0.7 + 0.3 * np.sqrt(np.clip(1 - dn**2, 0, 1)))
           * (1 + 0.2 * img.fine))
    return edge, inside, nuc, dna


def _actin(img, m, d1, edge, inside, nuc):
    """Actin channel (B, hp, hp): cortical ring, stress fibres, aggregates."""
    # stress fibres: wavy parallel bundles, denser at the periphery
    t = img.X * np.cos(m.fibre_angle) + img.Y * np.sin(m.fibre_angle)
    wave = (1 + np.cos(2 * np.pi * t / m.fibre_period + m.fibre_phase + 2 * img.coarse)) / 2
    fibres = m.actin_fibres * wave ** 4 * (0.2 + 0.8 * d1)
    fibres *= np.clip(1 + 0.7 * img.fine, 0, None)
    puncta = m.actin_aggregates * 3 * np.clip(img.fine2 - 1, 0, None)  # once filaments are lost
    return inside * (0.1 + m.cortical_actin * np.exp(-((edge / 0.14) ** 2))
                     + (fibres + puncta) * (1 - 0.6 * nuc))


def _tubulin(img, m, inside, nuc):
    """Tubulin channel (B, hp, hp): microtubules radiate from the centrosome."""
    ex, ey = img.X - m.centrosome_x, img.Y - m.centrosome_y
    rho, psi = np.sqrt(ex**2 + ey**2), np.arctan2(ey, ex)
    nfil, twist = m.n_filaments, m.filament_twist
    # two crossing sets of curved filaments
    fil = ((1 + np.cos(nfil * psi + twist * rho + m.filament_phase1)) / 2) ** 6
    fil += ((1 + np.cos((nfil + 5) * psi - twist * rho + m.filament_phase2)) / 2) ** 6
    fil *= np.clip(1 + 0.3 * img.fine, 0, None) / 0.451  # mean 1: contrast moves texture, not level
    contrast = m.tubulin_contrast
    return (m.tubulin_intensity * inside * (0.4 + 0.8 * np.exp(-rho / (0.5 * m.radius)))
            * (1 - contrast + contrast * fil) * (1 - 0.6 * nuc))


def _golgi(img, cells, owner, inside):
    """Golgi channel (B, hp, hp) of the Golgi set, in place of actin, and the fragments per cell
    (B, kp): elements splatted as points (blurred later): a compact ribbon or scattered puncta."""
    B, hp, kp, s, g = img.B, img.hp, cells.kp, img.s, cells.golgi
    frag = cells.p["golgi_fragmentation"][..., None]
    n_frag = 1 + np.floor(frag[..., 0] * 15.99).astype(int)
    f_of = np.arange(NG) % n_frag[..., None]  # element -> its fragment (B, kp, NG)
    ua, ur = (np.take_along_axis(g[k], f_of, 2) for k in ("fragment_angle", "fragment_radius"))
    ang = (cells.cang[..., None] + (1.2 + 5.1 * frag) * (ua - 0.5)
           + 0.9 * (1 - frag) * (g["element_angle"] - 0.5))
    rn, R = cells.rn, cells.R
    rad = ((1.1 * rn + 1.2 * s)[..., None]
           + frag * np.clip(0.85 * R - 1.1 * rn - 1.2 * s, 0, None)[..., None] * ur)
    gp = (cells.nc[:, :, None] + _polar(rad, ang)).astype(int).clip(0, hp - 1)  # (B, kp, NG, 2)
    flat = (np.arange(B)[:, None, None] * hp + gp[..., 1]) * hp + gp[..., 0]
    keep = (owner.reshape(-1)[flat] == np.arange(kp)[None, :, None]) & cells.present[..., None]
    weight = (keep * (1 + 2 * frag) * s * s).reshape(-1)
    splat = np.bincount(flat.reshape(-1), weight, B * hp * hp)
    return (inside * 0.04 + splat.reshape(B, hp, hp)).astype(np.float32), n_frag


def _optics(img, sig, golgi):
    """Optics and camera: blur (FFT; the pad absorbs the wrap-around), gain, background, shot
    noise, 8 bits. Returns the blurred signal (B, 3, hp, hp), then the noise-free and the noisy
    image in view (B, 3, size, size)."""
    hp, pad, size, blur, gain, bg = img.hp, img.pad, img.size, img.blur, img.gain, img.background
    sigma = np.stack([blur] * 3, 1)
    if golgi:  # the splatted Golgi points get the size of a spot on top of the optical blur
        sigma[:, 0] = np.sqrt(blur**2 + (0.6 * img.s) ** 2)
    f = (np.fft.fftfreq(hp)[:, None] ** 2 + np.fft.rfftfreq(hp)[None] ** 2).astype(np.float32)
    sig = sp_fft.irfft2(sp_fft.rfft2(sig) * np.exp(-2 * np.pi**2 * sigma[..., None, None] ** 2 * f),
                        s=(hp, hp))
    clean = np.clip(bg[:, :, None, None] * (1 + 0.3 * img.coarse[:, None])
                    + gain[:, :, None, None] * sig, 0, 1)
    clean = clean[:, :, pad:pad + size, pad:pad + size]
    noisy = clean + np.sqrt(clean / img.photons[:, None, None, None] + 0.004**2) * img.pixel_noise
    noisy = np.round(np.clip(noisy, 0, 1) * 255).astype(np.float32) / 255  # as written to PNG
    return sig, clean, noisy


def _truth(img, cells, owner, inside, nuc, sig, clean, n_frag):
    """Truth: masks from the noise-free geometry inside the view; intensities of the noise-free
    image; a cell counts when its nucleus centre is in view. Returns per-image truth (dict of (B,)
    arrays) and per-cell truth (one dict of arrays per image, over its counted cells)."""
    B, kp, pad, size, golgi = img.B, cells.kp, img.pad, img.size, n_frag is not None
    crop = (slice(None), slice(pad, pad + size), slice(pad, pad + size))
    cmask, nmask = inside[crop] > 0.5, nuc[crop] > 0.5
    lab = np.where(cmask, owner[crop] + kp * np.arange(B)[:, None, None], -1).reshape(-1) + 1
    count = lambda m, w=1: np.bincount(lab, (m * w).reshape(-1), B * kp + 1)[1:].reshape(B, kp)
    area, narea = count(cmask), count(nmask)
    nc = cells.nc
    counted = cells.present & (nc >= pad).all(-1) & (nc < pad + size).all(-1) & (area > 0)
    n = counted.sum(1)
    per_image = lambda v: (v * counted).sum(1) / np.maximum(n, 1)
    mean_in = lambda m, x: (m * x).sum((1, 2)) / np.maximum(m.sum((1, 2)), 1)
    red = "golgi" if golgi else "actin"  # channel 0, as in data.GOLGI_CHANNELS / data.CHANNELS
    truth = {"n_cells": n, f"{red}_mean": mean_in(cmask, clean[:, 0]),
             "tubulin_mean": mean_in(cmask, clean[:, 1]), "dna_mean": mean_in(nmask, clean[:, 2]),
             "cell_area_mean": per_image(area), "nucleus_area_mean": per_image(narea),
             **{k: v for k, v in img.P.items() if golgi or k != "golgi_fragmentation"},
             "gain_r": img.gain[:, 0], "gain_g": img.gain[:, 1], "gain_b": img.gain[:, 2],
             "background": img.background.mean(1), "blur": img.blur / img.s, "photons": img.photons}
    per_cell = {"cell_area": area, "nucleus_area": narea,
                f"cell_{red}": count(cmask, clean[:, 0]) / np.maximum(area, 1),
                "cell_tubulin": count(cmask, clean[:, 1]) / np.maximum(area, 1),
                "cell_dna": count(nmask, clean[:, 2]) / np.maximum(narea, 1)}
    if golgi:
        per_cell["cell_golgi_fragments"] = n_frag
        per_cell["cell_golgi_area"] = count(cmask & (sig[:, 0][crop] > 0.15))
        truth["golgi_fragments"] = per_image(n_frag)
        truth["golgi_area_mean"] = per_image(per_cell["cell_golgi_area"])
    return truth, [{k: v[b][counted[b]] for k, v in per_cell.items()} for b in range(B)]
