"""Evaluation: how the papers measure a translation, on folders of images, for every method.

A thin command line over the evaluation folder (evaluation/commands.py holds each command's body).
Everything scores images (folders, or arrays in [0, 1] / [-1, 1]) and encoders, never a method's
internals, so PhenDiff and every baseline are measured by the same code:

  fid, table1  Frechet distance of InceptionV3 features (evaluation/inception.py: the FID network,
               weights by path) between two folders, or per target class (Table 1)
  recon        reconstruction error of real images (Table 2): L2, MSE, PSNR, file by file
  fig4, ttest  CellProfiler-style features (evaluation/features.py): Fig. 4's correlations across
               doses and Fig. 2b's t-test
  samples      a generative method's samples from noise: spread (collapse) and dose trend
  represent    DSAE's representation quality: 1-NN and linear-probe F1 of encoders' features
               against floors (evaluation/representation.py)
  ceiling      the counterfactual's ceiling: a regressor trained on paired synthetic fields
               (evaluation/ceiling.py)
  inversion    PhenDiff's reconstruction against DDIM steps, plain vs exact inversion; the
               trajectory of real images; the inverted latents (evaluation/inversion.py)
  reproduce    both papers in one resumable command (evaluation/reproduce.py)

    python eval.py fid DIR1 DIR2 --inception-weights pt_inception-2015-12-05-6726825d.pth
    python eval.py table1 --real REAL_ROOT --fake TRANSLATED_ROOT --out runs/eval
    python eval.py recon --real DATA/DMSO --rec RECONSTRUCTED/DMSO --out runs/eval
    python eval.py recon --ckpt runs/x/last.pt --data synthetic --out runs/eval
    python eval.py fig4 --real REAL_ROOT --fake TRANSLATED_ROOT --out runs/eval
    python eval.py ttest --real R --fake F --feature golgi_area_mean --a DMSO --b nocodazole_1uM \
        --golgi-channel 0
    python eval.py samples --ckpt runs/stylegan --data synthetic --out runs/eval
    python eval.py represent --ckpt runs/dino --data synthetic --out runs/eval
    python eval.py inversion --ckpt checkpoints/demo.pt --steps 2 5 10 20 50 100 --out runs/inv
    python eval.py ceiling --out runs/ceiling
    python eval.py bench
    python eval.py reproduce --data synthetic --compounds latrunculin_b --out results/NAME
"""
import argparse

import files
from evaluation import commands as C
from evaluation import ceiling, inversion, reproduce
from evaluation.inception import WEIGHTS_ENV, WEIGHTS_FILE


def parent(**flags):
    """A parent parser holding shared flags (files.add_flags) with these defaults."""
    p = argparse.ArgumentParser(add_help=False)
    files.add_flags(p, **flags)
    return p


def get_parser():
    p = files.Parser(prog="eval.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    out = parent(out="runs/eval", overwrite=False)
    incep = parent(device="auto", batch_size=16)
    incep.add_argument("--inception-weights", help=f"path to {WEIGHTS_FILE} (or set {WEIGHTS_ENV})")
    feats = parent(out="runs/eval", overwrite=False, workers=1)
    feats.add_argument("--real", required=True, help="real images, root/<class>/*.png")
    feats.add_argument("--fake", help="translated/generated images, same layout")
    feats.add_argument("--nuclei-channel", type=files.integer(0), default=2)
    feats.add_argument("--golgi-channel", type=files.integer(0),
                       help="channel with Golgi staining (golgi_* features)")

    s = sub.add_parser("fid", parents=[incep], help="FID between two image folders")
    s.add_argument("path1")
    s.add_argument("path2")
    files.add_flags(s, out=None, overwrite=False)
    s = sub.add_parser("table1", parents=[incep, out], help="Table 1: per-class FID, translated "
                                                            "vs real")
    s.add_argument("--real", required=True, help="real images, root/<class>/*.png")
    s.add_argument("--fake", required=True, help="translated images, root/<target class>/*.png")
    s = sub.add_parser("recon", parents=[out], help="Table 2: reconstruction error")
    s.add_argument("--real", help="real images (a folder), matched by file name with --rec")
    s.add_argument("--rec", help="their reconstructions, e.g. OUT/DMSO of phendiff.py reconstruct")
    files.add_flags(s, ckpt=None, data="synthetic")
    s.add_argument("--n", type=files.integer(1), default=64, help="with --ckpt: number of images")
    s.add_argument("--n-per-class", type=files.integer(1), default=8,
                   help="with --ckpt: synthetic images per class")
    files.add_flags(s, ddim_steps=50, fixed_point_iters=5, projection=None, projection_steps=None,
                    batch_size=32, seed=0, device="auto")
    s = sub.add_parser("samples", parents=[out], help="a StyleGAN's samples vs real images")
    files.add_flags(s, ckpt=files.REQUIRED, data="synthetic")
    s.add_argument("--n", type=files.integer(2), default=48, help="images per class (%(default)s)")
    s.add_argument("--feature", default="cells_actin_mean", help="feature whose dose trend to test")
    files.add_flags(s, workers=1, seed=1, device="auto")
    sub.add_parser("fig4", parents=[feats], help="Fig. 4: feature correlations across doses")
    s = sub.add_parser("ttest", parents=[feats], help="Fig. 2b: Welch t-test on one feature")
    s.add_argument("--feature", required=True,
                   help="a name of evaluation.features.FEATURES, e.g. golgi_area_mean")
    s.add_argument("--a", required=True, help="first condition (class name)")
    s.add_argument("--b", required=True, help="second condition (class name)")
    s = sub.add_parser("represent", parents=[out],
                       help="DSAE: 1-NN / linear F1 of encoders' features against floors")
    represent_arguments(s)
    s = sub.add_parser("inversion", parents=[out], help="PhenDiff: reconstruction against DDIM "
                                                          "steps, trajectories, latents")
    files.add_flags(s, ckpt=files.REQUIRED, data="synthetic")
    s.add_argument("--n", type=files.integer(1), default=16, help="images (%(default)s)")
    s.add_argument("--steps", type=files.integer(1), nargs="+", default=[2, 5, 10, 20, 50, 100],
                   help="DDIM step counts of the sweep (%(default)s)")
    s.add_argument("--iters", type=files.integer(0), nargs="+", default=[0, 5],
                   help="fixed-point iterations of the sweep, 0: eq. 6 (%(default)s)")
    s.add_argument("--trajectory-steps", type=files.integer(2), default=50,
                   help="DDIM steps of the trajectory figure and the latents (%(default)s)")
    files.add_flags(s, seed=1, device="auto")
    s = sub.add_parser("ceiling", parents=[out], help="the counterfactual's ceiling: paired "
                                                        "regression on synthetic fields")
    c = ceiling.CeilingConfig()
    s.add_argument("--compounds", nargs="+", default=list(c.compounds),
                   help="DMSO and these compounds (%(default)s)")
    s.add_argument("--image-size", type=files.integer(8), default=c.image_size)
    s.add_argument("--n-per-class", type=files.integer(2), default=c.n_per_class,
                   help="paired training fields (%(default)s)")
    s.add_argument("--steps", type=files.integer(1), default=c.steps)
    s.add_argument("--eval-n", type=files.integer(2), default=32, help="held-out fields")
    s.add_argument("--eval-seed", type=int, default=7)
    files.add_flags(s, batch_size=c.batch_size, seed=c.seed, device="auto")
    s = sub.add_parser("bench", help="feature extraction throughput and accuracy")
    s.add_argument("--batches", type=files.integer(1), default=4)
    s.add_argument("--images", type=files.integer(25), default=200)
    files.add_flags(s, batch_size=16, workers=2, seed=0, device="auto")
    s = sub.add_parser("reproduce", parents=[incep],
                       help="both papers: train, translate, score every method; report.md")
    reproduce.add_arguments(s)
    for name, cmd in sub.choices.items():
        cmd.set_defaults(run=dict(reproduce=reproduce.run, inversion=inversion.cmd_inversion,
                                  ceiling=ceiling.cmd_ceiling).get(name)
                         or getattr(C, f"cmd_{name}"))
    return p


def represent_arguments(s):
    s.add_argument("--ckpt", nargs="+", required=True, help="checkpoints of methods with encode")
    files.add_flags(s, data="synthetic")
    s.add_argument("--train-data", help="train the probes on these images and test them on --data "
                                        "(whole held-out sites: a site-disjoint probe)")
    s.add_argument("--perceptual", help="a domain encoder (eval.py reproduce's --work/"
                                        "domain_encoder.pt): reconstructions also by the distance "
                                        "of its features, a stand-in for the paper's VGG")
    s.add_argument("--n-per-class", type=files.integer(2), default=40,
                   help="synthetic images per class (%(default)s)")
    s.add_argument("--compounds", nargs="+", help="keep DMSO and these compounds (default: all)")
    s.add_argument("--control", default="DMSO", help="the untreated class (%(default)s)")
    s.add_argument("--fit", choices=["crop", "resize"],
                   help="real images larger than the checkpoints' size: the centre crop or the "
                        "whole image resized (default: as the first checkpoint's run trained)")
    s.add_argument("--every", type=files.integer(2), default=5,
                   help="hold out every N-th block of images of each class (%(default)s)")
    s.add_argument("--block", type=files.integer(1),
                   help="images held out together (one site's crops): 1 for synthetic data, "
                        "else 4")
    files.add_flags(s, batch_size=64, seed=0, device="auto")


def main(argv=None):
    files.run_command(get_parser(), argv)


if __name__ == "__main__":
    main()
