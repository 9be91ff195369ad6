"""``torchrun --nproc_per_node 2`` (gloo, CPU): the unchanged trainer reaches the weights of
the one-process run on the same global batch, and only rank 0 writes.

Tolerance: every weight and buffer within 1e-5 (absolute) of the one-process run after 3
epochs of SGD.  The two runs see the same global batches and compute the same global
batch-norm statistics; they differ only in the order of floating-point sums (each process
sums half a batch, the all-reduce adds the halves), measured at ~2e-7.  For scale, the
weights move by more than 1e-2 during the run, so the check separates the two.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from laurentnet.bridge.data import digits
from laurentnet.bridge.models import build_resnet
from laurentnet.bridge.schedules import make_schedule
from laurentnet.bridge.train_io import read_log
from laurentnet.bridge.trainer import TrainConfig, train

TOLERANCE = 1e-5
EPOCHS = 3

pytestmark = pytest.mark.slow

LAUNCHED = textwrap.dedent('''
    """Run by torchrun in every process: the plain trainer, plus a record of the files this
    process opens for writing (audit hook) inside the output folder."""
    import json, os, sys
    out, record = sys.argv[1], sys.argv[2]
    writes = []

    def hook(event, args):
        if event == "open" and isinstance(args[0], (str, bytes, os.PathLike)):
            path, mode, flags = args
            writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
                isinstance(flags, int) and flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))
            if writing and os.path.abspath(os.fsdecode(path)).startswith(out):
                writes.append(os.fsdecode(path))
        elif event in ("os.rename", "os.replace", "os.mkdir") and \\
                os.path.abspath(os.fsdecode(args[-3 if event != "os.mkdir" else 0])).startswith(out):
            writes.append(f"{event} {args[0]}")
    sys.addaudithook(hook)

    import torch
    from laurentnet.bridge.data import digits
    from laurentnet.bridge.models import build_resnet
    from laurentnet.bridge.schedules import make_schedule
    from laurentnet.bridge.trainer import TrainConfig, train

    torch.manual_seed(0)
    model = build_resnet("resnet_tiny")
    result = train(model, digits(seed=0), make_schedule("linear", t0=2),
                   TrainConfig(epochs=%d, batch_size=64, threads=1), out_dir=out,
                   progress=False)
    rank = result.rank
    if rank == 0:
        torch.save(model.state_dict(), os.path.join(record, "weights.pt"))
    with open(os.path.join(record, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "world": result.world_size, "writes": writes,
                   "val_loss": [h["val_loss"] for h in result.history]}, f)
''' % EPOCHS)


def test_two_processes_match_one_and_only_rank0_writes(tmp_path) -> None:
    script, out, record = tmp_path / "launched.py", tmp_path / "out", tmp_path / "record"
    script.write_text(LAUNCHED)
    record.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--standalone",
         str(script), str(out), str(record)],
        env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((record / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2]

    # only rank 0 writes: rank 1 opened nothing in the output folder; rank 0 did (so the
    # audit hook sees writes at all), and the log holds each epoch once
    assert ranks[1]["writes"] == []
    assert any("train.jsonl" in w for w in ranks[0]["writes"])
    assert any("checkpoint.pt" in w for w in ranks[0]["writes"])
    events = [r["event"] for r in read_log(out / "train.jsonl")]
    assert events == ["start"] + ["epoch"] * EPOCHS + ["end"]
    assert read_log(out / "train.jsonl")[0]["world_size"] == 2

    # the one-process run on the same global batch (64), in this process
    torch.manual_seed(0)
    single = build_resnet("resnet_tiny")
    initial = {k: v.clone() for k, v in single.state_dict().items()}
    result = train(single, digits(seed=0), make_schedule("linear", t0=2),
                   TrainConfig(epochs=EPOCHS, batch_size=64, threads=1), progress=False)
    two = torch.load(record / "weights.pt", weights_only=True)
    one = single.state_dict()
    assert two.keys() == one.keys()
    diff = {k: float((one[k].double() - two[k].double()).abs().max()) for k in one
            if one[k].is_floating_point()}
    assert max(diff.values()) <= TOLERANCE, sorted(diff.items(), key=lambda kv: -kv[1])[:3]
    moved = max(float((one[k].double() - initial[k].double()).abs().max()) for k in diff)
    assert moved > 1000 * TOLERANCE
    assert ranks[0]["val_loss"] == pytest.approx([h["val_loss"] for h in result.history],
                                                 abs=1e-5)
    assert ranks[0]["val_loss"] == ranks[1]["val_loss"]  # all-reduced: the same on both ranks
