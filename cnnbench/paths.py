"""Paths a user gives: what a file holds before it is parsed, so that a mistake gets a message that says so."""
from pathlib import Path

ZIP_MAGIC = b"PK\x03\x04"  # torch.save's format since torch 1.6
PICKLE_PROTOCOL_2 = b"\x80"  # torch.save's legacy format, and plain pickles

# Why a file given as a checkpoint or weights cannot be one; "{wants}" is what to pass instead.
FORMAT_PROBLEMS = {
    "missing": "no such file",
    "directory": "is a directory; pass a {wants} file",
    "empty": "is empty (0 bytes)",
    "text": "is not a checkpoint file (it is text)",
    "unknown": "is not a checkpoint file (an unknown format: neither torch.save's nor safetensors)",
}


def file_format(path: str | Path) -> str:
    """'torch' (torch.save's zip or pickle), 'safetensors', or a key of FORMAT_PROBLEMS, from the first bytes."""
    path = Path(path)
    if path.is_dir():
        return "directory"
    if not path.is_file():
        return "missing"
    with open(path, "rb") as f:
        head = f.read(1024)
    if not head:
        return "empty"
    if head.startswith((ZIP_MAGIC, PICKLE_PROTOCOL_2)):
        return "torch"
    # safetensors: the JSON header's length as 8 little-endian bytes, then the header
    if head[8:9] == b"{" and int.from_bytes(head[:8], "little") < path.stat().st_size:
        return "safetensors"
    try:
        head.decode()
    except UnicodeDecodeError as e:
        if e.start < len(head) - 3:  # not just a character cut at the end of the 1024 bytes
            return "unknown"
    return "unknown" if b"\0" in head else "text"


def unpickling_reason(error: Exception) -> str:
    """Why torch.load(weights_only=True) refused a pickle, in a few words."""
    text = str(error)
    if "Weights only load failed" not in text:
        return text.splitlines()[0]
    detail = next((line.strip() for line in text.partition("WeightsUnpickler error:")[2].splitlines() if line.strip()),
                  "")
    if not detail or "Unsupported global" in detail:
        return "it holds objects that are not plain data (refused: loading them could run code)"
    return f"a pickle that torch.load's data-only reader cannot read ({detail})"
