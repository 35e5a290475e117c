"""A small supervisor between the harness and its tools, so that nothing a tool starts outlives it.

The harness (``bench.verifiers.harness.run_process``) starts every tool through ``Supervised``,
which hands it to a supervisor: this file run as a program (``python -I -S supervisor.py``:
standard library only, no site packages). A supervisor runs one tool at a time; a runner keeps
its supervisor for all its instances (``reusing_supervisors``), so that starting one (a fresh
interpreter, tens of milliseconds) is paid once per runner or worker, not once per instance.
The supervisor

- makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``, Linux 3.4): a process the tool
  starts is reparented to the supervisor when its own parent exits, instead of to init, even if
  it double-forked into a new session. Every process the tool ever starts therefore stays in the
  supervisor's subtree, where it is found by walking ``/proc`` and killed;
- starts the tool in a new session (its own process group), and in a fresh cgroup of its own
  where the cgroup v2 filesystem lets this process create one (``cgroup_home``). A cgroup is
  killed at once (``cgroup.kill``) and still holds the tool's processes if the supervisor itself
  is killed; a later run removes such leftovers (``sweep_cgroups``);
- obeys the harness over a pipe, one line per command: ``run <json>`` starts a tool, ``t`` sends
  SIGTERM to every process of the tool's subtree, ``k`` sends SIGKILL. When the harness dies, by
  SIGKILL too, the kernel closes its end of the pipe: the supervisor reads end-of-file, kills the
  whole subtree and exits. This is what makes a SIGKILL of ``bench run`` (serial) or of one pool
  worker take the tool's grandchildren with it: ``PR_SET_PDEATHSIG`` reaches only a direct child,
  and fires when the parent *thread* exits;
- reports over a second pipe, one line per event: ``started <pid> <monotonic> <cgroup or ->``
  (or ``failed <errno> <message>`` when the tool cannot be started), ``exited <exit code>
  <monotonic>`` when the tool's main process exits, then, after killing whatever the tool left
  behind, ``done <processes killed>``. Times are ``time.monotonic()`` (Linux CLOCK_MONOTONIC,
  the same clock in every process), so the harness measures the tool alone.

What remains possible. (1) A process started on the tool's behalf by a process *outside* the
subtree (a daemon: ``systemd-run``, ``at``, ``docker run``, an ssh to localhost, a Ray or Dask
cluster, any server the tool talks to) is not ours to find, with or without a cgroup (it lives in
the daemon's cgroup). (2) Without a cgroup: if the supervisor itself is killed (the tool runs as
the same user and may SIGKILL it; the OOM killer may pick it), the tool's processes are
reparented to init; the harness then kills those it has seen (it samples the tree every
0.02-0.1 s for memory) but misses one started after its last look, and were the harness killed
at the same time, nothing would kill them. With a cgroup, (2) is covered: the harness kills the
cgroup, and a later run kills the cgroups whose supervisor is gone. (3) A setuid program in the
tree cannot be signalled by a non-root harness, either way. (4) A process of the harness that
forks without exec (``multiprocessing``'s fork start method) while a supervisor is in use keeps
a copy of its pipe until it execs or exits, and so delays the supervisor's noticing the
harness's death until then (the copies are closed in the child at fork, see ``_after_fork``).
"""
from __future__ import annotations

import contextlib
import ctypes
import json
import os
import re
import select
import signal
import sys
import threading
import time
from typing import Callable, Generic, Iterator, TypeVar

_PR_SET_CHILD_SUBREAPER = 36
STARTUP_TIMEOUT = 60.0  # seconds for a supervisor to start a tool (the first time: a fresh Python)
KILL_PATIENCE = 10.0  # seconds the supervisor keeps killing before it gives up on a process
CGROUP_ENV = "PRUNE_BENCH_CGROUP"  # "off": never use a cgroup, even where one could be made
_CGROUP_PREFIX = "prune-bench-"
_CGROUP_NAME = re.compile(rf"^{_CGROUP_PREFIX}(\d+)-(\d+)-\d+$")


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
    try:
        entries = os.listdir("/proc")
    except OSError:  # no procfs (not Linux): only the process group can be reached
        return children
    for entry in entries:
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
    killed together with its harness left behind. A cgroup holding a process this machine's
    view does not show (another pid namespace, e.g. another container sharing the hierarchy)
    is left alone: its supervisor may well be alive there."""
    try:
        names = os.listdir(home)
    except OSError:
        return
    for name in names:
        match = _CGROUP_NAME.match(name)
        if not match or start_ticks(int(match[1])) == int(match[2]):
            continue
        path = os.path.join(home, name)
        try:
            with open(os.path.join(path, "cgroup.procs")) as procs:
                members = [int(pid) for pid in procs.read().split()]
            with open(os.path.join(path, "cgroup.events")) as events:
                populated = "populated 1" in events.read()
        except (OSError, ValueError):
            continue
        if populated and not members or not all(pid > 0 and start_ticks(pid) is not None
                                                for pid in members):
            continue  # processes we cannot see: not ours to judge
        kill_cgroup(path)
        remove_cgroup(path, patience=0.5)


# --------------------------------------------------------------------------- the supervisor


class _Supervisor:
    """The supervisor's state: the tool it runs now, if any, and the tool's cgroup."""

    def __init__(self, report: int, home: str | None):
        self.report, self.home = report, home
        self.tool: int | None = None
        self.cgroup: str | None = None
        self.runs = 0
        self.harness_gone = False

    def send(self, line: str) -> None:
        try:
            os.write(self.report, (line + "\n").encode())
        except OSError:  # the harness is gone; it cannot hear us
            self.harness_gone = True

    def start(self, request: dict) -> None:
        """Start the tool of ``request`` (argv, env, cwd, stdout, stderr paths) and report."""
        self.runs += 1
        self.cgroup = self._new_cgroup()
        errors_read, errors_write = os.pipe()  # both close-on-exec: EOF once the tool execs
        started = time.monotonic()
        pid = os.fork()
        if pid == 0:  # the child (we have no threads, so Python code is safe until exec)
            os.close(errors_read)
            _exec_tool(request, self.cgroup, errors_write)
        os.close(errors_write)
        failure = b""
        while chunk := os.read(errors_read, 512):
            failure += chunk
        os.close(errors_read)
        if failure:
            os.waitpid(pid, 0)
            self.drop_cgroup()
            self.send(f"failed {failure.decode(errors='replace')}")
            return
        self.tool = pid
        self.send(f"started {pid} {started!r} {self.cgroup or '-'}")

    def _new_cgroup(self) -> str | None:
        if not self.home:
            return None
        me = os.getpid()
        path = os.path.join(self.home, f"{_CGROUP_PREFIX}{me}-{start_ticks(me)}-{self.runs}")
        try:
            os.mkdir(path)
        except OSError:
            return None
        return path

    def finish(self, status: int, ended: float) -> None:
        """The tool's main process exited: report it, kill what it left, report that."""
        self.send(f"exited {os.waitstatus_to_exitcode(status)} {ended!r}")
        leftovers = self.kill_all()
        self.drop_cgroup()
        self.tool = None
        self.send(f"done {leftovers}")

    def terminate(self) -> None:
        """SIGTERM to the tool's group and to everything below us (also what left the group)."""
        if self.tool is None:
            return
        try:
            os.killpg(self.tool, signal.SIGTERM)
        except OSError:
            pass
        for pid in descendants(os.getpid()):
            _signal(pid, signal.SIGTERM)

    def kill_once(self) -> None:
        if self.tool is None:
            return
        if self.cgroup:
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
            # We are a subreaper: no child at all means nothing below us either.
            alive = descendants(os.getpid()) if has_children() else []
            if not alive and not has_children():
                break
            if alive and not killed and self.cgroup:
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


def _exec_tool(request: dict, cgroup: str | None, errors: int) -> None:
    """In the forked child: become the tool, or write ``<errno> <message>`` to ``errors``."""
    try:
        os.setsid()  # a new session: the tool's group is its own
        if cgroup:
            try:
                with open(os.path.join(cgroup, "cgroup.procs"), "w") as procs:
                    procs.write("0")  # 0: the writing process
            except OSError:
                pass  # the tool runs without; the subreaper still holds it
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGCHLD, signal.SIGTERM,
                    signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_DFL)  # Python ignores some; the tool should not
        if request.get("cwd"):
            os.chdir(request["cwd"])
        streams = [os.open(os.devnull, os.O_RDONLY)] + [
            os.open(request[name], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            for name in ("stdout", "stderr")]
        for target, fd in enumerate(streams):
            os.dup2(fd, target)
        argv = request["argv"]
        os.execvpe(argv[0], argv, request["env"])
    except OSError as err:
        os.write(errors, f"{err.errno or 0} {err.strerror or err}".encode())
    except BaseException as err:  # noqa: BLE001 (anything: the child must not return)
        os.write(errors, f"0 {type(err).__name__}: {err}".encode())
    finally:
        os._exit(127)


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
    for fd in (control, report):
        os.set_inheritable(fd, False)  # no tool gets either end
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

    supervisor, pending = _Supervisor(report, home), b""
    while not supervisor.harness_gone and not stop:
        ready = select.select([control, wake_read], [], [])[0]
        if wake_read in ready:
            os.read(wake_read, 512)
        for pid, status in reap():
            if pid == supervisor.tool:
                supervisor.finish(status, time.monotonic())
        if control not in ready:
            continue
        data = os.read(control, 65536)
        if not data:
            supervisor.harness_gone = True
        pending += data
        while b"\n" in pending:
            line, pending = pending.split(b"\n", 1)
            command, _, payload = line.decode().partition(" ")
            if command == "run" and supervisor.tool is None:
                supervisor.start(json.loads(payload))
            elif command == "t":
                supervisor.terminate()
            elif command == "k":
                supervisor.kill_once()
    # The harness is gone (or we were told to stop): nothing of ours may stay.
    supervisor.kill_all()
    supervisor.drop_cgroup()
    return 0


# --------------------------------------------------------------------------- the harness's side


class SupervisorLost(RuntimeError):
    """The supervisor died or stopped answering: the tool's outcome is unknown."""


class _Handle:
    """The harness's end of one supervisor process."""

    def __init__(self) -> None:
        import subprocess

        control_read, self.control = os.pipe()
        self.report, report_write = os.pipe()
        self.owner = os.getpid()
        self.buffer = b""
        try:
            self.process = subprocess.Popen(
                [sys.executable or "python3", "-I", "-S", os.path.abspath(__file__),
                 str(control_read), str(report_write), cgroup_home() or "-"],
                stdin=subprocess.DEVNULL, pass_fds=(control_read, report_write),
                start_new_session=True)
        except BaseException:
            os.close(self.control)
            os.close(self.report)
            raise
        finally:
            os.close(control_read)
            os.close(report_write)
        _LIVE.add(self)

    def send(self, line: str) -> None:
        try:
            os.write(self.control, (line + "\n").encode())
        except OSError:  # the supervisor is gone: the next read says so
            pass

    def next_event(self, timeout: float | None) -> list[str] | None:
        """The next report line, split; None if none came within ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buffer:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            if not select.select([self.report], [], [], left)[0]:
                return None
            data = os.read(self.report, 4096)
            if not data:
                code = self.process.wait()
                raise SupervisorLost(f"the process supervisor exited (code {code}) without "
                                     "reporting the tool's end")
            self.buffer += data
        line, self.buffer = self.buffer.split(b"\n", 1)
        return line.decode(errors="replace").split(" ")

    def close(self, patience: float = KILL_PATIENCE + 5) -> None:
        """End the supervisor: on end-of-file it kills whatever runs under it, and exits."""
        import subprocess

        if self.control >= 0:
            os.close(self.control)
            self.control = -1
        try:
            self.process.wait(patience)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.report >= 0:
            os.close(self.report)
            self.report = -1
        _LIVE.discard(self)

    def drop_in_fork(self) -> None:
        """In a forked child: forget this supervisor (it is the parent's) without a word."""
        for fd in (self.control, self.report):
            if fd >= 0:
                os.close(fd)
        self.control = self.report = -1


T = TypeVar("T")


class ReusePool(Generic[T]):
    """Long-lived helpers (supervisors here, persistent verifier workers in
    ``bench.verifiers.engine``) that a process keeps for its next use while a ``keeping()`` block
    is open, or for the rest of its life after ``keep_for_life()``. ``checkout`` hands out an idle
    one this process owns and ``usable`` accepts, else ``make()`` a new one; ``give_back`` keeps it
    while kept, else closes it; the last ``keeping`` block closes the idle ones. In a forked child
    the idle ones are the parent's: ``after_fork`` forgets them (``forget``) without a word."""

    def __init__(self, make: Callable[[], T], *, close: Callable[[T], None],
                 forget: Callable[[T], None], usable: Callable[[T], bool] = lambda item: True):
        self._make, self._close, self._forget, self._usable = make, close, forget, usable
        self._lock = threading.Lock()
        self._idle: list[T] = []
        self._keepers = 0
        self._for_life = False

    @contextlib.contextmanager
    def keeping(self) -> Iterator[None]:
        with self._lock:
            self._keepers += 1
        try:
            yield
        finally:
            with self._lock:
                self._keepers -= 1
                idle = self._idle[:] if self._keepers == 0 else []
                if idle:
                    self._idle.clear()
            for item in idle:
                self._close(item)

    def keep_for_life(self) -> None:
        with self._lock:
            if not self._for_life:
                self._for_life = True
                self._keepers += 1

    def checkout(self) -> T:
        with self._lock:
            while self._idle:
                item = self._idle.pop()
                if item.owner == os.getpid() and self._usable(item):
                    return item
        return self._make()

    def give_back(self, item: T) -> None:
        with self._lock:
            if self._keepers > 0 and item.owner == os.getpid():
                self._idle.append(item)
                return
        self._close(item)

    def after_fork(self) -> None:
        for item in self._idle:
            self._forget(item)
        self._idle.clear()
        self._keepers, self._for_life = 0, False


_LIVE: set[_Handle] = set()  # every supervisor this process holds
_POOL: ReusePool[_Handle] = ReusePool(
    lambda: _Handle(), close=_Handle.close, forget=_Handle.drop_in_fork,
    usable=lambda handle: handle.process.poll() is None)


def reusing_supervisors():
    """Inside, a supervisor is kept after its tool and used for the next one (a runner's, a
    worker's lifetime); on the way out the idle ones are ended. Outside, each tool gets a
    supervisor of its own, ended with it."""
    return _POOL.keeping()


def _after_fork() -> None:
    for handle in list(_LIVE):
        handle.drop_in_fork()
    _LIVE.clear()
    _POOL.after_fork()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)


class Supervised:
    """A tool running under a supervisor (see the module's docstring), writing its output to
    the files ``stdout`` and ``stderr``; ``env`` is its whole environment. Raises ``OSError``
    when the tool cannot be started (no such executable, no such ``cwd``), as
    ``subprocess.Popen`` would.

    ``started`` and, once ``wait_exit`` returned True, ``ended`` are the supervisor's
    ``time.monotonic()`` readings around the tool's main process; ``returncode`` is its exit
    code (negative: killed by that signal)."""

    def __init__(self, argv: list[str], *, env: dict[str, str], stdout: str | os.PathLike,
                 stderr: str | os.PathLike, cwd: str | os.PathLike | None = None):
        self.returncode: int | None = None
        self.ended = 0.0
        self.leftovers = 0
        self._handle: _Handle | None = _POOL.checkout()
        request = {"argv": [os.fspath(arg) for arg in argv], "env": dict(env),
                   "cwd": os.path.abspath(cwd) if cwd is not None else os.getcwd(),
                   "stdout": os.path.abspath(stdout), "stderr": os.path.abspath(stderr)}
        try:
            self._handle.send(f"run {json.dumps(request)}")
            event = self._handle.next_event(STARTUP_TIMEOUT)
        except BaseException:
            self.abort()
            raise
        if event is not None and event[0] == "failed":
            _POOL.give_back(self._handle)
            self._handle = None
            errno = int(event[1])
            raise OSError(errno, " ".join(event[2:]) or os.strerror(errno), str(argv[0]))
        if event is None or event[0] != "started":
            self.abort()
            raise SupervisorLost(f"the supervisor did not start the tool ({event})")
        self.tool_pid, self.started = int(event[1]), float(event[2])
        self.cgroup = None if event[3] == "-" else event[3]
        self.supervisor_pid = self._handle.process.pid

    def fileno(self) -> int:
        """Readable once the supervisor reports (the tool's main process exited): a long-lived
        tool's caller waits on it next to its own channel to the tool (``select``), then calls
        ``wait_exit(0)``."""
        return self._handle.report

    def terminate(self) -> None:
        """SIGTERM to every process of the tool."""
        self._handle.send("t")

    def kill(self) -> None:
        """SIGKILL to every process of the tool."""
        self._handle.send("k")

    def wait_exit(self, timeout: float) -> bool:
        """True once the tool's main process has exited; waits at most ``timeout`` seconds."""
        if self.returncode is not None:
            return True
        event = self._handle.next_event(timeout)
        if event is None:
            return False
        if event[0] != "exited":
            raise SupervisorLost(f"unexpected report {' '.join(event)!r}")
        self.returncode, self.ended = int(event[1]), float(event[2])
        return True

    def finish(self) -> int:
        """After the main process exited: wait until the supervisor has killed what the tool
        left behind; returns how many processes that took."""
        event = self._handle.next_event(KILL_PATIENCE + STARTUP_TIMEOUT)
        if event is None or event[0] != "done":
            raise SupervisorLost("the supervisor did not finish cleaning up")
        self.leftovers = int(event[1])
        _POOL.give_back(self._handle)
        self._handle = None
        return self.leftovers

    def abort(self) -> None:
        """Kill the tool and everything it started, now (an interruption, a bug, a lost
        supervisor): the supervisor is ended, which kills its subtree; if it is gone or stuck,
        the tool's cgroup is killed. (Without a cgroup, the processes of a lost supervisor are
        the caller's to kill: those it has seen.)"""
        if self._handle is None:
            return
        self._handle.send("k")
        self._handle.close()
        self._handle = None
        cgroup = getattr(self, "cgroup", None)
        if cgroup is not None:
            kill_cgroup(cgroup)
            remove_cgroup(cgroup)


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
