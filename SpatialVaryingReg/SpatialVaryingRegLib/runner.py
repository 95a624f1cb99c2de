"""Run the engine (``svreg_core.cli``) in a child process and follow its JSON-lines progress.

The Slicer process never imports torch: the engine runs in a child Python (Slicer's ``PythonSlicer``,
or ``sys.executable`` outside Slicer) started in its own process group, so Slicer stays responsive and
*Cancel* can kill the whole process tree. Standard output carries one JSON object per line
(``progress`` ..., then ``done`` or ``error``); anything else on stdout or stderr goes to the log.

Two ways to drive a :class:`ChildProcess`:

* GUI: ``start()``, then call ``poll()`` from a timer (it never blocks); callbacks run in the
  caller's thread.
* Console and tests: ``wait()`` blocks until the process ends, calling the same callbacks.

A :class:`PreviewProcess` (``svreg_core.cli preview``) is a long-lived child that reads one JSON request
per line on its standard input and answers each with a ``done`` or ``error`` event; each request is
followed like a child process of its own (:class:`PreviewCall`).

No Qt and no torch are imported here.
"""
from __future__ import annotations

import collections
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Name of the folder (next to the module) into which CMake installs the engine sources.
ENGINE_FOLDER = "SpatialVaryingRegEngine"

SUCCEEDED, FAILED, CANCELLED = "succeeded", "failed", "cancelled"

#: How long ``cancel`` waits after SIGTERM before SIGKILL.
TERMINATE_GRACE_S = 3.0


# --------------------------------------------------------------------------------------------------
# where the engine and the child interpreter are


def module_dir() -> Path:
    """The folder holding ``SpatialVaryingReg.py`` (parent of this package)."""
    return Path(__file__).resolve().parent.parent


def engine_path(base: Path | None = None) -> Path | None:
    """Folder to put on the child's PYTHONPATH so that ``import svreg_core`` finds the bundled engine.

    Looks for the copy CMake installs next to the module (``SpatialVaryingRegEngine/svreg_core``), then
    for a source checkout (``<repository>/svreg_core`` next to the module folder). ``None``: rely on
    an ``svreg_core`` installed in the child's Python.
    """
    base = Path(base) if base is not None else module_dir()
    for candidate in (base / ENGINE_FOLDER, base.parent):
        if (candidate / "svreg_core" / "__init__.py").is_file():
            return candidate
    return None


def python_executable() -> str:
    """The interpreter for the child: inside Slicer its own ``PythonSlicer`` (``<slicerHome>/bin``; one found on the
    PATH when that is missing), else ``sys.executable``.

    ``SVREG_PYTHON`` overrides both (e.g. a separate environment with a CUDA build of torch).
    """
    override = os.environ.get("SVREG_PYTHON")
    if override:
        return override
    try:
        import slicer

        app = getattr(slicer, "app", None)
    except ImportError:
        app = None
    if app is not None:
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        candidate = Path(app.slicerHome) / "bin" / name  # this Slicer's own, before another one's on the PATH
        if candidate.is_file():
            return str(candidate)
        found = shutil.which("PythonSlicer")
        if found:
            return found
    return sys.executable


def child_environment(extra_path: Path | None = None, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of the child: unbuffered UTF-8 output and the engine first on PYTHONPATH."""
    env = dict(os.environ if base is None else base)
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONIOENCODING"] = "utf-8"
    if extra_path is not None:
        parts = [str(extra_path)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
        env["PYTHONPATH"] = os.pathsep.join(parts)
    return env


# --------------------------------------------------------------------------------------------------
# plain-language messages


def plain_message(text: str, device: str | None = None) -> str:
    """Turn an engine failure (error event or the last stderr lines) into advice a user can act on."""
    lowered = text.lower()
    if "out of memory" in lowered or "outofmemoryerror" in lowered:
        if "cuda" in lowered or (device or "").startswith("cuda") or "gpu" in lowered:
            return ("The GPU ran out of memory. Tick 'Use CPU' (slower, uses system memory), or crop the "
                    "volumes to the region of interest (Crop Volume module), or use coarser level spacings.")
        return ("The computer ran out of memory. Crop the volumes to the region of interest (Crop Volume "
                "module), resample them to a coarser voxel size, or close other programs.")
    found = re.search(r"No module named ['\"]?([\w.]+)", text)
    if found:
        missing = found.group(1)
        if missing.split(".")[0] == "torch":
            return ("PyTorch is not installed in Slicer. Install the 'PyTorch' extension (Extension Manager) "
                    "or press Register again and accept the installation offer.")
        return (f"The Python package '{missing}' needed by the registration engine is missing. "
                "Press Register again and accept the installation offer, or run "
                f"slicer.util.pip_install('{missing.split('.')[0]}') in the Python console.")
    return text.strip().splitlines()[-1] if text.strip() else "the registration engine stopped without a message."


def signal_message(number: int) -> str:
    """The message of an engine ended by signal ``number`` that this module did not send (its last log line, e.g. a
    warning, says nothing about it): SIGKILL is most often the system's out-of-memory killer."""
    try:
        name = signal.Signals(number).name
    except ValueError:
        name = f"signal {number}"
    if number == getattr(signal, "SIGKILL", None):
        return (f"The registration engine was killed by the system ({name}), most often because the computer ran out "
                "of memory. Crop the volumes to the region of interest (Crop Volume module), resample them to a "
                "coarser voxel size, or close other programs.")
    return f"The registration engine stopped unexpectedly ({name}); the Log shows its last lines."


# --------------------------------------------------------------------------------------------------
# the child process


@dataclass
class RunResult:
    """How a child process ended.

    Attributes:
        status: ``"succeeded"``, ``"failed"`` or ``"cancelled"``.
        returncode: exit status (``None`` if it never started).
        message: one plain line for the user (empty on success).
        done: the final ``done`` event (``outdir``, ``report``) of a successful run.
        log_tail: the last lines of stderr and non-JSON stdout.
    """

    status: str
    returncode: int | None = None
    message: str = ""
    done: dict[str, Any] | None = None
    log_tail: list[str] = field(default_factory=list)

    @property
    def succeeded(self) -> bool:
        return self.status == SUCCEEDED


class ChildProcess:
    """A child Python process that reports progress as JSON lines on stdout.

    Args:
        args: arguments after the interpreter (e.g. ``["-m", "svreg_core.cli", "register", ...]``).
        python: interpreter (default :func:`python_executable`).
        env: environment (default :func:`child_environment` with the bundled engine).
        on_event: called with each JSON event (a dict) in the thread that calls ``poll``/``wait``.
        on_log: called with each other output line.
        device: the requested device, to phrase out-of-memory advice.
        stdin: give the child a pipe as standard input (:meth:`send`); else it reads nothing.
    """

    def __init__(self, args: Sequence[str], *, python: str | None = None, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None, on_event: Callable[[dict[str, Any]], None] | None = None,
                 on_log: Callable[[str], None] | None = None, device: str | None = None,
                 stdin: bool = False) -> None:
        self.command = [python or python_executable(), *[str(a) for a in args]]
        self.env = env if env is not None else child_environment(engine_path())
        self.cwd = str(cwd) if cwd is not None else None
        self.on_event = on_event
        self.on_log = on_log
        self.device = device
        self.stdin = stdin
        self.process: subprocess.Popen | None = None
        self.result: RunResult | None = None
        self.events: list[dict[str, Any]] = []
        self._queue: queue.Queue = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._log_tail: collections.deque[str] = collections.deque(maxlen=40)
        self._error_event: dict[str, Any] | None = None
        self._done_event: dict[str, Any] | None = None
        self._cancelled = False
        self._stop_reason = "cancelled by the user."  # the message of a run stopped from here
        self._stop_deadline: float | None = None
        self._group_killed = False

    # ---- lifecycle

    def start(self) -> ChildProcess:
        """Start the process (in a new process group / session) and its reader threads."""
        if self.process is not None:
            raise RuntimeError("this process was already started")
        kwargs: dict[str, Any] = {}
        if os.name == "nt":
            flags = getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0) | getattr(subprocess, "CREATE_NO_WINDOW", 0)
            kwargs["creationflags"] = flags
        else:
            kwargs["start_new_session"] = True
        try:
            self.process = subprocess.Popen(self.command, stdin=subprocess.PIPE if self.stdin else subprocess.DEVNULL,
                                            stdout=subprocess.PIPE,
                                            stderr=subprocess.PIPE, env=self.env, cwd=self.cwd, **kwargs)
        except OSError as exc:
            self.result = RunResult(FAILED, None, f"could not start the registration engine "
                                    f"({self.command[0]}): {exc.strerror or exc}.")
            raise
        for stream, name in ((self.process.stdout, "stdout"), (self.process.stderr, "stderr")):
            t = threading.Thread(target=self._read, args=(stream, name), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def _read(self, stream, name: str) -> None:
        for raw in iter(stream.readline, b""):
            self._queue.put((name, raw.decode("utf-8", errors="replace").rstrip("\r\n")))
        stream.close()
        self._queue.put((name, None))

    @property
    def running(self) -> bool:
        return self.process is not None and self.result is None

    def send(self, message: dict[str, Any]) -> bool:
        """Write ``message`` as one JSON line to the child's standard input (started with ``stdin=True``);
        ``False`` when the child has gone (its end is then seen by :meth:`poll`). A short line: the write does
        not wait for the child to read it."""
        pipe = self.process.stdin if self.process is not None and self.result is None else None
        if pipe is None:
            return False
        try:
            pipe.write((json.dumps(message) + "\n").encode("utf-8"))
            pipe.flush()
        except (OSError, ValueError):  # BrokenPipeError: the child has ended; ValueError: closed
            return False
        return True

    def close_input(self) -> None:
        """Close the child's standard input: it reads the end of its input."""
        if self.process is not None and self.process.stdin is not None:
            try:
                self.process.stdin.close()
            except OSError:  # the child has gone: the buffered bytes cannot be written
                pass

    def poll(self) -> bool:
        """Handle the output that has arrived; return ``True`` while the process is still running."""
        if self.process is None or self.result is not None:
            return False
        while True:
            try:
                name, line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self._handle(name, line)
        alive = self.process.poll() is None
        if self._stop_deadline is not None:
            if alive and time.monotonic() > self._stop_deadline:
                _signal_tree(self.process, hard=True)
            elif not alive and not self._group_killed:
                self._group_killed = True
                _signal_tree(self.process, hard=True)  # grandchildren must not outlive a stopped run
        if alive or any(t.is_alive() for t in self._threads):
            return True
        # the process ended and both streams are drained: flush what is left, then finish
        while not self._queue.empty():
            name, line = self._queue.get_nowait()
            if line is not None:
                self._handle(name, line)
        self._finish()
        return False

    def wait(self, timeout: float | None = None, interval: float = 0.05) -> RunResult:
        """Block until the process ends (calling the callbacks); stop it after ``timeout`` seconds (the result
        then says so)."""
        t0 = time.monotonic()
        while self.poll():
            if timeout is not None and time.monotonic() - t0 > timeout and self._stop_deadline is None:
                self.request_stop(reason=time_limit_message(timeout))
            time.sleep(interval)
        assert self.result is not None
        return self.result

    def request_stop(self, grace: float = TERMINATE_GRACE_S, reason: str | None = None) -> None:
        """Ask the process tree to stop without waiting: SIGTERM now, SIGKILL from ``poll`` after ``grace`` s.

        On Windows the tree is ended at once (``taskkill /T /F``). The run ends as *cancelled*, with ``reason``
        as its message (default: cancelled by the user).
        """
        if self.process is None or self.result is not None or self._stop_deadline is not None:
            return
        self._cancelled = True
        if reason:
            self._stop_reason = reason
        self._stop_deadline = time.monotonic() + grace
        _signal_tree(self.process, hard=os.name == "nt")

    def cancel(self, grace: float = TERMINATE_GRACE_S, reason: str | None = None) -> RunResult | None:
        """Stop the process tree (see :meth:`request_stop`) and block until it has ended and been reaped."""
        if self.process is None or self.result is not None:
            return self.result
        self.request_stop(grace, reason)
        while self.poll():
            time.sleep(0.02)
        return self.result

    # ---- output handling

    def _handle(self, name: str, line: str) -> None:
        event = None
        if name == "stdout" and line.startswith("{"):
            try:
                event = json.loads(line)
            except ValueError:
                event = None
        if isinstance(event, dict) and "event" in event:
            self.events.append(event)
            if event["event"] == "error":
                self._error_event = event
            elif event["event"] == "done":
                self._done_event = event
            if self.on_event is not None:
                self.on_event(event)
            return
        if line.strip():
            self._log_tail.append(line)
        if self.on_log is not None:
            self.on_log(line)

    def _finish(self) -> None:
        self.close_input()
        code = self.process.returncode
        tail = list(self._log_tail)
        if self._cancelled:
            self.result = RunResult(CANCELLED, code, self._stop_reason, None, tail)
        elif code == 0 and self._error_event is None:
            self.result = RunResult(SUCCEEDED, code, "", self._done_event, tail)
        elif self._error_event is None and code is not None and code < 0:  # POSIX: ended by a signal
            self.result = RunResult(FAILED, code, signal_message(-code), None, tail)
        else:
            if self._error_event is not None:
                text = str(self._error_event.get("message", ""))
            else:
                text = "\n".join(tail) or f"the engine exited with status {code}."
            self.result = RunResult(FAILED, code, plain_message(text, self.device), None, tail)


class PreviewProcess(ChildProcess):
    """``svreg_core.cli preview``: one long-lived child that answers request lines (:meth:`submit`).

    Events carrying a request's ``id`` go to that request's :class:`PreviewCall`; the others (start-up
    progress, the ``ready`` event) to the oldest request not answered yet, else to ``on_event``.
    """

    def __init__(self, args: Sequence[str], *, on_event: Callable[[dict[str, Any]], None] | None = None,
                 **kwargs: Any) -> None:
        super().__init__(args, stdin=True, on_event=self._dispatch, **kwargs)
        self._forward = on_event
        self._calls: dict[int, PreviewCall] = {}
        self._submitted = 0
        self.ready: dict[str, Any] | None = None

    def submit(self, fields: dict[str, Any], on_event: Callable[[dict[str, Any]], None] | None = None) -> PreviewCall:
        """Send one request (``fields`` of ``svreg preview``'s request line; an ``id`` is added) and return
        its :class:`PreviewCall`; the engine answers requests one at a time, in order."""
        self._submitted += 1
        call = PreviewCall(self, self._submitted, on_event)
        self._calls[call.id] = call
        self.send({**fields, "id": call.id})  # a child that has gone fails the call when it is polled
        return call

    @property
    def pending(self) -> int:
        """Requests sent and not answered yet."""
        return len(self._calls)

    def _dispatch(self, event: dict[str, Any]) -> None:
        if event.get("event") == "ready":
            self.ready = event
        call = self._calls.get(event["id"]) if "id" in event else next(iter(self._calls.values()), None)
        if "id" in event and event.get("event") in ("done", "error"):
            if event.get("event") == "error":
                self._error_event = None  # a bad request's answer; the engine serves on
            if call is not None:
                del self._calls[call.id]
                call._answer(event)
        target = call.on_event if call is not None else self._forward
        if target is not None:
            target(event)


class PreviewCall:
    """One request to a :class:`PreviewProcess`, followed like a :class:`ChildProcess` (:meth:`poll`,
    :meth:`request_stop`, :meth:`cancel`, :attr:`result`), so that a job runs on it as on a child of its own.

    ``request_stop`` drops the answer (the run ends as *cancelled*) but lets the engine finish the
    request and serve on; ``cancel`` ends the whole engine (its process tree).
    """

    def __init__(self, engine: PreviewProcess, ident: int,
                 on_event: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.engine, self.id, self.on_event = engine, ident, on_event
        self.result: RunResult | None = None
        self.stopped = False

    @property
    def command(self) -> list[str]:
        return self.engine.command

    @property
    def running(self) -> bool:
        return self.result is None

    def _answer(self, event: dict[str, Any]) -> None:
        tail = list(self.engine._log_tail)
        if self.stopped:
            self.result = RunResult(CANCELLED, None, "superseded by a newer request.", None, tail)
        elif event["event"] == "done":
            self.result = RunResult(SUCCEEDED, None, "", event, tail)
        else:
            self.result = RunResult(FAILED, None, plain_message(str(event.get("message", "")), self.engine.device),
                                    None, tail)

    def poll(self) -> bool:
        """Handle the engine's new output; ``True`` until this request is answered or the engine has ended."""
        if self.result is not None:
            return False
        alive = self.engine.poll()
        if self.result is None and not alive:  # the engine ended without answering
            ended = self.engine.result
            status = CANCELLED if self.stopped or ended.status == CANCELLED else FAILED
            message = ended.message or "the preview engine stopped without an answer."
            if status == CANCELLED:  # the engine's own stop reason when it was stopped (e.g. a time limit)
                message = ended.message if ended.status == CANCELLED else "cancelled by the user."
            self.result = RunResult(status, ended.returncode, message, None, ended.log_tail)
        return self.result is None

    def request_stop(self, grace: float = TERMINATE_GRACE_S) -> None:
        """Drop this request's answer without waiting (the engine finishes it and serves on)."""
        self.stopped = True

    def cancel(self, grace: float = TERMINATE_GRACE_S, reason: str | None = None) -> RunResult | None:
        """End the engine's process tree (blocking) and this request with it (``reason``: as
        :meth:`ChildProcess.request_stop`)."""
        self.stopped = True
        self.engine.cancel(grace, reason)
        self.poll()
        return self.result


def _signal_tree(process: subprocess.Popen, hard: bool) -> None:
    """Signal ``process`` and its descendants (it leads its own process group / session).

    POSIX: SIGTERM (``hard=False``) or SIGKILL to the whole process group. Windows: ``taskkill /T /F``.
    """
    if os.name == "nt":
        if process.poll() is None:
            subprocess.run(["taskkill", "/PID", str(process.pid), "/T", "/F"], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=False)
        return
    try:
        os.killpg(process.pid, signal.SIGKILL if hard else signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------------------------------
# the ``register`` command


def _plain_number(value: float) -> str:
    """``value`` in the fewest digits that read back to it, without an exponent (``repr`` writes -3.55e-15 for an
    ROI bound's rounding noise, which ``argparse`` before Python 3.14 takes for an option, not a negative number)."""
    import numpy as np

    return np.format_float_positional(float(value), unique=True, trim="-")


def time_limit_message(seconds: float) -> str:
    """The message of a run stopped because it ran past its time limit."""
    return f"stopped after {seconds:g} s: it ran past its time limit."


@dataclass
class RegisterRequest:
    """Arguments of ``svreg_core.cli register`` (files on disk; ``None`` = engine default).

    ``model`` (a shipped model's name or a checkpoint folder) selects the learned method: the network
    predicts the deformation and λ, then ``refine`` steps of pairwise optimisation of the same SPR loss
    start from that prediction (0 = the network only). Without ``model`` the pairwise optimiser runs.
    ``alpha_prime``/``lambda_max`` (with ``model``): the regularisation codes a HyperSPR model predicts
    for (inside its trained ranges) and refines with, or the loss of a plain model's refinement; ``None``:
    the model's own for the prediction, the preset's for the refinement.
    ``crop_fixed``: two opposite corners (world RAS mm, 6 numbers) of the box the fixed image is cropped to.
    ``outputs``: the engine's output names to write (``svreg register --outputs``); ``None``: all of them.
    ``gzip_level``: compression of the engine's ``.nii.gz`` files (``--gzip-level``, 0 = stored: fastest to
    write and read back); ``None``: the engine's default.
    """

    fixed: Path
    moving: Path
    output: Path
    fixed_labels: Path | None = None
    moving_labels: Path | None = None
    fixed_mask: Path | None = None
    moving_mask: Path | None = None
    labels: Sequence[int] | None = None
    preset: str = "brain-mri"
    similarity: str | None = None
    spr: bool = True
    affine: bool | None = None
    device: str = "auto"
    label_interpolation: str | None = None
    model: str | None = None
    refine: int | None = None
    alpha_prime: float | None = None
    lambda_max: float | None = None
    overwrite: bool = False
    crop_fixed: Sequence[float] | None = None
    outputs: Sequence[str] | None = None
    gzip_level: int | None = None

    def _input_arguments(self) -> list[str]:
        """The label maps, masks, labels to score and crop box (``svreg register`` and ``svreg preview``)."""
        args = []
        for flag, value in (("--fixed-labels", self.fixed_labels), ("--moving-labels", self.moving_labels),
                            ("--fixed-mask", self.fixed_mask), ("--moving-mask", self.moving_mask)):
            if value:
                args += [flag, str(value)]
        if self.labels:
            args += ["--labels", *[str(int(v)) for v in self.labels]]
        if self.crop_fixed is not None:
            args += ["--crop-fixed", *[_plain_number(v) for v in self.crop_fixed]]
        return args + ["--preset", str(self.preset)]

    def _engine_arguments(self) -> list[str]:
        """The affine stage, device, label interpolation and file compression (``svreg register`` and
        ``svreg preview``)."""
        args = []
        if self.affine is not None:
            args.append("--affine" if self.affine else "--no-affine")
        args += ["--device", self.device]
        if self.label_interpolation and self.moving_labels:
            args += ["--label-interpolation", self.label_interpolation]
        if self.gzip_level is not None:
            args += ["--gzip-level", str(int(self.gzip_level))]
        return args

    def preview_arguments(self) -> list[str]:
        """The arguments of ``svreg_core.cli preview`` for these inputs and ``model`` (a hyper model): the
        engine that registers at the codes of each request line (``output``, codes and
        ``outputs`` go into the requests)."""
        if not self.model:
            raise ValueError("a preview needs a learned model")
        return ["-m", "svreg_core.cli", "preview", str(self.fixed), str(self.moving), *self._input_arguments(),
                "--model", str(self.model), *self._engine_arguments()]

    def arguments(self) -> list[str]:
        """The child's arguments after the interpreter."""
        args = ["-m", "svreg_core.cli", "register", str(self.fixed), str(self.moving), "-o", str(self.output),
                *self._input_arguments()]
        if self.model:
            args += ["--model", str(self.model)]
            if self.refine is not None:
                args += ["--refine", str(int(self.refine))]
            for flag, value in (("--alpha-prime", self.alpha_prime), ("--lambda-max", self.lambda_max)):
                if value is not None:
                    args += [flag, repr(float(value))]
        if self.similarity:
            args += ["--similarity", self.similarity]
        if not self.spr:
            args.append("--no-spr")
        args += self._engine_arguments()
        if self.outputs is not None:
            args += ["--outputs", *self.outputs]
        if self.overwrite:
            args.append("--overwrite")
        args += ["--progress", "json"]
        return args


def start_registration(request: RegisterRequest, **kwargs: Any) -> ChildProcess:
    """Start ``svreg_core.cli register`` for ``request``; ``kwargs`` go to :class:`ChildProcess`."""
    kwargs.setdefault("device", request.device)
    return ChildProcess(request.arguments(), **kwargs).start()


def start_preview(request: RegisterRequest, **kwargs: Any) -> PreviewProcess:
    """Start ``svreg_core.cli preview`` for ``request``'s inputs and model; ``kwargs`` go to :class:`PreviewProcess`."""
    kwargs.setdefault("device", request.device)
    return PreviewProcess(request.preview_arguments(), **kwargs).start()
