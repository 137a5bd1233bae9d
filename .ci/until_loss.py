"""Run a training command until an evaluation reaches a val loss (or a time cap runs out), and say when.

    python .ci/until_loss.py --target=1.48 --cap=180 --json=r.json --log=r.log -- python train.py ...

Each output line is kept with its time since the process started. The lines both our train.py and
nanoGPT's print are read: `step N: train loss X, val loss Y` and `iter N: loss X, time Tms, ...`.
When a val loss <= target appears, or at the cap, the command's process group gets SIGTERM (our
train.py saves and exits; nanoGPT's exits), then SIGKILL after 30 s. Writes a JSON summary.
"""
import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time

EVAL = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")
ITER = re.compile(r"iter (\d+): loss ([\d.]+), time ([\d.]+)ms")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--target", type=float, required=True, help="stop at the first val loss <= this")
    p.add_argument("--cap", type=float, required=True, help="seconds after which the run is stopped anyway")
    p.add_argument("--json", required=True, help="summary file")
    p.add_argument("--log", required=True, help="every output line, with seconds since the start")
    p.add_argument("--cwd", default=".")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    a = p.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    if not command:
        p.error("give the command after --")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    t0 = time.time()
    proc = subprocess.Popen(command, cwd=a.cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env, start_new_session=True, errors="replace")
    evals, iter_ms, reached, stopped_by = [], [], None, None
    with open(a.log, "w") as log:
        log.write(f"# cwd: {os.path.abspath(a.cwd)}\n# command: {' '.join(command)}\n")
        for line in proc.stdout:
            t = time.time() - t0
            log.write(f"{t:9.2f} {line}")
            log.flush()
            sys.stdout.write(line)
            if m := ITER.search(line):
                iter_ms.append(float(m.group(3)))
            if m := EVAL.search(line):
                evals.append({"t": round(t, 2), "iter": int(m.group(1)), "train": float(m.group(2)),
                              "val": float(m.group(3))})
                if reached is None and evals[-1]["val"] <= a.target:
                    reached, stopped_by = evals[-1], "target"
            if reached is None and t > a.cap:
                stopped_by = "cap"
            if stopped_by:
                break
        if stopped_by and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
        for line in proc.stdout:  # the rest, e.g. our train.py's "stopped by SIGTERM: saved ..."
            log.write(f"{time.time() - t0:9.2f} {line}")
        proc.wait()
    steady = iter_ms[2:] or iter_ms  # the first lines include compiling and warm-up
    summary = {"command": command, "cwd": a.cwd, "target_val_loss": a.target, "cap_s": a.cap,
               "reached": reached is not None, "seconds_to_target": reached and reached["t"],
               "iter_at_target": reached and reached["iter"], "val_at_target": reached and reached["val"],
               "stopped_by": stopped_by or "exit", "exit_code": proc.returncode, "evals": evals,
               "median_ms_per_iter": statistics.median(steady) if steady else None,
               "wall_s": round(time.time() - t0, 2)}
    with open(a.json, "w") as f:
        json.dump(summary, f, indent=1)
    print(json.dumps({k: summary[k] for k in ("reached", "seconds_to_target", "iter_at_target", "val_at_target",
                                               "median_ms_per_iter", "stopped_by", "exit_code")}))
    if stopped_by is None and proc.returncode:
        sys.exit(f"the command failed with exit status {proc.returncode}; see {a.log}")


if __name__ == "__main__":
    main()
