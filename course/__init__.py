"""The course: its manifest (notebooks and exercises) and the student's tools.

``course.manifest`` is the single list of exercises; ``course.bootstrap`` finds the repository
and builds it (the notebooks' first cell); ``python -m course`` is the student's command line.
"""
