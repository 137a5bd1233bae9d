"""Reading training data: uint16 token files written by data/*/prepare.py, cut into (x, y) windows."""
import glob
import os
import subprocess
import sys

import numpy as np
import torch

from errors import UserError


class Batches:
    """(x, y) windows of uint16 token files (y: x shifted by one), a split's files read as one stream. Each batch
    memory-maps them afresh, so this process's memory stays flat however large or many they are."""

    def __init__(self, paths, batch_size, block_size, device):
        self.paths = [paths] if isinstance(paths, str) else list(paths)
        self.batch_size, self.block_size, self.device = batch_size, block_size, device
        self.vocab_size = None  # set it to have every batch checked for ids the model has no embedding for
        sizes = [os.path.getsize(p) for p in self.paths]
        for path, size in zip(self.paths, sizes):
            if size % 2:
                raise UserError(f"{path} has an odd number of bytes, so it is not a uint16 token file; "
                                "prepare it again")
        self.bounds = np.cumsum([0] + [size // 2 for size in sizes])  # file i holds tokens bounds[i]:bounds[i+1]
        self.n_tokens = int(self.bounds[-1])
        if self.n_tokens <= block_size:
            where = self.paths[0] if len(self.paths) == 1 else f"the {len(self.paths)} files {self.paths[0]}, ..."
            raise UserError(f"{where} holds {self.n_tokens} tokens, too few for block_size={block_size}; "
                            "use a smaller --block_size or more data")

    def random_starts(self, generator):
        return torch.randint(self.n_tokens - self.block_size, (self.batch_size,), generator=generator).numpy()

    def get(self, starts):
        index = np.asarray(starts)[:, None] + np.arange(self.block_size + 1)  # stream positions of each row
        file = np.searchsorted(self.bounds, index, side="right") - 1  # empty files are never chosen
        tokens = np.empty(index.shape, dtype=np.int64)
        for i in np.unique(file):
            data, rows = np.memmap(self.paths[i], dtype=np.uint16, mode="r"), file == i
            tokens[rows] = data[index[rows] - self.bounds[i]]
        if self.vocab_size and tokens.max() >= self.vocab_size:  # on a GPU it would be a device-side assert
            worst = max(np.unique(file), key=lambda i: tokens[file == i].max())
            raise UserError(f"{self.paths[worst]} holds token id {tokens[file == worst].max()}, but the model's "
                            f"vocab_size is {self.vocab_size}: the data was prepared with another tokenizer or is "
                            "damaged; prepare it again")
        rows = torch.from_numpy(tokens)
        if self.device.startswith("cuda"):  # one copy from pinned memory overlaps the compute; slice on the GPU
            rows = rows.pin_memory().to(self.device, non_blocking=True)
        return rows[:, :-1].to(self.device), rows[:, 1:].to(self.device)


class EpochOrder:
    """Where training window w starts. Each epoch cuts the tokens into block_size windows at a random offset and
    visits them all in random order (independent random windows leave ~22% unseen after 1.5 epochs). Window w
    depends only on (seed, w): the same for any number of processes, and exact on resume."""

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


def split_files(folder, dataset):
    """{'train': paths, 'val': paths}: train.bin and val.bin, or the shards *_train_*.bin and *_val_*.bin."""
    single = {s: os.path.join(folder, f"{s}.bin") for s in ("train", "val")}
    shards = {s: sorted(glob.glob(os.path.join(glob.escape(folder), f"*_{s}_*.bin"))) for s in ("train", "val")}
    has_single, has_shards = all(map(os.path.isfile, single.values())), all(shards.values())
    if has_single and has_shards:
        raise UserError(f"{folder} holds both train.bin/val.bin and *_train_*.bin/*_val_*.bin shards, so which "
                        "to train on is unclear; move one set into its own dataset folder")
    if has_single:
        return {s: [path] for s, path in single.items()}
    if has_shards:
        return shards
    missing = [os.path.basename(p) for p in single.values() if not os.path.isfile(p)]
    if len(missing) == 1:
        raise UserError(f"{single['train' if missing[0] == 'train.bin' else 'val']} is missing (the dataset folder "
                        f"{folder} has only {'val' if missing[0] == 'train.bin' else 'train'}.bin); prepare the "
                        "dataset again")
    script = os.path.join(folder, "prepare.py")
    how = f"run python {script} first" if os.path.isfile(script) else \
        f"make it with python data/prepare_text.py --input=YOUR.txt --out_dir={folder}"
    raise UserError(f"dataset '{dataset}' not found: {folder} needs train.bin and val.bin, or shards named "
                    f"*_train_*.bin and *_val_*.bin; {how} (or set --data_dir)")


def prepare_if_local(folder, log):
    """Run a dataset folder's prepare.py if it has no data yet but has the input.txt it reads (no download)."""
    script, text = os.path.join(folder, "prepare.py"), os.path.join(folder, "input.txt")
    if glob.glob(os.path.join(glob.escape(folder), "*.bin")) or os.path.exists(os.path.join(folder, "meta.json")) \
            or not (os.path.isfile(script) and os.path.isfile(text)):
        return
    log(f"preparing {folder} first (it has no train.bin yet): python {script}")
    result = subprocess.run([sys.executable, script], capture_output=True, text=True)
    if result.returncode:
        raise UserError(f"preparing {folder} failed: {(result.stderr.strip().splitlines() or ['?'])[-1]}")


def open_splits(folder, dataset, batch_size, block_size, device):
    """{'train': Batches, 'val': Batches} for a prepared dataset folder, or a clear error."""
    return {s: Batches(paths, batch_size, block_size, device) for s, paths in split_files(folder, dataset).items()}
