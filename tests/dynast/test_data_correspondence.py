"""correspondence_accuracy against a brute-force loop, and its extreme matchers."""

from __future__ import annotations

import pytest
import torch

from dynast.data import DataConfig, SyntheticDataset, correspondence_accuracy


def _brute_force(best_match, label, exemplar_label, grid) -> torch.Tensor:
    """Loop over queries; read classes at grid-cell centres with float arithmetic."""
    h, w = grid
    result = []
    for b in range(best_match.shape[0]):
        hits = 0
        for q in range(h * w):
            qy, qx = divmod(q, w)
            ky, kx = divmod(int(best_match[b, q]), w)
            query_class = label[
                b, int((qy + 0.5) * label.shape[1] / h), int((qx + 0.5) * label.shape[2] / w)
            ]
            key_class = exemplar_label[
                b,
                int((ky + 0.5) * exemplar_label.shape[1] / h),
                int((kx + 0.5) * exemplar_label.shape[2] / w),
            ]
            hits += int(query_class == key_class)
        result.append(hits / (h * w))
    return torch.tensor(result)


def _labels(batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    dataset = SyntheticDataset(DataConfig(image_size=48, textures="procedural"), "test")
    samples = [dataset[i] for i in range(batch)]
    return (
        torch.stack([s["label"] for s in samples]),
        torch.stack([s["exemplar_label"] for s in samples]),
    )


@pytest.mark.parametrize(
    "grid", [(48, 48), (12, 12), (6, 6), (5, 7)], ids=lambda g: f"{g[0]}x{g[1]}"
)
def test_matches_brute_force(grid: tuple[int, int]) -> None:
    label, exemplar_label = _labels(2)
    h, w = grid
    generator = torch.Generator().manual_seed(h * 100 + w)
    best = torch.randint(0, h * w, (2, h * w), generator=generator)
    got = correspondence_accuracy(best, label, exemplar_label, grid)
    assert got.shape == (2,) and got.dtype == torch.float32
    assert torch.allclose(got, _brute_force(best, label, exemplar_label, grid).float())


def test_odd_sized_random_maps() -> None:
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, 3, (3, 37, 29), generator=generator)
    exemplar_label = torch.randint(0, 3, (3, 37, 29), generator=generator)
    best = torch.randint(0, 9 * 7, (3, 9 * 7), generator=generator)
    got = correspondence_accuracy(best, label, exemplar_label, (9, 7))
    assert torch.allclose(got, _brute_force(best, label, exemplar_label, (9, 7)).float())


def _classes_on_grid(label: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """[B, h*w] classes at grid-cell centres, independently of the function under test."""
    h, w = grid
    rows = [int((y + 0.5) * label.shape[1] / h) for y in range(h)]
    cols = [int((x + 0.5) * label.shape[2] / w) for x in range(w)]
    return label[:, rows][:, :, cols].reshape(label.shape[0], -1)


@pytest.mark.parametrize("grid", [(48, 48), (8, 8)], ids=["full", "coarse"])
def test_perfect_matcher_scores_one_and_adversarial_zero(grid: tuple[int, int]) -> None:
    label, exemplar_label = _labels(3)
    queries, keys = _classes_on_grid(label, grid), _classes_on_grid(exemplar_label, grid)
    same = queries[:, :, None] == keys[:, None, :]  # [B, Nq, Nk]
    assert same.any(-1).all(), "every query class must exist on the exemplar grid"
    perfect = same.int().argmax(-1)  # first key of the query's class
    wrong = (~same).int().argmax(-1)  # first key of another class
    assert (~same).any(-1).all()
    assert torch.equal(correspondence_accuracy(perfect, label, exemplar_label, grid), torch.ones(3))
    assert torch.equal(correspondence_accuracy(wrong, label, exemplar_label, grid), torch.zeros(3))
    # The identity on the target's own layout is perfect too.
    identity = torch.arange(grid[0] * grid[1]).expand(3, -1)
    assert torch.equal(correspondence_accuracy(identity, label, label, grid), torch.ones(3))


LONG = torch.long
LABELS = torch.zeros(2, 8, 8, dtype=LONG)


@pytest.mark.parametrize(
    "best,label,grid,message",
    [
        (torch.zeros(2, 16), LABELS, (4, 4), "best_match must be a 2-D integer tensor"),
        (torch.zeros(2, 16, dtype=LONG), LABELS.float(), (4, 4), "label must be a 3-D integer"),
        (torch.zeros(2, 16, dtype=LONG), LABELS[0], (4, 4), "label must be a 3-D integer"),
        (torch.zeros(2, 15, dtype=LONG), LABELS, (4, 4), "15 query positions, grid 4x4 has 16"),
        (torch.full((2, 16), 16), LABELS, (4, 4), r"indices must lie in \[0, 16\)"),
        (torch.zeros(2, 16, dtype=LONG), LABELS, (4, 0), "grid must be"),
        (torch.zeros(3, 16, dtype=LONG), LABELS, (4, 4), "batch sizes differ"),
    ],
    ids=["float-match", "float-label", "2d-label", "grid-size", "index-range", "grid", "batch"],
)
def test_bad_arguments(best: torch.Tensor, label: torch.Tensor, grid: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        correspondence_accuracy(best, label, LABELS, grid)
