"""End-to-end check of the grading pipeline (``make test-grading``).

Runs in a scratch course under build/check/ (never touches release/, submitted/, autograded/):

(a) + (b) the student's path: ``graders.release`` builds a release; for each notebook k in
    order, a student copy of the release gets the reference code of exactly the exercises of
    notebooks before k (course/manifest.py), the student tool (``python -m course submit``)
    writes its archive, which is unpacked (checksums verified) and autograded: k's exercises
    left as stubs, the notebook runs with only stub errors (none before the first graded
    cell), every autograded cell scores 0 and the grade report names each of k's exercises;
    with k's exercises' reference code too (library files and solution cells), full
    automatic marks. The first grading also checks that the release builds and imports;
(c) no solution code, model answer or hidden test text appears anywhere in the release;
(d) grader audit: every wrong solution of graders/audit_catalog.py, applied to the reference
    and autograded (only the notebooks it affects), loses points; the table shows which tests
    caught it;
(e) tampering: an edited and a deleted test cell are restored and still graded; an infinite
    loop in a solution times out (short timeout here) and the other cells are still graded;
    feedback does not show hidden tests;
(f) cheats and robustness cases (graders/cheat_catalog.py) gain nothing and cost nothing;
(g) the sandbox contains hostile commands (graders/check_sandbox.py);
(h) Colab emulation (graders/colab_emulation.py): the release's notebooks in fresh kernels of
    a Colab-like environment, with only stub errors, then, with the reference solutions in
    the "Drive" copy, with no error. It runs in its own process beside (a)-(g), so the two
    cores of a small CI machine are both busy.

Exit status 0 only when every check passes. ``--only-audit NAME`` / ``--skip-audit`` /
``--notebooks`` restrict the work while developing.
"""
from __future__ import annotations

import argparse
import atexit
import html
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import nbformat  # noqa: E402

from graders.audit_catalog import CATALOG, Patch  # noqa: E402
from graders.autograde import (STUB_MESSAGE, WORKSPACE, autograde_one, cell_scores,  # noqa: E402
                               library_tests_hit_stubs)
from graders.build_cache import BuildCache  # noqa: E402
from graders.course import (AUTOGRADED_DIR, FEEDBACK_DIR, REPO, SUBMITTED_DIR,  # noqa: E402
                            course_manifest, reference_notebook, tool_path,
                            unpack_submission, walk_repo)
from graders.workspace import splice_functions  # noqa: E402
from graders.feedback import generate_feedback  # noqa: E402
from graders.release import release  # noqa: E402
from graders.strip import find_regions, language_of  # noqa: E402

CHECK = REPO / "build" / "check"
MANIFEST = course_manifest()
# Compiled modules per native-source hash, shared with graders/check_scale.py.
NATIVE_BUILDS = BuildCache(REPO / "build" / "native_cache")
TAMPER = {
    "notebook": "03_quant_basics",
    "edit": "test_quantize",                  # its source is replaced by `pass`
    "delete": "test_per_channel",             # removed from the submitted notebook
    "loop": Patch("r = np.rint(b / s)", "while True: pass", file="needle/quant/reference.py"),
    "loop_cells": {"test_quantize_bias", "test_library"},  # the tests that call the looping function
    "timeout": 20,
}
STUB_ERRORS = ("NotImplementedError",)
#: wrong solutions also graded through nbgrader and the sandbox (the rest: graders/audit_fast.py)
END_TO_END_MUTANTS = ("round_toward_zero", "per_tensor_weights", "minmax_last_batch")


def _stub_error(ename, evalue):
    """A Python stub raises NotImplementedError; a C++ stub a RuntimeError with the same
    message ('<function>: exercise <n.m> of notebook <id>')."""
    return ename in STUB_ERRORS or (ename == "RuntimeError" and (
        STUB_MESSAGE.search(evalue) is not None or "not implemented" in evalue)) or \
        library_tests_hit_stubs(ename, evalue)
_MARKER_LINE = re.compile(r"^\s*(###|//)\s*(BEGIN|END)\s+(SOLUTION|HIDDEN TESTS)\s*$")


class Report:
    def __init__(self):
        self.rows = []

    def add(self, check, ok, detail=""):
        self.rows.append((check, bool(ok), detail))
        print(f"[{'PASS' if ok else 'FAIL'}] {check}" + (f": {detail}" if detail else ""),
              flush=True)

    @property
    def ok(self):
        return all(ok for _, ok, _ in self.rows)


# ---------------------------------------------------------------------------------- helpers

def _read_nb(path):
    return nbformat.read(str(path), as_version=4)


def _grade_id(cell):
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def make_submission(student, name, nb, library_files, patches=(), stub_files=(),
                    release_dir=None, root=None):
    """Write submitted/<student>/<name>/ (of ``root``, default build/check) with notebook ``nb``
    and reference library files (``stub_files`` from the release instead). A patch with
    ``old == ""`` appends ``new``."""
    sub = (root or CHECK) / SUBMITTED_DIR / student / name
    if sub.exists():
        shutil.rmtree(sub)
    sub.mkdir(parents=True)
    texts = {rel: ((release_dir if rel in stub_files else REPO) / rel).read_text()
             for rel in library_files}
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))  # deep copy
    for p in patches:
        if p.file is not None and p.old == "":
            texts[p.file] += p.new
            continue
        if p.file is not None:
            if p.file not in texts:
                raise ValueError(f"patch targets {p.file}, not a student file of {name}")
            n = texts[p.file].count(p.old)
            if n != 1:
                raise ValueError(f"patch text occurs {n} times in {p.file}: {p.old!r}")
            texts[p.file] = texts[p.file].replace(p.old, p.new)
        elif p.cell is not None and p.cell[0] == name:
            cells = [c for c in nb.cells if _grade_id(c) == p.cell[1]]
            if len(cells) != 1:
                raise ValueError(f"no solution cell {p.cell[1]!r} in {name}")
            n = cells[0].source.count(p.old)
            if n != 1:
                raise ValueError(f"patch text occurs {n} times in cell {p.cell}: {p.old!r}")
            cells[0].source = cells[0].source.replace(p.old, p.new)
    for rel, text in texts.items():
        (sub / rel).parent.mkdir(parents=True, exist_ok=True)
        (sub / rel).write_text(text)
    nbformat.write(nb, str(sub / f"{name}.ipynb"))
    return sub


def student_copy(release_dir, name, include_own):
    """A student's copy of the release after the notebooks before ``name`` (and ``name``
    itself with ``include_own``): the reference code of exactly those exercises (course
    manifest) laid into its library files, and with ``include_own`` the notebook's solution
    cells filled in."""
    k = MANIFEST.notebook_index(name)
    label = "reference" if include_own else "release"
    dest = CHECK / "students" / f"{label}-{name}"
    if dest.exists():
        shutil.rmtree(dest)
    shutil.copytree(release_dir, dest)
    by_file = {}
    for nb in MANIFEST.NOTEBOOKS[:k + 1 if include_own else k]:
        for ex in nb["exercises"]:
            f = MANIFEST.library_file(ex)
            if f:
                by_file.setdefault(f, []).extend(MANIFEST.functions(ex))
    for f, funcs in by_file.items():
        ref_text = (REPO / f).read_text()
        if f.endswith(".py"):
            text, notes = splice_functions((dest / f).read_text(), ref_text, funcs, f)
            if notes:
                raise RuntimeError(f"student copy {dest}: {notes}")
        else:
            text = ref_text                      # a native file holds one notebook's exercises
        (dest / f).write_text(text)
    if include_own:
        nbformat.write(reference_notebook(name, release_dir), str(dest / "notebooks" / f"{name}.ipynb"))
    return dest


def submit_tool(copy, name, out_dir):
    """The student tool's ``submit`` (``make submit NB=..``) run in the student's copy."""
    env = {k: v for k, v in os.environ.items() if k != "NEEDLE_ROOT"}
    res = subprocess.run([sys.executable, "-m", "course", "submit", name, "--out", str(out_dir)],
                         cwd=copy, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"make submit NB={name} failed in {copy}:\n{res.stdout}{res.stderr}")
    return Path(out_dir) / f"{name}.zip"


def student_tool(copy, tool, name):
    """(exit status, output) of ``python -m course <tool> <name>`` in a student copy (the
    native build skipped: notebook 03 needs none)."""
    env = {k: v for k, v in os.environ.items() if k != "NEEDLE_ROOT"}
    env.update({"NEEDLE_SETUP_BUILD": "0", "PATH": tool_path()})
    res = subprocess.run([sys.executable, "-m", "course", tool, name], cwd=copy, env=env,
                         capture_output=True, text=True)
    return res.returncode, res.stdout + res.stderr
def apply_edits(nb, edits):
    """Apply cheat_catalog.NbEdit edits (structure, metadata) to a notebook, in place."""
    for e in edits:
        idx = [i for i, c in enumerate(nb.cells) if _grade_id(c) == e.target]
        if e.op == "kernelspec":
            nb.metadata["kernelspec"] = {"name": "evil", "display_name": "x", "language": "python"}
            continue
        if len(idx) != 1:
            raise ValueError(f"edit {e.op}: no single cell {e.target!r}")
        i = idx[0]
        if e.op == "insert_after":
            cell = nbformat.v4.new_code_cell(e.source)
            if e.metadata:
                cell.metadata["nbgrader"] = dict(e.metadata)
            nb.cells.insert(i + 1, cell)
        elif e.op == "append_to":
            nb.cells[i].source += "\n" + e.source
        elif e.op == "delete":
            del nb.cells[i]
        elif e.op == "move_to_end":
            nb.cells.append(nb.cells.pop(i))
        elif e.op == "metadata":
            nb.cells[i].metadata.setdefault("nbgrader", {}).update(e.metadata or {})
            if e.source:
                nb.cells[i].source = e.source
        else:
            raise ValueError(f"unknown edit {e.op}")


def case_submission(student, case, release_dir, lib_files, with_trick):
    """Write the submission of a cheat_catalog case (its honest part, plus the trick)."""
    from graders.cheat_catalog import NbEdit
    nb = reference_notebook(case.notebook, release_dir)
    rel = {_grade_id(c): c for c in _read_nb(release_dir / "notebooks" / f"{case.notebook}.ipynb").cells}
    for cell in nb.cells:
        if _grade_id(cell) in case.stub_cells:
            cell.source = rel[_grade_id(cell)].source
    parts = list(case.patches) + list(case.edits) + (list(case.trick) if with_trick else [])
    patches = [p for p in parts if isinstance(p, Patch)]
    edits = [p for p in parts if isinstance(p, NbEdit)]
    nb = nbformat.from_dict(json.loads(json.dumps(nb)))
    sub = make_submission(student, case.notebook, nb, lib_files, patches,
                          stub_files=case.stub_files, release_dir=release_dir)
    nb = _read_nb(sub / f"{case.notebook}.ipynb")
    apply_edits(nb, edits)
    nbformat.write(nb, str(sub / f"{case.notebook}.ipynb"), version=4) if not any(
        e.op == "metadata" for e in edits) else (sub / f"{case.notebook}.ipynb").write_text(
        json.dumps(nb))
    return sub


def host_check(what, sub_before, student, name):
    """The host-side checks of a cheat case: True when the host is untouched."""
    from graders.cheat_catalog import MARK
    if what == "no_marker_files":
        hits = [p for root in (REPO, CHECK, Path("/tmp"), Path("/work"))
                for p in (root.glob(f"**/{MARK}.txt") if root != Path("/work") else
                          root.glob(f"*/{MARK}.txt"))]
        return not hits, f"files left: {hits[:3]}" if hits else ""
    if what == "no_marker_process":
        ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
        left = [line for line in ps.splitlines() if line.startswith(MARK)]
        return not left, f"processes left: {left[:3]}" if left else ""
    if what == "no_hidden_tests_in_outputs":
        # the outputs of cells that are not test cells hold no line of a hidden test
        inst = _read_nb(REPO / "notebooks" / f"{name}.ipynb")
        hidden = set()
        for c in inst.cells:
            src = c.source if isinstance(c.source, str) else "".join(c.source)
            for block in re.findall(r"### BEGIN HIDDEN TESTS\n(.*?)### END HIDDEN TESTS", src, re.S):
                hidden |= {ln.strip() for ln in block.splitlines() if len(ln.strip()) >= 25}
        graded = _read_nb(CHECK / AUTOGRADED_DIR / student / name / f"{name}.ipynb")
        texts = [json.dumps(c.get("outputs", [])) for c in graded.cells
                 if not c.metadata.get("nbgrader", {}).get("grade")]
        hits = [ln for ln in hidden if any(json.dumps(ln)[1:-1] in t for t in texts)]
        return not hits, f"hidden test lines in outputs: {hits[:2]}" if hits else ""
    if what == "small_notebook":
        p = CHECK / AUTOGRADED_DIR / student / name / f"{name}.ipynb"
        size = p.stat().st_size if p.exists() else -1
        return 0 < size < 4 << 20, f"graded notebook {size} bytes"
    raise ValueError(what)


def run_cases(rep, cases, release_dir, lib_files, grade, ref_scores):
    """Grade every cheat_catalog case and its baseline; one table row per case."""
    rows, baselines = [], {}
    for case in cases:
        name = case.notebook
        if name not in ref_scores:
            continue
        key = (name, case.patches, case.stub_files, case.stub_cells, case.edits)
        try:
            if case.kind == "cheat":
                if key not in baselines:
                    student = f"base_{len(baselines)}"
                    case_submission(student, case, release_dir, lib_files(name), False)
                    grade(student, name, timeout=case.timeout or 120)
                    baselines[key] = auto_scores(student, name)
                base = baselines[key]
            else:
                base = ref_scores[name]
            student = "case_" + case.name
            case_submission(student, case, release_dir, lib_files(name), True)
            info = grade(student, name, timeout=case.timeout or 120)
            got = auto_scores(student, name)
        except (ValueError, RuntimeError) as e:
            rows.append((case, None, None, False, str(e).splitlines()[0]))
            continue
        gained = [k[1] for k, v in got.items() if (v[0] or 0) > (base.get(k, (0,))[0] or 0)]
        lost = [k[1] for k, v in got.items() if (v[0] or 0) < (base.get(k, (0,))[0] or 0)]
        extra = [k[1] for k in got if k not in base]
        if case.kind == "cheat":
            ok = not gained and not extra
            detail = f"gained {gained + extra}" if not ok else ""
        else:
            ok = set(lost) <= set(case.lose) and not extra and set(case.lose) <= set(lost)
            detail = f"lost {lost}, expected {list(case.lose)}" if not ok else ""
        for hc in case.host_checks:
            hok, hd = host_check(hc, None, student, name)
            ok = ok and hok
            detail += ("; " if detail else "") + (hd if not hok else "")
        pts = (sum(v[0] or 0 for v in got.values()), sum(v[0] or 0 for v in base.values()),
               sum(v[1] for v in got.values()))
        rows.append((case, pts, info["record"], ok, detail))
        print(f"  {case.name}: {pts[0]:g}/{pts[2]:g} (baseline {pts[1]:g}) "
              f"{'ok' if ok else 'FAILED ' + detail}", flush=True)
    print("\nCheats and robustness (a cheat gains nothing over its honest baseline; correct "
          "work keeps its marks):")
    print(f"  {'case':32} {'kind':7} {'points':>9} {'baseline':>8}  verdict")
    for case, pts, rec, ok, detail in rows:
        p = "-" if pts is None else f"{pts[0]:g}/{pts[2]:g}"
        b = "-" if pts is None else f"{pts[1]:g}"
        print(f"  {case.name:32} {case.kind:7} {p:>9} {b:>8}  {'ok' if ok else 'FAILED'} {detail}")
    for kind, label in (("cheat", "cheats defeated"), ("robust", "correct-but-noisy kept")):
        sel = [r for r in rows if r[0].kind == kind]
        bad = [r[0].name for r in sel if not r[3]]
        rep.add(f"{label}: {len(sel) - len(bad)}/{len(sel)}", sel and not bad,
                f"failed: {bad}" if bad else "")
    return rows


def autograded_nb(student, name):
    return _read_nb(CHECK / AUTOGRADED_DIR / student / name / f"{name}.ipynb")


def notebook_errors(nb):
    """[(cell index, grade_id or None, ename, evalue)] of the error outputs of a notebook."""
    out = []
    for i, cell in enumerate(nb.cells):
        for o in cell.get("outputs", []):
            if o.get("output_type") == "error":
                out.append((i, _grade_id(cell), o.get("ename"), str(o.get("evalue"))))
    return out


def auto_scores(student, name):
    return {k: v for k, v in cell_scores(CHECK, student, name).items() if v[2]}


# ---------------------------------------------------------------------------------- (c) leaks

def _norm(line):
    return " ".join(line.split())


def _interesting(line):
    return len(line) >= 10 and re.search(r"[A-Za-z0-9]", line) is not None


def solution_lines():
    """(secret lines, public lines): normalized lines inside / outside solution and hidden-test
    regions of the instructor's library files and notebooks (model answers are secret)."""
    secret, public = {}, set()
    for rel in walk_repo(REPO):
        lang = language_of(rel)
        if lang is None or rel.startswith("notebooks/"):
            continue
        text = (REPO / rel).read_text(errors="replace")
        regions = find_regions(text, lang, rel)
        inside = set()
        for r in regions:
            inside.update(range(r.begin, r.end + 1))
            for line in r.body:
                if _interesting(_norm(line)):
                    secret.setdefault(_norm(line), f"{rel}:{r.begin}")
        for i, line in enumerate(text.splitlines(), start=1):
            if i not in inside:
                public.add(_norm(line))
    for path in sorted((REPO / "notebooks").glob("*.ipynb")):
        for cell in _read_nb(path).cells:
            nbg = cell.metadata.get("nbgrader", {})
            lines = cell.source.splitlines()
            if cell.cell_type == "markdown" and nbg.get("solution"):
                for line in lines:
                    if _interesting(_norm(line)):
                        secret.setdefault(_norm(line), f"{path.name}:{nbg.get('grade_id')}")
                continue
            if cell.cell_type != "code":
                public.update(_norm(x) for x in lines)
                continue
            regions = find_regions(cell.source, "python", path.name)
            inside = set()
            for r in regions:
                inside.update(range(r.begin, r.end + 1))
                for line in r.body:
                    if _interesting(_norm(line)):
                        secret.setdefault(_norm(line), f"{path.name}:{nbg.get('grade_id')}")
            public.update(_norm(x) for i, x in enumerate(lines, 1) if i not in inside)
    return {k: v for k, v in secret.items() if k not in public}, public


def scan_release(release_dir):
    secret, _ = solution_lines()
    leaks = []
    n_files = 0
    for rel in walk_repo(release_dir):
        path = release_dir / rel
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        if b"\0" in raw[:4096]:
            continue                                  # binary (checkpoint, ...)
        n_files += 1
        text = raw.decode("utf-8", errors="replace")
        if rel.endswith(".ipynb"):
            nb = nbformat.reads(text, as_version=4)
            lines = []
            for cell in nb.cells:
                lines += cell.source.splitlines()
                for o in cell.get("outputs", []):
                    lines += str(o.get("text", "")).splitlines()
                    lines += str(o.get("data", {}).get("text/plain", "")).splitlines()
        else:
            lines = text.splitlines()
        for i, line in enumerate(lines, start=1):
            if _MARKER_LINE.match(line):
                leaks.append(f"{rel}:{i}: marker line {line.strip()!r}")
            elif _norm(line) in secret:
                leaks.append(f"{rel}:{i}: solution text from {secret[_norm(line)]}: "
                             f"{_norm(line)[:60]!r}")
    return leaks, n_files, len(secret)


# ---------------------------------------------------------------------------------- main

def run(args) -> int:
    t_start = time.time()
    rep = Report()
    for d in ("release", SUBMITTED_DIR, AUTOGRADED_DIR, FEEDBACK_DIR, "build/course", "students",
              "archives"):
        if (CHECK / d).exists():
            shutil.rmtree(CHECK / d)
    CHECK.mkdir(parents=True, exist_ok=True)
    release_dir = CHECK / "release"
    print("== release", flush=True)
    manifest = release(REPO, out=release_dir, course_root=CHECK, names=args.notebooks)
    names = list(manifest["assignments"])
    student_files = manifest["student_files"]

    def lib_files(name):
        return [f for f in manifest["assignments"][name].get("library_files", [])
                if f in student_files]

    # The Colab emulation (h) needs only the release and its own runtime: it runs beside the
    # rest on the second core, and (h) collects its result.
    colab = None
    if not args.skip_colab:
        (CHECK / "colab.json").unlink(missing_ok=True)
        colab_log = open(CHECK / "colab.log", "wb")
        colab = (subprocess.Popen([sys.executable, "-m", "graders.colab_emulation",
                                   "--release", str(release_dir), "--work", str(CHECK / "colab"),
                                   "--json", str(CHECK / "colab.json")],
                                  cwd=REPO, stdout=colab_log, stderr=subprocess.STDOUT),
                 time.time())
        atexit.register(lambda p=colab[0]: p.poll() is None and p.kill())

    from graders.sandbox import probe
    isolated = probe()["isolated"]
    if not isolated:   # e.g. CI without root: grade anyway, say so, skip what needs the sandbox
        print(f"WARNING: no sandbox on this machine ({probe()['reason']}): grading unisolated; "
              f"the sandbox checks and the cheats that need it are skipped", flush=True)

    def grade(student, name, **kw):
        return autograde_one(CHECK, student, name, manifest, jobs=args.jobs,
                             allow_unisolated=not isolated, native_cache=NATIVE_BUILDS, **kw)

    # (a) + (b) the student's path ------------------------------------------------------
    # For each notebook k in order, a student copy of the release holds the reference code of
    # the exercises of notebooks before k ("stubs": k's own exercises untouched) or up to and
    # including k ("reference": k's solution cells filled in too); the student tool writes the
    # submission archive, which is unpacked and graded like a real one.
    print("== (a) + (b) the student's path, notebook by notebook", flush=True)
    ref_scores = {}
    for i, name in enumerate(names):
        for label in ("release", "reference"):
            t0 = time.time()
            copy = student_copy(release_dir, name, include_own=label == "reference")
            archive = submit_tool(copy, name, CHECK / "archives" / label)
            _, problems = unpack_submission(archive, CHECK / SUBMITTED_DIR, label)
            if problems:
                rep.add(f"{name}: {label} archive unpacks with matching checksums", False,
                        "; ".join(problems))
            info = grade(label, name)
            scores = auto_scores(label, name)
            print(f"  {label:9} {name}: archive + grading in {time.time() - t0:.0f}s "
                  f"(grading {info['seconds']:.0f}s)", flush=True)
            # a notebook without exercises (00: given code and a written answer) has no
            # autograded cell; both copies must run it cleanly
            no_exercises = not list(MANIFEST.exercises(name))

            def check_no_exercises():
                errs = notebook_errors(autograded_nb(label, name))
                rep.add(f"{name}: no exercises, no autograded cells, the {label} copy runs "
                        f"without errors", not scores and not errs,
                        f"scores {scores}, errors {errs[:2]}" if scores or errs else "")
            if label == "reference" and no_exercises:
                ref_scores[name] = scores
                check_no_exercises()
                continue
            if label == "reference":
                ref_scores[name] = scores
                got = sum(v[0] or 0 for v in scores.values())
                full = sum(v[1] for v in scores.values())
                missing = {k[1]: f"{v[0]}/{v[1]}" for k, v in scores.items()
                           if (v[0] or 0) < v[1]}
                rep.add(f"{name}: reference (exercises up to {name}) gets full automatic marks "
                        f"({got:g}/{full:g})", scores and not missing,
                        f"short: {missing}" if missing else "")
                continue
            if i == 0:
                rep.add("release builds (native backends from stubs)", info["build_ok"],
                        f"log in {CHECK / 'build/grading/logs'}")
                ws = CHECK / WORKSPACE
                imp = subprocess.run(
                    [sys.executable, "-c",
                     "import needle, needle.quant; print(needle.default_device())"],
                    cwd=ws, capture_output=True, text=True,
                    env={**os.environ, "PYTHONPATH": str(ws)})
                rep.add("release imports (import needle, needle.quant)", imp.returncode == 0,
                        (imp.stdout.strip() or imp.stderr.strip().splitlines()[-1:][0]
                         if (imp.stdout.strip() or imp.stderr.strip()) else ""))
            if no_exercises:
                check_no_exercises()
                continue
            nb = autograded_nb(label, name)
            errs = notebook_errors(nb)
            first_graded = min([i for i, c in enumerate(nb.cells)
                                if c.metadata.get("nbgrader", {}).get("grade")],
                               default=len(nb.cells))
            bad = [e for e in errs if e[0] < first_graded or not _stub_error(e[2], e[3])]
            rep.add(f"{name}: its exercises as stubs, the notebook runs (only stub errors)",
                    not bad, "; ".join(f"cell {i} {g or ''} {en}: {ev[:120]}" for i, g, en, ev in bad[:3]))
            nonzero = {k[1]: v[0] for k, v in scores.items() if v[0]}
            rep.add(f"{name}: its exercises as stubs score 0 on {len(scores)} autograded cells",
                    scores and not nonzero, f"non-zero: {nonzero}" if nonzero else "")
            want = [MANIFEST.label(ex) for _, ex in MANIFEST.exercises(name)]
            named = info["report"].get("not_implemented", [])
            rep.add(f"{name}: the grade report names its {len(want)} unwritten exercises",
                    set(want) <= set(named),
                    "" if set(want) <= set(named) else f"named {named}, expected {want}")

    # The student tools on notebook 03 in the two student copies: `check` summarises per
    # exercise, `validate` (nbgrader validate, which itself exits 0 whatever the verdict) has
    # a truthful exit status.
    name = "03_quant_basics"
    n_ex = len(list(MANIFEST.exercises(name)))
    for label, want_rc in (("reference", 0), ("release", 1)) if name in names else ():
        copy = CHECK / "students" / f"{label}-{name}"
        for tool in ("check", "validate"):
            t0 = time.time()
            rc, out = student_tool(copy, tool, name)
            lines = [ln for ln in out.splitlines()
                     if re.match(r"^\d+\.\d+ [\w.]+( \+ [\w.]+)*: \d+/\d+ passed$", ln)]
            ok = rc == want_rc
            if tool == "check":
                full = [ln for ln in lines if re.search(r": (\d+)/\1 passed$", ln)]
                ok &= len(lines) == n_ex and len(full) == (n_ex if want_rc == 0 else 0)
            rep.add(f"make {tool} NB={name[:2]} on the {label} copy exits {want_rc}"
                    + (f" with {n_ex} per-exercise lines" if tool == "check" else "")
                    + f" ({time.time() - t0:.0f}s)", ok,
                    "" if ok else f"exit {rc}: " + " | ".join(out.strip().splitlines()[-8:]))
            if tool == "check" and label == "reference":
                print("\n".join("    " + ln for ln in lines))
    # reliability: the same submission graded twice gives the same scores (notebook 03 when it
    # is graded: library tests, property tests, the most cells; else the first notebook)
    again = "03_quant_basics" if "03_quant_basics" in names else names[0]
    grade("reference", again)
    twice = auto_scores("reference", again)
    rep.add(f"{again}: grading the reference twice gives the same scores",
            twice == ref_scores[again], "" if twice == ref_scores[again] else
            f"first {ref_scores[again]}, then {twice}")


    # (c) leaks -------------------------------------------------------------------------
    print("== (c) leak scan", flush=True)
    leaks, n_files, n_secret = scan_release(release_dir)
    rep.add(f"release holds no solution/hidden-test text ({n_files} text files, "
            f"{n_secret} secret lines)", not leaks, "; ".join(leaks[:5]))

    # (d) audit -------------------------------------------------------------------------
    # Every Python-level wrong solution against the notebooks' tests (graders/audit_fast.py,
    # one fresh interpreter each); a few of them also through the whole grading path. The
    # C++/CUDA ones rebuild the backend and run in `make audit`.
    if not args.skip_audit:
        print("== (d) grader audit", flush=True)
        from graders.audit_fast import audit, print_table
        from graders.rules import check_rules
        from course.manifest import NOTEBOOKS
        problems = check_rules(CATALOG, [f for nb in NOTEBOOKS for e in nb["exercises"]
                                        for f in MANIFEST.functions(e)])
        rep.add("every exercise lists its stated rules, each pinned by wrong solutions",
                not problems, "; ".join(problems[:5]))
        from graders.audit_catalog import ci_subset
        pool = CATALOG if (args.all_mutants or args.only_audit) else ci_subset()
        catalog = [m for m in pool if (not args.only_audit or m.name in args.only_audit)
                   and all(n in names for n in m.notebooks)]
        rows, broken = audit(release_dir, student_files, catalog, CHECK / "audit",
                             native=args.native_audit, jobs=args.jobs)
        n_caught, n_ran = print_table(rows)
        rep.add(f"grader audit: {n_caught}/{n_ran} wrong solutions lose points "
                f"({len(rows) - n_ran} C++/CUDA ones run in make audit)",
                n_caught == n_ran and not broken and n_ran >= (
                    80 if args.all_mutants and not args.notebooks else 1),
                f"not caught: {[r[0].name for r in rows if r[1] is not None and not r[1]]}; "
                f"reference fails: {broken}" if n_caught != n_ran or broken else "")
        by_name = {m.name: m for m in catalog}
        for mname in [m for m in END_TO_END_MUTANTS if m in by_name]:
            mut = by_name[mname]
            name = mut.notebooks[0]
            make_submission("mut_" + mname, name, reference_notebook(name, release_dir),
                            lib_files(name), mut.patches)
            grade("mut_" + mname, name)
            lost = [k[1] for k, (sc, _, _) in auto_scores("mut_" + mname, name).items()
                    if (sc or 0) < (ref_scores[name][k][0] or 0)]
            rep.add(f"wrong solution {mname} graded end to end loses points", lost,
                    f"caught by {lost}" if lost else "NOT CAUGHT")

    # (e) tampering ---------------------------------------------------------------------
    if TAMPER["notebook"] in names and not args.skip_tamper:
        print("== (e) tampering", flush=True)
        name = TAMPER["notebook"]
        nb = reference_notebook(name, release_dir)
        for cell in nb.cells:
            if _grade_id(cell) == TAMPER["edit"]:
                cell.source = "pass  # the tests were removed"
        nb.cells = [c for c in nb.cells if _grade_id(c) != TAMPER["delete"]]
        make_submission("tamper", name, nb, lib_files(name), [TAMPER["loop"]])
        t0 = time.time()
        grade("tamper", name, timeout=TAMPER["timeout"])
        took = time.time() - t0
        scores = auto_scores("tamper", name)
        by_id = {k[1]: v for k, v in scores.items()}
        for gid, what in ((TAMPER["edit"], "edited"), (TAMPER["delete"], "deleted")):
            s = by_id.get(gid)
            rep.add(f"{what} test cell {gid} is restored and graded",
                    s is not None and s[0] == s[1], f"score {s}")
        looped = {g: by_id.get(g) for g in TAMPER["loop_cells"]}
        rest_full = all(v[0] == v[1] for g, v in by_id.items() if g not in TAMPER["loop_cells"])
        rep.add(f"infinite loop times out ({took:.0f}s for the notebook) and the rest is graded",
                all(v is not None and not v[0] for v in looped.values()) and rest_full,
                f"looping cells {looped}, other cells full: {rest_full}")
        # feedback keeps hidden tests hidden
        generate_feedback(CHECK, name, "reference")
        fb = (CHECK / FEEDBACK_DIR / "reference" / name / f"{name}.html").read_text()
        inst = _read_nb(REPO / "notebooks" / f"{name}.ipynb")
        hidden = []
        for cell in inst.cells:
            if cell.cell_type == "code":
                for r in find_regions(cell.source, "python"):
                    if r.kind == "HIDDEN TESTS":
                        hidden += [x.strip() for x in r.body if len(x.strip()) > 20]
        shown = [h for h in hidden if html.escape(h) in fb or h in fb]
        rep.add("feedback does not show hidden tests", "HIDDEN TESTS" not in fb and not shown,
                f"{len(shown)} hidden lines shown" if shown else "")

    # (h) Colab emulation -------------------------------------------------------------
    if colab is not None:
        print("== (h) Colab emulation (ran beside the checks above)", flush=True)
        proc, t0 = colab
        proc.wait()
        took = time.time() - t0
        try:
            res = json.loads((CHECK / "colab.json").read_text())
        except (OSError, ValueError) as e:
            tail = (CHECK / "colab.log").read_text(errors="replace")[-2000:]
            res = {"ok": False, "problems": [f"no result ({e}), exit {proc.returncode}: {tail}"]}
        rep.add(f"Colab emulation: {len(names)} notebooks with only stub errors, then with the "
                f"reference solutions on Drive with none ({took:.0f}s, log {CHECK / 'colab.log'})",
                res["ok"], "; ".join(res["problems"][:4]))
    # (f) cheats and robustness, (g) the sandbox itself ----------------------------------
    if not args.skip_cases:
        print("== (f) cheats and robustness", flush=True)
        from graders.cheat_catalog import CASES, CI_CASES
        want = args.case or (None if args.all_cases else CI_CASES)
        cases = [c for c in CASES if (want is None or c.name in want)
                 and (isolated or not c.needs_sandbox)]
        run_cases(rep, cases, release_dir, lib_files, grade, ref_scores)
    print("== (g) sandbox", flush=True)
    from graders.check_sandbox import checks as sandbox_checks
    for check, ok, detail in (sandbox_checks() if isolated else []):
        rep.add(check, ok, detail)

    passed = sum(ok for _, ok, _ in rep.rows)
    print(f"\n{passed}/{len(rep.rows)} checks passed in {time.time() - t_start:.0f}s")
    # The closing line in the conventional "N passed, N failed" form that test logs end with.
    print(f"grading: {passed} passed, {len(rep.rows) - passed} failed")
    return 0 if rep.ok else 1


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebooks", nargs="*", help="only these notebooks")
    ap.add_argument("--skip-audit", action="store_true")
    ap.add_argument("--skip-tamper", action="store_true")
    ap.add_argument("--skip-colab", action="store_true", help="skip the Colab emulation (h)")
    ap.add_argument("--only-audit", action="append", help="only this mutation (repeatable)")
    ap.add_argument("--skip-cases", action="store_true", help="no cheat / robustness cases")
    ap.add_argument("--all-mutants", action="store_true",
                    help="every wrong solution (default: audit_catalog.ci_subset())")
    ap.add_argument("--native-audit", action="store_true",
                    help="also the C++/CUDA wrong solutions (rebuilds; make audit)")
    ap.add_argument("--all-cases", action="store_true",
                    help="every case of graders/cheat_catalog.py (default: its CI_CASES)")
    ap.add_argument("--case", action="append", help="only this cheat / robustness case")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
