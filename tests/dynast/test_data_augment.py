"""The release's resize_and_crop + flip: one draw for an image and its map, an independent draw
for the exemplar, plain test pairs, draws seeded by (seed, epoch, index)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _real_data import write_ade20k
from PIL import Image

from dynast.data import DataConfig, build_dataset
from dynast.data.augment import BICUBIC, NEAREST, Transform, draw_transform, image_tensor


def test_transform_resizes_crops_and_flips():
    image = Image.fromarray(np.arange(16, dtype=np.uint8).reshape(4, 4))
    t = Transform(load_size=4, crop_size=2, x=1, y=2, flip=True)
    assert t.apply(image, NEAREST).tolist() == [[10, 9], [14, 13]]
    assert Transform.plain(4).apply(image, NEAREST).tolist() == np.asarray(image).tolist()
    with pytest.raises(ValueError, match="crop position"):
        Transform(4, 2, x=3)
    rng = np.random.default_rng(0)
    draws = [draw_transform(rng, 6, 4, flip=True) for _ in range(200)]
    assert {d.x for d in draws} == {0, 1, 2} and {d.y for d in draws} == {0, 1, 2}
    assert 50 < sum(d.flip for d in draws) < 150
    assert not any(draw_transform(rng, 6, 4, flip=False).flip for _ in range(20))


def test_one_draw_for_target_and_map_another_for_the_exemplar(tmp_path):
    root = write_ade20k(tmp_path / "ade")
    cfg = DataConfig(
        kind="ade20k", root=str(root), num_classes=151, image_size=32, load_size=40, flip=True,
        seed=5,
    )  # fmt: skip
    data = build_dataset(cfg, "train")
    photo = Image.open(root / "images/training/ADE_train_00000002.jpg").convert("RGB")
    label = Image.open(root / "annotations/training/ADE_train_00000002.png")

    def classes(draw: Transform) -> np.ndarray:
        values = draw.apply(label, NEAREST)
        return np.where(values == 255, 150, values)  # CoCosNet's ignore value -> class 150

    seen = set()
    for epoch in range(4):
        data.set_epoch(epoch)
        sample = data[1]  # ADE_train_00000002 (natural order), a self reference
        rng = np.random.default_rng([5, epoch, 1])
        target_draw = draw_transform(rng, 40, 32, True)
        rng.random()  # the reference choice
        exemplar_draw = draw_transform(rng, 40, 32, True)
        assert torch.equal(sample["target"], image_tensor(target_draw.apply(photo, BICUBIC)))
        assert np.array_equal(sample["label"].numpy(), classes(target_draw))
        assert torch.equal(sample["exemplar"], image_tensor(exemplar_draw.apply(photo, BICUBIC)))
        assert np.array_equal(sample["exemplar_label"].numpy(), classes(exemplar_draw))
        seen.add((target_draw, exemplar_draw))
    assert len(seen) > 1
    test = build_dataset(cfg, "test")
    a, b = test[0], test[0]
    assert torch.equal(a["target"], b["target"]) and torch.equal(a["exemplar"], b["exemplar"])
