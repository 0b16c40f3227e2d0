"""DINO and its encoders: centering and sharpening, the cross-view loss, the EMA teacher, position
embeddings at other sizes, stochastic depth, training and exact resume of each architecture."""
import copy
import math

import pytest
import torch
import torch.nn.functional as F

from baselines.dino import DINO, DINOConfig, dino_loss, teacher_probs
from baselines.encoders import ARCHS, ViT, DropPath


def tiny(arch="vit", **kw):
    return DINOConfig.preset("tiny", arch=arch, in_channels=2, steps=10, **kw)


def test_centering_and_sharpening_match_a_hand_computation():
    t, center = torch.tensor([[1.0, 2.0, 3.0]]), torch.tensor([0.5, 0.5, 1.0])
    # (t - c) / 0.5 = (1, 3, 4)
    e = [math.exp(1), math.exp(3), math.exp(4)]
    expected = torch.tensor([[v / sum(e) for v in e]])
    torch.testing.assert_close(teacher_probs(t, center, 0.5), expected)


def test_cross_entropy_skips_same_view_pairs():
    """2 global (teacher) views and 4 student views (2 global + 2 local): 2 x 4 - 2 = 6 pairs."""
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 3, 5), torch.randn(2, 3, 5).softmax(-1)
    terms = [-(teacher[i] * F.log_softmax(student[j] / 0.1, -1)).sum(-1).mean()
             for i in range(2) for j in range(4) if i != j]
    assert len(terms) == 6
    loss = dino_loss(student, teacher, 0.1)
    torch.testing.assert_close(loss, torch.stack(terms).mean())
    with_same = [-(teacher[i] * F.log_softmax(student[i] / 0.1, -1)).sum(-1).mean()
                 for i in range(2)]
    assert abs(loss - torch.stack(terms + with_same).mean()) > 1e-3  # the test can tell


def test_teacher_gets_no_gradient_and_follows_the_scheduled_ema():
    torch.manual_seed(0)
    method, x = DINO(tiny()), torch.rand(6, 2, 16, 16) * 2 - 1
    step = 3
    teacher, student = copy.deepcopy(method.teacher), method.student
    torch.manual_seed(step)  # as train.py does before each step
    views = method.views(x)
    with torch.no_grad():
        batch_center = teacher(views[:2])[1].mean(0)
    torch.manual_seed(step)
    values = method.train_step((x, torch.zeros(6, dtype=torch.long)), step)

    m = 1 - (1 - 0.9) * (math.cos(math.pi * step / 10) + 1) / 2  # tiny: momentum 0.9 over 10
    assert values["momentum"] == pytest.approx(m)
    assert all(p.grad is None and not p.requires_grad for p in method.teacher.parameters())
    assert any(p.grad is not None for p in student.parameters())
    for after, before, s in zip(method.teacher.parameters(), teacher.parameters(),
                                student.parameters()):
        torch.testing.assert_close(after, m * before + (1 - m) * s)
    torch.testing.assert_close(method.center, 0.1 * batch_center)  # center momentum 0.9 from 0


def test_position_embedding_is_exact_at_the_training_size_and_resized_elsewhere():
    torch.manual_seed(0)
    vit = ViT(3, 16, 4, 32, 1, 2)  # a 4 x 4 grid of patches
    assert vit.position_embedding(4, 4) is vit.pos_embed
    assert vit.tokens(torch.rand(2, 3, 16, 16)).shape == (2, 17, 32)
    assert vit.tokens(torch.rand(2, 3, 24, 24)).shape == (2, 37, 32)
    resized = vit.position_embedding(6, 6)
    torch.testing.assert_close(resized[:, 0], vit.pos_embed[:, 0])  # the CLS entry is kept
    with torch.no_grad():  # bicubic weights sum to 1: a constant grid stays constant
        vit.pos_embed[:, 1:] = torch.arange(32.0)
    torch.testing.assert_close(vit.position_embedding(6, 6)[0, 1:],
                               torch.arange(32.0).expand(36, -1))


def test_drop_path_is_the_identity_in_eval_mode_and_keeps_the_mean_in_training():
    torch.manual_seed(0)
    drop, x = DropPath(0.5), torch.ones(4000, 3)
    assert torch.equal(drop.eval()(x), x)
    out = drop.train()(x)
    assert set(out.unique().tolist()) == {0.0, 2.0}  # whole samples dropped or scaled by 2
    assert (out[:, 0] == out[:, 1]).all()
    assert out.mean().item() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("arch", ARCHS)
def test_each_arch_trains_and_resumes_bitwise(arch):
    """Four steps, then a copy through state_dict; both continue identically."""
    torch.manual_seed(0)
    method = DINO(tiny(arch))
    x, y = torch.rand(8, 2, 16, 16) * 2 - 1, torch.zeros(8, dtype=torch.long)
    views = method.views(x)
    assert [v.shape[-1] for v in views] == [16, 16, 8, 8]  # 2 global, 2 local crops
    assert all(v.min() >= -1 and v.max() <= 1 for v in views)
    for step in range(4):
        torch.manual_seed(step)
        values = method.train_step((x, y), step)
        assert set(DINO.LOG) <= set(values) and all(map(math.isfinite, values.values()))
    assert 0 < values["teacher_entropy"] <= 1 and values["feature_std"] > 0
    copied = DINO(tiny(arch))
    copied.load_state_dict(copy.deepcopy(method.state_dict()))
    for step in (4, 5):
        runs = []
        for m in (method, copied):
            torch.manual_seed(step)
            runs.append(m.train_step((x, y), step))
        assert runs[0] == runs[1]
    for a, b in zip(method.state_dict()["teacher"].values(),
                    copied.state_dict()["teacher"].values()):
        assert torch.equal(a, b)
    features = method.encode(x)
    assert features.shape == (8, method.teacher.backbone.dim) and torch.isfinite(features).all()
    assert not hasattr(method, "translate")


@pytest.mark.parametrize("overrides, flag", [
    (dict(arch="mlp"), "--arch"),
    (dict(image_size=20), "--patch-size"),
    (dict(heads=3), "--heads"),
    (dict(local_scale=0.5), "--local-scale"),
    (dict(momentum=1.0), "--momentum"),
])
def test_bad_config_names_the_flag(overrides, flag):
    with pytest.raises(ValueError, match=flag):
        tiny(**overrides)
