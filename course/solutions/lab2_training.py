"""Reference answers of lab 2 (course/lab2_training.py)."""
import torch


def add_noise(x0, eps, a):
    return a.sqrt() * x0 + (1 - a).sqrt() * eps


def diffusion_loss(model, x0, y, alpha):
    t = torch.randint(0, len(alpha), (len(x0),), device=x0.device)
    eps = torch.randn_like(x0)
    a = alpha.to(x0.device)[t].view(-1, 1, 1, 1).to(x0.dtype)  # float64 schedule -> x0's dtype
    return (eps - model(add_noise(x0, eps, a), t, y)).pow(2).mean()  # eq. 4


def label_dropout(y, p, null_label):
    return torch.where(torch.rand(y.shape, device=y.device) < p, null_label, y)
