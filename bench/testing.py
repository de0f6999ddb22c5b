"""Conformance checks every registered plugin must pass, exported so third-party plugin authors can run them.

Use them in a test file of your own package::

    import pytest
    from bench import testing
    from bench.cache import Cache

    def test_my_defense_conforms(tmp_path):
        testing.check_defense("my-defense", tmp_path)

    def test_my_attack_conforms(tmp_path):
        testing.check_attack("my-attack", Cache(tmp_path))  # runs it on a tiny task model built into the cache

Each check raises ``AssertionError`` naming the plugin and what broke, or returns the list of what it checked
(``bench check --plugin my.py`` runs them on every plugin a file registers and prints both). The harness's own
suite runs them over every registered name (tests/test_conformance.py).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bench.config import build_config, config_to_dict
from bench.contracts import AttackerScale, AttackReport, DefenderView, DefenseResult, Predictions, Trajectory
from bench.modelio import load_model, save_model
from bench.registry import ATTACKS, DEFENSES, TASKS
from bench.toolkit.layers import MLP

TINY_MLP_SIZES = (16, 32, 32, 6)


def tiny_mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return MLP(TINY_MLP_SIZES).eval()


def tiny_view(seed: int = 0) -> DefenderView:
    """A full defender view over random data for the tiny MLP (enough for every defense, trained ones included)."""
    from bench.toolkit.features import capture, rows_of

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, TINY_MLP_SIZES[0], generator=g)
    y = torch.randint(0, TINY_MLP_SIZES[-1], (64,), generator=g)
    safe = torch.randint(0, TINY_MLP_SIZES[-1], (64,), generator=g)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    loss = lambda model, batch, reduction="mean": nn.functional.cross_entropy(  # noqa: E731
        model(batch[0]), batch[1], reduction=reduction)
    hidden = tuple(f"net.{2 * i + 1}" for i in range(len(TINY_MLP_SIZES) - 2))  # the ReLUs

    def features(model: nn.Module, batch) -> dict[str, torch.Tensor]:
        with capture(model, hidden) as captured:
            model(batch[0])
        return {name: rows_of(captured[name]) for name in hidden}

    def predictions(model: nn.Module, batch) -> Predictions:
        return Predictions(outputs=model(batch[0]), targets=batch[1], kind="logits", examples=len(batch[1]),
                           example=torch.arange(len(batch[1])))

    return DefenderView(harmful=batches[:2], benign=batches[2:], harmful_loss=loss, benign_loss=loss,
                        aligned=[(x[i:i + 16], safe[i:i + 16]) for i in range(0, 32, 16)], aligned_loss=loss,
                        feature_modules=hidden, features=features, predictions=predictions,
                        attacker=AttackerScale(steps=2, lrs=(1e-2,), batch_size=16))


def check_config_roundtrip(registry, name: str) -> list[str]:
    """The default config serialises to JSON-compatible values and rebuilds to an equal config; presets bind."""
    cls = registry.get(name)
    cfg = cls.Config()
    rebuilt = build_config(cls.Config, config_to_dict(cfg), where=f"{registry.kind} {name!r}")
    assert rebuilt == cfg, f"{registry.kind} {name!r}: config does not round-trip"
    for preset in getattr(cls, "presets", {}):
        resolved = registry.resolve(f"{name}.{preset}")
        build_config(cls.Config, resolved.preset_args, where=f"preset {name}.{preset}")
    presets = len(getattr(cls, "presets", {}))
    return [f"config round-trips through JSON{f'; its {presets} preset(s) bind' if presets else ''}"]


def apply_defense(name: str, model: nn.Module, seed: int = 0) -> DefenseResult:
    cls = DEFENSES.get(name)
    cfg = build_config(cls.Config, dict(cls.smoke_args), where=f"defense {name!r} smoke_args")
    return cls().apply(copy.deepcopy(model), tiny_view(seed), cfg, generator=torch.Generator().manual_seed(seed))


def check_defense(name: str, tmp_path: Path) -> list[str]:
    """On the tiny MLP and its random view, with the defense's ``smoke_args``: function preservation (where claimed),
    determinism under a seed, and save/reload of the defended model. A defense that declares ``settings`` (one
    modality) gets only the config round-trip here; :func:`check_defense_on_task` runs it on its tasks."""
    cls = DEFENSES.get(name)
    passed = check_config_roundtrip(DEFENSES, name)
    if cls.settings:
        return passed  # a modality-specific defense needs a task's model: check_defense_on_task covers it
    model = tiny_mlp()
    x = torch.randn(32, TINY_MLP_SIZES[0], generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = model(x)
    first = apply_defense(name, model, seed=0)
    second = apply_defense(name, model, seed=0)
    assert isinstance(first, DefenseResult) and isinstance(first.model, nn.Module)
    with torch.no_grad():
        out_a, out_b = first.model(x), second.model(x)
    torch.testing.assert_close(out_a, out_b, rtol=0, atol=0, msg=f"defense {name!r} is not deterministic under a seed")
    passed.append("tiny MLP: apply returns a DefenseResult, bit-identical under a seed")
    if cls.preserves_function:
        scale = reference.abs().max().clamp_min(1e-6)
        worst = float((out_a - reference).abs().max() / scale)
        assert worst <= cls.preservation_tol, (
            f"defense {name!r} claims function preservation but changed outputs by {worst:.3g} (relative) "
            f"> its preservation_tol {cls.preservation_tol}"
        )
        passed.append(f"tiny MLP: outputs within preservation_tol {cls.preservation_tol:g} (max {worst:.3g})")
    directory = save_model(first.model, tmp_path / f"{name}-defended", architecture={"kind": "mlp", "sizes": list(TINY_MLP_SIZES)})
    reloaded = load_model(directory)
    with torch.no_grad():
        torch.testing.assert_close(reloaded(x), out_a, rtol=0, atol=0, msg=f"defense {name!r} does not save/reload exactly")
    return passed + ["tiny MLP: the defended model saves and reloads exactly"]


def check_task(name: str, cache, *, baselines: bool = True) -> list[str]:
    """The tiny tier builds, probes (its harm alone too, where offered) and evaluates, its default attack suite is
    made of valid specs, its defender view keeps its contract; with ``baselines``, also which built-in defenses run
    on it and why the others cannot (:func:`bench.check.task_support.baseline_fits`): a baseline of another setting or
    one that names a part of the view the task lacks is information (a task need not serve every baseline); one that
    applies and fails with another error fails the check (:func:`bench.check.task_support.check_fits`)."""
    from bench.core.spec import make_spec

    task_cls = TASKS.get(name)
    passed = check_config_roundtrip(TASKS, name)
    cfg = build_config(task_cls.Config, dict(task_cls.smoke_args), where=f"task {name!r} smoke_args")
    instance = task_cls().build(cfg, tier="tiny", model=None, cache=cache, device=torch.device("cpu"))
    probe = instance.probe(instance.model)
    assert 0 <= probe.harm < cfg.tau, f"task {name!r}: the released model is already harmful (harm {probe.harm})"
    offered = instance.probe_harm(copy.deepcopy(instance.model))  # a fresh model: measured, not recalled
    assert offered is None or offered == probe.harm, (
        f"task {name!r}: probe_harm gives {offered}, its probe's harm is {probe.harm}; they must agree bit for bit")
    evaluation = instance.evaluate(instance.model)
    assert instance.utility_metric in evaluation.utility
    for sweep in task_cls().default_attacks(cfg, "tiny"):
        args = dict(sweep.args)
        if sweep.lrs:
            args["lr"] = sweep.lrs[0]
        make_spec(task=name, defense="none", attack=sweep.attack, task_args=dict(task_cls.smoke_args), attack_args=args)
    assert instance.defender_view().setting == task_cls.setting, (
        f"task {name!r}: its DefenderView.setting {instance.defender_view().setting!r} differs from the task class's "
        f"setting {task_cls.setting!r}")
    passed += [f"tiny tier builds; probe (harm {probe.harm:.3g} < tau {cfg.tau:g}) and evaluation "
               f"({instance.utility_metric}) run on the released model"
               + ("" if offered is None else "; probe_harm equals the probe's harm"),
               f"default attack suite: {len(task_cls().default_attacks(cfg, 'tiny'))} families, valid specs"]
    passed += check_defender_view(name, instance)
    if baselines:
        from bench.check.task_support import baseline_fits, check_fits

        passed += check_fits(baseline_fits(name, cache))
    return passed


def check_defender_view(name: str, instance) -> list[str]:
    """The parts of the task's :class:`~bench.contracts.DefenderView` it provides keep their contract: per-example
    losses average to the batch loss's scale and have one value per example; aligned batches pair with harmful ones
    example by example; streams are reproducible under a generator; features and predictions have rows."""
    view = instance.defender_view()
    model = instance.model
    assert view.harmful and view.benign, f"task {name!r}: the defender view has no harmful or benign batches"
    for part, loss in (("harmful", view.harmful_loss), ("benign", view.benign_loss), ("aligned", view.aligned_loss)):
        batches = getattr(view, part)
        if loss is None or not batches:
            continue
        with torch.no_grad():
            mean, items = loss(model, batches[0]), loss(model, batches[0], reduction="none")
        assert mean.ndim == 0 and items.ndim == 1 and len(items) == _examples(batches[0]), (
            f"task {name!r}: {part}_loss must give a scalar, and one value per example with reduction='none'")
        assert torch.isfinite(items).all(), f"task {name!r}: non-finite per-example {part} losses on the released model"
    if view.aligned:
        assert len(view.aligned) == len(view.harmful) and all(
            _examples(a) == _examples(h) for a, h in zip(view.aligned, view.harmful)), (
            f"task {name!r}: aligned[i] must hold the examples of harmful[i]")
    if view.stream is not None:
        parts = ["harmful", "benign"] + (["aligned", "pairs"] if view.aligned else [])
        for part in parts:
            first = next(view.stream(part, 4, torch.Generator().manual_seed(0)))
            again = next(view.stream(part, 4, torch.Generator().manual_seed(0)))
            assert example_fingerprints(first[0] if part == "pairs" else first) == example_fingerprints(
                again[0] if part == "pairs" else again), f"task {name!r}: stream({part!r}) is not reproducible"
    batch = view.harmful[0]
    if view.predictions is not None:
        pred = view.predictions(model, batch)
        assert pred.outputs.ndim == 2 and len(pred.example) == len(pred.outputs) and pred.examples == _examples(batch)
    if view.features is not None:
        features = view.features(model, batch)
        assert list(features) == list(view.feature_modules) and all(f.ndim == 2 for f in features.values()), (
            f"task {name!r}: features must give (N, D) rows for each feature module, in order")
    provided = [f for f in ("aligned", "stream", "features", "predictions", "attacker") if getattr(view, f) not in (None, ())]
    return [f"defender view keeps its contract (optional parts provided: {', '.join(provided) or 'none'})"]


def _examples(batch) -> int:
    if isinstance(batch, (tuple, list)):
        return _examples(batch[0])
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0])
    return len(batch.input_ids) if hasattr(batch, "input_ids") else len(batch.latents)


@dataclass
class RecordingMonitor:
    """A stand-in for the runner's monitor: records every call and asks the attack to stop at ``stop_at``
    (``stop_at`` > budget: never). With ``keep_states``, also the trajectory's state at step 0 and a copy of the
    model's parameters and buffers after every step, for :func:`check_replay`."""

    budget: int
    stop_at: int
    keep_states: bool = False
    calls: list[tuple] = dataclasses.field(default_factory=list)
    """("begin", model) and ("step", model, step, loss, examples), in call order."""
    trajectory: Trajectory | None = None
    """The :class:`~bench.contracts.Trajectory` the attack passed to ``begin`` (None: none)."""
    start_state: object = None
    states: list[list[torch.Tensor]] = dataclasses.field(default_factory=list)

    def begin(self, model: nn.Module, trajectory: Trajectory | None = None) -> None:
        self.calls.append(("begin", model))
        self.trajectory = trajectory
        if self.keep_states and trajectory is not None:
            self.start_state = trajectory.save()

    def after_step(self, model: nn.Module, *, step: int, loss: float, examples: int) -> bool:
        self.calls.append(("step", model, step, loss, examples))
        if self.keep_states:
            self.states.append(_state_of(model))
        return step >= self.stop_at


def _state_of(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


def check_replay(monitor: RecordingMonitor, model: nn.Module, where: str) -> None:
    """The attack's trajectory replays its run bit for bit: restored to step 0 and stepped again, every step gives the
    loss and the parameters and buffers the run had (what exact crossings rely on, :mod:`bench.toolkit.crossing`)."""
    losses = [call[3] for call in monitor.calls if call[0] == "step"]
    assert monitor.trajectory is not None, f"{where}: the attack passed no trajectory to begin()"
    monitor.trajectory.restore(monitor.start_state)
    for step, (loss, state) in enumerate(zip(losses, monitor.states), start=1):
        again = monitor.trajectory.step(step)
        assert again == loss or (math.isnan(again) and math.isnan(loss)), (
            f"{where}: the replay of step {step} gave loss {again!r}, the run had {loss!r}")
        assert all(torch.equal(a, b) for a, b in zip(_state_of(model), state, strict=True)), (
            f"{where}: the replay of step {step} does not reproduce the run's weights bit for bit")


ATTACK_CHECK_TASK = "vision-digits"
"""The task every attack is run on by :func:`check_attack` (a tiny MLP on CPU: a run costs milliseconds)."""
ATTACK_CHECK_DEFENSE = {"alpha": 10.0, "k": 4}
"""The SpecDef config of the defended model :func:`check_attack` also attacks: chains for the adaptive attacks to
find, at an alpha mild enough that a default recipe keeps finite losses."""


def attack_check_task(cls: type) -> str:
    """The task :func:`check_attack` runs an attack class on: the vision task, or the first it applies to."""
    from bench.core.applicability import applies

    if applies(cls, TASKS.get(ATTACK_CHECK_TASK)):
        return ATTACK_CHECK_TASK
    return next(t for t in TASKS.names() if applies(cls, TASKS.get(t)))


def applicable_pairs(registry, names: Sequence[str] | None = None) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """``(applicable, not applicable)`` (plugin, task) pairs of a defense or attack registry
    (:mod:`bench.core.applicability`), for parametrizing conformance tests."""
    from bench.core.applicability import applies

    fits: list[tuple[str, str]] = []
    misfits: list[tuple[str, str]] = []
    for name in names if names is not None else registry.names():
        for task in TASKS.names():
            (fits if applies(registry.resolve(name).cls, TASKS.get(task)) else misfits).append((name, task))
    return fits, misfits


def check_attack(name: str, cache, *, budget: int = 6, stop_at: int = 3, task: str | None = None) -> list[str]:
    """Run the attack with its default recipe on the released tiny vision model and on a SpecDef-defended copy,
    against a :class:`RecordingMonitor`, and check the contract of :class:`~bench.contracts.Attack`: ``begin`` once,
    before any step, on the model it was given (trained in place); then ``after_step`` with steps 1, 2, ... and
    finite float losses; no step after the monitor says stop; an :class:`~bench.contracts.AttackReport` returned.
    Then, with a monitor that never says stop: every step of the budget (no early quitting), and, when the attack
    passes a :class:`~bench.contracts.Trajectory`, a bit-identical replay (:func:`check_replay`). ``task``: the
    task to run it on (default: :func:`attack_check_task`)."""
    passed = check_config_roundtrip(ATTACKS, name)
    cls = ATTACKS.get(name)
    assert cls.knowledge in ("blind", "white-box"), f"attack {name!r}: knowledge must be blind or white-box"
    task_name = task or attack_check_task(cls)
    task_cls = TASKS.get(task_name)
    task_cfg = build_config(task_cls.Config, dict(task_cls.smoke_args), where=f"task {task_name!r}")
    built = task_cls().build(task_cfg, tier="tiny", model=None, cache=cache, device=torch.device("cpu"))
    specdef = DEFENSES.get("specdef")
    defended = specdef().apply(copy.deepcopy(built.model), built.defender_view(),
                               build_config(specdef.Config, ATTACK_CHECK_DEFENSE, where="defense 'specdef'"),
                               generator=torch.Generator().manual_seed(0)).model
    cfg = build_config(cls.Config, {"budget": budget, "eval_every": stop_at, "batch_size": 8}, where=f"attack {name!r}")
    for label, released in (("released", built.model), ("SpecDef-defended", defended)):
        model = copy.deepcopy(released).train()
        monitor = RecordingMonitor(budget=budget, stop_at=stop_at)
        report = cls().run(model, built, cfg, generator=torch.Generator().manual_seed(0), monitor=monitor)
        where = f"attack {name!r} on the {label} {task_name} model"
        assert isinstance(report, AttackReport), f"{where}: run() returned {type(report).__name__}, not an AttackReport"
        kinds = [call[0] for call in monitor.calls]
        assert kinds[:1] == ["begin"] and kinds.count("begin") == 1, f"{where}: monitor.begin must come once, first"
        assert all(call[1] is model for call in monitor.calls), (
            f"{where}: the monitor must see the model the attack was given (fine-tuned in place)")
        steps = [call[2] for call in monitor.calls[1:]]
        assert steps == list(range(1, stop_at + 1)), (
            f"{where}: expected steps 1..{stop_at} and a stop when the monitor says so, got {steps}")
        for _, _, step, loss, examples in monitor.calls[1:]:
            assert isinstance(loss, float) and math.isfinite(loss), f"{where}: step {step} reported loss {loss!r}"
            assert isinstance(examples, int) and examples > 0, f"{where}: step {step} reported {examples!r} examples"
        passed.append(f"{task_name} ({label}): begin once, steps 1..{stop_at} with finite losses, stops when told")
    # Left alone, the attack runs its whole budget: quitting before it with no stop request (harm, divergence) would
    # pass off a short run as a defense that held. A trajectory, when given, must replay the run bit for bit.
    model = copy.deepcopy(built.model).train()
    monitor = RecordingMonitor(budget=budget, stop_at=budget + 1, keep_states=True)
    cls().run(model, built, cfg, generator=torch.Generator().manual_seed(0), monitor=monitor)
    where = f"attack {name!r} on the released {task_name} model"
    steps = [call[2] for call in monitor.calls[1:]]
    assert steps == list(range(1, budget + 1)), (
        f"{where}: stopped early: reported steps {steps[:1]}..{steps[-1:]} of its budget of {budget} without the "
        f"monitor asking it to stop (an attack runs its whole budget unless the monitor says stop)")
    passed.append(f"{task_name}: runs its whole budget of {budget} steps unless told to stop")
    if monitor.trajectory is not None:
        check_replay(monitor, model, where)
        passed.append(f"{task_name}: its trajectory replays the run bit for bit (exact crossings)")
    return passed


# -------------------------------------------------------------------------------------------------------------
# A defense on a real task's defender view
# -------------------------------------------------------------------------------------------------------------
VIEW_CALLABLES = ("harmful_loss", "benign_loss", "aligned_loss", "features", "predictions")


def example_fingerprints(batch) -> set[bytes]:
    """One fingerprint per example of a task batch, independent of how the batch was padded or shuffled: the rows
    of a classifier's inputs, a diffusion batch's latents, an LM batch's unpadded token ids."""
    if isinstance(batch, (tuple, list)):
        return example_fingerprints(batch[0])
    if isinstance(batch, torch.Tensor):
        return {row.detach().cpu().numpy().tobytes() for row in batch}
    if hasattr(batch, "input_ids") and hasattr(batch, "attention_mask"):
        return {ids[mask.bool()].cpu().numpy().tobytes() for ids, mask in zip(batch.input_ids, batch.attention_mask)}
    if hasattr(batch, "latents"):
        return example_fingerprints(batch.latents)
    raise TypeError(f"cannot fingerprint a batch of type {type(batch).__name__}")


def recording_view(view: DefenderView) -> tuple[DefenderView, list[tuple[str, object]]]:
    """The view with its loss/feature/prediction callables wrapped to record every batch a defense passes in."""
    seen: list[tuple[str, object]] = []

    def wrap(name, fn):
        def recorded(model, batch, *args, **kwargs):
            seen.append((name, batch))
            return fn(model, batch, *args, **kwargs)
        return recorded

    wrapped = {name: wrap(name, getattr(view, name)) for name in VIEW_CALLABLES if getattr(view, name) is not None}
    return dataclasses.replace(view, **wrapped), seen


def check_uses_only_defender_data(view: DefenderView, seen: list[tuple[str, object]], defense: str) -> None:
    """Every batch the defense passed to the view holds only examples of the defender split (the leak test)."""
    allowed: set[bytes] = set()
    for batches in (view.harmful, view.benign, view.aligned):
        for batch in batches:
            allowed |= example_fingerprints(batch)
    for name, batch in seen:
        leaked = example_fingerprints(batch) - allowed
        assert not leaked, (f"defense {defense!r} passed {len(leaked)} example(s) from outside the defender split to "
                            f"the view's {name}: a defense may train only on the DefenderView's data")


def smoke_task(task: str, cache):
    """The tiny tier of ``task`` built with its smoke args, on the CPU."""
    task_cls = TASKS.get(task)
    cfg = build_config(task_cls.Config, {**task_cls.smoke_args, "curvature_iters": 0, "bootstrap": 0},
                       where=f"task {task!r} smoke_args")
    return task_cls().build(cfg, tier="tiny", model=None, cache=cache, device=torch.device("cpu"), progress=False)


def check_defense_on_task(name: str, task: str, cache, tmp_path: Path) -> list[str]:
    """The defense (with its ``smoke_args``) on a tiny task's real defender view: deterministic under a seed (bit for
    bit), trains only on the defender split (the leak test), and its defended stage saves to and reloads from the
    on-disk stage cache with identical outputs.

    Two applications, not three: one called here on a recording view (the leak test) with the seed the runner's
    defended stage derives, and the stage's own build; the two must give the same weights bit for bit (determinism,
    and the stage applies the defense as a direct call does), and a second session, which shares only the released
    stage, reads the defended stage back."""
    from bench.core.spec import make_spec
    from bench.run.stage_measure import derive_seed
    from bench.run.stages import Session

    cls = DEFENSES.get(name)
    cfg = build_config(cls.Config, dict(cls.smoke_args), where=f"defense {name!r} smoke_args")
    instance = smoke_task(task, cache)
    smoke = {**TASKS.get(task).smoke_args, "curvature_iters": 0, "bootstrap": 0}
    spec = make_spec(task=task, defense=name, attack="full-ft", task_args=smoke, defense_args=dict(cls.smoke_args),
                     attack_args={"budget": 2, "eval_every": 1})
    seed = derive_seed(spec.seed, "defense")
    view, seen = recording_view(instance.defender_view())
    torch.manual_seed(seed)
    result = cls().apply(copy.deepcopy(instance.model), view, cfg, generator=torch.Generator().manual_seed(seed))
    assert isinstance(result, DefenseResult), f"defense {name!r} on {task}: apply() must return a DefenseResult"
    check_uses_only_defender_data(view, seen, name)
    direct = {k: v.detach().cpu() for k, v in result.model.state_dict().items()}

    session = Session(tmp_path / "a", cache)
    first = session.defended(spec)  # builds the stage: the defense's second application
    built = {k: v.detach().cpu() for k, v in first.model.state_dict().items()}
    assert direct.keys() == built.keys() and all(torch.equal(direct[k], built[k]) for k in direct), (
        f"defense {name!r} on {task} is not deterministic under a seed (two applications with one seed differ)")
    # Read back with the released stage kept in memory (its task is not built again) and the defended one forgotten:
    # the defended stage comes from disk where it could be stored. (A released stage read back: the stage cache's
    # tests.)
    session.forget_defended(spec)
    again = session.defended(spec)
    with torch.no_grad():
        out_first, out_again = instance.reference_outputs(first.model), instance.reference_outputs(again.model)
    torch.testing.assert_close(out_again, out_first, rtol=0, atol=0,
                               msg=f"defense {name!r} on {task}: the defended stage does not reload exactly")
    return [f"{task}: bit-identical under a seed; uses only the defender split (leak test)",
            f"{task}: the defended stage saves to and reloads from the stage cache exactly"]
