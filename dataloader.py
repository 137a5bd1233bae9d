"""Reading training data: uint16 token files written by data/*/prepare.py, cut into (x, y) windows."""
import os

import numpy as np
import torch

from configurator import UserError


class Batches:
    """(x, y) windows of a uint16 token file, y being x shifted by one token. The memmap is reopened
    for every batch, so reading a large file never accumulates pages in this process's memory."""

    def __init__(self, path, batch_size, block_size, device):
        self.path, self.batch_size, self.block_size, self.device = path, batch_size, block_size, device
        self.n_tokens = len(np.memmap(path, dtype=np.uint16, mode="r"))
        if self.n_tokens <= block_size:
            raise UserError(f"{path} holds {self.n_tokens} tokens, too few for block_size={block_size}; "
                            "use a smaller --block_size or more data")

    def random_starts(self, generator):
        return torch.randint(self.n_tokens - self.block_size, (self.batch_size,), generator=generator).numpy()

    def get(self, starts):
        data = np.memmap(self.path, dtype=np.uint16, mode="r")
        rows = torch.from_numpy(data[np.asarray(starts)[:, None] + np.arange(self.block_size + 1)].astype(np.int64))
        x, y = rows[:, :-1], rows[:, 1:]
        if self.device.startswith("cuda"):  # pinned memory lets the copy overlap the compute
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x.to(self.device), y.to(self.device)


class EpochOrder:
    """Where training window w of the run starts. Each epoch cuts the tokens into block_size windows
    at a random offset and visits them all in a random order, so every token is trained on once per
    epoch (independent random windows leave ~22% of the tokens unseen after 1.5 epochs). Window w
    depends only on (seed, w): the same whatever the number of processes, and exact on resume."""

    def __init__(self, n_tokens, block_size, seed):
        self.block_size, self.seed = block_size, seed
        self.n = max(1, (n_tokens - block_size) // block_size)  # windows per epoch
        self.offsets = min(block_size, n_tokens - self.n * block_size)  # any offset keeps all windows whole
        self.epoch = None

    def starts(self, first, count):
        out = np.empty(count, dtype=np.int64)
        for i, w in enumerate(range(first, first + count)):
            epoch, k = divmod(w, self.n)
            if epoch != self.epoch:
                g = torch.Generator().manual_seed(self.seed + 7919 * epoch)
                self.offset = int(torch.randint(self.offsets, (1,), generator=g))
                self.order, self.epoch = torch.randperm(self.n, generator=g).numpy(), epoch
            out[i] = self.offset + self.order[k] * self.block_size
        return out


def open_splits(folder, dataset, batch_size, block_size, device):
    """{'train': Batches, 'val': Batches} for a prepared dataset folder, or a clear error."""
    for split in ("train", "val"):
        if not os.path.isfile(os.path.join(folder, f"{split}.bin")):
            raise UserError(f"dataset '{dataset}' not found: {folder}/{split}.bin is missing; "
                            f"run python data/{dataset}/prepare.py first (or set --data_dir)")
    return {s: Batches(os.path.join(folder, f"{s}.bin"), batch_size, block_size, device) for s in ("train", "val")}
