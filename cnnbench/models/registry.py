"""The model registry: every architecture is a named constructor with keyword knobs.

`create_model(name, num_classes, in_chans, image_size, **knobs)` is the one way cnnbench builds a
network; the knobs a constructor accepts are its design space, read from its signature. Every model
also takes the generic knobs `pretrained` (its reference library's weights), `freeze` and `new_head`
(fine-tuning) and `phi`, `alpha`, `beta`, `gamma` (compound scaling, Tan and Le 2019).
Every model names its classifier as timm's do, in `model.pretrained_cfg["classifier"]`: each family declares
it (`register_model(..., classifier="fc")`); `freeze=backbone`, `new_head` and timm's layer-wise learning
rates (`optimizer.layer_decay`) read it.
A model with auxiliary classifiers (googlenet, inception_v3) has an `aux_weight` attribute and, in
training mode with `aux_logits`, returns `(logits, [aux_logits, ...])`: the trainer adds
`aux_weight * loss(aux)` for each; in eval mode it returns the logits alone.
"""

import functools
import inspect
import logging
import os
import pickle
import warnings
from dataclasses import dataclass
from typing import Callable

import safetensors.torch
import timm
import torch
import torch.nn as nn
import torchvision
from hydra.utils import get_object
from timm.models import adapt_input_conv
from timm.utils.model import freeze

from cnnbench.errors import ConfigError, short_list
from cnnbench.paths import FORMAT_PROBLEMS, file_format, unpickling_reason

log = logging.getLogger("cnnbench")

# Arguments every constructor receives from the data, not from model.* keys.
DATA_ARGS = ("num_classes", "in_chans", "image_size")

# The auxiliary classifiers of torchvision's googlenet and inception_v3: their weights are dropped when
# loaded into a model built without them.
AUX_HEADS = ("aux1.", "aux2.", "AuxLogits.")

# Knobs of every model, handled here rather than by the constructor.
GENERIC_KNOBS = {
    "pretrained": False,
    "freeze": "none",
    "new_head": False,
    "phi": 0,
    "alpha": 1.2,
    "beta": 1.1,
    "gamma": 1.15,
}


@dataclass(frozen=True)
class ModelEntry:
    name: str
    family: str
    fn: Callable[..., nn.Module]
    reference: str | None = None  # "torchvision:NAME" or "timm:NAME": the model it mirrors, weights included
    # What the model was designed for, as timm's default configs say it: the side of its training images on
    # ImageNet-like data, and the centre crop's share of the resized image when it is evaluated.
    input_size: int = 224
    crop_pct: float = 0.875
    # The classifier's module name(s), as timm's default configs give them: what `freeze=backbone` keeps
    # training and `new_head` starts afresh. None: the model names its own (timm's) or it is guessed.
    classifier: str | tuple[str, ...] | None = None

    def knobs(self) -> dict:
        """The constructor's keyword arguments and defaults, less those the data provides."""
        params = inspect.signature(self.fn).parameters.values()
        return {
            p.name: p.default
            for p in params
            if p.name not in DATA_ARGS and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
        }


_REGISTRY: dict[str, ModelEntry] = {}


def register_model(
    family: str,
    name: str | None = None,
    reference: str | None = None,
    *,
    input_size: int = 224,
    crop_pct: float = 0.875,
    classifier: str | tuple[str, ...] | None = None,
    **defaults,
):
    """Decorator: register a constructor under `name` (default: its function name) in `family`;
    `defaults` make a variant (resnet50 is the resnet constructor with its stage depths); `reference`
    names the torchvision or timm model whose parameters and state dict this one matches; `input_size`,
    `crop_pct` and `classifier` are its native image side, evaluation crop and head (ModelEntry)."""

    def wrap(fn):
        key = name or fn.__name__
        _REGISTRY[key] = ModelEntry(
            key,
            family,
            functools.partial(fn, **defaults) if defaults else fn,
            reference,
            input_size,
            crop_pct,
            classifier,
        )
        return fn

    return wrap


def native_input(name: str, source: str = "cnnbench") -> tuple[int, float]:
    """(input_size, crop_pct) the model was designed for: its registry entry's, or timm's default config for
    a timm model (torchvision's classifiers are 224 / 0.875 but Inception v3's 299)."""
    if source == "timm":
        cfg = timm.models.get_pretrained_cfg(name)
        return (cfg.input_size[-1], cfg.crop_pct) if cfg else (224, 0.875)
    if source == "torchvision":
        return (299, 0.875) if name == "inception_v3" else (224, 0.875)
    entry = get_entry(name)
    return entry.input_size, entry.crop_pct


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, e in _REGISTRY.items() if family is None or e.family == family)


def get_entry(name: str) -> ModelEntry:
    if name not in _REGISTRY:
        raise ConfigError(f"model.name: unknown model '{name}' (known: {', '.join(list_models())})")
    return _REGISTRY[name]


def check_choice(key: str, value: str, choices) -> None:
    if value not in choices:
        raise ConfigError(f"model.{key}: one of {', '.join(map(repr, choices))}, got {value!r}")


def user_entry(name: str, target: str) -> ModelEntry:
    """A model class of the user's own package (`model._target_: mypkg.nets.MyNet`): the keyword arguments
    of its constructor are its knobs, and it receives num_classes, in_chans and image_size where it takes them.
    Its classifier is the class's `classifier` attribute where that is a module name (or a tuple of them), or
    its instances' `pretrained_cfg["classifier"]` (timm's), else guessed: the last Linear or Conv2d layer
    with num_classes outputs (`classifier_name`)."""
    try:
        cls = get_object(target)
    except Exception as e:  # ImportError, AttributeError, ... all say the same to the user
        raise ConfigError(f"model._target_: cannot import {target} ({str(e).splitlines()[0]})") from None
    accepted = inspect.signature(cls).parameters

    @functools.wraps(cls)  # inspect.signature (ModelEntry.knobs) follows __wrapped__ to cls
    def build(**kwargs):
        return cls(**{k: v for k, v in kwargs.items() if k in accepted or k not in DATA_ARGS})

    declared = getattr(cls, "classifier", None)
    return ModelEntry(name, "user", build, classifier=declared if isinstance(declared, (str, tuple)) else None)


def checked_entry(name: str, source: str, knobs: dict) -> tuple[ModelEntry, dict]:
    """The registry entry that builds model `name` of `source` (cnnbench's zoo, timm, torchvision, or the
    user's `_target_`) and the knobs it receives, which it is checked to take."""
    if source != "cnnbench":
        name, knobs = source, {"arch": name, **knobs}
    knobs = dict(knobs)
    target = knobs.pop("_target_", None)
    entry = user_entry(name, target) if target else get_entry(name)
    check_knobs(entry, knobs)
    return entry, knobs


def check_knobs(entry: ModelEntry, knobs: dict) -> None:
    """Reject knobs the model does not take, and values of the wrong type, naming the key."""
    name, accepted = entry.name, {**GENERIC_KNOBS, **entry.knobs()}
    for key, value in knobs.items():
        if key not in accepted:
            raise ConfigError(f"model.{key}: not a knob of {name} (knobs: {', '.join(sorted(accepted))})")
        default = accepted[key]
        if default is None or default is inspect.Parameter.empty or value is None:
            continue
        wants_int = isinstance(default, int) and not isinstance(default, bool)
        if (
            isinstance(default, bool) != isinstance(value, bool)
            or (isinstance(default, (int, float)) and not isinstance(value, (int, float)))
            or (wants_int and not isinstance(value, int))
            or (isinstance(default, str) and not isinstance(value, str))
        ):
            raise ConfigError(f"model.{key}: expected {type(default).__name__}, got {value!r}")
        if key in ("width_mult", "depth_mult", "alpha", "beta", "gamma") and value <= 0:
            raise ConfigError(f"model.{key}: must be > 0, got {value}")
        if key == "phi" and value < 0:
            raise ConfigError(f"model.phi: must be >= 0, got {value}")


def compound_image_size(image_size: int, phi: int, gamma: float = 1.15) -> int:
    """The image side for compound scaling level `phi` (Tan and Le 2019): image_size * gamma**phi, rounded to a
    multiple of 4 as EfficientNet's hand-picked B1-B7 sizes are (240, 260, 300, 380, 456, 528, 600)."""
    return image_size if phi == 0 else 4 * round(image_size * gamma**phi / 4)


def create_model(
    name: str,
    num_classes: int = 1000,
    in_chans: int = 3,
    image_size: int | None = None,
    weights: str | None = None,
    source: str = "cnnbench",
    classes: list[str] | None = None,
    **knobs,
) -> nn.Module:
    """Build model `name` for the data's class count, channels and image size. `source=timm` (or
    `torchvision`) takes `name` from that library instead of cnnbench's zoo; `weights` is a state dict
    file to start from (`classes`, the data's class names, are checked against a checkpoint's); `phi` > 0
    multiplies depth_mult by alpha**phi and width_mult by beta**phi (the trainer scales the image by
    `compound_image_size`). Without `image_size`, the model is built for its native input (`native_input`)."""
    if image_size is None:
        image_size = native_input(name, source)[0]
    label = name  # for messages: the library's model, not the library
    entry, knobs = checked_entry(name, source, knobs)
    name = entry.name
    own = entry.knobs()
    generic = {k: knobs.pop(k, d) for k, d in GENERIC_KNOBS.items() if k not in own}
    if generic["phi"]:
        for key, base in (("depth_mult", generic["alpha"]), ("width_mult", generic["beta"])):
            if key not in own:
                raise ConfigError(f"model.phi: {name} has no {key} knob to scale")
            knobs[key] = knobs.get(key, own[key]) * base ** generic["phi"]
    check_choice("freeze", generic["freeze"], ("none", "backbone"))
    if weights and (generic.get("pretrained") or knobs.get("pretrained")):  # the file's would replace them
        raise ConfigError("model.pretrained: model.weights replaces the library weights; pass one or the other")
    model = entry.fn(num_classes=num_classes, in_chans=in_chans, image_size=image_size, **knobs)
    designed_for = native_input(label, source)[0] if source != "cnnbench" else entry.input_size
    if image_size < designed_for and not takes_images(model, in_chans, image_size):  # smaller than its paper's
        unfetched = {**knobs, "pretrained": False} if "pretrained" in knobs else knobs  # timm's own knob
        check_image_size(
            label,
            in_chans,
            image_size,
            lambda size: entry.fn(num_classes=num_classes, in_chans=in_chans, image_size=size, **unfetched),
        )
    declare_classifier(model, entry, num_classes)
    if generic.get("pretrained"):
        if entry.reference is None:
            raise ConfigError(
                f"model.pretrained: {name} has no torchvision or timm counterpart; pass model.weights=PATH"
            )
        fit_state_dict(model, reference_state_dict(entry.reference), entry.reference, "pretrained")
    if weights:
        load_weights(model, weights, classes, generic["new_head"])
    if generic["freeze"] == "backbone":
        if not (heads := classifier_names(model)):
            raise ConfigError(f"model.freeze: {name} has no layer with {num_classes} outputs to keep training")
        freeze(model, outside(model, heads))
    return model


def takes_images(model: nn.Module, in_chans: int, image_size: int) -> bool:
    """Whether a batch of (in_chans, image_size, image_size) images gets through the model: a forward on the
    meta device (shapes only, no compute), its weights swapped for meta tensors."""
    meta = {name: torch.empty_like(t, device="meta") for name, t in [*model.named_parameters(), *model.named_buffers()]}
    try:
        with torch.no_grad():
            torch.func.functional_call(model, meta, torch.empty(2, in_chans, image_size, image_size, device="meta"))
    except (RuntimeError, ValueError, IndexError, AssertionError):  # "Output size is too small", "mat1 and mat2 ..."
        return False
    return True


def check_image_size(
    name: str, in_chans: int, image_size: int, build: Callable[[int], nn.Module], largest: int = 4096
) -> None:
    """Stop, naming the smallest image size model `name` takes (models built on the meta device for each size
    tried, as some size their layers by it); no message when no size up to `largest` gets through, as then the
    failure is not the size's, and the model's own error says more."""

    def fits(size):
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "Initializing zero-element tensors" of a size that leaves nothing
            try:
                model = build(size)
            except (RuntimeError, ValueError, ConfigError):
                return False
        return takes_images(model, in_chans, size)

    fails, works = image_size, image_size * 2
    while not fits(works):
        fails, works = works, works * 2
        if works > largest:
            return
    while works - fails > 1:  # bisection: sizes between a failing and a working one
        middle = (fails + works) // 2
        fails, works = (fails, middle) if fits(middle) else (middle, works)
    raise ConfigError(f"model.name={name}: needs data.image_size >= {works}, got {image_size}")


def declare_classifier(model: nn.Module, entry: ModelEntry, num_classes: int) -> None:
    """Name the model's classifier in `model.pretrained_cfg` (timm's place): its entry's, else the one its
    library gave it (timm's models), else the guess (torchvision's and user models that name none)."""
    library_cfg = getattr(model, "pretrained_cfg", None) or {}
    if head := entry.classifier:
        modules = dict(model.named_modules())
        if missing := [module for module in ((head,) if isinstance(head, str) else head) if module not in modules]:
            key = "model._target_" if entry.family == "user" else "model.name"
            raise ConfigError(f"{key}: {entry.name} names its classifier {missing[0]!r}, which it does not have")
    elif not (head := library_cfg.get("classifier") or classifier_name(model, num_classes)):
        return
    model.pretrained_cfg = {**library_cfg, "classifier": head}


def classifier_names(model: nn.Module) -> tuple[str, ...]:
    """The module names of the model's classifier(s) (`declare_classifier`), () for none."""
    head = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    return (head,) if isinstance(head, str) else tuple(head or ())


def classifier_name(model: nn.Module, num_classes: int) -> str | None:
    """The guess for models that do not name their classifier: the last Linear or conv layer that outputs
    the classes (after any auxiliary classifier's). A hidden layer of as many units registered after the
    head would fool it: cnnbench's families declare theirs."""
    names = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear)
        and m.out_features == num_classes
        or isinstance(m, nn.Conv2d)
        and m.out_channels == num_classes
    ]
    return names[-1] if names else None


def outside(model: nn.Module, heads: tuple[str, ...]) -> list[str]:
    """The largest submodules that hold none of `heads`: what `freeze=backbone` freezes (timm's freeze
    turns their batch norms into FrozenBatchNorm2d, so not even their statistics move)."""

    def holds_head(name):
        return any(head == name or head.startswith(name + ".") for head in heads)

    return [
        name
        for name, _ in model.named_modules()
        if name
        and not holds_head(name)
        and not name.startswith(tuple(head + "." for head in heads))
        and (not (parent := name.rpartition(".")[0]) or holds_head(parent))
    ]


def reference_state_dict(reference: str) -> dict:
    """The ImageNet weights of "torchvision:NAME" or "timm:NAME" (needs the network or their cache)."""
    library, arch = reference.split(":")
    try:
        if library == "torchvision":
            return torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(progress=False)
        return timm.create_model(arch, pretrained=True).state_dict()
    except (OSError, RuntimeError) as e:  # no network and nothing cached
        raise ConfigError(
            f"model.pretrained: could not fetch {reference} weights ({e}); "
            f"offline, save them once and pass model.weights=PATH"
        ) from None


def load_weights(model: nn.Module, path: str, classes: list[str] | None = None, new_head: bool = False) -> None:
    """Load a state dict file as data (never code); a mismatch names the file and the keys. A checkpoint's
    classifier is kept only for the same classes: as many other ones would be silently misnamed."""
    path = os.path.expanduser(path)  # a quoted '~/...' reaches here as it was typed
    kind = file_format(path)  # by its first bytes, whatever its name
    if kind not in ("torch", "safetensors"):
        raise ConfigError(f"model.weights: {path} {FORMAT_PROBLEMS[kind].format(wants='.pt or .safetensors')}")
    try:
        if kind == "safetensors":
            state = safetensors.torch.load_file(path)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ConfigError(f"model.weights: {path} is not a state dict: {unpickling_reason(e)}") from None
    except (
        RuntimeError,
        EOFError,
        AttributeError,
        OSError,
        ValueError,
        KeyError,
        IndexError,
        TypeError,
        safetensors.SafetensorError,
    ) as e:
        raise ConfigError(f"model.weights: {path} is not a state dict: {str(e).splitlines()[0]}") from None
    if not isinstance(state, dict):
        raise ConfigError(f"model.weights: {path} is not a state dict (it holds a {type(state).__name__})")
    trained_on = state.get("classes")  # a cnnbench checkpoint's; a bare state dict names none
    state = trained_weights(state)
    if trained_on and classes and len(trained_on) == len(classes) and trained_on != classes and not new_head:
        raise ConfigError(
            f"model.weights: {path} was trained on other classes ({short_list(trained_on)}; here "
            f"{short_list(classes)}); model.new_head=true trains a new classifier for these"
        )
    if new_head:
        heads = tuple(head + "." for head in classifier_names(model))
        state |= {k: v for k, v in model.state_dict().items() if k.startswith(heads)}
    fit_state_dict(model, state, path, "weights")


def trained_weights(state: dict) -> dict:
    """A cnnbench checkpoint's weights that its run names best (the EMA's where they validated better, with
    train.ema_decay), or a bare state dict itself."""
    return state["ema"] if state.get("best", {}).get("weights") == "ema" else state.get("model", state)


def positional_keys_load(model: nn.Sequential) -> nn.Sequential:
    """Checkpoints written before this Sequential named some of its layers (the head `fc`, NiN's `classifier`)
    keyed them by position: they still load, through load_state_dict and model.weights= alike."""
    model.positional_names = {str(i): name for i, name in enumerate(model._modules) if name != str(i)}
    model.register_load_state_dict_pre_hook(lambda module, state, prefix, *_: by_name(module, state, prefix))
    return model


def by_name(model: nn.Module, state: dict, prefix: str = "") -> dict:
    """`state` with positional keys renamed to `model`'s layer names (positional_keys_load), in place."""
    for key in [k for k in state if k.startswith(prefix)]:
        index, _, rest = key[len(prefix) :].partition(".")
        if index in getattr(model, "positional_names", {}):
            state[f"{prefix}{model.positional_names[index]}.{rest}"] = state.pop(key)
    return state


def fit_state_dict(model: nn.Module, state: dict, source: str, key: str) -> None:
    """Load `state` into `model`: a classifier for another class count keeps its initialization and an input
    conv for other channels is adapted (timm's adapt_input_conv), so ImageNet weights start a Fashion-MNIST
    run; any other difference is an error naming `source`."""
    own = model.state_dict()
    state = {k: v for k, v in by_name(model, dict(state)).items() if k in own or not k.startswith(AUX_HEADS)}
    # a fine-tuned model's frozen batch norms count no batches
    state |= {k: v for k, v in own.items() if k.endswith("num_batches_tracked") and k not in state}
    if own.keys() != state.keys():
        missing, unexpected = sorted(own.keys() - state.keys()), sorted(state.keys() - own.keys())
        raise ConfigError(
            f"model.{key}: {source} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]})"
        )
    heads = {
        name.rsplit(".", 1)[0]
        for name, value in state.items()  # layers whose outputs are classes
        if name.endswith("weight")
        and value.dim() in (2, 4)
        and value.shape[0] != own[name].shape[0]
        and value.shape[1:] == own[name].shape[1:]
    }
    first_conv = next((name for name, value in own.items() if value.dim() == 4), None)
    declared = tuple(head + "." for head in classifier_names(model))  # NiN's class-wide 1x1 convs too
    fitted = {}
    for name, value in state.items():
        target = own[name]
        if value.shape == target.shape:
            fitted[name] = value
        elif name.rsplit(".", 1)[0] in heads or name.startswith(declared):
            fitted[name] = target
        elif name == first_conv and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
            # timm's rule (channels summed, or repeated and scaled): a gray image and its RGB copy respond alike
            fitted[name] = adapt_input_conv(target.shape[1], value, base_chans=value.shape[1])
            log.warning(
                f"model.{key}: {name} of {source} adapted from {value.shape[1]} input channels to "
                f"{target.shape[1]} (timm's adapt_input_conv)"
            )
        else:
            raise ConfigError(
                f"model.{key}: {source} does not fit this model: {name} is "
                f"{list(value.shape)} there, {list(target.shape)} here"
            )
    model.load_state_dict(fitted)
