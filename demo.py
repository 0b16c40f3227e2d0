"""The demo: a method on the synthetic benchmark, whose true dose-responses are known.

`python phendiff.py demo` translates held-out DMSO images to every class with the shipped PhenDiff
model (checkpoints/demo.pt) and checks that the translated images show the real dose-responses;
`--ckpt` runs the same report for a checkpoint of any method (e.g. a StarGAN). It writes report.md
and the figures: the dose series (Fig. 3), translations with difference maps (Fig. 1), real vs
translated dose-responses, Fig. 4, and two checks of input preservation (reconstruction, Table 2;
the shuffled-input control: is a translation closer to its own input than to another one?).
"""
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import files
import plots
from eval import (dose_response, feature_table, load_variants, reconstruction_error,
                  sample_statistics, spearman, variant_flags)

HERE = Path(__file__).resolve().parent
DEMO_CKPT = HERE / "checkpoints" / "demo.pt"
# The training commands of the demo presets. `cpu` made checkpoints/demo.pt (checkpoints/README.md)
# and `--train` reruns it; `gpu` (64x64, the 4.9M-parameter `small` UNet) is always trained first.
DEMO_PRESETS = {
    "cpu": ("--method phendiff --data synthetic --kind bbbc021 --n-per-class 400 --image-size 32 "
            "--preset cpu --batch-size 32 --lr 1e-3 --warmup 100 --steps 6000 --ema-decay 0.999 "
            "--ckpt-every 1000 --sample-every 2000 --seed 0"),
    "gpu": ("--method phendiff --data synthetic --kind bbbc021 --n-per-class 1000 --image-size 64 "
            "--preset small --prediction v --batch-size 64 --lr 2e-4 --warmup 500 --steps 40000 "
            "--ema-decay 0.9995 --ckpt-every 5000 --sample-every 5000 --seed 0"),
}
# the model was trained on seed 0: the demo's images are new draws of the same classes
DEMO_SEED = 1
ACTIN = "cells_actin_mean"  # mean actin intensity in cell regions, the Latrunculin B read-out
LAT = "latrunculin_b"


def add_arguments(p, device):
    p.add_argument("--out", default="runs/demo", help="report folder (%(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier report in --out")
    p.add_argument("--ckpt",
                   help=f"a checkpoint of any method trained on synthetic BBBC021 classes "
                        f"(default {DEMO_CKPT.name})")
    p.add_argument("--train", action="store_true",
                   help="train the demo model first (recorded command)")
    p.add_argument("--preset", default="cpu", choices=list(DEMO_PRESETS),
                   help="cpu: the shipped 32x32 model; gpu: train a 64x64 model first "
                        "(--device cuda)")
    p.add_argument("--train-args", default="",
                   help="flags appended to the recorded training command")
    p.add_argument("--n", type=files.integer(3), default=48,
                   help="held-out images per class (inputs and references)")
    variant_flags(p)
    p.add_argument("--n-recon", type=files.integer(1), default=32,
                   help="images for the reconstruction error")
    p.add_argument("--batch-size", type=files.integer(1), default=64)
    p.add_argument("--workers", type=files.integer(1), default=2,
                   help="processes for feature extraction")
    p.add_argument("--device", type=files.device, default=device)


def median(values):
    """Median of the finite values; nan (quietly) when there are none, e.g. at micro scale."""
    v = np.asarray(list(values), dtype=float)
    return float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def train_demo_model(out, preset, extra):
    """Run train.py as its own process (nothing imports train.py) with the recorded command."""
    cmd = [sys.executable, str(HERE / "train.py"), *DEMO_PRESETS[preset].split(), *extra.split(),
           "--out", str(out)]
    print("training:", " ".join(cmd[1:]))
    if subprocess.run(cmd).returncode != 0:
        raise ValueError(f"training failed; see the messages above (run folder {out})")
    return out / "last.pt"


def batched(fn, tensors, args, desc=None):
    """fn over batches of the tensors (split alike along dim 0) on args.device; the results
    concatenated along the image dimension (-4), on the CPU."""
    chunks = list(zip(*(t.split(args.batch_size) for t in tensors)))
    with torch.no_grad():
        parts = [fn(*(t.to(args.device) for t in c)).cpu()
                 for c in tqdm(chunks, desc=desc, disable=desc is None)]
    return torch.cat(parts, -4)


def input_preservation(net, x, y, classes, names, args):
    """Shuffled-input control and cycle: PSNR of each translation against its own input and
    against another input (the next one), the share closer to its own, and the PSNR of the cycle
    DMSO -> target -> DMSO against the input."""
    rows = {}
    for name in names:
        t = classes.index(name)
        own = reconstruction_error(x, y[t])["psnr"]
        other = reconstruction_error(x.roll(1, 0), y[t])["psnr"]
        back = batched(lambda yb: net.translate(yb, t, 0), [y[t]], args)
        rows[name] = (own.mean(), other.mean(), float((own > other).mean()),
                      reconstruction_error(x, back)["psnr"].mean())
    return rows


def counterfactual(x, y, truth, classes, names, workers=1):
    """The error against the truth (synthetic data only): translations y (classes, N, ...) of the
    DMSO inputs x against truth (classes, N, ...), the same fields rendered under each dose. Per
    target: PSNR of the translation to its own truth, to the truth of another field (the next
    one) and of the untranslated input to the truth, the share closer to its own truth, and the
    mean absolute error of actin (`ACTIN`) of the translation and of the input against the truth.
    A method that shows *this* cell's response beats both references; a class-conditional sampler
    that ignores its input is no closer to its own truth than to another field's."""
    rows = {}
    for name in names:
        t = classes.index(name)
        own = reconstruction_error(truth[t], y[t])["psnr"]
        other = reconstruction_error(truth[t].roll(1, 0), y[t])["psnr"]
        actin = [feature_table(((v + 1) / 2).numpy(), workers=workers)[ACTIN]
                 for v in (y[t], truth[t], x)]
        rows[name] = (own.mean(), other.mean(), float((own > other).mean()),
                      reconstruction_error(truth[t], x)["psnr"].mean(),
                      *(np.nanmean(np.abs(actin[i] - actin[1])) for i in (0, 2)))
    return rows


def run(args):
    """The demo: translate, reconstruct, measure the dose-responses, write report.md."""
    out = files.out_folder(args.out, writes=["report.md"], overwrite=args.overwrite)
    ckpt_path = Path(args.ckpt) if args.ckpt else DEMO_CKPT
    if not args.ckpt and (args.train or args.preset != "cpu" or not ckpt_path.exists()):
        ckpt_path = train_demo_model(out / "train", args.preset, args.train_args)
    # PhenDiff with plain and exact inversion for the reconstruction table; the plain one translates
    ckpt, variants = load_variants(ckpt_path, args.device, args.ddim_steps, args.fixed_point_iters,
                                   args.projection, args.projection_steps)
    net = next(iter(variants.values()))
    classes, size = ckpt["classes"], ckpt["config"]["image_size"]
    print(f"{ckpt['method']} {ckpt_path} ({len(classes)} classes, {size}x{size}, "
          f"step {ckpt.get('step')})")
    # models of some compounds too
    chosen = [k for k in files.compounds(classes) if k in data.COMPOUNDS]
    ds = data.synthetic_dataset("bbbc021", n_per_class=args.n, image_size=size, seed=DEMO_SEED,
                                compounds=chosen)
    if ds.classes != classes:
        raise ValueError(f"{ckpt_path} was not trained on classes of the synthetic BBBC021 "
                         "benchmark")
    series = {k: v for k, v in files.compounds(classes).items() if k != "DMSO"}
    x = ds.images[ds.labels == 0]

    # 1. every held-out DMSO image to every class (PhenDiff: one inversion, one sampling per class)
    y = batched(lambda xb: net.translate_many(xb, 0, range(len(classes))), [x], args,
                desc=f"translate to {len(classes)} classes")  # (classes, N, C, H, W)
    title = f"{ckpt['method']}: one real DMSO image translated to every concentration"
    plots.dose_series(x, {k: (v, y[[classes.index(c) for c in v]]) for k, v in series.items()},
                      out / "dose_series.png", title)
    tops = [v[-1] for v in series.values()]
    plots.translation_figure(x, {c: y[classes.index(c)] for c in tops}, out / "translation.png",
                             f"{ckpt['method']}: DMSO -> top dose of each compound", n=4)

    # 2. reconstruction (Table 2): held-out images of every class; the shuffled-input control
    pick = torch.arange(0, len(ds), max(1, len(ds) // args.n_recon))[:args.n_recon]
    xr, yr = ds.images[pick], ds.labels[pick]
    recon = {name: reconstruction_error(xr, batched(m.reconstruct, [xr, yr], args))
             for name, m in variants.items()}
    preserved = input_preservation(net, x, y, classes, ["DMSO", *tops], args)
    truth = data.synthetic_truth("bbbc021", args.n, size, DEMO_SEED, chosen)
    assert torch.equal(truth[0], x), "the paired set must render the inputs' own fields"
    truths = counterfactual(x, y, truth, classes, [c for v in series.values() for c in v],
                            args.workers)

    # 3. Fig. 4: per-feature means of real and translated images at each concentration
    real = {c: (ds.images[ds.labels == i] + 1) / 2 for i, c in enumerate(classes)}
    samples = None
    if hasattr(net, "sample"):  # a generative method: its samples from noise against real images
        fake = {c: (batched(lambda y: net.sample(y, seed=1), [torch.full((len(x),), i)], args)
                    + 1) / 2 for i, (c, x) in enumerate(real.items())}
        samples = sample_statistics(real, fake, ACTIN, args.workers)
    fake = {c: (y[i] + 1) / 2 for i, c in enumerate(classes)}
    groups, means, r = dose_response(real, fake, workers=args.workers)
    plots.fig4(r, groups, out / "fig4_correlations.png")
    conc = {k: np.array([files.parse_class(c)[1] for c in cs]) for k, cs in groups.items()}
    curve = {(src, k): {f: np.array([means[src, c][f] for c in cs]) for f in r[k]}
             for src in ("real", "translated") for k, cs in groups.items()}
    # a feature truly varies with dose when its real per-concentration means are monotone in dose
    varying = [(k, f) for k in groups for f in r[k]
               if abs(spearman(conc[k], curve["real", k][f])) >= 0.8]
    median_r = median(r[k][f] for k, f in varying)
    rho = spearman(curve["real", LAT][ACTIN], curve["translated", LAT][ACTIN]) if LAT in groups \
        else float("nan")
    # actin for Latrunculin B, otherwise the feature whose real means follow dose most closely
    shown = {k: ACTIN if k == LAT else max(r[k], key=lambda f: np.nan_to_num(
        abs(spearman(conc[k], curve["real", k][f])))) for k in groups}
    plots.dose_response(conc, curve, shown, out / "dose_response.png")
    numbers = dict(groups=groups, varying=varying, r=r, median_r=median_r, rho=rho, conc=conc,
                   curve=curve, recon=recon, preserved=preserved, truths=truths, samples=samples,
                   how=net.describe())
    write_report(out, ckpt_path, ckpt, args, len(x), numbers)
    print(f"Latrunculin B actin: Spearman rho(real, translated) = {rho:.2f} (target >= 0.8); "
          f"median Pearson r over {len(varying)} dose-varying features = {median_r:.2f} "
          "(target >= 0.7)")
    print(f"wrote {out}/report.md")


def write_report(out, ckpt_path, ckpt, args, n_inputs, n):
    """report.md: the numbers, whether each target is met, and the figures."""
    ok = lambda v, target: "PASS" if np.isfinite(v) and v >= target else "FAIL"  # noqa: E731
    cfg, how = ckpt["config"], n["how"]
    lines = [
        f"# Translation report: {ckpt['method']}", "",
        f"Model `{ckpt_path}` ({ckpt['method']}, step {ckpt.get('step')}, {len(ckpt['classes'])} "
        f"classes, {cfg['image_size']}x{cfg['image_size']}"
        + (f", {cfg.get('prediction', 'eps')}-prediction), EMA weights. "
           if ckpt["method"] == "phendiff" else "). ")
        + f"{n_inputs} held-out DMSO images of the synthetic BBBC021 benchmark (seed {DEMO_SEED}; "
        f"the model was trained on seed 0) {how}. Real references: {args.n} new images per class.",
        "", "## Does the translation reproduce the real dose-responses?", "",
        "| check | value | target | result |", "|---|---|---|---|",
        f"| Latrunculin B, mean actin in cell regions (`{ACTIN}`): Spearman ρ between real and "
        f"translated per-concentration means | {n['rho']:.2f} | ≥ 0.8 | {ok(n['rho'], 0.8)} |",
        f"| median Pearson r (real vs translated, across concentrations) over the "
        f"{len(n['varying'])} (compound, feature) pairs that truly vary with dose | "
        f"{n['median_r']:.2f} | ≥ 0.7 | {ok(n['median_r'], 0.7)} |", "",
        "A feature truly varies with dose for a compound when the means of real images follow "
        "concentration monotonically (|Spearman ρ| ≥ 0.8 over its concentrations).", "",
        "| compound | concentrations | dose-varying features | median r over them | "
        "median r over all features |", "|---|---|---|---|---|"]
    for k, cs in n["groups"].items():
        rv = [n["r"][k][f] for kk, f in n["varying"] if kk == k]
        lines.append(f"| {k} | {len(cs)} | {len(rv)} | {median(rv):.2f} | "
                     f"{median(n['r'][k].values()):.2f} |")
    if LAT in n["groups"]:
        real, fake = n["curve"]["real", LAT][ACTIN], n["curve"]["translated", LAT][ACTIN]
        lines += ["", f"Latrunculin B, `{ACTIN}` per concentration:", "",
                  "| µM | real | translated |", "|---|---|---|"]
        lines += [f"| {c:g} | {a:.4f} | {b:.4f} |" for c, a, b in zip(n["conc"][LAT], real, fake)]
        lines += ["", f"Spearman ρ with concentration: real {spearman(n['conc'][LAT], real):.2f}, "
                      f"translated {spearman(n['conc'][LAT], fake):.2f}."]
    lines += _input_sections(args, n)
    if n["samples"]:
        spreads, trends = n["samples"]
        rho, rho_real = trends.get(LAT, (float("nan"), float("nan")))
        lines += ["", "## Samples from noise", "",
                  f"Latrunculin B: Spearman ρ between dose and the `{ACTIN}` means of {args.n} "
                  f"samples per class: {rho:.2f} (of real images: {rho_real:.2f}). Spread: the "
                  "mean pairwise RMS distance between images of a class ([0, 1] units); a "
                  "collapsed generator samples a much smaller spread than the real one.", "",
                  "| class | real spread | sampled spread |", "|---|---|---|"]
        lines += [f"| {c} | {a:.3f} | {b:.3f} |" for c, (a, b) in spreads.items()]
    lines += ["", "## Figures", "",
              "Dose series (the paper's Fig. 3): ![](dose_series.png)", "",
              "Translation to each compound's top dose, with difference maps (Fig. 1): "
              "![](translation.png)", "",
              "Real vs translated dose-responses: ![](dose_response.png)", "",
              "Feature correlations across concentrations (Fig. 4): ![](fig4_correlations.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def _input_sections(args, n):
    """Report lines: reconstruction (Table 2) and the shuffled-input control."""
    first = next(iter(n["recon"].values()))
    lines = ["", "## Reconstruction error (the paper's Table 2)", "",
             f"{len(first['l2'])} held-out images of all classes, translated to their own class. "
             "L2: per-image Euclidean distance in model units [-1, 1]; MSE and PSNR on [0, 1].", "",
             "| reconstruction | L2 (mean ± sd) | MSE | PSNR (dB) |", "|---|---|---|---|"]
    lines += [f"| {name} | {e['l2'].mean():.3f} ± {e['l2'].std():.3f} | {e['mse'].mean():.2e} | "
              f"{e['psnr'].mean():.1f} |" for name, e in n["recon"].items()]
    lines += ["", "## Does a translation keep its input? (shuffled-input control, cycle)", "",
              "PSNR of each DMSO input's translation against that input and against another DMSO "
              "input (the next one): a translator that ignores its input is no closer to its own. "
              "Cycle: the translation translated back to DMSO, against the input.", "",
              "| target | PSNR to own input (dB) | PSNR to another input (dB) | closer to own | "
              "cycle PSNR (dB) |", "|---|---|---|---|---|"]
    lines += [f"| {t} | {own:.1f} | {other:.1f} | {share:.0%} | {cycle:.1f} |"
              for t, (own, other, share, cycle) in n["preserved"].items()]
    lines += ["", "## Is it this cell's response? (error against the truth)", "",
              "The synthetic benchmark renders the same fields under every dose, so each DMSO "
              "input's translation has a true answer: its own field at the target dose. PSNR of "
              "the translation to that truth, to another field's truth (the next input's: a "
              "sampler that ignores its input is as close to it as to its own), and of the "
              "untranslated input (doing nothing); then the mean absolute error of "
              f"`{ACTIN}` against the truth, of the translation and of the input.", "",
              "| target | PSNR to own truth (dB) | to another field's truth | closer to own | "
              "input to truth (dB) | actin error | input's actin error |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {t} | {own:.1f} | {other:.1f} | {share:.0%} | {ident:.1f} | {err:.4f} | "
              f"{err0:.4f} |" for t, (own, other, share, ident, err, err0) in n["truths"].items()]
    return lines
