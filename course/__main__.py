"""``python -m course``: the student's course tools (course/tools.py)."""
import sys

from .tools import main

sys.exit(main())
