"""PhenDiff: reveal a phenotype by translating real images between conditions.

A real image of condition A is inverted to a latent with DDIM under label A (eq. 6), then the
latent is sampled with DDIM under label B (eq. 5). The latent carries the image (which cells,
where, how bright); the label carries the condition. So the difference between input and output
shows what condition B changes, cell by cell.

The command line translates with a checkpoint of any method of the comparison (method.py):

    python phendiff.py translate --ckpt C --input DIR --source DMSO --target latrunculin_b_3uM
    python phendiff.py reconstruct --ckpt C --input DIR --source DMSO
    python phendiff.py demo
"""
import copy
import math
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm import tqdm

import ddim
import files
import method as M
from model import UNet, UNetConfig

# -----------------------------------------------------------------------------
# the method, as functions of any eps-model (the UNet, or an analytic oracle in the tests)


def translate_many(model, x, y_source, targets, alpha, num_steps, fixed_point_iters=0,
                   guidance=0.0, max_batch=None):
    """Invert x once under y_source, then sample the same latent under each target label.

    Returns (len(targets), B, C, H, W). The inversion is shared and the targets sampled together,
    whole targets up to max_batch images per forward (default 256 on a GPU, which a wider batch
    fills better; 64 on a CPU, where batches over ~64 of the demo model ran slower, not faster).
    """
    null = getattr(model, "null_label", None)
    latent = ddim.invert(model, x, M.labels(y_source, x), alpha, num_steps,  # eq. 6, under label A
                         fixed_point_iters=fixed_point_iters, guidance=guidance, null_label=null)
    latents = latent.repeat(len(targets), *[1] * (x.dim() - 1))  # target-major: (K B, C, H, W)
    labels = torch.cat([M.labels(y, x) for y in targets])
    max_batch = max_batch or (256 if x.is_cuda else 64)
    chunk = max(len(x), max_batch // len(x) * len(x))  # whole targets per forward
    out = torch.cat([ddim.sample(model, lat, y, alpha, num_steps, guidance=guidance,  # eq. 5, B
                                 null_label=null)
                     for lat, y in zip(latents.split(chunk), labels.split(chunk))])
    return out.view(len(targets), *x.shape)


def translate(model, x, y_source, y_target, alpha, num_steps, fixed_point_iters=0, guidance=0.0):
    """PhenDiff: x of class y_source -> the same cells as they would look under y_target."""
    return translate_many(model, x, y_source, [y_target], alpha, num_steps, fixed_point_iters,
                          guidance)[0]


def reconstruct(model, x, y, alpha, num_steps, fixed_point_iters=0):
    """Invert and regenerate under the image's own class: how faithful the latent is (Table 2)."""
    return translate(model, x, y, y, alpha, num_steps, fixed_point_iters)


def dose_series(model, x, y_source, classes, compound, alpha, num_steps, **kw):
    """x to every concentration of `compound`, lowest first: (names, (8, B, C, H, W))."""
    series = files.compounds(classes)
    if compound not in series:
        raise ValueError(f"unknown compound {compound!r}; the checkpoint has: {', '.join(series)}")
    names = series[compound]
    targets = [classes.index(n) for n in names]
    return names, translate_many(model, x, y_source, targets, alpha, num_steps, **kw)

# -----------------------------------------------------------------------------
# the method as a trainable system of the comparison (the interface of method.py)


@dataclass
class PhenDiffConfig(UNetConfig):
    """The UNet's fields, then how it is trained: eq. 4 with AdamW, warm-up + cosine, an EMA."""
    schedule: str = M.arg("linear", "noise schedule", choices=ddim.SCHEDULES)
    T: int = 1000  # diffusion steps, as in the paper
    lr: float = M.arg(1e-3, "peak AdamW learning rate")
    lr_schedule: str = M.arg("cosine", "after warm-up: cosine to lr/10 at --steps, or constant",
                             choices=("cosine", "constant"))
    warmup: int = M.arg(100, "linear warm-up steps")
    weight_decay: float = M.arg(0.0, "AdamW decoupled weight decay (0: Adam, as DDPM)")
    grad_clip: float = M.arg(1.0, "max global gradient norm")
    ema_decay: float = M.arg(0.999, "EMA decay, warmed up as min(d, (1 + s) / (10 + s))")
    p_uncond: float = M.arg(0.0, "label dropout to the null class, for guidance (0: the paper)")
    grad_accum: int = M.arg(1, "micro-batches per step: each holds "
                               "--batch-size / grad-accum images")
    compile: bool = M.arg(False, "torch.compile the training model (helps on GPUs only)")
    steps: int = 2000  # optimizer steps of the whole run (the lr schedule); set by train.py

    # UNet preset + what differs for training. cpu is the demo's model (checkpoints/README.md):
    # v-prediction, which small models need (docs/diffusion.md, "ε or v"); the paper: eps, lr 1e-4.
    PRESETS = {"tiny": ("tiny", {}), "cpu": ("tiny", dict(base_channels=32, prediction="v")),
               "small": ("small", {}), "paper": ("paper", dict(lr=1e-4))}

    def __post_init__(self):
        super().__post_init__()
        M.check_ranges(self, positive=("lr", "grad_clip", "grad_accum", "steps", "T"),
                       nonnegative=("warmup", "weight_decay", "dropout"),
                       fraction=("ema_decay", "p_uncond"))

    @classmethod
    def preset(cls, name, **overrides):
        if name not in cls.PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(cls.PRESETS)}")
        unet, extra = cls.PRESETS[name]
        return super().preset(unet, **{**extra, **overrides})


class PhenDiff(M.Method):
    """One class-conditional UNet (eq. 4); translation = invert under A (eq. 6), sample under B
    (eq. 5)."""
    name = "phendiff"
    Config = PhenDiffConfig
    OPTIONS = {"ddim_steps": 100, "fixed_point_iters": 0, "guidance": 0.0, "ema": True,
               "precision": "auto"}
    LOG = ("loss", "grad_norm", "lr")
    PRECISIONS = ("bf16", "fp32")  # bf16: 1.6-2.1x on a CPU with bf16 instructions, same quality

    def __init__(self, config, device="cpu", **options):
        self.config, self.options = config, self.check_options(options)
        if self.options["guidance"] and not config.p_uncond:
            raise ValueError(f"--guidance {self.options['guidance']:g}: this model was trained "
                             "without label dropout (--p-uncond 0), so it never learned the null "
                             "label that guidance subtracts; use guidance 0, or a model trained "
                             "with train.py --p-uncond 0.1")
        device = torch.device(device)
        cuda = device.type == "cuda"
        # translation's network in bf16 autocast where the hardware has it (eq. 5 and 6 stay
        # float32/64; train.py runs train_step under its own --precision); channels_last on GPUs
        # (on the CPU it took bf16's 1.57x down to 1.03x, docs/training.md)
        self.precision = M.Precision(self.options["precision"], device, self.PRECISIONS, self.name)
        fmt = torch.channels_last if cuda else torch.contiguous_format
        self.model = UNet(config).to(device, memory_format=fmt)
        self.ema = copy.deepcopy(self.model).requires_grad_(False).eval()  # translation uses these
        self.alpha = ddim.make_schedule(config.schedule, config.T)  # float64, on the CPU
        # fused: one kernel for all parameters; on the CPU (torch >= 2.4) 4x faster than the
        # default loop (4.9M parameters: 61 -> 14 ms, a tenth of the demo model's bf16 step)
        fused = cuda or torch.__version__ >= "2.4"
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=config.lr,
                                           weight_decay=config.weight_decay, fused=fused or None)
        net = torch.compile(self.model) if config.compile else self.model
        if dist.is_available() and dist.is_initialized():  # torchrun: gradients all-reduced by DDP
            net = DDP(net, device_ids=[device.index] if cuda else None)
        self.train_model = net

    def lr_at(self, step):
        """Linear warm-up from lr/warmup to lr, then cosine down to lr/10 at the last step."""
        c = self.config
        if step < c.warmup:
            return c.lr * (step + 1) / c.warmup
        if c.lr_schedule == "constant":
            return c.lr
        progress = (step - c.warmup) / max(1, c.steps - c.warmup)
        return c.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))

    def train_step(self, batch, step):
        """eq. 4 on the batch (in grad_accum micro-batches), a clipped AdamW step, the EMA update.
        A non-finite loss or gradient skips the update, and train.py stops."""
        c, (x, y) = self.config, batch
        lr = self.lr_at(step)
        M.set_lr(self.optimizer, lr)
        self.model.train()
        if c.p_uncond > 0:  # classifier-free guidance: some labels become the null class
            y = torch.where(torch.rand(y.shape, device=y.device) < c.p_uncond,
                            self.model.null_label, y)
        loss_sum = torch.zeros((), device=x.device)
        try:
            # exactly grad_accum micro-batches (chunk may give fewer), so DDP syncs on the last
            for i, (xm, ym) in enumerate(zip(x.tensor_split(c.grad_accum),
                                             y.tensor_split(c.grad_accum))):
                if isinstance(self.train_model, DDP):  # all-reduce on the last micro-step only
                    self.train_model.require_backward_grad_sync = i == c.grad_accum - 1
                loss = ddim.loss(self.train_model, xm, ym, self.alpha) / c.grad_accum  # eq. 4
                loss.backward()
                loss_sum += loss.detach()
        except torch.OutOfMemoryError:
            raise ValueError(f"out of GPU memory at {len(x) // c.grad_accum} images per "
                             "micro-batch: raise --grad-accum (or lower --batch-size)") from None
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
        loss_val, norm_val = torch.stack([loss_sum, norm.float()]).tolist()
        if math.isfinite(loss_val) and math.isfinite(norm_val):
            self.optimizer.step()
            M.update_ema(self.ema, self.model, M.ema_decay(step, c.ema_decay))
        self.optimizer.zero_grad(set_to_none=True)
        return {"loss": loss_val, "grad_norm": norm_val, "lr": lr}

    def check_batch(self, batch_size, world):
        if batch_size < self.config.grad_accum:
            raise ValueError(f"--batch-size {batch_size} (per process) is smaller than "
                             f"--grad-accum {self.config.grad_accum}: every micro-batch needs an "
                             "image; lower --grad-accum or raise --batch-size")

    def describe(self):
        o = self.options
        exact = f", {o['fixed_point_iters']} fixed-point iterations" * bool(o["fixed_point_iters"])
        return (f"inverted under the source class (eq. 6{exact}) and sampled under every class "
                f"(eq. 5), {o['ddim_steps']} DDIM steps, guidance {o['guidance']:g}, network in "
                f"{self.precision}")

    def net(self):
        """The EMA weights (default) or the raw ones, in eval mode, run in the method's precision
        (its output float32)."""
        return self.precision.wrap(self.ema if self.options["ema"] else self.model.eval())

    def translate_many(self, x, y_source, targets):
        o = self.options
        return translate_many(self.net(), x, y_source, targets, self.alpha, o["ddim_steps"],
                              o["fixed_point_iters"], o["guidance"])

    def translate(self, x, y_source, y_target):
        return self.translate_many(x, y_source, [y_target])[0]

    def state_dict(self):
        return {"model": self.model.state_dict(), "ema": self.ema.state_dict(),
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state):
        self.model.load_state_dict(state["model"])
        self.ema.load_state_dict(state["ema"])
        if "optimizer" in state:  # exported checkpoints translate without it
            self.optimizer.load_state_dict(state["optimizer"])

# -----------------------------------------------------------------------------
# command line: translate and reconstruct with a checkpoint of any method; demo; export.
# What it reads, draws and reports comes from data.py and the evaluation folder, imported by the
# commands that use them: the method above needs neither (`import phendiff` stays light).


def read_inputs(image_files, ckpt, fit="crop"):
    """Files -> (B, C, H, W) in [-1, 1] with the checkpoint's normalisation and size. An image of
    another size is centre-cropped (which keeps the cells' scale), or resized up when smaller;
    fit="resize" resizes the centre square of every one (data.fit_size)."""
    import data
    cfg, images, resized = ckpt["config"], [], []
    for f in image_files:
        raw = files.read_image(f)
        if raw.shape[0] != cfg["in_channels"]:
            raise ValueError(f"{f} has {raw.shape[0]} channels but the checkpoint's model takes "
                             f"{cfg['in_channels']}; use images of the kind it was trained on")
        if raw.shape[1:] != (cfg["image_size"],) * 2:
            resized.append(f.name)
            how = "crop" if fit == "crop" and min(raw.shape[1:]) >= cfg["image_size"] else "resize"
            raw = data.fit_size(raw[None], cfg["image_size"], how, f)[0]
        images.append(raw)
    if resized:
        s = cfg["image_size"]
        how = "resized" if fit == "resize" else "centre-cropped, or resized up when smaller"
        warnings.warn(f"{len(resized)} image(s) are not {s}x{s} (e.g. {resized[0]}): {how}")
    return data.normalize(torch.as_tensor(np.stack(images)), ckpt["normalization"]).float()


def class_index(classes, name):
    if name not in classes:
        raise ValueError(f"unknown class {name!r}; the checkpoint has: {', '.join(classes)}")
    return classes.index(name)


def expand_targets(names, classes):
    """Class names; a compound name stands for all its concentrations, lowest first."""
    series = files.compounds(classes)
    return [c for t in names for c in (series[t] if t in series and t not in classes else [t])]


def method_options(args):
    """The inference flags the user gave, as method options (the method refuses foreign ones)."""
    given = dict(ddim_steps=args.ddim_steps, fixed_point_iters=args.fixed_point_iters,
                 guidance=args.guidance, ema=False if args.no_ema else None,
                 projection=args.projection, projection_steps=args.projection_steps,
                 precision=args.precision)
    return {k: v for k, v in given.items() if v is not None}


def cmd_translate(args):
    import data
    from evaluation import plots
    clock = [time.perf_counter()]
    image_files = files.list_images(args.input)
    net, ckpt = M.load_translator(args.ckpt, args.device, **method_options(args))
    classes = ckpt["classes"]
    source = class_index(classes, args.source)
    names = expand_targets(args.target or [args.source], classes)  # reconstruct: own class
    targets = [class_index(classes, t) for t in names]
    x = read_inputs(image_files, ckpt, args.fit)
    input_dirs = {Path(p) if Path(p).is_dir() else Path(p).parent for p in args.input}
    writes = [*names, *(f"{t}.npy" for t in names), "grid.png", "files.txt"]
    out = files.out_folder(args.out, input_dirs, writes, args.overwrite)  # before any compute
    print(f"{ckpt['method']} {args.ckpt} (step {ckpt.get('step')}): {len(image_files)} image(s) "
          f"{args.source} -> {', '.join(names)}; {getattr(net, 'precision', 'fp32')}")
    clock.append(time.perf_counter())
    # the bar closed on an error too, so that the one-line error starts a line of its own
    with torch.no_grad(), tqdm(x.split(args.batch_size), desc="batches") as batches:
        # (T, N, C, H, W)
        y = torch.cat([net.translate_many(xb.to(args.device), source, targets).cpu()
                       for xb in batches], 1)
    clock.append(time.perf_counter())
    files.check_finite(y, f"the {ckpt['method']} translation (nothing was written)")
    (out / "files.txt").write_text("".join(f"{f.name}\n" for f in image_files))
    for name, yt in zip(names, y):
        (out / name).mkdir(exist_ok=True)
        for f, img in zip(image_files, files.to_uint8(yt)):
            files.save_png(img, out / name / f"{f.stem}.png")
        np.save(out / f"{name}.npy", data.denormalize(yt, ckpt["normalization"]).numpy())
    plots.translation_figure(x, dict(zip(names, y)), out / "grid.png", f"{ckpt['method']}: "
                             f"{args.source} ->")
    clock.append(time.perf_counter())
    read, work, write = np.diff(clock)
    print(f"wrote {out}: <target>/*.png (display scale), <target>.npy (original units, in "
          "files.txt order), grid.png")
    print(f"{len(image_files)} images x {len(names)} targets in {clock[-1] - clock[0]:.1f} s: "
          f"{y.shape[0] * y.shape[1] / work:.2f} translations/s while translating (model load "
          f"and reading {read:.1f} s, translating {work:.1f} s, writing {write:.1f} s; "
          f"{args.device}, {torch.get_num_threads()} threads)")


def cmd_export(args):
    """A checkpoint to share: what translation needs, without the optimizer and RNG states that
    only resuming needs (about half the size)."""
    ckpt = M.load_checkpoint(M.checkpoint_path(args.ckpt))
    out = Path(args.out)
    files.out_folder(out.parent, [args.ckpt], [out.name], args.overwrite)
    state = {k: v for k, v in ckpt["state"].items() if not k.startswith("optimizer")}
    M.save_checkpoint({**{k: v for k, v in ckpt.items() if k != "rng"}, "state": state}, out)
    print(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MB)")


def get_parser():
    from evaluation import demo
    p = files.Parser(prog="phendiff.py", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, what in (("translate", "translate images to other classes with any method"),
                       ("reconstruct", "translate images to their own class (Table 2)")):
        t = sub.add_parser(name, help=what)
        files.add_flags(t, ckpt=files.REQUIRED)
        t.add_argument("--input", nargs="+", required=True, help="image files and/or folders")
        t.add_argument("--source", required=True, help="class of the input images")
        if name == "translate":
            t.add_argument("--target", nargs="+", required=True,
                           help="target classes; a compound name means all its concentrations")
        files.add_flags(t, out="translated", overwrite=False, batch_size=32, device="auto")
        t.add_argument("--fit", choices=["crop", "resize"], default="crop",
                       help="images of another size: centre crop, smaller ones resized (crop), or "
                            "the centre square resized, area-averaged (resize)")
        g = t.add_argument_group("method options (default: the method's own)")
        files.add_flags(g, ddim_steps=None, fixed_point_iters=None, guidance=None)
        g.add_argument("--no-ema", action="store_true", help="the raw weights instead of the EMA")
        files.add_flags(g, projection=None, projection_steps=None, precision=None)
        t.set_defaults(run=cmd_translate, target=None)
    d = sub.add_parser("demo",
                       help="PhenDiff (or any method) on the synthetic benchmark: report.md")
    demo.add_arguments(d)
    d.set_defaults(run=demo.run)
    e = sub.add_parser("export", help="a checkpoint without optimizer/RNG state, for sharing")
    files.add_flags(e, ckpt=files.REQUIRED, out=files.REQUIRED, overwrite=False)
    e.set_defaults(run=cmd_export)
    return p


def main(argv=None):
    files.run_command(get_parser(), argv)


if __name__ == "__main__":
    main()
