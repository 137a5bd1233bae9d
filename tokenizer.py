"""Text to token ids and back: GPT-2's BPE (tiktoken) or a dataset's characters. A dataset's vocabulary is its
meta.json, {"vocab_size": N, "itos": [characters]} or {"vocab_size": N, "tokenizer": "gpt2"}, or nanoGPT's
meta.pkl, read as plain data only."""
import json
import os
import pickle

from errors import UserError


def gpt2_encoding():
    """tiktoken's GPT-2 BPE. Its two files are downloaded once and cached; offline, that is one line."""
    import tiktoken
    try:
        return tiktoken.get_encoding("gpt2")
    except Exception as e:  # requests' ConnectionError and the like: tiktoken tries the download once
        raise UserError(f"could not load GPT-2's BPE files ({type(e).__name__}): tiktoken downloads vocab.bpe and "
                        "encoder.json once, then reads them from TIKTOKEN_CACHE_DIR; connect once, or copy them "
                        "there from a machine that has them") from None


class Tokenizer:
    """encode/decode for a char vocabulary (a list of characters) or GPT-2's BPE."""

    def __init__(self, itos=None):
        if itos is not None:
            self.itos, self.stoi = list(itos), {ch: i for i, ch in enumerate(itos)}
            self.n_vocab = len(self.itos)
        else:
            self.bpe = gpt2_encoding()
            self.n_vocab = self.bpe.n_vocab
            self.itos = None

    def encode(self, text):
        if self.itos is None:
            return self.bpe.encode(text, allowed_special={"<|endoftext|>"})
        unknown = sorted(set(text) - set(self.stoi))
        if unknown:
            raise UserError(f"the prompt has characters outside the model's vocabulary: {''.join(unknown)!r}")
        return [self.stoi[ch] for ch in text]

    def decode(self, ids):
        if self.itos is None:
            return self.bpe.decode(ids)
        return "".join(self.itos[i] for i in ids)

    def token_bytes(self, token_id):
        """Length in UTF-8 bytes of one token's text."""
        if self.itos is not None:
            return len(self.itos[token_id].encode("utf-8"))
        return len(self.bpe.decode_single_token_bytes(token_id))


class _PlainUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: meta.pkl may only hold plain data")


def load_vocab(folder):
    """The dataset's vocabulary, {'vocab_size', 'itos' or 'tokenizer'}, from meta.json or meta.pkl; or None."""
    json_path, pkl_path = os.path.join(folder, "meta.json"), os.path.join(folder, "meta.pkl")
    if os.path.isfile(json_path):
        return read_meta_json(json_path, folder)
    if os.path.isfile(pkl_path):
        try:
            with open(pkl_path, "rb") as f:
                meta = _PlainUnpickler(f).load()
            itos = meta["itos"]
            return {"vocab_size": meta["vocab_size"], "itos": [itos[i] for i in range(len(itos))]}
        except Exception as e:
            raise UserError(f"{pkl_path} is not a nanoGPT vocabulary file ({e})") from None
    return None


def read_meta_json(path, folder):
    """meta.json checked for what train.py and sample.py use; anything else is one line naming the fix."""
    script = os.path.join(folder, "prepare.py")
    fix = f"python {script}" if os.path.isfile(script) else "data/prepare_text.py (--force=True replaces it)"
    problem = None
    try:
        with open(path, "rb") as f:
            meta = json.loads(f.read().decode("utf-8"))
    except UnicodeDecodeError as e:
        problem = f"not UTF-8 text ({e.reason} at byte {e.start})"
    except ValueError as e:
        problem = f"not valid JSON: {e}"
    if problem is None:
        fields = meta if isinstance(meta, dict) else {}
        size, itos = fields.get("vocab_size"), fields.get("itos")
        if type(size) is not int or not 0 < size <= 2 ** 16:
            problem = "it needs a 'vocab_size' between 1 and 65536"
        elif "itos" in meta and not (isinstance(itos, list) and len(itos) == size
                                     and all(isinstance(c, str) for c in itos)):
            problem = "its 'itos' must be a list of vocab_size strings"
        elif "itos" not in meta and meta.get("tokenizer") != "gpt2":
            problem = "it needs 'itos' (a character vocabulary) or \"tokenizer\": \"gpt2\""
    if problem:
        raise UserError(f"{path} is not a usable vocabulary file ({problem}); rewrite it with {fix}")
    return meta


def check_vocab(model_vocab, data_vocab, vocab_size, dataset):
    """A model can only go on training on data written with its own vocabulary."""
    if not data_vocab:
        return  # no meta.json/meta.pkl: nothing to compare
    describe = lambda v: f"a {len(v['itos'])}-character vocabulary" if v.get("itos") else "GPT-2's BPE"  # noqa: E731
    if data_vocab["vocab_size"] > vocab_size or (model_vocab and model_vocab.get("itos") != data_vocab.get("itos")):
        raise UserError(f"vocabulary mismatch: dataset '{dataset}' was prepared with {describe(data_vocab)}, "
                        f"the model uses {describe(model_vocab or {})} ({vocab_size} ids); prepare the data with "
                        "the model's tokenizer, or train a new model with --init_from=scratch")
