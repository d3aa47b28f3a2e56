"""Quantize schemes: settings checks and the llmcompressor modifiers each scheme builds
(nothing is quantized here; the end-to-end runs are in test_quantease.py and test_parity.py)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from compression.quantize import SCHEMES, QuantizeConfig, build_recipe
from compression.stages import STAGES


def llama(hidden=192, intermediate=384, heads=2, head_dim=64) -> SimpleNamespace:
    return SimpleNamespace(
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_attention_heads=heads,
        head_dim=head_dim,
    )


@pytest.mark.parametrize("group_size", [0, None, 32])
def test_group_size_zero_or_null_is_per_channel_and_accepted(group_size):
    cfg = STAGES["quantize"].parse({"scheme": "int4", "group_size": group_size})
    assert cfg.per_channel == (not group_size)


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"group_size": -1}, "group_size must be an integer >= 1, or 0 / null"),
        ({"group_size": 1.5}, "group_size must be"),
        ({"group_size": True}, "group_size must be"),
        ({"num_samples": 0}, "num_samples must be >= 1"),
        ({"quantease_iterations": -1}, "quantease_iterations must be >= 0"),
        ({"scheme": "int4-gptq"}, "unknown scheme 'int4-gptq'"),
    ],
)
def test_bad_settings_are_refused_naming_the_key(spec, message):
    with pytest.raises(ValueError, match=message):
        STAGES["quantize"].parse({"scheme": "int4", **spec})


def test_group_size_check_needs_a_divisor_of_every_input_width_unless_per_channel():
    stage = STAGES["quantize"]
    config = llama(hidden=192)  # 128 does not divide 192
    with pytest.raises(ValueError, match="group_size 128 does not divide hidden_size"):
        stage.check(QuantizeConfig("int4-quantease", group_size=128), config)
    for group_size in (0, None, 64):
        out = stage.check(QuantizeConfig("int4-quantease", group_size=group_size), config)
        assert out.quantization_config["scheme"] == "int4-quantease"
    # the check is for int4 only: int8 has per-channel weight scales
    stage.check(QuantizeConfig("int8-quantease", group_size=128), config)


def _weights(modifier) -> dict:
    """The weight format fields (observers may differ: RTN's modifier fills in its own)."""
    w = modifier.config_groups["group_0"].weights.model_dump()
    return {k: w[k] for k in ("num_bits", "type", "symmetric", "strategy", "group_size")}


@pytest.mark.parametrize("group_size", [0, 64])
def test_int4_schemes_share_one_weight_format(group_size):
    from llmcompressor.modifiers.quantization import GPTQModifier, QuantizationModifier

    from compression.quantease import QuantEaseModifier

    recipes = {s: build_recipe(s, group_size) for s in ("int4", "int4-quantease", "int4-rtn")}
    kinds = {s: [type(m) for m in r] for s, r in recipes.items()}
    assert kinds == {
        "int4": [GPTQModifier],
        "int4-quantease": [QuantEaseModifier],
        "int4-rtn": [QuantizationModifier],
    }
    weights = [_weights(r[0]) for r in recipes.values()]
    assert weights[0] == weights[1] == weights[2]
    w = weights[0]
    assert (w["num_bits"], w["symmetric"]) == (4, True)
    if group_size:
        assert (w["strategy"], w["group_size"]) == ("group", group_size)
    else:
        assert (w["strategy"], w["group_size"]) == ("channel", None)
    for r in recipes.values():
        assert r[0].ignore == ["lm_head"]


def test_int8_quantease_is_smoothquant_then_quantease_w8a8():
    from llmcompressor.modifiers.quantization import GPTQModifier
    from llmcompressor.modifiers.transform import SmoothQuantModifier

    from compression.quantease import QuantEaseModifier

    plain = build_recipe("int8", smoothing_strength=0.5)
    qe = build_recipe("int8-quantease", smoothing_strength=0.5, quantease_iterations=2)
    assert [type(m) for m in plain] == [SmoothQuantModifier, GPTQModifier]
    assert [type(m) for m in qe] == [SmoothQuantModifier, QuantEaseModifier]
    assert qe[0].smoothing_strength == plain[0].smoothing_strength == 0.5
    assert (qe[1].scheme, qe[1].ignore, qe[1].iterations) == ("W8A8", ["lm_head"], 2)
    assert plain[1].scheme == "W8A8"


def test_every_scheme_builds_a_recipe():
    for scheme in SCHEMES:
        assert build_recipe(scheme, 64)
    with pytest.raises(ValueError, match="unknown scheme 'int2'"):
        build_recipe("int2")
