"""AttractorLM gradients against dense float64 oracles (an independent re-implementation of the model).

The oracle re-implements the model's forward pass in plain ``jnp`` on the parameter dict, in float64 (the
library casts every product to its float32 compute dtype, so it cannot serve as its own float64 reference),
flattens the state y ∈ R^{B·T·d} to a vector, builds the dense Jacobian J = ∂f/∂y with ``jax.jacfwd``, and
forms the adjoint u of each backward mode with explicit matrices:

    Neumann(k)  u = Σ_{i≤k} (Jᵀ)^i v                      (matrix powers)
    IFT         u = (I − Jᵀ)⁻¹ v                           (``np.linalg.solve``)
    Phantom(k)  the exact derivative of the k-step map y ← f(y) from y*, by an explicit chain of the dense
                Jacobians J_i at the phantom iterates y_i

and parameter / context gradients as the VJP of f with cotangent u (summed over the phantom iterates).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

import attractor_jax.models as M

# Two CPU cores: these programs are tiny and run once, so on CPU compile them without optimisation (about 4x
# faster to build; the numerics agree to float32 rounding). Decided at the first call, so that importing this
# module does not initialise a backend.
_CPU_FAST = {
    "xla_backend_optimization_level": 0,
    "xla_llvm_disable_expensive_passes": True,
    "xla_cpu_use_fusion_emitters": False,
}


def _jit(fn=None, **kw):
    """``jax.jit`` with the cheap CPU compile options (``@_jit`` or ``@_jit(static_argnames=...)``)."""
    if fn is None:
        return functools.partial(_jit, **kw)
    jitted = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal jitted
        if jitted is None:
            opts = _CPU_FAST if jax.default_backend() == "cpu" else None
            jitted = jax.jit(fn, compiler_options=opts, **kw)
        return jitted(*args, **kwargs)

    return call


_jit_cfg = _jit(static_argnames="cfg")
# The library runs in float32; its products must be full float32 (not TF32 on a GPU) for 1e-4 comparisons.
_F32_MATMUL = "highest"

SIZE = dict(d_model=16, n_heads=2, mlp_dim=32, n_backbone_layers=1, layer_scale_init=0.25)
# The default solver: Anderson, per-token causal freezing ("token" mixing), early exit, no minimum.
SOLVE = {"solver.kind": "anderson", "solver.tol": 1e-6, "solver.min_iter": 0, "solver.max_iter": 40}
B, T = 2, 6
_F32_EPS = float(np.finfo(np.float32).eps)  # the QK-norm eps of the float32 compute dtype


# ------------------------------------------------------------------------------------------------------------
# The float64 oracle: the model's forward pass written out on the parameter dict.


def _rms(x, scale, eps):
    return x / jnp.sqrt(jnp.mean(x * x, axis=-1, keepdims=True) + eps) * scale


def _rope(x, base):
    """Interleaved-pair RoPE at positions 0..T-1 of ``x [B, T, N, H]``."""
    _, t, _, h = x.shape
    inv = 1.0 / (base ** (jnp.arange(0, h, 2, dtype=x.dtype) / h))
    ang = jnp.arange(t, dtype=x.dtype)[:, None] * inv
    cos, sin = jnp.cos(ang)[None, :, None, :], jnp.sin(ang)[None, :, None, :]
    x0, x1 = x[..., 0::2], x[..., 1::2]
    return jnp.stack([x0 * cos - x1 * sin, x1 * cos + x0 * sin], axis=-1).reshape(x.shape)


def _attention(p, x, cfg):
    b, t, d = x.shape
    n = cfg.n_heads
    h = d // n
    q, k, v = (jnp.reshape(x @ p[name]["kernel"], (b, t, n, h)) for name in ("q", "k", "v"))
    q, k = _rope(q, cfg.rope_base), _rope(k, cfg.rope_base)
    q, k = _rms(q, 1.0, _F32_EPS), _rms(k, 1.0, _F32_EPS)
    s = jnp.einsum("btnh,bsnh->bnts", q, k) / np.sqrt(h)
    s = jnp.where(np.tril(np.ones((t, t), bool)), s, -jnp.inf)
    a = jax.nn.softmax(s, axis=-1)
    return jnp.einsum("bnts,bsnh->btnh", a, v).reshape(b, t, d) @ p["o"]["kernel"]


def _block(p, x, cfg):
    h = _attention(p["attn"], _rms(x, p["norm_1"]["scale"], cfg.norm_eps), cfg)
    if "gate_attn" in p:
        h = h * jax.nn.sigmoid(p["gate_attn"]) * cfg.gamma_max
    x = x + h
    m = _rms(x, p["norm_2"]["scale"], cfg.norm_eps) @ p["mlp"]["fc"]["kernel"]
    m = (0.5 * jnp.square(jax.nn.relu(m))) @ p["mlp"]["proj"]["kernel"]
    if "gate_mlp" in p:
        m = m * jax.nn.sigmoid(p["gate_mlp"]) * cfg.gamma_max
    return x + m


def _f(hp, y, c, cfg):
    """f(y, c) = H(y + c) − y."""
    h = y + c
    for i in range(cfg.n_fp_blocks):
        h = _block(hp["blocks"][i], h, cfg)
    return h - y


def _encode(P, tokens, cfg):
    x = P["embed"]["embedding"][tokens]
    for i in range(cfg.n_backbone_layers):
        x = _block(P["backbone"][i], x, cfg)
    return x


def _decode(P, y, cfg):
    return _rms(y, P["final_norm"]["scale"], cfg.norm_eps) @ P["embed"]["embedding"].T


def _ce(logits, targets):
    return optax.softmax_cross_entropy_with_integer_labels(logits, targets).mean()


@_jit_cfg
def _oracle_jacobian(hp, y, c, cfg):
    """Dense ∂f/∂y at y, ``[B·T·d, B·T·d]`` (rows: outputs)."""
    return jax.jacfwd(lambda yv: _f(hp, yv.reshape(y.shape), c, cfg).ravel())(y.ravel())


@_jit_cfg
def _oracle_f_vjp(hp, y, c, u, cfg):
    """(f(y, c), uᵀ ∂f/∂(head params, c)) at y."""
    fy, vjp = jax.vjp(lambda hp, c: _f(hp, y, c, cfg), hp, c)
    return fy, vjp(u.reshape(y.shape))


@_jit_cfg
def _oracle_fixed_point(P, tokens, cfg):
    """c = encode(x) and a float64 fixed point of f(., c) by long plain iteration from c, with its relative
    residual."""
    c = _encode(P, tokens, cfg)
    y = jax.lax.fori_loop(0, 300, lambda i, y: _f(P["head"], y, c, cfg), c)
    return y, c, jnp.linalg.norm(_f(P["head"], y, c, cfg) - y) / jnp.linalg.norm(y)


@_jit_cfg
def _oracle_surrogate_grad(P, y, u, tokens, cfg):
    """Gradient in (params, y) of  L(decode(y)) + ⟨u, f(sg(y), encode(x))⟩:  the y-part is v = ∂L/∂y, the
    parameter part the implicit gradient ∂L/∂θ|direct + uᵀ ∂f/∂θ (through the head, and through c into the
    backbone and embedding)."""

    def s(P, y):
        c = _encode(P, tokens[:, :-1], cfg)
        fy = _f(P["head"], jax.lax.stop_gradient(y), c, cfg)
        return _ce(_decode(P, y, cfg), tokens[:, 1:]) + jnp.sum(u.reshape(y.shape) * fy)

    return jax.grad(s, argnums=(0, 1))(P, y)


# ------------------------------------------------------------------------------------------------------------
# Helpers


def _f64(tree):
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float64)), tree)


def _np(tree):
    return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _rel(a, b):
    """||a − b|| / ||b|| over a pytree (or array)."""
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    la = [np.asarray(x, np.float64) for x in la]
    lb = [np.asarray(y, np.float64) for y in lb]
    num = np.sqrt(sum(np.sum((x - y) ** 2) for x, y in zip(la, lb)))
    den = np.sqrt(sum(np.sum(y**2) for y in lb))
    return float(num / den)


def _leaf_errors(lib, oracle):
    """Relative error of every parameter leaf, keyed by its path."""
    flat_o, _ = jax.tree_util.tree_flatten_with_path(oracle)
    flat_l = jax.tree.leaves(lib)
    assert len(flat_o) == len(flat_l)
    return {jax.tree_util.keystr(path): _rel(lg, og) for (path, og), lg in zip(flat_o, flat_l)}


def _state(cfg, seed, head_gain=1.5):
    """Random parameters of the model's structure, as (graphdef, state): kernels and the embedding N(0, std²)
    with the model's init std (the head's kernels ``head_gain`` times that), norm scales 1 + N(0, 0.1²), gate
    logits at ``layer_scale_init`` + N(0, 0.1²). Drawn in numpy, which costs no compilation. Unlike the
    model's initialiser this gives the backbone nonzero output projections, so that every parameter has a
    gradient, and a stronger head: with gates 0.25 the map still contracts, but only moderately (spectral
    radius of J about 0.35-0.6, ||J|| above 1), so the adjoint differs clearly from its truncations."""
    gd, abstract = nnx.split(M.abstract_model(cfg))
    rng = np.random.default_rng(seed)
    p = cfg.layer_scale_init / cfg.gamma_max
    gate = np.log(p / (1.0 - p))

    def draw(path, leaf):
        name = jax.tree_util.keystr(path)
        z = rng.normal(size=leaf.shape)
        if "scale" in name:
            x = 1.0 + 0.1 * z
        elif "gate_" in name:
            x = gate + 0.1 * z
        else:
            x = cfg.std * (head_gain if name.startswith("['head']") else 1.0) * z
        return jnp.asarray(x.astype(leaf.dtype))

    return gd, jax.tree_util.tree_map_with_path(draw, abstract)


def _tokens(length, seed):
    return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (B, length)), jnp.int32)


# ------------------------------------------------------------------------------------------------------------


def test_neumann_and_phantom_gradients_match_dense_oracle():
    """Neumann(k) for k = 0, 1, 3 and Phantom(k) for k = 1, 2: the model's gradients of a loss of y* with
    respect to the head parameters and the context c equal the dense float64 oracle's to 1e-4 relative."""
    base = M.get_config("attractor-tiny", **SIZE, **SOLVE)
    gd, st = _state(base, seed=0)
    with jax.default_matmul_precision(_F32_MATMUL):
        c = _jit(lambda st, t: nnx.merge(gd, st).encode(t))(st, _tokens(T, seed=1))
    w = jnp.asarray(np.random.default_rng(2).normal(size=c.shape), jnp.float32)

    def y_loss(y):  # v = ∂L/∂y = w + y
        return jnp.sum(w * y) + 0.5 * jnp.sum(jnp.square(y))

    modes = [("neumann", 0), ("neumann", 1), ("neumann", 3), ("phantom", 1), ("phantom", 2)]
    lib = {}
    for kind, k in modes:
        cfg = M.get_config(base, **{"backward.kind": kind, "backward.k": k})
        gd_k = nnx.split(M.abstract_model(cfg))[0]

        def loss(st, c, gd_k=gd_k):
            sol = nnx.merge(gd_k, st).solve(c)
            return y_loss(sol.value), (sol.value, sol.stats)

        with jax.default_matmul_precision(_F32_MATMUL):
            (g_st, g_c), (y, stats) = _jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(st, c)
        assert bool(stats.converged.all()), (kind, k, stats)
        lib[kind, k] = (nnx.to_pure_dict(g_st["head"]), g_c, np.asarray(y, np.float64))

    errors, oracles = {}, {}
    with jax.enable_x64(True):
        hp = _f64(nnx.to_pure_dict(st["head"]))
        c64 = _f64(c)
        for (kind, k), (_, _, y) in lib.items():
            # The oracle linearises at the library's own y* (the point its backward uses), in float64.
            y = jnp.asarray(y)
            v = np.asarray(w, np.float64).ravel() + np.asarray(y).ravel()
            if kind == "neumann":
                jt = np.asarray(_oracle_jacobian(hp, y, c64, base)).T
                rho = np.abs(np.linalg.eigvals(jt)).max()
                assert rho < 0.9, rho  # the map contracts: the oracle's fixed point is well posed
                u = sum(np.linalg.matrix_power(jt, i) @ v for i in range(k + 1))
                _, (g_h, g_c) = _oracle_f_vjp(hp, y, c64, jnp.asarray(u), base)
            else:
                # y_0 = y*, y_{i+1} = f(y_i); backprop the chain: a ← J_iᵀ a from a = v, collecting the
                # parameter/context VJPs of each step at its own iterate.
                ys = [y]
                for _ in range(k - 1):
                    ys.append(_oracle_f_vjp(hp, ys[-1], c64, jnp.zeros(y.size), base)[0])
                a, g_h, g_c = v, None, None
                for yi in reversed(ys):
                    _, (gh_i, gc_i) = _np(_oracle_f_vjp(hp, yi, c64, jnp.asarray(a), base))
                    g_h = gh_i if g_h is None else jax.tree.map(np.add, g_h, gh_i)
                    g_c = gc_i if g_c is None else g_c + gc_i
                    a = np.asarray(_oracle_jacobian(hp, yi, c64, base)).T @ a
            oracles[kind, k] = (_np(g_h), np.asarray(g_c))

    for mode, (g_h, g_c, _) in lib.items():
        o_h, o_c = oracles[mode]
        leaf = _leaf_errors(g_h, o_h)
        errors[mode] = (max(leaf.values()), _rel(g_c, o_c))
        assert max(leaf.values()) < 1e-4, (mode, leaf)
        assert _rel(g_c, o_c) < 1e-4, (mode, _rel(g_c, o_c))
    print("max head-leaf / c relative errors:", errors)

    # The modes are distinguishable at this tolerance, so a wrong k or a wrong adjoint would fail.
    pairs = [(("neumann", 0), ("neumann", 3)), (("neumann", 0), ("neumann", 1)),
             (("neumann", 1), ("neumann", 3)), (("phantom", 1), ("phantom", 2))]
    gaps = {(a, b): _rel(oracles[a], oracles[b]) for a, b in pairs}
    print("oracle gaps between modes:", gaps)
    assert min(gaps.values()) > 1e-2, gaps
    # Two oracle code paths agree: at a fixed point the phantom iterates all equal y*, so Phantom(k) is
    # Neumann(k − 1) (exactly for k = 1, to the forward tolerance for k = 2).
    assert _rel(oracles["phantom", 1], oracles["neumann", 0]) < 1e-12
    assert _rel(oracles["phantom", 2], oracles["neumann", 1]) < 1e-4


def test_default_early_exit_ift_gradients_match_dense_oracle():
    """The default regime (Anderson, per-token causal early exit at tol 1e-6, min_iter 0) with the IFT
    backward (adjoint tol 1e-8): the gradients of the LM loss with respect to every parameter equal the dense
    float64 IFT oracle's, u = (I − Jᵀ)⁻¹ v at a float64 fixed point, to 1e-3 relative per parameter leaf."""
    backward = {"backward.kind": "ift", "backward.tol": 1e-8, "backward.max_iter": 60}
    cfg = M.get_config("attractor-tiny", **SIZE, **SOLVE, **backward)
    gd, st = _state(cfg, seed=5)
    tokens = _tokens(T + 1, seed=6)

    def loss(st, tokens):
        logits, aux = nnx.merge(gd, st)(tokens[:, :-1])
        return _ce(logits, tokens[:, 1:]), aux

    with jax.default_matmul_precision(_F32_MATMUL):
        g, aux = _jit(jax.grad(loss, has_aux=True))(st, tokens)
    its = np.asarray(aux["iterations"])
    assert bool(aux["converged"].all()) and float(aux["residual"].max()) <= 1e-6
    assert its.max() < cfg.solver.max_iter and its.min() < its.max()  # early exit, per token
    print("forward iterations per token:", its.tolist())
    g = nnx.to_pure_dict(g)

    with jax.enable_x64(True):
        P = _f64(nnx.to_pure_dict(st))
        y, c, res = _oracle_fixed_point(P, tokens[:, :-1], cfg)
        assert float(res) < 1e-13, float(res)
        jt = np.asarray(_oracle_jacobian(P["head"], y, c, cfg)).T
        rho = np.abs(np.linalg.eigvals(jt)).max()
        assert rho < 0.9, rho
        v = np.asarray(_oracle_surrogate_grad(P, y, jnp.zeros(y.size), tokens, cfg)[1]).ravel()
        u = np.linalg.solve(np.eye(v.size) - jt, v)
        oracle = _np(_oracle_surrogate_grad(P, y, jnp.asarray(u), tokens, cfg)[0])
        # A truncated adjoint (Neumann-1: u = v + Jᵀv) would be visibly wrong.
        neumann1 = _np(_oracle_surrogate_grad(P, y, jnp.asarray(v + jt @ v), tokens, cfg)[0])

    leaf = _leaf_errors(g, oracle)
    print(f"IFT: spectral radius {rho:.3f}; per-leaf relative errors (max {max(leaf.values()):.2e}):", leaf)
    assert max(leaf.values()) < 1e-3, leaf
    assert _rel(g, oracle) < 1e-3
    gap = _rel(neumann1, oracle)
    print(f"Neumann-1 vs IFT oracle: {gap:.2e}")
    assert gap > 1e-2, gap
