"""PhenDiff: reveal a phenotype by translating real images between conditions.

A real image of condition A is inverted to a latent with DDIM under label A (eq. 6),
then the latent is sampled with DDIM under label B (eq. 5). The latent carries the
image (which cells, where, how bright); the label carries the condition. So the
difference between input and output shows what condition B changes, cell by cell.

    python phendiff.py translate --ckpt C --input DIR --source DMSO --target latrunculin_b_3uM
    python phendiff.py demo
"""
import argparse
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

import data
import ddim
import eval as ev  # the analyses' library functions (features, Fig. 4, plotting), not its command line
import model as model_lib

# -----------------------------------------------------------------------------
# the method


def _labels(y, x):
    """An int or a (B,) sequence of class indices -> LongTensor (B,) on x's device."""
    y = torch.as_tensor(y, dtype=torch.long, device=x.device)
    return y.expand(x.shape[0]) if y.dim() == 0 else y


def translate_many(model, x, y_source, targets, alpha, num_steps, fixed_point_iters=0, guidance=0.0):
    """Invert x once under y_source, then sample the same latent under each target label.

    Returns (len(targets), B, C, H, W). The inversion is shared: translating to eight doses costs
    one inversion and eight samplings, not eight of each.
    """
    null = getattr(model, "null_label", None)
    latent = ddim.invert(model, x, _labels(y_source, x), alpha, num_steps,  # eq. 6, under label A
                         fixed_point_iters=fixed_point_iters, guidance=guidance, null_label=null)
    return torch.stack([ddim.sample(model, latent, _labels(y, x), alpha, num_steps,  # eq. 5, under B
                                    guidance=guidance, null_label=null) for y in targets])


def translate(model, x, y_source, y_target, alpha, num_steps, fixed_point_iters=0, guidance=0.0):
    """PhenDiff: x of class y_source -> the same cells as they would look under y_target."""
    return translate_many(model, x, y_source, [y_target], alpha, num_steps, fixed_point_iters, guidance)[0]


def reconstruct(model, x, y, alpha, num_steps, fixed_point_iters=0):
    """Invert and regenerate under the image's own class: how faithful the latent is (Table 2)."""
    return translate(model, x, y, y, alpha, num_steps, fixed_point_iters)


def dose_series(model, x, y_source, classes, compound, alpha, num_steps, **kw):
    """x to every concentration of `compound`, lowest first: (names, (8, B, C, H, W))."""
    series = data.compounds(classes)
    if compound not in series:
        raise ValueError(f"unknown compound {compound!r}; the checkpoint has: {', '.join(series)}")
    names = series[compound]
    return names, translate_many(model, x, y_source, [classes.index(n) for n in names], alpha, num_steps, **kw)


def difference_map(x, x_translated):
    """Signed change per pixel, translated - input, averaged over channels, in [0, 1] display
    units (model images are in [-1, 1], hence the / 2): (B, H, W). Red = brighter after."""
    return (x_translated - x).mean(1) / 2


# -----------------------------------------------------------------------------
# loading and saving


def load(ckpt_path, device="cpu", ema=True):
    """Everything translation needs from a checkpoint alone: (model, ckpt, alpha)."""
    ckpt = model_lib.load_checkpoint(ckpt_path)
    net = model_lib.model_from_checkpoint(ckpt, ema=ema).to(device)
    alpha = ddim.make_schedule(ckpt["schedule"]["name"], ckpt["schedule"]["T"])
    return net, ckpt, alpha


def class_index(classes, name):
    if name not in classes:
        raise ValueError(f"unknown class {name!r}; the checkpoint has: {', '.join(classes)}")
    return classes.index(name)


def gather_inputs(inputs):
    """Files from a mix of files and folders, non-images skipped with a warning."""
    files = []
    for p in map(Path, inputs):
        if not p.exists():
            raise ValueError(f"input {str(p)!r} does not exist")
        for f in sorted(p.iterdir()) if p.is_dir() else [p]:
            if f.suffix.lower() in data.IMAGE_SUFFIXES:
                files.append(f)
            elif f.is_file():
                warnings.warn(f"skipping {f}: not an image ({', '.join(data.IMAGE_SUFFIXES)})")
    if not files:
        raise ValueError(f"no images found in {', '.join(inputs)}")
    return files


def read_inputs(files, ckpt):
    """Files -> (B, C, H, W) in [-1, 1] with the checkpoint's normalisation and size."""
    cfg, images, resized = ckpt["config"], [], []
    for f in files:
        raw = data.read_image(f)
        if raw.shape[0] != cfg["in_channels"]:
            raise ValueError(f"{f} has {raw.shape[0]} channels but the checkpoint's model takes "
                             f"{cfg['in_channels']}; use images of the kind it was trained on")
        if raw.shape[1:] != (cfg["image_size"],) * 2:
            resized.append(f.name)  # centre-crop keeps the cells' scale; only too-small images are resized
            fit = "crop" if min(raw.shape[1:]) >= cfg["image_size"] else "resize"
            raw = data.fit_size(raw[None], cfg["image_size"], fit, f)[0]
        images.append(raw)
    if resized:
        s = cfg["image_size"]
        warnings.warn(f"{len(resized)} image(s) are not {s}x{s} (e.g. {resized[0]}): centre-cropped "
                      f"to {s}x{s}, or resized up when smaller")
    return data.normalize(torch.as_tensor(np.stack(images)), ckpt["normalization"]).float()


def to_display(x):
    """(B, C, H, W) in [-1, 1] -> uint8 (B, H, W, 3|1): channels 0-2 as RGB, one channel as grey;
    two channels as red and green."""
    x = ((x.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 1).cpu().numpy()
    if x.shape[-1] == 2:
        x = np.concatenate([x, np.zeros_like(x[..., :1])], -1)
    return x[..., :3]


def save_png(img, path):
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


def save_grid(x, outputs, path, title, n=8):
    """The paper's Fig. 1 layout for up to n images: input | (translated, difference) per target.
    outputs: {target name: (B, C, H, W)}. Differences share one symmetric colour scale."""
    plt = ev.pyplot()
    x = x[:n]
    diffs = {k: difference_map(x, v[:n]).cpu().numpy() for k, v in outputs.items()}
    lim = max(max(float(np.abs(d).max()) for d in diffs.values()), 1e-3)
    cols = [("input", to_display(x), {})]
    for k, v in outputs.items():
        cols += [(k, to_display(v[:n]), {}), ("difference", diffs[k], dict(cmap="seismic", vmin=-lim, vmax=lim))]
    fig, axes = plt.subplots(len(x), len(cols), figsize=(1.6 * len(cols), 1.6 * len(x) + 0.5), squeeze=False)
    for c, (name, imgs, kw) in enumerate(cols):
        axes[0, c].set_title(name, fontsize=7)
        for r in range(len(x)):
            axes[r, c].imshow(imgs[r].squeeze(), **kw)
            axes[r, c].set_axis_off()
    fig.suptitle(f"{title}   (difference = translated - input, mean over channels, red = brighter, ±{lim:.2f})",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -----------------------------------------------------------------------------
# command line


def cmd_translate(args):
    device = torch.device(args.device)
    files = gather_inputs(args.input)
    out = Path(args.out).resolve()
    input_dirs = {Path(p).resolve() for p in args.input if Path(p).is_dir()}
    if any(out == d or d in out.parents for d in input_dirs) or any(out == f.parent.resolve() for f in files):
        raise ValueError(f"--out {args.out} is inside an input folder; choose another folder so "
                         "outputs never mix with inputs")
    net, ckpt, alpha = load(args.ckpt, device, ema=not args.no_ema)
    print(f"model {args.ckpt}: {model_lib.count_parameters(net):,} parameters, step {ckpt.get('step')}")
    classes = ckpt["classes"]
    source = class_index(classes, args.source)
    series = data.compounds(classes)  # a compound name stands for all its concentrations, lowest first
    args.target = [c for t in args.target for c in (series[t] if t in series and t not in classes else [t])]
    targets = [class_index(classes, t) for t in args.target]
    x = read_inputs(files, ckpt)
    iters = args.exact_iters if args.exact else 0
    print(f"translating {len(files)} image(s) {args.source} -> {', '.join(args.target)}, "
          f"{args.steps} DDIM steps{' with exact inversion' if iters else ''}")
    outs = []
    for i in tqdm(range(0, len(x), args.batch_size), desc="batches"):
        xb = x[i:i + args.batch_size].to(device)
        outs.append(translate_many(net, xb, source, targets, alpha, args.steps, iters, args.guidance).cpu())
    y = torch.cat(outs, 1)  # (targets, N, C, H, W)
    out.mkdir(parents=True, exist_ok=True)
    (out / "files.txt").write_text("".join(f"{f.name}\n" for f in files))
    for name, yt in zip(args.target, y):
        (out / name).mkdir(exist_ok=True)
        for f, img in zip(files, to_display(yt)):
            save_png(img, out / name / f"{f.stem}.png")
        np.save(out / f"{name}.npy", data.denormalize(yt, ckpt["normalization"]).numpy())
    save_grid(x, dict(zip(args.target, y)), out / "grid.png", f"PhenDiff: {args.source} ->")
    print(f"wrote {out}: <target>/*.png (display scale), <target>.npy (original units, in files.txt order), grid.png")

# -----------------------------------------------------------------------------
# demo: PhenDiff on the synthetic benchmark, whose true dose-responses are known

HERE = Path(__file__).resolve().parent
DEMO_CKPT = HERE / "checkpoints" / "demo.pt"
# The training commands of the demo presets. `cpu` made checkpoints/demo.pt (checkpoints/README.md) and
# `--train` reruns it; `gpu` (64x64, the 4.9M-parameter `small` UNet) is always trained on the spot.
DEMO_PRESETS = {
    "cpu": ("--data synthetic --kind bbbc021 --n-per-class 400 --image-size 32 --preset tiny "
            "--base-channels 32 --channel-mult 1,2,2 --num-res-blocks 1 --attn-res 8 "
            "--prediction v --batch-size 32 --lr 1e-3 --warmup 100 --steps 6000 --ema-decay 0.999 "
            "--ckpt-every 1000 --sample-every 2000 --seed 0"),
    "gpu": ("--data synthetic --kind bbbc021 --n-per-class 1000 --image-size 64 --preset small --prediction v "
            "--batch-size 64 --lr 2e-4 --warmup 500 --steps 40000 --ema-decay 0.9995 "
            "--ckpt-every 5000 --sample-every 5000 --seed 0"),
}
DEMO_SEED = 1  # the model was trained on seed 0: the demo's images are new draws of the same classes
ACTIN = "cells_actin_mean"  # mean actin intensity in cell regions, the Latrunculin B read-out


def median(values):
    """Median of the finite values; nan (quietly) when there are none, e.g. at the test's micro scale."""
    v = np.asarray(list(values), dtype=float)
    return float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def train_demo_model(out, preset, extra):
    """Run train.py as its own process (nothing imports train.py) with the recorded demo command."""
    cmd = [sys.executable, str(HERE / "train.py"), *DEMO_PRESETS[preset].split(), *extra.split(), "--out", str(out)]
    print("training:", " ".join(cmd[1:]))
    if subprocess.run(cmd).returncode != 0:
        raise ValueError(f"training failed; see the messages above (run folder {out})")
    return out / "last.pt"


def dose_figure(x, series, path, n=2):
    """The paper's Fig. 3: a row per compound, its concentrations left to right, the input at left."""
    plt = ev.pyplot()
    rows = [(k, i) for i in range(min(n, len(x))) for k in series]
    cols = 1 + max(len(v[0]) for v in series.values())
    fig, axes = plt.subplots(len(rows), cols, figsize=(1.3 * cols, 1.45 * len(rows)), squeeze=False)
    for r, (k, i) in enumerate(rows):
        names, y = series[k]
        imgs = [to_display(x[i:i + 1])[0]] + [to_display(y[j, i:i + 1])[0] for j in range(len(names))]
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(imgs):
                ax.imshow(imgs[c].squeeze())
                ax.set_title("DMSO input" if c == 0 else data.parse_class(names[c - 1])[1].__format__("g") + " µM",
                             fontsize=7)
        axes[r, 0].text(-0.1, 0.5, f"{k}\n#{i}", transform=axes[r, 0].transAxes, ha="right", va="center", fontsize=7)
    fig.suptitle("PhenDiff dose series: one real DMSO image translated to every concentration", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_dose_response(conc, curve, path):
    """Per compound, real vs translated per-concentration means of one feature: actin for
    Latrunculin B, otherwise the feature whose real means follow dose most closely."""
    plt = ev.pyplot()
    fig, axes = plt.subplots(1, len(conc), figsize=(3.6 * len(conc), 3), squeeze=False)
    for ax, (k, c) in zip(axes[0], conc.items()):
        real = curve["real", k]
        f = ACTIN if k == "latrunculin_b" else max(real, key=lambda f: np.nan_to_num(abs(ev.spearman(c, real[f]))))
        for src, style in (("real", "o-"), ("translated", "s--")):
            ax.plot(c, curve[src, k][f], style, label=src)
        ax.set_xscale("log")
        ax.set_title(f"{k}: {f}", fontsize=8)
        ax.set_xlabel("concentration (µM)", fontsize=8)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(out, ckpt_path, ckpt, args, n_inputs, recon, groups, varying, r, median_r, rho, conc, curve):
    """report.md: the numbers, whether each target is met, and the figures."""
    ok = lambda v, target: "PASS" if np.isfinite(v) and v >= target else "FAIL"  # noqa: E731
    lat = "latrunculin_b"
    lines = [
        "# PhenDiff demo report", "",
        f"Model `{ckpt_path}` (step {ckpt.get('step')}, {len(ckpt['classes'])} classes, "
        f"{ckpt['config']['image_size']}x{ckpt['config']['image_size']}, "
        f"{ckpt['config'].get('prediction', 'eps')}-prediction), EMA weights. "
        f"{n_inputs} held-out DMSO images of the synthetic BBBC021 benchmark (seed {DEMO_SEED}; the model was "
        f"trained on seed 0) inverted under DMSO (eq. 6) and sampled under every class (eq. 5), "
        f"{args.steps} DDIM steps, no guidance. Real references: {args.n} new images per class.", "",
        "## Does the translation reproduce the real dose-responses?", "",
        "| check | value | target | result |", "|---|---|---|---|",
        f"| Latrunculin B, mean actin in cell regions (`{ACTIN}`): Spearman ρ between real and translated "
        f"per-concentration means | {rho:.2f} | ≥ 0.8 | {ok(rho, 0.8)} |",
        f"| median Pearson r (real vs translated, across concentrations) over the {len(varying)} "
        f"(compound, feature) pairs that truly vary with dose | {median_r:.2f} | ≥ 0.7 | {ok(median_r, 0.7)} |", "",
        "A feature truly varies with dose for a compound when the means of real images follow "
        "concentration monotonically (|Spearman ρ| ≥ 0.8 over its concentrations).", "",
        "| compound | concentrations | dose-varying features | median r over them | median r over all features |",
        "|---|---|---|---|---|"]
    for k, cs in groups.items():
        rv = [r[k][f] for kk, f in varying if kk == k]
        lines.append(f"| {k} | {len(cs)} | {len(rv)} | {median(rv):.2f} | {median(r[k].values()):.2f} |")
    if lat in groups:
        lines += ["", f"Latrunculin B, `{ACTIN}` per concentration:", "",
                  "| µM | real | translated |", "|---|---|---|"]
        lines += [f"| {c:g} | {a:.4f} | {b:.4f} |" for c, a, b in
                  zip(conc[lat], curve["real", lat][ACTIN], curve["translated", lat][ACTIN])]
        rho_real, rho_fake = (ev.spearman(conc[lat], curve[src, lat][ACTIN]) for src in ("real", "translated"))
        lines += ["", f"Spearman ρ with concentration: real {rho_real:.2f}, translated {rho_fake:.2f}."]
    lines += ["", "## Reconstruction error (the paper's Table 2)", "",
              f"{len(next(iter(recon.values()))['l2'])} held-out images of all classes, inverted and regenerated "
              f"under their own class with {args.steps} DDIM steps. L2: per-image Euclidean distance in model "
              "units [-1, 1]; MSE and PSNR on [0, 1].", "",
              "| inversion | L2 (mean ± sd) | MSE | PSNR (dB) |", "|---|---|---|---|"]
    lines += [f"| {name} | {e['l2'].mean():.3f} ± {e['l2'].std():.3f} | {e['mse'].mean():.2e} | "
              f"{e['psnr'].mean():.1f} |" for name, e in recon.items()]
    lines += ["", "## Figures", "",
              "Dose series (the paper's Fig. 3): ![](dose_series.png)", "",
              "Translation to each compound's top dose, with difference maps (Fig. 1): ![](translation.png)", "",
              "Real vs translated dose-responses: ![](dose_response.png)", "",
              "Feature correlations across concentrations (Fig. 4): ![](fig4_correlations.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def cmd_demo(args):
    device = torch.device(args.device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_path = Path(args.ckpt) if args.ckpt else DEMO_CKPT
    if not args.ckpt and (args.train or args.preset != "cpu" or not ckpt_path.exists()):
        ckpt_path = train_demo_model(out / "train", args.preset, args.train_args)
    net, ckpt, alpha = load(ckpt_path, device)
    classes, size = ckpt["classes"], ckpt["config"]["image_size"]
    print(f"model {ckpt_path} ({model_lib.count_parameters(net):,} parameters, {len(classes)} classes, "
          f"{size}x{size}, step {ckpt.get('step')})")
    chosen = [k for k in data.compounds(classes) if k in data.COMPOUNDS]  # a model of some compounds works too
    ds = data.synthetic_dataset("bbbc021", n_per_class=args.n, image_size=size, seed=DEMO_SEED, compounds=chosen)
    if ds.classes != classes:
        raise ValueError(f"{ckpt_path} was not trained on classes of the synthetic BBBC021 benchmark; use --train")
    series = {k: v for k, v in data.compounds(classes).items() if k != "DMSO"}
    x = ds.images[ds.labels == 0].to(device)

    # 1. translate every held-out DMSO image to every class: one inversion, one sampling per class
    y = torch.cat([translate_many(net, xb, 0, range(len(classes)), alpha, args.steps).cpu()
                   for xb in tqdm(x.split(args.batch_size), desc="translate (invert once, sample x25)")], 1)
    x = x.cpu()
    dose_figure(x, {k: (v, y[[classes.index(c) for c in v]]) for k, v in series.items()}, out / "dose_series.png")
    tops = [v[-1] for v in series.values()]
    save_grid(x, {c: y[classes.index(c)] for c in tops}, out / "translation.png",
              "PhenDiff: DMSO -> top dose of each compound", n=4)

    # 2. reconstruction error (Table 2): held-out images of every class, plain vs exact inversion
    pick = torch.arange(0, len(ds), max(1, len(ds) // args.n_recon))[:args.n_recon]
    xr, yr = ds.images[pick].to(device), ds.labels[pick].to(device)
    recon = {name: ev.reconstruction_error(net, xr, yr, alpha, args.steps, iters, args.batch_size)[0]
             for name, iters in (("plain eq. 6", 0), (f"exact ({args.exact_iters} fixed-point iters)", args.exact_iters))}

    # 3. Fig. 4: per-feature means of real and translated images at each concentration
    real = {c: (ds.images[ds.labels == i] + 1) / 2 for i, c in enumerate(classes)}
    fake = {c: (y[i] + 1) / 2 for i, c in enumerate(classes)}
    groups, means, r = ev.dose_response(real, fake, workers=args.workers)
    ev.plot_fig4(r, groups, out / "fig4_correlations.png")
    conc = {k: np.array([data.parse_class(c)[1] for c in cs]) for k, cs in groups.items()}
    curve = {(src, k): {f: np.array([means[src, c][f] for c in cs]) for f in r[k]}
             for src in ("real", "translated") for k, cs in groups.items()}
    # a feature truly varies with dose when its real per-concentration means are monotone in dose
    varying = [(k, f) for k in groups for f in r[k] if abs(ev.spearman(conc[k], curve["real", k][f])) >= 0.8]
    median_r = median(r[k][f] for k, f in varying)
    lat = "latrunculin_b"
    rho = ev.spearman(curve["real", lat][ACTIN], curve["translated", lat][ACTIN]) if lat in groups else float("nan")
    plot_dose_response(conc, curve, out / "dose_response.png")
    write_report(out, ckpt_path, ckpt, args, len(x), recon, groups, varying, r, median_r, rho, conc, curve)
    print(f"Latrunculin B actin: Spearman rho(real, translated) = {rho:.2f} (target >= 0.8); median Pearson r "
          f"over {len(varying)} dose-varying features = {median_r:.2f} (target >= 0.7)")
    print(f"wrote {out}/report.md")


def cmd_export(args):
    """A checkpoint to share: weights, EMA and everything translation needs, without the optimizer
    state and RNG states that only resuming needs (about half the size)."""
    out = Path(args.out)
    if out.resolve() == Path(args.ckpt).resolve():
        raise ValueError("--out must differ from --ckpt: outputs never overwrite inputs")
    ckpt = model_lib.load_checkpoint(args.ckpt)
    model_lib.save_checkpoint({k: v for k, v in ckpt.items() if k not in ("optimizer", "rng")}, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("translate", help="invert under --source (eq. 6), sample under --target (eq. 5)")
    t.add_argument("--ckpt", required=True)
    t.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
    t.add_argument("--source", required=True, help="class of the input images")
    t.add_argument("--target", nargs="+", required=True,
                   help="one or more target classes; a compound name means all its concentrations")
    t.add_argument("--steps", type=int, default=100, help="DDIM steps for inversion and sampling")
    t.add_argument("--exact", action="store_true", help="exact (fixed-point) inversion")
    t.add_argument("--exact-iters", type=int, default=5, help="fixed-point iterations with --exact")
    t.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance w (0 = paper)")
    t.add_argument("--out", default="translated")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    t.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    d = sub.add_parser("demo", help="PhenDiff on the synthetic benchmark: figures and report.md")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--ckpt", default=None, help=f"a model trained on synthetic BBBC021 (default {DEMO_CKPT.name})")
    d.add_argument("--train", action="store_true", help="train the demo model first with the recorded command")
    d.add_argument("--preset", default="cpu", choices=list(DEMO_PRESETS),
                   help="cpu: the shipped 32x32 model; gpu: train a 64x64 model first (use --device cuda)")
    d.add_argument("--train-args", default="", help="flags appended to the recorded training command")
    d.add_argument("--n", type=int, default=48, help="held-out images per class (DMSO inputs and references)")
    d.add_argument("--steps", type=int, default=50, help="DDIM steps")
    d.add_argument("--n-recon", type=int, default=32, help="images for the reconstruction error")
    d.add_argument("--exact-iters", type=int, default=5, help="fixed-point iterations for exact inversion")
    d.add_argument("--batch-size", type=int, default=64)
    d.add_argument("--workers", type=int, default=2, help="processes for feature extraction")
    d.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    e = sub.add_parser("export", help="a checkpoint without optimizer/RNG state, for sharing")
    e.add_argument("--ckpt", required=True)
    e.add_argument("--out", required=True)
    args = p.parse_args(argv)
    try:
        {"translate": cmd_translate, "demo": cmd_demo, "export": cmd_export}[args.cmd](args)
    except ValueError as e:
        sys.exit(f"phendiff {args.cmd}: error: {e}")


if __name__ == "__main__":
    main()
