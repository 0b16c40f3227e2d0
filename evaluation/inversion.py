"""How faithful DDIM inversion is, for a PhenDiff checkpoint (`eval.py inversion`): reconstruction
against the number of DDIM steps, plain (eq. 6) against exact (fixed-point) inversion; the path of
real images through inversion and sampling; the inverted latents against the N(0, 1) that sampling
starts from. The course's lab 3 builds the same from the students' own functions."""
import time

import numpy as np
import torch

import data
import ddim
import files
import method as M
from evaluation import plots, report
from evaluation.scores import reconstruction_error


def sweep(model, alpha, x, y, steps, iters):
    """Rows [DDIM steps, fixed-point iterations, PSNR mean, PSNR sd, seconds]: x inverted under y
    and sampled back under y, at every combination."""
    rows = []
    for n in steps:
        for k in iters:
            t0 = time.perf_counter()
            z = ddim.invert(model, x, y, alpha, n, fixed_point_iters=k)
            psnr = reconstruction_error(x, ddim.sample(model, z, y, alpha, n))["psnr"]
            rows.append([n, k, float(psnr.mean()), float(psnr.std()), time.perf_counter() - t0])
            print(f"{n:4d} steps, {k} fixed-point iterations: {psnr.mean():.1f} dB")
    return rows


def strips(model, alpha, x, y, num_steps, columns=8):
    """(latent, {row: [(label, image)]}): one image's x_t and predicted x_0 at `columns` steps of
    its inversion, then of its sampling back under the same label."""
    inv, smp = [], []
    z = ddim.invert(model, x[:1], y[:1], alpha, num_steps, trajectory=inv)
    ddim.sample(model, z, y[:1], alpha, num_steps, trajectory=smp)
    pick = lambda traj: [traj[i] for i in np.linspace(0, len(traj) - 1, columns).round()  # noqa
                                                      .astype(int)]
    label = lambda s: "clean" if s["t"] < 0 else f"t={s['t']}"  # noqa: E731
    rows = {}
    for name, traj in (("inversion", inv), ("sampling", smp)):
        steps = pick(traj)
        rows[f"{name}: x_t"] = [(label(s), s["x"][0]) for s in steps]
        rows[f"{name}: x_0 pred."] = [(label(s), s["x0"][0]) for s in steps]
    return z, rows


def cmd_inversion(a):
    folder = files.out_folder(a.out, [], ["inversion.md", "inversion.csv", "inversion.png",
                                          "trajectory.png", "latents.png"], a.overwrite)
    method, ckpt = M.load_method(a.ckpt, a.device)
    if ckpt["method"] != "phendiff":
        raise ValueError(f"{a.ckpt} is a {ckpt['method']} checkpoint; inversion is PhenDiff's")
    net, alpha, size = method.net(), method.alpha, ckpt["config"]["image_size"]
    ds = data.load_dataset(a.data, image_size=size, n_per_class=a.n, seed=a.seed,
                           normalization=ckpt.get("normalization"))
    known = [i for i, label in enumerate(ds.labels.tolist())
             if ds.classes[label] in ckpt["classes"]]
    pick = torch.tensor(known)[torch.randperm(len(known), generator=torch.Generator()
                                              .manual_seed(a.seed))[:a.n]]
    x = ds.images[pick].to(a.device)
    y = torch.tensor([ckpt["classes"].index(ds.classes[i]) for i in ds.labels[pick]],
                     device=a.device)
    rows = sweep(net, alpha, x, y, a.steps, a.iters)
    files.write_csv(folder / "inversion.csv", ["ddim_steps", "fixed_point_iters", "psnr_mean",
                                               "psnr_sd", "seconds"], rows)
    plots.inversion_sweep(rows, folder / "inversion.png")
    z, rows_img = strips(net, alpha, x, y, a.trajectory_steps)
    plots.trajectory(rows_img, folder / "trajectory.png",
                     f"{ckpt['classes'][int(y[0])]}: inversion (eq. 6), then sampling (eq. 5)")
    latents = ddim.invert(net, x, y, alpha, a.trajectory_steps).cpu()
    plots.latent_histogram({"inverted real images": latents,
                            "N(0, 1) draws": torch.randn(latents.shape)}, folder / "latents.png")
    lines = [f"{len(x)} images of {a.data} (seed {a.seed}), each inverted under its own class and "
             "sampled back under it. PSNR on [0, 1]; time for the whole batch, inversion and "
             "sampling.", "",
             *report.md_table(["DDIM steps", "fixed-point iterations", "PSNR (dB)", "seconds"],
                              [[n, k, f"{m:.1f} ± {sd:.1f}", f"{t:.1f}"]
                               for n, k, m, sd, t in rows]),
             "", "![](inversion.png)", "", f"Trajectory ({a.trajectory_steps} steps): "
             "![](trajectory.png)", "",
             f"Inverted latents: std {latents.std():.2f} (N(0, 1): 1); per-image std "
             f"{latents.flatten(1).std(1).min():.2f}–{latents.flatten(1).std(1).max():.2f}. "
             "![](latents.png)"]
    report.write(folder / "inversion.md", f"DDIM inversion of {a.ckpt}",
                 f"python eval.py {' '.join(a.argv)}", a.seed, lines)
