"""``icone train``: check everything, open the run folder, train, export, evaluate."""

from __future__ import annotations

import copy
import logging
import time
from pathlib import Path
from typing import Any

from icone import build, distributed
from icone.build import Resolved
from icone.config import Config, build_config, flatten, load_yaml, save_config, validate
from icone.data import Dataset
from icone.data.sources import resolve
from icone.errors import Interrupted, OutOfMemory, UserError, is_out_of_memory
from icone.evaluate.plots import plot_training
from icone.export import export_backbone
from icone.run_folder import RunFolder, check_replaceable, has_contents, is_inside, settle_before_use
from icone.runs import choose_method
from icone.runs.evaluate import evaluate_method
from icone.runs.tune import tune_lr
from icone.runtime import Runtime
from icone.training.checkpoint import load_checkpoint
from icone.training.logs import MetricsLog
from icone.training.trainer import Trainer

log = logging.getLogger("icone")

RESUMABLE = {
    "train.epochs",
    "train.device",
    "train.log_every",
    "train.save_every",
    "train.dist_timeout_minutes",
    "data.num_workers",
    "eval.after_train",
    "optim.lr",
    "train.checkpoint_every_steps",
    "train.checkpoint_every_minutes",
    "train.logger",
    "train.activation_checkpointing",
}


def default_run_dir(config: Config, dataset: Dataset) -> Path:
    """``runs/<method>-<data>-<time>``, never an existing folder."""
    stem = f"runs/{config.method}-{dataset.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    path, n = Path(stem), 2
    while path.exists():
        path, n = Path(f"{stem}-{n}"), n + 1
    return path


def resumed_config(saved: Config, explicit: dict[str, Any]) -> Config:
    """The run's own config with the resumable options the user gave applied; any other option
    given must agree with the run's (``explicit``: the nested options the user gave)."""
    asked = flatten(build_config(explicit).to_dict())
    saved_flat = flatten(saved.to_dict())
    given = flatten(explicit)
    changed = [k for k in given if k not in RESUMABLE and asked.get(k) != saved_flat.get(k)]
    if changed:
        raise UserError(
            f"--resume continues the run as it was configured, but {', '.join(changed)} differ; drop those options "
            f"(resumable: {', '.join(sorted(RESUMABLE))}) or start a new run with --out"
        )
    config = copy.deepcopy(saved)
    for key in given:
        if key in RESUMABLE:
            section, name = key.split(".")
            setattr(getattr(config, section), name, getattr(getattr(build_config(explicit), section), name))
    validate(config)
    return config


def _protected_paths(config: Config) -> list[Path]:
    """Paths that ``--overwrite`` must never delete: the data source's."""
    _, path = resolve(config.data.source)
    return [path] if path is not None else []


def _check_out(config: Config, run_dir: Path, overwrite: bool) -> None:
    """The run folder is not inside a data folder (its plots would be read as images next time), and
    ``--overwrite`` would not replace the weights ``model.init`` reads."""
    for data in _protected_paths(config):
        if data.is_dir() and is_inside(run_dir, data) and run_dir.resolve() != data.resolve():  # itself: refused below
            raise UserError(
                f"--out '{run_dir}' is inside the data folder '{data}': the run would write among the data (and its "
                "plots be read as images next time); choose an --out outside it"
            )
    init = config.model.init
    if overwrite and init and run_dir.is_dir() and is_inside(Path(init).expanduser(), run_dir):
        raise UserError(
            f"model.init='{init}' is inside the run folder --overwrite would replace; copy the weights out first "
            "(e.g. icone export RUN --out weights.pt) or choose another --out"
        )


def _run_dir_config(
    config: Config, run_dir: Path | None, resume: bool, overwrite: bool, explicit: dict[str, Any] | None
) -> Config:
    """The config to train (a resumed run's own), once ``--out`` is checked for ``--resume``/``--overwrite``."""
    if run_dir is not None:
        settle_before_use(run_dir)  # a run that an interrupted --overwrite hid is put back first
        _check_out(config, run_dir, overwrite and not resume)
    if resume:
        if run_dir is None:
            raise UserError("--resume needs --out RUN_DIR (the run folder to continue)")
        if not (run_dir / "config.yaml").is_file():
            raise UserError(f"cannot resume: '{run_dir}' has no config.yaml; give the folder of an earlier run")
        if not (run_dir / "checkpoints" / "last.pt").is_file() and not (run_dir / "trials").is_dir():
            raise UserError(
                f"cannot resume: '{run_dir}' has no checkpoints/last.pt yet; start it again with --overwrite"
            )
        return resumed_config(build_config(load_yaml(run_dir / "config.yaml")), explicit or {})
    if run_dir is not None and run_dir.exists() and (not run_dir.is_dir() or has_contents(run_dir)):
        if not run_dir.is_dir():
            raise UserError(f"--out '{run_dir}' is a file; give a folder")
        if not overwrite:
            raise UserError(
                f"run folder '{run_dir}' already exists; pass --resume to continue it, --overwrite to replace it, or choose another --out"
            )
        check_replaceable(run_dir, _protected_paths(config))
    return config


def _check_checkpoint(checkpoint: dict[str, Any], config: Config, dataset: Dataset, run_dir: Path) -> None:
    """A checkpoint to resume fits the config, the data and the number of processes."""
    if checkpoint.get("method") != config.method or checkpoint.get("num_instances") != len(dataset.train):
        raise UserError(
            f"checkpoint in '{run_dir}' was written by method {checkpoint.get('method')} on {checkpoint.get('num_instances')} samples; it does not fit this config"
        )
    written_by, world = int(checkpoint.get("world_size", 1)), distributed.world_size()
    if written_by != world:  # train.batch_size is per process: another count changes the batch and the schedule
        raise UserError(
            f"the run in '{run_dir}' was trained by {written_by} process(es) and this is {world}; resume it with "
            f"{written_by} in all (torchrun --nnodes x --nproc_per_node), see docs/distributed.md"
        )


def _resolve(config: Config, dataset: Dataset) -> Resolved:
    """The config resolved for the data; ``method=auto`` checked, its choice still to make (train_run)."""
    return (
        choose_method.pending(config, dataset)
        if config.method == choose_method.AUTO
        else build.resolve(config, dataset)
    )


def prepare_training(
    config: Config, out: str | Path | None, resume: bool, overwrite: bool, explicit: dict[str, Any] | None = None
) -> tuple[Resolved, Dataset, Path, dict[str, Any] | None]:
    """Check everything before touching the disk: the resolved config, the data, the run folder.

    ``explicit``: the options the user gave (nested), checked against the run's config on resume.
    """
    run_dir = Path(out) if out is not None else None
    config = _run_dir_config(config, run_dir, resume, overwrite, explicit)
    dataset = build.load_data(config)
    resolved = _resolve(config, dataset)
    config, checkpoint = resolved.config, None
    if resume and (run_dir / "checkpoints" / "last.pt").is_file():  # (without one: optim.lr=auto's trials ran)
        checkpoint = load_checkpoint(run_dir / "checkpoints" / "last.pt")
        _check_checkpoint(checkpoint, config, dataset, run_dir)
    if run_dir is None:
        run_dir = default_run_dir(config, dataset)
        _check_out(config, run_dir, False)
    return resolved, dataset, run_dir, checkpoint


def prepare_on_main(
    config: Config, out: str | Path | None, resume: bool, overwrite: bool, explicit: dict[str, Any] | None = None
) -> tuple[Resolved, Dataset, Path, dict[str, Any] | None, RunFolder | None]:
    """:func:`prepare_training` on the main process, which then opens (locks, and with ``--overwrite``
    replaces) the run folder: one folder, named once. The other processes receive its resolved
    config, run folder and checkpoint, and load the data and resolve the config (their own runtime)
    themselves. An error on any process is raised on all of them. Returns the :class:`RunFolder` on
    the main process, ``None`` elsewhere.
    """
    shared, message, resolved, dataset, folder = None, None, None, None, None
    if distributed.is_main_process():
        try:
            resolved, dataset, run_dir, checkpoint = prepare_training(config, out, resume, overwrite, explicit)
            folder = RunFolder(run_dir).open("resume" if resume else "replace" if overwrite else "new")
            if folder.note:
                log.warning(folder.note)
            shared = (resolved.config, run_dir, checkpoint)
        except UserError as err:
            message = str(err)
    shared = distributed.broadcast_object(shared)
    if resolved is None and shared is not None:
        try:
            dataset = build.load_data(shared[0])
            resolved = _resolve(shared[0], dataset)
        except UserError as err:
            message = str(err)
    message = distributed.first_error(message)
    if message is not None:
        if folder is not None:
            folder.failed()
            folder.close()
        raise UserError(message)
    _, run_dir, checkpoint = shared
    return resolved, dataset, run_dir, checkpoint, folder


def eval_record(result: dict[str, Any], epoch: int, step: int) -> dict[str, Any]:
    """The evaluation's numbers as one ``metrics.jsonl`` record (``baseline_*`` for the starting point)."""
    record: dict[str, Any] = {"kind": "eval", "epoch": epoch, "step": step}
    for key, value in result.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            record[key] = value
    for key, value in result.get("baseline", {}).items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            record[f"baseline_{key}"] = value
    return record


def _interrupted(run_dir: Path, trainer: Trainer | None) -> Interrupted:
    where = f" at epoch {trainer.epoch + 1}, step {trainer.step}" if trainer is not None else ""
    if trainer is not None and trainer.saved_epoch:
        return Interrupted(
            f"interrupted{where}; the checkpoint of epoch {trainer.saved_epoch} is kept in {run_dir / 'checkpoints' / 'last.pt'}: "
            f"continue with '{distributed.resume_command(run_dir)}'"
        )
    return Interrupted(f"interrupted{where}, before the first checkpoint; nothing of this run is kept")


def out_of_memory_line(config: Config, dataset: Dataset) -> str:
    """What ran out of memory in training (the samples, the batch) and what to make smaller."""
    samples, spatial = dataset.train.samples, dataset.spatial_shape
    shape = "x".join(map(str, (dataset.in_channels, *spatial)))
    smaller = ",".join(str(min(256, max(1, s // 2))) for s in spatial)
    option = "data.patch" if samples.position(0) else "data.resize"
    return (
        f"out of memory training on samples of {shape} (e.g. '{samples.source(0)}') at batch {config.train.batch_size}; "
        f"pass {option}=... (e.g. {option}={smaller}), lower --batch-size, or the backbone (model.width=..., --backbone smallcnn)"
    )


def _fit(trainer: Trainer, dataset: Dataset) -> Any:
    """``trainer.fit()``; Ctrl-C and running out of memory become the one line that says what to do."""
    try:
        return trainer.fit()
    except KeyboardInterrupt:
        raise _interrupted(trainer.run_dir, trainer) from None
    except Exception as err:
        if not is_out_of_memory(err):
            raise
        raise OutOfMemory(out_of_memory_line(trainer.config, dataset)) from None


def _trainer(
    resolved: Resolved, dataset: Dataset, run_dir: Path, checkpoint: dict[str, Any] | None, folder: RunFolder | None,
    progress: bool,
) -> Trainer:  # fmt: skip
    """The run's setup (on its own device: a resumed run's) and trainer, restored from ``checkpoint`` if
    given; then the config it trains with is the run's ``config.yaml`` (on --resume too: the options given
    again are the run's now)."""
    config = resolved.config
    setup = build.setup(resolved, dataset, initial_weights=checkpoint is None)
    metrics = MetricsLog(run_dir / "metrics.jsonl", config.train.logger, config.to_dict())
    trainer = Trainer(setup, run_dir, metrics, progress, on_checkpoint=folder.started if folder else None)
    if checkpoint is not None:
        try:
            trainer.restore(checkpoint)
        except (RuntimeError, ValueError, KeyError) as err:
            raise UserError(
                f"checkpoint in '{run_dir}' does not fit this config ({str(err).splitlines()[0]})"
            ) from None
    if distributed.is_main_process():
        save_config(config, run_dir / "config.yaml")
    return trainer


def _finish(result: Any, config: Config, dataset: Dataset, run_dir: Path, trainer: Trainer) -> dict[str, Any]:
    """On the main process: ``backbone.pt``, the plots and (``eval.after_train``) the evaluation."""
    summary: dict[str, Any] = {"run_dir": str(run_dir), "epochs": result.epochs_done, "steps": result.steps_done}
    export_backbone(result.method.evaluation_backbone(), config, run_dir / "backbone.pt")
    plot_training(run_dir)
    if config.eval.after_train:
        summary["eval"] = evaluate_method(result.method, config, dataset, run_dir, trainer.device)
        trainer.log.write(eval_record(summary["eval"], trainer.epoch, trainer.step))
    return summary


def _tune(resolved: Resolved, dataset: Dataset, run_dir: Path, folder: RunFolder | None) -> Resolved:
    """``method=auto``'s then ``optim.lr=auto``'s trials, kept from their start (Ctrl-C keeps what finished:
    ``--resume`` goes on)."""
    if folder is not None:
        folder.started()
    what = "method=auto" if resolved.config.method == choose_method.AUTO else "optim.lr=auto"
    try:
        if resolved.config.method == choose_method.AUTO:
            resolved = choose_method.choose_method(resolved, dataset, run_dir, log=_say)
        what = "optim.lr=auto"
        return tune_lr(resolved, dataset, run_dir, log=_say) if resolved.config.optim.lr == "auto" else resolved
    except (KeyboardInterrupt, Interrupted):  # in a trial's training, or between trials
        raise Interrupted(
            f"interrupted in {what}'s trials; the finished ones are kept in {run_dir / 'trials'}: continue "
            f"with '{distributed.resume_command(run_dir)}'"
        ) from None


def _say(line: str) -> None:
    """A line for the person at the terminal (main process only): trial costs and progress."""
    if distributed.is_main_process():
        print(line, flush=True)


def train_run(
    config: Config,
    out: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    explicit: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, export ``backbone.pt``, plot, and (``eval.after_train``) evaluate against the untrained encoder.

    Under ``torchrun`` every process calls this (see :func:`prepare_on_main`); the processes train
    together, then the main process exports and evaluates and the others return ``{}``. The run
    folder is locked while this runs; a run that stops before its first checkpoint leaves the disk
    as it found it (with ``--overwrite``, the old run is put back).
    """
    was_joined = distributed.is_distributed()
    if distributed.launched_world_size() > 1:  # under torchrun, the launch's device picks the group's backend
        launch = Runtime.resolve(config.train.device)
        distributed.init_from_env(launch.device, timeout_minutes=config.train.dist_timeout_minutes)
    folder: RunFolder | None = None
    trainer: Trainer | None = None
    try:
        resolved, dataset, run_dir, checkpoint, folder = prepare_on_main(config, out, resume, overwrite, explicit)
        if resolved.config.method == choose_method.AUTO or resolved.config.optim.lr == "auto":
            resolved = _tune(resolved, dataset, run_dir, folder)
        trainer = _trainer(resolved, dataset, run_dir, checkpoint, folder, progress)
        result = _fit(trainer, dataset)
        # no process leaves the group while another still talks to it: a gloo peer that vanishes
        # mid-exchange can abort the other process ("terminate called without an active exception")
        distributed.barrier()
        if not distributed.is_main_process():
            return {}
        return _finish(result, resolved.config, dataset, run_dir, trainer)
    except BaseException:
        if folder is not None:
            folder.failed()
        raise
    finally:
        if trainer is not None:
            trainer.log.close()
        if folder is not None:
            folder.close()
        if not was_joined:
            distributed.shutdown()
