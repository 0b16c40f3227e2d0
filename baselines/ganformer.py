"""The DSAE's GAN decoder: StyleGAN2 with GANformer's bipartite duplex attention (Hudson & Zitnick
2021) after every style layer, trained as an unconditional GAN (--method ganformer).

The latent is z (B, 1 + k, z_dim): a global latent and k component latents, all through one shared
mapping network. The global w drives the modulated convolutions as in StyleGAN2 (W+ over layers,
style mixing); the k component w's and the feature grid of every layer attend to each other both
ways (DuplexAttention), the components carried from layer to layer. k = 0 is the plain
unconditional StyleGAN2, the decoder of the DSAE's CNN and ResNet variants.

Everything else is stylegan.py's, reused rather than copied: the synthesis network (extended by a
subclass through its per-layer hook), the mapping and the residual discriminator, both with one
class, and StyleGAN2's training (non-saturating loss, lazy R1, EMA, augmentation). The method only
generates: it has no encoder, so it does not translate (TRANSLATES = False); the DSAE does.
Simplified against the reference code, said here once: no k-means centroids, gates, attention
dropout, latent position embeddings or self-attention in the mapping network; the skip generator
rather than the resnet one. Its training departs too (docs/recipes.md): D sees augmented images
(fixed p 0.5; GANformer's code has none), R1 and learning rate from its --autotune heuristic, CPU
sizes.
"""
import math
from dataclasses import dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import method as M
from baselines import stylegan

W_AVG_SAMPLES = 10000  # z's averaged for the mean w of truncation


@dataclass
class GANformerConfig(stylegan.StyleGANConfig):
    components: int = M.arg(16, "latent components k attending to the image (0: plain StyleGAN2)")
    heads: int = M.arg(1, "attention heads; they split each layer's channels")
    pos_dim: int = M.arg(32, "size of the sinusoidal position encoding of the grid (a multiple "
                             "of 4)")
    attention_from: int = M.arg(4, "smallest resolution with attention (4: every layer)")
    d_mapping_layers: int = 0  # not a flag: D is unconditional (StyleGAN2-ADA maps no label then)
    RECIPE = {}  # GANformer's code has no adaptive augmentation (ADA's RECIPE is stylegan.py's)

    PRESETS = {  # GANformer's: 16 components of 32 dimensions (its 512-d latent split 16 ways)
        "paper": dict(image_size=128, z_dim=32, components=16, pos_dim=32),
        "cpu": {**stylegan.StyleGANConfig.PRESETS["cpu"], "z_dim": 32, "components": 8,
                "pos_dim": 16},
        "tiny": {**stylegan.StyleGANConfig.PRESETS["tiny"], "components": 4, "pos_dim": 8},
    }

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("heads", "pos_dim"), nonnegative=("components",))
        if self.pos_dim % 4:
            raise ValueError(f"--pos-dim must be a multiple of 4 (sin and cos of x and y), "
                             f"got {self.pos_dim}")
        res = self.attention_from
        if res < 4 or res > self.image_size or res & (res - 1):
            raise ValueError(f"--attention-from must be a power of two from 4 to the image size "
                             f"{self.image_size}, got {res}")
        while res <= self.image_size:
            if self.channels(res) % self.heads:
                raise ValueError(f"--heads {self.heads} must divide the {self.channels(res)} "
                                 f"channels of the {res}x{res} layers")
            res *= 2

# -----------------------------------------------------------------------------
# duplex attention


def grid_encoding(res, dim):
    """Sinusoidal 2-D positions of a res x res grid, (res * res, dim) in row-major token order:
    sin and cos of x, then of y, at dim / 4 frequencies, geometric from one period across the
    image to one per 4 pixels."""
    n = dim // 4
    freqs = math.pi * torch.logspace(0, math.log2(max(res / 4, 1)), n, base=2)  # (n,)
    angles = torch.linspace(-1, 1, res)[:, None] * freqs  # (res, n)
    axis = torch.cat([angles.sin(), angles.cos()], 1)  # (res, 2n)
    x = axis[None].expand(res, res, 2 * n)  # [row, col] -> the column's encoding
    y = axis[:, None].expand(res, res, 2 * n)  # [row, col] -> the row's
    return torch.cat([x, y], 2).reshape(res * res, dim)


def attention(q, k, v, heads):
    """Multi-head softmax(q k^T / sqrt(d)) v: (B, Tq, D), (B, Tk, D), (B, Tk, D) -> (B, Tq, D).
    Each head is laid out (B, heads, T, D / heads), contiguous, as scaled_dot_product_attention's
    fast kernels need."""
    def split(t):
        B, T, D = t.shape
        return t.reshape(B, T, heads, D // heads).transpose(1, 2).contiguous()  # (B, h, T, d)

    out = F.scaled_dot_product_attention(split(q), split(k), split(v))  # (B, h, Tq, d)
    return out.transpose(1, 2).flatten(2)  # (B, Tq, D)


class DuplexAttention(nn.Module):
    """GANformer's duplex attention between the k components y (B, k, w_dim) and the features x
    (B, C, H, W) of one layer, n(x) being x layer-normalised over the channels of each position:
      (a) the components gather from the grid:  y' = y + out(attention(q = y, k = v = n(x)))
      (b) the grid is modulated by them:        a = attention(q = n(x), k = v = y')
                                                x' = x + gamma(a) * n(x) + beta(a)
    (b) is GANformer's multiplicative integration (gain and bias of the normalised features per
    position, set by what each position attended to) added to x rather than replacing it, so
    that the block starts as the identity. Keys and values of (b) come from y', which already
    carries what each component gathered from this grid: the role of GANformer's centroids.
    Sinusoidal positions enter the grid's keys (a) and queries (b), so that a component can
    attend to a region. The attention width is the layer's C channels, as in GANformer."""

    def __init__(self, channels, w_dim, res, heads, pos_dim):
        super().__init__()
        self.heads, linear = heads, stylegan.EqualLinear
        self.grid = linear(channels, 3 * channels)  # n(x) -> keys, values (a); queries (b)
        self.pos = linear(pos_dim, 2 * channels)  # positions -> keys (a); queries (b)
        self.gather = linear(w_dim, channels)  # y -> queries (a)
        self.gather_out = linear(channels, w_dim)  # (a) -> the update of y
        self.spread = linear(w_dim, 2 * channels)  # y' -> keys, values (b)
        self.modulation = linear(channels, 2 * channels)  # (b) -> gamma, beta
        # the identity at initialisation (y' = y, x' = x), so that the attention does not disturb
        # the StyleGAN2 synthesis (its unit-variance activations) before it has learned anything
        nn.init.zeros_(self.gather_out.weight)
        nn.init.zeros_(self.modulation.weight)
        self.register_buffer("encoding", grid_encoding(res, pos_dim), persistent=False)

    def forward(self, x, y):
        B, C, H, W = x.shape
        tokens = x.flatten(2).transpose(1, 2)  # (B, HW, C)
        normed = F.layer_norm(tokens, (C,))
        k_x, v_x, q_x = self.grid(normed).chunk(3, 2)  # each (B, HW, C)
        pos_k, pos_q = self.pos(self.encoding).chunk(2, 1)  # each (HW, C)
        q_y = self.gather(F.layer_norm(y, y.shape[2:]))  # (B, k, C)
        y = y + self.gather_out(attention(q_y, k_x + pos_k, v_x, self.heads))  # (a)
        k_y, v_y = self.spread(F.layer_norm(y, y.shape[2:])).chunk(2, 2)  # each (B, k, C)
        a = attention(q_x + pos_q, k_y, v_y, self.heads)  # (b): (B, HW, C)
        gain, bias = self.modulation(a).chunk(2, 2)
        tokens = tokens + gain * normed + bias
        return tokens.transpose(1, 2).reshape(B, C, H, W), y

# -----------------------------------------------------------------------------
# the generator


class Synthesis(stylegan.Synthesis):
    """StyleGAN2's synthesis with duplex attention after each style layer of resolution >=
    attention_from. ws (B, num_ws + k, w_dim): the global w of each layer (W+, as StyleGAN's),
    then the k component w's, which the attention of each layer updates for the next."""

    def __init__(self, c):
        super().__init__(c)
        self.attention = nn.ModuleDict({
            str(j): DuplexAttention(c.channels(layer.res), c.z_dim, layer.res, c.heads, c.pos_dim)
            for j, layer in enumerate(self.layers)
            if c.components and layer.res >= c.attention_from})

    def forward(self, ws, noise=None):
        return super().forward(ws[:, :self.num_ws], noise, ws[:, self.num_ws:])

    def after_layer(self, j, x, y):
        return self.attention[str(j)](x, y) if str(j) in self.attention else (x, y)


class Generator(nn.Module):
    """z (B, 1 + k, z_dim) -> images: z[:, 0] the global latent, z[:, 1:] the k components, each
    through one shared mapping network (StyleGAN's, with one class: unconditional)."""

    def __init__(self, c):
        super().__init__()
        self.mapping, self.synthesis = stylegan.Mapping(replace(c, num_classes=1)), Synthesis(c)
        self.num_ws, self.latent_shape = self.synthesis.num_ws, (1 + c.components, c.z_dim)

    def map(self, z):
        """z (B, n, z_dim) -> w (B, n, w_dim), each latent mapped alone."""
        y = torch.zeros(z.shape[0] * z.shape[1], dtype=torch.long, device=z.device)
        return self.mapping(z.flatten(0, 1), y).unflatten(0, z.shape[:2])

    def broadcast(self, w):
        """w (B, 1 + k, w_dim) -> ws (B, num_ws + k, w_dim): the global w at every layer."""
        return torch.cat([w[:, :1].expand(-1, self.num_ws, -1), w[:, 1:]], 1)

    def forward(self, z, noise=None):
        """z (B, 1 + k, z_dim), or flat (B, (1 + k) z_dim) as the DSAE's tau gives it -> images."""
        return self.synthesis(self.broadcast(self.map(z.reshape(len(z), *self.latent_shape))),
                              noise)

    def generate(self, z, noise=None):
        return self(z, noise)

# -----------------------------------------------------------------------------
# the method


class GANformer(stylegan.StyleGAN2):
    """The unconditional GANformer as a method: it trains and samples; the DSAE decodes with it."""
    name = "ganformer"
    Config = GANformerConfig
    OPTIONS = {"ema": True}
    TRANSLATES = False  # a decoder without an encoder: nothing to translate from

    def __init__(self, config, device="cpu", **options):
        D = stylegan.Discriminator(replace(config, num_classes=1))
        super().__init__(config, Generator(config), D, device, options, config.ada_target,
                         config.ada_kimg)

    def latents(self, y):
        """ws (B, num_ws + k, w_dim) for len(y) fakes: the global w at every layer, mixed from a
        random layer on with another z's (StyleGAN's style mixing), then the k component w's."""
        G, B = self.G, len(y)
        ws = G.broadcast(G.map(torch.randn(B, *G.latent_shape, device=y.device)))
        if torch.rand(()) < self.config.style_mixing:
            cut = int(torch.randint(1, G.num_ws, ()))
            ws[:, cut:G.num_ws] = G.map(torch.randn(B, 1, self.config.z_dim, device=y.device))
        return ws

    def train_step(self, batch, step):
        """StyleGAN2's step with every label the one class: the batch's labels are ignored."""
        x, y = batch
        return super().train_step((x, torch.zeros_like(y)), step)

    @torch.no_grad()
    def sample(self, y, seed=0, psi=1.0):
        """len(y) images (y only gives the count), latents and noise maps from the seed; psi < 1
        truncates every w, global and components, towards the mean w."""
        G, g, B = self.generator(), torch.Generator().manual_seed(seed), len(y)
        w = G.map(torch.randn(B, *G.latent_shape, generator=g).to(y.device))
        noise = [torch.randn(B, 1, layer.res, layer.res, generator=g).to(y.device)
                 for layer in G.synthesis.layers]
        if psi != 1:
            z = torch.randn(1, W_AVG_SAMPLES, self.config.z_dim, generator=g).to(y.device)
            mean = G.map(z).mean(1, keepdim=True)  # (1, 1, w_dim)
            w = mean + psi * (w - mean)
        return G.synthesis(G.broadcast(w), noise)

    def describe(self):
        return "an unconditional GANformer, the decoder of a DSAE; it does not translate by itself"

    def translate(self, x, y_source, y_target):
        raise ValueError("ganformer is a decoder and does not translate; translate with a dsae "
                         "checkpoint (its encoder and this decoder)")
