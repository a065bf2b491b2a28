"""Feedback for every autograded submission: ``python -m graders.feedback`` (``make feedback``).

Runs ``nbgrader generate_feedback`` per assignment; HTML reports land in
``feedback/<student>/<assignment>/<notebook>.html``. Hidden tests stay hidden (see
graders/feedback_hide.py, configured in graders/nbgrader_config.py).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .course import AUTOGRADED_DIR, FEEDBACK_DIR, REPO, nbgrader


def generate_feedback(root: Path, assignment: str, student: str | None = None, quiet=True):
    args = ["generate_feedback", assignment, "--force"]
    if student:
        args += ["--student", student]
    res = nbgrader(args, root, capture=quiet, check=False)
    if res.returncode != 0:
        tail = res.stdout[-3000:] if quiet and res.stdout else ""
        raise RuntimeError(f"nbgrader generate_feedback {assignment} failed:\n{tail}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Generate HTML feedback for autograded submissions.")
    ap.add_argument("--student", help="only this student")
    ap.add_argument("--assignment", action="append", help="only these assignments")
    args = ap.parse_args(argv)
    graded = REPO / AUTOGRADED_DIR
    if not graded.is_dir():
        print(f"nothing autograded yet ({graded} is missing): run `make autograde` first")
        return 0
    assignments = sorted({a.name for s in graded.iterdir() if s.is_dir()
                          for a in s.iterdir() if a.is_dir()})
    if args.assignment:
        assignments = [a for a in assignments if a in args.assignment]
    for a in assignments:
        generate_feedback(REPO, a, args.student)
        n = len(list((REPO / FEEDBACK_DIR).glob(f"*/{a}/*.html")))
        print(f"  {a}: {n} feedback report(s)")
    print(f"feedback in {FEEDBACK_DIR}/<student>/<assignment>/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
