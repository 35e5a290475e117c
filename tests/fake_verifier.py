"""A test-only verifier, ``fake-sleep``, and benchmarks made for it.

Registered when imported: directly in a test, or in other processes (pool workers, Ray tasks, a
``bench run`` subprocess) through ``PRUNE_BENCH_PLUGINS=fake_verifier`` with this folder on
``PYTHONPATH`` (see ``plugin_env``).

Its tool is a tiny Python script that reads what to do from comments in the VNN-LIB file
(``; fake-status: unsat`` and ``; fake-delay: 0.5``), sleeps, and writes the status. Every start
and finish is appended to a ledger file (``FAKE_VERIFIER_LEDGER``), so a test can tell exactly
which instances a run started, and how often. The files named .onnx are not models: nothing
reads them (no ``sat`` answers, so no counterexample check). With ``; fake-child: 1`` the tool
first starts a child process that sleeps for ten minutes (ledger event ``child``, its pid), as a
tool whose own helper process must not outlive it.

A second verifier, ``fake-answer``, gives every instance the answer in the environment variable
``FAKE_ANSWER`` (default ``unknown``): it writes it into its result file at once, notes it in the
ledger (event ``answer=<status>``, with the folder it was given), then lingers ``linger`` seconds
(a tool that tidies up before it exits), so that two runs side by side overlap.
"""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from bench.formats.folder import Instance
from bench.verifiers import VERIFIERS, Command, Parameter, Status, Verdict, Verifier

NAME = "fake-sleep"
LEDGER_ENV = "FAKE_VERIFIER_LEDGER"
HERE = Path(__file__).resolve().parent

TOOL = r"""
import os, sys, time
vnnlib, result = sys.argv[1], sys.argv[2]
spec = {}
for line in open(vnnlib):
    if line.startswith("; fake-"):
        key, _, value = line[len("; fake-"):].partition(":")
        spec[key.strip()] = value.strip()
ledger = os.environ.get("FAKE_VERIFIER_LEDGER")

def note(event):
    if ledger:
        with open(ledger, "a") as handle:  # O_APPEND: one whole line per write
            handle.write(f"{event} {os.path.basename(vnnlib)} {os.getpid()} {time.time():.3f}\n")

note("start")
if spec.get("child") == "1":
    import subprocess
    child = subprocess.Popen([sys.executable, "-S", "-c", "import time; time.sleep(600)"])
    if ledger:
        with open(ledger, "a") as handle:
            handle.write(f"child {os.path.basename(vnnlib)} {child.pid} {time.time():.3f}\n")
time.sleep(float(spec.get("delay", "0")))
with open(result, "w") as handle:
    handle.write(spec.get("status", "unsat") + "\n" + os.environ.get("CUDA_VISIBLE_DEVICES", "-"))
note("finish")
"""


@VERIFIERS.register(NAME)
class FakeSleep(Verifier):
    name = NAME
    complete = True
    install_hint = "part of the tests (tests/fake_verifier.py)"
    parameters = {"gpu": Parameter(bool, False),
                  "flavour": Parameter(str, "plain", help="only changes the params hash")}

    def uses_gpu(self) -> bool:
        return self.params["gpu"]

    def is_installed(self) -> bool:
        return True

    def version(self) -> str | None:
        return "1.0-test"

    def command(self, instance: Instance, workdir: Path) -> Command:
        if "; fake-kill-worker: 1" in instance.vnnlib_path.read_text():
            # Dies like a worker process hit by the OOM killer (never use it in serial mode: in
            # the runner's own process this would end the test).
            os.kill(os.getpid(), signal.SIGKILL)
        return Command([sys.executable, "-S", "-c", TOOL, str(instance.vnnlib_path),
                        str(workdir / "result.txt")], cwd=workdir)

    def parse(self, instance: Instance, workdir: Path, stdout: str, stderr: str,
              returncode: int) -> Verdict:
        result = workdir / "result.txt"
        if returncode != 0 or not result.is_file():
            return Verdict(Status.ERROR, reason=f"exit code {returncode}: {stderr[-200:]}")
        status, _, cuda = result.read_text().partition("\n")
        return Verdict(Status(status.strip()), reason=f"cuda={cuda.strip()}")


ANSWER_TOOL = r"""
import os, sys, time
result, linger, vnnlib = sys.argv[1], float(sys.argv[2]), sys.argv[3]
answer = os.environ.get("FAKE_ANSWER", "unknown")
with open(result, "w") as handle:
    handle.write(answer + "\n")
ledger = os.environ.get("FAKE_VERIFIER_LEDGER")
if ledger:
    with open(ledger, "a") as handle:
        handle.write(f"answer={answer} {os.path.basename(vnnlib)} {os.getpid()} {time.time():.3f} "
                     f"{os.path.dirname(result)}\n")
time.sleep(linger)
"""


@VERIFIERS.register("fake-answer")
class FakeAnswer(FakeSleep):
    name = "fake-answer"
    parameters = {"gpu": Parameter(bool, False), "linger": Parameter(float, 1.0)}

    def command(self, instance: Instance, workdir: Path) -> Command:
        return Command([sys.executable, "-S", "-c", ANSWER_TOOL, str(workdir / "result.txt"),
                        str(self.params["linger"]), str(instance.vnnlib_path)], cwd=workdir)


def make_benchmark(folder: Path, specs: list[tuple[str, float]], timeout: float = 30.0,
                   models: int = 1, kill_worker: tuple[int, ...] = (),
                   child: tuple[int, ...] = ()) -> Path:
    """A benchmark folder with one instance per (status, delay) of ``specs`` and model; the
    instances whose index is in ``kill_worker`` SIGKILL the worker that starts them, those in
    ``child`` start a child process first."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for model in range(models):
        (folder / f"net{model}.onnx").write_text("not a model\n")
        for index, (status, delay) in enumerate(specs):
            name = f"prop_{model}_{index:03d}.vnnlib"
            kill = "; fake-kill-worker: 1\n" if index in kill_worker else ""
            kill += "; fake-child: 1\n" if index in child else ""
            (folder / name).write_text(f"; fake-status: {status}\n; fake-delay: {delay}\n{kill}")
            rows.append(f"net{model}.onnx,{name},{timeout:g}")
    (folder / "instances.csv").write_text("\n".join(rows) + "\n")
    return folder


def plugin_env(ledger: Path | None = None) -> dict[str, str]:
    """The environment that makes ``fake-sleep`` known to other processes."""
    path = os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH", "")]))
    env = {"PRUNE_BENCH_PLUGINS": "fake_verifier", "PYTHONPATH": path}
    if ledger is not None:
        env[LEDGER_ENV] = str(ledger)
    return env


def read_ledger(ledger: Path) -> list[tuple[str, str]]:
    """(event, vnnlib file name) per line, in order."""
    if not ledger.exists():
        return []
    return [tuple(line.split()[:2]) for line in ledger.read_text().splitlines() if line.strip()]
