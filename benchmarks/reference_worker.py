"""The authors' side of `benchmarks/vs_reference.py`; runs under an interpreter that has torch, never ours.

argv: REPO (a checkout of jacobfa/Attractor), CONFIG (JSON, vs_reference.CONFIG), THREADS, and COMPONENTS (1: also
the parts of the first backbone block, as `vs_reference._our_components` times ours). Prints one JSON line
with the parameter count, then answers each stdin line ``round REPS`` with one JSON line of median milliseconds
for ``train_step``, ``head_pass``, ``backbone``, ``fwd0`` and ``grad0``. Their model has no solver-free path
(their max_iter is at least 1), so ``fwd0``/``grad0`` decode the backbone's c directly with their own modules
(final norm, tied unembedding, logit scale and softcap, cross-entropy), as their forward does after the solve:
the same computation as our loss at max_iter 0.
"""

import json
import sys

from vs_reference import time_fns  # stdlib only at import time (this file's folder is on sys.path)


def _decode_ce(model, x, labels):
    """Their decode of an embedding-space state as their forward does after the solve (final norm, tied
    unembedding, logit scale, softcap) and the cross-entropy."""
    import torch

    logits = model.lm_head(model.transformer.ln_f(x)).float() * model.config.init.logit_scale
    if model.config.logit_softcap is not None:
        logits = model.config.logit_softcap * torch.tanh(logits / model.config.logit_softcap)
    return torch.nn.functional.cross_entropy(logits.view(-1, logits.shape[-1]), labels.view(-1))


def _components(model, x, labels, freqs, gen):
    """Their first backbone block's parts, forward (no_grad) and forward+backward (parameters and input)."""
    import torch

    from attractor.attention_backends import flash_attn

    blk = model.transformer.prelude[0]
    b, t, d = x.shape
    n = model.config.num_attention_heads
    r = torch.randn(x.shape, generator=gen)
    r_core = torch.randn((b, t, n, d // n), generator=gen)
    qkv = [torch.randn((b, t, n, d // n), generator=gen) for _ in range(3)]

    parts = {"block": lambda x: (blk(x, freqs, None) * r).sum(),
             "attention": lambda x: (blk.attn(x, freqs, None) * r).sum(),
             "mlp": lambda x: (blk.mlp(x) * r).sum(),
             "decode_ce": lambda x: _decode_ce(model, x, labels)}
    x0 = x.detach().clone()
    xg = x0.clone().requires_grad_(True)
    fns = {}
    for name, loss in parts.items():
        def fwd(loss=loss):
            with torch.no_grad():
                loss(x0)

        def grad(loss=loss):
            loss(xg).backward()
            model.zero_grad(set_to_none=True)
            xg.grad = None

        fns[f"{name}_fwd"], fns[f"{name}_grad"] = fwd, grad
    qg = [a.clone().requires_grad_(True) for a in qkv]

    def core_fwd():
        with torch.no_grad():
            flash_attn.flash_attn_func(*qkv, causal=True)

    def core_grad():
        (flash_attn.flash_attn_func(*qg, causal=True) * r_core).sum().backward()
        for a in qg:
            a.grad = None

    fns["attn_core_fwd"], fns["attn_core_grad"] = core_fwd, core_grad
    return fns


def main():
    repo, cfg, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
    components = len(sys.argv) > 4 and sys.argv[4] == "1"
    sys.path.insert(0, repo)
    import torch

    import attractor.models  # noqa: F401  (registers the model classes)
    from attractor.models.config import Config

    torch.set_num_threads(threads)
    torch.manual_seed(cfg["seed"])
    conf = Config.from_name(
        "attractor-small-140m", block_size=cfg["seq"], vocab_size=cfg["vocab_size"], padding_multiple=64,
        n_embd=cfg["d_model"], num_attention_heads=cfg["n_heads"], num_key_value_heads=cfg["n_heads"],
        intermediate_size=cfg["mlp_dim"], n_backbone_layers=cfg["n_backbone_layers"], n_fp_blocks=cfg["n_fp_blocks"],
        attn_impl="sdpa", use_fused_head="", tol=0.0, min_iter=cfg["iters"], max_iter=cfg["iters"], anderson_m=5,
        backward_type="onestep")
    model = conf.construct_model()
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.8, 0.95), eps=1e-10, weight_decay=0.0)
    g = torch.Generator().manual_seed(cfg["seed"])
    toks = torch.randint(0, cfg["vocab_size"], (cfg["batch"], cfg["seq"] + 1), generator=g)
    inputs, labels = toks[:, :-1].contiguous(), toks[:, 1:].contiguous()
    freqs = model.freqs_cis[:, : cfg["seq"]]

    def train_step():
        loss = model(inputs, labels=labels)["loss"]
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        c = model._encode(inputs, freqs, None)
        y = c + 0.01 * torch.randn(c.shape, generator=g)

    def head_pass():
        with torch.no_grad():
            model._f(y, c, freqs, None)

    def backbone():
        with torch.no_grad():
            model._encode(inputs, freqs, None)

    def loss0():
        return _decode_ce(model, model._encode(inputs, freqs, None), labels)

    def fwd0():
        with torch.no_grad():
            loss0()

    def grad0():
        loss0().backward()
        model.zero_grad(set_to_none=True)

    fns = {"train_step": train_step, "head_pass": head_pass, "backbone": backbone, "fwd0": fwd0, "grad0": grad0}
    if components:
        fns.update(_components(model, c, labels, freqs, g))
    for fn in fns.values():
        fn()
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "torch": torch.__version__, "threads": threads,
                      "solver_f_evals": model._last_solver_info.get("iters")}), flush=True)
    for line in sys.stdin:
        print(json.dumps(time_fns(fns, int(line.split()[1]))), flush=True)

if __name__ == "__main__":
    main()
