"""What every lab shares: the repository on sys.path (so `import ddim` works from
`python course/lab1_closed_form.py`), the labs' two flags, and the Blank that an unwritten function
raises, which ends a run in one line instead of a traceback."""
import argparse
import sys
from pathlib import Path

COURSE = Path(__file__).resolve().parent
ROOT = COURSE.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

LABS = {"lab1": "lab1_closed_form", "lab2": "lab2_training", "lab3": "lab3_inversion",
        "lab4": "lab4_translation"}


class Blank(NotImplementedError):
    """A function still to be written: `raise Blank("ddim_step (eq. 5)")`."""


def blank_line(lab, err):
    """The one line a run prints when it reaches an unwritten function."""
    return (f"{lab}: {err} is not written yet; write it in course/{LABS[lab]}.py and grade it "
            f"with python course/check.py {lab}")


def parser(lab):
    p = argparse.ArgumentParser(prog=f"course/{LABS[lab]}.py",
                                description=f"{lab} of the course (course/README.md)")
    p.add_argument("--out", default=str(ROOT / "runs" / "course" / lab),
                   help="folder for the lab's figures (%(default)s)")
    p.add_argument("--solution", action="store_true",
                   help="run with the reference answers of course/solutions/ instead of yours")
    return p


def start(lab, argv=None):
    """The lab's flags, its output folder, and a first Blank that stops the script in one line
    (exit code 1). In a notebook the kernel's own arguments are ignored and a Blank shows as
    usual."""
    notebook = "ipykernel" in sys.modules
    p = parser(lab)
    args = p.parse_known_args(argv)[0] if notebook else p.parse_args(argv)
    args.out = Path(args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    if not notebook:
        def stop_at_blank(kind, err, tb):
            if issubclass(kind, Blank):
                print(blank_line(lab, err), file=sys.stderr)
            else:
                sys.__excepthook__(kind, err, tb)
        sys.excepthook = stop_at_blank  # the interpreter then exits with code 1
    print(f"{lab}{' (solutions)' if args.solution else ''}: figures go to {args.out}")
    return args
