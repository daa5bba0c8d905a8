"""ImageNet as it ships: a flat val/ labelled by the devkit's ground truth or Kaggle's solution CSV.

tests/data/meta.mat (and meta_uncompressed.mat) are small copies of the devkit's data/meta.mat, written by
scipy.io.savemat (compressed, and not) with the devkit's `synsets` fields: three classes whose
ILSVRC2012_IDs run against wnid order, as the real IDs do, and one parent synset that is not a class.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cnnbench.data.datasets import load_split
from cnnbench.data.imagenet import devkit_wnids, display_name
from cnnbench.engine.checkpoint import load_checkpoint
from cnnbench.engine.inference import evaluate
from cnnbench.engine.trainer import train
from cnnbench.errors import DataError

from .helpers import make_config, run_cli

FIXTURES = Path(__file__).parent / "data"
CLASSES = ["n01440764", "n02092339", "n02119789"]  # tench, Weimaraner, kit fox: ImageFolder's sorted order
DEVKIT_IDS = {"n02119789": 1, "n02092339": 2, "n01440764": 3}  # as in the meta.mat fixtures
COLOURS = [(220, 30, 30), (30, 220, 30), (30, 30, 220)]
VAL_CLASSES = [2, 0, 1, 2, 1, 2]  # ILSVRC2012_val_00000001.JPEG ... by class index: 1, 2 and 3 images per class
TINY = [
    "data=imagenet",
    "data.image_size=32",
    "data.batch_size=6",
    "data.workers=0",
    "model=lenet5",
    "model.variant=modern",
    "train.epochs=1",
    "hardware=cpu",
]


def solid(path: Path, c: int):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((20, 24, 3), COLOURS[c], np.uint8)).save(path)


def imagenet_as_shipped(base: Path, labels: str | None) -> Path:
    """ILSVRC-2012's layout with each class one solid colour; returns data.root. devkit: the devkit unpacked
    in root; kaggle: Kaggle's tree (root ILSVRC/Data/CLS-LOC, the CSV three levels up); None: no labels."""
    root = base / "ILSVRC" / "Data" / "CLS-LOC" if labels == "kaggle" else base
    for c, wnid in enumerate(CLASSES):
        for i in range(4):
            solid(root / "train" / wnid / f"{wnid}_{i}.JPEG", c)
    names = [f"ILSVRC2012_val_{n:08d}" for n in range(1, len(VAL_CLASSES) + 1)]
    for name, c in zip(names, VAL_CLASSES):
        solid(root / "val" / f"{name}.JPEG", c)
    if labels == "devkit":
        data = root / "ILSVRC2012_devkit_t12" / "data"
        data.mkdir(parents=True)
        shutil.copy(FIXTURES / "meta.mat", data / "meta.mat")
        (data / "ILSVRC2012_validation_ground_truth.txt").write_text(
            "".join(f"{DEVKIT_IDS[CLASSES[c]]}\n" for c in VAL_CLASSES)
        )
    elif labels == "kaggle":
        rows = [f"{name},{CLASSES[c]} 1 2 18 20 {CLASSES[c]} 3 4 10 12" for name, c in zip(names, VAL_CLASSES)]
        (base / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "\n".join(reversed(rows)) + "\n")
        (base / "LOC_synset_mapping.txt").write_text(
            "n01440764 tench, Tinca tinca\nn02092339 Weimaraner\nn02119789 kit fox, Vulpes macrotis\n"
        )
    return root


@pytest.mark.parametrize("fixture", ["meta.mat", "meta_uncompressed.mat"])
def test_devkit_meta_mat_maps_ids_to_wnids(fixture):
    assert devkit_wnids(FIXTURES / fixture) == {i: wnid for wnid, i in DEVKIT_IDS.items()}


@pytest.mark.parametrize("labels", ["devkit", "kaggle"])
def test_flat_val_with_either_labels_file_trains_and_evaluates(tmp_path, labels, capsys):
    root = imagenet_as_shipped(tmp_path / "imagenet", labels)
    split = load_split(make_config(tmp_path / "check", *TINY, f"data.root={root}").data, False, None)
    assert split.classes == CLASSES and split.dataset.targets == VAL_CLASSES
    for n, ((image, target), (path, _)) in enumerate(zip(split.dataset, split.dataset.samples), start=1):
        assert Path(path).name == f"ILSVRC2012_val_{n:08d}.JPEG"
        assert np.abs(np.asarray(image, np.int16)[10, 12] - COLOURS[target]).max() < 10  # its class's colour

    run = tmp_path / "run"
    assert train(make_config(run, *TINY, f"data.root={root}"))["status"] == "completed"
    assert load_checkpoint(run / "checkpoints" / "last.pt")["classes"] == CLASSES
    capsys.readouterr()
    result = evaluate(
        make_config(
            tmp_path / "evaluate", f"checkpoint={run / 'checkpoints' / 'last.pt'}", "hardware=cpu", app="evaluate"
        )
    )
    assert [(c["class"], c["name"], c["samples"]) for c in result["per_class"]] == [
        ("n01440764", "tench", 1),
        ("n02092339", "Weimaraner", 2),
        ("n02119789", "kit fox", 3),
    ]
    assert "n02092339 Weimaraner  " in capsys.readouterr().out


@pytest.mark.slow  # a real command in a subprocess
def test_predict_shows_the_wnid_and_its_name(tmp_path):
    root = imagenet_as_shipped(tmp_path / "imagenet", "kaggle")
    run = tmp_path / "run"
    train(make_config(run, *TINY, f"data.root={root}"))
    image = root / "val" / "ILSVRC2012_val_00000001.JPEG"
    result = run_cli(
        f"checkpoint={run / 'checkpoints' / 'last.pt'}",
        f"images=[{image}]",
        "hardware=cpu",
        f"hydra.run.dir={tmp_path / 'predict'}",
        module="cnnbench.predict",
    )
    assert result.returncode == 0, result.stderr
    topk = json.loads((tmp_path / "predict" / "predictions.json").read_text())[0]["topk"]
    assert {(p["class"], p["name"]) for p in topk} == {
        ("n01440764", "tench"),
        ("n02092339", "Weimaraner"),
        ("n02119789", "kit fox"),
    }
    for p in topk:
        assert f"% {p['class']} {p['name']}\n" in result.stdout + "\n"


@pytest.mark.slow  # a real command in a subprocess
def test_a_flat_val_without_labels_stops_saying_what_to_pass(tmp_path):
    root = imagenet_as_shipped(tmp_path / "imagenet", None)
    result = run_cli(*TINY, f"data.root={root}", f"hydra.run.dir={tmp_path / 'run'}")
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"cnnbench: error: data.val_labels: {root / 'val'} holds images but no class folders; pass "
        f"data.val_labels=FILE: the devkit's data/ILSVRC2012_validation_ground_truth.txt (meta.mat beside it) "
        f"or Kaggle's LOC_val_solution.csv"
    )


def test_labels_that_do_not_fit_the_folder_are_named(tmp_path):
    root = imagenet_as_shipped(tmp_path / "imagenet", "devkit")
    truth = root / "ILSVRC2012_devkit_t12" / "data" / "ILSVRC2012_validation_ground_truth.txt"
    data = make_config(tmp_path, *TINY, f"data.root={root}").data
    solid(root / "val" / "ILSVRC2012_val_00000099.JPEG", 0)  # past the ground truth's lines
    with pytest.raises(DataError, match=r"1 images in .* have no label in .*ground_truth.txt: .*00000099.JPEG"):
        load_split(data, False, None)
    shutil.rmtree(root / "val")
    for c in range(3):
        solid(root / "val" / CLASSES[c] / "a.JPEG", c)
    with pytest.raises(DataError, match="data.val_labels: .* is not one folder of images"):
        load_split(make_config(tmp_path, *TINY, f"data.root={root}", f"data.val_labels={truth}").data, False, None)


def test_display_names_keep_the_wnid():
    assert display_name("n02092339") == "n02092339 Weimaraner"
    assert display_name("T-shirt/top") == "T-shirt/top"
