"""Datasets for PhenDiff: a synthetic cell-painting benchmark with known dose-responses
(rendered by benchmark/synthetic.py), and loaders for real microscopy (class folders, .npz
arrays, the BBBC021 image set).

Every source becomes an ImageDataset: images float32 (N, C, H, W) in [-1, 1], labels, class
names, channel names and the intensity normalisation that maps raw units to [-1, 1] (it goes
into checkpoints so translation can map new images the same way and back).
Channel order of 3-channel cell images: R = actin, G = tubulin, B = DNA (Golgi set: R = Golgi).
Commands that write datasets to disk, split them by site or draw them: tools/prepare.py.
"""
import csv
from pathlib import Path

import numpy as np
import torch

import files
from benchmark import synthetic
# PARAMS is unused here: it is re-exported as data.PARAMS for callers
from benchmark.synthetic import COMPOUNDS, GOLGI_DOSE, PARAMS, dose_shift  # noqa: F401

UNIT_NORM = {"low": [0.0, 0.0, 0.0], "high": [1.0, 1.0, 1.0]}

# -----------------------------------------------------------------------------
# Conditions: the chosen compounds (class names and their rules are files.py's)


def _chosen(compounds, available, where=""):
    """Safe names of the chosen compounds plus DMSO (the control is always kept),
    or None for all."""
    if compounds is None:
        return None
    unknown = [c for c in compounds if files.safe_name(c) not in map(files.safe_name, available)]
    if unknown:
        raise ValueError(f"unknown compound {unknown[0]!r}{where}; "
                         f"available: {', '.join(sorted(available))}")
    return {"DMSO", *map(files.safe_name, compounds)}

# -----------------------------------------------------------------------------
# Dataset, normalisation, augmentation


class ImageDataset(torch.utils.data.Dataset):
    """All images in memory as one tensor: map-style, so DistributedSampler splits it by index."""

    def __init__(self, images, labels, classes, channels, normalization, truth=None):
        self.images, self.labels = images, labels  # (N, C, H, W) float32 in [-1, 1], (N,) long
        self.classes, self.channels = list(classes), list(channels)
        self.normalization, self.truth = normalization, truth

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.images[i], self.labels[i]

    def select(self, classes):
        """The images of these classes only, relabelled in the given order
        (e.g. a CycleGAN pair)."""
        missing = [c for c in classes if c not in self.classes]
        if missing:
            raise ValueError(f"class {missing[0]!r} is not in the data; "
                             f"it has: {', '.join(self.classes)}")
        old = torch.tensor([self.classes.index(c) for c in classes])
        keep = (self.labels[:, None] == old).any(1)
        labels = (self.labels[keep, None] == old).float().argmax(1)
        truth = [t for t, k in zip(self.truth, keep) if k] if self.truth is not None else None
        return ImageDataset(self.images[keep], labels, classes, self.channels, self.normalization,
                            truth)


def _norm_arrays(x, norm):
    """low, high shaped (C, 1, 1) to broadcast over (..., C, H, W),
    as numpy or as a tensor like x."""
    lo, hi = (np.asarray(norm[k], np.float32).reshape(-1, 1, 1) for k in ("low", "high"))
    if torch.is_tensor(x):
        return torch.as_tensor(lo, device=x.device), torch.as_tensor(hi, device=x.device)
    return lo, hi


def normalize(raw, norm):
    """Raw units (..., C, H, W) -> [-1, 1], clipped: low percentile -> -1, high -> +1."""
    lo, hi = _norm_arrays(raw, norm)
    x = (raw - lo) / (hi - lo) * 2 - 1
    return x.clamp(-1, 1) if torch.is_tensor(x) else np.clip(x, -1, 1).astype(np.float32)


def denormalize(x, norm):
    """[-1, 1] -> raw units, for measuring translated images in the original intensity scale."""
    lo, hi = _norm_arrays(x, norm)
    return (x + 1) / 2 * (hi - lo) + lo


def percentiles(raw, low=0.1, high=99.9, max_values=2_000_000):
    """Per-channel percentile normalisation of the training set (raw (N, C, H, W)), subsampled."""
    c = raw.shape[1]
    flat = np.moveaxis(raw, 1, 0).reshape(c, -1)
    flat = flat[:, :: max(1, flat.shape[1] // max_values)]
    lo, hi = np.percentile(flat, low, axis=1), np.percentile(flat, high, axis=1)
    hi = np.maximum(hi, lo + 1e-6)  # a constant channel must not divide by zero
    return {"low": lo.astype(float).tolist(), "high": hi.astype(float).tolist()}


def augment(batch, generator=None):
    """Per-sample random flips and 90-degree rotations (the 8 symmetries of the square): cells
    have no preferred orientation; intensities are left alone (they carry the phenotype)."""
    square = batch.shape[-1] == batch.shape[-2]  # transposes only for square images
    g = torch.randint(0, 8 if square else 4, (len(batch),), generator=generator).to(batch.device)
    out = batch.clone()
    for k in range(8):
        idx = (g == k).nonzero().flatten()
        if len(idx):
            x = batch[idx].flip(-1) if k & 1 else batch[idx]
            x = x.flip(-2) if k & 2 else x
            out[idx] = x.transpose(-1, -2) if k & 4 else x
    return out

# -----------------------------------------------------------------------------
# The synthetic benchmark (ground truth and renderer in synthetic.py) as an ImageDataset


def synthetic_classes(kind="bbbc021", compounds=None):
    """(class names, (compound, concentration) per class) of a synthetic set, in class order."""
    if kind not in ("bbbc021", "golgi"):
        raise ValueError(f"unknown synthetic kind {kind!r}; choose bbbc021 or golgi")
    keep = _chosen(compounds, [GOLGI_DOSE[0]] if kind == "golgi" else COMPOUNDS)
    conds = [("DMSO", 0.0)] + ([GOLGI_DOSE] if kind == "golgi" else
                               [(c, x) for c in sorted(COMPOUNDS) for x in COMPOUNDS[c][0]])
    conds = [c for c in conds if keep is None or c[0] in keep]
    return [files.class_name(*c) for c in conds], conds


def synthetic_dataset(kind="bbbc021", n_per_class=200, image_size=64, seed=0, compounds=None,
                      paired=False):
    """The synthetic benchmark. Image i of a class comes from its own random stream
    (seed, class, i); paired=True gives every class the same streams, so image i of each class is
    the same field under another dose (ground-truth counterfactuals)."""
    classes, conds = synthetic_classes(kind, compounds)
    all_classes, golgi = synthetic_classes(kind)[0], kind == "golgi"
    images, labels, truth = [], [], []
    for label, (name, (compound, conc)) in enumerate(zip(classes, conds)):
        shift, stream = dose_shift(compound, conc), 0 if paired else all_classes.index(name)
        for start in range(0, n_per_class, 32):
            draws = [synthetic.draw(seed, stream, i, image_size, golgi)
                     for i in range(start, min(start + 32, n_per_class))]
            x, t, cells = synthetic.render(draws, shift, image_size, golgi)
            t = {k: v.tolist() for k, v in t.items()}
            truth += [{"class": name, "compound": compound, "concentration": conc,
                       **{k: v[b] for k, v in t.items()}, **c} for b, c in enumerate(cells)]
            images.append(x)
            labels += [label] * len(x)
    x = torch.from_numpy(np.concatenate(images)) * 2 - 1
    norm = {k: list(v) for k, v in UNIT_NORM.items()}  # a copy: callers may edit theirs
    return ImageDataset(x, torch.tensor(labels), classes,
                        files.GOLGI_CHANNELS if golgi else files.CHANNELS, norm, truth)

def synthetic_truth(kind="bbbc021", n_per_class=200, image_size=64, seed=0, compounds=None):
    """The ground-truth counterfactuals, (classes, N, C, H, W): truth[k, i] is field i rendered
    under class k, and truth[0] the control images of synthetic_dataset with the same arguments."""
    ds = synthetic_dataset(kind, n_per_class, image_size, seed, compounds, paired=True)
    return torch.stack([ds.images[ds.labels == k] for k in range(len(ds.classes))])

# -----------------------------------------------------------------------------
# Real data: read raw (N, C, H, W) arrays, then normalise. Raw units = dtype range scaled to [0, 1].

BBBC021_CSV = "BBBC021_v1_image.csv"
# ours -> BBBC021's column suffix
BBBC021_CHANNELS = {"actin": "Actin", "tubulin": "Tubulin", "dna": "DAPI"}
BBBC021_COLUMNS = ([f"Image_{k}_{c}" for k in ("FileName", "PathName")
                    for c in ("DAPI", "Tubulin", "Actin")]
                   + ["Image_Metadata_Plate_DAPI", "Image_Metadata_Well_DAPI", "Replicate",
                      "Image_Metadata_Compound", "Image_Metadata_Concentration"])
CHANNEL_ALIASES = {"actin": ("actin", "phalloidin"), "tubulin": ("tubulin",),
                   "dna": ("dna", "dapi", "hoechst")}


def fit_size(x, size, fit, name):
    """(N, C, H, W) -> (N, C, size, size). 'crop': centre crop (keeps the pixel scale, so cell sizes
    stay comparable); 'resize': centre square, then area-average or bilinear resize."""
    h, w = x.shape[-2:]
    if fit == "crop" and min(h, w) < size:
        raise ValueError(f"{name} is {h}x{w}, smaller than image_size {size}; "
                         "use fit='resize' (--fit resize) or a smaller size")
    if fit not in ("crop", "resize"):
        raise ValueError(f"unknown fit {fit!r}; choose crop or resize")
    m = size if fit == "crop" else min(h, w)
    x = x[..., (h - m) // 2:(h - m) // 2 + m, (w - m) // 2:(w - m) // 2 + m]
    if m != size:
        x = torch.from_numpy(np.ascontiguousarray(x))
        x = torch.nn.functional.interpolate(x, (size, size), mode="area") if m > size else \
            torch.nn.functional.interpolate(x, (size, size), mode="bilinear", align_corners=False)
        x = x.numpy()
    return x


def _read_folder(root, size, fit):
    found = files.class_folders(root)
    raw, labels, first = [], [], None
    for label, (c, images) in enumerate(found.items()):
        for f in images:
            x = files.read_image(f)
            first = first or (f, len(x))
            if len(x) != first[1]:
                raise ValueError(f"{f} has {len(x)} channel(s) but {first[0]} has {first[1]}; "
                                 "convert all images to the same channels")
            raw.append(fit_size(x[None], size, fit, f))
            labels.append(label)
    return np.concatenate(raw), np.array(labels), list(found), files.channel_names(first[1])


def _read_npz(path, size, fit):
    with np.load(path, allow_pickle=False) as f:
        missing = [k for k in ("images", "labels", "classes") if k not in f.files]
        if missing:
            raise ValueError(f"{path} lacks array(s) {', '.join(missing)}; "
                             "expected images (N, H, W, C), labels (N,), classes (K,)")
        images, labels, classes = (f["images"], f["labels"].astype(np.int64),
                                   [str(c) for c in f["classes"]])
        channels = [str(c) for c in f["channels"]] if "channels" in f.files else None
    if labels.shape != images.shape[:1] or labels.min() < 0 or labels.max() >= len(classes):
        raise ValueError(f"{path}: labels must be (N,) indices into the {len(classes)} classes")
    files.check_finite(images, f"the images of {path}")
    raw = fit_size(np.moveaxis(files._unit(images if images.ndim == 4 else images[..., None]),
                               -1, 1), size, fit, path)
    roles = [next((k for k, names in CHANNEL_ALIASES.items()
                   if any(n in c.lower() for n in names)), c)
             for c in channels or []]
    cell_painting = files.CHANNELS
    if set(cell_painting) <= set(roles):  # recognised: reorder to R = actin, G = tubulin, B = DNA
        perm = ([roles.index(c) for c in cell_painting]
                + [i for i, r in enumerate(roles) if r not in cell_painting])
        raw, channels = raw[:, perm], [roles[i] for i in perm]
    return raw, labels, classes, channels or files.channel_names(raw.shape[1])


def _read_bbbc021(root, size, fit, compounds, crops_per_site, seed):
    """BBBC021 fields of view via the official metadata: three 16-bit TIFFs per site, one class per
    compound-concentration, DMSO always included; crops_per_site random crops (fit='crop') or the
    centre square resized (fit='resize')."""
    path = root / BBBC021_CSV
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in BBBC021_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path} lacks column(s) {', '.join(missing)}; "
                             "expected the official BBBC021_v1_image.csv header")
        rows = list(reader)
    keep = _chosen(compounds, {r["Image_Metadata_Compound"] for r in rows}, f" in {path}")
    rows = [r for r in rows
            if keep is None or files.safe_name(r["Image_Metadata_Compound"]) in keep]
    names = [files.class_name(files.safe_name(r["Image_Metadata_Compound"]),
                              float(r["Image_Metadata_Concentration"] or 0))
             for r in rows]
    classes = sorted(set(names), key=files.class_key)
    rng, raw, labels = np.random.default_rng(seed), [], []
    for r, name in zip(rows, names):
        x = np.concatenate([files.read_image(root / r[f"Image_PathName_{c}"]
                                             / r[f"Image_FileName_{c}"])[:1]
                            for c in BBBC021_CHANNELS.values()])
        h, w = x.shape[1:]
        if fit == "crop" and min(h, w) >= size:
            ys, xs = (rng.integers(0, h - size + 1, crops_per_site),
                      rng.integers(0, w - size + 1, crops_per_site))
            x = np.stack([x[:, i:i + size, j:j + size] for i, j in zip(ys, xs)])
        else:
            x = fit_size(x[None], size, fit,
                         root / r["Image_PathName_DAPI"] / r["Image_FileName_DAPI"])
        raw.append(x)
        labels += [classes.index(name)] * len(x)
    return np.concatenate(raw), np.array(labels), classes, list(files.CHANNELS)


def _select(data, compounds, source):
    """Keep DMSO and the chosen compounds' classes of (raw, labels, classes, channels)."""
    raw, labels, classes, channels = data
    chosen = _chosen(compounds, {files.parse_class(c)[0] for c in classes} - {"DMSO"},
                     f" in {source}")
    if chosen is None:
        return data
    keep = [i for i, c in enumerate(classes) if files.parse_class(c)[0] in chosen]
    mask = np.isin(labels, keep)
    return raw[mask], np.searchsorted(keep, labels[mask]), [classes[i] for i in keep], channels


def read_raw(source, image_size=64, compounds=None, fit="crop", crops_per_site=4, seed=0):
    """A real-data source -> (raw (N, C, H, W) float32, labels (N,), classes, channels)."""
    path = Path(source)
    if not path.exists():
        raise ValueError(f"data source {source!r} does not exist; pass synthetic, synthetic-golgi, "
                         "a class folder, an .npz file or a BBBC021 root")
    if (path / BBBC021_CSV).is_file():
        return _read_bbbc021(path, image_size, fit, compounds, crops_per_site, seed)
    if path.is_dir():
        return _select(_read_folder(path, image_size, fit), compounds, path)
    if path.suffix.lower() == ".npz":
        return _select(_read_npz(path, image_size, fit), compounds, path)
    raise ValueError(f"unsupported data source {source!r}; expected a class folder, an .npz file "
                     f"or a folder with {BBBC021_CSV}")


def load_dataset(source, image_size=64, kind="bbbc021", n_per_class=200, seed=0, compounds=None,
                 fit="crop", crops_per_site=4, normalization=None):
    """Every --data flag goes through here. source: 'synthetic' | 'synthetic-golgi' | class folder |
    .npz | BBBC021 root. Real data are normalised by per-channel 0.1/99.9 percentiles of this set,
    unless a normalisation (e.g. from a checkpoint) is given."""
    if source in ("synthetic", "synthetic-golgi"):
        kind = "golgi" if source == "synthetic-golgi" else kind
        return synthetic_dataset(kind, n_per_class, image_size, seed, compounds)
    raw, labels, classes, channels = read_raw(source, image_size, compounds, fit,
                                              crops_per_site, seed)
    norm = normalization or percentiles(raw)
    x = torch.from_numpy(normalize(raw, norm))
    return ImageDataset(x, torch.from_numpy(labels).long(), classes, channels, norm)
