"""The model zoo against its references: parameter counts and state dicts of torchvision and timm, the
same logits from the same weights, every model's forward and backward at a small input, the knobs, the
configs in conf/model/ and the listing."""

import warnings

import pytest
import timm
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision
from omegaconf import OmegaConf
from safetensors.torch import save_file

from cnnbench.engine.trainer import train
from cnnbench.errors import ConfigError
from cnnbench.models import create_model, get_entry, list_models
from cnnbench.models.__main__ import main as list_zoo
from cnnbench.models.registry import GENERIC_KNOBS, classifier_name, compound_image_size

from .helpers import CONF, SMOKE, make_config, run_cli

LIBRARIES = ("timm", "torchvision")
ZOO = [name for name in list_models() if get_entry(name).family not in LIBRARIES]
REFERENCED = [name for name in ZOO if get_entry(name).reference]


def first_of_each_family(names: list[str]) -> list:
    """`names` as parameters, all but each family's first marked slow: make test-quick builds one model of
    a family, make test every one."""
    seen = set()
    params = []
    for name in names:
        family = get_entry(name).family
        params.append(pytest.param(name, marks=() if family not in seen else pytest.mark.slow))
        seen.add(family)
    return params


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Two threads fighting other processes over two cores run these small models many times slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def reference(name: str, **kwargs) -> nn.Module:
    """The library model `name` mirrors (torchvision's DenseNet class for densenet264, which it lacks)."""
    if name == "densenet264":
        return torchvision.models.DenseNet(32, (6, 12, 64, 48), 64, **kwargs)
    library, arch = get_entry(name).reference.split(":")
    if library == "timm":
        return timm.create_model(arch, **kwargs)
    if arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("init_weights", False)  # their truncated-normal init is slow and beside the point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torchvision.models.get_model(arch, **kwargs)


def on_meta(build):
    """Build on the meta device: shapes without memory or init. (RegNet's width generator computes with
    tensors, so torchvision's RegNet is built on the CPU.)"""
    with torch.device("meta"):
        return build()


@pytest.mark.parametrize("name", first_of_each_family(REFERENCED + ["densenet264"]))
def test_parameters_and_state_dict_match_the_reference(name):
    aux = {"aux_logits": False} if name in ("googlenet", "inception_v3") else {}
    ours = on_meta(lambda: create_model(name, **aux))
    theirs = reference(name) if "regnet" in name else on_meta(lambda: reference(name, **aux))
    assert abs(count(ours) - count(theirs)) <= 0.005 * count(theirs)  # auxiliary heads excluded
    if aux:  # with them, as both libraries build these by default
        ours, theirs = on_meta(lambda: create_model(name)), on_meta(lambda: reference(name))
    ours, theirs = ours.state_dict(), theirs.state_dict()
    assert ours.keys() == theirs.keys()
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}


@pytest.mark.parametrize(
    "name, kwargs, params",
    [
        ("nin", dict(num_classes=1000), 7_439_608),
        ("fmnist_cnn", dict(num_classes=10, in_chans=1, image_size=28), 1_413_834),
        ("lenet5", dict(num_classes=10, in_chans=1, image_size=32), 61_706),
        ("compact_cnn", dict(num_classes=10, in_chans=1, image_size=28), 401_978),
        ("zfnet", dict(num_classes=1000), 62_357_608),  # AlexNet 2012's 62,378,344 less the 11x11 kernels
        ("wrn28_10", dict(num_classes=10, image_size=32), 36_479_194),
        ("wrn40_4", dict(num_classes=10, image_size=32), 8_949_210),
    ],
)
def test_exact_parameter_counts(name, kwargs, params):
    assert count(on_meta(lambda: create_model(name, **kwargs))) == params


def randomize_norms(model: nn.Module) -> None:
    """BN and GN parameters and statistics away from their 1/0 init, so a swapped or misnamed norm shows."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 2.0)


# One model per family (and the odd ones out: TensorFlow's BN eps in B5), at a small input it takes.
LOGIT_CASES = [
    ("alexnet", 64),
    ("vgg11_bn", 32),
    ("googlenet", 64),
    ("inception_v3", 75),
    ("inception_v4", 75),
    ("resnet18", 64),
    ("resnext50_32x4d", 64),
    ("se_resnet50", 64),
    ("bit_resnet50x1", 64),
    ("densenet121", 64),
    ("xception", 71),
    ("mobilenet_v1", 32),
    ("mobilenet_v2", 32),
    ("mobilenet_v3_large", 32),
    ("mobilenet_v3_small", 32),
    ("cspresnet50", 64),
    ("efficientnet_b0", 32),
    ("efficientnet_b5", 32),
    ("regnet_x_400mf", 32),
    ("regnet_y_400mf", 32),
]


@pytest.mark.parametrize("name, size", LOGIT_CASES)
def test_loads_the_reference_state_dict_and_gives_its_logits(name, size):
    torch.manual_seed(0)
    theirs = reference(name)
    randomize_norms(theirs)
    stem = {"stem": "imagenet"} if "stem" in get_entry(name).knobs() else {}  # the library's, at any size
    ours = create_model(name, image_size=size, **stem)
    ours.load_state_dict(theirs.state_dict())
    x = torch.randn(2, 3, size, size)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))


@pytest.mark.parametrize("name", first_of_each_family(ZOO))
def test_forward_and_backward_on_fashion_mnist_sized_images(name):
    """28x28 grey images, the smallest the zoo meets; the small-input stems are chosen automatically."""
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, image_size=28).train()
    out = model(torch.randn(2, 1, 28, 28))
    logits, aux = out if isinstance(out, tuple) else (out, [])
    assert logits.shape == (2, 10) and all(a.shape == (2, 10) for a in aux)
    target = torch.tensor([1, 7])
    loss = F.cross_entropy(logits, target) + sum(model.aux_weight * F.cross_entropy(a, target) for a in aux)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize(
    "name, size", [("resnet50", 224), ("googlenet", 224), ("inception_v3", 299), ("efficientnet_b0", 224)]
)
def test_forward_at_the_papers_resolution(name, size):
    model = create_model(name, image_size=size).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, size, size)).shape == (1, 1000)


@pytest.mark.parametrize("name", ["lenet5", "fmnist_cnn", "nin", "resnet18", "mobilenet_v3_small", "regnet_x_400mf"])
def test_a_few_sgd_steps_on_synthetic_data(name):
    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_chans=1, image_size=28, width_mult=0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    images, labels = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


@pytest.mark.parametrize("name, weight", [("googlenet", 0.3), ("inception_v3", 0.4)])
def test_auxiliary_classifiers_only_in_training(name, weight):
    model = create_model(name, num_classes=10, image_size=32, width_mult=0.25)
    assert model.aux_weight == weight
    logits, aux = model.train()(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, 10) and len(aux) == (2 if name == "googlenet" else 1)
    assert model.eval()(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    without = create_model(name, num_classes=10, image_size=32, width_mult=0.25, aux_logits=False)
    assert without.train()(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("suffix", [".pt", ".safetensors"])
def test_weights_file_from_torchvision(tmp_path, suffix):
    torch.manual_seed(0)
    theirs = torchvision.models.resnet18()
    randomize_norms(theirs)
    path = tmp_path / f"resnet18{suffix}"
    if suffix == ".pt":
        torch.save(theirs.state_dict(), path)
    else:
        save_file(theirs.state_dict(), path)
    ours = create_model("resnet18", image_size=64, stem="imagenet", weights=str(path))
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x))
    # ImageNet weights start a 10-class grey-image run: head re-initialized, input conv summed over RGB
    grey = create_model("resnet18", num_classes=10, in_chans=1, image_size=64, stem="imagenet", weights=str(path))
    assert grey.fc.weight.shape == (10, 512)
    torch.testing.assert_close(grey.conv1.weight, theirs.conv1.weight.sum(1, keepdim=True))
    torch.testing.assert_close(grey.layer4[1].conv2.weight, theirs.layer4[1].conv2.weight)
    with pytest.raises(ConfigError, match=r"^model\.weights: .* does not fit"):
        create_model("resnet34", image_size=64, stem="imagenet", weights=str(path))


def test_pretrained_without_a_counterpart_names_the_key():
    with pytest.raises(ConfigError, match=r"^model\.pretrained: nin has no"):
        create_model("nin", pretrained=True)


def test_compound_scaling():
    model = on_meta(lambda: create_model("resnet18", phi=2))  # depth x 1.2^2 = 1.44, width x 1.1^2 = 1.21
    assert len(model.layer1) == 3 and model.conv1.out_channels == 80
    scaled = on_meta(lambda: create_model("efficientnet_b0", phi=1, alpha=1.5, beta=1.0))
    assert count(scaled) > count(on_meta(lambda: create_model("efficientnet_b0")))
    assert compound_image_size(224, 0) == 224
    assert compound_image_size(224, 1) == 256 and compound_image_size(28, 1, 1.15) == 32
    with pytest.raises(ConfigError, match=r"^model\.phi: lenet5 has no depth_mult"):
        create_model("lenet5", phi=1)
    with pytest.raises(ConfigError, match=r"^model\.phi: "):
        create_model("resnet18", phi=-1)


# The first model of each family for the width and depth sweeps (built on meta: no memory, no init).
SWEEP = {}
for _name in ZOO:
    if "depth_mult" in get_entry(_name).knobs():
        SWEEP.setdefault(get_entry(_name).family, _name)


@pytest.mark.parametrize("name", sorted(SWEEP.values()))
def test_width_and_depth_multipliers_grow_the_model(name):
    size = 28 if name == "fmnist_cnn" else 224
    params = {
        (w, d): count(on_meta(lambda: create_model(name, image_size=size, width_mult=w, depth_mult=d)))
        for w, d in [(0.5, 1.0), (1.0, 1.0), (2.0, 1.0), (1.0, 2.0)]
    }
    assert params[0.5, 1.0] < params[1.0, 1.0] < params[2.0, 1.0]
    assert params[1.0, 1.0] < params[1.0, 2.0]


def test_resnet_shortcut_options_and_se():
    sizes = {s: count(on_meta(lambda: create_model("resnet34", shortcut=s))) for s in "ABC"}
    assert sizes["A"] < sizes["B"] < sizes["C"]  # A is parameter-free, C projects every shortcut
    model = create_model("resnet18", num_classes=10, image_size=32, width_mult=0.25, shortcut="A", se=True)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize(
    "name, knobs, key",
    [
        ("resnet18", dict(depth=3), "depth"),
        ("resnet18", dict(width_mult="wide"), "width_mult"),
        ("resnet18", dict(width_mult=0), "width_mult"),
        ("densenet121", dict(growth_rate=12.5), "growth_rate"),
        ("resnet18", dict(stem="tiny"), "stem"),
        ("resnet50", dict(shortcut="D"), "shortcut"),
        ("alexnet", dict(channels="2011"), "channels"),
        ("regnet_x_400mf", dict(w0=20), "w0"),
        ("mobilenet_v3_large", dict(size="medium"), "size"),
        ("vgg11", dict(depths=[1, 1]), "depths"),
        ("compact_cnn", dict(depths=[1, 1]), "depths"),
        ("compact_cnn", dict(widths=[8] * 8, depths=[1] * 8), "widths"),
        ("wrn28_10", dict(depth=27), "depth"),
        ("wrn40_4", dict(depth=4), "depth"),
        ("wrn28_10", dict(widen_factor=0), "widen_factor"),
    ],
)
def test_bad_knobs_name_their_key(name, knobs, key):
    with pytest.raises(ConfigError, match=rf"^model\.{key}: "):
        on_meta(lambda: create_model(name, **knobs))


def test_alexnet_2012_and_lrn():
    model = create_model("alexnet", num_classes=10, image_size=32, channels="2012", lrn=True, width_mult=0.25)
    assert any(isinstance(m, nn.LocalResponseNorm) for m in model.modules())
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_zfnet_follows_the_papers_figure_3():
    """Zeiler and Fergus's figure 3 at 224: 7x7/2 and 5x5/2 convs, pools of 3/2 (Caffe's ceil mode),
    contrast normalization after the first two layers, 4096-4096 with dropout."""
    model = on_meta(lambda: create_model("zfnet"))
    x, maps = torch.empty(1, 3, 224, 224, device="meta"), []
    for layer in model.features:
        x = layer(x)
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            maps.append(tuple(x.shape[1:]))
    assert maps == [
        (96, 110, 110),
        (96, 55, 55),
        (256, 26, 26),
        (256, 13, 13),
        (384, 13, 13),
        (384, 13, 13),
        (256, 13, 13),
        (256, 6, 6),
    ]
    assert [m.kernel_size for m in model.features if isinstance(m, nn.Conv2d)][:2] == [(7, 7), (5, 5)]
    assert sum(isinstance(m, nn.LocalResponseNorm) for m in model.modules()) == 2
    assert [m.out_features for m in model.classifier if isinstance(m, nn.Linear)] == [4096, 4096, 1000]
    assert sum(isinstance(m, nn.Dropout) for m in model.classifier) == 2


def test_wide_resnets_have_the_papers_parameter_counts():
    """Zagoruyko and Komodakis's CIFAR-10 table, in millions: WRN-28-10 36.5, WRN-40-4 8.9; other WRN-d-k
    through depth and widen_factor (WRN-16-8 11.0, WRN-40-10 55.8)."""

    def millions(name, **knobs):
        return round(count(on_meta(lambda: create_model(name, num_classes=10, image_size=32, **knobs))) / 1e6, 1)

    assert millions("wrn28_10") == 36.5 and millions("wrn40_4") == 8.9
    assert millions("wrn28_10", depth=16, widen_factor=8) == 11.0
    assert millions("wrn40_4", widen_factor=10) == 55.8


@pytest.mark.parametrize("in_chans, size", [(1, 28), (3, 32), (3, 224)])
def test_zfnet_and_wrn_forward_at_the_data_sizes(in_chans, size):
    """Fashion-MNIST, CIFAR and ImageNet sizes; the last maps are not collapsed: ZFNet's cifar stem keeps 28
    and 32 at 3x3 and 4x4 before its 6x6 pool, WRN's groups take 32 to the paper's 8x8."""
    torch.manual_seed(0)
    x = torch.randn(2, in_chans, size, size)
    zfnet = create_model("zfnet", num_classes=10, in_chans=in_chans, image_size=size, width_mult=0.125).eval()
    wrn = create_model("wrn28_10", num_classes=10, in_chans=in_chans, image_size=size, depth=10, widen_factor=1).eval()
    with torch.no_grad():
        assert zfnet(x).shape == wrn(x).shape == (2, 10)
        assert zfnet.features(x).shape[-1] == {28: 3, 32: 4, 224: 6}[size]
        assert wrn.layer3(wrn.layer2(wrn.layer1(wrn.conv1(x)))).shape[-1] == size // 4


def test_zfnet_and_wrn_width_and_depth_multipliers():
    zfnet = {
        (w, d): on_meta(lambda: create_model("zfnet", width_mult=w, depth_mult=d))
        for w, d in [(1.0, 1.0), (0.5, 1.0), (1.0, 2.0)]
    }
    assert zfnet[0.5, 1.0].features[0].out_channels == 48 and zfnet[0.5, 1.0].classifier[1].out_features == 2048
    assert [sum(isinstance(m, nn.Conv2d) for m in model.modules()) for model in zfnet.values()] == [5, 5, 8]
    assert count(zfnet[0.5, 1.0]) < count(zfnet[1.0, 1.0]) < count(zfnet[1.0, 2.0])
    wrn = on_meta(lambda: create_model("wrn28_10", num_classes=10, image_size=32, width_mult=0.5, depth_mult=2.0))
    assert [len(wrn.layer1), len(wrn.layer2), len(wrn.layer3)] == [8, 8, 8]  # WRN-28's 4 per group, doubled
    assert [wrn.conv1.out_channels, wrn.layer1[0].conv1.out_channels, wrn.fc.in_features] == [8, 80, 320]
    tiny = on_meta(lambda: create_model("wrn40_4", depth=10, widen_factor=1))
    assert [len(tiny.layer1), tiny.layer1[0].shortcut, tiny.layer2[0].shortcut.stride] == [1, None, (2, 2)]
    assert tiny.layer1[0].dropout.p == 0.3  # between the convs, the paper's CIFAR rate


@pytest.mark.parametrize(
    "name, knobs", [("zfnet", dict(width_mult=0.125)), ("wrn28_10", dict(depth=10, widen_factor=1))]
)
def test_zfnet_and_wrn_train_through_the_trainer(tmp_path, name, knobs):
    """Two batches of synthetic 32x32 images through the real trainer (WRN-10-1 for WRN-28-10)."""
    overrides = [o for o in SMOKE if not o.startswith("model")] + [f"model={name}"]
    overrides += [f"model.{key}={value}" for key, value in knobs.items()]
    summary = train(make_config(tmp_path, *overrides, "train.epochs=1", "train.limit_train_batches=2"))
    assert summary["status"] == "completed" and summary["model"] == name
    assert summary["params"] == count(on_meta(lambda: create_model(name, num_classes=10, image_size=32, **knobs)))


def test_torchvision_entry():
    model = create_model("mobilenet_v3_small", source="torchvision", num_classes=10, in_chans=1)
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"^model\.name: torchvision has no"):
        create_model("resnet9000", source="torchvision")


@pytest.mark.parametrize("path", sorted((CONF / "model").glob("*.yaml")), ids=lambda p: p.stem)
def test_model_config_lists_exactly_the_knobs(path, tmp_path):
    config = OmegaConf.to_container(make_config(tmp_path, f"model={path.stem}").model)
    entry = get_entry(config["source"] if config.get("source") else config["name"])
    knobs = {**GENERIC_KNOBS, **entry.knobs()}
    knobs.pop("arch", None)  # a library entry's `name` is its arch
    assert set(config) - {"name", "source", "weights"} == set(knobs)
    if path.stem == config["name"]:  # a model's own file keeps its defaults
        assert {k: config[k] for k in knobs} == {k: list(v) if isinstance(v, tuple) else v for k, v in knobs.items()}


def test_every_model_has_a_config():
    assert set(ZOO) | set(LIBRARIES) <= {path.stem for path in (CONF / "model").glob("*.yaml")}


@pytest.mark.slow  # builds every EfficientNet at its paper's size to count its FLOPs
def test_listing(capsys):
    assert list_zoo(["family=mobilenet", "input_size=32", "num_classes=10"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "multiply-adds" in lines[0] and lines[1].split() == ["name", "family", "input", "crop", "params", "GFLOPs"]
    assert [line.split()[0] for line in lines[2:]] == list_models("mobilenet")
    assert list_zoo(["family=wrn", "input_size=32", "num_classes=10"]) == 0
    rows = {line.split()[0]: line.split()[4] for line in capsys.readouterr().out.splitlines()[2:]}
    assert rows == {"wrn28_10": "36,479,194", "wrn40_4": "8,949,210"}
    assert list_zoo(["family=efficientnet"]) == 0  # without input_size: each at its paper's image side
    native = {line.split()[0]: line.split()[2:4] for line in capsys.readouterr().out.splitlines()[2:]}
    assert native["efficientnet_b0"] == ["224", "0.875"] and native["efficientnet_b3"] == ["300", "0.904"]
    assert list_zoo(["family=nope"]) == 2 and list_zoo(["size=3"]) == 2 and list_zoo(["input_size=0"]) == 2
    assert capsys.readouterr().err.count("cnnbench: error: ") == 3
    assert list_zoo(["--help"]) == 0 and "python -m cnnbench.models [family=resnet]" in capsys.readouterr().out


def output_layer(model: nn.Module, name: str, x: torch.Tensor) -> torch.Tensor:
    """What module `name` outputs when the model sees `x` (its class maps averaged, for NiN's and BiT's conv
    heads)."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda module, args, out: seen.append(out))
    model.eval()(x)
    handle.remove()
    return seen[0] if seen[0].dim() == 2 else seen[0].mean((2, 3))


@pytest.mark.parametrize("name", first_of_each_family(ZOO))
def test_every_model_declares_its_classifier(name):
    """timm's way: the family names its head (ModelEntry.classifier) and create_model puts it in
    pretrained_cfg, where freeze=backbone, new_head and optimizer.layer_decay read it."""
    model = on_meta(lambda: create_model(name, num_classes=7))
    assert model.pretrained_cfg["classifier"] == get_entry(name).classifier
    head = model.get_submodule(get_entry(name).classifier)
    last = [m for m in head.modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]
    assert (last.out_features if isinstance(last, nn.Linear) else last.out_channels) == 7


@pytest.mark.parametrize(
    "name, kwargs",
    [
        ("vgg11", dict(image_size=32, width_mult=0.125)),  # its 4096-unit hidden layers, narrowed to 512
        ("fmnist_cnn", dict(in_chans=1, image_size=28)),  # Dense 128-64
    ],
)
def test_the_declared_classifier_is_the_output_layer_even_at_a_hidden_width(name, kwargs):
    """With as many classes as the last hidden layer has units, the declared head is still the one whose
    output is the logits, and freeze=backbone trains it alone."""
    layout = on_meta(lambda: create_model(name, **kwargs))
    hidden = [m for n, m in layout.named_modules() if isinstance(m, nn.Linear) and n != get_entry(name).classifier]
    model = create_model(name, num_classes=hidden[-1].out_features, freeze="backbone", **kwargs)
    x = torch.randn(2, kwargs.get("in_chans", 3), kwargs["image_size"], kwargs["image_size"])
    head = model.pretrained_cfg["classifier"]
    assert torch.equal(output_layer(model, head, x), model(x))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {f"{head}.weight", f"{head}.bias"}


def test_nin_fine_tunes_its_class_maps_onto_other_classes(tmp_path):
    """NiN's classifier is its last mlpconv block, every conv of which has one channel per class (the old
    guess, the last layer with num_classes outputs, named only its last 1x1 conv, so new weights for other
    classes did not fit: "7.2.bias is [10] there, [4] here"): new_head starts the whole block afresh,
    freeze=backbone trains it all."""
    kwargs = dict(image_size=32, width_mult=0.25)
    trained = create_model("nin", num_classes=10, **kwargs)
    save_file(trained.state_dict(), tmp_path / "nin.safetensors")
    model = create_model(
        "nin", num_classes=4, weights=str(tmp_path / "nin.safetensors"), new_head=True, freeze="backbone", **kwargs
    )
    assert model.pretrained_cfg["classifier"] == "classifier"
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items() if not k.startswith("classifier."))
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {
        n for n, _ in model.classifier.named_parameters(prefix="classifier")
    }
    assert len([m for m in model.classifier.modules() if isinstance(m, nn.Conv2d)]) == 3
    assert output_layer(model, "classifier", torch.randn(2, 3, 32, 32)).shape == (2, 4)


class HeadFirst(nn.Module):
    """A user's network that registers its head before its stem: with as many classes as stem channels, the
    guess (the last layer with num_classes outputs) names the stem; the class's `classifier` names the head."""

    classifier = "head"

    def __init__(self, num_classes=10, in_chans=3, width: int = 16):
        super().__init__()
        self.head = nn.Linear(width, num_classes)
        self.stem = nn.Conv2d(in_chans, width, 3, padding=1)

    def forward(self, x):
        return self.head(self.stem(x).mean((2, 3)))


class Unnamed(HeadFirst):
    classifier = None


class Misnamed(HeadFirst):
    classifier = "fc"


def test_a_user_model_names_its_classifier_or_has_it_guessed():
    target = f"{__name__}.HeadFirst"
    model = create_model("headfirst", num_classes=16, image_size=8, _target_=target, freeze="backbone")
    assert classifier_name(model, 16) == "stem"  # what the guess alone would have trained
    assert model.pretrained_cfg["classifier"] == "head"
    assert {n for n, p in model.named_parameters() if p.requires_grad} == {"head.weight", "head.bias"}
    guessed = create_model("unnamed", num_classes=10, image_size=8, _target_=f"{__name__}.Unnamed")
    assert guessed.pretrained_cfg["classifier"] == "head"  # no other layer has 10 outputs
    with pytest.raises(
        ConfigError,
        match=r"^model\._target_: misnamed names its classifier 'fc', which it does "
        r"not have$",
    ):
        create_model("misnamed", num_classes=10, image_size=8, _target_=f"{__name__}.Misnamed")


@pytest.mark.parametrize(
    "name, knobs, message",
    [
        (
            "resnet18",
            dict(groups=32),
            "model.groups: ResNet's basic blocks take groups=1 and width_per_group=64 "
            "(ResNeXt needs block=bottleneck), got 32",
        ),
        (
            "resnet34",
            dict(width_per_group=128),
            "model.width_per_group: ResNet's basic blocks take groups=1 and "
            "width_per_group=64 (ResNeXt needs block=bottleneck), got 128",
        ),
        ("googlenet", dict(branch3_kernel=4), "model.branch3_kernel: one of 3, 5, got 4"),
        (
            "inception_v3",
            dict(source="torchvision", kwargs={"aux_logits": True}),
            "model.kwargs: torchvision's aux_logits outputs are not cnnbench's; model=googlenet and model=inception_v3 "
            "train auxiliary classifiers",
        ),
        (
            "resnet18",
            dict(pretrained=True, weights="resnet18.pt"),
            "model.pretrained: model.weights replaces the library weights; pass one or the other",
        ),
        (
            "resnet10t",
            dict(source="timm", pretrained=True, weights="resnet10t.pt"),
            "model.pretrained: model.weights replaces the library weights; pass one or the other",
        ),
    ],
)
def test_knobs_a_model_cannot_honour_are_refused(name, knobs, message):
    with pytest.raises(ConfigError) as error:
        on_meta(lambda: create_model(name, **knobs))
    assert str(error.value) == message


@pytest.mark.slow  # a real command in a subprocess
def test_basic_blocks_refuse_resnext_groups_from_the_command_line(tmp_path):
    result = run_cli(
        "data=synthetic", "model=resnet18", "model.groups=32", "hardware=cpu", f"hydra.run.dir={tmp_path}", timeout=120
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "cnnbench: error: model.groups: ResNet's basic blocks take groups=1 and width_per_group=64 "
        "(ResNeXt needs block=bottleneck), got 32"
    )


@pytest.mark.parametrize("name", ["lenet5", "fmnist_cnn", "compact_cnn", "nin"])
def test_checkpoints_from_before_the_head_had_a_name_still_load(name, tmp_path):
    """lenet5, fmnist_cnn, compact_cnn and nin key their head by name now (fc, classifier); the state
    dicts written when it was keyed by its position load through load_state_dict and model.weights=."""
    model = create_model(name, num_classes=10, in_chans=1, image_size=28)
    positions = {name: str(i) for i, name in enumerate(model._modules)}
    old = {
        ".".join([positions[k.split(".")[0]], *k.split(".")[1:]]): v.clone() + 1 for k, v in model.state_dict().items()
    }
    assert not any(k.startswith(("fc.", "classifier.")) for k in old)
    fresh = create_model(name, num_classes=10, in_chans=1, image_size=28)
    fresh.load_state_dict(dict(old))
    torch.save(old, tmp_path / "old.pt")
    loaded = create_model(name, num_classes=10, in_chans=1, image_size=28, weights=str(tmp_path / "old.pt"))
    for key, value in model.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value + 1) and torch.equal(loaded.state_dict()[key], value + 1), key
