"""StyleALAE (Pidhorskyi et al., CVPR 2020, "Adversarial Latent Autoencoders"), beside the jointly
trained autoencoders of autoencoders.py: an autoencoder made of a GAN's two halves.

ALAE splits a GAN's generator into F (z -> w) and G (w -> image), its discriminator into E (image
-> w) and D (w -> real/fake logit), so that E and G meet in one latent space W. Algorithm 1 of the
paper alternates three Adam steps, each on its own z ~ N(0, I):

    I    E, D   softplus(D(E(G(F(z))))) + softplus(-D(E(x))) + gamma/2 E_x |grad_x D(E(x))|^2
    II   F, G   softplus(-D(E(G(F(z)))))                        (E, D frozen)
    III  E, G   |F(z) - E(G(F(z)))|^2                           (F(z) the target)

The reconstruction (III) is in W, not in pixels: E learns to invert G on the codes F gives, while
the game of I and II makes E(x) of real images distributed as F(z) (sec. 4), so that real images
encode to codes that G decodes (pixel_weight > 0 adds x - G(E(x)) in pixels to step III, a
departure for small budgets). StyleALAE (sec. 5): G is StyleGAN's synthesis, and E mirrors it
layer for layer, mapping the per-channel mean and std of each conv's features (what G's style
sets in the mirrored layer) to w, then instance-normalising them. Reused from stylegan.py: the
mapping (one class: ALAE is unconditional, labels are ignored), the synthesis, the equalised-lr
layers. Translation is autoencoders.py's class-mean shift of codes (LatentShift), with EMA copies
of E and G and fixed noise maps, so that a code always decodes to the same image.

Simplifications, said here once: no progressive growing; one w broadcast to every layer (the W
space, no style mixing); StyleGAN2's modulated convolutions in G instead of AdaIN; bilinear up-
and average-pool down-sampling as in stylegan.py; lazy R1 (every 16 steps, weighted x16, as
StyleGAN2) where ALAE penalises every step.
"""
import copy
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn.functional import avg_pool2d

import method as M
from baselines import stylegan
from baselines.autoencoders import LatentShift
from baselines.gan import adversarial_loss
from baselines.stylegan import EqualConv2d, EqualLinear


@dataclass
class ALAEConfig(stylegan.StyleGANConfig):
    lr: float = M.arg(0.002, "Adam learning rate of the three steps (betas 0, 0.99)")
    r1_gamma: float = M.arg(10.0, "weight gamma of the R1 penalty on D(E(x)) at real images")
    d_layers: int = M.arg(3, "layers of the latent discriminator D, an MLP on w")
    pixel_weight: float = M.arg(0.0, "weight of a pixel MSE |x - G(E(x))|^2 on the real batch in "
                                     "step III for E and G (50: a VAE's likelihood, sigma 0.1); "
                                     "0: ALAE as published, which reconstructs in W only")
    style_mixing: float = 0.0  # not a flag: ALAE drives every layer with one w
    augment: float = 0.0  # not a flag: D judges codes, and E sees the images as they are

    PRESETS = {name: {**p, "r1_gamma": 10.0, "lr": 0.002}  # StyleGAN's sizes, ALAE's gamma, lr
               for name, p in stylegan.StyleGANConfig.PRESETS.items()}

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("d_layers",), nonnegative=("pixel_weight",))

# -----------------------------------------------------------------------------
# the four networks


class Mapping(stylegan.Mapping):
    """F: z -> w, stylegan.py's mapping network with a single class (ALAE is unconditional)."""

    def __init__(self, c):
        super().__init__(replace(c, num_classes=1))

    def forward(self, z):
        return super().forward(z, torch.zeros(len(z), dtype=torch.long, device=z.device))


class Generator(stylegan.Synthesis):
    """G: w -> image, stylegan.py's synthesis with one w broadcast to all its layers."""

    def forward(self, w, noise=None):
        return super().forward(w[:, None].expand(-1, self.num_ws, -1), noise)


def style_statistics(h, eps=1e-8):
    """Instance norm's statistics of features h (B, C, H, W): ([mean, std] of each channel over
    H x W (B, 2C), h normalised by them)."""
    mu = h.mean((2, 3), keepdim=True)
    sigma = (h.var((2, 3), unbiased=False, keepdim=True) + eps).sqrt()
    return torch.cat([mu, sigma], 1).flatten(1), (h - mu) / sigma


class Encoder(nn.Module):
    """E: image -> w, StyleALAE's encoder: w = sum_i A_i [mu(h_i), sigma(h_i)] over its convs h_i,
    each A_i an affine map, each h_i instance-normalised before the next conv. The convs mirror G's
    style layers (StyleGAN2 D's channels): two per resolution, then an average-pool, one at 4x4."""

    def __init__(self, c):
        super().__init__()
        res, ch = c.image_size, c.channels
        self.from_rgb = EqualConv2d(c.in_channels, ch(res), 1)
        shapes = []
        while res > 4:
            shapes += [(ch(res), ch(res)), (ch(res), ch(res // 2))]
            res //= 2
        shapes.append((ch(4), ch(4)))
        self.convs = nn.ModuleList(EqualConv2d(cin, cout, 3) for cin, cout in shapes)
        self.styles = nn.ModuleList(EqualLinear(2 * cout, c.z_dim) for _, cout in shapes)

    def forward(self, x):
        h, w = self.from_rgb(x), 0
        for i, (conv, style) in enumerate(zip(self.convs, self.styles)):
            stats, h = style_statistics(conv(h))
            w = w + style(stats)
            if i % 2:  # the end of a resolution above 4x4
                h = avg_pool2d(h, 2)
        return w


class LatentDiscriminator(nn.Sequential):
    """D: w -> a real/fake logit, an MLP: it judges codes, not images."""

    def __init__(self, c):
        super().__init__(*[EqualLinear(c.z_dim, c.z_dim, act=True) for _ in range(c.d_layers - 1)],
                         EqualLinear(c.z_dim, 1))


def latent_reconstruction_loss(F, G, E, z):
    """Step III: the mean of (F(z) - E(G(F(z))))^2, F(z) a fixed target (no gradient reaches F)."""
    with torch.no_grad():
        w = F(z)
    return (E(G(w)) - w).square().mean()

# -----------------------------------------------------------------------------
# the method


class ALAE(LatentShift):
    """F, G, E, D with three Adam optimizers (one per step of Algorithm 1), EMA copies of F, G and
    E, and the class means of the EMA encoder's codes (taken by `refresh`)."""
    name = "alae"
    Config = ALAEConfig
    OPTIONS = {"ema": True}
    LOG = ("d_adv", "g_adv", "latent_rec", "pixel", "r1", "lr")
    NETS = ("F", "G", "E", "D", "F_ema", "G_ema", "E_ema")
    OPTIMIZERS = ("optimizer_d", "optimizer_g", "optimizer_rec")
    R1_EVERY = 16  # lazy regularisation

    def __init__(self, config, device="cpu", **options):
        c = self.config = config
        self.options = self.check_options(options)
        self.F, self.G = Mapping(c).to(device), Generator(c).to(device)
        self.E, self.D = Encoder(c).to(device), LatentDiscriminator(c).to(device)
        self.F_ema, self.G_ema, self.E_ema = (copy.deepcopy(n).requires_grad_(False).eval()
                                              for n in (self.F, self.G, self.E))

        def adam(*nets):
            return torch.optim.Adam([p for n in nets for p in n.parameters()], c.lr, (0.0, 0.99))
        self.optimizer_d = adam(self.E, self.D)  # step I
        self.optimizer_g = adam(self.F, self.G)  # step II
        self.optimizer_rec = adam(self.E, self.G)  # step III
        self.means = torch.zeros(c.num_classes, c.z_dim, device=device)

    def train_step(self, batch, step):
        """Algorithm 1: steps I, II and III, each on its own z, then the EMAs."""
        c, x = self.config, batch[0]
        z = lambda: torch.randn(len(x), c.z_dim, device=x.device)  # noqa: E731
        d_adv, r1 = self.d_step(x, z(), step % self.R1_EVERY == 0)
        g_adv = self.g_step(z())
        latent_rec, pixel = self.latent_step(z(), x)
        decay = M.ema_decay(step, c.ema_decay)
        for ema, net in ((self.F_ema, self.F), (self.G_ema, self.G), (self.E_ema, self.E)):
            M.update_ema(ema, net, decay)
        values = torch.stack([d_adv, g_adv, latent_rec, pixel, r1]).tolist()
        return {**dict(zip(self.LOG, values)), "lr": c.lr}

    def d_step(self, x, z, with_r1=True):
        """Step I: E and D tell the codes of real images from those of fakes, with gamma/2 R1 (the
        squared gradient norm of D(E(x)) at real x) when with_r1, weighted by R1_EVERY (lazy R1,
        as stylegan.py: the penalty costs as much as the rest of the step). Returns (adversarial
        loss, R1 or 0)."""
        with torch.no_grad():
            fake = self.G(self.F(z))
        real = x.detach().requires_grad_(with_r1)
        real_score = self.D(self.E(real))
        loss = (adversarial_loss("ns", self.D(self.E(fake)), False)
                + adversarial_loss("ns", real_score, True))
        r1 = torch.zeros((), device=x.device)
        if with_r1:
            grad, = torch.autograd.grad(real_score.sum(), real, create_graph=True)
            r1 = grad.square().sum((1, 2, 3)).mean()
        self.update(self.optimizer_d, loss + self.config.r1_gamma / 2 * self.R1_EVERY * r1)
        return loss.detach(), r1.detach()

    def g_step(self, z):
        """Step II: F and G make D(E(fake)) say real; E and D frozen for it."""
        self.E.requires_grad_(False), self.D.requires_grad_(False)
        loss = adversarial_loss("ns", self.D(self.E(self.G(self.F(z)))), True)
        self.update(self.optimizer_g, loss)
        self.E.requires_grad_(True), self.D.requires_grad_(True)
        return loss.detach()

    def latent_step(self, z, x):
        """Step III: E and G make E(G(w)) return w = F(z), and G(E(x)) return the real x by
        pixel_weight x the pixel MSE (logged either way; 0 as published), decoded with the fixed
        noise maps of `decode` (which also leaves the random stream as it was). Returns both."""
        loss = latent_reconstruction_loss(self.F, self.G, self.E, z)
        with torch.set_grad_enabled(self.config.pixel_weight > 0):
            noise = stylegan.fixed_noise(self.G, len(x), x.device)
            pixel = (self.G(self.E(x), noise) - x).square().mean()
        self.update(self.optimizer_rec, loss + self.config.pixel_weight * pixel)
        return loss.detach(), pixel.detach()

    def update(self, optimizer, loss):
        """One Adam step of the optimizer's networks on loss, gradients averaged over processes."""
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        M.average_gradients([p for group in optimizer.param_groups for p in group["params"]])
        optimizer.step()

    @torch.no_grad()
    def encode(self, x):
        return (self.E_ema if self.options["ema"] else self.E)(x)

    @torch.no_grad()
    def decode(self, w):
        G = self.G_ema if self.options["ema"] else self.G
        return G(w, stylegan.fixed_noise(G, len(w), w.device))

    def describe(self):
        return ("encoded into W by the ALAE's encoder, moved by the class-mean difference of the "
                "codes and decoded by its StyleGAN generator")

    def state_dict(self):
        return {**{n: getattr(self, n).state_dict() for n in self.NETS + self.OPTIMIZERS},
                "means": self.means.clone()}

    def load_state_dict(self, state):
        for n in self.NETS:
            getattr(self, n).load_state_dict(state[n])
        for n in self.OPTIMIZERS:
            if n in state:  # exported checkpoints translate without them
                getattr(self, n).load_state_dict(state[n])
        self.means.copy_(state["means"])
