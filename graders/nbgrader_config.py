# nbgrader configuration of the needle-quant course (graders/course.py documents the layout).
# The tools pass --CourseDirectory.root and the gradebook URL on the command line, so the same
# file serves `make release/autograde/feedback` (root = the repository) and the pipeline check
# (root = a scratch course under build/).
c = get_config()  # noqa: F821

c.CourseDirectory.course_id = "needle-quant"
c.CourseDirectory.source_directory = "build/course/source"
c.CourseDirectory.release_directory = "build/course/release"
c.CourseDirectory.submitted_directory = "submitted"
c.CourseDirectory.autograded_directory = "autograded"
c.CourseDirectory.feedback_directory = "feedback"
# Submissions carry the student's library files (needle/..., src/...): keep their sources,
# skip build outputs, and never copy anything big.
c.CourseDirectory.ignore = [".ipynb_checkpoints", "*.pyc", "__pycache__", "feedback", "build",
                            "*.so", "*.o", ".venv", "data"]
c.CourseDirectory.max_file_size = 10000  # kB

# Student stubs and the marker syntax (the same one the library stripper uses).
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}
c.ClearSolutions.text_stub = "YOUR ANSWER HERE"
c.ClearSolutions.begin_solution_delimeter = "BEGIN SOLUTION"
c.ClearSolutions.end_solution_delimeter = "END SOLUTION"
c.ClearHiddenTests.begin_test_delimeter = "BEGIN HIDDEN TESTS"
c.ClearHiddenTests.end_test_delimeter = "END HIDDEN TESTS"

# Grading. A cell may rebuild the student's native code (minutes on a small machine), so the
# per-cell limit is generous; an infinite loop is interrupted after it and the remaining cells
# still run (allow_errors). Tampered or deleted test cells are restored from the gradebook.
c.Execute.timeout = 900
c.Execute.interrupt_on_timeout = True
c.Execute.allow_errors = True
c.OverwriteCells.add_missing_cells = True
# Any stderr output zeroes a test cell; drop harmless warnings (numpy RuntimeWarning, library
# DeprecationWarning, ...) so that only errors cost points.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"Warning"
# Feedback shows the autograded notebook, where nbgrader put the hidden tests back: remove them
# (and tracebacks that quote them) again.
import os as _os, sys as _sys  # noqa: E401
_repo = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _repo not in _sys.path:
    _sys.path.insert(0, _repo)
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import GetGrades  # noqa: E402
from graders.feedback_hide import HideHiddenTests  # noqa: E402
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
