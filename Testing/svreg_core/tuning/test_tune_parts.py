"""The parts of ``svreg tune`` that need no registration: pairs, search space, storages (SQLite,
journal file), the step objective (epoch-granularity pruning, folding constraint, failures) with a
cheap analytic objective shaped like a training run, tuned-preset safety, progress output."""
from __future__ import annotations

import io
import json
import math
import os
import shutil
import sqlite3
import stat
import threading
import time
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from svreg_core.cli import main
from svreg_core.errors import InputError, OutputError
from svreg_core.optim.parameters import PRESETS, RegistrationParameters, load_parameters, preset_warning
from svreg_core.training.config import TrainingConfig
from svreg_core.tuning.cli import run_tune
from svreg_core.tuning.objective import StepReporter, trial_function
from svreg_core.tuning.pairs import discover_pairs
from svreg_core.tuning.progress import TqdmBar, TuneEvent, TuneProgress, json_lines, make_sink
from svreg_core.tuning.report import write_best_preset
from svreg_core.tuning.search_space import SearchSpace, build_search_space
from svreg_core.tuning.study import (
    BASE_PRESET,
    create_or_join,
    load_study,
    make_sampler,
    open_storage,
    quiet_optuna,
    run_worker,
    storage_url,
)

ROLES = ("fixed", "moving", "fixed_labels", "moving_labels")

# ----------------------------------------------------------------------------------------- pairs


def _fake_pair(folder: Path, stems: tuple[str, ...] = ROLES) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for s in stems:
        (folder / f"{s}.nii.gz").write_bytes(b"x")
    return folder


def test_pairs_from_folder_list_files_and_errors(tmp_path: Path) -> None:
    root = tmp_path / "val"
    _fake_pair(root / "b")
    _fake_pair(root / "a", ("fixed_image", "moving_image", "fixed_seg", "moving_seg"))
    (root / ".hidden").mkdir()
    (root / "notes").mkdir()
    pairs = discover_pairs(root)
    assert [p.name for p in pairs] == ["a", "b"]
    assert pairs[0].fixed_labels.name == "fixed_seg.nii.gz"
    assert [p.name for p in discover_pairs(root / "b")] == ["b"]  # a folder that is itself one pair

    csv = tmp_path / "list.csv"
    csv.write_text("fixed,moving,fixed_labels,moving_labels\n"
                   "val/a/fixed_image.nii.gz,val/a/moving_image.nii.gz,val/a/fixed_seg.nii.gz,val/a/moving_seg.nii.gz\n")
    (listed,) = discover_pairs(csv)
    assert listed.name == "pair001" and listed.moving == tmp_path / "val/a/moving_image.nii.gz"
    js = tmp_path / "list.json"
    js.write_text(json.dumps({"pairs": [{"name": "x", **{r: str(root / "b" / f"{r}.nii.gz") for r in ROLES}}]}))
    assert [p.name for p in discover_pairs(js)] == ["x"]

    with pytest.raises(InputError, match="not found"):
        discover_pairs(tmp_path / "nowhere")
    _fake_pair(root / "c", ("fixed", "moving", "fixed_labels"))
    with pytest.raises(InputError, match=r"pair folder .*c lacks moving_labels"):
        discover_pairs(root)
    shutil.rmtree(root / "c")
    (root / "b" / "moving.nii.gz").unlink()
    with pytest.raises(InputError, match=r"pair 'x': moving file not found"):
        discover_pairs(js)
    bad = tmp_path / "bad.csv"
    bad.write_text("fixed,moving\na,b\n")
    with pytest.raises(InputError, match="missing: fixed_labels, moving_labels"):
        discover_pairs(bad)
    with pytest.raises(InputError, match="holds no pairs"):
        discover_pairs(tmp_path / "val" / "notes")


def test_pairs_with_landmarks(tmp_path: Path) -> None:
    root = tmp_path / "val"
    _fake_pair(root / "a", ("fixed", "moving"))
    (root / "a" / "fixed_points.csv").write_text("x,y,z\n1,2,3\n4,5,6\n")
    (root / "a" / "moving_landmarks.csv").write_text("x,y,z\n1.5,2,3\n4,5.5,6\n")
    (pair,) = discover_pairs(root, needs="landmarks")
    assert pair.fixed_landmarks.name == "fixed_points.csv" and pair.fixed_labels is None
    with pytest.raises(InputError, match=r"pair folder .*a lacks fixed_labels\.nii\.gz or fixed_label\.nii\.gz"):
        discover_pairs(root)  # the Dice objective needs label maps
    csv = tmp_path / "list.csv"
    csv.write_text("name,fixed,moving,fixed_landmarks,moving_landmarks\n"
                   "p,val/a/fixed.nii.gz,val/a/moving.nii.gz,val/a/fixed_points.csv,val/a/moving_landmarks.csv\n")
    (listed,) = discover_pairs(csv, needs="landmarks")
    assert listed.moving_landmarks == root / "a" / "moving_landmarks.csv" and listed.moving_labels is None
    with pytest.raises(InputError, match="missing: fixed_labels, moving_labels"):
        discover_pairs(csv)
    (root / "a" / "moving_landmarks.csv").unlink()
    with pytest.raises(InputError, match="lacks moving_landmarks.csv or moving_points.csv"):
        discover_pairs(root, needs="landmarks")


def test_landmark_files_must_correspond(demo_pairs: Path, tmp_path: Path) -> None:
    from svreg_core.tuning.pairs import load_pair

    pair = tmp_path / "p"
    shutil.copytree(demo_pairs / "pair01", pair)
    loaded = load_pair(discover_pairs(pair, needs="landmarks")[0])
    assert loaded.fixed_landmarks.shape == loaded.moving_landmarks.shape == (32, 3)
    lines = (pair / "moving_landmarks.csv").read_text().splitlines()
    (pair / "moving_landmarks.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(InputError, match=r"pair 'p': .* same number .* \(found 32 fixed and 31 moving\)"):
        load_pair(discover_pairs(pair, needs="landmarks")[0])


# ----------------------------------------------------------------------------------------- search space


def test_search_space_ranges_per_preset() -> None:
    brain = {r.name: r for r in build_search_space("brain-mri").ranges}
    assert (brain["alpha_prime"].low, brain["alpha_prime"].high, brain["alpha_prime"].log) == (0.01, 0.2, True)
    assert (brain["lambda_max"].low, brain["lambda_max"].high) == (0.5, 5.0)
    ct = {r.name: r for r in build_search_space("ct").ranges}
    assert (ct["alpha_prime"].low, ct["alpha_prime"].high) == (0.001, 0.3)
    assert (ct["lambda_max"].low, ct["lambda_max"].high) == (0.1, 4.0)
    cardiac = build_search_space("cardiac-mri")  # its tuned α′ 0.493 lies above the brain range: widened
    assert {r.name: r.high for r in cardiac.ranges}["alpha_prime"] == pytest.approx(0.493)
    assert cardiac.default_values() == {"alpha_prime": 0.493, "lambda_max": PRESETS["cardiac-mri"].lambda_max}
    custom = build_search_space("brain-mri", alpha_prime_range=(0.05, 0.1), lambda_max_range=(1, 2))
    assert [(r.low, r.high) for r in custom.ranges] == [(0.05, 0.1), (1.0, 2.0)]
    with pytest.raises(InputError, match="empty"):
        build_search_space("brain-mri", lambda_max_range=(2, 1))


def test_search_space_suggests_parameters_and_round_trips(tmp_path: Path) -> None:
    preset = tmp_path / "fast.json"
    preset.write_text(json.dumps({"base": "ct", "parameters": {"iterations": [20, 10], "level_spacings": [8, 4]}}))
    space = build_search_space(preset, search=["alpha_prime", "lambda_max", "iterations", "learning_rate"],
                               overrides={"affine": False})
    assert space.base_preset == "ct" and space.base.similarity == "mind" and space.base.affine is False
    names = [r.name for r in space.ranges]
    assert names == ["alpha_prime", "lambda_max", "iterations_0", "iterations_1", "learning_rate"]
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(20):
        trial = study.ask()
        params = space.suggest(trial)
        assert isinstance(params, RegistrationParameters)
        assert 0.001 <= params.alpha_prime <= 0.3 and 0.1 <= params.lambda_max <= 4.0
        assert 10 <= params.iterations[0] <= 40 and 5 <= params.iterations[1] <= 20
        assert params.learning_rate == pytest.approx(trial.params["learning_rate"])
        assert space.parameters(trial.params) == params
        study.tell(trial, 0.0)
    again = SearchSpace.from_dict(json.loads(json.dumps(space.to_dict())))
    assert again == space


def test_search_space_smoothing_passes_are_whole_numbers() -> None:
    space = build_search_space("brain-mri", search=["alpha_prime", "smoothing_passes"])
    passes = {r.name: r for r in space.ranges}["smoothing_passes"]
    assert (passes.low, passes.high, passes.integer) == (1, 4, True)
    assert space.default_values()["smoothing_passes"] == PRESETS["brain-mri"].smoothing_passes == 3
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(12):
        trial = study.ask()
        params = space.suggest(trial)
        assert isinstance(params.smoothing_passes, int) and params.smoothing_passes == trial.params["smoothing_passes"]
        seen.add(params.smoothing_passes)
        assert space.parameters(trial.params) == params
        study.tell(trial, 0.0)
    assert seen <= {1, 2, 3, 4} and len(seen) > 1
    wide = build_search_space("brain-mri", search=["smoothing_passes"], overrides={"smoothing_passes": 6})
    assert (wide.ranges[0].low, wide.ranges[0].high) == (1, 6)  # widened to contain the base's own value
    with pytest.raises(InputError, match="cannot search smoothing_passes"):
        build_search_space(TrainingConfig(), search=["smoothing_passes"])


# ----------------------------------------------------------------------------------------- storage


def test_storage_errors_are_one_line_user_errors(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot create the folder"):
        open_storage(blocker / "sub" / "s.db")
    with pytest.raises(InputError, match=r"cannot open the study storage postgresql(\+psycopg2)?://me:\*\*\*@127"):
        open_storage("postgresql://me:secret@127.0.0.1:1/x")  # connection refused; password not shown
    with pytest.raises(InputError, match="invalid storage URL"):
        storage_url("not a url://")
    with pytest.raises(InputError, match="no study storage at"):
        open_storage(tmp_path / "missing.db", must_exist=True)
    open_storage(tmp_path / "empty.db")
    level = optuna.logging.get_verbosity()
    with pytest.raises(InputError, match="no study named 'nope' \\(the storage holds no study\\)"):
        run_tune(_args("--storage", tmp_path / "empty.db", "--study-name", "nope", "--report", tmp_path / "r"))
    assert optuna.logging.get_verbosity() == level  # run_tune restores Optuna's log level


def test_relative_sqlite_url_opens_an_existing_study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``sqlite:///relative.db`` (a URL relative to the working folder, as reports should name it) reopens."""
    monkeypatch.chdir(tmp_path)
    create_or_join(open_storage("sqlite:///studies/s.db"), "s", {"objective": "x"}, default_params=None)
    assert load_study(open_storage("sqlite:///studies/s.db", must_exist=True), "s").user_attrs


def test_workers_creating_the_storage_at_once(tmp_path: Path) -> None:
    """Workers opening one new SQLite file at the same moment race to create Optuna's tables: all succeed."""
    errors: list[str] = []
    for i in range(5):
        barrier = threading.Barrier(3)

        def open_it(path: Path = tmp_path / f"s{i}.db") -> None:
            barrier.wait()
            try:
                open_storage(path, heartbeat_interval=10, grace_period=60)
            except InputError as exc:
                errors.append(str(exc))

        threads = [threading.Thread(target=open_it) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors


def test_sqlite_transactions_take_the_write_lock_when_they_begin(tmp_path: Path) -> None:
    """Popping a queued trial must not let two workers both read it as WAITING: a transaction of the
    storage holds SQLite's write lock from its first statement, so another writer is refused until it
    ends (with pysqlite's deferred transactions the other writer got in)."""
    path = tmp_path / "lock.db"
    storage = open_storage(path)
    other = sqlite3.connect(path, timeout=0.1, isolation_level=None)
    with storage.engine.connect() as connection:
        with connection.begin():
            connection.exec_driver_sql("SELECT 1")  # a read only, as Optuna's check of the trial state
            with pytest.raises(sqlite3.OperationalError, match="locked"):
                other.execute("BEGIN IMMEDIATE")
    other.execute("BEGIN IMMEDIATE")  # free again once the transaction ended
    other.execute("ROLLBACK")
    other.close()
    study = optuna.create_study(storage=storage, study_name="queue")  # the storage still works as usual
    study.enqueue_trial({"x": 1.0})
    assert study.ask().params == {} and len(study.trials) == 1


def _args(*argv: Any) -> Any:
    from svreg_core.cli import build_parser

    return build_parser()[0].parse_args(["tune", *[str(a) for a in argv]])


def test_cli_argument_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(InputError, match="give a validation set"):
        run_tune(_args())
    with pytest.raises(InputError, match="grace-period longer"):
        run_tune(_args(tmp_path, "--heartbeat-interval", "10", "--grace-period", "5"))
    assert main(["tune", str(tmp_path / "missing"), "--storage", str(tmp_path / "s.db")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("svreg: error: validation set not found")
    assert not (tmp_path / "s.db").exists()  # found before the study storage is created


# ----------------------------------------------------------------------------------------- objective


class Training:
    """Shaped like a training run: 3 epochs, each reporting a validation score that grows towards
    ``1 - (x - 0.3)²`` (NaN for x < ``nan_below``); folding = 10·x %. Epoch 2 raises for x < ``fail_below``,
    and is stopped as by Ctrl-C / SIGTERM (KeyboardInterrupt, what the stop signal raises) for x < ``stop_below``."""

    name = "quadratic-training"
    aggregate = "max"  # the trial's value is its best epoch

    def __init__(self, fail_below: float = -1.0, nan_below: float = -1.0, seconds: float = 0.0,
                 stop_below: float = -1.0) -> None:
        self.fail_below = fail_below
        self.nan_below = nan_below
        self.seconds = seconds
        self.stop_below = stop_below
        self.epochs_run = 0

    def step_labels(self) -> list[str]:
        return ["epoch 1", "epoch 2", "epoch 3"]

    def evaluate(self, config: dict[str, float], steps: StepReporter) -> None:
        x = config["x"]
        for k in range(1, 4):
            time.sleep(self.seconds)
            self.epochs_run += 1
            if k == 2 and x < self.fail_below:
                raise MemoryError("out of memory")
            if k == 2 and x < self.stop_below:
                raise KeyboardInterrupt
            steps.report(math.nan if x < self.nan_below else 1 - (x - 0.3) ** 2 - 0.1 / k, folding=10 * x)


class XSpace:
    def suggest(self, trial: optuna.Trial) -> dict[str, float]:
        return {"x": trial.suggest_float("x", 0.0, 1.0)}


def _study(storage: Any, name: str, pruner: optuna.pruners.BasePruner, xs: tuple[float, ...] = ()) -> optuna.Study:
    study, created = create_or_join(storage, name, {"objective": "quadratic"}, default_params=None)
    for x in xs:
        study.enqueue_trial({"x": x})
    return load_study(storage, name, sampler=make_sampler(0, created), pruner=pruner)


def test_training_shaped_objective_prunes_per_epoch(tmp_path: Path) -> None:
    """A training objective plugs in unchanged: steps are epochs, pruning at epoch granularity."""
    storage = open_storage(tmp_path / "q.db")
    study = _study(storage, "q", optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
                   (0.3, 0.35, 0.95, 0.28, 0.9))
    objective = Training()
    events: list[TuneEvent] = []
    progress = TuneProgress(study, 5, events.append)
    with quiet_optuna():
        reason, _ = run_worker(study, trial_function(XSpace(), objective, progress=progress), 5, callbacks=[progress])
    assert reason == "done"
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.COMPLETE, TrialState.COMPLETE, TrialState.PRUNED,
                                    TrialState.COMPLETE, TrialState.PRUNED]
    assert t[0].value == pytest.approx(1 - 0.1 / 3)  # the best epoch
    for pruned in (t[2], t[4]):  # not during warm-up (epoch 1), at epoch 2 — never after the last epoch
        assert pruned.user_attrs["pruned_reason"] == "below the median of other trials after epoch 2"
        assert len(pruned.user_attrs["step_values"]) == 2 and max(pruned.intermediate_values) == 1
    assert objective.epochs_run == 3 + 3 + 2 + 3 + 2
    steps = [e for e in events if e.event == "step"]
    assert steps[0].step_label == "epoch 1" and steps[0].n_steps == 3 and steps[0].folding == pytest.approx(3.0)
    assert [e.state for e in events if e.event == "trial"] == ["COMPLETE", "COMPLETE", "PRUNED", "COMPLETE", "PRUNED"]
    assert [e.finished for e in events if e.event == "trial"] == [1, 2, 3, 4, 5]


def test_folding_constraint_prunes_the_trial(tmp_path: Path) -> None:
    study = _study(open_storage(tmp_path / "c.db"), "c", optuna.pruners.NopPruner(), (0.3, 0.5))
    with quiet_optuna():
        run_worker(study, trial_function(XSpace(), Training(), max_folding=4.0), 2)
    ok, bad = study.get_trials()
    assert ok.state == TrialState.COMPLETE and ok.user_attrs["folding_percent_max"] == pytest.approx(3.0)
    assert bad.state == TrialState.PRUNED and len(bad.user_attrs["step_values"]) == 1
    assert bad.user_attrs["pruned_reason"] == "folding 5% > 4% on epoch 1"


def test_failing_trials_are_recorded_and_the_study_goes_on(tmp_path: Path) -> None:
    study = _study(open_storage(tmp_path / "n.db"), "n", optuna.pruners.NopPruner(), (0.01, 0.2, 0.6))
    with quiet_optuna():
        reason, error = run_worker(study, trial_function(XSpace(), Training(fail_below=0.4, nan_below=0.05)), 1)
    assert reason == "done" and error == "epoch 2: MemoryError: out of memory"
    t = study.get_trials()
    assert [x.state for x in t] == [TrialState.FAIL, TrialState.FAIL, TrialState.COMPLETE]
    assert t[0].user_attrs["error"] == "epoch 1: ValueError: the objective value is nan"
    assert t[1].user_attrs["error"] == "epoch 2: MemoryError: out of memory"
    assert t[1].user_attrs["step_values"] == [pytest.approx(1 - 0.01 - 0.1)]  # epoch 1 was recorded

    stop = _study(open_storage(tmp_path / "m.db"), "m", optuna.pruners.NopPruner(), (0.2, 0.2, 0.2, 0.6))
    with quiet_optuna():
        reason, error = run_worker(stop, trial_function(XSpace(), Training(fail_below=0.4)), 2, max_failures=3)
    assert reason == "max_failures"
    assert [x.state for x in stop.get_trials()] == [TrialState.FAIL] * 3 + [TrialState.WAITING]


def test_stopped_default_trial_is_queued_again(tmp_path: Path) -> None:
    """The base preset's trial (trial 0) stopped by Ctrl-C / SIGTERM is queued again when the study is
    joined and then run, even by a run that finds the study already finished; once only, and never a
    default that failed by itself. (Real signals and a killed worker: test_tune_study.py.)"""
    storage = open_storage(tmp_path / "d.db")
    meta, default = {"objective": "quadratic"}, {"x": 0.25}

    def join(expect_created: bool = False) -> optuna.Study:
        study, created = create_or_join(storage, "d", meta, default_params=default)
        assert created == expect_created
        return load_study(storage, "d", sampler=make_sampler(0, created))

    def defaults(study: optuna.Study) -> list[Any]:
        return [t for t in study.get_trials() if t.user_attrs.get("enqueued") == BASE_PRESET]

    study = join(expect_created=True)
    with quiet_optuna(), pytest.raises(KeyboardInterrupt):
        run_worker(study, trial_function(XSpace(), Training(stop_below=0.3)), 3)
    (stopped,) = study.get_trials()
    assert stopped.state == TrialState.FAIL and stopped.user_attrs["interrupted"] is True
    # other workers finish the study meanwhile (3 complete trials), without the default
    for x in (0.5, 0.6, 0.7):
        study.add_trial(optuna.create_trial(params={"x": x}, distributions=stopped.distributions, value=0.5))
    study = join()
    assert [t.state for t in defaults(study)] == [TrialState.FAIL, TrialState.WAITING]
    assert [t.state for t in defaults(join())] == [TrialState.FAIL, TrialState.WAITING]  # queued once only
    with quiet_optuna():
        assert run_worker(study, trial_function(XSpace(), Training()), 3)[0] == "done"
    last = defaults(study)[-1]
    assert last.state == TrialState.COMPLETE and last.params == default and last.number == 4
    assert last.value == pytest.approx(1 - 0.05 ** 2 - 0.1 / 3)
    assert len(study.get_trials()) == 5  # the default ran though 3 trials were already finished

    # a default that fails by itself (an error, not a stop) is not run again
    failing = open_storage(tmp_path / "f.db")
    study, _ = create_or_join(failing, "f", meta, default_params=default)
    with quiet_optuna():
        run_worker(study, trial_function(XSpace(), Training(fail_below=0.3)), 1, max_failures=1)
    study, created = create_or_join(failing, "f", meta, default_params=default)
    assert not created and [t.state for t in study.get_trials()] == [TrialState.FAIL]
    assert "out of memory" in study.get_trials()[0].user_attrs["error"]


def test_journal_file_storage_resumes_and_shares_trials(tmp_path: Path) -> None:
    """JournalStorage on a file: two workers (threads, each with its own storage) then a resumed run."""
    path = tmp_path / "study.log"
    studies = [_study(open_storage(path), "j", optuna.pruners.NopPruner()) for _ in range(2)]
    with quiet_optuna():
        workers = [threading.Thread(target=run_worker, args=(s, trial_function(XSpace(), Training(seconds=0.05)), 4))
                   for s in studies]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
        trials = studies[0].get_trials()
        assert len({t.number for t in trials}) == len(trials)
        assert 4 <= sum(t.state == TrialState.COMPLETE for t in trials) <= 5  # one extra if both were running
        resumed = _study(open_storage(path), "j", optuna.pruners.NopPruner())
        assert run_worker(resumed, trial_function(XSpace(), Training()), len(trials) + 2)[0] == "done"
    assert [t.state for t in resumed.get_trials()] == [TrialState.COMPLETE] * (len(trials) + 2)
    assert not list(tmp_path.glob("*.lock"))


# ----------------------------------------------------------------------------------------- presets


def test_tuned_preset_keeps_the_pyramid_unless_searched(tmp_path: Path) -> None:
    """--apply-best writes only the searched parameters; fixed settings only when asked, then with a warning."""
    def best_preset(search: list[str], include_fixed: bool) -> Path:
        space = build_search_space("brain-mri", search=search,
                                   overrides={"level_spacings": (12, 6, 3), "iterations": (5, 5, 5), "affine": False})
        name = "-".join(search)
        study, _ = create_or_join(open_storage(tmp_path / "p.db"), name, {"search_space": space.to_dict()},
                                  default_params=None)
        with quiet_optuna():
            study.optimize(lambda trial: space.suggest(trial).alpha_prime, n_trials=3)
        path, _ = write_best_preset(study, tmp_path / f"{name}-{include_fixed}.json", include_fixed=include_fixed)
        return path

    default = PRESETS["brain-mri"]
    plain = best_preset(["alpha_prime", "lambda_max"], include_fixed=False)
    params = load_parameters(plain)
    assert set(json.loads(plain.read_text())["parameters"]) == {"alpha_prime", "lambda_max"}
    assert (params.level_spacings, params.iterations, params.affine) == (default.level_spacings,
                                                                         default.iterations, True)
    assert params.alpha_prime != default.alpha_prime and preset_warning(plain) is None
    settings = json.loads(plain.read_text())["tuning"]["study_settings"]  # what the study ran with
    assert settings["level_spacings"] == [12.0, 6.0, 3.0] and settings["affine"] is False

    fixed = best_preset(["alpha_prime", "lambda_max"], include_fixed=True)
    assert load_parameters(fixed).level_spacings == (12.0, 6.0, 3.0)
    warning = preset_warning(fixed)
    assert warning is not None and "\n" not in warning
    assert "preset (affine, level_spacings, iterations);" in warning

    with pytest.raises(InputError, match="searched iterations belong to the study's pyramid"):
        best_preset(["alpha_prime", "iterations"], include_fixed=False)  # 3 levels: no sense on the default 2
    searched = load_parameters(best_preset(["alpha_prime", "iterations"], include_fixed=True))
    assert searched.level_spacings == (12.0, 6.0, 3.0) and len(searched.iterations) == 3
    # written with the umask's permissions (readable by the group/others under the usual 022), not 0600
    previous = os.umask(0o022)
    try:
        shared = best_preset(["lambda_max"], include_fixed=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o644


# ----------------------------------------------------------------------------------------- progress


def test_progress_sinks() -> None:
    out = io.StringIO()
    json_lines(out)(TuneEvent("trial", "s", trial=3, state="COMPLETE", value=math.nan, params={"a": 1.0},
                              folding=math.inf))
    doc = json.loads(out.getvalue())
    assert doc["value"] is None and doc["folding"] is None and doc["trial"] == 3 and doc["params"] == {"a": 1.0}
    bar_stream = io.StringIO()
    bar = TqdmBar(bar_stream)
    bar(TuneEvent("start", "s", n_trials=4, finished=1))
    bar(TuneEvent("trial", "s", trial=1, state="FAIL", error="boom", finished=1, n_trials=4))
    bar(TuneEvent("trial", "s", trial=2, state="COMPLETE", value=0.8, best_value=0.8, finished=2, n_trials=4))
    bar.close()
    text = bar_stream.getvalue()
    assert "2/4" in text and "best=0.8000" in text and "trial 1 failed: boom" in text
    assert not isinstance(make_sink("auto", stderr=io.StringIO()), TqdmBar)  # quiet in pipes
    with pytest.raises(ValueError):
        make_sink("loud")


def test_demo_landmarks_invert_the_known_warp() -> None:
    """The moving landmark y of a fixed point x solves y + d(y) = x (the moving image samples the fixed at y + d(y))."""
    import numpy as np
    from scipy import ndimage

    from svreg_core.tuning.demo import _corresponding_points, smooth_displacement

    x = np.array([[5.0, 6.0, 7.0], [10.5, 3.25, 8.0]])
    constant = np.broadcast_to(np.array([1.5, -2.0, 0.25])[:, None, None, None], (3, 16, 16, 16)).copy()
    np.testing.assert_allclose(_corresponding_points(x, constant), x - [1.5, -2.0, 0.25], atol=1e-12)
    disp = smooth_displacement((16, 16, 16), 1.0, seed=0)
    y = _corresponding_points(x, disp)
    d_y = np.stack([ndimage.map_coordinates(d, y.T, order=1) for d in disp], 1)
    np.testing.assert_allclose(y + d_y, x, atol=1e-6)
