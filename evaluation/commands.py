"""The bodies of eval.py's commands: read image folders or a checkpoint, score with the evaluation
modules, write CSVs, figures and reports into --out. One function per command, named after it."""
import difflib
import math
import os
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy import stats

import data
import files
import method as M
from baselines import encoders
from evaluation import plots, report
from evaluation import representation as R
from evaluation.features import cell_features, feature_table, finite_mean
from evaluation.inception import InceptionV3, load_inception
from evaluation.scores import (dose_response, encode, feature_tables, fid, load_variants,
                               reconstruction_error, sample_statistics)
from evaluation.stats import pearson


def check_feature(name, names):
    if name not in names:
        close = difflib.get_close_matches(name, names, n=5, cutoff=0.5)
        raise ValueError(f"unknown feature {name!r}; close matches: {', '.join(close) or 'none'} "
                         "(see evaluation.features.FEATURES for all names)")

def read_classes(root):
    """root/<class>/<image> -> {class: (N, C, H, W) in raw units}."""
    return {c: files.read_stack(f) for c, f in files.class_folders(root).items()}


def out(a, *writes):
    """The command's --out, checked against its inputs and earlier results before any compute."""
    inputs = [p for p in (getattr(a, k, None) for k in ("real", "fake", "rec", "path1", "path2"))
              if p]
    return files.out_folder(a.out, inputs, writes, a.overwrite)


def cmd_fid(a):
    folder = out(a, "fid.csv") if a.out else None
    net = load_inception(a.inception_weights, a.device)
    x1, x2 = (files.read_stack(files.list_images([p])) for p in (a.path1, a.path2))
    d = fid(x1, x2, net, a.batch_size, a.device)
    print(f"FID {d:.4f} ({len(x1)} vs {len(x2)} images)")
    if folder:
        files.write_csv(folder / "fid.csv", ["path1", "path2", "n1", "n2", "fid"],
                  [[a.path1, a.path2, len(x1), len(x2), d]])


def cmd_table1(a):
    """Table 1: FID of the translated images of each target class against the real ones."""
    folder = out(a, "table1.csv", "table1.png")
    net = load_inception(a.inception_weights, a.device)
    real, fake = read_classes(a.real), read_classes(a.fake)
    common = [c for c in fake if c in real]
    if not common:
        raise ValueError(f"no class of {a.fake} ({', '.join(fake)}) is among the real classes "
                         f"({', '.join(real)})")
    rows = [[c, len(real[c]), len(fake[c]), fid(real[c], fake[c], net, a.batch_size, a.device)]
            for c in common]
    mean = ["mean", sum(r[1] for r in rows), sum(r[2] for r in rows),
            float(np.mean([r[3] for r in rows]))]
    files.write_csv(folder / "table1.csv", ["class", "n_real", "n_translated", "fid"],
                    rows + [mean])
    plots.bars(common, [r[3] for r in rows], "FID (translated vs real)", folder / "table1.png")


def recon_from_folders(a):
    """Real images and their reconstructions, matched by file name (stem): (names, x, rec) in
    [-1, 1]."""
    real = {f.stem: f for f in files.list_images([a.real])}
    rec = {f.stem: f for f in files.list_images([a.rec])}
    names = sorted(set(real) & set(rec))
    if not names:
        raise ValueError(f"no file of {a.rec} has the name of one in {a.real}; reconstructions are "
                         "matched to their inputs by file name")
    if len(names) < len(real):
        warnings.warn(f"{len(real) - len(names)} real image(s) have no reconstruction in {a.rec}")
    x, r = (torch.from_numpy(files.read_stack([d[n] for n in names])) * 2 - 1 for d in (real, rec))
    if x.shape != r.shape:
        raise ValueError(f"real images {tuple(x.shape[1:])} and reconstructions "
                         f"{tuple(r.shape[1:])} differ in shape")
    return names, x, {"reconstruction": r}


def recon_from_checkpoint(a):
    """The shortcut: n images of --data reconstructed by the checkpoint's method (every variant)."""
    ckpt, variants = load_variants(a.ckpt, a.device, a.ddim_steps, a.fixed_point_iters,
                                   a.projection, a.projection_steps)
    ds = data.load_dataset(a.data, image_size=ckpt["config"]["image_size"],
                           n_per_class=a.n_per_class, seed=a.seed,
                           normalization=ckpt.get("normalization"))
    known = [c in ckpt["classes"] for c in ds.classes]
    keep = [i for i, y in enumerate(ds.labels.tolist()) if known[y]]
    if not keep:
        raise ValueError(f"no class of {a.data} ({', '.join(ds.classes[:5])}, ...) is a class "
                         "of the checkpoint")
    order = torch.randperm(len(keep), generator=torch.Generator().manual_seed(a.seed))[:a.n]
    keep = [keep[i] for i in order]
    x = ds.images[keep]
    y = torch.tensor([ckpt["classes"].index(ds.classes[ds.labels[i]]) for i in keep])
    recs = {}
    with torch.no_grad():
        for name, m in variants.items():
            recs[name] = torch.cat([m.reconstruct(xb.to(a.device), yb.to(a.device)).cpu()
                                    for xb, yb in zip(x.split(a.batch_size),
                                                      y.split(a.batch_size))])
    return [f"{i}:{ckpt['classes'][c]}" for i, c in zip(keep, y.tolist())], x, recs


def cmd_recon(a):
    """Table 2: reconstruction error of real images, from folders or with a checkpoint's method."""
    if bool(a.ckpt) == bool(a.real and a.rec):
        raise ValueError("give either --real and --rec (folders matched by file name) or --ckpt "
                         "(with --data) to reconstruct first")
    folder = out(a, "recon.csv", "recon_per_image.csv", "recon.png")
    names, x, recs = recon_from_checkpoint(a) if a.ckpt else recon_from_folders(a)
    rows, per_image = [], []
    for variant, rec in recs.items():
        e = reconstruction_error(x, rec)
        rows.append([variant, len(x), e["l2"].mean(), e["l2"].std(), e["mse"].mean(),
                     e["psnr"].mean(), e["psnr"].std()])
        per_image += [[variant, n, e["l2"][j], e["mse"][j], e["psnr"][j]]
                      for j, n in enumerate(names)]
        print(f"{variant}: L2 {e['l2'].mean():.4f} ([-1, 1] units)  PSNR {e['psnr'].mean():.2f} dB")
    files.write_csv(folder / "recon.csv", ["reconstruction", "n", "l2_mean", "l2_std", "mse_mean",
                                     "psnr_mean", "psnr_std"], rows)
    files.write_csv(folder / "recon_per_image.csv",
                    ["reconstruction", "image", "l2", "mse", "psnr"],
              per_image)
    plots.image_rows({"real": x, **recs}, folder / "recon.png")


def cmd_samples(a):
    """Samples from noise of a generative method (a StyleGAN) against real images of --data, class
    by class: spread (collapse) and the dose trend of a feature."""
    folder = out(a, "samples.csv", "samples.png")
    net, ckpt = M.load_method(a.ckpt, a.device)
    if not hasattr(net, "sample"):
        raise ValueError(f"{ckpt['method']} does not sample from noise; samples is for a StyleGAN")
    ds = data.load_dataset(a.data, image_size=ckpt["config"]["image_size"], n_per_class=a.n,
                           seed=a.seed, normalization=ckpt.get("normalization"))
    real, fake = {}, {}
    for c in ckpt["classes"]:
        if c in ds.classes:
            real[c] = (ds.images[ds.labels == ds.classes.index(c)][:a.n] + 1) / 2
            labels = torch.full((len(real[c]),), ckpt["classes"].index(c), device=a.device)
            with torch.no_grad():
                fake[c] = (net.sample(labels, seed=a.seed).cpu() + 1) / 2
    if not real:
        raise ValueError(f"no class of {a.data} is a class of the checkpoint")
    spreads, trends = sample_statistics(real, fake, a.feature, a.workers)
    files.write_csv(folder / "samples.csv", ["class", "n", "real_spread", "sampled_spread"],
              [[c, len(real[c]), *spreads[c]] for c in real])
    for k, (rho, rho_real) in trends.items():
        print(f"{k}: Spearman rho of dose and {a.feature} means: samples {rho:.2f}, "
              f"real {rho_real:.2f}")
    rows = list(real)[:10]
    plots.image_grid(torch.cat([fake[c][:8] * 2 - 1 for c in rows]), len(rows),
                     folder / "samples.png")


def cmd_fig4(a):
    """Fig. 4: per compound, Pearson r across concentrations between the per-class feature means
    of real and translated images, one r per feature, and the histogram of r over features."""
    if not a.fake:
        raise ValueError("fig4 needs --fake (the translated images, root/<class>/*.png)")
    folder = out(a, "fig4_means.csv", "fig4_correlations.csv", "fig4.png")
    real, fake = read_classes(a.real), read_classes(a.fake)
    kw = dict(workers=a.workers, nuclei_channel=a.nuclei_channel, golgi_channel=a.golgi_channel)
    groups, means, r = dose_response(feature_tables(real, **kw), feature_tables(fake, **kw))
    names = list(next(iter(means.values())))
    files.write_csv(folder / "fig4_means.csv",
              ["compound", "class", "concentration_uM", "source"] + names,
              [[k, c, files.parse_class(c)[1], src] + [means[src, c][n] for n in names]
               for k, cs in groups.items() for c in cs for src in ("real", "translated")])
    files.write_csv(folder / "fig4_correlations.csv", ["compound", "feature", "pearson_r"],
              [[k, n, v] for k in groups for n, v in r[k].items()])
    plots.fig4(r, groups, folder / "fig4.png")


def cmd_ttest(a):
    """Fig. 2b: two-sided Welch t-test of one feature between two conditions, real and generated."""
    folder = out(a, "ttest.csv", "ttest.png")
    real = read_classes(a.real)
    sources = [("real", real)] + ([("generated", read_classes(a.fake))] if a.fake else [])
    for src, sets in sources:
        for c in (a.a, a.b):
            if c not in sets:
                raise ValueError(f"class {c!r} not in the {src} folder; it has: {', '.join(sets)}")
    kw = dict(nuclei_channel=a.nuclei_channel, golgi_channel=a.golgi_channel, channel_names=None)
    check_feature(a.feature, list(cell_features(real[a.a][0], **kw)))
    rows, groups = [], []
    for src, sets in sources:
        va, vb = (feature_table(sets[c], workers=a.workers, **kw)[a.feature] for c in (a.a, a.b))
        va, vb = va[np.isfinite(va)], vb[np.isfinite(vb)]
        t, p = stats.ttest_ind(va, vb, equal_var=False) if min(len(va), len(vb)) >= 2 \
            else (math.nan, math.nan)
        ma, mb = finite_mean(va), finite_mean(vb)
        rows.append([src, a.feature, a.a, a.b, len(va), len(vb), ma, mb, float(t), float(p)])
        groups += [(f"{src}\n{a.a}", va), (f"{src}\n{a.b}", vb)]
        print(f"{src:9s} {a.feature}: {a.a} {ma:.4g} vs {a.b} {mb:.4g}, Welch t {t:.3f}, p {p:.3g}")
    files.write_csv(folder / "ttest.csv", ["source", "feature", "class_a", "class_b", "n_a", "n_b",
                                     "mean_a", "mean_b", "t", "p"], rows)
    plots.boxes(groups, a.feature, "; ".join(f"{r[0]} p = {r[-1]:.2g}" for r in rows),
                folder / "ttest.png")


def cmd_represent(a):
    perceptual = None
    if a.perceptual:  # a domain encoder (the reproduction's --work/domain_encoder.pt)
        net = encoders.load_domain_encoder(a.perceptual, a.device)
        perceptual = (lambda x: net((x + 1) / 2), f"the domain encoder {a.perceptual}")
    represent(a.ckpt, a.out, a.data, a.device, a.overwrite, a.n_per_class, a.seed, a.compounds,
              a.control, a.fit, a.every, a.block, a.batch_size, a.train_data, perceptual,
              command=f"python eval.py {' '.join(a.argv)}")


def represent(paths, out, data_source, device="cpu", overwrite=False, n_per_class=40, seed=0,
              compounds=None, control="DMSO", fit=None, every=5, block=None, batch_size=64,
              train_source=None, perceptual=None, command=None):
    """DSAE's representation quality: 1-NN and linear-probe F1 of encoders' features against the
    floors (channel statistics, pixels, random weights), a table and a PCA map; for methods that
    decode, reconstructions (F1 against reconstruction: the paper's Fig. 2) and decoded paths.
    With train_source the probes train on those images and are tested on data_source (whole
    held-out sites: no site on both sides); without, on blocks of data_source (`every`, `block`).
    perceptual: (encode, its name), the network whose features measure the reconstructions beside
    pixels. The reproduction calls it on its held-out data with its domain encoder."""
    loaded = [M.load_method(p, device) for p in paths]
    runs = [Path(p).name if Path(p).is_dir() else Path(p).stem for p in paths]
    runs = [r if runs.count(r) == 1 else f"{i + 1}_{r}" for i, r in enumerate(runs)]
    pngs = {i: f"interpolation_{runs[i]}.png"  # named by run: a longer list renames nothing
            for i, (net, _) in enumerate(loaded) if hasattr(net, "decode")}
    folder = files.out_folder(out, [data_source], ["representation.md", "representation.csv",
                                                   "map.png", "fig2.png", *pngs.values()],
                              overwrite)
    size = {ckpt["config"]["image_size"] for _, ckpt in loaded}
    if len(size) > 1:
        raise ValueError(f"the checkpoints take different image sizes ({sorted(size)}); compare "
                         "encoders of one size")
    kw = dict(image_size=size.pop(), n_per_class=n_per_class, seed=seed, compounds=compounds,
              normalization=loaded[0][1].get("normalization"),
              fit=fit or loaded[0][1].get("args", {}).get("fit", "crop"))
    ds, test = data.load_dataset(data_source, **kw), None
    if train_source:  # train on these images, test on data_source: a site-disjoint probe
        tr = data.load_dataset(train_source, **kw)
        if tr.classes != ds.classes:
            raise ValueError(f"--train-data has classes {tr.classes}, --data {ds.classes}")
        test = torch.arange(len(tr) + len(ds)) >= len(tr)
        ds = data.ImageDataset(torch.cat([tr.images, ds.images]), torch.cat([tr.labels, ds.labels]),
                               ds.classes, ds.channels, ds.normalization)
    encoders, names = {}, [f"{ckpt['method']} ({p})" for p, (_, ckpt) in zip(paths, loaded)]
    for i, (p, (net, ckpt)) in enumerate(zip(paths, loaded)):
        if ckpt["config"].get("in_channels", ds.images.shape[1]) != ds.images.shape[1]:
            raise ValueError(f"{p} takes {ckpt['config']['in_channels']}-channel images, "
                             f"{data_source} has {ds.images.shape[1]} channels")
        with torch.no_grad():
            net.encode(ds.images[:1].to(device))  # no encoder: one line before any work
        encoders[names[i]] = net.encode
        encoders[f"{names[i]} random weights"] = R.random_weights(ckpt, device).encode
    is_synthetic = ds.truth is not None
    block = block or (1 if is_synthetic else 4)
    ec50 = R.SYNTHETIC_EC50 if is_synthetic else None
    rows, maps, raw = R.represent(ds, encoders, control, every, block, ec50, batch_size, device,
                                  test=None if test is None else test.numpy())
    for r in rows:
        print(f"{r['features']:40s} {r['task']:9s} 1-NN F1 {r['knn_f1']:.3f}  linear F1 "
              f"{r['linear_f1']:.3f}  (chance {r['chance']:.3f})")
    held_out = (f"the probes train on {train_source} and are tested on {data_source} (whole "
                "sites held out: no site on both sides)" if train_source else
                f"held out: the first of every {every} blocks of {block} image(s) of each class")
    about = [f"Data: {data_source}, {len(ds)} images of {len(ds.classes)} classes; {held_out}. "
             f"Checkpoints: {', '.join(map(str, paths))}."]
    if is_synthetic:
        about.append("Compounds: doses at or below the compound's EC50 (synthetic.COMPOUNDS) are "
                     "left out.")
    lines = R.report(rows, about)
    if test is None:
        test = torch.as_tensor(R.split(ds.labels.numpy(), every, block))
    x = ds.images[test]
    mean_image = ds.images[~test].mean(0).expand_as(x)
    feel = lambda rec: (R.perceptual_distance(perceptual[0], x, rec, batch_size, device)  # noqa
                        if perceptual else None)
    trivial = (reconstruction_error(x, mean_image)["mse"].mean(),
               None if perceptual is None else float(feel(mean_image).mean()))
    recon = {}
    for i, name in pngs.items():  # DSAE, the autoencoders: reconstructions, decoded paths
        net, f = loaded[i][0], raw[names[i]]  # the features represent() encoded
        with torch.no_grad():
            rec = torch.cat([net.decode(fb.float().to(device)).cpu()
                             for fb in torch.from_numpy(f[test.numpy()]).split(batch_size)])
        recon[names[i]] = (reconstruction_error(x, rec)["mse"], feel(rec))
        paths_, strips = R.interpolation(net.decode, f, ds, control, batch_size=batch_size,
                                         device=device)
        plots.image_grid(torch.cat(list(strips.values())), 4 * len(strips), folder / name)
        lines += R.interpolation_report(paths_, f"{name}, {paths[i]}", control)
    if recon:
        points = R.fig2_points(rows, recon)
        lines += R.fig2_report(points, trivial, perceptual and perceptual[1])
        plots.f1_against_reconstruction(points, trivial[0], folder / "fig2.png")
    report.write(folder / "representation.md", "Representation quality of encoders",
                 command or f"eval.py represent --ckpt {' '.join(map(str, paths))}", seed, lines)
    files.write_csv(folder / "representation.csv", R.COLUMNS, R.csv_rows(rows))
    maps = {k: v for k, v in maps.items() if not k.endswith("random weights")}
    plots.feature_map(maps, ds.labels, ds.classes, folder / "map.png",
                      "PCA of features normalised to the control")


def cmd_bench(a):
    """Throughput of Inception features (random weights: the speed does not depend on them) and
    of cell_features, and the features' accuracy against the synthetic ground truth."""
    print(f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} (other processes slow the "
          "numbers down)")
    torch.manual_seed(0)
    net = InceptionV3().eval().to(a.device)
    x = torch.rand(a.batch_size, 3, 64, 64)
    encode(x, net, a.batch_size, a.device)  # warm-up
    t0 = time.perf_counter()
    for _ in range(a.batches):
        encode(x, net, a.batch_size, a.device)  # ends with .cpu(): synchronised on a GPU too
    print(f"inception: {a.batches * a.batch_size / (time.perf_counter() - t0):.1f} images/s "
          f"(batch {a.batch_size}, 64x64 -> 299x299, {a.device}, "
          f"{torch.get_num_threads()} threads)")
    ds = data.synthetic_dataset("bbbc021", n_per_class=max(1, a.images // 25), image_size=64,
                                seed=a.seed)
    images = ((ds.images + 1) / 2).numpy()
    for workers in sorted({1, a.workers}):
        t0 = time.perf_counter()
        table = feature_table(images, workers=workers)
        print(f"cell_features: {len(images) / (time.perf_counter() - t0):.1f} images/s "
              f"({len(images)} synthetic 3x64x64 images, {len(table)} features, "
              f"{workers} worker(s))")
    truth = {k: np.array([t[k] for t in ds.truth])
             for k in ("n_cells", "actin_mean", "tubulin_mean", "dna_mean")}
    err = np.abs(table["nuclei_count"] - truth["n_cells"]).mean() / truth["n_cells"].mean()
    r = ", ".join(f"{f} r = {pearson(table[f], truth[k]):.3f}" for f, k in (
        ("cells_actin_mean", "actin_mean"), ("cells_tubulin_mean", "tubulin_mean"),
        ("nuclei_dna_mean", "dna_mean")))
    print(f"against the synthetic truth: nuclei_count mean abs error {100 * err:.1f} % of the mean "
          f"count; {r}")


