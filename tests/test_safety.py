"""Nothing a user has is ever lost, and every mistake is one line (the ten defects of the safety issue)."""

from __future__ import annotations

import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import FAST, expect_error, run_cli, write_tiny_npz
from icone.run_folder import MARKER, RunLock

TRAIN = ["--epochs", "1", "--batch-size", "8", *FAST, "eval.after_train=false"]


def icone_subprocess(*args: object, **kwargs) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "icone", *map(str, args)], capture_output=True, text=True, env=env, **kwargs
    )


def one_line(stderr: str) -> str:
    line = stderr.strip()
    assert "\n" not in line and "Traceback" not in line, stderr
    return line


@pytest.fixture
def npz(tmp_path) -> Path:
    return write_tiny_npz(tmp_path / "tiny.npz", 2)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---- 1. --overwrite replaces only icone run folders -------------------------------------------


def test_overwrite_refuses_the_data_folder(capsys, tmp_path):
    from PIL import Image

    data = tmp_path / "mydata"
    (data / "a").mkdir(parents=True)
    for i in range(8):
        Image.fromarray((np.random.default_rng(i).random((8, 8)) * 255).astype(np.uint8)).save(data / "a" / f"{i}.png")
    before = snapshot(data)
    expect_error(
        capsys,
        ["train", "--data", data, "--out", data, "--overwrite", *TRAIN],
        "overwrite would delete.*holds '.*mydata'",
    )
    assert snapshot(data) == before


def test_overwrite_refuses_the_current_folder_and_folders_with_other_files(capsys, tmp_path, monkeypatch, npz):
    work = tmp_path / "work"
    work.mkdir()
    (work / "notes.txt").write_text("mine")
    monkeypatch.chdir(work)
    expect_error(capsys, ["train", "--data", npz, "--out", ".", "--overwrite", *TRAIN], "holds the current folder")
    expect_error(capsys, ["train", "--data", npz, "--out", tmp_path, "--overwrite", *TRAIN], "holds the current folder")
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.csv").write_text("a,b\n")
    expect_error(
        capsys, ["train", "--data", npz, "--out", other, "--overwrite", *TRAIN], "replaces only icone run folders"
    )
    assert (work / "notes.txt").read_text() == "mine" and (other / "results.csv").read_text() == "a,b\n"


def test_overwrite_replaces_a_run_folder(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    assert (run / MARKER).is_file()
    (run / "metrics.jsonl").write_text('{"kind": "epoch", "epoch": 99, "step": 99}\n')
    code, _, err = run_cli(["train", "--data", npz, "--out", run, "--overwrite", *TRAIN], capsys)
    assert code == 0, err
    assert '"epoch": 99' not in (run / "metrics.jsonl").read_text()
    assert not list(tmp_path.glob(".run.replaced-*"))


def test_a_failed_overwrite_puts_the_old_run_back(capsys, tmp_path, npz, monkeypatch):
    from icone.training.trainer import Trainer

    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    before = snapshot(run)

    def broken(self, *args, **kwargs):
        raise RuntimeError("the machine broke")

    monkeypatch.setattr(Trainer, "fit", broken)
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", run, "--overwrite", *TRAIN],
        "internal error: RuntimeError: the machine broke",
        code=1,
    )
    after = snapshot(run)
    after.pop(".lock", None), before.pop(".lock", None)
    assert after == before


def test_a_run_that_fails_before_its_first_checkpoint_leaves_nothing(capsys, tmp_path, npz, monkeypatch):
    from icone.training.trainer import Trainer

    monkeypatch.setattr(Trainer, "fit", lambda self, *a, **k: (_ for _ in ()).throw(MemoryError()))
    run = tmp_path / "run"
    expect_error(
        capsys,
        ["train", "--data", npz, "--out", run, *TRAIN],
        "out of memory training on .* lower --batch-size",
        code=1,
    )
    assert not run.exists()  # so the same command can simply be run again


def test_a_replacement_cut_short_by_a_kill_is_undone(capsys, tmp_path, npz):
    from icone.run_folder import settle_interrupted_replacement

    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    before = snapshot(run)
    aside = tmp_path / ".run.replaced-999999999"  # as a killed process (no such pid) left it
    run.rename(aside)
    run.mkdir()
    (run / "config.yaml").write_text("half written")
    assert "restored" in settle_interrupted_replacement(run)
    assert snapshot(run) == before and not aside.exists()


# ---- 2. usage errors are one line, exit 2 --------------------------------------------------------


@pytest.mark.parametrize(
    "args,pattern",
    [
        (["train", "--epoch", "3"], r"No such option: --epoch .*--epochs.*see 'icone train --help'"),
        (["trian"], r"No such command 'trian'.*Did you mean 'train'"),
        (["train", "--epochs", "abc"], r"Invalid value for '--epochs'.*integer"),
        (["embed", "run", "--out", "x.npz"], r"Missing option '--data'"),
    ],
)
def test_usage_errors_are_one_line(args, pattern):
    result = icone_subprocess(*args)
    assert result.returncode == 2, result.stderr
    line = one_line(result.stderr)
    assert __import__("re").search(pattern, line), line


def test_an_unwritable_out_is_one_line(capsys, tmp_path, npz, monkeypatch):
    from icone.run_folder import RunFolder

    def read_only(self, mode="new"):
        raise PermissionError(errno.EROFS, "Read-only file system", str(self.path))

    monkeypatch.setattr(RunFolder, "open", read_only)
    expect_error(
        capsys, ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN], "no permission to write '.*run' .Read-only"
    )


def test_a_full_disk_is_one_line(capsys, tmp_path, npz, monkeypatch):
    import icone.files

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "run" / "config.yaml"))

    monkeypatch.setattr(icone.files, "atomic_write_text", full)
    monkeypatch.setattr("icone.config.atomic_write_text", full)
    expect_error(capsys, ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN], "the disk is full")
    assert not (tmp_path / "run").exists()


# ---- 3. Ctrl-C: exit 130, the checkpoint named -------------------------------------------------


def test_ctrl_c_exits_130_and_names_the_checkpoint(tmp_path, npz):
    run = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        sys.executable,
        "-m",
        "icone",
        "train",
        "--data",
        str(npz),
        "--out",
        str(run),
        "--epochs",
        "100000",
        "--batch-size",
        "8",
        *FAST,
    ]
    log = tmp_path / "stderr.txt"  # a file, not a pipe: a pipe nobody reads while we wait could fill and block the run
    with log.open("w") as err:
        # a child inherits an ignored SIGINT (some library in this pytest process may set it), and Python
        # then installs no Ctrl-C handler: start it with the default, as a terminal does
        restore = lambda: signal.signal(signal.SIGINT, signal.SIG_DFL)  # noqa: E731
        process = subprocess.Popen(args, stderr=err, stdout=subprocess.DEVNULL, text=True, env=env, preexec_fn=restore)
        deadline = time.time() + 180
        while not (run / "checkpoints" / "last.pt").is_file() and time.time() < deadline and process.poll() is None:
            time.sleep(0.2)
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=120)
        except subprocess.TimeoutExpired:
            process.kill()
            pytest.fail(f"no exit 120 s after Ctrl-C; stderr ends: {log.read_text()[-2000:]}")
    stderr = log.read_text()
    assert process.returncode == 130, stderr
    line = one_line(stderr)
    assert "interrupted" in line and f"icone train --resume --out {run}" in line and "last.pt" in line


# ---- 4. --resume keeps the run's own options --------------------------------------------------


def test_resume_keeps_the_runs_epochs_and_device(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert (
        run_cli(
            [
                "train",
                "--data",
                npz,
                "--out",
                run,
                "--epochs",
                "2",
                "--batch-size",
                "8",
                *FAST,
                "eval.after_train=false",
                "train.device=cpu",
            ],
            capsys,
        )[0]
        == 0
    )
    code, _, err = run_cli(["train", "--out", run, "--resume", "--no-progress"], capsys)
    assert code == 0, err
    assert torch.load(run / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2  # not the default 10
    from icone.config import build_config, load_yaml
    from icone.runs import resumed_config

    saved = build_config(load_yaml(run / "config.yaml"))
    resumed = resumed_config(saved, {"train": {"epochs": 5, "log_every": 3}, "optim": {"lr": 1e-5}})
    assert (resumed.train.epochs, resumed.train.log_every, resumed.optim.lr, resumed.train.device) == (
        5,
        3,
        1e-5,
        "cpu",
    )


def test_resume_applies_the_resumable_options_given(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert (
        run_cli(
            [
                "train",
                "--data",
                npz,
                "--out",
                run,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                *FAST,
                "eval.after_train=false",
            ],
            capsys,
        )[0]
        == 0
    )
    code, _, err = run_cli(
        ["train", "--out", run, "--resume", "--epochs", "2", "train.log_every=1", "--no-progress"], capsys
    )
    assert code == 0, err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    second = [r["step"] for r in records if r["kind"] == "step" and r["epoch"] == 2]
    assert second == list(range(second[0], second[0] + len(second)))  # every step logged: log_every=1 was applied
    assert [r["kind"] for r in records].count("resume") == 1


# ---- 5. a lock on the run folder --------------------------------------------------------------


def test_a_second_process_on_a_run_folder_is_refused(tmp_path, npz):
    run = tmp_path / "run"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import time; from icone.run_folder import RunLock; held = RunLock(__import__('pathlib').Path({str(run)!r})).acquire(); print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        result = icone_subprocess("train", "--data", npz, "--out", run, *TRAIN)
        assert result.returncode == 2
        assert f"in use by process {holder.pid}" in one_line(result.stderr)
        assert {p.name for p in run.iterdir()} == {".lock"}
    finally:
        holder.kill()
        holder.wait()
    # the holder died: its lock is gone with it, and the next run takes the folder over
    result = icone_subprocess("train", "--data", npz, "--out", run, *TRAIN)
    assert result.returncode == 0, result.stderr
    assert (run / "checkpoints" / "last.pt").is_file()


def test_resume_of_a_run_in_use_is_refused(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    before = (run / "checkpoints" / "last.pt").read_bytes()
    with RunLock(run):
        result = icone_subprocess("train", "--out", run, "--resume", "--epochs", "2")
    assert result.returncode == 2 and "is in use by process" in one_line(result.stderr)
    assert (run / "checkpoints" / "last.pt").read_bytes() == before


# ---- 6. opening a checkpoint never runs code -------------------------------------------------


class Payload:
    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.system, (f"touch {self.target}",))


def test_a_crafted_checkpoint_does_not_run_its_payload(capsys, tmp_path):
    target = tmp_path / "pwned"
    torch.save({"config": {}, "model": Payload(str(target))}, tmp_path / "evil.pt")  # a file made to look like ours
    with open(tmp_path / "raw.pt", "wb") as handle:
        pickle.dump({"config": {}, "model": Payload(str(target))}, handle)
    expect_error(capsys, ["evaluate", tmp_path / "raw.pt"], "cannot read checkpoint")
    expect_error(capsys, ["evaluate", tmp_path / "evil.pt"], "objects other than tensors and plain containers")
    expect_error(capsys, ["export", tmp_path / "evil.pt", "--out", tmp_path / "bb.pt"], "objects other than tensors")
    assert not target.exists()


# ---- 7. numeric options are validated ----------------------------------------------------------


@pytest.mark.parametrize(
    "item,pattern",
    [
        ("optim.grad_clip=-1", "optim.grad_clip must be at least 0"),
        ("optim.lr=nan", "optim.lr must be a finite number"),
        ("views.global_size=0", "views.global_size must be at least 2"),
        ("data.num_workers=-1", "data.num_workers must be at least 0"),
        ("train.save_every=-1", "train.save_every must be at least 0"),
        ("optim.warmup_epochs=-1", "optim.warmup_epochs must be at least 0"),
        ("train.monitor_samples=0", "train.monitor_samples must be at least 1"),
        ("views.blur_prob=2", "views.blur_prob must be between 0 and 1"),
        ("icone.w_div=nan", "icone.w_div must be a finite number"),
    ],
)
def test_bad_numbers_are_one_line(capsys, tmp_path, npz, item, pattern):
    expect_error(capsys, ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN, item], pattern)
    assert not (tmp_path / "run").exists()


def test_a_config_error_does_not_wait_for_torch(tmp_path):
    code = "import sys; from icone.cli import run; c = run(['train', 'optim.lr=-1']); print(c, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["2", "False"], result.stderr


# ---- 8. NaN / constant pixels ----------------------------------------------------------------------


def test_nan_pixels_are_named_before_anything_is_written(capsys, tmp_path):
    path = write_tiny_npz(tmp_path / "bad.npz", 2)
    arrays = dict(np.load(path))
    images = arrays["train_images"].astype(np.float32)
    images[5, 3, 3] = np.nan
    arrays["train_images"] = images
    np.savez(path, **arrays)
    expect_error(
        capsys,
        ["train", "--data", path, "--out", tmp_path / "run", *TRAIN],
        r"bad\.npz:train_images\[5\].*NaN or infinite",
    )
    assert not (tmp_path / "run").exists()
    expect_error(capsys, ["data", path], r"train_images\[5\].*NaN")


def test_constant_images_are_warned_about(capsys, tmp_path):
    path = write_tiny_npz(tmp_path / "flat.npz", 2)
    arrays = dict(np.load(path))
    arrays["train_images"][:4] = 0
    np.savez(path, **arrays)
    code, _, err = run_cli(["data", path], capsys)
    assert code == 0 and "warning: 4 of 48 training samples are constant" in err


# ---- 9. labels ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "labels,pattern",
    [
        (lambda n: np.arange(n - 3), "has 45 entries but there are 48 samples"),
        (lambda n: np.arange(n + 3), "has 51 entries but there are 48 samples"),
        (lambda n: np.asarray(["cat"] * n), "must hold integer classes"),
        (lambda n: np.linspace(0, 1, n), "non-integer values"),
        (lambda n: -2 * np.ones(n, int), "negative classes"),
    ],
)
def test_bad_labels_are_one_line(capsys, tmp_path, labels, pattern):
    path = write_tiny_npz(tmp_path / "labels.npz", 2)
    arrays = dict(np.load(path))
    arrays["train_labels"] = labels(len(arrays["train_images"]))
    np.savez(path, **arrays)
    expect_error(capsys, ["train", "--data", path, "--out", tmp_path / "run", *TRAIN], pattern)


def test_integral_float_labels_are_read_and_multilabel_is_said(capsys, tmp_path):
    path = write_tiny_npz(tmp_path / "labels.npz", 2)
    arrays = dict(np.load(path))
    arrays["train_labels"] = arrays["train_labels"].astype(np.float64)
    np.savez(path, **arrays)
    code, out, _ = run_cli(["data", path], capsys)
    assert code == 0 and "per class: {0: 12" in out
    arrays["train_labels"] = np.zeros((len(arrays["train_images"]), 3), int)
    np.savez(path, **arrays)
    code, _, err = run_cli(["data", path], capsys)
    assert code == 0 and "multi-label" in err


# ---- 10. outputs are written whole or not at all ------------------------------------------------


def test_a_failing_embed_write_leaves_no_file(capsys, tmp_path, npz, monkeypatch):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    out = tmp_path / "emb.npz"

    def full_disk(handle, **arrays):
        handle.write(b"PK partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(np, "savez", full_disk)
    expect_error(capsys, ["embed", run, "--data", npz, "--out", out], "the disk is full")
    assert not out.exists() and not list(tmp_path.glob(".emb.npz*"))
    monkeypatch.undo()
    code, _, err = run_cli(["embed", run, "--data", npz, "--out", out], capsys)  # no --overwrite needed
    assert code == 0, err
    assert len(np.load(out)["features"]) == 60


def test_orphan_temp_files_are_cleaned_and_outputs_get_normal_permissions(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert run_cli(["train", "--data", npz, "--out", run, *TRAIN], capsys)[0] == 0
    orphan = run / "checkpoints" / ".last.pt.abc123.tmp"
    orphan.write_bytes(b"half a checkpoint")
    code, _, err = run_cli(["train", "--out", run, "--resume", "--epochs", "2", "--no-progress"], capsys)
    assert code == 0, err
    assert not orphan.exists()
    mask = os.umask(0)
    os.umask(mask)
    assert_mode = 0o666 & ~mask
    assert (run / "backbone.pt").stat().st_mode & 0o777 == assert_mode
    assert run_cli(["export", run, "--out", tmp_path / "bb.pt"], capsys)[0] == 0
    assert (tmp_path / "bb.pt").stat().st_mode & 0o777 == assert_mode


def test_a_resumed_log_does_not_repeat_steps(capsys, tmp_path, npz):
    run = tmp_path / "run"
    assert (
        run_cli(
            [
                "train",
                "--data",
                npz,
                "--out",
                run,
                "--epochs",
                "1",
                "--batch-size",
                "8",
                *FAST,
                "eval.after_train=false",
                "train.log_every=1",
            ],
            capsys,
        )[0]
        == 0
    )
    with (run / "metrics.jsonl").open("a") as handle:  # an interrupted second epoch had logged two steps
        handle.write(json.dumps({"kind": "step", "epoch": 2, "step": 7, "loss": 1.0}) + "\n")
        handle.write(json.dumps({"kind": "step", "epoch": 2, "step": 8, "loss": 1.0}) + "\n" + '{"kind": "st')
    assert run_cli(["train", "--out", run, "--resume", "--epochs", "2", "--no-progress"], capsys)[0] == 0
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if json.loads(line)["kind"] == "step"]
    assert len(steps) == len(set(steps)) == 12


def test_a_diverged_first_epoch_says_nothing_was_kept(capsys, tmp_path, npz):
    code, _, err = run_cli(
        ["train", "--data", npz, "--out", tmp_path / "run", *TRAIN, "optim.lr=1e30", "optim.grad_clip=0"], capsys
    )
    assert code == 1
    line = one_line(err)
    assert line.startswith("training stopped: the loss became") and "no checkpoint had been written" in line
    assert not (tmp_path / "run").exists()


def test_images_too_big_for_memory_are_read_per_sample_or_refused_with_a_resize_hint(capsys, tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "big"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((64, 64), i * 40, np.uint8)).save(folder / f"{i}.png")
    monkeypatch.setattr("icone.data.checks.available_memory_bytes", lambda: 40_000)  # 3 x 64 x 64 x 4 bytes = 49 kB
    expect_error(capsys, ["data", folder, "data.load=memory"], r"3 samples of 1x64x64 need .* pass data.resize=")
    code, out, _ = run_cli(["data", folder], capsys)  # data.load=auto: read from the files per step
    assert code == 0 and "one per file (read per sample)" in out


def test_a_2d_nifti_is_read_as_a_2d_image(capsys, tmp_path):
    import nibabel

    image = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    nibabel.save(nibabel.Nifti1Image(image, np.eye(4)), tmp_path / "slice.nii.gz")
    code, out, err = run_cli(["data", tmp_path / "slice.nii.gz"], capsys)
    assert code == 0, err
    assert "2D, 1 channel(s), sample shape (16, 16)" in out and "kind: one 2D image" in out
