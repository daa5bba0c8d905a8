"""Careless and hostile inputs (issue 21): each ends in one line naming the culprit and what to do, exits
non-zero and loses nothing, or is handled as a user would want (linked folders followed, never mislabelled)."""
import os
import shutil
from collections import Counter

from cnnbench.data.datasets import image_folder

from .test_train import make_image_tree


def test_linked_folders_are_followed_but_never_into_a_loop_or_another_class(tmp_path):
    root = tmp_path / "images"
    make_image_tree(root)
    train = root / "train"
    os.symlink("..", train / "n01440764" / "loop")  # every class again, under the first
    os.symlink("../n01443537", train / "n01440764" / "sibling")
    # Legitimate links: a class folder kept elsewhere, a linked folder and a linked image inside a class.
    shutil.move(train / "n01484850", tmp_path / "shared")
    os.symlink(tmp_path / "shared", train / "n01484850")
    (tmp_path / "more").mkdir()
    shutil.copy(tmp_path / "shared" / "0.JPEG", tmp_path / "more" / "extra.JPEG")
    os.symlink(tmp_path / "more", train / "n01484850" / "more")
    os.symlink(tmp_path / "shared" / "1.jpg", train / "n01443537" / "linked.jpg")

    split = image_folder("imagefolder", str(root), True, False, on_bad_image="skip")
    assert split.classes == ["n01440764", "n01443537", "n01484850"]
    assert Counter(split.dataset.targets) == {0: 6, 1: 7, 2: 7}
    for path, label in split.dataset.samples:
        assert path.startswith(str(train / split.classes[label])), path
    (warning,) = [w for w in split.warnings if "linked" in w]
    assert f"{train / 'n01440764' / 'loop'} -> {train}" in warning
    assert f"{train / 'n01440764' / 'sibling'} -> {train / 'n01443537'}" in warning
