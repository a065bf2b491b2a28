"""Kernel-side integrity guard of grading (runs inside the student's kernel).

graders/notebook_executor.py executes this file in a fresh kernel before the first cell, in a
namespace of its own with a private copy of the builtins, and calls ``install(event, key)``.
The guard then lives only in two audit hooks (``sys.addaudithook``, PEP 578): Python code
cannot remove a hook, and nothing else refers to the guard's functions, its state or its key,
so student code cannot reach them through names, classes, modules or the garbage collector.
The first hook holds the state and never raises; the second holds nothing but the refusal it
is told to raise, so the traceback of a refused operation leads to no guard state.

The executor talks to the guard with ``sys.audit(event, "call", method, nonce, args, box,
auth)`` from IPython user expressions: ``auth`` is an HMAC of the request under the key (a
nonce is accepted once), and the answer put in ``box`` carries an HMAC of the nonce and the
verdict, so neither a request nor an answer can be forged from student code.

* ``rebase()`` at install: snapshots of what the tests rely on: the builtins, ``sys``'s hooks,
  IPython's hooks (AST and input transformers, event callbacks, custom exception handler,
  the shell's, kernel's and session's methods), and the functions and classes of the
  standard library and of numpy, IPython, ipykernel, jupyter_client, traitlets, zmq, tornado;
* ``save(names)`` after each read-only cell: the helpers and values the tests rely on;
* ``restore(names)`` before each test cell puts all of it back and *arms* the guard. The
  executor sends the test cell's code inside a function (its variables are not globals a
  solution could read) followed by ``sys.audit(event, "seal")``: the seal counts only when it
  comes from a statement of the test cell itself (code IPython's ``run_code`` executed for
  that cell while armed), once, and it checks that nothing above changed while the test ran;
* ``verdict()`` after the test cell: "ok", "tampered: ..." or "not sealed: ...".

Refused (``PermissionError``; while armed the test also fails): reading objects through the
garbage collector, tracing and profiling hooks, other audit hooks, other threads' frames,
reading frames while the guard runs or, during a test, from code outside the Python
installation (the test's own frame holds its expected values), ctypes' raw memory access
from such code, opening a process's memory through ``/proc``, swapping the code or defaults
of an installed function, and making code under the test cell's or an installed file's name.
Student context is any stack holding student code, and any thread started to run something
other than installed code (a builtin or ``functools.partial`` as a ``Timer``'s function
counts): swaps of a snapshotted function's code, defaults or closure from there are refused,
as are ctypes' memory calls reached through a library wrapper and the frames of generators
and coroutines. The user namespace, its ``__builtins__``, the kernel's shell, session and
handler tables are pinned (checked and put back); the seal also fails when student code sits
below the test cell on the stack (a wrapped kernel handler) or a student thread is alive.
If ``restore`` cannot arm the guard, the executor fails the test rather than run it unarmed.

Not caught: a patch that undoes itself within one check (without a thread), a race between
the test's last assertion and the seal, finalizers or interpreter callbacks running with only
installed code on their stack, values that lie about themselves (an ndarray subclass or
``__array_function__``: tests should coerce with ``np.asarray``), native code (a compiled
extension of the student's own), code crafted byte by byte (``marshal``) under an installed
file's name, and pytest internals forged by library code. The sandbox around the kernel is
what keeps instructor files out of reach.
"""

#: packages whose functions and classes the snapshots cover (besides the standard library):
#: what the tests call and what carries a cell's code and outputs
PROTECTED_PACKAGES = ("numpy", "IPython", "ipykernel", "jupyter_client", "traitlets", "zmq",
                      "comm", "tornado")
#: library code that reads its caller's frame for itself and hands out no frame: refused
#: with a ValueError, which these modules expect and handle
FRAME_READERS = ("/collections/__init__.py", "/typing.py", "/enum.py", "/dataclasses.py",
                 "/warnings.py", "/abc.py", "/functools.py")
#: ctypes' events that read or write memory at an address (refused when student code is
#: anywhere on the stack, or the thread is the student's, not only when it calls them)
CTYPES_MEMORY = frozenset({"ctypes.string_at", "ctypes.wstring_at", "ctypes.cdata",
                           "ctypes.cdata/buffer", "ctypes.PyObj_FromPtr",
                           "ctypes.call_function"})
#: code flags of generators and coroutines (CO_GENERATOR, CO_COROUTINE,
#: CO_ITERABLE_COROUTINE, CO_ASYNC_GENERATOR)
GENERATOR_FLAGS = 0x20 | 0x80 | 0x100 | 0x200
COPY_LIMIT = 64 << 20     # read-only arrays larger than this are restored by reference


class RefusedFrame(PermissionError, ValueError):
    """A frame refused to library code (which handles ValueError from sys._getframe)."""


def install(event, key_hex):
    """Install the guard as audit hooks answering ``sys.audit(event, ...)``; returns 'ok'."""
    import _hashlib
    import _thread
    import builtins
    import functools
    import gc
    import linecache
    import os
    import sys
    import sysconfig
    import threading
    import types

    import IPython
    import numpy
    import numpy.linalg
    import numpy.random
    import numpy.testing

    ip = IPython.get_ipython()
    ndarray = numpy.ndarray
    # only C functions are called while a hook runs: a patched Python helper would run
    # student code inside the guard
    hmac_digest, getframe, get_ident = _hashlib.hmac_digest, sys._getframe, _thread.get_ident
    current_frames, threading_thread = sys._current_frames, threading.Thread
    threads_active, partial, main_thread = threading._active, functools.partial, get_ident()
    readlink, getcwd, gc_disable, gc_enable, gc_isenabled = (
        os.readlink, os.getcwd, gc.disable, gc.enable, gc.isenabled)
    key = bytes.fromhex(key_hex)
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    trusted = tuple({r.rstrip("/") + "/" for r in roots} |
                    {os.path.realpath(r) + "/" for r in roots})
    stdlib = tuple({p for p in trusted if "site-packages" not in p})
    run_code = type(ip).run_code.__code__
    frame_attrs = frozenset({"tb_frame", "gi_frame", "cr_frame", "ag_frame"})
    watched = frozenset({
        event, "gc.get_objects", "gc.get_referrers", "gc.get_referents", "sys.settrace",
        "sys.setprofile", "sys._current_frames", "sys.addaudithook", "sys._getframe",
        "object.__getattr__", "object.__setattr__", "object.__delattr__", "open", "compile",
        "exec", "code.__new__", "function.__new__"})
    always_refused = frozenset({"gc.get_objects", "gc.get_referrers", "gc.get_referents",
                                "sys.settrace", "sys.setprofile", "sys._current_frames",
                                "sys.addaudithook"})
    S = {"armed": False, "cell_file": None, "seal": None, "log": [], "rebound": set(),
         "inside": {}, "own_call": set(), "reviving": set(), "files": {}, "ns_saved": {},
         "nonces": set(), "readonly_files": set(), "last_cell": None}
    pending = {}        # thread -> (exception class, message): what the raising hook raises
    missing = object()

    # -- whose code is this
    def trusted_file(name):
        if type(name) is not str:
            return False
        got = S["files"].get(name)
        if got is None:
            got = name == "<grading guard>" or name.startswith("<frozen ") or (
                name.startswith(trusted) and "/../" not in name and "/./" not in name)
            S["files"][name] = got
        return got

    def own(code):
        """Code of the installation, of a read-only cell or of the test cell being graded
        (its functions too: no student code is made under these names)."""
        name = code.co_filename
        return trusted_file(name) or name in S["readonly_files"] or (
            S["armed"] and name == S["cell_file"] and S["cell_file"] is not None)

    def reserved_name(filename):
        """A file name student code may not make code under: installed files, the read-only
        cells' and the running test cell's."""
        return trusted_file(filename) or filename in S["readonly_files"] or (
            S["armed"] and filename == S["cell_file"])

    def by_student(f):
        return f is not None and not own(f.f_code)

    def foreign(f):
        """Whether a frame from ``f`` down the stack runs code of neither the installation
        nor the test cell being graded."""
        while f is not None:
            if not own(f.f_code):
                return True
            f = f.f_back
        return False

    def own_callable(v, depth=0):
        """Whether calling ``v`` runs only code of the installation or the course's cells
        (what a thread may be started to run without patching around the checks)."""
        if depth > 4:
            return False
        if type(v) is types.MethodType:
            v = v.__func__
        if type(v) is types.FunctionType:
            return own(v.__code__)
        if type(v) is partial:
            return own_callable(v.func, depth + 1) and not any(
                callable(a) for a in list(v.args) + list(str_items(v.keywords).values()))
        return False

    def foreign_target(t):
        """Whether the thread object ``t`` was started to run something other than code of
        the installation (a student's function, a builtin such as ``setattr``...)."""
        d = str_items(vars(t)) if hasattr(t, "__dict__") else {}
        return any(d.get(k) is not None and not own_callable(d[k])
                   for k in ("_target", "function"))

    def foreign_thread():
        """Whether the running thread is not the kernel's main thread and was started by
        student code (its stack can be all installed code: a builtin as its target)."""
        me = get_ident()
        if me == main_thread:
            return False
        t = threads_active.get(me)
        return t is None or foreign_target(t)

    def student_context(f):
        return f is None or foreign(f) or foreign_thread()

    def own_call(fn, *args):
        """``fn(*args)`` with the own-call flag up: the hook lets the guard's own frame
        reads through (gc off: no finalizer runs while the flag is up)."""
        me = get_ident()
        was = gc_isenabled()
        gc_disable()
        S["own_call"].add(me)
        try:
            return fn(*args)
        finally:
            S["own_call"].discard(me)
            if was:
                gc_enable()

    def my_frame():
        """This hook's frame (2 up: own_call's, then my_frame's)."""
        return own_call(getframe, 2)

    def resolve(path):
        """``path`` absolute with every symbolic link followed (C calls only)."""
        if type(path) is bytes:
            path = path.decode("utf-8", "surrogateescape")
        if type(path) is not str:
            return None
        parts = (path if path.startswith("/") else getcwd() + "/" + path).split("/")
        out, hops, i = [], 0, 0
        while i < len(parts):
            part = parts[i]
            i += 1
            if part in ("", "."):
                continue
            if part == "..":
                if out:
                    out.pop()
                continue
            here = "/" + "/".join(out + [part])
            try:
                target = readlink(here)
            except OSError:
                out.append(part)
                continue
            hops += 1
            if hops > 40:
                return here
            if target.startswith("/"):
                out = []
            parts, i = target.split("/") + parts[i:], 0
        return "/" + "/".join(out)

    def proc_memory(p):
        bits = p.split("/") if p else []
        return len(bits) >= 4 and bits[1] == "proc" and (
            bits[-1] in ("mem", "pagemap") or "map_files" in bits)

    # -- snapshots (dictionaries are read through their string keys only: a student's key
    # object with a colliding hash would run its __eq__ inside the guard)
    def str_items(d):
        return {k: v for k, v in d.items() if type(k) is str}

    def cells_of(v):
        """The callables a function's closure refers to (other cells may change freely)."""
        out = []
        for c in v.__closure__ or ():
            try:
                x = c.cell_contents
            except ValueError:           # an empty cell
                x = missing
            out.append(x if callable(x) else missing)
        return tuple(out)

    def fn_state(v):
        """A function with what can be swapped inside it (code, defaults, closure cells)."""
        if type(v) is types.FunctionType:
            return (v, v.__code__, v.__defaults__, v.__kwdefaults__, cells_of(v))
        return (v, None, None, None, ())

    def same(a, b):
        return len(a) == len(b) and all(x is y for x, y in zip(a, b))

    def same_state(a, b):
        return same(a[:4], b[:4]) and same(a[4], b[4])

    def callable_attr(v):
        return callable(v) or isinstance(v, (staticmethod, classmethod, property,
                                             types.ModuleType))

    def revived(state):
        """``state``'s function with its saved code, defaults and closure put back. The
        guard's own assignments are marked (the swap check lets them through); what they
        replace is kept until the mark is down, so no finalizer runs under it."""
        v, code, defaults, kwdefaults, cells = state
        if code is None:
            return v
        me, replaced = get_ident(), []
        S["reviving"].add(me)
        try:
            for attr, want in (("__code__", code), ("__defaults__", defaults),
                               ("__kwdefaults__", kwdefaults)):
                if getattr(v, attr) is not want:
                    replaced.append(getattr(v, attr))
                    setattr(v, attr, want)
            now = cells_of(v)
            for c, x, y in zip(v.__closure__ or (), cells, now):
                if x is not missing and y is not x:
                    replaced.append(y)
                    c.cell_contents = x
        finally:
            S["reviving"].discard(me)
        del replaced
        return v

    def dict_snapshot(d):
        """The callables of ``d`` (functions with their code, defaults and closures)."""
        return {k: fn_state(v) for k, v in str_items(d).items() if callable_attr(v)}

    def diff_dict(label, cur, saved, restore, put):
        bad, cur = [], str_items(cur)
        for k, state in saved.items():
            v = cur.get(k, missing)
            if v is not state[0] or not same_state(fn_state(v), state):
                bad.append(f"{label}.{k}")
                if restore:
                    put(k, revived(state))
        return bad

    def attr_ref(obj, k):
        """``obj.k`` read from its instance dict or its traitlets values (no code runs)."""
        d = str_items(vars(obj))
        if k in d:
            return d[k]
        tv = d.get("_trait_values")
        return str_items(tv).get(k, missing) if type(tv) is dict else missing

    def put_ref(obj, k, v):
        d = vars(obj)
        tv = d.get("_trait_values")
        (tv if type(tv) is dict and k in tv and k not in d else d)[k] = v

    def mutable_class(v):      # a heap type whose dict can change (not an immutable type)
        return isinstance(v, type) and v.__flags__ & (1 << 9) and not v.__flags__ & (1 << 8)

    def protected_modules():
        for name, m in list(sys.modules.items()):
            if type(m) is not types.ModuleType:
                continue
            f = str_items(vars(m)).get("__file__")
            if f is None:
                if name in sys.builtin_module_names:
                    yield name, m
            elif name.split(".")[0] in PROTECTED_PACKAGES or (
                    type(f) is str and f.startswith(stdlib) and "site-packages" not in f):
                yield name, m

    def rebase():
        snap = S["snap"] = {}
        snap["builtins"] = {k: fn_state(v) for k, v in str_items(vars(builtins)).items()}
        snap["sys"] = {k: fn_state(getattr(sys, k)) for k in
                       ("excepthook", "displayhook", "stdout", "stderr", "audit",
                        "meta_path", "path_hooks", "modules", "gettrace", "getprofile")}
        snap["meta_path"] = list(sys.meta_path)
        snap["trace"] = (sys.gettrace(), sys.getprofile())
        snap["modules"], snap["classes"] = {}, {}
        for name, m in protected_modules():
            snap["modules"][name] = (m, dict_snapshot(vars(m)))
            for v in list(str_items(vars(m)).values()):
                if mutable_class(v) and v.__module__ == name and v not in snap["classes"]:
                    snap["classes"][v] = dict_snapshot(vars(v))
        tv = vars(ip).get("_trait_values", {})
        snap["lists"] = {}
        for k in ("ast_transformers", "input_transformers_post"):
            obj = vars(ip).get(k, tv.get(k))
            if type(obj) is list:
                snap["lists"][k] = (obj, list(obj))
        itm = ip.input_transformer_manager
        for k in ("cleanup_transforms", "line_transforms", "token_transformers"):
            obj = vars(itm).get(k)
            if type(obj) is list:
                snap["lists"]["input_transformer_manager." + k] = (obj, list(obj))
        snap["traits"] = {k: tv[k] for k in snap["lists"] if k in tv}
        snap["callbacks"] = {k: list(v) for k, v in ip.events.callbacks.items()}
        snap["custom_exc"] = (ip.custom_exceptions, ip.CustomTB)
        objs = [ip, ip.displayhook, ip.display_pub, ip.display_trap, ip.InteractiveTB,
                ip.SyntaxTB, ip.compile, itm, ip.events]
        kernel = getattr(ip, "kernel", None)
        if kernel is not None:
            objs += [kernel, kernel.session]
        objs += [sys.stdout, sys.stderr]
        snap["objects"] = [(o, dict_snapshot(vars(o)) if hasattr(o, "__dict__") else {})
                           for o in objs]
        # what the kernel runs a request with: the namespace, its builtins, the shell the
        # kernel hands code to and the kernel's tables of message handlers
        pins = [("shell", ip, "user_ns"), ("shell", ip, "user_module")]
        if kernel is not None:
            pins += [("kernel", kernel, k) for k in ("shell", "session", "shell_handlers",
                                                     "control_handlers")]
        snap["pins"] = [(label, o, k, attr_ref(o, k)) for label, o, k in pins]
        snap["ns_builtins"] = str_items(ip.user_ns).get("__builtins__", missing)
        # functions whose code nothing outside the installation may swap, from any stack
        S["protected"] = {id(state[0]) for attrs in
                          [a for _, a in snap["modules"].values()] + list(snap["classes"].values())
                          for state in attrs.values() if state[1] is not None}
        snap["tables"] = [(f"{label}.{k}", v, dict_snapshot(v))
                          for label, o, k, v in snap["pins"]
                          if type(v) is dict and k.endswith("_handlers")]
        for o in objs:                   # their classes, wherever those were defined
            for cls in type(o).__mro__:
                if mutable_class(cls) and cls not in snap["classes"]:
                    snap["classes"][cls] = dict_snapshot(vars(cls))
        return "ok"

    def plain(x):
        return type(x) in PLAIN or isinstance(x, numpy.generic)

    def copy_value(v, depth=0):
        """A copy of plain data (arrays, containers of numbers and strings); None for
        anything else (restored by reference)."""
        t = type(v)
        if t is ndarray:
            return v.copy() if v.nbytes <= COPY_LIMIT and v.dtype != object else None
        if depth > 8:
            return None
        if t in (list, tuple, set, frozenset) and len(v) <= 10000:
            items = [x if plain(x) else copy_value(x, depth + 1) for x in v]
            if any(c is None for c, x in zip(items, v) if x is not None):
                return None
            return t(items)
        if t is dict and len(v) <= 10000:
            out = {}
            for k, x in v.items():
                if not plain(k):
                    return None
                c = x if plain(x) else copy_value(x, depth + 1)
                if c is None and x is not None:
                    return None
                out[k] = c
            return out
        return None

    def save(names):
        # the read-only cell that just ran (the last cell IPython counted): its code is the
        # course's, not the student's
        if S["last_cell"] is not None and S["last_cell"][1] == ip.execution_count - 1:
            S["readonly_files"].add(S["last_cell"][0])
        S["last_cell"] = None
        ns = str_items(ip.user_ns)
        for n in names:
            if n in ns:
                v = ns[n]
                S["ns_saved"][n] = (fn_state(v), copy_value(v))
        return "ok"

    def walk(restore, rebound=()):
        snap, bad = S["snap"], []
        cur_b = vars(builtins)
        bad += diff_dict("builtins", cur_b, snap["builtins"], restore,
                         lambda k, v: setattr(builtins, k, v))
        for k in [k for k in cur_b if type(k) is not str or (
                k not in snap["builtins"] and not k.startswith("_"))]:
            bad.append(f"builtins.{k} (added)" if type(k) is str else "builtins (a non-string "
                                                                        "key)")
            if restore:
                del cur_b[k]
        bad += diff_dict("sys", vars(sys), snap["sys"], restore, lambda k, v: setattr(sys, k, v))
        if not same(sys.meta_path, snap["meta_path"]):
            bad.append("sys.meta_path")
            if restore:
                sys.meta_path[:] = snap["meta_path"]
        if not same((sys.gettrace(), sys.getprofile()), snap["trace"]):
            bad.append("sys.settrace/setprofile")
        mods = str_items(sys.modules)
        for name, (m, attrs) in snap["modules"].items():
            if mods.get(name, m) is not m:
                bad.append(f"sys.modules[{name!r}]")
                if restore:
                    sys.modules[name] = m
            bad += diff_dict(name, vars(m), attrs, restore, lambda k, v, m=m: setattr(m, k, v))
        for cls, attrs in snap["classes"].items():
            bad += diff_dict(cls.__qualname__, vars(cls), attrs, restore,
                             lambda k, v, cls=cls: setattr(cls, k, v))
        for label, (obj, items) in snap["lists"].items():
            if not same(obj, items):
                bad.append(f"shell.{label}")
                if restore:
                    obj[:] = items
        tv = vars(ip).get("_trait_values", {})
        for k, obj in snap["traits"].items():
            if tv.get(k) is not obj:
                bad.append(f"shell.{k} (replaced)")
                if restore:
                    tv[k] = obj
        cur = ip.events.callbacks
        if set(cur) != set(snap["callbacks"]) or not all(
                same(cur[k], v) for k, v in snap["callbacks"].items()):
            bad.append("shell.events callbacks")
            if restore:
                for k, v in snap["callbacks"].items():
                    cur.setdefault(k, [])[:] = v
        if not same((ip.custom_exceptions, ip.CustomTB), snap["custom_exc"]):
            bad.append("shell.set_custom_exc")
            if restore:
                ip.custom_exceptions, ip.CustomTB = snap["custom_exc"]
        for obj, attrs in snap["objects"]:
            d = str_items(vars(obj)) if hasattr(obj, "__dict__") else {}
            bad += diff_dict(type(obj).__name__, d, attrs, restore,
                             lambda k, v, obj=obj: setattr(obj, k, v))
            for k in list(d):       # an instance attribute shadowing a method of its class
                if k not in attrs and callable_attr(d[k]) and any(
                        k in vars(c) for c in type(obj).__mro__ if c is not object):
                    bad.append(f"{type(obj).__name__}.{k} (shadowed)")
                    if restore:
                        delattr(obj, k)
        for label, obj, k, v in snap["pins"]:
            if attr_ref(obj, k) is not v:
                bad.append(f"{label}.{k} (replaced)")
                if restore:
                    put_ref(obj, k, v)
        for label, table, items in snap["tables"]:
            bad += diff_dict(label, table, items, restore,
                             lambda k, v, table=table: table.__setitem__(k, v))
        if str_items(ip.user_ns).get("__builtins__", missing) is not snap["ns_builtins"]:
            bad.append("the namespace's __builtins__")
            if restore:
                ip.user_ns["__builtins__"] = snap["ns_builtins"]
        ns, raw_ns = str_items(ip.user_ns), ip.user_ns
        for n, (state, data) in S["ns_saved"].items():
            if n in rebound:
                continue
            if n not in ns or not same_state(fn_state(ns[n]), state):
                bad.append(f"read-only name {n!r}")
                if restore:
                    raw_ns[n] = revived(state)
            if restore and data is not None:
                raw_ns[n] = copy_value(data)
                S["ns_saved"][n] = (fn_state(raw_ns[n]), data)
        return bad

    # -- the executor's methods (each request carries its HMAC) and the test cell's seal
    def restore(rebound=()):
        bad = walk(restore=True)
        S.update(armed=True, cell_file=None, seal=None, log=[],
                 rebound=set(rebound))
        return "restored: " + ", ".join(bad) if bad else "ok"

    def learn():
        """Called once, from a cell run as test cells are: what the kernel itself swaps for
        each request it runs (``input``, ``getpass``, the excepthook...) is not tampering."""
        if "volatile" not in S:
            S["volatile"] = set(walk(restore=False))
        return "ok"

    def verdict():
        v = S["seal"] or ("tampered: " + ", ".join(S["log"][:12]) if S["log"] else
                          "not sealed: the test cell did not run to its end")
        S.update(armed=False, cell_file=None, seal=None, log=[])
        return v

    methods = {"rebase": rebase, "save": save, "restore": restore, "verdict": verdict,
               "learn": learn, "ping": lambda: "ok"}

    def student_threads():
        """Whether another thread runs (or was started to run) code from outside the
        installation and the course's cells: it could patch and unpatch around the checks."""
        me, frames = get_ident(), own_call(current_frames)
        if str_items(vars(threading)).get("_active") is not threads_active:
            return True                  # threads registered where the check cannot see
        for t in list(threads_active.values()):
            if isinstance(t, threading_thread) and foreign_target(t):
                return True
        for tid, f in frames.items():
            if tid == me:
                continue
            while f is not None:
                if not own(f.f_code):
                    return True
                target = str_items(f.f_locals).get("self") if f.f_code.co_name == "run" else None
                if isinstance(target, threading_thread) and foreign_target(target):
                    return True
                f = f.f_back
        return False

    def seal(f):
        if not S["armed"]:
            return
        if S["seal"] is not None:
            S["seal"] = "tampered: the test was sealed twice"
        elif f is None or f.f_code.co_filename != S["cell_file"] or \
                f.f_globals is not ip.user_ns:
            S["seal"] = "tampered: sealed from outside the test cell"
        else:
            volatile = S.get("volatile", ())
            bad = S["log"] + [b for b in walk(restore=False, rebound=S["rebound"])
                              if b not in volatile]
            if student_threads():
                bad.append("a thread running your code while the test ran")
            if foreign(f.f_back):     # a wrapper of the student's around the kernel's run
                bad.append("your code running around the test cell")
            S["seal"] = "tampered: " + ", ".join(bad[:12]) if bad else "ok"

    def answer(args):
        method, nonce, margs, box, auth = (tuple(args) + (None,) * 5)[:5]
        if type(method) is not str or type(nonce) is not str or type(box) is not list \
                or type(auth) is not str or nonce in S["nonces"] or method not in methods:
            return
        margs = tuple(str(a) if type(a) is not list else [str(x) for x in a]
                      for a in (margs if type(margs) is tuple else ()))
        want = hmac_digest(key, f"req:{nonce}:{method}:{margs!r}".encode(), "sha256").hex()
        if auth != want:
            return                           # not the executor's request
        S["nonces"].add(nonce)
        try:
            v = str(methods[method](*margs))
        except Exception as e:  # noqa: BLE001 - reported to the executor as the verdict
            v = f"error: {type(e).__name__}: {e}"
        mac = hmac_digest(key, f"{nonce}:{v}".encode(), "sha256").hex()
        box.append(f"{v}|{mac}")

    # -- the hooks
    def refuse(what, exc=PermissionError):
        if S["armed"] and exc is PermissionError:
            S["log"].append(what)
        pending[get_ident()] = (exc, f"grading does not allow {what}")

    def suspendable(frame):
        """A generator's or coroutine's frame: it can be resumed later, inside a test,
        and then leads (``f_back``) to the test's frames."""
        return type(frame) is types.FrameType and bool(frame.f_code.co_flags & GENERATOR_FLAGS)

    def frames_event(name, args, f):
        what = f"reading the interpreter's frames ({name}" + (
            f" {args[1]})" if name == "object.__getattr__" else ")")
        attr = args[1] if name == "object.__getattr__" and len(args) > 1 else None
        if S["inside"].get(get_ident(), 0) > 1:     # code run from inside the guard
            refuse(what)
        elif attr in ("gi_frame", "cr_frame", "ag_frame") and student_context(f):
            refuse(f"reading a generator's frame ({attr})")
        elif name == "sys._getframe" and args and suspendable(args[0]) and student_context(f):
            refuse("reading a generator's frame (sys._getframe)")
        elif attr == "tb_frame" and student_context(f) and \
                suspendable(own_call(getattr, args[0], "tb_frame", None)):
            refuse("reading a generator's frame (tb_frame)")
        elif S["armed"] and f is not None and foreign(f):
            fn = f.f_code.co_filename
            refuse(what, RefusedFrame if trusted_file(fn) and fn.endswith(FRAME_READERS)
                   else PermissionError)

    def compile_event(args, f):
        filename = args[1] if len(args) > 1 else None
        if type(filename) is bytes:
            filename = filename.decode("utf-8", "surrogateescape")
        if type(filename) is not str or f is None or not foreign(f):
            return
        if S["armed"] and filename == S["cell_file"] or filename in S["readonly_files"]:
            refuse("compiling code under the name of a test or read-only cell")
        elif trusted_file(filename) and filename.startswith("/"):
            src = args[0]
            if type(src) is str:
                src = src.encode()
            real = None
            try:
                with open(filename, "rb") as fh:
                    real = fh.read()
            except OSError:
                pass
            if type(src) is not bytes or src != real:   # an import compiles the real file
                refuse(f"compiling code under an installed file's name ({filename})")

    def exec_event(args, f):
        code = args[0] if args else None
        if type(code) is not types.CodeType or f is None or f.f_code is not run_code:
            return
        if not S["armed"]:
            S["last_cell"] = (code.co_filename, ip.execution_count)
            return
        if foreign(f):
            return
        nested, g = 0, f
        while g is not None:
            nested += g.f_code is run_code
            g = g.f_back
        if nested != 1:            # a cell run from inside the test cell is not the test
            return
        if S["cell_file"] is None:
            S["cell_file"] = code.co_filename

    def check_event(name, args, f):
        if name == event:
            if args and args[0] == "seal":
                seal(f)
            elif args and args[0] == "call":
                answer(args[1:])
        elif name in always_refused:
            refuse(f"{name}()")
        elif name in ("sys._getframe", "object.__getattr__"):
            frames_event(name, args, f)
        elif name in ("object.__setattr__", "object.__delattr__"):
            obj = args[0] if args else None
            if type(obj) is types.FunctionType and get_ident() not in S["reviving"] and (
                    by_student(f) and reserved_name(obj.__code__.co_filename) or
                    id(obj) in S.get("protected", ()) and student_context(f)):
                refuse(f"changing {args[1]} of the installed function {obj.__qualname__}")
        elif name == "open":
            p = resolve(args[0] if args else None)
            if proc_memory(p):
                refuse(f"opening {p}")
        elif name.startswith("ctypes."):
            if by_student(f) or name in CTYPES_MEMORY and student_context(f):
                refuse(f"raw memory access from your code ({name})")
        elif name == "compile":
            compile_event(args, f)
        elif name == "code.__new__":
            filename = args[1] if len(args) > 1 else None
            if type(filename) is str and by_student(f) and reserved_name(filename):
                refuse(f"making code under the name {filename}")
        elif name == "function.__new__":
            code = args[0] if args else None
            if type(code) is types.CodeType and by_student(f) and \
                    reserved_name(code.co_filename):
                refuse("making a function from installed code")
        elif name == "exec":
            exec_event(args, f)

    def guard_hook(name, args):
        if name not in watched and not name.startswith("ctypes."):
            return
        if name == "object.__getattr__" and (len(args) < 2 or args[1] not in frame_attrs):
            return
        me = get_ident()
        if name in ("sys._getframe", "sys._current_frames", "object.__getattr__") and \
                me in S["own_call"]:
            return
        depth = S["inside"].get(me, 0)
        S["inside"][me] = depth + 1
        try:
            here = my_frame()
            check_event(name, args, here.f_back if here is not None else None)
        except Exception as e:  # noqa: BLE001 - this hook never raises (see refusal_hook)
            if name == event or name in always_refused:
                pending[me] = (PermissionError, f"grading refused {name} ({type(e).__name__})")
        finally:
            if depth:
                S["inside"][me] = depth
            else:
                del S["inside"][me]

    sys.addaudithook(guard_hook)
    sys.addaudithook(_refusal_hook(pending, get_ident))
    # the source of the cell that installed the guard carried the key: it stays in no cache
    for k in [k for k, v in linecache.cache.items()
              if type(v) is tuple and len(v) > 2 and key_hex in "".join(v[2] or ())]:
        del linecache.cache[k]
    gc.collect()
    return "ok"


#: values copied as they are (immutable)
PLAIN = (int, float, complex, str, bytes, bool, type(None))


def _refusal_hook(pending, get_ident):
    """The hook that raises what the guard refused. It holds only ``pending`` (exception
    classes and messages): the frame a refusal's traceback shows leads nowhere else."""
    def refusal_hook(name, args):
        if pending:
            got = pending.pop(get_ident(), None)
            if got is not None:
                raise got[0](got[1])
    return refusal_hook
