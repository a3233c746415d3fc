"""Using a trained model: generation (with an equilibrium KV cache for the attractor head) and the paper's
evaluations (perplexity per token and per byte at each solver depth, LAMBADA).

Models come from a run directory through `attractor_jax.train.trainer.load_model` (runs trained here or
imported from the authors' checkpoints by `attractor_jax.interop`).
"""
