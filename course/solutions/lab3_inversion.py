"""Reference answers of lab 3 (course/lab3_inversion.py)."""
import math

import torch


def predicted_x0(x_t, eps, a_t):
    return (x_t - math.sqrt(1 - a_t) * eps) / math.sqrt(a_t)


def invert_step_exact(x, eps, a_t, a_next, eps_next, iters):
    def eq6(e):
        return (math.sqrt(a_next / a_t) * x
                + math.sqrt(a_next) * (math.sqrt(1 / a_next - 1) - math.sqrt(1 / a_t - 1)) * e)

    x_next = eq6(eps)
    for _ in range(iters):
        x_next = eq6(eps_next(x_next))
    return x_next


def ddim_step_eta(x_t, eps, a_t, a_prev, eta, noise):
    s = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
    return (math.sqrt(a_prev) * predicted_x0(x_t, eps, a_t)
            + math.sqrt(1 - a_prev - s ** 2) * eps + s * noise)


def psnr(x, x_rec):
    mse = ((x_rec.clamp(-1, 1) - x) / 2).pow(2).flatten(1).mean(1)
    return -10 * torch.log10(mse)
