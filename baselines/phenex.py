"""PhenEx on real images (Lamiable et al.; as the PhenDiff paper adapts it): project a real image
into the latent space of a class-conditional StyleGAN, W (one w for every layer: PhenEx/W) or W+
(one w per layer: PhenEx/W+), then move the latent along the difference of class-mean latents.

Projection follows the StyleGAN2 projector: start from the class-mean w of the image's class, Adam
with the learning rate ramped up over the first 5 % of the steps and down (cosine) over the last
25 %, noise added to w that decays over the first 75 %, the per-layer noise maps optimised too,
with a penalty on their spatial autocorrelation and renormalised after every step. The loss is
the pixel MSE plus a perceptual term: the relative error of the StyleGAN discriminator's features
(a network trained on the same images, and offline; the FID's InceptionV3 is too slow on a CPU
for 1,000 steps per image). Every image of a batch is optimised independently.
"""
import math

import torch
import torch.nn.functional as F

PERCEPTUAL = "the StyleGAN discriminator's features"


@torch.no_grad()
def class_means(mapping, num_classes, n, device, seed=0):
    """(mean w of each class (K, w_dim), the spread of w around its class mean): w = mapping(z, c)
    for the same n seeded z in every class."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mapping.embed.weight.shape[0], generator=g).to(device)
    means, var = [], 0.0
    for c in range(num_classes):
        w = mapping(z, torch.full((n,), c, device=device))
        means.append(w.mean(0))
        var += (w - means[-1]).square().sum(1).mean().item() / num_classes
    return torch.stack(means), math.sqrt(var)


def shift(ws, means, y_source, y_target):
    """The class-mean shift: ws + mean_w(target) - mean_w(source), on every layer (W and W+)."""
    return ws + (means[y_target] - means[y_source])[:, None]


def noise_penalty(noise):
    """Per image, the squared autocorrelation of each noise map at lag 1 (both axes) and at every
    coarser scale down to 8x8: the projector may not hide the image in the noise."""
    total = 0.0
    for n in noise:
        while True:
            total = total + (n * n.roll(1, 3)).mean((1, 2, 3)).square() \
                + (n * n.roll(1, 2)).mean((1, 2, 3)).square()
            if n.shape[-1] <= 8:
                break
            n = F.avg_pool2d(n, 2)
    return total


def lr_ramp(t, rampup=0.05, rampdown=0.25):
    """The projector's learning-rate factor at progress t in [0, 1)."""
    ramp = 0.5 - 0.5 * math.cos(min(1.0, (1 - t) / rampdown) * math.pi)
    return ramp * min(1.0, t / rampup)


def _optimise(G, x, w, noise, D, optimizer, w_std, steps, lr, noise_factor, noise_ramp,
              noise_weight, g):
    """The projection loop: the projector's schedules, pixel + perceptual loss, noise penalty."""
    with torch.no_grad():
        target = D.features(x)
        scale = target.square().mean((1, 2, 3)) + 1e-8
    for i in range(steps):
        t = i / steps
        for group in optimizer.param_groups:
            group["lr"] = lr * lr_ramp(t)
        jitter = w_std * noise_factor * max(0.0, 1 - t / noise_ramp) ** 2
        ws = (w + torch.randn(w.shape, generator=g).to(w.device) * jitter).expand(-1, G.num_ws, -1)
        img = G.synthesis(ws, noise)
        pixel = (img - x).square().mean((1, 2, 3))
        perceptual = (D.features(img) - target).square().mean((1, 2, 3)) / scale
        loss = (pixel + perceptual + noise_weight * noise_penalty(noise)).sum()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():  # noise maps back to zero mean, unit variance
            for n in noise:
                n -= n.mean((1, 2, 3), keepdim=True)
                n /= n.square().mean((1, 2, 3), keepdim=True).sqrt()


def project(G, x, w_init, w_std, D, space="w", steps=1000, lr=0.1, noise_factor=0.05,
            noise_ramp=0.75, noise_weight=1e5, seed=0):
    """Latents (B, num_ws, w_dim) and noise maps whose G.synthesis reproduces the images x (in
    [-1, 1]); w_init (B, w_dim): each image's class-mean w. space "w" optimises one w per image,
    "w+" one per layer. Seeded: the same images project to the same latents."""
    B, num_ws, g = len(x), G.num_ws, torch.Generator().manual_seed(seed)
    w = w_init[:, None].repeat(1, 1 if space == "w" else num_ws, 1).detach().requires_grad_(True)
    noise = [torch.randn(B, 1, layer.res, layer.res, generator=g).to(x.device).requires_grad_(True)
             for layer in G.synthesis.layers]
    optimizer = torch.optim.Adam([w, *noise], lr=lr, betas=(0.9, 0.999))
    frozen = [p for p in (*G.parameters(), *D.parameters()) if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    try:
        with torch.enable_grad():  # also when the caller translates under no_grad
            _optimise(G, x, w, noise, D, optimizer, w_std, steps, lr, noise_factor, noise_ramp,
                      noise_weight, g)
    finally:
        for p in frozen:
            p.requires_grad_(True)
    return w.detach().expand(-1, num_ws, -1), [n.detach() for n in noise]
