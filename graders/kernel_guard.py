"""Kernel-side integrity guard of grading (runs inside the student's kernel).

graders/notebook_executor.py executes this file's source in a fresh kernel before the first
cell, in a namespace of its own (nothing lands in the user's namespace or ``sys.modules``),
ending with ``register(name, key)``: the guard is reachable only as the ``call`` of a class
named by a random token, which the executor finds through ``object.__subclasses__()`` (no
name a student can rebind, no builtin it can replace), and every answer carries an HMAC of
the executor's nonce and the verdict under a key that exists only inside that closure, so
replacing the guard, its class or IPython's reply path yields an answer the executor rejects.
The executor calls it through IPython user expressions (evaluated without the cell
transformers):

* ``save(names)`` after each read-only cell: the helpers and values the tests rely on;
* ``restore()`` before each test cell: IPython's hooks (AST and input transformers, display
  hook, custom exception handler, event callbacks, traceback and execution methods of the
  shell, kernel and session, their classes), ``sys.excepthook``/``displayhook``/``stdout``/
  ``stderr``, ``builtins``, the functions of numpy, numpy.testing and the standard modules the
  tests use (also when replaced in place through ``__code__``), ``sys.modules`` entries of
  those modules, and the read-only cells' names (a fresh copy of data values);
* ``check()`` after each test cell: anything of the above changed while the test ran (a library
  the test reloads replacing ``np.allclose``, say) makes the test fail with
  ``GradingIntegrityError``.

It defends against Python-level tampering by student code; the sandbox around the kernel is
what keeps instructor files out of reach. It shares the process with student code, so code
that digs the signing closure out of the garbage collector could still forge an answer; that
takes knowing this file, which is not released.
"""
import builtins
import copy
import sys
import types

PROTECTED_MODULES = ("numpy", "numpy.testing", "numpy.linalg", "numpy.random", "math",
                     "struct", "json", "importlib", "os", "os.path", "io", "tempfile", "pickle",
                     "operator", "functools", "types", "inspect", "copy", "time")
#: data values of read-only cells larger than this are restored by reference, not copied
COPY_LIMIT = 64 << 20


def _fn_state(v):
    """The identity of a value and, for a Python function, what can be swapped in place."""
    if not isinstance(v, types.FunctionType):
        return (v, None, None, None)
    return (v, v.__code__, v.__defaults__, v.__kwdefaults__)


def _same(a, b):
    """Identity, element by element (student objects may define __eq__)."""
    return len(a) == len(b) and all(x is y for x, y in zip(a, b))


def _is_callable_attr(v):
    return callable(v) or isinstance(v, (staticmethod, classmethod, property))


class _ObjectSnapshot:
    """The callable attributes of an object (instance dict) and of its classes' dicts."""

    def __init__(self, obj, with_classes=True):
        self.obj = obj
        self.inst = {k: _fn_state(v) for k, v in vars(obj).items() if _is_callable_attr(v)} \
            if hasattr(obj, "__dict__") else {}
        self.classes = []
        if with_classes:
            for cls in type(obj).__mro__:
                if cls is object or cls.__module__ == "builtins":
                    continue
                self.classes.append((cls, {k: _fn_state(v) for k, v in vars(cls).items()
                                           if _is_callable_attr(v)}))

    def diff(self, restore):
        bad = []
        d = vars(self.obj) if hasattr(self.obj, "__dict__") else {}
        for k, state in self.inst.items():
            if k not in d or not _same(_fn_state(d[k]), state):
                bad.append(f"{type(self.obj).__name__}.{k}")
                if restore:
                    _put(self.obj, k, state)
        for k in list(d):
            if k not in self.inst and _is_callable_attr(d[k]) and any(
                    k in cd for _, cd in self.classes):
                bad.append(f"{type(self.obj).__name__}.{k} (shadowed)")
                if restore:
                    delattr(self.obj, k)
        for cls, cd in self.classes:
            cur = vars(cls)
            for k, state in cd.items():
                if k not in cur or not _same(_fn_state(cur[k]), state):
                    bad.append(f"{cls.__name__}.{k}")
                    if restore:
                        _put(cls, k, state)
        return bad


def _revived(state):
    """The snapshot's value, its code and defaults put back if they were swapped in place."""
    v, code, defaults, kwdefaults = state
    if code is not None:
        v.__code__, v.__defaults__, v.__kwdefaults__ = code, defaults, kwdefaults
    return v


def _put(owner, name, state):
    setattr(owner, name, _revived(state))


class _ModuleSnapshot:
    def __init__(self, mod):
        self.mod = mod
        self.attrs = {k: _fn_state(v) for k, v in vars(mod).items()
                      if _is_callable_attr(v) or isinstance(v, types.ModuleType)}

    def diff(self, restore):
        bad = []
        d = vars(self.mod)
        for k, state in self.attrs.items():
            if k not in d or not _same(_fn_state(d[k]), state):
                bad.append(f"{self.mod.__name__}.{k}")
                if restore:
                    _put(self.mod, k, state)
        return bad


class Guard:
    def __init__(self):
        import IPython
        self.ip = IPython.get_ipython()
        for name in PROTECTED_MODULES:
            __import__(name)
        self.modules = {n: sys.modules[n] for n in PROTECTED_MODULES}
        self.rebase()

    def rebase(self):
        """Take the snapshots (called by the executor in the same context as check())."""
        self.builtins = dict(vars(builtins))
        self.sys_hooks = {k: getattr(sys, k) for k in
                          ("excepthook", "displayhook", "stdout", "stderr", "settrace",
                           "setprofile")}
        self.trace = (sys.gettrace(), sys.getprofile())
        ip = self.ip
        self.lists = {"ast_transformers": list(ip.ast_transformers),
                      "input_transformers_post": list(ip.input_transformers_post)}
        itm = ip.input_transformer_manager
        self.itm_lists = {k: list(getattr(itm, k)) for k in
                          ("cleanup_transforms", "line_transforms", "token_transformers")}
        self.callbacks = {k: list(v) for k, v in ip.events.callbacks.items()}
        self.custom_exc = (ip.custom_exceptions, ip.CustomTB)
        self.mod_snaps = [_ModuleSnapshot(m) for m in self.modules.values()]
        objs = [ip, ip.displayhook, ip.display_pub, ip.display_trap, ip.InteractiveTB,
                ip.SyntaxTB, ip.compile, ip.input_transformer_manager, ip.events]
        kernel = getattr(ip, "kernel", None)
        if kernel is not None:
            objs += [kernel, kernel.session]
        objs += [sys.stdout, sys.stderr]
        self.obj_snaps = [_ObjectSnapshot(o) for o in objs]
        self.ns_saved = getattr(self, "ns_saved", {})
        return "ok"

    # -- read-only cells
    def save(self, names):
        ns = self.ip.user_ns
        for n in names:
            if n in ns:
                v = ns[n]
                self.ns_saved[n] = (_fn_state(v), self._copy(v))
        return "ok"

    @staticmethod
    def _copy(v):
        try:
            import numpy as np
            if isinstance(v, np.ndarray):
                return v.copy() if v.nbytes <= COPY_LIMIT else None
            if isinstance(v, (dict, list, set)) and len(v) <= 10000:
                return copy.deepcopy(v)
        except Exception:  # noqa: BLE001 - an uncopyable value is restored by reference
            pass
        return None

    # -- the whole state
    def _walk(self, restore, rebound=()):
        bad = []
        ip = self.ip
        for k, v in self.builtins.items():
            if vars(builtins).get(k, _MISSING) is not v:
                bad.append(f"builtins.{k}")
                if restore:
                    setattr(builtins, k, v)
        for k in list(vars(builtins)):
            if k not in self.builtins and not k.startswith("_"):
                bad.append(f"builtins.{k} (added)")
                if restore:
                    delattr(builtins, k)
        for k, v in self.sys_hooks.items():
            if getattr(sys, k) is not v:
                bad.append(f"sys.{k}")
                if restore:
                    setattr(sys, k, v)
        if not _same((sys.gettrace(), sys.getprofile()), self.trace):
            bad.append("sys.settrace/setprofile")
            if restore:
                sys.settrace(self.trace[0])
                sys.setprofile(self.trace[1])
        for n, m in self.modules.items():
            if sys.modules.get(n) is not m:
                bad.append(f"sys.modules[{n!r}]")
                if restore:
                    sys.modules[n] = m
        for s in self.mod_snaps:
            bad += s.diff(restore)
        for k, v in self.lists.items():
            if not _same(getattr(ip, k), v):
                bad.append(f"shell.{k}")
                if restore:
                    getattr(ip, k)[:] = v
        itm = ip.input_transformer_manager
        for k, v in self.itm_lists.items():
            if not _same(getattr(itm, k), v):
                bad.append(f"input_transformer_manager.{k}")
                if restore:
                    getattr(itm, k)[:] = v
        cur = ip.events.callbacks
        if set(cur) != set(self.callbacks) or not all(
                _same(cur[k], v) for k, v in self.callbacks.items()):
            bad.append("shell.events callbacks")
            if restore:
                for k, v in self.callbacks.items():
                    cur.setdefault(k, [])[:] = v
        if not _same((ip.custom_exceptions, ip.CustomTB), self.custom_exc):
            bad.append("shell.set_custom_exc")
            if restore:
                ip.custom_exceptions, ip.CustomTB = self.custom_exc
        for s in self.obj_snaps:
            bad += s.diff(restore)
        ns = ip.user_ns
        for n, (state, data) in self.ns_saved.items():
            if n in rebound:
                continue
            if n not in ns or not _same(_fn_state(ns[n]), state):
                bad.append(f"read-only name {n!r}")
                if restore:
                    _put_ns(ns, n, state)
            if restore and data is not None:
                ns[n] = self._copy(data)
                self.ns_saved[n] = (_fn_state(ns[n]), data)
        return bad

    def restore(self):
        bad = self._walk(restore=True)
        return "restored: " + ", ".join(bad) if bad else "ok"

    def check(self, rebound=()):
        """What changed since restore(); ``rebound``: names the test cell itself assigns."""
        bad = self._walk(restore=False, rebound=set(rebound))
        return "tampered: " + ", ".join(bad[:12]) if bad else "ok"


_MISSING = object()


def _put_ns(ns, name, state):
    ns[name] = _revived(state)


def register(name, key_hex):
    """Install the guard as ``<class name>.call(method, nonce, *args)`` -> 'verdict|hmac'."""
    import atexit
    import hashlib
    import hmac
    import linecache
    guard = Guard()
    methods = {"rebase": guard.rebase, "save": guard.save, "restore": guard.restore,
               "check": guard.check}       # bound now: a patched Guard class changes nothing
    signer = hmac.new(bytes.fromhex(key_hex), digestmod=hashlib.sha256)
    encode, copy_signer = str.encode, signer.copy

    def call(method, nonce, *args):
        try:
            verdict = str(methods[method](*args))
        except Exception as e:  # noqa: BLE001 - reported to the executor as the verdict
            verdict = f"error: {type(e).__name__}: {e}"
        m = copy_signer()
        m.update(encode(f"{nonce}:{verdict}"))
        return f"{verdict}|{m.hexdigest()}"

    cls = type(name, (), {"call": staticmethod(call), "__slots__": ()})
    atexit.register(lambda *_: None, cls)     # a root that keeps the class (and the guard) alive
    # the install cell's source (it carried the key) stays in no cache
    for k in [k for k, v in linecache.cache.items()
              if isinstance(v, tuple) and len(v) > 2 and key_hex in "".join(v[2] or ())]:
        del linecache.cache[k]
    return "ok"
