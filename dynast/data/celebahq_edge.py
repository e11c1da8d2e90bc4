"""CelebA-HQ edges -> face (kind "celebahq-edge"), CoCosNet's layout and pairing.

    root/CelebA-HQ-img/<n>.jpg
    root/CelebAMask-HQ-mask-anno/<n // 2000>/<n:05d>_<part>.png    part masks (a missing file is
                                                                   an empty part, as the release)
    root/train.txt, root/val.txt                                   one image number a line
    root/celebahq_ref.txt, root/celebahq_ref_test.txt              <n>.jpg,<ref>.jpg[,...]

Samples are the list's images in natural order, i.e. by image number (the release's
`Pix2pixDataset.initialize` natural-sorts the image paths of every dataset mode but `celebahq` and
`deepfashion`, so `celebahqedge` too). Semantic input: the 15-channel edge encoding
(`edge_encoding`). Training exemplar: the photo itself under its own random crop and flip
(self reference, same_appearance True), or with `real_reference_probability` the list's first
reference (easy) / last (hard, with `hard_reference_probability`), same_appearance False. Test
exemplar: the first reference of celebahq_ref_test.txt (the release's `celebahqedge_dataset.py`
`get_ref`, then `val[0]` in `Pix2pixDataset.__getitem__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from torch import Tensor

from .augment import BICUBIC, Transform, image_tensor
from .config import DataConfig
from .edge_encoding import INNER_PARTS, crop_encoding, edges_at_load
from .layout_check import require_dirs
from .lists import Entry, read_list, read_references
from .paired import PairedDataset, missing, open_image
from .sample import Sample, build_sample

IMAGE_DIR = "CelebA-HQ-img"
MASK_DIR = "CelebAMask-HQ-mask-anno"
SPLIT_LISTS = {"train": "train.txt", "test": "val.txt"}
REFERENCE_LISTS = {"train": "celebahq_ref.txt", "test": "celebahq_ref_test.txt"}


def image_number(name: str, where: str) -> int:
    """The image number of a list item ("123", "123.jpg" or "CelebA-HQ-img/123.jpg")."""
    stem = Path(name).stem
    if not stem.isdigit():
        raise ValueError(f"{where}: expected a CelebA-HQ image number, got {name!r}")
    return int(stem)


def photo_path(root: Path, number: int) -> Path:
    return root / IMAGE_DIR / f"{number}.jpg"


def part_path(root: Path, number: int, part: str) -> Path:
    return root / MASK_DIR / str(number // 2000) / f"{number:05d}_{part}.png"


def load_face(root: Path, number: int, where: str, load: int) -> tuple[np.ndarray, Image.Image]:
    """(edge encoding at the load size [15, L, L] uint8, the decoded photo) of face `number` of a
    CelebAMask-HQ folder; errors name the file and `where` referenced it."""
    photo = open_image(photo_path(root, number), "image", where)
    parts = {}
    for part in INNER_PARTS:
        path = part_path(root, number, part)
        parts[part] = open_image(path, "part mask", where) if path.is_file() else None
    return edges_at_load(photo, parts, load), photo.convert("RGB")


@dataclass(frozen=True)
class Item:
    number: int
    where: str
    easy: int | None = None
    hard: int | None = None
    references_where: str = ""


class CelebAHQEdgeDataset(PairedDataset):
    kind = "celebahq-edge"

    def __init__(self, cfg: DataConfig, split: str) -> None:
        super().__init__(cfg, split)
        require_dirs(self.root, (IMAGE_DIR, MASK_DIR), "CelebAMask-HQ")
        entries = read_list(self.root / SPLIT_LISTS[split], what=f"{split} list")
        for entry in entries:
            if len(entry.items) != 1:
                raise ValueError(f"{entry.where}: expected one image number, got {entry.items}")
        # The release's natural sort of CelebA-HQ-img/<n>.jpg is the order of n (stable for
        # equal numbers, as Python's sort); the first N are kept after sorting, as the release.
        numbered = self.limited(
            sorted(((image_number(e.key, e.where), e) for e in entries), key=lambda ne: ne[0])
        )
        needs_references = not self.train or cfg.real_reference_probability > 0
        references: dict[int, Entry] = {}
        if needs_references:
            path = self.root / REFERENCE_LISTS[split]
            for entry in read_references(path, what=f"{split} reference list").values():
                references[image_number(entry.key, entry.where)] = entry
        self.items = []
        for number, entry in numbered:
            self._check_image(number, entry.where)
            if not needs_references:
                self.items.append(Item(number, entry.where))
                continue
            ref = references.get(number)
            if ref is None:
                raise ValueError(
                    f"{entry.where}: image {number} has no line in "
                    f"{self.root / REFERENCE_LISTS[split]}"
                )
            easy = image_number(ref.items[1], ref.where)
            hard = image_number(ref.items[-1], ref.where)
            for n in (easy, hard):
                self._check_image(n, ref.where)
            self.items.append(Item(number, entry.where, easy, hard, ref.where))

    def _check_image(self, number: int, where: str) -> None:
        path = self.image_path(number)
        if not path.is_file():
            raise missing(path, "image", where)

    def image_path(self, number: int) -> Path:
        return photo_path(self.root, number)

    def part_path(self, number: int, part: str) -> Path:
        return part_path(self.root, number, part)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, number: int, where: str, load: int) -> tuple[np.ndarray, Image.Image]:
        """(edge encoding at the load size [15, L, L] uint8, the decoded photo)."""
        return load_face(self.root, number, where, load)

    @staticmethod
    def view(loaded: tuple[np.ndarray, Image.Image], transform: Transform) -> tuple[Tensor, Tensor]:
        """(edge encoding [15, S, S], photo [3, S, S] in [-1, 1]) under one draw."""
        encoding, photo = loaded
        return crop_encoding(encoding, transform), image_tensor(transform.apply(photo, BICUBIC))

    def read(self, number: int, where: str, transform: Transform) -> tuple[Tensor, Tensor]:
        return self.view(self.load(number, where, transform.load_size), transform)

    def __getitem__(self, index: int) -> Sample:
        index = self.check_index(index)
        item = self.items[index]
        rng = self.generator(index)
        target_draw = self.transform(rng)
        loaded = self.load(item.number, item.where, target_draw.load_size)
        semantic, target = self.view(loaded, target_draw)
        choice = self.reference_choice(rng)
        exemplar_draw = self.transform(rng)
        if choice == "self":
            # The same photo under its own crop and flip: the encoding at load size is shared.
            exemplar_semantic, exemplar_image = self.view(loaded, exemplar_draw)
        else:
            exemplar = item.hard if choice == "hard" else item.easy
            exemplar_semantic, exemplar_image = self.read(
                exemplar, item.references_where, exemplar_draw
            )
        return build_sample(
            label=None,
            target=target,
            exemplar_label=None,
            exemplar=exemplar_image,
            num_classes=self.config.num_classes,
            index=index,
            semantic=semantic,
            exemplar_semantic=exemplar_semantic,
            same_appearance=choice == "self",
        )
