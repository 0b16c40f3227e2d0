"""Every figure the project draws, with matplotlib's object API (no pyplot: no display, no global
state) or, for plain image grids, files.save_png. Images come in the model's [-1, 1] and are shown
with files.to_uint8, so every figure uses one channel rule (grey, or RGB = actin, tubulin, DNA)."""
import math

import matplotlib
import numpy as np
import torch
from matplotlib.figure import Figure

import files


def _save(fig, path, dpi=110):
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    return path


def _show(ax, img, **kw):
    """One (H, W, 1 or 3) uint8 image or (H, W) map, without axes."""
    ax.imshow(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img,
              **({"cmap": "gray"} if img.ndim == 3 and img.shape[-1] == 1 else {}), **kw)
    ax.set_axis_off()


def image_grid(x, rows, path):
    """(rows * cols, C, H, W) in [-1, 1] -> one PNG, a 1-pixel black border around each image."""
    x = files.to_uint8(x)  # (N, H, W, 1 or 3)
    x = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    n, h, w, c = x.shape
    x = x.reshape(rows, n // rows, h, w, c).transpose(0, 2, 1, 3, 4).reshape(rows * h, -1, c)
    files.save_png(x, path)


def loss_curves(rows, keys, path):
    """One panel per logged quantity against step; log scale where it stays positive."""
    fig = Figure(figsize=(4 * len(keys), 3))
    for ax, k in zip(np.atleast_1d(fig.subplots(1, len(keys))), keys):
        pts = [(r["step"], r[k]) for r in rows if r.get(k) is not None and math.isfinite(r[k])]
        if pts:
            ax.plot(*zip(*pts))
        ax.set(xlabel="step", title=k,
               yscale="log" if pts and min(v for _, v in pts) > 0 else "linear")
        ax.grid(alpha=0.3)
    return _save(fig, path, dpi=100)


def difference_map(x, x_translated):
    """Signed change per pixel, translated - input, averaged over channels, in [0, 1] display
    units (model images are in [-1, 1], hence the / 2): (B, H, W). Red = brighter after."""
    return (x_translated - x).mean(1) / 2


def translation_figure(x, outputs, path, title, n=8):
    """The paper's Fig. 1 for up to n images: input | (translated, difference) per target.
    outputs: {target name: (B, C, H, W)}. Differences share one symmetric colour scale."""
    x = x[:n]
    diffs = {k: difference_map(x, v[:n]).cpu().numpy() for k, v in outputs.items()}
    lim = max(max(float(np.abs(d).max()) for d in diffs.values()), 1e-3)
    cols = [("input", files.to_uint8(x), {})]
    for k, v in outputs.items():
        cols += [(k, files.to_uint8(v[:n]), {}),
                 ("difference", diffs[k], dict(cmap="seismic", vmin=-lim, vmax=lim))]
    fig = Figure(figsize=(max(5.5, 1.6 * len(cols)), 1.6 * len(x) + 0.6))
    axes = fig.subplots(len(x), len(cols), squeeze=False)
    for c, (name, imgs, kw) in enumerate(cols):
        axes[0, c].set_title(name, fontsize=7)
        for r in range(len(x)):
            _show(axes[r, c], imgs[r], **kw)
    fig.suptitle(f"{title}\n(difference = translated - input, mean over channels, "
                 f"red = brighter, ±{lim:.2f})", fontsize=7)
    return _save(fig, path)


def dose_series(x, series, path, title, n=2):
    """The paper's Fig. 3: a row per (compound, image), its concentrations left to right after the
    input. series: {compound: (class names by dose, (doses, B, C, H, W))}."""
    rows = [(k, i) for i in range(min(n, len(x))) for k in series]
    cols = 1 + max(len(v[0]) for v in series.values())
    fig = Figure(figsize=(1.3 * cols, 1.45 * len(rows)))
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, (k, i) in enumerate(rows):
        names, y = series[k]
        imgs = [files.to_uint8(x[i])] + [files.to_uint8(y[j, i]) for j in range(len(names))]
        labels = ["input"] + [f"{files.parse_class(c)[1]:g} µM" for c in names]
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(imgs):
                _show(ax, imgs[c])
                ax.set_title(labels[c], fontsize=7)
        axes[r, 0].text(-0.1, 0.5, f"{k}\n#{i}", transform=axes[r, 0].transAxes, ha="right",
                        va="center", fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def dose_response(conc, curves, features, path):
    """Per compound, real vs translated per-concentration means of one feature.
    conc: {compound: (doses,)}; curves: {(source, compound): {feature: (doses,)}}."""
    fig = Figure(figsize=(3.6 * len(conc), 3))
    for ax, (k, c) in zip(np.atleast_1d(fig.subplots(1, len(conc))), conc.items()):
        for src, style in (("real", "o-"), ("translated", "s--")):
            ax.plot(c, curves[src, k][features[k]], style, label=src)
        ax.set_xscale("log")
        ax.set_title(f"{k}: {features[k]}", fontsize=8)
        ax.set_xlabel("concentration (µM)", fontsize=8)
        ax.legend(fontsize=7)
    return _save(fig, path)


def fig4(r, groups, path):
    """One histogram per compound of the per-feature Pearson r, real vs translated, across doses."""
    fig = Figure(figsize=(3.5 * len(groups), 3))
    axes = np.atleast_1d(fig.subplots(1, len(groups)))
    for ax, (k, rk) in zip(axes, r.items()):
        v = np.array(list(rk.values()))
        v = v[np.isfinite(v)]
        ax.hist(v, bins=np.linspace(-1, 1, 21))
        med = np.median(v) if len(v) else math.nan
        ax.set_title(f"{k} ({len(groups[k])} conc.), median r {med:.2f}", fontsize=8)
        ax.set_xlabel("Pearson r, real vs translated")
    axes[0].set_ylabel("features")
    return _save(fig, path, dpi=100)


def fig4_methods(r, path):
    """Fig. 4 for many methods: per method, the histogram of the per-feature Pearson r (real vs
    translated means across doses) over the dose-varying features; {method: (F,) r}."""
    n = len(r)
    cols = min(n, 4)
    fig = Figure(figsize=(2.6 * cols, 2.3 * math.ceil(n / cols)))
    axes = np.atleast_1d(fig.subplots(math.ceil(n / cols), cols)).ravel()
    for ax, (m, v) in zip(axes, r.items()):
        v = v[np.isfinite(v)]
        ax.hist(v, bins=np.linspace(-1, 1, 21))
        ax.set_title(f"{m}: median r {np.median(v) if len(v) else math.nan:.2f}", fontsize=8)
        ax.set_xlabel("Pearson r, real vs translated", fontsize=7)
        ax.tick_params(labelsize=7)
    for ax in axes[n:]:
        ax.set_axis_off()
    return _save(fig, path, dpi=90)


def counterfactual(rows, path):
    """Error against the truth by dose, a line per method: PSNR of the translation to its own field
    at the target dose (up is better) and the distance of its cell features to the truth's (down is
    better); doing nothing (`identity`) dashed. rows: [method, target, µM, psnr_own, _, _,
    feature_dist_own, ...]."""
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2)
    methods = list(dict.fromkeys(r[0] for r in rows))
    for i, m in enumerate(methods):
        mine = sorted((r for r in rows if r[0] == m), key=lambda r: r[2])
        style = dict(color="k", ls="--") if m == "identity" else dict(color=f"C{i % 10}")
        for ax, col in zip(axes, (3, 6)):
            ax.plot([r[2] for r in mine], [r[col] for r in mine], marker="o", ms=3, label=m,
                    **style)
    for ax, label in zip(axes, ("PSNR to the own truth (dB)", "feature distance to the own truth")):
        ax.set_xscale("log")
        ax.set_xlabel("target concentration (µM)", fontsize=8)
        ax.set_ylabel(label, fontsize=8)
        ax.tick_params(labelsize=7)
    axes[1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path, dpi=100)


def bars(names, values, ylabel, path):
    """A bar per class (Table 1's per-class FID)."""
    fig = Figure(figsize=(max(4, 0.4 * len(names) + 2), 3.5))
    ax = fig.subplots()
    ax.bar(range(len(names)), values)
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=7)
    ax.set_ylabel(ylabel)
    return _save(fig, path, dpi=100)


def image_rows(rows, path, k=8):
    """Rows of images with a title each, e.g. real / reconstructed: {title: (N, C, H, W)}."""
    k = min(k, *(len(v) for v in rows.values()))
    fig = Figure(figsize=(1.5 * k, 1.6 * len(rows)))
    axes = fig.subplots(len(rows), k, squeeze=False)
    for r, (title, imgs) in enumerate(rows.items()):
        shown = files.to_uint8(torch.as_tensor(imgs[:k]))
        for j in range(k):
            _show(axes[r, j], shown[j])
        axes[r, 0].set_title(title, fontsize=8, loc="left")
    return _save(fig, path, dpi=100)


def boxes(groups, ylabel, title, path, log=False):
    """Box plots of named value sets (Fig. 2b); log: a log scale, for sets far apart."""
    fig = Figure(figsize=(1.4 * len(groups) + 1, 3.5))
    ax = fig.subplots()
    ax.boxplot([v for _, v in groups])
    ax.set_xticks(range(1, len(groups) + 1), [n for n, _ in groups], fontsize=7)
    ax.set_ylabel(ylabel)
    ax.set_yscale("log" if log else "linear")
    ax.set_title(title, fontsize=8)
    return _save(fig, path, dpi=100)


def feature_map(maps, labels, classes, path, title=""):
    """The DSAE paper's Fig. 3: one 2-D map per feature set ({name: (N, 2)}), each point an image
    coloured by its class: untreated (DMSO) in red, each compound over its doses in one sequential
    colour map (blues, greens, purples, oranges; darker = higher dose), any other class in grey."""
    groups = files.compounds(classes)
    cmaps = iter(["Blues", "Greens", "Purples", "Oranges"])
    colour, legend = {}, []
    for k, members in groups.items():
        if k == "DMSO":
            colour.update({c: (0.85, 0.1, 0.1, 1.0) for c in members})
            legend.append((k, colour[members[0]]))
            continue
        cmap = matplotlib.colormaps[next(cmaps, "Greys")]
        for i, c in enumerate(members):
            colour[c] = cmap(0.35 + 0.65 * i / max(1, len(members) - 1))
        legend.append((f"{k} ({len(members)} doses)", colour[members[-1]]))
    untreated = np.array([files.parse_class(classes[y])[0] == "DMSO" for y in np.asarray(labels)])
    order = np.argsort(untreated, kind="stable")  # untreated drawn last, on top
    colours = [colour[classes[y]] for y in np.asarray(labels)[order]]
    fig = Figure(figsize=(3.6 * len(maps), 3.6))
    for ax, (name, xy) in zip(np.atleast_1d(fig.subplots(1, len(maps))), maps.items()):
        xy = np.asarray(xy)[order]
        ax.scatter(xy[:, 0], xy[:, 1], s=np.where(untreated[order], 12, 5), c=colours,
                   linewidths=0)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("PC 1", fontsize=7)
        ax.set_ylabel("PC 2", fontsize=7)
        ax.tick_params(labelsize=6)
    for k, c in legend:
        ax.scatter([], [], s=12, color=c, label=k)
    ax.legend(fontsize=6, loc="best")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=100)


def f1_against_reconstruction(points, trivial, path, task="classes"):
    """The DSAE paper's Fig. 2: linear-probe F1 (up) against reconstruction MSE (left is better),
    a point per method that reconstructs; the floors that cannot reconstruct (channel statistics,
    pixels; random weights are in the table) as horizontal lines and the trivial reconstruction
    (the mean image) as a vertical one."""
    fig = Figure(figsize=(7.5, 3.8))
    ax = fig.subplots()
    methods = {k: v for k, v in points.items() if v[2] is not None}
    for i, (name, (f1, _, mse, _)) in enumerate(methods.items()):
        ax.scatter([max(mse, 1e-6)], [f1], s=30, color=f"C{i % 10}", label=name, zorder=3)
    for name, (f1, _, mse, _) in points.items():
        if mse is None and not name.endswith("random weights"):
            ax.axhline(f1, color="0.5", lw=0.8, ls=":")
            ax.annotate(name, (0.01, f1), xycoords=("axes fraction", "data"), fontsize=6,
                        color="0.4", va="bottom")
    ax.axvline(trivial, color="k", lw=0.8, ls="--", label="mean image (trivial)")
    ax.set_xscale("log")
    ax.set_xlabel("reconstruction MSE (held-out images, [0, 1])", fontsize=8)
    ax.set_ylabel(f"linear-probe macro F1 ({task})", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1))
    return _save(fig, path)


def trajectory(strips, path, title=""):
    """The path of images through DDIM: a row per strip, {row title: [(label, (C, H, W))]} (e.g.
    x_t and the predicted x_0 at each step of inversion, then of sampling). x_t is clipped to
    [-1, 1] for display, so the noisiest levels look saturated."""
    rows, cols = len(strips), max(len(v) for v in strips.values())
    fig = Figure(figsize=(1.1 * cols + 0.4, 1.25 * rows + 0.3))
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, (name, images) in enumerate(strips.items()):
        for c in range(cols):
            axes[r, c].set_axis_off()
        for c, (label, img) in enumerate(images):
            _show(axes[r, c], files.to_uint8(img.clamp(-1, 1)[None])[0])
            axes[r, c].set_title(label, fontsize=6)
        axes[r, 0].text(-0.1, 0.5, name, transform=axes[r, 0].transAxes, fontsize=7,
                        ha="right", va="center", rotation=90)
    if title:
        fig.suptitle(title, fontsize=8)
    return _save(fig, path, dpi=110)


def inversion_sweep(rows, path):
    """Reconstruction PSNR against DDIM steps, a line per number of fixed-point iterations (0:
    eq. 6 as in the paper). rows: [steps, iterations, psnr mean, psnr sd, ...]."""
    fig = Figure(figsize=(4.6, 3.4))
    ax = fig.subplots()
    for k in sorted({r[1] for r in rows}):
        mine = sorted((r for r in rows if r[1] == k), key=lambda r: r[0])
        ax.errorbar([r[0] for r in mine], [r[2] for r in mine], [r[3] for r in mine], marker="o",
                    ms=3, capsize=2, label="eq. 6 (the paper)" if k == 0 else f"exact, {k} iters")
    ax.set(xscale="log", xlabel="DDIM steps each way", ylabel="reconstruction PSNR (dB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return _save(fig, path, dpi=110)


def latent_histogram(latents, path, title="inverted latents"):
    """Histogram of latent values {name: array} against the N(0, 1) density DDIM samples from."""
    fig = Figure(figsize=(4.6, 3.2))
    ax = fig.subplots()
    grid = np.linspace(-4, 4, 200)
    for name, z in latents.items():
        z = np.asarray(z).ravel()
        ax.hist(z, bins=80, range=(-4, 4), density=True, histtype="step",
                label=f"{name} (std {z.std():.2f})")
    ax.plot(grid, np.exp(-grid ** 2 / 2) / math.sqrt(2 * math.pi), "k--", lw=1, label="N(0, 1)")
    ax.set(xlabel="value", ylabel="density", title=title)
    ax.legend(fontsize=7)
    return _save(fig, path, dpi=110)


def curves(panels, path, title=""):
    """Line plots side by side, one per panel: [{"lines": {label: (x, y)}, "title": ..., "xlabel":
    ..., "ylabel": ..., "xscale": ..., "xticks": ..., "yscale": ...}] (keys other than "lines" go to
    ax.set); markers on lines of few points, a log x axis labelled in plain numbers. The course's
    labs draw their sweeps with it."""
    fig = Figure(figsize=(4.2 * len(panels), 3.3))
    for ax, panel in zip(np.atleast_1d(fig.subplots(1, len(panels))), panels):
        for label, (x, y) in panel["lines"].items():
            ax.plot(x, y, marker="o" if len(x) <= 20 else None, ms=3, label=label)
        ax.set(**{k: v for k, v in panel.items() if k != "lines"})
        if panel.get("xscale") == "log":
            ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
            ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.title.set_fontsize(9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path, dpi=100)


def series_differences(x, names, y, path, title):
    """Each input followed by its translations to a series of classes (e.g. every dose), and below
    each translation its difference from the input, on one symmetric colour scale (red = brighter).
    x: (B, C, H, W); names: a column title per class; y: (len(names), B, C, H, W)."""
    diffs = difference_map(x[None].expand_as(y).flatten(0, 1), y.flatten(0, 1)).view(*y.shape[:2],
                                                                                      *x.shape[2:])
    lim = max(diffs.abs().max().item(), 1e-3)
    fig = Figure(figsize=(1.05 * (len(names) + 1), 2.2 * len(x) + 0.5))
    axes = fig.subplots(2 * len(x), len(names) + 1, squeeze=False)
    for i in range(len(x)):
        _show(axes[2 * i, 0], files.to_uint8(x[i]))
        axes[2 * i, 0].set_title("input", fontsize=7)
        axes[2 * i + 1, 0].set_axis_off()
        for j, name in enumerate(names):
            _show(axes[2 * i, j + 1], files.to_uint8(y[j, i]))
            axes[2 * i, j + 1].set_title(name, fontsize=7)
            _show(axes[2 * i + 1, j + 1], diffs[j, i].cpu().numpy(), cmap="seismic", vmin=-lim,
                  vmax=lim, interpolation="nearest")
    fig.suptitle(f"{title}\n(below each: translated - input, mean over channels, red = brighter, "
                 f"±{lim:.2f})", fontsize=7)
    return _save(fig, path, dpi=80)


def gap_closed(rows, path, min_gap, ylim=(-1.0, 1.5)):
    """Each method between its floor (`identity`, doing nothing) and its ceiling (`ceiling`, the
    paired regressor), by dose: the share of the gap it closes, in PSNR to the truth and in
    feature distance to the truth (0: no better than doing nothing, 1: as good as the regressor).
    Doses where floor and ceiling differ by less than min_gap (report.GAP) are left out;
    shares beyond ylim (far below doing nothing) sit on its edge as open triangles.
    rows: [method, target, µM, psnr_own, _, _, feature_dist_own, ...]."""
    by = {(r[0], r[2]): r for r in rows}
    doses = sorted({r[2] for r in rows})
    fig = Figure(figsize=(9, 3.4))
    axes = fig.subplots(1, 2, sharex=True)
    methods = [m for m in dict.fromkeys(r[0] for r in rows) if m not in ("identity", "ceiling")]
    for ax, col, sign, gap in zip(axes, (3, 6), (1, -1), min_gap):
        for i, m in enumerate(methods):
            pts = [(c, (by[m, c][col] - by["identity", c][col])
                    / (by["ceiling", c][col] - by["identity", c][col])) for c in doses
                   if sign * (by["ceiling", c][col] - by["identity", c][col]) > gap]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, np.clip(y, *ylim), marker="o", ms=3, label=m, color=f"C{i % 10}")
                out = [(c, v) for c, v in pts if not ylim[0] <= v <= ylim[1]]
                if out:
                    ax.scatter([c for c, _ in out], [np.clip(v, *ylim) for _, v in out], s=30,
                               marker="v", facecolors="none", edgecolors=f"C{i % 10}")
        if not ax.lines:
            ax.text(0.5, 0.5, f"the ceiling is not {gap:g} closer than\ndoing nothing at any dose",
                    transform=ax.transAxes, ha="center", va="center", fontsize=8)
        ax.axhline(0, color="k", ls="--", lw=1)
        ax.axhline(1, color="k", ls=":", lw=1)
        ax.set_ylim(ylim[0] - 0.05, ylim[1] + 0.05)
        ax.set_xscale("log")
        ax.set_xlabel("target concentration (µM)", fontsize=8)
        ax.tick_params(labelsize=7)
    axes[0].set_ylabel("share of the gap closed, PSNR", fontsize=8)
    axes[1].set_ylabel("share of the gap closed, feature distance", fontsize=8)
    labelled = [a for a in axes if a.get_legend_handles_labels()[0]]
    if labelled:  # none where floor and ceiling never differ enough
        axes[1].legend(*labelled[-1].get_legend_handles_labels(), fontsize=6, loc="upper left",
                       bbox_to_anchor=(1.01, 1))
    return _save(fig, path, dpi=100)
