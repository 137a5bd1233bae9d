"""Turn any UTF-8 text file into a dataset for train.py, in one command:

    python data/prepare_text.py --input=my.txt --out_dir=data/mytext --tokenizer=char   # or gpt2

Writes train.bin and val.bin (flat uint16 token ids, no header; the last --val_fraction of the text
is val) and meta.json: {"vocab_size": N, "itos": [the N distinct characters, sorted]} for char, or
{"vocab_size": 50257, "tokenizer": "gpt2"} for GPT-2 BPE. Then train with --dataset=mytext.
An existing dataset is replaced only with --force=True, and even then each file is written under a
temporary name and renamed when whole, so a failure (full disk, Ctrl-C) leaves the old one as it was.
The data/<name>/prepare.py scripts reuse the functions here.
"""
import argparse
import glob
import json
import os
import re
import sys
import urllib.request

import numpy as np
from tqdm import tqdm

GPT2_META = {"vocab_size": 50257, "tokenizer": "gpt2"}
MAX_VOCAB = 2 ** 16  # ids are stored as uint16
# A newline between two non-space characters always ends a GPT-2 pre-token, whatever follows it.
SAFE_CUT = re.compile(r"(?<=\S)\n(?=\S)")

# The repo's one convention for user mistakes: a one-line `error: ...` and exit status 2.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repo root
from errors import UserError as PrepareError, read_utf8, run_main  # noqa: E402,F401
from hf import hub_problem  # noqa: E402,F401
from safety import atomic_write  # noqa: E402
from tokenizer import gpt2_encoding  # noqa: E402

DATASET_FILES = ("train.bin", "val.bin", "meta.json")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the repo's error convention (one `error: ...` line, exit 2), and --force if asked."""

    def __init__(self, *args, force=True, **kwargs):
        super().__init__(*args, **kwargs)
        if force:
            self.add_argument("--force", type=parse_bool, nargs="?", const=True, default=False,
                              help="replace an existing dataset in --out_dir (default: refuse)")

    def error(self, message):
        raise PrepareError(f"{message} (see {self.prog} --help)")


def parse_bool(text):
    if text.lower() not in ("true", "false"):
        raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")
    return text.lower() == "true"


def check_out_dir(out_dir, force, names=DATASET_FILES):
    """Before any work: refuse to replace a dataset in out_dir unless force, and refuse a file as out_dir."""
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise PrepareError(f"--out_dir '{out_dir}' is a file, not a folder")
    existing = [n for n in names if os.path.exists(os.path.join(out_dir, n))]
    if existing and not force:
        raise PrepareError(f"{out_dir} already holds a dataset ({', '.join(existing)}); pass --force=True to "
                           "replace it, or choose another --out_dir")


def read_text(path):
    return read_utf8(path, "input file")  # newlines as written: "\r\n" stays


def get_input_text(folder, url, explicit_path=None, local_copy=None):
    """The text of explicit_path if given; else of <folder>/input.txt, else of local_copy (a copy shipped
    with the repo), else of url, downloaded to <folder>/input.txt first."""
    if explicit_path:
        return read_text(explicit_path)
    path = os.path.join(folder, "input.txt")
    if not os.path.exists(path) and local_copy and os.path.isfile(local_copy):
        return read_text(local_copy)
    if not os.path.exists(path):
        print(f"downloading {url} -> {path}")
        os.makedirs(folder, exist_ok=True)
        try:
            urllib.request.urlretrieve(url, path + ".tmp")
        except OSError as e:  # includes URLError
            raise PrepareError(f"could not download {url} ({e}); pass --input=PATH to use a local copy")
        os.replace(path + ".tmp", path)  # never leave a half-downloaded input.txt behind
    return read_text(path)


def split_point(n, val_fraction):
    """Index where val starts: the first (1 - val_fraction) of n items are train."""
    if not 0 < val_fraction < 1:
        raise PrepareError(f"--val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
    cut = int(n * (1 - val_fraction))
    if cut == 0 or cut == n:
        raise PrepareError(f"the text ({n} characters) is too short to split with val_fraction={val_fraction}")
    return cut


# How datasets.load_dataset reads each kind of local document file: all but .txt need a "text" column.
LOCAL_BUILDERS = {".txt": ("text", {"sample_by": "document"}), ".jsonl": ("json", {}), ".json": ("json", {}),
                  ".parquet": ("parquet", {})}


def local_files(pattern):
    """(builder, its options, sorted file list) to load the documents in the files matching a glob."""
    files = sorted(glob.glob(pattern, recursive=True))
    if not files:
        raise PrepareError(f"no files match --data_files={pattern}")
    kinds = {os.path.splitext(f)[1].lower() for f in files}
    if len(kinds) > 1 or not kinds <= set(LOCAL_BUILDERS):
        raise PrepareError(f"--data_files must all be one of {', '.join(LOCAL_BUILDERS)}; got {', '.join(sorted(kinds))}")
    builder, options = LOCAL_BUILDERS[kinds.pop()]
    return builder, options, files


def save_meta(out_dir, meta):
    atomic_write(os.path.join(out_dir, "meta.json"), lambda f: f.write(json.dumps(meta).encode()))


def write_dataset(out_dir, train_ids, val_ids, meta):
    """Each file is written whole under a temporary name first; meta.json, written last, marks the end."""
    os.makedirs(out_dir, exist_ok=True)
    for split, ids in (("train", train_ids), ("val", val_ids)):
        ids = np.asarray(ids, dtype=np.uint16)
        atomic_write(os.path.join(out_dir, f"{split}.bin"), ids.tofile, size_hint=ids.nbytes)
    save_meta(out_dir, meta)
    print(f"vocab size {meta['vocab_size']}; train {len(train_ids):,} tokens, val {len(val_ids):,} tokens -> {out_dir}")


def write_char_dataset(text, out_dir, val_fraction=0.1):
    """Character-level dataset: each distinct character gets an id, in sorted order."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # one code point per character
    vocab, ids = np.unique(codes, return_inverse=True)  # vocab is sorted, like sorted(set(text))
    if len(vocab) > MAX_VOCAB:
        raise PrepareError(f"the text has {len(vocab)} distinct characters; uint16 ids allow at most {MAX_VOCAB}")
    cut = split_point(len(ids), val_fraction)
    write_dataset(out_dir, ids[:cut], ids[cut:], {"vocab_size": len(vocab), "itos": [chr(c) for c in vocab]})


def encode_gpt2(text, chunk_chars=1 << 20):
    """GPT-2 BPE ids of text as uint16. It is encoded in chunks (for a progress bar) cut only at SAFE_CUT,
    so the ids equal those of encoding it whole."""
    enc, chunks, start = gpt2_encoding(), [], 0
    while start < len(text):
        cut = SAFE_CUT.search(text, start + chunk_chars)
        chunks.append(text[start:cut.end() if cut else len(text)])
        start += len(chunks[-1])
    ids = [np.array(enc.encode_ordinary(chunk), dtype=np.uint16) for chunk in tqdm(chunks, desc="tokenizing")]
    return np.concatenate(ids) if ids else np.zeros(0, dtype=np.uint16)


def write_bpe_dataset(text, out_dir, val_fraction=0.1):
    """GPT-2 BPE dataset: the text is split by characters first, then each part is encoded."""
    cut = split_point(len(text), val_fraction)
    write_dataset(out_dir, encode_gpt2(text[:cut]), encode_gpt2(text[cut:]), GPT2_META)


WRITERS = {"char": write_char_dataset, "gpt2": write_bpe_dataset}


def prepare_downloaded_text(description, url, tokenizer, default_out_dir, local_copy=None):
    """The command line of a data/<name>/prepare.py whose dataset is one text file at url."""
    parser = ArgumentParser(description=description)
    parser.add_argument("--input", help="local copy of the text (default: <out_dir>/input.txt, downloaded if missing)")
    parser.add_argument("--out_dir", default=default_out_dir, help="folder to write the dataset into (default: the script's)")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="fraction of the text (at its end) kept for val")
    args = parser.parse_args()
    check_out_dir(args.out_dir, args.force)
    if not 0 < args.val_fraction < 1:  # reported before any download
        split_point(0, args.val_fraction)
    WRITERS[tokenizer](get_input_text(args.out_dir, url, args.input, local_copy), args.out_dir, args.val_fraction)


def main():
    parser = ArgumentParser(description="Turn a UTF-8 text file into train.bin/val.bin/meta.json.")
    parser.add_argument("--input", required=True, help="path of the text file")
    parser.add_argument("--out_dir", required=True, help="folder to write the dataset into, e.g. data/mytext")
    parser.add_argument("--tokenizer", choices=sorted(WRITERS), default="char", help="char-level or GPT-2 BPE")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="fraction of the text (at its end) kept for val")
    args = parser.parse_args()
    check_out_dir(args.out_dir, args.force)
    WRITERS[args.tokenizer](read_text(args.input), args.out_dir, args.val_fraction)


if __name__ == "__main__":
    run_main(main)
