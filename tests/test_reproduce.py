"""python -m minidept.reproduce: the plan of each table, the table it writes, and a kill and rerun end to end
(the demo model, a few steps on small files in the original layout: the numbers are chance)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minidept.run.cli import parse
from minidept.tools import reproduce as R
from minidept.run.train import RESULTS_FILE
from task_files import hub_splits, write_layout

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def dry_run(capsys, monkeypatch, *argv) -> list[str]:
    """The lines of `reproduce ARGV --dry-run`; loading a model or data would fail the test."""
    def no_loading(*args, **kwargs):
        raise AssertionError("a dry run loaded something")
    monkeypatch.setattr(R, "load_backbone", no_loading)
    monkeypatch.setattr(R, "train", no_loading)
    monkeypatch.delenv("MINIDEPT_DATA", raising=False)
    assert R.main([*argv, "--dry-run"]) == 0
    return capsys.readouterr().out.splitlines()


# table -> (tasks in the paper's order, runs: tasks x k x seeds)
TABLES = {"glue": (["mnli", "qqp", "qnli", "sst2", "stsb", "mrpc", "rte", "cola"], 8),
          "superglue": (["multirc", "boolq", "wic", "wsc", "cb"], 5),
          "table2": (["nq", "hotpotqa", "searchqa", "newsqa", "winogrande", "yelp", "scitail", "paws"], 24),
          "fewshot": (["boolq", "cb", "scitail"], 27)}


@pytest.mark.parametrize("table", TABLES)
def test_dry_run_lists_every_run_of_the_table(table, capsys, monkeypatch, tmp_path):
    lines = dry_run(capsys, monkeypatch, table, "--model", "t5-base", "--output-root", str(tmp_path))
    tasks, n_runs = TABLES[table]
    runs = [line.split() for line in lines[2:] if line.split() and line.split()[0] in tasks]
    assert f"{n_runs} runs of dept on t5-base" in lines[0] and len(runs) == n_runs
    assert list(dict.fromkeys(run[0] for run in runs)) == tasks
    seeds = {run[2] for run in runs}
    assert seeds == ({"42"} if table in ("glue", "superglue") else {"42", "43", "44"})
    by_task = {run[0]: run for run in runs}
    if table == "table2":   # the MRQA runs' logs: m 60, lr 0.3 / 1e-4, 300k steps, 32 a step as 2 x 16, length 512
        assert by_task["nq"][3:11] == ["60", "0.3", "0.0001", "300,000", "32", "2", "512", "new"]
        assert by_task["paws"][3:10] == ["60", "0.3", "0.0001", "30,000", "32", "1", "256"]
        grid = "m in {20, 40, 60, 80}, lr_prompt in {0.3, 0.4, 0.5}, lr_lowrank in {1e-4, 5e-4, 1e-3, 5e-3}"
        assert any(grid in line and "--grid" in line for line in lines)
    if table == "glue":
        assert by_task["cola"][3:10] == ["80", "0.3", "0.0005", "40,000", "32", "1", "256"]
    if table == "fewshot":
        assert {run[1] for run in runs} == {"4", "16", "32"} and any("--source-task" in line for line in lines)
        assert by_task["cb"][6] == "1000" and not any("trained on MNLI" in line for line in lines)


def test_the_mrqa_runs_are_trained_with_32_examples_a_step_as_2_micro_batches(tmp_path):
    _, _, runs = R.plan(R.ReproduceConfig(table="table2", output_root=str(tmp_path), tasks="nq,paws"))
    assert {(run.task, run.config.batch_size, run.config.grad_accum) for run in runs} == {("nq", None, 2),
                                                                                         ("paws", None, 1)}
    assert {R.settings(run)["batch"] for run in runs} == {32}
    _, _, runs = R.plan(R.ReproduceConfig(table="table2", output_root=str(tmp_path), tasks="nq", grad_accum=4))
    assert {run.config.grad_accum for run in runs} == {4}


def test_grid_plans_the_papers_grid_for_the_tasks_without_released_runs(capsys, monkeypatch, tmp_path):
    lines = dry_run(capsys, monkeypatch, "table2", "--grid", "--seeds", "42", "--output-root", str(tmp_path))
    runs = [line.split() for line in lines if line.split() and line.split()[0] in TABLES["table2"][0]]
    assert len(runs) == 4 + 4 * 48 and sum(run[0] == "nq" for run in runs) == 1
    assert {(run[3], run[4], run[5]) for run in runs if run[0] == "yelp"} == {
        (str(m), str(lp), str(ll)) for m in (20, 40, 60, 80) for lp in (0.3, 0.4, 0.5)
        for ll in (0.0001, 0.0005, 0.001, 0.005)}
    _, _, pt = R.plan(R.ReproduceConfig(table="table2", output_root=str(tmp_path), tasks="yelp", grid=True,
                                        method="pt", seeds="42"))
    assert [run.config.lr_prompt for run in pt] == [0.3, 0.4, 0.5] and all(run.config.m is None for run in pt)
    assert R.main(["glue", "--grid", "--dry-run"]) == 2


def test_grid_reports_the_point_best_on_validation(tmp_path):
    args = R.ReproduceConfig(table="table2", output_root=str(tmp_path), tasks="scitail", grid=True)
    table, rows, runs = R.plan(args)
    best = (40, 0.4, 5e-4)
    for run in runs:     # the best point on validation is not the best on test: the table must not peek
        validation = 80.0 + (run.point == best) + run.seed - 42
        test = 70.0 + run.seed - 42 + 10 * (run.point == (80, 0.5, 5e-3))
        finish(run, {"accuracy": test}, validation={"accuracy": validation})
    line = R.collect(table, rows, runs, "dept")["rows"][0]
    assert line["point"] == {"m": 40, "lr_prompt": 0.4, "lr_lowrank": 5e-4} and line["seeds"] == [42, 43, 44]
    assert line["ours"] == pytest.approx(71.0)


@pytest.mark.parametrize("table, quoted", [("glue", False), ("superglue", False), ("table2", True),
                                           ("fewshot", True)])
def test_pt_runs_say_their_settings_are_minidepts_and_which_pt_numbers_are_quoted(table, quoted, capsys,
                                                                                  monkeypatch, tmp_path):
    lines = dry_run(capsys, monkeypatch, table, "--method", "pt", "--output-root", str(tmp_path))
    note = next(line for line in lines if "PT" in line and "note:" in line)
    assert "(minidept's choice)" in note and ("Wang et al. (2023b)" in note) == quoted
    name, rows, runs = R.plan(R.ReproduceConfig(table=table, method="pt", output_root=str(tmp_path)))
    R.write_table({**R.collect(name, rows, runs, "pt"), "model": "t5-base", "init_from": None}, tmp_path / name)
    written = (tmp_path / f"{name}.md").read_text()
    assert "(minidept's choice)" in written and ("Wang et al. (2023b)" in written) == quoted


def test_fewshot_from_a_source_task_trains_it_first(capsys, monkeypatch, tmp_path):
    table, rows, runs = R.plan(R.ReproduceConfig(table="fewshot", output_root=str(tmp_path), source_task="qqp"))
    source, *fewshot = runs
    assert source.source and (source.task, source.k, source.seed) == ("qqp", None, 42)
    assert source.config.max_steps is None and source.config.init_from is None     # the source task's own settings
    assert len(fewshot) == 27 and {run.config.init_from for run in fewshot} == {source.config.output_dir}
    assert all(row["task"] != "qqp" for row in R.collect(table, rows, runs, "dept")["rows"])
    assert R.main(["fewshot", "--source-task", "mnli", "--init-from", "x", "--dry-run"]) == 2
    assert R.main(["glue", "--source-task", "mnli", "--dry-run"]) == 2


@pytest.mark.usefixtures("one_thread")
def test_dry_run_with_a_model_at_hand_estimates_the_time(capsys, tmp_path):
    assert R.main(["superglue", "--model", "demo", "--tasks", "cb,wsc", "--output-root", str(tmp_path),
                   "--max-steps", "3600", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "hours" in out.splitlines()[1] and "estimate:" in out and "evaluation not counted" in out
    assert "devices" not in out                                     # one device: no "1.00 on 1 devices"


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: table"), (["table3"], "invalid choice: 'table3'"),
    (["glue", "--tasks", "cb"], "--tasks cb: not in glue"),
    (["glue", "--seeds", "4x"], "--seeds 4x"), (["glue", "--parallel", "0"], "--parallel=0")])
def test_usage_errors_are_one_line(argv, message, capsys):
    assert R.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def finish(run: R.Run, test: dict, saved: dict | None = None, test_record: bool = True,
           validation: dict | None = None) -> None:
    """A finished run's files, as minidept.train leaves them: config.json with its settings (the planned ones,
    or `saved`), results.json and metrics.jsonl ending in the test record."""
    task, config = R.get_task(run.task), run.config
    settings = {"task": run.task, "model": config.model, "method": config.method, "seed": config.seed,
                "k_shot": config.k_shot, "init_from": config.init_from,
                "max_steps": config.max_steps or task.max_steps, "eval_every": config.eval_every or 1000,
                "max_eval_examples": config.max_eval_examples, "batch_size": config.batch_size or task.batch_size,
                "dtype": config.dtype or "float32", **(saved or {})}
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / "config.json").write_text(json.dumps({"run": settings}))
    (run.folder / RESULTS_FILE).write_text(json.dumps({"test": test, "validation": validation}))
    (run.folder / "metrics.jsonl").write_text(json.dumps({"step": settings["max_steps"], "loss": 1.0}) + "\n"
                                              + (json.dumps({"step": settings["max_steps"], "split": "test", **test})
                                                 + "\n" if test_record else ""))


def test_the_table_averages_the_finished_seeds_beside_the_paper(tmp_path):
    args = R.ReproduceConfig(table="table2", output_root=str(tmp_path))
    table, rows, runs = R.plan(args)
    for i, run in enumerate(runs):      # every run done except NQ with seed 44
        if (run.task, run.seed) != ("nq", 44):
            finish(run, {"squad_f1": 70.0 + run.seed - 42, "squad_em": 1.0, "accuracy": 90.0})
    result = R.collect(table, rows, runs, "dept")
    nq, yelp = result["rows"][0], result["rows"][5]
    assert (nq["task"], nq["metric"], nq["seeds"], nq["ours"], nq["paper"]) == ("nq", "squad_f1", [42, 43], 70.5, 73.2)
    assert nq["difference"] == pytest.approx(70.5 - 73.2)
    assert (yelp["metric"], yelp["ours"], yelp["paper"]) == ("accuracy", 90.0, 96.8)
    mrqa, others = result["means"]
    assert mrqa["ours"] == pytest.approx((70.5 + 3 * 71.0) / 4) and mrqa["paper"] == 73.0
    assert others["ours"] == 90.0 and others["paper"] == 86.3
    assert R.collect(table, rows, runs, "pt")["rows"][0]["paper"] == 67.9     # the paper's PT column


def reproduce(tmp_path, *extra) -> list[str]:
    return [sys.executable, "-m", "minidept.reproduce", "glue", "--model", "demo", "--tasks", "rte,mrpc,cola",
            "--max-steps", "12", "--eval-every", "6", "--max-eval-examples", "3", "--data-dir", str(tmp_path / "data"),
            "--output-root", str(tmp_path / "out"), *extra]


def test_reproduce_end_to_end_kill_and_rerun(tmp_path):
    for task in ("rte", "mrpc", "cola"):
        write_layout(tmp_path / "data", task, hub_splits(task))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}   # tiny models: one thread each, far faster on a shared machine
    runs = tmp_path / "out" / "demo-dept" / "glue"
    first = runs / "mrpc-seed42" / RESULTS_FILE       # runs go in the paper's column order: mrpc, rte, cola
    process = subprocess.Popen(reproduce(tmp_path), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    deadline = time.monotonic() + 120
    while not first.is_file() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    process.send_signal(signal.SIGINT)                 # a Ctrl-C once the first task is done
    out = process.communicate(timeout=120)[0]
    assert process.returncode in (0, 130), out
    done = {path.parent.name for path in runs.glob(f"*/{RESULTS_FILE}")}
    assert "mrpc-seed42" in done
    kept = {name: (runs / name / RESULTS_FILE).read_bytes() for name in done}

    rerun = subprocess.run(reproduce(tmp_path, "--parallel", "2"), env=env, capture_output=True, text=True,
                           timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{len(done)} already finished (skipped)" in rerun.stdout
    assert all((runs / name / RESULTS_FILE).read_bytes() == kept[name] for name in done)   # not trained again
    result = json.loads((tmp_path / "out" / "demo-dept" / "glue.json").read_text())
    assert [(r["task"], r["metric"], r["paper"]) for r in result["rows"]] == [
        ("mrpc", "accuracy", 90.7), ("rte", "accuracy", 79.1), ("cola", "matthews", 63.8)]
    for row in result["rows"]:
        assert row["seeds"] == [42] and -100 <= row["ours"] <= 100
        assert row["difference"] == pytest.approx(row["ours"] - row["paper"])
    assert result["means"] == [{"task": "GLUE", "ours": None, "paper": 85.9, "difference": None}]   # 3 of 8 tasks
    table = (tmp_path / "out" / "demo-dept" / "glue.md").read_text().splitlines()
    assert table[4] == "| task | k | metric | seeds | ours | paper | ours - paper |" and len(table) == 10


def test_fewshot_runs_start_from_the_adapter_with_k_examples_in_all(tmp_path):
    table, rows, runs = R.plan(R.ReproduceConfig(table="fewshot", init_from="runs/mnli", output_root=str(tmp_path)))
    assert len(runs) == 27 and {run.config.init_from for run in runs} == {"runs/mnli"}
    assert sorted({(run.task, run.config.k_shot) for run in runs}) == [
        (task, k) for task in ("boolq", "cb", "scitail") for k in (4, 16, 32)]
    assert {(run.config.max_steps, run.config.eval_every) for run in runs} == {(1000, 100)}
    assert runs[0].folder == tmp_path / "t5-base-dept" / "fewshot" / "boolq-k4-seed42"
    # full-data tables never take --init-from or --k-shot; --dtype goes to every run
    assert {(run.config.init_from, run.config.k_shot, run.config.dtype) for run in R.plan(R.ReproduceConfig(
        table="superglue", init_from="runs/mnli", dtype="bfloat16"))[2]} == {(None, None, "bfloat16")}


@pytest.mark.parametrize("gpus", [0, 4])
def test_parallel_runs_get_their_own_gpus_or_a_share_of_the_cpu(gpus, tmp_path, monkeypatch, capsys):
    """--parallel 2 --nproc-per-run 2: two torchrun jobs of two processes at once, on GPUs 0,1 and 2,3."""
    started = []

    class Finished:
        returncode, pid = 0, -1

        def __init__(self, command, env, **kwargs):
            started.append((command, env.get("CUDA_VISIBLE_DEVICES")))

        def poll(self):
            return 0

    monkeypatch.setattr(R.subprocess, "Popen", Finished)
    monkeypatch.setattr(R.torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(R.os, "cpu_count", lambda: 8)
    runs = R.plan(R.ReproduceConfig(table="superglue", tasks="cb,wsc", output_root=str(tmp_path), parallel=2,
                                    nproc_per_run=2))[2]
    assert R.run_in_subprocesses(runs, 2, 2) == []
    for (command, devices), run in zip(started, runs):
        assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
        assert command[5:8] == ["-m", "minidept.train", "--"] and "--output-dir" in command
        assert command[command.index("--task") + 1] == run.task and "--quiet" in command
        assert (devices, "--threads" in command) == (({0: "0,1", 1: "2,3"}[runs.index(run)], False) if gpus
                                                     else (None, True))
    assert gpus or all(command[command.index("--threads") + 1] == "2" for command, _ in started)   # 8 / (2 x 2)


def snapshot(folder) -> dict:
    return {str(path): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


def test_a_run_is_finished_only_with_its_results_and_its_test_record(tmp_path):
    """A kill between results.json and the test record of metrics.jsonl: the run is resumed, not skipped."""
    table, rows, runs = R.plan(R.ReproduceConfig(table="glue", tasks="rte", output_root=str(tmp_path)))
    finish(runs[0], {"accuracy": 50.0}, test_record=False)
    assert runs[0].status() == "restart"
    (runs[0].folder / "state.safetensors").write_bytes(b"")
    assert runs[0].status() == "resume" and R.collect(table, rows, runs, "dept")["rows"][0]["seeds"] == []
    finish(runs[0], {"accuracy": 50.0})
    assert runs[0].status() == "done" and R.collect(table, rows, runs, "dept")["rows"][0]["ours"] == 50.0


@pytest.mark.parametrize("interrupted", [False, True])
@pytest.mark.parametrize("table, argv, saved, message", [
    ("glue", ["--max-steps", "80", "--eval-every", "20"], {"max_steps": 40, "eval_every": 20},
     "--max-steps 40 (this command: 80)"),
    ("glue", ["--max-eval-examples", "5"], {"max_eval_examples": 3}, "--max-eval-examples 3 (this command: 5)"),
    ("glue", ["--batch-size", "8"], {}, "--batch-size 32 (this command: 8)"),
    ("glue", ["--dtype", "bfloat16"], {}, "--dtype float32 (this command: bfloat16)"),
    ("fewshot", ["--init-from", "runs/mnli"], {}, "--init-from None (this command: runs/mnli)")])
def test_a_run_trained_with_other_settings_is_refused_not_skipped_or_resumed(
        table, argv, saved, message, interrupted, tmp_path, capsys):
    base = [table, "--model", "t5-base", "--tasks", "rte" if table == "glue" else "cb", "--seeds", "42",
            "--output-root", str(tmp_path)]
    for run in R.plan(parse(R.ReproduceConfig, base, "", "", positional="table"))[2]:   # trained before
        finish(run, {"accuracy": 50.0}, saved=saved)
        if interrupted:
            (run.folder / RESULTS_FILE).unlink()
            (run.folder / "state.safetensors").write_bytes(b"")
    argv = [*base, *argv]
    before = snapshot(tmp_path)
    assert R.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and "another --output-root" in err, err
    assert snapshot(tmp_path) == before
    assert R.main([*argv, "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert all(line.split()[-1] == "differs" for line in out.splitlines() if line.split()[:1] in (["rte"], ["cb"]))
    assert message in out


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie that nobody reaped yet does not)."""
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(sys.platform != "linux", reason="reads /proc")
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL])
def test_a_kill_of_parallel_reproduce_ends_its_trainings_and_a_rerun_finishes_them(sig, tmp_path):
    for task in ("rte", "mrpc"):
        write_layout(tmp_path / "data", task, hub_splits(task))
    env = {**os.environ, "PYTHONPATH": REPO_ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "minidept.reproduce", "glue", "--model", "demo", "--tasks", "rte,mrpc",
               "--max-steps", "200", "--eval-every", "100", "--max-eval-examples", "3", "--parallel", "2",
               "--data-dir", str(tmp_path / "data"), "--output-root", str(tmp_path / "out")]
    runs = tmp_path / "out" / "demo-dept" / "glue"
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline, pids = time.monotonic() + 120, {}
    while len(pids) < 2 and process.poll() is None and time.monotonic() < deadline:   # both in their loops
        for folder in runs.glob("*-seed42"):
            if '"loss"' in (folder / "metrics.jsonl").read_text() if (folder / "metrics.jsonl").is_file() else False:
                pids[folder.name] = int((folder / ".lock").read_text())
        time.sleep(0.05)
    assert len(pids) == 2 and process.poll() is None, process.communicate()[0]
    process.send_signal(sig)
    out = process.communicate(timeout=60)[0]
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids.values()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids.values()), out
    if sig == signal.SIGTERM:
        assert process.returncode == 130 and "interrupted" in out, out
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0 and "failed" not in rerun.stdout, rerun.stdout + rerun.stderr
    for name in pids:
        assert json.loads((runs / name / RESULTS_FILE).read_text())["steps"] == 200
        assert "resumed from step" in (runs / name / "train.log").read_text()


def test_a_read_only_or_full_output_root_is_one_line(tmp_path, read_only, full_disk, capsys, monkeypatch):
    write_layout(tmp_path / "data", "rte", hub_splits("rte"))
    before = snapshot(full_disk)
    for root in (read_only, full_disk):
        assert R.main(["glue", "--model", "demo", "--tasks", "rte", "--max-steps", "2", "--max-eval-examples", "3",
                       "--data-dir", str(tmp_path / "data"), "--output-root", str(root / "out")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("python -m minidept.reproduce: error: --output-root: cannot write in ") \
            and err.count("\n") == 1, err
    assert list(read_only.iterdir()) == [] and snapshot(full_disk) == before
    # the disk fills up after the check (as if by another program): still one line, with how to continue
    monkeypatch.setattr(R, "check_writable_folder", lambda folder: None)
    assert R.main(["glue", "--model", "demo", "--tasks", "rte", "--max-steps", "2", "--max-eval-examples", "3",
                   "--data-dir", str(tmp_path / "data"), "--output-root", str(full_disk / "out")]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and "run the same command again to continue" in err \
        and err.count("\n") == 1, err
