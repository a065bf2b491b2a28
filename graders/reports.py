"""Instructor reports of a graded class (written by graders/batch.py after every run).

* ``grades.csv``: one row per (student, assignment, notebook, graded cell): score, max score,
  whether it is autograded, the job's status (``ok``/``error``), reason (why it failed, or
  notes: missing files, stubs still raising, a failed native build) and the isolation the
  grading got. A failed job's cells are listed with score 0.
* ``summary.csv`` and ``summary.md``: per notebook, the autograded score's mean and median over
  students, and per autograded test cell the share of students losing points on it; the
  notebook's most common failing test.
* ``scores.png``: the distribution of autograded scores per notebook.
"""
from __future__ import annotations

import csv
import os
import statistics
from collections import defaultdict
from pathlib import Path

GRADES_COLUMNS = ["student", "assignment", "notebook", "cell", "score", "max_score",
                  "autograded", "status", "reason", "isolation"]


def _fmt(x) -> str:
    return "" if x is None else f"{x:g}"


def grade_rows(jobs) -> list[dict]:
    """The grades.csv rows of graded jobs (graders.batch.Job), sorted by student, assignment."""
    rows = []
    for job in sorted(jobs, key=lambda j: (j.student, j.assignment)):
        status = job.status if job.status != "skipped" else (job.resumed_status or "ok")
        if not job.cells:
            rows.append({"student": job.student, "assignment": job.assignment, "notebook": "",
                         "cell": "", "score": "", "max_score": "", "autograded": "",
                         "status": status, "reason": job.reason,
                         "isolation": job.isolation})
        for nb, cell, score, max_score, auto in job.cells:
            rows.append({"student": job.student, "assignment": job.assignment, "notebook": nb,
                         "cell": cell, "score": _fmt(score), "max_score": _fmt(max_score),
                         "autograded": int(bool(auto)), "status": status,
                         "reason": job.reason, "isolation": job.isolation})
    return rows


def notebook_summary(rows: list[dict]) -> list[dict]:
    """Per notebook: students, mean/median autograded score, per-cell share losing points."""
    by_nb = defaultdict(lambda: defaultdict(dict))    # nb -> student -> cell -> (score, max)
    for r in rows:
        if r["cell"] and str(r["autograded"]) == "1":
            by_nb[r["notebook"]][r["student"]][r["cell"]] = (float(r["score"] or 0),
                                                             float(r["max_score"]))
    out = []
    for nb in sorted(by_nb):
        students = by_nb[nb]
        totals = [sum(s for s, _ in cells.values()) for cells in students.values()]
        max_total = max(sum(m for _, m in cells.values()) for cells in students.values())
        cell_names = sorted({c for cells in students.values() for c in cells})
        losing = {}
        for c in cell_names:
            graded = [cells[c] for cells in students.values() if c in cells]
            losing[c] = sum(s < m for s, m in graded) / len(graded)
        worst = max(cell_names, key=lambda c: (losing[c], c)) if cell_names else ""
        out.append({"notebook": nb, "students": len(students), "max_score": max_total,
                    "mean": statistics.fmean(totals), "median": statistics.median(totals),
                    "losing": losing,
                    "most_failed": worst if worst and losing[worst] > 0 else "",
                    "totals": totals})
    return out


def write_summary(summary: list[dict], out_dir: Path) -> tuple[Path, Path]:
    csv_path, md_path = out_dir / "summary.csv", out_dir / "summary.md"
    with open(csv_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["notebook", "cell", "students", "mean", "median", "max_score",
                    "share_losing_points", "most_common_failing_test"])
        for s in summary:
            w.writerow([s["notebook"], "", s["students"], f"{s['mean']:.3g}",
                        f"{s['median']:g}", f"{s['max_score']:g}", "", s["most_failed"]])
            for c, share in s["losing"].items():
                w.writerow([s["notebook"], c, "", "", "", "", f"{share:.3f}", ""])
    lines = ["# Autograded scores per notebook", "",
             "| notebook | students | mean | median | max | most common failing test |",
             "|---|---:|---:|---:|---:|---|"]
    for s in summary:
        worst = s["most_failed"]
        shown = f"{worst} ({s['losing'][worst]:.0%} lose points)" if worst else "-"
        lines.append(f"| {s['notebook']} | {s['students']} | {s['mean']:.2f} | "
                     f"{s['median']:g} | {s['max_score']:g} | {shown} |")
    lines += ["", "## Share of students losing points, per test cell", "",
              "| notebook | test cell | share losing points |", "|---|---|---:|"]
    for s in summary:
        for c, share in s["losing"].items():
            lines.append(f"| {s['notebook']} | {c} | {share:.0%} |")
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def plot_scores(summary: list[dict], path: Path) -> Path | None:
    """Histogram of the autograded score per notebook (one panel each)."""
    if not summary:
        return None
    os.environ.setdefault("MPLBACKEND", "Agg")
    import matplotlib.pyplot as plt
    n = len(summary)
    cols = min(4, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.8 * rows), squeeze=False)
    for ax, s in zip(axes.flat, summary):
        top = s["max_score"] or 1
        ax.hist(s["totals"], bins=min(20, max(5, int(top) + 1)), range=(0, top),
                color="#4c72b0", edgecolor="white")
        ax.set_title(f"{s['notebook']} (n={s['students']})", fontsize=9)
        ax.set_xlabel(f"autograded score (of {top:g})")
        ax.set_ylabel("students")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.suptitle("Distribution of autograded scores per notebook")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_reports(jobs, out_dir: Path) -> list[Path]:
    """grades.csv, summary.csv, summary.md and scores.png in ``out_dir``; returns their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if not (out_dir / ".gitignore").exists():
        (out_dir / ".gitignore").write_text("*\n")
    rows = grade_rows(jobs)
    grades = out_dir / "grades.csv"
    tmp = grades.with_name("grades.csv.tmp")
    with open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=GRADES_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, grades)
    summary = notebook_summary(rows)
    paths = [grades, *write_summary(summary, out_dir)]
    plot = plot_scores(summary, out_dir / "scores.png")
    return paths + ([plot] if plot else [])
