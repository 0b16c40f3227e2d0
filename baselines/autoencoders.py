"""The second paper's jointly trained autoencoders VAE and BiGAN, and what they share with DC-VAE
(dcvae.py) and StyleALAE (alae.py).

Fonnegra et al. compare DSAE's decoupled encoder (trained alone by DINO, dsae.py) with autoencoders
that learn their encoder and generator together, and find that decoupling gives the features that
classify phenotypes best (their Fig. 2). To check that claim with the same code, every one of them
translates as DSAE does (LatentShift): encode, add the class-mean difference of the codes, decode;
reconstruct = decode(encode(x)); encode gives the features that eval.py's `represent` classifies.

    VAE     (Kingma & Welling 2014)  E(x) -> (mu, log sigma^2), z = mu + sigma eps, G(z); Gaussian
                                     likelihood + beta KL; encode = mu
    BiGAN   (Donahue et al. 2017; Dumoulin et al. 2017, ALI)  G(z), E(x), and D on joint pairs:
                                     (x, E(x)) real, (G(z), z) fake; encode = E(x)

The networks are DCGAN's (Radford et al. 2016), shared with DC-VAE: the encoder (and each
discriminator's image branch) halves the size with 4x4 stride-2 convolutions and leaky ReLUs down
to 4x4, then a linear layer; no batch norm, so a code never depends on the rest of its batch. The
decoder mirrors it with transposed convolutions, group norm (not DCGAN's batch norm, for the same
reason) and ReLU, then tanh. Each method keeps an EMA of its encoder and decoder, which encode,
decode and translate by default.

Departures from the published recipes (docs/recipes.md has them all, with the reasons): one
DCGAN architecture for every autoencoder at CPU sizes (BiGAN's ImageNet networks, ALI's deeper
ones, the VAE paper's MLPs are not used); Adam 2e-4 (0.5, 0.999) for both, without BiGAN's weight
decay and learning-rate decay; EMA copies for translation; BiGAN's `--cycle-weight` (ALICE's term)
is 0 as published.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

import method as M
from baselines.gan import adversarial_loss


@dataclass
class AutoencoderConfig:
    image_size: int = 128
    in_channels: int = 3
    num_classes: int = 2
    steps: int = 100000  # of the run; set by train.py
    latent_dim: int = M.arg(256, "size of the latent code")
    channels: int = M.arg(64, "channels of the encoder's first layer (doubling at each halving, "
                              "at most 8x); the decoder mirrors it")
    lr: float = M.arg(2e-4, "Adam learning rate of every network")
    beta1: float = M.arg(0.5, "Adam beta1")
    beta2: float = M.arg(0.999, "Adam beta2")
    ema_decay: float = M.arg(0.999, "EMA of the encoder and decoder, used to encode, decode and "
                                    "translate")

    PRESETS = {"paper": dict(image_size=128),
               "cpu": dict(image_size=32, latent_dim=64, channels=32),
               "tiny": dict(image_size=32, latent_dim=8, channels=8)}

    def __post_init__(self):
        M.check_ranges(self, positive=("latent_dim", "channels", "lr", "steps"),
                       fraction=("beta1", "beta2", "ema_decay"))
        if self.image_size < 8 or self.image_size & (self.image_size - 1):
            raise ValueError(f"the autoencoders need a power-of-two image size >= 8, "
                             f"got {self.image_size}")

    @classmethod
    def preset(cls, name, **overrides):
        return M.preset_config(cls, cls.PRESETS, name, overrides)


@dataclass
class VAEConfig(AutoencoderConfig):
    beta: float = M.arg(1.0, "weight of the KL term (beta-VAE; 1: the VAE's evidence bound)")
    likelihood_std: float = M.arg(0.1, "sigma of the Gaussian likelihood p(x | z) = N(G(z), "
                                       "sigma^2), images in [-1, 1]")

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("likelihood_std",), nonnegative=("beta",))


@dataclass
class BiGANConfig(AutoencoderConfig):
    d_dropout: float = M.arg(0.2, "dropout in the joint discriminator (ALI's 0.2)")
    cycle_weight: float = M.arg(0.0, "weight of ALICE's explicit cycle consistency |x - G(E(x))|^2 "
                                     "(Li et al. 2017) for E and G; 0: BiGAN as published")

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, fraction=("d_dropout",), nonnegative=("cycle_weight",))


# -----------------------------------------------------------------------------
# networks


def widths(c):
    """Channels of the encoder at each halving from image_size down to 4x4."""
    n = (c.image_size // 4).bit_length() - 1
    return [c.channels * min(2 ** i, 8) for i in range(n)]


class Encoder(nn.Module):
    """image -> (B, out): DCGAN's discriminator trunk without batch norm, then a linear layer."""

    def __init__(self, c, out):
        super().__init__()
        layers, cin = [], c.in_channels
        for ch in widths(c):
            layers += [nn.Conv2d(cin, ch, 4, 2, 1), nn.LeakyReLU(0.2, True)]
            cin = ch
        self.trunk = nn.Sequential(*layers, nn.Flatten())
        self.dim = cin * 16
        self.head = nn.Linear(self.dim, out)

    def forward(self, x):
        return self.head(self.trunk(x))


def group_norm(ch):
    return nn.GroupNorm(min(8, ch), ch)


class Decoder(nn.Module):
    """z -> image in [-1, 1]: a linear layer to 4x4, DCGAN's transposed convolutions doubling the
    size, tanh. Group norm where DCGAN has batch norm: with batch norm the decoder in eval mode
    uses running statistics gathered over the mixed batches of training (BiGAN decodes noise,
    the encoder's codes are another distribution), and a BiGAN trained with it decoded noise."""

    def __init__(self, c):
        super().__init__()
        w = widths(c)[::-1]
        self.fc = nn.Sequential(nn.Linear(c.latent_dim, w[0] * 16), nn.Unflatten(1, (w[0], 4, 4)),
                                group_norm(w[0]), nn.ReLU(True))
        layers = []
        for cin, cout in zip(w, w[1:]):
            layers += [nn.ConvTranspose2d(cin, cout, 4, 2, 1), group_norm(cout), nn.ReLU(True)]
        self.body = nn.Sequential(*layers, nn.ConvTranspose2d(w[-1], c.in_channels, 4, 2, 1),
                                  nn.Tanh())

    def forward(self, z):
        return self.body(self.fc(z))


class JointDiscriminator(nn.Module):
    """BiGAN's D(x, z): the image through the encoder trunk, the code through a linear layer, then
    an MLP on both: it must tell (x, E(x)) from (G(z), z), so it judges the pair, not the image.
    Dropout on each branch and in the MLP, as ALI's discriminator has, keeps D from winning
    outright (without it, D won and E, G collapsed to one blob here)."""

    def __init__(self, c, hidden=None):
        super().__init__()
        hidden, drop = hidden or 8 * c.channels, nn.Dropout(c.d_dropout)
        self.image = nn.Sequential(Encoder(c, 1).trunk, drop)
        self.code = nn.Sequential(nn.Linear(c.latent_dim, hidden), nn.LeakyReLU(0.2, True), drop)
        self.joint = nn.Sequential(nn.Linear(widths(c)[-1] * 16 + hidden, hidden),
                                   nn.LeakyReLU(0.2, True), drop, nn.Linear(hidden, 1))

    def forward(self, x, z):
        return self.joint(torch.cat([self.image(x), self.code(z)], 1))


# -----------------------------------------------------------------------------
# the losses, as their papers write them


def kl_divergence(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)) per row: 1/2 sum(mu^2 + sigma^2 - 1 - log sigma^2)."""
    return 0.5 * (mu.square() + logvar.exp() - 1 - logvar).sum(1)


def reparameterise(mu, logvar):
    """z = mu + sigma eps, eps ~ N(0, I): a sample of q(z | x) through which gradients reach mu and
    sigma (the reparameterisation trick)."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


def joint_scores(D, x, code, fake, z):
    """BiGAN's two pairs through D: (D(x, E(x)) for the real pair, D(G(z), z) for the fake)."""
    return D(x, code), D(fake, z)


# -----------------------------------------------------------------------------
# translation by the class-mean shift of codes (DSAE and the autoencoders)


@torch.no_grad()
def class_means(encode, images, labels, num_classes, batch=256, per_class=1000):
    """(num_classes, D): the mean code of each class over at most `per_class` images of it (the
    first ones), so that large datasets cost a bounded time."""
    labels = torch.as_tensor(labels)
    empty = [k for k in range(num_classes) if not (labels == k).any()]
    if empty:
        raise ValueError(f"classes {empty} have no training images: the class means of the codes "
                         "need every class")
    means = []
    for k in range(num_classes):
        x = images[labels.to(images.device) == k][:per_class]
        means.append(torch.cat([encode(x[i:i + batch]) for i in range(0, len(x), batch)]).mean(0))
    return torch.stack(means)


class LatentShift(M.Method):
    """translate = decode(encode(x) + mean(target) - mean(source)), with self.means the class
    means of the codes on the training images; encode and decode are the subclass's."""

    def refresh(self, dataset):
        """The class means of the current codes on the training images, before each evaluation
        and checkpoint (a jointly trained encoder moves while it trains)."""
        device = self.means.device
        self.means.copy_(class_means(lambda x: self.encode(x.to(device)), dataset.images,
                                     dataset.labels, self.config.num_classes))
        M.broadcast_from_rank0([self.means])  # every process computed it; keep them identical

    def translate_many(self, x, y_source, targets):
        """Encode once, then decode the shifted code for every target."""
        f, ys = self.encode(x), M.labels(y_source, x)
        return torch.stack([self.decode(f + (self.means[M.labels(t, x)] - self.means[ys]))
                            for t in targets])

    def translate(self, x, y_source, y_target):
        return self.translate_many(x, y_source, [y_target])[0]

    @torch.no_grad()
    def reconstruct(self, x, y):
        return self.decode(self.encode(x))


class Autoencoder(LatentShift):
    """What VAE, BiGAN and DC-VAE share: E and G with EMA copies, optimizers, the class means of the
    EMA encoder's codes (taken by `refresh`), checkpoints. A subclass adds its D and optimizer."""
    OPTIONS = {"ema": True}
    VARIATIONAL = True  # E gives (mu, log sigma^2); encode = mu

    def __init__(self, config, device="cpu", **options):
        c = self.config = config
        self.options = self.check_options(options)
        self.E = Encoder(c, c.latent_dim * (2 if self.VARIATIONAL else 1)).to(device)
        self.G = Decoder(c).to(device)
        self.E_ema = copy.deepcopy(self.E).requires_grad_(False).eval()
        self.G_ema = copy.deepcopy(self.G).requires_grad_(False).eval()
        self.means = torch.zeros(c.num_classes, c.latent_dim, device=device)
        self.optimizer = self.adam([*self.E.parameters(), *self.G.parameters()])

    def adam(self, params):
        return torch.optim.Adam(params, self.config.lr, (self.config.beta1, self.config.beta2))

    def nets(self):
        return {n: v for n, v in vars(self).items() if isinstance(v, nn.Module)}

    def optimizers(self):
        return {n: v for n, v in vars(self).items() if isinstance(v, torch.optim.Optimizer)}

    def update_ema(self, step):
        decay = M.ema_decay(step, self.config.ema_decay)
        M.update_ema(self.E_ema, self.E, decay)
        M.update_ema(self.G_ema, self.G, decay)

    def code(self, x, E):
        h = E(x)
        return h.chunk(2, 1)[0] if self.VARIATIONAL else h

    @torch.no_grad()
    def encode(self, x):
        return self.code(x, self.E_ema if self.options["ema"] else self.E.eval())

    @torch.no_grad()
    def decode(self, z):
        return (self.G_ema if self.options["ema"] else self.G.eval())(z)

    def describe(self):
        return (f"encoded by the {self.name.upper()}'s encoder, moved by the class-mean difference "
                "of the codes and decoded")

    def state_dict(self):
        return {**{n: v.state_dict() for n, v in {**self.nets(), **self.optimizers()}.items()},
                "means": self.means.clone()}

    def load_state_dict(self, state):
        for n, v in self.nets().items():
            v.load_state_dict(state[n])
        for n, v in self.optimizers().items():
            if n in state:
                v.load_state_dict(state[n])
        self.means.copy_(state["means"])


class VAE(Autoencoder):
    name = "vae"
    Config = VAEConfig
    LOG = ("mse", "kl", "lr")
    PRECISIONS = ("bf16", "fp32")  # bf16 1.35x faster on this CPU, same run (docs/training.md)

    def train_step(self, batch, step):
        """Minimise the negative evidence bound per image: |x - G(z)|^2 / (2 sigma^2) + beta KL,
        z drawn by reparameterisation (divided by the pixel count, the scale of the log's mse)."""
        c, x = self.config, batch[0]
        self.E.train(), self.G.train()
        mu, logvar = self.E(x).chunk(2, 1)
        recon = self.G(reparameterise(mu, logvar))
        sq = (recon - x).square().flatten(1).sum(1)
        kl = kl_divergence(mu, logvar)
        loss = (sq / (2 * c.likelihood_std ** 2) + c.beta * kl).mean() / x[0].numel()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        M.average_gradients([*self.E.parameters(), *self.G.parameters()])
        self.optimizer.step()
        self.update_ema(step)
        return {"mse": sq.mean().item() / x[0].numel(), "kl": kl.mean().item(), "lr": c.lr}


class BiGAN(Autoencoder):
    name = "bigan"
    Config = BiGANConfig
    LOG = ("d_adv", "eg_adv", "cycle", "lr")
    PRECISIONS = ("bf16", "fp32")  # bf16 1.44x faster on this CPU, same run (docs/training.md)
    VARIATIONAL = False

    def __init__(self, config, device="cpu", **options):
        super().__init__(config, device, **options)
        self.D = JointDiscriminator(config).to(device)
        self.optimizer_d = self.adam(self.D.parameters())

    def train_step(self, batch, step):
        """D on (x, E(x)) real vs (G(z), z) fake, then E and G on the flipped labels (the
        non-saturating form of BiGAN's minimax game), plus cycle_weight x |x - G(E(x))|^2 (ALICE's
        bound on the conditional entropy H(x | z); BiGAN alone only matches the joint
        distributions, which G(E(x)) = x need not satisfy in finite training)."""
        c, x = self.config, batch[0]
        self.E.train(), self.G.train()
        z = torch.randn(len(x), c.latent_dim, device=x.device)
        code, fake = self.E(x), self.G(z)
        real_s, fake_s = joint_scores(self.D, x, code.detach(), fake.detach(), z)
        d_adv = adversarial_loss("ns", real_s, True) + adversarial_loss("ns", fake_s, False)
        self.optimizer_d.zero_grad(set_to_none=True)
        d_adv.backward()
        M.average_gradients(self.D.parameters())
        self.optimizer_d.step()
        self.D.requires_grad_(False)
        real_s, fake_s = joint_scores(self.D, x, code, fake, z)
        eg_adv = adversarial_loss("ns", real_s, False) + adversarial_loss("ns", fake_s, True)
        with torch.set_grad_enabled(c.cycle_weight > 0):  # logged either way
            cycle = (self.G(code) - x).square().mean()
        self.optimizer.zero_grad(set_to_none=True)
        (eg_adv + c.cycle_weight * cycle).backward()
        self.D.requires_grad_(True)
        M.average_gradients([*self.E.parameters(), *self.G.parameters()])
        self.optimizer.step()
        self.update_ema(step)
        return {"d_adv": d_adv.item(), "eg_adv": eg_adv.item(), "cycle": cycle.item(), "lr": c.lr}
