"""Distributed training (DDP, gloo on CPU): 2 processes with batch b each against 1 process with batch 2b.

One spawn of 2 processes does every method's step (spawning costs seconds on a shared CPU); the
tests compare its results with the same step in this process. A ``torchrun`` run of the CLI
checks the launch end to end: one run folder, resume, and bad input reported once.
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

from helpers import FAST, make_trainer, run_on_processes, tiny_dataset, write_tiny_npz
from icone import distributed
from icone.build import build_method, resolve_config
from icone.config import Config, build_config
from icone.errors import UserError
from icone.methods import get_method, registry
from icone.training.checkpoint import load_checkpoint

WORLD = 2  # processes
B = 2  # batch per process; the single process takes WORLD * B
N = 16  # training samples
# small heads; batch-free norms wherever the method allows (a BatchNorm head has per-process statistics on CPU)
SMALL: dict[str, list[str]] = {
    "icone": [],
    "excb": [
        "excb.hidden_dim=32",
        "excb.bottleneck_dim=16",
        "excb.num_clusters=4",
        "excb.kmeans_restarts=1",
        "excb.head_norm=running",
        "excb.predictor_norm=running",
    ],
    "barlow_twins": ["barlow_twins.projector_dim=32", "barlow_twins.norm=layer"],
    "byol": ["byol.hidden_dim=32", "byol.out_dim=16"],
    "dino": ["dino.hidden_dim=32", "dino.bottleneck_dim=16", "dino.num_prototypes=8"],
    "moco": ["moco.hidden_dim=32", "moco.out_dim=16", "moco.queue_size=16"],
    "simclr": ["simclr.hidden_dim=32", "simclr.out_dim=16", "simclr.norm=layer"],
    "simsiam": ["simsiam.proj_dim=32", "simsiam.pred_hidden_dim=16"],
    "swav": [
        "swav.hidden_dim=32",
        "swav.out_dim=16",
        "swav.num_prototypes=8",
        "swav.queue_size=16",
        "swav.queue_max_batch=4",
    ],
    "vicreg": ["vicreg.expander_dim=32", "vicreg.norm=layer"],
}
BATCH_NORM = ["model.norm=batch", "simclr.norm=batch"]  # SimCLR as the paper has it: BatchNorm in backbone and head
# methods with state kept identical across processes by a reduction, trained a few steps with fit()
STATEFUL = {"icone": "table", "excb": "sizes", "moco": "queue.rows", "swav": "queue.rows", "dino": "center"}
FIT = ["optim.name=adamw", "optim.lr=1e-3", "optim.grad_clip=3.0"]  # the defaults' optimizer, with clipping
TOLERANCE = 1e-4  # per tensor, relative to the largest update of that tensor in the single-process step


def make_config(method: str, batch_size: int, extra: list[str] | tuple[str, ...] = ()) -> Config:
    """Plain SGD (no momentum, decay or clipping: a step's update is ``-lr x gradient``) unless ``extra`` says otherwise."""
    items = [
        f"method={method}", "model.backbone=smallcnn", "model.width=8", "model.norm=group", f"train.batch_size={batch_size}",
        "train.epochs=1", "train.device=cpu", "train.monitor_samples=8", "train.log_every=1", "optim.name=sgd",
        "optim.momentum=0", "optim.lr=0.5", "optim.weight_decay=0", "optim.grad_clip=null", "optim.warmup_epochs=0",
        *SMALL[method], *extra,
    ]  # fmt: skip
    return resolve_config(build_config(None, items), tiny_dataset(2, n=N))


def fixed_views(method: str) -> list[torch.Tensor]:
    """The views of the whole batch (``WORLD * B`` rows): two global crops, plus a local one for multi-crop methods."""
    gen = torch.Generator().manual_seed(1)
    views = [torch.randn(WORLD * B, 1, 16, 16, generator=gen) for _ in range(2)]
    if get_method(method).default_local_crops:
        views.append(torch.randn(WORLD * B, 1, 8, 8, generator=gen))
    return views


def one_step(
    method: str, rows: slice, run_dir: Path, extra: list[str] | tuple[str, ...] = ()
) -> dict[str, dict[str, torch.Tensor]]:
    """The trainer's step (DDP when the process group is up) on the fixed views' ``rows``; states before and after."""
    batch = len(range(WORLD * B)[rows])
    trainer = make_trainer(make_config(method, batch, extra), tiny_dataset(2, n=N), run_dir)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    views = [v[rows] for v in fixed_views(method)]
    index = torch.arange(WORLD * B)[rows]
    trainer.train_step(views[0], index, lambda _: views)  # fixed views instead of the view maker's
    return {"before": before, "after": {k: v.clone() for k, v in trainer.method.state_dict().items()}}


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _worker(rank: int, world: int, out_dir: str) -> None:
    records = _Records()
    logging.getLogger("icone").addHandler(records)
    try:
        rows = slice(rank * B, (rank + 1) * B)
        results: dict[str, Any] = {name: one_step(name, rows, Path(out_dir) / name) for name in SMALL}
        results["simclr+batch_norm"] = one_step("simclr", rows, Path(out_dir) / "bn", BATCH_NORM)
        results["batch_norm_messages"] = list(records.messages)
        method = build_method(make_config("simclr", B, BATCH_NORM), N)
        params = [id(p) for p in method.parameters()]
        converted = distributed.sync_batch_norm(method, torch.device("cuda"))  # conversion alone needs no GPU
        kinds = {type(m).__name__ for m in converted.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
        results["sync_batch_norm"] = {
            "same_module": converted is method,
            "kinds": kinds,
            "same_parameters": params == [id(p) for p in converted.parameters()],
        }
        for name in STATEFUL:  # a few real steps: sampler, augmentation (different on each process), init
            trainer = make_trainer(make_config(name, B, FIT), tiny_dataset(2, n=N), Path(out_dir) / f"fit-{name}")
            trainer.fit()
            results[f"fit-{name}"] = {
                "steps": trainer.step,
                "state": {k: v.clone() for k, v in trainer.method.state_dict().items()},
            }
        config = make_config("moco", B, [*FIT, "train.epochs=2"])  # resume: interrupted after epoch 1 = uninterrupted
        full = make_trainer(config, tiny_dataset(2, n=N), Path(out_dir) / "full")
        full.fit()
        make_trainer(config, tiny_dataset(2, n=N), Path(out_dir) / "half").fit(until_epoch=1)
        dist.barrier()  # rank 0 has written the checkpoint
        resumed = make_trainer(config, tiny_dataset(2, n=N), Path(out_dir) / "half")
        resumed.restore(load_checkpoint(Path(out_dir) / "half"))
        resumed.fit()
        results["resume"] = {
            "steps": (full.step, resumed.step),
            "same": [k for k, v in full.method.state_dict().items() if torch.equal(v, resumed.method.state_dict()[k])],
        }
        try:
            make_config("icone", 9)
        except UserError as err:  # 9 fits 16 samples, 2 x 9 does not
            results["batch_error"] = str(err)
        defaults = resolve_config(build_config(None, ["method=simclr", f"train.batch_size={B}"]), tiny_dataset(2, n=N))
        results["default_lr"] = defaults.optim.lr
        torch.save(results, f"{out_dir}/rank{rank}.pt")
    finally:
        logging.getLogger("icone").removeHandler(records)


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory) -> list[dict[str, Any]]:
    """What each of 2 gloo processes saw (index = rank)."""
    out = tmp_path_factory.mktemp("ddp")
    run_on_processes(_worker, str(out), world=WORLD)
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _differences(ranks: list[dict[str, Any]], single: dict[str, dict[str, torch.Tensor]]) -> dict[str, float]:
    """Per state entry: the largest distance of the 2-process result from the single-process one,
    relative to the largest change the single step made to that entry, or to 1% of the largest
    change of any entry where that is more (an entry whose gradient is 0 in exact arithmetic, such
    as a bias before a batch standardisation, moves by rounding only)."""
    moves = {
        n: float((v - single["before"][n]).abs().max()) for n, v in single["after"].items() if v.is_floating_point()
    }
    floor = max(0.01 * max(moves.values()), 1e-12)
    out = {}
    for name, expected in single["after"].items():
        got = ranks[0]["after"][name]
        if name not in moves:
            out[name] = 0.0 if torch.equal(got, expected) else float("inf")
        else:
            out[name] = float((got - expected).abs().max()) / max(moves[name], floor)
    return out


def test_every_registered_method_is_covered():
    assert set(SMALL) == set(registry())


@pytest.mark.parametrize("method", list(SMALL))
def test_one_step_on_two_processes_equals_one_step_on_the_whole_batch(method, two_processes, tmp_path):
    ranks = [r[method] for r in two_processes]
    for name, value in ranks[0]["after"].items():  # parameters and state (queues, centre, sizes, teachers) identical
        assert torch.equal(value, ranks[1]["after"][name]), f"{name} differs between processes"
    single = one_step(method, slice(None), tmp_path)
    for name, value in single["before"].items():
        assert torch.equal(value, ranks[0]["before"][name]), f"{name} starts differently"
    backbone = [n for n in single["after"] if n.startswith("backbone.") and single["after"][n].is_floating_point()]
    assert any(not torch.equal(single["after"][n], single["before"][n]) for n in backbone), "the step changed nothing"
    worst = {k: v for k, v in _differences(ranks, single).items() if v > TOLERANCE}
    assert not worst, f"{method}: 2 x {B} differs from 1 x {WORLD * B} (relative to the step): {worst}"


def test_batch_norm_on_cpu_keeps_per_process_statistics(two_processes, tmp_path):
    """The documented CPU fallback (no SyncBatchNorm without CUDA): each process normalises with its
    own batch, so the maths does not give the single-process step. Parameters still agree; running
    statistics are each process's own until DDP broadcasts rank 0's at the next forward. Rank 0 said so once."""
    ranks = [r["simclr+batch_norm"] for r in two_processes]
    for name, value in ranks[0]["after"].items():
        own = "running_" in name  # running_mean / running_var: this process's batches
        assert torch.equal(value, ranks[1]["after"][name]) != own, name
    single = one_step("simclr", slice(None), tmp_path, BATCH_NORM)
    assert max(_differences(ranks, single).values()) > 100 * TOLERANCE
    assert [len(r["batch_norm_messages"]) for r in two_processes] == [1, 0]
    assert "own batch's statistics" in two_processes[0]["batch_norm_messages"][0]


def test_batch_norm_becomes_sync_batch_norm_on_cuda_in_place(two_processes):
    """What the trainer does on CUDA before the optimizer and DDP see the method: the same module,
    the same parameter objects, every batch norm a SyncBatchNorm."""
    assert two_processes[0]["sync_batch_norm"] == {
        "same_module": True,
        "kinds": {"SyncBatchNorm"},
        "same_parameters": True,
    }


@pytest.mark.parametrize("method", list(STATEFUL))
def test_state_is_identical_on_every_process_after_training(method, two_processes):
    """IConE's table, ExCB's sizes, MoCo's and SwAV's queues, DINO's centre (and everything else)."""
    first, second = (r[f"fit-{method}"] for r in two_processes)
    assert first["steps"] == second["steps"] == N // (WORLD * B)
    assert first["state"].keys() == second["state"].keys() and STATEFUL[method] in first["state"]
    for name, value in first["state"].items():
        assert torch.equal(value, second["state"][name]), f"{name} differs between processes"


def test_resume_on_two_processes_gives_the_uninterrupted_run(two_processes):
    for result in two_processes:
        assert result["resume"]["steps"] == (8, 8)
        assert result["resume"]["same"] == list(result["moco"]["after"])  # every entry of the state, in order


def test_batch_size_and_default_lr_are_for_the_whole_batch(two_processes):
    assert "batch size 9 on each of 2 processes (18 in all)" in two_processes[0]["batch_error"]
    single = resolve_config(
        build_config(None, ["method=simclr", f"train.batch_size={WORLD * B}"]), tiny_dataset(2, n=N)
    )
    assert two_processes[0]["default_lr"] == pytest.approx(single.optim.lr)


# ---- torchrun end to end ---------------------------------------------------------------------------


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={WORLD}",
        "-m",
        "icone",
        *args,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=240)


def test_torchrun_trains_one_run_folder_resumes_and_reports_errors_once(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2, n=16)  # 2 steps per epoch on 2 processes of 4
    train = [
        "train",
        "--data",
        str(npz),
        "--batch-size",
        "4",
        "--out",
        "run",
        *FAST,
        "train.device=cpu",
        "train.log_every=1",
    ]
    first = _torchrun([*train, "--epochs", "1", "eval.knn_k=5"], tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.count("run folder:") == 1  # the other process says nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run", "tiny.npz"]
    for name in ("config.yaml", "checkpoints/last.pt", "backbone.pt", "eval.json", "metrics.jsonl"):
        assert (tmp_path / "run" / name).is_file(), name

    second = _torchrun([*train, "--epochs", "2", "--resume", "eval.after_train=false"], tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "epoch"] == [0, 1, 2]  # written once, by rank 0
    assert [r["step"] for r in records if r["kind"] == "step"] == list(range(1, 5))  # 16 samples / (2 x 4) per epoch
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=False)
    assert (checkpoint["epoch"], checkpoint["step"], checkpoint["world_size"]) == (2, 4, WORLD)

    again = _torchrun([*train, "--epochs", "1"], tmp_path)  # rank 0 finds the folder taken; every process stops
    ours = [line for line in again.stderr.splitlines() if line.startswith("error:")]
    assert ours == [
        "error: run folder 'run' already exists; pass --resume to continue it, --overwrite to replace it, or choose another --out"
    ]
    assert again.returncode != 0 and re.search(
        r"exitcode\s*:\s*2\b", again.stderr
    )  # torchrun's report of the failed processes
