"""The class-conditional UNet epsilon-model of PhenDiff.

Read top-down: embeddings, the two building blocks (ResBlock, SelfAttention), the
resamplers, the assembled UNet, then a small benchmark command.
The network is `model(x_t, t, y) -> eps` (or -> v with `prediction="v"`, which ddim.py turns
into eps); class y is embedded and added to the time embedding, and index `num_classes` is the
reserved null class for classifier-free guidance.
"""
import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


def _flag(default, help, **kw):
    """A field that train.py offers as a flag, with this help (method.arg, below the torch
    floor)."""
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class UNetConfig:
    """Fields with a "help" are flags of train.py (--base-channels, ...); the others follow the
    data."""
    image_size: int = 64
    in_channels: int = 3
    base_channels: int = _flag(64, "channels at full resolution")
    channel_mult: tuple = _flag((1, 2, 2, 4),
                                "channels per level = base_channels * mult, e.g. 1,2,2")
    num_res_blocks: int = _flag(2, "encoder ResNet blocks per level; the decoder uses one more")
    attn_resolutions: tuple = _flag((16,),
                                    "feature-map sizes with self-attention, e.g. 8 ('': none)")
    num_classes: int = 25  # real classes; index num_classes is the null class
    dropout: float = _flag(0.0, "dropout in the ResNet blocks")
    head_channels: int = _flag(64, "channels per attention head (at least one head)")
    prediction: str = _flag("eps", "network output: eps (the paper) or v (ddim.eps_from_v), which "
                            "small models need", choices=("eps", "v"))

    def __post_init__(self):
        self.channel_mult, self.attn_resolutions = (tuple(self.channel_mult),
                                                    tuple(self.attn_resolutions))
        factor = 2 ** (len(self.channel_mult) - 1)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be divisible by {factor} for "
                             f"{len(self.channel_mult)} levels; change image_size or channel_mult")
        sizes = [self.image_size // 2 ** i for i in range(len(self.channel_mult))]
        if not set(self.attn_resolutions) <= set(sizes):
            raise ValueError(f"attn_resolutions {self.attn_resolutions} must be among the "
                             f"feature sizes {sizes}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes {self.num_classes} must be at least 1")
        if self.prediction not in ("eps", "v"):
            raise ValueError(f"prediction {self.prediction!r} must be 'eps' (the paper) or 'v'")

    @classmethod
    def preset(cls, name, **overrides):
        """A named configuration; keyword overrides replace single fields (e.g. num_classes)."""
        presets = {
            # the paper's scale: 128/256/512 channels, 2 encoder / 3 decoder blocks,
            # attention at 32x32
            "paper": dict(image_size=128, base_channels=128, channel_mult=(1, 2, 4),
                          num_res_blocks=2, attn_resolutions=(32,), head_channels=64),
            "small": dict(image_size=64, base_channels=32, channel_mult=(1, 2, 2, 4),
                          num_res_blocks=2, attn_resolutions=(16, 8), head_channels=32),
            "tiny": dict(image_size=32, base_channels=16, channel_mult=(1, 2, 2), num_res_blocks=1,
                         attn_resolutions=(8,), head_channels=16),
        }
        if name not in presets:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
        fields = {f.name for f in dataclasses.fields(cls)}
        if not set(overrides) <= fields:
            raise ValueError(f"unknown UNetConfig fields {sorted(set(overrides) - fields)}; "
                             f"valid: {sorted(fields)}")
        return cls(**{**presets[name], **overrides})


def _groups(channels):
    """GroupNorm groups: 32 when possible, otherwise the largest power of two dividing channels."""
    return math.gcd(32, channels)


def timestep_embedding(t, dim, max_period=10000.0):
    """Sinusoidal embedding of integer timesteps (B,) -> (B, dim), as in the Transformer / DDPM."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def silu_fresh(h):
    """SiLU of a normalisation's fresh output, in place where no gradient is recorded (sampling):
    one activation-sized allocation fewer; training keeps the input for SiLU's backward."""
    return F.silu(h, inplace=not torch.is_grad_enabled())


class ResBlock(nn.Module):
    """Two 3x3 convs conditioned in between by the (time + class) embedding; starts as the identity.

    The embedding sets a per-channel scale and shift after the second GroupNorm (FiLM,
    guided-diffusion's scale-shift norm), so a class can rescale features rather than only offset
    them."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout):
        super().__init__()
        self.norm1 = nn.GroupNorm(_groups(in_ch), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(_groups(out_ch), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        # residual branch is 0 at init: the block is its skip path
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x, emb):
        h = self.conv1(silu_fresh(self.norm1(x)))
        # norm2(h) * (1 + scale) + shift, with norm2's affine folded into per-(B, C) factors
        n, (scale, shift) = self.norm2, self.emb(emb).chunk(2, dim=1)  # 2 x (B, out_ch)
        weight, bias = n.weight * (1 + scale), n.bias * (1 + scale) + shift  # (B, out_ch)
        if h.is_contiguous():
            # the batch seen as one image of B * out_ch channels in B * groups groups (a batch
            # element's channels are adjacent), so group_norm applies the per-(B, C) factors in
            # its own pass; a broadcast addcmul after it took 7 % of a bf16 translation on the CPU
            h = F.group_norm(h.reshape(1, -1, *h.shape[2:]), len(h) * n.num_groups,
                             weight.flatten(), bias.flatten(), n.eps).view_as(h)
        else:  # channels_last (the GPU's layout) cannot be seen so: the same in two passes
            h = torch.addcmul(bias[..., None, None].to(h.dtype), F.group_norm(h, n.num_groups,
                              eps=n.eps), weight[..., None, None].to(h.dtype))
        h = self.conv2(self.dropout(silu_fresh(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over all H*W positions: global context at low resolution."""

    def __init__(self, channels, head_channels):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        if channels % self.heads:
            raise ValueError(f"{channels} channels do not split into {self.heads} heads; "
                             "change head_channels")
        self.norm = nn.GroupNorm(_groups(channels), channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = nn.Linear(channels, channels)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x):
        B, C, H, W = x.shape
        # (B, HW, C), a free view for channels_last input
        h = self.norm(x).flatten(2).transpose(1, 2)
        qkv = self.qkv(h).view(B, H * W, 3, self.heads, C // self.heads)
        # SDPA's fast kernels need head_dim as the stride-1 axis, as in this view (a copy measured
        # no faster); a layout with HW innermost, transposed afterwards, silently takes a ~3.5x
        # slower path
        q, k, v = qkv.permute(2, 0, 3, 1, 4)  # 3 x (B, nh, HW, hd)
        if q.is_cpu and q.dtype == torch.bfloat16:
            # the CPU's bf16 attention backward runs 1.7-6x slower than its float32 one (6x at
            # 16x4x64x32), so under autocast attention stays float32 there; output back to bf16
            with torch.autocast("cpu", enabled=False):
                h = F.scaled_dot_product_attention(q.float(), k.float(), v.float()).to(q.dtype)
        else:
            h = F.scaled_dot_product_attention(q, k, v)  # (B, nh, HW, hd)
        h = self.proj(h.transpose(1, 2).reshape(B, H * W, C))  # (B, HW, C)
        return x + h.transpose(1, 2).reshape(B, C, H, W)


class Block(nn.Module):
    """One UNet stage: a ResBlock, followed by self-attention at the configured resolutions."""

    def __init__(self, in_ch, out_ch, emb_dim, dropout, attn, head_channels):
        super().__init__()
        self.res = ResBlock(in_ch, out_ch, emb_dim, dropout)
        self.attn = SelfAttention(out_ch, head_channels) if attn else nn.Identity()

    def forward(self, x, emb):
        return self.attn(self.res(x, emb))


def downsample(ch):
    return nn.Conv2d(ch, ch, 3, stride=2, padding=1)  # learned, strided: (H, W) -> (H/2, W/2)


class Upsample(nn.Module):
    def __init__(self, ch):
        super().__init__()
        # nearest + conv avoids transposed-conv checkerboards
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x):
        if x.is_cuda or x.is_contiguous(memory_format=torch.channels_last):
            return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
        # the CPU's nearest kernel is ~2x faster on channels_last, round trip included
        # (forward + backward of 16x64x32x32: 108 -> 57 ms)
        up = F.interpolate(x.contiguous(memory_format=torch.channels_last), scale_factor=2.0,
                           mode="nearest")
        return self.conv(up.contiguous())


class Level(nn.Module):
    """The blocks at one resolution and the resampler that leaves it (None at the end)."""

    def __init__(self, blocks, resample):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.resample = resample


class UNet(nn.Module):
    """Encoder levels (blocks, then a strided conv), a middle block with attention, and decoder
    levels whose blocks each take one encoder activation as a skip connection. Attention sits at
    the levels whose size is in attn_resolutions for config.image_size; other input sizes work
    (divisible by 2^(levels - 1)) with attention at the same levels."""

    def __init__(self, config):
        super().__init__()
        self.config = c = config
        self.null_label = c.num_classes
        self.prediction = c.prediction  # read by ddim, which turns a v output into eps
        ch, emb_dim = c.base_channels, 4 * c.base_channels
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(),
                                      nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(c.num_classes + 1, emb_dim)  # last row: the null class
        self.conv_in = nn.Conv2d(c.in_channels, ch, 3, padding=1)

        def block(i, o, res):
            return Block(i, o, emb_dim, c.dropout, res in c.attn_resolutions, c.head_channels)

        skips, res, last = [ch], c.image_size, len(c.channel_mult) - 1
        self.encoder = nn.ModuleList()
        for i, mult in enumerate(c.channel_mult):
            blocks = []
            for _ in range(c.num_res_blocks):
                blocks.append(block(ch, c.base_channels * mult, res))
                ch = c.base_channels * mult
                skips.append(ch)
            if i < last:  # the downsampled map is a skip too
                skips.append(ch)
                res //= 2
            self.encoder.append(Level(blocks, downsample(ch) if i < last else None))
        self.mid_res1 = ResBlock(ch, ch, emb_dim, c.dropout)
        self.mid_attn = SelfAttention(ch, c.head_channels)
        self.mid_res2 = ResBlock(ch, ch, emb_dim, c.dropout)
        self.decoder = nn.ModuleList()
        for i, mult in reversed(list(enumerate(c.channel_mult))):
            blocks = []
            for _ in range(c.num_res_blocks + 1):  # one more: it also takes the downsampled skip
                blocks.append(block(ch + skips.pop(), c.base_channels * mult, res))
                ch = c.base_channels * mult
            if i > 0:
                res *= 2
            self.decoder.append(Level(blocks, Upsample(ch) if i > 0 else None))
        self.norm_out = nn.GroupNorm(_groups(ch), ch)
        self.conv_out = nn.Conv2d(ch, c.in_channels, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the model predicts eps = 0 (or v = 0) at init
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x, t, y):
        """x (B, C, H, W) noisy images, t (B,) timesteps, y (B,) labels -> predicted eps (or v)
        (B, C, H, W)."""
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if x.shape[1] != self.config.in_channels or x.shape[2] % factor or x.shape[3] % factor:
            raise ValueError(f"input of shape {tuple(x.shape)}: need {self.config.in_channels} "
                             f"channels and height/width divisible by {factor}")
        # (B, emb)
        emb = self.time_mlp(timestep_embedding(t, self.config.base_channels)) + self.class_emb(y)
        emb = F.silu(emb)  # shared input of every block's embedding projection
        h = self.conv_in(x)
        hs = [h]
        for level in self.encoder:
            for blk in level.blocks:
                h = blk(h, emb)
                hs.append(h)
            if level.resample is not None:
                h = level.resample(h)
                hs.append(h)
        h = self.mid_res2(self.mid_attn(self.mid_res1(h, emb)), emb)
        for level in self.decoder:
            for blk in level.blocks:
                h = blk(torch.cat([h, hs.pop()], dim=1), emb)  # (B, ch + skip_ch, H, W)
            if level.resample is not None:
                h = level.resample(h)
        return self.conv_out(silu_fresh(self.norm_out(h)))


def count_parameters(model):
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------
# python model.py bench --preset small --batch 32: no-grad forward throughput. Training steps and
# translation, fp32 and bf16, beside diffusers' UNet: tools/bench.py (model.py imports only torch).

def bench(args):
    """No-grad forward throughput of a preset, and its parameters and FLOPs."""
    config = UNetConfig.preset(args.preset)
    model = UNet(config).to(args.device, memory_format=torch.channels_last).eval()
    s = config.image_size
    x = (torch.randn(args.batch, config.in_channels, s, s, device=args.device)
         .to(memory_format=torch.channels_last))
    t = torch.randint(0, 1000, (args.batch,), device=args.device)
    y = torch.randint(0, config.num_classes, (args.batch,), device=args.device)
    with torch.device("meta"), FlopCounterMode(display=False) as flops:  # shapes only: free
        UNet(config)(x[:1].to("meta"), t[:1].to("meta"), y[:1].to("meta"))
    print(f"preset {args.preset}: {count_parameters(model):,} parameters, {s}x{s}, "
          f"{flops.get_total_flops() / 1e9:.2f} GFLOP per image, batch {args.batch}, {args.device}")
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        for _ in range(args.warmup):  # first calls pick kernels and allocate
            model(x, t, y)
        sync()
        start = time.perf_counter()
        for _ in range(args.iters):
            model(x, t, y)
        sync()
    elapsed = time.perf_counter() - start
    print(f"{args.iters * args.batch / elapsed:.1f} images/s "
          f"({elapsed / args.iters:.3f} s per batch)")


def _count(text):
    """A positive integer flag (files.integer(1), which model.py may not import)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def main(argv=None):
    p = argparse.ArgumentParser(prog="model.py", description="the UNet's own command line")
    sub = p.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bench", help="no-grad UNet forward throughput")
    b.add_argument("--preset", default="small", help="paper | small | tiny (%(default)s)")
    b.add_argument("--batch", type=_count, default=32)
    b.add_argument("--iters", type=_count, default=5)
    b.add_argument("--warmup", type=_count, default=2)
    b.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    b.set_defaults(run=bench)
    args = p.parse_args(argv)
    try:  # as files.run_command, which model.py may not import (it imports only torch)
        args.run(args)
    except ValueError as e:
        p.exit(2, f"{p.prog} {args.cmd}: error: {e}\n")


if __name__ == "__main__":
    main()
