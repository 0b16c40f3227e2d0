"""Lab 4: translation. A dose series with difference maps, then classifier-free guidance against
faithfulness to the input.

Part 1 translates held-out DMSO fields to every Latrunculin B dose with the demo model
(checkpoints/demo.pt) and compares with the truth: the benchmark renders the same fields under each
dose. Part 2 needs a model trained with label dropout, which guidance subtracts: the demo model was
not and refuses guidance; checkpoints/eps_lat9.pt (the paper's eps-prediction, p_uncond 0.1, DMSO
and the 8 Lat B doses) accepts it. You write PhenDiff's translation and the guided eps.

    python course/lab4_translation.py --out runs/course/lab4    # your functions (stops at a blank)
    python course/check.py lab4                                 # grade them
"""
# %% 0. Setup
import time

import torch

import common
import data
import ddim  # noqa: F401  (for your translate_many: ddim.invert, ddim.sample)
import files
import method
from common import Blank
from evaluation import plots

args = common.start("lab4")
start = time.perf_counter()
DEMO, EPS = common.ROOT / "checkpoints" / "demo.pt", common.ROOT / "checkpoints" / "eps_lat9.pt"
STEPS = 50  # DDIM steps each way
# truth[k, i]: held-out field i (seed 1; the models saw seed 0) rendered under class k = DMSO, then
# the Lat B doses, lowest first
truth = data.synthetic_truth(n_per_class=4, image_size=32, seed=1, compounds=["latrunculin_b"])
x = truth[0]  # (4, 3, 32, 32): the DMSO inputs

# %% 1. Your blanks. Labels are class indices (ints).


def translate_many(model, x, source, targets, alpha, num_steps):
    """PhenDiff: invert x under the source label (eq. 6), once, then sample that one latent under
    each target label (eq. 5); ddim.invert and ddim.sample are the loops. Returns
    (len(targets), B, C, H, W)."""
    raise Blank("translate_many (eq. 6, then eq. 5)")


def guided_eps(eps_y, eps_null, w):
    """Classifier-free guidance as the code writes it: (1 + w) eps(x_t, t, y) - w eps(x_t, t, null).
    w = 0 is the paper; w > 0 pushes away from the unconditional eps, towards class y."""
    raise Blank("guided_eps (classifier-free guidance)")


if args.solution:  # the reference answers instead: course/solutions/lab4_translation.py
    from solutions.lab4_translation import guided_eps, translate_many


def psnr(a, b):
    """Per-image dB on [0, 1] (images in [-1, 1]), as in lab 3."""
    return -10 * torch.log10(((a.clamp(-1, 1) - b) / 2).pow(2).flatten(1).mean(1))


def actin(images):
    """Mean actin (red channel) intensity per image, in [0, 1]: what Latrunculin B removes."""
    return ((images[..., 0, :, :] + 1) / 2).mean((-1, -2))


# %% 2. A dose series (the paper's Fig. 3): every DMSO field to all 8 doses, one inversion each.
demo, ckpt = method.load_method(DEMO)
classes = ckpt["classes"]
doses = files.compounds(classes)["latrunculin_b"]  # class names, lowest dose first
conc = [files.parse_class(c)[1] for c in doses]
out = translate_many(demo.net(), x, classes.index("DMSO"), [classes.index(c) for c in doses],
                     demo.alpha, STEPS)  # (8, 4, 3, 32, 32)
plots.series_differences(x[:2], [f"{c:g} uM" for c in conc], out[:, :2],
                         args.out / "dose_series.png",
                         "demo model: one DMSO field to every Latrunculin B dose")
plots.curves([dict(lines={"translated": (conc, actin(out).mean(1)),
                          "truth (the same fields)": (conc, actin(truth[1:]).mean(1))},
                   xscale="log", xlabel="Latrunculin B (uM)", ylabel="mean actin",
                   title="the dose-response of 4 fields")], args.out / "dose_response.png")
print("mean actin by dose, translated (truth): " + ", ".join(
    f"{c:g} uM {a:.3f} ({t:.3f})" for c, a, t in zip(conc, actin(out).mean(1),
                                                     actin(truth[1:]).mean(1))))

# %% 3. Guidance needs the null label, learnt only with label dropout (lab 2's label_dropout).
try:
    method.load_method(DEMO, guidance=2.0)
except ValueError as e:
    print(f"demo.pt refuses guidance: {e}")
if not EPS.exists():
    raise SystemExit(f"lab4: part 2 needs {EPS.relative_to(common.ROOT)}, which is missing: "
                     "checkpoints/README.md says how it is made")
model, eps_ckpt = method.load_method(EPS, guidance=2.0)  # accepted: p_uncond 0.1
net, alpha = model.net(), model.alpha
print(f"eps_lat9.pt accepts guidance: {eps_ckpt['config']['prediction']}-prediction, p_uncond "
      f"{eps_ckpt['config']['p_uncond']}, step {eps_ckpt.get('step')}")


class Guided:
    """An eps-model (x_t, t, y) -> eps made of the network run with y and with the null label,
    mixed by your guided_eps: ddim.invert and ddim.sample take it like any eps-model."""

    def __init__(self, net, w):
        self.net, self.w = net, w

    def __call__(self, x_t, t, y):
        null = torch.full_like(y, self.net.null_label)
        eps_y, eps_null = self.net(torch.cat([x_t, x_t]), torch.cat([t, t]),
                                   torch.cat([y, null])).chunk(2)
        return guided_eps(eps_y, eps_null, self.w)


# %% 4. Guidance scale against faithfulness: DMSO -> Lat B 10 uM at w = 0 (the paper) ... 4,
# guided in both directions (as phendiff.py translate --guidance). Faithful: close to the input
# where the drug does not act, close to the truth; the phenotype: how far actin moves, as a
# fraction of the true change (1 = as far as the truth).
ws, top = [0.0, 1.0, 2.0, 4.0], eps_ckpt["classes"].index("latrunculin_b_10uM")
x_true = truth[-1]
guided = {w: translate_many(Guided(net, w), x, 0, [top], alpha, STEPS)[0] for w in ws}
moved = {w: ((actin(v) - actin(x)).mean() / (actin(x_true) - actin(x)).mean()).item()
         for w, v in guided.items()}
for w, v in guided.items():
    print(f"w = {w:g}: PSNR to the input {psnr(v, x).mean():.1f} dB, to the truth "
          f"{psnr(v, x_true).mean():.1f} dB; actin moved {moved[w]:.0%} of the true change")
print(f"doing nothing: {psnr(x, x_true).mean():.1f} dB to the truth")
plots.image_rows({"input (DMSO)": x, **{f"w = {w:g}": v for w, v in guided.items()},
                  "truth (Lat B 10 uM)": x_true}, args.out / "guidance_strip.png", k=4)
plots.curves([dict(lines={"to the input": (ws, [psnr(guided[w], x).mean() for w in ws]),
                          "to the truth": (ws, [psnr(guided[w], x_true).mean() for w in ws])},
                   xlabel="guidance scale w", ylabel="PSNR (dB)", title="faithfulness"),
              dict(lines={"actin change / true change": (ws, [moved[w] for w in ws])},
                   xlabel="guidance scale w", ylabel="fraction", title="the phenotype")],
             args.out / "guidance_tradeoff.png")
print(f"lab4 done in {time.perf_counter() - start:.0f} s: figures in {args.out}")
