"""Reproduce both papers with one command: train what is missing, translate held-out untreated
images with every method, and write every table and figure of the comparison into one report.

    python eval.py reproduce --data synthetic --compounds latrunculin_b --preset cpu \
        --out results/reproduce_latrunculin_b
    python eval.py reproduce --data runs/real_sites/train.npz --test runs/real_sites/test.npz \
        --ckpt phendiff=runs/real_phendiff ... --out results/reproduce_real

Stages, each skipped when its output exists (a killed run continues where it stopped):
  1. train     train.py per method at the preset's recorded command (or --ckpt method=path)
  2. domain    the domain encoder of Table 1: a classifier of the training classes, held fixed
               for all methods (none of the compared methods' own encoders)
  3. outputs   each method's translations of the held-out control images to every class and its
               reconstructions of held-out images of every class (arrays in --work)
  4. features  cell features of everything scored (features.py), cached in --work
  5. report    report.md with Table 1 (domain and Inception Frechet distance with intervals,
               paired differences between methods), Table 2, the counterfactual error between
               its floor and ceiling (synthetic: the truth is known), input preservation, Fig. 4,
               Fig. 2b (Golgi data), the second paper's Fig. 2
Checkpoints and arrays go to --work (never committed); --out holds markdown, CSVs and small PNGs.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import data
import files
import method as M
from baselines import encoders
from evaluation import ceiling, commands, plots, report
from evaluation import scores as S
from evaluation.inception import load_inception
from evaluation.stats import frechet_difference, frechet_interval

ROOT = Path(__file__).resolve().parents[1]  # the repository: train.py
# compared name -> (the run that trains it, PhenEx's projection space)
COMPARED = {"phendiff": ("phendiff", None), "stargan": ("stargan", None),
            "cyclegan": ("cyclegan", None), "phenex-w": ("stylegan", "w"),
            "phenex-w+": ("stylegan", "w+"), "dsae": ("dsae", None), "vae": ("vae", None),
            "bigan": ("bigan", None), "alae": ("alae", None), "dcvae": ("dcvae", None)}
# preset -> run -> train.py flags: the recorded commands of the README's results (DSAE's parts: the
# runs in --work or given by --ckpt)
TRAIN = {
    "cpu": {"phendiff": "--batch-size 32 --steps 2000", "stargan": "--batch-size 16 --steps 5000",
            "cyclegan": "--batch-size 4 --steps 2000 --pairs DMSO:all",  # 4 + 4 images
            "stylegan": "--batch-size 32 --steps 2000",
            "dino": "--arch vit --batch-size 64 --steps 3000",
            "ganformer": "--batch-size 32 --steps 1000",
            "dsae": "--batch-size 32 --steps 300 --encoder {dino} --decoder {ganformer}",
            "vae": "--batch-size 64 --steps 3000", "bigan": "--batch-size 64 --steps 2000",
            "alae": "--batch-size 16 --steps 1000",
            "dcvae": "--batch-size 64 --steps 5000"},  # 5 D steps per E/G step: 1,000 of E/G
    "paper": {"phendiff": "--batch-size 32 --steps 100000",
              "stargan": "--batch-size 16 --steps 200000",
              "cyclegan": "--batch-size 1 --steps 200000 --pairs DMSO:all",
              "stylegan": "--batch-size 32 --steps 100000", "dino": "--arch vit --steps 125000",
              "ganformer": "--batch-size 32 --steps 100000",
              "dsae": "--batch-size 32 --steps 10000 --encoder {dino} --decoder {ganformer}",
              "vae": "--batch-size 64 --steps 100000", "bigan": "--batch-size 64 --steps 100000",
              "alae": "--batch-size 32 --steps 100000", "dcvae": "--batch-size 64 --steps 100000"},
    "tiny": {k: "--batch-size 4 --steps 2" for k in ("phendiff", "stargan", "stylegan", "dino",
                                                     "ganformer", "vae", "bigan", "alae", "dcvae")}
    | {"cyclegan": "--batch-size 1 --steps 2 --pairs DMSO:all",
       "dsae": "--batch-size 4 --steps 2 --encoder {dino} --decoder {ganformer}"},
}
SIZE = {"cpu": 32, "paper": 128, "tiny": 16}
PROJECTION_STEPS = {"cpu": 500, "paper": 1000, "tiny": 2}
DOMAIN_STEPS = {"cpu": 1500, "paper": 10000, "tiny": 10}
# the counterfactual's ceiling (evaluation/ceiling.py): paired fields per class and steps
CEILING = {"cpu": dict(n_per_class=2000, steps=3000), "paper": dict(n_per_class=2000, steps=3000),
           "tiny": dict(n_per_class=4, steps=2)}
GOLGI_FEATURE = "golgi_area_mean"
FLOOR = "real (training images)"


def to_train(methods, given):
    """The runs to train: those of the methods without a checkpoint in `given`, parts first (DSAE:
    its encoder and decoder)."""
    runs = [COMPARED[m][0] for m in methods if m not in given and COMPARED[m][0] not in given]
    if "dsae" in runs:
        runs = [r for r in ("dino", "ganformer") if r not in given] + runs
    return list(dict.fromkeys(runs))

# -----------------------------------------------------------------------------
# Stage bookkeeping


class Stages:
    """Wall time of each stage in WORK/stages.json, kept across resumed invocations."""

    def __init__(self, work):
        self.path = Path(work) / "stages.json"
        self.times = json.loads(self.path.read_text()) if self.path.exists() else {}

    def run(self, name, fn, done):
        if done():
            print(f"[skip] {name}: done in an earlier run")
            return
        print(f"[run] {name}")
        t0 = time.perf_counter()
        fn()
        self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0
        self.path.write_text(json.dumps(self.times, indent=1))

# -----------------------------------------------------------------------------
# 1. training


def train_command(a, run):
    """train.py's argument list for one run at the preset, on --data."""
    src = (f"--data synthetic --kind {a.kind} --n-per-class {a.train_n}" if a.synthetic
           else f"--data {a.data} --fit {a.fit}")
    if a.compounds:
        src += " --compounds " + " ".join(a.compounds)
    method = f"--method {run} --preset {a.preset}"
    parts = {r: a.given.get(r) or f"{a.work}/{r}" for r in ("dino", "ganformer")}
    flags = TRAIN[a.preset][run].format(**parts)
    return (f"{method} {src} --image-size {a.image_size} {flags} --ckpt-every 500 "
            f"--sample-every 0 --seed {a.seed} --device {a.train_device} --out {a.work}/{run}")


def train(a, run):
    launch = ["-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={a.nproc}"] \
        if a.nproc > 1 else []
    cmd = [sys.executable, *launch, str(ROOT / "train.py"), *train_command(a, run).split()]
    folder = Path(a.work) / run
    if folder.exists() and any(folder.iterdir()):
        cmd.append("--resume")  # a killed run continues from its last checkpoint
    if subprocess.run(cmd).returncode != 0:
        raise ValueError(f"training {run} failed; see the messages above (run folder {folder}; "
                         "rerun the same command to continue)")
    (folder / "DONE").touch()

# -----------------------------------------------------------------------------
# 2. evaluation images, each method's outputs


def evaluation_sets(a, normalization=None):
    """(train, test, truth): the training images (for the floors), the held-out images and, on
    synthetic data, the ground truth: truth[k] = the control inputs' own fields under class k."""
    if a.synthetic:
        kw = dict(kind=a.kind, image_size=a.image_size, compounds=a.compounds)
        tr = data.synthetic_dataset(n_per_class=a.train_n, seed=a.seed, **kw)
        te = data.synthetic_dataset(n_per_class=a.n, seed=a.seed + 1, **kw)
        truth = data.synthetic_truth(a.kind, a.n, a.image_size, a.seed + 1, a.compounds)
        assert torch.equal(truth[0], te.images[te.labels == 0]), "pairing: image i = same field"
        return tr, te, truth
    tr = data.load_dataset(a.data, a.image_size, fit=a.fit, compounds=a.compounds,
                           normalization=normalization)
    te = data.load_dataset(a.test, a.image_size, fit=a.fit, compounds=a.compounds,
                           normalization=tr.normalization)
    if te.classes != tr.classes:
        raise ValueError(f"--test has classes {te.classes}, --data {tr.classes}: they must match")
    return tr, te, None


def inputs_of(a, te):
    """The held-out control images translated by every method, and the images reconstructed."""
    control = te.images[te.labels == 0]
    x = control[torch.linspace(0, len(control) - 1, min(a.n, len(control))).long()]  # all sites
    step = max(1, len(te) // a.n_recon)
    pick = torch.arange(0, len(te), step)[:a.n_recon]
    return x, te.images[pick], te.labels[pick]


def method_outputs(a, name, path, te):
    """Translations (classes, N, C, H, W) of the control inputs, reconstructions per variant."""
    projection = COMPARED[name][1]
    steps = (a.projection_steps or PROJECTION_STEPS[a.preset]) if projection else None
    ckpt, variants = S.load_variants(path, a.device, a.ddim_steps, a.fixed_point_iters,
                                     projection, steps)
    if ckpt["classes"] != te.classes:
        raise ValueError(f"{name} ({path}) was trained on classes {ckpt['classes']}, the "
                         f"evaluation data has {te.classes}: train it on the same data")
    norm = ckpt.get("normalization")
    if not a.synthetic and norm and not np.allclose(norm["high"], te.normalization["high"]):
        raise ValueError(f"{name} ({path}) normalised its training images otherwise than --data "
                         "(another file or --fit?): train it on the same data")
    net = next(iter(variants.values()))
    x, xr, yr = inputs_of(a, te)
    k = len(te.classes)
    y = S.batched(lambda xb: net.translate_many(xb, 0, range(k)), [x], a.batch_size, a.device,
                  desc=f"{name}: translate to {k} classes")
    rec = {v: S.batched(m.reconstruct, [xr, yr], a.batch_size, a.device)
           for v, m in variants.items()}
    return {"translations": y, "reconstructions": rec, "describe": net.describe(),
            "step": ckpt.get("step")}


def identity_outputs(a, te):
    """Doing nothing: every translation is its input. The floor every method should beat."""
    x, xr, _ = inputs_of(a, te)
    return {"translations": x.expand(len(te.classes), *x.shape).clone(),
            "reconstructions": {"the input itself": xr}}

# -----------------------------------------------------------------------------
# 3. scores


def score(a, out, te, tr, truth, outputs, ceiling_y, feats, names):
    """Every table and figure from the saved outputs and features (CSVs and PNGs into out): the
    rows of the report's sections."""
    classes, targets = te.classes, list(range(1, len(te.classes)))
    x, xr, _ = inputs_of(a, te)
    cells = lambda key: feats[f"cells_{key}"]  # noqa: E731
    real_cells = [cells(f"test_{c}") for c in range(len(classes))]
    scale = S.feature_scale(real_cells)
    named = lambda rows: [[r[0], classes[r[1]], *r[2:]] for r in rows]  # noqa: E731
    sec = {}
    # Table 1: Frechet distance of translated vs real images of each target class; the floor: real
    # training images of the class
    spaces = ["domain"] + (["inception"] if a.inception_weights else [])
    sec["table1"] = [[space, m, classes[t], len(fake), len(real), *frechet_interval(fake, real)]
                     for space in spaces for m in [*outputs, FLOOR] for t in targets
                     for fake, real in [(feats[f"{space}_{'train' if m == FLOOR else m}_{t}"],
                                         feats[f"{space}_test_{t}"])]]
    files.write_csv(out / "table1.csv", ["features", "method", "class", "n_translated", "n_real",
                                         "frechet", "low", "high"], sec["table1"])
    # paired: the first method against each other one, on the same inputs and the same references
    first = next(iter(outputs))
    sec["table1_paired"] = [
        [space, first, m, classes[t], *frechet_difference(feats[f"{space}_{first}_{t}"],
                                                          feats[f"{space}_{m}_{t}"],
                                                          feats[f"{space}_test_{t}"])]
        for space in spaces for m in outputs if m != first for t in targets]
    files.write_csv(out / "table1_paired.csv", ["features", "method", "against", "class",
                                                "difference", "low", "high"],
                    sec["table1_paired"])
    # Table 2: reconstruction of held-out images of every class
    recs = {(m, v): r for m, o in outputs.items() for v, r in o["reconstructions"].items()
            if m != "identity"} | {("mean training image", "trivial"):
                                   tr.images.mean(0).expand_as(xr)}
    sec["table2"] = S.table2_rows(xr, recs)
    files.write_csv(out / "table2.csv", ["method", "variant", "n", "l2_mean", "l2_std", "mse",
                                         "psnr"], sec["table2"])
    # each translation against its own input, and against its own truth (synthetic data only)
    translations = {m: o["translations"] for m, o in outputs.items()}
    against = lambda refs, ref_cells: named(S.against_references(  # noqa: E731
        translations, targets, refs, ref_cells, lambda m, t: cells(f"{m}_{t}"), scale))
    sec["preservation"] = against(lambda t: x, lambda t: cells("input"))
    files.write_csv(out / "preservation.csv", ["method", "target", *S.AGAINST],
                    sec["preservation"])
    if truth is not None:
        counterfactual(out, sec, translations, ceiling_y, targets, truth, cells, scale, named)
    sec["fig4"], fig4 = S.fig4_rows(outputs, targets, classes, real_cells, cells, scale)
    sec["by_dose"] = bool(fig4)
    files.write_csv(out / "fig4.csv", ["method", "median_r_dose_varying", "n_features",
                                       "effect_r_top_target", "effect_r_mean"], sec["fig4"])
    if fig4:
        plots.fig4_methods(fig4, out / "fig4.png")
    if any(f.startswith("golgi_") for f in names):
        sec["fig2b"], boxes = S.golgi_tests(outputs, classes, real_cells, cells, names,
                                            GOLGI_FEATURE)
        files.write_csv(out / "fig2b.csv", ["feature", "treated_images", "test", "n_control",
                                            "n_treated", "control_mean", "treated_mean", "t",
                                            "p", "p_holm", "effect", "effect_low",
                                            "effect_high"], sec["fig2b"])
        plots.boxes(boxes, GOLGI_FEATURE,
                    f"real {classes[0]} vs real and translated {classes[-1]}", out / "fig2b.png",
                    log=True)
    return sec

def counterfactual(out, sec, translations, ceiling_y, targets, truth, cells, scale, named):
    """Each translation against its own field at the target dose (synthetic data only), between
    the floor (identity: doing nothing) and the ceiling (a regressor trained on paired fields),
    with each method's gain over doing nothing as a paired interval over the images."""
    cf = {**translations, **({"ceiling": ceiling_y} if ceiling_y is not None else {})}
    args = (targets, lambda t: truth[t], lambda t: cells(f"truth_{t}"),
            lambda m, t: cells(f"{m}_{t}"), scale)
    sec["counterfactual"] = named(S.against_references(cf, *args))
    sec["gains"] = named(S.gains(cf, "identity", *args))
    by_dose = [[r[0], r[1], files.parse_class(r[1])[1], *r[2:]] for r in sec["counterfactual"]]
    files.write_csv(out / "counterfactual.csv", ["method", "target", "concentration_uM",
                                                 *(c + "_truth" for c in S.AGAINST)], by_dose)
    files.write_csv(out / "counterfactual_gains.csv", [
        "method", "target", "psnr_gain", "psnr_gain_low", "psnr_gain_high", "feature_gain",
        "feature_gain_low", "feature_gain_high"], sec["gains"])
    plots.counterfactual(by_dose, out / "counterfactual.png")
    if ceiling_y is not None:
        plots.gap_closed(by_dose, out / "counterfactual_gap.png", report.GAP)

# -----------------------------------------------------------------------------
# the pipeline


def parse_ckpts(items):
    """--ckpt NAME=PATH (a compared method or a run: stylegan serves phenex-w and phenex-w+)."""
    known = set(COMPARED) | set(to_train(COMPARED, {}))
    given = {}
    for item in items or []:
        name, sep, path = item.partition("=")
        if not sep or name not in known:
            raise ValueError(f"--ckpt {item!r}: write NAME=PATH with NAME one of "
                             f"{', '.join(sorted(known))}")
        if not Path(path).exists():
            raise ValueError(f"--ckpt {item!r}: {path} does not exist")
        given[name] = Path(path)
    return given


def features_of(a, key, images, ds, domain, inception):
    """Cell, domain-encoder and (with weights) Inception features of one image set, cached."""
    path = Path(a.work) / "features" / f"{key}.npz"
    if path.exists():
        return dict(np.load(path))
    f = {"cells": S.feature_rows(images, ds.channels, a.workers)[0],
         "domain": S.encode((images + 1) / 2, domain, a.batch_size, a.device)}
    if inception is not None:
        f["inception"] = S.encode((images + 1) / 2, inception, a.batch_size, a.device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **f)
    tmp.replace(path)  # a killed run leaves no half-written cache
    return f


def check_setup(a):
    """What the cached runs, outputs and features in --work were made of (setup.json): a resumed
    run must not mix them with another setup's."""
    setup = json.loads(json.dumps({k: getattr(a, k) for k in (
        "data", "test", "kind", "compounds", "image_size", "fit", "train_n", "n", "n_recon",
        "preset", "seed", "ceiling")}))
    path = Path(a.work) / "setup.json"
    if path.exists() and json.loads(path.read_text()) != setup:
        raise ValueError(f"--work {a.work} holds the runs and outputs of another setup ({path}); "
                         "choose a new --work (and --out) for this one")
    path.write_text(json.dumps(setup, indent=1))


def image_sets(a, tr, te, truth, outputs, ceiling_y):
    """Every image set scored, by cache key: the inputs, the held-out and the training images of
    each class (as many training images as translations: a Frechet distance's bias depends on the
    counts), each method's translations and, on synthetic data, the truth."""
    x = inputs_of(a, te)[0]
    sets, g = {"input": x}, torch.Generator().manual_seed(a.seed)
    for c in range(len(te.classes)):
        sets[f"test_{c}"] = te.images[te.labels == c]
        own = tr.images[tr.labels == c]
        sets[f"train_{c}"] = own[torch.randperm(len(own), generator=g)[:len(x)]]
        if c:
            sets |= {f"{m}_{c}": o["translations"][c] for m, o in outputs.items()}
            if truth is not None:
                sets[f"truth_{c}"] = truth[c]
            if ceiling_y is not None:
                sets[f"ceiling_{c}"] = ceiling_y[c]
    return sets


def run(a):
    """The whole reproduction; every stage resumable."""
    t_start = time.perf_counter()
    a.synthetic = a.data in ("synthetic", "synthetic-golgi")
    a.image_size = a.image_size or SIZE[a.preset]
    a.kind = "golgi" if a.data == "synthetic-golgi" else a.kind
    if not a.synthetic and not a.test:
        raise ValueError("real data needs --test: held-out images of whole sites, e.g. "
                         "`python tools/prepare.py sites --data X.npz --test B02_s1 B03_s4 "
                         "--out DIR` "
                         "writes DIR/train.npz and DIR/test.npz")
    unknown = [m for m in a.methods if m not in COMPARED]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown[0]!r}; choose from {', '.join(COMPARED)}")
    given = a.given = parse_ckpts(a.ckpt)
    out = Path(a.out)
    if out.exists() and any(out.iterdir()) and not (out / "reproduce.json").exists():
        raise ValueError(f"--out {out} holds files of something else; choose a new folder (the "
                         "folder of an earlier reproduce continues it)")
    a.work = str(a.work or Path("runs") / out.name)
    out.mkdir(parents=True, exist_ok=True)
    Path(a.work).mkdir(parents=True, exist_ok=True)
    check_setup(a)
    (out / "reproduce.json").write_text(json.dumps({"argv": a.argv}, indent=1))
    stages = Stages(a.work)

    # 1. train what is not given
    trained = to_train(a.methods, given)
    for r in trained:
        stages.run(f"train {r}", lambda r=r: train(a, r),
                   lambda r=r: (Path(a.work) / r / "DONE").exists())
    paths = {m: given.get(m) or given.get(COMPARED[m][0]) or Path(a.work) / COMPARED[m][0]
             for m in a.methods}

    # 2. evaluation images and the domain encoder
    first = M.load_checkpoint(M.checkpoint_path(paths[a.methods[0]]))
    tr, te, truth = evaluation_sets(a, None if a.synthetic else first.get("normalization"))
    dpath = Path(a.work) / "domain_encoder.pt"

    def domain_stage():
        net = encoders.train_domain_encoder(tr, DOMAIN_STEPS[a.preset], seed=a.seed,
                                            device=a.device)
        M.save_checkpoint({"config": net.config, "weights": net.state_dict()}, dpath)
    stages.run("domain encoder", domain_stage, dpath.exists)
    domain = encoders.load_domain_encoder(dpath, a.device)
    inception = load_inception(a.inception_weights, a.device) if a.inception_weights else None

    # 3. every method's outputs, doing nothing, and (synthetic) the ceiling's answers
    outputs = all_outputs(a, stages, paths, te)
    ceiling_y = ceiling_outputs(a, stages, te) if truth is not None else None

    # 4. features of every image set, cached set by set
    sets, feats = image_sets(a, tr, te, truth, outputs, ceiling_y), {}

    def feature_stage():
        for key, images in tqdm(sets.items(), desc="features"):
            feats.update({f"{kind}_{key}": v for kind, v in
                          features_of(a, key, images, te, domain, inception).items()})
    stages.run("features", feature_stage, lambda: False)  # cached per set: a rerun only reads

    # 5. the report; the second paper's Fig. 2 for the methods that decode
    names = S.feature_rows(sets["input"][:1], te.channels)[1]
    sec = score(a, out, te, tr, truth, outputs, ceiling_y, feats, names)
    decoding = [m for m in a.methods if m in ("dsae", "vae", "bigan", "alae", "dcvae")]
    if decoding:
        stages.run("the second paper's Fig. 2",
                   lambda: represent(a, [paths[m] for m in decoding], out / "fig2", domain),
                   (out / "fig2" / "representation.md").exists)
    sec["domain"] = dict(accuracy=domain_accuracy(domain, te, a), dim=domain.trunk.dim,
                         steps=DOMAIN_STEPS[a.preset])
    sec["floor"], sec["golgi_feature"] = FLOOR, GOLGI_FEATURE
    recorded = {r: "python train.py " + train_command(a, r) for r in trained}
    report.reproduction(a, out, te, outputs, sec, recorded, paths, stages.times,
                        time.perf_counter() - t_start)
    print(f"wrote {out}/report.md")


def all_outputs(a, stages, paths, te):
    """{method: its translations and reconstructions}, each saved in --work by a stage of its own,
    and doing nothing (identity)."""
    outputs = {}
    for m in a.methods:
        p = Path(a.work) / "outputs" / f"{m}.pt"

        def outputs_stage(m=m, p=p):
            M.save_checkpoint(method_outputs(a, m, paths[m], te), p)
            for f in (Path(a.work) / "features").glob(f"{m}_*.npz"):
                f.unlink()  # features of earlier outputs
        stages.run(f"outputs {m}", outputs_stage, p.exists)
        outputs[m] = torch.load(p, weights_only=True)
    outputs["identity"] = identity_outputs(a, te)
    return outputs


def ceiling_outputs(a, stages, te):
    """The ceiling's answers (classes, N, C, H, W) for the control inputs: --ceiling, or a
    regressor trained here on paired fields of the same classes and size (evaluation/ceiling.py;
    its own seed, apart from every evaluation set)."""
    path = Path(a.ceiling or Path(a.work) / "ceiling.pt")

    def ceiling_stage():
        config = ceiling.CeilingConfig(kind=a.kind, compounds=tuple(a.compounds or ()),
                                       image_size=a.image_size, **CEILING[a.preset])
        net, classes, _ = ceiling.train(config, a.device)
        ceiling.save(path, net, classes, config)
        for f in (Path(a.work) / "features").glob("ceiling_*.npz"):
            f.unlink()  # features of an earlier ceiling's answers
    if not a.ceiling:
        stages.run("ceiling", ceiling_stage, path.exists)
    net, classes, config = ceiling.load(path, a.device)
    if classes != te.classes or config.image_size != a.image_size:
        raise ValueError(f"--ceiling {path} was trained on {classes} at {config.image_size} px; "
                         f"the evaluation data has {te.classes} at {a.image_size} px")
    x = inputs_of(a, te)[0]
    return ceiling.translate(net, x.to(a.device), range(len(classes))).cpu()


def domain_accuracy(net, te, a):
    """Held-out accuracy of the domain encoder's classifier: how well its space tells classes
    apart."""
    with torch.no_grad():
        pred = torch.cat([net.logits((xb.to(a.device) + 1) / 2).argmax(1).cpu()
                          for xb in te.images.split(a.batch_size)])
    return float((pred == te.labels).float().mean())


def represent(a, paths, folder, domain):
    """The second paper's Fig. 2 and Fig. 3 (eval.py represent) on the held-out data, the
    reconstructions also by the distance of the domain encoder's features (the paper's is VGG's)."""
    kw = (dict(data_source=a.data, n_per_class=a.represent_n, seed=a.seed + 1,
               compounds=a.compounds) if a.synthetic else
          dict(data_source=a.test, train_source=a.data))  # probes: train sites -> held-out sites
    commands.represent(paths, folder, device=a.device, overwrite=True,
                       perceptual=(lambda x: domain((x + 1) / 2), "the domain encoder of Table 1"),
                       **kw)


def add_arguments(p):
    """The flags of `eval.py reproduce` (eval.py adds --device, --inception-weights and
    --batch-size)."""
    files.add_flags(p, data="synthetic")
    p.add_argument("--test", help="real data: the held-out images (whole sites; "
                                  "tools/prepare.py sites)")
    p.add_argument("--kind", default="bbbc021", choices=["bbbc021", "golgi"])
    p.add_argument("--compounds", nargs="+", help="keep DMSO and these compounds (default: all)")
    p.add_argument("--methods", type=lambda s: s.split(","), default=list(COMPARED),
                   help=f"comma-separated (default all: {','.join(COMPARED)})")
    p.add_argument("--ckpt", action="append", metavar="NAME=PATH",
                   help="use this run instead of training it (repeat); NAME a method or a run: "
                        "stylegan (both PhenEx), dino, ganformer")
    p.add_argument("--preset", default="cpu", choices=list(TRAIN),
                   help="the recorded training commands (%(default)s)")
    files.add_flags(p, out=files.REQUIRED)
    p.add_argument("--work", help="runs, outputs, features (default runs/<name of --out>)")
    p.add_argument("--image-size", type=files.integer(8),
                   help="default by preset: " + ", ".join(f"{k} {v}" for k, v in SIZE.items()))
    p.add_argument("--nproc", type=files.integer(1), default=1,
                   help="processes (GPUs) per training run: torchrun when > 1 (%(default)s)")
    p.add_argument("--fit", default="resize", choices=["crop", "resize"],
                   help="real images larger than --image-size (%(default)s)")
    p.add_argument("--train-n", type=files.integer(2), default=400,
                   help="synthetic training images per class (%(default)s)")
    p.add_argument("--n", type=files.integer(3), default=64,
                   help="held-out images per class, control inputs included (%(default)s)")
    p.add_argument("--n-recon", type=files.integer(1), default=32,
                   help="held-out images reconstructed (%(default)s)")
    p.add_argument("--represent-n", type=files.integer(10), default=200,
                   help="synthetic images per class of the second paper's Fig. 2 (%(default)s)")
    p.add_argument("--ceiling", help="synthetic data: a checkpoint of `eval.py ceiling` (default: "
                                     "trained as a stage, evaluation/ceiling.py)")
    files.add_flags(p, ddim_steps=50, fixed_point_iters=5, projection_steps=None, workers=2)
    p.add_argument("--train-device", default="auto", help="train.py --device (%(default)s)")
    files.add_flags(p, seed=0)
