"""``optim.lr=auto``'s bookkeeping: the trial plan and its cost, trials read back or resumed rather than
trained again, a diverged or collapsed trial excluded, the choice and its reason."""

import json

import pytest

from icone.config import build_config
from icone.errors import TrainingDiverged
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
        0.25: {**ok, "score": 0.04},
        1.0: {**ok, "score": 0.05},
        4.0: {**ok, "score": 0.5, "verdict": "collapsed"},
        2.0: {"status": "diverged"},
    }
    factor, reason = choose(scores)
    assert factor == 1.0 and "retrieving each other in 5.0% of the samples" in reason
    assert "2 trial(s) diverged or collapsed" in reason
    assert choose({0.5: {**ok, "score": 0.05}, 2.0: {**ok, "score": 0.05}, 4.0: {**ok, "score": 0.05}})[0] == 0.5


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
        value = 0.4 if folder.name != "lr-x0.5" else 0.6
        return {"rankme": 8.0, "agreement": 0.5, "retrieval": value, "score": value, "verdict": "none"}

    half = plan.folder(tmp_path, 1.0) / "checkpoints"
    half.mkdir(parents=True)
    (half / "last.pt").write_bytes(b"")  # an interrupted trial: it resumes
    log = []
    result = run_trials(config, tmp_path, plan, train, score, log.append)
    assert result["factor"] == 0.5 and result["base_lr"] == pytest.approx(5e-4)
    assert (1.0, True) in trained and (0.5, False) in trained
    assert result["trials"]["x4"]["status"] == "diverged"
    assert log[0].startswith("optim.lr=auto: 5 trial runs") and sum(line.startswith("[trial") for line in log) == 5
    assert json.loads((plan.folder(tmp_path, 0.5) / SCORE_FILE).read_text())["score"] == 0.6
    trained.clear()
    again = run_trials(config, tmp_path, plan, train, score, log.append)
    assert trained == [] and again == result  # a second call trains nothing: every trial is read back


def test_a_trial_scored_by_an_earlier_version_is_scored_again_not_trained(tmp_path):
    config = _config()
    plan = plan_trials(config, num_samples=100, base_lr=1e-3)
    for factor, old in ((0.25, 90.0), (0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (4.0, 1.0)):  # rank x agreement
        folder = plan.folder(tmp_path, factor)
        (folder / "checkpoints").mkdir(parents=True)
        (folder / SCORE_FILE).write_text(json.dumps({"status": "ok", "score": old, "rankme": 9.0, "verdict": "none"}))
    trained, scored = [], []

    def score(folder):
        scored.append(folder.name)
        value = 0.5 if folder.name == "lr-x2" else 0.1
        return {"rankme": 8.0, "retrieval": value, "score": value, "verdict": "none"}

    result = run_trials(config, tmp_path, plan, lambda *a: trained.append(a), score, lambda line: None)
    assert trained == [] and len(scored) == 5 and result["factor"] == 2.0
    assert json.loads((plan.folder(tmp_path, 0.25) / SCORE_FILE).read_text())["retrieval"] == 0.1


def _auto_run(tmp_path, capsys, *extra):
    from helpers import FAST, run_cli, write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    args = ["train", "--data", npz, "--epochs", "5", "--batch-size", "4", *FAST, "--out", tmp_path / "run",
            "optim.lr=auto", "optim.lr_factors=0.5,2", *extra]  # fmt: skip
    return run_cli(args, capsys)


def test_lr_auto_runs_its_trials_then_the_run_at_the_choice(tmp_path, capsys):
    import yaml

    code, out, err = _auto_run(tmp_path, capsys)
    assert code == 0, err
    run = tmp_path / "run"
    for name in ("lr-x0.5", "lr-x2"):  # ordinary run folders under the run, each with its scores
        assert (run / "trials" / name / "checkpoints" / "last.pt").is_file()
        assert json.loads((run / "trials" / name / SCORE_FILE).read_text())["status"] in ("ok", "diverged")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    factor = saved["tuning"]["factor"]
    assert factor in (0.5, 2.0) and isinstance(saved["optim"]["lr"], float)
    assert saved["optim"]["base_lr"] == pytest.approx(saved["tuning"]["base_lr"])
    assert set(saved["tuning"]["trials"]) == {"x0.5", "x2"} and saved["tuning"]["trial_epochs"] == 1
    assert json.loads((run / "eval.json").read_text())["tuning"]["factor"] == factor
    lines = out.splitlines()
    assert any(line.startswith("optim.lr=auto: 2 trial runs") and "of the full run's compute" in line for line in lines)
    assert sum(line.startswith("[trial ") for line in lines) == 2
    assert f"optim.lr=auto chose x{factor:g} of the default lr" in " ".join(out.split())


def _interrupt_at_the_second_trial(monkeypatch):
    """Ctrl-C while the second trial is scored; returns the real scorer (to put back)."""
    import icone.runs.tune as tune

    real, calls = tune.score_trial, []

    def interrupt_at_the_second(folder, *args):
        calls.append(folder.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(folder, *args)

    monkeypatch.setattr(tune, "score_trial", interrupt_at_the_second)
    return real


@pytest.mark.parametrize("tuner", ["optim.lr=auto", "method=auto"])
def test_a_resumed_tuner_reads_its_finished_trials_back(tmp_path, capsys, monkeypatch, tuner):
    from helpers import run_cli

    start, first_trial = {"optim.lr=auto": (_auto_run, "lr-x0.5"), "method=auto": (_method_auto_run, "method-icone")}[
        tuner
    ]
    real = _interrupt_at_the_second_trial(monkeypatch)
    code, _, err = start(tmp_path, capsys)
    assert code == 130 and f"interrupted in {tuner}'s trials" in err, err
    first = tmp_path / "run" / "trials" / first_trial / SCORE_FILE
    stamp = first.stat().st_mtime_ns
    monkeypatch.setattr("icone.runs.tune.score_trial", real)
    code, out, err = run_cli(["train", "--resume", "--out", tmp_path / "run", "--no-progress"], capsys)
    assert code == 0, err
    assert first.stat().st_mtime_ns == stamp  # read back, not trained again
    assert (tmp_path / "run" / "backbone.pt").is_file() and f"{tuner} chose" in " ".join(out.split())


def test_bad_trial_grids_are_one_line(tmp_path, capsys):
    from helpers import expect_error

    expect_error(capsys, ["train", "optim.lr=fast"], r"^error: optim.lr must be a number or auto")
    expect_error(capsys, ["train", "optim.lr=auto", "optim.lr_factors=1"], r"two or more different factors")
    expect_error(capsys, ["train", "optim.lr=auto", "optim.lr_factors=0,1"], r"optim.lr_factors must be greater than 0")


def test_a_grid_refuses_lr_auto(tmp_path, capsys):
    from helpers import expect_error, write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    expect_error(capsys, ["bench", "--data", npz, "--out", tmp_path / "g", "optim.lr=auto"], r"--lr-sweep")


def _method_auto_run(tmp_path, capsys, *extra):
    from helpers import FAST, run_cli, write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    args = ["train", "--data", npz, "--epochs", "5", "--batch-size", "1", *FAST, "--out", tmp_path / "run",
            "--method", "auto", "method_candidates=icone,simclr,byol", *extra]  # fmt: skip
    return run_cli(args, capsys)


def test_method_auto_tries_the_fitting_candidates_then_runs_the_winner(tmp_path, capsys):
    import yaml

    code, out, err = _method_auto_run(tmp_path, capsys, "optim.lr=auto", "optim.lr_factors=0.5,2")
    assert code == 0, err
    run = tmp_path / "run"
    text = " ".join(out.split())
    # SimCLR needs two samples a batch: left out at batch 1, named, before anything trains
    assert "method=auto: 2 trial runs (icone, byol)" in text and "left out: simclr (" in text
    assert not (run / "trials" / "method-simclr").exists()
    for name in ("icone", "byol"):  # ordinary run folders, each at its method's default lr, scored on the same views
        trial = yaml.safe_load((run / "trials" / f"method-{name}" / "config.yaml").read_text())
        assert trial["method"] == name and trial["train"]["epochs"] == 1
        assert json.loads((run / "trials" / f"method-{name}" / SCORE_FILE).read_text())["status"] in ("ok", "diverged")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    chosen = saved["tuning"]["method"]["method"]
    assert chosen in ("icone", "byol") and saved["method"] == chosen
    trials = saved["tuning"]["method"]["trials"]
    assert set(trials) == {"icone", "byol"}
    usable = {m: t["score"] for m, t in trials.items() if t["status"] == "ok" and t["verdict"] != "collapsed"}
    assert chosen == max(usable, key=usable.get)  # the best view retrieval wins
    assert saved["tuning"]["factor"] in (0.5, 2.0)  # then the chosen method's lr, tuned: both choices kept
    assert (run / "trials" / "lr-x0.5" / SCORE_FILE).is_file()
    assert json.loads((run / "eval.json").read_text())["tuning"]["method"]["method"] == chosen
    assert f"method=auto chose {chosen}: the best label-free score, its views retrieving each other in" in text
    assert "optim.lr=auto chose x" in text


def test_method_auto_refuses_what_it_cannot_honour_in_one_line(tmp_path, capsys):
    from helpers import expect_error, write_tiny_npz

    npz = write_tiny_npz(tmp_path / "tiny.npz", 2)
    run = ["train", "--data", npz, "--method", "auto", "--out", tmp_path / "run"]
    expect_error(capsys, [*run, "optim.lr=0.001"], r"^error: method=auto tries each method at its own default lr")
    expect_error(capsys, [*run, "icone.w_div=2"], r"options of one method \(METHOD.key: icone.w_div\) cannot be given")
    expect_error(capsys, [*run, "method_candidates=icone,nosuch"], r"method_candidates: unknown method 'nosuch'")
    expect_error(capsys, [*run, "--batch-size", "1", "method_candidates=simclr"], r"no candidate fits this run: simclr")
    assert not (tmp_path / "run").exists()  # refused before anything is written
    expect_error(capsys, ["bench", "--data", npz, "--out", tmp_path / "g", "--methods", "auto"], r"unknown method")
