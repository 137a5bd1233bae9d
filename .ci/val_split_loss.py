"""The loss of a checkpoint (ours or nanoGPT's) on a whole val split, not a 20-batch sample of it.

    python .ci/val_split_loss.py out/ckpt.pt data/shakespeare_char/val.bin

The split is cut into consecutive block_size windows (the last one ends at the last token); every
next token in them is scored, as training scores them. Prints one JSON line.
"""
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from checkpoint import load_checkpoint, model_from_checkpoint  # noqa: E402


@torch.no_grad()
def main(ckpt_path, val_path, batch_size=64):
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt, dropout=0.0, path=ckpt_path).eval()
    T = model.config.block_size
    data = torch.from_numpy(np.fromfile(val_path, dtype=np.uint16).astype(np.int64))
    starts = list(range(0, len(data) - T - 1, T)) + [len(data) - T - 1]
    nats = scored = 0.0
    for i in range(0, len(starts), batch_size):
        rows = torch.stack([data[s:s + T + 1] for s in starts[i:i + batch_size]])
        logits, _ = model(rows[:, :-1], rows[:, 1:])
        losses = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none").view(len(rows), T)
        if i + batch_size >= len(starts):  # the last window overlaps the one before it: score only its new tokens
            overlap = starts[-2] + T - starts[-1] if len(starts) > 1 else 0
            losses[-1, :overlap] = 0
            scored -= overlap
        nats += losses.double().sum().item()
        scored += losses.numel()
    print(json.dumps({"checkpoint": ckpt_path, "iter_num": ckpt.get("iter_num"), "val_tokens": int(scored),
                      "val_split_loss": round(nats / scored, 4)}))


if __name__ == "__main__":
    main(*sys.argv[1:3])
