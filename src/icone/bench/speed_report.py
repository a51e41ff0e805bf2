"""The report of ``icone speed``: ``speed.json`` and the ``speed.md`` table."""

from __future__ import annotations

import json
from typing import Any

from icone.bench.grid import DEFAULT_NORM
from icone.bench.report import report_header
from icone.bench.speed_spec import SpeedSpec
from icone.files import atomic_write_text


def write_speed(spec: SpeedSpec, records: list[dict[str, Any]], info: dict[str, Any]) -> None:
    atomic_write_text(spec.out / "speed.json", json.dumps(records, indent=2))
    atomic_write_text(spec.out / "speed.md", speed_markdown(spec, records, info))


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / 2**20:.0f}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value * 1e3:.3g}"


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}" if value >= 100 else f"{value:.3g}"


def speed_markdown(spec: SpeedSpec, records: list[dict[str, Any]], info: dict[str, Any]) -> str:
    """The table, with the command, machine, date and torch version at the top."""
    shape = next((r["input_shape"] for r in records), None)
    precision = next((r["precision"] for r in records if r.get("precision")), "fp32 on CPU; bf16 or fp16 on CUDA")
    memory = next((r["memory_kind"] for r in records if r.get("memory_kind")), "cuda_max_allocated or cpu_rss_growth")
    paths = any(r.get("chose") for r in records)
    lines = report_header("icone speed", spec.command, info, f"; precision {precision}.") + [
        f"Backbone `{spec.backbone}` (norm `{DEFAULT_NORM}` unless overridden), input {'x'.join(map(str, shape or []))} "
        f"({'source `' + spec.data + '`' if spec.data else 'random samples'}), overrides `{' '.join(spec.overrides) or 'none'}`. "
        f"Median of {spec.repeats} timed steps after {spec.warmup} warm-up steps; peak memory is {memory}.",
        "",
    ]
    head = (
        ["method", "batch", "N"]
        + (["chose"] if paths else [])
        + [
            "views",
            "step ms",
            "backbone ms",
            "overhead",
            "views ms",
            "train samples/s",
            "views samples/s",
            "loader+views samples/s",
            "peak MiB",
            "backbone peak MiB",
            "status",
        ]
    )
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in records:
        ok = r["status"] == "ok"
        path = r.get("chose") or "-"
        cells = [r["method"], str(r["batch_size"]), f"{r['instances']:,}"] + ([path] if paths else [])
        cells += [
            r["views"] or "-",
            _ms(r["step_seconds"]),
            _ms(r["backbone_step_seconds"]),
            f"{r['overhead_ratio']:.2f}x" if ok else "-",
            _ms(r["views_seconds"]),
            _rate(r["train_samples_per_second"]),
            _rate(r["views_samples_per_second"]),
            _rate(r["loader_samples_per_second"]),
            mib(r["peak_memory_bytes"]),
            mib(r["backbone_peak_memory_bytes"]),
            r["status"],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "overhead = step / backbone step: the backbone alone (forward + backward of the same views, its optimizer step, view "
        "making included in both) is the floor no method can beat. The data pipeline keeps up when loader+views samples/s is well "
        "above train samples/s. N: instances the method was built for (the table size for IConE). See docs/speed.md.",
    ]
    return "\n".join(lines) + "\n"
