"""GPT.from_pretrained against transformers' GPT-2 on a tiny random checkpoint saved to disk (offline)."""
import json
import os
import shutil

import pytest
import torch

from conftest import char_checkpoint, one_error_line, random_hf_gpt2, run_script
from model import GPT

N_POS, VOCAB = 32, 101


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def hf_model():
    pytest.importorskip("transformers")
    # initializer_range 0.2: big enough activations that exact vs tanh GELU differs by ~2e-3 in the
    # logits, well above the 1e-4 tolerance used below
    return random_hf_gpt2(dict(n_layer=2, n_head=4, n_embd=64, n_positions=N_POS, vocab_size=VOCAB,
                               bos_token_id=VOCAB - 1, eos_token_id=VOCAB - 1, initializer_range=0.2), 0.05)


@pytest.fixture(scope="module")
def safetensors_dir(hf_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("hf_safetensors")
    hf_model.save_pretrained(d)
    assert (d / "model.safetensors").exists() and (d / "config.json").exists()
    return str(d)


@pytest.fixture(scope="module")
def bin_dir(hf_model, safetensors_dir, tmp_path_factory):
    """A pytorch_model.bin checkpoint in the layout of the original OpenAI GPT-2 upload on the hub:
    keys without the 'transformer.' prefix, attention-mask buffers included, no lm_head."""
    d = tmp_path_factory.mktemp("hf_bin")
    shutil.copy(os.path.join(safetensors_dir, "config.json"), d / "config.json")
    state = {k: v.clone() for k, v in hf_model.transformer.state_dict().items()}
    for i in range(hf_model.config.n_layer):
        state[f"h.{i}.attn.bias"] = torch.tril(torch.ones(N_POS, N_POS)).view(1, 1, N_POS, N_POS)
    torch.save(state, d / "pytorch_model.bin")
    return str(d)


def tokens(B=2, T=N_POS, seed=0):
    return torch.randint(0, VOCAB, (B, T), generator=torch.Generator().manual_seed(seed))


def hf_logits(hf_model, idx):
    with torch.no_grad():
        return hf_model(idx).logits


def test_config_is_read_from_checkpoint(safetensors_dir):
    model = GPT.from_pretrained(safetensors_dir)
    c = model.config
    assert (c.n_layer, c.n_head, c.n_embd, c.block_size, c.vocab_size) == (2, 4, 64, N_POS, VOCAB)
    assert c.bias is True and c.dropout == 0.0  # HF's config has 0.1 dropouts; we default to none
    assert model.lm_head.weight is model.transformer.wte.weight


@pytest.mark.parametrize("which", ["safetensors", "bin"])
def test_logits_match_transformers(which, hf_model, safetensors_dir, bin_dir):
    folder = safetensors_dir if which == "safetensors" else bin_dir
    model = GPT.from_pretrained(folder).eval()
    idx = tokens()
    expected = hf_logits(hf_model, idx)
    with torch.no_grad():
        full, _ = model(idx, targets=idx)
        last, loss = model(idx)
    assert loss is None and full.shape == expected.shape
    assert (full - expected).abs().max().item() < 1e-4
    assert (last[:, 0] - expected[:, -1]).abs().max().item() < 1e-4
    # and on a short prompt, through the inference path
    with torch.no_grad():
        short, _ = model(idx[:, :5])
    assert (short[:, 0] - hf_logits(hf_model, idx[:, :5])[:, -1]).abs().max().item() < 1e-4


def test_reference_attention_path_also_matches(hf_model, safetensors_dir, plain_attention):
    model = GPT.from_pretrained(safetensors_dir).eval()
    plain_attention()
    idx = tokens(seed=1)
    with torch.no_grad():
        full, _ = model(idx, targets=idx)
    assert (full - hf_logits(hf_model, idx)).abs().max().item() < 1e-4


def test_override_dropout(safetensors_dir, hf_model):
    model = GPT.from_pretrained(safetensors_dir, override_args={"dropout": 0.25})
    assert model.config.dropout == 0.25
    drops = [m for m in model.modules() if isinstance(m, torch.nn.Dropout)]
    assert drops and all(m.p == 0.25 for m in drops)
    assert all(b.attn.dropout == 0.25 for b in model.transformer.h)
    idx = tokens(seed=2)
    model.train()
    torch.manual_seed(0)
    with torch.no_grad():
        a, _ = model(idx, targets=idx)
        b, _ = model(idx, targets=idx)
    assert not torch.allclose(a, b), "dropout 0.25 in train mode should make two passes differ"
    model.eval()  # weights are still exactly the pretrained ones
    with torch.no_grad():
        full, _ = model(idx, targets=idx)
    assert (full - hf_logits(hf_model, idx)).abs().max().item() < 1e-4


def test_override_block_size_crops(safetensors_dir, hf_model):
    model = GPT.from_pretrained(safetensors_dir, override_args={"block_size": 16}).eval()
    assert model.config.block_size == 16
    assert model.transformer.wpe.weight.shape == (16, 64)
    idx = tokens(T=16, seed=3)
    with torch.no_grad():
        full, _ = model(idx, targets=idx)
    assert (full - hf_logits(hf_model, idx)).abs().max().item() < 1e-4
    with pytest.raises(ValueError):
        model(tokens(T=17))


def test_unsupported_override_raises(safetensors_dir):
    with pytest.raises(ValueError, match="n_layer"):
        GPT.from_pretrained(safetensors_dir, override_args={"n_layer": 1})


def test_bad_directory_raises_clear_error(tmp_path, safetensors_dir):
    with pytest.raises(ValueError, match="config.json"):
        GPT.from_pretrained(str(tmp_path))
    only_config = tmp_path / "only_config"
    only_config.mkdir()
    shutil.copy(os.path.join(safetensors_dir, "config.json"), only_config / "config.json")
    with pytest.raises(ValueError, match="model.safetensors") as err:
        GPT.from_pretrained(str(only_config))
    assert str(only_config) in str(err.value)


def test_checkpoint_missing_a_tensor_raises(tmp_path, hf_model, safetensors_dir):
    from safetensors.torch import save_file
    state = {k: v.contiguous() for k, v in hf_model.state_dict().items() if k != "lm_head.weight"}
    del state["transformer.h.1.mlp.c_fc.weight"]
    save_file(state, str(tmp_path / "model.safetensors"))
    shutil.copy(os.path.join(safetensors_dir, "config.json"), tmp_path / "config.json")
    with pytest.raises(ValueError, match=r"h\.1\.mlp\.c_fc\.weight"):
        GPT.from_pretrained(str(tmp_path))


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError) as err:
        GPT.from_pretrained("gpt3-definitely-not-a-model")
    msg = str(err.value)
    assert "gpt3-definitely-not-a-model" in msg
    for name in ("gpt2", "gpt2-medium", "gpt2-large", "gpt2-xl"):
        assert name in msg


def test_wider_mlp_is_rejected(tmp_path, safetensors_dir):
    shutil.copy(os.path.join(safetensors_dir, "model.safetensors"), tmp_path / "model.safetensors")
    with open(os.path.join(safetensors_dir, "config.json")) as f:
        config = json.load(f)
    config["n_inner"] = 3 * config["n_embd"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="n_inner"):
        GPT.from_pretrained(str(tmp_path))


def test_export_refuses_a_folder_that_holds_files(tmp_path, char_data):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "config.json").write_text('{"another": "model"}')
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}", f"--export_dir={theirs}",
                     check=False)
    one_error_line(res, f"export folder '{theirs}' is not empty (config.json); pass --force=True")
    assert (theirs / "config.json").read_text() == '{"another": "model"}'
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}", f"--export_dir={theirs}",
                     "--force=True")
    assert sorted(os.listdir(theirs)) == ["config.json", "model.safetensors"]
    assert "character vocabulary" in res.stdout and "not GPT2Tokenizer" in res.stdout
    res = run_script("sample.py", f"--init_from={theirs}", "--device=cpu", check=False)  # no vocabulary there
    one_error_line(res, f"{theirs} has {len(char_data[2])} token ids, too few for GPT-2's BPE")


def test_export_under_torchrun_is_written_by_rank_0_only(tmp_path, char_data, monkeypatch):
    char_checkpoint(str(tmp_path / "out"), char_data[2])
    monkeypatch.setenv("RANK", "1")  # as torchrun sets it for the second process
    res = run_script("eval.py", "--task=export_hf", f"--out_dir={tmp_path / 'out'}", f"--export_dir={tmp_path / 'hf'}")
    assert res.returncode == 0 and not res.stdout and not (tmp_path / "hf").exists()


def test_a_damaged_hugging_face_folder_names_the_file(tmp_path):
    from hf import export as export_hf
    from model import GPT, GPTConfig
    hf = tmp_path / "hf"
    export_hf(GPT(GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=50257)), str(hf))
    weights = (hf / "model.safetensors").read_bytes()
    (hf / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    res = run_script("sample.py", f"--init_from={hf}", "--device=cpu", cwd=tmp_path, check=False)
    one_error_line(res, f"{hf / 'model.safetensors'} could not be read as part of a GPT-2 checkpoint")
    (hf / "model.safetensors").write_bytes(weights)
    (hf / "config.json").write_text('{"n_layer": 1,')
    res = run_script("sample.py", f"--init_from={hf}", "--device=cpu", cwd=tmp_path, check=False)
    one_error_line(res, f"{hf / 'config.json'} could not be read as part of a GPT-2 checkpoint (JSONDecodeError")
