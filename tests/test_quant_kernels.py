"""Integer kernels of the torch engine (``ranking.quant_kernels``): each kernel's product against
the exact product of its quantized operands, the measured choice, and the scores of real INT8 /
INT4 checkpoints on every kernel this machine runs against the dequantized path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ranking.checkpoint import load_checkpoint
from ranking.quant_kernels import (
    FALLBACK,
    KERNELS,
    MAX_REL_ERR,
    PROBE_TOKENS,
    _exact,
    choose,
    convert_quantized,
    load_for_scoring,
    measure,
)
from ranking.scorer import TorchScorer


def _int_weights(n: int, k: int, bits: int, group: int | None = None):
    gen = torch.Generator().manual_seed(1)
    limit = 2 ** (bits - 1) - 1
    q = torch.randint(-limit, limit + 1, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, k // (group or k), generator=gen) * 0.01 + 0.001
    return q, scale


def _rel_err(got: torch.Tensor, exact: torch.Tensor) -> float:
    return float((got.double() - exact).abs().max() / exact.abs().mean())


def test_int4pack_matches_the_exact_product_of_its_operands():
    q, scale = _int_weights(96, 128, 4, group=32)
    x = torch.randn(37, 128)
    got = KERNELS["int4pack"](q, scale, None)(x.reshape(1, 37, 128))
    assert got.shape == (1, 37, 96)
    assert _rel_err(got[0], _exact(x, q, scale, 4)) < 1e-4


def test_fbgemm_quantizes_activations_per_token():
    """Rows with an outlier and rows without in one batch: per-token scales keep the quiet rows
    as exact as W8A8 makes them (a per-tensor scale would round them to a few levels). fbgemm
    keeps 7 bits on CPUs without VNNI, so its rounding error is up to ~2x W8A8's."""
    q, scale = _int_weights(96, 128, 8)
    x = torch.randn(40, 128)
    x[::4, 3] *= 50  # one token in four carries an outlier channel
    got = KERNELS["fbgemm"](q, scale, None)(x)
    no_rounding = x.double() @ (q.double() * scale.double()).t()
    w8a8 = _rel_err(_exact(x, q, scale, 8), no_rounding)
    quiet = [i for i in range(40) if i % 4]
    w8a8_quiet = _rel_err(_exact(x, q, scale, 8)[quiet], no_rounding[quiet])
    assert _rel_err(got, no_rounding) < 3 * w8a8
    assert _rel_err(got[quiet], no_rounding[quiet]) < 3 * w8a8_quiet


def test_choose_takes_the_fastest_kernel_within_the_error_gate_and_says_why():
    measured = {
        FALLBACK: {"gflops": 50.0, "max_rel_err": 0.01},
        "fbgemm": {"gflops": 80.0, "max_rel_err": 0.04},
        "onednn": {"gflops": 120.0, "max_rel_err": 1.3},  # saturated
    }
    kernel, why = choose(measured)
    assert kernel == "fbgemm"
    assert "onednn (max rel err 1.30" in why and "fbgemm 80" in why
    measured["fbgemm"]["gflops"] = 51.0  # within the noise of one timed layer: float stays
    assert choose(measured)[0] == FALLBACK
    measured["fbgemm"] = {"error": "RuntimeError: no kernel"}
    kernel, why = choose(measured)
    assert kernel == FALLBACK and "fbgemm (RuntimeError: no kernel)" in why


def test_measure_reports_every_candidate_with_its_error():
    q, scale = _int_weights(64, 128, 8)
    rows = measure(q, scale, 8, ("fbgemm", "onednn"), torch.float32)
    assert set(rows) == {FALLBACK, "fbgemm", "onednn"}
    assert rows[FALLBACK]["gflops"] > 0 and rows[FALLBACK]["max_rel_err"] < MAX_REL_ERR
    assert rows["fbgemm"]["max_rel_err"] < MAX_REL_ERR


def test_the_fallback_is_timed_as_loaded():
    """What would serve is the loaded float layer with the activation quantization it emulates
    (about 1.7x slower than the bare float product on the demo INT8 student): that layer is
    what the fallback's timing and error run, with its bias left out as the kernels run."""
    q, scale = _int_weights(64, 128, 8)
    layer = torch.nn.Linear(128, 64)
    with torch.no_grad():
        layer.weight.copy_(q.float() * scale)
    calls = []
    layer.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape))
    rows = measure(q, scale, 8, (), torch.float32, layer)
    assert calls and all(s == (1, PROBE_TOKENS, 128) for s in calls)  # batch, tokens, features
    bare = measure(q, scale, 8, (), torch.float32)
    assert rows[FALLBACK]["max_rel_err"] == bare[FALLBACK]["max_rel_err"]  # bias removed


def test_a_float_model_has_nothing_to_convert(tiny_teacher):
    model, *_ = tiny_teacher
    assert convert_quantized(model, "bf16") is None


@pytest.mark.slow
def test_an_unknown_kernel_for_the_format_is_refused(tiny_quantized):
    model, *_ = load_checkpoint(tiny_quantized["int4"], compute=True)
    with pytest.raises(ValueError, match="kernel 'fbgemm' cannot run int4"):
        convert_quantized(model, "int4", "fbgemm")


@pytest.mark.slow
def test_integers_are_read_exactly_when_the_model_computes_in_bf16(tiny_quantized):
    """Dequantized to bf16, an int8 weight is q * scale rounded to 8 significant bits, which
    can lose q by up to half a step: the integers are read in fp32, then the model is cast."""

    def integers(dtype):
        loaded = load_for_scoring(tiny_quantized["int8"], dtype, kernel="fbgemm")
        assert loaded.kernel == "int8 fbgemm"
        assert {p.dtype for p in loaded.model.parameters()} <= {dtype}
        mods = [m for m in loaded.model.modules() if isinstance(m, KERNELS["fbgemm"])]
        return [torch.ops.quantized.linear_unpack(m._packed)[0].int_repr() for m in mods]

    in_bf16, in_fp32 = integers(torch.bfloat16), integers(torch.float32)
    assert in_bf16 and all(torch.equal(a, b) for a, b in zip(in_bf16, in_fp32, strict=True))


def _scores(path, requests, kernel: str) -> tuple[list[np.ndarray], object]:
    loaded = load_for_scoring(path, kernel=kernel)
    scorer = TorchScorer(loaded.model, loaded.tokenizer, loaded.task)
    return [scorer.score(q, items) for q, items in requests], loaded.choice


@pytest.mark.slow
@pytest.mark.parametrize("fmt, kernel", [("int8", "fbgemm"), ("int8", "onednn"),
                                         ("int4", "int4pack"), ("int8", "auto"), ("int4", "auto")])  # fmt: skip
def test_integer_kernels_score_like_the_dequantized_path(tiny_quantized, tiny_demo, fmt, kernel):
    """Every kernel that passes the accuracy gate here scores within the engines' tolerance of
    the dequantized path (which emulates the activation rounding); one that fails the gate is
    never chosen by auto."""
    from ranking.dataset import requests_from_split
    from tests.test_parity import SCORE_TOL

    requests = [(q, (i * 2)[:12]) for q, i in requests_from_split(tiny_demo / "data", "test", 3)]
    ref, _ = _scores(tiny_quantized[fmt], requests, FALLBACK)
    probe = load_for_scoring(tiny_quantized[fmt]).choice
    row = probe.measured.get(kernel, {})
    if "error" in row:
        pytest.skip(f"{kernel} does not run here: {row['error']}")
    if kernel != "auto" and row["max_rel_err"] > MAX_REL_ERR:
        assert probe.kernel != kernel  # the gate keeps a saturating kernel out
        pytest.skip(f"{kernel} fails the accuracy gate here ({row['max_rel_err']:.2f})")
    got, choice = _scores(tiny_quantized[fmt], requests, kernel)
    assert choice.kernel == kernel or kernel == "auto"
    for a, b in zip(ref, got, strict=True):
        assert np.abs(a - b).max() < SCORE_TOL, (fmt, kernel, choice.kernel, a, b)


@pytest.mark.slow
def test_the_server_names_its_kernel_in_the_log_and_models(tiny_quantized, tmp_path):
    import httpx

    from tests.serving import ServerProcess

    with ServerProcess(tiny_quantized["int8"], "auto", tmp_path) as srv:
        card = httpx.get(srv.url + "/v1/models").json()["data"][0]
        r = httpx.post(srv.url + "/v1/rank", json={"query": "a b", "items": ["c", "d"]})
        log = srv.logs()
    assert r.status_code == 200, r.text
    assert card["engine"] == "torch" and card["format"] == "int8"
    assert card["kernel"].startswith("int8 ") and "GFLOP/s" in card["kernel_reason"]
    assert f"kernel={card['kernel']}" in log and "engine torch:" in log
