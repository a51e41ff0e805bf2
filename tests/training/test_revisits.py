"""``data.order=window``: instances revisited in bursts (sliding windows), exact on resume and across processes."""

from __future__ import annotations

import pytest
import torch

from helpers import make_trainer, tiny_dataset
from icone.build import resolve_config
from icone.config import build_config
from icone.training.checkpoint import load_checkpoint
from icone.training.loader import EpochOrder, Revisits


def stream(n: int, revisits: Revisits, epochs: int, seed: int = 0) -> list[int]:
    return [row for e in range(epochs) for row in EpochOrder(n, seed, e, batch_size=1, revisits=revisits)]


def gaps(rows: list[int]) -> list[int]:
    """Samples between consecutive visits of the same instance."""
    last: dict[int, int] = {}
    out = []
    for i, row in enumerate(rows):
        if row in last:
            out.append(i - last[row])
        last[row] = i
    return out


def test_each_instance_comes_in_a_burst_of_size_over_stride_visits():
    n, revisits = 96, Revisits(size=24, stride=6)  # each position in 4 windows running
    rows = stream(n, revisits, epochs=12)
    assert len(rows) == 12 * n  # an epoch is still n samples
    counts = torch.bincount(torch.tensor(rows), minlength=n)
    assert counts.float().mean() == 12 and counts.min() >= 8  # each seen once per epoch on average
    for instance in range(n):  # the first two sweeps of positions are in windows 0..35, each position in 4 of them
        assert sum(revisits.window(n, 0, k).tolist().count(instance) for k in range(36)) >= 8
    n = 4 * n
    bursty = sorted(gaps(stream(n, revisits, epochs=4)))
    shuffled = sorted(gaps([row for e in range(4) for row in EpochOrder(n, 0, e, batch_size=1)]))
    assert bursty[len(bursty) // 2] <= 2 * 24 < n // 4 < shuffled[len(shuffled) // 2]  # revisits about a window apart


def test_windows_are_shuffled_and_seeded():
    revisits = Revisits(size=24, stride=6)
    assert stream(96, revisits, 2, seed=0) == stream(96, revisits, 2, seed=0)
    assert stream(96, revisits, 2, seed=0) != stream(96, revisits, 2, seed=1)
    window = revisits.window(96, 0, 10).tolist()  # a full window (the first three ramp up from position 0)
    assert sorted(window) != window and len(set(window)) == 24


def test_a_mid_epoch_start_continues_the_same_order():
    revisits = Revisits(size=24, stride=6)
    full = list(EpochOrder(96, 3, 5, batch_size=8, revisits=revisits))
    assert list(EpochOrder(96, 3, 5, batch_size=8, start_batch=7, revisits=revisits)) == full[56:]
    assert len(EpochOrder(96, 3, 5, batch_size=8, start_batch=7, revisits=revisits)) == 96 - 56


def test_processes_share_the_single_process_order():
    revisits = Revisits(size=24, stride=6)
    whole = list(EpochOrder(99, 0, 2, batch_size=1, revisits=revisits))
    shares = []
    for rank in range(3):
        order = EpochOrder(99, 0, 2, batch_size=1, revisits=revisits)
        order.rank, order.world = rank, 3
        shares.append(list(order))
    assert [row for step in zip(*shares) for row in step] == whole


def _config(*extra: str):
    data = tiny_dataset(n=32)
    items = ["model.backbone=smallcnn", "model.width=8", "train.batch_size=4", "train.epochs=2",
             "optim.warmup_epochs=0", "train.monitor_samples=8", "data.order=window", *extra]  # fmt: skip
    return resolve_config(build_config(None, items), data), data


def test_the_window_is_resolved_and_saved():
    config, _ = _config()
    assert (config.data.window_size, config.data.window_stride) == (4, 1)  # an eighth of 32, at least a batch
    config, _ = _config("data.window_size=100", "data.window_stride=200")
    assert (config.data.window_size, config.data.window_stride) == (32, 32)  # never more than the data


class Stop(Exception):
    pass


@pytest.mark.parametrize("method", ["icone", "simclr"])
def test_a_run_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(method, tmp_path):
    config, data = _config(f"method={method}", "train.checkpoint_every_steps=3", "data.window_size=12",
                           "data.window_stride=4")  # fmt: skip
    full = make_trainer(config, data, tmp_path / "full")
    full.fit()
    stopped = make_trainer(config, data, tmp_path / "stopped")
    views = stopped.views

    def stop_at_step_five(epoch: int):
        maker = views(epoch)

        def make(x: torch.Tensor) -> list[torch.Tensor]:
            if stopped.step == 5:  # in epoch 1 of 8 steps; the checkpoint of step 3 is kept
                raise Stop
            return maker(x)

        return make

    stopped.views = stop_at_step_five
    with pytest.raises(Stop):
        stopped.fit()
    resumed = make_trainer(config, data, tmp_path / "stopped")
    checkpoint = load_checkpoint(tmp_path / "stopped")
    assert (checkpoint["step"], checkpoint["batch"]) == (3, 3)
    resumed.restore(checkpoint)
    resumed.fit()
    assert resumed.step == full.step == 16
    for (name, a), b in zip(full.method.state_dict().items(), resumed.method.state_dict().values()):
        assert torch.equal(a, b), name
