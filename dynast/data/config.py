"""The data configuration: which dataset, where, at what size."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from kernels.checks import check_number

from .textures import photo_textures_available

DATA_KINDS = ("synthetic", "folder", "deepfashion", "celebahq-edge", "ade20k")
# The datasets of docs/method.md section 6 read from their original layouts; their semantic
# input is a
# fixed encoding with this many channels (DeepFashion: pose drawing + limb distance maps;
# CelebA-HQ: edges + part distance maps; ADE20K: 150 classes plus "unknown", one-hot).
ENCODING_CHANNELS = {"deepfashion": 20, "celebahq-edge": 15, "ade20k": 151}
REAL_KINDS = tuple(ENCODING_CHANNELS)
TEXTURE_SOURCES = ("auto", "photo", "procedural")
SPLITS = ("train", "test")
# On-the-fly synthetic data has no natural length: these set what one epoch means.
SYNTHETIC_TRAIN_LENGTH = 10_000
SYNTHETIC_TEST_LENGTH = 500
MAX_CLASSES = 65_536  # label PNGs are 8- or 16-bit


@dataclass(frozen=True)
class DataConfig:
    """kind: "synthetic" (generated on the fly, deterministic for (seed, split, index)) or
    "folder" (the plain folder format at `root`, see docs/data.md). A folder config may leave
    `root` unset (presets for real data are completed from the command line); building its
    dataset then fails with a message saying so.
    num_classes: semantic channels (background included); must match the model's semantic_nc.
    image_size: every sample is square at this size (the folder loader resizes).
    seed: synthetic data only.
    train_length / test_length: synthetic: number of pairs (None: 10,000 / 500); folder: use the
    first N pairs of the split's CSV (None: all).
    textures: synthetic only. "photo": crops of scikit-image's bundled photos plus procedural
    patterns; "procedural": patterns only; "auto" resolves, when the config is built, to "photo"
    when scikit-image is installed and to "procedural" otherwise (the resolved value is what
    to_dict records).
    match_pair_sizes: folder only: an exemplar must have its target's size (as well as each image
    its label map's). Turn off for datasets of mixed sizes (every file is resized anyway).

    The kinds "deepfashion", "celebahq-edge" and "ade20k" read those datasets in their original
    layouts at `root` (docs/data.md) and need num_classes equal to their encoding's channel
    count (20, 15, 151). For them:
    load_size: training images (and their maps) are resized to load_size x load_size and a random
    image_size crop is taken, as the release's resize_and_crop (None: load_size = image_size, no
    crop). The test split always loads at image_size, uncropped.
    flip: mirror training pairs at random (the target with its map, the exemplar independently).
    real_reference_probability / hard_reference_probability: the release's training rule: one
    uniform draw u per sample; u < real picks the retrieved reference from the pair list (the
    hard one when also u < hard) with same_appearance False; otherwise the self reference.
    check_identity: deepfashion only: a training exemplar of another person (another id_ folder)
    keeps the release's pairing but gets same_appearance False (the release applies the warp loss
    to it anyway; False restores that).
    """

    kind: str = "synthetic"
    root: str | None = None
    num_classes: int = 8
    image_size: int = 64
    seed: int = 0
    train_length: int | None = None
    test_length: int | None = None
    textures: str = "auto"
    match_pair_sizes: bool = True
    load_size: int | None = None
    flip: bool = False
    real_reference_probability: float = 0.0
    hard_reference_probability: float = 0.0
    check_identity: bool = True

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"DataConfig.kind must be one of {DATA_KINDS}, got {self.kind!r}")
        if self.kind == "synthetic" and self.root is not None:
            raise ValueError(
                f"DataConfig.root={self.root!r} is only read by kind='folder' and the dataset "
                f"kinds {REAL_KINDS}; leave it None for synthetic data"
            )
        check_number(
            "DataConfig.num_classes", self.num_classes, integer=True, low=2, high=MAX_CLASSES
        )
        check_number("DataConfig.image_size", self.image_size, integer=True, low=8)
        want = ENCODING_CHANNELS.get(self.kind)
        if want is not None and self.num_classes != want:
            raise ValueError(
                f"DataConfig.num_classes={self.num_classes} but kind={self.kind!r} produces "
                f"{want} semantic channels: set num_classes (and the model's semantic_nc) to {want}"
            )
        if self.load_size is not None:
            check_number("DataConfig.load_size", self.load_size, integer=True, low=self.image_size)
        for name in ("flip", "check_identity"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"DataConfig.{name} must be a bool, got {getattr(self, name)!r}")
        for name in ("real_reference_probability", "hard_reference_probability"):
            check_number(f"DataConfig.{name}", getattr(self, name), low=0, high=1)
        check_number("DataConfig.seed", self.seed, integer=True, low=0)
        for name in ("train_length", "test_length"):
            if getattr(self, name) is not None:
                check_number(f"DataConfig.{name}", getattr(self, name), integer=True, low=1)
        if not isinstance(self.match_pair_sizes, bool):
            raise ValueError(
                f"DataConfig.match_pair_sizes must be a bool, got {self.match_pair_sizes!r}"
            )
        if self.textures not in TEXTURE_SOURCES:
            raise ValueError(
                f"DataConfig.textures must be one of {TEXTURE_SOURCES}, got {self.textures!r}"
            )
        if self.kind == "synthetic" and self.textures != "procedural":
            available = photo_textures_available()
            if self.textures == "photo" and not available:
                raise ValueError(
                    "DataConfig.textures='photo' needs scikit-image's bundled photos "
                    "(pip install scikit-image); use textures='procedural'"
                )
            if self.textures == "auto":
                object.__setattr__(self, "textures", "photo" if available else "procedural")

    def train_load_size(self) -> int:
        """The size training images are resized to before the image_size crop."""
        return self.image_size if self.load_size is None else self.load_size

    def length(self, split: str) -> int | None:
        """The configured number of pairs of `split` (synthetic defaults filled in)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        given = self.train_length if split == "train" else self.test_length
        if given is None and self.kind == "synthetic":
            return SYNTHETIC_TRAIN_LENGTH if split == "train" else SYNTHETIC_TEST_LENGTH
        return given

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DataConfig:
        """Strict: unknown keys raise ValueError naming them; missing keys take the defaults."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown DataConfig keys: {', '.join(unknown)}")
        return cls(**d)
