"""Train any method of the comparison (method.py) on microscopy images: one script for all.

One CPU:    python train.py --method phendiff --preset cpu --steps 2000 --out runs/x
Three GPUs: torchrun --standalone --nproc_per_node=3 train.py --preset paper --out runs/x
Per pair:   python train.py --method cyclegan --pairs DMSO:all --out runs/cyclegan  (a run per pair)

Read top-down: the command line; the processes (DDP); data (`get_batch`); the method; `evaluate`,
`save`, the log; then `train`, whose loop is one method.train_step per step. DDP is inline, as in
nanoGPT: torchrun's RANK / LOCAL_RANK / WORLD_SIZE pick each process's device and share of the data;
without them the same code runs as a single process. Exact resume: the data order is a function of
(seed, epoch) and all randomness of a step is drawn after reseeding torch from (seed, step, rank),
so a run is a pure function of its arguments and a checkpoint's state. Every process takes part in
every collective of every step (a step with nothing to learn from is not skipped), and at each
checkpoint the processes' states are compared (method.check_ddp_consistency).
"""
import argparse
import contextlib
import csv
import dataclasses
import math
import os
import resource
import signal
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import data
import files
import method as M
from evaluation import plots
from evaluation.scores import reconstruction_error

# evaluation grid: 8 fixed images, their translations to <= 10 classes
GRID_COLS, GRID_MAX_ROWS = 8, 10

# -----------------------------------------------------------------------------
# command line: flags every method shares, then one per field of the method's config


def comma_list(kind):
    return lambda s: tuple(kind(v) for v in s.split(",") if v.strip())


def common_flags(p):
    a = p.add_argument
    a("--method", default="phendiff", choices=list(M.METHODS), help="what to train (%(default)s)")
    a("--preset", default="cpu", help="size of the method: tiny | cpu | paper, phendiff also small "
                                      "(%(default)s); a method flag below overrides one field")
    files.add_flags(p, data="synthetic")  # the sources every command line takes
    a("--kind", default="bbbc021", choices=["bbbc021", "golgi"],
      help="synthetic generator (%(default)s)")
    a("--compounds", type=comma_list(str), help="keep DMSO + these compounds, e.g. latrunculin_b")
    a("--n-per-class", type=files.integer(1),
      help="synthetic images per class (default: data.py's)")
    a("--image-size", type=files.integer(8), help="pixels (default: the preset's)")
    a("--fit", default="crop", choices=["crop", "resize"],
      help="real images of another size: centre crop (%(default)s) or resize the centre square")
    a("--no-augment", action="store_true", help="no random flips / 90-degree rotations")
    a("--pairs", default="DMSO:all", help="two-class methods (cyclegan): the class pairs, a run "
                                          "each: A:B,A:C or A:all (%(default)s)")
    # optimisation and system
    a("--steps", type=files.integer(1), default=2000, help="optimizer steps in total (%(default)s)")
    files.add_flags(p, batch_size=32, device="auto", seed=0, out=files.REQUIRED, precision="auto")
    a("--resume", action="store_true", help="continue from OUT/last.pt; flags given now override")
    a("--ckpt-every", type=files.integer(1), default=500,
      help="steps between checkpoints (%(default)s)")
    a("--keep", type=files.integer(1), default=3,
      help="ckpt_*.pt files kept besides last.pt (%(default)s)")
    a("--log-every", type=files.integer(1), default=10, help="steps between log rows (%(default)s)")
    a("--sample-every", type=files.integer(0), default=500,
      help="steps between evaluation grids + PSNR (%(default)s; 0: never)")
    a("--ddim-steps", type=files.integer(1), default=50,
      help="phendiff: DDIM steps of the evaluation (%(default)s)")


def method_flags(p, cls):
    """A flag for each config field with a help (method.arg); None means: the preset's value."""
    g = p.add_argument_group(f"--method {cls.name} (defaults: the preset's)")
    for f in dataclasses.fields(cls.Config):
        if "help" not in f.metadata:
            continue
        kw = dict(help=f.metadata["help"], choices=f.metadata.get("choices"))
        if f.type is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = {tuple: comma_list(int), float: files.real}.get(f.type, f.type)
        g.add_argument("--" + f.name.replace("_", "-"), **kw)


def given_config(cls, args):
    """The method's config fields that the user set by flag."""
    return {f.name: getattr(args, f.name) for f in dataclasses.fields(cls.Config)
            if "help" in f.metadata and getattr(args, f.name) is not None}


RUN_FILES = ("log.csv", "loss.png", "samples_*.png", "ckpt_*.pt", "last.pt")  # what a run writes


def foreign_files(out):
    """What in a folder is not a run's own (hidden files such as the lock are the run's too)."""
    return sorted(p.name for p in out.iterdir() if not p.name.startswith(".")
                  and not any(p.match(pattern) for pattern in RUN_FILES)
                  and not (p.is_dir() and not foreign_files(p))) if out.is_dir() else []


def resume_checkpoint(out):
    """The checkpoint a --resume continues: OUT/last.pt, or that of the first pair run; None for a
    run that stopped before its first checkpoint, which then starts again."""
    found = [out / "last.pt"] if (out / "last.pt").exists() else sorted(out.glob("*/last.pt"))
    if not found:
        if foreign_files(out):
            raise ValueError(f"--resume: {out} holds no checkpoint and files of no run "
                             f"({', '.join(foreign_files(out)[:3])}); choose another --out")
        return None
    ckpt = M.load_checkpoint(found[0])
    if ckpt.get("from_version") == 1:
        raise ValueError(f"--resume: {found[0]} was written before the method interface; it "
                         "translates, but cannot be resumed: start a new run")
    return ckpt


def parse_args(argv):
    """Parse argv; with --resume the checkpoint's saved flags fill in every flag not given now."""
    pre = files.Parser(add_help=False)
    pre.add_argument("--method", default="phendiff")
    pre.add_argument("--out")
    pre.add_argument("--resume", action="store_true")
    known, _ = pre.parse_known_args(argv)
    ckpt = resume_checkpoint(Path(known.out)) if known.resume and known.out else None
    cls = M.method_class(ckpt["method"] if ckpt else known.method)
    parser = files.Parser(prog="train.py", description=__doc__.splitlines()[0])
    common_flags(parser)
    method_flags(parser, cls)
    if ckpt:
        # the saved flags, but the device of this machine (a GPU run may resume on a CPU)
        parser.set_defaults(**{**ckpt["args"], "resume": False, "device": "auto"})
    args = parser.parse_args(argv)
    if ckpt and args.method != ckpt["method"]:
        raise ValueError(f"--resume: {args.out} is a {ckpt['method']} run, not {args.method}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder")
    if not args.resume and out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
        raise ValueError(f"{out} is not empty: add --resume to continue that run, or choose a "
                         "new --out")
    if ckpt is None:  # the method's flags, checked now rather than after loading the data
        size = {"image_size": args.image_size} if args.image_size else {}
        cls.Config.preset(args.preset, **size, **given_config(cls, args))
    M.Precision(args.precision, args.device, cls.PRECISIONS, cls.name)  # refused before the data
    return args, cls

# -----------------------------------------------------------------------------
# processes, data, method


def setup_processes(device_flag):
    """(rank, world size, device, whether this call started the process group): under torchrun
    DDP's process group, unless the caller already started one (tests, notebooks)."""
    ddp = "RANK" in os.environ  # set by torchrun
    rank, local_rank, world = (int(os.environ.get(k, 0))
                               for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    cuda = torch.device(device_flag).type == "cuda"  # files.device: auto is resolved already
    device = torch.device(f"cuda:{local_rank}" if ddp and cuda else device_flag)
    if cuda:  # GPU speed defaults: TF32 matmuls, cuDNN picks the fastest convolution once
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    started = ddp and not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo")
    if ddp:  # every rank has read the run folder (parse_args) before rank 0 writes to it
        dist.barrier()
    return rank, world if ddp else 1, device, started


def load_data(args, cls):
    """The whole dataset in memory as (N, C, H, W) in [-1, 1]."""
    size = args.image_size or cls.Config.preset(args.preset).image_size
    opts = {k: v for k, v in dict(n_per_class=args.n_per_class, compounds=args.compounds).items()
            if v is not None}
    return data.load_dataset(args.data, image_size=size, kind=args.kind, seed=args.seed,
                             fit=args.fit, **opts)


def pair_runs(args, cls, ds):
    """[(dataset, run folder)]: the whole set in --out, or for a two-class method (CycleGAN) one
    run per pair of --pairs, each in --out/<A>__<B>."""
    if not cls.TWO_CLASSES:
        return [(ds, Path(args.out))]
    pairs = []
    for spec in args.pairs.split(","):
        a, _, b = spec.partition(":")
        pairs += [(a, c) for c in ds.classes if c != a] if b == "all" else [(a, b)]
    for c in {c for p in pairs for c in p} - set(ds.classes):
        raise ValueError(f"--pairs: class {c!r} is not in the data; "
                         f"it has: {', '.join(ds.classes)}")
    return [(ds.select(pair), Path(args.out) / "__".join(pair)) for pair in pairs]


class Batches:
    """get_batch(step): this rank's batch of a step, a function of (seed, step, rank) alone, so
    resume needs no loader state. Flips and 90-degree rotations unless --no-augment. A method with
    PER_CLASS_BATCH (CycleGAN) gets --batch-size images of each class, each class shuffled through
    epochs of its own, so that no rank ever draws a batch without one of the domains."""

    def __init__(self, ds, args, rank, world, device, per_class):
        self.ds, self.args, self.device = ds, args, device
        groups = ([torch.nonzero(ds.labels == k).flatten() for k in range(len(ds.classes))]
                  if per_class else [torch.arange(len(ds))])
        self.samplers = []
        for k, idx in enumerate(groups):  # seed + k: equal-sized classes are not paired alike
            sampler = DistributedSampler(idx, num_replicas=world, rank=rank, shuffle=True,
                                         seed=args.seed + k, drop_last=True)
            if len(sampler) < args.batch_size:
                what = (f"class {ds.classes[k]} has {len(idx)} images, which" if per_class
                        else f"{len(ds)} images")
                raise ValueError(f"{what} do not fill one batch of {args.batch_size} x {world} "
                                 "processes: lower --batch-size")
            self.samplers.append((idx, sampler))
        self.size = args.batch_size * len(groups)  # images per process and step
        self.epochs, self.orders = [None] * len(groups), [None] * len(groups)

    def indices(self, i, step):
        """The step's dataset indices from group i (a class, or the whole set)."""
        (idx, sampler), b = self.samplers[i], self.args.batch_size
        epoch, j = divmod(step, len(sampler) // b)
        if epoch != self.epochs[i]:
            sampler.set_epoch(epoch)
            self.epochs[i], self.orders[i] = epoch, idx[torch.tensor(list(sampler))]
        return self.orders[i][j * b:(j + 1) * b]

    def __call__(self, step):
        idx = torch.cat([self.indices(i, step) for i in range(len(self.samplers))])
        x, y = self.ds.images[idx].to(self.device), self.ds.labels[idx].to(self.device)
        if not self.args.no_augment:
            x = data.augment(x)
        fmt = torch.channels_last if self.device.type == "cuda" else torch.contiguous_format
        return x.contiguous(memory_format=fmt), y


def build_method(cls, args, ds, ckpt, device, rank):
    """(method, step): new from the preset and flags, or the checkpoint's, continued (with this
    rank's own share of the state that is per rank, e.g. image pools)."""
    C, H = ds.images.shape[1:3]
    shape = dict(image_size=H, in_channels=C, num_classes=len(ds.classes))
    flags = {**given_config(cls, args), "steps": args.steps}
    if ckpt is None:
        config = cls.Config.preset(args.preset, **shape, **flags)
    else:
        stored = {k: ckpt["config"][k] for k in shape}
        if stored != shape or ckpt["classes"] != ds.classes:
            raise ValueError(f"--resume: the data ({shape}, {len(ds.classes)} classes) differ "
                             f"from the run's ({stored}); resume with the run's --data and "
                             "--image-size")
        config = cls.Config(**{**ckpt["config"], **flags})
    options = {**cls.EVAL_OPTIONS,
               **({"ddim_steps": args.ddim_steps} if "ddim_steps" in cls.OPTIONS else {})}
    if "precision" in cls.OPTIONS:  # PhenDiff: its evaluation translations too
        options["precision"] = args.precision
    torch.manual_seed(args.seed)  # the same initial weights on every rank
    method = cls(config, device, **options)
    if ckpt is None:
        method.start(ds)
        return method, 0
    try:
        method.load_state_dict(M.rank_state(cls, ckpt["state"], rank))
    except (RuntimeError, KeyError, ValueError) as e:
        raise ValueError(f"--resume: the checkpoint does not fit the flags given now "
                         f"({str(e).splitlines()[0][:160]})") from None
    M.set_rng_state(ckpt["rng"])  # torch is reseeded per step anyway; numpy/python for completeness
    return method, ckpt["step"]

# -----------------------------------------------------------------------------
# evaluation, checkpoints, log (rank 0)


def evaluation_set(ds, device):
    """Fixed training images spread over the classes, and up to 10 classes to translate them to."""
    idx = torch.linspace(0, len(ds) - 1, GRID_COLS).long()
    K = len(ds.classes)
    targets = torch.linspace(0, K - 1, min(K, GRID_MAX_ROWS)).round().long().tolist()
    return ds.images[idx].to(device), ds.labels[idx].to(device), targets


@torch.no_grad()
def evaluate(method, x, y, targets, path):
    """The fixed images, their reconstructions and their translations as one grid (a row each);
    returns the mean reconstruction PSNR (dB, images in [0, 1]), None for a method that does not
    translate (an encoder, a decoder)."""
    if hasattr(method, "sample"):  # a GAN that samples: what it learned, a row per class
        labels = torch.tensor(targets, device=x.device).repeat_interleave(len(x))
        plots.image_grid(method.sample(labels), len(targets),
                         path.with_name(path.name.replace("samples_", "classes_")))
    if not method.TRANSLATES:
        return None
    moved = method.translate_many(x, y, [y, *targets])  # PhenDiff: one inversion for all rows
    plots.image_grid(torch.cat([x, *moved]), len(targets) + 2, path)
    return float(reconstruction_error(x, moved[0])["psnr"].mean())


def save(folder, method, state, ds, step, args):
    """ckpt_XXXXXXX.pt (the last --keep are kept) and last.pt, a hard link to the newest; state:
    M.checkpoint_state(method), taken by every process."""
    path = folder / f"ckpt_{step:07d}.pt"
    M.save_checkpoint(M.make_checkpoint(method, ds, step, vars(args), state), path)
    tmp = folder / ".last.pt.tmp"
    tmp.unlink(missing_ok=True)
    os.link(path, tmp)
    os.replace(tmp, folder / "last.pt")  # atomic: last.pt is always a complete checkpoint
    for old in sorted(folder.glob("ckpt_*.pt"))[:-args.keep]:
        old.unlink()


class Log:
    """log.csv (a row every --log-every steps: the method's values averaged over them) and
    loss.png. A resumed run drops the rows past its checkpoint."""

    def __init__(self, folder, keys, step, resumed):
        self.path, self.png, self.keys = folder / "log.csv", folder / "loss.png", list(keys)
        self.fields = ["step", *self.keys, "images_per_s", "recon_psnr"]
        self.rows, self.pending = [], []
        if resumed and self.path.exists():
            with open(self.path) as f:
                rows = [{k: float(v) if v else None for k, v in r.items()}
                        for r in csv.DictReader(f)]
            self.rows = [{**r, "step": int(r["step"])} for r in rows if r["step"] <= step]
        with open(self.path, "w", newline="") as f:
            writer = csv.DictWriter(f, self.fields)
            writer.writeheader()
            writer.writerows(self.rows)

    def add(self, values):
        self.pending.append(values)

    def write(self, step, images_per_s, psnr):
        means = {k: [v[k] for v in self.pending if k in v] for k in self.keys}
        row = {"step": step, **{k: sum(v) / len(v) if v else None for k, v in means.items()},
               "images_per_s": images_per_s, "recon_psnr": psnr}
        self.rows.append(row)
        self.pending = []
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, self.fields).writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                                                     for k, v in row.items()})
        return row

    def plot(self):
        plots.loss_curves(self.rows, [k for k in self.keys if k != "lr"], self.png)

# -----------------------------------------------------------------------------
# the training loop


class Signals:
    """SIGINT / SIGTERM: finish the step, checkpoint, exit; a second signal acts as usual."""

    def __enter__(self):
        self.received = 0
        self.previous = {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        self.received = signum
        signal.signal(signum, self.previous[signum])

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            if signal.getsignal(s) == self.handle:
                signal.signal(s, handler)


def open_run(folder, cls, method, ds, args, step, resumed, world, device, precision):
    """Rank 0: the run folder, cleared of the temp files of a save that a kill interrupted (this
    process holds the folder's lock), its log, and one line about the run."""
    folder.mkdir(parents=True, exist_ok=True)
    for tmp in folder.glob(".*.tmp"):
        tmp.unlink()
    print(f"{folder}: {cls.name} ({args.preset} preset, {M.count_parameters(method) / 1e6:.2f}M "
          f"parameters) | {len(ds)} images, {len(ds.classes)} classes, "
          f"{'x'.join(map(str, ds.images.shape[1:]))} | {device}, {precision} | global batch "
          f"{args.batch_size}{' per class' * cls.PER_CLASS_BATCH} x {world} | at step {step} "
          f"of {args.steps}")
    return Log(folder, cls.LOG, step, resumed)


def reduce_values(values, keys, received, world, device, folder, step):
    """(the step's values averaged over the processes that returned them, whether any process got
    a signal): one all-reduce in the fixed order of the method's LOG (`keys`) with a mask of which
    values each process returned, so a value left out at some step or on some process never
    unbalances the collective. A non-finite value on any process stops every process, unsaved."""
    foreign = sorted(set(values) - set(keys))
    if foreign:
        raise AssertionError(f"train_step returned {foreign}, which are not in the method's LOG "
                             f"{keys}: add them to LOG (the log's columns and the all-reduce)")
    stats = torch.tensor([*(values.get(k, 0.0) for k in keys), *(float(k in values) for k in keys),
                          float(received)], dtype=torch.float64, device=device)
    if world > 1:
        dist.all_reduce(stats)
    n = len(keys)
    sums, counts, stopping = stats[:n].tolist(), stats[n:2 * n].tolist(), bool(stats[-1])
    values = {k: v / c for k, v, c in zip(keys, sums, counts) if c}
    if not all(map(math.isfinite, values.values())):
        last = folder / "last.pt"
        raise ValueError(f"non-finite values {values} at step {step}: stopped without saving; "
                         f"last good checkpoint: {last if last.exists() else 'none yet'}. "
                         "Try a lower learning rate.")
    return values, stopping


def train(cls, args, ds, folder, ckpt, rank, world, device):
    """Train (or continue) one run in `folder`; returns the path of its last checkpoint."""
    master = rank == 0
    method, step = build_method(cls, args, ds, ckpt, device, rank)
    precision = M.Precision(args.precision, device, cls.PRECISIONS, cls.name)  # of every step
    method.check_batch(args.batch_size, world)  # on every rank: all refuse together, none waits
    get_batch = Batches(ds, args, rank, world, device, cls.PER_CLASS_BATCH)
    eval_x, eval_y, eval_targets = evaluation_set(ds, device)
    if master:
        log = open_run(folder, cls, method, ds, args, step, ckpt is not None, world, device,
                       precision)
    interval, timed, timed_steps, first = 0.0, 0.0, 0, step
    # the bar closes on an error too, so that train.py's error line starts a line of its own
    with Signals() as sig, tqdm(total=args.steps, initial=step, disable=not master,
                                dynamic_ncols=True) as bar:
        while step < args.steps:
            t0 = time.perf_counter()
            torch.manual_seed(hash((args.seed, step, rank)) % 2**63)  # all randomness of this step
            batch = get_batch(step)
            with precision.autocast():  # bf16 where the method gains from it (--precision)
                values = method.train_step(batch, step)
            step += 1
            values, stopping = reduce_values(values, cls.LOG, sig.received, world, device, folder,
                                             step)
            dt = time.perf_counter() - t0
            interval += dt
            if step > first + 1:  # the first step of a process pays one-time costs
                timed, timed_steps = timed + dt, timed_steps + 1
            bar.update(1)

            # everyone: what translation needs, the checkpoint's state (compared across ranks),
            # a barrier; rank 0: evaluation, log row, loss curve, the checkpoint file
            final = step == args.steps or stopping
            saving = step % args.ckpt_every == 0 or final
            # a signal skips the evaluation: checkpoint first, within the grace period
            evaluating = args.sample_every and not stopping and (step % args.sample_every == 0
                                                                 or final)
            if evaluating or saving:
                method.refresh(ds)  # e.g. the autoencoders' class means of their codes now
            psnr = None
            if master:
                log.add(values)
                if evaluating:
                    psnr = evaluate(method, eval_x, eval_y, eval_targets,
                                    folder / f"samples_{step:07d}.png")
                    if psnr is not None:
                        tqdm.write(f"step {step}: reconstruction PSNR {psnr:.2f} dB "
                                   "(fixed training images)")
                if step % args.log_every == 0 or final or evaluating:
                    n = len(log.pending) * get_batch.size * world
                    row = log.write(step, n / interval, psnr)
                    bar.set_postfix({k: f"{v:.4g}" for k, v in row.items()
                                     if k in cls.LOG[:2] and v})
                    interval = 0.0
            if saving:
                state = M.checkpoint_state(method)
                if master:
                    save(folder, method, state, ds, step, args)
                    if evaluating or final:
                        log.plot()
                if world > 1:
                    dist.barrier()
            if stopping:
                # another rank's signal: as if terminated
                signum = int(sig.received) or signal.SIGTERM
                bar.close()
                if master:
                    print(f"{signal.Signals(signum).name}: checkpoint at step {step} saved to "
                          f"{folder / 'last.pt'}; continue with --resume")
                raise SystemExit(128 + signum)
    if master:
        peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda"
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        ips = timed_steps * get_batch.size * world / timed if timed else float("nan")
        where = "GPU, allocated" if device.type == "cuda" else "CPU, max RSS"
        print(f"done: step {step}, {ips:.1f} images/s (all processes, after the first step), "
              f"peak memory {peak:.0f} MiB ({where}); checkpoint {folder / 'last.pt'}")
    return str(folder / "last.pt")


def run_all(args, cls):
    """Every run of the command (one, or one per pair), each fresh or resumed."""
    rank, world, device, started = setup_processes(args.device)
    try:  # rank 0 holds the run folder's lock until the end: a second run there is refused
        with files.locked(args.out) if rank == 0 else contextlib.nullcontext():
            ds = load_data(args, cls)
            last = None
            for subset, folder in pair_runs(args, cls, ds):
                has_ckpt = (folder / "last.pt").exists()
                ckpt = M.load_checkpoint(folder / "last.pt") if has_ckpt else None
                if ckpt is not None and ckpt["step"] >= args.steps:
                    last = str(folder / "last.pt")  # a finished pair of a resumed --pairs run
                    continue
                last = train(cls, args, subset, folder, ckpt, rank, world, device)
            return last
    finally:
        if started:
            dist.destroy_process_group()


def main(argv=None):
    """Train (or resume) the runs of a command; returns the path of the last checkpoint written."""
    try:
        return run_all(*parse_args(argv))
    except (ValueError, OSError) as e:  # the user's to fix: one line; a bug keeps its traceback
        sys.stderr.write(f"train.py: error: {e}\n")
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
