"""The GPU numbers in one command: the paper preset's training throughput (bf16 autocast, TF32,
channels_last, fused AdamW; eager and torch.compile), its model FLOP utilisation and peak memory,
and the time to translate 64 images to the 8 doses of a compound with 100 DDIM steps each way,
extrapolated to the paper's 1,000 images; diffusers' UNet2DModel at the same configuration beside
it when installed (tools/bench.py builds both; compiled: ours only). Sized by its FLOPs to finish
within 8 minutes on an H100 (no GPU has run it yet: an estimate).

    python tools/gpu_bench.py                        # paper preset, batch 32, on the GPU
    python tools/gpu_bench.py --no-compile --no-diffusers
    python tools/gpu_bench.py --preset tiny --batch 2 --steps 2 --images 2 --doses 2 \\
        --ddim-steps 2 --no-compile                  # seconds on a CPU (the test suite)

It ends with one summary block to paste into docs/training.md. FLOPs are counted by
torch.utils.flop_counter (forward + backward of the UNet; 2 per multiply-add); the peak is the
GPU's dense bf16 rate from the table below.
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository
import method as M  # noqa: E402
from model import UNet, count_parameters  # noqa: E402
from tools import bench  # noqa: E402

# dense bf16 tensor-core peak (FLOP/s, no sparsity) by a name torch.cuda.get_device_name contains
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
             "A10": 125e12, "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12}


def peak_flops(device):
    """The table's peak for this GPU, or None (a CPU, or a GPU not in the table)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def train_flops(config, batch):
    """FLOPs of one forward + backward of the UNet at this batch, counted on the meta device (shapes
    only, no memory)."""
    with torch.device("meta"):
        net = UNet(config)
        x, _ = bench.images(config, 1, "contiguous", "meta")
        x = x.expand(batch, *x.shape[1:])
        t = y = torch.zeros(batch, dtype=torch.long)
    with FlopCounterMode(display=False) as counter:
        net(x, t, y).float().square().mean().backward()
    return counter.get_total_flops()


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, calls):
    """Seconds per call of fn over `calls` calls, and the peak memory (GPU: allocated, MiB)."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return (time.perf_counter() - start) / calls, peak


def train_row(impl, config, args, device, precision, compile):
    """(images/s, seconds of the first call (compiling), peak MiB) of the training step."""
    net = bench.build(impl, config, "channels_last", device)
    x, y = bench.images(config, args.batch, "channels_last", device)
    step = bench.training_step(net, x, y, precision, compile=compile)
    first, _ = timed(step, device, 1)  # kernels picked (cuDNN benchmark), graphs compiled
    timed(step, device, 1)
    per_step, peak = timed(step, device, args.steps)
    return args.batch / per_step, first, peak


def translate_row(impl, config, args, device, precision):
    """(seconds to translate --images images to --doses targets, peak MiB)."""
    net = bench.build(impl, config, "channels_last", device).requires_grad_(False)
    x, _ = bench.images(config, args.images, "channels_last", device)
    targets = list(range(1, args.doses + 1))
    timed(bench.translation(net, x, targets, precision, 1), device, 1)  # one step: the kernels
    return timed(bench.translation(net, x, targets, precision, args.ddim_steps), device, 1)


def run(args):
    device = torch.device(args.device)
    if device.type == "cuda":  # the GPU speed defaults of train.py
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    config = bench.config_of(args.preset)
    precision = M.Precision("bf16", device, ("bf16", "fp32"), "the bench")
    impls = ["ours"] + (["diffusers"] if args.diffusers and bench.diffusers_available() else [])
    if args.diffusers and len(impls) == 1:
        print(f"diffusers is not installed: this UNet alone. For the comparison: {bench.INSTALL}")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else bench.machine()
    peak = peak_flops(device)
    flops = train_flops(config, args.batch)
    versions = f"; torch {torch.__version__}" if device.type == "cuda" else ""
    lines = [f"device: {name} ({device}){versions}; {precision}, TF32, "
             f"channels_last, fused AdamW; peak bf16 "
             + (f"{peak / 1e12:.0f} TFLOP/s (table)" if peak else "unknown: no MFU"),
             f"preset {args.preset}: {config.image_size}x{config.image_size}, "
             f"{count_parameters(UNet(config)) / 1e6:.1f}M parameters; training batch "
             f"{args.batch}, {flops / args.batch / 1e9:.1f} GFLOP per image (forward + backward)"]
    for impl in impls:  # compiled: ours only (each compilation takes minutes)
        for compile in (False, True) if args.compile and impl == "ours" else (False,):
            ips, first, mem = train_row(impl, config, args, device, precision, compile)
            mfu = f", MFU {ips * flops / args.batch / peak:.1%}" if peak else ""
            memory = f", peak {mem:.0f} MiB" if mem is not None else ""
            lines.append(f"train {impl}{' compiled' * compile}: {ips:.1f} images/s{mfu}{memory} "
                         f"(first step {first:.1f} s)")
    for impl in impls:
        seconds, mem = translate_row(impl, config, args, device, precision)
        total = seconds * 1000 / args.images
        memory = f", peak {mem:.0f} MiB" if mem is not None else ""
        lines.append(f"translate {impl}: {args.images} images x {args.doses} doses, "
                     f"{args.ddim_steps} DDIM steps each way: {seconds:.1f} s{memory}; 1,000 "
                     f"images: ~{total / 60:.1f} min")
    print("\n".join(["", "```", *lines, "```"]))


def get_parser():
    p = argparse.ArgumentParser(prog="tools/gpu_bench.py", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--preset", default="paper", help="PhenDiff preset (%(default)s)")
    a("--batch", type=bench.count, default=32, help="training batch (%(default)s)")
    a("--steps", type=bench.count, default=20, help="timed training steps (%(default)s)")
    a("--images", type=bench.count, default=64, help="images translated (%(default)s)")
    a("--doses", type=bench.count, default=8, help="target classes (%(default)s)")
    a("--ddim-steps", type=bench.count, default=100, help="DDIM steps each way (%(default)s)")
    a("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a("--no-compile", dest="compile", action="store_false", help="skip torch.compile")
    a("--no-diffusers", dest="diffusers", action="store_false", help="this UNet alone")
    return p


def main(argv=None):
    p = get_parser()
    args = p.parse_args(argv)
    if args.doses >= 25:
        p.error(f"--doses {args.doses}: the benchmark's model has 25 classes; at most 24 targets")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: no GPU is visible; --device cpu checks the script")
    if not args.device.startswith("cuda"):
        print("no GPU: CPU numbers, for checking the script (not for the docs)")
    try:
        run(args)
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
