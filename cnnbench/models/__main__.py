"""`python -m cnnbench.models [family=resnet] [input_size=224] [num_classes=1000] [in_chans=3]` prints the
zoo: name, family, native input (image side and evaluation crop), parameters and GFLOPs on one image at
that input, or at `input_size` where given (torch.utils.flop_counter, counted on the meta device so even
the largest models cost nothing). The `timm` and `torchvision` entries, which stand for
any model of those libraries, are not listed."""

import sys

import torch
from torch.utils.flop_counter import FlopCounterMode

from cnnbench.errors import ConfigError

from . import create_model, get_entry, list_models
from .registry import native_input

DEFAULTS = {"family": None, "input_size": None, "num_classes": 1000, "in_chans": 3}
LIBRARIES = ("timm", "torchvision")


def parse_args(argv: list[str]) -> dict:
    args = dict(DEFAULTS)
    for arg in argv:
        key, _, value = arg.partition("=")
        if key not in DEFAULTS or not value:
            raise ConfigError(f"{arg}: expected key=value with key one of {', '.join(DEFAULTS)}")
        if key != "family" and not (value.isdigit() and int(value) > 0):
            raise ConfigError(f"{key}: expected a positive integer, got {value!r}")
        args[key] = value if key == "family" else int(value)
    families = sorted({get_entry(name).family for name in list_models()} - set(LIBRARIES))
    if args["family"] is not None and args["family"] not in families:
        raise ConfigError(f"family: no family {args['family']!r} (families: {', '.join(families)})")
    return args


def measure(name: str, input_size: int, num_classes: int, in_chans: int) -> tuple[int, float | None]:
    """Parameters and GFLOPs (None where the model cannot take the input size)."""
    with torch.device("meta"):
        model = create_model(name, num_classes=num_classes, in_chans=in_chans, image_size=input_size).eval()
        image = torch.empty(1, in_chans, input_size, input_size)
    params = sum(p.numel() for p in model.parameters())
    try:
        with FlopCounterMode(display=False) as counter:
            model(image)
    except RuntimeError:  # the image is too small for this architecture's downsampling
        return params, None
    return params, counter.get_total_flops() / 1e9


def main(argv: list[str]) -> int:
    if {"-h", "--help"} & set(argv):
        print(__doc__)
        return 0
    try:
        args = parse_args(argv)
    except ConfigError as e:
        print(f"cnnbench: error: {e}", file=sys.stderr)
        return 2
    names = [n for n in list_models(args["family"]) if get_entry(n).family not in LIBRARIES]
    given = args["input_size"]
    print(
        f"# {'each model at its native input' if given is None else f'{given}x{given} images'}, "
        f"{args['in_chans']} channels, {args['num_classes']} classes; "
        f"GFLOPs = 2 x multiply-adds / 1e9, for one image"
    )
    rows = [("name", "family", "input", "crop", "params", "GFLOPs")]
    for name in names:
        native, crop_pct = native_input(name)
        size = given or native
        params, gflops = measure(name, size, args["num_classes"], args["in_chans"])
        rows.append(
            (
                name,
                get_entry(name).family,
                str(size),
                f"{crop_pct:.3f}",
                f"{params:,}",
                "n/a" if gflops is None else f"{gflops:.3f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) if i < 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
