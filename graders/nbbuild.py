"""Build the course notebooks (notebooks/*.ipynb) from their plain-text sources.

Each notebook is authored as ``graders/nbsrc/<name>.nbsrc``: cells separated by header lines

    #%% markdown                          prose (Markdown, LaTeX math)
    #%% code                             plain code, students may edit it
    #%% readonly id=setup                 locked code cell (setup, helpers)
    #%% solution id=impl_foo              code the student writes (### BEGIN/END SOLUTION inside)
    #%% tests id=test_foo points=2        autograded tests (locked; may hold hidden tests)
    #%% answer id=why_foo points=2        manually graded free-text answer (Markdown; the
                                         instructor's model answer is the body)
    #%% course_setup                      the course's setup cell (locked, id=course_setup),
                                         generated from graders/setup_cell.py.tmpl: the same
                                         first code cell in every notebook

The first lines before any header are a JSON object of notebook-level metadata (optional).
``python -m graders.nbbuild [names...]`` writes notebooks/<name>.ipynb with nbgrader metadata
on every graded cell; ``--execute`` then runs it (in notebooks/) and stores the outputs that
``pytest --nbval`` compares against.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
SRC_DIR = Path(__file__).resolve().parent / "nbsrc"
NB_DIR = ROOT / "notebooks"

_HEADER = re.compile(r"^#%%[ \t]*(?P<kind>markdown|code|readonly|solution|tests|answer|"
                     r"course_setup)"
                     r"(?P<attrs>(?:[ \t]+\w+=\S+)*)[ \t]*$")


class NotebookSourceError(ValueError):
    pass


def _attrs(text: str) -> dict:
    return dict(kv.split("=", 1) for kv in text.split())


def parse(text: str, filename: str = "<nbsrc>"):
    """Return (notebook-metadata dict, list of (kind, attrs, body)) from .nbsrc text."""
    lines = text.splitlines()
    meta_lines, cells, current = [], [], None
    for lineno, line in enumerate(lines, start=1):
        m = _HEADER.match(line)
        if m:
            current = (m.group("kind"), _attrs(m.group("attrs")), [], lineno)
            cells.append(current)
        elif line.startswith("#%%"):
            raise NotebookSourceError(f"{filename}:{lineno}: bad cell header {line!r}")
        elif current is None:
            meta_lines.append(line)
        else:
            current[2].append(line)
    meta = json.loads("\n".join(meta_lines)) if "".join(meta_lines).strip() else {}
    out, seen = [], set()
    for kind, attrs, body, lineno in cells:
        if kind == "course_setup":
            if any(line.strip() for line in body):
                raise NotebookSourceError(f"{filename}:{lineno}: the course_setup cell is "
                                          f"generated (graders/setup_cell.py.tmpl): leave it empty")
            kind, attrs, body = "readonly", {"id": "course_setup"}, setup_cell_source().split("\n")
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        if kind in ("readonly", "solution", "tests", "answer"):
            gid = attrs.get("id")
            if not gid:
                raise NotebookSourceError(f"{filename}:{lineno}: {kind} cell needs id=...")
            if gid in seen:
                raise NotebookSourceError(f"{filename}:{lineno}: duplicate cell id {gid!r}")
            seen.add(gid)
        if kind in ("tests", "answer") and "points" not in attrs:
            raise NotebookSourceError(f"{filename}:{lineno}: {kind} cell needs points=...")
        out.append((kind, attrs, "\n".join(body)))
    return meta, out


SETUP_TEMPLATE = Path(__file__).resolve().parent / "setup_cell.py.tmpl"


def setup_cell_source() -> str:
    """The first code cell of every notebook (``#%% course_setup``): the template with the
    course settings of course/manifest.py filled in."""
    from .course import course_manifest
    settings = course_manifest().COURSE
    text = SETUP_TEMPLATE.read_text(encoding="utf-8").rstrip("\n")
    return re.sub(r"\{\{(\w+)\}\}", lambda m: settings[m.group(1).lower()], text)


def build_notebook(text: str, filename: str = "<nbsrc>"):
    meta, cells = parse(text, filename)
    nb = nbformat.v4.new_notebook()
    nb.metadata.update({
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
    })
    if meta:
        nb.metadata["needle_quant"] = meta
    for i, (kind, attrs, body) in enumerate(cells):
        if kind in ("markdown", "answer"):
            cell = nbformat.v4.new_markdown_cell(body)
        else:
            cell = nbformat.v4.new_code_cell(body)
        cell.id = attrs.get("id", f"cell-{i:03d}").replace("_", "-")
        nbg = None
        if kind == "readonly":
            nbg = {"grade": False, "solution": False, "locked": True}
        elif kind == "solution":
            nbg = {"grade": False, "solution": True, "locked": False}
        elif kind == "tests":
            nbg = {"grade": True, "solution": False, "locked": True,
                   "points": float(attrs["points"])}
        elif kind == "answer":
            nbg = {"grade": True, "solution": True, "locked": False,
                   "points": float(attrs["points"])}
        if nbg is not None:
            nbg.update({"grade_id": attrs["id"], "schema_version": 3})
            cell.metadata["nbgrader"] = nbg
        if "tags" in attrs:
            cell.metadata["tags"] = attrs["tags"].split(",")
        nb.cells.append(cell)
    nbformat.validate(nb)
    return nb


def execute(path: Path, timeout: int = 600) -> None:
    """Run a notebook in its own directory and store its outputs (instructor version)."""
    env = dict(os.environ)
    env.setdefault("NEEDLE_DATA_DIR", "/work/shared/datasets")
    env.pop("NEEDLE_ROOT", None)
    subprocess.run([sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                    "--inplace", f"--ExecutePreprocessor.timeout={timeout}", path.name],
                   cwd=path.parent, check=True, env=env)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("names", nargs="*", help="notebook names (default: all sources)")
    ap.add_argument("--execute", action="store_true", help="run and store outputs")
    args = ap.parse_args(argv)
    sources = sorted(SRC_DIR.glob("*.nbsrc"))
    if args.names:
        wanted = {n.removesuffix(".nbsrc").removesuffix(".ipynb") for n in args.names}
        sources = [s for s in sources if s.stem in wanted]
        missing = wanted - {s.stem for s in sources}
        if missing:
            raise SystemExit(f"no notebook source for {sorted(missing)} in {SRC_DIR}")
    NB_DIR.mkdir(exist_ok=True)
    for src in sources:
        nb = build_notebook(src.read_text(encoding="utf-8"), str(src))
        dest = NB_DIR / f"{src.stem}.ipynb"
        nbformat.write(nb, dest)
        print(f"wrote {dest.relative_to(ROOT)} ({len(nb.cells)} cells)")
        if args.execute:
            execute(dest)
            print(f"executed {dest.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
