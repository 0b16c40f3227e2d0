"""Lab 3: how faithful DDIM inversion is, with a trained network.

The shipped demo model (checkpoints/demo.pt: 1.2M parameters, 25 classes, 32x32, predicting v,
which ddim.predict_eps turns into eps) inverts real images of four conditions under their own
labels. You write the predicted clean image, exact (fixed-point) inversion, the sampling step with
DDIM's eta, and PSNR; the lab then measures reconstruction against the number of DDIM steps, draws
the path of an image through inversion and sampling, looks at the latents, and shows why the
inversion must be deterministic.

    python course/lab3_inversion.py --out runs/course/lab3    # your functions (stops at a blank)
    python course/check.py lab3                               # grade them
"""
# %% 0. Setup: the demo model (its EMA weights) and 4 held-out images, each of another condition.
import math
import time

import numpy as np
import torch

import common
import data
import ddim
import method
from common import Blank
from evaluation import plots

args = common.start("lab3")
start = time.perf_counter()
model, ckpt = method.load_method(common.ROOT / "checkpoints" / "demo.pt")
net, alpha, T = model.net(), model.alpha, len(model.alpha)
ds = data.synthetic_dataset(n_per_class=1, image_size=32, seed=1)  # not the training draws
names = ["DMSO", "latrunculin_b_10uM", "nocodazole_3uM", "herbimycin_a_3uM"]
x = torch.stack([ds.images[ds.labels == ds.classes.index(c)][0] for c in names])  # (4, 3, 32, 32)
y = torch.tensor([ckpt["classes"].index(c) for c in names])
print(f"demo model: {ckpt['config']['prediction']}-prediction, step {ckpt.get('step')}; images: "
      f"{', '.join(names)}")

# %% 1. Your blanks. Levels a_* are floats: the paper's alpha at that step (1: the clean image).


def predicted_x0(x_t, eps, a_t):
    """The clean image the model sees in x_t: x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), eq. 4's
    noising solved for x_0 (eq. 5 is: predict it, then re-noise it to the next level)."""
    raise Blank("predicted_x0")


def invert_step_exact(x, eps, a_t, a_next, eps_next, iters):
    """eq. 6 made exact: start from plain eq. 6 (eps = eps at x), then `iters` times re-evaluate
    eps where the step lands, x_next <- eq6(x, eps_next(x_next)). The limit is the x_next that the
    eq. 5 step (which uses eps at x_next) maps back onto x. iters = 0: the paper's eq. 6."""
    raise Blank("invert_step_exact (eq. 6, fixed point)")


def ddim_step_eta(x_t, eps, a_t, a_prev, eta, noise):
    """DDIM's general step (Song et al. 2021, eq. 12 and 16): x_prev = sqrt(a_prev) x0 +
    sqrt(1 - a_prev - s^2) eps + s noise with x0 = predicted_x0(x_t, eps, a_t) and
    s = eta sqrt((1 - a_prev) / (1 - a_t)) sqrt(1 - a_t / a_prev). eta = 0 is eq. 5; eta = 1 is
    DDPM's stochastic sampler."""
    raise Blank("ddim_step_eta (eq. 5 when eta = 0)")


def psnr(x, x_rec):
    """Per-image PSNR in dB of x_rec against x, images in [-1, 1] measured on [0, 1] (peak 1):
    -10 log10(MSE), x_rec clamped to [-1, 1] first as a saved image would be. Shape (N,)."""
    raise Blank("psnr")


if args.solution:  # the reference answers instead: course/solutions/lab3_inversion.py
    from solutions.lab3_inversion import (ddim_step_eta, invert_step_exact,
                                          predicted_x0, psnr)

# %% 2. The loops, as ddim.invert / ddim.sample but with your steps. path: a list that gets
# (t, x) after every step (t = -1: the clean image).


def eps(x_t, t, y):
    return ddim.predict_eps(net, x_t, t, y, alpha)  # v -> eps for the demo model


def schedule(num_steps):
    ts = ddim.timesteps(num_steps, T).tolist()  # t_1 < ... < t_n = T - 1
    return ts, [1.0] + alpha[ts].tolist()  # levels: the clean image first


def invert(x, y, num_steps, iters=0, path=None):
    ts, lv = schedule(num_steps)
    for i in range(num_steps):  # the clean image has no timestep: its step uses eps at t_1
        e = eps(x, ts[max(i - 1, 0)], y)
        eps_next = lambda v, t=ts[i]: eps(v, t, y)  # noqa: E731  (eps at the level reached)
        x = invert_step_exact(x, e, lv[i], lv[i + 1], eps_next, iters)  # eq. 6
        if path is not None:
            path.append((ts[i], x))
    return x


def sample(z, y, num_steps, eta=0.0, path=None, seed=0):
    ts, lv = schedule(num_steps)
    g = torch.Generator().manual_seed(seed)
    for i in range(num_steps, 0, -1):
        noise = torch.randn(z.shape, generator=g)
        z = ddim_step_eta(z, eps(z, ts[i - 1], y), lv[i], lv[i - 1], eta, noise)  # eq. 5 at eta 0
        if path is not None:
            path.append((ts[i - 2] if i > 1 else -1, z))
    return z


# %% 3. Reconstruction against the number of DDIM steps: plain eq. 6 against exact inversion.
steps, iters = [2, 5, 10, 20, 50], [0, 3]
mean_psnr, latents = {}, {}
for k in iters:
    for n in steps:
        latents[n, k] = invert(x, y, n, iters=k)
        p = psnr(x, sample(latents[n, k], y, n))
        mean_psnr[n, k] = p.mean().item()
        print(f"{n:3d} steps, {k} fixed-point iterations: {p.mean():5.1f} dB "
              f"({', '.join(f'{v:.1f}' for v in p.tolist())})")
plots.curves([dict(lines={"plain eq. 6 (the paper)" if k == 0 else
                          f"exact inversion ({k} fixed-point iterations)":
                          (steps, [mean_psnr[n, k] for n in steps]) for k in iters},
                   xscale="log", xticks=steps, xlabel="DDIM steps each way",
                   ylabel="reconstruction PSNR (dB)", title="invert, sample back (mean of 4)")],
             args.out / "psnr_vs_steps.png")

# %% 4. The path of the DMSO image: x_t and the clean image the model sees in it, at 8 of the 50
# steps of inversion, then of sampling back under the same label.
paths = {"inversion": [], "sampling": []}
z = invert(x[:1], y[:1], 50, path=paths["inversion"])
sample(z, y[:1], 50, path=paths["sampling"])
strips = {}
for name, path in paths.items():
    shown = [path[i] for i in np.linspace(0, len(path) - 1, 8).round().astype(int)]
    label = lambda t: "clean" if t < 0 else f"t={t}"  # noqa: E731
    strips[f"{name}: x_t"] = [(label(t), v[0]) for t, v in shown]
    strips[f"{name}: x_0 seen"] = [(label(t), (v if t < 0 else predicted_x0(
        v, eps(v, t, y[:1]), alpha[t].item()))[0]) for t, v in shown]
plots.trajectory(strips, args.out / "trajectory.png",
                 "DMSO image: inversion (eq. 6) under DMSO, then sampling (eq. 5) under DMSO")

# %% 5. The latents (50 steps, plain eq. 6) against the N(0, 1) that sampling starts from. By eye
# and by histogram an inverted latent is white noise; yet it is not any noise: it correlates with
# the input pixel by pixel (bright pixels -> positive latent), and only it samples back to these
# cells (section 6). In lab 1's Gaussian model the latent was the image, (x - mu_A) / sigma_A.
z = latents[50, 0]
white = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))
lag1 = lambda v: np.corrcoef(v[..., :-1].flatten(), v[..., 1:].flatten())[0, 1]  # noqa: E731
print(f"latent std {z.std():.2f}; neighbouring pixels correlate r = {lag1(z.numpy()):.2f} "
      f"(N(0, 1): {lag1(white.numpy()):.2f}); latent and input pixels r = "
      f"{np.corrcoef(z.flatten(), x.flatten())[0, 1]:.2f} (N(0, 1): "
      f"{np.corrcoef(white.flatten(), x.flatten())[0, 1]:.2f})")
plots.latent_histogram({"inverted real images": z, "N(0, 1) draws": white},
                       args.out / "latent_histogram.png")
edges = torch.tensor([-1.0, -0.9, -0.7, -0.5, -0.3, 0.0, 1.0])  # input values, dark to bright
bins = torch.bucketize(x.flatten(), edges[1:-1])
centres = [(edges[b] + edges[b + 1]).item() / 2 for b in range(len(edges) - 1)]
plots.curves([dict(lines={k: (centres, [v.flatten()[bins == b].mean().item()
                                        for b in range(len(centres))])
                          for k, v in (("inverted latent", z), ("N(0, 1) draw", white))},
                   xlabel="input pixel value ([-1, 1])", ylabel="mean latent value",
                   title="the latent remembers the image")], args.out / "latent_vs_input.png")
plots.image_rows({"input": x, "latent / 3 (eq. 6, 50 steps)": z / 3, "N(0, 1) draw / 3": white / 3},
                 args.out / "latents.png", k=4)

# %% 6. Why inversion must be deterministic: sample the exact latent back with eta > 0 (fresh
# noise at every step), or start from the forward process's x_T = sqrt(a) x + sqrt(1 - a) eps.
rec = {f"eta = {eta:g}": sample(latents[50, 3], y, 50, eta=eta) for eta in (0.0, 0.2, 0.5, 1.0)}
a_T = alpha[-1].item()
forward = math.sqrt(a_T) * x + math.sqrt(1 - a_T) * torch.randn(x.shape, generator=torch.Generator()
                                                                .manual_seed(1))
rec["forward-noised x_T, eta = 0"] = sample(forward, y, 50)
for k, v in rec.items():
    print(f"sampled back with {k}: {psnr(x, v).mean():.1f} dB")
plots.image_rows({"input": x, **rec}, args.out / "eta.png", k=4)
print(f"lab3 done in {time.perf_counter() - start:.0f} s: figures in {args.out}")
