"""DINO self-distillation (Caron et al. 2021), the encoder half of DSAE (Fonnegra et al.).

A student and a teacher of the same architecture (encoders.py: vit, resnet or cnn) each end in a
projection head whose K logits are cosines to K learned prototypes. The student learns to predict,
from every crop of an image, the teacher's softmax over the prototypes on the two large crops;
the teacher is an exponential moving average of the student and gets no gradient. Collapse is
held off by centering (subtracting a running mean of the teacher's logits: no prototype wins for
all images) and sharpening (a low teacher temperature: the output is not uniform either).

Views: 2 global crops at the image size and `local_crops` small ones, each flipped/turned by one
of the 8 symmetries of the square and jittered in brightness and contrast channel by channel, as
the DSAE paper does for cell images (no colour jitter across channels, no greyscale, no blur or
solarisation: the channels are separate stains whose intensities carry the phenotype).
The labels of a batch are ignored. The method encodes (with the teacher, as DINO evaluates) and
does not translate; dsae.py joins it to a decoder.

Departures from DINO's code (docs/recipes.md): those augmentations; the `cpu` preset's sizes (32 px
crops, a 4-block ViT of width 96, K = 1,024) and its short-run schedule (teacher temperature 0.02,
momentum from 0.99, a larger learning rate); fp32; the `paper` preset is DINO's ViT-S/16 recipe.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

import method as M
from baselines import encoders


@dataclass
class DINOConfig:
    image_size: int = 224
    in_channels: int = 3
    num_classes: int = 2  # set by train.py from the data; unused (self-supervised)
    steps: int = 125000  # of the run; set by train.py. The schedules below are fractions of it
    arch: str = M.arg("vit", "encoder: vit, resnet (bottleneck) or cnn (StyleGAN2 D trunk)",
                      choices=encoders.ARCHS)
    patch_size: int = M.arg(16, "vit: pixels per patch side; tokens = (image size / patch)^2")
    dim: int = M.arg(384, "vit: token width")
    depth: int = M.arg(12, "vit: transformer blocks")
    heads: int = M.arg(6, "vit: attention heads")
    drop_path: float = M.arg(0.1, "vit: stochastic depth of the student's last block (rising "
                             "linearly from 0 in the first)")
    width: int = M.arg(64, "resnet: bottleneck width of the first stage; cnn: channels at full "
                       "size")
    resnet_layers: tuple = M.arg((3, 4, 6, 3), "resnet: bottleneck blocks per stage, e.g. 1,1,1,1")
    head_hidden: int = M.arg(2048, "projection head: hidden width of its 3-layer MLP")
    head_bottleneck: int = M.arg(256, "projection head: L2-normalised bottleneck size")
    out_dim: int = M.arg(65536, "K, the prototypes of the head's softmax (DINO: 65536 for "
                         "ImageNet; fewer for small data)")
    local_crops: int = M.arg(8, "small crops per image the student sees beside the 2 global ones")
    local_size: int = M.arg(96, "pixels of a local crop's side (global crops: the image size)")
    global_scale: float = M.arg(0.4, "global crops cover a fraction (this, 1) of the image area, "
                                "local crops (local_scale, this)")
    local_scale: float = M.arg(0.05, "smallest area fraction of a local crop")
    brightness: float = M.arg(0.4, "per-channel brightness factor drawn from 1 +- this")
    contrast: float = M.arg(0.4, "per-channel contrast factor drawn from 1 +- this")
    lr: float = M.arg(0.0005, "AdamW peak learning rate at batch 256 (scaled by batch / 256)")
    min_lr: float = M.arg(1e-6, "learning rate at the end of the cosine schedule")
    warmup: float = M.arg(0.1, "fraction of the steps with a linear lr warm-up (DINO: 10 of 100 "
                          "epochs)")
    weight_decay: float = M.arg(0.04, "AdamW weight decay at the start (not on biases, norms)")
    weight_decay_end: float = M.arg(0.4, "weight decay at the end (cosine schedule)")
    clip_grad: float = M.arg(3.0, "largest gradient norm of each parameter tensor (0: no clip)")
    freeze_last_layer: float = M.arg(0.01, "fraction of the steps the head's last layer stays "
                                     "fixed (DINO: the first of 100 epochs)")
    momentum: float = M.arg(0.996, "teacher EMA momentum at the start, cosine to 1 at the end")
    teacher_temp: float = M.arg(0.07, "teacher temperature after the warm-up")
    teacher_temp_start: float = M.arg(0.04, "teacher temperature at step 0")
    teacher_temp_warmup: float = M.arg(0.3, "fraction of the steps of the linear teacher "
                                       "temperature warm-up (DINO: 30 of 100 epochs)")
    student_temp: float = M.arg(0.1, "student temperature")
    center_momentum: float = M.arg(0.9, "momentum of the running center of the teacher's logits")

    # paper: ViT-S/16 (21.7M parameters in the backbone) and DINO's ImageNet recipe at 224 px
    # (pass --image-size 128 for PhenDiff's crops). cpu: 32 px crops, patch 8 = 16 tokens (4 in
    # a 16 px local crop), K = 1024 prototypes for a few thousand images, and a short run's
    # schedule: EMA momentum 0.99 (a memory of ~100 steps at first), a larger lr (thousands of
    # steps at batch 64 rather than ~125k at 1024), and a teacher temperature of 0.02 throughout:
    # cells on a dark background give nearly equal features at initialisation, and at 0.04 the
    # teacher stayed uniform for ~700 steps (89 % of log K at step 1,500), at 0.02 it left
    # uniformity by step 250 (67 % at step 800; ViT, 576 synthetic Latrunculin B images).
    # Seconds per step at batch 64 on one thread of the shared 2-core CPU: vit 0.3-0.45,
    # resnet 0.8, cnn 0.4. tiny: seconds for tests.
    PRESETS = {
        "paper": dict(),
        "cpu": dict(image_size=32, patch_size=8, dim=96, depth=4, heads=3, drop_path=0.0,
                    width=8, resnet_layers=(1, 1, 1, 1), head_hidden=512, head_bottleneck=128,
                    out_dim=1024, local_crops=4, local_size=16, lr=0.002, warmup=0.05,
                    momentum=0.99, teacher_temp=0.02, teacher_temp_start=0.02,
                    teacher_temp_warmup=0.0),
        "tiny": dict(image_size=16, patch_size=8, dim=32, depth=2, heads=2, drop_path=0.1,
                     width=4, resnet_layers=(1, 1), head_hidden=32, head_bottleneck=16,
                     out_dim=64, local_crops=2, local_size=8, momentum=0.9),
    }

    def __post_init__(self):
        self.resnet_layers = tuple(self.resnet_layers)
        M.check_ranges(self, positive=("patch_size", "dim", "depth", "heads", "width",
                                       "head_hidden", "head_bottleneck", "out_dim", "local_size",
                                       "global_scale", "local_scale", "lr", "steps",
                                       "teacher_temp", "teacher_temp_start", "student_temp"),
                       nonnegative=("local_crops", "min_lr", "weight_decay", "weight_decay_end",
                                    "clip_grad"),
                       fraction=("drop_path", "brightness", "contrast", "warmup",
                                 "freeze_last_layer", "momentum", "teacher_temp_warmup",
                                 "center_momentum"))
        if self.arch not in encoders.ARCHS:
            raise ValueError(f"--arch {self.arch!r}: choose one of {', '.join(encoders.ARCHS)}")
        if not (self.local_scale < self.global_scale < 1):
            raise ValueError(f"need --local-scale < --global-scale < 1, got {self.local_scale} "
                             f"and {self.global_scale}")
        if not self.resnet_layers or min(self.resnet_layers) < 1:
            raise ValueError(f"--resnet-layers needs one or more positive counts, "
                             f"got {self.resnet_layers}")
        if self.arch == "vit":
            self.check_vit()

    def check_vit(self):
        for name in ("image_size", "local_size"):
            if getattr(self, name) % self.patch_size:
                raise ValueError(f"--patch-size {self.patch_size} must divide the "
                                 f"{name.replace('_', ' ')} ({getattr(self, name)}); change "
                                 f"--patch-size or --{name.replace('_', '-')}")
        if self.dim % self.heads:
            raise ValueError(f"--heads {self.heads} must divide --dim {self.dim}")

    @classmethod
    def preset(cls, name, **overrides):
        return M.preset_config(cls, cls.PRESETS, name, overrides)

# -----------------------------------------------------------------------------
# networks: backbone + projection head


class Head(nn.Module):
    """DINO's projection head: a 3-layer MLP (GELU) to a bottleneck, L2-normalised, then a
    weight-normalised linear layer whose norm g is fixed to 1: the K logits are cosines between
    the embedding and K prototype directions (the layer's rows)."""

    def __init__(self, cin, hidden, bottleneck, K):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(cin, hidden), nn.GELU(), nn.Linear(hidden, hidden),
                                 nn.GELU(), nn.Linear(hidden, bottleneck))
        self.mlp.apply(encoders.init_linear)
        self.last_layer = nn.Linear(bottleneck, K, bias=False)

    def forward(self, x):
        x = F.normalize(self.mlp(x), dim=-1)
        return F.linear(x, F.normalize(self.last_layer.weight, dim=1))


class Network(nn.Module):
    """Backbone and head over a list of views; views of one size run through the backbone as one
    batch (DINO's multi-crop wrapper)."""

    def __init__(self, c, drop_path=0.0):
        super().__init__()
        self.backbone = encoders.encoder(c.arch, c, drop_path)
        self.head = Head(self.backbone.dim, c.head_hidden, c.head_bottleneck, c.out_dim)

    def forward(self, views):
        """views: a list of (B, C, h, w), equal sizes next to each other -> features
        (V B, dim) and logits (V B, K), view by view."""
        groups, start = [], 0
        for i in range(1, len(views) + 1):
            if i == len(views) or views[i].shape != views[start].shape:
                groups.append(torch.cat(views[start:i]))
                start = i
        features = torch.cat([self.backbone(g) for g in groups])
        return features, self.head(features)

# -----------------------------------------------------------------------------
# views: multi-crop and cell-image augmentation, batched torch ops


def random_resized_crop(x, scale, size, generator=None):
    """Per image, a crop covering a fraction U(scale) of the area with aspect ratio in (3/4, 4/3)
    (as torchvision's RandomResizedCrop), turned by one of the 8 symmetries of the square (flips
    and 90-degree turns: cells have no orientation) and resized bilinearly to size (h, w): one
    affine grid_sample for the batch."""
    B = len(x)
    u = torch.rand(7, B, device=x.device, generator=generator)
    area = scale[0] + (scale[1] - scale[0]) * u[0]
    ratio = torch.exp(math.log(3 / 4) + math.log(16 / 9) * u[1])
    w, h = (area * ratio).sqrt().clamp(max=1), (area / ratio).sqrt().clamp(max=1)  # half-sides
    cx, cy = (1 - w) * (2 * u[2] - 1), (1 - h) * (2 * u[3] - 1)  # in [-1, 1] coordinates
    sx, sy, swap = 1 - 2 * (u[4] < 0.5).float(), 1 - 2 * (u[5] < 0.5).float(), u[6] < 0.5
    zero = torch.zeros_like(w)
    # input point = diag(w, h) @ P @ output point + (cx, cy), P a signed permutation
    row0 = torch.stack([torch.where(swap, zero, w * sx), torch.where(swap, w * sx, zero), cx], 1)
    row1 = torch.stack([torch.where(swap, h * sy, zero), torch.where(swap, zero, h * sy), cy], 1)
    theta = torch.stack([row0, row1], 1).to(x.dtype)  # (B, 2, 3)
    grid = F.affine_grid(theta, (B, x.shape[1], *size), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def jitter(x, brightness, contrast, generator=None):
    """Channel-independent brightness and contrast: each channel of each image is scaled by a
    factor in 1 +- brightness, then stretched about its mean by one in 1 +- contrast, on [0, 1]
    intensities, clipped."""
    B, C = x.shape[:2]
    u = torch.rand(2, B, C, 1, 1, device=x.device, generator=generator, dtype=x.dtype)
    x = (x + 1) / 2 * (1 + brightness * (2 * u[0] - 1))
    mean = x.mean((2, 3), keepdim=True)
    return ((x - mean) * (1 + contrast * (2 * u[1] - 1)) + mean).clamp(0, 1) * 2 - 1

# -----------------------------------------------------------------------------
# the loss and the schedules


def teacher_probs(logits, center, temp):
    """Centering and sharpening: softmax((t - center) / temp) over the K prototypes."""
    return F.softmax((logits - center) / temp, dim=-1)


def dino_loss(student_logits, teacher_p, student_temp):
    """Cross-entropy H(P_t[i], P_s[j]) averaged over the pairs of teacher view i and student view
    j with i != j. student_logits: (S, B, K), all views; teacher_p: (T, B, K), the probabilities of
    the first T views (the global crops)."""
    T, S, B = len(teacher_p), len(student_logits), student_logits.shape[1]
    logp = F.log_softmax(student_logits / student_temp, dim=-1)
    ce = -torch.einsum("ibk,jbk->ij", teacher_p, logp) / B  # (T, S): mean over the batch
    other = ~torch.eye(T, S, dtype=torch.bool, device=ce.device)  # the same view never pairs
    return ce[other].mean()


def cosine(step, steps, start, end):
    """start at step 0, end at step `steps`, along half a cosine."""
    return end + (start - end) * (1 + math.cos(math.pi * min(step / steps, 1))) / 2


def warmup_cosine(step, steps, warmup, peak, end):
    """Linear from 0 to peak over the first `warmup` steps, then cosine to end (DINO's lr)."""
    if step < warmup:
        return peak * step / warmup
    return cosine(step - warmup, steps - warmup, peak, end)

# -----------------------------------------------------------------------------
# the method


class DINO(M.Method):
    """DINO self-distillation of an encoder; `encode` gives the teacher backbone's features."""
    name = "dino"
    Config = DINOConfig
    LOG = ("loss", "teacher_entropy", "feature_std", "lr", "momentum", "teacher_temp")
    TRANSLATES = False  # an encoder: dsae.py joins it to a decoder

    def __init__(self, config, device="cpu", **options):
        self.config, self.options = config, self.check_options(options)
        c = config
        self.student = Network(c, c.drop_path).to(device)
        self.teacher = Network(c).to(device).requires_grad_(False)  # no drop path in the teacher
        self.teacher.load_state_dict(self.student.state_dict())
        self.center = torch.zeros(c.out_dim, device=device)
        decay = [p for p in self.student.parameters() if p.dim() > 1]  # not biases, norms
        rest = [p for p in self.student.parameters() if p.dim() <= 1]
        self.optimizer = torch.optim.AdamW([{"params": decay}, {"params": rest,
                                                                "weight_decay": 0.0}])

    def schedules(self, step, batch):
        """lr, weight decay, teacher momentum and temperature at a step; batch: the global one."""
        c = self.config
        lr = warmup_cosine(step, c.steps, int(c.warmup * c.steps), c.lr * batch / 256, c.min_lr)
        warm = int(c.teacher_temp_warmup * c.steps)
        ramp = min(1.0, step / warm) if warm else 1.0
        temp = c.teacher_temp_start + (c.teacher_temp - c.teacher_temp_start) * ramp
        return (lr, cosine(step, c.steps, c.weight_decay, c.weight_decay_end),
                cosine(step, c.steps, c.momentum, 1.0), temp)

    def views(self, x):
        """2 global crops at the image size, then the local ones."""
        c = self.config
        # train.py seeds the global generator from (--seed, step, rank) every step; the crops'
        # own generator is drawn from it, so a resumed run sees the same crops
        g = torch.Generator(x.device).manual_seed(int(torch.randint(2 ** 62, ())))
        crops = [random_resized_crop(x, (c.global_scale, 1.0), x.shape[-2:], g) for _ in (0, 1)]
        crops += [random_resized_crop(x, (c.local_scale, c.global_scale), (c.local_size,) * 2, g)
                  for _ in range(c.local_crops)]
        return [jitter(v, c.brightness, c.contrast, g) for v in crops]

    def train_step(self, batch, step):
        c, x = self.config, batch[0]
        B = len(x)
        lr, wd, m, temp = self.schedules(step, B * M.world_size())
        self.optimizer.param_groups[0].update(lr=lr, weight_decay=wd)
        self.optimizer.param_groups[1].update(lr=lr)
        self.student.train(), self.teacher.train()  # the teacher's BatchNorm: its batch statistics

        views = self.views(x)
        with torch.no_grad():
            t_logits = self.teacher(views[:2])[1]  # (2 B, K): the teacher sees the global crops
        features, s_logits = self.student(views)
        p = teacher_probs(t_logits, self.center, temp)
        loss = dino_loss(s_logits.unflatten(0, (len(views), B)), p.unflatten(0, (2, B)),
                         c.student_temp)

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        M.average_gradients(self.student.parameters())
        self.clip_gradients()
        if step < int(c.freeze_last_layer * c.steps):  # the prototypes wait for the first epoch
            self.student.head.last_layer.weight.grad = None
        self.optimizer.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.teacher.parameters()), list(self.student.parameters()),
                                 1 - m)  # teacher <- m teacher + (1 - m) student
            # the ResNet's BatchNorm statistics (per-process batches) averaged, and the centre
            # from every process's batch: both the same on every rank
            M.average_buffers([self.student, self.teacher])
            batch_center = M.mean_over_processes(t_logits.mean(0))
            self.center.lerp_(batch_center, 1 - c.center_momentum)
            entropy = -(p * p.clamp_min(1e-30).log()).sum(-1).mean() / math.log(c.out_dim)
            # spread of the student's unit-length features over every process's images: 0 when
            # they collapse to one point, 1 / sqrt(dim) for isotropic ones; none for one image
            f = M.gather_over_processes(F.normalize(features[:B], dim=1))
        values = {"loss": loss.item(), "teacher_entropy": entropy.item(), "lr": lr,
                  "momentum": m, "teacher_temp": temp}
        return {**values, "feature_std": f.std(0).mean().item()} if len(f) > 1 else values

    def clip_gradients(self):
        """DINO clips each parameter tensor's gradient to norm clip_grad on its own."""
        grads = [p.grad for p in self.student.parameters() if p.grad is not None]
        if self.config.clip_grad and grads:
            norms = torch._foreach_norm(grads)
            torch._foreach_mul_(grads, [(self.config.clip_grad / (n + 1e-6)).clamp(max=1)
                                        for n in norms])

    @torch.no_grad()
    def encode(self, x):
        """(B, dim) features of the teacher's backbone (DINO evaluates the teacher)."""
        return self.teacher.eval().backbone(x)

    def describe(self):
        return (f"encoded by a DINO-trained {self.config.arch} (the teacher's backbone); DINO "
                "does not translate")

    def state_dict(self):
        return {"student": self.student.state_dict(), "teacher": self.teacher.state_dict(),
                "center": self.center.clone(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.student.load_state_dict(state["student"])
        self.teacher.load_state_dict(state["teacher"])
        self.center.copy_(state["center"])
        if "optimizer" in state:
            self.optimizer.load_state_dict(state["optimizer"])
