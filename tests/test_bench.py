"""``icone bench``: a tiny grid end to end (results, summary, plots), refusals, resumption, bad input."""

import csv
import json
import shutil

import pytest

from helpers import run_cli, write_tiny_npz
from icone import bench
from icone.errors import UserError
from icone.methods.icone import IConE

TINY = ["model.width=8", "train.monitor_samples=16", "eval.knn_k=5"]
REQUIRED = [
    "method",
    "batch_size",
    "seed",
    "imbalance",
    "status",
    "knn_accuracy",
    "linear_accuracy",
    "linear_balanced_accuracy",
    "rankme",
    "intrinsic_dimension",
    "empty_cluster_fraction",
    "train_seconds",
    "peak_memory_bytes",
    "baseline_knn_accuracy",
    "lr",
    "lr_scaling",
]


def tiny_spec(npz, out, **kwargs):
    values = dict(
        data=str(npz),
        methods="icone",
        batch_sizes="1,4",
        seeds=1,
        epochs=1,
        imbalance="1,2",
        backbone="smallcnn",
        out=out,
        overrides=TINY,
        command="icone bench (test)",
    )
    return bench.build_spec(**{**values, **kwargs})


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """icone at batch sizes 1 and 4, imbalance 1 and 2, with a fake minimum batch size of 2: two cells run, two are refused."""
    root = tmp_path_factory.mktemp("bench")
    npz = write_tiny_npz(root / "tiny.npz", 2)
    lines = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(IConE, "min_batch_size", 2)
        result = bench.run_bench(tiny_spec(npz, root / "grid"), log=lines.append)
    return npz, root / "grid", result, lines


def read_csv(out):
    with (out / "results.csv").open() as handle:
        return list(csv.DictReader(handle))


def test_results_have_one_row_per_cell_with_the_columns(grid):
    _, out, _, _ = grid
    rows = read_csv(out)
    assert set(REQUIRED) <= set(rows[0])
    assert [(r["batch_size"], r["imbalance"]) for r in rows] == [("1", "1.0"), ("4", "1.0"), ("1", "2.0"), ("4", "2.0")]
    for row in rows:
        if row["batch_size"] == "1":
            assert row["status"] == "refused: below min batch (2)"
            assert row["knn_accuracy"] == "" and row["train_seconds"] == ""
        else:
            assert row["status"] == "ok", row["status"]
            for key in (
                "knn_accuracy",
                "linear_accuracy",
                "linear_balanced_accuracy",
                "rankme",
                "intrinsic_dimension",
                "baseline_knn_accuracy",
            ):
                assert float(row[key]) >= 0, key
            assert row["empty_cluster_fraction"] == ""  # icone is not a clustering method
            assert (
                float(row["train_seconds"]) > 0
                and int(row["peak_memory_bytes"]) >= 0
                and row["memory_kind"] == "cpu_rss_growth"
            )
            assert (
                float(row["lr"]) == pytest.approx(IConE.default_lr * (int(row["batch_size"]) / 64) ** 0.5)
                and row["lr_scaling"] == "sqrt"
            )
            assert (
                row["epochs"] == "1"
                and int(row["steps"]) == (12 if row["imbalance"] == "1.0" else int(row["steps"])) > 0
            )
            assert int(row["forward_passes"]) == 2 * 4 * int(row["steps"])  # 2 views x batch 4 x steps
    document = json.loads((out / "results.json").read_text())
    assert [r["status"] for r in document["rows"]] == [r["status"] for r in rows]
    assert document["command"] == "icone bench (test)" and document["settings"]["reference_batch"] == 64
    assert (out / "cells" / "icone-b4-r1-s0" / "eval.json").is_file() and not (
        out / "cells" / "icone-b1-r1-s0"
    ).exists()


def test_cells_use_the_grid_norm_and_the_method_lr(grid):
    _, out, _, _ = grid
    config = (out / "cells" / "icone-b4-r2-s0" / "config.yaml").read_text()
    assert "norm: group" in config and "imbalance_ratio: 2.0" in config and "batch_size: 4" in config


def test_summary_and_plots(grid):
    _, out, result, lines = grid
    summary = (out / "summary.md").read_text()
    for text in (
        "icone bench (test)",
        "torch",
        "CPUs",
        "| icone | 4 | 2 | 1/1 |",
        "refused (min 2)",
        "kNN accuracy by batch size",
        "Untrained encoder",
    ):
        assert text in summary, text
    for name in ("accuracy_vs_batch_size.png", "collapse_vs_batch_size.png", "accuracy_vs_imbalance.png"):
        assert (out / "plots" / name).stat().st_size > 1000, name
    progress = [line for line in lines if line.startswith("[")]
    assert len(progress) == 4 and all("kNN" in line for line in progress)
    assert "icone b=4 r=1 s=0: ok" in progress[1] and "(trained)" in progress[1]
    assert sorted(result["files"])[:2] == ["plots/accuracy_vs_batch_size.png", "plots/accuracy_vs_imbalance.png"]


def test_an_interrupted_grid_continues_where_it_stopped(grid, tmp_path, monkeypatch, capsys):
    npz, first, _, _ = grid
    out = tmp_path / "grid"
    shutil.copytree(first, out)
    cells = out / "cells"
    kept = (cells / "icone-b4-r1-s0" / "checkpoints" / "last.pt").stat().st_mtime_ns
    (cells / "icone-b4-r1-s0" / "eval.json").unlink()  # stopped between training and evaluation
    shutil.rmtree(cells / "icone-b4-r2-s0")  # stopped before this cell began
    for name in ("results.csv", "results.json", "summary.md"):
        (out / name).unlink()
    monkeypatch.setattr(IConE, "min_batch_size", 2)
    import icone.runs

    calls = []
    real = icone.runs.train_run
    monkeypatch.setattr(
        icone.runs,
        "train_run",
        lambda config, out, resume, **kw: calls.append((out.name, resume)) or real(config, out, resume, **kw),
    )
    args = [
        "bench",
        "--data",
        npz,
        "--methods",
        "icone",
        "--batch-sizes",
        "1,4",
        "--seeds",
        "1",
        "--epochs",
        "1",
        "--imbalance",
        "1,2",
        "--backbone",
        "smallcnn",
        "--out",
        out,
        *TINY,
    ]
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 0, stderr
    assert calls == [("icone-b4-r1-s0", True), ("icone-b4-r2-s0", False)]
    assert (
        cells / "icone-b4-r1-s0" / "checkpoints" / "last.pt"
    ).stat().st_mtime_ns == kept  # resumed at its end: not retrained
    assert (cells / "icone-b4-r1-s0" / "eval.json").is_file() and (cells / "icone-b4-r2-s0" / "eval.json").is_file()
    assert "(resumed)" in stdout and "(trained)" in stdout
    assert [r["status"] for r in read_csv(out)] == ["refused: below min batch (2)", "ok"] * 2
    assert "icone bench --data" in (out / "summary.md").read_text()
    calls.clear()
    code, stdout, _ = run_cli(args, capsys)  # everything done: read back, nothing trained
    assert code == 0 and calls == [] and stdout.count("(read back)") == 2


def test_unknown_method_is_one_line_exit_2(tmp_path, capsys):
    code, _, err = run_cli(["bench", "--methods", "icone,nope", "--out", tmp_path / "b"], capsys)
    assert code == 2 and err.strip().count("\n") == 0 and "Traceback" not in err
    assert "unknown method 'nope'" in err and "icone" in err.split("choose from:")[1]
    assert not (tmp_path / "b").exists()


def test_bad_input_fails_before_any_cell(grid, tmp_path):
    npz, out, _, _ = grid
    with pytest.raises(UserError, match="use --batch-sizes"):
        tiny_spec(npz, tmp_path / "x", overrides=["train.batch_size=8"])
    with pytest.raises(UserError, match="unknown option"):
        tiny_spec(npz, tmp_path / "x", overrides=["model.nope=1"])
    with pytest.raises(UserError, match="optim.lr_scaling='cubic' is not valid"):
        tiny_spec(npz, tmp_path / "x", overrides=["optim.lr_scaling=cubic"])
    with pytest.raises(UserError, match="other epochs"):  # an existing grid folder with other settings
        bench.run_bench(tiny_spec(npz, out, epochs=2), log=lambda line: None)


def test_presets_and_explicit_values(monkeypatch, tmp_path):
    from icone.bench import grid

    assert bench.build_spec(out=tmp_path / "q").methods == grid.PRESETS["quick"]["methods"]
    monkeypatch.setitem(grid.PRESETS, "quick", {**grid.PRESETS["quick"], "methods": ["icone", "not_written_yet"]})
    with pytest.raises(UserError, match="unknown method 'not_written_yet'"):
        bench.build_spec(out=tmp_path / "q")
    monkeypatch.undo()
    assert bench.build_spec(preset="quick", epochs=7, out=tmp_path / "q").epochs == 7  # explicit values win
    again = bench.build_spec(preset="quick", overrides=["model.width=16", "model.norm=layer"], out=tmp_path / "q")
    assert again.overrides == [
        "model.width=16",
        "model.norm=layer",
    ]  # the preset's own override, given again, is kept once


def test_lr_scaling_rules():
    from icone.build import scaled_lr

    assert scaled_lr(1e-3, 16, "none") == 1e-3
    assert scaled_lr(1e-3, 16, "sqrt") == pytest.approx(5e-4)
    assert scaled_lr(1e-3, 16, "linear") == pytest.approx(2.5e-4)


def test_a_grid_honours_and_records_the_lr_rule_it_is_given(tmp_path):
    import yaml

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    spec = tiny_spec(
        npz, tmp_path / "grid", batch_sizes="4", imbalance="1", overrides=TINY + ["optim.lr_scaling=linear"]
    )
    (row,) = bench.run_bench(spec, log=lambda line: None)["rows"]
    linear = IConE.default_lr * 4 / 64
    assert row["status"] == "ok" and row["lr_scaling"] == "linear" and row["lr"] == pytest.approx(linear)
    saved = yaml.safe_load((tmp_path / "grid" / "cells" / "icone-b4-r1-s0" / "config.yaml").read_text())
    assert saved["optim"]["lr_scaling"] == "linear" and saved["optim"]["lr"] == pytest.approx(
        linear
    )  # what the cell trained with


def test_a_diverged_or_failed_cell_does_not_stop_the_grid(tmp_path, monkeypatch):
    import icone.runs
    from icone.errors import TrainingDiverged

    calls = []

    def fake_train_run(config, out, resume, **kw):
        calls.append(out.name)
        out.mkdir(parents=True, exist_ok=True)
        if config.train.batch_size == 2:
            raise TrainingDiverged("the loss became nan at epoch 1, step 3; the last good checkpoint is kept")
        raise RuntimeError("boom")

    monkeypatch.setattr(icone.runs, "train_run", fake_train_run)
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    spec = tiny_spec(npz, tmp_path / "grid", batch_sizes="2,4", imbalance="1")
    result = bench.run_bench(spec, log=lambda line: None)
    assert [r["status"] for r in result["rows"]] == [
        "diverged: the loss became nan at epoch 1, step 3",
        "failed: RuntimeError: boom",
    ]
    assert "## Cells that did not finish" in (tmp_path / "grid" / "summary.md").read_text()
    assert (tmp_path / "grid" / "plots" / "accuracy_vs_batch_size.png").is_file()
    calls.clear()
    bench.run_bench(spec, log=lambda line: None)  # diverged cells are kept (deterministic), failed ones are tried again
    assert calls == ["icone-b4-r1-s0"]


def test_the_lr_sweep_tries_every_factor_and_the_grid_uses_the_best(tmp_path, monkeypatch):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    knn_at_factor = {0.5: 0.2, 2.0: 0.6}  # a fake evaluation: factor 2 wins for icone, 0.5 for simclr
    import icone.runs  # run_cell imports evaluate_run from here at call time

    real = icone.runs.evaluate_run
    splits = {}

    def fake_evaluate(run_dir, *args, **kwargs):
        result = real(run_dir, *args, **kwargs)
        splits[str(run_dir)] = (kwargs.get("split", "test"), result.get("split", "test"))
        factor = 2.0 if "-lr2" in run_dir.name else 0.5 if "-lr0.5" in run_dir.name else None
        if factor is not None:
            score = knn_at_factor[factor]
            result["knn_accuracy"] = score if "icone" in run_dir.name else 1 - score
        return result

    monkeypatch.setattr(icone.runs, "evaluate_run", fake_evaluate)
    spec = tiny_spec(
        npz, tmp_path / "grid", methods="icone,simclr", batch_sizes="2", imbalance="1", lr_sweep="0.5,2", sweep_batch=2
    )
    result = bench.run_bench(spec, log=lambda line: None)
    sweep = json.loads((tmp_path / "grid" / "sweep.json").read_text())["rows"]
    assert sorted((r["method"], r["lr_factor"]) for r in sweep) == [
        ("icone", 0.5),
        ("icone", 2.0),
        ("simclr", 0.5),
        ("simclr", 2.0),
    ]
    assert all(r["batch_size"] == 2 and r["seed"] == 0 and r["status"] == "ok" for r in sweep)
    assert json.loads((tmp_path / "grid" / "lr_choice.json").read_text()) == {"icone": 2.0, "simclr": 0.5}
    rows = {r["method"]: r for r in result["rows"]}
    for method, factor in (("icone", 2.0), ("simclr", 0.5)):
        default = bench.grid.get_method(method).default_lr * (2 / 64) ** 0.5
        assert rows[method]["lr_factor"] == factor and rows[method]["lr"] == pytest.approx(default * factor)
    summary = (tmp_path / "grid" / "summary.md").read_text()
    assert "## lr sweep (batch 2" in summary and "| icone | 0.200" in summary and "validation split" in summary
    for run_dir, (asked, scored) in splits.items():  # the sweep chose on a validation split, the grid reports the test
        assert asked == scored == ("validation" if "/sweep/" in run_dir else "test"), run_dir
    assert len(splits) == 6 and all(
        (tmp_path / "grid" / "cells" / r["cell"] / "eval_validation.json").is_file() for r in sweep
    )


def test_the_validation_split_is_a_stratified_seeded_part_of_the_training_split():
    from icone.config import DataConfig
    from icone.data import load_dataset
    from icone.data.arrays import validation_split

    def images(split) -> set[bytes]:
        return {row.tobytes() for chunk in split.samples.chunks(512) for row in chunk}

    data = load_dataset(DataConfig(source="synthetic2d"), seed=0)
    split = validation_split(data)
    assert len(split.test) == round(0.2 * len(data.train)) and len(split.train) + len(split.test) == len(data.train)
    assert images(split.train) | images(split.test) == images(data.train)  # carved from the training split...
    assert not images(split.train) & images(split.test) and not images(split.test) & images(data.test)  # ...only
    for c in range(8):  # each class keeps its share
        assert (split.test.labels == c).sum() == pytest.approx((data.train.labels == c).sum() * 0.2, abs=1)
    assert (validation_split(data).test.labels == split.test.labels).all()  # seeded


def test_sweep_options_are_checked(tmp_path):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    with pytest.raises(UserError, match="--lr-sweep takes factors above 0"):
        tiny_spec(npz, tmp_path / "g", lr_sweep="0,1")
    with pytest.raises(UserError, match="--sweep-batch goes with --lr-sweep"):
        tiny_spec(npz, tmp_path / "g", sweep_batch=4)


def test_ctrl_c_stops_the_grid_exit_130_and_the_same_command_resumes_the_cell(tmp_path, monkeypatch, capsys):
    """Issue 19: Ctrl-C was caught as a failed cell and the grid went on (exit 0)."""
    from icone.training.trainer import Trainer

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    out = tmp_path / "grid"
    args = ["bench", "--data", npz, "--methods", "icone", "--batch-sizes", "4,8,16", "--seeds", "1", "--epochs", "2",
            "--imbalance", "1", "--backbone", "smallcnn", "--out", out, *TINY]  # fmt: skip
    real_fit = Trainer.fit

    def ctrl_c_in_the_second_cell(self, until_epoch=None):
        if self.run_dir.name == "icone-b8-r1-s0" and self.epoch == 0:
            real_fit(self, until_epoch=1)  # one epoch and its checkpoint, then the user presses Ctrl-C
            raise KeyboardInterrupt
        return real_fit(self, until_epoch)

    monkeypatch.setattr(Trainer, "fit", ctrl_c_in_the_second_cell)
    code, stdout, stderr = run_cli(args, capsys)
    assert code == 130, stderr
    line = stderr.strip()
    assert "\n" not in line and line.startswith("interrupted in cell icone-b8-r1-s0"), line
    assert "continue with 'icone bench --data " in line and f"--out {out}" in line
    cells = out / "cells"
    assert (cells / "icone-b4-r1-s0" / "eval.json").is_file() and not (cells / "icone-b16-r1-s0").exists()
    assert not (cells / "icone-b8-r1-s0" / "bench.json").exists()  # not recorded as a failed cell
    code, stdout, stderr = run_cli(args, capsys)  # the command the line names
    assert code == 0, stderr
    assert next(x for x in stdout.splitlines() if " icone b=8 " in x).endswith("(resumed)")
    records = [json.loads(x) for x in (cells / "icone-b8-r1-s0" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["kind"] == "resume"] == [1]  # from its checkpoint, not from scratch
    assert [r["status"] for r in read_csv(out)] == ["ok", "ok", "ok"]


def test_a_grid_inside_the_data_folder_is_refused(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    data = tmp_path / "images"
    data.mkdir()
    for i in range(8):
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (16, 16), np.uint8)).save(data / f"{i}.png")
    code, _, err = run_cli(["bench", "--data", data, "--methods", "icone", "--out", data / "grid", *TINY], capsys)
    assert code == 2 and "is inside the data folder" in err and sorted(p.name for p in data.iterdir())[-1] == "7.png"
