"""OpenWebText (about 8M web documents, ~9B GPT-2 tokens) as a GPT-2 BPE dataset.

    python data/openwebtext/prepare.py                                   # downloads Skylion007/openwebtext
    python data/openwebtext/prepare.py --data_files='corpus/*.jsonl'     # or any local documents

Local files may be .jsonl/.json or .parquet with a "text" column, or .txt with one document per
file. A shuffled val split (--val_fraction, seed 2357, at least one document) is set aside; every
document is encoded with GPT-2 BPE (in --num_proc processes) and followed by the end-of-text token
50256. Writes train.bin and val.bin (uint16 ids) and meta.json into --out_dir (default: this
folder), streaming tokens to disk so the corpus never has to fit in memory. The full download
needs tens of GB of disk for the Hugging Face cache; train.bin comes out at ~17 GB.
"""
import os
import sys

import numpy as np
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # so the shared data/prepare_text.py imports
from prepare_text import (GPT2_META, ArgumentParser, PrepareError, atomic_write, check_out_dir,  # noqa: E402
                          gpt2_encoding, hub_problem, local_files, run_main, save_meta)


def load_documents(data_files, num_proc):
    """A datasets.Dataset with a "text" column: local files if data_files is a glob, else OpenWebText."""
    import datasets
    if not data_files:
        problem = hub_problem()
        if problem:
            raise PrepareError(f"could not download OpenWebText ({problem}); pass --data_files=GLOB to use local files")
        return datasets.load_dataset("Skylion007/openwebtext", split="train", num_proc=num_proc)
    builder, options, files = local_files(data_files)
    dataset = datasets.load_dataset(builder, data_files=files, split="train", **options)
    if "text" not in dataset.column_names:
        raise PrepareError(f"{data_files} has no 'text' column (columns: {', '.join(dataset.column_names)})")
    return dataset


def tokenize(batch):
    import tiktoken
    enc = tiktoken.get_encoding("gpt2")  # cached per process after the first call
    ids = [enc.encode_ordinary(text) + [enc.eot_token] for text in batch["text"]]
    return {"ids": ids, "len": [len(x) for x in ids]}


def write_split(dataset, path):
    """Stream the "ids" of every document, in order, into a uint16 file, written whole under a temporary
    name and then renamed (plain writes: a full disk is an error, where a memmap would crash)."""
    total = int(np.sum(dataset.select_columns(["len"]).with_format("numpy")[:]["len"], dtype=np.int64))
    num_shards = min(1024, len(dataset))

    def write(f):
        for i in tqdm(range(num_shards), desc=f"writing {os.path.basename(path)}"):
            shard = dataset.shard(num_shards, i, contiguous=True).with_format("numpy")
            np.concatenate(shard[:]["ids"]).astype(np.uint16).tofile(f)
    atomic_write(path, write, size_hint=2 * total)
    return total


def main():
    parser = ArgumentParser(description="Prepare OpenWebText (or local documents) as a GPT-2 BPE dataset.")
    parser.add_argument("--data_files", help="glob of local .txt/.jsonl/.json/.parquet files (default: download OpenWebText)")
    parser.add_argument("--out_dir", default=HERE, help="folder to write the dataset into (default: this folder)")
    parser.add_argument("--val_fraction", type=float, default=0.0005, help="fraction of documents kept for val")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="tokenizer processes")
    args = parser.parse_args()
    if not 0 < args.val_fraction < 1:
        raise PrepareError(f"--val_fraction must be between 0 and 1 (exclusive), got {args.val_fraction}")
    if args.num_proc < 1:
        raise PrepareError(f"--num_proc must be at least 1, got {args.num_proc}")
    check_out_dir(args.out_dir, args.force)

    gpt2_encoding()  # load the tokenizer before any download, and once for forked workers
    documents = load_documents(args.data_files, args.num_proc)
    if len(documents) < 2:
        raise PrepareError(f"need at least 2 documents to make a train and a val split, found {len(documents)}")
    num_val = min(len(documents) - 1, max(1, round(len(documents) * args.val_fraction)))  # both splits non-empty
    splits = documents.train_test_split(test_size=num_val, seed=2357, shuffle=True)

    os.makedirs(args.out_dir, exist_ok=True)
    for split, dataset in [("train", splits["train"]), ("val", splits["test"])]:
        tokens = dataset.map(tokenize, batched=True, remove_columns=dataset.column_names,
                             num_proc=min(args.num_proc, len(dataset)), desc=f"tokenizing {split}")
        total = write_split(tokens, os.path.join(args.out_dir, f"{split}.bin"))
        print(f"{split}: {len(tokens):,} documents, {total:,} tokens")
    save_meta(args.out_dir, GPT2_META)
    print(f"gpt2 vocab size {GPT2_META['vocab_size']} -> {args.out_dir}")


if __name__ == "__main__":
    run_main(main)
