"""Data preparation and inspection: write the synthetic benchmark or a BBBC021 subset to disk, split
an .npz of real crops by whole sites, draw the benchmark's montages, print its effect table.

    python tools/prepare.py synthetic --kind bbbc021 --n-per-class 200 --size 64 --out DIR
                                            # PNG folders + truth.csv
    python tools/prepare.py synthetic --bench       # images/s per CPU core
    python tools/prepare.py prepare --bbbc021 ROOT --compounds "latrunculin B" --size 128 --out DIR
    python tools/prepare.py sites --data crops.npz --test B02_s1 B03_s4 --out DIR
    python tools/prepare.py montage --out docs/     # one PNG per compound, DMSO -> top dose
    python tools/prepare.py table     # compound -> parameters -> EC50 -> effect at the top dose
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: data.py, files.py
import files  # noqa: E402
from data import (BBBC021_CSV, COMPOUNDS, read_raw, synthetic_classes,  # noqa: E402
                  synthetic_dataset)
from evaluation.report import md_table  # noqa: E402


def cmd_synthetic(args):
    if args.bench:  # the per-core number: one thread, numpy's FFT is single-threaded already
        torch.set_num_threads(1)
        synthetic_dataset(args.kind, 2, args.size, args.seed)  # warm-up: texture banks
        t, cpu = time.perf_counter(), time.process_time()
        ds = synthetic_dataset(args.kind, args.n_per_class, args.size, args.seed, args.compounds)
        t, cpu = time.perf_counter() - t, time.process_time() - cpu
        print(f"{len(ds)} synthetic {args.kind} images of {args.size}x{args.size} in {t:.2f} s "
              f"wall, {cpu:.2f} s CPU (one thread): {len(ds) / cpu:.0f} images/s per CPU core")
        return
    if not args.out:
        raise ValueError("pass --out DIR to write the images (or --bench to time the generator)")
    classes = synthetic_classes(args.kind, args.compounds)[0]
    out = files.out_folder(args.out, writes=[*classes, "truth.csv"], overwrite=args.overwrite)
    ds = synthetic_dataset(args.kind, args.n_per_class, args.size, args.seed, args.compounds)
    rows, seen = [], {}
    for x, label, t in zip(files.to_uint8(ds.images), ds.labels.tolist(), ds.truth):
        name = ds.classes[label]
        seen[name] = seen.get(name, -1) + 1
        path = Path(name) / f"{name}_{seen[name]:05d}.png"
        (out / name).mkdir(exist_ok=True)
        Image.fromarray(x).save(out / path)
        rows.append({"file": path.as_posix(), **{k: v for k, v in t.items() if np.ndim(v) == 0}})
    files.write_csv(out / "truth.csv", list(rows[0]), [list(r.values()) for r in rows])
    print(f"wrote {len(rows)} images in {len(ds.classes)} class folders and truth.csv to {out}")


def cmd_prepare(args):
    if not (Path(args.bbbc021) / BBBC021_CSV).is_file():
        raise ValueError(f"{args.bbbc021} has no {BBBC021_CSV}; pass the BBBC021 root folder")
    out = Path(args.out)  # a new or empty folder: the classes are known only after reading
    taken = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    out = files.out_folder(out, [args.bbbc021], taken, args.overwrite)
    raw, labels, classes, _ = read_raw(args.bbbc021, args.size, args.compounds, args.fit,
                                       args.crops_per_site, args.seed)
    for i, (x, label) in enumerate(zip(raw, labels)):
        (out / classes[label]).mkdir(exist_ok=True)
        # 16-bit, one page per channel
        pages = [Image.fromarray(c) for c in np.round(x * 65535).astype(np.uint16)]
        pages[0].save(out / classes[label] / f"{i:06d}.tif", save_all=True, append_images=pages[1:])
    print(f"wrote {len(raw)} 16-bit crops (actin, tubulin, DNA pages) "
          f"in {len(classes)} class folders to {out}")


def cmd_sites(args):
    """An .npz with a `site` array (the field of view of each crop) split into train.npz and
    test.npz by whole sites: neighbouring crops of one field share cells and background, so a random
    split flatters every method."""
    path = Path(args.data)
    if path.suffix.lower() != ".npz" or not path.is_file():
        raise ValueError(f"--data {args.data}: expected an .npz file with a site array")
    with np.load(path, allow_pickle=False) as f:
        if "site" not in f.files:
            raise ValueError(f"{path} has no site array (one name per crop): nothing to split by")
        arrays = {k: f[k] for k in f.files}
    n, sites = len(arrays["site"]), [str(s) for s in arrays["site"]]
    unknown = sorted(set(args.test) - set(sites))
    if unknown:
        raise ValueError(f"--test sites {unknown} are not in {path}; it has: "
                         f"{', '.join(sorted(set(sites)))}")
    test = np.isin(sites, args.test)
    labels = arrays["labels"]
    for part, keep in (("train", ~test), ("test", test)):
        missing = sorted(set(range(len(arrays["classes"]))) - set(labels[keep].tolist()))
        if missing:
            raise ValueError(f"the {part} split has no images of class(es) "
                             f"{[str(arrays['classes'][k]) for k in missing]}; choose --test "
                             "sites so that both splits hold every class")
    out = files.out_folder(args.out, [args.data], ["train.npz", "test.npz"], args.overwrite)
    for part, keep in (("train", ~test), ("test", test)):
        np.savez(out / f"{part}.npz", **{k: v[keep] if len(v) == n else v
                                          for k, v in arrays.items()})
        print(f"{part}.npz: {int(keep.sum())} crops of sites "
              f"{', '.join(sorted(set(np.asarray(sites)[keep])))}")


def cmd_montage(args):
    """One PNG per compound: columns DMSO -> highest dose,
    rows = the same field under every dose."""
    sets = [("bbbc021", c) for c in sorted(COMPOUNDS)] + [("golgi", "golgi")]
    out = files.out_folder(args.out, writes=[f"montage_{c}.png" for _, c in sets],
                           overwrite=args.overwrite)
    for kind, compound in sets:
        chosen = None if kind == "golgi" else [compound]
        ds = synthetic_dataset(kind, args.rows, args.size, args.seed, chosen, paired=True)
        tile, gap, head = args.size * args.scale, 4, 24
        font = ImageFont.load_default(size=min(14, tile // 13))
        im = Image.new("RGB", (len(ds.classes) * (tile + gap) - gap,
                               head + args.rows * (tile + gap) - gap), "white")
        draw = ImageDraw.Draw(im)
        for j, name in enumerate(ds.classes):
            c, conc = files.parse_class(name)
            label = c if c == "DMSO" else f"{c.replace('_', ' ')} {conc:g} uM"
            draw.text((j * (tile + gap) + 2, 4), label, fill="black", font=font)
            for r, i in enumerate((ds.labels == j).nonzero().flatten().tolist()):
                field = (Image.fromarray(files.to_uint8(ds.images[i]))
                         .resize((tile, tile), Image.NEAREST))
                im.paste(field, (j * (tile + gap), head + r * (tile + gap)))
        im.save(out / f"montage_{compound}.png")
        print(f"wrote {out / f'montage_{compound}.png'}")


def effect_table(n_per_class=200, seed=0):
    """Markdown tables measured on the truth of paired images: each compound's parameter shifts
    (in image SDs of DMSO) at the two lowest and the top dose, then what they do to measurable
    quantities."""
    ds, golgi = (synthetic_dataset(kind, n_per_class, 64, seed, paired=True)
                 for kind in ("bbbc021", "golgi"))
    mean = lambda c, k, d=ds: float(np.mean([t[k] for t in d.truth if t["class"] == c]))
    sd = lambda k: float(np.std([t[k] for t in ds.truth if t["class"] == "DMSO"]))
    rows = []
    for compound in sorted(COMPOUNDS):
        concs, ec50, h, effects = COMPOUNDS[compound]
        names = [files.class_name(compound, c) for c in concs]
        for p in effects:
            if p == "golgi_fragmentation":
                continue  # rendered in the Golgi set only
            shifts = [(mean(n, p) - mean("DMSO", p)) / sd(p)
                      for n in (names[0], names[1], names[-1])]
            rows.append([compound, f"{ec50:g}", f"{h:g}", p, f"{shifts[0]:+.2f}, {shifts[1]:+.2f}",
                         f"{shifts[2]:+.2f}", f"{mean('DMSO', p):.3g} → {mean(names[-1], p):.3g}"])
    lines = md_table(["compound", "EC50 (µM)", "Hill", "parameter", "shift at 2 lowest doses (SD)",
                      "shift at top dose (SD)", "DMSO → top dose"], rows)
    obs = ["n_cells", "cell_area_mean", "nucleus_area_mean",
           "actin_mean", "tubulin_mean", "dna_mean"]
    rows = [["DMSO", *(f"{mean('DMSO', k):.3g}" for k in obs)]]
    for compound in sorted(COMPOUNDS):
        top = files.class_name(compound, COMPOUNDS[compound][0][-1])
        rows.append([top, *(f"{mean(top, k):.3g} ({mean(top, k) / mean('DMSO', k) - 1:+.0%})"
                            for k in obs)])
    lines += ["", *md_table(["compound (top dose)", *obs], rows)]
    obs = ["n_cells", "golgi_fragments", "golgi_area_mean", "golgi_mean"]
    lines += ["", *md_table(["Golgi set", *obs], [[c, *(f"{mean(c, k, golgi):.3g}" for k in obs)]
                                                  for c in golgi.classes])]
    return "\n".join(lines)


def get_parser():
    p = files.Parser(prog="tools/prepare.py", description="phendiff datasets: synthetic "
                                "benchmark, BBBC021 preparation, montages")
    sub = p.add_subparsers(dest="cmd", required=True)
    syn = sub.add_parser("synthetic",
                         help="write the synthetic set as class folders of PNG + truth.csv")
    syn.add_argument("--kind", default="bbbc021", choices=["bbbc021", "golgi"])
    syn.add_argument("--bench", action="store_true",
                     help="time the generator on one CPU thread; writes nothing")
    pre = sub.add_parser("prepare",
                         help="cut a BBBC021 subset into class folders of 16-bit TIFF crops")
    pre.add_argument("--bbbc021", required=True, help=f"BBBC021 root (holds {BBBC021_CSV})")
    pre.add_argument("--fit", default="crop", choices=["crop", "resize"],
                     help="random crops, or the centre square resized")
    pre.add_argument("--crops-per-site", type=files.integer(1), default=4)
    mon = sub.add_parser("montage", help="one PNG per compound, DMSO -> top dose, the same fields "
                         "in every column")
    mon.add_argument("--out", default="docs")
    mon.add_argument("--rows", type=files.integer(1), default=4)
    mon.add_argument("--scale", type=files.integer(1), default=3,
                     help="nearest-neighbour upscaling for visibility")
    sit = sub.add_parser("sites", help="split an .npz into train.npz and test.npz by whole "
                         "sites (fields of view)")
    sit.add_argument("--data", required=True, help="an .npz with images, labels, classes, site")
    sit.add_argument("--test", nargs="+", required=True, help="the sites held out, e.g. B02_s1")
    sit.add_argument("--out", required=True, help="output folder (new or empty)")
    sit.set_defaults(run=cmd_sites)
    tab = sub.add_parser("table",
                         help="print the compound -> parameter -> EC50 -> top-dose effect table")
    for s in (syn, pre):
        s.add_argument("--out", required=s is pre, help="output folder (new or empty)")
        s.add_argument("--compounds", nargs="+",
                       help="keep DMSO and these compounds (default: all)")
    for s in (syn, pre, mon, sit):
        s.add_argument("--overwrite", action="store_true", help="replace earlier outputs in --out")
    for s, size in ((syn, 64), (pre, 128), (mon, 64)):
        s.add_argument("--size", type=files.integer(8), default=size)
    for s in (syn, tab):
        s.add_argument("--n-per-class", type=files.integer(1), default=200)
    for s in (syn, pre, mon, tab):
        s.add_argument("--seed", type=int, default=0)
    syn.set_defaults(run=cmd_synthetic)
    pre.set_defaults(run=cmd_prepare)
    mon.set_defaults(run=cmd_montage)
    tab.set_defaults(run=lambda args: print(effect_table(args.n_per_class, args.seed)))
    return p


def main(argv=None):
    files.run_command(get_parser(), argv)


if __name__ == "__main__":
    main()
