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

The step is the one of ALAE's code (podgorskiy/ALAE, train_alae.py), the default here: two Adam
states, (E, D) and (F, G), the same ones stepped in step III (so F learns there too, through the
w that G draws from, where Algorithm 1 names E and G alone); R1 at every step; style mixing (0.9)
in steps I and II; F and D with learning-rate multiplier 0.1, D without activations (ALAE's
MappingD: three linear layers). What this file did before issue #28 is a flag for each:
`--optimizers 3 --r1-every 16 --style-mixing 0 --f-lr-mul 0.01 --d-lr-mul 1 --no-d-linear`.
Departures that are not flags, said here once: no progressive growing, CPU sizes (docs/recipes.md);
StyleGAN2's modulated convolutions in G instead of AdaIN; bilinear up- and average-pool
down-sampling as in stylegan.py; F reads a constant class embedding beside z (stylegan.py's
mapping with one class); the EMA of F, G and E is the house's (0.999 with a warm-up) where ALAE's
halves every 10k images; translation decodes one w at every layer (the W space).
"""
import copy
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
from torch.nn.functional import avg_pool2d

import method as M
from baselines import stylegan
from baselines.autoencoders import LatentShift
from baselines.gan import adam_step, adversarial_loss
from baselines.stylegan import EqualConv2d, EqualLinear


@dataclass
class ALAEConfig(stylegan.StyleGANConfig):
    lr: float = M.arg(0.002, "Adam learning rate of the three steps (betas 0, 0.99)")
    r1_gamma: float = M.arg(10.0, "weight gamma of the R1 penalty on D(E(x)) at real images")
    r1_every: int = M.arg(1, "steps between R1 penalties, each weighted by it (ALAE's code: 1; "
                             "16: StyleGAN2's lazy R1, before #28)")
    optimizers: int = M.arg(2, "Adam states: 2 as ALAE's code ((E, D) and (F, G), both stepped "
                               "in step III); 3 as Algorithm 1 reads (a third on E, G for step "
                               "III, F frozen there; before #28)", choices=(2, 3))
    d_layers: int = M.arg(3, "layers of the latent discriminator D on w")
    d_linear: bool = M.arg(True, "D without activations between its layers (ALAE's code); "
                                 "--no-d-linear: leaky ReLUs (before #28)")
    f_lr_mul: float = M.arg(0.1, "learning-rate multiplier of F's layers (ALAE's code: 0.1; "
                                 "StyleGAN's 0.01 before #28)")
    d_lr_mul: float = M.arg(0.1, "learning-rate multiplier of D's layers (ALAE's code: 0.1; 1 "
                                 "before #28)")
    pixel_weight: float = M.arg(0.0, "weight of a pixel MSE |x - G(E(x))|^2 on the real batch in "
                                     "step III for E and G (50: a VAE's likelihood, sigma 0.1); "
                                     "0: ALAE as published, which reconstructs in W only")
    augment: float = 0.0  # not a flag: D judges codes, and E sees the images as they are
    ada_target: float = 0.0  # not a flag, for the same reason
    ada_kimg: float = 500.0  # not a flag
    d_mapping_layers: int = 0  # not a flag: D is ALAE's latent discriminator
    RECIPE = {}  # ALAE's own settings are its fields' defaults

    PRESETS = {name: {**p, "r1_gamma": 10.0, "lr": 0.002}  # StyleGAN's sizes, ALAE's gamma, lr
               for name, p in stylegan.StyleGANConfig.PRESETS.items()}

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("d_layers", "r1_every", "f_lr_mul", "d_lr_mul"),
                       nonnegative=("pixel_weight",))

# -----------------------------------------------------------------------------
# the four networks


class Mapping(stylegan.Mapping):
    """F: z -> w, stylegan.py's mapping network with a single class (ALAE is unconditional)."""

    def __init__(self, c):
        super().__init__(replace(c, num_classes=1), c.f_lr_mul)

    def forward(self, z):
        return super().forward(z, torch.zeros(len(z), dtype=torch.long, device=z.device))


class Generator(stylegan.Synthesis):
    """G: w -> image, stylegan.py's synthesis with one w (B, w_dim) broadcast to all its layers,
    or a w per layer (B, num_ws, w_dim) where styles are mixed."""

    def forward(self, w, noise=None):
        return super().forward(w[:, None].expand(-1, self.num_ws, -1) if w.dim() == 2 else w,
                               noise)


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
    """D: w -> a real/fake logit: it judges codes, not images. Linear layers (ALAE's code: a
    linear function of w, so that E does all the nonlinear work) or an MLP (not d_linear)."""

    def __init__(self, c):
        super().__init__(*[EqualLinear(c.z_dim, c.z_dim, lr_mul=c.d_lr_mul, act=not c.d_linear)
                           for _ in range(c.d_layers - 1)],
                         EqualLinear(c.z_dim, 1, lr_mul=c.d_lr_mul))


def latent_reconstruction_loss(F, G, E, z, through_f=False):
    """Step III: the mean of (F(z) - E(G(F(z))))^2, F(z) a fixed target; through_f: the gradient
    reaches F through the w that G draws from (ALAE's code), else F gets none."""
    with torch.set_grad_enabled(through_f and torch.is_grad_enabled()):
        w = F(z)
    return (E(G(w)) - w.detach()).square().mean()

# -----------------------------------------------------------------------------
# the method


class ALAE(LatentShift):
    """F, G, E, D with two Adam optimizers (ALAE's code) or three (one per step of Algorithm 1),
    EMA copies of F, G and E, and the class means of the EMA encoder's codes (taken by
    `refresh`)."""
    name = "alae"
    Config = ALAEConfig
    OPTIONS = {"ema": True}
    LOG = ("d_adv", "g_adv", "latent_rec", "pixel", "r1", "lr")
    NETS = ("F", "G", "E", "D", "F_ema", "G_ema", "E_ema")

    def __init__(self, config, device="cpu", **options):
        c = self.config = config
        self.options = self.check_options(options)
        self.F, self.G = Mapping(c).to(device), Generator(c).to(device)
        self.E, self.D = Encoder(c).to(device), LatentDiscriminator(c).to(device)
        self.F_ema, self.G_ema, self.E_ema = (copy.deepcopy(n).requires_grad_(False).eval()
                                              for n in (self.F, self.G, self.E))

        def adam(*nets):
            return torch.optim.Adam([p for n in nets for p in n.parameters()], c.lr, (0.0, 0.99))
        self.optimizer_d = adam(self.E, self.D)  # step I (and III with two states)
        self.optimizer_g = adam(self.F, self.G)  # step II (and III with two states)
        self.optimizers = ("optimizer_d", "optimizer_g")
        if c.optimizers == 3:
            self.optimizer_rec = adam(self.E, self.G)  # step III
            self.optimizers += ("optimizer_rec",)
        self.means = torch.zeros(c.num_classes, c.z_dim, device=device)

    def train_step(self, batch, step):
        """Algorithm 1: steps I, II and III, each on its own z, then the EMAs."""
        c, x = self.config, batch[0]
        z = lambda: torch.randn(len(x), c.z_dim, device=x.device)  # noqa: E731
        d_adv, r1 = self.d_step(x, z(), step % c.r1_every == 0)
        g_adv = self.g_step(z())
        latent_rec, pixel = self.latent_step(z(), x)
        decay = M.ema_decay(step, c.ema_decay)
        for ema, net in ((self.F_ema, self.F), (self.G_ema, self.G), (self.E_ema, self.E)):
            M.update_ema(ema, net, decay)
        values = torch.stack([d_adv, g_adv, latent_rec, pixel, r1]).tolist()
        return {**dict(zip(self.LOG, values)), "lr": c.lr}

    def fakes(self, z):
        """G(F(z)) for steps I and II, styles mixed with probability style_mixing (ALAE's code):
        the layers from a random one on read the w of another z."""
        w = self.F(z)
        if self.config.style_mixing and torch.rand(()) < self.config.style_mixing:
            cut = int(torch.randint(1, self.G.num_ws, ()))
            w = w[:, None].repeat(1, self.G.num_ws, 1)
            w[:, cut:] = self.F(torch.randn_like(z))[:, None]
        return self.G(w)

    def d_step(self, x, z, with_r1=True):
        """Step I: E and D tell the codes of real images from those of fakes, with gamma/2 R1 (the
        squared gradient norm of D(E(x)) at real x) when with_r1, weighted by r1_every (lazy R1,
        as stylegan.py, when above 1). Returns (adversarial loss, R1 or 0)."""
        with torch.no_grad():
            fake = self.fakes(z)
        real = x.detach().requires_grad_(with_r1)
        real_score = self.D(self.E(real))
        loss = (adversarial_loss("ns", self.D(self.E(fake)), False)
                + adversarial_loss("ns", real_score, True))
        r1 = torch.zeros((), device=x.device)
        if with_r1:
            grad, = torch.autograd.grad(real_score.sum(), real, create_graph=True)
            r1 = grad.square().sum((1, 2, 3)).mean()
        c = self.config
        adam_step(loss + c.r1_gamma / 2 * c.r1_every * r1, self.optimizer_d)
        return loss.detach(), r1.detach()

    def g_step(self, z):
        """Step II: F and G make D(E(fake)) say real; E and D frozen for it."""
        self.E.requires_grad_(False), self.D.requires_grad_(False)
        loss = adversarial_loss("ns", self.D(self.E(self.fakes(z))), True)
        adam_step(loss, self.optimizer_g)
        self.E.requires_grad_(True), self.D.requires_grad_(True)
        return loss.detach()

    def latent_step(self, z, x):
        """Step III: E and G make E(G(w)) return w = F(z) (F learning too with two optimizers, as
        ALAE's code), and G(E(x)) return the real x by pixel_weight x the pixel MSE (logged either
        way; 0 as published), decoded with the fixed noise maps of `decode` (which also leaves the
        random stream as it was). Returns both."""
        two = self.config.optimizers == 2
        loss = latent_reconstruction_loss(self.F, self.G, self.E, z, through_f=two)
        with torch.set_grad_enabled(self.config.pixel_weight > 0):
            noise = stylegan.fixed_noise(self.G, len(x), x.device)
            pixel = (self.G(self.E(x), noise) - x).square().mean()
        optimizers = (self.optimizer_d, self.optimizer_g) if two else (self.optimizer_rec,)
        adam_step(loss + self.config.pixel_weight * pixel, *optimizers)
        return loss.detach(), pixel.detach()

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
        return {**{n: getattr(self, n).state_dict() for n in self.NETS + self.optimizers},
                "means": self.means.clone()}

    def load_state_dict(self, state):
        for n in self.NETS:
            getattr(self, n).load_state_dict(state[n])
        for n in self.optimizers:
            if n in state:  # exported checkpoints translate without them
                getattr(self, n).load_state_dict(state[n])
        self.means.copy_(state["means"])
