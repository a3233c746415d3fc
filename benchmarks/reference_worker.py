"""The authors' side of `benchmarks/vs_reference.py`; runs under an interpreter that has torch, never ours.

argv: REPO (a checkout of jacobfa/Attractor), CONFIG (JSON, vs_reference.CONFIG), THREADS. Prints one JSON line
with the parameter count, then answers each stdin line ``round REPS`` with one JSON line of median milliseconds
for ``train_step``, ``head_pass`` and ``backbone``.
"""

import json
import sys

from vs_reference import time_fns  # stdlib only at import time (this file's folder is on sys.path)


def main():
    repo, cfg, threads = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
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

    fns = {"train_step": train_step, "head_pass": head_pass, "backbone": backbone}
    for fn in fns.values():
        fn()
    params = sum(p.numel() for p in model.parameters())
    print(json.dumps({"params": params, "torch": torch.__version__, "threads": threads,
                      "solver_f_evals": model._last_solver_info.get("iters")}), flush=True)
    for line in sys.stdin:
        print(json.dumps(time_fns(fns, int(line.split()[1]))), flush=True)

if __name__ == "__main__":
    main()
