"""Sweeps as a user runs them (`-m`, in a subprocess), the report on them, and the bench."""

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time

import pytest
import torchvision
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf
from PIL import Image
from tensorboard.backend.event_processing.data_provider import MultiplexerDataProvider
from tensorboard.backend.event_processing.plugin_event_multiplexer import EventMultiplexer
from tensorboard.context import RequestContext
from tensorboard.plugins.base_plugin import TBContext
from tensorboard.plugins.hparams import api_pb2, backend_context, get_experiment, list_session_groups

from cnnbench import report
from cnnbench.bench import bench
from cnnbench.engine.build import count_flops
from cnnbench.engine.hparams import METRICS as HPARAM_METRICS
from cnnbench.errors import ConfigError
from cnnbench.models import create_model
from cnnbench.models.registry import get_entry, list_models
from cnnbench.report import BENCH_COLUMNS, COLUMNS, THROUGHPUT_NOTE
from cnnbench.sweep import point_name

from .helpers import CONF, ROOT, SMOKE, confusion_matrix, make_config, run_cli, tensorboard_events

pytestmark = pytest.mark.slow  # real sweeps

# A 2 x 2 depth x width grid on a Fashion-MNIST subset: one epoch of 8 batches per point.
GRID = [
    "model=fmnist_cnn",
    "model.width_mult=0.25,0.5",
    "model.depth_mult=0.5,1",
    "data.train_size=512",
    "data.val_size=256",
    "data.batch_size=64",
    "train.epochs=1",
    "hardware=cpu",
]


def point_dirs(sweep_dir, record="summary.json"):
    return sorted(p.parent for p in sweep_dir.rglob(record))


def read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("grid")
    result = run_cli("-m", *GRID, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    return sweep_dir


def test_a_sweep_runs_every_point_in_a_directory_named_by_its_swept_keys(grid):
    points = point_dirs(grid)
    assert len(points) == 4
    for point in points:
        summary = json.loads((point / "summary.json").read_text())
        assert summary["status"] == "completed" and summary["epochs"] == 1 and summary["data"] == "fashion_mnist"
    assert sorted(p.name for p in points) == [  # the swept keys only; every override is in .hydra/overrides.yaml
        "model.depth_mult=0.5,model.width_mult=0.25",
        "model.depth_mult=0.5,model.width_mult=0.5",
        "model.depth_mult=1,model.width_mult=0.25",
        "model.depth_mult=1,model.width_mult=0.5",
    ]
    for point in points:
        overrides = OmegaConf.load(point / ".hydra" / "overrides.yaml")
        assert "data.train_size=512" in overrides and "model=fmnist_cnn" in overrides
        assert all(item in overrides for item in point.name.split(","))


@pytest.fixture(scope="module")
def reported(grid):
    result = run_cli(str(grid), module="cnnbench.report")
    assert result.returncode == 0, result.stderr
    return result


def test_report_rows_are_the_summaries(grid, reported):
    rows = read_csv(grid / "results.csv")
    assert len(rows) == 4
    for row in rows:
        summary = json.loads((grid / row["run"] / "summary.json").read_text())
        assert {c: row[c] for c in COLUMNS} == {c: "" if summary[c] is None else str(summary[c]) for c in COLUMNS}
        assert row["run"] == f"model.depth_mult={row['model.depth_mult']},model.width_mult={row['model.width_mult']}"
    table = (grid / "results.md").read_text()
    assert table.count("\n") == 2 + 4 + 2 and "| model.depth_mult | model.width_mult | model |" in table
    assert table.endswith(f"|\n\n{THROUGHPUT_NOTE}\n")  # what train_img_per_s is, under the table
    assert table in reported.stdout  # the terminal shows the same table


def test_report_plots_are_images(grid, reported):
    for name in ("top1_vs_gflops", "top1_vs_width", "top1_vs_depth", "learning_curves"):
        with Image.open(grid / "plots" / f"{name}.png") as image:
            image.verify()
            assert image.format == "PNG" and 600 <= image.width <= 2000 and 400 <= image.height <= 1500, name


def test_report_plots_name_the_model_and_data_and_key_what_they_draw(grid, tmp_path):
    runs = [report.read_run(point, "summary.json") for point in point_dirs(grid)]
    varying = report.varying_overrides(runs)

    curves = report.plot_learning_curves(runs, varying, tmp_path / "learning_curves.png")
    assert curves.get_suptitle() == "Learning curves: fmnist_cnn on fashion_mnist"
    top1, loss = curves.axes
    assert top1.get_ylabel() == "val top-1 (%)" and loss.get_ylabel() == "loss"
    for ax in (top1, loss):
        assert all(tick == int(tick) for tick in ax.get_xticks())  # one epoch: no -0.04, 0.02, ... ticks
    assert [text.get_text() for text in loss.get_legend().get_texts()] == ["train", "val"]
    for run, (train_line, val_line) in zip(runs, zip(loss.lines[::2], loss.lines[1::2])):
        [row] = read_csv(run["dir"] / "metrics.csv")
        assert list(train_line.get_ydata()) == [float(row["train_loss"])] and train_line.get_linestyle() == "-"
        assert list(val_line.get_ydata()) == [float(row["val_loss"])] and val_line.get_linestyle() == "--"
        assert train_line.get_color() == val_line.get_color()  # the same run

    chart = report.plot_accuracy_vs_flops(runs, varying, tmp_path / "top1_vs_gflops.png")
    [ax] = chart.axes
    assert ax.get_title() == "Accuracy vs compute: fmnist_cnn on fashion_mnist"
    key = ax.get_legend()
    assert key.get_title().get_text() == "parameters"
    params = sorted(run["summary"]["params"] for run in runs)
    assert [text.get_text() for text in key.get_texts()] == [
        report.count(float(f"{p:.2g}")) for p in (params[0], (params[0] * params[-1]) ** 0.5, params[-1])
    ]
    areas = [handle.get_sizes()[0] for handle in key.legend_handles]
    assert areas == sorted(areas) and areas[0] < areas[-1]

    width = report.plot_against_multiplier(runs, "width_mult", "depth_mult", tmp_path / "top1_vs_width.png")
    assert width.axes[0].get_title() == "Accuracy vs width_mult: fmnist_cnn on fashion_mnist"
    assert report.plot_against_multiplier(runs[:1], "width_mult", "depth_mult", tmp_path / "none.png") is None


def test_plot_titles_list_a_few_models_and_call_more_various():
    def runs(models, data="cifar10"):
        return [{"summary": {"model": model, "data": data}} for model in models]

    assert report.subject(runs(["resnet18", "lenet5", "resnet18"])) == "lenet5, resnet18 on cifar10"
    assert report.subject(runs(["a", "b", "c", "d"], "fashion_mnist")) == "various (4) on fashion_mnist"


def hparams_dashboard(logdir):
    """What TensorBoard's HParams dashboard gets from its backend for this logdir: the experiment (its
    hyperparameters in the dashboard's order) and every session group, with its metrics."""
    runs = EventMultiplexer().AddRunsFromDirectory(str(logdir))
    runs.Reload()
    backend = backend_context.Context(TBContext(data_provider=MultiplexerDataProvider(runs, str(logdir))))
    request_context = RequestContext()
    experiment = get_experiment.Handler(request_context, backend, "", api_pb2.GetExperimentRequest()).run()
    query = api_pb2.ListSessionGroupsRequest(
        start_index=0,
        slice_size=100,
        allowed_statuses=api_pb2.Status.values(),
        col_params=[
            *(api_pb2.ColParams(hparam=h.name) for h in experiment.hparam_infos),
            *(api_pb2.ColParams(metric=m.name) for m in experiment.metric_infos),
        ],
    )
    return experiment, list_session_groups.Handler(request_context, backend, "", query).run().session_groups


def test_tensorboard_hparams_dashboard_shows_the_swept_keys_first(grid):
    """The swept keys lead (the dashboard ticks the first five), every point's values are there, the
    metrics are each run's scalar tags, and a run is named by its point; each point's events also hold its
    augmented first batch, its config and its confusion matrix, whose CSV counts the val set once."""
    experiment, groups = hparams_dashboard(grid)
    assert [(h.name, h.differs) for h in experiment.hparam_infos][:3] == [
        ("model.depth_mult", True),
        ("model.width_mult", True),
        ("augmentation.name", False),
    ]
    assert {tuple(v.number_value for v in h.domain_discrete.values) for h in experiment.hparam_infos[:2]} == {
        (0.5, 1.0),
        (0.25, 0.5),
    }
    assert [m.name.tag for m in experiment.metric_infos] == list(HPARAM_METRICS)
    assert len(groups) == 4
    seen = set()
    for group in groups:
        [session] = group.sessions
        point = grid / session.name.removesuffix("/tb")
        assert session.name == f"{point.name}/tb" and session.status == api_pb2.STATUS_SUCCESS
        depth, width = (group.hparams[k].number_value for k in ("model.depth_mult", "model.width_mult"))
        assert point.name == f"model.depth_mult={depth:g},model.width_mult={width:g}"
        seen.add((width, depth))
        summary = json.loads((point / "summary.json").read_text())
        metric = {m.name.tag: m.value for m in group.metric_values}
        assert metric.keys() == HPARAM_METRICS.keys()
        for key, tag in (
            ("best_val_top1", "val/best_top1"),
            ("final_val_top5", "val/top5"),
            ("params", "whole_run/params"),
            ("train_img_per_s", "whole_run/train_img_per_s"),
        ):
            assert metric[tag] == pytest.approx(summary[key], rel=1e-6), tag
        events = tensorboard_events(point)
        assert len(events.Images("train/augmented_batch")) == len(events.Tensors("config/text_summary")) == 1
        assert [image.step for image in events.Images("val/confusion_matrix")] == [summary["step"]]
        assert sum(map(sum, confusion_matrix(point)[1])) == 256  # data.val_size
    assert seen == {(0.25, 0.5), (0.25, 1.0), (0.5, 0.5), (0.5, 1.0)}


def test_rerunning_a_finished_sweep_trains_nothing(grid):
    files = [p for point in point_dirs(grid) for p in point.rglob("*") if p.is_file() and ".hydra" not in p.parts]
    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files}
    result = run_cli("-m", *GRID, f"hydra.sweep.dir={grid}")
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("completed by an earlier run of this sweep; skipped") == 4
    assert "epoch 0:" not in result.stdout
    assert {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in files} == before


def test_a_failing_point_is_named_and_the_others_complete(tmp_path):
    result = run_cli("-m", *SMOKE, "train.epochs=-1,1", f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 1
    assert "cnnbench: error: train.epochs: must be > 0, got -1" in result.stderr
    last_line = result.stderr.strip().splitlines()[-1]
    assert last_line.startswith("cnnbench: error: 1 of 2 sweep points did not complete: ")
    assert "train.epochs=-1" in last_line and "train.epochs=1," not in last_line
    [completed] = point_dirs(tmp_path)  # the point after the failure ran
    assert json.loads((completed / "summary.json").read_text())["status"] == "completed"
    assert completed.name.endswith("train.epochs=1")


def test_an_interrupted_sweep_resumes_its_point(tmp_path):
    args = [
        "-m",
        *SMOKE,
        "data.train_size=512",
        "train.epochs=1",
        "train.checkpoint_every_steps=2",
        f"hydra.sweep.dir={tmp_path}",
    ]
    sweep = subprocess.Popen(
        [sys.executable, "-m", "cnnbench.train", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    while not list(tmp_path.rglob("last.pt")):
        assert sweep.poll() is None, sweep.stderr.read().decode()
        time.sleep(0.01)
    sweep.send_signal(signal.SIGTERM)  # what SLURM sends before preemption
    assert sweep.wait(timeout=120) == 143
    [point] = point_dirs(tmp_path)
    assert json.loads((point / "summary.json").read_text())["status"] == "interrupted"

    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    summary = json.loads((point / "summary.json").read_text())
    assert summary["status"] == "completed" and summary["epochs"] == 1 and summary["step"] == 512 // 32
    assert f"resumed from {point / 'checkpoints' / 'last.pt'}" in (point / "train.log").read_text()


def test_a_point_is_rerun_when_its_config_changed(tmp_path):
    """A completed point is skipped only when its recorded config equals the new one (keys that do not
    change results aside); a changed one continues from its last.pt, naming what changed."""
    sweep = ["-m", *SMOKE, "data.train_size=64", "model.width_mult=0.5,1", f"hydra.sweep.dir={tmp_path}"]
    assert run_cli(*sweep, "train.epochs=1").returncode == 0
    result = run_cli(*sweep, "train.epochs=1", "train.log_every_steps=1")  # inert: still the same point
    assert result.stdout.count("completed by an earlier run of this sweep; skipped") == 2, result.stderr
    result = run_cli(*sweep, "train.epochs=2")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout.count("completed with another config (train.epochs 1 -> 2); continuing it with resume=auto") == 2
    )
    for point in point_dirs(tmp_path):
        assert json.loads((point / "summary.json").read_text())["epochs"] == 2
        assert "train.epochs=2" in OmegaConf.load(point / ".hydra" / "overrides.yaml")


def test_a_sweep_of_many_overrides_gets_short_stable_names(tmp_path):
    """A dozen overrides, a path among them, no key swept: one point, named within the file-name limit."""
    many = [
        *SMOKE,
        "train.epochs=1",
        "seed=3",
        "optimizer.lr=0.01",
        "optimizer.momentum=0.8",
        "optimizer.weight_decay=0.0001",
        "scheduler.warmup_epochs=0.5",
        "augmentation.hflip=0.25",
        f"data.root={tmp_path / 'no' / 'such' / 'dir'}",
    ]
    result = run_cli("-m", *many, f"hydra.sweep.dir={tmp_path}")
    assert result.returncode == 0, result.stderr
    [point] = point_dirs(tmp_path)
    assert point.parent == tmp_path and len(point.name) <= 100 and point.name.startswith("augmentation.hflip=0.25,")
    assert sorted(OmegaConf.load(point / ".hydra" / "overrides.yaml")) == sorted(many)
    assert point.name == point_name(many, set())  # the same name on a rerun


def test_point_names_are_the_swept_keys_cut_with_a_hash():
    assert (
        point_name(["model=resnet18", "model.width_mult=0.5", "seed=0"], {"model", "model.width_mult"})
        == "model.width_mult=0.5,model=resnet18"
    )
    long = [f"model.knob{i}={'x' * 20}" for i in range(12)]
    assert len(point_name(long, set())) == 100 and point_name(long, set()) == point_name(long[::-1], set())
    assert point_name(long, set()) != point_name([*long[:-1], "model.knob11=y"], set())


@pytest.mark.parametrize(
    "preset, params",
    [
        ("width", {"model.width_mult": "0.25,0.5,1,2"}),
        ("depth", {"model.depth_mult": "0.5,1,2,3"}),
        ("grid", {"model.depth_mult": "0.5,1,2,3", "model.width_mult": "0.25,0.5,1,2"}),
        ("compound", {"model.phi": "0,1,2,3"}),
    ],
)
def test_presets_sweep_into_a_stable_directory(preset, params):
    for app in ("train", "bench"):
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(app, overrides=[f"sweep={preset}", "model=resnet18"], return_hydra_config=True)
        assert dict(cfg.hydra.sweeper.params) == params
        assert cfg.hydra.sweep.dir == f"outputs/sweeps/{app}/{preset}/resnet18"  # rerunning the command resumes it


def test_bench_sweep_and_its_table(tmp_path, capsys):
    bench = [
        "-m",
        "model=lenet5,fmnist_cnn",
        "data=synthetic",
        "data.image_size=32",
        "data.batch_size=16",
        "hardware=cpu",
        "bench.warmup_steps=1",
        "bench.windows=3",
        "bench.steps_per_window=2",
        "bench.matmul_size=256",
        f"hydra.sweep.dir={tmp_path}",
    ]
    result = run_cli(*bench, module="cnnbench.bench")
    assert result.returncode == 0, result.stderr
    benches = {json.loads((p / "bench.json").read_text())["model"]: p for p in point_dirs(tmp_path, "bench.json")}
    assert set(benches) == {"lenet5", "fmnist_cnn"}
    for name, point in benches.items():
        record = json.loads((point / "bench.json").read_text())
        model = create_model(name, num_classes=10, in_chans=3, image_size=32)
        assert record["params"] == sum(p.numel() for p in model.parameters())
        assert record["gflops"] == count_flops(model, (3, 32, 32), "cpu") / 1e9
        assert 2 * record["gflops"] < record["train_gflops"] < 4 * record["gflops"]  # backward ~ 2 x forward
        assert record["train_img_per_s"] > 0 and record["infer_img_per_s"] > 0 and record["peak_memory_mb"] > 100
        assert record["memory_kind"] == "cpu_peak_rss" and record["matmul_tflops"] > 0
        # the fractions are the measured rates over the measured matmul peak (a shared CPU is too noisy to bound)
        for kind, gflops in (("train", record["train_gflops"]), ("infer", record["gflops"])):
            achieved = gflops * 1e9 * record[f"{kind}_img_per_s"] / (record["matmul_tflops"] * 1e12)
            assert record[f"{kind}_matmul_fraction"] == pytest.approx(achieved, rel=0.02)

    report.main([str(tmp_path)])
    rows = read_csv(tmp_path / "bench.csv")
    assert {row["model"] for row in rows} == set(benches)
    for row in rows:
        record = json.loads((tmp_path / row["run"] / "bench.json").read_text())
        measured = [c for c in BENCH_COLUMNS if c in record]  # bench.trainer and bench.input were off
        assert {c: row[c] for c in measured} == {c: str(record[c]) for c in measured}
        assert "trainer_ratio" not in measured and "trainer_ratio" not in row
    assert (tmp_path / "bench.md").read_text() in capsys.readouterr().out
    assert not (tmp_path / "results.csv").exists()  # no training runs: no training table


@pytest.mark.parametrize(
    "override, message",
    [
        ("bench.windows=0", "bench.windows: must be > 0, got 0"),
        ("data=imagefolder", "data.num_classes: bench reads no files, so give imagefolder's class count"),
    ],
)
def test_bench_refuses_what_it_cannot_measure(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        bench(make_config(tmp_path, "model=lenet5", "hardware=cpu", override))
    assert not (tmp_path / "bench.json").exists()


def zoo_models() -> list[str]:
    """The architectures of `sweep=zoo`, as its sweep expands them."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["sweep=zoo"], return_hydra_config=True)
    arguments = OverridesParser.create().parse_overrides([f"{k}={v}" for k, v in cfg.hydra.sweeper.params.items()])
    return [job[0].split("=", 1)[1] for batch in BasicSweeper.split_arguments(arguments, None) for job in batch]


def test_the_zoo_preset_trains_every_family_at_one_budget():
    """One architecture of each of the zoo's families at least (cnnbench's own small CNNs aside), those the
    literature's table names, on one recipe and one compute budget, into a stable directory per data set."""
    models = zoo_models()
    assert len(models) == len(set(models)) == 21
    for name in (
        "lenet5",
        "alexnet",
        "vgg11",
        "vgg16",
        "nin",
        "googlenet",
        "inception_v3",
        "resnet18",
        "resnet50",
        "wrn28_10",
        "resnext50_32x4d",
        "densenet121",
        "xception",
        "se_resnet50",
        "mobilenet_v1",
        "mobilenet_v2",
        "mobilenet_v3_large",
        "cspresnet50",
        "efficientnet_b0",
        "regnet_y_400mf",
        "bit_resnet50x1",
    ):
        assert name in models
    families = {get_entry(name).family for name in list_models()} - {"timm", "torchvision", "compact", "fmnist_cnn"}
    assert {get_entry(name).family for name in models} == families
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=["sweep=zoo", "data=cifar10"], return_hydra_config=True)
        chosen = compose("train", overrides=["sweep=zoo", "optimizer=sgd"])
    assert cfg.hydra.sweep.dir == "outputs/sweeps/train/zoo/cifar10"
    assert (cfg.optimizer.opt, cfg.scheduler.sched, cfg.train.budget_tflop, cfg.train.budget_images) == (
        "adamw",
        "cosine",
        100,
        None,
    )
    assert chosen.optimizer.opt == "momentum"  # the command line's recipe wins over the preset's


# Two of the zoo's points at a tiny compute budget: LeNet-5 (1.3 MFLOPs an image at 32x32) sees 8 batches,
# MobileNet v2 one.
ZOO = [
    "-m",
    "sweep=zoo",
    "hydra.sweeper.params.model='lenet5,mobilenet_v2'",
    "data=synthetic",
    "data.image_size=32",
    "data.train_size=256",
    "data.val_size=64",
    "data.batch_size=32",
    "hardware=cpu",
    "train.budget_tflop=0.001",
]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    sweep_dir = tmp_path_factory.mktemp("zoo")
    result = run_cli(*ZOO, f"hydra.sweep.dir={sweep_dir}")
    assert result.returncode == 0, result.stderr
    return sweep_dir


def test_zoo_points_train_to_one_budget_resume_and_are_charted(zoo):
    """Each point trains the steps its FLOPs give the budget; rerunning the command trains nothing; the report
    lists the budget and what each point trained, and charts top-1 against parameters and against FLOPs."""
    summaries = {p.name: json.loads((p / "summary.json").read_text()) for p in point_dirs(zoo)}
    assert sorted(summaries) == ["model=lenet5", "model=mobilenet_v2"]
    for summary in summaries.values():
        assert summary["status"] == "completed" and summary["budget_tflop"] == 0.001
        images = math.ceil(1e9 / (3 * summary["gflops"] * 1e9 * 32)) * 32  # whole batches to reach the budget
        assert summary["trained_images"] == images and summary["step"] == images // 32
        assert summary["trained_tflop"] >= 0.001 > summary["trained_tflop"] - 3 * summary["gflops"] * 32 / 1e3
    assert summaries["model=lenet5"]["trained_images"] > summaries["model=mobilenet_v2"]["trained_images"]

    rerun = run_cli(*ZOO, f"hydra.sweep.dir={zoo}")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.count("completed by an earlier run of this sweep; skipped") == 2

    result = run_cli(str(zoo), module="cnnbench.report")
    assert result.returncode == 0, result.stderr
    rows = read_csv(zoo / "results.csv")
    for row in rows:
        summary = summaries[row["run"]]
        assert [row[c] for c in ("budget_tflop", "trained_images", "trained_tflop")] == [
            str(summary[c]) for c in ("budget_tflop", "trained_images", "trained_tflop")
        ]
    assert "budget_images" not in rows[0] and not (zoo / "published.md").exists()  # not ImageNet
    runs = [report.read_run(point, "summary.json") for point in point_dirs(zoo)]
    chart = report.plot_accuracy_vs_params(runs, report.varying_overrides(runs), zoo / "plots" / "again.png")
    [ax] = chart.axes
    assert ax.get_title() == "Accuracy vs parameters: lenet5, mobilenet_v2 on synthetic"
    assert ax.get_xscale() == "log"  # 62k to 2.2M parameters
    assert sorted(tuple(c.get_offsets()[0]) for c in ax.collections) == sorted(
        (s["params"], s["best_val_top1"]) for s in summaries.values()
    )
    for name in ("top1_vs_params", "top1_vs_gflops"):
        with Image.open(zoo / "plots" / f"{name}.png") as image:
            image.verify()


def test_imagenet_runs_are_reported_beside_their_published_top1(tmp_path):
    """No ImageNet here: the summary.json of three ImageNet runs is written by hand. The report puts each
    architecture's top-1 beside its torchvision weights' (their metadata, offline); SE-ResNet-50's reference
    is timm's, which publishes none offline, so its published cells are blank; the chart draws the
    published points hollow beside the runs'."""
    runs = {
        "resnet50": (25_557_032, 8.18, 70.1),
        "mobilenet_v2": (3_504_872, 0.6, 60.2),
        "se_resnet50": (28_088_024, 8.2, 71.0),
    }
    for name, (params, gflops, top1) in runs.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "summary.json").write_text(
            json.dumps(
                {
                    "model": name,
                    "params": params,
                    "gflops": gflops,
                    "data": "imagenet",
                    "best_val_top1": top1,
                    "status": "completed",
                }
            )
        )
    result = run_cli(str(tmp_path), module="cnnbench.report")
    assert result.returncode == 0, result.stderr
    rows = {row["model"]: row for row in read_csv(tmp_path / "published.csv")}
    assert sorted(rows) == sorted(runs)
    for name in ("resnet50", "mobilenet_v2"):
        weights = torchvision.models.get_model_weights(name).DEFAULT
        row = rows[name]
        assert row["reference"] == f"torchvision:{name}" and row["reference_weights"] == str(weights)
        assert float(row["published_top1"]) == weights.meta["_metrics"]["ImageNet-1K"]["acc@1"]
        assert int(row["published_params"]) == weights.meta["num_params"]
        assert float(row["published_gflops"]) == pytest.approx(2 * weights.meta["_ops"])
        assert float(row["best_val_top1"]) == runs[name][2]
    assert rows["se_resnet50"]["reference"] == "timm:seresnet50"
    assert rows["se_resnet50"]["published_top1"] == rows["se_resnet50"]["published_params"] == ""
    assert (tmp_path / "published.md").read_text().endswith(f"\n\n{report.PUBLISHED_NOTE}\n")
    assert "published_top1" in result.stdout

    read = [report.read_run(tmp_path / name, "summary.json") for name in sorted(runs)]
    published = [report.published_row(r) for r in read]
    chart = report.plot_accuracy_vs_params(read, [], tmp_path / "chart.png", published)
    [ax] = chart.axes
    hollow = [line for line in ax.lines if line.get_marker() == "o" and line.get_markerfacecolor() == "none"]
    assert sorted((line.get_xdata()[0], line.get_ydata()[0]) for line in hollow) == sorted(
        (row["published_params"], row["published_top1"]) for row in published if row["published_top1"] is not None
    )
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["these runs", "published (torchvision weights)"]
