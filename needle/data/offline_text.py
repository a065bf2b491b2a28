"""The offline text corpus: the free-software license texts of every Debian/Ubuntu system.

Debian's essential package ``base-files`` ships the full texts of the common licenses in
``/usr/share/common-licenses`` (also on Ubuntu, hence Colab). Their wording is fixed by
the license authors, so the bytes are the same on every such machine and Python version;
each file is checked against its SHA-256 below before use.

Construction (``license_text``), deterministic and independent of the Python version:

1. read the files of ``LICENSE_FILES`` in that order (ASCII);
2. in every line replace tabs and form feeds by spaces, collapse runs of spaces, strip
   both ends;
3. paragraphs are maximal runs of non-empty lines, joined with ``"\\n"``; the paragraphs
   of all files, in order, are the corpus.

The fixed split (``license_splits``): paragraph number k (counting from 0 over the whole
corpus) goes to ``valid`` when k % 20 == 18, to ``test`` when k % 20 == 19, else to
``train``; each split's text is its paragraphs, each followed by ``"\\n\\n"``. Several
licenses share sentences (GPL-1/GPL-2/LGPL-2.1, GFDL, MPL-1.1/MPL-2.0), so valid/test
paragraphs often resemble training ones: perplexities here are for comparing models and
quantized variants, not for claims about English.

``license_corpus()`` tokenizes the splits by character: ``dictionary`` holds the sorted
characters of the whole corpus, and ``train``/``valid``/``test`` are lists of ids, ready for
``needle.data.batchify``. ``CORPUS_SHA256`` are the SHA-256 of the UTF-8 split texts.
"""
import hashlib
import os
import re
from pathlib import Path
from typing import NamedTuple, List

from .download import DataIntegrityError, sha256_bytes
from .ptb import Dictionary

__all__ = ["LICENSE_DIR", "LICENSE_FILES", "CORPUS_SHA256", "license_paragraphs", "license_text",
           "license_splits", "license_corpus", "LicenseCorpus", "ENV_VAR"]

LICENSE_DIR = Path("/usr/share/common-licenses")
ENV_VAR = "NEEDLE_LICENSE_DIR"  # another directory holding the same files (e.g. a copy)

#: file name -> SHA-256 of its bytes, in corpus order
LICENSE_FILES = {
    "GPL-1": "d77d235e41d54594865151f4751e835c5a82322b0e87ace266567c3391a4b912",
    "GPL-2": "8177f97513213526df2cf6184d8ff986c675afb514d4e68a404010521b880643",
    "GPL-3": "3972dc9744f6499f0f9b2dbf76696f2ae7ad8af9b23dde66d6af86c9dfb36986",
    "LGPL-2.1": "dc626520dcd53a22f727af3ee42c770e56c97a64fe3adb063799d8ab032fe551",
    "LGPL-3": "e3a994d82e644b03a792a930f574002658412f62407f5fee083f2555c5f23118",
    "GFDL-1.2": "d8e94ae5fdb5433fcae2961aeb1a8cf17174d6f4a0465d24bf37dd8a038bd439",
    "Apache-2.0": "cfc7749b96f63bd31c3c42b5c471bf756814053e847c10f3eb003417bc523d30",
    "Artistic": "b7fd9b73ea99602016a326e0b62e6646060d18febdd065ceca8bb482208c3d88",
    "BSD": "5d588eb3b157d52112afea935c88a7ff9efddc1e2d95a42c25d3b96ad9055008",
    "MPL-1.1": "f849fc26a7a99981611a3a370e83078deb617d12a45776d6c4cada4d338be469",
    "MPL-2.0": "fab3dd6bdab226f1c08630b1dd917e11fcb4ec5e1e020e2c16f83a0a13863e85",
}

#: SHA-256 of the UTF-8 text of each split (see the module docstring)
CORPUS_SHA256 = {
    "train": "6a877a985500401338f4075883a9b6a2bb3eca4a39f3dc76498524c687d4eac7",
    "valid": "90e850537845a2a06b457c87032b3f8bcc16dfec7c11299521eaa97c092879f4",
    "test": "65d9c735b2919b9602846c83820b7f919a817b6f13c871003511681fb14ee4c8",
}

_SPACES = re.compile(r"[ \t\f\v]+")


def _license_dir(root):
    if root is not None:
        return Path(root)
    return Path(os.environ.get(ENV_VAR) or LICENSE_DIR)


def _read_license(directory, name, sha256):
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing: the offline corpus uses the license texts that Debian/Ubuntu's "
            f"base-files package installs in {LICENSE_DIR}. On another system copy those files "
            f"into a directory and pass root= or set ${ENV_VAR}.")
    blob = path.read_bytes()
    digest = sha256_bytes(blob)
    if digest != sha256:
        raise DataIntegrityError(f"{path}: sha256 {digest}, expected {sha256} (a different "
                                 "version of the license text); the corpus would not be the "
                                 "documented one")
    return blob.decode("ascii")


def _paragraphs(text) -> List[str]:
    paragraphs, current = [], []
    for line in text.split("\n"):
        line = _SPACES.sub(" ", line).strip()
        if line:
            current.append(line)
        elif current:
            paragraphs.append("\n".join(current))
            current = []
    if current:
        paragraphs.append("\n".join(current))
    return paragraphs


def license_paragraphs(root=None) -> List[str]:
    """The corpus paragraphs in order (files checked against ``LICENSE_FILES``)."""
    directory = _license_dir(root)
    out = []
    for name, sha256 in LICENSE_FILES.items():
        out.extend(_paragraphs(_read_license(directory, name, sha256)))
    return out


def license_text(root=None) -> str:
    """The whole corpus: every paragraph followed by a blank line."""
    return "".join(p + "\n\n" for p in license_paragraphs(root))


def license_splits(root=None):
    """``{"train": str, "valid": str, "test": str}``, the fixed paragraph split."""
    parts = {"train": [], "valid": [], "test": []}
    for k, p in enumerate(license_paragraphs(root)):
        split = "valid" if k % 20 == 18 else "test" if k % 20 == 19 else "train"
        parts[split].append(p + "\n\n")
    splits = {name: "".join(ps) for name, ps in parts.items()}
    for name, text in splits.items():
        expected = CORPUS_SHA256[name]
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if digest != expected:
            raise DataIntegrityError(f"offline corpus split {name!r}: sha256 {digest}, expected "
                                     f"{expected}")
    return splits


class LicenseCorpus(NamedTuple):
    """Character-level ids of the three splits, with the shared ``dictionary``."""
    dictionary: Dictionary
    train: List[int]
    valid: List[int]
    test: List[int]

    def decode(self, ids) -> str:
        """The text of a sequence of ids."""
        return "".join(self.dictionary.idx2word[int(i)] for i in ids)

    def encode(self, text) -> List[int]:
        """The ids of ``text`` (KeyError naming a character outside the corpus)."""
        try:
            return [self.dictionary.word2idx[ch] for ch in text]
        except KeyError as e:
            raise KeyError(f"character {e.args[0]!r} is not in the corpus dictionary") from None


def license_corpus(root=None) -> LicenseCorpus:
    """The character-level offline corpus (see the module docstring)."""
    splits = license_splits(root)
    dictionary = Dictionary()
    for ch in sorted(set("".join(splits.values()))):
        dictionary.add_word(ch)
    ids = {name: [dictionary.word2idx[ch] for ch in text] for name, text in splits.items()}
    return LicenseCorpus(dictionary, ids["train"], ids["valid"], ids["test"])
