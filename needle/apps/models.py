"""Course models: ``ResNet9`` (from needle.nn.zoo) and ``LanguageModel``."""
from pathlib import Path

import numpy as np

import needle as ndl
import needle.nn as nn
from needle.nn.zoo import ResNet9
from needle.serialization import load_checkpoint

__all__ = ["ResNet9", "LanguageModel", "load_language_model", "sample_tokens",
           "DEFAULT_LM_CHECKPOINT"]

#: the shipped character-level LSTM (see checkpoints/README.md)
DEFAULT_LM_CHECKPOINT = Path(__file__).resolve().parents[2] / "checkpoints" / "lm_char_lstm.safetensors"
_CONFIG_KEYS = ("embedding_size", "output_size", "hidden_size", "num_layers", "seq_model")

_SEQ_MODELS = ("rnn", "lstm", "transformer")


class LanguageModel(nn.Module):
    """Embedding -> sequence model -> Linear, the hw4 / hw4_extra language model.

    LanguageModel(embedding_size, output_size, hidden_size, num_layers=1, seq_model='rnn',
    seq_len=40, device=None, dtype="float32")

    Submodules (plain Parameters, reachable for quantization): ``embedding``
    (nn.Embedding(output_size, embedding_size)), ``seq_model`` (nn.RNN / nn.LSTM
    (embedding_size, hidden_size, num_layers), or nn.Transformer(embedding_size, hidden_size,
    num_layers, sequence_len=seq_len)), ``linear`` (nn.Linear(hidden_size, or embedding_size
    for the transformer, output_size)).

    forward(x (seq_len, bs) token ids, h=None) -> (logits (seq_len * bs, output_size), h);
    h is (num_layers, bs, hidden_size) for the RNN, a pair (h, c) of those for the LSTM, and
    the Transformer's (ignored) second output otherwise.
    """

    def __init__(self, embedding_size, output_size, hidden_size, num_layers=1, seq_model="rnn",
                 seq_len=40, device=None, dtype="float32"):
        super().__init__()
        if seq_model not in _SEQ_MODELS:
            raise ValueError(f"seq_model must be one of {_SEQ_MODELS}, got {seq_model!r}")
        self.embedding_size = embedding_size
        self.output_size = output_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.seq_model_name = seq_model
        self.embedding = nn.Embedding(output_size, embedding_size, device=device, dtype=dtype)
        if seq_model == "rnn":
            self.seq_model = nn.RNN(embedding_size, hidden_size, num_layers, device=device, dtype=dtype)
        elif seq_model == "lstm":
            self.seq_model = nn.LSTM(embedding_size, hidden_size, num_layers, device=device, dtype=dtype)
        else:
            self.seq_model = nn.Transformer(embedding_size, hidden_size, num_layers, device=device,
                                            dtype=dtype, sequence_len=seq_len)
        features = embedding_size if seq_model == "transformer" else hidden_size
        self.linear = nn.Linear(features, output_size, device=device, dtype=dtype)

    def forward(self, x, h=None):
        if len(x.shape) != 2:
            raise ValueError(f"LanguageModel expects token ids of shape (seq_len, bs), got {tuple(x.shape)}")
        out, h = self.seq_model(self.embedding(x), h)
        seq_len, bs, features = out.shape
        return self.linear(out.reshape((seq_len * bs, features))), h


def load_language_model(path=None, device=None):
    """The LanguageModel saved by ``python -m needle.apps.train_lm`` (default: the shipped
    checkpoint), built from the configuration in the file's metadata, in eval mode."""
    path = DEFAULT_LM_CHECKPOINT if path is None else Path(path)
    state, metadata = load_checkpoint(path, device=device, return_metadata=True)
    missing = [k for k in _CONFIG_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"{path}: metadata lacks {missing}; not a LanguageModel checkpoint")
    ints = {k: int(metadata[k]) for k in _CONFIG_KEYS if k != "seq_model"}
    model = LanguageModel(**ints, seq_model=metadata["seq_model"], device=device)
    model.load_state_dict(state)
    return model.eval()


def sample_tokens(model, prompt_ids, n, temperature=1.0, seed=0):
    """Continue ``prompt_ids`` (a non-empty list of token ids) by ``n`` tokens sampled from
    an RNN/LSTM LanguageModel: softmax(logits / temperature), or the argmax when
    ``temperature`` is 0. Returns the ``n`` new ids. The prompt is read in one call, then
    one token per step with the hidden state carried; ``seed`` seeds a private generator.
    """
    if not prompt_ids:
        raise ValueError("sample_tokens needs a non-empty prompt")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if model.seq_model_name == "transformer":
        raise ValueError("sample_tokens carries a recurrent state; use an 'rnn' or 'lstm' model")
    rng = np.random.default_rng(seed)
    device = model.linear.weight.device
    was_training = model.training
    model.eval()
    x = np.asarray(prompt_ids, dtype=np.float32).reshape(-1, 1)
    h, out = None, []
    try:
        for _ in range(n):
            logits, h = model(ndl.Tensor(x, device=device, requires_grad=False), h)
            last = logits.numpy()[-1].astype(np.float64)
            if temperature == 0:
                token = int(last.argmax())
            else:
                p = np.exp((last - last.max()) / temperature)
                token = int(rng.choice(p.size, p=p / p.sum()))
            out.append(token)
            x = np.array([[token]], dtype=np.float32)
    finally:
        model.train(was_training)
    return out
