"""Feedback preprocessor that keeps hidden tests hidden.

nbgrader's feedback shows the autograded notebook, where the hidden tests were put back for
grading. This preprocessor removes every hidden-test region from test cells again and, for a
cell that had one, replaces error tracebacks (which quote the failing line) by the bare
exception name and message.
"""
from nbformat.notebooknode import NotebookNode
from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Unicode


class HideHiddenTests(NbGraderPreprocessor):
    begin = Unicode("BEGIN HIDDEN TESTS").tag(config=True)
    end = Unicode("END HIDDEN TESTS").tag(config=True)

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type != "code" or self.begin not in cell.source:
            return cell, resources
        kept, inside = [], False
        for line in cell.source.split("\n"):
            if self.begin in line:
                inside = True
                kept.append(line[:len(line) - len(line.lstrip())] + "# (hidden tests)")
                continue
            if self.end in line:
                inside = False
                continue
            if not inside:
                kept.append(line)
        cell.source = "\n".join(kept)
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"
                                    " (raised by a test)"]
        return cell, resources


__all__ = ["HideHiddenTests", "NotebookNode"]
