"""The counterfactual's ceiling (evaluation/ceiling.py): it starts at the floor (doing nothing),
learns from paired fields to beat it at a high dose, and its checkpoint round-trips."""
import pytest
import torch

import data
from evaluation import ceiling
from evaluation.scores import psnr


def test_starts_at_the_floor_learns_to_beat_it_and_reloads(tmp_path):
    config = ceiling.CeilingConfig(image_size=16, n_per_class=32, steps=60, batch_size=16,
                                   base_channels=16, lr=2e-3)
    truth = data.synthetic_truth("bbbc021", 8, 16, 7, ["latrunculin_b"])
    net0 = ceiling.build(config, len(truth))
    # zero-initialised output: the untrained regressor returns its input, i.e. doing nothing
    assert torch.equal(ceiling.translate(net0, truth[0], [8])[0], truth[0])
    net, classes, log = ceiling.train(config, progress=False)
    assert classes[0] == "DMSO" and classes[-1] == "latrunculin_b_10uM"
    answer = ceiling.translate(net, truth[0], [8])[0]
    # at 10 uM the regressor is closer to the truth than doing nothing, on held-out fields
    assert psnr(truth[8], answer).mean() > psnr(truth[8], truth[0]).mean() + 0.5
    ceiling.save(tmp_path / "c.pt", net, classes, config)
    again, classes2, config2 = ceiling.load(tmp_path / "c.pt")
    assert classes2 == classes and config2 == config
    torch.testing.assert_close(ceiling.translate(again, truth[0], [8]), answer[None])


def test_a_file_that_is_not_a_ceiling_is_refused(tmp_path):
    torch.save({"weights": {}}, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="not a ceiling checkpoint"):
        ceiling.load(tmp_path / "x.pt")
