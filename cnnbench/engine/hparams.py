"""What TensorBoard's HParams dashboard shows of a run: first the keys its sweep varies, then a short
chosen set of settings, and as metrics the run's own scalar tags (recorder.py writes them every epoch).

The dashboard (tensorboard 2.21) lists the hyperparameters marked as differing first, then the others by
name (the plugin's backend_context sorts by `(not differs, name)`, whatever order they were written in),
and ticks the first five. It takes the Experiment of one run of its logdir, so every point of a sweep
writes the same one: the swept keys, marked as differing, with every value the sweep gives them.
"""

import time
from enum import Enum
from pathlib import Path

from google.protobuf import struct_pb2
from omegaconf import DictConfig, OmegaConf
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.plugins.hparams import api_pb2, metadata, plugin_data_pb2

from cnnbench.data.transforms import unused_keys
from cnnbench.sweep import point_settings

# Every run's settings, under their config keys (those a model lacks, such as a timm model's
# width_mult, are left out); `precision` is what hardware.precision resolved to, as bench.json names it.
CHOSEN = [
    "model.name",
    "model.width_mult",
    "model.depth_mult",
    "data.name",
    "data.batch_size",
    "optimizer.opt",
    "optimizer.lr",
    "optimizer.weight_decay",
    "scheduler.sched",
    "train.epochs",
    "augmentation.name",
    "hardware.precision",
    "precision",
    "seed",
]
# The dashboard's metrics: the last value of each scalar tag (README, "What a run leaves behind").
METRICS = {
    "val/best_top1": "val top-1 of the best epoch so far (summary.json: best_val_top1)",
    "val/best_top5": "val top-5 of that epoch (best_val_top5)",
    "val/top1": "the last epoch's val top-1 (final_val_top1)",
    "val/top5": "the last epoch's val top-5 (final_val_top5)",
    "val/loss": "the last epoch's val loss",
    "whole_run/params": "parameters",
    "whole_run/gflops": "GFLOPs per image (a forward pass)",
    "whole_run/train_img_per_s": "training images/s: the median over the epochs after the first",
    "whole_run/wall_time_s": "wall time so far, seconds",
}
STATUS = {"completed": api_pb2.STATUS_SUCCESS}  # an interrupted or failed run may yet be resumed


def hparam_summaries(cfg: DictConfig, precision: str) -> list[Summary]:
    """The run's Experiment and SessionStartInfo, for the start of a run (TensorBoard keeps the first it
    reads of a run directory). `precision`: the one hardware.precision resolved to."""
    swept = point_settings(Path(cfg.run_dir))
    unused = {f"augmentation.{key}" for key in unused_keys(cfg.augmentation)}  # another policy's knobs
    values = {key: value for key, (value, _) in swept.items() if key not in unused}
    for key in CHOSEN:
        value = precision if key == "precision" else OmegaConf.select(cfg, key, default=None)
        if value is not None and key not in values:
            values[key] = value.value if isinstance(value, Enum) else value
    infos = {}
    for key, (value, sweep_values) in swept.items():  # in every point alike, this one's value or not
        infos[key] = hparam_info(key, sweep_values or [value], listed=bool(sweep_values), differs=True)
    for key in values:
        infos.setdefault(key, hparam_info(key, [values[key]], listed=False, differs=False))
    experiment = api_pb2.Experiment(
        hparam_infos=infos.values(),
        metric_infos=[
            api_pb2.MetricInfo(name=api_pb2.MetricName(tag=tag), description=description)
            for tag, description in METRICS.items()
        ],
    )
    start = plugin_data_pb2.SessionStartInfo(start_time_secs=time.time())
    for key, value in values.items():
        start.hparams[key].CopyFrom(proto_value(value, infos[key].type))
    return [
        plugin_summary(metadata.EXPERIMENT_TAG, plugin_data_pb2.HParamsPluginData(experiment=experiment)),
        plugin_summary(metadata.SESSION_START_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_start_info=start)),
    ]


def session_end_summary(status: str) -> Summary | None:
    """A run's SessionEndInfo, once it has completed."""
    if status not in STATUS:
        return None
    end = plugin_data_pb2.SessionEndInfo(status=STATUS[status], end_time_secs=time.time())
    return plugin_summary(metadata.SESSION_END_INFO_TAG, plugin_data_pb2.HParamsPluginData(session_end_info=end))


def hparam_info(key: str, values: list, listed: bool, differs: bool) -> api_pb2.HParamInfo:
    """A setting's name and type (from its values) and, for a swept one, every value (listed)."""
    if all(isinstance(v, bool) for v in values):
        kind = api_pb2.DATA_TYPE_BOOL
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        kind = api_pb2.DATA_TYPE_FLOAT64
    else:
        kind = api_pb2.DATA_TYPE_STRING
    info = api_pb2.HParamInfo(name=key, type=kind, differs=differs)
    if listed:
        info.domain_discrete.CopyFrom(struct_pb2.ListValue(values=[proto_value(v, kind) for v in values]))
    return info


def proto_value(value, kind: api_pb2.DataType) -> struct_pb2.Value:
    if kind == api_pb2.DATA_TYPE_BOOL:
        return struct_pb2.Value(bool_value=value)
    if kind == api_pb2.DATA_TYPE_FLOAT64:
        return struct_pb2.Value(number_value=value)
    return struct_pb2.Value(string_value=str(value))


def plugin_summary(tag: str, data: plugin_data_pb2.HParamsPluginData) -> Summary:
    """As tensorboard.plugins.hparams.summary writes it, without TensorFlow."""
    return Summary(
        value=[Summary.Value(tag=tag, metadata=metadata.create_summary_metadata(data), tensor=metadata.NULL_TENSOR)]
    )
