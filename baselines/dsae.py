"""DSAE (Fonnegra et al.): a decoupled self-supervised autoencoder.

The encoder E is a DINO-trained network (dino.py) and the decoder G an unconditional GANformer
(ganformer.py; k = 0 components: a plain StyleGAN2), trained apart. A linear map tau from E's
features to G's latent input joins them, and the feature-cycle loss of the paper (its eq. 1)

    L_Fcc = E_x || E(x) - E(G(tau(E(x)))) ||_1          (E frozen)

fine-tunes tau and G so that decoding an image's features gives an image with the same features.
The paper gives no more detail; the choices made here, each a flag:
- tau starts as the least-squares inverse of E o G on generated images (tau(E(G(z))) ~ z), so
  fine-tuning starts from decodes that already resemble their inputs rather than from noise;
- G keeps its adversarial loss (weight --adv-weight) against the decoder's discriminator, which
  trains on, so that decodes stay images while L_Fcc pulls their features;
- decoding uses the EMAs of G and of tau (the paper decodes with EMA weights; before issue #28 tau
  had none, and checkpoints from then decode with their raw tau as they did) and fixed noise
  maps, so an image decodes the same way every time.
Departures (docs/recipes.md): the parts' CPU sizes and training lengths; the decoder trains with
a fixed augmentation of what D sees (GANformer's code has none); the reconstruction axis of
eval.py is PSNR, where the paper measures a VGG perceptual distance.

Beyond the paper, so that DSAE sits in the same tables as PhenDiff: translate = decode(E(x) +
mean_E(target) - mean_E(source)), with class means of E's features on the training images;
reconstruct = decode(E(x)); `decode` turns any point of the feature space into an image, which
eval.py's `represent` uses for paths between phenotypes.
"""
import copy
from dataclasses import dataclass, field, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import method as M
from baselines import dino, encoders, ganformer, stylegan
from baselines.autoencoders import LatentShift


@dataclass
class DSAEConfig:
    image_size: int = 32
    in_channels: int = 3
    num_classes: int = 2
    steps: int = 2000  # of the run; set by train.py
    encoder: str = M.arg("", "the DINO run or checkpoint whose teacher encodes (train.py "
                             "--method dino)")
    decoder: str = M.arg("", "the GANformer run or checkpoint that decodes (train.py --method "
                             "ganformer)")
    lr: float = M.arg(0.0005, "Adam learning rate of tau and G, and of D (betas 0, 0.99)")
    fcc_weight: float = M.arg(1.0, "weight of the feature-cycle loss L_Fcc")
    adv_weight: float = M.arg(0.1, "weight of G's adversarial loss while fine-tuning")
    tau_samples: int = M.arg(4096, "generated images of tau's initial least-squares fit")
    r1_gamma: float = M.arg(None, "R1 weight of D (default: the decoder's)")
    augment: float = M.arg(None, "augmentation probability of what D sees (default: the "
                                 "decoder's)")
    ema_decay: float = M.arg(0.999, "EMA of G and tau, used to decode")
    encoder_config: dict = field(default_factory=dict)  # read from --encoder when a run starts
    decoder_config: dict = field(default_factory=dict)  # read from --decoder

    PRESETS = {"paper": dict(image_size=128), "cpu": dict(), "tiny": dict(tau_samples=256)}

    def __post_init__(self):
        if not self.encoder_config or not self.decoder_config:
            self.encoder_config = part(self.encoder, "encoder", "dino")["config"]
            self.decoder_config = part(self.decoder, "decoder", "ganformer")["config"]
        e, d = self.encoder_config, self.decoder_config
        for name in ("image_size", "in_channels"):
            if e[name] != d[name] or e[name] != getattr(self, name):
                raise ValueError(f"the encoder's {name} ({e[name]}), the decoder's ({d[name]}) "
                                 f"and the data's ({getattr(self, name)}) must agree; train "
                                 "both parts on the data of this run")
        self.r1_gamma = d["r1_gamma"] if self.r1_gamma is None else self.r1_gamma
        self.augment = d["augment"] if self.augment is None else self.augment
        M.check_ranges(self, positive=("lr", "tau_samples", "steps"),
                       nonnegative=("fcc_weight", "adv_weight", "r1_gamma"),
                       fraction=("augment", "ema_decay"))

    @classmethod
    def preset(cls, name, **overrides):
        return M.preset_config(cls, cls.PRESETS, name, overrides)


def part(path, flag, method):
    """The checkpoint of one trained part (--encoder: dino, --decoder: ganformer)."""
    if not path:
        raise ValueError(f"dsae needs --{flag} <a {method} run or checkpoint>: train it first "
                         f"with train.py --method {method}")
    ckpt = M.load_checkpoint(M.checkpoint_path(path))
    if ckpt["method"] != method:
        raise ValueError(f"--{flag} {path} is a {ckpt['method']} checkpoint; dsae's {flag} is "
                         f"a {method} one")
    return ckpt


def feature_cycle_loss(E, x, decode):
    """eq. 1 of the paper: L_Fcc = mean |E(x) - E(decode(E(x)))|. E is frozen (its weights get no
    gradient, E(x) is a fixed target); the gradient reaches decode through E(decoded).
    Returns (loss, decoded images)."""
    with torch.no_grad():
        f = E(x)
    decoded = decode(f)
    return F.l1_loss(E(decoded), f), decoded


def ridge_fit(f, z, ridge=1e-3):
    """(W, b) minimising |f W^T + b - z|^2 + lambda |W|^2 over the rows of f (n, d) and z (n, m),
    lambda = ridge x the mean squared feature x n (scale-free); in float64."""
    A = torch.cat([f, torch.ones(len(f), 1, device=f.device, dtype=f.dtype)], 1).double()
    penalty = ridge * A[:, :-1].square().sum(0).mean() * torch.eye(A.shape[1], device=f.device,
                                                                   dtype=A.dtype)
    penalty[-1, -1] = 0  # the bias is free
    solution = torch.linalg.solve(A.T @ A + penalty, A.T @ z.double())  # (d + 1, m)
    return solution[:-1].T.to(f.dtype), solution[-1].to(f.dtype)


class DSAE(LatentShift, stylegan.StyleGAN2):
    """E (frozen), tau and the decoder's G (each + EMA) and D, fine-tuned with L_Fcc; translation
    by the class-mean shift of E's features (LatentShift, shared with the autoencoders)."""
    name = "dsae"
    Config = DSAEConfig
    OPTIONS = {"ema": True}
    LOG = ("fcc", "g_adv", "d_adv", "r1", "lr")
    NETS = ("E", "tau", "G", "D", "G_ema", "tau_ema")

    def __init__(self, config, device="cpu", **options):
        c = config
        self.encoder_config = dino.DINOConfig(**c.encoder_config)
        self.decoder_config = ganformer.GANformerConfig(**c.decoder_config)
        D = stylegan.Discriminator(replace(self.decoder_config, num_classes=1))
        super().__init__(c, ganformer.Generator(self.decoder_config), D, device, options)
        e = self.encoder_config
        self.E = encoders.encoder(e.arch, e).to(device).requires_grad_(False).eval()
        self.tau = nn.Linear(self.E.dim, self.G.latent_shape[0] * self.G.latent_shape[1])
        self.tau.to(device)
        self.tau_ema = copy.deepcopy(self.tau).requires_grad_(False)
        self.optimizer_g = torch.optim.Adam([*self.G.parameters(), *self.tau.parameters()], c.lr,
                                            (0.0, 0.99))
        self.means = torch.zeros(c.num_classes, self.E.dim, device=device)

    def start(self, dataset):
        """Load the trained parts, fit tau, and take the class means of E on the training data."""
        teacher = part(self.config.encoder, "encoder", "dino")["state"]["teacher"]
        self.E.load_state_dict({k[len("backbone."):]: v for k, v in teacher.items()
                                if k.startswith("backbone.")})
        decoder = part(self.config.decoder, "decoder", "ganformer")["state"]
        self.G.load_state_dict(decoder["G_ema"])  # fine-tuning starts from the good generator
        self.G_ema.load_state_dict(decoder["G_ema"])
        self.D.load_state_dict(decoder["D"])
        self.fit_tau()
        M.broadcast_from_rank0(self.tau.parameters())  # the same fit on every process, bit for bit
        self.tau_ema.load_state_dict(self.tau.state_dict())
        self.refresh(dataset)

    @torch.no_grad()
    def fit_tau(self, batch=256):
        """tau = the ridge least-squares map from E(G(z)) to z over tau_samples generated images,
        so that tau(E(G(z))) ~ z from the start."""
        G, n, device = self.G_ema, self.config.tau_samples, self.means.device
        g = torch.Generator().manual_seed(0)
        z = torch.randn(n, self.tau.out_features, generator=g).to(device)
        f = torch.cat([self.E(G(zb, stylegan.fixed_noise(G.synthesis, len(zb), device)))
                       for zb in z.split(batch)])
        weight, bias = ridge_fit(f, z)
        self.tau.weight.copy_(weight)
        self.tau.bias.copy_(bias)

    def train_step(self, batch, step):
        """tau and G on L_Fcc + adv_weight x G's adversarial loss, then D on real vs decoded."""
        c, x = self.config, batch[0]
        one_class = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self.G.train(), self.D.train()
        # random noise maps while training, as the GAN trained
        fcc, decoded = feature_cycle_loss(self.E, x, lambda f: self.G(self.tau(f)))
        g_adv = self.adversarial(decoded, one_class)
        self.optimizer_g.zero_grad(set_to_none=True)
        (c.fcc_weight * fcc + c.adv_weight * g_adv).backward()
        M.average_gradients([*self.G.parameters(), *self.tau.parameters()])
        self.optimizer_g.step()
        decay = M.ema_decay(step, c.ema_decay)
        M.update_ema(self.G_ema, self.G, decay)
        M.update_ema(self.tau_ema, self.tau, decay)
        d_adv, r1 = self.discriminator_step(x, one_class, decoded, step)
        values = torch.stack([fcc, g_adv, d_adv, r1]).detach().tolist()
        return {**dict(zip(self.LOG, values)), "lr": c.lr}

    @torch.no_grad()
    def encode(self, x):
        return self.E(x)

    @torch.no_grad()
    def decode(self, features):
        G, tau = self.generator(), self.tau_ema if self.options["ema"] else self.tau
        noise = stylegan.fixed_noise(G.synthesis, len(features), features.device)
        return G(tau(features), noise)

    def describe(self):
        return (f"encoded by a DINO-trained {self.encoder_config.arch}, moved by the class-mean "
                "difference of the features and decoded by the GAN through tau")

    def state_dict(self):
        return {**super().state_dict(), "means": self.means.clone()}

    def load_state_dict(self, state):
        super().load_state_dict({"tau_ema": state["tau"], **state})  # before #28: no tau EMA
        self.means.copy_(state["means"])
