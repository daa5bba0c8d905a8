"""`python -m cnnbench.report DIR`: one table and a few plots for a run or a sweep.

    python -m cnnbench.train -m model.width_mult=0.25,0.5,1 hydra.sweep.dir=outputs/widths
    python -m cnnbench.report outputs/widths

DIR is any directory holding run directories (those with a summary.json), e.g. a multirun's
`outputs/multirun/<date>/<time>/`. Writes DIR/results.csv, DIR/results.md and DIR/plots/*.png, and
prints the table. Every number is the run's own summary.json (or metrics.csv for the curves). Bench
runs (`cnnbench.bench`, a bench.json each) get their own table: DIR/bench.csv and DIR/bench.md.

The literature's chart (`sweep=zoo`): top-1 against parameters and against FLOPs, one point a run. Runs on
ImageNet also get DIR/published.csv and DIR/published.md, each architecture's top-1 beside the one its
reference weights publish (torchvision's weights metadata, offline), and those points on the charts.
"""

import argparse
import csv
import io
import sys
from pathlib import Path

import matplotlib
from omegaconf import OmegaConf

from cnnbench.cli import run_reporting_errors
from cnnbench.errors import CnnbenchError
from cnnbench.files import read_json, write_file, write_text

matplotlib.use("Agg")  # headless: files, never a window
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FuncFormatter, MaxNLocator  # noqa: E402

COLUMNS = [
    "model",
    "params",
    "gflops",
    "best_val_top1",
    "best_val_top5",
    "final_val_top1",
    "final_val_top5",
    "best_epoch",
    "epochs",
    "wall_time_s",
    "train_img_per_s",
    "val_img_per_s",
    "peak_memory_mb",
    "status",
]
BENCH_COLUMNS = [
    "model",
    "params",
    "gflops",
    "image_size",
    "batch_size",
    "device",
    "precision",
    "train_img_per_s",
    "trainer_img_per_s",
    "trainer_ratio",
    "trainer_tflops",
    "trainer_matmul_fraction",
    "input_img_per_s",
    "input_workers",
    "bottleneck",
    "bottleneck_factor",
    "infer_img_per_s",
    "peak_memory_mb",
    "matmul_tflops",
    "train_matmul_fraction",
    "infer_matmul_fraction",
    "status",
]
# Under results.md: one epoch's rate holds warm-up and the machine's noise, so summary.json's is a median.
THROUGHPUT_NOTE = (
    "train_img_per_s, val_img_per_s: training and validation images/s, the medians over the epochs after the "
    "first (the first alone in a one-epoch run); peak_memory_mb: the most any epoch held (on CUDA torch's "
    "tensors, elsewhere the process's resident peak)"
)
CURVE_METRICS = ["val_top1", "train_loss", "val_loss"]  # metrics.csv's columns the learning curves draw
PUBLISHED_COLUMNS = [
    "model",
    "params",
    "gflops",
    "best_val_top1",
    "reference",
    "reference_weights",
    "published_top1",
    "published_params",
    "published_gflops",
]
PUBLISHED_NOTE = (
    "published_*: the ImageNet-1K val top-1 (one centre crop at the weights' own resolution), "
    "parameters and GFLOPs (2 x torchvision's multiply-adds, as cnnbench counts) of the reference's "
    "torchvision weights (their DEFAULT, named in reference_weights), from torchvision's metadata; "
    "blank where the reference is timm's, whose package carries no accuracies, or there is none"
)


def read_run(run_dir: Path, record: str) -> dict:
    hydra_dir = run_dir / ".hydra"
    overrides = OmegaConf.load(hydra_dir / "overrides.yaml") if (hydra_dir / "overrides.yaml").exists() else []
    model = OmegaConf.load(hydra_dir / "config.yaml").get("model", {}) if (hydra_dir / "config.yaml").exists() else {}
    curve = []
    if (run_dir / "metrics.csv").exists():
        with open(run_dir / "metrics.csv") as f:
            curve = [{"epoch": int(r["epoch"]), **{k: float(r[k]) for k in CURVE_METRICS}} for r in csv.DictReader(f)]
    return {
        "dir": run_dir,
        "summary": read_json(run_dir / record),
        "curve": curve,
        "overrides": dict(o.split("=", 1) for o in overrides if "=" in o and not o.startswith(("hydra.", "run_dir"))),
        "width_mult": model.get("width_mult"),
        "depth_mult": model.get("depth_mult"),
        "source": model.get("source", "cnnbench"),
    }


def varying_overrides(runs: list[dict]) -> list[str]:
    """The override keys whose value is not the same in every run: what tells the runs apart."""
    keys = sorted({k for r in runs for k in r["overrides"]})
    return [k for k in keys if len({r["overrides"].get(k) for r in runs}) > 1]


def table(runs: list[dict], varying: list[str], columns: list[str]) -> tuple[list[str], list[list]]:
    varying = [k for k in varying if k not in columns]  # model=a,b: the model column says it already
    header = [*varying, *columns]
    rows = [[*(r["overrides"].get(k, "") for k in varying), *(r["summary"].get(c) for c in columns)] for r in runs]
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
    """A point's name: its swept values (`width_mult=0.5`); a swept model by its name alone."""
    return (
        ", ".join(
            run["overrides"][k] if k == "model" else f"{k.split('.')[-1]}={run['overrides'][k]}"
            for k in varying
            if k in run["overrides"]
        )
        or run["summary"]["model"]
    )


def subject(runs: list[dict]) -> str:
    """What the runs trained, for every plot's title: `resnet18 on cifar10`; several models or data sets are
    listed, more than three are "various"."""

    def names(key: str) -> str:
        values = sorted({str(r["summary"].get(key)) for r in runs})
        return ", ".join(values) if len(values) <= 3 else f"various ({len(values)})"

    return f"{names('model')} on {names('data')}"


def count(n: float) -> str:
    return f"{n / 1e6:.3g}M" if n >= 1e6 else f"{n / 1e3:.3g}k" if n >= 1e3 else f"{n:.0f}"


def annotate(ax, text: str, point: tuple[float, float], above: float) -> None:
    """A point's label, centred `above` points over it."""
    ax.annotate(text, point, xytext=(0, above), textcoords="offset points", fontsize=7, ha="center", va="bottom")


def save(fig, path: Path):
    """Writes the figure and returns it (closed: no window, its axes still there to be read)."""
    fig.tight_layout()
    write_file(path, lambda f: fig.savefig(f, dpi=120, format=path.suffix[1:]))
    plt.close(fig)
    return fig


def plot_accuracy_vs_flops(runs, varying, path: Path):
    """The chart of Bianco et al., "Benchmark Analysis of Representative Deep Neural Network Architectures"
    (2018): top-1 against GFLOPs, marker area proportional to parameters, with a key of areas."""
    fig, ax = plt.subplots(figsize=(7, 5))
    biggest = max(r["summary"]["params"] for r in runs)

    def area(params: float) -> float:
        return 40 + 960 * params / biggest

    for r in runs:
        s = r["summary"]
        ax.scatter(s["gflops"], s["best_val_top1"], s=area(s["params"]), alpha=0.5)
        annotate(ax, label(r, varying), (s["gflops"], s["best_val_top1"]), above=9)
    # The key: the smallest, largest and (geometric) middle parameter count, rounded to two digits.
    params = [r["summary"]["params"] for r in runs]
    low, high = min(params), max(params)
    keys = sorted({float(f"{p:.2g}") for p in (low, (low * high) ** 0.5, high)})
    handles = [ax.scatter([], [], s=area(p), color="gray", alpha=0.4) for p in keys]
    # Spacing in font sizes, wide enough for the largest marker (about 36 points across).
    ax.legend(
        handles,
        [count(p) for p in keys],
        title="parameters",
        fontsize=8,
        title_fontsize=8,
        labelspacing=3,
        borderpad=1.5,
        handletextpad=2,
    )
    ax.margins(x=0.15, y=0.15)  # room for the labels of the outermost points
    log_scale_if_spread(ax, [r["summary"]["gflops"] for r in runs])
    ax.set(
        xlabel="GFLOPs per image (forward)", ylabel="best val top-1 (%)", title=f"Accuracy vs compute: {subject(runs)}"
    )
    ax.grid(alpha=0.3)
    return save(fig, path)


def log_scale_if_spread(ax, values: list[float]) -> None:
    """A logarithmic x axis where the points span more than 30x (a zoo: LeNet-5's 62k parameters to VGG's
    138M), where a linear one would crowd all but the largest into its left edge."""
    if min(values) > 0 and max(values) > 30 * min(values):
        ax.set_xscale("log")


def plot_accuracy_vs_params(runs, varying, path: Path, published: list[dict] | None = None):
    """Top-1 against parameters: the chart of the literature's table (AlexNet's 61M parameters at 57% ImageNet
    top-1 to EfficientNet-B0's 5M at 78%). With `published` rows (runs on ImageNet), each architecture's
    published point (hollow) beside the run's, joined by a dotted line."""
    fig, ax = plt.subplots(figsize=(7, 5))
    for r in runs:
        s = r["summary"]
        ax.scatter(s["params"], s["best_val_top1"], s=60, alpha=0.6)
        annotate(ax, label(r, varying), (s["params"], s["best_val_top1"]), above=7)
    drawn = [row for row in published or [] if row["published_top1"] is not None]
    for row in drawn:
        ax.plot(
            [row["params"], row["published_params"]],
            [row["best_val_top1"], row["published_top1"]],
            ":",
            color="gray",
            linewidth=0.8,
        )
        ax.plot(
            row["published_params"],
            row["published_top1"],
            "o",
            markersize=8,
            markerfacecolor="none",
            markeredgecolor="black",
        )
    if drawn:
        ax.legend(
            [
                Line2D([], [], marker="o", linestyle="", color="gray", alpha=0.6),
                Line2D([], [], marker="o", linestyle="", markerfacecolor="none", markeredgecolor="black"),
            ],
            ["these runs", "published (torchvision weights)"],
            fontsize=8,
        )
    ax.margins(x=0.15, y=0.15)
    log_scale_if_spread(ax, [r["summary"]["params"] for r in runs] + [row["published_params"] for row in drawn])
    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _: count(value)))
    ax.set(xlabel="parameters", ylabel="best val top-1 (%)", title=f"Accuracy vs parameters: {subject(runs)}")
    ax.grid(alpha=0.3)
    return save(fig, path)


def reference_of(model: str, source: str) -> str | None:
    """The library model a run's architecture mirrors ("torchvision:resnet50"): a zoo entry's `reference`, or
    the model itself where it came from timm or torchvision; None for a model of the user's own."""
    if source != "cnnbench":
        return f"{source}:{model}"
    from cnnbench.models.registry import get_entry  # torch: only for a report on ImageNet runs

    try:
        return get_entry(model).reference
    except CnnbenchError:
        return None


def published_row(run: dict) -> dict:
    """A run's architecture, its top-1, and what its reference's torchvision weights publish on ImageNet-1K
    (torchvision's metadata, in the package: nothing is fetched)."""
    import torchvision

    s = run["summary"]
    row = {key: s.get(key) for key in ("model", "params", "gflops", "best_val_top1")}
    row.update(
        reference=reference_of(s["model"], run["source"]),
        reference_weights=None,
        published_top1=None,
        published_params=None,
        published_gflops=None,
    )
    library, _, name = (row["reference"] or "").partition(":")
    if library == "torchvision":
        try:
            weights = torchvision.models.get_model_weights(name).DEFAULT
        except ValueError:  # a torchvision model without weights
            return row
        meta = weights.meta
        row.update(
            reference_weights=str(weights),
            published_top1=meta["_metrics"]["ImageNet-1K"]["acc@1"],
            published_params=meta["num_params"],
            published_gflops=2 * meta["_ops"],
        )
    return row


def plot_against_multiplier(runs, key: str, other: str, path: Path):
    """Top-1 against width_mult or depth_mult, one line per model and value of the other multiplier (a
    depth x width grid draws one line per depth); None when the sweep does not vary `key`."""
    if len({r[key] for r in runs}) < 2:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    several = len({r[other] for r in runs}) > 1
    for model, other_value in sorted({(r["summary"]["model"], r[other]) for r in runs}, key=str):
        points = sorted(
            (r[key], r["summary"]["best_val_top1"])
            for r in runs
            if (r["summary"]["model"], r[other]) == (model, other_value) and r[key] is not None
        )
        ax.plot(*zip(*points), marker="o", label=f"{model}, {other}={other_value}" if several else model)
    ax.set(xlabel=key, ylabel="best val top-1 (%)", title=f"Accuracy vs {key}: {subject(runs)}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save(fig, path)


def plot_learning_curves(runs, varying, path: Path):
    """Validation top-1 per epoch, and beside it the training (solid) and validation (dashed) loss in the
    same run's colour: where a run overfits, its two losses part."""
    fig, (top1, loss) = plt.subplots(1, 2, figsize=(12, 5))
    for r in runs:
        if r["curve"]:
            epochs = [row["epoch"] for row in r["curve"]]
            [line] = top1.plot(epochs, [row["val_top1"] for row in r["curve"]], marker=".", label=label(r, varying))
            loss.plot(epochs, [row["train_loss"] for row in r["curve"]], marker=".", color=line.get_color())
            loss.plot(
                epochs, [row["val_loss"] for row in r["curve"]], marker=".", color=line.get_color(), linestyle="--"
            )
    top1.set(xlabel="epoch", ylabel="val top-1 (%)", title="Validation top-1")
    top1.legend(fontsize=8)
    loss.set(xlabel="epoch", ylabel="loss", title="Loss")
    loss.legend(
        [Line2D([], [], color="black"), Line2D([], [], color="black", linestyle="--")], ["train", "val"], fontsize=8
    )
    for ax in (top1, loss):
        # Epochs are whole: no 0.5 ticks, and a one-epoch run gets its one tick.
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
        ax.grid(alpha=0.3)
    fig.suptitle(f"Learning curves: {subject(runs)}")
    return save(fig, path)


def write_tables(
    root: Path, name: str, runs: list[dict], varying: list[str], columns: list[str], note: str = ""
) -> str:
    """DIR/<name>.csv (with each run's directory, for scripts) and DIR/<name>.md, the note under its table;
    returns the markdown."""
    header, rows = table(runs, varying, columns)
    lines = io.StringIO()
    csv.writer(lines).writerows(
        [["run", *header], *([str(r["dir"].relative_to(root)), *row] for r, row in zip(runs, rows))]
    )
    write_text(root / f"{name}.csv", lines.getvalue())
    text = markdown(header, rows) + (f"\n{note}\n" if note else "")
    write_text(root / f"{name}.md", text)
    return text


def result_columns(runs: list[dict]) -> list[str]:
    """results.csv's columns: COLUMNS, and where any run had a budget, the budget and what each run trained."""
    budgets = [c for c in ("budget_tflop", "budget_images") if any(r["summary"].get(c) is not None for r in runs)]
    return COLUMNS + (budgets + ["trained_images", "trained_tflop"] if budgets else [])


def report(root: Path) -> None:
    runs = [read_run(p.parent, "summary.json") for p in sorted(root.rglob("summary.json"))]
    benches = [read_run(p.parent, "bench.json") for p in sorted(root.rglob("bench.json"))]
    if not runs and not benches:
        raise CnnbenchError(f"{root}: no run directories (with a summary.json or bench.json) under it")
    if runs:
        varying = varying_overrides(runs)
        print(write_tables(root, "results", runs, varying, result_columns(runs), THROUGHPUT_NOTE), end="")
        plots = root / "plots"
        plots.mkdir(exist_ok=True)
        finished = [r for r in runs if r["summary"].get("best_val_top1") is not None]
        on_imagenet = [r for r in finished if r["summary"].get("data") == "imagenet"]
        published = [published_row(r) for r in on_imagenet]
        if published:
            beside = [{**r, "overrides": {}, "summary": row} for r, row in zip(on_imagenet, published)]
            print(write_tables(root, "published", beside, [], PUBLISHED_COLUMNS, PUBLISHED_NOTE), end="")
        if finished:
            plot_accuracy_vs_flops(finished, varying, plots / "top1_vs_gflops.png")
            plot_accuracy_vs_params(finished, varying, plots / "top1_vs_params.png", published)
            plot_against_multiplier(finished, "width_mult", "depth_mult", plots / "top1_vs_width.png")
            plot_against_multiplier(finished, "depth_mult", "width_mult", plots / "top1_vs_depth.png")
            plot_learning_curves(finished, varying, plots / "learning_curves.png")
        print(f"{len(runs)} runs; results.csv, results.md and plots/ written to {root}")
    if benches:
        measured = [c for c in BENCH_COLUMNS if any(c in b["summary"] for b in benches)]  # bench.trainer, bench.input
        print(write_tables(root, "bench", benches, varying_overrides(benches), measured), end="")
        print(f"{len(benches)} benches; bench.csv and bench.md written to {root}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m cnnbench.report", description=__doc__.split("\n\n")[0])
    parser.add_argument("dir", type=Path, help="a run directory or a directory of runs (a sweep)")
    args = parser.parse_args(argv)
    if not args.dir.is_dir():
        parser.exit(2, f"cnnbench: error: {args.dir} is not a directory\n")
    run_reporting_errors(report, args.dir)


if __name__ == "__main__":
    sys.exit(main())
