"""files.py, the on-disk layout: the output guard, display conversion, class folders, and the import
floors of the README's layout table (who may import whom)."""
import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import files

ROOT = Path(__file__).resolve().parent.parent


def test_out_folder_never_mixes_with_inputs(tmp_path):
    data = tmp_path / "data"
    (data / "DMSO").mkdir(parents=True)
    (data / "DMSO" / "a.png").write_bytes(b"x")
    # the input, inside it, its dataset root
    for out in (data / "DMSO", data / "DMSO" / "sub", data):
        with pytest.raises(ValueError, match="overlaps the input folder") as e:
            files.out_folder(out, [data / "DMSO"], ["DMSO"])
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="would overwrite the input"):
        files.out_folder(data / "DMSO", [data / "DMSO" / "a.png"], ["a.png"], overwrite=True)
    with pytest.raises(ValueError, match="is a file"):
        files.out_folder(data / "DMSO" / "a.png")
    assert files.out_folder(tmp_path / "new" / "deep", [data / "DMSO"], ["x.csv"]).is_dir()


def test_out_folder_keeps_earlier_results_unless_overwrite(tmp_path):
    (tmp_path / "grid.png").write_bytes(b"earlier")
    (tmp_path / "files.txt").write_text("earlier")
    with pytest.raises(ValueError, match="already holds files.txt and 1 more.*--overwrite"):
        files.out_folder(tmp_path, writes=["files.txt", "grid.png", "DMSO.npy"])
    files.out_folder(tmp_path, writes=["DMSO", "DMSO.npy"])  # other names: fine, nothing replaced
    files.out_folder(tmp_path, writes=["grid.png"], overwrite=True)
    assert (tmp_path / "grid.png").read_bytes() == b"earlier"  # the guard itself never deletes


@pytest.mark.parametrize("channels, shape", [(1, (4, 5, 1)), (2, (4, 5, 3)), (3, (4, 5, 3)),
                                             (5, (4, 5, 3))])
def test_to_uint8_channel_rule(channels, shape):
    x = torch.linspace(-1, 1, channels * 20).view(channels, 4, 5)
    img = files.to_uint8(x)
    assert img.shape == shape and img.dtype == np.uint8
    np.testing.assert_array_equal(img[..., 0], np.round((x[0].numpy() + 1) / 2 * 255))
    if channels == 2:
        assert (img[..., 2] == 0).all()  # no blue
    k = np.arange(256, dtype=np.float32)  # 8-bit values survive [0, 255] -> [-1, 1] -> [0, 255]
    np.testing.assert_array_equal(
        files.to_uint8(torch.from_numpy(k / 255 * 2 - 1).view(1, 16, 16)).ravel(), k)


def test_class_folders_order_and_skips(tmp_path):
    for c in ("taxol_3uM", "DMSO", "taxol_0.1uM", "empty"):
        (tmp_path / c).mkdir()
    for c in ("taxol_3uM", "DMSO", "taxol_0.1uM"):
        Image.fromarray(np.zeros((4, 4), np.uint8)).save(tmp_path / c / "a.png")
    (tmp_path / "DMSO" / "notes.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1 non-image.*notes.txt"):
        found = files.class_folders(tmp_path)
    assert list(found) == ["DMSO", "taxol_0.1uM", "taxol_3uM"]  # DMSO first, then by dose; no empty
    assert files.compounds(list(found)) == {"DMSO": ["DMSO"], "taxol": ["taxol_0.1uM", "taxol_3uM"]}
    assert files.parse_class("latrunculin_b_1e-3uM") == ("latrunculin_b", 0.001)
    (tmp_path / "DMSO" / "notes.txt").unlink()
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(tmp_path / "DMSO" / "b.png")
    with pytest.raises(ValueError, match="differ in shape"):
        files.read_stack(files.list_images([tmp_path / "DMSO"]))


# The house (README "Layout"): who may import whom. Entry scripts on top, libraries below, no import
# circle, lazy imports included. A module maps to its folder's rule when it has none of its own.
ENTRY = {"phendiff", "train", "eval", "tools.prepare", "tools.gpu_bench"}
MAY_IMPORT = {
    "ddim": set(), "model": set(), "files": set(), "method": set(),  # the ground floor
    "benchmark": set(), "data": {"files", "benchmark"},
    "baselines": {"method", "files", "data", "baselines"},
    "evaluation": {"ddim", "model", "files", "method", "data", "benchmark", "baselines",
                   "evaluation"},
    # the method first, its command line after: read, draw and report through the floors below
    "phendiff": {"ddim", "files", "method", "model", "data", "evaluation"},
    "train": {"files", "method", "data", "evaluation"},
    "eval": {"files", "evaluation"},
    "tools.prepare": {"files", "data", "evaluation"},
    # the benchmarks: the networks and the DDIM loops, through the method interface
    "tools.bench": {"ddim", "method", "model"},
    "tools.gpu_bench": {"method", "model", "tools"},
}


def modules():
    """{dotted name: path} of every project module outside tests/ and course/."""
    return {".".join(p.relative_to(ROOT).with_suffix("").parts): p for p in ROOT.rglob("*.py")
            if p.relative_to(ROOT).parts[0] not in ("tests", "course")
            and p.name != "__init__.py" and not p.relative_to(ROOT).parts[0].startswith(".")}


def project_imports(path, names):
    """The project modules a file imports, anywhere in it (lazy imports count): `from evaluation
    import plots` and `import evaluation.plots` -> {"evaluation.plots"}."""
    tops = {n.split(".")[0] for n in names}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in names
                        else node.module for a in node.names]
        else:
            continue
        found |= {n for n in imported if n.split(".")[0] in tops}
    return found


def test_the_house_has_floors_and_no_circles():
    mods = modules()
    graph = {m: project_imports(p, mods) for m, p in mods.items()}
    for m, uses in graph.items():
        allowed = MAY_IMPORT.get(m, MAY_IMPORT.get(m.split(".")[0]))
        assert allowed is not None, f"{m}: no rule in MAY_IMPORT"
        tops = {u.split(".")[0] for u in uses} - {m.split(".")[0]}
        assert tops <= allowed, (m, tops - allowed)
        assert not uses & ENTRY - {m}, f"{m} imports an entry script: {uses & ENTRY}"
    # no circle: every module can be ordered below what it imports
    done, stack = set(), []

    def visit(m):
        assert m not in stack, f"import circle: {' -> '.join(stack + [m])}"
        if m in done:
            return
        stack.append(m)
        for u in graph.get(m, ()):
            visit(u)
        stack.pop()
        done.add(m)
    for m in graph:
        visit(m)


def test_a_reader_sees_the_paper_at_the_root():
    """At most 8 modules at the root, none over ~550 lines, no function over ~90 lines."""
    root = sorted(p.name for p in ROOT.glob("*.py"))
    assert len(root) <= 8, root
    for m, path in modules().items():
        text = path.read_text()
        assert text.count("\n") <= 560, (m, text.count("\n"))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                assert node.end_lineno - node.lineno < 92, (m, node.name)


def test_import_phendiff_loads_neither_matplotlib_nor_scipy():
    code = ("import sys, phendiff; heavy = [m for m in sys.modules if m.split('.')[0] in "
            "('matplotlib', 'scipy', 'evaluation', 'data')]; print(heavy); assert not heavy")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_ddim_and_model_import_only_torch():
    for name in ("ddim.py", "model.py"):
        tree = ast.parse((ROOT / name).read_text())
        tops = {(a.name if isinstance(n, ast.Import) else n.module).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
        assert tops <= {"torch", "math", "argparse", "dataclasses", "sys", "time"}, (name, tops)
