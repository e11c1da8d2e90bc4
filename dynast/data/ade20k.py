"""ADE20K (kind "ade20k"): scene parsing maps -> photos, CoCosNet's pairing. Two layouts:

    official ADEChallengeData2016:  root/images/{training,validation}/ADE_*_XXXXXXXX.jpg
                                    root/annotations/{training,validation}/ADE_*_XXXXXXXX.png
    CoCosNet's merged layout:       root/{training,validation}/ADE_*_XXXXXXXX.{jpg,png}
    both:                           root/ade20k_ref.txt, root/ade20k_ref_test.txt
                                    (name.jpg,ref1.jpg[,...]; references are training images)

Sample i of a split is the i-th ADE_train_* (ADE_val_*) photo in natural order, as CoCosNet lists
them (`ADE20KDataset.get_paths`, natural-sorted by `Pix2pixDataset.initialize`). Labels as
CoCosNet reads them (`Pix2pixDataset.get_label_tensor`, label_nc 150 with contain_dontcare_label):
values 0..150 as they are (0 = "unknown"/other, 1..150 the classes), the ignore value 255 moved
to 150, one-hot in 151 channels with value v in channel v. A value in 151..254 is an error naming
the file and the value: CoCosNet's one-hot `scatter_` fails on it. Training exemplar: the photo
itself under its own crop and flip (self reference, same_appearance True), or with
`real_reference_probability` the list's first reference (easy) or, with
`hard_reference_probability`, its last (hard), same_appearance False. Test exemplar: the first
reference of ade20k_ref_test.txt, read from the training images (CoCosNet's `get_ref`, then
`val[0]` in `Pix2pixDataset.__getitem__`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch import Tensor

from .augment import BICUBIC, NEAREST, Transform, image_tensor
from .config import DataConfig
from .layout_check import found_entries
from .lists import Entry, natural_key, read_references
from .paired import PairedDataset, missing, open_image
from .sample import Sample, build_sample

SUBFOLDERS = {"train": "training", "test": "validation"}
# CoCosNet keeps the files whose path contains "_train_" / "_val_".
MARKERS = {"train": "_train_", "test": "_val_"}
REFERENCE_LISTS = {"train": "ade20k_ref.txt", "test": "ade20k_ref_test.txt"}
# Modes whose pixel values CoCosNet reads as class indices (torchvision's ToTensor divides 8-bit
# images by 255, and get_label_tensor multiplies by 255 again); any other mode it misreads.
LABEL_MODES = ("L", "P")
# CoCosNet's label_nc: the class the ignore value IGNORE_VALUE is moved to, and the last channel.
LABEL_NC = 150
IGNORE_VALUE = 255


def check_ade_values(values: np.ndarray, path: Path, where: str) -> None:
    """ValueError naming the file, the values and the referencing line when the annotation holds
    a value CoCosNet cannot read: above LABEL_NC and not IGNORE_VALUE."""
    bad = (values > LABEL_NC) & (values != IGNORE_VALUE)
    if bad.any():
        found = np.unique(values[bad])
        raise ValueError(
            f"{path}: label value{'s' if len(found) > 1 else ''} "
            f"{', '.join(str(v) for v in found[:8])}{', ...' if len(found) > 8 else ''} at "
            f"{int(bad.sum())} pixel(s): ADE20K labels are 0..{LABEL_NC} or {IGNORE_VALUE} "
            f"(read as {LABEL_NC}) (referenced by {where})"
        )


@dataclass(frozen=True)
class Folders:
    """Where the photos and label maps of one subfolder (training / validation) live."""

    images: Path
    labels: Path


def find_layout(root: Path) -> tuple[str, dict[str, Folders]]:
    """("official" | "merged", folders per split); ValueError naming both layouts otherwise."""
    if (root / "images").is_dir() and (root / "annotations").is_dir():
        return "official", {
            split: Folders(root / "images" / sub, root / "annotations" / sub)
            for split, sub in SUBFOLDERS.items()
        }
    if any((root / sub).is_dir() for sub in SUBFOLDERS.values()):
        return "merged", {
            split: Folders(root / sub, root / sub) for split, sub in SUBFOLDERS.items()
        }
    raise ValueError(
        f"{root}: not an ADE20K layout: expected images/ and annotations/ (ADEChallengeData2016) "
        f"or training/ and validation/ holding .jpg and .png side by side (CoCosNet); found: "
        f"{found_entries(root)}"
    )


@dataclass(frozen=True)
class Item:
    name: str  # photo file name, e.g. ADE_train_00000001.jpg
    where: str
    easy: str | None = None
    hard: str | None = None
    references_where: str = ""


class ADE20KDataset(PairedDataset):
    kind = "ade20k"

    def __init__(self, cfg: DataConfig, split: str) -> None:
        super().__init__(cfg, split)
        self.layout, folders = find_layout(self.root)
        self.folders = folders[split]
        self.train_folders = folders["train"]
        if not self.folders.images.is_dir():
            raise ValueError(
                f"{self.root}: the {self.layout} ADE20K layout needs {self.folders.images}/ for "
                f"the {split} split; found: {found_entries(self.root)}"
            )
        marker = MARKERS[split]
        names = sorted(
            (
                p.name
                for p in self.folders.images.iterdir()
                if p.suffix == ".jpg" and marker in p.name
            ),
            key=natural_key,
        )
        if not names:
            raise ValueError(
                f"{self.folders.images}: no *{marker}*.jpg photos (the {split} split); found: "
                f"{found_entries(self.folders.images)}"
            )
        names = self.limited(names)
        needs_references = not self.train or cfg.real_reference_probability > 0
        references: dict[str, Entry] = {}
        if needs_references:
            table = read_references(
                self.root / REFERENCE_LISTS[split], what=f"{split} reference list"
            )
            # Keys are photo file names; a list that carries folders still matches.
            references = {Path(key).name: entry for key, entry in table.items()}
        self.items = []
        for name in names:
            where = str(self.folders.images / name)
            self._check_label(self.folders, name, where)
            if not needs_references:
                self.items.append(Item(name, where))
                continue
            ref = references.get(name)
            if ref is None:
                raise ValueError(
                    f"{where}: no line for {name} in {self.root / REFERENCE_LISTS[split]}"
                )
            easy, hard = Path(ref.items[1]).name, Path(ref.items[-1]).name
            for exemplar in (easy, hard):
                photo = self.train_folders.images / exemplar
                if not photo.is_file():
                    raise missing(photo, "exemplar photo", ref.where)
                self._check_label(self.train_folders, exemplar, ref.where)
            self.items.append(Item(name, where, easy, hard, ref.where))

    @staticmethod
    def label_path(folders: Folders, name: str) -> Path:
        return folders.labels / (Path(name).stem + ".png")

    def _check_label(self, folders: Folders, name: str, where: str) -> None:
        path = self.label_path(folders, name)
        if not path.is_file():
            raise missing(path, "label map", where)

    def __len__(self) -> int:
        return len(self.items)

    def read(
        self, folders: Folders, name: str, where: str, transform: Transform
    ) -> tuple[np.ndarray, Tensor]:
        """(class map [S, S] int64, photo [3, S, S] in [-1, 1])."""
        path = self.label_path(folders, name)
        label_image = open_image(path, "label map", where)
        if label_image.mode not in LABEL_MODES:
            raise ValueError(
                f"{path}: ADE20K label maps are 8-bit class-index PNGs (mode L or P), got mode "
                f"{label_image.mode} (referenced by {where})"
            )
        check_ade_values(np.asarray(label_image), path, where)
        label = transform.apply(label_image, NEAREST).astype(np.int64)
        label[label == IGNORE_VALUE] = LABEL_NC
        photo = open_image(folders.images / name, "photo", where).convert("RGB")
        return label, image_tensor(transform.apply(photo, BICUBIC))

    def __getitem__(self, index: int) -> Sample:
        index = self.check_index(index)
        item = self.items[index]
        rng = self.generator(index)
        label, target = self.read(self.folders, item.name, item.where, self.transform(rng))
        choice = self.reference_choice(rng)
        if choice == "self":
            folders, exemplar, where = self.folders, item.name, item.where
        else:
            exemplar = item.hard if choice == "hard" else item.easy
            folders, where = self.train_folders, item.references_where
        exemplar_label, exemplar_image = self.read(folders, exemplar, where, self.transform(rng))
        return build_sample(
            label=label,
            target=target,
            exemplar_label=exemplar_label,
            exemplar=exemplar_image,
            num_classes=self.config.num_classes,
            index=index,
            same_appearance=choice == "self",
        )
