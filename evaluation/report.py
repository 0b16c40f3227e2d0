"""Reports: markdown tables, and the one writer every report goes through, which heads it with the
exact command, its seed and the machine, so that every number can be re-run. Then the sections the
demo and the reproduction share (reconstruction, input preservation, error against the truth) and
the reproduction's own.
"""
import datetime
import os
import platform

import numpy as np
import torch

import files


def md_table(header, rows):
    """Markdown lines of a table; cells as given (format them first)."""
    return ["| " + " | ".join(map(str, header)) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows)]


def pivot(rows, col, fmt, keys, labels=None, by="method"):
    """(header, rows) of a table of one value per (method, target) of rows [method, target, ...],
    formatted: a row per method and a column per target of keys (by="method"), or a row per
    target (by="target"); labels name the targets (default: the keys)."""
    labels = labels or keys
    table = {}
    for r in rows:
        table.setdefault(r[0], {})[r[1]] = fmt(r[col])
    if by == "method":
        return ["method", *labels], [[m, *(v.get(k, "") for k in keys)] for m, v in table.items()]
    return ["target", *table], [[label, *(v.get(k, "") for v in table.values())]
                                for k, label in zip(keys, labels)]


def dose_labels(classes):
    """Short column heads: "0.3 µM" for a compound's class, the name otherwise."""
    return [f"{c:g} µM" if isinstance(c, float) else name
            for name in classes for c in [files.parse_class(name)[1]]]


def machine():
    gpu = f"GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else "no GPU"
    return (f"{platform.machine()} CPU, {torch.get_num_threads()} threads of {os.cpu_count()} "
            f"cores, {gpu}; Python {platform.python_version()}, torch {torch.__version__}")


def write(path, title, command, seed, lines):
    """path (a report.md): the title, then how to make it again (command, seed, machine, date),
    then the lines."""
    head = [f"# {title}", "", f"Command: `{command}` (seed {seed}).", "",
            f"Machine: {machine()}; {datetime.date.today().isoformat()}.", ""]
    path.write_text("\n".join(head + lines) + "\n")

# -----------------------------------------------------------------------------
# sections the demo and the reproduction share


def table2_lines(rows, note=""):
    """Table 2 from scores.table2_rows."""
    return ["", "## Table 2: reconstruction of held-out images", "",
            "Each image translated to its own class. L2: per-image Euclidean distance in model "
            "units [-1, 1] (the paper's measure); MSE and PSNR on [0, 1]." + note, "",
            *md_table(["method", "variant", "n", "L2 (mean ± sd)", "MSE", "PSNR (dB)"],
                      [[m, v, n, f"{l2:.3f} ± {sd:.3f}", f"{mse:.2e}", f"{p:.1f}"]
                       for m, v, n, l2, sd, mse, p in rows])]


def preservation_lines(rows, top):
    """Does a translation keep its input? rows of scores.against_references with the inputs as
    references; the table at the target `top`, and the pixel share over all targets."""
    share = {}
    for r in rows:
        share.setdefault(r[0], []).append(r[4])
    return ["", "## Does a translation keep its input? (shuffled-input control)", "",
            f"Each translation to {top} against its own input and against another input (the "
            "next one), in pixels and in cell features (RMS over features scaled by their spread "
            "in real images); then the share of images closer to their own input, at that target "
            "and over all targets. A translator that ignores its input is no closer to its own.",
            "",
            *md_table(["method", "PSNR own / other (dB)", "closer (pixels)",
                       "feature dist own / other", "closer (features)",
                       "closer (pixels), all targets"],
                      [[m, f"{po:.1f} / {pt:.1f}", f"{pc:.0%}", f"{fo:.2f} / {ft:.2f}",
                        f"{fc:.0%}", f"{np.mean(share[m]):.0%}"]
                       for m, t, po, pt, pc, fo, ft, fc in rows if t == top])]


def truth_lines(rows, targets, by="method", labels=None):
    """Is it this cell's response? rows of scores.against_references with the truth as
    references (the same field rendered under the target class, named in targets); a table per
    measure, a row per method (by="method") or per target (by="target"), targets labelled by dose
    (default) or by labels."""
    labels = labels or dose_labels(targets)
    closer = [[r[0], r[1], f"{r[4]:.0%} / {r[7]:.0%}"] for r in rows]

    def table(rows, col, fmt):
        return md_table(*pivot(rows, col, fmt, targets, labels, by))
    return ["", "## Is it this cell's response? Error against the truth", "",
            "The synthetic benchmark renders the same fields under every dose, so each "
            "translation has a true answer: its own field at the target dose. PSNR of the "
            "translation to that truth (higher is better), then the distance of its cell features "
            "to the truth's (RMS over features scaled by their spread in real images; lower is "
            "better). `identity` (doing nothing) is the floor to beat; `ceiling`, where shown, is "
            "a regressor trained on paired fields (`eval.py ceiling`), which saw the answers: a "
            "reference, never a translator.", "",
            "Mean or sample: the regressor outputs the conditional mean of the answer, which is "
            "what minimises squared error. Which cells vanish at a high dose is not in the input, "
            "so a translator that draws a plausible answer instead of the average pays up to "
            "twice the unexplained variance, about 3 dB of PSNR, even when it is perfect. PSNR "
            "alone ranks samplers unfairly against blurry averages; the feature distance, which "
            "asks whether the cells look as they should, is the fairer axis for them.", "",
            "**PSNR to the own truth (dB)**", "", *table(rows, 2, "{:.1f}".format),
            "", "**feature distance to the own truth**", "", *table(rows, 5, "{:.2f}".format),
            "", "**closer to the own truth than to another field's truth (pixels / features)**: a "
            "sampler that ignores its input is not", "", *table(closer, 2, str)]

# -----------------------------------------------------------------------------
# the reproduction's report (evaluation/reproduce.py)


def reproduction(a, out, te, outputs, sec, recorded, paths, times, wall):
    """out/report.md of `eval.py reproduce`: how it was made, the methods, then a section per table
    and figure of both papers."""
    classes, targets = te.classes, te.classes[1:]
    n_rec = len(next(iter(outputs["identity"]["reconstructions"].values())))
    lines = [f"Preset `{a.preset}`. Wall time of the stages, summed over the invocations that ran "
             "them (a killed run resumes from the finished ones): "
             + ", ".join(f"{k} {v / 60:.1f} min" for k, v in times.items())
             + f"; in all {sum(times.values()) / 60:.0f} min (this invocation: {wall / 60:.1f} "
             "min).", "",
             f"Held-out data: {len(te)} images of {len(classes)} classes "
             + (f"(synthetic benchmark, seed {a.seed + 1}; the methods trained on seed {a.seed})"
                if a.synthetic else f"(`{a.test}`: sites held out from training)")
             + f"; {len(outputs['identity']['translations'][0])} {classes[0]} images are "
             f"translated to every class by each method; {n_rec} images of all classes are "
             "reconstructed. `identity` returns its input: the floor of every measure of change.",
             "", "## Methods", "",
             *md_table(["method", "checkpoint", "step", "translation"],
                       [[m, f"`{paths[m]}`", o["step"], o["describe"]]
                        for m, o in outputs.items() if m != "identity"])]
    if recorded:
        lines += ["", "Trained by these commands (`--work` holds the runs):", "", "```bash",
                  *recorded.values(), "```"]
    lines += summary_lines(sec, targets[-1])
    lines += table1_lines(a, sec, targets, len(classes))
    lines += table2_lines(sec["table2"], " The mean training image is the trivial "
                                         "reconstruction.")
    if "counterfactual" in sec:
        lines += [*truth_lines(sec["counterfactual"], targets), "", "![](counterfactual.png)",
                  *gains_lines(sec["gains"], targets)]
        if any(r[0] == "ceiling" for r in sec["counterfactual"]):
            lines += ["", "Each method between its floor and its ceiling: the share of the gap "
                      "from doing nothing to the paired regressor that it closes, in PSNR and in "
                      f"feature distance (doses where the two differ by less than {GAP[0]:g} dB "
                      f"or {GAP[1]:g} are left out: no gap to close; open triangles: far below "
                      "doing nothing, off the scale).", "", "![](counterfactual_gap.png)",
                      *floor_ceiling_lines(sec["gains"], targets[-1])]
    lines += preservation_lines(sec["preservation"], targets[-1])
    lines += fig4_lines(sec) + fig2b_lines(sec, classes)
    if (out / "fig2" / "representation.md").exists():
        lines += ["", "## The second paper's Fig. 2 and Fig. 3", "",
                  "Feature F1 against reconstruction for the methods that decode, with floors: "
                  "[fig2/representation.md](fig2/representation.md), ![](fig2/fig2.png)"]
    write(out / "report.md", f"Reproduction: {len(outputs) - 1} methods on {a.data}",
          f"python eval.py {' '.join(a.argv)}", a.seed, lines)


def summary_lines(sec, top):
    """One row per method: the headline of each section below."""
    rows = {}
    for space, m, _, _, _, d, _, _ in sec["table1"]:
        if space == "domain":
            rows.setdefault(m, {}).setdefault("fd", []).append(d)
    for m, v, _, _, _, _, p in sec["table2"]:
        rows.setdefault(m, {}).setdefault("psnr", p)  # the first variant (PhenDiff: plain eq. 6)
    for r in sec.get("counterfactual", []):
        if r[1] == top:
            rows.setdefault(r[0], {})["truth"] = f"{r[2]:.1f} dB / {r[5]:.2f}"
    for r in sec["preservation"]:
        if r[1] == top:
            rows[r[0]]["own"] = f"{r[4]:.0%}"
    for m, med, _, e, _ in sec["fig4"]:
        rows[m]["fig4"] = f"{med:.2f} / {e:.2f}" if sec["by_dose"] else f"{e:.2f}"
    header = ["method", "Table 1: domain FD, mean over targets", "Table 2: PSNR (dB)"]
    header += [f"truth at {top}: PSNR / feature distance"] if "counterfactual" in sec else []
    header += [f"closer to own input at {top}",
               "Fig. 4: median r / effect r at the top" if sec["by_dose"] else "effect r"]
    table = [[m, f"{np.mean(v['fd']):.2f}" if "fd" in v else "",
              f"{v['psnr']:.1f}" if "psnr" in v else "",
              *([v.get("truth", "")] if "counterfactual" in sec else []), v.get("own", ""),
              v.get("fig4", "")] for m, v in rows.items()]
    return ["", "## Summary", "", "Each column is the headline of a section below (lower FD and "
            "feature distance are better, higher PSNR, share and r).", "",
            *md_table(header, table)]


def table1_lines(a, sec, targets, n_classes):
    """Table 1's section: one table per feature space, a cell per target class."""
    d = sec["domain"]
    lines = ["", "## Table 1: Fréchet distance of translated vs real images, per target class",
             "",
             "Features of the domain encoder: a classifier of the training classes (StyleGAN2 "
             f"discriminator trunk, {d['dim']}-d pooled features, {d['steps']} steps), held fixed "
             "for every method; it tells the held-out images' classes apart "
             f"{d['accuracy']:.0%} of the time (chance {1 / n_classes:.0%}). Each cell: the "
             "distance of the translations to the held-out real images of the class, its upward "
             "bias on few images removed by a jackknife, and in brackets its 95 % interval "
             "(`evaluation/stats.py:frechet_interval`). Images per set: "
             + ", ".join(sorted({f"{r[3]} translated vs {r[4]} real" for r in sec["table1"]}))
             + f". `{sec['floor']}`: images of the class from the training set, what a perfect "
             "translation would score.", ""]
    for space in ("domain", "inception"):
        rows = [r for r in sec["table1"] if r[0] == space]
        if not rows:
            lines += ["InceptionV3 FID: not computed (give `--inception-weights`; the weights "
                      "cannot be downloaded here).", ""]
            continue
        cells = [[r[1], r[2], f"{r[5]:.2f} [{max(r[6], 0):.2f}, {r[7]:.2f}]"] for r in rows]
        header, table = pivot(cells, 2, str, targets, dose_labels(targets))
        means = {m: np.mean([r[5] for r in rows if r[1] == m]) for m, *_ in table}
        lines += [f"**{space}**", "", *md_table([*header, "mean"],
                                                 [[*r, f"{means[r[0]]:.2f}"] for r in table]), ""]
    return lines + table1_paired_lines(sec["table1_paired"], targets)


def verdict(low, high, below="below", above="above"):
    """What a paired interval of a difference says: below or above 0, or within noise."""
    return below if high < 0 else above if low > 0 else "within noise"


def table1_paired_lines(rows, targets):
    """The methods compared on the same inputs and references: an interval of the difference of
    their Fréchet distances per target, and what it says."""
    if not rows:
        return []
    first, lines = rows[0][1], []
    for space in dict.fromkeys(r[0] for r in rows):
        mine = [[r[2], r[3], f"{r[4]:+.2f} [{r[5]:+.2f}, {r[6]:+.2f}] "
                 f"{verdict(r[5], r[6], '**below**', 'above')}"] for r in rows if r[0] == space]
        counts = {m: [verdict(r[5], r[6]) for r in rows if r[0] == space and r[2] == m]
                  for m in dict.fromkeys(r[2] for r in rows)}
        lines += [f"**{space}: {first} against each method, paired** (the difference of their "
                  f"distances to the same real images, {first} minus the method, jackknife over "
                  "the shared inputs and the real images; **below**: its interval excludes 0, "
                  f"{first} is closer)", "",
                  *md_table(*pivot(mine, 2, str, targets, dose_labels(targets))), "",
                  "; ".join(f"{m}: below at {v.count('below')}, above at {v.count('above')}, "
                            f"within noise at {v.count('within noise')} of {len(v)}"
                            for m, v in counts.items()) + ".", ""]
    return lines


def fig4_lines(sec):
    by_dose = sec["by_dose"]
    return ["", "## Fig. 4: do translated features follow the real ones?", "",
            "Median Pearson r across doses between real and translated per-class feature means, "
            "over the features whose real means follow dose (|Spearman ρ| ≥ 0.8); effect r: "
            "Pearson r across features between the real effect (class mean − control mean) and "
            "the translated one (translations' mean − inputs' mean), features scaled by their "
            "spread, at the top class and averaged over classes.", "",
            *md_table(["method", *(["median r (dose-varying)", "features"] if by_dose else []),
                       "effect r (top)", "effect r (mean)"],
                      [[m, *([f"{r:.2f}", n] if by_dose else []), f"{e:.2f}", f"{em:.2f}"]
                       for m, r, n, e, em in sec["fig4"]]),
            *(["", "![](fig4.png)"] if by_dose else [])]


def fig2b_lines(sec, classes):
    if "fig2b" not in sec:
        return []
    return ["", f"## Fig. 2b: tests of the Golgi features (`{sec['golgi_feature']}` first)", "",
            f"Real {classes[0]} against real {classes[-1]}: Welch's t-test (other images). Each "
            f"method's translations of the {classes[0]} inputs to {classes[-1]} against those "
            "inputs: a paired t-test, translation i against its own input i (`identity`: "
            "untranslated, the test must find nothing; every difference is 0, so t, p and the "
            "effect are undefined: -). Holm's adjustment across the features of each row's "
            "source; effect: the standardised mean difference (paired: d_z) with its 95 % "
            "interval.", "",
            *md_table(["feature", "treated images", "test", "n", f"{classes[0]} mean",
                       "treated mean", "t", "p", "Holm p", "effect [95 %]"],
                      [[f, s, test, f"{n0} / {n1}", f"{ma:.2f}", f"{mb:.2f}",
                        *(["-"] * 4 if np.isnan(t) else
                          [f"{t:.2f}", f"{p:.2g}", f"{ph:.2g}",
                           f"{e:+.2f} [{lo:+.2f}, {hi:+.2f}]"])]
                       for f, s, test, n0, n1, ma, mb, t, p, ph, e, lo, hi in sec["fig2b"]]),
            "", "![](fig2b.png)"]


# the smallest gain of the ceiling over doing nothing worth reading a method against (PSNR in dB,
# feature distance): below it, a share of the gap is noise over noise
GAP = (0.5, 0.1)


def floor_ceiling_lines(rows, top):
    """Each method read against its floor (doing nothing) and its ceiling at the top dose: its
    gain with the paired interval, and the share of the ceiling's gain it reaches, on both axes."""
    gains = {(r[0], r[1]): r for r in rows}
    if ("ceiling", top) not in gains:
        return []
    c = gains["ceiling", top]
    label = dose_labels([top])[0]

    def read(g, lo, hi, ceiling, unit, fmt, min_gap):
        verdict = ("beats doing nothing" if lo > 0 else "worse than doing nothing" if hi < 0
                   else "within noise of doing nothing")
        share = ("" if g <= 0 else f", {g / ceiling:.0%} of the ceiling's gain"
                 if ceiling > min_gap else ", the ceiling gains too little here to compare")
        return f"{g:+{fmt}}{unit} [{lo:+{fmt}}, {hi:+{fmt}}], {verdict}{share}"
    lines = ["", f"**Read against floor and ceiling at {label}**: the ceiling gains "
             f"{c[2]:+.1f} dB [{c[3]:+.1f}, {c[4]:+.1f}] in PSNR and {c[5]:+.2f} [{c[6]:+.2f}, "
             f"{c[7]:+.2f}] in feature distance over doing nothing; each method's gain, paired "
             "over the same images:", ""]
    for m in dict.fromkeys(r[0] for r in rows):
        if m != "ceiling" and (m, top) in gains:
            g = gains[m, top]
            lines.append(f"- {m}: PSNR {read(*g[2:5], c[2], ' dB', '.1f', GAP[0])}; feature "
                         f"distance {read(*g[5:8], c[5], '', '.2f', GAP[1])}.")
    return lines


def gains_lines(rows, targets):
    """Each method's gain over doing nothing against the truth: paired intervals over images."""
    if not rows:
        return []
    labels = dose_labels(targets)
    cell = lambda g, lo, hi: f"{g:+.1f} [{lo:+.1f}, {hi:+.1f}]"  # noqa: E731
    psnr = [[r[0], r[1], cell(*r[2:5])] for r in rows]
    feat = [[r[0], r[1], f"{r[5]:+.2f} [{r[6]:+.2f}, {r[7]:+.2f}]"] for r in rows]
    return ["", "**gain over doing nothing, PSNR to the own truth (dB)**: the mean per-image "
            "difference with its 95 % paired t interval; an interval above 0 beats doing nothing",
            "", *md_table(*pivot(psnr, 2, str, targets, labels)),
            "", "**gain over doing nothing, feature distance to the own truth** (positive: closer "
            "than doing nothing)", "", *md_table(*pivot(feat, 2, str, targets, labels))]
