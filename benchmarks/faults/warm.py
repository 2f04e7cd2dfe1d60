"""A warm interpreter that forks one process per CLI call (the default; ``--cold`` execs a fresh one).

Importing torch and MONAI takes most of a tiny-preset CLI call (5–10 s on 2 busy cores, against
well under a second of work), so a campaign of 140 cases would spend 20 minutes importing. The
server imports ``ldm_ood.cli`` and the modules its commands import lazily, once; for each request it
forks a child which, like ``python -m ldm_ood ARGS`` would: starts a new session, sets the umask,
the working folder and the environment it was given, sends stdout/stderr to the given files, runs
the Typer app, prints an uncaught exception's traceback and exits with the same status (a signal
kills it as it would the real process). Only the imports are shared; nothing of a call survives
into the next (each child is forked from the same clean parent).

Protocol (one Unix socket connection per call): the client sends one JSON line ``{"args", "cwd",
"env", "stdout", "stderr"}``; the server answers ``{"pid": N}`` at once and ``{"rc": R}`` when the
child ended (R = -signal when killed by one). The server is single-threaded (``select`` + ``waitpid``),
so forking it is safe.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

PRELOAD = (
    "ldm_ood.cli", "ldm_ood.methods.ldm.pipeline", "ldm_ood.methods.ltm.pipeline", "ldm_ood.methods.segment.pipeline",
    "ldm_ood.training.api", "ldm_ood.training.first_stage", "ldm_ood.training.ldm", "ldm_ood.training.transformer",
    "ldm_ood.evaluation.evaluate", "ldm_ood.models.loading", "ldm_ood.models.perceptual", "ldm_ood.data.transforms",
)


def _child(req: dict) -> None:
    code = 1
    try:
        os.setsid()
        os.umask(0o022)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        tempfile.tempdir = None  # TMPDIR is read again
        for fd, path, flags in ((0, os.devnull, os.O_RDONLY), (1, req["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, req["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            f = os.open(path, flags, 0o644)
            os.dup2(f, fd)
            os.close(f)
        sys.argv = ["ldm-ood", *req["args"]]
        from ldm_ood.cli import app

        try:
            app(args=req["args"], prog_name="ldm-ood")
            code = 0
        except SystemExit as e:
            if e.code is None:
                code = 0
            elif isinstance(e.code, int):
                code = e.code
            else:
                print(e.code, file=sys.stderr)
                code = 1
        except BaseException:  # what the interpreter does with an uncaught exception
            traceback.print_exc()
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def serve(path: str) -> None:
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except Exception:  # a module another branch renamed: imported lazily by the child instead
            pass
    import torch  # noqa: F401  (the point of the server)

    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(16)
    print("ready", flush=True)
    waiting: dict[int, socket.socket] = {}
    pending: dict[socket.socket, bytes] = {}
    while True:
        r, _, _ = select.select([srv, *pending], [], [], 0.02)
        for s in r:
            if s is srv:
                conn, _ = srv.accept()
                pending[conn] = b""
                continue
            chunk = s.recv(1 << 20)
            pending[s] += chunk
            if not chunk or pending[s].endswith(b"\n"):
                data = pending.pop(s)
                if not data.strip():
                    s.close()
                    continue
                req = json.loads(data)
                if req.get("stop"):
                    return
                sys.stdout.flush()
                sys.stderr.flush()
                pid = os.fork()
                if pid == 0:
                    for other in (srv, s, *waiting.values(), *pending):
                        other.close()
                    _child(req)
                waiting[pid] = s
                s.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    conn.sendall(json.dumps({"rc": rc}).encode() + b"\n")
                finally:
                    conn.close()


class Server:
    """The warm server as the harness uses it: start once, :meth:`start_call` per CLI call, :meth:`stop`."""

    def __init__(self, work: Path, env: dict[str, str]):
        self.sock_path = str(work / "warm.sock")
        Path(self.sock_path).unlink(missing_ok=True)
        code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parents[1])!r}); "
                f"from faults.warm import serve; serve({self.sock_path!r})")
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE, cwd=str(work),
                                     stdin=subprocess.DEVNULL)
        line = self.proc.stdout.readline()
        if line.strip() != b"ready":
            raise RuntimeError("warm server did not start")

    def start_call(self, args: list[str], cwd: str, env: dict[str, str], stdout: str, stderr: str) -> "WarmCall":
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(self.sock_path)
        s.sendall(json.dumps({"args": args, "cwd": cwd, "env": env, "stdout": stdout, "stderr": stderr}).encode()
                  + b"\n")
        return WarmCall(s)

    def stop(self) -> None:
        try:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.connect(self.sock_path)
            s.sendall(b'{"stop": true}\n')
            s.close()
            self.proc.wait(timeout=10)
        except Exception:
            self.proc.kill()
        Path(self.sock_path).unlink(missing_ok=True)


class WarmCall:
    """A running forked CLI call: ``pid``, ``poll()``, ``wait(timeout)`` like ``subprocess.Popen``."""

    def __init__(self, sock: socket.socket):
        self.sock = sock
        self.buf = b""
        self.returncode: int | None = None
        self.pid = int(self._message(None)["pid"])

    def _message(self, timeout: float | None) -> dict | None:
        end = None if timeout is None else time.monotonic() + timeout
        while b"\n" not in self.buf:
            left = None if end is None else max(0.0, end - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return None
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("warm server connection closed")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def poll(self) -> int | None:
        if self.returncode is None:
            msg = self._message(0)
            if msg is not None:
                self.returncode = int(msg["rc"])
                self.sock.close()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            msg = self._message(timeout)
            if msg is None:
                raise subprocess.TimeoutExpired("ldm-ood", timeout)
            self.returncode = int(msg["rc"])
            self.sock.close()
        return self.returncode
