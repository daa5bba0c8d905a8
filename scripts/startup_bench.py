"""How long the commands take to answer, as ratios to `python -c "import torch"` measured beside them.

    python scripts/startup_bench.py [--repeats 5]

Each command runs `repeats` times, interleaved with the others so that a machine's drift hits all alike;
the medians are compared. `--help`, `--cfg job` and shell completion import no torch (target: at most
0.75 of import torch). A one-step training run is timed twice: to the end of its first training step (the
trainer's own `time_to_first_step_s` in summary.json, from the process's start; target: at most 2x) and
as the whole command (one validation batch, the checkpoint and the summary included).
"""

import argparse
import json
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
        # The floor under any training run: importing timm imports torch._dynamo twice over, through
        # torchvision.ops (its roi_align) and through the torch.compiler.disable decorators of timm's NaFlexViT.
        "import torch._dynamo": ([sys.executable, "-c", "import torch._dynamo"], {}),
        "import timm": ([sys.executable, "-c", "import timm"], {}),
        "--help": (TRAIN + ["--help"], {}),
        "--cfg job": (TRAIN + ["--cfg", "job"], {}),
        "shell completion": (TRAIN + ["-sc", "query=bash"], {"COMP_LINE": line, "COMP_POINT": str(len(line))}),
        "one-step run": (
            TRAIN
            + [
                "data=synthetic",
                "data.image_size=32",
                "model=lenet5",
                "hardware=cpu",
                "train.epochs=1",
                "train.limit_train_batches=1",
                "train.limit_val_batches=1",
                f"hydra.run.dir={run_dir}/run",
                "resume=auto",
            ],
            {},
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    times: dict[str, list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for name, (cmd, env) in commands(tmp).items():
                if name == "one-step run":
                    subprocess.run(["rm", "-rf", f"{tmp}/run"], check=True)
                started = time.perf_counter()
                subprocess.run(cmd, env={**os.environ, **env}, check=True, capture_output=True)
                times.setdefault(name, []).append(time.perf_counter() - started)
                if name == "one-step run":
                    with open(f"{tmp}/run/summary.json") as f:
                        times.setdefault("to the first step", []).append(json.load(f)["time_to_first_step_s"])
    medians = {name: statistics.median(t) for name, t in times.items()}
    base = medians["import torch"]
    targets = {"--help": 0.75, "--cfg job": 0.75, "shell completion": 0.75, "to the first step": 2.0}
    print(f"{'command':<20} {'median s':>9} {'/ import torch':>15} {'target':>7}")
    for name, median in medians.items():
        target = targets.get(name)
        print(
            f"{name:<20} {median:9.2f} {median / base:15.2f} {'' if target is None else f'<= {target}':>7}"
            + ("" if target is None else ("  ok" if median / base <= target else "  MISSED"))
        )


if __name__ == "__main__":
    main()
