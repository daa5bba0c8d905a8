"""train.whiten_stem: the first convolution starts as a whitening of the training images' patches."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.config import check_config
from cnnbench.data import build_data
from cnnbench.engine.device import place
from cnnbench.engine.trainer import first_images, train
from cnnbench.errors import ConfigError
from cnnbench.models import create_model
from cnnbench.models.whitening import EPS, first_conv, whiten_first_conv

from .helpers import SMOKE, make_config

FMNIST = ["data=fashion_mnist", "data.train_size=1200", "data.val_size=100", "data.batch_size=100", "hardware=cpu"]


def test_the_stem_passes_the_top_patch_directions_at_unit_variance_and_decorrelated(tmp_path):
    """On real Fashion-MNIST patches: the whitened filters' responses have (nearly) the identity as their
    second moments, and each filter's negative is beside it."""
    cfg = make_config(tmp_path, *FMNIST, "model=compact_cnn")
    data = build_data(cfg)
    images = first_images(data, place(cfg.hardware), count=384)  # 384 x 26 x 26 patches: every one counted
    assert images.shape == (384, 1, 28, 28) and images.dtype == torch.float32
    model = create_model("compact_cnn", num_classes=10, in_chans=1, image_size=28)
    note = whiten_first_conv(model, images)
    assert note.startswith("train.whiten_stem: 0 (1->16, 3x3) whitens the patches of 384 training images: 16 filters")
    conv = first_conv(model)[1]
    assert torch.equal(conv.weight[8:], -conv.weight[:8])
    patches = F.unfold(images.double(), 3).transpose(1, 2).flatten(0, 1)
    responses = patches @ conv.weight[:8].detach().double().flatten(1).T
    moments = responses.T @ responses / len(responses)
    eigenvalues = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)[:8]
    # unit variance but for eps's share of the smallest directions; no correlation between filters
    assert torch.allclose(moments.diagonal(), eigenvalues / (eigenvalues + EPS), atol=1e-4)
    assert (moments - torch.diag(moments.diagonal())).abs().max() < 1e-4


def test_a_run_whitens_its_stem_and_says_so(tmp_path):
    summary = train(make_config(tmp_path, *SMOKE, "train.epochs=1", "train.whiten_stem=true"))
    assert summary["status"] == "completed"
    log = (tmp_path / "train.log").read_text()
    assert "train.whiten_stem: 0 (3->6, 5x5) whitens the patches of 256 training images: 6 filters, the top 3" in log


def test_a_first_convolution_that_cannot_whiten_is_named(tmp_path):
    with pytest.raises(ConfigError, match="^train.whiten_stem: would overwrite the first convolution"):
        check_config(make_config(tmp_path, *SMOKE, "train.whiten_stem=true", "model.pretrained=true"))
    with pytest.raises(ConfigError, match="^train.whiten_stem: the model's first convolution '0' is grouped"):
        first_conv(nn.Sequential(nn.Conv2d(4, 4, 3, groups=2)))
    with pytest.raises(ConfigError, match="has no convolution"):
        first_conv(nn.Sequential(nn.Linear(4, 4)))
