"""FineWeb-Edu's sharded prepare, offline on generated local documents, and training on shards.
The oracle for every shard is the token stream encoded here in-process: each document's GPT-2 ids
after an end-of-text token, all concatenated, cut every --shard_tokens tokens."""
import json
import os
import random

import numpy as np
import pytest
import tiktoken
import torch

from conftest import load, run_script, train
from errors import UserError
from dataloader import Batches, open_splits

PREPARE = "data/fineweb_edu/prepare.py"
EOT = 50256
WORDS = ("the of and a to in is that for it as was with be by on not this are or from at which but have an "
         "they you were their has would when if so will more can water energy cell planet students learn "
         "history reaction equation theory language photosynthesis mitochondria, teachers; 1969 3.14 (see "
         "above) don't it's café — “quoted”").split()


def make_documents(rng, n_docs, min_words, max_words):
    docs = []
    for _ in range(n_docs):
        words = [rng.choice(WORDS) for _ in range(rng.randint(min_words, max_words))]
        for i in range(rng.randrange(12, 30), len(words), rng.randrange(12, 30)):
            words[i] += rng.choice([".", ".\n", ".\n\n", "?", "!"])  # sentences and paragraphs
        docs.append(" ".join(words).capitalize() + ".")
    return docs


def token_stream(docs):
    enc = tiktoken.get_encoding("gpt2")
    return np.array([t for doc in docs for t in [EOT] + enc.encode_ordinary(doc)], dtype=np.uint16)


def shard_files(folder):
    """The shard files of a folder in stream order (by index: val_000000 comes before train_000001)."""
    names = [n for n in os.listdir(folder) if n.startswith("fineweb_edu_")]
    return sorted(names, key=lambda n: n.rsplit("_", 1)[1])


def read_shards(folder):
    return {name: np.fromfile(os.path.join(folder, name), dtype=np.uint16) for name in shard_files(folder)}


def write_jsonl(path, docs):
    lines = [json.dumps({"id": f"<urn:uuid:{i}>", "text": doc, "score": 3.5}) for i, doc in enumerate(docs)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """~330k GPT-2 tokens of generated documents in one jsonl file: (path, expected token stream)."""
    docs = make_documents(random.Random(0), 330, 20, 1500)
    folder = tmp_path_factory.mktemp("corpus")
    write_jsonl(folder / "docs.jsonl", docs)
    return folder / "docs.jsonl", token_stream(docs)


def prepare(tmp, *args, check=True):
    """Run the prepare script in the folder tmp, which also holds the datasets library's cache.
    USE_TORCH=0 stops datasets from importing torch, which the script never uses: 2 s saved a run."""
    return run_script(PREPARE, *args, check=check, cwd=tmp, env={"HF_DATASETS_CACHE": str(tmp / "hf"), "USE_TORCH": "0"})


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    """The corpus prepared into 100k-token shards in <tmp>/data/fineweb_edu, by two tokenizer processes."""
    tmp = tmp_path_factory.mktemp("prepared")
    out = tmp / "data" / "fineweb_edu"
    result = prepare(tmp, f"--data_files={corpus[0]}", f"--out_dir={out}", "--shard_tokens=100000", "--num_proc=2")
    return out, result


def test_prepare_cuts_the_token_stream_into_shards(corpus, prepared):
    out, result = prepared
    expected = corpus[1]
    assert 320_000 < len(expected) < 340_000
    shards = read_shards(out)
    assert list(shards) == ["fineweb_edu_val_000000.bin", "fineweb_edu_train_000001.bin",
                            "fineweb_edu_train_000002.bin", "fineweb_edu_train_000003.bin"]
    assert [len(s) for s in shards.values()] == [100_000] * 3 + [len(expected) - 300_000]  # the rest is kept
    assert np.array_equal(np.concatenate(list(shards.values())), expected)
    assert json.loads((out / "meta.json").read_text()) == {"vocab_size": 50257, "tokenizer": "gpt2"}
    assert sorted(os.listdir(out)) == sorted([*shards, "meta.json", "progress.json"])  # no temporary files left
    assert f"4 shards (1 val, 3 train), {len(expected):,} tokens from 330 documents" in result.stdout


def test_interrupted_prepare_resumes_to_identical_shards(corpus, prepared, tmp_path):
    out = tmp_path / "fineweb_edu"
    args = [f"--data_files={corpus[0]}", f"--out_dir={out}", "--shard_tokens=100000"]
    first = prepare(tmp_path, *args, "--max_shards=2", "--num_proc=1")
    assert "stopped by --max_shards" in first.stdout and len(read_shards(out)) == 2
    progress = json.loads((out / "progress.json").read_text())
    assert progress["skip_tokens"] > 0  # the cut fell inside a document: resuming must skip its written head
    # As if killed while writing shard 2, or after renaming it but before recording it: both are redone.
    (out / "fineweb_edu_train_000002.bin.4242-abcdef.tmp").write_bytes(b"half a shard")
    (out / "fineweb_edu_train_000002.bin").write_bytes(b"\x01\x00" * 5)
    second = prepare(tmp_path, *args, "--num_proc=2")
    assert f"skipping the {progress['documents']:,} documents and {progress['skip_tokens']:,} tokens" in second.stdout
    assert sorted(os.listdir(out)) == sorted(os.listdir(prepared[0]))
    for name in shard_files(out):
        assert (out / name).read_bytes() == (prepared[0] / name).read_bytes(), name
    assert "nothing to do" in prepare(tmp_path, *args).stdout
    other = prepare(tmp_path, *args[:2], "--shard_tokens=50000", check=False)  # would not line up: refused
    assert other.returncode == 2 and "shard_tokens 100000 there, 50000 now" in other.stderr


@pytest.mark.parametrize("kind", ["txt", "parquet"])
def test_txt_and_parquet_files(tmp_path, kind):
    docs = make_documents(random.Random(1), 12, 5, 300)
    docs[5] = make_documents(random.Random(2), 1, 2500, 2500)[0]  # spans several 1000-token shards
    (tmp_path / "docs").mkdir()
    if kind == "txt":  # one document per file, read in sorted order
        for i, doc in enumerate(docs):
            (tmp_path / "docs" / f"{i:02d}.txt").write_text(doc, encoding="utf-8")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"text": docs[:7]}), tmp_path / "docs" / "a.parquet")
        pq.write_table(pa.table({"text": docs[7:]}), tmp_path / "docs" / "b.parquet")
    out = tmp_path / "out"
    args = [f"--data_files={tmp_path}/docs/*.{kind}", f"--out_dir={out}", "--shard_tokens=1000"]
    if kind == "parquet":  # interrupted inside the long document, more than one shard after its start
        prepare(tmp_path, *args, "--max_shards=3", "--num_proc=1")
        progress = json.loads((out / "progress.json").read_text())
        assert progress["documents"] == 5 and progress["skip_tokens"] > 1000
    prepare(tmp_path, *args, "--num_proc=2")
    shards = read_shards(out)
    expected = token_stream(docs)
    assert len(shards) == -(-len(expected) // 1000) >= 5
    assert np.array_equal(np.concatenate(list(shards.values())), expected)


def test_prepare_errors_are_one_line(tmp_path):
    (tmp_path / "other.jsonl").write_text(json.dumps({"content": "no text column"}) + "\n")
    write_jsonl(tmp_path / "short.jsonl", ["just a few tokens"] * 3)
    cases = [
        ([f"--data_files={tmp_path}/missing/*.jsonl"], "no files match"),
        ([f"--data_files={tmp_path}/other.jsonl"], "has no 'text' column (columns: content)"),
        ([f"--data_files={tmp_path}/short.jsonl"], "not enough for a train shard"),
        (["--subset=sample-10BT"], "could not open HuggingFaceFW/fineweb-edu (sample-10BT)"),  # offline in tests
        ([f"--data_files={tmp_path}/short.jsonl", "--shard_tokens=0"], "--shard_tokens must be at least 1"),
    ]
    for i, (args, message) in enumerate(cases):
        result = prepare(tmp_path, f"--out_dir={tmp_path / f'out{i}'}", *args, check=False)
        assert result.returncode == 2, result.stderr
        last = result.stderr.strip().splitlines()[-1]  # after the progress bar, if it got that far
        assert last.startswith("error: ") and message in last and "Traceback" not in result.stderr, result.stderr


def test_sharded_batches_read_one_stream(tmp_path):
    stream = np.random.default_rng(0).integers(0, 50257, 1000).astype(np.uint16)
    stream.tofile(tmp_path / "all.bin")
    paths, start = [], 0
    for i, size in enumerate([300, 0, 1, 250, 17, 432]):  # an empty and a one-token shard too
        paths.append(str(tmp_path / f"x_train_{i:06d}.bin"))
        stream[start:start + size].tofile(paths[-1])
        start += size
    sharded, whole = Batches(paths, 7, 32, "cpu"), Batches(str(tmp_path / "all.bin"), 7, 32, "cpu")
    assert sharded.n_tokens == whole.n_tokens == 1000
    every = np.arange(1000 - 32)  # every window, many of them across one or more shard boundaries
    for starts in np.array_split(every, len(every) // 7):
        for a, b in zip(sharded.get(starts), whole.get(starts)):
            assert torch.equal(a, b)
    x, y = sharded.get(np.array([290, 299, 550]))
    assert torch.equal(x[0], torch.from_numpy(stream[290:322].astype(np.int64)))
    assert torch.equal(y[1], torch.from_numpy(stream[300:332].astype(np.int64)))


@pytest.mark.skipif(not os.path.exists("/proc/self/maps"), reason="reads Linux's list of mapped files")
def test_sharded_batches_keep_no_file_mapped(tmp_path):
    """Memory stays flat however many shards: nothing stays mapped between batches."""
    paths = []
    for i in range(50):
        paths.append(str(tmp_path / f"many_train_{i:06d}.bin"))
        np.full(100, i, dtype=np.uint16).tofile(paths[-1])
    batches = Batches(paths, 64, 16, "cpu")
    x, _ = batches.get(batches.random_starts(torch.Generator().manual_seed(0)))
    assert set(np.unique(x.numpy()).tolist()) <= set(range(50)) and len(np.unique(x.numpy())) > 10
    with open("/proc/self/maps") as f:
        assert "many_train_" not in f.read()


def test_open_splits_finds_shards_and_names_both_layouts(tmp_path):
    with pytest.raises(UserError, match=r"needs train\.bin and val\.bin, or shards named \*_train_\*\.bin"):
        open_splits(str(tmp_path), "mine", 2, 8, "cpu")
    for name in ["d_train_000002.bin", "d_val_000000.bin", "d_train_000010.bin", "d_train_000001.bin"]:
        np.arange(50, dtype=np.uint16).tofile(tmp_path / name)
    (tmp_path / "d_train_000003.bin.tmp").write_bytes(b"unfinished")  # never read
    splits = open_splits(str(tmp_path), "mine", 2, 8, "cpu")
    assert [os.path.basename(p) for p in splits["train"].paths] == \
        ["d_train_000001.bin", "d_train_000002.bin", "d_train_000010.bin"]
    assert (splits["train"].n_tokens, splits["val"].n_tokens) == (150, 50)
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "train.bin")
    np.arange(50, dtype=np.uint16).tofile(tmp_path / "val.bin")
    with pytest.raises(UserError, match="holds both"):
        open_splits(str(tmp_path), "mine", 2, 8, "cpu")


def test_train_on_fineweb_shards(prepared, tmp_path):
    out = prepared[0]
    result = train(tmp_path, (str(out.parent), "fineweb_edu", None), "--max_iters=3", "--eval_interval=3")
    assert "step 3: train loss" in result.stdout
    ckpt = load(tmp_path / "out" / "ckpt.pt")
    assert ckpt["iter_num"] == 3 and ckpt["model_args"]["vocab_size"] >= 50257
