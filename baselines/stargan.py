"""StarGAN (Choi et al., CVPR 2018), the multi-domain baseline of PhenDiff's Tables 1 and 2.

One generator G(x, c) for every class: the target class c enters as one-hot maps stacked on the
image's channels. The discriminator has two heads on one PatchGAN trunk: real/fake per patch, and a
classifier of the image's class. Losses as in the paper: WGAN-GP for realism (lambda_gp 10), the
classification loss (lambda_cls 1: D learns it on real images, G must make its fakes classified as
c), and the cycle reconstruction |x - G(G(x, c), c_x)|_1 (lambda_rec 10) that should tie a
translation to its input. D takes n_critic = 5 steps per G step; Adam 1e-4, (0.5, 0.999), linear
decay over the second half. Translation: G(x, target); reconstruction (Table 2): G(x, own class).

Departures from the reference code (docs/recipes.md): CPU sizes (`cpu`: 32 px, G 32 channels with
3 blocks, D 4 layers); the learning rate decays every step rather than every 1,000; instance norm
without running statistics; flips and 90-degree turns instead of crops; an EMA of G, which
translates; `--gan-loss ns` beside WGAN-GP.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import method as M
from baselines.gan import (GANConfig, ResnetGenerator, adversarial_loss, gradient_penalty,
                           linear_decay, patch_trunk)


@dataclass
class StarGANConfig(GANConfig):
    d_layers: int = M.arg(6, "discriminator stride-2 layers (image_size / 2^d_layers >= 1)")
    lr: float = M.arg(1e-4, "Adam learning rate of G and D")
    n_critic: int = M.arg(5, "D steps per G step")
    gan_loss: str = M.arg("wgan", "wgan (+ gradient penalty, the paper) or ns (non-saturating)",
                          choices=("wgan", "ns"))
    lambda_gp: float = M.arg(10.0, "gradient penalty weight (wgan only)")
    lambda_cls: float = M.arg(1.0, "classification loss weight")
    lambda_rec: float = M.arg(10.0, "cycle reconstruction loss weight")

    PRESETS = {  # the paper at 128x128; 32x32 on a CPU; seconds for tests
        "paper": dict(image_size=128),
        "cpu": dict(image_size=32, g_channels=32, g_blocks=3, d_channels=32, d_layers=4),
        "tiny": dict(image_size=32, g_channels=8, g_blocks=1, d_channels=8, d_layers=3),
    }

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("n_critic",),
                       nonnegative=("lambda_gp", "lambda_cls", "lambda_rec"))
        if self.image_size % 2 ** self.d_layers:
            raise ValueError(f"image size {self.image_size} must be divisible by 2^d_layers = "
                             f"{2 ** self.d_layers}; change --d-layers or the size")


class Generator(nn.Module):
    """G(x, c): the ResNet generator with StarGAN's choices, class c as one-hot input maps."""

    def __init__(self, c):
        super().__init__()
        self.num_classes = c.num_classes
        self.net = ResnetGenerator(c.in_channels + c.num_classes, c.in_channels, c.g_channels,
                                   c.g_blocks, kernel=4, padding_mode="zeros", affine=True,
                                   bias=False)

    def forward(self, x, y):
        maps = F.one_hot(y, self.num_classes).to(x.dtype)[:, :, None, None]  # (B, K, 1, 1)
        return self.net(torch.cat([x, maps.expand(-1, -1, *x.shape[2:])], 1))


class Discriminator(nn.Module):
    """PatchGAN trunk (LeakyReLU 0.01, no norm); heads: realness per patch, class logits."""

    def __init__(self, c):
        super().__init__()
        layers, ch = patch_trunk(c.in_channels, c.d_channels, c.d_layers, 0.01, norm=False,
                                 max_mult=2 ** 10)
        self.trunk = nn.Sequential(*layers)
        self.src = nn.Conv2d(ch, 1, 3, 1, 1, bias=False)
        self.cls = nn.Conv2d(ch, c.num_classes, c.image_size // 2 ** c.d_layers, bias=False)

    def forward(self, x):
        h = self.trunk(x)
        return self.src(h), self.cls(h).flatten(1)  # (B, 1, h, w), (B, K)


class StarGAN(M.Method):
    name = "stargan"
    Config = StarGANConfig
    OPTIONS = {"ema": True}
    LOG = ("d_adv", "d_cls", "gp", "g_adv", "g_cls", "g_rec", "lr")
    PRECISIONS = ("bf16", "fp32")  # bf16 1.5x faster on this CPU, same run (docs/training.md)

    def __init__(self, config, device="cpu", **options):
        self.config, self.options = config, self.check_options(options)
        self.G, self.D = Generator(config).to(device), Discriminator(config).to(device)
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        betas = (config.beta1, 0.999)
        self.optimizer_g = torch.optim.Adam(self.G.parameters(), config.lr, betas)
        self.optimizer_d = torch.optim.Adam(self.D.parameters(), config.lr, betas)

    def d_step(self, x, y, y_trg, lr):
        """The critic: realness of real vs fake images, the class of real images, the penalty."""
        c = self.config
        src_real, cls_real = self.D(x)
        with torch.no_grad():
            fake = self.G(x, y_trg)
        src_fake, _ = self.D(fake)
        adv = (adversarial_loss(c.gan_loss, src_real, True)
               + adversarial_loss(c.gan_loss, src_fake, False))
        cls = F.cross_entropy(cls_real, y)
        gp = gradient_penalty(lambda z: self.D(z)[0], x, fake) if c.gan_loss == "wgan" \
            else torch.zeros((), device=x.device)
        self.optimizer_d.zero_grad(set_to_none=True)
        (adv + c.lambda_cls * cls + c.lambda_gp * gp).backward()
        M.average_gradients(self.D.parameters())
        M.set_lr(self.optimizer_d, lr)
        self.optimizer_d.step()
        return {"d_adv": adv, "d_cls": cls, "gp": gp}

    def g_step(self, x, y, y_trg, lr, step):
        """The generator: fool D as class y_trg, and come back to x under its own class."""
        c = self.config
        fake = self.G(x, y_trg)
        src, cls = self.D(fake)
        adv, cls = adversarial_loss(c.gan_loss, src, True), F.cross_entropy(cls, y_trg)
        rec = (self.G(fake, y) - x).abs().mean()
        self.optimizer_g.zero_grad(set_to_none=True)
        (adv + c.lambda_cls * cls + c.lambda_rec * rec).backward()
        M.average_gradients(self.G.parameters())
        M.set_lr(self.optimizer_g, lr)
        self.optimizer_g.step()
        M.update_ema(self.G_ema, self.G, M.ema_decay(step // c.n_critic, c.ema_decay))
        return {"g_adv": adv, "g_cls": cls, "g_rec": rec}

    def train_step(self, batch, step):
        """One D step; every n_critic-th step also a G step. Targets: the batch's labels
        shuffled."""
        c, (x, y) = self.config, batch
        lr = c.lr * linear_decay(step, c.steps, c.decay_from)
        y_trg = y[torch.randperm(len(y), device=y.device)]
        self.G.train(), self.D.train()
        losses = self.d_step(x, y, y_trg, lr)
        if (step + 1) % c.n_critic == 0:
            losses.update(self.g_step(x, y, y_trg, lr, step))
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist()
        return {**dict(zip(losses, values)), "lr": lr}

    def translate(self, x, y_source, y_target):
        G = self.G_ema if self.options["ema"] else self.G.eval()
        return G(x, M.labels(y_target, x))

    def state_dict(self):
        return {"G": self.G.state_dict(), "D": self.D.state_dict(),
                "G_ema": self.G_ema.state_dict(), "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict()}

    def load_state_dict(self, state):
        for name in ("G", "D", "G_ema"):
            getattr(self, name).load_state_dict(state[name])
        for name in ("optimizer_g", "optimizer_d"):
            if name in state:
                getattr(self, name).load_state_dict(state[name])
