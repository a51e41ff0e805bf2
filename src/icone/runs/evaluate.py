"""``icone evaluate``: the metrics of a trained encoder beside those of its starting point, written to ``eval.json``.

The trained encoder is the method's evaluated backbone; the ``baseline`` is the encoder it
started from: a fresh initialisation of the same seed, or the weights of ``model.init``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from icone import build
from icone.build import build_method
from icone.config import Config, DataConfig, build_config, parse_overrides, update_dataclass
from icone.data import Dataset
from icone.data.arrays import validation_split
from icone.errors import UserError
from icone.evaluate.few_label import check_budgets
from icone.evaluate.plots import plot_confusion, plot_map
from icone.evaluate.report import Features, embed_dataset, evaluate_features, occupancy_on_train
from icone.evaluate.verdict import collapse_verdict
from icone.export import method_from_checkpoint
from icone.files import atomic_write_text, json_text
from icone.methods import Method
from icone.options import check_options
from icone.run_folder import RunLock, recording
from icone.training.checkpoint import load_checkpoint
from icone.weights import EXPORT_FORMAT

log = logging.getLogger("icone")


# what a source other than the run's keeps of the run's data options: how the model takes its input (the
# intensity scale and the sample size it was trained on); labels, patches, channels, axes... are the source's own
CARRIED = ("normalize", "resize")


def dotted(nested: dict[str, Any], prefix: str = "") -> list[str]:
    """``{"data": {"labels": ...}}`` -> ``["data.labels"]``."""
    keys = []
    for key, value in nested.items():
        keys += dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [f"{prefix}{key}"]
    return keys


def data_for(run: Config, source: str, items: list[str] | None = None) -> DataConfig:
    """The data options of ``source`` for a model trained by ``run``: the source's own defaults, the run's
    :data:`CARRIED` options, then ``data.KEY=VALUE`` (``items``), checked."""
    given = parse_overrides(list(items or []))
    wrong = [key for key in dotted(given) if not key.startswith("data.") or key == "data.source"]
    if wrong:
        raise UserError(
            f"this command takes data.* options (e.g. data.labels=..., data.patch=...) beside --data; '{wrong[0]}' is not one"
        )
    data = DataConfig(source=source, **{key: copy.deepcopy(getattr(run.data, key)) for key in CARRIED})
    update_dataclass(data, given.get("data", {}), prefix="data.")
    check_options(data, "data.")
    return data


def check_fit(config: Config, dataset: Dataset) -> None:
    """The data has the spatial dimensions and channels the backbone takes."""
    if dataset.spatial_dims != config.model.spatial_dims or dataset.in_channels != config.model.in_channels:
        raise UserError(
            f"the backbone takes {config.model.spatial_dims}D samples with {config.model.in_channels} channel(s), but "
            f"'{config.data.source}' has {dataset.spatial_dims}D samples with {dataset.in_channels}; use a matching "
            "source (data.channels=... picks channels)"
        )


def few_label_skipped(features: Features) -> str:
    """Why few-label probes could not run on these features."""
    if features.test is None or not len(features.test):
        return "there is no test split to score them on"
    if not (features.test_labels >= 0).any():
        return "the test split has no labels to score them on"
    if not (features.test_labels >= 0).all():
        return "some test samples have no label"
    if not (features.train_labels >= 0).all():
        return "some training samples have no label"
    return "the training labels hold one class only"


def starting_point(config: Config, num_instances: int) -> tuple[Method, str]:
    """The encoder a run started from (for ``baseline``), and which it is."""
    if not config.model.init:
        return build_method(config, num_instances), "initialisation"
    try:
        return build_method(config, num_instances), f"model.init={config.model.init}"
    except UserError as err:
        log.warning("the baseline is a fresh initialisation, not the run's initial weights (%s)", err)
        return build_method(config, num_instances, initial_weights=False), "initialisation (model.init not found)"


def _map_colours(method: Method, dataset: Dataset, features: Features, device: torch.device) -> tuple[np.ndarray, str]:
    """Labels where the test split has them, else the method's clusters, else k-means clusters."""
    if features.test_labels is not None and (features.test_labels >= 0).all():
        return features.test_labels, "label"
    if method.num_clusters is not None:
        chunks = dataset.test.samples.chunks(256)
        return torch.cat(
            [method.cluster_assignments(torch.from_numpy(c).to(device)).cpu() for c in chunks]
        ).numpy(), "cluster"
    from sklearn.cluster import KMeans

    k = min(8, len(features.test))
    return KMeans(n_clusters=k, n_init=3, random_state=0).fit_predict(features.test.numpy()), "k-means cluster"


def one_class_warning(label: int, config: Config) -> str:
    """Why the accuracies of a test split of one class say nothing, and what to do."""
    hint = (
        "" if config.data.labels_ignore is not None else ", or leave the background class out with data.labels_ignore=0"
    )
    return (
        f"the test split holds a single class ({label}): its kNN and linear-probe accuracies do not tell encoders "
        f"apart; hold out a part with several classes (data.test_fraction, or another region){hint}"
    )


def evaluate_method(
    method: Method, config: Config, dataset: Dataset, run_dir: Path | None, device: torch.device
) -> dict[str, Any]:
    """Metrics of the trained backbone and (under ``baseline``) of its starting point; with ``run_dir``,
    ``eval.json`` and the plots (a map of the test embeddings, the probe's confusion matrix)."""
    method = method.to(device)
    options = build.eval_options(config)
    features = embed_dataset(method.evaluation_backbone(), dataset, options, device)
    result = evaluate_features(features, options)
    if (config.eval.label_fractions or config.eval.shots) and "few_label" not in result:
        log.warning("few-label probes (--label-fractions/--shots) skipped: %s", few_label_skipped(features))
    clusters = occupancy_on_train(method, dataset, device)
    if clusters:
        result["clusters"] = clusters
    start, what = starting_point(config, len(dataset.train))
    result["baseline"] = evaluate_features(
        embed_dataset(start.to(device).evaluation_backbone(), dataset, options, device), options
    )
    result["baseline_weights"] = what
    result["method"], result["data"] = config.method, config.data.source
    start = "model.init" if config.model.init else "the untrained encoder"
    result["collapse"] = collapse_verdict(result, int(features.train.shape[1]), start)
    if config.tuning:  # optim.lr=auto: what the trials scored and what was chosen
        result["tuning"] = config.tuning
    if features.one_class_test():
        result["test_warning"] = one_class_warning(int(features.test_labels[0]), config)
        log.warning(result["test_warning"])
    if run_dir is not None:
        atomic_write_text(run_dir / "eval.json", json_text(result))
        if features.test is not None and len(features.test):
            colours, legend = _map_colours(method, dataset, features, device)
            plot_map(
                features.test.numpy(),
                colours,
                run_dir / "plots" / "embeddings.png",
                f"{config.method}: test embeddings",
                legend,
            )
        if "confusion_matrix" in result:
            plot_confusion(
                np.asarray(result["confusion_matrix"]), run_dir / "plots" / "confusion.png", dataset.class_names
            )
    return result


def _evaluation_config(
    config: Config, data: str | None, items: list[str] | None, fractions: list[float] | None,
    shots: list[int] | None, repeats: int | None,
) -> Config:  # fmt: skip
    """The run's config with another source (its own data options) and the few-label budgets asked for."""
    if data is None and items:
        names = ", ".join(dotted(parse_overrides(items)))
        raise UserError(
            f"data options ({names}) go with --data SOURCE: the run's own data is evaluated as it was trained"
        )
    if repeats is not None and repeats < 1:
        raise UserError(f"--repeats must be at least 1 (stratified draws per few-label budget), got {repeats}")
    if data is not None:
        config = dataclasses.replace(config, data=data_for(config, data, items))
    asked = {"label_fractions": fractions, "shots": shots, "repeats": repeats}
    return dataclasses.replace(
        config, eval=dataclasses.replace(config.eval, **{k: v for k, v in asked.items() if v is not None})
    )


def evaluate_run(
    path: str | Path, data: str | None = None, fractions: list[float] | None = None, shots: list[int] | None = None,
    repeats: int | None = None, data_options: list[str] | None = None, split: str = "test",
) -> dict[str, Any]:  # fmt: skip
    """``icone evaluate``: a run folder or checkpoint, on its own data or on ``data`` (with its own
    ``data.KEY=VALUE`` options); with few-label budgets if asked. ``split="validation"``: scored on a
    stratified fifth of the training split (the rest is the kNN memory and the probe's training set),
    for choosing settings without looking at the test split."""
    checkpoint = load_checkpoint(path)
    if checkpoint.get("format") == EXPORT_FORMAT:
        raise UserError(f"'{path}' is a backbone export; evaluate its run folder or checkpoints/last.pt instead")
    config = build_config(checkpoint["config"])
    method = method_from_checkpoint(checkpoint)
    config = _evaluation_config(config, data, data_options, fractions, shots, repeats)
    dataset = build.load_data(config)
    check_fit(config, dataset)
    if config.eval.label_fractions or config.eval.shots:
        if not dataset.train.labelled:
            raise UserError(
                f"few-label evaluation needs labels, and '{config.data.source}' has none; drop --label-fractions/--shots"
            )
        check_budgets(config.eval.label_fractions, config.eval.shots, dataset.train.labels)
    if data is None and len(dataset.train) != int(checkpoint["num_instances"]):
        raise UserError(
            f"the data of '{path}' now has {len(dataset.train)} training samples, the run had {checkpoint['num_instances']}; pass --data"
        )
    if split == "validation":
        if not dataset.train.labelled:
            raise UserError(f"a validation score needs labels, and '{config.data.source}' has none")
        dataset = validation_split(dataset)
    checkpoint_path = Path(checkpoint["path"])
    run_dir = checkpoint_path.parent.parent if checkpoint_path.parent.name == "checkpoints" and data is None else None
    if split != "test":
        return {**evaluate_method(method, config, dataset, None, build.device(config)), "split": split}
    return _evaluate_into(method, config, dataset, run_dir)


def _evaluate_into(method: Method, config: Config, dataset: Dataset, run_dir: Path | None) -> dict[str, Any]:
    """:func:`evaluate_method`, writing ``eval.json`` and plots into ``run_dir`` unless another process holds it."""
    device = build.device(config)
    if run_dir is None:
        return evaluate_method(method, config, dataset, None, device)
    lock = RunLock(run_dir)
    try:
        lock.acquire()
    except UserError:
        log.warning("'%s' is in use (still training?): its eval.json and plots are left as they are", run_dir)
        return evaluate_method(method, config, dataset, None, device)
    try:
        with recording(run_dir):  # eval.json and the plots are the run's: --overwrite may replace them
            return evaluate_method(method, config, dataset, run_dir, device)
    finally:
        lock.release()
