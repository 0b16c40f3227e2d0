"""The three image encoders of the DSAE paper's comparison (its Fig. 2), DINO-trained by dino.py:
a Vision Transformer (the paper's main one), a bottleneck ResNet and a CNN (the residual trunk of
the StyleGAN2 discriminator). Each maps images (B, C, H, W) in [-1, 1], any channel count, to
features (B, dim) and takes images of other sizes than it was built for (DINO's local crops are
smaller); `encoder(arch, config)` builds one. Last, the domain encoder of the reproduction's
Table 1 (reproduce.py): the CNN trained as a plain classifier of the classes, no DSAE part.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

import data

from baselines.stylegan import DBlock, EqualConv2d

ARCHS = ("cnn", "resnet", "vit")

# -----------------------------------------------------------------------------
# Vision Transformer (Dosovitskiy et al. 2021, as DINO builds it)


class DropPath(nn.Module):
    """Stochastic depth: drops a residual branch for whole samples with probability p and scales
    the kept ones by 1 / (1 - p), so the expectation is unchanged; the identity in eval mode."""

    def __init__(self, p):
        super().__init__()
        self.p = p

    def forward(self, x):
        if not self.training or self.p == 0:
            return x
        keep = torch.rand(len(x), *(1,) * (x.dim() - 1), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1 - self.p)


class Attention(nn.Module):
    """Multi-head self-attention through scaled_dot_product_attention."""

    def __init__(self, dim, heads):
        super().__init__()
        self.heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, D = x.shape
        # one copy makes q, k, v each contiguous: a strided view falls back to a slow kernel
        qkv = self.qkv(x).view(B, N, 3, self.heads, D // self.heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous()  # each (B, heads, N, head_dim)
        x = F.scaled_dot_product_attention(q, k, v)  # (B, heads, N, head_dim)
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Block(nn.Module):
    """Pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x)), MLP ratio 4, GELU."""

    def __init__(self, dim, heads, drop_path):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim, eps=1e-6), nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
        self.drop_path = DropPath(drop_path)

    def forward(self, x):
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """Patch embedding (a conv of stride = patch), a CLS token, learned position embeddings,
    pre-norm blocks with stochastic depth rising linearly to drop_path in the last block, a final
    LayerNorm; the features are the CLS token. At cell-crop scale the number of tokens, not the
    patch size, sets the cost: patch 8 at 32 px is 16 tokens, as patch 16 at 64 px."""

    def __init__(self, in_channels, image_size, patch_size, dim, depth, heads, drop_path=0.0):
        super().__init__()
        self.dim, self.grid = dim, image_size // patch_size
        self.patch_embed = nn.Conv2d(in_channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        rates = torch.linspace(0, drop_path, depth).tolist()
        self.blocks = nn.Sequential(*[Block(dim, heads, r) for r in rates])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(init_linear)

    def position_embedding(self, h, w):
        """(1, 1 + h w, dim): the stored embedding on an h x w grid of patches, its grid part
        resized bicubically when the image size differs from the built one (DINO's local crops,
        other image sizes)."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, self.grid, self.grid, self.dim).permute(0, 3, 1, 2)  # (1, D, g, g)
        grid = F.interpolate(grid, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, grid.flatten(2).transpose(1, 2)], 1)

    def tokens(self, x):
        """(B, 1 + h w, dim): the CLS token and the patch tokens after the final LayerNorm."""
        x = self.patch_embed(x)  # (B, D, h, w)
        pos = self.position_embedding(*x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, h w, D)
        x = torch.cat([self.cls_token.expand(len(x), -1, -1), x], 1) + pos
        return self.norm(self.blocks(x))

    def forward(self, x):
        return self.tokens(x)[:, 0]


def init_linear(m):
    """DINO's ViT initialisation: truncated-normal linear weights (std 0.02), zero biases."""
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)

# -----------------------------------------------------------------------------
# bottleneck ResNet (He et al. 2016; stride in the 3x3 conv, as torchvision's ResNet-50)


class Bottleneck(nn.Module):
    """1x1 down to `width`, 3x3 (with the stride), 1x1 up to 4 x width, each with BatchNorm; a
    projected shortcut where the shape changes."""

    def __init__(self, cin, width, stride):
        super().__init__()
        cout = 4 * width
        self.conv1, self.bn1 = nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3, self.bn3 = nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout)
        self.shortcut = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False),
                                          nn.BatchNorm2d(cout))

    def forward(self, x):
        h = F.relu(self.bn1(self.conv1(x)))
        h = F.relu(self.bn2(self.conv2(h)))
        return F.relu(self.bn3(self.conv3(h)) + self.shortcut(x))


class ResNet(nn.Module):
    """Stages of bottleneck blocks (ResNet-50: layers 3, 4, 6, 3 and width 64), widths doubling
    and sizes halving from stage to stage, global average pool. The ImageNet stem (7x7 conv of
    stride 2 and a max-pool: /4) from 96 px up; below, a 3x3 conv of stride 1 (as CIFAR ResNets),
    so that a 32 px crop keeps 4x4 features in the last of four stages."""

    def __init__(self, in_channels, image_size, layers, width):
        super().__init__()
        if image_size >= 96:
            stem = [nn.Conv2d(in_channels, width, 7, 2, padding=3, bias=False),
                    nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, padding=1)]
        else:
            stem = [nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
                    nn.BatchNorm2d(width), nn.ReLU()]
        self.stem, blocks, cin = nn.Sequential(*stem), [], width
        for i, n in enumerate(layers):
            for j in range(n):
                blocks.append(Bottleneck(cin, width * 2 ** i, 2 if i > 0 and j == 0 else 1))
                cin = 4 * width * 2 ** i
        self.stages, self.dim = nn.Sequential(*blocks), cin
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        return self.stages(self.stem(x)).mean((2, 3))

# -----------------------------------------------------------------------------
# CNN: the StyleGAN2 discriminator's residual trunk


class ConvTrunk(nn.Module):
    """fromRGB, residual blocks of stylegan.py halving the size down to 4x4 (channels doubling
    from `width` up to 8 x width, as StyleGAN2's 128 ... 512), its last 3x3 conv, global average.
    The discriminator's minibatch statistics and class projection are left out: an encoder's
    features must not depend on the other images of a batch, nor on a label."""

    def __init__(self, in_channels, image_size, width):
        super().__init__()
        res, blocks = image_size, []

        def ch(r):
            return width * min(image_size // r, 8)

        self.from_rgb = EqualConv2d(in_channels, ch(res), 1)
        while res > 4:
            blocks.append(DBlock(ch(res), ch(res // 2)))
            res //= 2
        self.blocks, self.dim = nn.Sequential(*blocks), ch(res)
        self.conv = EqualConv2d(self.dim, self.dim, 3)

    def forward(self, x):
        return self.conv(self.blocks(self.from_rgb(x))).mean((2, 3))

# -----------------------------------------------------------------------------


def encoder(arch, c, drop_path=0.0):
    """The encoder `arch` (cnn | resnet | vit) for a config c with in_channels, image_size and the
    sizes of that architecture; drop_path: the ViT's stochastic depth (DINO's student only)."""
    if arch == "vit":
        return ViT(c.in_channels, c.image_size, c.patch_size, c.dim, c.depth, c.heads, drop_path)
    if arch == "resnet":
        return ResNet(c.in_channels, c.image_size, c.resnet_layers, c.width)
    if arch == "cnn":
        return ConvTrunk(c.in_channels, c.image_size, c.width)
    raise ValueError(f"--arch {arch!r}: choose one of {', '.join(ARCHS)}")

# -----------------------------------------------------------------------------
# The domain encoder of Table 1 (reproduce.py): a supervised classifier, not a DSAE encoder


class DomainEncoder(nn.Module):
    """A classifier of the training classes: the StyleGAN2 discriminator's trunk and a linear head.
    Its pooled features (`forward`, images in [0, 1] as eval.encode gives them) are the domain
    feature space of Table 1: trained on the same data, held fixed, and no compared method's own
    encoder (Inception features know ImageNet, not cells; the cell classes are what a translation
    must get right)."""

    def __init__(self, in_channels, image_size, num_classes, width=16):
        super().__init__()
        self.config = dict(in_channels=in_channels, image_size=image_size,
                           num_classes=num_classes, width=width)
        self.trunk = ConvTrunk(in_channels, image_size, width)
        self.head = nn.Linear(self.trunk.dim, num_classes)

    def forward(self, x):
        return self.trunk(x * 2 - 1)

    def logits(self, x):
        return self.head(self(x))


def train_domain_encoder(ds, steps, batch_size=64, lr=1e-3, seed=0, device="cpu"):
    """Cross-entropy on the training images with the square's symmetries as augmentation."""
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    net = DomainEncoder(ds.images.shape[1], ds.images.shape[-1], len(ds.classes)).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    for _ in tqdm(range(steps), desc="domain encoder"):
        i = torch.randint(0, len(ds), (batch_size,), generator=g)
        x = data.augment(ds.images[i], g).to(device)
        loss = F.cross_entropy(net.logits((x + 1) / 2), ds.labels[i].to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return net.eval()


def load_domain_encoder(path, device="cpu"):
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    net = DomainEncoder(**ckpt["config"])
    net.load_state_dict(ckpt["weights"])
    return net.eval().to(device)
