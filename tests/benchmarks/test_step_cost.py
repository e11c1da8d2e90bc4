"""The step cost model (`benchmarks/step_cost.py`): what it counts for an operator, how it models
the attention and the fused normalisations, the padding policy it borrows from CUDA's autocast,
and the CLI on the tiny model."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch._subclasses.fake_tensor import FakeTensorMode

from benchmarks import step_cost
from benchmarks.attention_cost import attention_cost
from benchmarks.tiny_model import TINY_BATCH, TINY_SIZE, tiny_model_config
from dynast.blocks import SPADE
from dynast.generator import Generator


def _record(fn) -> list[step_cost.OpCost]:
    recorder = step_cost.CostRecorder()
    with FakeTensorMode(allow_non_fake_inputs=True), recorder:
        fn()
    return recorder.ops


def test_a_convolution_counts_its_flops_and_every_tensor_once() -> None:
    n, cin, cout, h, w = 2, 3, 5, 7, 9

    def conv() -> None:
        x = torch.randn(n, cin, h, w)
        weight = torch.randn(cout, cin, 3, 3)
        bias = torch.randn(cout)
        F.conv2d(x, weight, bias, padding=1)

    ops = [op for op in _record(conv) if op.name == "convolution"]
    assert len(ops) == 1
    (op,) = ops
    assert op.category == "convolution" and op.phase == "forward"
    assert op.flops == 2 * n * cout * h * w * cin * 9
    floats = n * cin * h * w + cout * cin * 9 + cout + n * cout * h * w
    assert op.bytes == 4 * floats


def test_views_and_allocations_move_nothing() -> None:
    def views() -> None:
        x = torch.empty(4, 6)
        x.view(6, 4).reshape(24)[:5].unsqueeze(0)
        x.sum()
        x.t().reshape(24)  # not expressible as a view: a copy

    ops = _record(views)
    assert [op.name for op in ops] == ["sum", "clone"]
    assert [op.bytes for op in ops] == [4 * (24 + 1), 4 * 2 * 24]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("convolution_backward", "convolution"),
        ("bmm", "matmul"),
        ("var", "normalisation"),
        ("reflection_pad2d_backward", "copy"),
        ("copy_", "copy"),
        ("masked_fill_", "elementwise"),
        ("_softmax", "reduction"),
        ("candidate_attention_backward", "attention"),
        ("add", "elementwise"),
    ],
)
def test_categories(name: str, expected: str) -> None:
    assert step_cost.category(name) == expected


def test_attention_ops_cost_what_the_fused_kernels_move() -> None:
    b, nq, cqk, cp, cv, cw, k = 2, 16, 8, 4, 6, 3, 2

    def make(*shape: int) -> torch.Tensor:
        return torch.randn(*shape)

    q, kk, v = make(b, nq, cqk), make(b, nq, cqk), make(b, nq, cv)
    qp, kp, wv = make(b, nq, cp), make(b, nq, cp), make(b, nq, cw)
    top = torch.zeros(b, nq, k, dtype=torch.int64)
    common = dict(batch=b, nq=nq, nk=nq, cqk=cqk, cp=cp, cv=cv, cw=cw, element_bytes=4)

    dense_args = (q, kk, v, qp, kp, wv, 1.0, 1.0, k, "kept", "torch")
    flops, moved = step_cost.attention_op_cost("dense_attention", dense_args)
    want = attention_cost(m=None, k=k, pass_="fwd", **common)
    assert (flops, moved) == (want.flops, want.bytes)

    grads = (make(b, nq, cv), make(b, nq), make(b, nq, cw))
    cand_args = (q, kk, v, qp, kp, top, wv, "inner", 4, 4, 1.0, 1.0, k, "kept", "torch")
    flops, moved = step_cost.attention_op_cost("candidate_attention_backward", grads + cand_args)
    # Derived candidates: the kernel reads the builder's int32 copy of the previous top-k.
    want = attention_cost(m=5 * k, k=0, pass_="bwd", derived_from="inner", index_bytes=4, **common)
    assert (flops, moved) == (want.flops, want.bytes)


def test_pads_keep_their_dtype_inside_and_the_cpu_policy_returns() -> None:
    x = torch.randn(1, 2, 4, 4, dtype=torch.bfloat16)

    def pad_dtype() -> torch.dtype:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return F.pad(x, (1, 1, 1, 1), mode="reflect").dtype

    before = pad_dtype()
    with step_cost.cuda_autocast_pads():
        assert pad_dtype() == torch.bfloat16
    assert pad_dtype() == before


def _tiny_step(**kwargs) -> list[step_cost.OpCost]:
    return step_cost.count_step(
        tiny_model_config(), TINY_SIZE, TINY_BATCH, torch.bfloat16, **kwargs
    )


def test_every_attention_block_is_counted_once_per_pass() -> None:
    blocks = sum(len(scale) for scale in Generator(tiny_model_config()).transformer)
    ops = _tiny_step()
    attention = [op for op in ops if op.category == "attention"]
    assert sorted({op.name for op in attention}) == [
        "candidate_attention",
        "candidate_attention_backward",
        "dense_attention",
        "dense_attention_backward",
    ]
    assert sum(op.phase == "forward" for op in attention) == blocks
    assert sum(op.phase == "backward" for op in attention) == blocks
    assert all(op.flops > 0 and op.bytes > 0 for op in attention)
    convs = [op for op in ops if op.category == "convolution"]
    assert {op.phase for op in convs} == {"forward", "backward"}
    assert all(op.flops > 0 for op in convs)


def test_the_fused_normalisation_replaces_the_eager_chain() -> None:
    spades = sum(isinstance(m, SPADE) for m in Generator(tiny_model_config()).modules())
    eager, fused = _tiny_step(), _tiny_step(fused_norm=True)
    assert not any(op.name.startswith("fused_") for op in eager)
    for phase in ("forward", "backward"):
        calls = [o for o in fused if o.name == "fused_spade_modulation" and o.phase == phase]
        assert len(calls) == spades
    positional = [o for o in fused if o.name == "fused_positional_norm"]
    assert positional and len(positional) % 2 == 0
    # Fewer operators and fewer bytes; the convolutions and the attention are untouched.
    assert len(fused) < len(eager)
    assert sum(o.bytes for o in fused) < sum(o.bytes for o in eager)
    for cat in ("convolution", "attention"):
        assert sum(o.flops for o in fused if o.category == cat) == sum(
            o.flops for o in eager if o.category == cat
        )


def test_the_fused_normalisation_model_bytes() -> None:
    recorder = step_cost.CostRecorder()
    with FakeTensorMode():
        x = torch.empty(2, 3, 4, 5, dtype=torch.bfloat16, requires_grad=True)
        g = torch.empty_like(x, requires_grad=True)
        out = step_cost.FusedNormCost.apply(x, g, torch.empty_like(x), recorder)
        recorder.phase = "backward"
        out.backward(torch.empty_like(out))
    maps, stats = x.numel() * 2, 2 * 4 * 2 * 4 * 5
    assert [(o.phase, o.bytes) for o in recorder.ops] == [
        ("forward", 5 * maps + stats),
        ("backward", 8 * maps + stats),
    ]


def test_channels_last_changes_layout_only() -> None:
    nchw, nhwc = _tiny_step(), _tiny_step(channels_last=True)
    for cat in ("convolution", "attention", "matmul"):
        assert sum(o.flops for o in nchw if o.category == cat) == sum(
            o.flops for o in nhwc if o.category == cat
        )


def test_cli_tiny(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "cost.csv"
    assert step_cost.main(["--tiny", "--top", "5", "--norm", "fused", "--csv", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "tiny, 16 px, batch 2, amp bf16, fused norm, NCHW" in printed
    assert "total" in printed and "host:" in printed
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == step_cost.COLUMNS
    assert {r["phase"] for r in rows} == {"forward", "backward"}
    assert {r["category"] for r in rows} >= {"convolution", "attention", "normalisation"}
    assert all(r["norm"] == "fused" and r["layout"] == "NCHW" for r in rows)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--tiny", "--peak-tflops", "0"], "--peak-tflops must be > 0"),
        (["--tiny", "--batch", "0"], "--size and --batch must be >= 1"),
        (["--tiny", "--top", "-1"], "--host-us and --top must be >= 0"),
    ],
)
def test_cli_refuses_bad_values(argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        step_cost.main(argv)


def _profile_csv(path: Path, runs: list[tuple[str, dict[str, float]]], **fields: str) -> Path:
    """A profile_step.py CSV with one row per (run timestamp, category)."""
    from benchmarks import profile_step

    base = {c: "" for c in profile_step.COLUMNS}
    base.update(config="tiny", image_size="16", batch="2", amp="bf16", backend="triton")
    base.update(fields)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=profile_step.COLUMNS)
        writer.writeheader()
        for stamp, per_category in runs:
            for cat, ms in per_category.items():
                writer.writerow({**base, "timestamp": stamp, "category": cat,
                                 "self_ms_per_step": ms})  # fmt: skip
    return path


def test_read_profile_takes_the_newest_run(tmp_path: Path) -> None:
    path = _profile_csv(
        tmp_path / "p.csv",
        [
            ("2026-01-01T00:00:00+00:00", {"convolution": 9.0}),
            ("2026-02-01T00:00:00+00:00", {"convolution": 2.0, "attention": 1.5, "other": 0.5}),
        ],
    )
    profile = step_cost.read_profile(path)
    assert profile.ms == {"convolution": 2.0, "attention": 1.5, "other": 0.5}
    assert (profile.config, profile.image_size, profile.batch, profile.amp) == (
        "tiny",
        16,
        2,
        "bf16",
    )
    with pytest.raises(ValueError, match="cannot read"):
        step_cost.read_profile(tmp_path / "missing.csv")
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"not a profile_step\.py CSV"):
        step_cost.read_profile(tmp_path / "bad.csv")


def test_efficiency_table_sets_floors_beside_measured_times() -> None:
    ops = [
        step_cost.OpCost("convolution", "forward", "convolution", 2e12, 0.0),  # 2 ms at 1 PFLOP/s
        step_cost.OpCost("add", "forward", "elementwise", 0.0, 1e9),  # 1 ms at 1 TB/s
        step_cost.OpCost("dense_attention", "forward", "attention", 0.0, 5e8),  # 0.5 ms
    ]
    profile = step_cost.Profile(
        "tiny", 16, 2, "bf16", "triton",
        {"convolution": 4.0, "elementwise": 3.0, "other": 1.0, "attention": 5.0},
    )  # fmt: skip
    table = step_cost.efficiency_table(ops, profile, peak_tflops=1000.0, bandwidth_tbs=1.0)
    rows = {line[:20].strip(): line[20:].split() for line in table.splitlines()[1:] if line}
    assert rows["convolution"] == ["4.00", "2.00", "50.0%"]
    assert rows["other"] == ["1.00", "0.00", "0.0%"]
    assert rows["attention"] == ["5.00", "0.50", "10.0%"]
    # Groups: elementwise and other are the memory-bound rest.
    assert rows["memory-bound rest"] == ["4.00", "1.00", "25.0%"]
    assert rows["convolution, matmul"] == ["4.00", "2.00", "50.0%"]
    assert rows["total"] == ["13.00", "3.50", "26.9%"]


def test_cli_with_a_profile_counts_the_profiled_step(tmp_path: Path, capsys) -> None:
    path = _profile_csv(tmp_path / "p.csv", [("2026-02-01T00:00:00+00:00", {"convolution": 2.0})])
    assert step_cost.main(["--profile", str(path), "--top", "0"]) == 0
    printed = capsys.readouterr().out
    assert "tiny, 16 px, batch 2, amp bf16" in printed
    assert "of roofline" in printed and "memory-bound rest" in printed
    with pytest.raises(SystemExit, match="measured batch 2, but 4 was asked"):
        step_cost.main(["--profile", str(path), "--batch", "4"])


def test_backward_operators_name_the_autograd_node_that_ran_them() -> None:
    ops = _tiny_step()
    assert all(op.node == "" for op in ops if op.phase == "forward")
    nodes = {op.node for op in ops if op.phase == "backward"}
    assert {"ConvolutionBackward0", "dynast_candidate_attentionBackward"} <= nodes
    table = step_cost.operator_table(ops, 989.0, 4.22, top=500, by_node=True)
    assert "convolution_backward (ConvolutionBackward0)" in table
    assert "(ConvolutionBackward0)" not in step_cost.operator_table(ops, 989.0, 4.22, top=500)
