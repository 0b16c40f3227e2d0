"""Reference answers of lab 1 (course/lab1_closed_form.py)."""
import math


def gaussian_eps(x_t, a_t, mu, sigma):
    """E[eps | x_t] = Cov(eps, x_t) / Var(x_t) (x_t - E[x_t])."""
    return math.sqrt(1 - a_t) * (x_t - math.sqrt(a_t) * mu) / (a_t * sigma ** 2 + 1 - a_t)


def ddim_step(x_t, eps, a_t, a_prev):
    gamma = math.sqrt(1 / a_prev - 1) - math.sqrt(1 / a_t - 1)
    return math.sqrt(a_prev / a_t) * x_t + math.sqrt(a_prev) * gamma * eps  # eq. 5


def ddim_invert_step(x_t, eps, a_t, a_next):
    gamma = math.sqrt(1 / a_next - 1) - math.sqrt(1 / a_t - 1)
    return math.sqrt(a_next / a_t) * x_t + math.sqrt(a_next) * gamma * eps  # eq. 6
