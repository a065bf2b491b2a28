"""Text data: Dictionary/Corpus/batchify/get_batch (course semantics), the offline license
corpus (checksums, fixed split), the LanguageModel, the PTB epoch helpers, the shipped
character-level checkpoint."""
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

import needle as ndl
from needle.data import Corpus, Dictionary, batchify, get_batch, DataIntegrityError
from needle.data import offline_text as lc
from needle.apps.models import LanguageModel, load_language_model, DEFAULT_LM_CHECKPOINT
from needle.apps.simple_ml import epoch_general_ptb, train_ptb, evaluate_ptb, detach_state
from conftest import DEVICES

HAVE_LICENSES = all((lc.LICENSE_DIR / name).is_file() for name in lc.LICENSE_FILES)
needs_licenses = pytest.mark.skipif(not HAVE_LICENSES, reason=f"no {lc.LICENSE_DIR} (not Debian/Ubuntu)")


# ---- Dictionary / Corpus -----------------------------------------------------------------------
def test_dictionary_assigns_ids_in_order():
    d = Dictionary()
    assert [d.add_word(w) for w in ["the", "cat", "the", "<eos>"]] == [0, 1, 0, 2]
    assert len(d) == 3 and d.idx2word == ["the", "cat", "<eos>"] and d.word2idx["cat"] == 1


def _write_corpus(tmp_path):
    (tmp_path / "train.txt").write_text(" a b c \n b c d\n e\n")
    (tmp_path / "test.txt").write_text("a z\n")
    (tmp_path / "valid.txt").write_text("q\n")
    return tmp_path


def test_corpus_tokenizes_lines_with_eos(tmp_path):
    corpus = Corpus(_write_corpus(tmp_path))
    words = corpus.dictionary.idx2word
    assert [words[i] for i in corpus.train] == ["a", "b", "c", "<eos>", "b", "c", "d", "<eos>", "e", "<eos>"]
    assert [words[i] for i in corpus.test] == ["a", "z", "<eos>"]
    assert len(corpus.dictionary) == 7 and not hasattr(corpus, "valid")
    short = Corpus(tmp_path, max_lines=1, valid=True)
    assert len(short.train) == 4 and [short.dictionary.idx2word[i] for i in short.valid] == ["q", "<eos>"]


def test_corpus_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="download_ptb"):
        Corpus(tmp_path)
    with pytest.raises(ValueError, match="max_lines"):
        Corpus(_write_corpus(tmp_path), max_lines=-1)


def test_ptb_file_table():
    from needle.data.ptb import PTB_FILES, PTB_URL
    assert set(PTB_FILES) == {"train.txt", "valid.txt", "test.txt"}
    for split, sha, size in PTB_FILES.values():
        assert len(sha) == 64 and int(sha, 16) >= 0 and size > 100_000
        assert PTB_URL.format(split).endswith(f"/ptb.{split}.txt")


def test_download_ptb_does_not_refetch_existing_files(tmp_path):
    for name in ("train.txt", "valid.txt", "test.txt"):
        (tmp_path / "ptb").mkdir(exist_ok=True)
        (tmp_path / "ptb" / name).write_text("x y\n")
    assert ndl.data.download_ptb(tmp_path, progress=False) == tmp_path / "ptb"
    assert Corpus(tmp_path / "ptb", download=True).train == [0, 1, 2]


# ---- batchify / get_batch ----------------------------------------------------------------------
def test_batchify_makes_columns_and_trims():
    data = list(range(26))  # the alphabet
    b = batchify(data, 4, ndl.cpu_numpy(), "float32")
    assert b.shape == (6, 4) and b.dtype == np.float32
    np.testing.assert_array_equal(b[:, 1], np.arange(6, 12))   # g .. l
    np.testing.assert_array_equal(b[0], [0, 6, 12, 18])
    with pytest.raises(ValueError, match="batch_size"):
        batchify(data, 0)
    with pytest.raises(ValueError, match="one row"):
        batchify([1, 2], 3)


@pytest.mark.parametrize("device", DEVICES)
def test_get_batch_windows_and_targets(device):
    b = batchify(list(range(26)), 4)
    X, y = get_batch(b, 0, 2, device=device)
    assert X.shape == (2, 4) and y.shape == (8,) and X.device == device and X.dtype == "float32"
    np.testing.assert_array_equal(X.numpy(), [[0, 6, 12, 18], [1, 7, 13, 19]])
    np.testing.assert_array_equal(y.numpy(), [1, 7, 13, 19, 2, 8, 14, 20])
    assert not X.requires_grad
    X, y = get_batch(b, 4, 3, device=device)   # the last window is shorter
    assert X.shape == (1, 4)
    np.testing.assert_array_equal(y.numpy(), [5, 11, 17, 23])
    with pytest.raises(IndexError, match=r"\[0, 5\)"):
        get_batch(b, 5, 2)


# ---- the offline license corpus -------------------------------------------------------------------
@needs_licenses
def test_license_corpus_is_the_documented_one():
    splits = lc.license_splits()  # verifies every file and every split checksum
    assert {k: len(v) for k, v in splits.items()} == {"train": 158345, "valid": 7911, "test": 8210}
    corpus = lc.license_corpus()
    assert len(corpus.dictionary) == 84
    assert corpus.dictionary.idx2word[:3] == ["\n", " ", "!"]
    assert corpus.decode(corpus.test[:4]) == splits["test"][:4]
    assert corpus.encode("GNU") == [corpus.dictionary.word2idx[c] for c in "GNU"]
    with pytest.raises(KeyError, match="not in the corpus"):
        corpus.encode("\u00e9")


@needs_licenses
def test_license_corpus_rejects_other_texts(tmp_path):
    for name in lc.LICENSE_FILES:
        shutil.copy(lc.LICENSE_DIR / name, tmp_path / name)
    assert lc.license_text(tmp_path) == lc.license_text()
    with open(tmp_path / "BSD", "a") as f:
        f.write("one more line\n")
    with pytest.raises(DataIntegrityError, match="BSD"):
        lc.license_splits(tmp_path)
    (tmp_path / "BSD").unlink()
    with pytest.raises(FileNotFoundError, match="NEEDLE_LICENSE_DIR"):
        lc.license_corpus(tmp_path)


def test_paragraph_normalization():
    text = "  A\tb  \n c\f\n\n\n\nd \n"
    assert lc._paragraphs(text) == ["A b\nc", "d"]


# ---- LanguageModel and the epoch helpers ----------------------------------------------------------
@pytest.mark.parametrize("seq_model", ["rnn", "lstm", "transformer"])
def test_language_model_shapes_and_gradients(device, seq_model):
    np.random.seed(0)
    T, bs, vocab = 4, 3, 11
    model = LanguageModel(6, vocab, 5, num_layers=2, seq_model=seq_model, seq_len=8, device=device)
    x = ndl.Tensor(np.random.randint(0, vocab, (T, bs)).astype(np.float32), device=device)
    out, h = model(x)
    assert out.shape == (T * bs, vocab)
    if seq_model == "lstm":
        assert isinstance(h, tuple) and h[0].shape == h[1].shape == (2, bs, 5)
        out2, _ = model(x, detach_state(h))
    elif seq_model == "rnn":
        assert h.shape == (2, bs, 5)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert isinstance(model.linear.weight, ndl.nn.Parameter)
    with pytest.raises(ValueError, match="seq_model"):
        LanguageModel(2, 3, 4, seq_model="gru")


@needs_licenses
def test_training_steps_lower_the_loss():
    np.random.seed(0)
    corpus = lc.license_corpus()
    data = batchify(corpus.train[:1600], 8)
    model = LanguageModel(8, len(corpus.dictionary), 16, seq_model="lstm")
    before = evaluate_ptb(model, data, seq_len=25)[1]
    train_ptb(model, data, seq_len=25, n_epochs=3, optimizer=ndl.optim.Adam, lr=0.02, clip=1.0)
    after = evaluate_ptb(model, data, seq_len=25)[1]
    assert before > math.log(len(corpus.dictionary)) - 0.5
    assert after < before - 0.5, (before, after)


def test_epoch_rejects_too_little_data():
    model = LanguageModel(2, 3, 4)
    with pytest.raises(ValueError, match="2 rows"):
        epoch_general_ptb(np.zeros((1, 4), dtype=np.float32), model)


# ---- the shipped checkpoint -------------------------------------------------------------------------
@needs_licenses
def test_shipped_checkpoint_reproduces_its_perplexity():
    record = json.loads(DEFAULT_LM_CHECKPOINT.with_suffix(".json").read_text())
    assert ndl.data.sha256_file(DEFAULT_LM_CHECKPOINT) == record["checkpoint_sha256"]
    model = load_language_model()
    assert not model.training and isinstance(model.seq_model, ndl.nn.LSTM)
    corpus = lc.license_corpus()
    assert "".join(corpus.dictionary.idx2word) == record["vocabulary"]
    data = batchify(corpus.test, record["eval"]["batch_size"])
    _, loss = evaluate_ptb(model, data, seq_len=record["eval"]["seq_len"])
    assert abs(math.exp(loss) - record["test_perplexity"]) < 1e-3 * record["test_perplexity"]
    assert record["test_perplexity"] < 6.0  # far below the 84 of a uniform guess
