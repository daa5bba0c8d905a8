"""The GPU acceptance (issue 18, part 2): every CUDA path of cnnbench run once and measured, as a table.

    python scripts/gpu_acceptance.py OUTDIR            # on a GPU: at most 8 minutes on one H100/H200
    DEVICE=cpu python scripts/gpu_acceptance.py OUTDIR  # tiny shapes, the rows that need CUDA skipped
    ROWS=amp_fp16,host_syncs python scripts/gpu_acceptance.py OUTDIR   # some rows only
    FMNIST_ROOT=DIR ...                                  # Fashion-MNIST's IDX files, where not in Debian's place

Each row runs cnnbench as a user does (`python -m cnnbench.train`, `.bench`, `.predict`, `torchrun`) in
OUTDIR/runs/<row>, reads what the run left (summary.json, metrics.csv, bench.json) and records its values,
its target and which items of issue 20 (the CUDA paths) it covers. Writes OUTDIR/gpu_acceptance.json and
OUTDIR/gpu_acceptance.md; exits 1 if a row failed. A few checks run inside one process (batch equality,
host syncs, NCCL): this script runs them as its own subcommands.
"""

import argparse
import json
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = "skipped: no CUDA"
ROWS = []


def row(name: str, items: str, what: str, needs_cuda: bool = False):
    def register(fn):
        ROWS.append((name, items, what, needs_cuda, fn))
        return fn

    return register


class Check(Exception):
    """A row ran but missed its target: the row fails with this line."""


class Acceptance:
    def __init__(self, out: Path, device: str):
        self.out, self.device, self.cuda = out, device, device == "cuda"
        self.runs = out / "runs"
        self.env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}

    def run(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=self.env, timeout=timeout)
        if result.returncode != 0:
            lines = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()
            raise Check(f"`{' '.join(args[:4])} ...` exited {result.returncode}: {lines[-1]}")
        return result

    def cnnbench(self, module: str, *overrides: str, timeout: float = 300) -> subprocess.CompletedProcess:
        return self.run(sys.executable, "-m", f"cnnbench.{module}", *overrides, timeout=timeout)

    def myself(self, *args: str, timeout: float = 300) -> dict:
        """One of this script's in-process checks, in a process of its own; its JSON result."""
        result = self.run(sys.executable, __file__, *args, timeout=timeout)
        return json.loads(result.stdout.strip().splitlines()[-1])

    def train(self, name: str, *overrides: str) -> tuple[dict, list[dict]]:
        """A training run's summary.json and metrics.csv rows."""
        run_dir = self.runs / name
        self.cnnbench("train", *overrides, f"hydra.run.dir={run_dir}")
        return read_run(run_dir)

    @property
    def hardware(self) -> list[str]:
        return [f"hardware.device={self.device}", "hardware.compile=false"]

    def small_run(self) -> list[str]:
        """A run that learns in seconds: synthetic images, a small net."""
        if self.cuda:
            return [
                "data=synthetic",
                "data.image_size=32",
                "data.train_size=8192",
                "data.val_size=1024",
                "data.batch_size=256",
                "model=resnet18",
                "model.width_mult=0.5",
                "train.epochs=3",
                *self.hardware,
            ]
        return [
            "data=synthetic",
            "data.image_size=28",
            "data.channels=1",
            "data.train_size=128",
            "data.val_size=32",
            "data.batch_size=32",
            "model=lenet5",
            "model.variant=modern",
            "train.epochs=2",
            *self.hardware,
        ]

    def bench_shape(self) -> list[str]:
        if self.cuda:
            return ["bench.warmup_steps=10", "bench.windows=3", "bench.steps_per_window=10"]
        return [
            "model=lenet5",
            "data=synthetic",
            "data.image_size=28",
            "data.channels=1",
            "data.batch_size=16",
            "bench.warmup_steps=1",
            "bench.windows=2",
            "bench.steps_per_window=2",
            "bench.matmul_size=256",
        ]


def read_run(run_dir: Path) -> tuple[dict, list[dict]]:
    import csv

    summary = json.loads((run_dir / "summary.json").read_text())
    with open(run_dir / "metrics.csv") as f:
        return summary, [r for r in csv.DictReader(f) if r.get("train_loss")]


def learns(a: Acceptance, precision: str) -> dict:
    summary, epochs = a.train(
        f"amp_{precision}", *a.small_run(), f"hardware.precision={precision}", "train.on_nonfinite=skip"
    )
    losses = [float(e["train_loss"]) for e in epochs]
    values = {
        "train_loss_first": round(losses[0], 4),
        "train_loss_last": round(losses[-1], 4),
        "final_val_top1": summary["final_val_top1"],
        "train_img_per_s": summary["train_img_per_s"],
        "nonfinite_skipped_steps": summary["nonfinite_skipped_steps"],
        "scaler_skipped_steps": summary["scaler_skipped_steps"],
    }
    if not losses[-1] < losses[0]:
        raise Check(f"the loss did not fall: {losses}")
    if summary["nonfinite_skipped_steps"] or summary["scaler_skipped_steps"] > 1:
        raise Check(f"skipped steps beyond the first: {values}")
    return values


@row("amp_bf16", "10", "bf16 autocast trains: the loss falls, no step skipped")
def amp_bf16(a: Acceptance) -> dict:
    return learns(a, "bf16")


@row("amp_fp16", "5, 13", "fp16 autocast with the GradScaler trains: the loss falls, at most the first step skipped")
def amp_fp16(a: Acceptance) -> dict:
    return learns(a, "fp16")


@row(
    "layout_and_compile",
    "8, 12",
    "bench -m over channels_last x compile in one process: each job its own "
    "cudnn.benchmark and Dynamo caches (on CPU compile=false only: compiling costs a minute there)",
)
def layout_and_compile(a: Acceptance) -> dict:
    sweep = a.runs / "layout_and_compile"
    model = (
        [
            "model=resnet18",
            "data=synthetic",
            "data.num_classes=10",
            "data.image_size=128",
            "data.batch_size=128",
            "hardware.precision=bf16",
        ]
        if a.cuda
        else []
    )
    a.cnnbench(
        "bench",
        "-m",
        *a.bench_shape(),
        *model,
        f"hardware.device={a.device}",
        "hardware.channels_last=true,false",
        f"hardware.compile={'true,false' if a.cuda else 'false'}",
        f"hydra.sweep.dir={sweep}",
        timeout=420,
    )
    values = {}
    for record in sorted(sweep.glob("*/bench.json")):
        overrides = dict(
            o.split("=", 1)
            for o in (record.parent / ".hydra" / "overrides.yaml").read_text().replace("- ", "").split()
            if "=" in o
        )
        key = f"cl={overrides['hardware.channels_last']},compile={overrides['hardware.compile']}"
        bench = json.loads(record.read_text())
        values[key] = f"train {bench['train_img_per_s']} / infer {bench['infer_img_per_s']} img/s"
    if len(values) != (4 if a.cuda else 2):
        raise Check(f"expected every combination's bench.json, got {sorted(values)}")
    return values


@row(
    "resnet50_trainer",
    "8, 9, 12, 15",
    "ResNet-50 at 224, bf16, batch 256: the trainer's img/s, its fraction "
    "of the matmul peak (target >= 0.35) and of the bare step (target >= 0.97); on CPU lenet5 at 28 px",
)
def resnet50_trainer(a: Acceptance) -> dict:
    model = (
        ["model=resnet50", "data=imagenet", "data.batch_size=256", "hardware=gpu"]
        if a.cuda
        else [f"hardware.device={a.device}", "hardware.precision=fp32"]
    )
    run_dir = a.runs / "resnet50_trainer"
    a.cnnbench(
        "bench",
        *model,
        *a.bench_shape(),
        "bench.trainer=true",
        "bench.trainer_rounds=1",
        f"hydra.run.dir={run_dir}",
        timeout=420,
    )
    bench = json.loads((run_dir / "bench.json").read_text())
    values = {
        k: bench[k]
        for k in (
            "model",
            "precision",
            "train_img_per_s",
            "trainer_img_per_s",
            "trainer_ratio",
            "matmul_tflops",
            "trainer_tflops",
            "trainer_matmul_fraction",
            "peak_memory_mb",
        )
    }
    if a.cuda and (bench["trainer_matmul_fraction"] < 0.35 or bench["trainer_ratio"] < 0.97):
        raise Check(
            f"below target: trainer_matmul_fraction {bench['trainer_matmul_fraction']} (>= 0.35), "
            f"trainer_ratio {bench['trainer_ratio']} (>= 0.97)"
        )
    return values


# Host syncs a step: none where the fused optimizer decides the non-finite flag on the device; in fp16 the
# flag and the GradScaler's scale, read every update (engine/nonfinite.py).
SYNCS_PER_STEP = {"bf16": 0, "fp16": 2}


@row(
    "host_syncs",
    "13",
    "host syncs per optimizer step, counted by torch.cuda.set_sync_debug_mode('warn'), "
    "with train.on_nonfinite=skip: target 0 in bf16 (the fused SGD skips a non-finite update on the device), "
    "at most 2 in fp16 (the non-finite flag and the GradScaler's scale)",
    needs_cuda=True,
)
def host_syncs(a: Acceptance) -> dict:
    values, over = {}, []
    for precision, target in SYNCS_PER_STEP.items():
        counted = a.myself(
            "--count-syncs",
            str(a.runs / f"host_syncs_{precision}"),
            *a.small_run(),
            f"hardware.precision={precision}",
            "train.epochs=1",
            "train.on_nonfinite=skip",
        )
        values[precision] = (
            f"{counted['syncs_per_step']:.2f} a step ({counted['syncs']} syncs in the "
            f"{counted['steps']} steps between two runs" + (f", at {counted['sites']})" if counted["sites"] else ")")
        )
        if counted["syncs_per_step"] > target:
            over.append(f"{precision}: {values[precision]}, target <= {target}")
    if over:
        raise Check("; ".join(over))
    return values


def jpeg_tree(a: Acceptance) -> Path:
    root = a.runs / "jpegs"
    if not (root / "train").is_dir():
        a.run(
            sys.executable,
            str(ROOT / "scripts" / "jpeg_tree.py"),
            str(root),
            "--images",
            "96" if a.cuda else "32",
            "--classes",
            "4",
            "--size",
            "160x120",
        )
    return root


@row(
    "decode_on_device",
    "2, 13",
    "data.decode_device (nvJPEG on a GPU) against PIL in the workers, "
    "imagenet crops and flips plus AlexNet lighting: the same labels, pixels within JPEG decoders' rounding",
)
def decode_on_device(a: Acceptance) -> dict:
    compared = a.myself("--compare-batches", str(jpeg_tree(a)), a.device, f"data.decode_device={a.device}")
    if not compared["labels_equal"] or compared["mean_abs_difference"] > 1:
        raise Check(f"batches differ: {compared}")
    return compared


@row(
    "cuda_prefetcher",
    "-",
    "the CUDA prefetcher (pinned memory, side stream) against the CPU loader: bit-identical batches",
    needs_cuda=True,
)
def cuda_prefetcher(a: Acceptance) -> dict:
    compared = a.myself("--compare-batches", str(jpeg_tree(a)), "cuda")
    if not compared["labels_equal"] or compared["max_abs_difference"] != 0:
        raise Check(f"batches differ: {compared}")
    return compared


@row(
    "deterministic_resume",
    "3, 4, 7, 13",
    "hardware.deterministic=true on CUDA (vgg11 at 32 px: the 1x1 -> 7x7 "
    "pool, dropout; fused SGD, the non-finite flag on the device): stopped after epoch 1 and resumed, "
    "bit-identical to a run never stopped",
    needs_cuda=True,
)
def deterministic_resume(a: Acceptance) -> dict:
    import torch

    run = [
        "data=synthetic",
        "data.image_size=32",
        "data.train_size=1024",
        "data.val_size=256",
        "data.batch_size=128",
        "model=vgg11",
        "model.width_mult=0.25",
        "hardware=gpu" if a.cuda else "hardware=cpu",
        "hardware.deterministic=true",
        "hardware.compile=false",
        "scheduler=constant",
    ]  # the 1-epoch run's schedule is then the first epoch of the 2-epoch one
    a.train("deterministic_straight", *run, "train.epochs=2")
    a.train("deterministic_resumed", *run, "train.epochs=1")
    a.train("deterministic_resumed", *run, "train.epochs=2", "resume=auto")
    weights = [
        torch.load(a.runs / name / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)["model"]
        for name in ("deterministic_straight", "deterministic_resumed")
    ]
    differing = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    if differing:
        raise Check(f"resumed weights differ from the straight run's: {differing[:3]}")
    return {"tensors_compared": len(weights[0]), "bit_identical": True}


@row("predict_dense", "1", "predict dense=true on CUDA: the convolutionized model on the GPU", needs_cuda=True)
def predict_dense(a: Acceptance) -> dict:
    checkpoint = a.runs / "deterministic_straight" / "checkpoints" / "best.pt"
    if not checkpoint.exists():
        a.train(
            "predict_dense_model",
            "data=synthetic",
            "data.image_size=32",
            "data.train_size=512",
            "model=vgg11",
            "model.width_mult=0.25",
            *a.hardware,
            "train.epochs=1",
        )
        checkpoint = a.runs / "predict_dense_model" / "checkpoints" / "best.pt"
    image = next((jpeg_tree(a) / "val").glob("*/*.JPEG"))
    result = a.cnnbench(
        "predict",
        f"checkpoint={checkpoint}",
        f"images=[{image}]",
        "dense=true",
        f"hardware.device={a.device}",
        f"hydra.run.dir={a.runs / 'predict_dense'}",
    )
    return {"output": result.stdout.strip().splitlines()[-1][:120]}


@row(
    "torchrun_nccl",
    "6, 11, 17",
    "torchrun with one rank per GPU (at most 2) trains; NCCL itself, with the "
    "rank's device set first (device_id), SyncBatchNorm through timm's converter, DDP and torch.compile: one "
    "step, its graph breaks counted",
    needs_cuda=True,
)
def torchrun_nccl(a: Acceptance) -> dict:
    import torch

    ranks = min(2, torch.cuda.device_count())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}"]
    a.run(
        *torchrun,
        "-m",
        "cnnbench.train",
        *a.small_run(),
        "hardware=ddp",
        "hardware.device=cuda",
        "hardware.compile=false",
        "train.epochs=1",
        f"hydra.run.dir={a.runs / 'torchrun'}",
    )
    summary, _ = read_run(a.runs / "torchrun")
    result = a.run(*torchrun[:-1], "--nproc_per_node=1", __file__, "--nccl-step")
    nccl = json.loads(result.stdout.strip().splitlines()[-1])
    return {"ranks": ranks, "status": summary["status"], "final_val_top1": summary["final_val_top1"], **nccl}


@row(
    "speedrun_gpu",
    "-",
    "experiment=fmnist_speedrun_gpu: target >= 94% Fashion-MNIST test top-1 in <= 10 s",
    needs_cuda=True,
)
def speedrun_gpu(a: Acceptance) -> dict:
    root = [f"data.root={os.environ['FMNIST_ROOT']}"] if "FMNIST_ROOT" in os.environ else []
    summary, _ = a.train("speedrun_gpu", "experiment=fmnist_speedrun_gpu", *root)
    values = {k: summary[k] for k in ("final_val_top1", "best_val_top1", "wall_time_s", "train_img_per_s")}
    if summary["final_val_top1"] < 94 or summary["wall_time_s"] > 10:
        raise Check(f"below target (94%, 10 s): {values}")
    return values


def write_table(out: Path, device: str, results: list[dict]) -> None:
    (out / "gpu_acceptance.json").write_text(json.dumps({"device": device, "rows": results}, indent=2) + "\n")
    lines = [
        f"GPU acceptance on {device}, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}",
        "",
        "| row | issue 20 items | status | values | s | what |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        values = "; ".join(f"{k}: {v}" for k, v in r["values"].items()).replace("|", "/")
        lines.append(f"| {r['row']} | {r['items']} | {r['status']} | {values} | {r['seconds']} | {r['what']} |")
    (out / "gpu_acceptance.md").write_text("\n".join(lines) + "\n")


def main(out: Path, device: str) -> int:
    out.mkdir(parents=True, exist_ok=True)
    acceptance, results = Acceptance(out, device), []
    only = os.environ.get("ROWS", "").split(",") if os.environ.get("ROWS") else None
    for name, items, what, needs_cuda, fn in ROWS:
        if only and name not in only:
            continue
        started, values, status = time.perf_counter(), {}, "passed"
        if needs_cuda and device != "cuda":
            status = SKIPPED
        else:
            try:
                values = fn(acceptance)
            except Check as e:
                status = f"failed: {e}"
            except Exception as e:  # a bug of this script's own: the row fails, the others still run
                status = f"failed: {type(e).__name__}: {e}"
                traceback.print_exc()
        results.append(
            {
                "row": name,
                "items": items,
                "status": status,
                "values": values,
                "what": what,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        print(f"{name}: {status} {values}", flush=True)
        write_table(out, device, results)
    return 1 if any(r["status"].startswith("failed") for r in results) else 0


# The in-process checks, each printing one JSON line.


def compose(*overrides: str):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from cnnbench.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return hydra_compose("train", overrides=list(overrides))


def count_syncs(run_dir: str, *overrides: str) -> dict:
    """Host syncs per training step: two runs under torch.cuda.set_sync_debug_mode('warn') (each sync one
    warning, at the Python line that asked for it) that differ only in their count of steps, so that
    set-up, the first update, validation and checkpoints cancel; `sites`: the lines of the syncs between."""
    import warnings
    from collections import Counter

    import torch

    from cnnbench.engine.trainer import train

    counts = []
    for steps in (4, 12):
        cfg = compose(
            f"run_dir={run_dir}/{steps}",
            "train.log_every_steps=100000",
            *overrides,
            f"train.limit_train_batches={steps}",
        )
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            summary = train(cfg)
            torch.cuda.set_sync_debug_mode("default")
        counts.append(
            (
                Counter(f"{Path(w.filename).name}:{w.lineno}" for w in caught if "synchroniz" in str(w.message)),
                summary["step"],
            )
        )
    (fewer, fewer_steps), (more, more_steps) = counts
    syncs, steps = more.total() - fewer.total(), more_steps - fewer_steps
    return {
        "syncs": syncs,
        "steps": steps,
        "syncs_per_step": syncs / steps,
        "sites": ", ".join(f"{site} x{n}" for site, n in (more - fewer).items()),
    }


def compare_batches(root: str, device: str, *overrides: str) -> dict:
    """The train and val batches of an image folder through PIL on the CPU, against the same on `device`
    with `overrides`: labels equal, pixel differences."""
    import torch

    from cnnbench.data import build_data

    workers = 2 if device == "cuda" else 0  # on CPU the check of the logic only: no worker start-up
    run = [
        "data=imagefolder",
        f"data.root={root}",
        "data.image_size=64",
        "data.batch_size=16",
        f"data.workers={workers}",
        "augmentation=imagenet",
        "augmentation.lighting=0.1",
        "hardware.device=cpu",
        "run_dir=/nonexistent",
    ]
    reference = build_data(compose(*run))
    other = build_data(compose(*run, f"hardware.device={device}", *overrides), device=torch.device(device))
    labels_equal, differences, batches = True, [], 0
    for loader in ("train_loader", "val_loader"):
        for (ref_images, ref_labels), (images, labels) in zip(
            getattr(reference, loader), getattr(other, loader), strict=True
        ):
            labels_equal &= torch.equal(ref_labels, labels.cpu())
            differences.append((ref_images.int() - images.cpu().int()).abs().flatten())
            batches += 1
    difference = torch.cat(differences).float()
    return {
        "batches": batches,
        "labels_equal": labels_equal,
        "device": device,
        "mean_abs_difference": round(difference.mean().item(), 4),
        "max_abs_difference": int(difference.max()),
    }


def nccl_step() -> dict:
    """One rank under torchrun: NCCL with the device set first, then a compiled DDP step of a model with
    timm's synchronized BatchNormAct (compact_cnn)."""
    import torch
    import torch.distributed as dist

    from cnnbench.engine.distributed import sync_batchnorm
    from cnnbench.models import create_model

    local_rank = int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank)
    torch.cuda.set_device(device)
    dist.init_process_group("nccl", device_id=device)
    total = torch.ones(1, device=device)
    dist.all_reduce(total)
    model = sync_batchnorm(create_model("compact_cnn", num_classes=10, in_chans=1, image_size=28)).to(device)
    ddp = torch.compile(torch.nn.parallel.DistributedDataParallel(model, device_ids=[local_rank]))
    torch._dynamo.utils.counters.clear()
    loss = ddp(torch.randn(64, 1, 28, 28, device=device)).logsumexp(1).mean()
    loss.backward()
    breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
    dist.destroy_process_group()
    return {
        "nccl_all_reduce": total.item(),
        "sync_batchnorm_compiled_graph_breaks": breaks,
        "loss_finite": bool(torch.isfinite(loss)),
    }


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1].startswith("--"):
        command, args = sys.argv[1], sys.argv[2:]
        checks = {"--count-syncs": count_syncs, "--compare-batches": compare_batches, "--nccl-step": nccl_step}
        print(json.dumps(checks[command](*args)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    sys.exit(main(args.out, os.environ.get("DEVICE", "cuda")))
