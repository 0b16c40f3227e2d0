"""What several test files share: a command that must fail in one line, images on disk, and
the bit-for-bit comparison of two saved states."""
import contextlib
import io

import numpy as np
import pytest
import torch
from PIL import Image


def fails(main, argv):
    """A command (a script's main) that must stop: exit code 2 and one line "<prog>: error: ..." on
    stderr, no traceback; returns that line. Progress bars may come first (their redraws start
    with a carriage return; one left open shows before the error on its line)."""
    err = io.StringIO()
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(err):
        main(argv)
    raw = err.getvalue().split("\n")
    shown = [line.split("\r")[-1].strip() for line in raw]  # what a terminal keeps of each line
    errors = [line for line in shown if ": error: " in line]
    others = [s for s, r in zip(shown, raw) if s and ": error: " not in s and "\r" not in r]
    assert (e.value.code == 2 and len(errors) == 1 and not others
            and "Traceback" not in err.getvalue()), err.getvalue()
    return errors[0]


def write_images(folder, n=3, size=16, channels=3):
    """n random 8-bit images cell_<i>.png in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (size, size, channels), dtype=np.uint8)
        Image.fromarray(img.squeeze()).save(folder / f"cell_{i}.png")
    return folder


def same(a, b):
    """Two saved states (nested dicts, lists, tensors, numbers) equal bit for bit."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(u, v) for u, v in zip(a, b))
    return torch.equal(a, b) if torch.is_tensor(a) else a == b
