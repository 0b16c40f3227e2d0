"""Every method under two processes, as torchrun starts them (gloo on the CPU): no rank skips a
collective, the ranks hold the same state at every checkpoint (train.py's broadcast-and-compare,
which must have run and must catch a difference), each run resumes, and a batch too small for a
method is refused in one line on every rank instead of hanging.

One pair of processes runs everything (`worker` below): starting torch twice per method would
cost more than the training."""
import csv
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

import method as M
from tests.helpers import same

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 150  # seconds for the whole pair: a rank stuck in a collective fails the test, not CI
COMMON = ["--data", "synthetic", "--compounds", "latrunculin_b", "--n-per-class", "4",
          "--image-size", "16", "--preset", "tiny", "--sample-every", "0", "--log-every", "1"]
UNET = ["--base-channels", "8", "--channel-mult", "1,2", "--num-res-blocks", "1",
        "--attn-res", "8"]
PAIR = "DMSO__latrunculin_b_10uM"
# method, images per process and step (CycleGAN: per class), flags: batches of 1 and 2, and the
# state that differs between ranks unless handled (pools, BatchNorm statistics, MoCo queue)
RUNS = [("phendiff", 2, UNET + ["--grad-accum", "2"]),
        ("cyclegan", 2, ["--pairs", "DMSO:latrunculin_b_10uM", "--pool-size", "2"]),
        ("stargan", 1, ["--n-critic", "2"]),  # G's values only every other step
        ("stylegan", 1, []),
        ("dino", 1, ["--arch", "resnet"]),  # BatchNorm statistics
        ("ganformer", 2, []),
        ("dsae", 2, []),  # on the two runs above
        ("vae", 1, []), ("bigan", 2, []), ("alae", 1, []),
        ("dcvae", 1, ["--queue", "3", "--n-critic", "2"])]  # a ring that wraps within the run


def worker(folder):
    """One rank: every method 2 steps, then resumed to 4 (a checkpoint at each end); CycleGAN also
    4 steps at once; then the faults. Writes what the consistency checks compared to
    rank<r>.json."""
    import train
    from tests.helpers import fails
    folder, rank = Path(folder), int(os.environ["RANK"])
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo")  # train.main runs in it and leaves it open
    train.Log.plot = lambda self: None  # matplotlib would take most of the time; tested elsewhere
    checks, check = [], M.check_ddp_consistency

    def recorded(state):
        compared = check(state)
        checks[-1]["compared"].append(compared)
        checks[-1]["names"] = [n for n, _ in M.state_entries(state)]
        return compared

    M.check_ddp_consistency = recorded
    parts = ["--encoder", str(folder / "dino"), "--decoder", str(folder / "ganformer")]
    for name, batch, flags in RUNS:
        checks.append({"method": name, "compared": []})
        argv = COMMON + flags + (parts if name == "dsae" else []) + [
            "--method", name, "--batch-size", str(batch), "--steps"]
        train.main(argv + ["2", "--out", str(folder / name)])
        train.main(["--out", str(folder / name), "--resume", "--steps", "4"])
        if name == "cyclegan":
            train.main(argv + ["4", "--out", str(folder / "cyclegan_whole")])

    faults = {}
    step = M.method_class("vae").train_step

    def perturbed(self, batch, s):  # rank 1 alone nudges a parameter after the first step
        values = step(self, batch, s)
        if rank == 1 and s == 0:
            with torch.no_grad():
                self.E.head.bias[0] += 1e-6
        return values

    M.method_class("vae").train_step = perturbed
    faults["perturbed"] = fails(train.main, COMMON + ["--method", "vae", "--batch-size", "2",
                                                      "--steps", "2", "--out",
                                                      str(folder / "perturbed")])
    faults["small"] = fails(train.main, COMMON + UNET + ["--grad-accum", "2", "--batch-size", "1",
                                                         "--out", str(folder / "small")])
    # a value only rank 1 returns: averaged over the ranks that returned it, no mismatch
    reduced, _ = train.reduce_values({"a": 1.0 + 2 * rank, **({"b": 5.0} if rank else {})},
                                     ("a", "b"), 0, 2, torch.device("cpu"), folder, 1)
    (folder / f"rank{rank}.json").write_text(json.dumps({"checks": checks, "faults": faults,
                                                         "reduced": reduced}))
    torch.distributed.destroy_process_group()


def run_pair(folder):
    """Two ranks of `worker`; both must finish within TIMEOUT, and one's failure ends the
    other."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs, logs = [], []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1"}
        logs.append(open(folder / f"rank{rank}.log", "w+"))
        code = f"from tests.test_torchrun import worker; worker({str(folder)!r})"
        procs.append(subprocess.Popen([sys.executable, "-u", "-c", code], cwd=ROOT, env=env,
                                      stdout=logs[-1], stderr=subprocess.STDOUT))
    deadline = time.monotonic() + TIMEOUT
    while any(p.poll() is None for p in procs):
        if time.monotonic() > deadline or any(p.poll() for p in procs):
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait()
        time.sleep(0.05)
    tails = []
    for rank, (p, log) in enumerate(zip(procs, logs)):
        log.seek(0)
        tails.append(f"rank {rank} exit {p.returncode}: ...{log.read()[-1500:]}")
        log.close()
    assert all(p.returncode == 0 for p in procs), "\n".join(tails)
    return [json.loads((folder / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_every_method_trains_in_step_on_two_processes(tmp_path):
    results = run_pair(tmp_path)
    for rank in (0, 1):
        checks = results[rank]["checks"]
        assert [c["method"] for c in checks] == [name for name, _, _ in RUNS]
        for c in checks:
            name, names = c["method"], c["names"]
            # a check at the end of each run (2 steps, resumed to 4; CycleGAN also 4 at once),
            # over every tensor of the state: the nets, their EMA, the optimizers' moments
            assert len(c["compared"]) == (3 if name == "cyclegan" else 2), c
            assert all(n == len(names) > 0 for n in c["compared"]), name
            assert any(".exp_avg" in n for n in names), name
            ema = {"phendiff": "ema.", "dino": "teacher.", "dsae": "G_ema."}.get(name, "_ema.")
            assert any(n.startswith(ema) or ema in n for n in names), (name, ema)
    dino = results[0]["checks"][[name for name, _, _ in RUNS].index("dino")]["names"]
    assert any(n.endswith("running_mean") for n in dino)  # the ResNet's BatchNorm statistics
    assert any(n == "queue" for n in results[0]["checks"][-1]["names"])  # DC-VAE's

    for name, _, _ in RUNS:
        folder = tmp_path / name / (PAIR if name == "cyclegan" else "")
        assert M.load_checkpoint(folder / "last.pt")["step"] == 4
        with open(folder / "log.csv") as f:
            rows = list(csv.DictReader(f))
        # every step learned from something: its first value (StarGAN: D's) on every row
        first = M.method_class(name).LOG[0]
        assert [int(r["step"]) for r in rows] == [1, 2, 3, 4], name
        assert all(r[first] for r in rows), name

    # CycleGAN: each rank's pool saved and given back to it, so 2 + 2 steps = 4 steps, bit for bit
    whole = M.load_checkpoint(tmp_path / "cyclegan_whole" / PAIR / "last.pt")["state"]
    resumed = M.load_checkpoint(tmp_path / "cyclegan" / PAIR / "last.pt")["state"]
    assert len(resumed["pool_a"]) == 2
    assert not torch.equal(resumed["pool_a"][0]["images"], resumed["pool_a"][1]["images"])
    assert same(whole, resumed)

    for rank in (0, 1):  # both ranks stop with the same line; neither waits for the other
        faults = results[rank]["faults"]
        assert faults["perturbed"].startswith("train.py: error: the processes disagree: "
                                              "E.head.bias on rank 1 differs from rank 0's")
        assert "--batch-size 1 (per process) is smaller than --grad-accum 2" in faults["small"]
        assert results[rank]["reduced"] == {"a": 2.0, "b": 5.0}
