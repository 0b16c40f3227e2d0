"""ddim.py against formulas written out here and against an exact Gaussian oracle."""
import math

import pytest
import torch

import ddim

ALPHA = ddim.make_schedule("linear")


class GaussianOracle:
    """The optimal eps-model when class y is N(mu[y], sigma[y]^2 I):
    eps*(x_t, t, y) = sqrt(1 - a_t) (x_t - sqrt(a_t) mu_y) / (a_t sigma_y^2 + 1 - a_t)."""

    def __init__(self, mu, sigma, alpha=ALPHA):
        self.mu, self.sigma, self.alpha = mu, sigma, alpha
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append((x.shape[0], t.tolist(), y.tolist()))
        a = self.alpha[t].view(-1, 1, 1, 1).to(x.dtype)
        s2 = self.sigma[y].view(-1, 1, 1, 1).to(x.dtype) ** 2
        return (1 - a).sqrt() * (x - a.sqrt() * self.mu[y].to(x.dtype)) / (a * s2 + 1 - a)


def image_like_means(size=8):
    """Per-pixel class means that look like images (smooth patterns), three classes."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    mu_a = torch.stack([0.5 * torch.sin(3 * xx), 0.3 * yy, xx * yy])
    mu_b = torch.stack([-0.3 * yy, 0.4 * torch.cos(2 * xx), 0.2 + 0 * xx])
    mu_null = torch.stack([0.1 * xx, -0.2 + 0 * yy, 0.3 * xx * xx])
    return torch.stack([mu_a, mu_b, mu_null])  # (3, C, H, W)


def rms(x):
    return x.pow(2).mean().sqrt().item()


# ------------------------------------------------------------------ schedules and timesteps

def cosine_f(s):  # Nichol & Dhariwal's alpha-bar before normalisation
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


@pytest.mark.parametrize("name,alpha0", [("linear", 1 - 1e-4), ("scaled_linear", 1 - 0.00085),
                                         ("cosine", cosine_f(1 / 1000) / cosine_f(0))])
def test_schedule_end_points_and_monotone(name, alpha0):
    alpha = ddim.make_schedule(name, T=1000)
    assert alpha.shape == (1000,) and alpha.dtype == torch.float64
    assert alpha[0].item() == pytest.approx(alpha0, rel=1e-12)
    assert (alpha[1:] < alpha[:-1]).all()
    assert 0 < alpha[-1].item() < 0.01


def test_linear_schedule_is_product_of_one_minus_beta():
    betas = [1e-4 + (0.02 - 1e-4) * i / 99 for i in range(100)]
    assert (ddim.make_schedule("linear", T=100)[-1].item()
            == pytest.approx(math.prod(1 - b for b in betas), rel=1e-12))


def test_unknown_schedule_lists_choices():
    with pytest.raises(ValueError, match="linear.*scaled_linear.*cosine"):
        ddim.make_schedule("quadratic")


def test_timesteps_trailing_spacing():
    assert torch.equal(ddim.timesteps(1000, 1000), torch.arange(1000))
    ts = ddim.timesteps(20, 1000)
    assert ts.dtype == torch.long and ts[0] == 49 and ts[-1] == 999 and (ts.diff() == 50).all()
    assert ddim.timesteps(3, 10).tolist() == [2, 6, 9]  # round(10/3) - 1, round(20/3) - 1, 10 - 1
    assert ddim.timesteps(1, 1000).tolist() == [999]
    for bad in (0, 1001, 2.5):
        with pytest.raises(ValueError, match="num_steps"):
            ddim.timesteps(bad, 1000)


# ------------------------------------------------------------------ eq. 4, 5, 6

PAIRS = [(0.3, 0.6), (4e-5, 0.01), (0.9, 0.9999), (0.5, 1.0)]  # (noisier level, cleaner level)


def paper_eq5(x, eps, a_t, a_prev):
    return (math.sqrt(a_prev / a_t) * x
            + math.sqrt(a_prev) * (math.sqrt(1 / a_prev - 1) - math.sqrt(1 / a_t - 1)) * eps)


@pytest.mark.parametrize("a_t,a_prev", PAIRS)
def test_eq5_matches_paper_formula(a_t, a_prev):
    g = torch.Generator().manual_seed(0)
    x, eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).unbind()
    out = ddim.ddim_step(x, eps, torch.tensor(a_t, dtype=torch.float64), a_prev)
    torch.testing.assert_close(out, paper_eq5(x, eps, a_t, a_prev), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a_next,a_t", PAIRS)
def test_eq6_matches_paper_formula(a_next, a_t):
    g = torch.Generator().manual_seed(1)
    x, eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64).unbind()
    expected = (math.sqrt(a_next / a_t) * x
                + math.sqrt(a_next) * (math.sqrt(1 / a_next - 1) - math.sqrt(1 / a_t - 1)) * eps)
    torch.testing.assert_close(ddim.ddim_invert_step(x, eps, a_t, a_next), expected,
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a_noisy,a_clean", PAIRS)
def test_eq5_and_eq6_are_mutual_inverses_for_fixed_eps(a_noisy, a_clean):
    g = torch.Generator().manual_seed(2)
    x, eps = torch.randn(2, 3, 4, 4, generator=g).unbind()
    up = ddim.ddim_invert_step(x, eps, a_clean, a_noisy)
    assert up.dtype == torch.float32
    torch.testing.assert_close(ddim.ddim_step(up, eps, a_noisy, a_clean), x, rtol=0, atol=1e-4)


def test_loss_eq4_noises_with_the_schedule_and_targets_eps():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 1, 2, 2, generator=g)
    seen = []

    def cheat(x_t, t, y):  # recovers eps exactly iff x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps
        seen.append(t)
        a = ALPHA[t].view(-1, 1, 1, 1).float()
        return (x_t - a.sqrt() * x0) / (1 - a).sqrt()

    y = torch.zeros(4000, dtype=torch.long)
    assert ddim.loss(cheat, x0, y, ALPHA, generator=g).item() < 1e-6
    assert seen[0].min() < 10 and seen[0].max() > 990  # t ~ U[0, T)
    zero_loss = ddim.loss(lambda x, t, y: torch.zeros_like(x), x0, y, ALPHA, generator=g).item()
    assert zero_loss == pytest.approx(1.0, abs=0.05)  # E[eps^2] = 1


# -------------------------------------------------------------- loops: end points and visited pairs

def test_loops_visit_the_documented_timesteps_and_end_at_alpha_1():
    mu, sigma = image_like_means(4), torch.tensor([0.3, 0.5, 1.0])
    oracle = GaussianOracle(mu, sigma)
    x = torch.randn(2, 3, 4, 4, dtype=torch.float64)
    y = torch.zeros(2, dtype=torch.long)
    ddim.sample(oracle, x, y, ALPHA, 4)
    assert [c[1][0] for c in oracle.calls] == [999, 749, 499, 249]
    oracle.calls.clear()
    ddim.invert(oracle, x, y, ALPHA, 4)
    # first step: clean image, eps at t_1
    assert [c[1][0] for c in oracle.calls] == [249, 249, 499, 749]

    # one step each way: sample returns the x0-prediction (alpha = 1),
    # invert goes from alpha = 1 to t = T-1
    a = ALPHA[999].item()
    eps = oracle(x, torch.full((2,), 999), y)
    torch.testing.assert_close(ddim.sample(oracle, x, y, ALPHA, 1),
                               (x - math.sqrt(1 - a) * eps) / math.sqrt(a))
    torch.testing.assert_close(ddim.invert(oracle, x, y, ALPHA, 1),
                               math.sqrt(a) * x + math.sqrt(1 - a) * eps)


def test_progress_wrapper():
    seen = []

    def wrapper(steps):
        seen.append(len(steps))
        return steps

    oracle = GaussianOracle(image_like_means(4), torch.tensor([0.3, 0.5, 1.0]))
    x, y = torch.randn(1, 3, 4, 4), torch.zeros(1, dtype=torch.long)
    ddim.sample(oracle, ddim.invert(oracle, x, y, ALPHA, 7, progress=wrapper), y, ALPHA, 7,
                progress=wrapper)
    assert seen == [7, 7]
    with pytest.raises(ValueError, match="tqdm"):
        ddim.sample(oracle, x, y, ALPHA, 7, progress=True)


# ----------------------------------------------------- the Gaussian oracle: PhenDiff in closed form

def test_translation_with_gaussian_oracle_matches_closed_form():
    """invert under A then sample under B is the affine map mu_B + (sigma_B / sigma_A)(x - mu_A)."""
    mu, sigma = image_like_means(8), torch.tensor([0.3, 0.5, 1.0])
    oracle = GaussianOracle(mu, sigma)
    g = torch.Generator().manual_seed(0)
    x = mu[0] + sigma[0] * torch.randn(16, 3, 8, 8, generator=g)  # 16 images of class A
    y_a, y_b = torch.zeros(16, dtype=torch.long), torch.ones(16, dtype=torch.long)
    expected = mu[1] + sigma[1] / sigma[0] * (x - mu[0])
    errors = []
    for n in (20, 100, 1000):
        latent = ddim.invert(oracle, x, y_a, ALPHA, n)
        out = ddim.sample(oracle, latent, y_b, ALPHA, n)
        assert out.dtype == x.dtype and out.shape == x.shape
        errors.append(rms(out - expected) / rms(expected))
        # latents ~ N(0, I)
        assert abs(latent.std().item() - 1) < 0.05 and abs(latent.mean().item()) < 0.05
    assert errors[2] < 0.02, errors
    assert errors[0] > errors[1] > errors[2], errors


def test_exact_inversion_round_trip_is_100x_better_at_20_steps():
    mu, sigma = image_like_means(8), torch.tensor([0.3, 0.5, 1.0])
    oracle = GaussianOracle(mu, sigma)
    g = torch.Generator().manual_seed(1)
    x = mu[1] + sigma[1] * torch.randn(8, 3, 8, 8, generator=g)
    y = torch.ones(8, dtype=torch.long)
    plain = rms(ddim.sample(oracle, ddim.invert(oracle, x, y, ALPHA, 20), y, ALPHA, 20) - x)
    exact = rms(ddim.sample(oracle, ddim.invert(oracle, x, y, ALPHA, 20, fixed_point_iters=10),
                            y, ALPHA, 20) - x)
    assert plain > 1e-2  # plain eq. 6 is visibly off at 20 steps ...
    assert exact * 100 < plain, (plain, exact)  # ... exact inversion is not
    few = rms(ddim.sample(oracle, ddim.invert(oracle, x, y, ALPHA, 5, fixed_point_iters=20),
                          y, ALPHA, 5) - x)
    assert few < 1e-4  # independent of the step count


# ---------------------------------------------------- v-prediction: the same method, another output

class VOracle(GaussianOracle):
    """The same optimal model, outputting
    v = sqrt(a) eps - sqrt(1 - a) x_0 = (eps - sqrt(1 - a) x_t) / sqrt(a)."""
    prediction = "v"

    def __call__(self, x, t, y):
        a = self.alpha[t].view(-1, 1, 1, 1).to(x.dtype)
        return (super().__call__(x, t, y) - (1 - a).sqrt() * x) / a.sqrt()


def test_v_model_translates_like_the_eps_model():
    """eq. 5 and 6 see eps whatever the network outputs:
    the v-oracle gives the eps-oracle's translation."""
    mu, sigma = image_like_means(8), torch.tensor([0.3, 0.5, 1.0])
    eps_model, v_model = GaussianOracle(mu, sigma), VOracle(mu, sigma)
    x = (mu[0] + sigma[0] * torch.randn(4, 3, 8, 8,
                                        generator=torch.Generator().manual_seed(3))).double()
    y_a, y_b = torch.zeros(4, dtype=torch.long), torch.ones(4, dtype=torch.long)
    for m in (eps_model, v_model):
        m.latent = ddim.invert(m, x, y_a, ALPHA, 50)
        m.out = ddim.sample(m, m.latent, y_b, ALPHA, 50, guidance=1.5, null_label=2)
    torch.testing.assert_close(v_model.latent, eps_model.latent)
    torch.testing.assert_close(v_model.out, eps_model.out)
    assert rms(v_model.out - eps_model.out) < 1e-9  # float64 all the way: the conversion is exact
    # and the label mattered
    assert rms(ddim.sample(eps_model, v_model.latent, y_b, ALPHA, 50) - x) > 0.1


def test_v_loss_targets_v_and_sees_through_a_wrapper():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4000, 1, 2, 2, generator=g)
    y = torch.zeros(4000, dtype=torch.long)

    class Cheat(torch.nn.Module):
        """Knows x0, so it outputs the exact eps or v; `prediction` is what it claims to output."""
        def __init__(self, outputs, claims):
            super().__init__()
            self.outputs, self.prediction = outputs, claims

        def forward(self, x_t, t, y):
            a = ALPHA[t].view(-1, 1, 1, 1).float()
            eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
            return a.sqrt() * eps - (1 - a).sqrt() * x0 if self.outputs == "v" else eps

    class Wrapper(torch.nn.Module):  # like DDP: the model is .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    assert (ddim.prediction(Wrapper(Cheat("v", "v"))) == "v"
            and ddim.prediction(lambda x, t, y: x) == "eps")
    assert ddim.loss(Cheat("v", "v"), x0, y, ALPHA, generator=g).item() < 1e-6
    assert ddim.loss(Cheat("eps", "eps"), x0, y, ALPHA, generator=g).item() < 1e-6
    # the target follows the claim
    assert ddim.loss(Cheat("eps", "v"), x0, y, ALPHA, generator=g).item() > 0.1


# ------------------------------------------------------------------ classifier-free guidance

def test_guidance_zero_is_the_paper():
    oracle = GaussianOracle(image_like_means(4), torch.tensor([0.3, 0.5, 1.0]))
    x, y = torch.randn(3, 3, 4, 4), torch.tensor([0, 1, 0])
    assert torch.equal(ddim.sample(oracle, x, y, ALPHA, 10, guidance=0.0, null_label=2),
                       ddim.sample(oracle, x, y, ALPHA, 10))
    assert torch.equal(ddim.invert(oracle, x, y, ALPHA, 10, guidance=0.0, null_label=2),
                       ddim.invert(oracle, x, y, ALPHA, 10))


def test_guided_eps_is_extrapolation_away_from_null():
    mu, sigma = image_like_means(4), torch.tensor([0.3, 0.5, 1.0])
    oracle = GaussianOracle(mu, sigma)
    x, y, w = torch.randn(3, 3, 4, 4, dtype=torch.float64), torch.tensor([0, 1, 0]), 2.5
    t = torch.full((3,), 600)
    expected = (1 + w) * oracle(x, t, y) - w * oracle(x, t, torch.full((3,), 2))
    oracle.calls.clear()
    torch.testing.assert_close(ddim.predict_eps(oracle, x, 600, y, ALPHA, w, null_label=2),
                               expected)
    assert oracle.calls == [(6, [600] * 6, [0, 1, 0, 2, 2, 2])]  # one batched call of 2B
    # and sample uses it: one step from t = T-1 to the clean image
    a = ALPHA[999].item()
    eps = ddim.predict_eps(oracle, x, 999, y, ALPHA, w, null_label=2)
    out = ddim.sample(oracle, x, y, ALPHA, 1, guidance=w, null_label=2)
    torch.testing.assert_close(out, (x - math.sqrt(1 - a) * eps) / math.sqrt(a))
    with pytest.raises(ValueError, match="null_label"):
        ddim.sample(oracle, x, y, ALPHA, 1, guidance=w)


def test_clip_keeps_x0_in_range_and_is_a_no_op_inside_it():
    g = torch.Generator().manual_seed(0)
    a = 0.3
    x0 = torch.rand(2, 3, 4, 4, generator=g, dtype=torch.float64) * 1.8 - 0.9  # inside [-1, 1]
    eps = torch.randn(2, 3, 4, 4, generator=g, dtype=torch.float64)
    x_t = math.sqrt(a) * x0 + math.sqrt(1 - a) * eps
    torch.testing.assert_close(ddim.clip_eps(x_t, eps, a), eps)  # in range: unchanged
    far = ddim.clip_eps(x_t, eps + 3.0, a)  # an eps that implies x_0 far out of range
    x0_far = (x_t - math.sqrt(1 - a) * far) / math.sqrt(a)
    assert x0_far.abs().max() <= 1 + 1e-9 and (x0_far.abs() > 1 - 1e-9).float().mean() > 0.9
    # sampling from noise with clip=True ends inside the data range even with a poor eps-model
    bad = lambda x, t, y: 0.9 * x  # noqa: E731
    out = ddim.sample(bad, torch.randn(2, 3, 4, 4, generator=g), 0, ddim.make_schedule("linear"),
                      20, clip=True)
    assert out.abs().max() <= 1 + 1e-5


def test_trajectories_record_every_step_at_no_cost_otherwise():
    """sample/invert with trajectory=[] record {t, x, x0} per step, end on the returned image, and
    give the same result as without; sampling's x0 predictions end at the clean image."""
    mu, sigma = image_like_means(4), torch.tensor([0.3, 0.5, 1.0])
    oracle = GaussianOracle(mu, sigma)
    y = torch.tensor([0, 2])
    x = mu[y] + sigma[y].view(-1, 1, 1, 1) * torch.randn(2, 3, 4, 4, dtype=torch.float64)
    inv, smp = [], []
    z = ddim.invert(oracle, x, y, ALPHA, 5, trajectory=inv)
    out = ddim.sample(oracle, z, y, ALPHA, 5, trajectory=smp)
    assert torch.equal(z, ddim.invert(oracle, x, y, ALPHA, 5))
    assert torch.equal(out, ddim.sample(oracle, z, y, ALPHA, 5))
    ts = ddim.timesteps(5, len(ALPHA)).tolist()
    assert [s["t"] for s in inv] == ts and [s["t"] for s in smp] == ts[::-1][1:] + [-1]
    assert torch.equal(inv[-1]["x"], z) and torch.equal(smp[-1]["x"], out)
    torch.testing.assert_close(inv[0]["x0"], x)  # the clean image's own x0 is itself
    # the last sampling step lands on its x0 prediction (alpha = 1)
    torch.testing.assert_close(smp[-1]["x0"], out)
