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

import os as _os, sys as _sys  # noqa: E401
_repo = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if _repo not in _sys.path:
    _sys.path.insert(0, _repo)
from nbconvert.preprocessors import ClearMetadataPreprocessor, CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import (AssignLatePenalties, CheckCellMetadata, ClearOutput,  # noqa: E402
                                    DeduplicateIds, GetGrades, LimitOutput, OverwriteCells,
                                    OverwriteKernelspec, SaveAutoGrades)
from graders.feedback_hide import HideHiddenTests  # noqa: E402
from graders.preprocessors import RestoreCells, SandboxedExecute  # noqa: E402

# Grading (graders/preprocessors.py). The submitted notebook is first rebuilt on the release
# notebook's skeleton (deleted, moved, retyped or re-labelled cells are put back), then test
# and read-only cells are restored from the gradebook. The notebook runs in a sandbox
# (graders/sandbox.py) with the kernel guard; a cell may rebuild the student's native code
# (minutes on a small machine), so the per-cell limit is generous: an infinite loop is
# interrupted after it and the remaining cells still run. An exception fails a test cell;
# stderr output and displayed values do not change its score.
c.Autograde.sanitize_preprocessors = [RestoreCells, ClearOutput, DeduplicateIds,
                                      OverwriteKernelspec, OverwriteCells, CheckCellMetadata]
c.Autograde.autograde_preprocessors = [SandboxedExecute, ClearMetadataPreprocessor, LimitOutput,
                                       SaveAutoGrades, AssignLatePenalties, CheckCellMetadata]
c.SandboxedExecute.timeout = 900
c.OverwriteCells.add_missing_cells = True
# Feedback shows the autograded notebook, where nbgrader put the hidden tests back: remove them
# (and tracebacks that quote them) again.
c.GenerateFeedback.preprocessors = [GetGrades, HideHiddenTests, CSSHTMLHeaderPreprocessor]
