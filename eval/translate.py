"""`python -m eval.translate` / `dynast-translate`: one picture from your own inputs.

  python -m eval.translate --model weights/deepfashion-release --pose person.json \\
      [--pose-size W,H] --exemplar dress.jpg --exemplar-pose dress.json --out out/ [--explore]
  python -m eval.translate --model RUN --semantic labels.png --exemplar photo.jpg \\
      --exemplar-semantic ex_labels.png --out out/
  python -m eval.translate --model RUN --edges DIR/CelebA-HQ-img/123.jpg \\
      --exemplar DIR/CelebA-HQ-img/456.jpg --out out/

--model: a save_pretrained folder, a training run or one checkpoint folder, as eval.generate.
What the model reads (a pose, face edges or class maps) and how its data pipeline prepared its
inputs come from `eval.model_input`; each input is prepared the same way (`eval.translate_inputs`)
and what was done is printed and recorded.

Writes OUT/image.png (or .jpg with --format jpg) at the model's resolution; OUT/panel.png (the
inputs, the warped exemplar, confidence and kept candidates of every attention block, the
output, all labelled); OUT/translate.json (how the image was made, as eval.generate's
generation.json); with --explore, OUT/explore.html, the correspondence explorer (eval.explore).
Every file is complete before it is renamed into place, and nothing is written when an input is
refused.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from dynast.data.openpose import DEFAULT_MIN_CONFIDENCE
from dynast.io import load_generator, resolve_generator_dir
from eval.attention_export import AttentionRecorder, last_blocks, scale_attention
from eval.explore import explore_page
from eval.generate import FORMAT_NOTE, FORMATS, write_image
from eval.model_input import model_data
from eval.provenance import environment, now
from eval.translate_inputs import read_inputs
from eval.visualize import (
    block_label,
    candidate_counts,
    heat_pixels,
    sample_panel,
    semantic_pixels,
    to_pixels,
)
from kernels.files import write_atomically

PROG = "dynast-translate"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate one image from your own inputs (see the module docstring).",
    )
    parser.add_argument("--model", required=True, help="save_pretrained folder, run or checkpoint")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument(
        "--preset",
        default=None,
        help="the training preset whose data pipeline the model was trained with (e.g. "
        "deepfashion-256; default: the run's config.json, else the model's own preset name)",
    )
    given = parser.add_argument_group("the input (the one the model reads)")
    given.add_argument("--pose", default=None, help="OpenPose JSON, or <name>_candidate.txt")
    given.add_argument(
        "--pose-size",
        default=None,
        help="W,H: the size of the image --pose was detected on (default: the model's size)",
    )
    given.add_argument(
        "--min-confidence",
        type=float,
        default=DEFAULT_MIN_CONFIDENCE,
        help="OpenPose keypoints below this confidence are missing (%(default)s)",
    )
    given.add_argument("--semantic", default=None, help="class map (.png class indices or .npy)")
    given.add_argument("--edges", default=None, help="a face: DIR/CelebA-HQ-img/<n>.jpg + masks")
    exemplar = parser.add_argument_group("the exemplar")
    exemplar.add_argument("--exemplar", required=True, help="the photo whose appearance is used")
    exemplar.add_argument(
        "--exemplar-pose",
        default=None,
        help="its pose (pose models; keypoints in the exemplar photo's pixels)",
    )
    exemplar.add_argument("--exemplar-semantic", default=None, help="its class map")
    out = parser.add_argument_group("output")
    out.add_argument("--format", default="png", choices=sorted(FORMATS), help="png (default)")
    out.add_argument("--jpeg-quality", type=int, default=95, help="with --format jpg (95)")
    out.add_argument("--explore", action="store_true", help="also write explore.html")
    parser.add_argument("--cpu", action="store_true", help="run on the CPU even with a GPU")
    return parser


def translate(args: argparse.Namespace) -> int:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model_dir = resolve_generator_dir(args.model)
    generator = load_generator(model_dir, device=device)
    cfg = generator.config
    model = model_data(model_dir, cfg, args.preset)
    inputs = read_inputs(args, model, cfg.image_size, cfg.name)
    sample = inputs.sample
    batch = {k: sample[k][None].to(device) for k in ("semantic", "exemplar", "exemplar_semantic")}

    recorder = AttentionRecorder(generator) if args.explore else nullcontext()
    with torch.no_grad(), recorder:
        output = generator(
            batch["semantic"],
            batch["exemplar"],
            batch["exemplar_semantic"],
            with_warps=True,
            with_sparsity=True,
        )
    generated = to_pixels(output.image[0])
    picture = panel(sample, output, cfg, model.kind)
    page = None
    if args.explore:
        scales = scale_attention(generator, output, recorder)
        page = explore_page(
            title=f"{cfg.name}: {Path(args.exemplar).name}",
            notes=inputs.notes,
            kind=model.kind,
            semantic=sample["semantic"],
            exemplar_semantic=sample["exemplar_semantic"],
            exemplar=sample["exemplar"],
            image=output.image[0].float().cpu(),
            scales=scales,
            warps=[output.warps[j][0].float().cpu() for j in last_blocks(generator)],
        )

    root = Path(args.out)
    record = {
        "time": now(),
        "model": str(model_dir.resolve()),
        "model_config": cfg.to_dict(),
        "data": {"kind": "translate", **inputs.record, "config": model.data.to_dict()},
        "notes": inputs.notes,
        "count": 1,
        "names": "image",
        "format": args.format,
        "jpeg_quality": args.jpeg_quality if args.format == "jpg" else None,
        "size": [cfg.image_size, cfg.image_size],
        "explore": args.explore,
        "device": str(device),
        "environment": environment(),
    }
    for note in inputs.notes:
        print(note)
    if args.format == "jpg":
        print(FORMAT_NOTE, file=sys.stderr)
    write_image(root / f"image.{args.format}", generated, args.format, args.jpeg_quality)
    write_image(root / "panel.png", picture, "png", 0)
    if page is not None:
        write_atomically(root / "explore.html", lambda tmp: tmp.write_text(page))
    write_atomically(
        root / "translate.json", lambda tmp: tmp.write_text(json.dumps(record, indent=2) + "\n")
    )
    written = ["image." + args.format, "panel.png", "translate.json"]
    if page is not None:
        written.append("explore.html")
    print(f"wrote {', '.join(written)} to {root}")
    return 0


def panel(sample, output, cfg, kind: str) -> np.ndarray:
    """The labelled panel of one translation (eval.visualize.sample_panel)."""
    size = tuple(output.image.shape[-2:])
    counts = candidate_counts(cfg, output.block_sizes)
    return sample_panel(
        layout=semantic_pixels(sample["semantic"], kind),
        exemplar_layout=semantic_pixels(sample["exemplar_semantic"], kind),
        exemplar=to_pixels(sample["exemplar"]),
        output=to_pixels(output.image[0]),
        target=None,
        warps=[to_pixels(w[0], size) for w in output.warps],
        confs=[heat_pixels(c[0], 1.0, size) for c in output.confs],
        kept=[heat_pixels(k[0], float(n), size) for k, n in zip(output.kept, counts, strict=True)],
        block_labels=[block_label(cfg, j, s) for j, s in enumerate(output.block_sizes)],
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 1 <= args.jpeg_quality <= 100:
        print(f"{PROG}: error: --jpeg-quality must be in [1, 100]", file=sys.stderr)
        return 2
    try:
        return translate(args)
    except (ValueError, OSError) as error:  # OSError: also an --out that cannot be written
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
