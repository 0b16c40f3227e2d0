"""CycleGAN (Zhu et al., ICCV 2017), the two-domain baseline of PhenDiff's Table 1.

As the PhenDiff paper uses it: one model per pair of conditions (DMSO <-> each concentration), so
train.py trains one run per pair (`--pairs DMSO:all`) and `phendiff.py translate --ckpt RUN_FOLDER`
picks the pair that covers --source and --target. A model has two generators, G_ab: A -> B and
G_ba: B -> A (ResNet generators), and two 70x70 PatchGAN discriminators with instance norm, trained
with the least-squares GAN loss, the cycle loss |G_ba(G_ab(a)) - a|_1 (lambda 10, both ways), the
identity loss |G_ab(b) - b|_1 (0.5 lambda) and a pool of 50 earlier fakes for the discriminators;
Adam 2e-4, (0.5, 0.999), constant, then linearly to 0 over the second half. Translation to B is
G_ab, to A is G_ba; reconstruction (Table 2) of an image of A is G_ba(a), which the identity loss
trains to return a unchanged.

The paper trains on unaligned pairs, one image of A and one of B per step; here a step takes
--batch-size images of each domain (train.py's per-class draw), so every step of every process
learns from both. Under torchrun each process keeps its own pools (their random draws differ):
checkpoints hold every rank's, and a resumed rank takes its own back.

Departures from the reference code (docs/recipes.md): that batch; CPU sizes (`cpu`: 32 px, 4
residual blocks of 32 channels, a 34x34 PatchGAN); flips and 90-degree turns instead of resized
random crops; an EMA of the generators, which translates.
"""
import copy
from dataclasses import dataclass

import torch
import torch.nn as nn

import files
import method as M
from baselines.gan import (GANConfig, ImagePool, ResnetGenerator, adversarial_loss, init_normal,
                           linear_decay, patch_trunk)


@dataclass
class CycleGANConfig(GANConfig):
    g_blocks: int = M.arg(6, "generator residual blocks (the paper: 9 at 256 px, 6 at 128 px)")
    d_layers: int = M.arg(3, "PatchGAN stride-2 layers (3: 70x70 patches)")
    lambda_cyc: float = M.arg(10.0, "cycle loss weight")
    lambda_idt: float = M.arg(0.5, "identity loss weight, times lambda_cyc")
    pool_size: int = M.arg(50, "earlier fakes kept for the discriminators")

    PRESETS = {  # the paper at 128x128; 32x32 on a CPU (34x34 patches); seconds for tests
        "paper": dict(image_size=128),
        "cpu": dict(image_size=32, g_channels=32, g_blocks=4, d_channels=32, d_layers=2),
        "tiny": dict(image_size=32, g_channels=8, g_blocks=1, d_channels=8, d_layers=2),
    }

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, nonnegative=("lambda_cyc", "lambda_idt", "pool_size"))
        if self.num_classes != 2:
            raise ValueError(f"cyclegan translates between two classes, got {self.num_classes}; "
                             "train.py makes a run per pair of --pairs")


def generator(c):
    """The ResNet generator with CycleGAN's choices."""
    return init_normal(ResnetGenerator(c.in_channels, c.in_channels, c.g_channels, c.g_blocks,
                                       kernel=3, padding_mode="reflect", affine=False, bias=True))


def discriminator(c):
    """PatchGAN: stride-2 4x4 convs (LeakyReLU 0.2, instance norm after the first), then a stride-1
    conv with norm and a stride-1 conv to one realness logit per patch."""
    layers, ch = patch_trunk(c.in_channels, c.d_channels, c.d_layers, 0.2, norm=True)
    out = min(2 * ch, 8 * c.d_channels)
    layers += [nn.Conv2d(ch, out, 4, 1, 1), nn.InstanceNorm2d(out), nn.LeakyReLU(0.2, True),
               nn.Conv2d(out, 1, 4, 1, 1)]
    return init_normal(nn.Sequential(*layers))


class CycleGAN(M.Method):
    name = "cyclegan"
    Config = CycleGANConfig
    OPTIONS = {"ema": True}
    LOG = ("d_a", "d_b", "g_adv", "cycle", "identity", "lr")
    TWO_CLASSES = True  # train.py: one run per class pair of --pairs
    PER_CLASS_BATCH = True  # --batch-size images of A and as many of B in every step
    PER_RANK = ("pool_a", "pool_b")  # each process's own earlier fakes

    def __init__(self, config, device="cpu", **options):
        self.config, self.options = config, self.check_options(options)
        self.G_ab, self.G_ba = generator(config).to(device), generator(config).to(device)
        self.D_a, self.D_b = discriminator(config).to(device), discriminator(config).to(device)
        self.G_ab_ema = copy.deepcopy(self.G_ab).requires_grad_(False).eval()
        self.G_ba_ema = copy.deepcopy(self.G_ba).requires_grad_(False).eval()
        g_params = [*self.G_ab.parameters(), *self.G_ba.parameters()]
        d_params = [*self.D_a.parameters(), *self.D_b.parameters()]
        self.optimizer_g = torch.optim.Adam(g_params, config.lr, (config.beta1, 0.999))
        self.optimizer_d = torch.optim.Adam(d_params, config.lr, (config.beta1, 0.999))
        self.pool_a, self.pool_b = ImagePool(config.pool_size), ImagePool(config.pool_size)

    def train_step(self, batch, step):
        """A generator step on both directions, then a discriminator step on both domains."""
        c, (x, y) = self.config, batch
        a, b = x[y == 0], x[y == 1]
        if not len(a) or not len(b):
            raise ValueError(f"cyclegan learns from images of both classes in every batch, got "
                             f"{len(a)} of A and {len(b)} of B (train.py draws --batch-size of "
                             "each)")
        lr = c.lr * linear_decay(step, c.steps, c.decay_from)
        nets = (self.G_ab, self.G_ba, self.D_a, self.D_b)
        for net in nets:
            net.train()
        # generators: fool the discriminators, cycle back, leave images of the target domain alone
        self.D_a.requires_grad_(False), self.D_b.requires_grad_(False)
        fake_b, fake_a = self.G_ab(a), self.G_ba(b)
        adv = (adversarial_loss("lsgan", self.D_b(fake_b), True)
               + adversarial_loss("lsgan", self.D_a(fake_a), True))
        cycle = (self.G_ba(fake_b) - a).abs().mean() + (self.G_ab(fake_a) - b).abs().mean()
        identity = (self.G_ab(b) - b).abs().mean() + (self.G_ba(a) - a).abs().mean()
        self.optimizer_g.zero_grad(set_to_none=True)
        (adv + c.lambda_cyc * cycle + c.lambda_cyc * c.lambda_idt * identity).backward()
        M.average_gradients([*self.G_ab.parameters(), *self.G_ba.parameters()])
        M.set_lr(self.optimizer_g, lr)
        self.optimizer_g.step()
        # discriminators: real vs fakes, some from the pool; halved so D learns slower than G
        self.D_a.requires_grad_(True), self.D_b.requires_grad_(True)
        d_a = 0.5 * (adversarial_loss("lsgan", self.D_a(a), True)
                     + adversarial_loss("lsgan", self.D_a(self.pool_a.query(fake_a)), False))
        d_b = 0.5 * (adversarial_loss("lsgan", self.D_b(b), True)
                     + adversarial_loss("lsgan", self.D_b(self.pool_b.query(fake_b)), False))
        self.optimizer_d.zero_grad(set_to_none=True)
        (d_a + d_b).backward()
        M.average_gradients([*self.D_a.parameters(), *self.D_b.parameters()])
        M.set_lr(self.optimizer_d, lr)
        self.optimizer_d.step()
        decay = M.ema_decay(step, c.ema_decay)
        M.update_ema(self.G_ab_ema, self.G_ab, decay)
        M.update_ema(self.G_ba_ema, self.G_ba, decay)
        values = torch.stack([d_a, d_b, adv, cycle, identity]).detach().tolist()
        return {**dict(zip(self.LOG, values)), "lr": lr}

    def translate(self, x, y_source, y_target):
        """Per image: G_ab when the target is B (class 1), G_ba when it is A."""
        ema = self.options["ema"]
        to_b, to_a = (self.G_ab_ema, self.G_ba_ema) if ema else (self.G_ab.eval(), self.G_ba.eval())
        y = M.labels(y_target, x).view(-1, 1, 1, 1)
        if (y == 1).all():
            return to_b(x)
        return to_a(x) if (y == 0).all() else torch.where(y == 1, to_b(x), to_a(x))

    NETS = ("G_ab", "G_ba", "D_a", "D_b", "G_ab_ema", "G_ba_ema")

    def state_dict(self):
        state = {n: getattr(self, n).state_dict() for n in self.NETS}
        return {**state, "pool_a": self.pool_a.state_dict(), "pool_b": self.pool_b.state_dict(),
                "optimizer_g": self.optimizer_g.state_dict(),
                "optimizer_d": self.optimizer_d.state_dict()}

    def load_state_dict(self, state):
        for n in self.NETS:
            getattr(self, n).load_state_dict(state[n])
        for n in ("pool_a", "pool_b", "optimizer_g", "optimizer_d"):
            if n in state:
                getattr(self, n).load_state_dict(state[n])

    @staticmethod
    def combine(loaded):
        """The pair runs of one --pairs command as one translator: (Pairs, a checkpoint-like
        dict)."""
        pairs = Pairs(loaded)
        first = loaded[0][1]
        return pairs, {**first, "classes": pairs.classes, "state": None,
                       "step": min(ckpt["step"] for _, ckpt in loaded)}


class Pairs(M.Method):
    """Pair models as one method over all their classes: each (source, target) goes to the first
    pair model that holds both classes (a reconstruction to the first that holds the class)."""
    name = "cyclegan"

    def __init__(self, loaded):
        self.classes = sorted({c for _, ckpt in loaded for c in ckpt["classes"]},
                              key=files.class_key)
        self.models = [(ckpt["classes"], m) for m, ckpt in loaded]

    def model_for(self, source, target):
        s, t = self.classes[source], self.classes[target]
        for classes, m in self.models:
            if s in classes and t in classes:
                return m, classes.index(s), classes.index(t)
        pairs = ", ".join(" <-> ".join(c) for c, _ in self.models)
        raise ValueError(f"no CycleGAN pair model translates {s} -> {t}; the pairs: {pairs}")

    def translate(self, x, y_source, y_target):
        ys, yt = M.labels(y_source, x), M.labels(y_target, x)
        out = torch.empty_like(x)
        for s, t in {(int(s), int(t)) for s, t in zip(ys, yt)}:
            m, ls, lt = self.model_for(s, t)
            mask = (ys == s) & (yt == t)
            out[mask] = m.translate(x[mask], ls, lt)
        return out
