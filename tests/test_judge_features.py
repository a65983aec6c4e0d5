"""The GAN run's cache of the judge's features of the real images: the same figures as measuring them each epoch."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from cnnkit.data.imageset import ImageSet
from cnnkit.modelinfo import Preprocessing
from cnnkit.models import create_model
from cnnkit.tasks.generate.quality import measure_quality
from cnnkit.training.generate_session import judge_features


@pytest.mark.slow  # about 2 s on a loaded machine
def test_judge_features_cached_give_the_uncached_figures():
    torch.manual_seed(0)
    generator = create_model("dcgan", num_classes=3, in_channels=1, img_size=8, latent_dim=16, width=8)
    judge = create_model("convnet", num_classes=3, in_channels=1, img_size=16).eval()  # another side: resized
    preprocessing = Preprocessing(16, 1, (0.5,), (0.5,))
    images, labels = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8), torch.arange(3).repeat(4)
    real = ImageSet(images, labels, ["a", "b", "c"], [f"tiny[{index}]" for index in range(12)])
    session = SimpleNamespace(  # what judge_features reads of a GenerationSession
        judge=SimpleNamespace(model=judge, preprocessing=preprocessing),
        device=torch.device("cpu"),
    )
    features = judge_features(session, real)  # what each epoch of a run measures against
    assert features.shape[0] == len(images)
    measured = lambda **cache: measure_quality(  # noqa: E731
        generator, judge, preprocessing, images, labels, 2, 0, "cpu", real.classes, **cache
    )
    assert measured(real_features=features) == measured()
    assert measured(real_features=features + 1.0) != measured()  # the cached features are the ones measured against
