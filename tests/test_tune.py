"""``optim.lr=auto``'s bookkeeping: the trial plan and its cost, trials read back or resumed rather than
trained again, a diverged or collapsed trial excluded, the choice and its reason."""

import json

import pytest

from icone.config import build_config
from icone.errors import TrainingDiverged, UserError
from icone.runs.tune import LR_FACTORS, SCORE_FILE, choose, cost_line, plan_trials, run_trials, trial_config


def _config(*items: str):
    return build_config(None, ["train.epochs=10", "train.batch_size=8", *items])


def test_the_plan_takes_a_fifth_of_the_epochs_and_caps_large_data():
    plan = plan_trials(_config(), num_samples=1200, base_lr=1e-3)
    assert plan.factors == LR_FACTORS and plan.epochs == 2 and plan.samples == 1200
    assert plan.share == pytest.approx(5 * 2 / 10)  # five trials of a fifth: the full run's compute again
    big = plan_trials(_config(), num_samples=1_000_000, base_lr=1e-3)
    assert big.samples == 10_000 and big.share == pytest.approx(5 * 2 * 10_000 / (10 * 1_000_000))
    assert "5 trial runs" in cost_line(plan) and "100% of the full run's compute" in cost_line(plan)


def test_a_trial_is_the_run_at_a_factor_of_the_lr_for_fewer_epochs():
    config = _config("optim.warmup_epochs=1")
    plan = plan_trials(config, num_samples=1_000_000, base_lr=2e-3)
    trial = trial_config(config, plan, 0.5)
    assert trial.optim.base_lr == pytest.approx(1e-3) and trial.optim.lr is None
    assert trial.train.epochs == 2 and trial.data.patches_per_epoch == 10_000 and not trial.eval.after_train
    assert config.train.epochs == 10 and config.data.patches_per_epoch is None  # the run's own config untouched


def test_the_best_score_wins_and_a_collapsed_or_diverged_trial_is_out():
    ok = {"status": "ok", "verdict": "none", "rankme": 10.0, "agreement": 0.5}
    scores = {
        0.25: {**ok, "score": 4.0},
        1.0: {**ok, "score": 5.0},
        4.0: {**ok, "score": 50.0, "verdict": "collapsed"},
        2.0: {"status": "diverged"},
    }
    factor, reason = choose(scores)
    assert factor == 1.0 and "x1" in reason and "2 trial(s) diverged or collapsed" in reason
    with pytest.raises(UserError, match="every trial diverged or collapsed"):
        choose({2.0: {"status": "diverged"}, 4.0: {**ok, "score": 1.0, "verdict": "collapsed"}})


def test_finished_trials_are_read_back_unfinished_ones_resume_and_divergence_is_recorded(tmp_path):
    config = _config()
    plan = plan_trials(config, num_samples=100, base_lr=1e-3)
    trained, scored = [], []

    def train(trial, folder, resume):
        trained.append((round(trial.optim.base_lr / 1e-3, 2), resume))
        if trial.optim.base_lr > 3e-3:
            raise TrainingDiverged("the loss became nan at epoch 1, step 3; ...")
        (folder / "checkpoints").mkdir(parents=True, exist_ok=True)

    def score(folder):
        scored.append(folder.name)
        return {"rankme": 8.0, "agreement": 0.5, "score": 4.0 if folder.name != "lr-x0.5" else 6.0, "verdict": "none"}

    half = plan.folder(tmp_path, 1.0) / "checkpoints"
    half.mkdir(parents=True)
    (half / "last.pt").write_bytes(b"")  # an interrupted trial: it resumes
    log = []
    result = run_trials(config, tmp_path, plan, train, score, log.append)
    assert result["factor"] == 0.5 and result["base_lr"] == pytest.approx(5e-4)
    assert (1.0, True) in trained and (0.5, False) in trained
    assert result["trials"]["x4"]["status"] == "diverged"
    assert log[0].startswith("optim.lr=auto: 5 trial runs") and sum(line.startswith("[trial") for line in log) == 5
    assert json.loads((plan.folder(tmp_path, 0.5) / SCORE_FILE).read_text())["score"] == 6.0
    trained.clear()
    again = run_trials(config, tmp_path, plan, train, score, log.append)
    assert trained == [] and again == result  # a second call trains nothing: every trial is read back
