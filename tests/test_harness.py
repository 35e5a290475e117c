"""The harness against small fake verifier tools (Python scripts written into tmp_path)."""
from __future__ import annotations

import os
import shutil
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from bench.formats.folder import Instance
from bench.verifiers import Command, Parameter, Status, Verdict, Verifier
from bench.verifiers.harness import RunRecord, run_instance, run_process

from paths import FIXTURES  # noqa: E402


class FakeTool(Verifier):
    """Runs ``python <script> <result file>``; the script writes ``sat``/``unsat`` (and for sat
    a line of x values) into the result file. Not registered: it exists only in these tests."""

    name = "fake"
    complete = True
    install_hint = "the fake tool is only a test"
    parameters = {"script": Parameter(str)}

    def is_installed(self) -> bool:
        return Path(self.params["script"]).is_file()

    def version(self) -> str | None:
        return "0.0-test"

    def command(self, instance: Instance, workdir: Path) -> Command:
        return Command([sys.executable, str(self.params["script"]), str(workdir / "result.txt")],
                       cwd=workdir)

    def parse(self, instance, workdir, stdout, stderr, returncode) -> Verdict:
        if returncode != 0:
            return Verdict(Status.ERROR, reason=f"exit code {returncode}")
        result = workdir / "result.txt"
        if not result.is_file():
            return Verdict(Status.ERROR, reason="no result file")
        lines = result.read_text().split("\n")
        answer = lines[0].strip()
        if answer == "unsat":
            return Verdict(Status.UNSAT)
        if answer == "sat":
            return Verdict(Status.SAT, counterexample={"x": [float(v) for v in lines[1].split()]})
        raise ValueError(f"unexpected answer {answer!r}")


def tool(tmp_path: Path, body: str, name: str = "tool.py") -> FakeTool:
    script = tmp_path / name
    script.write_text("import os, sys, time, signal, subprocess\n"
                      "result = sys.argv[1]\n" + textwrap.dedent(body))
    return FakeTool(script=str(script))


def instance(tmp_path: Path, timeout: float = 10.0) -> Instance:
    return Instance(benchmark="fake", root=tmp_path, onnx="net.onnx", vnnlib="prop.vnnlib",
                    timeout=timeout)


def gone(pid: int) -> bool:
    """Dead: no such process, or a zombie waiting for init (which may not reap in a container)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def read_pid(path: Path) -> int:
    for _ in range(100):
        if path.is_file() and path.read_text().strip():
            return int(path.read_text())
        time.sleep(0.02)
    raise AssertionError(f"{path} never written")


def test_answer_is_parsed_and_logged(tmp_path):
    verifier = tool(tmp_path, """
        print("hello on stdout"); print("warning on stderr", file=sys.stderr)
        open(result, "w").write("unsat\\n")
    """)
    record = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    assert isinstance(record, RunRecord)
    assert record.status == "unsat" and record.reason == ""
    assert record.verifier == "fake" and record.verifier_version == "0.0-test"
    assert record.cex_check is None
    assert record.wall_time is not None and 0 < record.wall_time < 10
    assert record.peak_memory_mb > 0
    assert record.peak_gpu_memory_mb is None or record.peak_gpu_memory_mb >= 0
    assert record.started_at.endswith("+00:00") and record.host
    logs = Path(record.log_path)
    assert (logs / "stdout.log").read_text() == "hello on stdout\n"
    assert (logs / "stderr.log").read_text() == "warning on stderr\n"


def test_hanging_tool_times_out_and_is_gone(tmp_path):
    verifier = tool(tmp_path, """
        open("pid", "w").write(str(os.getpid()))
        time.sleep(1000)
    """)
    start = time.monotonic()
    record = run_instance(verifier, instance(tmp_path, timeout=1.0), tmp_path / "logs", grace=1.0)
    assert record.status == "timeout"
    assert time.monotonic() - start < 3
    assert gone(read_pid(Path(record.log_path) / "pid"))


def test_tool_ignoring_sigterm_is_killed(tmp_path):
    verifier = tool(tmp_path, """
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        open("pid", "w").write(str(os.getpid()))
        while True:
            time.sleep(0.05)
    """)
    record = run_instance(verifier, instance(tmp_path, timeout=1.0), tmp_path / "logs", grace=0.5)
    assert record.status == "timeout" and "SIGKILL" in record.reason
    assert gone(read_pid(Path(record.log_path) / "pid"))


def test_hanging_child_is_killed_with_its_parent(tmp_path):
    verifier = tool(tmp_path, """
        child = subprocess.Popen([sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(1000)"])
        open("child", "w").write(str(child.pid))
        child.wait()
    """)
    record = run_instance(verifier, instance(tmp_path, timeout=1.0), tmp_path / "logs", grace=0.5)
    assert record.status == "timeout"
    assert gone(read_pid(Path(record.log_path) / "child"))


def test_orphan_left_behind_after_an_answer_is_killed(tmp_path):
    # The tool answers and exits, but leaves a grandchild running in its own session (so that
    # killing the process group alone would miss it).
    verifier = tool(tmp_path, """
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"],
                                 start_new_session=True)
        open("child", "w").write(str(child.pid))
        time.sleep(0.3)  # let the harness see the child once
        open(result, "w").write("unsat\\n")
    """)
    record = run_instance(verifier, instance(tmp_path, timeout=5.0), tmp_path / "logs")
    assert record.status == "unsat"
    assert gone(read_pid(Path(record.log_path) / "child"))


def test_crash_is_an_error(tmp_path):
    verifier = tool(tmp_path, """
        raise SystemExit(1)
    """)
    record = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    assert record.status == "error" and record.reason == "exit code 1"


def test_garbage_answer_is_an_error(tmp_path):
    verifier = tool(tmp_path, """
        print("%$#@! garbage " * 1000)
        open(result, "w").write("maybe?\\n")
    """)
    record = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    assert record.status == "error"
    assert record.reason.startswith("cannot parse the output: ValueError")


def test_missing_result_file_is_an_error(tmp_path):
    verifier = tool(tmp_path, """
        print("done, but I forgot to write the result")
    """)
    record = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    assert record.status == "error" and record.reason == "no result file"


def test_peak_memory_of_a_hungry_tool(tmp_path):
    verifier = tool(tmp_path, """
        block = b"x" * (300 * 1024 * 1024)  # written, so resident
        time.sleep(0.3)
        open(result, "w").write("unsat\\n")
    """)
    record = run_instance(verifier, instance(tmp_path, timeout=10.0), tmp_path / "logs")
    assert record.status == "unsat"
    assert 250 < record.peak_memory_mb < 1000


def test_not_installed_is_an_error_with_the_hint(tmp_path):
    verifier = FakeTool(script=str(tmp_path / "missing.py"))
    record = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    assert record.status == "error"
    assert record.reason == FakeTool.install_hint
    assert record.wall_time is None and record.log_path is None


def test_sat_counterexample_is_checked(tmp_path):
    # A fake "sat" on a real instance with a made-up point: the answer is kept, the check says
    # the counterexample is invalid.
    for name in ("test_sat.onnx", "test_prop.vnnlib"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    verifier = tool(tmp_path, """
        open(result, "w").write("sat\\n0 0 0 0 0\\n")
    """)
    inst = Instance(benchmark="fake", root=tmp_path, onnx="test_sat.onnx",
                    vnnlib="test_prop.vnnlib", timeout=5.0)
    record = run_instance(verifier, inst, tmp_path / "logs")
    assert record.status == "sat"
    assert record.cex_check == "invalid" and "outside every input box" in record.cex_detail


def test_rerun_starts_in_a_fresh_workdir(tmp_path):
    writes = tool(tmp_path, """
        open(result, "w").write("unsat\\n")
    """, name="writes.py")
    assert run_instance(writes, instance(tmp_path), tmp_path / "logs").status == "unsat"
    silent = tool(tmp_path, """
        pass
    """, name="silent.py")
    record = run_instance(silent, instance(tmp_path), tmp_path / "logs")
    assert record.status == "error" and record.reason == "no result file"


def test_run_process_environment_and_overhead(tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    outcome = run_process([sys.executable, "-c", "import os; print(os.environ['PB_TEST'])"],
                          timeout=5, env={"PB_TEST": "42"}, cwd=tmp_path,
                          stdout_path=out, stderr_path=err)
    assert outcome.returncode == 0 and not outcome.timed_out and not outcome.killed
    assert out.read_text() == "42\n"
    started = time.monotonic()
    outcome = run_process(["true"], timeout=5, stdout_path=out, stderr_path=err)
    # exit is noticed at once (the supervisor reports it), not at the next sample
    assert time.monotonic() - started < 0.5 and outcome.wall_time < 0.5


def test_missing_executable_is_an_error(tmp_path):
    class Broken(FakeTool):
        def command(self, instance, workdir):
            return Command([str(tmp_path / "no-such-binary")])

    (tmp_path / "tool.py").write_text("")
    record = run_instance(Broken(script=str(tmp_path / "tool.py")), instance(tmp_path),
                          tmp_path / "logs")
    assert record.status == "error" and record.reason.startswith("cannot start")


@pytest.fixture(autouse=True)
def _no_leftover_children(no_leftover_children):
    """No test may leave a process of ours running (see conftest.py)."""


def test_exit_and_timeout_without_pidfd(tmp_path, monkeypatch):
    # Kernels before 5.3 have no pidfd: the harness does not need one.
    def no_pidfd(pid):
        raise OSError("pidfd_open not supported")

    monkeypatch.setattr(os, "pidfd_open", no_pidfd)
    out, err = tmp_path / "out", tmp_path / "err"
    quick = run_process(["true"], timeout=5, stdout_path=out, stderr_path=err)
    assert quick.returncode == 0 and quick.wall_time < 0.5
    slow = run_process(["sleep", "100"], timeout=0.5, grace=0.5, stdout_path=out, stderr_path=err)
    assert slow.timed_out and slow.returncode == -15 and slow.wall_time < 1.5


class _FakeNvml:
    """Stands in for pynvml: one GPU on which every process uses 100 MiB."""

    class NVMLError(Exception):
        pass

    def __init__(self, works: bool = True):
        self.works = works

    def nvmlInit(self):
        if not self.works:
            raise self.NVMLError("NVML Shared Library Not Found")

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, index):
        return index

    def nvmlDeviceGetComputeRunningProcesses(self, handle):
        from types import SimpleNamespace

        return [SimpleNamespace(pid=pid, usedGpuMemory=100 * 1024 * 1024) for pid in psutil.pids()]


@pytest.mark.parametrize("works, expected", [(True, 100.0), (False, None)])
def test_gpu_memory_through_nvml(tmp_path, monkeypatch, works, expected):
    monkeypatch.setitem(sys.modules, "pynvml", _FakeNvml(works))
    outcome = run_process([sys.executable, "-c", "import time; time.sleep(0.3)"], timeout=5,
                          stdout_path=tmp_path / "out", stderr_path=tmp_path / "err")
    # only the tool's own process counts, not the other processes on the GPU
    assert outcome.peak_gpu_memory_mb == expected


def test_tool_dies_when_the_harness_is_killed(tmp_path):
    # SIGKILL of `bench run` must not leave a verifier running until its own time limit.
    script = tmp_path / "harness.py"
    script.write_text(
        "import sys\n"
        "from pathlib import Path\n"
        "from bench.verifiers.harness import run_process\n"
        "d = Path(sys.argv[1])\n"
        "run_process(['sleep', '60'], timeout=60, stdout_path=d / 'o', stderr_path=d / 'e')\n")
    import subprocess
    import sys

    harness = subprocess.Popen([sys.executable, str(script), str(tmp_path)])
    deadline = time.monotonic() + 20
    tool = []
    while not tool and time.monotonic() < deadline:
        tool = [p for p in psutil.Process(harness.pid).children(recursive=True)
                if p.name() == "sleep"]
        time.sleep(0.05)
    assert tool, "the tool did not start"
    harness.kill()
    harness.wait()
    gone, alive = psutil.wait_procs(tool, timeout=5)
    assert not alive


# --------------------------------------------------------------------------- escaping processes

DOUBLE_FORK = """
    if os.fork() == 0:
        os.setsid()  # a new session: out of the tool's process group
        if os.fork() == 0:
            open("grandchild.tmp", "w").write(str(os.getpid()))
            os.rename("grandchild.tmp", "grandchild")
            time.sleep(1000)
        os._exit(0)  # the grandchild is orphaned at once, before any sample could see it
    os.wait()
    while not os.path.exists("grandchild"):
        time.sleep(0.01)
"""


@pytest.fixture(params=["subreaper", "cgroup"])
def containment(request, monkeypatch):
    """Each escape test runs with the supervisor alone (a subreaper) and, where this machine
    lets us make cgroups, with a cgroup per tool as well."""
    from bench import supervisor

    if request.param == "cgroup":
        if supervisor.cgroup_home() is None:
            pytest.skip("no writable cgroup v2 hierarchy here")
    else:
        monkeypatch.setattr(supervisor, "_HOME", "")  # as if there were no usable cgroup
    return request.param


def _kill_survivor(pid: int) -> None:
    """Do not leave a test's escapee running when the assertion fails."""
    try:
        psutil.Process(pid).kill()
    except psutil.Error:
        pass


@pytest.mark.parametrize("ending, timeout, status", [
    ("time.sleep(1000)", 1.0, "timeout"),  # killed at the timeout
    ("open(result, 'w').write('unsat')", 10.0, "unsat"),  # answers at once after the fork
], ids=["at-the-timeout", "right-after-an-answer"])
def test_a_double_fork_into_a_new_session_dies_with_the_tool(tmp_path, containment, ending,
                                                             timeout, status):
    verifier = tool(tmp_path, DOUBLE_FORK + "\n    " + ending + "\n")
    record = run_instance(verifier, instance(tmp_path, timeout=timeout), tmp_path / "logs",
                          grace=0.5)
    pid = read_pid(Path(record.log_path) / "grandchild")
    survived = not gone(pid)
    _kill_survivor(pid)
    assert record.status == status
    assert not survived, "a double-forked process in a new session outlived the tool"


def test_a_tool_that_kills_its_supervisor_still_loses_its_children(tmp_path, containment):
    from bench.supervisor import SupervisorLost

    verifier = tool(tmp_path, """
    open("pid", "w").write(str(os.getpid()))
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(1000)"],
                             start_new_session=True)
    open("child", "w").write(str(child.pid))
    time.sleep(0.5)  # without a cgroup, the harness must have seen it once
    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(1000)
    """)
    with pytest.raises(SupervisorLost):
        run_instance(verifier, instance(tmp_path, timeout=30.0), tmp_path / "logs")
    (folder,) = [p.parent for p in (tmp_path / "logs").rglob("child")]
    for name in ("child", "pid"):
        pid = read_pid(folder / name)
        survived = not gone(pid)
        _kill_survivor(pid)
        assert not survived, f"{name} outlived its killed supervisor"


def test_each_attempt_has_its_own_folder(tmp_path):
    verifier = tool(tmp_path, """
    open(result, "w").write("unsat\\n")
    """)
    first = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    second = run_instance(verifier, instance(tmp_path), tmp_path / "logs")
    assert first.log_path != second.log_path
    assert Path(first.log_path).parent == Path(second.log_path).parent
    assert (Path(first.log_path) / "result.txt").is_file()  # an earlier attempt is kept


def test_the_record_carries_the_benchmark_hash_and_the_deciding_stage(tmp_path):
    class Staged(FakeTool):
        def parse(self, instance, workdir, stdout, stderr, returncode):
            verdict = super().parse(instance, workdir, stdout, stderr, returncode)
            verdict.decided_by = "attack"  # as a cascade's verdict will say
            return verdict

    script = tmp_path / "tool.py"
    script.write_text("import sys\nopen(sys.argv[1], 'w').write('unsat\\n')\n")
    hashed = Instance(benchmark="fake", root=tmp_path, onnx="net.onnx", vnnlib="prop.vnnlib",
                      timeout=10.0, benchmark_hash="abc123")
    record = run_instance(Staged(script=str(script)), hashed, tmp_path / "logs")
    assert record.status == "unsat"
    assert record.benchmark_hash == "abc123" and record.decided_by == "attack"
    plain = run_instance(FakeTool(script=str(script)), hashed, tmp_path / "logs")
    assert plain.decided_by is None


def test_a_cgroup_left_by_a_killed_supervisor_is_swept(tmp_path):
    """Were the harness and its supervisor killed together, the tool's processes would stay in
    their cgroup: the next run's first look at the hierarchy kills them."""
    from bench import supervisor

    home = supervisor.cgroup_home()
    if home is None:
        pytest.skip("no writable cgroup v2 hierarchy here")
    gone_pid = psutil.Popen(["true"])
    gone_pid.wait()
    stale = Path(home) / f"prune-bench-{gone_pid.pid}-1-1"
    stale.mkdir()
    leftover = psutil.Popen(["sleep", "100"])
    try:
        (stale / "cgroup.procs").write_text(str(leftover.pid))
        supervisor.sweep_cgroups(home)
        assert leftover.wait(5) == -9 and not stale.exists()
    finally:
        if leftover.is_running():
            leftover.kill()
        supervisor.remove_cgroup(str(stale), patience=0)


def test_a_runner_keeps_one_supervisor_for_all_its_tools(tmp_path):
    from bench.supervisor import reusing_supervisors

    out, err = tmp_path / "out", tmp_path / "err"
    supervisors = []
    with reusing_supervisors():
        for _ in range(3):
            run_process([sys.executable, "-c", "import os; print(os.getppid())"], timeout=5,
                        stdout_path=out, stderr_path=err)
            supervisors.append(int(out.read_text()))
        assert len(set(supervisors)) == 1
        supervisor = psutil.Process(supervisors[0])
    _, alive = psutil.wait_procs([supervisor], timeout=5)
    assert not alive  # ended with the block
    run_process(["true"], timeout=5, stdout_path=out, stderr_path=err)  # one of its own, ended


def test_a_package_found_is_looked_up_once_and_one_missing_again(tmp_path, monkeypatch):
    """``bench run`` asks for the verifier's version and modules before every instance: what is
    found is kept for the process, what is missing is looked up again (installed mid-run)."""
    from bench.verifiers import base

    name = "prune_bench_test_late_module"
    monkeypatch.syspath_prepend(str(tmp_path))
    lookups = []
    find_spec = base.find_spec
    monkeypatch.setattr(base, "find_spec", lambda module: lookups.append(module)
                        or find_spec(module))
    assert not base.module_found(name) and not base.module_found(name)
    assert lookups == [name, name]
    (tmp_path / f"{name}.py").write_text("")
    import importlib
    importlib.invalidate_caches()
    assert base.module_found(name) and base.module_found(name)
    assert lookups == [name] * 3

    versions = []
    real = base.metadata.version
    monkeypatch.setattr(base.metadata, "version", lambda package: versions.append(package)
                        or real(package))
    assert base.package_version("pytest") == base.package_version("pytest") == real("pytest")
    assert base.package_version("no-such-package-prune-bench") is None
    assert base.package_version("no-such-package-prune-bench") is None
    assert versions.count("no-such-package-prune-bench") == 2 and versions.count("pytest") <= 1
