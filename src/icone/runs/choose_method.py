"""``method=auto``: a short trial run of each candidate method at its own default lr, scored without
labels, then the run with the winner (and, with ``optim.lr=auto`` too, the winner's lr tuned after).

The candidates are ``method_candidates`` (default IConE, ExCB, MoCo, BYOL, DINO: all defined at batch
size 1); one that does not fit the batch size or the data is left out, named, before anything trains.
Each trial is a run folder ``RUN/trials/method-NAME`` (read back when finished, resumed when not), as
``optim.lr=auto``'s are (:mod:`icone.runs.tune`), for the same share of the epochs; every trial is
scored on the same views (the first candidate's), so the scores compare across methods. docs/tuning.md.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

from icone.config import Config
from icone.errors import UserError

AUTO = "auto"


def with_method(config: Config, name: str) -> Config:
    """The config as given, for method ``name`` (its own options and lr defaults)."""
    candidate = copy.deepcopy(config)
    candidate.method, candidate.method_options = name, {}
    return candidate


def fitting_candidates(config: Config, dataset: Any) -> tuple[dict[str, Any], list[str]]:
    """The candidates resolved for the data (name -> ``Resolved``), and why each other one was left out."""
    from icone import build

    fits, left_out = {}, []
    for name in dict.fromkeys(config.method_candidates):
        if name == AUTO:
            raise UserError("method_candidates names methods to try; 'auto' is not one")
        try:
            fits[name] = build.resolve(with_method(config, name), dataset)
        except UserError as err:
            if str(err).startswith("unknown method"):
                raise UserError(f"method_candidates: {err}") from None
            left_out.append(f"{name} ({err})")
    if not fits:
        raise UserError("method=auto: no candidate fits this run: " + "; ".join(left_out))
    return fits, left_out


def pending(config: Config, dataset: Any) -> Any:
    """``method=auto`` before its trials, checked: the first fitting candidate's resolution, holding the
    config as given (``method: auto``, so ``config.yaml`` says it and ``--resume`` finds the trials)."""
    fits, _ = fitting_candidates(config, dataset)
    return dataclasses.replace(next(iter(fits.values())), config=copy.deepcopy(config))


def choose_method(resolved: Any, dataset: Any, run_dir: Path, log: Callable[[str], None] = print) -> Any:
    """The trials under ``run_dir/trials``, then the winner's config resolved, its choice in ``tuning.method``."""
    from icone import build
    from icone.runs.tune import begin_trials, plan_trials, scoring_views

    config = resolved.config
    begin_trials(config, run_dir, "method=auto", "method")
    resolved_fits, left_out = fitting_candidates(config, dataset)
    fits = {name: r.config for name, r in resolved_fits.items()}
    first = next(iter(fits.values()))
    plan = plan_trials(first, len(dataset.train), 1.0)
    log(
        f"method=auto: {len(fits)} trial runs ({', '.join(fits)}), each at its default lr, {plan.epochs} epoch(s) "
        f"of {plan.samples} samples: {len(fits) * plan.epochs * plan.samples / max(plan.run_samples, 1):.0%} of "
        "the full run's compute, before it" + (f"; left out: {'; '.join(left_out)}" if left_out else "")
    )
    record = _run_trials(fits, dataset, run_dir, scoring_views(first), log)
    winner = with_method(config, record["method"])
    winner.tuning = {**config.tuning, "method": record}
    return build.resolve(winner, dataset)


def _run_trials(
    fits: dict[str, Config], dataset: Any, run_dir: Path, views: Any, log: Callable[[str], None]
) -> dict[str, Any]:
    from icone.runs import tune

    scores: dict[str, dict[str, Any]] = {}
    for position, (name, candidate) in enumerate(fits.items(), 1):
        plan = tune.plan_trials(candidate, len(dataset.train), float(candidate.optim.base_lr))
        baseline = tune.untrained_rankme(candidate, dataset)
        folder = run_dir / "trials" / f"method-{name}"
        trial = tune.trial_config(candidate, plan, 1.0)
        scores[name] = tune.run_trial(
            trial, folder, tune.train_trial, lambda f, b=baseline: tune.score_trial(f, dataset, b, views)
        )
        log(tune.trial_line(position, len(fits), name, scores[name]))
    usable = tune.usable_trials(scores, "method=auto", "give --method yourself, with a lower optim.lr than its default")
    best = max(usable, key=lambda name: usable[name]["score"])  # a tie: the earlier candidate
    reason = tune.why_chosen(usable[best], len(scores) - len(usable))
    log(f"method=auto chose {best}: {reason}")
    return {"method": best, "reason": reason, "trials": scores}
