"""The grader: runs a lab's checks against your functions and says which failed and why.

    python course/check.py lab1              # your functions, in course/lab1_closed_form.py
    python course/check.py lab1 --solution   # the reference answers, in course/solutions/

It reads only the imports and function definitions of your lab script (the rest does not run), so
a function must get everything it uses from its arguments or from an import. Each check compares
with an answer written independently (the project's ddim.py, a closed form) on tiny tensors: the
whole grader runs in seconds.
"""
import argparse
import ast
import importlib
import math
import sys
import types

import torch

import common
import ddim
from common import Blank

CHECKS = {lab: [] for lab in common.LABS}


def check(lab, blank):
    """Register a check of `blank` (a function of `lab`); its docstring's first line says what."""
    def register(fn):
        CHECKS[lab].append((blank, fn))
        return fn
    return register


def functions(lab, solution=False):
    """The lab's functions: the reference answers, or the imports and function definitions of the
    lab script, run without the rest of it."""
    if solution:
        return importlib.import_module(f"solutions.{common.LABS[lab]}")
    path = common.COURSE / f"{common.LABS[lab]}.py"
    tree = ast.parse(path.read_text(), str(path))
    tree.body = [node for node in tree.body
                 if isinstance(node, (ast.Import, ast.ImportFrom, ast.FunctionDef))]
    namespace = {"__name__": f"course_{lab}"}
    exec(compile(tree, str(path), "exec"), namespace)
    return types.SimpleNamespace(**namespace)


def first_line(error):
    return (str(error).strip().splitlines() or [""])[0]


def run(lab, solution=False, show=print):
    """Run every check of the lab, one line each, then a summary; True when all pass."""
    try:
        f = functions(lab, solution)
    except Exception as e:  # the lab file does not even load: say where
        where = f" (line {e.lineno})" if isinstance(e, SyntaxError) else ""
        show(f"{lab}: course/{common.LABS[lab]}.py does not load{where}: {type(e).__name__}: "
             f"{first_line(e)}")
        return False
    passed = 0
    for blank, fn in CHECKS[lab]:
        what = fn.__doc__.strip().splitlines()[0]
        try:
            fn(f)
            passed += 1
            show(f"PASS  {blank}: {what}")
        except Blank:
            show(f"FAIL  {blank}: {what}: not written yet (it raises Blank)")
        except AssertionError as e:
            show(f"FAIL  {blank}: {what}: {e}")
        except Exception as e:  # a bug in the student's function: its type and first line
            show(f"FAIL  {blank}: {what}: {type(e).__name__}: {first_line(e)}")
    n = len(CHECKS[lab])
    who = "the reference answers" if solution else f"course/{common.LABS[lab]}.py"
    show(f"{lab}: {passed} of {n} checks passed ({who})")
    return passed == n


def close(got, want, what, tol=1e-9):
    """Assert got == want up to tol relative to want's scale, saying where and by how much not."""
    assert torch.is_tensor(got), f"{what}: returned {type(got).__name__}, expected a tensor"
    assert got.shape == want.shape, \
        f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    err = (got - want).abs().max().item()
    assert err <= tol * (1 + want.abs().max().item()), f"{what}: off by up to {err:.3g}"


def randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)

# -----------------------------------------------------------------------------
# lab 1: the analytic eps, eq. 5, eq. 6, and the closed-form translation


PAIRS = [(0.3, 0.6), (4e-5, 0.01), (0.9, 0.9999), (0.5, 1.0)]  # (noisier level, cleaner level)


def oracle_eps(x, a, mu, sigma):
    """E[eps | x_t] for a class N(mu, sigma^2 I), written as in tests/test_ddim.py."""
    return (1 - a) ** 0.5 * (x - a ** 0.5 * mu) / (a * sigma ** 2 + 1 - a)


@check("lab1", "gaussian_eps")
def check_gaussian_eps(f):
    """E[eps | x_t] of N(mu, sigma^2 I) at three levels"""
    x, mu = randn(2, 3, 4, 4), randn(3, 4, 4, seed=1)
    for a in (0.9999, 0.5, 4e-5):
        close(f.gaussian_eps(x, a, mu, 0.3), oracle_eps(x, a, mu, 0.3),
              f"at a_t = {a} (hint: Cov(eps, x_t) / Var(x_t) * (x_t - E[x_t]))")


@check("lab1", "ddim_step")
def check_eq5(f):
    """eq. 5 against the paper's formula, down to the clean image (a_prev = 1) too"""
    x, eps = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    for a_t, a_prev in PAIRS:
        hint = " (it must return the x_0 the model sees)" if a_prev == 1 else ""
        close(f.ddim_step(x, eps, a_t, a_prev), ddim.ddim_step(x, eps, a_t, a_prev),
              f"from a_t = {a_t:g} to a_prev = {a_prev:g}{hint}")


@check("lab1", "ddim_invert_step")
def check_eq6(f):
    """eq. 6 against the paper's formula, from the clean image (a_t = 1) too"""
    x, eps = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    for a_next, a_t in PAIRS:
        close(f.ddim_invert_step(x, eps, a_t, a_next), ddim.ddim_invert_step(x, eps, a_t, a_next),
              f"from a_t = {a_t:g} to a_next = {a_next:g}")


@check("lab1", "ddim_step, ddim_invert_step")
def check_inverses(f):
    """eq. 5 undoes eq. 6 when both use the same eps"""
    x, eps = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    for a_noisy, a_clean in PAIRS:
        up = f.ddim_invert_step(x, eps, a_clean, a_noisy)
        close(f.ddim_step(up, eps, a_noisy, a_clean), x,
              f"eq. 5 after eq. 6 between levels {a_clean:g} and {a_noisy:g}", tol=1e-7)


@check("lab1", "all three")
def check_translation(f):
    """invert under A, sample under B (1000 steps) is mu_B + sigma_B / sigma_A (x - mu_A)"""
    mu, sigma = {0: randn(3, 8, 8, seed=2) / 3, 1: randn(3, 8, 8, seed=3) / 3}, {0: 0.3, 1: 0.5}
    x = mu[0] + sigma[0] * randn(2, 3, 8, 8, seed=4)
    alpha = ddim.make_schedule("linear")
    lv = [1.0] + alpha.tolist()
    out = x
    for i in range(len(lv) - 1):  # eq. 6 under A, the first step with eps at lv[1]
        eps = f.gaussian_eps(out, lv[max(i, 1)], mu[0], sigma[0])
        out = f.ddim_invert_step(out, eps, lv[i], lv[i + 1])
    for i in range(len(lv) - 1, 0, -1):  # eq. 5 under B
        out = f.ddim_step(out, f.gaussian_eps(out, lv[i], mu[1], sigma[1]), lv[i], lv[i - 1])
    want = mu[1] + sigma[1] / sigma[0] * (x - mu[0])
    err = (out - want).pow(2).mean().sqrt() / (want - x).pow(2).mean().sqrt()
    assert err < 0.03, (f"off by {err:.3g} times the size of the change (expected < 0.03; the "
                        "checks above say which function)")


# -----------------------------------------------------------------------------
# lab 2: eq. 4 and label dropout


class KnowsX0:
    """An eps-model that knows the clean images, so it returns the true eps exactly when x_t was
    made with alpha[t] of the t it is given; it records the t and y it sees."""

    def __init__(self, x0, alpha):
        self.x0, self.alpha, self.seen = x0, alpha, []

    def __call__(self, x_t, t, y):
        self.seen.append((t, y))
        a = self.alpha[t].view(-1, 1, 1, 1).to(x_t.dtype)
        return (x_t - a.sqrt() * self.x0) / (1 - a).sqrt()


def toy_batch(n=4000):
    """n float32 images (1, 2, 2) and labels in {0, 1}, as a training batch."""
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 1, 2, 2, generator=g), torch.randint(0, 2, (n,), generator=g)


@check("lab2", "add_noise")
def check_add_noise(f):
    """x_t = sqrt(a) x_0 + sqrt(1 - a) eps, one level per image"""
    x0, eps = randn(3, 2, 4, 4), randn(3, 2, 4, 4, seed=1)
    a = torch.tensor([0.9999, 0.5, 4e-5], dtype=torch.float64).view(3, 1, 1, 1)
    close(f.add_noise(x0, eps, a), a.sqrt() * x0 + (1 - a).sqrt() * eps,
          "at levels 0.9999, 0.5, 4e-5")


@check("lab2", "diffusion_loss")
def check_loss_targets_eps(f):
    """eq. 4 is 0 for a model that returns the true eps, 1 for a model that returns 0"""
    alpha = ddim.make_schedule("linear")
    x0, y = toy_batch()
    loss = f.diffusion_loss(KnowsX0(x0, alpha), x0, y, alpha)
    assert torch.is_tensor(loss) and loss.dim() == 0, "return the loss as a 0-d tensor (a mean)"
    assert loss.item() < 1e-6, (f"{loss.item():.3g} for a model that returns the true eps: build "
                                "x_t with alpha[t] of the t you give the model, and compare with "
                                "the same eps")
    zero = f.diffusion_loss(lambda x, t, y: torch.zeros_like(x), x0, y, alpha).item()
    assert abs(zero - 1) < 0.05, (f"{zero:.3f} for a model that returns 0, expected E[eps^2] = 1: "
                                  "draw eps ~ N(0, I) and average the squared error")


@check("lab2", "diffusion_loss")
def check_loss_timesteps(f):
    """eq. 4 draws one t per image uniformly from 0..T-1 and passes the labels through"""
    alpha = ddim.make_schedule("linear")
    x0, y = toy_batch()
    model = KnowsX0(x0, alpha)
    f.diffusion_loss(model, x0, y, alpha)
    t, seen_y = model.seen[0]
    assert t.shape == (len(x0),) and t.dtype == torch.long, \
        f"t of shape {tuple(t.shape)} and dtype {t.dtype}: expected one long integer per image"
    assert t.min() < 20 and t.max() > len(alpha) - 20 and abs(t.float().mean() - 500) < 30, \
        (f"t from {t.min()} to {t.max()}, mean {t.float().mean():.0f}: expected uniform over "
         f"0..{len(alpha) - 1}")
    assert torch.equal(seen_y, y), "the model must get the labels y as given"


@check("lab2", "diffusion_loss")
def check_loss_gradient(f):
    """eq. 4 backpropagates into the network"""
    net = torch.nn.Conv2d(1, 1, 1)
    x0, y = toy_batch(64)
    f.diffusion_loss(lambda x, t, y: net(x), x0, y, ddim.make_schedule("linear")).backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0, \
        "no gradient reached the model's weights (no .detach() or torch.no_grad() in the loss)"


@check("lab2", "label_dropout")
def check_label_dropout(f):
    """each label becomes the null class with probability p, the others stay"""
    y = torch.randint(0, 5, (20000,), generator=torch.Generator().manual_seed(0))
    before = y.clone()
    assert torch.equal(f.label_dropout(y, 0.0, 9), y), "p = 0 must keep every label"
    assert (f.label_dropout(y, 1.0, 9) == 9).all(), "p = 1 must drop every label"
    out = f.label_dropout(y, 0.3, 9)
    assert torch.equal(y, before), "y was changed in place: return a new tensor"
    frac = (out == 9).float().mean().item()
    assert abs(frac - 0.3) < 0.02, f"p = 0.3 dropped {frac:.1%} of the labels"
    kept = out != 9
    assert torch.equal(out[kept], y[kept]), "a label that is not dropped must stay as it was"


# -----------------------------------------------------------------------------
# lab 3: the predicted clean image, exact inversion, DDIM's eta, PSNR


@check("lab3", "predicted_x0")
def check_predicted_x0(f):
    """x_0 = (x_t - sqrt(1 - a_t) eps) / sqrt(a_t), the clean image at a_t = 1"""
    x, eps = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    for a in (0.9999, 0.5, 4e-5, 1.0):
        close(f.predicted_x0(x, eps, a), ddim.x0_from_eps(x, eps, a), f"at a_t = {a:g}")


@check("lab3", "invert_step_exact")
def check_exact_inversion(f):
    """iters = 0 is eq. 6; 30 iterations give the x_next that eq. 5 maps back onto x"""
    mu, sigma = randn(3, 4, 4, seed=2) / 3, 0.4
    x = mu + sigma * randn(2, 3, 4, 4)
    for a_t, a_next in ((1.0, 0.95), (0.6, 0.5), (0.02, 0.015)):  # steps where iterating converges
        eps_next = lambda v, a_next=a_next: oracle_eps(v, a_next, mu, sigma)  # noqa: E731
        eps = oracle_eps(x, a_t if a_t < 1 else a_next, mu, sigma)  # the clean image: eps at a_next
        close(f.invert_step_exact(x, eps, a_t, a_next, eps_next, 0),
              ddim.ddim_invert_step(x, eps, a_t, a_next), f"iters = 0 from {a_t:g} to {a_next:g}")
        x_next = f.invert_step_exact(x, eps, a_t, a_next, eps_next, 30)
        close(ddim.ddim_step(x_next, eps_next(x_next), a_next, a_t), x,
              f"eq. 5 from your x_next back to level {a_t:g} (30 iterations from {a_t:g} to "
              f"{a_next:g}): re-evaluate eps_next at the latest x_next, starting from x each time",
              tol=1e-8)


@check("lab3", "ddim_step_eta")
def check_eta(f):
    """eta = 0 is eq. 5 (the noise unused); eta = 0.5 and 1 follow Song et al.'s eq. 12 and 16"""
    x, eps, noise = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1), randn(2, 3, 4, 4, seed=2)
    for a_t, a_prev in PAIRS:
        close(f.ddim_step_eta(x, eps, a_t, a_prev, 0.0, noise), ddim.ddim_step(x, eps, a_t, a_prev),
              f"eta = 0 from {a_t:g} to {a_prev:g}")
        for eta in (0.5, 1.0):
            s = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
            want = (math.sqrt(a_prev) * ddim.x0_from_eps(x, eps, a_t)
                    + math.sqrt(1 - a_prev - s ** 2) * eps + s * noise)
            close(f.ddim_step_eta(x, eps, a_t, a_prev, eta, noise), want,
                  f"eta = {eta:g} from {a_t:g} to {a_prev:g}")


@check("lab3", "psnr")
def check_psnr(f):
    """per-image PSNR on [0, 1]: an error of 0.1 there is 20 dB, the reconstruction clamped first"""
    x = torch.zeros(3, 3, 4, 4, dtype=torch.float64)
    x[1], x[2] = 0.5, 0.8
    rec = x + torch.tensor([0.2, -0.2, 0.7], dtype=torch.float64).view(3, 1, 1, 1)  # 0.8 + 0.7 -> 1
    got = f.psnr(x, rec)
    assert torch.is_tensor(got) and got.shape == (3,), "return one PSNR per image, shape (N,)"
    close(got, torch.full((3,), 20.0, dtype=torch.float64),
          "0.2 apart in [-1, 1] (0.1 in [0, 1]; the third clamped to 1) must be 20 dB", tol=1e-6)


# -----------------------------------------------------------------------------
# lab 4: PhenDiff's translation and classifier-free guidance


class Oracle:
    """The exact eps-model (x_t, t, y) of three Gaussian classes N(mu_y, sigma_y^2 I), as
    tests/test_ddim.py's GaussianOracle; it records the labels of every call."""

    def __init__(self, alpha):
        self.mu, self.sigma = randn(3, 3, 4, 4, seed=5) / 3, torch.tensor([0.3, 0.5, 0.8])
        self.alpha, self.labels = alpha, []

    def __call__(self, x, t, y):
        self.labels.append(y.tolist())
        a = self.alpha[t].view(-1, 1, 1, 1)
        return oracle_eps(x, a, self.mu[y], self.sigma[y].view(-1, 1, 1, 1).double())


@check("lab4", "translate_many")
def check_translate_many(f):
    """invert once under the source (eq. 6), sample under each target (eq. 5), as phendiff.py"""
    import phendiff
    alpha = ddim.make_schedule("linear")
    oracle = Oracle(alpha)
    x = oracle.mu[0] + oracle.sigma[0].item() * randn(2, 3, 4, 4, seed=6)
    out = f.translate_many(oracle, x, 0, [1, 2, 0], alpha, 20)
    assert torch.is_tensor(out) and out.shape == (3, *x.shape), \
        f"shape {tuple(getattr(out, 'shape', ()))}, expected (targets, B, C, H, W) {(3, *x.shape)}"
    inversions = sum(labels == [0, 0] for labels in oracle.labels) - 20  # sampling under 0: 20
    assert inversions == 20, (f"{inversions} model calls under the source label for 20 steps of "
                              "inversion: invert once, then sample the same latent per target")
    close(out, phendiff.translate_many(oracle, x, 0, [1, 2, 0], alpha, 20),
          "against phendiff.translate_many", tol=1e-7)


@check("lab4", "guided_eps")
def check_guided_eps(f):
    """(1 + w) eps_y - w eps_null; w = 0 gives eps_y"""
    eps_y, eps_null = randn(2, 3, 4, 4), randn(2, 3, 4, 4, seed=1)
    close(f.guided_eps(eps_y, eps_null, 0.0), eps_y, "w = 0 (the paper)")
    for w in (0.5, 3.0):
        close(f.guided_eps(eps_y, eps_null, w), (1 + w) * eps_y - w * eps_null, f"w = {w:g}")


def get_parser():
    p = argparse.ArgumentParser(prog="course/check.py", description=__doc__.split("\n\n")[0])
    p.add_argument("lab", choices=list(common.LABS))
    p.add_argument("--solution", action="store_true", help="grade the reference answers instead")
    return p


def main(argv=None):
    args = get_parser().parse_args(argv)
    torch.set_num_threads(1)  # tiny tensors: threads only spin
    return 0 if run(args.lab, args.solution) else 1


if __name__ == "__main__":
    sys.exit(main())
