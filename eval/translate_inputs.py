"""`eval.translate`'s inputs: the user's files turned into one Sample exactly as the model's data
pipeline turns a dataset's files into one, with a sentence per input saying what was done.

- Pose (DeepFashion models): an OpenPose JSON file (`dynast.data.openpose`) or the release's
  `<name>_candidate.txt` / `<name>_subset.txt` pair (either file names the pair). Keypoints are
  pixels of a W x H image: they are scaled by R / H, so that the image is R pixels high as
  DeepFashion's photos are at resolution R (176 x 256 or 256 x 256 at R = 256), drawn on a canvas
  of that size and resized to R x R by `dynast.data.pose_encoding.encode_pose`, the loader's own
  function (a 176 x 256 image is drawn unscaled and stretched to 256 x 256, as the loader does).
- Edges (CelebA-HQ models): one face in the CelebAMask-HQ layout, named by its photo
  `DIR/CelebA-HQ-img/<n>.jpg`, with its part masks `DIR/CelebAMask-HQ-mask-anno/<n // 2000>/
  <n:05d>_<part>.png`; encoded by the loader's `load_face`.
- Class maps: a class-index PNG or a .npy [H, W] integer array (`eval.generate.read_semantic`).
- Exemplar photo: any size and aspect, resized to R x R without keeping the aspect as the
  pipeline resizes every photo (bicubic for the paper's datasets, bilinear for folder and
  synthetic data); nothing is cropped or padded, since no pipeline does at test time.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from dynast.data.augment import BICUBIC, Transform, image_tensor
from dynast.data.celebahq_edge import (
    IMAGE_DIR,
    INNER_PARTS,
    MASK_DIR,
    CelebAHQEdgeDataset,
    load_face,
    part_path,
)
from dynast.data.folder import read_image
from dynast.data.openpose import read_openpose
from dynast.data.paired import open_image
from dynast.data.pose_encoding import encode_pose, read_keypoints
from dynast.data.sample import Sample, build_sample
from eval.generate import read_semantic
from eval.model_input import CLASSES, EDGES, INPUT_FLAGS, POSE, ModelData

CANDIDATE_SUFFIX = "_candidate.txt"
SUBSET_SUFFIX = "_subset.txt"
# The photos of the data each preset was trained on, for the sentence about the exemplar.
PHOTO_SHAPES = {
    "deepfashion": "its photos are 176x256 or 256x256, stretched to square the same way",
    "celebahq-edge": "its photos are square",
    "ade20k": "its photos of every aspect are resized the same way",
}


@dataclass
class TranslateInputs:
    """The sample (batch of one), a sentence per input, and the JSON record of the inputs."""

    sample: Sample
    notes: list[str] = field(default_factory=list)
    record: dict[str, object] = field(default_factory=dict)


def parse_size(text: str) -> tuple[int, int]:
    """ "W,H" -> (W, H), both positive integers."""
    parts = text.split(",")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise ValueError(
            f"--pose-size: expected W,H in pixels (e.g. 176,256), got {text!r}"
        ) from None
    if width < 1 or height < 1:
        raise ValueError(f"--pose-size: width and height must be positive, got {text!r}")
    return width, height


# ---------------------------------------------------------------------------------------------
# photos


def read_photo(path: Path, flag: str, size: int, data_kind: str) -> tuple[Tensor, str]:
    """The exemplar photo [3, R, R] in [-1, 1] as the pipeline of `data_kind` reads photos."""

    image = open_image(path, "image", flag)
    width, height = image.size
    if data_kind in PHOTO_SHAPES:
        tensor = image_tensor(Transform.plain(size).apply(image.convert("RGB"), BICUBIC))
        how = f"resized bicubic without keeping the aspect, as the {data_kind} pipeline does"
        how += f" ({PHOTO_SHAPES[data_kind]})"
    else:
        tensor = torch.from_numpy(read_image(path, size)).permute(2, 0, 1).contiguous()
        how = f"resized bilinear without keeping the aspect, as the {data_kind} pipeline does"
    if (width, height) == (size, size):
        how = "used as it is"
    return tensor, f"{flag} {path}: {width}x{height} -> {size}x{size}, {how}"


def photo_size(path: Path, flag: str) -> tuple[int, int]:

    return open_image(path, "image", flag).size


# ---------------------------------------------------------------------------------------------
# poses


def pose_tables(path: Path, flag: str, min_confidence: float) -> tuple[np.ndarray, np.ndarray, str]:
    """(candidate, subset, what was read) from an OpenPose JSON or the release's text pair."""

    name = path.name
    if path.suffix.lower() == ".json":
        pose = read_openpose(path, min_confidence)
        return pose.candidate, pose.subset, pose.describe()
    for suffix in (CANDIDATE_SUFFIX, SUBSET_SUFFIX):
        if name.endswith(suffix):
            base = path.with_name(name[: -len(suffix)])
            candidate, subset = read_keypoints(base, flag)
            present = int((subset >= 0).sum())
            return candidate, subset, f"the release's keypoint files, {present} of 18 present"
    raise ValueError(
        f"{flag} {path}: expected an OpenPose JSON file (.json) or the release's "
        f"<name>{CANDIDATE_SUFFIX} / <name>{SUBSET_SUFFIX} pair"
    )


def encode_pose_file(
    path: Path, flag: str, image_size: tuple[int, int], size: int, min_confidence: float
) -> tuple[Tensor, str]:
    """A pose file's 20-channel encoding [20, R, R] for keypoints of a W x H image (see the module
    docstring for the scaling), and what was done."""

    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: file not found")
    candidate, subset, read = pose_tables(path, flag, min_confidence)
    width, height = image_size
    factor = size / height
    canvas = (max(1, round(width * factor)), size)
    candidate = candidate.copy()
    candidate[:, :2] *= factor
    encoding = encode_pose(candidate, subset, canvas[1], canvas[0], Transform.plain(size))
    scaled = "" if factor == 1 else f" scaled by {factor:.4g} to {canvas[0]}x{canvas[1]},"
    note = (
        f"{flag} {path}: {read}; keypoints of a {width}x{height} image,{scaled} drawn and resized "
        f"to {size}x{size} as the deepfashion loader does"
    )
    return encoding, note


# ---------------------------------------------------------------------------------------------
# edges


def face_number(path: Path, flag: str) -> tuple[Path, int]:
    """(CelebAMask-HQ root, face number) of a photo `ROOT/CelebA-HQ-img/<n>.jpg`."""

    if path.parent.name != IMAGE_DIR or not path.stem.isdigit() or path.suffix != ".jpg":
        raise ValueError(
            f"{flag} {path}: expected a face in the CelebAMask-HQ layout, "
            f"DIR/{IMAGE_DIR}/<n>.jpg with its part masks in DIR/{MASK_DIR}/ (docs/data.md)"
        )
    if not path.is_file():
        raise FileNotFoundError(f"{flag} {path}: file not found")
    return path.parent.parent, int(path.stem)


def encode_face(path: Path, flag: str, size: int) -> tuple[Tensor, Tensor, str]:
    """(edge encoding [15, R, R], photo [3, R, R] in [-1, 1], what was done) of one face."""

    root, number = face_number(path, flag)
    found = [p for p in INNER_PARTS if part_path(root, number, p).is_file()]
    if not found:
        raise FileNotFoundError(
            f"{flag} {path}: no part mask of face {number}: expected files such as "
            f"{part_path(root, number, 'skin')}"
        )
    loaded = load_face(root, number, flag, size)
    encoding, photo = CelebAHQEdgeDataset.view(loaded, Transform.plain(size))
    note = (
        f"{flag} {path}: face {number}, {len(found)} of {len(INNER_PARTS)} part masks "
        f"({', '.join(found)}), encoded at {size}x{size} as the celebahq-edge loader does"
    )
    return encoding, photo, note


# ---------------------------------------------------------------------------------------------


def check_flags(args, kind: str, model: ModelData, name: str) -> None:
    """The model's input kind against the flags given: one input, the matching exemplar input."""
    given = [k for k in (POSE, EDGES, CLASSES) if getattr(args, k if k != CLASSES else "semantic")]
    if not given:
        raise ValueError(
            f"the model {name!r} reads {model.describe()}: give it with {INPUT_FLAGS[kind]}"
        )
    if len(given) > 1:
        raise ValueError(f"give one input: {' and '.join(INPUT_FLAGS[k] for k in given)} given")
    if given[0] != kind:
        raise ValueError(
            f"{INPUT_FLAGS[given[0]]}: the model {name!r} reads {model.describe()}, not "
            f"{given[0]}: give its input with {INPUT_FLAGS[kind]}"
        )
    allowed = {POSE: "exemplar_pose", CLASSES: "exemplar_semantic", EDGES: None}[kind]
    for dest in ("exemplar_pose", "exemplar_semantic"):
        if getattr(args, dest) is not None and dest != allowed:
            flag = "--" + dest.replace("_", "-")
            raise ValueError(
                f"{flag}: the model {name!r} reads {model.describe()}; {flag} is not for it"
            )


def read_inputs(args, model: ModelData, size: int, name: str) -> TranslateInputs:
    """Every input of `eval.translate` read, checked and encoded (nothing is written)."""
    kind = model.kind
    check_flags(args, kind, model, name)
    data_kind = model.data.kind
    exemplar_path = Path(args.exemplar)
    notes: list[str] = [f"model: {model.describe()}"]
    record: dict[str, object] = {"input_kind": kind, "data_kind": data_kind, "source": model.source}
    if kind == POSE:
        return _pose_inputs(args, size, exemplar_path, notes, record, name, data_kind)
    if kind == EDGES:
        return _edge_inputs(args, size, exemplar_path, notes, record)
    return _class_inputs(args, model, size, exemplar_path, notes, record, name)


def _pose_inputs(args, size, exemplar_path, notes, record, name, data_kind) -> TranslateInputs:
    if args.exemplar_pose is None:
        raise ValueError(
            f"--exemplar-pose is needed: the model {name!r} reads the exemplar's own pose "
            "beside its photo (in training, another photo of the same person with its pose), "
            "and no pose can be assumed for a photo; run a pose estimator on it (OpenPose JSON)"
        )
    pose_size = parse_size(args.pose_size) if args.pose_size else (size, size)
    semantic, pose_note = encode_pose_file(
        Path(args.pose), "--pose", pose_size, size, args.min_confidence
    )
    ex_size = photo_size(exemplar_path, "--exemplar")
    exemplar_semantic, ex_pose_note = encode_pose_file(
        Path(args.exemplar_pose), "--exemplar-pose", ex_size, size, args.min_confidence
    )
    exemplar, photo_note = read_photo(exemplar_path, "--exemplar", size, data_kind)
    notes += [pose_note, ex_pose_note, photo_note]
    record.update(
        pose=args.pose,
        pose_size=list(pose_size),
        min_confidence=args.min_confidence,
        exemplar=args.exemplar,
        exemplar_pose=args.exemplar_pose,
    )
    sample = _encoded_sample(semantic, exemplar_semantic, exemplar)
    return TranslateInputs(sample, notes, record)


def _edge_inputs(args, size, exemplar_path, notes, record) -> TranslateInputs:
    semantic, _, edge_note = encode_face(Path(args.edges), "--edges", size)
    notes.append(edge_note)
    if exemplar_path.resolve() == Path(args.edges).resolve():
        exemplar_semantic, exemplar = semantic, encode_face(exemplar_path, "--exemplar", size)[1]
        notes.append(
            f"--exemplar {exemplar_path}: the --edges face itself, a self reference (as in "
            "training, where the celebahq-edge preset takes the photo itself as its exemplar "
            "30% of the time): its edges are the input's"
        )
    else:
        try:
            face_number(exemplar_path, "--exemplar")
        except ValueError:
            raise ValueError(
                f"--exemplar {exemplar_path}: a CelebA-HQ edge model reads the exemplar's own "
                "edges, made from its part masks: give a face in the CelebAMask-HQ layout "
                "(DIR/CelebA-HQ-img/<n>.jpg with its masks, docs/data.md), or the --edges "
                "photo itself (a self reference)"
            ) from None
        exemplar_semantic, exemplar, ex_note = encode_face(exemplar_path, "--exemplar", size)
        notes.append(ex_note)
    record.update(edges=args.edges, exemplar=args.exemplar)
    sample = _encoded_sample(semantic, exemplar_semantic, exemplar)
    return TranslateInputs(sample, notes, record)


def _class_inputs(args, model, size, exemplar_path, notes, record, name) -> TranslateInputs:

    if args.exemplar_semantic is None:
        raise ValueError(
            f"--exemplar-semantic is needed: the model {name!r} reads the exemplar's own class "
            "map beside its photo, and none can be assumed for a photo"
        )
    classes = model.data.num_classes
    maps = {}
    for flag, value in (
        ("--semantic", args.semantic),
        ("--exemplar-semantic", args.exemplar_semantic),
    ):
        path = Path(value)
        if not path.is_file():
            raise FileNotFoundError(f"{flag} {path}: file not found")
        try:
            maps[flag] = read_semantic(path, size, classes)
        except ValueError as error:
            raise ValueError(f"{flag} {error}") from None
    exemplar, photo_note = read_photo(exemplar_path, "--exemplar", size, model.data.kind)
    notes.append(photo_note)
    record.update(
        semantic=args.semantic, exemplar=args.exemplar, exemplar_semantic=args.exemplar_semantic
    )
    sample = build_sample(
        label=maps["--semantic"],
        target=None,
        exemplar_label=maps["--exemplar-semantic"],
        exemplar=exemplar,
        num_classes=classes,
        index=0,
    )
    return TranslateInputs(sample, notes, record)


def _encoded_sample(semantic: Tensor, exemplar_semantic: Tensor, exemplar: Tensor) -> Sample:
    return build_sample(
        label=None,
        target=None,
        exemplar_label=None,
        exemplar=exemplar,
        num_classes=semantic.shape[0],
        index=0,
        semantic=semantic,
        exemplar_semantic=exemplar_semantic,
    )
