"""Run-folder pieces: checkpoint staging/publish/rotation, data order, metrics log, sample grids,
clean error messages."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from dynast.panel import MIN_TILE
from train import checkpoints as ckpt
from train.data_order import DataPosition, EpochSampler, micro_batches
from train.errors import TrainingError, clean_message
from train.metrics_log import MetricsLog, read_metrics
from train.samples import sample_grid, sample_tiles, save_png


def _fake_checkpoint(run_dir, step, complete=True):
    folder = ckpt.staging_dir(run_dir, step)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x")
    if complete:
        ckpt.write_progress(
            folder,
            ckpt.Progress(
                step=step, epoch=0, batch_in_epoch=step, world_size=1, batch_size=2, elapsed_s=1.5
            ),
        )
        return ckpt.publish(folder)
    return folder


def test_publish_rotate_and_latest_ignore_incomplete(tmp_path):
    for step in (2, 4, 6):
        _fake_checkpoint(tmp_path, step)
    partial = _fake_checkpoint(tmp_path, 8, complete=False)
    assert partial.name == "checkpoint_00000008.tmp"
    assert ckpt.latest_checkpoint(tmp_path)[0] == 6
    removed = ckpt.rotate(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint_00000002"]
    assert [s for s, _ in ckpt.complete_checkpoints(tmp_path)] == [4, 6]
    assert partial.exists(), "rotation deletes only complete checkpoints"
    assert ckpt.remove_partial(tmp_path) == [partial] and not partial.exists()
    progress = ckpt.read_progress(ckpt.latest_checkpoint(tmp_path)[1])
    assert progress == ckpt.Progress(
        step=6, epoch=0, batch_in_epoch=6, world_size=1, batch_size=2, elapsed_s=1.5
    )


def test_publish_replaces_a_checkpoint_of_the_same_step(tmp_path):
    first = _fake_checkpoint(tmp_path, 3)
    (first / "marker").write_text("old")
    again = _fake_checkpoint(tmp_path, 3)
    assert again == first and not (again / "marker").exists()
    assert [p.name for p in (tmp_path / "checkpoints").iterdir()] == ["checkpoint_00000003"]
    staging = ckpt.staging_dir(tmp_path, 9)
    staging.mkdir()
    with pytest.raises(TrainingError, match="not a complete checkpoint"):
        ckpt.publish(staging)


def test_unreadable_progress_names_the_file(tmp_path):
    (tmp_path / "progress.json").write_text("{not json")
    with pytest.raises(TrainingError, match=r"progress.json: not a readable"):
        ckpt.read_progress(tmp_path)


@pytest.mark.parametrize("world", [1, 2, 3])
def test_epoch_sampler_partitions_whole_global_batches(world):
    batch = 2
    per_rank = [
        EpochSampler(23, batch_size=batch, rank=r, world_size=world, seed=7, epoch=1).indices
        for r in range(world)
    ]
    batches = 23 // (batch * world)
    assert all(len(idx) == batches * batch for idx in per_rank)
    flat = [i for idx in per_rank for i in idx]
    assert len(set(flat)) == len(flat), "processes never share a sample within an epoch"
    # Same seed and epoch: same order; another epoch: another order.
    again = EpochSampler(23, batch_size=batch, rank=0, world_size=world, seed=7, epoch=1)
    other = EpochSampler(23, batch_size=batch, rank=0, world_size=world, seed=7, epoch=2)
    assert again.indices == per_rank[0] and other.indices != per_rank[0]
    # Starting at micro-batch 2 skips exactly the first two micro-batches.
    skipped = EpochSampler(
        23, batch_size=batch, rank=0, world_size=world, seed=7, epoch=1, start_batch=2
    )
    assert skipped.indices == per_rank[0][2 * batch :]


def test_epoch_sampler_too_small_dataset():
    with pytest.raises(TrainingError, match="fewer than one global micro-batch"):
        EpochSampler(3, batch_size=2, rank=0, world_size=2, seed=0, epoch=0)


class _Numbers(Dataset):
    def __init__(self, n: int, bad: int | None = None) -> None:
        self.n, self.bad = n, bad

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        if i == self.bad:
            raise ValueError(f"/data/labels/{i}.png: class index 12 is out of range")
        return {"index": i, "x": torch.tensor([float(i)])}


def test_micro_batches_resume_mid_epoch_and_across_epochs():
    def take(position, count):
        """The indices of `count` micro-batches from `position`, and the position after them."""
        it = micro_batches(
            _Numbers(10), position, batch_size=3, rank=0, world_size=1, seed=1, num_workers=0
        )
        read = [next(it) for _ in range(count)]
        return [batch["index"].tolist() for batch, _ in read], read[-1][1]

    straight, _ = take(DataPosition(), 7)  # 3 micro-batches per epoch: crosses two epochs
    first, position = take(DataPosition(), 4)
    assert (position.epoch, position.batch) == (1, 1)
    assert first + take(position, 3)[0] == straight
    # A position recorded at the very end of an epoch resumes at the next one.
    _, end = take(DataPosition(), 3)
    assert end == DataPosition(0, 3)
    assert take(end, 1)[0] == [straight[3]]


@pytest.mark.parametrize("workers", [0, 1])
def test_data_errors_surface_as_one_clean_message(workers):
    def batches(bad: int | None):
        return micro_batches(
            _Numbers(6, bad=bad),
            DataPosition(),
            batch_size=6,
            rank=0,
            world_size=1,
            seed=0,
            num_workers=workers,
        )

    bad = next(batches(None))[0]["index"].tolist()[2]
    it = batches(bad)
    with pytest.raises(TrainingError) as info:
        next(it)
    message = str(info.value)
    assert message == f"training data: /data/labels/{bad}.png: class index 12 is out of range"


def test_clean_message_strips_a_worker_traceback():
    wrapped = ValueError(
        "Caught ValueError in DataLoader worker process 0.\nOriginal Traceback (most recent call "
        'last):\n  File "x.py", line 1, in f\n    raise ValueError(m)\nValueError: bad file\nmore'
    )
    assert clean_message(wrapped) == "bad file\nmore"
    assert clean_message(ValueError("plain")) == "plain"


def test_metrics_log_truncates_on_resume_and_skips_a_torn_line(tmp_path):
    log = MetricsLog(tmp_path, keep_through=-1)
    for step in (0, 2, 4):
        log.log(step, {"loss/x": step / 2, "bad": float("nan")})
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss')  # killed mid-write
    records = read_metrics(tmp_path)
    assert [r["step"] for r in records] == [0, 2, 4] and records[0]["bad"] is None
    MetricsLog(tmp_path, keep_through=2).close()
    assert [r["step"] for r in read_metrics(tmp_path)] == [0, 2]
    assert any((tmp_path / "tensorboard").iterdir())


def _find_tile(picture: np.ndarray, tile: np.ndarray) -> tuple[int, int]:
    """(y, x) of the one place `tile` sits in `picture`."""
    h, w = tile.shape[:2]
    starts = np.argwhere((picture == tile[0, 0]).all(axis=-1))
    found = [
        (int(y), int(x)) for y, x in starts if np.array_equal(picture[y : y + h, x : x + w], tile)
    ]
    assert len(found) == 1, found
    return found[0]


def test_sample_grid_layout_and_png(tmp_path):
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(2, 3, 12, 10, generator=gen) * 2 - 1 for _ in range(5)]
    images[2] = torch.rand(2, 3, 6, 5, generator=gen) * 2 - 1  # the warp may be coarser
    tiles = sample_tiles(*images)
    assert tiles.shape == (2, 5, 12, 10, 3) and tiles.dtype == np.uint8
    expected = ((images[3][1].clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(tiles[1, 3], expected)  # row 1, column "output"
    grid = sample_grid(*images)
    assert grid.dtype == np.uint8 and grid.shape[2] == 3
    # Every tile is in the picture, enlarged by a whole factor, in its row and column order.
    zoom = math.ceil(MIN_TILE / 10)
    places = [
        [_find_tile(grid, tiles[r, c].repeat(zoom, axis=0).repeat(zoom, axis=1)) for c in range(5)]
        for r in range(2)
    ]
    assert all(row[c][1] < row[c + 1][1] for row in places for c in range(4))
    assert all(places[0][c][0] < places[1][c][0] for c in range(5))
    # The column captions above the first row and the row labels left of the tiles are drawn.
    top, left = places[0][0]
    assert (grid[:top, left:] < 128).any() and (grid[:, :left] < 128).any()
    save_png(grid, tmp_path / "s" / "step_00000001.png")
    with Image.open(tmp_path / "s" / "step_00000001.png") as im:
        np.testing.assert_array_equal(np.asarray(im), grid)
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["step_00000001.png"]
    with pytest.raises(ValueError, match="exemplar must be"):
        sample_grid(images[0], images[1][:, :1], *images[2:])


def test_progress_file_is_json(tmp_path):
    ckpt.write_progress(
        tmp_path,
        ckpt.Progress(step=5, epoch=1, batch_in_epoch=2, world_size=2, batch_size=4, elapsed_s=3.0),
    )
    assert json.loads((tmp_path / "progress.json").read_text())["batch_in_epoch"] == 2


def test_default_collate_of_loader_is_what_micro_batches_yield():
    it = micro_batches(
        _Numbers(4), DataPosition(), batch_size=2, rank=1, world_size=2, seed=3, num_workers=0
    )
    batch, _ = next(it)
    direct = next(
        iter(
            DataLoader(
                _Numbers(4),
                batch_size=2,
                sampler=EpochSampler(4, batch_size=2, rank=1, world_size=2, seed=3, epoch=0),
            )
        )
    )
    assert torch.equal(batch["index"], direct["index"])
