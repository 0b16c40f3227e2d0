"""inception.py: the FID network's weight-file layout, strict reload, the FID-specific pooling, and
the message when the weights file is missing (nothing is downloaded)."""
import numpy as np
import pytest
import torch

import eval as E
from evaluation import inception as I
from evaluation import scores


def test_inception_state_dict_layout():
    net = I.InceptionV3()
    sd = net.state_dict()
    assert len(sd) == 566
    assert sum(isinstance(m, I.BasicConv2d) for m in net.modules()) == 94
    shapes = {"Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3), "Conv2d_4a_3x3.bn.running_var": (192,),
              "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
              "Mixed_6e.branch7x7dbl_5.conv.weight": (192, 192, 1, 7),
              "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
              "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
              "Mixed_7c.branch_pool.bn.num_batches_tracked": (), "fc.weight": (1008, 2048),
              "fc.bias": (1008,)}
    for k, shape in shapes.items():
        assert tuple(sd[k].shape) == shape, k
    assert all(m.eps == 0.001 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert not any(k.startswith("AuxLogits") for k in sd)


def test_inception_reloads_strictly_and_gives_2048_features(inception_weights):
    net, path = inception_weights
    loaded = I.load_inception(str(path))
    x = torch.rand(2, 3, 32, 32)
    f = scores.encode(x, loaded)
    assert f.shape == (2, 2048) and np.isfinite(f).all()
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in loaded.state_dict().items())
    # strict: missing keys fail
    torch.save({"fc.bias": torch.zeros(1008)}, path.parent / "broken.pth")
    with pytest.raises(ValueError, match="not the Inception weights file.*Missing key"):
        I.load_inception(str(path.parent / "broken.pth"))


def test_inception_fid_pooling():
    # Mixed_7c pools by max, the others average without the padding: a constant map stays constant
    # at the border under both, whereas torchvision's padded average would dim the corners to 4/9.
    x = torch.ones(1, 2, 5, 5)
    assert torch.allclose(I._avg_pool(x), x)
    assert I.InceptionV3().Mixed_7c.pool == "max" and I.InceptionV3().Mixed_7b.pool == "avg"


def test_missing_weights_message(monkeypatch, tmp_path, capsys):
    monkeypatch.delenv(I.WEIGHTS_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match=I.WEIGHTS_FILE) as err:
        I.load_inception()
    assert "pytorch-fid" in str(err.value) and "releases" in str(err.value)
    with pytest.raises(SystemExit) as ex:
        E.main(["fid", str(tmp_path), str(tmp_path)])
    assert ex.value.code == 2
    msg = capsys.readouterr().err.strip()
    assert I.WEIGHTS_FILE in msg and "\n" not in msg
