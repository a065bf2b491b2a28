"""Solution stripping for library and native source files.

The instructor's tree marks code a student writes with

    Python:     ### BEGIN SOLUTION        ...   ### END SOLUTION
    C++/CUDA:   // BEGIN SOLUTION         ...   // END SOLUTION

and tests only the instructor sees with ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``
(``//`` in C++). A marker is a whole line: indentation, the comment leader, the marker text.

``strip_source(text, language)`` returns the student version:

* a Python solution region becomes ``raise NotImplementedError(<message>)`` at the marker's
  indentation, where ``message_for(function)`` (the innermost enclosing function's qualified
  name, e.g. ``QuantStub.forward``) gives the message, e.g. "choose_qparams: exercise 3.1 of
  notebook 03_quant_basics" (without ``message_for``: no message),
* a C++ region becomes ``throw std::runtime_error("<message>");`` (the same message;
  without ``message_for``: "not implemented: <function>") where ``<function>`` is the
  innermost enclosing function (pybind11 turns it into a Python RuntimeError); inside CUDA
  device code, where ``throw`` does not compile, it becomes
  ``__trap();`` (the launch then fails with a CUDA error); inside a ``__host__ __device__``
  function it becomes ``__trap();`` for the device pass and the ``throw`` for the host pass
  (``#ifdef __CUDA_ARCH__``), so host builds of the same code (emulation) raise cleanly,
* hidden-test regions disappear with their markers.

Markers that do not pair up (END without BEGIN, BEGIN inside BEGIN, BEGIN without END, a marker
text that is not on a line of its own) raise ``StripError`` naming the file and line.
"""
from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

PY_SUFFIXES = {".py"}
CPP_SUFFIXES = {".cc", ".cpp", ".cxx", ".h", ".hpp", ".cu", ".cuh"}

_KINDS = ("SOLUTION", "HIDDEN TESTS")
_CPP_KEYWORDS = {"if", "for", "while", "switch", "catch", "return", "sizeof", "decltype",
                 "alignof", "static_assert", "defined"}


class StripError(ValueError):
    """Malformed solution or hidden-test markers."""


@dataclass
class Region:
    """One marked region: 1-based line numbers of its markers and the lines between them."""
    kind: str            # "SOLUTION" or "HIDDEN TESTS"
    begin: int
    end: int
    body: list = field(default_factory=list)


def language_of(path) -> str | None:
    """'python', 'cpp' or None (not a file the stripper handles) from the file suffix."""
    suffix = Path(path).suffix.lower()
    if suffix in PY_SUFFIXES:
        return "python"
    if suffix in CPP_SUFFIXES:
        return "cpp"
    return None


def _leader(language: str) -> str:
    if language == "python":
        return "###"
    if language == "cpp":
        return "//"
    raise ValueError(f"unknown language {language!r} (expected 'python' or 'cpp')")


def _marker_re(language: str):
    lead = re.escape(_leader(language))
    return re.compile(r"^(?P<indent>[ \t]*)" + lead + r"[ \t]*(?P<what>BEGIN|END)[ \t]+"
                      r"(?P<kind>SOLUTION|HIDDEN TESTS)[ \t]*$")


# Any mention of a marker text; used to reject markers that are not on a line of their own.
_ANY_MARKER = re.compile(r"(BEGIN|END)[ \t]+(SOLUTION|HIDDEN TESTS)\b")


def find_regions(text: str, language: str, filename: str = "<string>") -> list[Region]:
    """Parse and validate the markers of ``text``; return the regions in file order."""
    pat = _marker_re(language)
    regions: list[Region] = []
    open_region: Region | None = None
    for lineno, line in enumerate(text.splitlines(), start=1):
        m = pat.match(line)
        if m is None:
            comment = "#" if language == "python" else "//"
            if _ANY_MARKER.search(line) and line.lstrip().startswith(comment):
                raise StripError(f"{filename}:{lineno}: malformed marker line {line.strip()!r} "
                                 f"(expected '{_leader(language)} BEGIN SOLUTION' or similar "
                                 f"on a line of its own)")
            if open_region is not None:
                open_region.body.append(line)
            continue
        what, kind = m.group("what"), m.group("kind")
        if what == "BEGIN":
            if open_region is not None:
                raise StripError(f"{filename}:{lineno}: BEGIN {kind} inside the {open_region.kind} "
                                 f"region opened at line {open_region.begin} (regions do not nest)")
            open_region = Region(kind, lineno, -1)
        else:
            if open_region is None:
                raise StripError(f"{filename}:{lineno}: END {kind} without a matching BEGIN {kind}")
            if open_region.kind != kind:
                raise StripError(f"{filename}:{lineno}: END {kind} closes the {open_region.kind} "
                                 f"region opened at line {open_region.begin}")
            open_region.end = lineno
            regions.append(open_region)
            open_region = None
    if open_region is not None:
        raise StripError(f"{filename}:{open_region.begin}: BEGIN {open_region.kind} is never closed "
                         f"(no END {open_region.kind})")
    return regions


def _skip_cpp_noncode(text: str):
    """Yield (index, char) of the characters of C++ ``text`` outside comments and literals."""
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
            continue
        if text.startswith("/*", i):
            j = text.find("*/", i + 2)
            i = n if j < 0 else j + 2
            continue
        if c in "\"'":
            j = i + 1
            while j < n and text[j] != c:
                j += 2 if text[j] == "\\" else 1
            i = j + 1
            continue
        yield i, c
        i += 1


def enclosing_cpp_function(text: str) -> tuple[str, bool]:
    """Name of the innermost function whose body is open at the end of ``text``.

    Returns ``(name, is_device)``; ``is_device`` is True for CUDA ``__global__`` /
    ``__device__`` functions (where ``throw`` does not compile). Raises StripError when the end
    of ``text`` is not inside a function body.
    """
    name, kind = enclosing_cpp_function_kind(text)
    return name, kind != "host"


def enclosing_cpp_function_kind(text: str) -> tuple[str, str]:
    """``(name, kind)`` of the innermost function open at the end of ``text``.

    kind: ``"host"`` (plain C++), ``"device"`` (``__global__`` or ``__device__`` only) or
    ``"host_device"`` (``__host__ __device__``: compiled for both sides).
    """
    code = [" "] * len(text)
    stack: list[int] = []
    for i, c in _skip_cpp_noncode(text):
        code[i] = c
        if c == "{":
            stack.append(i)
        elif c == "}" and stack:
            stack.pop()
    flat = "".join(code)
    for brace in reversed(stack):
        head = flat[:brace].rstrip()
        # trailing qualifiers / return type: ") const noexcept -> int {"
        head = re.sub(r"(\s*(const|noexcept|override|final|mutable|->\s*[\w:<>,\s*&]+))*$", "",
                      head).rstrip()
        if not head.endswith(")"):
            continue                       # namespace, class, struct, initializer, plain block
        depth, j = 0, len(head) - 1
        while j >= 0:
            if head[j] == ")":
                depth += 1
            elif head[j] == "(":
                depth -= 1
                if depth == 0:
                    break
            j -= 1
        m = re.search(r"([A-Za-z_~][\w:~]*)\s*$", head[:j])
        if not m or m.group(1) in _CPP_KEYWORDS:
            continue                       # if/for/while blocks, lambdas
        name = m.group(1)
        start = max(head.rfind(c, 0, m.start()) for c in ";{}") + 1
        prefix = head[start:m.start()]
        if "__global__" in prefix or "__device__" in prefix:
            return name, "host_device" if "__host__" in prefix else "device"
        return name, "host"
    raise StripError("solution region is not inside a function body")


def strip_source(text: str, language: str, filename: str = "<string>",
                 message_for=None) -> str:
    """The student version of ``text`` (see the module docstring).

    message_for: optional ``function name -> str or None``, the stub's message per region."""
    regions = find_regions(text, language, filename)
    if not regions:
        return text
    lines = text.splitlines(keepends=True)
    pat = _marker_re(language)
    out: list[str] = []
    by_begin = {r.begin: r for r in regions}
    lineno = 1
    while lineno <= len(lines):
        region = by_begin.get(lineno)
        if region is None:
            out.append(lines[lineno - 1])
            lineno += 1
            continue
        begin_line = lines[lineno - 1]
        indent = pat.match(begin_line.rstrip("\r\n")).group("indent")
        newline = "\r\n" if begin_line.endswith("\r\n") else "\n"
        if region.kind == "SOLUTION":
            if language == "python":
                msg = message_for(enclosing_python_function(text, lineno, filename)) \
                    if message_for else None
                out.append(f"{indent}# YOUR CODE HERE{newline}")
                out.append(f"{indent}raise NotImplementedError({_c_string(msg) if msg else ''})"
                           f"{newline}")
            else:
                before = "".join(lines[:lineno - 1])
                try:
                    name, kind = enclosing_cpp_function_kind(before)
                except StripError:
                    raise StripError(f"{filename}:{lineno}: solution region is not inside a "
                                     f"function body") from None
                msg = (message_for(name) if message_for else None) or f"not implemented: {name}"
                out.append(f"{indent}// YOUR CODE HERE{newline}")
                trap = f"{indent}__trap();  // {msg}{newline}"
                throw = f"{indent}throw std::runtime_error({_c_string(msg)});{newline}"
                if kind == "device":
                    out.append(trap)
                elif kind == "host_device":
                    out += ["#ifdef __CUDA_ARCH__" + newline, trap, "#else" + newline, throw,
                            "#endif" + newline]
                else:
                    out.append(throw)
        lineno = region.end + 1
    result = "".join(out)
    if language == "cpp" and any(r.kind == "SOLUTION" for r in regions) \
            and "#include <stdexcept>" not in result:
        result = _add_stdexcept_include(result)
    return result


def _c_string(msg: str) -> str:
    """``msg`` as a double-quoted literal valid in both Python and C++ (ASCII, escaped)."""
    out = []
    for ch in msg:
        if ch in '"\\':
            out.append("\\" + ch)
        elif 32 <= ord(ch) < 127:
            out.append(ch)
        else:
            raise StripError(f"stub message {msg!r}: only printable ASCII is allowed")
    return '"' + "".join(out) + '"'


def enclosing_python_function(text: str, lineno: int, filename: str = "<string>") -> str:
    """Qualified name (``Class.method``) of the innermost def around 1-based line ``lineno``."""
    try:
        tree = ast.parse(text)
    except SyntaxError as e:
        raise StripError(f"{filename}:{e.lineno}: not valid Python ({e.msg})") from None
    best = None

    def visit(node, prefix):
        nonlocal best
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                name = prefix + child.name
                if child.lineno <= lineno <= child.end_lineno:
                    if not isinstance(child, ast.ClassDef):
                        best = name
                    visit(child, name + ".")
            else:
                visit(child, prefix)

    visit(tree, "")
    if best is None:
        raise StripError(f"{filename}:{lineno}: solution region is not inside a function")
    return best


def _add_stdexcept_include(text: str) -> str:
    """Insert ``#include <stdexcept>`` after the last top-level #include (or at the top)."""
    lines = text.splitlines(keepends=True)
    last = -1
    for i, line in enumerate(lines):
        if line.startswith("#include"):
            last = i
    lines.insert(last + 1, "#include <stdexcept>\n")
    return "".join(lines)


def strip_file(path) -> str | None:
    """Stripped text of a source file, or None when its suffix is not handled."""
    language = language_of(path)
    if language is None:
        return None
    text = Path(path).read_text(encoding="utf-8")
    return strip_source(text, language, str(path))


def has_markers(path) -> bool:
    """Whether a handled source file carries any solution or hidden-test marker line."""
    language = language_of(path)
    if language is None:
        return False
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return bool(find_regions(text, language, str(path)))
