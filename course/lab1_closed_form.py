"""Lab 1: DDIM inversion and translation in closed form, with no network.

If every class y were a Gaussian N(mu_y, sigma_y^2 I), the best eps-model would be known exactly,
and PhenDiff's translation, invert under A (eq. 6) then sample under B (eq. 5), would have an
exact answer: x -> mu_B + (sigma_B / sigma_A)(x - mu_A). You write eq. 5 and eq. 6 (and that eps),
then watch your translation of a real cell image reach the answer as the number of DDIM steps
grows, and the round trip become exact with fixed-point inversion.

    python course/lab1_closed_form.py --out runs/course/lab1    # your functions (stops at a blank)
    python course/check.py lab1                                 # grade them
"""
# %% 0. Setup. `common` puts the repository on sys.path and reads --out and --solution.
import math  # noqa: F401  (for your blanks: math.sqrt)

import torch

import common
import data
import ddim
from common import Blank
from evaluation import plots

args = common.start("lab1")

# %% 1. The noise schedule in the paper's notation.
# The paper's alpha_t = prod_{i<=t} (1 - beta_i) for t = 1..T. The code counts timesteps from 0, so
# the paper's alpha_t is alpha[t - 1] here, and the clean image sits at alpha = 1 (the paper's
# alpha_0). The signal-to-noise ratio of x_t = sqrt(alpha_t) x_0 + sqrt(1 - alpha_t) eps is
# alpha_t / (1 - alpha_t).
alpha = ddim.make_schedule("linear")  # (1000,) float64, the paper's schedule
t = torch.arange(1, len(alpha) + 1)  # the paper's t
schedules = {name: ddim.make_schedule(name) for name in ddim.SCHEDULES}
plots.curves([dict(lines={k: (t, a) for k, a in schedules.items()}, xlabel="t (the paper's)",
                   ylabel="alpha_t", title="alpha_t = prod (1 - beta_i)"),
              dict(lines={k: (t, a / (1 - a)) for k, a in schedules.items()}, yscale="log",
                   xlabel="t (the paper's)", ylabel="alpha_t / (1 - alpha_t)",
                   title="signal-to-noise ratio")], args.out / "schedule.png")
print(f"linear schedule: alpha_1 = alpha[0] = {alpha[0]:.6f} (= 1 - beta_1), "
      f"alpha_T = alpha[-1] = {alpha[-1]:.2e}")

# %% 2. Two Gaussian classes fitted to cell images: DMSO (A) and the top Latrunculin B dose (B).
# mu_y is a class's mean image, sigma_y one number: the spread of its pixels around that mean.
ds = data.synthetic_dataset(n_per_class=64, image_size=32, seed=0, compounds=["latrunculin_b"])
A, B = ds.classes.index("DMSO"), ds.classes.index("latrunculin_b_10uM")
images = ds.images.double()
mu = {y: images[ds.labels == y].mean(0) for y in (A, B)}  # (3, 32, 32) each
sigma = {y: (images[ds.labels == y] - mu[y]).std().item() for y in (A, B)}
held_out = data.synthetic_dataset(n_per_class=8, image_size=32, seed=1, compounds=["latrunculin_b"])
x = held_out.images[held_out.labels == A].double()  # (8, 3, 32, 32): 8 new DMSO images
print(f"sigma_A = {sigma[A]:.3f} (DMSO), sigma_B = {sigma[B]:.3f} (Latrunculin B 10 uM)")

# %% 3. Your blanks. Levels a_* are floats: the paper's alpha at that step (1 for the clean image).


def gaussian_eps(x_t, a_t, mu, sigma):
    """The exact eps-model of a class N(mu, sigma^2 I) at level a_t: E[eps | x_t] when
    x_t = sqrt(a_t) x_0 + sqrt(1 - a_t) eps. Hint: x_t and eps are jointly Gaussian; x_t has mean
    sqrt(a_t) mu and variance a_t sigma^2 + 1 - a_t per pixel, its covariance with eps is
    sqrt(1 - a_t)."""
    raise Blank("gaussian_eps (the analytic eps)")


def ddim_step(x_t, eps, a_t, a_prev):
    """eq. 5, one DDIM step towards the data: x_{t-1} = sqrt(a_prev / a_t) x_t +
    sqrt(a_prev) gamma_t eps, gamma_t = sqrt(1 / a_prev - 1) - sqrt(1 / a_t - 1). With a_prev = 1
    it returns the clean image the model sees in x_t."""
    raise Blank("ddim_step (eq. 5)")


def ddim_invert_step(x_t, eps, a_t, a_next):
    """eq. 6, one DDIM step towards the noise: x_{t+1} = sqrt(a_next / a_t) x_t + sqrt(a_next)
    (sqrt(1 / a_next - 1) - sqrt(1 / a_t - 1)) eps: eq. 5 run backwards, with eps at x_t standing in
    for the unknown eps at x_{t+1}."""
    raise Blank("ddim_invert_step (eq. 6)")


if args.solution:  # the reference answers instead: course/solutions/lab1_closed_form.py
    from solutions.lab1_closed_form import ddim_invert_step, ddim_step, gaussian_eps

# %% 4. The loops (read them: their end points are the classic bug). An eps function takes
# (x, level); levels run [1, alpha at t_1, ..., alpha at t_n = T - 1], clean image first.


def levels(num_steps):
    return [1.0] + alpha[ddim.timesteps(num_steps, len(alpha))].tolist()


def invert(eps, x, lv, fixed_point_iters=0):
    """Clean image -> latent, eq. 6 at every step. The clean image has no level of its own to
    evaluate eps at, so the first step uses eps at lv[1] (as ddim.invert). fixed_point_iters = k
    (exact inversion) re-evaluates eps where the step lands, x_next <- eq6(x, eps(x_next)), k times:
    the x_next that eq. 5 maps back onto x."""
    for i in range(len(lv) - 1):
        x_next = ddim_invert_step(x, eps(x, lv[max(i, 1)]), lv[i], lv[i + 1])  # eq. 6
        for _ in range(fixed_point_iters):
            x_next = ddim_invert_step(x, eps(x_next, lv[i + 1]), lv[i], lv[i + 1])  # eq. 6
        x = x_next
    return x


def sample(eps, z, lv):
    """Latent -> clean image, eq. 5 at every step, the last one to level 1."""
    for i in range(len(lv) - 1, 0, -1):
        z = ddim_step(z, eps(z, lv[i]), lv[i], lv[i - 1])  # eq. 5
    return z


def eps_of(y):
    return lambda x, a: gaussian_eps(x, a, mu[y], sigma[y])


def rms(v):
    return v.pow(2).mean().sqrt().item()


# %% 5. Translate 8 real DMSO images to Latrunculin B in 50 steps, against the exact answer.
closed = mu[B] + sigma[B] / sigma[A] * (x - mu[A])  # what invert-then-sample converges to
z = invert(eps_of(A), x, levels(50))
x_B = sample(eps_of(B), z, levels(50))
print(f"50 steps: error {rms(x_B - closed) / rms(closed - x):.1%} of the change "
      f"(rms {rms(x_B - closed):.4f}); the latent has std {z.std():.2f} and is nearly "
      f"(x - mu_A) / sigma_A (rms difference {rms(z - (x - mu[A]) / sigma[A]):.3f}): "
      "it keeps the cells' layout")
plots.image_rows({"input x (DMSO)": x, "latent z / 3 (eq. 6)": z / 3,
                  "translation (eq. 5, under B)": x_B,
                  "exact: mu_B + sigma_B/sigma_A (x - mu_A)": closed,
                  "error x 10": 10 * (x_B - closed)}, args.out / "gaussian_translation.png", k=4)

# %% 6. The error against the number of steps: plain eq. 6 against exact inversion (10 iterations).
# Round trip (invert under A, sample under A) should give x back; translation the closed form.
steps = [2, 5, 10, 20, 50, 100, 200, 500, 1000]
errors = {}
for k in (0, 10):
    for n in steps:
        z = invert(eps_of(A), x, levels(n), fixed_point_iters=k)
        errors[k, n] = (rms(sample(eps_of(A), z, levels(n)) - x) / rms(x),
                        rms(sample(eps_of(B), z, levels(n)) - closed) / rms(closed - x))
    print(f"fixed-point iterations {k:2d}: " + ", ".join(
        f"{n} steps {errors[k, n][0]:.0e} / {errors[k, n][1]:.1%}" for n in steps)
        + "  (round trip / translation)")
label = {0: "plain eq. 6 (the paper)", 10: "exact inversion (10 fixed-point iterations)"}
plots.curves([dict(lines={label[k]: (steps, [max(errors[k, n][j], 1e-16) for n in steps])
                          for k in (0, 10)}, xscale="log", xticks=[2, 10, 100, 1000], yscale="log",
                   xlabel="DDIM steps each way", ylabel=ylabel, title=title)
              for j, (title, ylabel) in enumerate([
                  ("round trip A -> A", "RMS(x' - x) / RMS(x)"),
                  ("translation A -> B", "RMS(x' - exact) / RMS(exact - x)")])],
             args.out / "gaussian_error_vs_steps.png")
print(f"lab1 done: figures in {args.out}")
