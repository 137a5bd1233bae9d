"""Tiny Shakespeare (about 1.1 MB of plays) as a GPT-2 BPE dataset, e.g. for finetuning GPT-2.

    python data/shakespeare/prepare.py                  # downloads input.txt into this folder
    python data/shakespeare/prepare.py --input=PATH     # or use a local copy of the text

Writes train.bin, val.bin (uint16 GPT-2 token ids, last 10% of the text is val) and meta.json
({"vocab_size": 50257, "tokenizer": "gpt2"}) into --out_dir (default: this folder).
"""
import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # so the shared data/prepare_text.py imports
from prepare_text import get_input_text, run_main, write_bpe_dataset  # noqa: E402

URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


def main():
    parser = argparse.ArgumentParser(description="Prepare Tiny Shakespeare as a GPT-2 BPE dataset.")
    parser.add_argument("--input", help="local copy of the text (default: <out_dir>/input.txt, downloaded if missing)")
    parser.add_argument("--out_dir", default=HERE, help="folder to write the dataset into (default: this folder)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="fraction of the text (at its end) kept for val")
    args = parser.parse_args()
    write_bpe_dataset(get_input_text(args.out_dir, URL, args.input), args.out_dir, args.val_fraction)


if __name__ == "__main__":
    run_main(main)
