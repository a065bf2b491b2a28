"""The models and helpers a 10-414/714 course ``apps/`` folder provides.

``needle.apps.models``: ``ResNet9`` and ``LanguageModel``; ``needle.apps.simple_ml``: the
training/evaluation helpers (``train_ptb``, ``evaluate_ptb``, ``epoch_general_ptb``, the
CIFAR-10 ones, ...). Course code runs unchanged with a one-line shim per file::

    # apps/models.py                         # apps/simple_ml.py
    from needle.apps.models import *         from needle.apps.simple_ml import *

``python -m needle.apps.train_lm`` trains the shipped character-level language model.
"""
