"""Tiny Shakespeare (about 1.1 MB of plays) as a GPT-2 BPE dataset, e.g. for finetuning GPT-2.

    python data/shakespeare/prepare.py                  # the text ships with the repo (data/shakespeare_char)
    python data/shakespeare/prepare.py --input=PATH     # or use another copy of the text

Writes train.bin, val.bin (uint16 GPT-2 token ids, last 10% of the text is val) and meta.json
({"vocab_size": 50257, "tokenizer": "gpt2"}) into --out_dir (default: this folder).
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # so the shared data/prepare_text.py imports
from prepare_text import prepare_downloaded_text, run_main  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
SHIPPED = os.path.join(os.path.dirname(HERE), "shakespeare_char", "input.txt")  # the repo's copy: no download

if __name__ == "__main__":
    run_main(lambda: prepare_downloaded_text("Prepare Tiny Shakespeare as a GPT-2 BPE dataset.", URL, "gpt2", HERE, SHIPPED))
