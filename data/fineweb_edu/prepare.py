"""FineWeb-Edu (HuggingFaceFW/fineweb-edu, educational web pages) as GPT-2 BPE token shards.

    python data/fineweb_edu/prepare.py                                    # streams the sample-10BT subset
    python data/fineweb_edu/prepare.py --subset=sample-100BT --num_proc=16
    python data/fineweb_edu/prepare.py --data_files='corpus/*.parquet'    # or any local documents

Documents are streamed, so nothing is downloaded up front and the corpus never has to fit in memory
or on disk. Each one is encoded with GPT-2 BPE (in --num_proc processes) after an end-of-text token
50256, and the token stream is cut into shards of --shard_tokens uint16 ids, the format of train.bin:
fineweb_edu_val_000000.bin (the first shard is the val split), then fineweb_edu_train_000001.bin, ...;
the last shard holds what is left over. A shard appears under its name only once it is complete, and
progress.json records where in the stream each finished shard ends, so the same command run again
after an interruption carries on with the next shard and the shards come out byte-identical.
Local files (--data_files) may be .jsonl/.json or .parquet with a "text" column, or .txt holding one
document per file; they are read in sorted order. train.py reads the shards with --dataset=fineweb_edu.
"""
import collections
import glob
import itertools
import json
import multiprocessing
import os
import signal
import sys
from contextlib import nullcontext

import numpy as np
from tqdm import tqdm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # so the shared data/prepare_text.py imports
from prepare_text import (GPT2_META, ArgumentParser, PrepareError, atomic_write, gpt2_encoding, hub_problem,  # noqa: E402
                          local_files, run_main, save_meta)

HUB_DATASET = "HuggingFaceFW/fineweb-edu"
EOT = 50256  # GPT-2's <|endoftext|>: it starts every document
CHUNKSIZE = 16  # documents a worker process encodes per task


def shard_path(out_dir, index):
    split = "val" if index == 0 else "train"
    return os.path.join(out_dir, f"fineweb_edu_{split}_{index:06d}.bin")


def save_progress(out_dir, progress):
    atomic_write(os.path.join(out_dir, "progress.json"), lambda f: f.write(json.dumps(progress).encode()))


def load_progress(out_dir, source, shard_tokens):
    """Where an earlier run of the same command stopped, or a fresh start. Shards written by another
    source or shard size are never continued: the token stream would not line up."""
    path = os.path.join(out_dir, "progress.json")
    fresh = {"source": source, "shard_tokens": shard_tokens, "shards": 0, "documents": 0, "skip_tokens": 0,
             "tokens": 0, "complete": False}
    if not os.path.isfile(path):
        if os.path.isfile(shard_path(out_dir, 0)):
            raise PrepareError(f"{out_dir} holds shards but no progress.json, so they cannot be continued; "
                               "delete them or choose another --out_dir")
        return fresh
    try:
        with open(path) as f:
            progress = json.load(f)
        bad = not isinstance(progress, dict) or not all(k in progress for k in fresh)
    except ValueError:
        bad = True
    if bad:
        raise PrepareError(f"{path} is damaged, so the shards beside it cannot be continued; delete them and "
                           "progress.json, or choose another --out_dir")
    for key in ("source", "shard_tokens"):
        if progress[key] != fresh[key]:
            raise PrepareError(f"{out_dir} holds shards of another prepare ({key} {progress[key]} there, "
                               f"{fresh[key]} now); delete its shards and progress.json or choose another --out_dir")
    return progress


def read(documents, where):
    """The documents of an iterator, with a failure to read them as a one-line error."""
    while True:
        try:
            yield next(documents)
        except StopIteration:
            return
        except Exception as e:  # a malformed file, a dropped connection
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise PrepareError(f"reading {where} failed ({reason}); fix that and run the same command "
                               "again to continue after the last finished shard") from None


def open_documents(args):
    """The documents' texts in a fixed order, streamed from the hub or read from local files. The
    first document is read here, so a missing dataset or "text" column is reported straight away."""
    import datasets
    if args.data_files:
        builder, options, files = local_files(args.data_files)
        stream = datasets.load_dataset(builder, data_files=files, split="train", streaming=True, **options)
        where = args.data_files
    else:
        where = f"{HUB_DATASET} ({args.subset})"
        problem = hub_problem()
        if problem:
            raise PrepareError(f"could not open {where} ({problem}); pass --data_files=PATTERN to use local files")
        try:
            stream = datasets.load_dataset(HUB_DATASET, name=args.subset, split="train", streaming=True)
        except Exception as e:  # no network, an unknown subset, ...: the library's reason, on one line
            raise PrepareError(f"could not open {where}: {str(e).splitlines()[0]}; "
                               "check the network and --subset, or pass --data_files=PATTERN") from None
    documents = read(iter(stream), where)
    first = list(itertools.islice(documents, 1))
    if first and "text" not in first[0]:
        raise PrepareError(f"{where} has no 'text' column (columns: {', '.join(first[0])})")
    return (doc["text"] for doc in itertools.chain(first, documents))


def tokenize(text):
    import tiktoken
    ids = tiktoken.get_encoding("gpt2").encode_ordinary(text)  # the encoding is cached per process
    return np.array([EOT] + ids, dtype=np.uint16)


def tokenized(texts, pool, num_proc):
    """The token arrays of texts, in order. Blocks of documents are handed to the pool a few ahead of
    the one being consumed, so the workers stay busy while memory holds only those blocks (Pool.imap
    would read the whole stream ahead of the workers)."""
    if pool is None:
        yield from map(tokenize, texts)
        return
    block_docs, pending = CHUNKSIZE * num_proc * 4, collections.deque()
    while True:
        block = list(itertools.islice(texts, block_docs))
        if block:
            pending.append(pool.map_async(tokenize, block, CHUNKSIZE))
        if pending and (len(pending) == 3 or not block):
            yield from pending.popleft().get()
        elif not block:
            return


def write_shards(docs, progress, out_dir, max_shards, bar):
    """Cut the token arrays of the documents after progress['documents'] into shards, dropping the
    first progress['skip_tokens'] tokens already written. Updates progress after every shard;
    returns False if --max_shards stopped it before the end of the stream."""
    size = progress["shard_tokens"]
    buffer, fill, skip = np.empty(size, dtype=np.uint16), 0, progress["skip_tokens"]

    def finish_shard(documents, skip_tokens):
        atomic_write(shard_path(out_dir, progress["shards"]), buffer[:fill].tofile, size_hint=2 * fill)
        progress.update(shards=progress["shards"] + 1, documents=documents, skip_tokens=skip_tokens,
                        tokens=progress["tokens"] + fill)
        save_progress(out_dir, progress)  # a crash before this line only means the shard is rewritten
        bar.set_postfix_str(f"{progress['shards']} shards")

    consumed = progress["documents"]
    for doc, ids in enumerate(docs, start=progress["documents"]):
        pos, skip = skip, 0
        while pos < len(ids):
            take = min(size - fill, len(ids) - pos)
            buffer[fill:fill + take] = ids[pos:pos + take]
            fill, pos = fill + take, pos + take
            bar.update(take)
            if fill == size:  # the shard ends after token pos of this document
                whole = pos == len(ids)
                finish_shard(doc + 1 if whole else doc, 0 if whole else pos)
                fill = 0
                if progress["shards"] == max_shards:
                    return False
        consumed = doc + 1
    if fill:  # the last shard holds what is left
        finish_shard(consumed, 0)
    return True


def prepare_shards(args, progress, pool):
    """Stream, encode and write the shards not yet in progress; True once the stream is used up."""
    texts = open_documents(args)  # after the fork: the workers need none of the stream's threads
    os.makedirs(args.out_dir, exist_ok=True)
    save_progress(args.out_dir, progress)  # from now on, any shard here belongs to this prepare
    save_meta(args.out_dir, GPT2_META)
    for stale in glob.glob(os.path.join(glob.escape(args.out_dir), "fineweb_edu_*.bin.*.tmp")):
        os.remove(stale)  # a shard that a killed run was writing: it is written again below
    if progress["shards"]:
        print(f"continuing after shard {progress['shards'] - 1}: skipping the {progress['documents']:,} "
              f"documents and {progress['skip_tokens']:,} tokens already written")
    texts = itertools.islice(texts, progress["documents"], None)  # skipped documents are not encoded
    with tqdm(desc="tokens", unit="tok", unit_scale=True, initial=progress["tokens"]) as bar:
        return write_shards(tokenized(texts, pool, args.num_proc), progress, args.out_dir, args.max_shards, bar)


def main():
    parser = ArgumentParser(description="Prepare FineWeb-Edu (or local documents) as GPT-2 BPE token shards.",
                            force=False)  # the same command continues; another source is refused
    parser.add_argument("--subset", default="sample-10BT", help="FineWeb-Edu config: sample-10BT, sample-100BT, "
                        "sample-350BT, default (everything), or one crawl such as CC-MAIN-2024-10")
    parser.add_argument("--data_files", help="glob of local .jsonl/.json/.parquet/.txt files to use instead of the hub")
    parser.add_argument("--out_dir", default=HERE, help="folder to write the shards into (default: this folder)")
    parser.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per shard (200 MB at 100M)")
    parser.add_argument("--max_shards", type=int, default=0, help="stop once this many shards exist (0: the whole stream)")
    parser.add_argument("--num_proc", type=int, default=max(1, (os.cpu_count() or 2) // 2), help="tokenizer processes")
    args = parser.parse_args()
    for key, least in (("shard_tokens", 1), ("num_proc", 1), ("max_shards", 0)):
        if getattr(args, key) < least:
            raise PrepareError(f"--{key} must be at least {least}, got {getattr(args, key)}")

    if args.data_files:
        source = {"data_files": [os.path.abspath(f) for f in local_files(args.data_files)[2]]}
    else:
        source = {"dataset": HUB_DATASET, "subset": args.subset}
    progress = load_progress(args.out_dir, source, args.shard_tokens)
    if progress["complete"] or (args.max_shards and progress["shards"] >= args.max_shards):
        print(f"nothing to do: {args.out_dir} already holds {progress['shards']} shards "
              f"({'the whole stream' if progress['complete'] else '--max_shards'})")
        return
    gpt2_encoding()  # load it once, before forking the workers that inherit it
    workers = nullcontext()
    if args.num_proc > 1:  # the workers ignore Ctrl-C: it is the main process's to handle
        workers = multiprocessing.Pool(args.num_proc, initializer=signal.signal, initargs=(signal.SIGINT, signal.SIG_IGN))
    try:
        with workers as pool:
            finished = prepare_shards(args, progress, pool)
    except KeyboardInterrupt:
        raise PrepareError(f"interrupted with {progress['shards']} shards finished; run the same command "
                           "again to continue after them") from None
    if finished:
        if progress["shards"] < 2:
            raise PrepareError(f"the documents hold only {progress['tokens']:,} tokens, not enough for a train "
                               f"shard after the val shard; use a smaller --shard_tokens (and a new --out_dir)")
        progress["complete"] = True
        save_progress(args.out_dir, progress)
    print(f"{progress['shards']} shards (1 val, {progress['shards'] - 1} train), {progress['tokens']:,} tokens "
          f"from {progress['documents']:,} documents -> {args.out_dir}" + ("" if finished else " (stopped by --max_shards)"))


if __name__ == "__main__":
    run_main(main)
