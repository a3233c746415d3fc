"""Named model presets: the reference's language-model and puzzle-reasoner configs and tiny CPU-sized ones.

Reference presets (``jacobfa/Attractor`` ``attractor/configs/*``): vocab 32,768, context 2,048, RoPE base 50k,
ReLU² MLP (4×), RMSNorm 1e-5, QK-norm, tied embeddings, scaled-zero orthogonal init. The tiny presets
(byte-level vocab 256, d = 128, context 256) train on two CPU cores and have parameter counts within 5 % of
each other (attractor-tiny 886,144; gpt-tiny 886,144; parcae-tiny 919,296).

Puzzle reasoners (reference ``experiments/attractor_puzzles/trm``; TRM's README): hidden 512, 8 heads, SwiGLU
expansion 4, RoPE θ 1e4, puzzle-embedding prefix of 16 tokens, H_cycles 3, ACT up to 16 steps with exploration
0.1. TRM-Att has 2 layers with L_cycles 6 (Sudoku) or 4 (Maze); the Attractor reasoner (the reference's
"TRM-DEQ") has 8 layers and solves z_L (Anderson, m 5, tol 1e-3; phantom gradient k 2). The reference's
counts exclude the puzzle embedding (a buffer there, a parameter here): 6,828,034 (TRM Sudoku), 27,275,266 /
27,270,146 (Attractor Sudoku / Maze). The tiny presets (hidden 128, 2 layers, 4-token prefix, 8 ACT steps)
take a train step in about a second on two CPU cores.
"""

from __future__ import annotations

from attractor_jax.implicit import IFT, Anderson, Neumann
from attractor_jax.models.config import (
    AttractorConfig,
    AttractorReasonerConfig,
    GPTConfig,
    LMConfig,
    ParcaeConfig,
    TRMConfig,
)

_TINY = dict(vocab_size=256, d_model=128, n_heads=4, mlp_dim=512, max_seq_len=256, rope_base=10_000.0)

_SUDOKU = dict(vocab_size=11, seq_len=81)
_MAZE = dict(vocab_size=6, seq_len=900)
_TINY_REASONER = dict(hidden_size=128, num_heads=4, L_layers=2, puzzle_emb_len=4, halt_max_steps=8)

PRESETS: dict[str, LMConfig | TRMConfig] = {
    "attractor-small-140m": AttractorConfig(
        name="attractor-small-140m",
        d_model=1024,
        n_heads=8,
        mlp_dim=4096,
        n_backbone_layers=7,
        n_fp_blocks=1,
        layer_scale_init=0.75,
        gamma_max=0.75,
        solver=Anderson(max_iter=64, min_iter=6, tol=3e-4, m=5, beta=1.0),
        backward=Neumann(k=1),
        fp_lr_scale=0.5,
        fp_wd=0.1,
    ),
    "attractor-medium-370m": AttractorConfig(
        name="attractor-medium-370m",
        d_model=1280,
        n_heads=10,
        mlp_dim=5120,
        n_backbone_layers=15,
        n_fp_blocks=2,
        layer_scale_init=0.75,
        gamma_max=1.0,
        solver=Anderson(max_iter=64, min_iter=8, tol=2e-4, m=5, beta=1.0),
        backward=Neumann(k=1),
        fp_lr_scale=0.4,
        fp_wd=0.1,
    ),
    "attractor-large-770m": AttractorConfig(
        name="attractor-large-770m",
        d_model=1280,
        n_heads=10,
        mlp_dim=5120,
        n_backbone_layers=35,
        n_fp_blocks=2,
        layer_scale_init=0.73,
        gamma_max=0.9,
        solver=Anderson(max_iter=32, min_iter=6, tol=1.5e-4, m=5, beta=0.96),
        backward=IFT(solver="anderson", max_iter=32, tol=1.5e-4),  # the adjoint inherits m and beta
        fp_lr_scale=0.4,
        fp_wd=0.1,
    ),
    "gpt-small-140m": GPTConfig(name="gpt-small-140m", d_model=768, n_heads=6, mlp_dim=3072, n_layers=6),
    "gpt-medium-370m": GPTConfig(name="gpt-medium-370m", d_model=1024, n_heads=8, mlp_dim=4096, n_layers=12),
    "gpt-large-770m": GPTConfig(name="gpt-large-770m", d_model=1280, n_heads=10, mlp_dim=5120, n_layers=18),
    "gpt-xlarge-1_3b": GPTConfig(name="gpt-xlarge-1_3b", d_model=1536, n_heads=12, mlp_dim=6144, n_layers=24),
    "parcae-small-140m": ParcaeConfig(
        name="parcae-small-140m", d_model=768, n_heads=6, mlp_dim=3072, n_prelude=2, n_core=2, n_coda=2
    ),
    "parcae-medium-370m": ParcaeConfig(
        name="parcae-medium-370m", d_model=1024, n_heads=8, mlp_dim=4096, n_prelude=4, n_core=4, n_coda=4
    ),
    "parcae-large-770m": ParcaeConfig(
        name="parcae-large-770m", d_model=1280, n_heads=10, mlp_dim=5120, n_prelude=6, n_core=6, n_coda=6
    ),
    "parcae-xlarge-1_3b": ParcaeConfig(
        name="parcae-xlarge-1_3b", d_model=1536, n_heads=12, mlp_dim=6144, n_prelude=8, n_core=8, n_coda=8
    ),
    # Gates start at 0.1 (not the reference's 0.5-0.75): a random-init head with larger gates is not contractive
    # (Anderson stalls at residual ~5e-2), while at 0.1 it converges to 1e-5 in ~14 evaluations. mlp_dim 576
    # matches the total to gpt-tiny, whose value embeddings the attractor does not have.
    "attractor-tiny": AttractorConfig(
        name="attractor-tiny",
        **{**_TINY, "mlp_dim": 576},
        n_backbone_layers=3,
        n_fp_blocks=1,
        layer_scale_init=0.1,
        gamma_max=1.0,
        solver=Anderson(max_iter=16, min_iter=2, tol=1e-3, m=5, beta=1.0),
        backward=Neumann(k=1),
        fp_lr_scale=0.5,
        fp_wd=0.1,
    ),
    "gpt-tiny": GPTConfig(name="gpt-tiny", **_TINY, n_layers=4),
    "parcae-tiny": ParcaeConfig(
        name="parcae-tiny", **_TINY, n_prelude=1, n_core=2, n_coda=1, mean_recurrence=4, mean_backprop_depth=2
    ),
    # Puzzle reasoners. The Attractor's residual-branch output projections start at 1/sqrt(2·L_layers) of the
    # LeCun std (GPT-2's scaled init): with TRM's init the 8-layer map z ↦ L(z + z_H + x) is expansive at
    # initialisation (spectral radius ≈ 2.0, Anderson stalls at relative residual 0.3–0.6 after 40
    # evaluations); at 0.25 its radius is ≈ 0.76 and Anderson reaches 1e-3 in 7–14 evaluations.
    "trm-sudoku-7m": TRMConfig(name="trm-sudoku-7m", **_SUDOKU, L_layers=2, H_cycles=3, L_cycles=6),
    "trm-mlp-sudoku-5m": TRMConfig(
        name="trm-mlp-sudoku-5m", **_SUDOKU, L_layers=2, H_cycles=3, L_cycles=6, mlp_t=True,
        pos_encodings="none",
    ),
    "trm-maze-7m": TRMConfig(name="trm-maze-7m", **_MAZE, L_layers=2, H_cycles=3, L_cycles=4),
    # The Attractor reasoners use the config's solve defaults: Anderson (m 5, tol 1e-3, at most 24 evaluations)
    # and the phantom gradient through k = 2 steps.
    "attractor-sudoku-27m": AttractorReasonerConfig(
        name="attractor-sudoku-27m", **_SUDOKU, L_layers=8, H_cycles=3, out_init_scale=0.25
    ),
    "attractor-maze-27m": AttractorReasonerConfig(
        name="attractor-maze-27m", **_MAZE, L_layers=8, H_cycles=3, out_init_scale=0.25
    ),
    "trm-sudoku-tiny": TRMConfig(name="trm-sudoku-tiny", **_SUDOKU, **_TINY_REASONER, H_cycles=3, L_cycles=4),
    "trm-maze-tiny": TRMConfig(name="trm-maze-tiny", **_MAZE, **_TINY_REASONER, H_cycles=3, L_cycles=4),
    "attractor-sudoku-tiny": AttractorReasonerConfig(
        name="attractor-sudoku-tiny", **_SUDOKU, **_TINY_REASONER, H_cycles=3, out_init_scale=0.5
    ),
    "attractor-maze-tiny": AttractorReasonerConfig(
        name="attractor-maze-tiny", **_MAZE, **_TINY_REASONER, H_cycles=3, out_init_scale=0.5
    ),
}

# Parameter counts derived from the reference configs (reference.md §4; the exact numbers where
# given).
REFERENCE_PARAMS: dict[str, int] = {
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
    # Puzzle reasoners, without the puzzle embedding (a buffer in the reference; see param_counts).
    "trm-sudoku-7m": 6_828_034,  # log train_20260502_083036: 6.828M
    "attractor-sudoku-27m": 27_275_266,  # TRM-DEQ sudoku logs: 27.275M
    "attractor-maze-27m": 27_270_146,  # TRM-DEQ maze log: 27.27M
}
