"""scripts/run_grid.py's runs as submitit jobs: two local jobs at once, skipped when the grid runs again."""

import json
import shutil

import pytest

from script_loader import load_script, tiny_grid_budget

grid = load_script("run_grid")
TINY = tiny_grid_budget()


def test_local_executor_runs_two_jobs_and_skips_them_when_run_again(tmp_path):
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    specs = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw", "smooth"), seeds=[1], budget=TINY)
    lines = []
    infos = grid.run_grid(specs, results, scratch, jobs=2, executor="local", log=lines.append)
    assert len(infos) == 2 and all(i["finished"] and not i["flags"] for i in infos), lines
    assert {(i["arm"], i["seed"]) for i in infos} == {("raw", 1), ("smooth", 1)}
    for spec in specs:
        saved = json.loads((results / spec.rel_dir / "result.json").read_text())
        assert saved["finished"] and saved["config"]["out_dir"] == spec.rel_dir.as_posix()
    assert list((scratch / "submitit").glob("*_result.pkl"))  # they ran as submitit jobs
    assert all(grid.run_state(s, results) == "done" for s in specs)
    # resume by result: nothing left to run, nothing submitted
    shutil.rmtree(scratch / "submitit")
    lines.clear()
    assert grid.run_grid(specs, results, scratch, jobs=2, executor="local", log=lines.append) == []
    assert "2 already finished, 0 to run" in lines[0] and not (scratch / "submitit").exists()


def test_a_failed_job_is_reported_and_the_others_finish(tmp_path):
    specs = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw", "smooth"), seeds=[1], budget=TINY)
    broken = grid.RunSpec(**{**specs[0].__dict__, "config": {**specs[0].config, "encoding": "nope"}})
    lines = []
    infos = grid.submit_runs([broken, specs[1]], tmp_path / "results", tmp_path / "scratch", jobs=2,
                             executor="local", log=lines.append)
    assert [i["arm"] for i in infos] == ["smooth"]
    assert any(line.startswith("[") and "FAILED" in line and str(broken.rel_dir) in line for line in lines), lines


def test_unknown_executor_is_refused(tmp_path):
    with pytest.raises(ValueError, match="executor must be one of"):
        grid.make_executor("cloud", tmp_path)


def test_local_jobs_are_not_cut_by_a_time_limit(tmp_path):
    # submitit's own default (2 minutes) killed 1,000-epoch runs mid-way
    assert grid.make_executor("local", tmp_path).parameters["timeout_min"] >= 24 * 60


def test_refill_follows_a_plan_that_grows_and_never_resubmits_a_crash(tmp_path):
    results, scratch = tmp_path / "results", tmp_path / "scratch"
    raw, smooth = grid.expand_grid(md17_molecules=["synthetic"], md17_arms=("raw", "smooth"), seeds=[1], budget=TINY)
    broken = grid.RunSpec(**{**raw.__dict__, "arm": "broken", "config": {**raw.config, "encoding": "nope"}})
    calls = []

    def plan():  # smooth is planned only once raw has finished; the broken run always is
        calls.append(1)
        wanted = [broken, raw] + ([smooth] if grid.run_state(raw, results) == "done" else [])
        return [s for s in wanted if grid.run_state(s, results) != "done"]

    lines = []
    infos = grid.submit_runs([], results, scratch, jobs=2, executor="local", log=lines.append, refill=plan)
    assert [i["arm"] for i in infos] == ["raw", "smooth"], lines
    assert sum("FAILED" in line and "broken" in line for line in lines) == 1  # submitted once, reported once
    assert len(calls) >= 3 and all(line.startswith("[") for line in lines)
    with pytest.raises(ValueError, match="either todo or refill"):
        grid.submit_runs([raw], results, scratch, jobs=2, executor="local", refill=plan)
