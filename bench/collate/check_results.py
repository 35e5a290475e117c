"""Trust checks over a results database: do the verifiers' answers hold up against each other?

Answers are compared per instance, i.e. per ``(benchmark, onnx, vnnlib)``, over every verifier
that ran on it. A counterexample is *valid* when the harness's check accepted it
(``cex_check`` is ``correct`` or ``correct_up_to_tolerance``, as VNN-COMP 2025 scores it).

* **Soundness alarm**: one verifier says ``unsat`` while another holds a valid counterexample.
  The ``unsat`` is wrong (or the model and the checker disagree): the worst possible finding.
* **Unsat on a misclassified sample**: the benchmark's manifest says the model misclassifies
  the clean sample (``correct: false``), so the clean input itself lies in the region and
  violates the property: an ``unsat`` there is wrong, even with no second verifier in the
  database. Instances whose benchmark has no readable manifest cannot be checked this way;
  the report lists those benchmarks.
* **Wrong sat**: ``sat`` with an invalid counterexample against an ``unsat`` of another verifier.
* **Unbacked sat**: any ``sat`` without a valid counterexample (none reported, an invalid one, or
  one the checker could not run on); listed whether or not another verifier contradicts it.
* **Scores**, VNN-COMP style: +10 for a correct answer (``sat`` with a valid counterexample, or
  ``unsat`` that no valid counterexample contradicts), -150 for a wrong one (``sat`` without a
  valid counterexample, ``unsat`` where any verifier holds a valid one, or ``unsat`` on a
  misclassified sample), 0 for ``timeout``,
  ``unknown`` and ``error``. Statuses are counted as they are: errors stay errors.

``check_results(path)`` builds a ``Report``; ``format_report(report)`` renders it as Markdown.
The database is only read (``bench.run.results.read_rows``): checking never changes it.
"""
from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path

from bench.collate.tables import benchmark_manifests, instance_key
from bench.errors import BenchError
from bench.run.results import read_rows
from bench.verifiers.base import Status

VALID_CEX = ("correct", "correct_up_to_tolerance")
CORRECT_POINTS = 10
WRONG_POINTS = -150
STATUSES = tuple(status.value for status in Status)


@dataclass(frozen=True)
class InstanceKey:
    benchmark: str
    onnx: str
    vnnlib: str

    def __str__(self) -> str:
        return f"{self.benchmark}: {self.onnx} + {self.vnnlib}"


@dataclass
class Answer:
    """One verifier's row for an instance, as far as trust is concerned."""

    verifier: str
    status: str
    cex_check: str | None
    cex_detail: str
    reason: str

    @property
    def valid_cex(self) -> bool:
        return self.status == Status.SAT.value and self.cex_check in VALID_CEX


@dataclass
class SoundnessAlarm:
    """``unsat`` by some verifiers, a valid counterexample by others, on one instance."""

    instance: InstanceKey
    unsat_by: list[str]
    counterexample_by: list[Answer]


@dataclass
class MisclassifiedUnsat:
    """``unsat`` on a sample the model misclassifies: its clean input is a counterexample."""

    instance: InstanceKey
    verifier: str
    sample_index: int | None
    label: int | None


@dataclass
class WrongSat:
    """``sat`` with an invalid counterexample where other verifiers answered ``unsat``."""

    instance: InstanceKey
    sat: Answer
    unsat_by: list[str]


@dataclass
class UnbackedSat:
    """A ``sat`` without a valid counterexample."""

    instance: InstanceKey
    sat: Answer

    @property
    def problem(self) -> str:
        check = self.sat.cex_check
        if check is None:
            return "no counterexample was checked"
        if check == "error":
            return f"the counterexample could not be checked: {self.sat.cex_detail}"
        return f"invalid counterexample: {self.sat.cex_detail}"


@dataclass
class VerifierScore:
    verifier: str
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    correct: int = 0
    wrong: int = 0

    @property
    def score(self) -> int:
        return CORRECT_POINTS * self.correct + WRONG_POINTS * self.wrong

    @property
    def total(self) -> int:
        return sum(self.counts.values())


@dataclass
class Report:
    results_path: str
    instances: int  # distinct (benchmark, onnx, vnnlib)
    results: int  # rows
    verifiers: list[str]
    soundness_alarms: list[SoundnessAlarm]
    misclassified_unsats: list[MisclassifiedUnsat]
    wrong_sats: list[WrongSat]
    unbacked_sats: list[UnbackedSat]
    scores: dict[str, VerifierScore]
    # Benchmarks whose manifest could not be read: their unsats were not checked against the
    # misclassified samples (benchmark, why).
    unchecked_benchmarks: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """No soundness alarm, no unsat on a misclassified sample, no sat without a valid
        counterexample. (A row with a status outside the vocabulary never gets here:
        ``read_rows`` refuses the database, naming the row.)"""
        return not (self.soundness_alarms or self.misclassified_unsats or self.unbacked_sats)

    def to_dict(self) -> dict:
        """Plain data (for JSON); scores carry their computed ``score``."""
        data = asdict(self)
        for name, score in self.scores.items():
            data["scores"][name]["score"] = score.score
        return data


def check_results(results_path: str | Path) -> Report:
    """Compare every verifier's answers per instance in the results database at
    ``results_path``; raises ``BenchError`` when there is no such file."""
    path = Path(results_path)
    if not path.is_file():
        raise BenchError(f"no results database at {path}; run `bench run` first")
    return check_rows(read_rows(path), str(path))


def check_rows(rows: list[dict], source: str) -> Report:
    """``check_results`` on rows already read (``read_rows``' dicts), e.g. one benchmark's
    rows, or the rows of several databases; ``source`` names where they came from."""
    misclassified, unchecked = _misclassified_instances(rows)

    by_instance: dict[InstanceKey, list[Answer]] = defaultdict(list)
    for row in rows:
        key = InstanceKey(row["benchmark"], row["onnx"], row["vnnlib"])
        by_instance[key].append(Answer(row["verifier"], row["status"], row["cex_check"],
                                       row["cex_detail"] or "", row["reason"] or ""))

    verifiers = sorted({row["verifier"] for row in rows})
    scores = {name: VerifierScore(name) for name in verifiers}
    alarms: list[SoundnessAlarm] = []
    wrong_unsats: list[MisclassifiedUnsat] = []
    wrong_sats: list[WrongSat] = []
    unbacked: list[UnbackedSat] = []
    for key in sorted(by_instance, key=lambda k: (k.benchmark, k.onnx, k.vnnlib)):
        answers = sorted(by_instance[key], key=lambda a: a.verifier)
        backed = [a for a in answers if a.valid_cex]
        unsat_by = [a.verifier for a in answers if a.status == Status.UNSAT.value]
        if backed and unsat_by:
            alarms.append(SoundnessAlarm(key, unsat_by, backed))
        for answer in answers:
            score = scores[answer.verifier]
            score.counts[answer.status] += 1
            if answer.status == Status.SAT.value:
                if answer.valid_cex:
                    score.correct += 1
                else:
                    score.wrong += 1
                    unbacked.append(UnbackedSat(key, answer))
                    if unsat_by:
                        wrong_sats.append(WrongSat(key, answer, unsat_by))
            elif answer.status == Status.UNSAT.value:
                sample = misclassified.get(key)
                if sample is not None:
                    wrong_unsats.append(MisclassifiedUnsat(key, answer.verifier,
                                                           sample.get("sample_index"),
                                                           sample.get("label")))
                if backed or sample is not None:
                    score.wrong += 1
                else:
                    score.correct += 1
    return Report(results_path=source, instances=len(by_instance), results=len(rows),
                  verifiers=verifiers, soundness_alarms=alarms,
                  misclassified_unsats=wrong_unsats, wrong_sats=wrong_sats,
                  unbacked_sats=unbacked, scores=scores,
                  unchecked_benchmarks=unchecked)


def _misclassified_instances(rows: list[dict]
                             ) -> tuple[dict[InstanceKey, dict], list[tuple[str, str]]]:
    """The instances whose manifest marks the sample as misclassified (``correct`` false), and
    the benchmarks whose manifest could not be read (with why)."""
    found, unchecked = benchmark_manifests(rows)
    misclassified: dict[InstanceKey, dict] = {}
    for benchmark, members, root, manifest in found:
        instances = manifest.get("instances")
        if not isinstance(instances, list):
            unchecked.append((benchmark, f"{root}: the manifest lists no instances"))
            continue
        wrong = {instance_key(i["onnx"], i["vnnlib"]): i for i in instances
                 if isinstance(i, dict) and i.get("correct") is False
                 and isinstance(i.get("onnx"), str) and isinstance(i.get("vnnlib"), str)}
        for row in members:
            sample = wrong.get(instance_key(row["onnx"], row["vnnlib"]))
            if sample is not None:
                misclassified[InstanceKey(benchmark, row["onnx"], row["vnnlib"])] = sample
    return misclassified, unchecked


def format_report(report: Report) -> str:
    """The report as Markdown: findings first (worst first), then the score table."""
    lines = [f"# Trust check of {report.results_path}", "",
             f"{report.instances} instances, {report.results} results, "
             f"{len(report.verifiers)} verifiers ({', '.join(report.verifiers) or 'none'}).",
             "", "**OK**: no soundness alarm, no unsat on a misclassified sample, and every "
             "sat is backed by a valid counterexample."
             if report.ok else "**PROBLEMS FOUND**: see below.", ""]

    lines += _section("Soundness alarms", report.soundness_alarms,
                      "None: no unsat is contradicted by a valid counterexample.",
                      lambda alarm: f"**SOUNDNESS ALARM** {alarm.instance}: unsat by "
                      f"{', '.join(alarm.unsat_by)}, but "
                      + ", ".join(f"{a.verifier} ({a.cex_check})" for a in alarm.counterexample_by)
                      + " found a valid counterexample")
    lines += _section("Unsat on misclassified samples", report.misclassified_unsats,
                      "None: no unsat on a sample the model misclassifies.",
                      lambda item: f"**WRONG UNSAT** {item.instance}: unsat by {item.verifier}, "
                      f"but the model misclassifies sample {item.sample_index} (label "
                      f"{item.label}): the clean input is itself a counterexample")
    if report.unchecked_benchmarks:
        lines[-1:] = ["", "Not checked against misclassified samples (no readable manifest):",
                      *(f"- {benchmark}: {_short(why)}"
                        for benchmark, why in report.unchecked_benchmarks), ""]
    lines += _section("Wrong sat answers", report.wrong_sats,
                      "None: no sat with an invalid counterexample contradicts an unsat.",
                      lambda wrong: f"{wrong.instance}: sat by {wrong.sat.verifier} is wrong "
                      f"(counterexample {wrong.sat.cex_check or 'missing'}: "
                      f"{_short(wrong.sat.cex_detail)}); unsat by {', '.join(wrong.unsat_by)}")
    lines += _section("Sat answers without a valid counterexample", report.unbacked_sats,
                      "None.", lambda item: f"{item.instance}: {item.sat.verifier}: "
                                            f"{_short(item.problem)}")

    lines += ["## Scores", "", SCORING_RULE, "", *score_table(report)]
    return "\n".join(lines) + "\n"


SCORING_RULE = (f"VNN-COMP style: {CORRECT_POINTS:+d} per correct answer, {WRONG_POINTS:+d} per "
                "wrong one, 0 for timeout, unknown and error.")
SCORE_HEADERS = ("verifier", "score", "correct", "wrong", *STATUSES, "total")


def score_cells(report: Report) -> list[list[str]]:
    """One row per verifier, in ``SCORE_HEADERS`` order."""
    rows = []
    for name in report.verifiers:
        score = report.scores[name]
        rows.append([name, str(score.score), str(score.correct), str(score.wrong),
                     *(str(score.counts[status]) for status in STATUSES), str(score.total)])
    return rows


def score_table(report: Report) -> list[str]:
    """The score table as Markdown lines."""
    return ["| " + " | ".join(SCORE_HEADERS) + " |",
            "|---|---:|---:|---:|" + "---:|" * len(STATUSES) + "---:|",
            *("| " + " | ".join(cells) + " |" for cells in score_cells(report))]


def _section(title: str, items: list, none_text: str, describe) -> list[str]:
    """A Markdown section: a heading with the count, one bullet per item (or ``none_text``),
    and a blank line."""
    body = [f"- {describe(item)}" for item in items] or [none_text]
    return [f"## {title} ({len(items)})", "", *body, ""]


def _short(text: str, limit: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."
