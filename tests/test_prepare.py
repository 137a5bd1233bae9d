"""Dataset preparation scripts, run end to end on small local inputs: the .bin files must decode
back to exactly the input text (or documents), split where promised."""
import json
import os
import random

import numpy as np
import pytest
import tiktoken

from conftest import one_error_line, run_script, tree
from data.prepare_text import PrepareError, encode_gpt2, get_input_text, write_char_dataset

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\n"
        "All:\nSpeak, speak.  Naïve café — “quoted” 1234 don't they'll\r\n\tindented\n") * 5


def read_dataset(out_dir):
    """(train text, val text, meta) decoded from a prepared folder, using its meta.json."""
    meta = json.loads((out_dir / "meta.json").read_text(encoding="utf-8"))
    ids = {s: np.fromfile(out_dir / f"{s}.bin", dtype=np.uint16).tolist() for s in ("train", "val")}
    if meta.get("tokenizer") == "gpt2":
        decode = tiktoken.get_encoding("gpt2").decode
    else:
        decode = lambda xs: "".join(meta["itos"][i] for i in xs)  # noqa: E731
    return decode(ids["train"]), decode(ids["val"]), meta


def write_input(tmp_path, text=TEXT):
    path = tmp_path / "input.txt"
    path.write_text(text, encoding="utf-8", newline="")
    return path


@pytest.mark.parametrize("script", ["data/shakespeare_char/prepare.py", "data/prepare_text.py --tokenizer=char"])
def test_char_dataset_round_trips(tmp_path, script):
    out = tmp_path / "out"
    run_script(*script.split(), f"--input={write_input(tmp_path)}", f"--out_dir={out}", cwd=tmp_path)
    train, val, meta = read_dataset(out)
    cut = int(len(TEXT) * 0.9)
    assert (train, val) == (TEXT[:cut], TEXT[cut:])
    assert meta == {"vocab_size": len(set(TEXT)), "itos": sorted(set(TEXT))}
    assert (out / "train.bin").stat().st_size == 2 * cut  # uint16, no header


@pytest.mark.parametrize("script", ["data/shakespeare/prepare.py", "data/prepare_text.py --tokenizer=gpt2"])
def test_gpt2_dataset_round_trips(tmp_path, script):
    out = tmp_path / "out"
    run_script(*script.split(), f"--input={write_input(tmp_path)}", f"--out_dir={out}", "--val_fraction=0.25")
    train, val, meta = read_dataset(out)
    cut = int(len(TEXT) * 0.75)
    assert (train, val) == (TEXT[:cut], TEXT[cut:])
    assert meta == {"vocab_size": 50257, "tokenizer": "gpt2"}
    enc = tiktoken.get_encoding("gpt2")
    assert np.fromfile(out / "train.bin", dtype=np.uint16).tolist() == enc.encode_ordinary(TEXT[:cut])


def test_chunked_gpt2_encoding_equals_whole_encoding():
    pieces = [" ", "  ", "\n", "\n\n", "\r\n", "\t", "word", "Word", "'s", "'ll", "123", "!?", "é", "日本", " x"]
    rng = random.Random(0)
    text = "".join(rng.choice(pieces) for _ in range(3000))
    whole = tiktoken.get_encoding("gpt2").encode_ordinary(text)
    for chunk_chars in (1, 5, 37, 500):
        assert encode_gpt2(text, chunk_chars=chunk_chars).tolist() == whole


def test_uses_existing_input_txt_in_folder(tmp_path):
    write_input(tmp_path)  # with input.txt present nothing is downloaded (the URL is unreachable anyway)
    assert get_input_text(str(tmp_path), "http://invalid.invalid/input.txt") == TEXT
    other = tmp_path / "other.txt"
    other.write_text("an explicit --input wins", encoding="utf-8")
    assert get_input_text(str(tmp_path), "http://invalid.invalid/input.txt", str(other)) == other.read_text()
    run_script("data/shakespeare_char/prepare.py", f"--out_dir={tmp_path}")
    train, val, _ = read_dataset(tmp_path)
    assert train + val == TEXT


@pytest.mark.parametrize("args", [
    ["data/shakespeare_char/prepare.py", "--input=missing.txt"],
    ["data/shakespeare/prepare.py", "--input=missing.txt"],
    ["data/prepare_text.py", "--input=missing.txt", "--tokenizer=gpt2"],
    ["data/openwebtext/prepare.py", "--data_files=missing/*.jsonl"],
])
def test_missing_input_is_a_one_line_error(tmp_path, args):
    result = run_script(*args, f"--out_dir={tmp_path / 'out'}", cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert result.stderr.startswith("error: ") and result.stderr.count("\n") == 1, result.stderr
    assert "missing" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()


def test_char_dataset_rejects_bad_input(tmp_path):
    too_many = "".join(chr(c) for c in range(0x20, 0x20 + 2 ** 16 + 4096) if not 0xD800 <= c < 0xE000)
    with pytest.raises(PrepareError, match="distinct characters"):
        write_char_dataset(too_many, str(tmp_path))
    with pytest.raises(PrepareError, match="val_fraction"):
        write_char_dataset(TEXT, str(tmp_path), val_fraction=0.0)
    with pytest.raises(PrepareError, match="too short"):
        write_char_dataset("a", str(tmp_path), val_fraction=0.1)


DOCS = ["Hello world.\n\nA second paragraph, with more words in it.", "Short.", "Numbers 12345 and café 🙂",
        "A document that mentions <|endoftext|> as plain text.", "Line one\nLine two\n", "  leading spaces",
        "The last document " * 20]


def check_openwebtext(out_dir, stdout):
    enc = tiktoken.get_encoding("gpt2")
    expected = sorted(enc.encode_ordinary(d) + [enc.eot_token] for d in DOCS)
    splits = {s: np.fromfile(out_dir / f"{s}.bin", dtype=np.uint16).tolist() for s in ("train", "val")}
    assert all(ids and ids[-1] == enc.eot_token for ids in splits.values())
    assert len(splits["train"]) + len(splits["val"]) == sum(map(len, expected))
    docs = []  # cut each split after every EOT; ordinary text never encodes to the EOT id
    for ids in splits.values():
        ends = [i + 1 for i, t in enumerate(ids) if t == enc.eot_token]
        docs += [ids[a:b] for a, b in zip([0] + ends, ends)]
    assert sorted(docs) == expected
    assert json.loads((out_dir / "meta.json").read_text()) == {"vocab_size": 50257, "tokenizer": "gpt2"}
    assert "val: 2 documents" in stdout


def test_openwebtext_from_local_jsonl(tmp_path):
    for name, docs in [("a.jsonl", DOCS[:4]), ("b.jsonl", DOCS[4:])]:
        lines = [json.dumps({"text": d, "url": f"https://example.com/{i}"}) for i, d in enumerate(docs)]
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    result = run_script("data/openwebtext/prepare.py", f"--data_files={tmp_path}/*.jsonl", f"--out_dir={out}",
                        "--val_fraction=0.3", "--num_proc=2", env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    check_openwebtext(out, result.stdout)


def test_openwebtext_from_local_txt_files(tmp_path):
    (tmp_path / "docs").mkdir()
    for i, doc in enumerate(DOCS):
        (tmp_path / "docs" / f"{i}.txt").write_text(doc, encoding="utf-8", newline="")
    out = tmp_path / "out"
    result = run_script("data/openwebtext/prepare.py", f"--data_files={tmp_path}/docs/*.txt", f"--out_dir={out}",
                        "--val_fraction=0.25", env={"HF_DATASETS_CACHE": str(tmp_path / "hf")})
    check_openwebtext(out, result.stdout)


def test_prepare_refuses_to_replace_a_dataset_unless_forced(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("hello world, " * 100)
    out = tmp_path / "ds"
    run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}")
    before = tree(out)
    text.write_text("something else entirely. " * 100)
    res = run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}", check=False)
    one_error_line(res, f"{out} already holds a dataset (train.bin, val.bin, meta.json); pass --force=True")
    assert tree(out) == before
    run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}", "--force=True")
    assert tree(out) != before and sorted(os.listdir(out)) == ["meta.json", "train.bin", "val.bin"]
    res = run_script("data/prepare_text.py", f"--input={text}", f"--out_dir={out}", "--force=maybe", check=False)
    one_error_line(res, "expected True or False")
