"""The pieces the GAN baselines share, each written once: their config fields, the ResNet
image-to-image generator, PatchGAN discriminator trunks, adversarial losses, the WGAN gradient
penalty, the image pool, one optimizer step over several networks."""
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import method as M


@dataclass
class GANConfig:
    """Fields every image-to-image GAN has; a baseline's config adds its own and its PRESETS."""
    image_size: int = 128
    in_channels: int = 3
    num_classes: int = 2
    steps: int = 200000  # of the run: the learning-rate decay; set by train.py
    g_channels: int = M.arg(64, "generator channels at full resolution")
    g_blocks: int = M.arg(6, "generator residual blocks")
    d_channels: int = M.arg(64, "discriminator channels of its first layer")
    d_layers: int = M.arg(3, "discriminator stride-2 layers")
    lr: float = M.arg(2e-4, "Adam learning rate of generators and discriminators")
    beta1: float = M.arg(0.5, "Adam beta1 (beta2 is 0.999)")
    decay_from: float = M.arg(0.5, "fraction of the run after which the lr decays linearly to 0")
    ema_decay: float = M.arg(0.999, "EMA of the generators, used to translate (0: none)")
    PRESETS = {}

    def __post_init__(self):
        M.check_ranges(self, positive=("g_channels", "g_blocks", "d_channels", "d_layers", "lr",
                                       "steps"),
                       fraction=("beta1", "decay_from", "ema_decay"))
        if self.image_size % 4:
            raise ValueError(f"image size {self.image_size} must be divisible by 4 "
                             "(two down-samplings)")

    @classmethod
    def preset(cls, name, **overrides):
        return M.preset_config(cls, cls.PRESETS, name, overrides)


def init_normal(module, std=0.02):
    """N(0, 0.02) weights and zero biases in every conv and linear layer (pix2pix / CycleGAN)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            nn.init.normal_(m.weight, 0.0, std)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class ResidualBlock(nn.Module):
    """conv3x3-IN-ReLU-conv3x3-IN plus the input (He et al. 2016, as the image-to-image GANs use
    it)."""

    def __init__(self, ch, padding_mode, affine, bias):
        super().__init__()
        conv = lambda: nn.Conv2d(ch, ch, 3, padding=1, padding_mode=padding_mode,  # noqa: E731
                                 bias=bias)
        self.body = nn.Sequential(conv(), nn.InstanceNorm2d(ch, affine=affine), nn.ReLU(True),
                                  conv(), nn.InstanceNorm2d(ch, affine=affine))

    def forward(self, x):
        return x + self.body(x)


class ResnetGenerator(nn.Module):
    """Johnson et al. 2016's transformer network as CycleGAN and StarGAN use it: a 7x7 stem, two
    stride-2 down-samplings, n residual blocks, two stride-2 up-samplings, a 7x7 conv and tanh.

    The two papers differ only in details, which are arguments here: CycleGAN has 3x3 resampling
    kernels, reflection padding, instance norm without affine parameters and biases; StarGAN 4x4
    kernels, zero padding, affine instance norm and no biases."""

    def __init__(self, in_ch, out_ch, ch, n_blocks, kernel, padding_mode, affine, bias):
        super().__init__()
        norm = lambda c: nn.InstanceNorm2d(c, affine=affine)  # noqa: E731
        layers = [nn.Conv2d(in_ch, ch, 7, padding=3, padding_mode=padding_mode, bias=bias),
                  norm(ch), nn.ReLU(True)]
        for _ in range(2):  # (H, W) -> (H/2, W/2), channels doubled
            layers += [nn.Conv2d(ch, 2 * ch, kernel, 2, 1, bias=bias), norm(2 * ch), nn.ReLU(True)]
            ch *= 2
        layers += [ResidualBlock(ch, padding_mode, affine, bias) for _ in range(n_blocks)]
        for _ in range(2):  # kernel 3 needs output_padding 1 to double the size exactly
            layers += [nn.ConvTranspose2d(ch, ch // 2, kernel, 2, 1, output_padding=kernel % 2,
                                          bias=bias),
                       norm(ch // 2), nn.ReLU(True)]
            ch //= 2
        layers += [nn.Conv2d(ch, out_ch, 7, padding=3, padding_mode=padding_mode, bias=bias),
                   nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


def patch_trunk(in_ch, ch, n_down, slope, norm, max_mult=8):
    """PatchGAN trunk: n_down 4x4 stride-2 convs, channels doubling (at most max_mult x ch),
    LeakyReLU; instance norm after all but the first when norm. Returns (layers, out channels)."""
    layers, c_in, c = [], in_ch, ch
    for i in range(n_down):
        layers += [nn.Conv2d(c_in, c, 4, 2, 1)]
        layers += [nn.InstanceNorm2d(c)] if norm and i > 0 else []
        layers += [nn.LeakyReLU(slope, True)]
        c_in, c = c, min(2 * c, max_mult * ch)
    return layers, c_in

# -----------------------------------------------------------------------------
# losses


def adversarial_loss(kind, logits, real):
    """The GAN losses of the baselines, for the discriminator's logits on images it should call
    real (real=True) or fake: "lsgan" (Mao et al. 2017; CycleGAN), "wgan" (Arjovsky et al. 2017;
    StarGAN, with gradient_penalty), "ns", the non-saturating logistic loss (Goodfellow et al.
    2014), and "hinge" (Lim & Ye 2017; DC-VAE's code). A generator's loss is generator_loss."""
    if kind == "lsgan":
        return F.mse_loss(logits, torch.full_like(logits, 1.0 if real else 0.0))
    if kind == "wgan":
        return -logits.mean() if real else logits.mean()
    if kind == "ns":
        return F.softplus(-logits).mean() if real else F.softplus(logits).mean()
    if kind == "hinge":
        return F.relu(1 - logits).mean() if real else F.relu(1 + logits).mean()
    raise ValueError(f"unknown GAN loss {kind!r}; choose lsgan, wgan, ns or hinge")


def generator_loss(kind, logits):
    """A generator's loss on the discriminator's logits for its fakes: the discriminator's loss
    as if they were real, except for the hinge loss, whose generator maximises the raw score
    (-mean D(fake)), as hinge GANs train it."""
    return -logits.mean() if kind == "hinge" else adversarial_loss(kind, logits, True)


def gradient_penalty(critic, real, fake, generator=None):
    """WGAN-GP (Gulrajani et al. 2017): mean (||d critic / d x_hat||_2 - 1)^2 at random points
    x_hat = a real + (1 - a) fake, a ~ U(0, 1) per image. Differentiable (create_graph), so the
    penalty trains the critic."""
    a = torch.rand(len(real), 1, 1, 1, device=real.device, generator=generator)
    x_hat = (a * real + (1 - a) * fake).requires_grad_(True)
    grad, = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)
    return (grad.flatten(1).norm(dim=1) - 1).pow(2).mean()


def adam_step(loss, *optimizers):
    """One step of each optimizer's networks on loss, gradients averaged over processes (a
    network the loss does not reach has no gradient and is left alone)."""
    for o in optimizers:
        o.zero_grad(set_to_none=True)
    loss.backward()
    M.average_gradients([p for o in optimizers for g in o.param_groups for p in g["params"]])
    for o in optimizers:
        o.step()


def linear_decay(step, steps, decay_from):
    """Learning-rate factor of the image-to-image GANs: 1 until decay_from x steps, then linearly
    to 0 at steps (CycleGAN: 100 + 100 epochs; StarGAN: 100k + 100k iterations)."""
    start = int(decay_from * steps)
    return 1.0 if step < start else max(0.0, 1 - (step - start) / max(1, steps - start))


class ImagePool:
    """Shrivastava et al. 2017, as CycleGAN uses it: the discriminator sees, with probability 1/2,
    an older fake from a buffer of `size` instead of the newest, which damps oscillation."""

    def __init__(self, size):
        self.size, self.images = size, None

    def query(self, fakes):
        if self.size == 0:
            return fakes
        if self.images is not None:  # a resumed pool comes from a checkpoint loaded on the CPU
            self.images = self.images.to(fakes.device)
        out = []
        for f in fakes.detach():
            if self.images is None or len(self.images) < self.size:  # fill the buffer first
                self.images = f[None] if self.images is None else torch.cat([self.images, f[None]])
                out.append(f)
            elif torch.rand(()) < 0.5:  # return a stored fake and keep the new one in its place
                i = int(torch.randint(len(self.images), ()))
                out.append(self.images[i].clone())
                self.images[i] = f
            else:
                out.append(f)
        return torch.stack(out)

    def state_dict(self):
        return {"images": self.images}

    def load_state_dict(self, state):
        images = state["images"]
        self.images = None if images is None else images.clone()
