"""The fast paths against the plain fp32 path, each within a stated tolerance: bf16 autocast (the
training loss and gradients, a translation), channels_last, the rewritten UNet blocks against
their old form; the --precision choice and its refusals; the benchmarks at tiny scale on the CPU."""
import pytest
import torch
import torch.nn.functional as F

import ddim
import method as M
import phendiff
import train
from data import ImageDataset
from model import ResBlock, SelfAttention, Upsample, UNet, UNetConfig
from tests.helpers import fails, write_images
from tests.test_model import inputs, randomise_
from tools import bench, gpu_bench

BF16 = ("bf16", "fp32")  # what PhenDiff offers


def v_model():
    """A randomised 16x16 v-prediction UNet (the demo's output) of 3 classes, and its inputs."""
    torch.manual_seed(0)
    model = randomise_(UNet(UNetConfig.preset("tiny", num_classes=3, image_size=16,
                                              prediction="v")))
    x, _, y = inputs(model.config, batch=8)
    return model, x.clamp(-1, 1), y


def loss_and_grad(model, x, y, context):
    model.zero_grad()
    with context:
        loss = ddim.loss(model, x, y, ddim.make_schedule("linear"),
                         generator=torch.Generator().manual_seed(3))
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()])


def relative(a, b):
    return ((a - b).norm() / b.norm()).item()


def test_bf16_training_loss_and_gradients_stay_close_to_fp32():
    """eq. 4 under bf16 autocast, as train.py runs a step: the loss within 0.2 % (measured
    0.015 %), the gradient within 6 % of its norm (measured 2.3 %)."""
    model, x, y = v_model()
    loss32, grad32 = loss_and_grad(model, x, y, torch.autocast("cpu", enabled=False))
    loss16, grad16 = loss_and_grad(model, x, y, M.Precision("bf16", "cpu", BF16).autocast())
    assert abs(loss16 - loss32) / loss32 < 2e-3, (loss16, loss32)
    assert relative(grad16, grad32) < 0.06


def test_channels_last_training_gives_the_same_loss_and_gradients():
    """Other kernels, other summation orders: float32 noise (measured 2e-7 and 2e-6)."""
    model, x, y = v_model()
    loss, grad = loss_and_grad(model, x, y, torch.autocast("cpu", enabled=False))
    model = model.to(memory_format=torch.channels_last)
    loss_cl, grad_cl = loss_and_grad(model, x.contiguous(memory_format=torch.channels_last), y,
                                     torch.autocast("cpu", enabled=False))
    assert abs(loss_cl - loss) / loss < 1e-5 and relative(grad_cl, grad) < 1e-4


def test_bf16_translation_stays_close_to_fp32_and_returns_float32():
    """Inversion then sampling with the network under bf16 autocast and eq. 5-6 in float32: within
    4 % of the fp32 translation's norm (measured 0.9-1.2 % at 5 and 20 steps)."""
    model, x, y = v_model()
    alpha, out = ddim.make_schedule("linear"), {}
    for choice in BF16:
        net = M.Precision(choice, "cpu", BF16).wrap(model.eval())
        assert ddim.prediction(net) == "v" and net.null_label == 3  # seen through the wrapper
        out[choice] = ddim.sample(net, ddim.invert(net, x, y, alpha, 5), (y + 1) % 3, alpha, 5)
    assert out["bf16"].dtype == torch.float32
    assert relative(out["bf16"], out["fp32"]) < 0.04



def test_bf16_wrapper_casts_a_copy_once_and_computes_what_autocast_computes():
    """The wrapper's copy holds bf16 convolution and linear weights (cast once, not at every
    call): exactly the numbers of autocast over the float32 net, which stays float32."""
    model, x, y = v_model()
    t = torch.full((len(x),), 500)
    with torch.no_grad(), torch.autocast("cpu", torch.bfloat16):
        expected = model(x, t, y).float()
    net = M.Precision("bf16", "cpu", BF16).wrap(model)
    with torch.no_grad():
        assert torch.equal(net(x, t, y), expected)
    assert net.module.conv_in.weight.dtype == net.module.time_mlp[0].weight.dtype == torch.bfloat16
    assert net.module.norm_out.weight.dtype == model.conv_in.weight.dtype == torch.float32


def test_sampling_forward_in_place_equals_the_recorded_forward():
    """Where no gradient is recorded the SiLUs run in place on fresh normalisation outputs: the
    same numbers as the forward that training records."""
    model, x, y = v_model()
    t = torch.full((len(x),), 500)
    with torch.no_grad():
        sampled = model(x, t, y)
    assert torch.equal(sampled, model(x, t, y).detach())

@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_resblock_matches_its_old_form(layout):
    """The FiLM with norm2's affine folded in: norm2(h) * (1 + scale) + shift, as written before,
    to float32 rounding, forward and gradients; contiguous, the batch as one image with per-(B, C)
    weights in group_norm, and channels_last, two passes."""
    torch.manual_seed(0)
    block = randomise_(ResBlock(32, 64, 16, 0.0)).to(memory_format=layout)
    x = torch.randn(2, 32, 8, 8).contiguous(memory_format=layout).requires_grad_()
    emb = torch.randn(2, 16)

    def old(b, x, emb):
        h = b.conv1(F.silu(b.norm1(x)))
        scale, shift = b.emb(emb)[:, :, None, None].chunk(2, dim=1)
        return b.skip(x) + b.conv2(F.silu(b.norm2(h) * (1 + scale) + shift))
    outs, grads = [], []
    for fn in (old, lambda b, x, emb: b(x, emb)):
        x.grad = None
        block.zero_grad()
        out = fn(block, x, emb)
        out.square().sum().backward()
        outs.append(out)
        grads.append(torch.cat([x.grad.flatten(), *(p.grad.flatten()
                                                    for p in block.parameters())]))
    torch.testing.assert_close(outs[1], outs[0], rtol=0, atol=1e-5 * outs[0].abs().max().item())
    assert relative(grads[1], grads[0]) < 1e-5


def test_attention_under_cpu_autocast_stays_close_to_fp32():
    """Under bf16 autocast on the CPU the attention product itself runs in float32 (its bf16
    backward is 1.7-6x slower): output and input gradient within bf16 rounding of fp32 (2 %)."""
    torch.manual_seed(0)
    attn = randomise_(SelfAttention(64, 16))
    x = torch.randn(2, 64, 8, 8, requires_grad=True)
    outs, grads = [], []
    for context in (torch.autocast("cpu", enabled=False), torch.autocast("cpu", torch.bfloat16)):
        with context:
            branch = attn(x).float() - x  # the attention's own contribution
        (grad,) = torch.autograd.grad(branch.square().sum(), x)
        outs.append(branch)
        grads.append(grad)
    assert relative(outs[1], outs[0]) < 0.02 and relative(grads[1], grads[0]) < 0.02


def test_upsample_matches_interpolate():
    """The CPU's channels_last round trip gives exactly the nearest upsampling, its gradient to
    float32 rounding."""
    torch.manual_seed(0)
    up = Upsample(4)
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    ref = up.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
    g = torch.randn_like(ref)
    (grad_ref,) = torch.autograd.grad(ref, x, g)
    out = up(x)
    (grad,) = torch.autograd.grad(out, x, g)
    assert torch.equal(out, ref) and out.is_contiguous()
    torch.testing.assert_close(grad, grad_ref, rtol=1e-6, atol=1e-6)


def test_precision_auto_follows_the_processor_and_the_method(monkeypatch):
    monkeypatch.setattr(M, "cpu_bf16_flags", lambda: ["avx512_bf16"])
    chosen = M.Precision("auto", "cpu", BF16, "phendiff")
    assert chosen.dtype == torch.bfloat16 and "avx512_bf16" in str(chosen)
    assert M.Precision("fp32", "cpu", BF16).dtype is None  # on request
    assert M.Precision("auto", "cpu", ("fp32",), "dino").dtype is None  # the method's default
    monkeypatch.setattr(M, "cpu_bf16_flags", lambda: [])
    chosen = M.Precision("auto", "cpu", BF16, "phendiff")
    assert chosen.dtype is None and "no bf16 instructions" in str(chosen)
    assert "expect it slower" in str(M.Precision("bf16", "cpu", BF16))
    with pytest.raises(ValueError, match="dino trains in fp32 only") as e:
        M.Precision("bf16", "cpu", ("fp32",), "dino")
    assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="--precision half: unknown; choose auto, fp32, bf16"):
        M.Precision("half", "cpu", BF16)


def test_train_says_which_precision_ran_and_refuses_one_the_method_lacks(tmp_path, capsys):
    run = ["--preset", "tiny", "--image-size", "16", "--base-channels", "8", "--channel-mult",
           "1,2", "--num-res-blocks", "1", "--attn-res", "8", "--sample-every", "0", "--data",
           "synthetic", "--compounds", "latrunculin_b", "--n-per-class", "2", "--batch-size", "4",
           "--steps", "2", "--precision", "fp32", "--out", str(tmp_path / "r")]
    train.main(run)
    assert "cpu, fp32 (requested)" in capsys.readouterr().out
    line = fails(train.main, ["--method", "dino", "--precision", "bf16", "--out",
                              str(tmp_path / "d")])
    assert "dino trains in fp32 only" in line
    line = fails(train.main, ["--precision", "half", "--out", str(tmp_path / "h")])
    assert "--precision half: unknown; choose auto, fp32, bf16" in line


def test_translate_says_which_precision_ran(tmp_path, capsys):
    torch.manual_seed(0)
    net = phendiff.PhenDiff(phendiff.PhenDiffConfig.preset("tiny", image_size=16, num_classes=2))
    ds = ImageDataset(torch.zeros(1, 3, 16, 16), torch.zeros(1), ["DMSO", "taxol_1uM"],
                      ["actin", "tubulin", "dna"], {"low": [0.0] * 3, "high": [1.0] * 3})
    M.save_checkpoint(M.make_checkpoint(net, ds, 0, {}), tmp_path / "c.pt")
    inp = write_images(tmp_path / "in", n=1)
    for choice, said in (("fp32", "; fp32 (requested)"), ("bf16", "; bf16 autocast (requested")):
        phendiff.main(["translate", "--ckpt", str(tmp_path / "c.pt"), "--input", str(inp),
                       "--source", "DMSO", "--target", "taxol_1uM", "--ddim-steps", "2",
                       "--precision", choice, "--out", str(tmp_path / choice)])
        assert said in capsys.readouterr().out
    line = fails(phendiff.main, ["translate", "--ckpt", str(tmp_path / "c.pt"), "--input", str(inp),
                                 "--source", "DMSO", "--target", "DMSO", "--precision", "half",
                                 "--out",
                                 str(tmp_path / "h")])
    assert "--precision half: unknown" in line


def test_the_bench_runs_at_tiny_scale(capsys, monkeypatch):
    monkeypatch.setattr(bench, "diffusers_available", lambda: False)  # as on CI
    bench.main(["--preset", "tiny", "--translate-preset", "tiny", "--batch", "2", "--images", "2",
                "--ddim-steps", "1", "--rounds", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "diffusers is not installed" in out and "pip install diffusers" in out
    assert "| train | 1 | contiguous | bf16 |" in out and "ours bf16 / ours fp32" in out
    assert torch.get_num_threads() == 1
    bench.main(["--profile", "--preset", "tiny", "--translate-preset", "tiny", "--batch", "2",
                "--images", "2", "--ddim-steps", "1", "--threads", "1", "--layouts",
                "contiguous", "--precisions", "fp32"])
    assert "translate 1 contiguous fp32:" in capsys.readouterr().out



def test_the_bench_times_another_model_file_against_this_one(tmp_path, capsys, monkeypatch):
    """--against a model.py whose UNet sleeps 50 ms per call: every configuration reads slower
    there, in every round; a revision that is neither a file nor known to git is a one-line
    error."""
    monkeypatch.setattr(bench, "diffusers_available", lambda: False)
    slow = tmp_path / "model.py"
    slow.write_text((bench.ROOT / "model.py").read_text() + (
        "\n_forward = UNet.forward\n\n\ndef _slow(self, *args):\n    time.sleep(0.05)\n"
        "    return _forward(self, *args)\n\n\nUNet.forward = _slow\n"))
    bench.main(["--preset", "tiny", "--translate-preset", "tiny", "--batch", "2", "--images", "2",
                "--ddim-steps", "1", "--rounds", "2", "--threads", "1", "--layouts", "contiguous",
                "--impl", "ours", "--against", str(slow)])
    rows = [line for line in capsys.readouterr().out.splitlines()
            if line.startswith(("| train |", "| translate |"))]
    assert len(rows) == 4
    for row in rows:  # ... | ours / ours@... as "1.23x (lowest-highest)" |
        lowest = float(row.split("|")[-2].split("(")[1].split("-")[0])
        assert lowest > 1.2, row
    line = fails(bench.main, ["--preset", "tiny", "--against", str(tmp_path / "nope.py")])
    assert "--against" in line and "give a revision or a file" in line

def test_the_gpu_script_runs_at_tiny_scale_on_the_cpu(capsys):
    gpu_bench.main(["--preset", "tiny", "--batch", "2", "--steps", "1", "--images", "2",
                    "--doses", "2", "--ddim-steps", "1", "--no-compile", "--no-diffusers",
                    "--device", "cpu"])
    out = capsys.readouterr().out
    assert "train ours:" in out and "translate ours: 2 images x 2 doses" in out


def test_training_flops_are_three_forwards():
    """The MFU's numerator: forward + backward counted on the meta device, about 3 forwards (the
    input needs no gradient; measured 2.998 on the small preset)."""
    config = UNetConfig.preset("tiny")
    with torch.device("meta"):
        net = UNet(config)
        x = torch.zeros(2, config.in_channels, config.image_size, config.image_size)
        t = torch.zeros(2, dtype=torch.long)
    with torch.utils.flop_counter.FlopCounterMode(display=False) as counter:
        net(x, t, t)
    assert 2.9 < gpu_bench.train_flops(config, 2) / counter.get_total_flops() < 3.1


def test_diffusers_is_built_at_the_same_configuration():
    pytest.importorskip("diffusers")
    config = bench.config_of("tiny")
    ours, theirs = (bench.build(impl, config, "contiguous") for impl in ("ours", "diffusers"))
    n_ours, n_theirs = (sum(p.numel() for p in m.parameters()) for m in (ours, theirs))
    assert abs(n_theirs - n_ours) / n_ours < 0.01, (n_ours, n_theirs)
    x, y = bench.images(config, 2, "contiguous")
    assert theirs(x, torch.tensor([5, 999]), y).shape == x.shape
    assert theirs.prediction == config.prediction and theirs.null_label == ours.null_label
