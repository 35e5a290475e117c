"""The cascade's cheap stages: what decides an instance before the chosen verifier runs.

``bench run`` runs them (unless ``--no-cascade``) in the persistent worker
(``bench.verifiers.engine``), on the same ``LoadedModel`` that the ``lirpa`` and ``milp`` workers
use: the exported ONNX file converted with onnx2torch and checked against onnxruntime on points
of every box, so the stages reason about exactly the model a verifier sees. In order, each
recorded as the result's ``decided_by`` (``plan`` runs the bounds stage's IBP and CROWN just before
the attack, alpha-CROWN after it):

- ``clean``: the clean sample, run with onnxruntime; if its outputs reach the unsafe region
  (the sample is misclassified), it is the counterexample (``sat``). For our benchmarks the
  manifest gives the property's eps, and the sample is recovered from the box: the box is the
  sample plus or minus eps, clipped to [0, 1], so ``x = lower + eps`` where the lower bound was
  not clipped, ``upper - eps`` where only the lower one was, and the box centre where both were.
  For a foreign benchmark (no manifest) the sample is unknown: the box centre stands for it
  (any point of the box that reaches the unsafe region is a counterexample, so this is sound;
  it only decides fewer instances).
- ``attack``: PGD from ``attack_restarts`` starting points (the box centre and random points),
  ``attack_steps`` signed-gradient steps each, on a margin loss (how far the outputs are from the
  nearest spec's unsafe region; ``bench.verifiers.attack``), and with ``attack_targeted`` from one
  more random point per spec on that spec's own margin. A point is reported only
  once onnxruntime confirms that it lies in the box and reaches the unsafe region exactly.
- ``bounds``: auto_LiRPA's IBP, then CROWN, then alpha-CROWN (``alpha_iterations`` steps, stopped
  early once every bound clears its right-hand side, or once it stalls short of that; by default
  on the inner layers' bounds that CROWN found, ``alpha_intermediate``), each tried
  only on the disjuncts the previous ones left open; ``unsat`` once every disjunct is proved
  (``decided_by`` names the last method needed: ``bounds:IBP``, ``bounds:CROWN``,
  ``bounds:alpha-CROWN``).

Why a ``bounds`` unsat is sound against floating-point error: (1) the bounds cover the box rounded
*outwards* to float32, which contains every real point of the box; (2) a row counts as proved only
when its lower bound beats the right-hand side by ``PROOF_MARGIN`` (1e-4, VNN-COMP's own
tolerance) plus ``PROOF_MARGIN_REL`` (1e-6) of the bound's size, far more than float32 rounding
through these networks; (3) every bound is checked against the network's outputs at sampled
points of the box (centre, both corners, random points): a bound that excludes one is a bug, and
the bounds stage then decides nothing (the instance goes on to the verifier, with a note). And the
network the bounds are about was checked against onnxruntime on the original file, on points of
the same box, before any stage ran.

Every ``sat`` found here is checked once more by the harness, in another process, with
``bench.verifiers.cex`` at VNN-COMP's tolerances. Nothing here turns a failure into an answer: a
model the stages cannot load or bound leaves the instance undecided (the verifier decides it),
and the reason is kept in ``notes``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError

STAGES = ("clean", "attack", "bounds")
BOUND_METHODS = ("IBP", "CROWN", "alpha-CROWN")
# Every value the cheap stages write into ``decided_by`` (the verifier stage writes ``verifier``
# or ``verifier:<path>``).
DECIDED_BY = ("clean", "attack", *(f"bounds:{method}" for method in BOUND_METHODS))
VERIFIER_STAGE = "verifier"
LOAD = "load"  # in ``times``: reading the property and checking the model on its boxes


def verifier_decided_by(status: str, path: str | None) -> str | None:
    """``decided_by`` of the verifier stage: ``verifier``, or ``verifier:<path>`` where the
    tool says how it decided (alpha-beta-CROWN: attack, incomplete, mip, bab), for an answer
    (sat or unsat); None for anything else."""
    if status not in ("sat", "unsat"):
        return None
    return f"{VERIFIER_STAGE}:{path}" if path else VERIFIER_STAGE


ALPHA_INTERMEDIATE = ("CROWN", "optimized")


@dataclass(frozen=True)
class CascadeSettings:
    """Which cheap stages run, in this order, and how hard each tries. Part of every result's
    provenance (``as_params``): results with other settings are not mixed with these."""

    stages: tuple[str, ...] = STAGES
    attack_restarts: int = 10
    attack_steps: int = 20
    # Besides the untargeted restarts, one start per spec aimed at that spec alone (``attack``):
    # it found 5 more counterexamples among the 225 properties of two demo builds that reach the
    # attack (and lost none), which milp had needed 2.7-16.4 s each to find.
    attack_targeted: bool = True
    # 10, not auto_LiRPA's 20: every demo property alpha-CROWN proved needed at most 2 steps;
    # the steps past 10 only delayed the verifier (demo run 54.6 s vs 63.8 s, same answers).
    alpha_iterations: int = 10
    # Stop alpha-CROWN once it stalls short of a proof (``_lirpa_main.AlphaStop``): of the demo's
    # 18 properties that reach it, the 13 it proves are proved by the third bound, and the 5 it
    # cannot prove gained < 0.01 a step after their fourth or fifth; they go to the verifier.
    alpha_give_up: bool = True
    # alpha-CROWN's bounds of the inner layers: ``CROWN`` keeps those of the CROWN stage over the
    # same box and optimizes the output's relaxation only; ``optimized`` (auto_LiRPA's default)
    # optimizes every layer's, recomputing the inner bounds at every step. On the 20 demo
    # properties that reach alpha-CROWN: 10 proved in 2.3 s with CROWN's, 13 in 18.3 s optimized;
    # the 3 others took milp 0.8-1.1 s each.
    alpha_intermediate: str = "CROWN"
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [stage for stage in self.stages if stage not in STAGES]
        if unknown or len(set(self.stages)) != len(self.stages):
            raise BenchError(f"--stages {','.join(self.stages)}: each stage at most once, from "
                             f"{', '.join(STAGES)}")
        for name in ("attack_restarts", "attack_steps", "alpha_iterations"):
            if getattr(self, name) < 1:
                raise BenchError(f"cascade setting {name} must be at least 1")
        if self.alpha_intermediate not in ALPHA_INTERMEDIATE:
            raise BenchError(f"cascade setting alpha_intermediate must be one of "
                             f"{', '.join(ALPHA_INTERMEDIATE)} (got {self.alpha_intermediate!r})")

    @classmethod
    def parse_stages(cls, text: str) -> tuple[str, ...]:
        """``clean,attack,bounds`` as a tuple, checked (a ``BenchError`` names the bad one)."""
        stages = tuple(part.strip() for part in str(text).split(",") if part.strip())
        if not stages:
            raise BenchError(f"--stages {text!r} names no stage; choose from "
                             f"{', '.join(STAGES)} (or use --no-cascade)")
        cls(stages=stages)  # checks them
        return stages

    def as_params(self) -> dict[str, Any]:
        """The settings as plain values (JSON), for requests and the parameter hash."""
        return {**asdict(self), "stages": list(self.stages)}

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> CascadeSettings:
        known = {f.name for f in fields(cls)}
        values = {key: value for key, value in params.items() if key in known}
        if "stages" in values:
            values["stages"] = tuple(values["stages"])
        return cls(**values)


@dataclass
class CascadeOutcome:
    """What the cheap stages found: ``status`` is ``sat``, ``unsat``, ``timeout`` (the time ran
    out during a stage) or None (undecided: the verifier decides); ``times`` the seconds spent
    in each stage that ran."""

    status: str | None = None
    decided_by: str | None = None
    x: list[float] | None = None  # the counterexample (float32 values) for sat ...
    y: list[float] | None = None  # ... and the outputs onnxruntime gives there
    times: dict[str, float] = field(default_factory=dict)  # by stage, and LOAD
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class OutOfTime(Exception):
    """The instance's deadline passed between two stages."""


QUICK_BOUNDS = ("IBP", "CROWN")  # milliseconds per box, like the attack; alpha-CROWN takes seconds


def plan(stages: tuple[str, ...]) -> list[tuple[str, tuple[str, ...]]]:
    """The steps that run ``stages``: ``(stage, bound methods)``. The bounds stage's quick
    methods (IBP, CROWN) run just before an attack that precedes it, and alpha-CROWN where the
    bounds stage stands: most robust samples are then proved without a wasted attack, and an
    attack still finds counterexamples before alpha-CROWN spends seconds on them. Both stages are
    sound, so the order changes what decides an instance, never its answer."""
    steps: list[tuple[str, tuple[str, ...]]] = []
    early = "bounds" in stages and "attack" in stages and (
        stages.index("attack") < stages.index("bounds"))
    for stage in stages:
        if stage == "attack" and early:
            steps.append(("bounds", QUICK_BOUNDS))
        if stage == "bounds":
            steps.append(("bounds", tuple(method for method in BOUND_METHODS
                                          if not (early and method in QUICK_BOUNDS))))
        else:
            steps.append((stage, ()))
    return steps


def run_stages(model, vnnlib: str | Path, settings: CascadeSettings, eps: float | None,
               deadline: float) -> CascadeOutcome:
    """The cheap stages on one property of ``model`` (a ``LoadedModel``), in the order of
    ``plan``, until one decides or ``deadline`` (``time.monotonic()``) passes. ``eps``: the
    property's radius where the benchmark says it (our manifests), else None (the box centre
    stands for the sample). Raises ``WorkerError`` when the property cannot be used with the
    model."""
    from bench.verifiers.onnx_torch import load_property

    outcome = CascadeOutcome()
    rng = np.random.default_rng(settings.seed)
    clock = time.perf_counter()
    disjuncts, boxes, batched = load_property(model, vnnlib, rng)
    outcome.times[LOAD] = time.perf_counter() - clock
    bounds = _Bounds(model, disjuncts, boxes, batched, settings, outcome)
    runners = {"clean": lambda _: _clean(model, disjuncts, boxes, eps),
               "attack": lambda _: _attack(model, disjuncts, boxes, batched, settings),
               "bounds": lambda methods: bounds.run(methods, deadline)}
    try:
        for stage, methods in plan(settings.stages):
            if time.monotonic() >= deadline:
                raise OutOfTime(stage)
            clock = time.perf_counter()
            try:
                found = runners[stage](methods)
            finally:
                if stage != "bounds":  # the bounds stage times each method itself
                    outcome.times[stage] = time.perf_counter() - clock
            if found is None:
                continue
            outcome.decided_by, point = found
            if point is None:
                outcome.status = "unsat"
            else:
                outcome.status = "sat"
                outcome.x = [float(v) for v in point[0]]
                outcome.y = [float(v) for v in point[1]]
            return outcome
    except OutOfTime as stop:
        outcome.status = "timeout"
        outcome.notes.append(f"the time ran out before or during the {stop} stage")
    return outcome


def clean_point(box: np.ndarray, eps: float | None) -> np.ndarray:
    """The clean sample of a robustness box (see the module's docstring), or its centre."""
    lo, hi = box[:, 0], box[:, 1]
    centre = (lo + hi) / 2
    if eps is None:
        return centre
    return np.where(lo > 0, lo + eps, np.where(hi < 1, hi - eps, centre))


def _clean(model, disjuncts, boxes, eps: float | None):
    from bench.verifiers.onnx_torch import spec_holds

    for (box, specs), (inner, _) in zip(disjuncts, boxes):
        if inner is None:
            continue  # no float32 point in this box
        # Only the one-box properties our benchmarks write have a sample; a union of boxes
        # gets its centres.
        point = clean_point(box, eps if len(disjuncts) == 1 else None)
        x = np.clip(point.astype(np.float32), inner[0], inner[1])
        y = model.reference(x)
        if spec_holds(y, specs):
            return "clean", (x, y)
    return None


def _attack(model, disjuncts, boxes, batched: bool, settings: CascadeSettings):
    import torch

    from bench.verifiers.attack import attack

    generator = torch.Generator().manual_seed(settings.seed)
    for (box, specs), (inner, _) in zip(disjuncts, boxes):
        if inner is None:
            continue
        found = attack(model.network, model.reference, inner, specs, model.n_out,
                       model.prepared_shape, settings.attack_steps, settings.attack_restarts,
                       batched, generator, targeted=settings.attack_targeted)
        if found is not None:
            return "attack", found
    return None


class _Bounds:
    """The bounds stage on one property: IBP, CROWN, alpha-CROWN in turn on the disjuncts still
    open, ``unsat`` once none is. It may run in parts (``run(methods)``, see ``plan``): what one
    part proved stays proved, and a part that cannot bound ends the stage."""

    def __init__(self, model, disjuncts, boxes, batched: bool, settings: CascadeSettings,
                 outcome: CascadeOutcome):
        self.model, self.batched, self.settings, self.outcome = model, batched, settings, outcome
        from bench.verifiers._lirpa_main import excludable

        self.disjuncts, self.boxes = disjuncts, boxes
        self.open: list | None = None  # (specs, rows, stop target, samples) per open disjunct
        # CROWN's bounds of the ReLUs' inputs per disjunct (by its samples), for alpha-CROWN.
        self.crown_bounds: dict[int, dict] = {}
        # False once a part could not bound, or from the start where no bound can decide.
        self.usable = all(excludable(specs) for _, specs in disjuncts)

    def _start(self, bounder) -> list:
        from bench.verifiers._lirpa_main import stop_target
        from bench.verifiers.onnx_torch import spec_matrix

        entries = []
        for (_, specs), (_, outer) in zip(self.disjuncts, self.boxes):
            # alpha-CROWN stops once every row clears its right-hand side with room to spare.
            entries.append((specs, spec_matrix(specs, self.model.n_out), stop_target(specs),
                            bounder.samples(outer)))
        return entries

    def run(self, methods: tuple[str, ...], deadline: float):
        from bench.verifiers._lirpa_main import bounder_for, proved
        from bench.verifiers.onnx_torch import WorkerError

        if not self.usable:
            return None
        try:
            bounder = bounder_for(self.model, self.batched)
            if self.open is None:
                self.open = self._start(bounder)
            for method in methods:
                if time.monotonic() >= deadline:
                    raise OutOfTime(f"bounds:{method}")
                clock = time.perf_counter()
                still_open = []
                for entry in self.open:
                    specs, rows, target, samples = entry
                    lower = bounder.lower_bounds(samples, rows, method, stop_above=target,
                                                 iterations=self.settings.alpha_iterations,
                                                 give_up_with=[len(rhs) for _, rhs in specs]
                                                 if self.settings.alpha_give_up else None,
                                                 intermediate=self.crown_bounds.get(id(samples))
                                                 if method == "alpha-CROWN" else None)
                    if proved(lower, specs):
                        continue
                    still_open.append(entry)
                    if method == "CROWN" and self.settings.alpha_intermediate == "CROWN":
                        self.crown_bounds[id(samples)] = bounder.relu_input_bounds()
                self.outcome.times[f"bounds:{method}"] = time.perf_counter() - clock
                self.open = still_open
                if not still_open:
                    return f"bounds:{method}", None
        except WorkerError as err:
            self.outcome.notes.append(f"bounds stage skipped: {err}")
            self.usable = False
        return None
