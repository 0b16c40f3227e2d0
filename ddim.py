"""The diffusion math of PhenDiff as pure functions over tensors: schedules, eq. 4-6, DDIM loops.

Notation follows the paper: alpha[t] = prod_{i<=t} (1 - beta_i) (DDPM's alpha-bar), integer
timesteps t in [0, T), so x_t = sqrt(alpha[t]) x_0 + sqrt(1 - alpha[t]) eps. The clean image sits
at alpha = 1, one step before t = 0. Every function takes any eps-model `model(x_t, t, y) -> eps`
(t, y LongTensor (B,)), so an analytic oracle can stand in for the network in tests. A model whose
`prediction` attribute is "v" outputs v = sqrt(a) eps - sqrt(1 - a) x_0 instead (Salimans & Ho
2022); `eps_from_v` converts, so eq. 5 and 6 always see eps.

PhenDiff translation is two calls: `invert` under the source label, then `sample` under the target.
"""
import math

import torch

SCHEDULES = ("linear", "scaled_linear", "cosine")


def make_schedule(name, T=1000):
    """alpha[t] for t in [0, T) as a float64 tensor (T,), decreasing from ~1 towards 0."""
    if not isinstance(T, int) or T < 1:
        raise ValueError(f"T must be a positive integer, got {T!r}")
    if name == "linear":  # DDPM (Ho et al. 2020)
        betas = torch.linspace(1e-4, 0.02, T, dtype=torch.float64)
    elif name == "scaled_linear":  # Stable Diffusion: linear in sqrt(beta)
        betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, T, dtype=torch.float64) ** 2
    elif name == "cosine":
        # Nichol & Dhariwal 2021: alpha-bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2)
        s = torch.arange(T + 1, dtype=torch.float64) / T
        f = torch.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2
        betas = (1 - f[1:] / f[:-1]).clamp(max=0.999)
    else:
        raise ValueError(f"unknown schedule {name!r}; choose {', '.join(SCHEDULES)}")
    return torch.cumprod(1 - betas, dim=0)


def timesteps(num_steps, T):
    """The DDIM sub-sequence t_1 < ... < t_n (LongTensor), "trailing" spacing
    t_i = round(i*T/n) - 1.

    The last latent sits at t_n = T - 1 (the noisiest level) and num_steps = T visits every t.
    """
    if not isinstance(num_steps, int) or not 1 <= num_steps <= T:
        raise ValueError(f"num_steps must be an integer in [1, {T}], got {num_steps!r}")
    i = torch.arange(1, num_steps + 1, dtype=torch.float64)
    return (torch.floor(i * T / num_steps + 0.5) - 1).long()


def prediction(model):
    """"eps" or "v": what `model` outputs (through a DDP wrapper too; plain functions are
    eps-models)."""
    return getattr(getattr(model, "module", model), "prediction", "eps")


def eps_from_v(v, x_t, a):
    """eps = sqrt(1 - a) x_t + sqrt(a) v at level a, for a v-model.

    Why v: near t = T - 1, x_0 = (x_t - sqrt(1 - a) eps) / sqrt(a) turns a 0.3 % error in eps
    into 0.5 in x_0, and eq. 4 barely penalises it, so a small eps-model never learns what the
    label does at high noise, where a translation decides cell counts and intensities. A v-model's
    x_0 = sqrt(a) x_t - sqrt(1 - a) v stays bounded, and its loss weighs those levels."""
    return math.sqrt(1 - a) * x_t + math.sqrt(a) * v


def loss(model, x0, y, alpha, generator=None):
    """eq. 4: MSE between the true noise and the model's prediction at a uniformly drawn timestep.
    A v-model's target is v = sqrt(a) eps - sqrt(1 - a) x_0 (its eps-MSE weighted by 1 / a).

    `generator` (on x0's device) makes t and eps reproducible; label dropout for guidance is the
    caller's.
    """
    B = x0.shape[0]
    t = torch.randint(0, len(alpha), (B,), generator=generator, device=x0.device)
    eps = torch.randn(x0.shape, generator=generator, device=x0.device, dtype=x0.dtype)
    a = alpha.to(x0.device)[t].view(B, 1, 1, 1)  # float64, cast to x0's dtype below
    s_a, s_1a = a.sqrt().to(x0.dtype), (1 - a).sqrt().to(x0.dtype)
    x_t = s_a * x0 + s_1a * eps  # eq. 4
    target = eps if prediction(model) == "eps" else s_a * eps - s_1a * x0  # v
    return (model(x_t, t, y).float() - target.float()).pow(2).mean()


def ddim_step(x_t, eps, alpha_t, alpha_prev):
    """eq. 5: one deterministic DDIM step towards the data, from level alpha_t to
    alpha_prev > alpha_t (alpha_prev = 1: the x_0 prediction itself).

    The paper writes x_{t-1} = sqrt(a_{t-1} / a_t) x_t + sqrt(a_{t-1}) gamma_t eps with
    gamma_t = sqrt(1 / a_{t-1} - 1) - sqrt(1 / a_t - 1): predict x_0 = (x_t - sqrt(1 - a_t) eps) /
    sqrt(a_t), then re-noise it to level a_{t-1} with the same eps. Here that is c_x x_t + c_eps eps
    with c_x = sqrt(a_prev / a_t) and c_eps = sqrt(a_prev) gamma_t; the paper's timesteps start at
    1, the code's at 0, so the paper's a_t is alpha[t - 1] here (the clean image: a = 1)."""
    return _ddim(x_t, eps, alpha_t, alpha_prev)  # eq. 5


def ddim_invert_step(x_t, eps, alpha_t, alpha_next):
    """eq. 6: one DDIM inversion step towards the noise, from level alpha_t to alpha_next < alpha_t.

    The same map as eq. 5 with the levels swapped (the same body, `_ddim`), using eps at x_t in
    place of the unknown eps at x_next: that approximation is why plain inversion does not
    round-trip exactly (`invert(..., fixed_point_iters=k)` removes it)."""
    return _ddim(x_t, eps, alpha_t, alpha_next)  # eq. 6


def _ddim(x, eps, a_from, a_to):
    """x at level a_from -> level a_to with the same eps: c_x x + c_eps eps, both coefficients
    float64 scalars, so x's dtype rounds once. Levels: floats or 0-d tensors."""
    a_from, a_to = float(a_from), float(a_to)
    c_x = math.sqrt(a_to / a_from)
    c_eps = math.sqrt(a_to) * (math.sqrt(1 / a_to - 1) - math.sqrt(1 / a_from - 1))  # sqrt(a) gamma
    return c_x * x + c_eps * eps


def x0_from_eps(x_t, eps, alpha_t):
    """The clean image the model sees in x_t: (x_t - sqrt(1 - a) eps) / sqrt(a)."""
    a = float(alpha_t)
    return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)


def predict_eps(model, x, t, y, alpha, guidance=0.0, null_label=None):
    """eps at integer timestep t (of the schedule alpha) for labels y; with guidance w:
    (1 + w) eps(y) - w eps(null).

    Guidance evaluates both branches in one batched call of size 2B; w = 0 is the paper (one call
    of B).
    """
    B, net = x.shape[0], model
    # the paper's eps-model skips this (and its .item() sync on a GPU)
    if prediction(model) == "v":
        a = alpha[int(t)].item()
        net = lambda x, t, y: eps_from_v(model(x, t, y), x, a)  # noqa: E731
    t = torch.full((B,), int(t), dtype=torch.long, device=x.device)
    y = torch.as_tensor(y, dtype=torch.long, device=x.device).expand(B)
    if guidance == 0:
        return net(x, t, y)
    if null_label is None:
        null_label = getattr(model, "null_label", None)
    if null_label is None:
        raise ValueError(f"guidance {guidance} needs null_label (the UNet's model.null_label)")
    labels = torch.cat([y, torch.full_like(y, null_label)])
    # eps_y, eps_null: 2 x (B, C, H, W)
    eps_y, eps_null = net(torch.cat([x, x]), torch.cat([t, t]), labels).chunk(2)
    return (1 + guidance) * eps_y - guidance * eps_null


def _steps(steps, progress):
    """The loop's range, wrapped by `progress` (e.g. tqdm.tqdm) when given: ddim.py imports only
    torch."""
    if progress is True:
        raise ValueError("progress=True: pass a wrapper such as tqdm.tqdm instead "
                         "(ddim.py imports only torch)")
    return progress(steps) if progress else steps


# Timestep pairs visited for the sub-sequence t_1 < ... < t_n from timesteps(num_steps, T):
#   sample: x at t_n -> t_{n-1} -> ... -> t_1 -> clean (alpha = 1); the step leaving t_i uses
#           eps(x, t_i).
#   invert: clean (alpha = 1) -> t_1 -> ... -> t_n; the step leaving t_i uses eps(x, t_i) and the
#           first step, from the clean image (no timestep of its own), uses eps(x_0, t_1).
# So each invert step is the mirror of one sample step, differing only in where eps is evaluated.

def clip_eps(x_t, eps, alpha_t):
    """The eps whose x_0 prediction (x_t - sqrt(1 - a) eps) / sqrt(a) is clipped to the data
    range [-1, 1].

    Near t = T - 1, sqrt(a) ~ 0.006 turns a 1 % error in eps into a wildly out-of-range x_0 that
    later steps never undo; clipping (DDPM's `clip_denoised`) keeps samples from pure noise in
    range."""
    a = float(alpha_t)
    x0 = x0_from_eps(x_t, eps, a).clamp(-1, 1)
    return (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)


def _record(trajectory, t, x, x0):
    """One step of a trajectory, when one is asked for: the timestep reached (-1: clean), the
    image there and the x_0 the step predicted, on the CPU."""
    if trajectory is not None:
        trajectory.append({"t": t, "x": x.detach().cpu(), "x0": x0.detach().cpu()})


@torch.no_grad()
def sample(model, x_T, y, alpha, num_steps, guidance=0.0, null_label=None, progress=False,
           clip=False, trajectory=None):
    """Deterministic DDIM sampling (eq. 5) from the latent x_T at t_n = T - 1 down to a clean image.

    clip=True clips each x_0 prediction to [-1, 1]: for samples from pure noise only, since it
    breaks the symmetry with `invert` that translation and reconstruction rely on (the paper does
    not clip). trajectory: a list to which each step appends {t, x, x0} (nothing is kept when
    None)."""
    ts = timesteps(num_steps, len(alpha)).tolist()
    levels = [1.0] + [alpha[t].item() for t in ts]  # levels[i] = alpha at t_i, levels[0] = clean
    x = x_T
    for i in _steps(range(num_steps, 0, -1), progress):  # t_n first
        eps = predict_eps(model, x, ts[i - 1], y, alpha, guidance, null_label)
        if clip:
            eps = clip_eps(x, eps, levels[i])
        x0 = x0_from_eps(x, eps, levels[i]) if trajectory is not None else None
        x = ddim_step(x, eps, levels[i], levels[i - 1])  # eq. 5
        _record(trajectory, ts[i - 2] if i > 1 else -1, x, x0)
    return x


@torch.no_grad()
def invert(model, x_0, y, alpha, num_steps, fixed_point_iters=0, guidance=0.0, null_label=None,
           progress=False, trajectory=None):
    """DDIM inversion (eq. 6) from a clean image to its latent at t_n = T - 1.

    fixed_point_iters = k > 0 (exact inversion, beyond the paper) refines each step k times by
    x_next <- eq6(x, eps(x_next, t_next)), which converges to the x_next that the eq. 5 step maps
    back onto x exactly: invert then sample under the same label then round-trips at any step
    count. trajectory: a list to which each step appends {t, x, x0} (x0: the clean image the
    last eps used implies at the level it was evaluated)."""
    ts = timesteps(num_steps, len(alpha)).tolist()
    levels = [1.0] + [alpha[t].item() for t in ts]
    x = x_0
    for i in _steps(range(num_steps), progress):
        t_cur = ts[max(i - 1, 0)]  # the clean image has no timestep: use t_1 for the first step
        eps = predict_eps(model, x, t_cur, y, alpha, guidance, null_label)
        x_next = ddim_invert_step(x, eps, levels[i], levels[i + 1])  # eq. 6
        for _ in range(fixed_point_iters):
            eps = predict_eps(model, x_next, ts[i], y, alpha, guidance, null_label)
            # eq. 6 with eps at the far end
            x_next = ddim_invert_step(x, eps, levels[i], levels[i + 1])
        if trajectory is not None:
            _record(trajectory, ts[i], x_next, x0_from_eps(x, eps, levels[i]))
        x = x_next
    return x
