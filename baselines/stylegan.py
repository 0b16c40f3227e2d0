"""A small class-conditional StyleGAN2 (Karras et al. 2020, conditioned as in StyleGAN2-ADA), the
generator of the PhenEx baselines (phenex.py projects real images into its W or W+ space), and with
attention added by a subclass the GANformer decoder of the DSAE (ganformer.py).

Mapping: z and the class embedding, each normalised, through FC layers with equalised learning rate
(lr x 0.01) to w. Synthesis: a constant 4x4 input, per resolution two modulated/demodulated 3x3
convolutions with per-pixel noise (learned strength), and a skip architecture of toRGB layers summed
across resolutions. Discriminator: residual blocks, minibatch standard deviation, and projection
conditioning on the class, mapped as StyleGAN2-ADA maps it (embedding, normalisation, 8 FC layers).
Non-saturating logistic loss, lazy R1 (every 16 steps), style mixing, an EMA of the generator, and
differentiable augmentation of what D sees (flips, 90-degree turns, translation, brightness,
contrast), its probability p adapted as ADA does (r_t = E[sign D(real)] held near 0.6), since small
cell datasets overfit a discriminator quickly.
Departures (docs/recipes.md): resampling is bilinear up / average-pool down instead of the FIR
filters; no path-length regularisation; ADA's augmentations reduced to those that suit cell stains
(no hue, saturation, luma flip, arbitrary rotation or scaling); CPU sizes. Before issue #28, D
embedded the class with one linear layer and p was fixed: `--d-mapping-layers 0 --ada-target 0`.
"""
import copy
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import method as M
from baselines import phenex
from baselines.gan import adversarial_loss


@dataclass
class StyleGANConfig:
    image_size: int = 128
    in_channels: int = 3
    num_classes: int = 2
    steps: int = 200000  # of the run; set by train.py
    z_dim: int = M.arg(512, "latent z size (= w size)")
    mapping_layers: int = M.arg(8, "mapping network depth")
    channel_base: int = M.arg(16384, "channels at resolution r: min(channel_base / r, channel_max)")
    channel_max: int = M.arg(512, "most channels of a layer")
    lr: float = M.arg(0.0025, "Adam learning rate of G and D (betas 0, 0.99)")
    r1_gamma: float = M.arg(0.1, "R1 weight; StyleGAN2-ADA's heuristic 0.0002 res^2 / batch")
    style_mixing: float = M.arg(0.9, "probability of mixing two w's at a random layer")
    augment: float = M.arg(0.5, "probability of each augmentation of what D sees, fixed when "
                                "--ada-target is 0 (0: none); ADA starts at 0")
    ada_target: float = M.arg(0.0, "ADA: p adapts to hold r_t = E[sign D(real)] at this target "
                                   "(StyleGAN2-ADA: 0.6, the presets'); 0: p fixed at --augment")
    ada_kimg: float = M.arg(500.0, "ADA: thousands of images over which p may move by 1 "
                                   "(StyleGAN2-ADA: 500)")
    d_mapping_layers: int = M.arg(0, "FC layers (lr x 0.01) mapping D's class embedding to its "
                                     "projection vector (StyleGAN2-ADA: 8, the presets'); 0: the "
                                     "embedding alone")
    ema_decay: float = M.arg(0.999, "EMA of G, used to sample, project and translate")

    PRESETS = {  # the paper at 128x128 (gamma 0.1 at batch 32); 32x32 on a CPU; seconds for tests
        "paper": dict(image_size=128),
        "cpu": dict(image_size=32, z_dim=64, mapping_layers=2, channel_base=1024, channel_max=64,
                    r1_gamma=0.0064),
        "tiny": dict(image_size=32, z_dim=16, mapping_layers=1, channel_base=128, channel_max=16,
                     r1_gamma=0.0064),
    }

    # StyleGAN2-ADA's class mapping in D and adaptive augmentation, which preset() gives every new
    # run; the fields' own defaults (off) are what checkpoints written before them hold
    RECIPE = dict(d_mapping_layers=8, ada_target=0.6)

    def __post_init__(self):
        M.check_ranges(self, positive=("z_dim", "mapping_layers", "channel_base", "channel_max",
                                       "lr", "steps", "ada_kimg"),
                       nonnegative=("r1_gamma", "d_mapping_layers"),
                       fraction=("style_mixing", "augment", "ada_target", "ema_decay"))
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"stylegan needs a power-of-two image size >= 8, "
                             f"got {self.image_size}")

    @classmethod
    def preset(cls, name, **overrides):
        return M.preset_config(cls, cls.PRESETS, name, {**cls.RECIPE, **overrides})

    def channels(self, res):
        return min(self.channel_base // res, self.channel_max)

# -----------------------------------------------------------------------------
# layers with equalised learning rate


class EqualLinear(nn.Module):
    """A dense layer with equalised learning rate (Karras et al. 2018): weights stored as
    N(0, 1 / lr_mul) and scaled at run time by lr_mul / sqrt(fan_in), so that Adam moves every
    layer at the same relative speed; lr_mul < 1 slows a layer down (the mapping network)."""

    def __init__(self, cin, cout, bias_init=0.0, lr_mul=1.0, act=False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin) / lr_mul)
        self.bias = nn.Parameter(torch.full((cout,), float(bias_init) / lr_mul))
        self.w_gain, self.lr_mul, self.act = lr_mul / math.sqrt(cin), lr_mul, act

    def forward(self, x):
        x = F.linear(x, self.weight * self.w_gain, self.bias * self.lr_mul)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


class EqualConv2d(nn.Module):
    """A convolution with equalised learning rate, leaky ReLU (gain sqrt 2) when act."""

    def __init__(self, cin, cout, k, bias=True, act=True):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.bias = nn.Parameter(torch.zeros(cout)) if bias else None
        self.gain, self.act = 1 / math.sqrt(cin * k * k), act

    def forward(self, x):
        x = F.conv2d(x, self.weight * self.gain, self.bias, padding=self.weight.shape[-1] // 2)
        return F.leaky_relu(x, 0.2) * math.sqrt(2) if self.act else x


def normalize_2nd_moment(x, eps=1e-8):
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


class Mapping(nn.Module):
    """z (normalised) and the class embedding (normalised), concatenated, through FC layers -> w,
    each with learning-rate multiplier lr_mul."""

    def __init__(self, c, lr_mul=0.01):
        super().__init__()
        self.num_classes = c.num_classes
        self.embed = EqualLinear(c.num_classes, c.z_dim)
        self.fc = nn.Sequential(*[EqualLinear(2 * c.z_dim if i == 0 else c.z_dim, c.z_dim,
                                              lr_mul=lr_mul, act=True)
                                  for i in range(c.mapping_layers)])

    def forward(self, z, y):
        e = self.embed(F.one_hot(y, self.num_classes).to(z.dtype))
        return self.fc(torch.cat([normalize_2nd_moment(z), normalize_2nd_moment(e)], 1))

# -----------------------------------------------------------------------------
# synthesis


class ModulatedConv2d(nn.Module):
    """The style w scales the kernel's input channels (modulation); each output channel's kernel is
    then rescaled to unit norm (demodulation), which keeps unit-variance activations at unit
    variance without normalising the features (the cause of StyleGAN's droplets)."""

    def __init__(self, cin, cout, k, w_dim, demodulate=True, up=False):
        super().__init__()
        self.affine = EqualLinear(w_dim, cin, bias_init=1.0)
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.gain, self.demodulate, self.up = 1 / math.sqrt(cin * k * k), demodulate, up

    def forward(self, x, w):
        s = self.affine(w)  # (B, cin)
        weight = self.weight * self.gain  # (cout, cin, k, k)
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        # modulating the kernel's inputs by s is scaling x by s before one shared convolution,
        # and demodulation is a per-image, per-output scale: a batched conv, not a grouped one
        x = F.conv2d(x * s[:, :, None, None], weight, padding=weight.shape[-1] // 2)
        if self.demodulate:
            norm = (weight[None] * s[:, None, :, None, None]).square().sum((2, 3, 4))  # (B, cout)
            x = x * (norm + 1e-8).rsqrt()[:, :, None, None]
        return x


class StyleLayer(nn.Module):
    """Modulated 3x3 conv, per-pixel noise of a learned strength (0 at first), bias, leaky ReLU."""

    def __init__(self, cin, cout, w_dim, res, up=False):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.res = res

    def forward(self, x, w, noise=None):
        x = self.conv(x, w)
        if noise is None:
            noise = torch.randn(x.shape[0], 1, self.res, self.res, device=x.device, dtype=x.dtype)
        x = x + noise * self.noise_strength + self.bias[None, :, None, None]
        return F.leaky_relu(x, 0.2) * math.sqrt(2)


class ToRGB(nn.Module):
    """A modulated 1x1 conv to image channels, without demodulation."""

    def __init__(self, cin, cout, w_dim):
        super().__init__()
        self.conv = ModulatedConv2d(cin, cout, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(cout))

    def forward(self, x, w):
        return self.conv(x, w) + self.bias[None, :, None, None]


class Synthesis(nn.Module):
    """ws (B, num_ws, w_dim) -> image. Layer i reads ws[:, i]; a toRGB reads the w of the next
    block's first layer (the last one an extra w), as StyleGAN2 does: num_ws = layers + 1. W
    projection repeats one w, W+ gives each its own. noise: a map per layer, or None (random)."""

    def __init__(self, c):
        super().__init__()
        self.const = nn.Parameter(torch.randn(c.channels(4), 4, 4))
        self.layers, self.to_rgb, res = nn.ModuleList(), nn.ModuleList(), 4
        self.layers.append(StyleLayer(c.channels(4), c.channels(4), c.z_dim, 4))
        self.to_rgb.append(ToRGB(c.channels(4), c.in_channels, c.z_dim))
        while res < c.image_size:
            res *= 2
            self.layers.append(StyleLayer(c.channels(res // 2), c.channels(res), c.z_dim, res,
                                          up=True))
            self.layers.append(StyleLayer(c.channels(res), c.channels(res), c.z_dim, res))
            self.to_rgb.append(ToRGB(c.channels(res), c.in_channels, c.z_dim))
        self.num_ws = len(self.layers) + 1

    def forward(self, ws, noise=None, state=None):
        x = self.const[None].expand(len(ws), -1, -1, -1)
        x = self.layers[0](x, ws[:, 0], None if noise is None else noise[0])
        x, state = self.after_layer(0, x, state)
        img = self.to_rgb[0](x, ws[:, 1])
        for b in range(1, len(self.to_rgb)):  # two layers per resolution after 4x4
            i = 2 * b - 1
            for j in (i, i + 1):
                x = self.layers[j](x, ws[:, j], None if noise is None else noise[j])
                x, state = self.after_layer(j, x, state)
            up = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False)
            img = up + self.to_rgb[b](x, ws[:, i + 2])
        return img

    def after_layer(self, j, x, state):
        """A subclass's hook on the features x of layer j, with a state carried from layer to
        layer (GANformer: attention to its latent components); here nothing."""
        return x, state


def fixed_noise(synthesis, batch, device, seed=0):
    """One noise map per layer of a Synthesis from a seeded generator, the same for every image
    and every call, so that decoding (DSAE, ALAE) is a function of the latent."""
    g = torch.Generator().manual_seed(seed)
    maps = [torch.randn(1, 1, layer.res, layer.res, generator=g) for layer in synthesis.layers]
    return [m.to(device).expand(batch, -1, -1, -1) for m in maps]


class Generator(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.mapping, self.synthesis = Mapping(c), Synthesis(c)
        self.num_ws = self.synthesis.num_ws

    def forward(self, z, y, noise=None):
        return self.synthesis(self.mapping(z, y)[:, None].expand(-1, self.num_ws, -1), noise)

# -----------------------------------------------------------------------------
# discriminator


class DBlock(nn.Module):
    """Residual: two 3x3 convs then an average-pool, plus a pooled 1x1 skip, scaled by 1/sqrt 2."""

    def __init__(self, cin, cout):
        super().__init__()
        self.conv0, self.conv1 = EqualConv2d(cin, cin, 3), EqualConv2d(cin, cout, 3)
        self.skip = EqualConv2d(cin, cout, 1, bias=False, act=False)

    def forward(self, x):
        skip = self.skip(F.avg_pool2d(x, 2))
        return (skip + F.avg_pool2d(self.conv1(self.conv0(x)), 2)) / math.sqrt(2)


class ClassMapping(nn.Sequential):
    """StyleGAN2-ADA's mapping of D's label: the one-hot class embedded, normalised, then `layers`
    FC layers with learning rate x 0.01, to the vector D projects its features on."""

    def __init__(self, num_classes, dim, layers):
        super().__init__(EqualLinear(num_classes, dim), Normalize(),
                         *[EqualLinear(dim, dim, lr_mul=0.01, act=True) for _ in range(layers)])


class Normalize(nn.Module):
    """normalize_2nd_moment as a layer."""

    def forward(self, x):
        return normalize_2nd_moment(x)


class Discriminator(nn.Module):
    """fromRGB, residual blocks down to 4x4, minibatch std, conv, FC, and projection conditioning:
    the score is <features, cmap(class)> / sqrt(dim) (Miyato & Koyama 2018), cmap StyleGAN2-ADA's
    ClassMapping (d_mapping_layers > 0) or one linear embedding."""

    def __init__(self, c):
        super().__init__()
        res, ch = c.image_size, c.channels
        self.from_rgb = EqualConv2d(c.in_channels, ch(res), 1)
        blocks = []
        while res > 4:
            blocks.append(DBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks = nn.Sequential(*blocks)
        self.conv = EqualConv2d(ch(4) + 1, ch(4), 3)
        self.fc = EqualLinear(ch(4) * 16, ch(4), act=True)
        self.out = EqualLinear(ch(4), ch(4))
        self.cmap = (ClassMapping(c.num_classes, ch(4), c.d_mapping_layers) if c.d_mapping_layers
                     else EqualLinear(c.num_classes, ch(4)))
        self.num_classes = c.num_classes

    def features(self, x):
        """(B, C, 4, 4) before the minibatch statistics: a perceptual space for projection."""
        return self.blocks(self.from_rgb(x))

    def forward(self, x, y):
        h = self.features(x)
        B, C, H, W = h.shape
        group = math.gcd(4, B)  # minibatch std over groups of images: one more feature map
        std = h.reshape(group, -1, C, H, W).var(0, unbiased=False).add(1e-8).sqrt().mean((1, 2, 3))
        h = torch.cat([h, std.repeat(group)[:, None, None, None].expand(B, 1, H, W)], 1)
        h = self.out(self.fc(self.conv(h).flatten(1)))
        cmap = self.cmap(F.one_hot(y, self.num_classes).to(x.dtype))
        return (h * cmap).sum(1, keepdim=True) / math.sqrt(h.shape[1])


def augment(x, p, generator=None):
    """What D sees, differentiably augmented per image with probability p each: flips and
    90-degree turns (cells have no orientation), translation by up to 1/8 of the size (zero
    padding), brightness and contrast. The same function for real and fake images."""
    if p == 0:
        return x
    B, _, H, W = x.shape

    def chance():
        return torch.rand(B, 1, 1, 1, device=x.device, generator=generator) < p

    x = torch.where(chance(), x.flip(3), x)
    x = torch.where(chance(), x.flip(2), x)
    if H == W:
        x = torch.where(chance(), x.transpose(2, 3), x)
    pad = max(1, H // 8)
    shift = torch.randint(-pad, pad + 1, (B, 2), device=x.device, generator=generator)
    shift = shift * chance().view(B, 1)
    padded = F.pad(x, (pad, pad, pad, pad))
    rows = (torch.arange(H, device=x.device)[None] + pad - shift[:, :1])[:, None, :, None]
    cols = (torch.arange(W, device=x.device)[None] + pad - shift[:, 1:])[:, None, None, :]
    batch = torch.arange(B, device=x.device)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=x.device)[None, :, None, None]
    x = padded[batch, chans, rows, cols]
    noise = torch.rand(2, B, 1, 1, 1, device=x.device, generator=generator)
    x = x + (noise[0] - 0.5) * 0.4 * chance()  # brightness
    mean = x.mean((1, 2, 3), keepdim=True)
    return (x - mean) * torch.where(chance(), noise[1] + 0.5, torch.ones_like(noise[1])) + mean

# -----------------------------------------------------------------------------
# the method


class StyleGAN2(M.Method):
    """A StyleGAN2 generator G trained against a residual discriminator D: non-saturating loss,
    lazy R1, an EMA of G, augmentation of what D sees, gradients averaged over torchrun processes.
    The conditional StyleGAN below and the unconditional GANformer (ganformer.py) bring their own
    G and D, and latents(y): what G.synthesis takes for fakes of labels y; neither inherits the
    other's use of the generator (PhenEx translation is StyleGAN's alone)."""
    LOG = ("g_adv", "d_adv", "r1", "augment_p", "lr")
    R1_EVERY = 16  # lazy regularisation
    ADA_INTERVAL = 4  # steps between adjustments of p, as StyleGAN2-ADA
    NETS = ("G", "D", "G_ema")

    def __init__(self, config, G, D, device, options, ada_target=0.0, ada_kimg=500.0):
        self.config, self.options = config, self.check_options(options)
        self.G, self.D = G.to(device), D.to(device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        ratio = self.R1_EVERY / (self.R1_EVERY + 1)  # lazy R1: D's Adam as if every step (ADA)
        self.optimizer_g = torch.optim.Adam(self.G.parameters(), config.lr, (0.0, 0.99))
        self.optimizer_d = torch.optim.Adam(self.D.parameters(), config.lr * ratio,
                                            (0.0, 0.99 ** ratio))
        self.ada = (ada_target, ada_kimg)
        self.augment_p = 0.0 if ada_target else config.augment  # ADA starts without augmentation
        self.ada_stats = [0.0, 0.0]  # since the last adjustment: sum of sign D(real), images

    def train_step(self, batch, step):
        """A generator step, then a discriminator step (with R1 every R1_EVERY-th step); the
        fakes are conditioned on the batch's labels (GANformer's on one class)."""
        c, (x, y) = self.config, batch
        self.G.train(), self.D.train()
        g_adv = self.adversarial(self.G.synthesis(self.latents(y)), y)
        self.optimizer_g.zero_grad(set_to_none=True)
        g_adv.backward()
        M.average_gradients(self.G.parameters())
        self.optimizer_g.step()
        M.update_ema(self.G_ema, self.G, M.ema_decay(step, c.ema_decay))
        with torch.no_grad():
            fake = self.G.synthesis(self.latents(y))
        p = self.augment_p  # what this step's D saw
        d_adv, r1 = self.discriminator_step(x, y, fake, step)
        values = torch.stack([g_adv, d_adv, r1]).detach().tolist()
        return {**dict(zip(self.LOG, values)), "augment_p": p, "lr": c.lr}

    def adversarial(self, fake, y):
        """G's non-saturating loss on fakes of labels y; D is frozen for it."""
        self.D.requires_grad_(False)
        return adversarial_loss("ns", self.D(augment(fake, self.augment_p), y), True)

    def discriminator_step(self, x, y, fake, step):
        """One step of D on real x against fakes, with lazy R1, then ADA's update of p; returns
        (its loss, R1)."""
        c, p = self.config, self.augment_p
        self.D.requires_grad_(True)
        real = x.detach().requires_grad_(step % self.R1_EVERY == 0)
        real_score = self.D(augment(real, p), y)
        self.adapt_augment(real_score, step)
        d_adv = (adversarial_loss("ns", self.D(augment(fake.detach(), p), y), False)
                 + adversarial_loss("ns", real_score, True))
        r1 = torch.zeros((), device=x.device)
        if real.requires_grad:  # R1: the squared gradient norm of D on real images
            grad, = torch.autograd.grad(real_score.sum(), real, create_graph=True)
            r1 = grad.square().sum((1, 2, 3)).mean()
        self.optimizer_d.zero_grad(set_to_none=True)
        (d_adv + r1 * c.r1_gamma / 2 * self.R1_EVERY).backward()
        M.average_gradients(self.D.parameters())
        self.optimizer_d.step()
        return d_adv, r1

    @torch.no_grad()
    def adapt_augment(self, real_score, step):
        """ADA (Karras et al. 2020): r_t = E[sign D(real)] over the last ADA_INTERVAL steps and
        every process's images; p moves by sign(r_t - target) x images / (ada_kimg x 1000), never
        below 0, so that D's overfitting (r_t near 1) is met with more augmentation. Nothing
        without a target."""
        target, kimg = self.ada
        if not target:
            return
        local = torch.stack([real_score.sign().sum(), real_score.new_tensor(len(real_score))])
        total = M.mean_over_processes(local.float()) * M.world_size()
        self.ada_stats = [a + b for a, b in zip(self.ada_stats, total.tolist())]
        if (step + 1) % self.ADA_INTERVAL == 0:
            signs, images = self.ada_stats
            r_t = signs / images
            self.augment_p = max(0.0, self.augment_p + ((r_t > target) - (r_t < target))
                                 * images / (kimg * 1000))
            self.ada_stats = [0.0, 0.0]

    def generator(self):
        return self.G_ema if self.options["ema"] else self.G.eval()

    def state_dict(self):
        return {**{n: getattr(self, n).state_dict() for n in self.NETS},
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict(), "augment_p": self.augment_p,
                "ada_stats": list(self.ada_stats)}

    def load_state_dict(self, state):
        for n in self.NETS:
            getattr(self, n).load_state_dict(state[n])
        for n in ("optimizer_g", "optimizer_d"):
            if n in state:
                getattr(self, n).load_state_dict(state[n])
        if "augment_p" in state:  # checkpoints from before ADA: p as configured
            self.augment_p, self.ada_stats = state["augment_p"], list(state["ada_stats"])


class StyleGAN(StyleGAN2):
    """The conditional StyleGAN2 as a method: translation and reconstruction by PhenEx projection
    (phenex.py) into W or W+ (option `projection`), then the class-mean shift."""
    name = "stylegan"
    Config = StyleGANConfig
    OPTIONS = {"projection": "w", "projection_steps": 1000, "w_avg_samples": 10000, "ema": True}
    EVAL_OPTIONS = {"projection_steps": 100, "w_avg_samples": 1000}  # train.py's grids: quick

    def __init__(self, config, device="cpu", **options):
        super().__init__(config, Generator(config), Discriminator(config), device, options,
                         config.ada_target, config.ada_kimg)
        self.means = None  # class-mean w's, computed when first needed

    def check_options(self, options):
        options = super().check_options(options)
        if options["projection"] not in ("w", "w+"):
            raise ValueError(f"--projection {options['projection']!r}: choose w or w+")
        return options

    def latents(self, y):
        """w for labels y, with style mixing: from a random layer on, the w of another z."""
        z = torch.randn(len(y), self.config.z_dim, device=y.device)
        ws = self.G.mapping(z, y)[:, None].repeat(1, self.G.num_ws, 1)
        if torch.rand(()) < self.config.style_mixing:
            cut = int(torch.randint(1, self.G.num_ws, ()))
            ws[:, cut:] = self.G.mapping(torch.randn_like(z), y)[:, None]
        return ws

    def train_step(self, batch, step):
        self.means = None  # the class means of the EMA mapping move with it
        return super().train_step(batch, step)

    def describe(self):
        o = self.options
        return (f"projected into {o['projection'].upper()} ({o['projection_steps']} steps, "
                f"perceptual term: {phenex.PERCEPTUAL}) and moved by the class-mean difference of "
                "w to every class")

    @torch.no_grad()
    def sample(self, y, seed=0, psi=1.0):
        """Images of classes y from fixed noise (what the GAN learned, class by class); psi < 1
        truncates each w towards its class mean."""
        G, g = self.generator(), torch.Generator().manual_seed(seed)
        w = G.mapping(torch.randn(len(y), self.config.z_dim, generator=g).to(y.device), y)
        if psi != 1:
            mean = self.class_means(y.device)[0][y]
            w = mean + psi * (w - mean)
        return G.synthesis(w[:, None].expand(-1, G.num_ws, -1))

    def class_means(self, device):
        if self.means is None:
            self.means = phenex.class_means(self.generator().mapping, self.config.num_classes,
                                            self.options["w_avg_samples"], device)
        return self.means

    def translate_many(self, x, y_source, targets):
        """PhenEx: project x once (W or W+), then G(w + mean_w(target) - mean_w(source)) for each
        target, the projected noise maps kept."""
        G, ys = self.generator(), M.labels(y_source, x)
        means = self.class_means(x.device)
        ws, noise = phenex.project(G, x, means[0][ys], means[1], D=self.D,
                                   space=self.options["projection"],
                                   steps=self.options["projection_steps"])
        with torch.no_grad():
            return torch.stack([G.synthesis(phenex.shift(ws, means[0], ys, M.labels(t, x)), noise)
                                for t in targets])

    def translate(self, x, y_source, y_target):
        return self.translate_many(x, y_source, [y_target])[0]

    def load_state_dict(self, state):
        self.means = None
        super().load_state_dict(state)
