"""Solve settings in the model configs: solver/backward objects, their {"kind": ..., **fields} serialisation, the
old flat format of earlier run directories, and ``--set`` overrides."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import attractor_jax as aj
import attractor_jax.models as M

SMALL = dict(d_model=32, n_heads=2, mlp_dim=64, n_backbone_layers=1, max_seq_len=16)

# One non-default instance of every kind.
EXAMPLES = {
    "anderson": aj.Anderson(m=3, beta=0.9, ridge=1e-3, restart=False, tol=1e-5, atol=1e-7, max_iter=40,
                            min_iter=3, divergence=1e3, keep_best=False),
    "picard": aj.Picard(damping=0.5, tol=1e-5, max_iter=50),
    "broyden": aj.Broyden(memory=7, max_iter=12),
    "ift": aj.IFT(solver="gmres", tol=1e-6, max_iter=40, restart=10),
    "neumann": aj.Neumann(k=3, clip=0.5),
    "phantom": aj.Phantom(k=3, damping=0.7),
    "unrolled": aj.Unrolled(),
}


def test_kinds_table_names_every_solver_and_backward_mode():
    assert set(aj.KINDS) == set(EXAMPLES)
    for kind, obj in EXAMPLES.items():
        assert obj.kind == kind and aj.KINDS[kind] is type(obj)


@pytest.mark.parametrize("kind", list(EXAMPLES))
@pytest.mark.parametrize("preset", ["attractor-tiny", "attractor-sudoku-tiny"])
def test_every_kind_round_trips_through_json(preset, kind):
    obj = EXAMPLES[kind]
    head = "solver" if isinstance(obj, aj.Solver) else "backward"
    cfg = M.get_config(preset, **{head: obj})
    d = json.loads(json.dumps(M.config_to_dict(cfg)))
    assert d[head] == {"kind": kind, **{k: getattr(obj, k) for k in d[head] if k != "kind"}}
    assert M.config_from_dict(d) == cfg and getattr(M.config_from_dict(d), head) == obj
    assert M.get_config(preset, **{head: M.kind_dict(obj)}) == cfg  # a kind dict as an override


def test_a_field_the_kind_lacks_is_an_error_naming_field_and_kind():
    with pytest.raises(ValueError, match=r"backward\.max_iter.*neumann has no field 'max_iter'"):
        M.get_config("attractor-tiny", **{"backward.max_iter": 64})  # the old presets' do-nothing setting
    with pytest.raises(ValueError, match=r"backward\.clip.*ift has no field 'clip'"):
        M.get_config("attractor-tiny", **{"backward.kind": "ift", "backward.clip": 2.0})
    with pytest.raises(ValueError, match=r"solver\.damping.*anderson has no field 'damping'"):
        M.get_config("attractor-tiny", **{"solver.damping": 0.5})
    with pytest.raises(ValueError, match=r"solver\.m.*picard has no field 'm'"):
        M.config_from_dict({"arch": "attractor", "solver": {"kind": "picard", "m": 5}})
    with pytest.raises(ValueError, match=r"solver\.kind='ift'.*anderson, picard, broyden"):
        M.get_config("attractor-tiny", **{"solver.kind": "ift"})
    with pytest.raises(ValueError, match=r"backward\.kind='anderson'.*ift, neumann, phantom, unrolled"):
        M.get_config("attractor-tiny", backward={"kind": "anderson"})
    with pytest.raises(ValueError, match="restart"):
        aj.IFT(restart=30)  # GMRES only
    with pytest.raises(TypeError):
        aj.IFT(clip=2.0)
    with pytest.raises(ValueError, match="must be a solver"):
        M.AttractorConfig(solver=aj.Neumann())
    with pytest.raises(ValueError, match="solve_mixing"):
        M.get_config("attractor-tiny", causal=False)  # token mixing needs a causal head


def test_kind_change_keeps_shared_fields():
    base = M.get_config("attractor-tiny")
    cfg = M.get_config(base, **{"solver.kind": "picard", "solver.damping": 0.5})
    assert cfg.solver == aj.Picard(tol=1e-3, max_iter=16, min_iter=2, damping=0.5)
    assert M.get_config(base, **{"backward.kind": "phantom"}).backward == aj.Phantom(k=1)  # k is shared
    assert M.get_config(base, **{"backward.kind": "ift"}).backward == aj.IFT()


def _old_dict(**changes):
    """A config dict as the flat-format code wrote it (every field of every kind)."""
    d = {"arch": "attractor", "name": "attractor-tiny", "vocab_size": 256, "d_model": 32, "n_heads": 2,
         "n_kv_heads": None, "head_dim": None, "mlp_dim": 64, "mlp_type": "relu2", "norm_eps": 1e-05,
         "rope_base": 10000.0, "qk_norm": True, "causal": True, "max_seq_len": 16, "init": "scaled-zero",
         "init_orthogonal": True, "embed_scale": 1.0, "logit_scale": 1.0, "logit_softcap": None, "dtype": "float32",
         "attention_impl": None, "n_backbone_layers": 1, "n_fp_blocks": 1, "layer_scale_init": 0.1,
         "gamma_max": 1.0,
         "solver": {"kind": "anderson", "max_iter": 16, "min_iter": 2, "tol": 0.001, "atol": 0.0, "m": 5,
                    "beta": 0.96, "ridge": 0.0001, "restart": True, "damping": 1.0, "memory": 20,
                    "mixing": "sequence", "bf16_tol": 0.004},
         "backward": {"kind": "ift", "k": 1, "clip": 2.0, "solver": "anderson", "tol": 1e-05, "max_iter": 20,
                      "min_iter": 6, "damping": 1.0},
         "fp_lr_scale": 0.5, "fp_wd": 0.1, "injection": "additive", "solve_init": "proposal"}
    for k, v in changes.items():
        head, _, field = k.partition(".")
        d[head] = {**d[head], field: v} if field else v
    return d


def test_old_flat_format_loads_and_computes_bitwise_the_same():
    old = M.config_from_dict(_old_dict())
    new = M.get_config("attractor-tiny", **SMALL, solver=aj.Anderson(max_iter=16, min_iter=2, tol=1e-3, beta=0.96),
                       backward=aj.IFT(tol=1e-5, max_iter=20), solve_mixing="sequence")
    assert old == new
    assert M.config_from_dict(M.config_to_dict(old)) == old  # written back in the new format

    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, 256)

    def outputs(cfg):
        gd, st = nnx.split(M.build_model(cfg, seed=0))

        def loss(st):
            logits, _ = nnx.merge(gd, st)(tokens[:, :-1])
            return jnp.mean(jax.nn.log_softmax(logits)[..., 0]), logits

        (_, logits), g = jax.jit(jax.value_and_grad(loss, has_aux=True))(st)
        return [logits, *jax.tree.leaves(g)]

    for a, b in zip(outputs(old), outputs(new), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    # Other kinds: the fields the kind has are kept, the ones the old code never read are dropped.
    cfg = M.config_from_dict(_old_dict(**{"solver.kind": "picard", "solver.damping": 0.8, "backward.kind": "phantom",
                                          "backward.k": 2, "backward.damping": 0.5, "solver.bf16_tol": None}))
    assert cfg.solver == aj.Picard(max_iter=16, min_iter=2, tol=1e-3, damping=0.8)
    assert cfg.backward == aj.Phantom(k=2, damping=0.5) and cfg.bf16_tol is None
    reasoner = {**M.config_to_dict(M.get_config("attractor-sudoku-tiny")),
                "solver": {**_old_dict()["solver"], "max_iter": 24, "min_iter": 0, "beta": 1.0, "mixing": "token"},
                "backward": {**_old_dict()["backward"], "kind": "phantom", "k": 2, "damping": 1.0}}
    del reasoner["bf16_tol"]
    assert M.config_from_dict(reasoner) == M.get_config("attractor-sudoku-tiny")
    # An IFT Anderson adjoint configured through a non-Anderson forward's settings has no new-format equivalent.
    with pytest.raises(ValueError, match="cannot express"):
        M.config_from_dict(_old_dict(**{"solver.kind": "broyden", "solver.m": 7}))
    with pytest.raises(ValueError, match="solver.kind='newton'"):
        M.config_from_dict(_old_dict(**{"solver.kind": "newton"}))


def test_set_overrides_reach_solver_fields_and_kinds():
    from attractor_jax.train.trainer import RunConfig, apply_sets

    run = RunConfig.for_model(M.get_config("attractor-tiny"))
    m = apply_sets(run, ["model.solver.tol=1e-4", "model.solver.restart=false", "model.backward.k=2",
                         "model.solve_mixing=sequence", "model.bf16_tol=none"]).model
    assert m.solver == aj.Anderson(tol=1e-4, max_iter=16, min_iter=2, restart=False)
    assert m.backward == aj.Neumann(k=2) and m.solve_mixing == "sequence" and m.bf16_tol is None
    m = apply_sets(run, ["model.solver.kind=picard", "model.solver.damping=0.5", "model.backward.kind=ift",
                         "model.backward.solver=gmres", "model.backward.restart=10"]).model
    assert m.solver == aj.Picard(tol=1e-3, max_iter=16, min_iter=2, damping=0.5)
    assert m.backward == aj.IFT(solver="gmres", restart=10)
    with pytest.raises(ValueError, match=r"solver\.damping.*anderson has no field 'damping'"):
        apply_sets(run, ["model.solver.damping=0.5"])
    with pytest.raises(ValueError, match=r"backward\.tol.*neumann has no field 'tol'"):
        apply_sets(run, ["model.backward.tol=1e-4"])
