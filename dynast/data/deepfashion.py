"""DeepFashion (kind "deepfashion") in CoCosNet's preparation, read as the DynaST release reads it.

    root/img/<MEN|WOMEN>/<Category>/id_XXXXXXXX/NN_V_view.jpg    photos
    root/pose/<same path>/NN_V_view_candidate.txt                keypoints (x, y, score, id)
    root/pose/<same path>/NN_V_view_subset.txt                   18 part indices (-1: missing), ...
    root/train.txt, root/val.txt                                 image paths, either slash
    root/deepfashion_self_pair.txt                               key,partner[,...] (same person)
    root/deepfashion_ref.txt, root/deepfashion_ref_test.txt      key,ref[,...] (retrieved)

Sample i of a split is line i of its list (the release keeps the list order for DeepFashion:
`Pix2pixDataset.initialize` natural-sorts every other dataset mode). Semantic input: the 20-channel
pose encoding (`pose_encoding`). Exemplar, in both splits (the release's `--video_like` rule,
`DeepFashionDataset.get_ref_video_like` with `val[0]` in `Pix2pixDataset.__getitem__`): the first
partner of the image in deepfashion_self_pair.txt, else the last entry of its line in the split's
reference list (deepfashion_ref.txt / deepfashion_ref_test.txt). Training pairs have
same_appearance True; `real_reference_probability` / `hard_reference_probability` switch to that
same reference (easy) or a random training image fixed per (seed, index) (hard), with
same_appearance False. Test pairs have same_appearance False (the release's self_ref 0).
Identity check (ours): a training exemplar from another id_ folder keeps its pairing but gets
same_appearance False; the count is logged once when the dataset is built. Any root name works;
the release needs a path containing "deepfashion/".
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from torch import Tensor

from .augment import BICUBIC, Transform, image_tensor
from .config import DataConfig
from .layout_check import require_dirs
from .lists import Entry, normalise, read_list, read_references
from .paired import PairedDataset, log, missing, open_image
from .pose_encoding import encode_pose, read_keypoints
from .sample import Sample, build_sample

SPLIT_LISTS = {"train": "train.txt", "test": "val.txt"}
SELF_PAIR_LIST = "deepfashion_self_pair.txt"
REFERENCE_LISTS = {"train": "deepfashion_ref.txt", "test": "deepfashion_ref_test.txt"}
IMAGE_DIR = "img"
POSE_DIR = "pose"
# Salt of the stream that picks a sample's hard reference once per (seed, index).
HARD_REFERENCE_STREAM = 0x4446


def image_key(name: str) -> str:
    """A list item as a path relative to the root starting with img/ (a prefix before img/,
    such as the release's 'DeepFashion/', is dropped)."""
    name = normalise(name)
    if not name.startswith(f"{IMAGE_DIR}/") and f"/{IMAGE_DIR}/" in name:
        name = name[name.index(f"/{IMAGE_DIR}/") + 1 :]
    return name


def pose_base(root: Path, key: str) -> Path:
    """root/pose/<path below img/ without .jpg>: add `_candidate.txt` / `_subset.txt`."""
    below = PurePosixPath(key)
    if below.parts and below.parts[0] == IMAGE_DIR:
        below = PurePosixPath(*below.parts[1:])
    return root / POSE_DIR / below.with_suffix("")


def identity(key: str) -> str:
    """The person of an image: its id_XXXXXXXX folder (the parent folder if none is named so)."""
    parts = PurePosixPath(key).parts
    ids = [p for p in parts[:-1] if p.startswith("id_")]
    return ids[-1] if ids else str(PurePosixPath(key).parent)


@dataclass(frozen=True)
class Pair:
    key: str
    where: str
    exemplar: str
    exemplar_where: str
    same_person: bool


class DeepFashionDataset(PairedDataset):
    kind = "deepfashion"

    def __init__(self, cfg: DataConfig, split: str) -> None:
        super().__init__(cfg, split)
        require_dirs(self.root, (IMAGE_DIR, POSE_DIR), "DeepFashion (CoCosNet's preparation)")
        entries = self.limited(read_list(self.root / SPLIT_LISTS[split], what=f"{split} list"))
        self_pairs = _keyed(read_references(self.root / SELF_PAIR_LIST, what="self-pair list"))
        references = _keyed(
            read_references(self.root / REFERENCE_LISTS[split], what=f"{split} reference list")
        )
        self.pairs = [self._pair(e, self_pairs, references) for e in entries]
        self.keys = [p.key for p in self.pairs]
        for pair in self.pairs:
            self._check_files(pair.key, pair.where)
            self._check_files(pair.exemplar, pair.exemplar_where)
        self.identity_mismatches = sum(not p.same_person for p in self.pairs) if self.train else 0
        if self.identity_mismatches:
            action = (
                "same_appearance False for them (no warp loss)"
                if cfg.check_identity
                else "kept as self references (check_identity false, as the release)"
            )
            log.warning(
                "deepfashion %s: %d of %d exemplars show another person (another id_ folder); %s",
                split,
                self.identity_mismatches,
                len(self.pairs),
                action,
            )

    def _pair(self, entry: Entry, self_pairs: dict[str, Entry], refs: dict[str, Entry]) -> Pair:
        if len(entry.items) != 1:
            raise ValueError(f"{entry.where}: expected one image path, got {entry.items}")
        key = image_key(entry.key)
        partner, retrieved = self_pairs.get(key), refs.get(key)
        if partner is not None:
            ref, where = partner.items[1], partner.where
        elif retrieved is not None:
            ref, where = retrieved.items[-1], retrieved.where
        else:
            raise ValueError(
                f"{entry.where}: {key!r} has no line in {self.root / SELF_PAIR_LIST} or "
                f"{self.root / REFERENCE_LISTS[self.split]}"
            )
        ref = image_key(ref)
        return Pair(key, entry.where, ref, where, identity(ref) == identity(key))

    def _check_files(self, key: str, where: str) -> None:
        image = self.root / key
        if not image.is_file():
            raise missing(image, "image", where)
        base = pose_base(self.root, key)
        for table in ("candidate", "subset"):
            path = Path(f"{base}_{table}.txt")
            if not path.is_file():
                raise missing(path, "keypoint file", where)

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, key: str, where: str, transform: Transform) -> tuple[Tensor, Tensor]:
        """(pose encoding [20, S, S], photo [3, S, S] in [-1, 1]) of one image."""
        image = open_image(self.root / key, "image", where)
        width, height = image.size
        candidate, subset = read_keypoints(pose_base(self.root, key), where)
        semantic = encode_pose(candidate, subset, height, width, transform)
        photo = image_tensor(transform.apply(image.convert("RGB"), BICUBIC))
        return semantic, photo

    def hard_reference(self, index: int) -> str:
        """A random training image, fixed per (seed, index) (the release draws it once)."""
        rng = np.random.default_rng([self.config.seed, HARD_REFERENCE_STREAM, index])
        return self.keys[int(rng.integers(len(self.keys)))]

    def __getitem__(self, index: int) -> Sample:
        index = self.check_index(index)
        pair = self.pairs[index]
        rng = self.generator(index)
        semantic, target = self.read(pair.key, pair.where, self.transform(rng))
        choice = self.reference_choice(rng)
        exemplar, where = pair.exemplar, pair.exemplar_where
        if choice == "hard":
            exemplar, where = self.hard_reference(index), f"{pair.where} (hard reference)"
        same = choice == "self" and (pair.same_person or not self.config.check_identity)
        exemplar_semantic, exemplar_image = self.read(exemplar, where, self.transform(rng))
        return build_sample(
            label=None,
            target=target,
            exemplar_label=None,
            exemplar=exemplar_image,
            num_classes=self.config.num_classes,
            index=index,
            semantic=semantic,
            exemplar_semantic=exemplar_semantic,
            same_appearance=same,
        )


def _keyed(table: dict[str, Entry]) -> dict[str, Entry]:
    """A reference table keyed by image_key (lists may carry a prefix before img/)."""
    return {image_key(name): entry for name, entry in table.items()}
