"""Parent side of ``worker.py``: start a runtime process, send it requests, read its replies with a timeout."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

#: Seconds a worker may take to import its runtime and load the model.
START_TIMEOUT_S = 300.0
#: Seconds one request may take (a deep model at batch 256 on one slow core is a few seconds).
REQUEST_TIMEOUT_S = 600.0


class WorkerError(RuntimeError):
    """A worker failed to start, crashed, timed out or answered with an error."""


class Worker:
    """A ``python -m fer_sdk.benchmarks.worker`` process serving one runtime configuration."""

    def __init__(self, spec: dict, *, log_dir: Path, name: str, env: dict[str, str] | None = None) -> None:
        self.spec = spec
        self.name = name
        self.log_path = Path(log_dir) / f"{len(list(Path(log_dir).iterdir())):02d}-{_safe(name)}.log"
        self.info: dict = {}
        full_env = dict(os.environ)
        full_env.update(env or {})
        self._log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "fer_sdk.benchmarks.worker", json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
            encoding="utf-8",
            env=full_env,
            cwd=log_dir,  # `python -m` puts the cwd first on sys.path: never let a source checkout shadow the package
        )
        self._replies: queue.Queue = queue.Queue()
        threading.Thread(target=self._read, daemon=True, name=f"bench-{name}").start()

    def _read(self) -> None:
        try:
            for line in self._proc.stdout:  # type: ignore[union-attr]
                self._replies.put(line)
        except (OSError, ValueError):  # the pipe was closed by close()
            pass
        self._replies.put(None)  # EOF: the process exited

    def _receive(self, timeout: float) -> dict:
        try:
            line = self._replies.get(timeout=timeout)
        except queue.Empty:
            self.close(kill=True)
            raise WorkerError(f"{self.name}: no answer within {timeout:.0f} s") from None
        if line is None:
            self._proc.wait(timeout=10)
            raise WorkerError(f"{self.name}: exited with code {self._proc.returncode}. {self.log_tail()}")
        try:
            reply = json.loads(line)
        except json.JSONDecodeError:
            raise WorkerError(f"{self.name}: unreadable reply {line[:200]!r}") from None
        if not reply.get("ok"):
            raise WorkerError(f"{self.name}: {reply.get('error')}")
        return reply

    def wait_ready(self, timeout: float = START_TIMEOUT_S) -> dict:
        self.info = self._receive(timeout)
        return self.info

    def request(self, timeout: float = REQUEST_TIMEOUT_S, **request) -> dict:
        if self._proc.poll() is not None:
            raise WorkerError(f"{self.name}: is not running (exit code {self._proc.returncode})")
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(json.dumps(request) + "\n")
            self._proc.stdin.flush()
        except (BrokenPipeError, OSError) as err:
            raise WorkerError(f"{self.name}: cannot send a request ({err}). {self.log_tail()}") from None
        return self._receive(timeout)

    def log_tail(self, lines: int = 5) -> str:
        try:
            self._log.flush()
            text = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return ("Last log lines: " + " | ".join(text[-lines:])) if text else ""

    def close(self, *, kill: bool = False) -> None:
        """Ask the worker to quit (or kill it); always reaps the process and closes its log."""
        if self._proc.poll() is None:
            if not kill:
                try:
                    self._proc.stdin.write('{"op": "quit"}\n')  # type: ignore[union-attr]
                    self._proc.stdin.flush()  # type: ignore[union-attr]
                    self._proc.wait(timeout=30)
                except (OSError, subprocess.TimeoutExpired):
                    pass
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait(timeout=30)
        for stream in (self._proc.stdin, self._proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        self._log.close()


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:80]
