"""End-to-end check of the grading pipeline (``make test-grading``).

Runs in a scratch course under build/check/ (never touches release/, submitted/, autograded/):

(a) ``graders.release`` builds a release; its native code builds and ``needle`` imports from it;
    autograding the untouched release runs every notebook (errors only from the stubs, none
    before the first graded cell) and gives 0 points on every autograded cell;
(b) the reference solution, submitted the way a student would (release notebook with the
    solution cells filled in + the reference library files), gets full automatic marks;
(c) no solution code, model answer or hidden test text appears anywhere in the release;
(d) grader audit: every wrong solution of graders/audit_catalog.py, applied to the reference
    and autograded (only the notebooks it affects), loses points; the table shows which tests
    caught it;
(e) tampering: an edited and a deleted test cell are restored and still graded; an infinite
    loop in a solution times out (short timeout here) and the other cells are still graded;
    feedback does not show hidden tests.

Exit status 0 only when every check passes. ``--only-audit NAME`` / ``--skip-audit`` /
``--notebooks`` restrict the work while developing.
"""
from __future__ import annotations

import argparse
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
from graders.autograde import STUB_MESSAGE, WORKSPACE, autograde_one, cell_scores  # noqa: E402
from graders.build_cache import BuildCache  # noqa: E402
from graders.course import (AUTOGRADED_DIR, FEEDBACK_DIR, REPO, SUBMITTED_DIR,  # noqa: E402
                            tool_path, walk_repo)
from graders.feedback import generate_feedback  # noqa: E402
from graders.release import release  # noqa: E402
from graders.strip import find_regions, language_of  # noqa: E402

CHECK = REPO / "build" / "check"
# Compiled modules per native-source hash, shared with graders/check_scale.py.
NATIVE_BUILDS = BuildCache(REPO / "build" / "native_cache")
TAMPER = {
    "notebook": "03_quant_basics",
    "edit": "test_quantize",                  # its source is replaced by `pass`
    "delete": "test_per_channel",             # removed from the submitted notebook
    "loop": Patch("r = np.rint(b / s)", "while True: pass", file="needle/quant/reference.py"),
    "loop_cells": {"test_quantize_bias"},     # the only tests that call the looping function
    "timeout": 20,
}
STUB_ERRORS = ("NotImplementedError",)


def _stub_error(ename, evalue):
    """A Python stub raises NotImplementedError; a C++ stub a RuntimeError with the same
    message ('<function>: exercise <n.m> of notebook <id>')."""
    return ename in STUB_ERRORS or (ename == "RuntimeError" and (
        STUB_MESSAGE.search(evalue) is not None or "not implemented" in evalue))
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


def reference_notebook(name, release_dir):
    """The release notebook with every solution cell filled in from the instructor notebook."""
    inst = {_grade_id(c): c for c in _read_nb(REPO / "notebooks" / f"{name}.ipynb").cells}
    nb = _read_nb(release_dir / "notebooks" / f"{name}.ipynb")
    for cell in nb.cells:
        nbg = cell.metadata.get("nbgrader", {})
        if nbg.get("solution") and _grade_id(cell) in inst:
            cell.source = inst[_grade_id(cell)].source
    return nb


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
                out.append((i, _grade_id(cell), o.get("ename"), str(o.get("evalue"))[:120]))
    return out


def auto_scores(student, name):
    return {k: v for k, v in cell_scores(CHECK, student, name).items() if v[2]}


def validate(nb_path, needle_root):
    """Output of `nbgrader validate` (exit status 0 whatever the verdict) for a notebook."""
    env = {**os.environ, "NEEDLE_ROOT": str(needle_root), "PATH": tool_path()}
    res = subprocess.run([sys.executable, "-m", "nbgrader", "validate", str(nb_path)],
                         cwd=nb_path.parent, env=env, capture_output=True, text=True)
    return res.stdout + res.stderr


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
    for d in ("release", SUBMITTED_DIR, AUTOGRADED_DIR, FEEDBACK_DIR, "build/course"):
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

    def grade(student, name, **kw):
        return autograde_one(CHECK, student, name, manifest, jobs=args.jobs,
                             native_cache=NATIVE_BUILDS, **kw)

    # (a) the untouched release ---------------------------------------------------------
    print("== (a) untouched release", flush=True)
    for i, name in enumerate(names):
        sub = CHECK / SUBMITTED_DIR / "release" / name
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy2(release_dir / "notebooks" / f"{name}.ipynb", sub)
        info = grade("release", name)
        print(f"  autograded untouched {name} in {info['seconds']:.0f}s", flush=True)
        if i == 0:
            rep.add("release builds (native backends from stubs)", info["build_ok"],
                    f"log in {CHECK / 'build/grading/logs'}")
            ws = CHECK / WORKSPACE
            imp = subprocess.run(
                [sys.executable, "-c", "import needle, needle.quant; print(needle.default_device())"],
                cwd=ws, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ws)})
            rep.add("release imports (import needle, needle.quant)", imp.returncode == 0,
                    (imp.stdout.strip() or imp.stderr.strip().splitlines()[-1:][0]
                     if (imp.stdout.strip() or imp.stderr.strip()) else ""))
        nb = autograded_nb("release", name)
        errs = notebook_errors(nb)
        first_graded = min([i for i, c in enumerate(nb.cells)
                            if c.metadata.get("nbgrader", {}).get("grade")], default=len(nb.cells))
        bad = [e for e in errs if e[0] < first_graded or not _stub_error(e[2], e[3])]
        rep.add(f"{name}: release notebook runs (only stub errors)", not bad,
                "; ".join(f"cell {i} {g or ''} {en}: {ev}" for i, g, en, ev in bad[:3]))
        scores = auto_scores("release", name)
        nonzero = {k[1]: v[0] for k, v in scores.items() if v[0]}
        rep.add(f"{name}: untouched release scores 0 on {len(scores)} autograded cells",
                scores and not nonzero, f"non-zero: {nonzero}" if nonzero else "")

    # (b) the reference solution --------------------------------------------------------
    print("== (b) reference solution", flush=True)
    ref_scores = {}
    for name in names:
        make_submission("reference", name, reference_notebook(name, release_dir), lib_files(name))
        grade("reference", name)
        scores = auto_scores("reference", name)
        ref_scores[name] = scores
        got = sum(v[0] or 0 for v in scores.values())
        full = sum(v[1] for v in scores.values())
        missing = {k[1]: f"{v[0]}/{v[1]}" for k, v in scores.items() if (v[0] or 0) < v[1]}
        rep.add(f"{name}: reference gets full automatic marks ({got:g}/{full:g})",
                scores and not missing, f"short: {missing}" if missing else "")

    # `nbgrader validate`, the students' pre-submission check, exits 0 even when tests fail:
    # its verdict is in the output.
    name = "03_quant_basics" if "03_quant_basics" in names else names[0]
    for label, student, root, want in (("reference", "reference", REPO, "Success!"),
                                       ("untouched release", "release", release_dir,
                                        "VALIDATION FAILED")):
        out = validate(CHECK / SUBMITTED_DIR / student / name / f"{name}.ipynb", root)
        rep.add(f"nbgrader validate on the {label} {name} reports {want!r}", want in out,
                "" if want in out else out.strip().splitlines()[-1:])

    # (c) leaks -------------------------------------------------------------------------
    print("== (c) leak scan", flush=True)
    leaks, n_files, n_secret = scan_release(release_dir)
    rep.add(f"release holds no solution/hidden-test text ({n_files} text files, "
            f"{n_secret} secret lines)", not leaks, "; ".join(leaks[:5]))

    # (d) audit -------------------------------------------------------------------------
    audit_rows = []
    if not args.skip_audit:
        print("== (d) grader audit", flush=True)
        catalog = [m for m in CATALOG if not args.only_audit or m.name in args.only_audit]
        if args.notebooks:   # a partial run audits only the mutations of its notebooks
            catalog = [m for m in catalog if any(n in names for n in m.notebooks)]
        full_run = not args.only_audit and not args.notebooks
        for mut in catalog:
            todo = [n for n in mut.notebooks if n in names]
            if not todo:
                audit_rows.append((mut, None, None, [], "notebook not in this release"))
                continue
            caught, got, full, err = [], 0.0, 0.0, ""
            student = "mut_" + mut.name
            try:
                for name in todo:
                    make_submission(student, name, reference_notebook(name, release_dir),
                                    lib_files(name), mut.patches)
                    info = grade(student, name)
                    print(f"  {student}/{name}: {info['seconds']:.0f}s", flush=True)
                    for key, (s, m, _) in auto_scores(student, name).items():
                        got += s or 0
                        full += m
                        if (s or 0) < (ref_scores[name][key][0] or 0):
                            caught.append(f"{name}:{key[1]}")
            except (ValueError, RuntimeError) as e:
                err = str(e).splitlines()[0]
            audit_rows.append((mut, got, full, caught, err))
        print("\nGrader audit (every wrong solution must lose points):")
        print(f"  {'mutation':30} {'points':>11}  caught by")
        for mut, got, full, caught, err in audit_rows:
            pts = "-" if got is None else f"{got:g}/{full:g}"
            print(f"  {mut.name:30} {pts:>11}  {', '.join(caught) or err or 'NOT CAUGHT'}")
            print(f"  {'':30} {'':>11}  ({mut.description})")
        n_caught = sum(bool(r[3]) for r in audit_rows)
        uncaught = [r[0].name for r in audit_rows if not r[3]]
        rep.add(f"grader audit: {n_caught}/{len(audit_rows)} wrong solutions lose points",
                not uncaught and len(audit_rows) >= (12 if full_run else 1),
                f"not caught: {uncaught}" if uncaught else "")

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

    # (f) cheats and robustness, (g) the sandbox itself ----------------------------------
    if not args.skip_cases:
        print("== (f) cheats and robustness", flush=True)
        from graders.cheat_catalog import CASES, CI_CASES
        want = args.case or (None if args.all_cases else CI_CASES)
        cases = [c for c in CASES if want is None or c.name in want]
        run_cases(rep, cases, release_dir, lib_files, grade, ref_scores)
    print("== (g) sandbox", flush=True)
    from graders.check_sandbox import checks as sandbox_checks
    for check, ok, detail in sandbox_checks():
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
    ap.add_argument("--only-audit", action="append", help="only this mutation (repeatable)")
    ap.add_argument("--skip-cases", action="store_true", help="no cheat / robustness cases")
    ap.add_argument("--all-cases", action="store_true",
                    help="every case of graders/cheat_catalog.py (default: its CI_CASES)")
    ap.add_argument("--case", action="append", help="only this cheat / robustness case")
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("JOBS", "2")))
    return run(ap.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
