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


def choose(scores: dict[float, dict[str, Any]]) -> tuple[float, str]:
    """The factor with the best label-free score among the trials that neither diverged nor collapsed."""
    usable = {f: s for f, s in scores.items() if s.get("status") == "ok" and s.get("verdict") != "collapsed"}
    if not usable:
        raise UserError(
            "optim.lr=auto: every trial diverged or collapsed ("
            + ", ".join(f"x{f:g}: {s.get('verdict') or s.get('status')}" for f, s in sorted(scores.items()))
            + "); give optim.lr yourself, lower than the method's default, or try another method"
        )
    best = max(usable, key=lambda f: (usable[f]["score"], -abs(math.log(f))))
    s = usable[best]
    out = len(scores) - len(usable)
    reason = (
        f"x{best:g} has the best label-free score {s['score']:.2f} (RankMe {s['rankme']:.1f} x view agreement "
        f"{s['agreement']:.2f})" + (f"; {out} trial(s) diverged or collapsed" if out else "")
    )
    return best, reason


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
        scores[factor] = _trial(config, plan, factor, folder, train, score)
        s = scores[factor]
        shown = f"score {s['score']:.2f}, {s['verdict']}" if s.get("status") == "ok" else s["status"]
        log(f"[trial {position}/{len(plan.factors)}] lr x{factor:g} ({plan.base_lr * factor:.3g} at batch 64): {shown}")
    best, reason = choose(scores)
    log(f"optim.lr=auto chose x{best:g}: {reason}")
    return {
        "factor": best, "base_lr": plan.base_lr * best, "reason": reason, "trial_epochs": plan.epochs,
        "trial_samples": plan.samples, "share": plan.share,
        "trials": {f"x{f:g}": s for f, s in sorted(scores.items())},
    }  # fmt: skip


def _trial(
    config: Config, plan: TrialPlan, factor: float, folder: Path, train: Callable[[Config, Path, bool], None],
    score: Callable[[Path], dict[str, Any]],
) -> dict[str, Any]:  # fmt: skip
    done = folder / SCORE_FILE
    if done.is_file():
        return json.loads(done.read_text())
    resume = (folder / "checkpoints" / "last.pt").is_file()
    try:
        train(trial_config(config, plan, factor), folder, resume)
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
    from icone import build, distributed
    from icone.config import save_config
    from icone.run_folder import record_written
    from icone.runs.train import train_run

    if distributed.world_size() > 1:
        raise UserError(
            "optim.lr=auto runs its trials in one process: tune with one (icone train ... optim.lr=auto), then "
            "give torchrun the chosen optim.lr from the run's config.yaml"
        )
    config = resolved.config
    save_config(config, run_dir / "config.yaml")
    record_written(run_dir, ["config.yaml", "trials"])
    baseline = _untrained_rankme(config, dataset)

    def train(trial: Config, folder: Path, resume: bool) -> None:
        train_run(trial, out=folder, resume=resume, overwrite=False, progress=False)

    plan = plan_trials(config, len(dataset.train), float(config.optim.base_lr))
    tuning = run_trials(config, run_dir, plan, train, lambda folder: score_trial(folder, dataset, baseline), log)
    chosen = copy.deepcopy(config)
    chosen.optim.lr, chosen.optim.base_lr, chosen.tuning = None, tuning["base_lr"], tuning
    return build.resolve(chosen, dataset)


def scoring_views(config: Config) -> Any:
    """Two global views a sample, as the run augments (the label-free agreement compares them)."""
    from icone import build
    from icone.views import ViewMaker

    spec = dataclasses.replace(build.view_spec(config), global_crops=2, local_crops=0)
    return ViewMaker(spec, int(config.model.spatial_dims))


def score_trial(folder: Path, dataset: Any, baseline_rankme: float) -> dict[str, Any]:
    """The label-free scores of a finished trial's evaluated backbone and the verdict on collapse."""
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
    scores = label_free_scores(backbone.to(device), dataset.train.samples, scoring_views(config), device)
    verdict = collapse_verdict({**scores, "baseline": {"rankme": baseline_rankme}}, int(backbone.feature_dim))
    return {**scores, "verdict": verdict["verdict"]}


def _untrained_rankme(config: Config, dataset: Any) -> float:
    """RankMe of the untrained encoder (the run's seed) on the trials' sample: the verdict's reference."""
    import torch

    from icone import build
    from icone.evaluate.embeddings import embed_samples
    from icone.evaluate.label_free import fixed_rows
    from icone.stats import rankme

    backbone = build.build_method(config, len(dataset.train)).evaluation_backbone()
    rows = fixed_rows(len(dataset.train))
    return rankme(embed_samples(backbone, dataset.train.samples[rows], torch.device("cpu")))
