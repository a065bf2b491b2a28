"""The course module name of the Penn Treebank data API."""
from ..ptb import Dictionary, Corpus, batchify, get_batch  # noqa: F401
