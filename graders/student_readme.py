"""The student README (release/README.md), generated from the course manifest.

``graders/STUDENT_README.md`` is the template: its prose plus placeholders that this module
fills from course/manifest.py, so the exercise table, the file list of each submission and
the Colab links cannot drift from what the grader does:

    {{NOTEBOOK_TABLE}}   one row per notebook: Colab link, what you build, submission files
    {{EXERCISE_TABLE}}   one row per exercise: number, function, where the code goes, tests
    {{REPO_URL}} {{DRIVE_DIR}} {{COLAB_BASE}}   course settings

``python -m graders.student_readme`` prints the result.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

from .course import GRADERS, course_manifest

TEMPLATE = GRADERS / "STUDENT_README.md"


def colab_base(repo_url: str, branch: str) -> str | None:
    """'https://colab.research.google.com/github/<owner>/<repo>/blob/<branch>' for a GitHub URL."""
    m = re.match(r"https://github\.com/([^/]+)/([^/]+?)(\.git)?/?$", repo_url)
    if not m:
        return None
    return f"https://colab.research.google.com/github/{m.group(1)}/{m.group(2)}/blob/{branch}"


def _where(M, ex) -> str:
    path, func = M.location(ex)
    if path.startswith("cell:"):
        return f"the notebook (cell `{path[5:]}`)"
    return f"`{path}`"


def notebook_table(M) -> str:
    base = colab_base(M.COURSE["repo_url"], M.COURSE.get("repo_branch", "main"))
    rows = ["| notebook | open | you build | hand in (`make submit NB=..`) |",
            "|---|---|---|---|"]
    for nb in M.NOTEBOOKS:
        link = (f"[![Open In Colab](https://colab.research.google.com/assets/colab-badge.svg)]"
                f"({base}/notebooks/{nb['id']}.ipynb)") if base else ""
        built = ", ".join(f"{ex['id']} " + " + ".join(f"`{f}`" for f in M.functions(ex))
                          for ex in nb["exercises"]) or "a written answer (given code)"
        files = ", ".join(f"`{f}`" for f in [f"notebooks/{nb['id']}.ipynb",
                                              *M.submission_files(nb["id"])])
        rows.append(f"| `{nb['id']}` {nb['title']} | {link} | {built} | {files} |")
    return "\n".join(rows)


def exercise_table(M) -> str:
    rows = ["| exercise | function | what | where your code goes | checked by |",
            "|---|---|---|---|---|"]
    for nb_id, ex in M.exercises():
        checks = ", ".join(f"`{t}`" for t in ex["tests"])
        # one name per pattern: the same test name in two files is one line for the student
        lib = list(dict.fromkeys(
            f"`{p.partition('::')[2]}*`" if p.partition("::")[2] else f"`{p.partition('::')[0]}`"
            for p in ex["pytest"]))
        if lib:
            checks += "; library tests " + ", ".join(lib)
        names = ", ".join(f"`{f}`" for f in M.functions(ex))
        rows.append(f"| {ex['id']} | {names} | {ex['title']} | {_where(M, ex)} | "
                    f"{checks} |")
    return "\n".join(rows)


def render_student_readme(template: Path = TEMPLATE) -> str:
    M = course_manifest()
    text = Path(template).read_text(encoding="utf-8")
    base = colab_base(M.COURSE["repo_url"], M.COURSE.get("repo_branch", "main")) or ""
    values = {"NOTEBOOK_TABLE": notebook_table(M), "EXERCISE_TABLE": exercise_table(M),
              "REPO_URL": M.COURSE["repo_url"], "DRIVE_DIR": M.COURSE["drive_dir"],
              "COLAB_BASE": base}
    out = re.sub(r"\{\{(\w+)\}\}", lambda m: values[m.group(1)], text)
    return out


if __name__ == "__main__":
    sys.stdout.write(render_student_readme())
