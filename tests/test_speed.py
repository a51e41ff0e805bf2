"""``icone speed``: a tiny timing run end to end (records, table), IConE at two N, refusals, the CLI, bad input.

Never asserts on wall time: the machine is shared; only that times are positive and consistent.
"""

import json

import pytest

from helpers import run_cli, write_tiny_npz
from icone.bench import speed, speed_spec
from icone.errors import UserError
from icone.methods.icone import IConE

TINY = ["model.width=8"]
REQUIRED = [
    "method",
    "batch_size",
    "instances",
    "status",
    "step_seconds",
    "backbone_step_seconds",
    "overhead_ratio",
    "peak_memory_bytes",
    "device",
    "views_samples_per_second",
    "loader_samples_per_second",
    "train_samples_per_second",
    "views",
    "input_shape",
]
SPEED_FAST = ["--input-size", "8", "--repeats", "1", "--warmup", "0", "model.width=8"]


def tiny_spec(out, **kwargs):
    values = dict(
        methods="icone,simclr",
        batch_sizes="1,4",
        instances="50,300",
        input_size=12,
        repeats=2,
        warmup=1,
        out=out,
        overrides=TINY,
        command="icone speed (test)",
    )
    return speed_spec.build_speed_spec(**{**values, **kwargs})


@pytest.fixture(scope="module")
def timed(tmp_path_factory):
    """icone at N = 50 and 300, simclr (refused at batch 1), batch sizes 1 and 4, 2 timed steps each."""
    out = tmp_path_factory.mktemp("speed") / "out"
    lines: list[str] = []
    result = speed.run_speed(tiny_spec(out), log=lines.append)
    return out, result, lines


def test_speed_json_has_one_record_per_method_batch_and_table_size(timed):
    out, result, _ = timed
    records = json.loads((out / "speed.json").read_text())
    assert records == result["records"]
    assert [(r["method"], r["batch_size"], r["instances"]) for r in records] == [
        ("icone", 1, 50),
        ("icone", 1, 300),
        ("icone", 4, 50),
        ("icone", 4, 300),
        ("simclr", 1, 50),
        ("simclr", 4, 50),
    ]
    for record in records:
        assert set(REQUIRED) <= set(record), set(REQUIRED) - set(record)
        assert record["device"].startswith("cpu (") or "cuda" in record["device"]
        assert record["input_shape"] == [1, 12, 12]
    for record in [r for r in records if r["status"] == "ok"]:
        assert record["step_seconds"] > 0 and record["backbone_step_seconds"] > 0
        assert record["overhead_ratio"] == pytest.approx(record["step_seconds"] / record["backbone_step_seconds"])
        assert record["step_seconds_min"] <= record["step_seconds"] <= record["step_seconds_max"]
        assert record["train_samples_per_second"] == pytest.approx(record["batch_size"] / record["step_seconds"])
        assert record["views_samples_per_second"] > 0 and record["loader_samples_per_second"] > 0
        assert record["peak_memory_bytes"] >= 0 and record["memory_kind"] in ("cpu_rss_growth", "cuda_max_allocated")
        assert record["views"] == "2 @ 12x12" and record["repeats"] == 2 and record["warmup"] == 1


def test_icone_is_built_with_n_instances_and_the_floor_is_shared(timed):
    _, result, _ = timed
    icone = {(r["batch_size"], r["instances"]): r for r in result["records"] if r["method"] == "icone"}
    assert all(r["status"] == "ok" for r in icone.values())
    for batch in (1, 4):  # the table is N x d: 250 more rows, the same backbone
        small, large = icone[(batch, 50)], icone[(batch, 300)]
        assert (large["parameters"] - small["parameters"]) % 250 == 0 and large["parameters"] > small["parameters"]
        assert (
            small["backbone_step_seconds"] == large["backbone_step_seconds"]
        )  # measured once per view layout and batch
    assert {r["chose"] for r in icone.values()} == {
        "table_path=dense"
    }  # "auto" picks the dense path for 50 and 300 rows


def test_below_minimum_batch_is_a_record_not_an_error(timed):
    _, result, lines = timed
    refused = [r for r in result["records"] if r["method"] == "simclr" and r["batch_size"] == 1]
    assert refused[0]["status"] == "refused: below min batch (2)" and refused[0]["step_seconds"] is None
    assert "[5/6] simclr b=1: refused: below min batch (2)" in lines
    assert any(line.startswith("[6/6] simclr b=4: ") and "overhead x" in line for line in lines)


def test_markdown_table(timed):
    out, _, _ = timed
    table = (out / "speed.md").read_text()
    for text in (
        "# icone speed",
        "icone speed (test)",
        "torch",
        "CPUs",
        "Date:",
        "| method | batch | N |",
        "overhead",
        "refused: below min batch (2)",
        "| icone | 4 | 300 |",
    ):
        assert text in table, text


def test_the_timed_step_is_the_trainers(tmp_path, monkeypatch):
    """Every warm-up and timed step goes through the optimizer and after_optimizer_step, as in training."""
    calls = []
    monkeypatch.setattr(IConE, "after_optimizer_step", lambda self, step, total: calls.append((step, total)))
    speed.run_speed(
        tiny_spec(tmp_path, methods="icone", batch_sizes="2", instances="20", repeats=3, warmup=2), log=lambda _: None
    )
    assert calls == [(s, 5) for s in range(1, 6)]


def test_a_broken_method_is_a_failed_record_and_the_run_goes_on(tmp_path, monkeypatch):
    from icone.methods.simclr import SimCLR

    def broken(self, views, index):
        raise RuntimeError("broken step\nmore")

    monkeypatch.setattr(SimCLR, "training_step", broken)
    spec = tiny_spec(tmp_path, methods="simclr,icone", batch_sizes="2", instances="20", repeats=1, warmup=0)
    records = speed.run_speed(spec, log=lambda _: None)["records"]
    assert [r["status"] for r in records] == ["failed: RuntimeError: broken step", "ok"]
    assert json.loads((tmp_path / "speed.json").read_text())[0]["step_seconds"] is None


def test_method_options_pass_through(tmp_path):
    spec = tiny_spec(
        tmp_path,
        methods="icone",
        batch_sizes="2",
        instances="20",
        repeats=1,
        warmup=0,
        overrides=TINY + ["icone.table_path=sparse", "simclr.temperature=0.5"],
    )
    records = speed.run_speed(spec, log=lambda _: None)["records"]
    assert records[0]["status"] == "ok" and records[0]["chose"] == "table_path=sparse"


def test_3d_input(tmp_path):
    spec = tiny_spec(
        tmp_path, methods="simclr", batch_sizes="2", instances="10", input_size=8, spatial_dims=3, repeats=1, warmup=0
    )
    (record,) = speed.run_speed(spec, log=lambda _: None)["records"]
    assert record["status"] == "ok", record["status"]
    assert record["input_shape"] == [1, 8, 8, 8] and record["views"] == "2 @ 8x8x8"


def test_cli_writes_speed_json_and_table_from_a_source(tmp_path, capsys):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    code, out, err = run_cli(
        [
            "speed",
            "--data",
            npz,
            "--methods",
            "simclr",
            "--batch-sizes",
            "2",
            "--instances",
            "10",
            "--repeats",
            "1",
            "--warmup",
            "0",
            "--backbone",
            "smallcnn",
            "--out",
            tmp_path / "speed",
            "model.width=8",
        ],
        capsys,
    )
    assert code == 0, err
    assert "[1/1] simclr b=2: " in out and "speed folder:" in out
    (record,) = json.loads((tmp_path / "speed" / "speed.json").read_text())
    assert record["status"] == "ok" and record["input_shape"] == [1, 16, 16]
    assert "icone speed --data" in (tmp_path / "speed" / "speed.md").read_text()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--methods", "nope"], "unknown method 'nope'"),
        (["--batch-sizes", "1,x"], "--batch-sizes takes a comma-separated list"),
        (["--instances", "0"], "--instances must be at least 1"),
        (["--methods", "simclr", "--batch-sizes", "1"], "nothing to time"),
        (["--seeds", "2"], "No such option: --seeds"),
        (["method=icone"], "method is set by icone speed; use --methods"),
        (["icone.nope=1"], "unknown option 'icone.nope'"),
        (["--data", "digits"], "--data gives the input shape"),
        (["--spatial-dims", "3", "--backbone", "smallcnn-2d"], "is 2D but --spatial-dims is 3"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    code, _, err = run_cli(["speed", *SPEED_FAST, "--out", tmp_path / "s", *args], capsys)
    assert code == 2 and message in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "s").exists()


@pytest.mark.parametrize("flag", [["--speed"], ["--instances", "10"]])
def test_bench_times_nothing(tmp_path, capsys, flag):
    """Timings are `icone speed`'s: `icone bench` takes neither --speed nor its options."""
    code, _, err = run_cli(["bench", *flag, "--out", tmp_path / "s"], capsys)
    assert code == 2 and f"No such option: {flag[0]}" in err and not (tmp_path / "s").exists()


def test_spec_defaults():
    spec = speed_spec.build_speed_spec()
    assert (
        spec.methods == speed_spec.DEFAULT_METHODS
        and spec.instances == [1_000, 100_000, 1_000_000]
        and str(spec.out) == "bench/speed"
    )
    with pytest.raises(UserError, match="--warmup must be 0 or more"):
        speed_spec.build_speed_spec(warmup=-1)
