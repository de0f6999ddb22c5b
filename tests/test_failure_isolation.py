"""Every failure stays in its run: a defense that raises, calls ``os._exit``, is killed (as the kernel kills a process
that runs out of memory) or hangs while its stage is prepared fails the runs that need it, once, with its error
recorded; the sweep finishes, prints its table, lists the failures and keeps the other runs. On Ray and Slurm the
sweep's own process never loads a model (the workers build every stage)."""

from __future__ import annotations

import json
import textwrap

import pytest

from bench.cli import main

QUICK_TASK = "{name: vision-digits, args: {budget: 10, curvature_iters: 0, bootstrap: 0}}"

PLUGIN = '''
"""Defenses that fail in every way a process can, while being prepared."""
import os, signal, time
from dataclasses import dataclass
from bench.contracts import Defense
from bench.registry import DEFENSES


@dataclass(frozen=True, kw_only=True)
class Cfg:
    pass


class _Failing(Defense):
    """Fails while it is applied."""
    Config = Cfg

    def apply(self, model, view, cfg, *, generator):
        self.fail()


@DEFENSES.register("raising-def")
class Raising(_Failing):
    """Raises."""
    def fail(self):
        raise RuntimeError("raising-def failed on purpose")


@DEFENSES.register("diverging-def")
class Diverging(_Failing):
    """Its training loss becomes NaN (a finding about its config on this task, not bad input)."""
    def fail(self):
        from bench.errors import TrainingDivergedError
        raise TrainingDivergedError("defense 'diverging-def' diverged at training step 1: loss = nan")


@DEFENSES.register("exiting-def")
class Exiting(_Failing):
    """Ends its process at once, skipping every handler."""
    def fail(self):
        os._exit(3)


@DEFENSES.register("oom-def")
class OutOfMemory(_Failing):
    """Killed with SIGKILL, as the kernel's OOM killer would."""
    def fail(self):
        os.kill(os.getpid(), signal.SIGKILL)


@DEFENSES.register("hanging-def")
class Hanging(_Failing):
    """Never finishes."""
    def fail(self):
        time.sleep(3600)
'''


def _sweep(tmp_path, defenses, baseline=True):
    plugin = tmp_path / "failing_defenses.py"
    plugin.write_text(textwrap.dedent(PLUGIN))
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(f"tasks: [{QUICK_TASK}]\ndefenses: [{', '.join(defenses)}]\n"
                     "attacks: [{name: full-ft, args: {optimizer: adam, lr: 1.0e-2}}]\nseeds: [0]\n"
                     f"baseline: {str(baseline).lower()}\n")
    return plugin, sweep


def _statuses(results):
    return {json.loads(p.read_text())["spec"]["defense"]["name"]: json.loads(p.read_text())
            for p in results.glob("*/run.json")}


@pytest.mark.parametrize("jobs", ["2", "1"])
def test_defenses_that_raise_exit_or_are_killed_while_prepared_fail_only_their_runs(
        tmp_path, capsys, isolated_registries, jobs):
    plugin, sweep = _sweep(tmp_path, ["specdef", "raising-def", "diverging-def", "exiting-def", "oom-def"])
    results = tmp_path / "results"
    code = main(["sweep", str(sweep), "--plugin", str(plugin), "--results", str(results), "--quiet", "--jobs", jobs,
                 "--isolation", "subprocess"])
    captured = capsys.readouterr()
    assert code == 1 and "Traceback" not in captured.err  # failures, reported, not a crash
    runs = _statuses(results)
    assert runs["none"]["status"] == runs["specdef"]["status"] == "success"  # the other runs are kept
    expected = {"raising-def": "RuntimeError: raising-def failed on purpose",
                "diverging-def": "TrainingDivergedError: defense 'diverging-def' diverged at training step 1",
                "exiting-def": "WorkerExited: the worker process exited with code 3 during building the defended stage",
                "oom-def": "WorkerKilled: the worker process was killed by SIGKILL during building the defended stage "
                           "(out of memory?)"}
    for name, error in expected.items():
        assert runs[name]["status"] == "failed" and error in runs[name]["error"], runs[name]["error"]
        assert name in captured.out  # the table lists it
    assert main(["show", runs["exiting-def"]["run_id"], "--results", str(results)]) == 0
    assert "WorkerExited" in capsys.readouterr().out  # `bench show` says why it did not run


def test_a_defense_whose_training_diverges_fails_its_runs_in_one_process_too(tmp_path, capsys, isolated_registries):
    """Without worker processes the sweep builds the stage itself: the divergence is recorded, not a stopped request."""
    plugin, sweep = _sweep(tmp_path, ["diverging-def"], baseline=False)
    results = tmp_path / "results"
    assert main(["sweep", str(sweep), "--plugin", str(plugin), "--results", str(results), "--quiet", "--jobs", "1",
                 "--isolation", "none"]) == 1
    run = _statuses(results)["diverging-def"]
    assert run["status"] == "failed" and "diverged at training step 1" in run["error"]
    assert "Traceback" not in capsys.readouterr().err


def test_a_defense_that_hangs_while_prepared_is_stopped_at_the_run_timeout(tmp_path, capsys, isolated_registries):
    plugin, sweep = _sweep(tmp_path, ["hanging-def"], baseline=False)
    results = tmp_path / "results"
    assert main(["sweep", str(sweep), "--plugin", str(plugin), "--results", str(results), "--quiet", "--jobs", "1",
                 "--isolation", "subprocess", "--run-timeout", "5"]) == 1
    run = _statuses(results)["hanging-def"]
    assert run["status"] == "failed" and "RunTimeout: building the defended stage exceeded --run-timeout 5 s" in \
        run["error"]


@pytest.mark.parametrize("raised, kind, fragment", [
    (MemoryError(), "OutOfMemoryError", "out of memory loading causal LM 'm'"),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried to "
                  "allocate 9999 bytes"), "OutOfMemoryError", "out of memory loading"),
    (FileNotFoundError("No such file or directory: 'm/config.json'"), "DataError", "a file is missing"),
    (OSError("m does not appear to have a file named pytorch_model.bin"), "DataError", "a file is missing"),
    (ValueError("Error while deserializing header: HeaderTooLarge"), "DataError", "not in a format this loader reads"),
])
def test_loader_failures_are_classified(raised, kind, fragment):
    from bench.errors import BenchError
    from bench.toolkit.sources import load_failure

    error = load_failure(raised, "causal LM 'm'")
    assert type(error).__name__ == kind and fragment in str(error)
    assert isinstance(error, BenchError) == (kind == "DataError")  # bad input stops a request; memory fails runs


def test_torchs_out_of_memory_error_is_recognised_through_its_cause():
    import torch

    from bench.toolkit.sources import is_out_of_memory

    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("loading failed") from inner
    except RuntimeError as outer:
        assert is_out_of_memory(outer)
    assert not is_out_of_memory(ValueError("bad header"))
