"""What several test files share: a command that must fail in one line, and images on disk."""
import contextlib
import io

import numpy as np
import pytest
from PIL import Image


def fails(main, argv):
    """A command (a script's main) that must stop at once: exit code 2 and one line on stderr, no
    traceback; returns that line."""
    err = io.StringIO()
    with pytest.raises(SystemExit) as e, contextlib.redirect_stderr(err):
        main(argv)
    msg = err.getvalue().strip()
    assert e.value.code == 2 and "\n" not in msg and "Traceback" not in msg, msg
    return msg


def write_images(folder, n=3, size=16, channels=3):
    """n random 8-bit images cell_<i>.png in folder."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        img = rng.integers(0, 255, (size, size, channels), dtype=np.uint8)
        Image.fromarray(img.squeeze()).save(folder / f"cell_{i}.png")
    return folder
