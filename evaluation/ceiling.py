"""The counterfactual's ceiling: a plain regressor trained on *paired* synthetic fields.

The synthetic benchmark renders each field under every dose, so a translation can be scored
against the truth (the same field at the target dose). Doing nothing is the floor. This is the
ceiling: a conditional UNet of this project (model.UNet at the demo's size, t fixed, y = the target
class, output = input + correction, zero-initialised, so it starts at the floor) trained by MSE on
pairs (a DMSO field, the same field under the target class). It sees the answers, so it is a
reference, never a translator: no real data has such pairs. Which cells vanish at a high dose is not
in the input, so nothing goes far past it. A regressor outputs the conditional mean, which is what
minimises squared error; a translator that draws a plausible sample instead pays up to twice the
unexplained variance (about 3 dB of PSNR) even when perfect, which is why reports give the distance
of cell features to the truth beside PSNR.

    python eval.py ceiling --out runs/ceiling     # the cpu setting: ~20 min on 2 CPU cores
"""
import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from tqdm import tqdm

import data
import files
import method as M
from evaluation import report
from evaluation.scores import reconstruction_error
from model import UNet, UNetConfig

T_FIXED = 0  # the UNet's timestep input, unused by a regressor: one constant level


@dataclass
class CeilingConfig:
    """How the ceiling is trained: paired fields of the synthetic benchmark (seed apart from every
    evaluation set), the demo's UNet, Adam with a cosine decay, an EMA of the weights."""
    kind: str = "bbbc021"
    compounds: tuple = ("latrunculin_b",)
    image_size: int = 32
    n_per_class: int = 2000  # training fields, each rendered under every class
    seed: int = 101
    steps: int = 3000
    batch_size: int = 32
    lr: float = 1e-3
    ema_decay: float = 0.999
    base_channels: int = 32  # with the tiny preset: the demo's 1.19M-parameter UNet


def build(config, num_classes):
    unet = UNetConfig.preset("tiny", image_size=config.image_size, in_channels=3,
                             num_classes=num_classes, base_channels=config.base_channels)
    return UNet(unet)


def correct(net, x, y):
    """The regressor's answer for x under class y: x + net(x, t fixed, y)."""
    t = torch.full((len(x),), T_FIXED, dtype=torch.long, device=x.device)
    return x + net(x, t, torch.as_tensor(y, device=x.device).expand(len(x)))


def train(config, device="cpu", progress=True):
    """(EMA net, classes, training log): MSE of x + net(x, y) against the same field under y, for
    random fields and targets (DMSO among them, whose answer is the input)."""
    compounds = list(config.compounds) or None
    truth = data.synthetic_truth(config.kind, config.n_per_class, config.image_size, config.seed,
                                 compounds)  # (classes, N, C, H, W)
    classes = data.synthetic_classes(config.kind, compounds)[0]
    assert len(classes) == len(truth), (classes, truth.shape)
    torch.manual_seed(config.seed)
    net = build(config, len(classes)).to(device)
    ema = build(config, len(classes)).to(device).requires_grad_(False)
    ema.load_state_dict(net.state_dict())
    opt = torch.optim.Adam(net.parameters(), lr=config.lr)
    g, log = torch.Generator().manual_seed(config.seed), []
    K, N = truth.shape[:2]
    for step in tqdm(range(config.steps), desc="ceiling", disable=not progress):
        i = torch.randint(N, (config.batch_size,), generator=g)
        k = torch.randint(K, (config.batch_size,), generator=g)
        x, target = truth[0, i].to(device), truth[k, i].to(device)
        M.set_lr(opt, config.lr * (0.1 + 0.45 * (1 + math.cos(math.pi * step / config.steps))))
        loss = (correct(net, x, k.to(device)) - target).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        M.update_ema(ema, net, M.ema_decay(step, config.ema_decay))
        log.append(float(loss.detach()))
    return ema.eval(), classes, log


def save(path, net, classes, config):
    M.save_checkpoint({"kind": "ceiling", "config": dataclasses.asdict(config),
                       "classes": classes, "weights": net.state_dict()}, path)


def load(path, device="cpu"):
    """(net, classes, config) of a checkpoint written by save."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, RuntimeError) as e:
        raise ValueError(f"ceiling checkpoint {path}: cannot be read ({type(e).__name__})") from e
    if not isinstance(ckpt, dict) or ckpt.get("kind") != "ceiling":
        raise ValueError(f"{path} is not a ceiling checkpoint (eval.py ceiling writes them)")
    config = CeilingConfig(**{**ckpt["config"], "compounds": tuple(ckpt["config"]["compounds"])})
    net = build(config, len(ckpt["classes"])).to(device)
    net.load_state_dict(ckpt["weights"])
    return net.eval(), ckpt["classes"], config


@torch.no_grad()
def translate(net, x, targets, batch_size=64):
    """(len(targets), N, C, H, W): the regressor's answer for x under each target class."""
    return torch.stack([torch.cat([correct(net, xb, t) for xb in x.split(batch_size)])
                        for t in targets])


def score(net, config, classes, n=32, seed=7):
    """Rows [class, PSNR of the regressor, PSNR of doing nothing] on n held-out paired fields."""
    compounds = list(config.compounds) or None
    truth = data.synthetic_truth(config.kind, n, config.image_size, seed, compounds)
    device = next(net.parameters()).device
    out = translate(net, truth[0].to(device), range(len(classes))).cpu()
    return [[c, float(reconstruction_error(truth[k], out[k])["psnr"].mean()),
             float(reconstruction_error(truth[k], truth[0])["psnr"].mean())]
            for k, c in enumerate(classes)]


def cmd_ceiling(a):
    """Train the ceiling, save OUT/ceiling.pt and score it on held-out paired fields."""
    folder = files.out_folder(a.out, [], ["ceiling.pt", "ceiling.md", "ceiling.csv"],
                              a.overwrite)
    config = CeilingConfig(compounds=tuple(a.compounds or ()), image_size=a.image_size,
                           n_per_class=a.n_per_class, seed=a.seed, steps=a.steps,
                           batch_size=a.batch_size)
    t0 = time.perf_counter()
    net, classes, log = train(config, a.device)
    minutes = (time.perf_counter() - t0) / 60
    save(folder / "ceiling.pt", net, classes, config)
    rows = score(net, config, classes, a.eval_n, a.eval_seed)
    files.write_csv(folder / "ceiling.csv", ["class", "psnr_regression", "psnr_nothing"], rows)
    lines = [f"A conditional UNet ({sum(p.numel() for p in net.parameters()) / 1e6:.2f}M "
             f"parameters) trained by MSE on paired synthetic fields ({config.n_per_class} per "
             f"class, seed {config.seed}, {config.image_size} px, {config.steps} steps of "
             f"{config.batch_size}, {minutes:.1f} min; final loss "
             f"{sum(log[-50:]) / len(log[-50:]):.2e}), scored on "
             f"{a.eval_n} held-out paired fields (seed {a.eval_seed}): PSNR to the truth of its "
             "answer and of doing nothing.", "",
             *report.md_table(["class", "paired regression (dB)", "doing nothing (dB)"],
                              [[c, f"{p:.1f}", f"{q:.1f}"] for c, p, q in rows])]
    report.write(folder / "ceiling.md", "The counterfactual's ceiling: paired regression",
                 f"python eval.py {' '.join(a.argv)}", config.seed, lines)
    for c, p, q in rows:
        print(f"{c:24s} regression {p:5.1f} dB   doing nothing {q:5.1f} dB")
