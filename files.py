"""Images and folders on disk: how every command line reads, names and writes them, and fails.

One set of rules for the whole project:
- raw units: 8-bit / 255, 16-bit / 65535, floats as stored (`read_image`);
- class folders `root/<class>/<image>`, class names `<compound>_<concentration>uM` (`parse_class`);
- channel names actin, tubulin, dna for three channels, ch0, ch1, ... otherwise (`channel_names`);
- display: model images in [-1, 1] -> 8 bits, one channel as grey, two or more as RGB (`to_uint8`);
- an output never lands in or around an input, and never replaces an earlier result unless the
  user says --overwrite (`out_folder`);
- a mistake the user can fix ends in one line on stderr and exit code 2 (`run_command`).
"""
import argparse
import contextlib
import csv
import fcntl
import os
import re
import sys
import warnings
from pathlib import Path

import numpy as np
import torch
from PIL import Image

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
CHANNELS = ("actin", "tubulin", "dna")  # R, G, B of the paper's figures
GOLGI_CHANNELS = ("golgi", "tubulin", "dna")  # the Golgi set shows Golgi in red instead of actin


def channel_names(n):
    return list(CHANNELS) if n == 3 else [f"ch{i}" for i in range(n)]

# -----------------------------------------------------------------------------
# class names


def class_name(compound, concentration):
    return "DMSO" if compound == "DMSO" else f"{compound}_{concentration:g}uM"


def parse_class(name):
    """'latrunculin_b_0.1uM' -> ('latrunculin_b', 0.1); 'DMSO' -> ('DMSO', 0.0); else
    (name, None)."""
    if name.upper() == "DMSO":
        return "DMSO", 0.0
    m = re.fullmatch(r"(.+)_([0-9.]+(?:e-?[0-9]+)?)u[mM]", name)
    return (m[1], float(m[2])) if m else (name, None)


def class_key(name):
    """Sort order of classes: DMSO first, then compounds alphabetically, each by concentration."""
    compound, conc = parse_class(name)
    return compound != "DMSO", compound, conc or 0.0


def compounds(classes):
    """compound -> its class names by increasing concentration (DMSO and undosed names included)."""
    out = {}
    for name in classes:
        out.setdefault(parse_class(name)[0], []).append(name)
    return {k: sorted(v, key=class_key) for k, v in out.items()}


def safe_name(name):
    """Folder-safe compound name: 'Latrunculin B' -> 'latrunculin_b'; DMSO stays DMSO."""
    if name.upper() == "DMSO":
        return "DMSO"
    return re.sub(r"[^a-z0-9.+-]+", "_", name.lower()).strip("_")

# -----------------------------------------------------------------------------
# reading


def _unit(a):
    """Scale by the dtype's range: uint8 / 255, uint16 (and PIL's 32-bit 'I' mode) / 65535."""
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255
    if a.dtype.kind in "ui":
        return a.astype(np.float32) / 65535
    return a.astype(np.float32)


def _pil_array(im):
    if im.mode in ("P", "CMYK", "YCbCr", "1"):
        rgb = "RGBA" if "transparency" in im.info else "RGB"
        im = im.convert(rgb if im.mode != "1" else "L")
    a = np.asarray(im)
    return a.astype(a.dtype.newbyteorder("=")) if a.dtype.byteorder == ">" else a


def read_image(path):
    """One image file -> float32 (C, H, W) in raw units. PNG/TIFF 8- or 16-bit with 1-4 channels;
    multi-page TIFFs give one channel per page (how 16-bit multi-channel images are stored); .npy
    as (H, W), (H, W, C) or (C, H, W) with C <= 8."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            a = np.load(path, allow_pickle=False)
            a = np.moveaxis(a, 0, -1) if a.ndim == 3 and a.shape[0] <= 8 < a.shape[-1] else a
        else:
            with Image.open(path) as im:
                pages = []
                for i in range(getattr(im, "n_frames", 1)):
                    im.seek(i)
                    pages.append(_pil_array(im))
            a = pages[0] if len(pages) == 1 else np.stack(pages, -1)
    except Exception as e:  # PIL and numpy raise many types for a bad file; one message for all
        reason = " ".join(str(e).split()) or type(e).__name__
        raise ValueError(f"cannot read image {path}: {reason}; replace or remove the file") from e
    a = a[..., None] if a.ndim == 2 else a
    if a.ndim != 3 or a.shape[-1] > 8 or a.dtype.kind not in "uifb":
        raise ValueError(f"{path}: expected an (H, W) or (H, W, C) numeric image, "
                         f"got {a.dtype} {a.shape}")
    a = np.ascontiguousarray(np.moveaxis(_unit(a), -1, 0))
    check_finite(a, f"image {path}")
    return a


def check_finite(x, what):
    """A one-line error for NaN or infinite values in an array or tensor (inputs, outputs,
    features), before they spread into every result."""
    bad = int((~torch.isfinite(torch.as_tensor(x))).sum())
    if bad:
        raise ValueError(f"{what} has {bad} NaN or infinite value(s); fix or remove it")


def _images_in(folder, skipped):
    """Image files of one folder by name; other visible files go to `skipped`."""
    files = []
    for f in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        (files if f.suffix.lower() in IMAGE_SUFFIXES else skipped).append(f)
    return files


def _warn_skipped(skipped, where):
    if skipped:
        warnings.warn(f"skipped {len(skipped)} non-image file(s) in {where}, e.g. {skipped[0]}")


def list_images(paths):
    """Image files from a mix of files and folders (a folder's images by name)."""
    files, skipped = [], []
    for p in map(Path, paths):
        if not p.exists():
            raise ValueError(f"input {str(p)!r} does not exist")
        files += _images_in(p, skipped) if p.is_dir() else [p]
    _warn_skipped(skipped, ", ".join(map(str, paths)))
    if not files:
        raise ValueError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def class_folders(root):
    """root/<class>/<image> -> {class: [image files]}, classes in `class_key` order."""
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"folder {str(root)!r} does not exist")
    found, skipped = {}, []
    for d in sorted(p for p in root.iterdir() if p.is_dir()):
        images = _images_in(d, skipped)
        if images:
            found[d.name] = images
    _warn_skipped(skipped, root)
    if not found:
        raise ValueError(f"{root} has no class sub-folders with images; "
                         f"expected {root}/<class>/<image>.png|tif|npy")
    return {c: found[c] for c in sorted(found, key=class_key)}


def read_stack(files):
    """Image files of one size -> (N, C, H, W) float32 in raw units."""
    images = [read_image(f) for f in files]
    shapes = sorted({im.shape for im in images})
    if len(shapes) > 1:
        raise ValueError(f"images differ in shape ({shapes[:3]}, e.g. {files[0]}); "
                         "crop or resize them to one size")
    return np.stack(images)

# -----------------------------------------------------------------------------
# writing


def to_uint8(x):
    """Images in [-1, 1] (..., C, H, W), tensor or array -> uint8 (..., H, W, 1 or 3) for PNGs and
    figures: one channel stays grey, two get a zero blue channel, more than three keep the first
    three. Exact for images that came from 8-bit files."""
    x = x.detach().cpu().float().numpy() if torch.is_tensor(x) else np.asarray(x, np.float32)
    if x.shape[-3] == 2:
        x = np.concatenate([x, -np.ones_like(x[..., :1, :, :])], -3)
    x = x if x.shape[-3] == 1 else x[..., :3, :, :]
    return np.moveaxis(np.clip(np.round((x + 1) / 2 * 255), 0, 255).astype(np.uint8), -3, -1)


def save_png(img, path):
    """(H, W, 1 or 3) uint8 -> a grey or RGB PNG."""
    Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(path)


def out_folder(out, inputs=(), writes=(), overwrite=False):
    """Check that writing `writes` (names inside `out`) loses nothing, then create `out`.

    `out` may not lie inside an input folder nor hold one (a dataset root), no write may land on an
    input file, and a name that exists already (an earlier result) is replaced only with overwrite.
    Called before any compute, so a mistake costs nothing."""
    out = Path(out).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; choose a folder")
    for p in (Path(p).resolve() for p in inputs):
        if p.is_dir() and (out == p or p in out.parents or out in p.parents):
            raise ValueError(f"--out {out} overlaps the input folder {p}; outputs never mix with "
                             "inputs: choose a folder outside it")
        if any((out / w).resolve() == p for w in writes):
            raise ValueError(f"--out {out} would overwrite the input {p}; choose another folder")
    taken = [w for w in writes if (out / w).exists()]
    if taken and not overwrite:
        more = f" and {len(taken) - 1} more" if len(taken) > 1 else ""
        raise ValueError(f"--out {out} already holds {taken[0]}{more} from an earlier run; "
                         "choose a new folder or pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def locked(folder):
    """Hold an exclusive lock on folder/.lock while the block runs (a crash releases it with the
    process), so two runs never write into one folder; the second gets the first's pid."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "?"
            raise ValueError(f"{folder} is in use by another process (pid {holder}); wait for it "
                             "to finish or choose another --out") from None
        f.truncate(0)
        f.write(str(os.getpid()))
        f.flush()
        yield

# -----------------------------------------------------------------------------
# command lines: one habit in every script


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line, "prog: error: ...", with exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def integer(minimum):
    """An argparse type: an integer >= minimum (argparse puts the flag's name in the error)."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def real(text):
    """An argparse type: a finite number (NaN and infinity are refused)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not np.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    return value


def device(text):
    """An argparse type: cpu, cuda, cuda:N or auto (cuda when a GPU is visible), refused when that
    GPU is not visible."""
    if text == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"unknown device {text!r}; use cpu or cuda") from None
    if dev.type == "cuda" and (not torch.cuda.is_available()
                               or (dev.index or 0) >= torch.cuda.device_count()):
        raise argparse.ArgumentTypeError(f"{text}: no such CUDA device is visible; use cpu")
    if dev.type not in ("cpu", "cuda"):
        raise argparse.ArgumentTypeError(f"unsupported device {text!r}; use cpu or cuda")
    return text


REQUIRED = object()  # add_flags: a flag the user must give
# the flags several command lines share, each defined here once; a command picks them, with its own
# defaults, through add_flags. The method options are the inference choices of method.OPTIONS.
FLAGS = {
    "ckpt": dict(help="a checkpoint, or a run folder holding last.pt, of any method"),
    "data": dict(help="synthetic | synthetic-golgi | a class folder | an .npz | a BBBC021 root"),
    "out": dict(help="output folder"),
    "overwrite": dict(action="store_true", help="replace earlier outputs in --out"),
    "seed": dict(type=int, help="random seed"),
    "device": dict(type=device, help="cpu, cuda, cuda:N or auto (cuda when a GPU is visible)"),
    "batch_size": dict(type=integer(1), help="images per batch (train.py: per process and step; "
                                             "cyclegan: of each of its two classes)"),
    "workers": dict(type=integer(1), help="processes for cell features"),
    "ddim_steps": dict(type=integer(1), help="phendiff: DDIM steps each way"),
    "fixed_point_iters": dict(type=integer(0),
                              help="phendiff: exact inversion, k fixed-point iterations per step "
                                   "(0: eq. 6 as in the paper)"),
    "guidance": dict(type=real, help="phendiff: classifier-free guidance scale w (0: none)"),
    "projection": dict(choices=["w", "w+"], help="stylegan: PhenEx/W or PhenEx/W+ (w)"),
    "projection_steps": dict(type=integer(1), help="stylegan: projection steps per image"),
    # checked by method.Precision, which holds the choices
    "precision": dict(help="auto | fp32 | bf16: the networks in bf16 autocast or fp32; auto: bf16 "
                           "on GPUs and on CPUs with bf16 instructions, for the methods that gain "
                           "from it (docs/training.md)"),
}


def add_flags(parser, **defaults):
    """Add the shared flags named (FLAGS), each with the given default; REQUIRED makes the user
    give it, None leaves it unset (e.g. a method option that defaults to the method's own)."""
    for name, default in defaults.items():
        kw = dict(FLAGS[name])
        if default is REQUIRED:
            kw["required"] = True
        elif kw.get("action") != "store_true":
            kw["default"] = default
            if default is not None:
                kw["help"] += " (%(default)s)"
        parser.add_argument("--" + name.replace("_", "-"), **kw)


def write_csv(path, header, rows):
    """A CSV file of rows, floats to 6 significant digits."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows([[f"{v:.6g}" if isinstance(v, float) else v for v in r] for r in rows])
    print(f"wrote {path}")


def run_command(parser, argv=None):
    """Parse argv and run the chosen sub-command (set_defaults(run=...)). The user's mistakes
    (ValueError, OSError: a bad flag, file or folder) end in one line on stderr and exit code 2;
    a bug keeps its traceback."""
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # what the user typed, for reports
    try:
        return args.run(args)
    except (ValueError, OSError) as e:
        parser.exit(2, f"{parser.prog} {args.cmd}: error: {e}\n")
