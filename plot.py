"""Plot training runs from their out_dir/log.jsonl: loss against steps, and below it against tokens seen,
the learning rate, and HellaSwag accuracy when measured. Needs matplotlib.

    python plot.py --out_dir=out-shakespeare-char-cpu            # writes out-shakespeare-char-cpu/loss.png
    python plot.py --out_dir=run_a --out_dir=run_b --output=compare.png   # several runs overlaid
"""
import os
import sys

from configurator import load_config
from errors import UserError, run_main
from metrics import read_jsonl
from safety import atomic_write

DEFAULTS = dict(
    out_dir="out",   # a run's folder holding log.jsonl; repeat --out_dir=... to overlay several runs
    output="",       # the picture to write (default: loss.png in the first out_dir)
    smooth=10,       # the train-loss line averages this many logged steps (1: raw values only)
    title="",        # a title over the picture
)


def read_log(out_dir):
    """(train records, eval records) of a run's log.jsonl, in order."""
    path = os.path.join(out_dir, "log.jsonl")
    if not os.path.isfile(path):
        raise UserError(f"no log.jsonl in '{out_dir}': train.py writes it there while training (--out_dir)")
    train, evals = [], []
    for record in read_jsonl(path):
        (evals if record.get("kind") == "eval" else train).append(record)
    if not train and not evals:
        raise UserError(f"{path} holds no records yet")
    return train, evals


def moving_average(values, window):
    """Each value averaged with its neighbours, window in all: centred, so it does not lag a falling loss."""
    half = window // 2
    return [sum(values[max(0, i - half):i + half + 1]) / len(values[max(0, i - half):i + half + 1])
            for i in range(len(values))]


def series(records, x_key, y_key):
    pairs = [(r[x_key], r[y_key]) for r in records if r.get(x_key) is not None and r.get(y_key) is not None]
    return [x for x, _ in pairs], [y for _, y in pairs]


def plot_runs(runs, output, smooth=10, title=""):
    """Draw runs ({label: (train records, eval records)}) into output; (title, loss axis label)."""
    try:
        import matplotlib
    except ImportError:
        raise UserError("plot.py needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt
    from matplotlib.ticker import EngFormatter

    has_hellaswag = any(r.get("hellaswag_acc") is not None for _, evals in runs.values() for r in evals)
    fig = plt.figure(figsize=(12, 8), layout="constrained")
    grid = fig.add_gridspec(2, 3 if has_hellaswag else 2, height_ratios=[3, 2])
    ax_iter, ax_tok, ax_lr = fig.add_subplot(grid[0, :]), fig.add_subplot(grid[1, 0]), fig.add_subplot(grid[1, 1])
    ax_hs = fig.add_subplot(grid[1, 2]) if has_hellaswag else None
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    lows, highs, peaks = [], [], []
    for n, (label, (train, evals)) in enumerate(runs.items()):
        style = dict(color=colors[n % len(colors)])
        prefix = f"{label}: " if len(runs) > 1 else ""
        for ax, x_key in ((ax_iter, "iter"), (ax_tok, "tokens")):
            for records, y_key, name in ((train, "loss", "train"), (evals, "val_loss", "val")):
                xs, ys = series(records, x_key, y_key)
                if not xs:
                    continue
                if name == "val":
                    ax.plot(xs, ys, linestyle="--", marker="o", markersize=4, label=prefix + name, **style)
                else:
                    if smooth > 1:
                        ax.plot(xs, ys, alpha=0.2, linewidth=0.8, **style)
                    ax.plot(xs, moving_average(ys, max(1, smooth)), linewidth=1.5, label=prefix + name, **style)
                lows.append(min(ys))
                highs.append(ys[max(1, len(ys) // 20) if len(ys) > 1 else 0])  # past the first steps' steep drop
                peaks.append(max(ys))
        ax_lr.plot(*series(train or evals, "iter", "lr"), label=label, **style)
        for key, line in (("hellaswag_acc", "-"), ("hellaswag_acc_norm", ":")) if ax_hs else ():
            ax_hs.plot(*series(evals, "iter", key), linestyle=line, marker="o", markersize=4,
                       label=prefix + key.removeprefix("hellaswag_"), **style)
    loss_label = "loss"
    if lows:  # frame the interesting part; the first steps' loss can be several times higher
        low, high = min(lows), max(highs)
        margin = 0.05 * (high - low or 1.0)
        for ax in (ax_iter, ax_tok):
            ax.set_ylim(low - margin, high + margin)
        if max(peaks) > high + margin:
            loss_label = f"loss (axis cut at {high + margin:.2f}, peak {max(peaks):.2f})"
    title = title or f"run{'s' if len(runs) > 1 else ''}: {', '.join(runs)}"
    ax_iter.set(xlabel="step", ylabel=loss_label, title=title)
    ax_tok.set(xlabel="tokens seen", ylabel=loss_label)
    ax_tok.xaxis.set_major_formatter(EngFormatter())  # 50k, 1M, ...
    ax_lr.set(xlabel="step", ylabel="learning rate")
    for ax in filter(None, (ax_iter, ax_tok, ax_lr, ax_hs)):
        ax.grid(alpha=0.3)
    for ax in filter(None, (ax_iter, ax_hs)):  # the other panels use the same colours
        ax.legend(fontsize=8)
    if ax_hs:
        ax_hs.set(xlabel="step", ylabel="HellaSwag accuracy")
    atomic_write(output, lambda f: fig.savefig(f, format=os.path.splitext(output)[1][1:].lower(), dpi=100))
    plt.close(fig)
    return ax_iter.get_title(), loss_label


def main(argv):
    # --out_dir may be given several times; the configurator keeps one value per key, so gather them first
    dirs = [a.partition("=")[2] for a in argv if a.startswith("--out_dir=")]
    cfg = load_config(DEFAULTS, [a for a in argv if not a.startswith("--out_dir=")])
    dirs = dirs or [cfg["out_dir"]]
    names = [os.path.basename(os.path.normpath(d)) for d in dirs]
    labels = names if len(set(names)) == len(names) else dirs  # short names where they tell runs apart
    runs = {label: read_log(d) for label, d in zip(labels, dirs)}
    output = cfg["output"] or os.path.join(dirs[0], "loss.png")
    if os.path.splitext(output)[1].lower() not in (".png", ".pdf", ".svg", ".jpg"):
        raise UserError(f"--output={output} must end in .png, .pdf, .svg or .jpg")
    plot_runs(runs, output, cfg["smooth"], cfg["title"])
    print(f"wrote {output}")


if __name__ == "__main__":
    run_main(lambda: main(sys.argv[1:]))
