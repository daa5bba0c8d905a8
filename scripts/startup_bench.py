"""How long the commands take to answer, as ratios to `python -c "import torch"` measured beside them.

    python scripts/startup_bench.py [--repeats 5]

Each command runs `repeats` times, interleaved with the others so that a machine's drift hits all alike;
the medians are compared. `--help`, `--cfg job` and shell completion import no torch (target: at most
0.75 of import torch); a one-step training run's whole command (start-up, the first step, one
validation batch and the checkpoint: an upper bound of the time to the first step) targets at most 2x.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

TRAIN = [sys.executable, "-m", "cnnbench.train"]


def commands(run_dir: str) -> dict[str, tuple[list[str], dict]]:
    line = "cnnbench-train model=res"  # Hydra completes console scripts (and python script.py), not python -m
    return {
        "import torch": ([sys.executable, "-c", "import torch"], {}),
        "--help": (TRAIN + ["--help"], {}),
        "--cfg job": (TRAIN + ["--cfg", "job"], {}),
        "shell completion": (TRAIN + ["-sc", "query=bash"], {"COMP_LINE": line, "COMP_POINT": str(len(line))}),
        "first step": (TRAIN + ["data=synthetic", "data.image_size=32", "model=lenet5", "hardware=cpu",
                                "train.epochs=1", "train.limit_train_batches=1", "train.limit_val_batches=1",
                                f"hydra.run.dir={run_dir}/run", "resume=auto"], {}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (cmd, env) in commands(tmp).items():
                if name == "first step":
                    subprocess.run(["rm", "-rf", f"{tmp}/run"], check=True)
                started = time.perf_counter()
                subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True)
                times.setdefault(name, []).append(time.perf_counter() - started)
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["import torch"]
    targets = {"--help": 0.75, "--cfg job": 0.75, "shell completion": 0.75, "first step": 2.0}
    print(f"{'command':<18} {'median s':>9} {'/ import torch':>15} {'target':>7}")
    for name, median in medians.items():
        target = targets.get(name)
        print(f"{name:<18} {median:9.2f} {median / base:15.2f} {'' if target is None else f'<= {target}':>7}"
              + ("" if target is None else ("  ok" if median / base <= target else "  MISSED")))


if __name__ == "__main__":
    main()
