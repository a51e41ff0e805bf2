"""A full disk while any writer writes (issue 19): one line naming the file, exit code 2, no temporary file
left, and nothing that existed lost. The disk is made full by a handle whose writes fail with ENOSPC, as
the kernel's do, under the writers' own serialisers (torch, TorchScript, ONNX, safetensors, numpy)."""

from __future__ import annotations

import builtins
import errno
import io
from pathlib import Path

import pytest

from helpers import FAST, expect_error, run_cli, write_tiny_npz

TRAIN = ["--epochs", "1", "--batch-size", "8", *FAST, "eval.after_train=false"]


class FullDisk(io.RawIOBase):
    """A file on a disk with ``room`` bytes left (``errno``: ENOSPC, or EDQUOT for a quota)."""

    def __init__(self, room: int = 0, code: int = errno.ENOSPC) -> None:
        self.room, self.code = room, code

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        if len(data) > self.room:
            raise OSError(self.code, "No space left on device" if self.code == errno.ENOSPC else "Disk quota exceeded")
        self.room -= len(data)
        return len(data)


def fill_disk(monkeypatch, name: str, room: int = 0, code: int = errno.ENOSPC) -> None:
    """Writes of ``name`` (icone's temporary ``.NAME.*.tmp``) hit a full disk."""

    def opener(file, mode="r", *args, **kwargs):
        if "w" in mode and Path(file).name.startswith(f".{name}."):
            return io.BufferedWriter(FullDisk(room, code))
        return builtins.open(file, mode, *args, **kwargs)

    monkeypatch.setattr("icone.files.open", opener, raising=False)


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*.tmp"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("full")
    npz = write_tiny_npz(root / "tiny.npz", 2)

    class NoCapture:
        def readouterr(self):
            return type("Captured", (), {"out": "", "err": ""})()

    resnet = ["--backbone", "resnet18", "model.width=8", "train.monitor_samples=16", "--no-progress"]
    for name, backbone in (("run", FAST), ("resnet", resnet)):  # --format monai takes a ResNet
        args = ["train", "--data", npz, "--out", root / name, "--epochs", "1", "--batch-size", "8", *backbone]
        assert run_cli([*args, "eval.after_train=false"], NoCapture())[0] == 0
    return npz, root


@pytest.mark.parametrize(
    "fmt,name,written", [("icone", "bb.pt", "bb.pt"), ("torchscript", "bb.pt", "bb.pt"), ("onnx", "bb.onnx", "bb.onnx"),
                         ("safetensors", "bb.safetensors", "bb.safetensors"),
                         ("monai", "bb", "model.pt")],  # a MONAI bundle (a folder): this ResNet has group norms
)  # fmt: skip
def test_every_export_format_on_a_full_disk_is_one_line(capsys, tmp_path, monkeypatch, trained, fmt, name, written):
    run = trained[1] / ("resnet" if fmt == "monai" else "run")
    fill_disk(monkeypatch, written, room=1000)
    out = tmp_path / name
    expect_error(
        capsys,
        ["export", run, "--out", out, "--format", fmt],
        rf"^error: the disk is full while writing '.*{written}'; free some space or choose another --out$",
    )
    assert not out.exists() and leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []  # no half bundle


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_checkpoint_on_a_full_disk_is_one_line_and_leaves_nothing(capsys, tmp_path, monkeypatch, code):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    fill_disk(monkeypatch, "last.pt", room=4096, code=code)
    run = tmp_path / "run"
    expect_error(capsys, ["train", "--data", npz, "--out", run, *TRAIN], r"the disk is full while writing '.*last\.pt'")
    assert not run.exists() and leftovers(tmp_path) == []


def test_backbone_pt_on_a_full_disk_keeps_the_checkpoint(capsys, tmp_path, monkeypatch):
    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    fill_disk(monkeypatch, "backbone.pt", room=4096)
    run = tmp_path / "run"
    expect_error(
        capsys, ["train", "--data", npz, "--out", run, *TRAIN], r"the disk is full while writing '.*backbone\.pt'"
    )
    assert (run / "checkpoints" / "last.pt").is_file() and not (run / "backbone.pt").exists()
    assert leftovers(run) == []


def test_eval_json_on_a_full_disk_keeps_the_old_one(capsys, tmp_path, monkeypatch, trained):
    run = trained[1] / "run"
    before = (run / "eval.json").read_bytes() if (run / "eval.json").exists() else None
    fill_disk(monkeypatch, "eval.json")
    expect_error(capsys, ["evaluate", run], r"the disk is full while writing '.*eval\.json'")
    after = (run / "eval.json").read_bytes() if (run / "eval.json").exists() else None
    assert after == before and leftovers(run) == []
