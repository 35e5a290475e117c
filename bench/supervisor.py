"""A small supervisor between the harness and a tool, so that nothing the tool starts outlives it.

The harness (``bench.verifiers.harness.run_process``) starts every tool through ``Supervised``,
which runs this file as a program (``python -I -S supervisor.py``: standard library only, no
site packages, about 25 ms to start). The supervisor

- makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``, Linux 3.4): a process the tool
  starts is reparented to the supervisor when its own parent exits, instead of to init, even if
  it double-forked into a new session. Every process the tool ever starts therefore stays in the
  supervisor's subtree, where it is found by walking ``/proc`` and killed;
- starts the tool in a new session (its own process group), and in a fresh cgroup of its own
  where the cgroup v2 filesystem lets this process create one (``cgroup_home``). A cgroup is
  killed at once (``cgroup.kill``) and still holds the tool's processes if the supervisor itself
  is killed; a later run removes such leftovers (``sweep_cgroups``);
- obeys the harness over a pipe: ``t`` sends SIGTERM to every process of the subtree, ``k``
  sends SIGKILL. When the harness dies, by SIGKILL too, the kernel closes its end of the pipe:
  the supervisor reads end-of-file, kills the whole subtree and exits. This is what makes a
  SIGKILL of ``bench run`` (serial) or of one pool worker take the tool's grandchildren with it:
  ``PR_SET_PDEATHSIG`` reaches only a direct child, and fires when the parent *thread* exits;
- reports over a second pipe, one line per event: ``started <pid> <monotonic> <cgroup or ->``
  (or ``failed <errno> <message>`` when the tool cannot be started), ``exited <exit code>
  <monotonic>`` when the tool's main process exits, then, after killing whatever the tool left
  behind, ``done <processes killed>``; and exits. Times are ``time.monotonic()`` (Linux
  CLOCK_MONOTONIC, the same clock in every process), so the harness measures the tool alone.

What remains possible. Without any cgroup: (1) a process started on the tool's behalf by a
process *outside* the subtree (a daemon: ``systemd-run``, ``at``, ``docker run``, an ssh to
localhost, a Ray or Dask cluster, any server the tool talks to) is not ours to find, with or
without a cgroup (its children live in the daemon's cgroup); (2) if the supervisor itself is
killed (the tool runs as the same user and may SIGKILL it; the OOM killer may pick it), the
tool's processes are reparented to init: the harness then kills those it has seen (it samples
the tree every 0.02-0.1 s for memory) but misses one started after its last look; were the
harness killed at the same time, nothing would kill them. With a cgroup, (2) is covered: the
harness kills the cgroup, and a later run kills the cgroups whose supervisor is gone. (3) A
setuid program in the tree cannot be signalled by a non-root harness, either way.
"""
from __future__ import annotations

import ctypes
import os
import re
import select
import signal
import sys
import time

_PR_SET_CHILD_SUBREAPER = 36
STARTUP_TIMEOUT = 60.0  # seconds for the supervisor to start the tool (it is a fresh Python)
KILL_PATIENCE = 10.0  # seconds the supervisor keeps killing before it gives up on a process
CGROUP_ENV = "PRUNE_BENCH_CGROUP"  # "off": never use a cgroup, even where one could be made
_CGROUP_PREFIX = "prune-bench-"
_CGROUP_NAME = re.compile(rf"^{_CGROUP_PREFIX}(\d+)-(\d+)$")


# --------------------------------------------------------------------------- /proc and cgroups
# Shared by both sides: the supervisor (a bare interpreter) and the harness.


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started (clock ticks since boot), which with the pid names one process for
    good; None if there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            fields = stat.read().rsplit(b")", 1)[1].split()
        return int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def _process_table() -> dict[int, list[tuple[int, bytes]]]:
    """parent pid -> [(pid, state)] for every process on this machine."""
    children: dict[int, list[tuple[int, bytes]]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue  # exited meanwhile
        children.setdefault(int(fields[1]), []).append((int(entry), fields[0]))
    return children


def descendants(root: int) -> list[int]:
    """Every live (not zombie) process below ``root``."""
    table, found, stack = _process_table(), [], [root]
    while stack:
        for pid, state in table.get(stack.pop(), ()):
            stack.append(pid)
            if state not in (b"Z", b"X"):
                found.append(pid)
    return found


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except OSError:  # gone already
        pass


def cgroup_home() -> str | None:
    """The cgroup v2 folder this process lives in, if it may create cgroups there (root in a
    container, or a systemd-delegated scope) and the kernel has ``cgroup.kill`` (5.14); else
    None. Also removes what earlier runs left there (``sweep_cgroups``). Looked up once."""
    global _HOME
    if _HOME is None:
        _HOME = _find_cgroup_home() or ""
        if _HOME:
            sweep_cgroups(_HOME)
    return _HOME or None


_HOME: str | None = None


def _find_cgroup_home() -> str | None:
    if os.environ.get(CGROUP_ENV, "").strip().lower() in ("off", "0", "no", "false"):
        return None
    try:
        with open("/proc/self/cgroup") as own:
            path = next((line.strip()[3:] for line in own if line.startswith("0::")), None)
        with open("/proc/self/mountinfo") as mounts:
            # "<id> <parent> <dev> <root> <mount point> ... - cgroup2 ..."; our cgroup's path is
            # relative to the mount's root, which must be the hierarchy's root to be usable.
            point = next((line.split()[4] for line in mounts
                          if " - cgroup2 " in line and line.split()[3] == "/"), None)
    except OSError:
        return None
    if path is None or point is None or path.endswith(" (deleted)"):
        return None
    home = os.path.normpath(os.path.join(point.replace("\\040", " "), path.lstrip("/")))
    if not os.access(os.path.join(home, "cgroup.procs"), os.W_OK):
        return None
    probe = os.path.join(home, f"{_CGROUP_PREFIX}probe-{os.getpid()}")
    try:
        os.mkdir(probe)
    except OSError:
        return None
    usable = os.access(os.path.join(probe, "cgroup.procs"), os.W_OK) and \
        os.path.isfile(os.path.join(probe, "cgroup.kill"))  # not in the root cgroup
    remove_cgroup(probe, patience=0)
    return home if usable else None


def kill_cgroup(path: str) -> None:
    """SIGKILL every process in the cgroup at ``path``, at once."""
    try:
        with open(os.path.join(path, "cgroup.kill"), "w") as kill:
            kill.write("1")
    except OSError:
        pass


def remove_cgroup(path: str, patience: float = 2.0) -> bool:
    """Remove the (killed) cgroup at ``path`` once its processes are gone; True when it is."""
    deadline = time.monotonic() + patience
    while True:
        try:
            os.rmdir(path)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)


def sweep_cgroups(home: str) -> None:
    """Kill and remove the cgroups in ``home`` whose supervisor is gone: what a supervisor
    killed together with its harness left behind."""
    try:
        names = os.listdir(home)
    except OSError:
        return
    for name in names:
        match = _CGROUP_NAME.match(name)
        if match and start_ticks(int(match[1])) != int(match[2]):
            kill_cgroup(os.path.join(home, name))
            remove_cgroup(os.path.join(home, name), patience=0.5)


# --------------------------------------------------------------------------- the supervisor


class _Supervisor:
    def __init__(self, report: int, home: str | None):
        self.report, self.home = report, home
        self.cgroup: str | None = None
        self.cgroup_killable = True  # False while the supervisor itself is still inside it
        self.harness_gone = False

    def send(self, line: str) -> None:
        try:
            os.write(self.report, (line + "\n").encode())  # < PIPE_BUF: one whole line
        except OSError:  # the harness is gone; it cannot hear us
            self.harness_gone = True

    def spawn(self, command: list[str]) -> int:
        """Start the tool in a new session, inside a fresh cgroup where we can make one: the
        supervisor steps into it to start the tool (which inherits it) and steps back out, so
        that killing the cgroup spares the supervisor."""
        self.cgroup = self._enter_cgroup()
        try:
            return os.posix_spawnp(
                command[0], command, os.environ, setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),  # Python ignores them; tools should not
                file_actions=[(os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0)])
        finally:
            self._leave_cgroup()

    def _enter_cgroup(self) -> str | None:
        if not self.home:
            return None
        path = os.path.join(self.home, f"{_CGROUP_PREFIX}{os.getpid()}-{start_ticks(os.getpid())}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        try:
            with open(os.path.join(path, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        except OSError:
            remove_cgroup(path, patience=0)
            return None
        return path

    def _leave_cgroup(self) -> None:
        if self.cgroup is None:
            return
        try:
            with open(os.path.join(self.home, "cgroup.procs"), "w") as procs:
                procs.write(str(os.getpid()))
        except OSError:
            # Still inside: killing the cgroup would kill us. Keep the tool in it (it holds the
            # tool's processes just as well) but kill by the process list instead.
            self.cgroup_killable = False

    def terminate(self, tool: int) -> None:
        """SIGTERM to the tool's group and to everything below us (also what left the group)."""
        try:
            os.killpg(tool, signal.SIGTERM)
        except OSError:
            pass
        for pid in descendants(os.getpid()):
            _signal(pid, signal.SIGTERM)

    def kill_once(self) -> None:
        if self.cgroup and self.cgroup_killable:
            kill_cgroup(self.cgroup)
        for pid in descendants(os.getpid()):
            _signal(pid, signal.SIGKILL)

    def kill_all(self) -> int:
        """SIGKILL everything below us until nothing is left (or ``KILL_PATIENCE`` passed);
        returns how many processes had to be killed."""
        killed: set[int] = set()
        deadline = time.monotonic() + KILL_PATIENCE
        while True:
            reap()
            alive = descendants(os.getpid())
            if not alive and not has_children():
                break
            if alive and not killed and self.cgroup and self.cgroup_killable:
                kill_cgroup(self.cgroup)  # all at once: nothing can fork in between
            killed.update(alive)
            for pid in alive:
                _signal(pid, signal.SIGKILL)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.005)
        return len(killed)

    def drop_cgroup(self) -> None:
        if self.cgroup is not None:
            remove_cgroup(self.cgroup)
            self.cgroup = None


def reap() -> list[tuple[int, int]]:
    """Collect every child that has exited: ``[(pid, wait status)]``."""
    reaped = []
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return reaped
        if pid == 0:
            return reaped
        reaped.append((pid, status))


def has_children() -> bool:
    try:
        os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:
        return False
    return True


def _main(argv: list[str]) -> int:
    control, report, home = int(argv[1]), int(argv[2]), (None if argv[3] == "-" else argv[3])
    command = argv[5:]
    for fd in (control, report):
        os.set_inheritable(fd, False)  # the tool gets neither end
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: orphans go to init, as without a supervisor
    wake_read, wake_write = os.pipe()
    os.set_blocking(wake_write, False)
    signal.set_wakeup_fd(wake_write, warn_on_full_buffer=False)
    stop: list[int] = []
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # only to wake select
    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: stop.append(signum))

    supervisor = _Supervisor(report, home)
    started = time.monotonic()
    try:
        tool = supervisor.spawn(command)
    except OSError as err:
        supervisor.drop_cgroup()
        supervisor.send(f"failed {err.errno or 0} {err.strerror or err}")
        return 1
    supervisor.send(f"started {tool} {started!r} {supervisor.cgroup or '-'}")
    exit_status = None
    while exit_status is None and not supervisor.harness_gone and not stop:
        ready = select.select([control, wake_read], [], [])[0]
        if wake_read in ready:
            os.read(wake_read, 512)
        for pid, status in reap():
            if pid == tool:
                exit_status, ended = status, time.monotonic()
        if control in ready:
            data = os.read(control, 64)
            if not data:
                supervisor.harness_gone = True
            elif b"k" in data:
                supervisor.kill_once()
            elif b"t" in data:
                supervisor.terminate(tool)
    if exit_status is None:  # the harness is gone, or we were told to stop
        supervisor.kill_all()
        supervisor.drop_cgroup()
        return 1
    supervisor.send(f"exited {os.waitstatus_to_exitcode(exit_status)} {ended!r}")
    leftovers = supervisor.kill_all()
    supervisor.drop_cgroup()
    supervisor.send(f"done {leftovers}")
    return 0


# --------------------------------------------------------------------------- the harness's side


class SupervisorLost(RuntimeError):
    """The supervisor died or stopped answering: the tool's outcome is unknown."""


class Supervised:
    """A tool running under a supervisor (see the module's docstring). Raises ``OSError`` when
    the tool cannot be started (no such executable, ...), as ``subprocess.Popen`` would.

    ``started`` and, once ``wait_exit`` returned True, ``ended`` are the supervisor's
    ``time.monotonic()`` readings around the tool's main process; ``returncode`` is its exit
    code (negative: killed by that signal)."""

    def __init__(self, argv: list[str], *, env: dict[str, str] | None = None,
                 cwd: str | os.PathLike | None = None, stdout=None, stderr=None):
        import subprocess

        control_read, self._control = os.pipe()
        self._report, report_write = os.pipe()
        self._buffer = b""
        self.tool_pid = 0
        self.started = self.ended = 0.0
        self.cgroup: str | None = None
        self.returncode: int | None = None
        self.leftovers = 0
        self._done = False
        try:
            self.process = subprocess.Popen(
                [sys.executable or "python3", "-I", "-S", os.path.abspath(__file__),
                 str(control_read), str(report_write), cgroup_home() or "-", "--", *argv],
                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env, cwd=cwd,
                pass_fds=(control_read, report_write), start_new_session=True)
        except BaseException:
            os.close(self._control)
            os.close(self._report)
            raise
        finally:
            os.close(control_read)
            os.close(report_write)
        try:
            event = self._next_event(STARTUP_TIMEOUT)
        except BaseException:
            self.abort()
            raise
        if event[0] == "failed":
            self.close()
            errno = int(event[1])
            raise OSError(errno, " ".join(event[2:]) or os.strerror(errno), argv[0])
        if event[0] != "started":
            self.abort()
            raise SupervisorLost(f"the supervisor said {' '.join(event)!r} instead of starting")
        self.tool_pid, self.started = int(event[1]), float(event[2])
        self.cgroup = None if event[3] == "-" else event[3]

    @property
    def supervisor_pid(self) -> int:
        return self.process.pid

    def _next_event(self, timeout: float | None) -> list[str] | None:
        """The next report line, split; None if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self._buffer:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not select.select([self._report], [], [], left)[0]:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                continue
            data = os.read(self._report, 4096)
            if not data:
                code = self.process.wait()
                raise SupervisorLost(f"the process supervisor exited (code {code}) without "
                                     "reporting the tool's end")
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode(errors="replace").split(" ")

    def _command(self, letter: bytes) -> None:
        try:
            os.write(self._control, letter)
        except OSError:  # the supervisor is gone: the next wait says so
            pass

    def terminate(self) -> None:
        """SIGTERM to every process of the tool."""
        self._command(b"t")

    def kill(self) -> None:
        """SIGKILL to every process of the tool."""
        self._command(b"k")

    def wait_exit(self, timeout: float) -> bool:
        """True once the tool's main process has exited; waits at most ``timeout`` seconds."""
        if self.returncode is not None:
            return True
        event = self._next_event(timeout)
        if event is None:
            return False
        if event[0] != "exited":
            raise SupervisorLost(f"unexpected report {' '.join(event)!r}")
        self.returncode, self.ended = int(event[1]), float(event[2])
        return True

    def finish(self) -> int:
        """After the main process exited: wait until the supervisor has killed what the tool
        left behind, and has exited; returns how many processes that took."""
        event = self._next_event(KILL_PATIENCE + STARTUP_TIMEOUT)
        if event is None or event[0] != "done":
            raise SupervisorLost("the supervisor did not finish cleaning up")
        self.leftovers = int(event[1])
        self.process.wait()
        self._done = True
        return self.leftovers

    def abort(self) -> None:
        """Kill the tool and everything it started, now (an interruption, a bug, a lost
        supervisor): through the supervisor, which kills its subtree and exits when it reads
        end-of-file; if the supervisor is gone or stuck, the cgroup. (Without a cgroup, the
        processes of a lost supervisor are the caller's to kill: those it has seen.)"""
        self._command(b"k")
        if self._control >= 0:
            os.close(self._control)
            self._control = -1
        import subprocess

        try:
            self.process.wait(KILL_PATIENCE + 5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.cgroup is not None:
            kill_cgroup(self.cgroup)
            remove_cgroup(self.cgroup)
        self._done = True

    def close(self) -> None:
        if not self._done:
            self.abort()
        for name in ("_control", "_report"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
