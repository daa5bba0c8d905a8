"""`python -m cnnbench.report DIR`: one table and a few plots for a run or a sweep.

DIR is any directory holding run directories (those with a summary.json), e.g. a multirun's
`outputs/multirun/<date>/<time>/`. Writes DIR/results.csv, DIR/results.md and DIR/plots/*.png, and
prints the table. Every number is the run's own summary.json (or metrics.csv for the curves).
"""
import argparse
import csv
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: files, never a window
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

COLUMNS = ["model", "params", "gflops", "best_val_top1", "best_val_top5", "final_val_top1", "final_val_top5",
           "best_epoch", "epochs", "wall_time_s", "train_img_per_s", "status"]


def find_runs(root: Path) -> list[Path]:
    return sorted(p.parent for p in root.rglob("summary.json"))


def read_run(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    hydra_dir = run_dir / ".hydra"
    overrides = yaml.safe_load((hydra_dir / "overrides.yaml").read_text()) if (hydra_dir / "overrides.yaml").exists() else []
    config = yaml.safe_load((hydra_dir / "config.yaml").read_text()) if (hydra_dir / "config.yaml").exists() else {}
    curve = []
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv") as f:
            curve = [(int(r["epoch"]), float(r["val_top1"])) for r in csv.DictReader(f)]
    model = config.get("model", {})
    return {"dir": run_dir, "summary": summary, "curve": curve,
            "overrides": dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("hydra.", "run_dir"))),
            "width_mult": model.get("width_mult"), "depth_mult": model.get("depth_mult")}


def varying_overrides(runs: list[dict]) -> list[str]:
    """The override keys whose value is not the same in every run: what tells the runs apart."""
    keys = sorted({k for r in runs for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]


def table(runs: list[dict], varying: list[str]) -> tuple[list[str], list[list]]:
    header = ["run", *varying, *COLUMNS]
    rows = [[r["dir"].name, *(r["overrides"].get(k, "") for k in varying), *(r["summary"].get(c) for c in COLUMNS)]
            for r in runs]
    return header, rows


def fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 100 else f"{value:.1f}"
    if isinstance(value, int) and value >= 10_000:
        return f"{value:,}"
    return "" if value is None else str(value)


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]) + "\n"


def label(run: dict, varying: list[str]) -> str:
    return ", ".join(f"{k.split('.')[-1]}={run['overrides'][k]}" for k in varying if k in run["overrides"]) \
        or run["summary"]["model"]


def plot_accuracy_vs_flops(runs, varying, path: Path):
    """Seed 000's chart: top-1 against GFLOPs, marker area proportional to parameters."""
    fig, ax = plt.subplots(figsize=(7, 5))
    biggest = max(r["summary"]["params"] for r in runs)
    for r in runs:
        s = r["summary"]
        ax.scatter(s["gflops"], s["best_val_top1"], s=40 + 960 * s["params"] / biggest, alpha=0.5)
        ax.annotate(label(r, varying), (s["gflops"], s["best_val_top1"]), fontsize=8, ha="center", va="bottom")
    ax.set(xlabel="GFLOPs per image (forward)", ylabel="best val top-1 (%)",
           title="Accuracy vs compute (marker area = parameters)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_against_multiplier(runs, key: str, path: Path) -> bool:
    """Top-1 against width_mult or depth_mult, one line per model; False when the sweep does not vary it."""
    if len({r[key] for r in runs}) < 2:
        return False
    fig, ax = plt.subplots(figsize=(7, 5))
    for model in sorted({r["summary"]["model"] for r in runs}):
        points = sorted((r[key], r["summary"]["best_val_top1"]) for r in runs
                        if r["summary"]["model"] == model and r[key] is not None)
        ax.plot(*zip(*points), marker="o", label=model)
    ax.set(xlabel=key, ylabel="best val top-1 (%)", title=f"Accuracy vs {key}")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_learning_curves(runs, varying, path: Path):
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in runs:
        if r["curve"]:
            ax.plot(*zip(*r["curve"]), marker=".", label=label(r, varying))
    ax.set(xlabel="epoch", ylabel="val top-1 (%)", title="Validation top-1 per epoch")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(root: Path) -> list[list]:
    runs = [read_run(d) for d in find_runs(root)]
    if not runs:
        raise SystemExit(f"cnnbench: error: no run directories (with summary.json) under {root}")
    varying = varying_overrides(runs)
    header, rows = table(runs, varying)
    with open(root / "results.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    text = markdown(header, rows)
    (root / "results.md").write_text(text)
    plots = root / "plots"
    plots.mkdir(exist_ok=True)
    finished = [r for r in runs if r["summary"].get("best_val_top1") is not None]
    if finished:
        plot_accuracy_vs_flops(finished, varying, plots / "top1_vs_gflops.png")
        plot_against_multiplier(finished, "width_mult", plots / "top1_vs_width.png")
        plot_against_multiplier(finished, "depth_mult", plots / "top1_vs_depth.png")
        plot_learning_curves(finished, varying, plots / "learning_curves.png")
    print(text, end="")
    print(f"{len(runs)} runs; results.csv, results.md and plots/ written to {root}")
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnnbench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a run directory or a directory of runs (a sweep)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.exit(2, f"cnnbench: error: {args.dir} is not a directory\n")
    report(args.dir)


if __name__ == "__main__":
    sys.exit(main())
