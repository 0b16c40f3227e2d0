"""files.py, the on-disk layout: the output guard, display conversion, class folders, and the import
floors of the README's layout table (who may import whom)."""
import ast
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


# The README's import floors: each module may import the project modules listed, and nothing else of
# the project. ddim.py and model.py import only torch.
FLOORS = {
    "ddim": set(), "model": set(), "files": set(), "synthetic": set(), "inception": set(),
    "features": {"files"}, "plots": {"files"}, "data": {"files", "synthetic"},
    "method": set(),  # the registry imports methods by name, at run time
    "phendiff": {"data", "ddim", "demo", "files", "method", "model", "plots"},
    "baselines.gan": {"method"}, "baselines.stargan": {"method", "baselines.gan"},
    "baselines.cyclegan": {"files", "method", "baselines.gan"},
    "baselines.stylegan": {"method", "baselines", "baselines.gan"}, "baselines.phenex": set(),
    "baselines.encoders": {"baselines.stylegan", "data"}, "baselines.dino": {"method", "baselines"},
    "baselines.ganformer": {"method", "baselines"},
    "baselines.dsae": {"method", "baselines", "baselines.autoencoders"},
    "baselines.autoencoders": {"method", "baselines.gan"},
    "baselines.alae": {"method", "baselines", "baselines.autoencoders", "baselines.gan",
                       "baselines.stylegan"},
    "representation": {"features", "files", "method", "synthetic"},
    "eval": {"data", "features", "files", "inception", "method", "plots", "representation",
             "reproduce"},  # reproduce: imported inside get_parser (it builds on eval)
    "reproduce": {"baselines", "data", "demo", "eval", "files", "method", "plots"},
    "demo": {"data", "eval", "files", "plots"},
    "train": {"data", "eval", "files", "method", "plots"},
}


def project_imports(path):
    project = set(FLOORS) | {"baselines"}
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
        found |= {n for n in names if n in project or n.split(".")[0] in project}
    return found


@pytest.mark.parametrize("module", sorted(FLOORS))
def test_import_floors(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert project_imports(path) <= FLOORS[module], (module, project_imports(path) - FLOORS[module])


def test_ddim_and_model_import_only_torch():
    for name in ("ddim.py", "model.py"):
        tree = ast.parse((ROOT / name).read_text())
        tops = {(a.name if isinstance(n, ast.Import) else n.module).split(".")[0]
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))
                for a in (n.names if isinstance(n, ast.Import) else [n])}
        assert tops <= {"torch", "math", "argparse", "dataclasses", "sys", "time"}, (name, tops)
