"""The homotopy trainer (bridge.trainer): what one step does (against a loop written here),
determinism, resuming from a checkpoint, the files it writes, its refusals."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from laurentnet.algebra.errors import LaurentnetError
from laurentnet.bridge.data import digits
from laurentnet.bridge.models import build_resnet, skip_weights
from laurentnet.bridge.schedules import AutoSchedule, make_schedule
from laurentnet.bridge.train_io import read_log
from laurentnet.bridge.trainer import TrainConfig, TrainingError, train


@pytest.fixture(scope="module")
def data():
    return digits(seed=0)


def Config(**kwargs) -> TrainConfig:
    """One torch thread: tiny models train fastest so (and a busy CI machine stays sane)."""
    return TrainConfig(threads=1, **kwargs)


def tiny(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_resnet("resnet_tiny")


def states_equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def by_hand(model: nn.Module, data, epochs: int, t0: float, lr: float, batch: int = 64) -> None:
    """The documented training loop, written out: permutation torch.randperm(N) from a
    generator seeded with seed + epoch, full batches only, λ = max(0, 1 - t/t0) with
    t = epoch + i/steps before step i, cosine learning rate over all steps, SGD with
    momentum 0.9 and weight decay 5e-4 on the mean cross-entropy."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    n = len(data.y_train)
    steps = n // batch
    total = epochs * steps
    blocks = model.blocks()
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(0 + epoch))
        model.train()
        for i in range(steps):
            lam = max(0.0, 1.0 - (epoch + i / steps) / t0)
            for b in blocks:
                b.skip_weight.fill_(lam)
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * (epoch * steps + i) / total))
            idx = order[i * batch:(i + 1) * batch]
            opt.zero_grad()
            F.cross_entropy(model(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()


def test_training_matches_the_loop_written_out(data) -> None:
    ours, theirs = tiny(), tiny()
    result = train(ours, data, make_schedule("linear", t0=1.5), Config(epochs=2, lr=0.05),
                   progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the trainer: CPU reductions depend on the thread count
    try:
        by_hand(theirs, data, epochs=2, t0=1.5, lr=0.05)
    finally:
        torch.set_num_threads(threads)
    for (k, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert torch.allclose(a.double(), b.double(), atol=1e-5, rtol=1e-5), k
    assert skip_weights(ours) == [0.0, 0.0] and result.skipless and not ours.training
    assert [h["lambda"] for h in result.history] == [pytest.approx([1 / 3, 1 / 3]), [0.0, 0.0]]
    assert result.history[0]["lambda_start"] == [1.0, 1.0]
    # reported test accuracy = the model's own predictions on the test set
    with torch.no_grad():
        acc = float((ours(data.x_test).argmax(1) == data.y_test).double().mean())
    assert result.test_accuracy == pytest.approx(acc)


def test_seeded_and_deterministic(data) -> None:
    config = Config(epochs=2, optimizer="adamw")
    a, b, c = tiny(), tiny(), tiny()
    train(a, data, make_schedule("cosine", t0=2), config, progress=False)
    train(b, data, make_schedule("cosine", t0=2), config, progress=False)
    train(c, data, make_schedule("cosine", t0=2), Config(epochs=2, optimizer="adamw", seed=1),
          progress=False)
    assert states_equal(a, b)
    assert not states_equal(a, c)  # another data order


def test_resume_gives_the_uninterrupted_result(tmp_path, data) -> None:
    config = Config(epochs=5)
    whole, part = tiny(), tiny()
    full = train(whole, data, AutoSchedule(step=0.3), config, out_dir=tmp_path / "full",
                 progress=False)
    first = train(part, data, AutoSchedule(step=0.3), config, out_dir=tmp_path / "part",
                  progress=False, stop_after=2)
    assert first.interrupted and first.epochs_completed == 2
    assert [r["event"] for r in read_log(tmp_path / "part" / "train.jsonl")] == \
        ["start", "epoch", "epoch"]
    resumed_model = tiny(seed=7)  # other initial weights: they all come from the checkpoint
    second = train(resumed_model, data, AutoSchedule(step=0.3), config,
                   out_dir=tmp_path / "part", resume=True, progress=False)
    assert second.epochs_completed == 3 and not second.interrupted
    assert states_equal(whole, resumed_model)

    def strip(history):
        return [{k: v for k, v in h.items() if k != "seconds"} for h in history]
    assert strip(second.history) == strip(full.history)
    assert second.test_accuracy == full.test_accuracy
    events = [r["event"] for r in read_log(tmp_path / "part" / "train.jsonl")]
    assert events == ["start", "epoch", "epoch", "resume", "epoch", "epoch", "epoch", "end"]


def test_files_written(tmp_path, data) -> None:
    out = tmp_path / "run"
    result = train(tiny(), data, make_schedule("step", t0=2, steps=2), Config(epochs=2),
                   out_dir=out, progress=False, plot=True)
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint.pt", "train.jsonl", "train.png"]
    assert (out / "train.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    records = [json.loads(line) for line in (out / "train.jsonl").read_text().splitlines()]
    assert [r["event"] for r in records] == ["start", "epoch", "epoch", "end"]
    assert records[0]["schedule"] == {"name": "step", "t0": 2.0, "per_block": "all", "steps": 2}
    assert records[1]["lambda"] == [0.5, 0.5] and records[2]["lambda"] == [0.0, 0.0]
    assert records[-1]["test_accuracy"] == result.test_accuracy
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # plain data, no code
    assert state["epoch"] == 2 and state["format"].startswith("laurentnet-train-checkpoint")
    assert not list(out.glob(".*tmp*"))  # no temporary files left
    with pytest.raises(TrainingError, match="a checkpoint of an earlier run"):
        train(tiny(), data, make_schedule("step", t0=2), Config(epochs=2), out_dir=out,
              progress=False)
    with pytest.raises(TrainingError, match="different lr"):
        train(tiny(), data, make_schedule("step", t0=2, steps=2), Config(epochs=2, lr=0.1),
              out_dir=out, resume=True, progress=False)


def test_refusals(data) -> None:
    def refuse(message, model=None, schedule=None, config=None):
        with pytest.raises(TrainingError, match=message) as info:
            train(model or tiny(), data, schedule or make_schedule("linear", t0=1),
                  config or Config(epochs=1), progress=False)
        assert isinstance(info.value, LaurentnetError)

    refuse("after the last epoch", schedule=make_schedule("linear", t0=5))
    refuse("3 input channels", model=build_resnet("resnet_tiny", in_channels=3))
    refuse("no residual blocks", model=nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(),
                                                     nn.LazyLinear(10)))
    refuse("optimizer 'lbfgs'", config=Config(epochs=1, optimizer="lbfgs"))
    refuse("epochs must be >= 1", config=Config(epochs=0))
    refuse("exceeds the 1078 training samples", config=Config(epochs=1, batch_size=5000))
    with pytest.raises(TrainingError, match="needs the out_dir"):
        train(tiny(), data, make_schedule("linear", t0=1), Config(epochs=1), resume=True,
              progress=False)
