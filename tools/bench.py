"""This project's UNet (model.py) beside diffusers' UNet2DModel at the same configuration, on this
machine: a training step (eq. 4, backward, clipped AdamW, EMA: PhenDiff's step) and the DDIM
translation loop (inversion under one class, then sampling under another: phendiff.translate), in
fp32 and bf16 autocast, contiguous and channels_last, on one and two threads.

    python tools/bench.py              # small preset training, demo-model translation (~10 min)
    python tools/bench.py --threads 1 --rounds 5
    python tools/bench.py --profile --threads 1   # where ours spends the time, by operator
    python tools/bench.py --against f7055b3 --impl ours   # this model.py against an older one
    python -m pip install diffusers    # for the comparison; never a dependency of the project

Every configuration runs once to warm up, then in interleaved rounds (its networks back to back,
their order alternating), so a machine shared with other jobs slows both alike: the table gives
medians of images/s and of the per-round ratios. Without diffusers it times this UNet alone;
--against REV adds the UNet of model.py at git revision REV, or of the model.py file REV (the rest
of the code as it is now).
tools/gpu_bench.py uses the same pieces on a GPU.
"""
import argparse
import copy
import functools
import math
import os
import platform
import statistics
import subprocess
import sys
import types
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the repository: ddim.py, model.py
import ddim  # noqa: E402
import method as M  # noqa: E402
from model import UNet, count_parameters  # noqa: E402

INSTALL = "python -m pip install diffusers   (CPU torch stays as it is; check with --dry-run)"


def config_of(preset, image_size=None):
    """PhenDiff's preset (tiny | cpu | small | paper) as a UNetConfig with the demo's 25 classes."""
    size = {"image_size": image_size} if image_size else {}
    return M.method_class("phendiff").Config.preset(preset, num_classes=25, **size)


def diffusers_available():
    try:
        import diffusers  # noqa: F401
    except ImportError:
        return False
    return True


class DiffusersEps(torch.nn.Module):
    """diffusers' UNet2DModel at `config`'s configuration, as an eps-model (x_t, t, y) -> eps (or
    v). The same levels, channels, ResNet blocks (n down, n + 1 up), attention levels and head
    width, class embedding added to the time embedding, scale-shift conditioning, strided-conv
    down- and nearest + conv upsampling. Differences: one GroupNorm group count for all layers
    (ours: gcd(32, channels) per layer, the same for every preset but tiny), separate q, k, v
    projections (ours: one fused qkv), no zero initialisation."""

    def __init__(self, config):
        super().__init__()
        from diffusers import UNet2DModel  # only here: never a dependency of the project
        c = config
        sizes = [c.image_size // 2 ** i for i in range(len(c.channel_mult))]
        attn = [s in c.attn_resolutions for s in sizes]
        self.net = UNet2DModel(
            sample_size=c.image_size, in_channels=c.in_channels, out_channels=c.in_channels,
            block_out_channels=tuple(c.base_channels * m for m in c.channel_mult),
            layers_per_block=c.num_res_blocks, attention_head_dim=c.head_channels,
            down_block_types=tuple("AttnDownBlock2D" if a else "DownBlock2D" for a in attn),
            up_block_types=tuple("AttnUpBlock2D" if a else "UpBlock2D" for a in attn[::-1]),
            norm_num_groups=math.gcd(32, c.base_channels), resnet_time_scale_shift="scale_shift",
            num_class_embeds=c.num_classes + 1, dropout=c.dropout)
        self.prediction, self.null_label = c.prediction, c.num_classes  # as model.UNet's

    def forward(self, x, t, y):
        return self.net(x, t, class_labels=y, return_dict=False)[0]


@functools.cache  # once per run, not once per configuration
def unet_at(source):
    """The UNet class of model.py at git revision `source`, or of the model.py file at that path,
    loaded as a module of its own."""
    if Path(source).is_file():
        text = Path(source).read_text()
    else:
        shown = subprocess.run(["git", "show", f"{source}:model.py"], cwd=ROOT,
                               capture_output=True, text=True)
        if shown.returncode:
            raise ValueError(f"--against {source}: no such file, and git cannot show model.py "
                             f"there ({shown.stderr.strip()}); give a revision or a file")
        text = shown.stdout
    module = types.ModuleType(f"model@{source}")
    exec(compile(text, f"model.py@{source}", "exec"), module.__dict__)
    return module.UNet


def build(impl, config, layout, device="cpu"):
    """A fresh network: impl "ours" (model.UNet), "ours@REV" (model.py at git revision or file
    REV) or "diffusers", in memory layout `layout`."""
    torch.manual_seed(0)
    if impl == "diffusers":
        net = DiffusersEps(config)
    elif "@" in impl:
        net = unet_at(impl.split("@", 1)[1])(config)
    else:
        net = UNet(config)
    return net.to(device, memory_format=LAYOUTS[layout])


LAYOUTS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}


def images(config, n, layout, device="cpu", seed=0):
    """n random images in [-1, 1] and labels of the configuration, in memory layout `layout`."""
    g = torch.Generator().manual_seed(seed)
    s = config.image_size
    x = (torch.rand(n, config.in_channels, s, s, generator=g) * 2 - 1).to(device)
    y = torch.randint(0, config.num_classes, (n,), generator=g).to(device)
    return x.contiguous(memory_format=LAYOUTS[layout]), y


def training_step(net, x, y, precision, compile=False):
    """A callable that runs PhenDiff's training step on (x, y) once, as train.py does (the whole
    step under the precision's autocast): eq. 4, backward, gradient clip 1, AdamW (fused), EMA.
    compile: the forward through torch.compile (its first call compiles)."""
    alpha = ddim.make_schedule("linear")
    fused = x.is_cuda or torch.__version__ >= "2.4"  # as PhenDiff's optimizer
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4, fused=fused or None)
    ema = copy.deepcopy(net).requires_grad_(False)
    forward = torch.compile(net) if compile else net

    def step():
        with precision.autocast():
            ddim.loss(forward, x, y, alpha).backward()  # eq. 4
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            M.update_ema(ema, net, 0.999)
    return step


def translation(net, x, targets, precision, ddim_steps, max_batch=256):
    """A callable that translates x from class 0 to every target as phendiff.translate_many does:
    one DDIM inversion under the source (eq. 6), then sampling under each target (eq. 5), whole
    targets up to max_batch images per forward; the network in `precision`, the DDIM arithmetic in
    float32. Returns (len(targets) * B, C, H, W)."""
    alpha, eps_model = ddim.make_schedule("linear"), precision.wrap(net.eval())
    labels = torch.tensor(targets, device=x.device).repeat_interleave(len(x))
    chunk = max(len(x), max_batch // len(x) * len(x))  # whole targets per forward

    def run():
        latents = ddim.invert(eps_model, x, 0, alpha, ddim_steps).repeat(len(targets), 1, 1, 1)
        return torch.cat([ddim.sample(eps_model, z, y, alpha, ddim_steps)
                          for z, y in zip(latents.split(chunk), labels.split(chunk))])
    return run

# -----------------------------------------------------------------------------
# interleaved rounds


def cases(args, impls):
    """{(task, threads, layout, precision, impl): (callable, images per call)}: every
    configuration, each with networks and optimizer of its own."""
    found = {}
    for task, preset, n in (("train", args.preset, args.batch),
                            ("translate", args.translate_preset, args.images)):
        config = config_of(preset)
        for layout in args.layouts:
            x, y = images(config, n, layout)
            for precision in args.precisions:
                p = M.Precision(precision, "cpu", ("bf16", "fp32"), "the bench")
                for impl in impls:
                    net = build(impl, config, layout)
                    run = (training_step(net, x, y, p) if task == "train" else
                           translation(net, x, [1], p, args.ddim_steps))
                    for threads in args.threads:
                        found[task, threads, layout, precision, impl] = (run, n)
    return found


def measure(found, rounds):
    """{case: [seconds of each round]}: a warm-up call each, then `rounds` rounds over all cases,
    the networks of one configuration back to back in an order that alternates by round."""
    times, threads = {k: [] for k in found}, torch.get_num_threads()
    names = sorted({k[4] for k in found})
    for r in range(-1, rounds):  # round -1: the warm-up, not kept
        for key in sorted(found, key=lambda k: (k[:4], (-1) ** r * names.index(k[4]))):
            run, _ = found[key]
            torch.set_num_threads(key[1])
            start = time.perf_counter()
            run()
            if r >= 0:
                times[key].append(time.perf_counter() - start)
    torch.set_num_threads(threads)
    return times


def ratio(times, a, b):
    """Speed of case a over case b (time b / time a) in each round: (median, lowest, highest)."""
    per_round = [tb / ta for ta, tb in zip(times[a], times[b])]
    return statistics.median(per_round), min(per_round), max(per_round)


def machine():
    """Processor, bf16 instructions, cores, torch (and diffusers) versions, load."""
    name = platform.processor() or platform.machine()
    try:
        text = Path("/proc/cpuinfo").read_text()
        name = next(line.split(":", 1)[1].strip() for line in text.splitlines()
                    if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    flags = "+".join(M.cpu_bf16_flags()) or "no bf16 instructions"
    versions = f"torch {torch.__version__}"
    if diffusers_available():
        import diffusers
        versions += f", diffusers {diffusers.__version__}"
    return (f"{name} ({flags}), {os.cpu_count()} cores, {torch.backends.cpu.get_cpu_capability()}"
            f"; {versions}")


def report(args, found, times, impls):
    """The table (a row per configuration, ours against each other network) and the ratios the
    docs quote: medians over the rounds, the lowest and highest round's ratio in brackets."""
    others = impls[1:]
    head = "| task | threads | layout | precision | ours img/s |" + "".join(
        f" {o} img/s | ours / {o} |" for o in others)
    print(head + "\n" + "|---" * (head.count("|") - 1) + "|")
    speed = {k: statistics.median(n / t for t in times[k]) for k, (_, n) in found.items()}
    for key in sorted({k[:4] for k in found}):
        print(f"| {' | '.join(map(str, key))} | {speed[(*key, 'ours')]:.1f} |" + "".join(
            " {:.1f} | {:.2f}x ({:.2f}-{:.2f}) |".format(
                speed[(*key, o)], *ratio(times, (*key, "ours"), (*key, o))) for o in others))
    if "bf16" not in args.precisions or "fp32" not in args.precisions:
        return
    print(f"\nours bf16 against each: median of {args.rounds} rounds (lowest-highest round)")
    against = [("ours", "fp32")] + [(o, p) for o in others for p in ("fp32", "bf16")]
    for task in ("train", "translate"):
        for threads in args.threads:
            for layout in args.layouts:
                k = (task, threads, layout)
                print(f"{task} {threads} thread(s) {layout}: " + ", ".join(
                    "ours bf16 / {} {} {:.2f}x ({:.2f}-{:.2f})".format(
                        o, p, *ratio(times, (*k, "bf16", "ours"), (*k, p, o)))
                    for o, p in against))


# convolutions, and the other dense kernels (matrix products, attention), by profiler name
CONVOLUTION = ("aten::mkldnn_convolution", "aten::convolution_backward", "aten::_convolution",
               "aten::convolution", "aten::conv2d", "aten::_slow_conv2d_forward",
               "aten::_slow_conv2d_backward")
DENSE = ("aten::mm", "aten::addmm", "aten::bmm",
         "aten::_scaled_dot_product_flash_attention_for_cpu",
         "aten::_scaled_dot_product_flash_attention_for_cpu_backward")


def profile(args):
    """Where the time of ours goes (torch.profiler, self time by operator, two calls each): the
    share of convolutions, of all dense kernels, and the largest other operators."""
    from torch.profiler import ProfilerActivity
    torch.set_num_threads(args.threads[0])
    found = cases(args, ["ours"])
    for key in sorted(k for k in found if k[1] == args.threads[0]):
        run, _ = found[key]
        run()  # warm-up
        with torch.profiler.profile(activities=[ProfilerActivity.CPU]) as prof:
            run(), run()
        ops = sorted(prof.key_averages(), key=lambda e: -e.self_cpu_time_total)
        total = sum(e.self_cpu_time_total for e in ops)
        conv = sum(e.self_cpu_time_total for e in ops if e.key in CONVOLUTION) / total
        dense = conv + sum(e.self_cpu_time_total for e in ops if e.key in DENSE) / total
        rest = ", ".join(f"{e.key.removeprefix('aten::')} {e.self_cpu_time_total / total:.1%}"
                         for e in ops if e.key not in CONVOLUTION + DENSE)
        print(f"{' '.join(map(str, key[:4]))}: {total / 2e6:.3f} s per call; convolutions "
              f"{conv:.1%}, + matrix products and attention {dense:.1%}; the rest "
              f"{1 - dense:.1%}: {rest[:300]}")


def run(args):
    if args.profile:
        return profile(args)
    impls = (["ours"] + [f"ours@{args.against}"] * bool(args.against)
             + (["diffusers"] if "diffusers" in args.impl and diffusers_available() else []))
    if "diffusers" in args.impl and "diffusers" not in impls:
        print(f"diffusers is not installed: timing this UNet alone. For the comparison: {INSTALL}")
    print(f"machine: {machine()}")
    for task, preset in (("train", args.preset), ("translate", args.translate_preset)):
        config = config_of(preset)
        sizes = ", ".join(f"{impl} {count_parameters(build(impl, config, 'contiguous')):,}"
                          for impl in impls)
        what = (f"batch {args.batch}" if task == "train" else
                f"{args.images} images, {args.ddim_steps} DDIM steps each way")
        print(f"{task}: preset {preset}, {config.image_size}x{config.image_size}, channels "
              f"{[config.base_channels * m for m in config.channel_mult]}, attention at "
              f"{config.attn_resolutions}, {what}; parameters: {sizes}")
    found = cases(args, impls)
    load = os.getloadavg()
    start = time.perf_counter()
    times = measure(found, args.rounds)
    print(f"{args.rounds} interleaved rounds after a warm-up, {time.perf_counter() - start:.0f} s; "
          f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after "
          f"({os.cpu_count()} cores; other jobs slow every case alike within a round)\n")
    report(args, found, times, impls)


def count(text):
    """A positive integer flag."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return int(text)


def get_parser():
    p = argparse.ArgumentParser(prog="tools/bench.py", description=__doc__.split("\n\n")[0])
    a = p.add_argument
    a("--preset", default="small", help="training: PhenDiff preset (%(default)s)")
    a("--batch", type=count, default=16, help="training batch (%(default)s)")
    a("--translate-preset", default="cpu", help="translation: preset (%(default)s: the demo's)")
    a("--images", type=count, default=16, help="images translated per call (%(default)s)")
    a("--ddim-steps", type=count, default=10, help="DDIM steps each way (%(default)s)")
    a("--rounds", type=count, default=3, help="interleaved rounds (%(default)s)")
    a("--threads", type=count, nargs="+", default=[1, 2], help="torch threads (%(default)s)")
    a("--layouts", nargs="+", default=list(LAYOUTS), choices=list(LAYOUTS))
    a("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    a("--impl", nargs="+", default=["ours", "diffusers"], choices=["ours", "diffusers"],
      help="networks to time (diffusers when installed)")
    a("--profile", action="store_true", help="ours on the first --threads: where the time goes")
    a("--against", metavar="REV", help="also time the UNet of model.py at this git revision, or "
      "of this model.py file")
    return p


def main(argv=None):
    p = get_parser()
    args = p.parse_args(argv)
    try:
        run(args)
    except ValueError as e:
        p.exit(2, f"{p.prog}: error: {e}\n")


if __name__ == "__main__":
    main()
