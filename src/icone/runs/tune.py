"""``optim.lr=auto``: short trial runs at a grid of lr factors, scored without labels, then the winner.

Each trial is an ordinary run folder, ``RUN/trials/lr-xF``: the run's own config at ``F`` times the
method's lr (stated for batch 64, scaled to the batch as usual), for a share of the epochs
(:data:`TRIAL_SHARE`) and, on large data, of the samples per epoch. A finished trial keeps its scores
in ``score.json`` and is read back, never trained again; an unfinished one resumes from its checkpoint.
A trial whose loss diverged, or whose features collapsed (``icone.evaluate.verdict``), is out; of the
rest the one with the highest label-free score wins (``icone.evaluate.label_free``; a tie: the factor
nearest 1). docs/tuning.md says why the score is formed as it is and how it compares with labels.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icone.config import Config
from icone.errors import TrainingDiverged, UserError
from icone.files import atomic_write_text

LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)  # times the method's default (or optim.base_lr): optim.lr_factors
TRIAL_SHARE = 0.2  # of the run's epochs (at least one)
TRIAL_SAMPLES = 10_000  # per trial epoch at most: large data are tuned on a part of each epoch
SCORE_FILE = "score.json"
SCORE_KEY = "retrieval"  # a trial's score.json without it was scored by an earlier version


@dataclasses.dataclass(frozen=True)
class TrialPlan:
    """What the trials cost: ``factors`` of ``base_lr``, ``epochs`` each, ``samples`` per epoch."""

    factors: tuple[float, ...]
    base_lr: float
    epochs: int
    samples: int
    run_samples: int  # the full run's samples per epoch x epochs, for the cost line

    @property
    def share(self) -> float:
        """The trials' compute as a share of the full run's (samples seen)."""
        return len(self.factors) * self.epochs * self.samples / max(self.run_samples, 1)

    def folder(self, run_dir: Path, factor: float) -> Path:
        return run_dir / "trials" / f"lr-x{factor:g}"


def plan_trials(config: Config, num_samples: int, base_lr: float) -> TrialPlan:
    """The trial grid (``optim.lr_factors``) for a resolved config over ``num_samples`` training samples."""
    per_epoch = config.data.patches_per_epoch or num_samples
    epochs = max(1, round(TRIAL_SHARE * config.train.epochs))
    factors = tuple(sorted({float(f) for f in config.optim.lr_factors}))
    return TrialPlan(factors, base_lr, epochs, min(per_epoch, TRIAL_SAMPLES), per_epoch * config.train.epochs)


def trial_config(config: Config, plan: TrialPlan, factor: float) -> Config:
    """The run's config for one trial: ``factor`` x the base lr, the trial's epochs and samples, no evaluation."""
    trial = copy.deepcopy(config)
    trial.optim.lr, trial.optim.base_lr = None, plan.base_lr * factor
    trial.train.epochs = plan.epochs
    if plan.samples < (config.data.patches_per_epoch or math.inf):
        trial.data.patches_per_epoch = plan.samples
    trial.eval.after_train = False
    trial.train.save_every = 0
    return trial


def cost_line(plan: TrialPlan) -> str:
    return (
        f"optim.lr=auto: {len(plan.factors)} trial runs at x{', x'.join(f'{f:g}' for f in plan.factors)} the lr "
        f"({plan.base_lr:.3g} at batch 64), {plan.epochs} epoch(s) of {plan.samples} samples each: "
        f"{plan.share:.0%} of the full run's compute, before it"
    )


def usable_trials(scores: dict[Any, dict[str, Any]], what: str, advice: str) -> dict[Any, dict[str, Any]]:
    """The trials that neither diverged nor collapsed; none: a one-line error naming ``what`` chose, and ``advice``."""
    usable = {k: s for k, s in scores.items() if s.get("status") == "ok" and s.get("verdict") != "collapsed"}
    if not usable:
        shown = ", ".join(f"{_label(k)}: {s.get('verdict') or s.get('status')}" for k, s in scores.items())
        raise UserError(f"{what}: every trial diverged or collapsed ({shown}); {advice}")
    return usable


def _label(key: Any) -> str:
    return f"x{key:g}" if isinstance(key, float) else str(key)


def choose(scores: dict[float, dict[str, Any]]) -> tuple[float, str]:
    """The factor with the best label-free score among the trials that neither diverged nor collapsed
    (a tie: the factor nearest 1)."""
    usable = usable_trials(
        scores, "optim.lr=auto", "give optim.lr yourself, lower than the method's default, or try another method"
    )
    best = max(usable, key=lambda f: (usable[f]["score"], -abs(math.log(f))))
    return best, why_chosen(usable[best], len(scores) - len(usable))


def why_chosen(s: dict[str, Any], out: int) -> str:
    """The reason a trial won, in words; ``out``: how many trials were excluded."""
    return (
        f"the best label-free score, its views retrieving each other in {s['score']:.1%} of the samples "
        f"(RankMe {s['rankme']:.1f})" + (f"; {out} trial(s) diverged or collapsed" if out else "")
    )


VERDICT_WORDS = {"none": "no collapse", "partial": "partly collapsed", "collapsed": "collapsed"}


def trial_line(position: int, total: int, label: str, s: dict[str, Any]) -> str:
    """One trial's progress line."""
    shown = (
        f"views retrieve each other in {s['score']:.1%}, RankMe {s['rankme']:.1f}, "
        f"{VERDICT_WORDS.get(s['verdict'], s['verdict'])}"
        if s.get("status") == "ok"
        else s["status"]
    )
    return f"[trial {position}/{total}] {label}: {shown}"


def run_trials(
    config: Config, run_dir: Path, plan: TrialPlan, train: Callable[[Config, Path, bool], None],
    score: Callable[[Path], dict[str, Any]], log: Callable[[str], None] = print,
) -> dict[str, Any]:  # fmt: skip
    """Every trial (read back, resumed or trained), scored; the choice. ``train(config, folder, resume)``
    trains a trial run; ``score(folder)`` scores a finished one (label-free scores and the verdict)."""
    log(cost_line(plan))
    scores: dict[float, dict[str, Any]] = {}
    for position, factor in enumerate(plan.factors, 1):
        folder = plan.folder(run_dir, factor)
        scores[factor] = run_trial(trial_config(config, plan, factor), folder, train, score)
        label = f"lr x{factor:g} ({plan.base_lr * factor:.3g} at batch 64)"
        log(trial_line(position, len(plan.factors), label, scores[factor]))
    best, reason = choose(scores)
    log(f"optim.lr=auto chose x{best:g}: {reason}")
    return {
        "factor": best, "base_lr": plan.base_lr * best, "reason": reason, "trial_epochs": plan.epochs,
        "trial_samples": plan.samples, "share": plan.share,
        "trials": {f"x{f:g}": s for f, s in sorted(scores.items())},
    }  # fmt: skip


def run_trial(
    trial: Config, folder: Path, train: Callable[[Config, Path, bool], None], score: Callable[[Path], dict[str, Any]]
) -> dict[str, Any]:
    """One trial in ``folder``: read back when scored, resumed when interrupted, else trained; then scored."""
    done = folder / SCORE_FILE
    saved = json.loads(done.read_text()) if done.is_file() else None
    if saved is not None and (saved.get("status") != "ok" or SCORE_KEY in saved):
        return saved
    resume = (folder / "checkpoints" / "last.pt").is_file()
    try:
        if saved is None:  # else finished, but scored by an earlier version: scored again, not trained
            train(trial, folder, resume)
        result = {"status": "ok", **score(folder)}
    except TrainingDiverged as err:
        result = {"status": "diverged", "detail": str(err).split(";")[0]}
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(done, json.dumps(result, indent=2))
    return result


# ---- a run's trials, as icone train makes them ------------------------------------------------------


def tune_lr(resolved: Any, dataset: Any, run_dir: Path, log: Callable[[str], None] = print) -> Any:
    """``optim.lr=auto``: the trials under ``run_dir/trials`` (the run's ``config.yaml`` says ``auto`` until
    the choice is made, so ``--resume`` finds them), then the run's config resolved at the chosen lr, with
    every trial's score in ``config.tuning``."""
    from icone import build

    config = resolved.config
    begin_trials(config, run_dir, "optim.lr=auto", "optim.lr")
    baseline = untrained_rankme(config, dataset)
    plan = plan_trials(config, len(dataset.train), float(config.optim.base_lr))
    tuning = run_trials(config, run_dir, plan, train_trial, lambda folder: score_trial(folder, dataset, baseline), log)
    chosen = copy.deepcopy(config)
    chosen.optim.lr, chosen.optim.base_lr = None, tuning["base_lr"]
    chosen.tuning = {**config.tuning, **tuning}  # method=auto's choice, when it ran first, is kept
    return build.resolve(chosen, dataset)


def begin_trials(config: Config, run_dir: Path, what: str, choice: str) -> None:
    """Before a tuner's trials: one process only, and the run's ``config.yaml`` saying ``auto`` (so that
    ``--resume`` finds the trials)."""
    from icone import distributed
    from icone.config import save_config
    from icone.run_folder import record_written

    if distributed.world_size() > 1:
        raise UserError(
            f"{what} runs its trials in one process: choose with one (icone train ... {what}), then give "
            f"torchrun the chosen {choice} from the run's config.yaml"
        )
    save_config(config, run_dir / "config.yaml")
    record_written(run_dir, ["config.yaml", "trials"])


def train_trial(trial: Config, folder: Path, resume: bool) -> None:
    """Train one trial run in ``folder`` (quietly: its progress line is the tuner's)."""
    from icone.runs.train import train_run

    train_run(trial, out=folder, resume=resume, overwrite=False, progress=False)


def scoring_views(config: Config) -> Any:
    """Two global views a sample, as the run augments (the label-free agreement compares them)."""
    from icone import build
    from icone.views import ViewMaker

    spec = dataclasses.replace(build.view_spec(config), global_crops=2, local_crops=0)
    return ViewMaker(spec, int(config.model.spatial_dims))


def score_trial(folder: Path, dataset: Any, baseline_rankme: float, views: Any = None) -> dict[str, Any]:
    """The label-free scores of a finished trial's evaluated backbone and the verdict on collapse, on
    ``views`` (default: the trial's own, :func:`scoring_views`)."""
    from icone.config import build_config
    from icone.evaluate.label_free import label_free_scores
    from icone.evaluate.verdict import collapse_verdict
    from icone.export import method_from_checkpoint
    from icone.runtime import Runtime
    from icone.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(folder / "checkpoints" / "last.pt")
    config = build_config(checkpoint["config"])
    backbone = method_from_checkpoint(checkpoint).evaluation_backbone()
    device = Runtime.resolve(config.train.device).device
    views = views if views is not None else scoring_views(config)
    scores = label_free_scores(backbone.to(device), dataset.train.samples, views, device)
    verdict = collapse_verdict({**scores, "baseline": {"rankme": baseline_rankme}}, int(backbone.feature_dim))
    return {**scores, "verdict": verdict["verdict"]}


def untrained_rankme(config: Config, dataset: Any) -> float:
    """RankMe of the untrained encoder (the run's seed) on the trials' sample: the verdict's reference."""
    import torch

    from icone import build
    from icone.evaluate.embeddings import embed_samples
    from icone.evaluate.label_free import fixed_rows
    from icone.stats import rankme

    backbone = build.build_method(config, len(dataset.train)).evaluation_backbone()
    rows = fixed_rows(len(dataset.train))
    return rankme(embed_samples(backbone, dataset.train.samples[rows], torch.device("cpu")))
