"""Train PhenDiff's class-conditional diffusion model (eq. 4 loss) on microscopy images.

One CPU:    python train.py --data synthetic --preset tiny --image-size 32 --steps 2000 --out runs/x
Three GPUs: torchrun --standalone --nproc_per_node=3 train.py --data synthetic --preset paper --out runs/x

DDP is inline, as in nanoGPT: torchrun's RANK / LOCAL_RANK / WORLD_SIZE pick each process's
device and share of the data; without them the same code runs as a single process.
Exact resume: the data order is a function of (seed, epoch) and all randomness of a step
(timesteps, noise, augmentation, label dropout, dropout) is drawn after reseeding torch from
(seed, step, rank), so a run is a pure function of its arguments and a checkpoint's state.
"""
import argparse
import contextlib
import copy
import csv
import dataclasses
import math
import os
import random
import resource
import signal
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from matplotlib.figure import Figure
from PIL import Image
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data.distributed import DistributedSampler
from tqdm import tqdm

import data
import ddim
from model import UNet, UNetConfig, count_parameters, load_checkpoint, save_checkpoint

GRID_COLS, GRID_MAX_ROWS = 8, 10  # sample grid: 8 per class, at most 10 classes (+ 2 reconstruction rows)
T = 1000  # diffusion steps, as in the paper


def comma_list(kind):
    return lambda s: tuple(kind(v) for v in s.split(",") if v.strip())


def get_parser():
    """All flags and their defaults; with --resume, the saved run's flags become the defaults."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    a = p.add_argument
    # data: --data takes the same sources as every command line (data.load_dataset)
    a("--data", default="synthetic", help="synthetic (default), synthetic-golgi, class folder, .npz, BBBC021 root")
    a("--kind", default="bbbc021", choices=["bbbc021", "golgi"], help="synthetic generator (%(default)s)")
    a("--compounds", type=comma_list(str), help="keep DMSO + these compounds, e.g. latrunculin_b (default: all)")
    a("--n-per-class", type=int, help="synthetic images per class (default: data.py's)")
    a("--image-size", type=int, help="pixels (default: the preset's)")
    a("--no-augment", action="store_true", help="no random flips / 90-degree rotations")
    # model: a preset, then single-field overrides (e.g. the 1.1M-parameter CPU demo model)
    a("--preset", default="small", choices=["tiny", "small", "paper"], help="UNet size (%(default)s)")
    a("--base-channels", type=int, help="override the preset's channels at full resolution")
    a("--channel-mult", type=comma_list(int), help="override the per-level multipliers, e.g. 1,2,2")
    a("--num-res-blocks", type=int, help="override the encoder blocks per level")
    a("--attn-res", type=comma_list(int), help="override the feature sizes with attention, e.g. 8 ('' = none)")
    a("--dropout", type=float, help="override the preset's dropout")
    a("--schedule", default="linear", choices=ddim.SCHEDULES, help="noise schedule (%(default)s)")
    a("--prediction", default="eps", choices=["eps", "v"],
      help="network output: eps (%(default)s, the paper) or v, which small models need (ddim.eps_from_v)")
    # optimisation
    a("--steps", type=int, default=2000, help="optimizer steps in total (%(default)s)")
    a("--batch-size", type=int, default=32, help="images per process per micro-step (%(default)s)")
    a("--grad-accum", type=int, default=1, help="micro-steps per optimizer step (%(default)s)")
    a("--lr", type=float, help="peak AdamW learning rate (default: 1e-4 for paper, else 1e-3)")
    a("--lr-schedule", default="cosine", choices=["cosine", "constant"], help="after warm-up (cosine: to lr/10)")
    a("--warmup", type=int, default=100, help="linear warm-up steps (%(default)s)")
    a("--weight-decay", type=float, default=0.0, help="AdamW decoupled decay (%(default)s: Adam, as DDPM)")
    a("--grad-clip", type=float, default=1.0, help="max global gradient norm (%(default)s)")
    a("--ema-decay", type=float, default=0.999, help="EMA decay (%(default)s), as min(d, (1+s)/(10+s))")
    a("--p-uncond", type=float, default=0.0, help="label dropout to the null class (%(default)s, as the paper)")
    # system
    a("--device", default="auto", choices=["auto", "cpu", "cuda"], help="(%(default)s: cuda if available)")
    a("--compile", action="store_true", help="torch.compile the training model (helps on GPUs only)")
    a("--seed", type=int, default=0, help="data, initial weights, noise (%(default)s)")
    # output
    a("--out", required=True, help="run folder (must be new or empty unless --resume)")
    a("--resume", action="store_true", help="continue from OUT/last.pt; flags given now override the saved ones")
    a("--ckpt-every", type=int, default=500, help="steps between checkpoints (%(default)s)")
    a("--keep", type=int, default=3, help="ckpt_*.pt files kept besides last.pt (%(default)s)")
    a("--log-every", type=int, default=10, help="steps between log rows (%(default)s)")
    a("--sample-every", type=int, default=500, help="steps between sample grids + PSNR (%(default)s; 0: never)")
    a("--sample-steps", type=int, default=50, help="DDIM steps for grids and reconstructions (%(default)s)")
    return p


def parse_args(argv):
    """Parse argv; with --resume the checkpoint's saved arguments fill in every flag not given now."""
    parser = get_parser()
    args, ckpt = parser.parse_args(argv), None
    out = Path(args.out)
    if args.resume:
        try:
            ckpt = load_checkpoint(out / "last.pt")
        except ValueError as e:
            raise SystemExit(f"--resume: {e}") from None
        parser.set_defaults(**ckpt["args"])
        args = parser.parse_args(argv)
    elif out.exists() and any(out.iterdir()):
        raise SystemExit(f"{out} is not empty: add --resume to continue that run, or choose a new --out")
    for name in ("steps", "batch_size", "grad_accum", "keep", "ckpt_every", "log_every", "sample_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}")
    if args.warmup < 0 or args.sample_every < 0:
        parser.error("--warmup and --sample-every must not be negative")
    if not 0 <= args.ema_decay < 1 or not 0 <= args.p_uncond < 1:
        parser.error("--ema-decay and --p-uncond must lie in [0, 1)")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    return args, ckpt


def rng_state():
    """Global torch / numpy / python generator states as tensors and ints (weights_only-loadable)."""
    _, key, pos, has_gauss, gauss = np.random.get_state()
    version, py_key, py_gauss = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": torch.from_numpy(key.astype(np.int64)),
            "numpy_pos": pos, "numpy_gauss": [has_gauss, gauss], "python": torch.tensor(py_key),
            "python_gauss": py_gauss, "python_version": version}


def set_rng_state(s):
    torch.set_rng_state(s["torch"])
    np.random.set_state(("MT19937", s["numpy"].numpy().astype(np.uint32), s["numpy_pos"], *s["numpy_gauss"]))
    random.setstate((s["python_version"], tuple(s["python"].tolist()), s["python_gauss"]))


def save_grid(x, rows, path):
    """(rows*cols, C, H, W) in [-1, 1] -> PNG; 3 channels as RGB, 1 as grey, 2 as RG, >3: the first 3."""
    x = ((x.detach().float().cpu().clamp(-1, 1) + 1) / 2)
    x = x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x[:, :3]
    x = F.pad(x, (1, 1, 1, 1, 0, 3 - x.shape[1]))  # 1-pixel black border; missing channels are 0
    n, _, h, w = x.shape
    x = x.view(rows, n // rows, 3, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, -1, 3)  # (rows*h, cols*w, 3)
    Image.fromarray((x * 255).round().byte().numpy()).save(path)


def save_loss_curve(rows, path):
    fig = Figure(figsize=(6, 3.5))  # the object API: no pyplot, no global backend state
    ax = fig.subplots()
    ax.plot([r["step"] for r in rows], [r["loss"] for r in rows])
    ax.set(xlabel="step", ylabel="loss (eq. 4)", yscale="log")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv=None):
    """Train (or resume) a run; returns the path of the final checkpoint, on every rank."""
    args, ckpt = parse_args(argv)
    ddp = "RANK" in os.environ  # set by torchrun
    rank, local_rank, world = (int(os.environ.get(k, 0)) for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE"))
    world = world if ddp else 1
    cuda = args.device == "cuda" or (args.device == "auto" and torch.cuda.is_available())
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if ddp:
        dist.init_process_group("nccl" if cuda else "gloo")  # every rank has checked --out above
        dist.barrier()
    try:
        return train(args, ckpt, ddp, rank, local_rank, world, device)
    finally:
        if ddp:
            dist.destroy_process_group()


def train(args, ckpt, ddp, rank, local_rank, world, device):
    master, cuda, out = rank == 0, device.type == "cuda", Path(args.out)
    if cuda:  # GPU speed defaults; on the CPU bf16 autocast is 3x slower, so it stays fp32 there
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolution once
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    fmt = torch.channels_last if cuda else torch.contiguous_format

    # ---- data: the whole dataset sits in memory as a (N, C, H, W) tensor in [-1, 1]
    size = args.image_size or UNetConfig.preset(args.preset).image_size
    opts = {k: v for k, v in dict(n_per_class=args.n_per_class, compounds=args.compounds).items() if v is not None}
    try:
        ds = data.load_dataset(args.data, image_size=size, kind=args.kind, seed=args.seed, **opts)
    except ValueError as e:  # a user mistake (missing folder, unknown compound): one line, no traceback
        raise SystemExit(f"--data: {e}") from None
    C, H, W = ds.images.shape[1:]
    sampler = DistributedSampler(ds, num_replicas=world, rank=rank, shuffle=True, seed=args.seed, drop_last=True)
    per_epoch = len(sampler) // args.batch_size  # micro-batches per epoch on this rank
    if per_epoch == 0:
        raise SystemExit(f"{len(ds)} images do not fill one batch of {args.batch_size} x {world} processes: "
                         f"lower --batch-size")
    epoch_order = {}

    def get_batch(m):
        """The m-th micro-batch of this rank: a function of (seed, m) alone, so resume needs no loader state."""
        epoch, j = divmod(m, per_epoch)
        if epoch not in epoch_order:
            sampler.set_epoch(epoch)
            epoch_order.clear()
            epoch_order[epoch] = torch.tensor(list(sampler))
        idx = epoch_order[epoch][j * args.batch_size:(j + 1) * args.batch_size]
        x, y = ds.images[idx].to(device), ds.labels[idx].to(device)
        if not args.no_augment:
            x = data.augment(x)
        if args.p_uncond > 0:  # classifier-free guidance: some labels become the null class
            y = torch.where(torch.rand(y.shape, device=device) < args.p_uncond, raw.null_label, y)
        return x.contiguous(memory_format=fmt), y

    # ---- model, EMA, optimizer
    overrides = dict(base_channels=args.base_channels, channel_mult=args.channel_mult, dropout=args.dropout,
                     num_res_blocks=args.num_res_blocks, attn_resolutions=args.attn_res, prediction=args.prediction)
    try:
        config = UNetConfig.preset(args.preset, image_size=size, in_channels=C, num_classes=len(ds.classes),
                                   **{k: v for k, v in overrides.items() if v is not None})
    except ValueError as e:
        raise SystemExit(f"model: {e}") from None
    torch.manual_seed(args.seed)  # same initial weights on every rank (DDP broadcasts rank 0's anyway)
    raw = UNet(config).to(device, memory_format=fmt)
    ema = copy.deepcopy(raw).requires_grad_(False).eval()  # sampling, grids and translation use these
    lr_peak = args.lr or (1e-4 if args.preset == "paper" else 1e-3)
    optimizer = torch.optim.AdamW(raw.parameters(), lr=lr_peak, weight_decay=args.weight_decay, fused=cuda or None)
    step = 0
    if ckpt is not None:
        raw.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        optimizer.load_state_dict(ckpt["optimizer"])
        set_rng_state(ckpt["rng"])  # torch is reseeded per step anyway; numpy/python for completeness
        step = ckpt["step"]
    model = torch.compile(raw) if args.compile else raw
    if ddp:
        model = DDP(model, device_ids=[local_rank] if cuda else None)
    alpha = ddim.make_schedule(args.schedule, T).to(device)

    def lr_at(s):
        """Linear warm-up from lr/warmup to lr, then cosine down to lr/10 at --steps (or constant)."""
        if s < args.warmup:
            return lr_peak * (s + 1) / args.warmup
        if args.lr_schedule == "constant":
            return lr_peak
        progress = (s - args.warmup) / max(1, args.steps - args.warmup)
        return lr_peak * (0.1 + 0.45 * (1 + math.cos(math.pi * min(1.0, progress))))

    # ---- fixed evaluation inputs (rank 0): the same noise and images at every --sample-every
    K = len(ds.classes)
    grid_classes = torch.linspace(0, K - 1, min(K, GRID_MAX_ROWS)).round().long()
    grid_y = grid_classes.repeat_interleave(GRID_COLS).to(device)
    grid_noise = torch.randn(len(grid_y), C, H, W, generator=torch.Generator().manual_seed(args.seed)).to(device)
    recon_idx = torch.linspace(0, len(ds) - 1, GRID_COLS).long()  # spread over the classes

    def evaluate():
        """EMA model: invert + regenerate fixed training images under their class (PSNR), and samples.

        Grid rows: the training images, their reconstructions, then one row per class from fixed noise.
        """
        x0, y0 = ds.images[recon_idx].to(device), ds.labels[recon_idx].to(device)
        x_rec = ddim.sample(ema, ddim.invert(ema, x0, y0, alpha, args.sample_steps), y0, alpha, args.sample_steps)
        samples = ddim.sample(ema, grid_noise, grid_y, alpha, args.sample_steps, clip=True)  # from noise: clip x_0
        save_grid(torch.cat([x0, x_rec, samples]), len(grid_classes) + 2, out / f"samples_{step:07d}.png")
        mse = ((x_rec.float().clamp(-1, 1) - x0) / 2).pow(2).mean().item()  # in [0, 1] units, as displayed
        return 10 * math.log10(1 / max(mse, 1e-12))

    # ---- checkpoints: ckpt_XXXXXXX.pt (the last --keep) and last.pt, a hard link to the newest
    last_path = out / "last.pt"

    def save():
        path = out / f"ckpt_{step:07d}.pt"
        save_checkpoint({
            "version": 1, "config": dataclasses.asdict(config), "classes": list(ds.classes),
            "channels": list(ds.channels), "schedule": {"name": args.schedule, "T": T},
            "normalization": {k: [float(v) for v in ds.normalization[k]] for k in ("low", "high")},
            "model": raw.state_dict(), "ema": ema.state_dict(), "optimizer": optimizer.state_dict(),
            "step": step, "rng": rng_state(), "args": vars(args)}, path)
        tmp = out / ".last.pt.tmp"
        tmp.unlink(missing_ok=True)
        os.link(path, tmp)
        os.replace(tmp, last_path)  # atomic: last.pt is always a complete checkpoint
        for old in sorted(out.glob("ckpt_*.pt"))[:-args.keep]:
            old.unlink()

    # ---- logging (rank 0): CSV, loss curve, tqdm; a resumed run drops the rows past its checkpoint
    log_rows, log_path = [], out / "log.csv"
    fields = ["step", "loss", "lr", "images_per_s", "recon_psnr"]
    if master:
        out.mkdir(parents=True, exist_ok=True)
        if ckpt is not None and log_path.exists():
            with open(log_path) as f:
                rows = [{k: float(v) if v else None for k, v in r.items()} for r in csv.DictReader(f)]
            log_rows = [{**r, "step": int(r["step"])} for r in rows if r["step"] <= step]
        with open(log_path, "w", newline="") as f:
            writer = csv.DictWriter(f, fields)
            writer.writeheader()
            writer.writerows(log_rows)
        global_batch = args.batch_size * world * args.grad_accum
        print(f"data {args.data}: {len(ds)} images, {K} classes, {C}x{H}x{W} | UNet {args.preset}: "
              f"{count_parameters(raw) / 1e6:.2f}M parameters, {config.prediction}-prediction | "
              f"{device}, {'bf16' if cuda else 'fp32'}")
        print(f"global batch {global_batch} = {args.batch_size} per process x {world} processes x "
              f"{args.grad_accum} accumulation | at step {step} of {args.steps}")

    # ---- the training loop
    stop = {"signal": 0}

    def on_signal(signum, frame):  # finish the step, checkpoint, exit; a second signal acts as usual
        stop["signal"] = signum
        signal.signal(signum, previous[signum])

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=args.steps, initial=step, disable=not master, dynamic_ncols=True)
    losses, interval_time, train_time, timed_steps, run_steps = [], 0.0, 0.0, 0, 0
    try:
        while step < args.steps:
            t0 = time.perf_counter()
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            # all randomness of this step; a tuple of ints hashes the same in every run (unlike str)
            torch.manual_seed(hash((args.seed, step, rank)) % 2**63)
            loss_sum = torch.zeros((), device=device)
            try:
                for micro in range(args.grad_accum):
                    x, y = get_batch(step * args.grad_accum + micro)
                    if ddp:  # all-reduce gradients on the last micro-step only
                        model.require_backward_grad_sync = micro == args.grad_accum - 1
                    with autocast:
                        loss = ddim.loss(model, x, y, alpha) / args.grad_accum  # eq. 4
                    loss.backward()
                    loss_sum += loss.detach()
            except torch.OutOfMemoryError:
                raise SystemExit(f"out of GPU memory at --batch-size {args.batch_size}: lower --batch-size "
                                 f"and raise --grad-accum to keep the global batch") from None
            norm = torch.nn.utils.clip_grad_norm_(raw.parameters(), args.grad_clip)
            stats = torch.stack([loss_sum, norm.float(), torch.tensor(float(stop["signal"]), device=device)])
            if ddp:  # mean loss for the log, and every rank learns of a NaN or a signal on any rank
                dist.all_reduce(stats)
            loss_val, norm_val, stopping = stats.tolist()
            loss_val /= world
            if not (math.isfinite(loss_val) and math.isfinite(norm_val)):
                raise SystemExit(f"non-finite loss ({loss_val}) or gradient norm ({norm_val}) at step {step + 1}: "
                                 f"stopped without saving; last good checkpoint: "
                                 f"{last_path if last_path.exists() else 'none yet'}. Try a lower --lr.")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            decay = min(args.ema_decay, (1 + step) / (10 + step))  # warm-up: short runs forget the init
            with torch.no_grad():
                torch._foreach_lerp_(list(ema.parameters()), list(raw.parameters()), 1 - decay)
            step += 1
            dt = time.perf_counter() - t0
            losses.append(loss_val)
            interval_time += dt
            run_steps += 1
            if run_steps > 1:  # the first step of a process pays one-time costs
                train_time, timed_steps = train_time + dt, timed_steps + 1
            bar.update(1)

            # ---- rank 0: evaluation, log row, loss curve; everyone: checkpoint + barrier
            final = step == args.steps or stopping
            psnr = None  # a signal skips the evaluation: checkpoint first, within the grace period
            if master and args.sample_every and not stopping and (step % args.sample_every == 0 or final):
                psnr = evaluate()
                tqdm.write(f"step {step}: reconstruction PSNR {psnr:.2f} dB (EMA, {args.sample_steps} DDIM steps)")
            if master and (step % args.log_every == 0 or final or psnr is not None):
                ips = len(losses) * args.batch_size * world * args.grad_accum / interval_time
                row = dict(step=step, loss=sum(losses) / len(losses), lr=lr_at(step - 1), images_per_s=ips,
                           recon_psnr=psnr)
                log_rows.append(row)
                with open(log_path, "a", newline="") as f:
                    csv.DictWriter(f, fields).writerow({k: f"{v:.6g}" if isinstance(v, float) else v
                                                        for k, v in row.items()})
                bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.1f}")
                losses, interval_time = [], 0.0
                if psnr is not None or final:
                    save_loss_curve(log_rows, out / "loss.png")
            if step % args.ckpt_every == 0 or final:
                if master:
                    save()
                if ddp:
                    dist.barrier()
            if stopping:
                signum = stop["signal"] or signal.SIGTERM  # another rank's signal: exit as if terminated
                if master:
                    bar.close()
                    print(f"{signal.Signals(signum).name}: checkpoint at step {step} saved to {last_path}; "
                          f"continue with --resume")
                raise SystemExit(128 + signum)
    finally:
        bar.close()
        for s, handler in previous.items():
            if signal.getsignal(s) is on_signal:
                signal.signal(s, handler)
    if master:
        peak = (torch.cuda.max_memory_allocated(device) if cuda
                else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 2**20
        ips = timed_steps * args.batch_size * world * args.grad_accum / train_time if train_time else float("nan")
        print(f"done: step {step}, {ips:.1f} images/s (all processes, after the first step), peak memory "
              f"{peak:.0f} MiB ({'GPU, allocated' if cuda else 'CPU, max RSS'}); checkpoint {last_path}")
    return str(last_path)


if __name__ == "__main__":
    main()
