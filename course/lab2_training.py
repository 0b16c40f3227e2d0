"""Lab 2: train a class-conditional diffusion model (eq. 4) in minutes, then translate with it.

The model is the project's UNet (model.py, `tiny` preset, 0.3M parameters), the data two classes of
the synthetic benchmark: untreated cells (DMSO) and the top dose of Latrunculin B, which removes
actin and cells. You write the noising of eq. 4, eq. 4 itself and label dropout; the loop trains for
a few minutes; then held-out DMSO images are inverted under DMSO (eq. 6) and sampled under
Latrunculin B (eq. 5), and scored against the truth: the benchmark renders the same field under
the drug.

    python course/lab2_training.py --out runs/course/lab2    # your functions (stops at a blank)
    python course/check.py lab2                              # grade them
"""
# %% 0. Setup
import copy
import math
import time

import torch

import common
import data
import ddim
import method
from common import Blank
from evaluation import plots
from model import UNet, UNetConfig

args = common.start("lab2")
torch.manual_seed(0)
SIZE, STEPS, BATCH, LR, P_UNCOND = 16, 1500, 32, 2e-3, 0.1  # ~3 min on one CPU core

# %% 1. Your blanks.


def add_noise(x0, eps, a):
    """x_t = sqrt(a) x_0 + sqrt(1 - a) eps, the input of eq. 4: the forward process in one jump.
    a: the level alpha_t of each image, a tensor shaped (B, 1, 1, 1)."""
    raise Blank("add_noise (x_t in eq. 4)")


def diffusion_loss(model, x0, y, alpha):
    """eq. 4: || eps - eps_theta(sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps, t, y) ||^2, the mean
    over the batch and pixels. Draw for each image its own t uniformly from 0..T-1 (T = len(alpha);
    its level is alpha[t]) and its own eps ~ N(0, I); call model(x_t, t, y) with t a LongTensor."""
    raise Blank("diffusion_loss (eq. 4)")


def label_dropout(y, p, null_label):
    """Each label replaced by null_label with probability p (a new tensor): the one network then
    also learns the unconditional eps(x_t, t, null) that classifier-free guidance needs (lab 4)."""
    raise Blank("label_dropout (for guidance)")


if args.solution:  # the reference answers instead: course/solutions/lab2_training.py
    from solutions.lab2_training import add_noise, diffusion_loss, label_dropout

# %% 2. The forward process with your add_noise: one field of each class at 6 noise levels. The
# label only matters where the image is still visible: past alpha ~ 0.1 both look alike.
alpha = ddim.make_schedule("linear")  # alpha[t], t = 0..T-1, is the paper's alpha_{t+1}
one = data.synthetic_dataset(n_per_class=1, image_size=SIZE, seed=0, compounds=["latrunculin_b"])
noise = torch.randn(1, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
levels = [0, 49, 149, 299, 499, 999]
plots.trajectory({name: [(f"t={t}, a={alpha[t]:.2g}", add_noise(
                              one.images[k:k + 1], noise, alpha[t].float().view(1, 1, 1, 1))[0])
                         for t in levels]
                  for k, name in ((0, "DMSO"), (len(one) - 1, "Lat B 10 uM"))},
                 args.out / "forward.png", "x_t = sqrt(a) x_0 + sqrt(1 - a) eps, the same eps")

# %% 3. Data: 400 training images per class, images in [-1, 1], labels 0 = DMSO, 1 = Lat B 10 uM.
classes = ["DMSO", "latrunculin_b_10uM"]
ds = data.synthetic_dataset(n_per_class=400, image_size=SIZE, seed=0,
                            compounds=["latrunculin_b"]).select(classes)
print(f"{len(ds)} training images {tuple(ds.images.shape[1:])}, classes {ds.classes}")

# %% 4. Train. The translation uses an exponential moving average (EMA) of the weights: at these
# budgets the raw weights give noisy translations. Warm-up, then a cosine decay of the rate.
net = UNet(UNetConfig.preset("tiny", image_size=SIZE, num_classes=len(classes)))  # eps-prediction
ema = copy.deepcopy(net).requires_grad_(False).eval()
opt = torch.optim.AdamW(net.parameters(), lr=LR, weight_decay=0.0)
print(f"training {sum(p.numel() for p in net.parameters()):,} parameters for {STEPS} steps")
losses, start = [], time.perf_counter()
for step in range(STEPS):
    idx = torch.randint(len(ds), (BATCH,))
    x0 = data.augment(ds.images[idx])  # flips and rotations: cells have no orientation
    y = label_dropout(ds.labels[idx], P_UNCOND, net.null_label)
    lr = LR * min(1, (step + 1) / 100) * (0.55 + 0.45 * math.cos(math.pi * step / STEPS))
    for group in opt.param_groups:
        group["lr"] = lr
    loss = diffusion_loss(net, x0, y, alpha)  # eq. 4
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
    opt.step()
    method.update_ema(ema, net, method.ema_decay(step, 0.995))
    losses.append(loss.item())
    if step % 250 == 0 or step == STEPS - 1:
        print(f"step {step:5d}  loss {sum(losses[-50:]) / len(losses[-50:]):.4f}  "
              f"{time.perf_counter() - start:.0f} s")
plots.loss_curves([{"step": s + 50, "eq. 4 loss (mean of 50 steps)": sum(losses[s:s + 50]) / 50}
                   for s in range(0, STEPS - 49, 50)], ["eq. 4 loss (mean of 50 steps)"],
                  args.out / "loss.png")

# %% 5. Translate 8 held-out DMSO fields to Latrunculin B: invert under DMSO (eq. 6), sample the
# latent under Lat B (eq. 5). truth[k, i] is field i rendered under class k (same cells, same seed).
truth = data.synthetic_truth(n_per_class=8, image_size=SIZE, seed=1, compounds=["latrunculin_b"])
x, x_true = truth[0], truth[-1]  # DMSO inputs; the same fields at 10 uM
dmso, latb = torch.zeros(8, dtype=torch.long), torch.ones(8, dtype=torch.long)
z = ddim.invert(ema, x, dmso, alpha, 50)  # eq. 6
x_rec, x_lat = ddim.sample(ema, z, dmso, alpha, 50), ddim.sample(ema, z, latb, alpha, 50)  # eq. 5


def psnr(a, b):
    """dB on [0, 1] (images in [-1, 1]), the mean over images."""
    return (-10 * torch.log10(((a.clamp(-1, 1) - b) / 2).pow(2).flatten(1).mean(1))).mean().item()


def actin(images):
    return ((images[:, 0] + 1) / 2).mean().item()  # red channel, in [0, 1]


print(f"reconstruction {psnr(x_rec, x):.1f} dB; translation to the truth {psnr(x_lat, x_true):.1f} "
      f"dB (doing nothing: {psnr(x, x_true):.1f} dB); mean actin {actin(x):.3f} -> "
      f"{actin(x_lat):.3f} (truth {actin(x_true):.3f})")
plots.translation_figure(x, {"translated to Lat B 10 uM": x_lat, "truth": x_true},
                         args.out / "trained_translation.png", "your model: DMSO -> Lat B", n=4)

# %% 6. Samples from pure noise, per class: a small model's samples are poor long before its
# translations are (the inverted latent carries the image; the label only the change).
noise = torch.randn(8, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
samples = ddim.sample(ema, noise, torch.tensor([0] * 4 + [1] * 4), alpha, 50, clip=True)
plots.image_rows({"samples from noise: DMSO": samples[:4], "Lat B 10 uM": samples[4:]},
                 args.out / "samples_from_noise.png", k=4)
print(f"lab2 done: {time.perf_counter() - start:.0f} s of training and translating; figures in "
      f"{args.out}")
