"""Reading and writing the reference format: round trips, torch.save layout, and one clear error per bad
input."""

import json
import pathlib
import shutil
import sys
import zipfile

import numpy as np
import pytest
from flax import nnx, traverse_util

from attractor_jax import cli
from attractor_jax.interop import api, reference
from attractor_jax.interop.safetensors import load_safetensors, save_safetensors
from attractor_jax.interop.torch_format import load_state_dict, save_state_dict

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "reference_checkpoints"


def _params(model):
    return traverse_util.flatten_dict(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def _assert_same_params(a, b):
    pa, pb = _params(a), _params(b)
    assert pa.keys() == pb.keys()
    for k in pa:
        np.testing.assert_array_equal(np.asarray(pa[k]), np.asarray(pb[k]), err_msg=str(k))


@pytest.fixture(scope="module")
def reference_dicts():
    return {n: api.read_reference(FIXTURES / n) for n in ("gpt", "parcae", "attractor")}


def test_torch_reader_sees_the_zip_layout():
    """Tensors come out with the storage layout the pickle names: the tied lm_head shares wte's storage."""
    sd = load_state_dict(FIXTURES / "attractor" / "model.pt")
    with zipfile.ZipFile(FIXTURES / "attractor" / "model.pt") as zf:
        raw = np.frombuffer(zf.read("model/data/1"), "<f4").reshape(256, 64)
    np.testing.assert_array_equal(sd["transformer.wte.weight"], raw)
    np.testing.assert_array_equal(sd["lm_head.weight"], raw)
    assert sd["freqs_cis"].shape == (1, 64, 1, 8, 2)


@pytest.mark.parametrize("name", ["gpt", "parcae", "attractor"])
def test_round_trip_is_bit_exact(tmp_path, reference_dicts, name):
    """import → export (model.pt and model.safetensors) → import gives the same parameters bit for bit, and
    the exported tensors the forward reads equal the authors' file."""
    ref, tensors = reference_dicts[name]
    model, cfg = api.model_from_reference(ref, tensors)
    for fmt in ("pt", "safetensors"):
        out = api.export_pretrained(model, tmp_path / fmt, format=fmt, base_config=ref)
        ref2, tensors2 = api.read_reference(out)
        assert reference.config_from_reference(ref2) == cfg
        model2, _ = api.model_from_reference(ref2, tensors2)
        _assert_same_params(model, model2)
    used = {reference.reference_name(cfg.arch, p)[0] for p in _params(model)}
    for k in used:
        np.testing.assert_array_equal(tensors2[k], tensors[k], err_msg=k)


def test_writers_round_trip_dtypes(tmp_path):
    arrays = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, -2], np.int64),
              "c": np.ones((2, 2), np.float16), "d": np.zeros((0, 3), np.float32)}
    save_state_dict(arrays, tmp_path / "m.pt")
    save_safetensors(arrays, tmp_path / "m.safetensors")
    for back in (load_state_dict(tmp_path / "m.pt"), load_safetensors(tmp_path / "m.safetensors")):
        assert back.keys() == arrays.keys()
        for k in arrays:
            assert back[k].dtype == arrays[k].dtype
            np.testing.assert_array_equal(back[k], arrays[k])


def test_missing_tensor(reference_dicts):
    ref, tensors = reference_dicts["gpt"]
    bad = {k: v for k, v in tensors.items() if k != "transformer.h.1.attn.c_k.weight"}
    with pytest.raises(ValueError, match=r"missing tensor 'transformer\.h\.1\.attn\.c_k\.weight'"):
        api.model_from_reference(ref, bad)


def test_wrong_shape(reference_dicts):
    ref, tensors = reference_dicts["parcae"]
    bad = dict(tensors, **{"transformer.adapter.B": np.zeros((64, 32), np.float32)})
    with pytest.raises(ValueError, match=r"tensor 'transformer\.adapter\.B' has shape \(64, 32\), expected"):
        api.model_from_reference(ref, bad)


def test_unknown_extra_tensor(reference_dicts):
    ref, tensors = reference_dicts["attractor"]
    bad = dict(tensors, **{"transformer.coda.0.norm_1.weight": np.ones(64, np.float32)})
    with pytest.raises(ValueError, match=r"unknown tensor 'transformer\.coda\.0\.norm_1\.weight'"):
        api.model_from_reference(ref, bad)


def test_unknown_class_name(reference_dicts):
    ref, tensors = reference_dicts["gpt"]
    with pytest.raises(ValueError, match=r"_class_name='EQLMConfig' is not known"):
        api.model_from_reference(dict(ref, _class_name="EQLMConfig"), tensors)


@pytest.mark.parametrize("field,value", [("norm_class_name", "LayerNorm"), ("bias", True),
                                         ("injection_type", "linear")])
def test_unsupported_field(reference_dicts, field, value):
    ref, _ = reference_dicts["parcae"]
    with pytest.raises(ValueError, match=f"field {field}={value!r} is not supported"):
        reference.config_from_reference(dict(ref, **{field: value}))


def test_untied_distinct_head_is_refused_and_unused_head_accepted(reference_dicts):
    """The GPT fixture's lm_head [d, V] differs from wte: ignored when tied, an error when the forward reads it."""
    ref, tensors = reference_dicts["gpt"]
    assert not np.array_equal(tensors["lm_head.weight"], tensors["transformer.wte.weight"].T)
    with pytest.raises(ValueError, match="tie_embeddings=False"):
        api.model_from_reference(dict(ref, tie_embeddings=False), tensors)


def test_rope_base_must_match_freqs_cis(reference_dicts):
    ref, tensors = reference_dicts["gpt"]
    with pytest.raises(ValueError, match="freqs_cis"):
        api.model_from_reference(dict(ref, rope_settings=dict(ref["rope_settings"], rope_base=10000)), tensors)


def test_truncated_checkpoint_names_the_file(tmp_path):
    for name, length in (("model.pt", 4000), ("model.safetensors", 100)):
        d = tmp_path / name.replace(".", "_")
        d.mkdir()
        shutil.copy(FIXTURES / "gpt" / "config.json", d / "config.json")
        if name == "model.pt":
            data = (FIXTURES / "gpt" / "model.pt").read_bytes()
        else:
            save_safetensors(load_state_dict(FIXTURES / "gpt" / "model.pt"), d / "full.safetensors")
            data = (d / "full.safetensors").read_bytes()
            (d / "full.safetensors").unlink()
        (d / name).write_bytes(data[:length])
        with pytest.raises(OSError, match=str(d / name)):
            api.load_pretrained(d)


def test_pickle_with_foreign_globals_is_refused(tmp_path):
    """Only the rebuild functions resolve: a pickle naming anything else never runs."""
    path = tmp_path / "evil.pt"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("evil/data.pkl", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00true\x85R.")
    with pytest.raises(ValueError, match="os.system is not allowed"):
        load_state_dict(path)


def test_hf_source_without_huggingface_hub(monkeypatch):
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install huggingface_hub"):
        api.load_pretrained("hf://SandyResearch/attractor-small-140m")


def test_cli_import_export(tmp_path, capsys):
    """`import` writes a run that load_model reads; `export` writes the format back (bit-exact), refuses an
    existing output without --overwrite, and leaves no temporary folder."""
    from attractor_jax.train.trainer import load_model

    wd, out = tmp_path / "run", tmp_path / "out"
    assert cli.main(["import", "--source", str(FIXTURES / "parcae"), "--workdir", str(wd)]) == 0
    model, run, step = load_model(wd)
    assert step == 0 and run.model.ve_layers == (2,)
    assert cli.main(["import", "--source", str(FIXTURES / "parcae"), "--workdir", str(wd)]) == 2
    assert cli.main(["export", "--workdir", str(wd), "--output", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["vocab_size"] == 250  # the original config is the base
    again, _ = api.load_pretrained(out)
    _assert_same_params(model, again)
    capsys.readouterr()
    assert cli.main(["export", "--workdir", str(wd), "--output", str(out)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert cli.main(["export", "--workdir", str(wd), "--output", str(out), "--format", "safetensors",
                     "--overwrite"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "run"]
