"""Run nbgrader commands without paying nbgrader's start-up for every grading.

Importing nbgrader costs several CPU seconds (its server extensions pull in the Jupyter
server, SQLAlchemy, nbconvert; and jsonschema imports an optional IRI validator,
``rfc3987_syntax``, which builds a parser at import time and alone costs ~3 CPU-s, for a
format the notebook schema never uses). Two ways to run ``nbgrader ARGS``, with the same
command line, configuration and exit status as ``python -m nbgrader ARGS``:

* ``python -m graders.nbgrader_runner ARGS``: one process, without the IRI validator;
* ``NbgraderServer``: one long-lived process (per grading slot) that imports nbgrader and the
  course's preprocessors once, then forks a fresh child per command. The child gets the
  command's environment, working directory and output file and exits with nbgrader's status;
  nothing of one command's state survives into the next (each is its own process, forked
  from a server that never ran a command itself). Only the grader's trusted code runs in
  these processes: student code runs in graders/sandbox.py's sandbox, as before.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def skip_slow_optional_imports() -> None:
    """jsonschema uses rfc3987_syntax only when importable: make it not importable."""
    sys.modules.setdefault("rfc3987_syntax", None)


def _nbgrader_main(argv) -> int:
    from nbgrader.apps.nbgraderapp import main
    sys.argv = ["nbgrader", *argv]
    try:
        main()
    except SystemExit as e:
        code = e.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    return 0


def _child(req) -> None:
    """In the forked child: become the command (never returns)."""
    code = 1
    try:
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        fd = os.open(req["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.close(devnull)
        code = _nbgrader_main(req["argv"])
    except BaseException:  # noqa: BLE001 - reported through the exit status and the log
        import traceback
        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def _serve() -> int:
    """The server loop: one JSON request per line on stdin, one JSON reply per line."""
    skip_slow_optional_imports()
    sys.path.insert(0, str(REPO))
    import nbgrader.apps.nbgraderapp  # noqa: F401 - the point: import once, fork per command
    import graders.preprocessors  # noqa: F401
    replies = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)              # stray prints must not corrupt the replies
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(req)
        _, status, usage = os.wait4(pid, 0)
        replies.write(json.dumps({"returncode": os.waitstatus_to_exitcode(status),
                                  "cpu_s": usage.ru_utime + usage.ru_stime}) + "\n")
        replies.flush()
    return 0


class NbgraderServer:
    """A preloaded nbgrader process; ``run(argv, cwd, env, log)`` -> (returncode, cpu_s).

    Not shared between threads concurrently (one per grading slot); ``close()`` ends it."""

    def __init__(self):
        self.proc = None
        self.lock = threading.Lock()

    def _start(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + [p for p in [env.get("PYTHONPATH")]
                                                           if p])
        self.proc = subprocess.Popen([sys.executable, "-m", "graders.nbgrader_runner",
                                      "--serve"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True, cwd=REPO, env=env)

    def run(self, argv, cwd, env, log) -> tuple[int, float]:
        with self.lock:
            if self.proc is None or self.proc.poll() is not None:
                self._start()
            req = {"argv": [str(a) for a in argv], "cwd": str(cwd),
                   "env": {str(k): str(v) for k, v in env.items()}, "log": str(log)}
            try:
                self.proc.stdin.write(json.dumps(req) + "\n")
                self.proc.stdin.flush()
                line = self.proc.stdout.readline()
            except (BrokenPipeError, OSError):
                line = ""
            if not line:
                self.close()
                raise RuntimeError("the nbgrader server died; see the job's log")
            reply = json.loads(line)
            return reply["returncode"], reply["cpu_s"]

    def close(self) -> None:
        if self.proc is not None:
            try:
                self.proc.stdin.close()
                self.proc.wait(timeout=60)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait()
            self.proc = None


if __name__ == "__main__":
    if sys.argv[1:] == ["--serve"]:
        sys.exit(_serve())
    skip_slow_optional_imports()
    sys.exit(_nbgrader_main(sys.argv[1:]))
