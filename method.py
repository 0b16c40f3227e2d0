"""What every compared system shares: the method interface, the registry, and checkpoints.

A method (PhenDiff in phendiff.py, the baselines in baselines/) is a small class with

    name                                 its --method name and its checkpoints' "method" entry
    Config                               a dataclass of all that builds it, with the fields
                                         image_size, in_channels, num_classes (from the data) and
                                         steps (of the run); Config.preset(name, **overrides);
                                         fields made with `arg` are train.py flags
    OPTIONS                              inference choices with their defaults (e.g. DDIM steps)
    LOG                                  the names train_step may return, for the log's columns
    TRANSLATES                           False for a part of another method (DINO's encoder,
                                         GANformer's decoder): trained, but translates nothing
    PER_CLASS_BATCH                      True: train.py draws --batch-size images of each class
                                         per process and step (CycleGAN: unaligned A, B pairs)
    PER_RANK                             state_dict entries that are each process's own (CycleGAN's
                                         image pools): saved for every rank, each rank's restored
    PRECISIONS                           what train.py --precision may train it in, auto's first:
                                         ("fp32",), or ("bf16", "fp32") where bf16 gains
    __init__(config, device, **options)
    start(dataset)                            a new run's first look at its training data (DSAE:
                                              load its trained parts, class means of features)
    check_batch(batch_size, world)            a one-line ValueError for a batch too small for the
                                              method (images per process, processes)
    refresh(dataset)                          before each evaluation and checkpoint, on every
                                              process: statistics of the nets as they are now that
                                              translation needs (the autoencoders' class means)
    train_step(batch, step) -> {str: float}   one optimisation step on batch = (x, y); the method
                                              owns its optimizers, learning-rate schedule and EMA
    translate(x, y_source, y_target) -> x'    the image of x under another class; x in [-1, 1]
    translate_many(x, y_source, targets)      (len(targets), B, C, H, W); a method shares work here
    reconstruct(x, y) -> x'                   translate to the own class (the paper's Table 2)
    encode(x) -> features                     where the method has an encoder
    state_dict() / load_state_dict(state)     nets, EMA, optimizers: all that exact resume needs

`Method` gives the defaults; train.py, `phendiff.py translate` and eval.py use nothing else, so one
copy of the infrastructure (DDP, checkpoints, resume, logs, translation, scoring) serves every
method. Labels are class indices, an int or a LongTensor (B,).
"""
import contextlib
import copy
import dataclasses
import importlib
import math
import os
import random
import re
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

CHECKPOINT_VERSION = 2
# --method name -> (module, class); imported when first used, so that loading a StarGAN checkpoint
# does not import every other method, and phendiff.py can import this module
METHODS = {"phendiff": ("phendiff", "PhenDiff"),
           "cyclegan": ("baselines.cyclegan", "CycleGAN"),
           "stargan": ("baselines.stargan", "StarGAN"),
           "stylegan": ("baselines.stylegan", "StyleGAN"),
           "dino": ("baselines.dino", "DINO"),
           "ganformer": ("baselines.ganformer", "GANformer"),
           "dsae": ("baselines.dsae", "DSAE"),
           "vae": ("baselines.autoencoders", "VAE"),
           "bigan": ("baselines.autoencoders", "BiGAN"),
           "alae": ("baselines.alae", "ALAE"),
           "dcvae": ("baselines.dcvae", "DCVAE")}


def method_class(name):
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)


def labels(y, x):
    """An int or a (B,) sequence of class indices -> LongTensor (B,) on x's device."""
    y = torch.as_tensor(y, dtype=torch.long, device=x.device)
    return y.expand(x.shape[0]) if y.dim() == 0 else y


class Method:
    """Defaults of the interface; a method overrides what it does better (or at all)."""
    name = "method"
    OPTIONS = {}
    EVAL_OPTIONS = {}  # faster options for train.py's evaluation grids
    TWO_CLASSES = False  # True: a model per class pair (CycleGAN); train.py runs one per --pairs
    TRANSLATES = True  # False: an encoder (DINO) or a decoder (GANformer), parts of another method
    PER_CLASS_BATCH = False  # True: a step's batch holds --batch-size images of each class
    PER_RANK = ()  # state_dict entries that differ between processes by design (image pools)
    # what train.py --precision may train in, auto's choice first (bf16 where the hardware has it;
    # docs/training.md measured each method's gain); train.py runs train_step under its autocast
    PRECISIONS = ("fp32",)

    def start(self, dataset):
        pass

    def check_batch(self, batch_size, world):
        pass

    def refresh(self, dataset):
        pass

    def translate_many(self, x, y_source, targets):
        return torch.stack([self.translate(x, y_source, t) for t in targets])

    def reconstruct(self, x, y):
        return self.translate(x, y, y)

    def encode(self, x):
        raise ValueError(f"{self.name} has no encoder")

    def describe(self):
        """How the method translates, in words for reports (completes "... images were ...")."""
        return "translated to every class"

    def check_options(self, options):
        """Inference options of this method with their defaults filled in; others are an error."""
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"{self.name} does not take {', '.join(unknown)} (it takes: "
                             f"{', '.join(self.OPTIONS) or 'no options'})")
        return {**self.OPTIONS, **options}

# -----------------------------------------------------------------------------
# configs: dataclasses with presets, stored in checkpoints as plain dicts


def arg(default, help, **kw):
    """A config field that train.py offers as a flag (--name-with-dashes) with this help."""
    return dataclasses.field(default=default, metadata={"help": help, **kw})


def check_ranges(config, positive=(), nonnegative=(), fraction=()):
    """One-line errors for numbers out of range (NaN and infinity included), named as the flags
    that set them."""
    rules = ((positive, lambda v: v > 0, "> 0"), (nonnegative, lambda v: v >= 0, ">= 0"),
             (fraction, lambda v: 0 <= v < 1, "in [0, 1)"))
    for names, ok, what in rules:
        for name in names:
            v = getattr(config, name)
            if not (math.isfinite(v) and ok(v)):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number {what}, "
                                 f"got {v}")


def preset_config(cls, presets, name, overrides):
    """cls(**presets[name] updated by overrides), with one-line errors for unknown names."""
    if name not in presets:
        raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(presets)}")
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields {unknown}; valid: {sorted(fields)}")
    return cls(**{**presets[name], **overrides})

# -----------------------------------------------------------------------------
# training helpers every method uses


def ema_decay(step, decay):
    """The EMA decay at a step, warmed up as min(decay, (1 + step) / (10 + step)), so that a short
    run does not keep averaging in its random initialisation."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def update_ema(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for parameters; buffers are copied."""
    torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - decay)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


def world_size():
    """Processes of the torchrun job (1 without one)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank():
    """This process's rank in the torchrun job (0 without one)."""
    return dist.get_rank() if world_size() > 1 else 0


def mean_over_processes(t):
    """t averaged in place over the processes of a torchrun job (nothing on one process)."""
    if world_size() > 1:
        dist.all_reduce(t)
        t /= world_size()
    return t


def average_in_place(tensors):
    """Each tensor replaced by its mean over the processes, all in one all-reduce."""
    tensors = list(tensors)
    if world_size() == 1 or not tensors:
        return
    flat = mean_over_processes(torch.cat([t.flatten() for t in tensors]))
    offset = 0
    for t in tensors:
        t.copy_(flat[offset:offset + t.numel()].view_as(t))
        offset += t.numel()


def average_gradients(params):
    """Mean of the gradients over the processes of a torchrun job (nothing on one process).

    GANs average by hand, as StyleGAN2-ADA does, rather than through DDP: their steps run D on real
    and fake images, differentiate through D for a gradient penalty and alternate optimizers, none
    of which fits DDP's one forward + one backward per step."""
    average_in_place(p.grad for p in params if p.grad is not None)


@torch.no_grad()
def average_buffers(modules):
    """BatchNorm's running statistics (every floating-point buffer) averaged over the processes:
    each process normalises by its own batch, as DDP without SyncBatchNorm does, and the averaged
    statistics keep every rank's copy of the net the same."""
    average_in_place(b for m in modules for b in m.buffers() if b.is_floating_point())


def gather_over_processes(t):
    """Every process's t (equal shapes) concatenated along dim 0 in rank order; t on one process."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def broadcast_from_rank0(tensors):
    """Rank 0's values in place on every process: for what each process computes by itself from
    the same weights (class means of codes), where GPU kernels may differ in the last bits."""
    if world_size() > 1:
        for t in tensors:
            dist.broadcast(t, 0)


def state_entries(state, prefix=""):
    """[(dotted name, leaf)] of nested dicts and lists: "G.net.0.weight",
    "optimizer_g.state.3.exp_avg", "optimizer_g.param_groups.0.lr", ..."""
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return [(prefix, state)]
    return [e for k, v in items for e in state_entries(v, f"{prefix}.{k}" if prefix else str(k))]


def check_ddp_consistency(state):
    """Under torchrun, a one-line ValueError naming the first entry and rank that differ unless
    every process holds the same `state` (a state_dict: parameters, EMA, buffers, optimizer
    states), as StyleGAN2-ADA checks at each snapshot: names, shapes and plain values are
    gathered, then rank 0's copy of each tensor is broadcast and compared exactly (NaN equal to
    NaN). Every process must call it. Returns the number of entries compared (0 on one
    process)."""
    if world_size() == 1:
        return 0
    entries = state_entries(state)
    signature = [(n, tuple(v.shape), str(v.dtype)) if torch.is_tensor(v) else (n, repr(v))
                 for n, v in entries]
    signatures = [None] * world_size()
    dist.all_gather_object(signatures, signature)
    for r, other in enumerate(signatures):
        if other != signatures[0]:
            name = next((a[0] for a, b in zip(other, signatures[0]) if a != b), "the entry count")
            raise ValueError(f"the processes disagree: {name} on rank {r} differs from rank 0's "
                             "(its name, shape, dtype or value)")
    device = (torch.device("cuda", torch.cuda.current_device())
              if dist.get_backend() == "nccl" else torch.device("cpu"))
    differs = torch.zeros(world_size(), len(entries), device=device)
    for i, (_, v) in enumerate(entries):
        if torch.is_tensor(v):
            mine = v.detach().to(device)
            mine = mine if mine.is_floating_point() else mine.to(torch.int64)  # bool too
            first = mine.clone()
            dist.broadcast(first, 0)
            same = mine == first
            if mine.is_floating_point():
                same |= mine.isnan() & first.isnan()
            differs[rank(), i] = float(not same.all())
    dist.all_reduce(differs)
    bad = differs.nonzero().tolist()  # [rank, entry], lowest rank first
    if bad:
        r, i = bad[0]
        raise ValueError(f"the processes disagree: {entries[i][0]} on rank {r} differs from rank "
                         f"0's ({len(bad)} differences in {len(entries)} state entries)")
    return len(entries)


def gather_objects(obj):
    """[every process's obj] in rank order, its tensors moved to the CPU; [obj] on one process."""
    if world_size() == 1:
        return [obj]
    out = [None] * world_size()
    dist.all_gather_object(out, to_cpu(obj))
    return out


def to_cpu(obj):
    if torch.is_tensor(obj):
        return obj.cpu()
    if isinstance(obj, dict):
        return {k: to_cpu(v) for k, v in obj.items()}
    return [to_cpu(v) for v in obj] if isinstance(obj, (list, tuple)) else obj


def checkpoint_state(method):
    """method.state_dict() for a checkpoint; under torchrun every process calls it at once: the
    entries that must be equal on every rank are checked (check_ddp_consistency), each of the
    method's PER_RANK entries becomes a list of every rank's (one entry on one process)."""
    state = method.state_dict()
    shared = {k: v for k, v in state.items() if k not in method.PER_RANK}
    check_ddp_consistency(shared)
    return {**shared, **{k: gather_objects(state[k]) for k in method.PER_RANK}}


def rank_state(cls, state, process=0):
    """A checkpoint's state as a process loads it: of each PER_RANK entry saved by every rank (a
    list), its own; its rank mod their count when the number of processes changed."""
    own = {k: state[k][process % len(state[k])] for k in cls.PER_RANK
           if isinstance(state.get(k), list)}
    return {**state, **own}


def count_parameters(method):
    """Trained parameters of a method, each counted once: those that take gradients, so not the
    EMA copies, DINO's teacher or DSAE's frozen encoder (between steps, when no net is frozen for
    another's update)."""
    params = {id(p): p for m in vars(method).values() if isinstance(m, torch.nn.Module)
              for p in m.parameters() if p.requires_grad}
    return sum(p.numel() for p in params.values())


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr

# -----------------------------------------------------------------------------
# precision: bf16 autocast where the hardware runs it fast, fp32 elsewhere and on request

PRECISIONS = ("auto", "fp32", "bf16")


def cpu_bf16_flags():
    """The processor's bf16 instructions (/proc/cpuinfo: avx512_bf16, amx_bf16), with which oneDNN
    runs bf16 convolutions ~1.6x faster than fp32; without them it emulates bf16, slower than fp32
    (an older CPU here measured 3x slower). Empty off Linux: not detected, so fp32."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return []
    return sorted(set(re.findall(r"\b(avx512_bf16|amx_bf16)\b", text)))


class Precision:
    """Whether a method's networks run under bf16 autocast, and why (str() says both). Weights,
    optimizer states and the DDIM arithmetic stay float32/64; autocast runs convolutions and matrix
    products in bf16, what follows them takes their bf16 outputs. `choice`: auto | fp32 | bf16;
    `offered`: the method's PRECISIONS, auto taking the first, bf16 only where the hardware runs
    it fast (a GPU with bf16, a CPU with bf16 instructions)."""

    def __init__(self, choice, device, offered=("fp32",), method="this method"):
        if choice not in PRECISIONS:
            raise ValueError(f"--precision {choice}: unknown; choose {', '.join(PRECISIONS)}")
        if choice != "auto" and choice not in offered:
            raise ValueError(f"--precision {choice}: {method} trains in {' or '.join(offered)} "
                             "only (docs/training.md); use --precision auto")
        self.device = torch.device(device)
        cuda, flags = self.device.type == "cuda", cpu_bf16_flags()
        fast = torch.cuda.is_bf16_supported() if cuda else self.device.type == "cpu" and flags
        hardware = (f"this GPU {'has' if fast else 'lacks'} bf16" if cuda else
                    f"this CPU has {'+'.join(flags)}" if fast else
                    f"no bf16 instructions on this {self.device.type}")
        if choice == "auto":
            bf16 = offered[0] == "bf16" and bool(fast)
            why = (f"auto: {hardware}" if offered[0] == "bf16" else
                   f"auto: {method} trains in fp32 (docs/training.md)")
        else:
            bf16 = choice == "bf16"
            why = "requested" + (f"; {hardware}: expect it slower" if bf16 and not fast else "")
        self.dtype, self.why = torch.bfloat16 if bf16 else None, why

    def __str__(self):
        return f"{'bf16 autocast' if self.dtype else 'fp32'} ({self.why})"

    def autocast(self):
        """A context that runs its forward passes in this precision (nothing for fp32)."""
        return (torch.autocast(self.device.type, self.dtype) if self.dtype
                else contextlib.nullcontext())

    def wrap(self, net):
        """net itself for fp32; otherwise a copy run under autocast, its output float32, so that
        what is computed from it (eq. 5, eq. 6) stays float32. The copy's convolution and linear
        weights are cast once, as autocast would at every call (most felt at small batches)."""
        if not self.dtype:
            return net
        net = copy.deepcopy(net)
        for m in net.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.to(self.dtype)
        return Autocast(net, self)


class Autocast:
    """A net run under a Precision's autocast, its output cast to float32. `module` (as a DDP
    wrapper's) and `null_label` are the net's, so ddim.prediction and guidance see through it."""

    def __init__(self, net, precision):
        self.module, self.precision = net, precision
        self.null_label = getattr(net, "null_label", None)

    def __call__(self, *args):
        with self.precision.autocast():
            return self.module(*args).float()

# -----------------------------------------------------------------------------
# checkpoints: one dict that loads with torch.load(weights_only=True)
#   version, method, config, classes, channels, normalization, state (the method's state_dict;
#   entries named optimizer* only matter for resuming; a PER_RANK entry is a list, one per rank),
#   step, rng, args (train.py's flags)


def save_checkpoint(obj, path):
    """Atomic save: write a temp file next to `path`, fsync, then rename, so a crash never leaves
    half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes the file owner-only; a checkpoint is not secret
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def make_checkpoint(method, ds, step, args, state=None):
    """The checkpoint dict of a method trained on dataset ds, after `step` optimizer steps; state:
    checkpoint_state(method), which train.py takes on every process of a torchrun job."""
    return {"version": CHECKPOINT_VERSION, "method": method.name,
            "config": dataclasses.asdict(method.config), "classes": list(ds.classes),
            "channels": list(ds.channels),
            "normalization": {k: [float(v) for v in ds.normalization[k]] for k in ("low", "high")},
            "state": checkpoint_state(method) if state is None else state, "step": step,
            "rng": rng_state(), "args": args}


def _from_version_1(ckpt):
    """Checkpoints from before the method interface (PhenDiff only): the UNet config and the
    schedule become the PhenDiff config, the weights its state. Enough to translate; not to
    resume."""
    config = {**ckpt["config"], "schedule": ckpt["schedule"]["name"], "T": ckpt["schedule"]["T"]}
    state = {k: ckpt[k] for k in ("model", "ema", "optimizer") if k in ckpt}
    rest = {k: v for k, v in ckpt.items() if k not in ("model", "ema", "optimizer", "schedule")}
    return {**rest, "version": CHECKPOINT_VERSION, "method": "phendiff", "config": config,
            "state": state, "from_version": 1}


def load_checkpoint(path):
    """Load a checkpoint on the CPU; anything else is a one-line ValueError naming the file."""
    if not os.path.isfile(path):
        raise ValueError(f"checkpoint {path}: no such file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # garbage, truncation, or pickled objects that weights_only refuses
        raise ValueError(f"checkpoint {path}: cannot be read as a weights-only torch file "
                         f"({type(e).__name__}); is it a phendiff checkpoint?") from e
    if not isinstance(ckpt, dict) or "version" not in ckpt:
        raise ValueError(f"checkpoint {path}: a torch file but not a phendiff checkpoint "
                         "(no 'version' entry)")
    if ckpt["version"] == 1 and all(k in ckpt for k in ("config", "schedule", "model")):
        ckpt = _from_version_1(ckpt)
    if ckpt["version"] != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint {path}: version {ckpt['version']!r}, this code reads "
                         f"versions 1 and {CHECKPOINT_VERSION}")
    missing = [k for k in ("method", "config", "classes", "state") if k not in ckpt]
    if missing:
        raise ValueError(f"checkpoint {path}: missing entries {missing}")
    return ckpt


def checkpoint_path(path):
    """A checkpoint file, or a run folder holding last.pt."""
    path = Path(path)
    return path / "last.pt" if path.is_dir() and (path / "last.pt").exists() else path


def build(ckpt, device="cpu", **options):
    """The method of a loaded checkpoint, weights in place, ready to translate."""
    cls = method_class(ckpt["method"])
    try:
        config = cls.Config(**ckpt["config"])
    except TypeError as e:  # a field this code does not know: another version of the method
        raise ValueError(f"{ckpt['method']} checkpoint with a config this code cannot read: "
                         f"{e}") from e
    method = cls(config, device, **options)
    try:
        method.load_state_dict(rank_state(cls, ckpt["state"]))
    except (RuntimeError, KeyError) as e:  # weights of another shape, or a missing net
        first = str(e).strip().splitlines()[0][:200]
        raise ValueError(f"{ckpt['method']} checkpoint whose weights do not fit its config "
                         f"({first})") from e
    return method


def load_method(path, device="cpu", **options):
    """(method, checkpoint) from a checkpoint file or run folder. A folder of runs, one per class
    pair (CycleGAN), loads as one method over all their classes (the class's `combine`)."""
    path = Path(path)
    if path.name == "last.pt" and not path.exists() and list(path.parent.glob("*/last.pt")):
        path = path.parent  # <pairs run>/last.pt names the pair runs of that folder
    if path.is_dir() and not (path / "last.pt").exists():
        runs = sorted(path.glob("*/last.pt"))
        if not runs:
            raise ValueError(f"{path} holds no last.pt, nor run folders with one")
        loaded = [load_method(r, device, **options) for r in runs]
        names = sorted({ckpt["method"] for _, ckpt in loaded})
        cls = method_class(names[0])
        if len(names) > 1 or not hasattr(cls, "combine"):
            raise ValueError(f"{path} holds several runs ({', '.join(names)}); pass one of them")
        return cls.combine(loaded)
    ckpt = load_checkpoint(checkpoint_path(path))
    return build(ckpt, device, **options), ckpt


def load_translator(path, device="cpu", **options):
    """load_method for the commands that translate: an encoder or a decoder alone is refused."""
    method, ckpt = load_method(path, device, **options)
    if not method.TRANSLATES:
        raise ValueError(f"{path} is a {method.name} checkpoint, which does not translate by "
                         f"itself ({method.describe()}); use the checkpoint of a method that "
                         "does (e.g. dsae, which joins an encoder and a decoder)")
    return method, ckpt


def rng_state():
    """Global torch / numpy / python generator states as tensors and ints
    (weights_only-loadable)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, py_key, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(key.astype(np.int64)),
            "numpy_pos": pos, "numpy_gauss": [has_gauss, gauss], "python": torch.tensor(py_key),
            "python_gauss": py_gauss, "python_version": version}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    key = s["numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, s["numpy_pos"], *s["numpy_gauss"]))
    random.setstate((s["python_version"], tuple(s["python"].tolist()), s["python_gauss"]))
