"""``icone speed``: a training step of each method against the backbone alone.

For one backbone and input shape, at every batch size of a list, each method's real training step
is timed (``setup.train_step`` of :func:`icone.build.setup`: views made on the device, autocast bf16 on CUDA,
backward, gradient clipping, optimizer step, ``after_optimizer_step``), and so is the floor no
method can beat: the backbone alone, forward + backward of the same views (same number and size,
view making included) plus its optimizer step. ``overhead_ratio = step_seconds /
backbone_step_seconds``. Methods whose cost grows with the number of instances (IConE's table) are
timed at every table size N of ``--instances`` (random samples and random indices in ``[0, N)``).
The data pipeline is timed against the step: the view maker alone, and the DataLoader + transfer +
view maker, in samples per second. Steps after warm-up, synchronised on CUDA, median over repeats.

Writes ``OUT/speed.json`` (a list of records) and ``OUT/speed.md`` (a table) after every record.
"""

from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Iterator
from typing import Any

import torch

from icone import build
from icone.bench.measure import PeakMemory, describe_device, environment_of, release_memory, time_calls
from icone.bench.report import progress_head
from icone.bench.speed_report import mib, write_speed
from icone.bench.speed_spec import SpeedSpec, input_dataset, method_config
from icone.build import Resolved
from icone.data import Dataset, IndexedDataset
from icone.errors import UserError
from icone.methods import Method, get_method
from icone.methods.base import NoOptions
from icone.methods.parts import forward_by_shape
from icone.nets import build_backbone
from icone.runtime import seed_everything
from icone.training.loader import Loaders
from icone.views import ViewMaker

# ---- timing -----------------------------------------------------------------------------------


class BackboneFloor(Method):
    """The backbone alone: one pass per view size, loss = mean square of the features. Not registered."""

    def training_step(
        self, views: list[torch.Tensor], index: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return forward_by_shape(self.backbone, views).float().pow(2).mean(), {}


def _batches(
    train_set: IndexedDataset, batch_size: int, instances: int, count: int, device: torch.device
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Random samples with random indices in ``[0, instances)`` (pinned on CUDA, as the loader does)."""
    generator = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(count):
        x = train_set.rows(torch.randint(0, len(train_set), (batch_size,), generator=generator))
        batches.append(
            (
                x.pin_memory() if device.type == "cuda" else x,
                torch.randint(0, instances, (batch_size,), generator=generator),
            )
        )
    return batches


def time_training(
    spec: SpeedSpec, resolved: Resolved, dataset: Dataset, instances: int, floor: bool = False,
    maker: ViewMaker | None = None,
) -> tuple[dict[str, Any], ViewMaker]:  # fmt: skip
    """Step seconds of the method of ``resolved`` built for ``instances`` (``floor``: of the backbone alone,
    with the pipeline's seconds per batch: the view maker's, the DataLoader + view maker's), with its peak
    memory (building included: IConE's table counts) and parameters. Views: ``maker``, or the method's."""
    config, device = resolved.config, resolved.runtime.device
    train_set = IndexedDataset(dataset.train)
    batches = iter(_batches(train_set, config.train.batch_size, instances, spec.warmup + spec.repeats, device))
    meter = PeakMemory(device)
    with meter:
        method = build_floor(config, instances) if floor else None
        setup = build.setup(resolved, dataset, num_instances=instances, method=method, steps=spec.warmup + spec.repeats)
        maker, step = maker or setup.views[0], setup.train_step
        seconds = time_calls(device, lambda: step(*next(batches), maker), spec.warmup, spec.repeats)
    result: dict[str, Any] = {"seconds": seconds, "peak_memory_bytes": meter.peak_bytes, "memory_kind": meter.kind,
                              "precision": step.precision,
                              "parameters": sum(p.numel() for p in setup.method.parameters() if p.requires_grad),
                              "chose": setup.method.describe()}  # fmt: skip
    if floor:
        result.update(_pipeline(spec, setup.loaders, maker, device))
    step = setup = batches = None  # freed before the next record is measured
    release_memory(device)
    return result, maker


def _pipeline(spec: SpeedSpec, loaders: Loaders, maker: ViewMaker, device: torch.device) -> dict[str, list[float]]:
    """Seconds per batch of the view maker alone, and of the training loader + transfer + view maker."""
    x = _batches(loaders.train_set, loaders.batch_size, len(loaders.train_set), 1, device)[0][0].to(device)
    views = time_calls(device, lambda: maker(x), spec.warmup, spec.repeats)
    batches = _loader_batches(loaders)
    fetched = time_calls(device, lambda: maker(next(batches).to(device, non_blocking=True)), spec.warmup, spec.repeats)
    return {"views_seconds": views, "loader_seconds": fetched}


def _loader_batches(loaders: Loaders) -> Iterator[torch.Tensor]:
    """The training loader, epoch after epoch."""
    epoch = 0
    while True:
        for x, _, _ in loaders.epoch(epoch):
            yield x
        epoch += 1


def build_floor(config: Any, num_instances: int) -> Method:
    """The backbone alone, initialised as :func:`icone.build.setup` initialises the method's."""
    seed_everything(config.train.seed)
    return BackboneFloor(build_backbone(build.backbone_spec(config.model)), NoOptions(), num_instances)


def view_layout(maker: ViewMaker) -> str:
    """``2 @ 28x28 + 2 @ 12x12``: global crops, then local crops."""
    parts = [f"{maker.spec.global_crops} @ {'x'.join(map(str, maker.global_shape))}"]
    if maker.spec.local_crops:
        parts.append(f"{maker.spec.local_crops} @ {'x'.join(map(str, maker.local_shape))}")
    return " + ".join(parts)


# ---- the run ----------------------------------------------------------------------------------

RECORD_KEYS = [
    "method",
    "batch_size",
    "instances",
    "status",
    "step_seconds",
    "step_seconds_min",
    "step_seconds_max",
    "backbone_step_seconds",
    "overhead_ratio",
    "views_seconds",
    "train_samples_per_second",
    "views_samples_per_second",
    "loader_samples_per_second",
    "peak_memory_bytes",
    "backbone_peak_memory_bytes",
    "memory_kind",
    "parameters",
    "views",
    "input_shape",
    "backbone",
    "precision",
    "device",
    "repeats",
    "warmup",
]


def planned(spec: SpeedSpec) -> list[tuple[str, int, int]]:
    """(method, batch size, instances): instance-table methods at every N, the others at the smallest."""
    return [
        (m, b, n)
        for m in spec.methods
        for b in spec.batch_sizes
        for n in (spec.instances if get_method(m).cost_grows_with_instances else [min(spec.instances)])
    ]


def _first_line(err: BaseException) -> str:
    return str(err).splitlines()[0] if str(err) else type(err).__name__


def _median(seconds: list[float]) -> float:
    return float(statistics.median(seconds))


def _timings(
    spec: SpeedSpec, resolved: Resolved, dataset: Dataset, instances: int, floors: dict[tuple[str, int], dict[str, Any]]
) -> tuple[dict[str, Any], dict[str, Any], ViewMaker]:
    """The method's timings, the floor's (measured once per view layout and batch size), the method's views."""
    result, maker = time_training(spec, resolved, dataset, instances)
    key = (view_layout(maker), resolved.config.train.batch_size)
    if key not in floors:
        floors[key] = time_training(spec, resolved, dataset, len(dataset.train), floor=True, maker=maker)[0]
    return result, floors[key], maker


def _ok(record: dict[str, Any], result: dict[str, Any], floor: dict[str, Any], maker: ViewMaker) -> dict[str, Any]:
    """A timed record: medians, rates, memory, and what the method's options chose."""
    batch = record["batch_size"]
    step, base, views, fetched = (
        _median(s) for s in (result["seconds"], floor["seconds"], floor["views_seconds"], floor["loader_seconds"])
    )
    record.update(
        status="ok", step_seconds=step, step_seconds_min=min(result["seconds"]),
        step_seconds_max=max(result["seconds"]), backbone_step_seconds=base, overhead_ratio=step / base,
        views_seconds=views, train_samples_per_second=batch / step, views_samples_per_second=batch / views,
        loader_samples_per_second=batch / fetched, peak_memory_bytes=result["peak_memory_bytes"],
        backbone_peak_memory_bytes=floor["peak_memory_bytes"], memory_kind=result["memory_kind"],
        parameters=result["parameters"], views=view_layout(maker), precision=result["precision"],
    )  # fmt: skip
    record["chose"] = ", ".join(f"{k}={v}" for k, v in result["chose"].items()) or None  # e.g. IConE's table path
    return record


def measure(
    spec: SpeedSpec, method: str, batch: int, instances: int, dataset: Dataset,
    floors: dict[tuple[str, int], dict[str, Any]], debug: bool = False,
) -> dict[str, Any]:  # fmt: skip
    """One record: the method's step against the backbone's (measured once per view layout and batch size)."""
    record: dict[str, Any] = {k: None for k in RECORD_KEYS}
    config = method_config(spec, method, batch)
    device = build.device(config)
    record.update(
        method=method, batch_size=batch, instances=instances, backbone=spec.backbone, repeats=spec.repeats,
        warmup=spec.warmup, input_shape=[dataset.in_channels, *dataset.spatial_shape], device=describe_device(device),
    )  # fmt: skip
    minimum = get_method(method).min_batch_size
    if batch < minimum:
        record["status"] = f"refused: below min batch ({minimum})"
        return record
    failed = None
    try:
        result, floor, maker = _timings(spec, build.resolve(config, dataset), dataset, instances, floors)
    except UserError as err:
        failed = f"refused: {err}"
    except (torch.cuda.OutOfMemoryError, MemoryError) as err:
        failed = f"out of memory: {_first_line(err)}"
    except Exception as err:
        if debug:
            raise
        failed = f"failed: {type(err).__name__}: {_first_line(err)}"
    if failed is not None:  # outside the except clause, so the traceback no longer holds the method's tensors
        release_memory(device)
        record["status"] = failed
        return record
    return _ok(record, result, floor, maker)


def progress_line(position: int, total: int, record: dict[str, Any]) -> str:
    n = f" N={record['instances']:,}" if get_method(record["method"]).cost_grows_with_instances else ""
    head = progress_head(position, total, record["method"], record["batch_size"], n)
    if record["status"] != "ok":
        return head + record["status"]
    return (
        head + f"{record['step_seconds'] * 1e3:.1f} ms/step, backbone {record['backbone_step_seconds'] * 1e3:.1f} ms, "
        f"overhead x{record['overhead_ratio']:.2f}, {record['train_samples_per_second']:.0f} samples/s "
        f"(loader + views {record['loader_samples_per_second']:.0f}), peak {mib(record['peak_memory_bytes'])} MiB"
    )


def warm_up(spec: SpeedSpec, resolved: Resolved, dataset: Dataset) -> None:
    """Two untimed backbone steps, so that one-time costs (kernel selection, allocator arenas, lazy
    initialisation) land in no record's time or peak memory."""
    time_training(dataclasses.replace(spec, warmup=1, repeats=1), resolved, dataset, len(dataset.train), floor=True)


def run_speed(spec: SpeedSpec, log: Callable[[str], None] = print, debug: bool = False) -> dict[str, Any]:
    """Time every planned record; write ``speed.json`` and ``speed.md`` into ``spec.out`` after each."""
    first = method_config(spec, spec.methods[0], spec.batch_sizes[0])
    device = build.device(first)
    dataset = input_dataset(spec, first)
    info = {**environment_of(device), "device": describe_device(device)}
    spec.out.mkdir(parents=True, exist_ok=True)
    plan = planned(spec)
    source = f"source {spec.data}" if spec.data else "random samples"
    log(
        f"speed: {len(spec.methods)} method(s) x {len(spec.batch_sizes)} batch size(s) = {len(plan)} record(s) on {spec.backbone}, "
        f"input {'x'.join(map(str, [dataset.in_channels, *dataset.spatial_shape]))} ({source}), {info['device']}; "
        f"median of {spec.repeats} steps after {spec.warmup} warm-up; into {spec.out}"
    )
    warm_up(spec, build.resolve(first, dataset), dataset)
    floors: dict[tuple[str, int], dict[str, Any]] = {}
    records: list[dict[str, Any]] = []
    for position, (method, batch, instances) in enumerate(plan, 1):
        records.append(measure(spec, method, batch, instances, dataset, floors, debug))
        log(progress_line(position, len(plan), records[-1]))
        write_speed(spec, records, info)
    return {"out": str(spec.out), "records": records, "files": ["speed.json", "speed.md"]}
