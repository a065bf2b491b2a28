"""Run one untrusted command in a throw-away sandbox: ``run_isolated(cmd, rw_dir=..., ...)``.

Grading runs student code (library files, notebook cells, C++ compiled from their sources).
Each run gets, with Linux namespaces made by util-linux ``unshare`` (no daemon, no container):

* its own **mount namespace** with a private root: a small tmpfs holding only the system
  directories (``/usr``, ``/etc``, ``/lib*``, ``/bin``, ``/sbin``, ``/sys``), this Python
  installation and its virtual environment, all read-only, and the caller's ``ro_binds``
  (read-only). Nothing else of the host exists inside: not the instructor repository,
  ``graders/``, the gradebook, other students' files or ``release/``;
* a **writable area** ``SANDBOX_RW`` (``/sandbox/work``): a tmpfs of ``limits.disk_bytes`` into
  which ``rw_dir`` is copied before the run and from which its regular files are copied back
  after it (symbolic links and special files are dropped). A run never writes to a host file;
  ``/tmp`` is a tmpfs too. With ``readonly_rw=True`` the copy is mounted read-only once it is
  made (the grading workspace: the released tests, ``course/`` and the library stay what
  the grader put there), and only ``/tmp`` (``TMPDIR``, ``HOME``) is writable;
* its own **PID namespace** (everything it started is killed when it ends), **network
  namespace** (loopback only, no route out), IPC and UTS namespaces, a new session;
* an **unprivileged user** (a uid of its own, no groups, no capabilities), a **clean
  environment** (only ``PATH``, ``HOME``, ``LANG``, ``TMPDIR`` and the caller's ``env``);
* **limits**: CPU seconds and address space per process, processes per uid, size of one file,
  the writable area, wall-clock time, and bytes of stdout / stderr / result kept.

The command may write a result (bytes) to file descriptor ``RESULT_FD`` (3): a pipe only the
command's first process holds (its children do not inherit it unless they ask), read with the
``limits.result_bytes`` cap into ``SandboxResult.result``.

``probe()`` says which isolation this machine allows; every ``SandboxResult`` carries
``isolation`` (a dict: method, namespaces, uid, limits) for the grade report. Without
``unshare`` or root, ``run_isolated`` raises ``SandboxUnavailable`` unless
``allow_unisolated=True``, which runs the command as a plain child process (clean
environment, limits, own session, whole process group killed) and says so in ``isolation``.

The sandbox's init is this file itself, run as PID 1 of the new namespaces
(``python sandbox.py --init <config>``): it builds the root, starts the command, enforces the
wall clock, copies the writable area back and exits, which kills whatever is left.
"""
from __future__ import annotations

import ctypes
import dataclasses
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SANDBOX_RW = "/sandbox/work"
SANDBOX_HOME = "/tmp/home"          # on the /tmp tmpfs: never copied back
RESULT_FD = 3
UNSHARE_FLAGS = ["--mount", "--pid", "--fork", "--kill-child", "--net", "--ipc", "--uts",
                 "--propagation", "private"]
NAMESPACES = ["mount", "pid", "net", "ipc", "uts"]
SYSTEM_DIRS = ["/usr", "/etc", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/sys"]
DEVICES = ["null", "zero", "full", "random", "urandom", "tty"]
UID_BASE, UID_SPAN = 200000, 50000


class SandboxUnavailable(RuntimeError):
    """This machine cannot isolate a run (no unshare, not root); see ``probe()``."""


@dataclass(frozen=True)
class Limits:
    """Resource limits of one run (None: no limit of that kind)."""
    cpu_seconds: int | None = 1800        # per process (RLIMIT_CPU)
    wall_seconds: float | None = 3600     # the whole run, then everything is killed
    memory_bytes: int | None = 8 << 30    # address space per process (RLIMIT_AS)
    processes: int | None = 512           # processes of the sandbox's uid (RLIMIT_NPROC)
    file_bytes: int | None = 1 << 30      # one file (RLIMIT_FSIZE)
    disk_bytes: int = 2 << 30             # the writable area (tmpfs size); /tmp gets the same
    output_bytes: int = 1 << 20           # stdout and stderr kept, each
    result_bytes: int = 64 << 20          # bytes kept from RESULT_FD


@dataclass
class SandboxResult:
    returncode: int                       # the command's exit status; -N: killed by signal N
    stdout: bytes
    stderr: bytes
    result: bytes | None                  # what the command wrote to RESULT_FD (None: nothing)
    timed_out: bool
    truncated: list = field(default_factory=list)   # "stdout", "stderr", "result" if capped
    isolation: dict = field(default_factory=dict)
    seconds: float = 0.0


def cpu_seconds() -> dict:
    """{'self', 'children'}: CPU seconds (user + system) of this process and of its waited-for
    children (grading costs are measured in CPU time: wall time lies on a loaded machine)."""
    import resource
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"self": me.ru_utime + me.ru_stime, "children": kids.ru_utime + kids.ru_stime}


# ---------------------------------------------------------------------------------- probe

_PROBE: dict | None = None


def probe() -> dict:
    """{'isolated': bool, 'method': 'unshare' | 'none', 'namespaces': [...], 'reason': str}."""
    global _PROBE
    if _PROBE is not None:
        return _PROBE
    exe = shutil.which("unshare")
    if exe is None:
        _PROBE = {"isolated": False, "method": "none", "namespaces": [],
                  "reason": "util-linux `unshare` not found"}
    elif os.geteuid() != 0:
        _PROBE = {"isolated": False, "method": "none", "namespaces": [],
                  "reason": "not root: namespaces, mounts and the switch to an unprivileged "
                            "uid need root (run grading as root, e.g. in a container)"}
    else:
        res = subprocess.run([exe, *UNSHARE_FLAGS, "--", "true"], capture_output=True,
                             text=True, timeout=30)
        if res.returncode == 0:
            _PROBE = {"isolated": True, "method": "unshare", "namespaces": list(NAMESPACES),
                      "reason": ""}
        else:
            _PROBE = {"isolated": False, "method": "none", "namespaces": [],
                      "reason": f"unshare {' '.join(UNSHARE_FLAGS)} failed: "
                                f"{res.stderr.strip()[:200]}"}
    return _PROBE


def sandbox_uid(rw_dir) -> int:
    """A uid of this run's own (RLIMIT_NPROC counts per uid, so parallel runs do not share)."""
    h = hashlib.sha256(f"{os.getpid()}:{rw_dir}:{time.time_ns()}".encode()).digest()
    return UID_BASE + int.from_bytes(h[:4], "little") % UID_SPAN


# ---------------------------------------------------------------------------------- caller

def _python_dirs():
    """The interpreter's installation and virtual environment (read-only inside)."""
    dirs = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}
    exe = os.path.realpath(sys.executable)
    dirs.add(os.path.dirname(os.path.dirname(exe)))
    return sorted(d for d in dirs if d and d != "/" and os.path.isdir(d))


def _clean_env(env, uid_home):
    venv_bin = os.path.join(sys.prefix, "bin")
    base = {"PATH": f"{venv_bin}:/usr/local/bin:/usr/bin:/bin", "HOME": uid_home,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "TMPDIR": "/tmp",
            "PYTHONDONTWRITEBYTECODE": "1",
            # no ~/.local site-packages: HOME is writable, so a .pth or usercustomize planted
            # there would run in every later interpreter of the run
            "PYTHONNOUSERSITE": "1"}
    base.update({str(k): str(v) for k, v in (env or {}).items()})
    return base


def run_isolated(cmd, *, rw_dir, ro_binds=(), workdir=None, limits: Limits = Limits(),
                 env=None, copy_back=True, allow_unisolated=False,
                 stdin: bytes | None = None, readonly_rw=False) -> SandboxResult:
    """Run ``cmd`` (argv list) in a fresh sandbox; see the module docstring.

    rw_dir: host directory copied into the writable area ``SANDBOX_RW`` (and, with
        ``copy_back``, updated from it afterwards: new and changed regular files, deletions).
    ro_binds: ``[(host_path, sandbox_path), ...]`` read-only files or directories
        (sandbox paths absolute, outside ``SANDBOX_RW``).
    workdir: working directory inside (default ``SANDBOX_RW``).
    env: extra environment variables (the rest of the host's environment is not passed).
    stdin: bytes the command reads on its standard input (default: nothing).
    readonly_rw: mount the copy of ``rw_dir`` read-only (then nothing is copied back); only
        ``/tmp`` stays writable. Unisolated, the host directory cannot be protected: the
        isolation record says so.
    """
    rw_dir = Path(rw_dir).resolve()
    if not rw_dir.is_dir():
        raise ValueError(f"rw_dir {rw_dir} is not a directory: create it (the files the "
                         f"command needs) before calling run_isolated")
    binds = []
    for host, inside in ro_binds:
        host = os.path.realpath(host)
        if not os.path.exists(host):
            raise ValueError(f"read-only bind source {host} does not exist")
        if not str(inside).startswith("/") or str(inside).startswith(SANDBOX_RW):
            raise ValueError(f"sandbox path {inside!r} must be absolute and outside {SANDBOX_RW}")
        binds.append((host, str(inside)))
    pr = probe()
    if not pr["isolated"] and not allow_unisolated:
        raise SandboxUnavailable(
            f"cannot isolate grading on this machine ({pr['reason']}); pass "
            f"--allow-unisolated to grade without a sandbox (student code then sees the host)")
    if not pr["isolated"]:
        # no private root: the sandbox paths the caller used name the host paths directly
        mapping = [(SANDBOX_RW, str(rw_dir))] + [(inside, host) for host, inside in binds]

        def host_path(v):
            v = str(v)
            for inside, host in mapping:
                if v == inside or v.startswith(inside + "/"):
                    return host + v[len(inside):]
            return v
        cmd = [host_path(c) for c in cmd]
        workdir = host_path(workdir) if workdir else None
        env = {k: host_path(v) for k, v in (env or {}).items()}
    uid = sandbox_uid(rw_dir) if pr["isolated"] else os.getuid()
    home = SANDBOX_HOME if pr["isolated"] else tempfile.mkdtemp(prefix="nq-home-")
    cfg = {"cmd": [str(c) for c in cmd], "rw_dir": str(rw_dir), "binds": binds,
           "workdir": workdir or (SANDBOX_RW if pr["isolated"] else str(rw_dir)),
           "env": _clean_env(env, home), "uid": uid, "limits": dataclasses.asdict(limits),
           "copy_back": copy_back and not readonly_rw, "readonly_rw": bool(readonly_rw),
           "python_dirs": _python_dirs()}
    isolation = {"method": pr["method"], "namespaces": pr["namespaces"],
                 "uid": uid, "unprivileged": uid != 0,
                 "filesystem": "private root: system dirs, python, ro binds, tmpfs work area"
                 if pr["isolated"] else "host filesystem (NOT isolated)",
                 "network": "none (loopback only)" if pr["isolated"] else "host (NOT isolated)",
                 "workspace": ("read-only" if pr["isolated"] else "writable (NOT protected)")
                 if readonly_rw else "writable copy",
                 "limits": dataclasses.asdict(limits)}
    if not pr["isolated"]:
        isolation["reason"] = pr["reason"]
    t0 = time.time()
    with tempfile.TemporaryDirectory(prefix="nq-sandbox-") as tmp:
        cfg["state"] = tmp
        cfg_path = Path(tmp) / "config.json"
        if stdin is not None:
            Path(tmp, "stdin").write_bytes(stdin)
            cfg["stdin"] = str(Path(tmp, "stdin"))
        cfg_path.write_text(json.dumps(cfg))
        init = [sys.executable, "-I", "-S", os.path.abspath(__file__), "--init", str(cfg_path)]
        if pr["isolated"]:
            argv = [shutil.which("unshare"), *UNSHARE_FLAGS, "--", *init]
        else:
            cfg["unisolated"] = True
            cfg_path.write_text(json.dumps(cfg))
            argv = init
        # the init enforces the wall clock itself; this is the backstop if it hangs
        backstop = None if limits.wall_seconds is None else limits.wall_seconds + 300
        try:
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=backstop)
            init_err = proc.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired:
            init_err = "sandbox init did not finish"
        out_path = Path(tmp) / "outcome.json"
        if not out_path.exists():
            raise RuntimeError(f"sandbox init failed before running the command: {init_err[-2000:]}")
        outcome = json.loads(out_path.read_text())
        if "error" in outcome:
            raise RuntimeError(f"sandbox init failed: {outcome['error']}")

        def _read(name):
            p = Path(tmp) / name
            return p.read_bytes() if p.exists() else b""
        result = _read("result") if outcome["has_result"] else None
        return SandboxResult(returncode=outcome["returncode"], stdout=_read("stdout"),
                             stderr=_read("stderr"), result=result,
                             timed_out=outcome["timed_out"], truncated=outcome["truncated"],
                             isolation=isolation, seconds=time.time() - t0)


# ---------------------------------------------------------------------------------- init
# Everything below runs as PID 1 of the new namespaces (as root, before the switch to the
# sandbox uid), started with `python -I -S`: only the standard library.

MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18


def _mount(src, target, fstype, flags, data=""):
    libc = ctypes.CDLL(None, use_errno=True)
    r = libc.mount(src.encode() if src else None, target.encode(),
                   fstype.encode() if fstype else None, ctypes.c_ulong(flags),
                   data.encode() if data else None)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {src} -> {target} ({fstype}): {os.strerror(e)}")


def _bind_ro(src, target):
    if os.path.isdir(src):
        os.makedirs(target, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        open(target, "a").close()
    _mount(src, target, None, MS_BIND | MS_REC)
    _mount(None, target, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)


def _loopback_up():
    import fcntl
    import socket
    import struct
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        ifr = struct.pack("16sH14s", b"lo", 0, b"")
        flags = struct.unpack("16sH14s", fcntl.ioctl(s, 0x8913, ifr))[1]   # SIOCGIFFLAGS
        fcntl.ioctl(s, 0x8914, struct.pack("16sH14s", b"lo", flags | 1, b""))  # SIOCSIFFLAGS
    finally:
        s.close()


def _build_root(cfg, root):
    lim = cfg["limits"]
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    os.makedirs(root, exist_ok=True)
    _mount("tmpfs", root, "tmpfs", MS_NOSUID | MS_NODEV, "size=16m,mode=755")
    for d in SYSTEM_DIRS:
        if os.path.isdir(d) and not os.path.islink(d):
            _bind_ro(d, root + d)
        elif os.path.islink(d):
            os.symlink(os.readlink(d), root + d)
    # the tmpfs areas before the binds: a Python or a bind under /tmp (a clone in /tmp, say)
    # must lie on top of the private /tmp, not be hidden by it
    size = int(lim["disk_bytes"])
    for d in ("/dev/shm", "/tmp", SANDBOX_RW):
        os.makedirs(root + d, exist_ok=True)
        _mount("tmpfs", root + d, "tmpfs", MS_NOSUID | MS_NODEV,
               f"size={size},mode=1777" if d != SANDBOX_RW else f"size={size},mode=755")
    for d in cfg["python_dirs"]:
        if not os.path.exists(root + d):
            _bind_ro(d, root + d)
    for host, inside in cfg["binds"]:
        _bind_ro(host, root + inside)
    os.makedirs(root + "/dev", exist_ok=True)
    _mount("tmpfs", root + "/dev", "tmpfs", MS_NOSUID | MS_NOEXEC, "size=64k,mode=755")
    for dev in DEVICES + sorted(n for n in os.listdir("/dev") if n.startswith("nvidia")):
        if os.path.exists("/dev/" + dev):
            open(root + "/dev/" + dev, "a").close()
            _mount("/dev/" + dev, root + "/dev/" + dev, None, MS_BIND)
    for link, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):
        os.symlink(target, root + "/dev/" + link)
    os.makedirs(root + "/proc", exist_ok=True)
    _mount("proc", root + "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)


def _copy_tree(src, dest, uid):
    """Copy regular files and directories (no links, no special files) from src into dest."""
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        out = dest if rel == "." else os.path.join(dest, rel)
        os.makedirs(out, exist_ok=True)
        if uid is not None:
            os.chown(out, uid, uid)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for f in filenames:
            p = os.path.join(dirpath, f)
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            q = os.path.join(out, f)
            shutil.copyfile(p, q)
            shutil.copystat(p, q)
            os.chmod(q, os.stat(p).st_mode & 0o755)
            if uid is not None:
                os.chown(q, uid, uid)


def _sync_back(src, dest):
    """Make dest (host) hold src's regular files: changed ones rewritten, missing ones deleted."""
    seen = set()
    for dirpath, dirnames, filenames in os.walk(src):
        rel = os.path.relpath(dirpath, src)
        dirnames[:] = [d for d in dirnames if not os.path.islink(os.path.join(dirpath, d))]
        for f in filenames:
            p = os.path.join(dirpath, f)
            r = os.path.normpath(os.path.join(rel, f))
            if os.path.islink(p) or not os.path.isfile(p):
                continue
            seen.add(r)
            q = os.path.join(dest, r)
            st = os.stat(p)
            if os.path.isfile(q) and not os.path.islink(q):
                qs = os.stat(q)
                if qs.st_size == st.st_size and qs.st_mtime_ns == st.st_mtime_ns:
                    continue
            os.makedirs(os.path.dirname(q), exist_ok=True)
            if os.path.lexists(q):
                os.unlink(q)
            shutil.copyfile(p, q)
            os.utime(q, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.chmod(q, st.st_mode & 0o755)
    for dirpath, dirnames, filenames in os.walk(dest):
        rel = os.path.relpath(dirpath, dest)
        for f in filenames:
            r = os.path.normpath(os.path.join(rel, f))
            if r not in seen:
                os.unlink(os.path.join(dirpath, f))


def _drain(fd, path, cap, truncated, name):
    """Keep the first ``cap`` bytes read from ``fd``; read (and drop) the rest."""
    kept = total = 0
    with open(path, "wb") as fh:
        while True:
            try:
                chunk = os.read(fd, 1 << 16)
            except OSError:
                break
            if not chunk:
                break
            total += len(chunk)
            if kept < cap:
                part = chunk[:cap - kept]
                fh.write(part)
                kept += len(part)
    if total > cap:
        truncated.append(name)
    os.close(fd)


def _child_setup(cfg, root):
    import resource
    lim = cfg["limits"]
    isolated = not cfg.get("unisolated")

    def setup():
        os.setsid()
        if isolated:
            os.chroot(root)
            os.chdir("/")
            os.setgroups([])
            os.setgid(cfg["uid"])
            os.setuid(cfg["uid"])
        os.chdir(cfg["workdir"])
        for res, key in ((resource.RLIMIT_CPU, "cpu_seconds"), (resource.RLIMIT_AS, "memory_bytes"),
                         (resource.RLIMIT_NPROC, "processes"),
                         (resource.RLIMIT_FSIZE, "file_bytes")):
            if lim.get(key) is not None and not (key == "processes" and not isolated):
                resource.setrlimit(res, (int(lim[key]), int(lim[key])))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # too big a file: EFBIG, not a crash
    return setup


def _init(cfg_path):
    cfg = json.loads(Path(cfg_path).read_text())
    state = cfg["state"]
    lim = cfg["limits"]
    isolated = not cfg.get("unisolated")
    root = os.path.join(state, "root")
    outcome = {"returncode": -1, "timed_out": False, "truncated": [], "has_result": False}
    rw_inside = root + SANDBOX_RW if isolated else cfg["rw_dir"]
    try:
        if isolated:
            _build_root(cfg, root)
            _loopback_up()
            _copy_tree(cfg["rw_dir"], rw_inside, cfg["uid"])
            if cfg.get("readonly_rw"):
                # the sandbox uid has no capabilities: it can neither remount nor unmount it
                _mount(rw_inside, rw_inside, None, MS_BIND)
                _mount(None, rw_inside, None, MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID)
            os.makedirs(root + SANDBOX_HOME, exist_ok=True)
            os.chown(root + SANDBOX_HOME, cfg["uid"], cfg["uid"])
        else:
            os.makedirs(cfg["env"]["HOME"], exist_ok=True)
        import fcntl
        r_low, w_low = os.pipe()     # either may be fd 3: move both above it first
        r_res, w_res = (fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (r_low, w_low))
        os.close(r_low)
        os.close(w_low)
        os.dup2(w_res, RESULT_FD, inheritable=True)
        os.close(w_res)
        p_out, p_err = os.pipe(), os.pipe()
        stdin = open(cfg["stdin"], "rb") if cfg.get("stdin") else subprocess.DEVNULL
        proc = subprocess.Popen(cfg["cmd"], env=cfg["env"], stdin=stdin,
                                stdout=p_out[1], stderr=p_err[1], pass_fds=(RESULT_FD,),
                                preexec_fn=_child_setup(cfg, root), close_fds=True)
        os.close(RESULT_FD)
        os.close(p_out[1])
        os.close(p_err[1])
        threads = [threading.Thread(target=_drain, args=(fd, os.path.join(state, n), cap,
                                                          outcome["truncated"], n))
                   for fd, n, cap in ((p_out[0], "stdout", lim["output_bytes"]),
                                      (p_err[0], "stderr", lim["output_bytes"]),
                                      (r_res, "result", lim["result_bytes"]))]
        for t in threads:
            t.start()
        try:
            outcome["returncode"] = proc.wait(timeout=lim["wall_seconds"])
        except subprocess.TimeoutExpired:
            outcome["timed_out"] = True
        # end everything the command left behind: its session / process group, and in the
        # PID namespace every process (kill(-1) from PID 1 reaches all of them)
        for target in ((-1,) if isolated else ()) + (-proc.pid,):
            try:
                os.kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        if outcome["timed_out"]:
            outcome["returncode"] = proc.wait()
        for t in threads:
            t.join(timeout=30)
        outcome["has_result"] = os.path.getsize(os.path.join(state, "result")) > 0
        if isolated and cfg["copy_back"]:
            _sync_back(rw_inside, cfg["rw_dir"])
    except Exception as e:  # noqa: BLE001 - reported to the caller as the outcome
        outcome["error"] = f"{type(e).__name__}: {e}"
        print(outcome["error"], file=sys.stderr)
    Path(state, "outcome.json").write_text(json.dumps(outcome))
    return 0


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--init":
    sys.exit(_init(sys.argv[2]))
