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

import data
import files
from evaluation import plots, report
from evaluation import scores as S
from evaluation.stats import spearman

ROOT = Path(__file__).resolve().parents[1]  # the repository: train.py, checkpoints/
DEMO_CKPT = ROOT / "checkpoints" / "demo.pt"
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


def add_arguments(p):
    files.add_flags(p, out="runs/demo", overwrite=False, ckpt=None)
    p.add_argument("--train", action="store_true",
                   help="train the demo model first (recorded command)")
    p.add_argument("--preset", default="cpu", choices=list(DEMO_PRESETS),
                   help="cpu: the shipped 32x32 model; gpu: train a 64x64 model first "
                        "(--device cuda)")
    p.add_argument("--train-args", default="",
                   help="flags appended to the recorded training command")
    p.add_argument("--n", type=files.integer(3), default=48,
                   help="held-out images per class (inputs and references)")
    p.add_argument("--n-recon", type=files.integer(1), default=32,
                   help="images for the reconstruction error")
    files.add_flags(p, ddim_steps=50, fixed_point_iters=5, projection=None, projection_steps=None,
                    batch_size=64, workers=2, device="auto", precision=None)


def median(values):
    """Median of the finite values; nan (quietly) when there are none, e.g. at micro scale."""
    v = np.asarray(list(values), dtype=float)
    return float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any() else float("nan")


def train_demo_model(out, preset, extra):
    """Run train.py as its own process (nothing imports train.py) with the recorded command."""
    cmd = [sys.executable, str(ROOT / "train.py"), *DEMO_PRESETS[preset].split(), *extra.split(),
           "--out", str(out)]
    print("training:", " ".join(cmd[1:]))
    if subprocess.run(cmd).returncode != 0:
        raise ValueError(f"training failed; see the messages above (run folder {out})")
    return out / "last.pt"


def run(args):
    """The demo: translate, reconstruct, measure the dose-responses, write report.md."""
    out = files.out_folder(args.out, writes=["report.md"], overwrite=args.overwrite)
    ckpt_path = Path(args.ckpt) if args.ckpt else DEMO_CKPT
    if not args.ckpt and (args.train or args.preset != "cpu" or not ckpt_path.exists()):
        ckpt_path = train_demo_model(out / "train", args.preset, args.train_args)
    # PhenDiff with plain and exact inversion for the reconstruction table; the plain one translates
    ckpt, variants = S.load_variants(ckpt_path, args.device, args.ddim_steps,
                                     args.fixed_point_iters, args.projection,
                                     args.projection_steps, args.precision)
    net, method = next(iter(variants.values())), ckpt["method"]
    classes, size = ckpt["classes"], ckpt["config"]["image_size"]
    print(f"{method} {ckpt_path} ({len(classes)} classes, {size}x{size}, step {ckpt.get('step')})")
    chosen = [k for k in files.compounds(classes) if k in data.COMPOUNDS]  # models of some too
    ds = data.synthetic_dataset("bbbc021", n_per_class=args.n, image_size=size, seed=DEMO_SEED,
                                compounds=chosen)
    if ds.classes != classes:
        raise ValueError(f"{ckpt_path} was not trained on classes of the synthetic BBBC021 "
                         "benchmark")
    series = {k: v for k, v in files.compounds(classes).items() if k != "DMSO"}
    x = ds.images[ds.labels == 0]
    batched = lambda fn, tensors, desc=None: S.batched(  # noqa: E731
        fn, tensors, args.batch_size, args.device, desc)

    # 1. every held-out DMSO image to every class (PhenDiff: one inversion, one sampling per class)
    y = batched(lambda xb: net.translate_many(xb, 0, range(len(classes))), [x],
                f"translate to {len(classes)} classes")  # (classes, N, C, H, W)
    plots.dose_series(x, {k: (v, y[[classes.index(c) for c in v]]) for k, v in series.items()},
                      out / "dose_series.png",
                      f"{method}: one real DMSO image translated to every concentration")
    tops = [v[-1] for v in series.values()]
    plots.translation_figure(x, {c: y[classes.index(c)] for c in tops}, out / "translation.png",
                             f"{method}: DMSO -> top dose of each compound", n=4)

    # 2. reconstruction (Table 2): held-out images of every class
    pick = torch.arange(0, len(ds), max(1, len(ds) // args.n_recon))[:args.n_recon]
    xr, yr = ds.images[pick], ds.labels[pick]
    table2 = S.table2_rows(xr, {(method, name): batched(m.reconstruct, [xr, yr])
                                for name, m in variants.items()})

    # 3. cell features of the real references, the translations and the truth: Fig. 4, and each
    # translation against its own input and its own truth, beside doing nothing
    truth = data.synthetic_truth("bbbc021", args.n, size, DEMO_SEED, chosen)
    assert torch.equal(truth[0], x), "the paired set must render the inputs' own fields"
    unit = lambda images: (images + 1) / 2  # noqa: E731
    real = S.feature_tables({c: unit(ds.images[ds.labels == i]) for i, c in enumerate(classes)},
                            args.workers)
    fake = S.feature_tables({c: unit(y[i]) for i, c in enumerate(classes)}, args.workers)
    true = S.feature_tables({c: unit(truth[i]) for i, c in enumerate(classes) if i},
                            args.workers)
    arrays = lambda table: np.stack(list(table.values()), 1)  # noqa: E731
    cells = {method: [arrays(fake[c]) for c in classes],  # the inputs x are the real DMSO images
             "identity": [arrays(real["DMSO"])] * len(classes)}
    numbers = dict(dose=dose_numbers(real, fake), table2=table2, how=net.describe())
    targets = list(range(1, len(classes)))
    scale = S.feature_scale([arrays(real[c]) for c in classes])
    translations = {method: y, "identity": x.expand(len(classes), *x.shape)}
    against = lambda refs, ref_cells: [[m, classes[t], *r] for m, t, *r in S.against_references(
        translations, targets, refs, ref_cells, lambda m, t: cells[m][t], scale)]  # noqa: E731
    numbers["preservation"] = against(lambda t: x, lambda t: cells["identity"][0])
    numbers["truth"] = against(lambda t: truth[t], lambda t: arrays(true[classes[t]]))
    if hasattr(net, "sample"):  # a generative method: its samples from noise against real images
        samples = {c: unit(batched(lambda yb: net.sample(yb, seed=1),
                                   [torch.full((args.n,), i)])) for i, c in enumerate(classes)}
        numbers["samples"] = S.sample_statistics({c: unit(ds.images[ds.labels == i])
                                                  for i, c in enumerate(classes)}, samples, ACTIN,
                                                 args.workers)
    plots.fig4(numbers["dose"]["r"], numbers["dose"]["groups"], out / "fig4_correlations.png")
    d = numbers["dose"]
    plots.dose_response(d["conc"], d["curve"], d["shown"], out / "dose_response.png")
    write_report(out, ckpt_path, ckpt, args, len(x), numbers)
    print(f"Latrunculin B actin: Spearman rho(real, translated) = {d['rho']:.2f} (target >= 0.8); "
          f"median Pearson r over {len(d['varying'])} dose-varying features = "
          f"{d['median_r']:.2f} (target >= 0.7)")
    print(f"wrote {out}/report.md")


def dose_numbers(real, fake):
    """Fig. 4 for the demo's checks, from the feature tables of real and translated images: r per
    (compound, feature), the (compound, feature) pairs that truly vary with dose (real means
    monotone in dose, |Spearman rho| >= 0.8) and their median r, and Latrunculin B's actin curve."""
    groups, means, r = S.dose_response(real, fake)
    conc = {k: np.array([files.parse_class(c)[1] for c in cs]) for k, cs in groups.items()}
    curve = {(src, k): {f: np.array([means[src, c][f] for c in cs]) for f in r[k]}
             for src in ("real", "translated") for k, cs in groups.items()}
    varying = [(k, f) for k in groups for f in r[k]
               if abs(spearman(conc[k], curve["real", k][f])) >= 0.8]
    rho = spearman(curve["real", LAT][ACTIN], curve["translated", LAT][ACTIN]) if LAT in groups \
        else float("nan")
    # actin for Latrunculin B, otherwise the feature whose real means follow dose most closely
    shown = {k: ACTIN if k == LAT else max(r[k], key=lambda f: np.nan_to_num(
        abs(spearman(conc[k], curve["real", k][f])))) for k in groups}
    return dict(groups=groups, r=r, conc=conc, curve=curve, varying=varying, rho=rho, shown=shown,
                median_r=median(r[k][f] for k, f in varying))


def write_report(out, ckpt_path, ckpt, args, n_inputs, n):
    """report.md: whether the translations show the real dose-responses (the demo's targets), then
    the sections every report shares, samples from noise, the figures."""
    ok = lambda v, target: "PASS" if np.isfinite(v) and v >= target else "FAIL"  # noqa: E731
    cfg, d, classes = ckpt["config"], n["dose"], ckpt["classes"]
    lines = [
        f"Model `{ckpt_path}` ({ckpt['method']}, step {ckpt.get('step')}, {len(classes)} classes, "
        f"{cfg['image_size']}x{cfg['image_size']}"
        + (f", {cfg.get('prediction', 'eps')}-prediction), EMA weights. "
           if ckpt["method"] == "phendiff" else "). ")
        + f"{n_inputs} held-out DMSO images of the synthetic BBBC021 benchmark (seed {DEMO_SEED}; "
        f"the model was trained on seed 0) {n['how']}. Real references: {args.n} new images per "
        "class.", "", "## Does the translation reproduce the real dose-responses?", "",
        *report.md_table(["check", "value", "target", "result"], [
            [f"Latrunculin B, mean actin in cell regions (`{ACTIN}`): Spearman ρ between real and "
             "translated per-concentration means", f"{d['rho']:.2f}", "≥ 0.8",
             ok(d["rho"], 0.8)],
            [f"median Pearson r (real vs translated, across concentrations) over the "
             f"{len(d['varying'])} (compound, feature) pairs that truly vary with dose",
             f"{d['median_r']:.2f}", "≥ 0.7", ok(d["median_r"], 0.7)]]),
        "", "A feature truly varies with dose for a compound when the means of real images follow "
        "concentration monotonically (|Spearman ρ| ≥ 0.8 over its concentrations).", "",
        *report.md_table(["compound", "concentrations", "dose-varying features",
                          "median r over them", "median r over all features"],
                         [[k, len(cs), len(rv), f"{median(rv):.2f}",
                           f"{median(d['r'][k].values()):.2f}"]
                          for k, cs in d["groups"].items()
                          for rv in [[d["r"][k][f] for kk, f in d["varying"] if kk == k]]])]
    if LAT in d["groups"]:
        real, fake = d["curve"]["real", LAT][ACTIN], d["curve"]["translated", LAT][ACTIN]
        lines += ["", f"Latrunculin B, `{ACTIN}` per concentration:", "",
                  *report.md_table(["µM", "real", "translated"],
                                   [[f"{c:g}", f"{a:.4f}", f"{b:.4f}"]
                                    for c, a, b in zip(d["conc"][LAT], real, fake)]),
                  "", f"Spearman ρ with concentration: real {spearman(d['conc'][LAT], real):.2f}, "
                      f"translated {spearman(d['conc'][LAT], fake):.2f}."]
    top = files.class_name(LAT, 10.0)
    lines += report.table2_lines(n["table2"])
    lines += report.preservation_lines(n["preservation"], top if top in classes else classes[-1])
    lines += report.truth_lines(n["truth"], classes[1:], by="target", labels=classes[1:])
    if "samples" in n:
        spreads, trends = n["samples"]
        rho, rho_real = trends.get(LAT, (float("nan"), float("nan")))
        lines += ["", "## Samples from noise", "",
                  f"Latrunculin B: Spearman ρ between dose and the `{ACTIN}` means of {args.n} "
                  f"samples per class: {rho:.2f} (of real images: {rho_real:.2f}). Spread: the "
                  "mean pairwise RMS distance between images of a class ([0, 1] units); a "
                  "collapsed generator samples a much smaller spread than the real one.", "",
                  *report.md_table(["class", "real spread", "sampled spread"],
                                   [[c, f"{a:.3f}", f"{b:.3f}"] for c, (a, b) in spreads.items()])]
    lines += ["", "## Figures", "",
              "Dose series (the paper's Fig. 3): ![](dose_series.png)", "",
              "Translation to each compound's top dose, with difference maps (Fig. 1): "
              "![](translation.png)", "",
              "Real vs translated dose-responses: ![](dose_response.png)", "",
              "Feature correlations across concentrations (Fig. 4): ![](fig4_correlations.png)"]
    report.write(out / "report.md", f"Translation report: {ckpt['method']}",
                 f"python phendiff.py {' '.join(args.argv)}", DEMO_SEED, lines)
