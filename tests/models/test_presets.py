"""Presets, configs and parameter accounting (abstract shapes only: nothing big is allocated)."""

import json

import pytest

import attractor_jax.models as M

REQUIRED = [
    "attractor-small-140m",
    "attractor-medium-370m",
    "attractor-large-770m",
    "gpt-small-140m",
    "gpt-medium-370m",
    "gpt-large-770m",
    "gpt-xlarge-1_3b",
    "parcae-small-140m",
    "parcae-medium-370m",
    "parcae-large-770m",
    "parcae-xlarge-1_3b",
    "attractor-tiny",
    "gpt-tiny",
    "parcae-tiny",
]


def test_list_presets_has_the_reference_names():
    assert set(REQUIRED) <= set(M.list_presets())


def test_issue_parameter_counts_are_exact():
    s = M.param_counts(M.get_config("attractor-small-140m"))
    assert s["total"] == 134_237_184
    assert s["split"]["embedding"] == 33_554_432
    assert s["split"]["backbone"] == 88_094_720
    assert s["split"]["head"] == 12_587_008
    assert s["split"]["other"] == 1_024  # final norm
    assert s["detail"]["head_gates"] == 2 * 1024
    assert M.param_counts(M.get_config("attractor-medium-370m"))["total"] == 376_226_560
    assert M.param_counts(M.get_config("attractor-large-770m"))["total"] == 769_493_760
    p = M.param_counts(M.get_config("parcae-small-140m"))
    assert p["total"] == 144_323_136 and p["split"]["value_embeddings"] == 75_497_472
    assert p["detail"]["injection"] == 2 * 768 + 768 * 768 and p["detail"]["C"] == 768 * 768


# Exact totals of the authors' PyTorch models (sum of numel over their parameters; tied embeddings counted
# once, value-embedding tables and their gates included, vocab 32,768 unpadded). reference.md §4 prints them
# rounded (143.1M, 385.9M, ...).
EXACT_PARAMS = {
    "attractor-small-140m": 134_237_184,
    "attractor-medium-370m": 376_226_560,
    "attractor-large-770m": 769_493_760,
    "gpt-small-140m": 143_141_184,
    "gpt-medium-370m": 385_903_104,
    "gpt-large-770m": 773_375_040,
    "gpt-xlarge-1_3b": 1_333_868_544,
    "parcae-small-140m": 144_323_136,
    "parcae-medium-370m": 388_003_328,
    "parcae-large-770m": 776_655_680,
    "parcae-xlarge-1_3b": 1_338_591_744,
}


@pytest.mark.parametrize("name", list(EXACT_PARAMS))
def test_preset_totals_equal_the_reference_exactly(name):
    assert M.param_counts(M.get_config(name))["total"] == EXACT_PARAMS[name]
    # The table behind describe_preset's "reference total" line holds the same exact counts.
    assert M.REFERENCE_PARAMS[name] == EXACT_PARAMS[name]


def test_tiny_presets_are_matched_within_five_percent():
    totals = {
        n: M.param_counts(M.get_config(n))["total"] for n in ("attractor-tiny", "gpt-tiny", "parcae-tiny")
    }
    assert max(totals.values()) <= 1.05 * min(totals.values()), totals
    assert all(6e5 < t < 1.2e6 for t in totals.values())


def test_gpt_value_embeddings_are_broken_out():
    s = M.param_counts(M.get_config("gpt-small-140m"))
    assert s["split"]["value_embeddings"] == 3 * 32768 * 768
    assert s["split"]["embedding"] == 32768 * 768
    no_ve = M.param_counts(M.get_config("gpt-small-140m", value_embeds=False))
    assert no_ve["total"] == s["total"] - 3 * 32768 * 768 - 3 * 32 * 6  # tables and their gates


def test_describe_and_summary_report_split_and_solver():
    text = M.describe_preset("attractor-small-140m")
    assert "134,237,184" in text and "88,094,720" in text and "12,587,008" in text
    assert "anderson" in text and "max_iter=64" in text and "neumann" in text
    summary = M.preset_summary("parcae-small-140m")
    assert summary["depth"]["recurrence"]["mean_recurrence"] == 8
    json.dumps(summary)  # JSON-ready
    assert "recurrence" in M.describe_preset("parcae-tiny")


def test_overrides_plain_dotted_and_nested():
    cfg = M.get_config("attractor-tiny", d_model=64, **{"solver.tol": 1e-5, "backward.kind": "ift"})
    assert cfg.d_model == 64 and cfg.solver.tol == 1e-5 and cfg.backward.kind == "ift"
    assert cfg.solver.max_iter == M.PRESETS["attractor-tiny"].solver.max_iter
    cfg2 = M.get_config("attractor-tiny", solver={"max_iter": 3})
    assert cfg2.solver.max_iter == 3 and cfg2.solver.tol == M.PRESETS["attractor-tiny"].solver.tol


def test_bad_names_and_fields_raise_one_clear_error():
    with pytest.raises(ValueError, match=r"unknown preset 'gpt-huge'.*attractor-tiny"):
        M.create_model("gpt-huge")
    with pytest.raises(ValueError, match=r"unknown config field 'n_layerz'.*n_layers"):
        M.create_model("gpt-tiny", n_layerz=3)
    with pytest.raises(ValueError, match=r"solver.tolerance.*tol"):
        M.get_config("attractor-tiny", **{"solver.tolerance": 1.0})
    with pytest.raises(ValueError, match="solver.kind"):
        M.get_config("attractor-tiny", **{"solver.kind": "newton"})
    with pytest.raises(ValueError, match="sampling"):
        M.get_config("parcae-tiny", sampling="uniform")


def test_config_round_trips_through_json():
    for name in ("attractor-large-770m", "gpt-tiny", "parcae-tiny"):
        cfg = M.get_config(name)
        back = M.config_from_dict(json.loads(json.dumps(M.config_to_dict(cfg))))
        assert back == cfg and type(back) is type(cfg)
    with pytest.raises(ValueError, match="arch"):
        M.config_from_dict({"arch": "rnn"})
