"""Fill the result placeholders of experiments/README.md (RESULTS_MEMORY, RESULTS_LM, RESULTS_DEPTH,
RESULTS_ABL) with markdown tables from experiments/results/<name>/results.json; placeholders whose results do
not exist yet are left in place. Usage: python experiments/readme_tables.py
"""
import json, pathlib
R = pathlib.Path("experiments/results")
README = pathlib.Path("experiments/README.md")
readme = README.read_text()

def mem():
    r = json.loads((R/"memory_vs_depth/results.json").read_text())
    d = r["depths"]
    L = [f"Compiled peak memory (temp + arguments + outputs of the jitted train step: forward, loss, gradient, "
         f"optimizer update) and measured step time, batch {r['batch_size']} × {r['seq_len']} tokens, every "
         f"token forced to exactly T solver iterations (tol 0). Script time {r['seconds']/60:.0f} min wall.", "",
         "| variant | " + " | ".join(f"T = {t}" for t in d) + f" | T={d[-1]} / T={d[0]} |",
         "|---|" + "---|" * len(d) + "---|"]
    for lab, rows in r["variants"].items():
        g = r["growth_last_over_first"][lab]
        L.append(f"| {lab} | " + " | ".join(f"{x['peak_bytes']/2**20:.1f} MiB, {1e3*x['step_seconds']:.0f} ms" for x in rows)
                 + f" | {g['peak']:.2f}× memory, {g['time']:.2f}× time |")
    rat = r["ratios_vs_neumann1"]
    t16 = "16" if "16" in rat["attractor, IFT (Anderson)"] else str(d[-1])
    L += ["", "Ratios to the default Neumann-1 backward at T = %s (paper Table 5, 60.3M model: full IFT 4.8× peak "
          "memory and 2.7× step time of one-step, Phantom in between):" % t16, "",
          "| backward | peak memory | step time | paper |", "|---|---|---|---|"]
    paper = {"attractor, Neumann-1 (default)": "1× / 1×", "attractor, Phantom (k=2)": "between",
             "attractor, IFT (Anderson)": "4.8× / 2.7×", "attractor, unrolled": "n/a (not in the paper)"}
    for lab, v in rat.items():
        L.append(f"| {lab.replace('attractor, ', '')} | {v[t16]['peak']:.2f}× | {v[t16]['time']:.2f}× | {paper[lab]} |")
    L += ["", "![memory and step time vs depth](results/memory_vs_depth/memory_vs_depth.png)", "",
          "MEM_NOTES"]
    return "\n".join(L)

def lm():
    r = json.loads((R/"lm_compare/results.json").read_text())
    L = [f"{r['steps']} steps × {r['tokens_per_step']} tokens = {r['tokens']:,} tokens per run, {r['seeds']} seeds "
         f"({', '.join(map(str, r['seed_list']))}), same data order per seed for every model. Script time "
         f"{r['seconds']/60:.0f} min wall.", "",
         "| model | parameters | val loss (nats/byte) | val PPL (per byte) | paper Table 1, 140M val PPL (per token) |",
         "|---|---|---|---|---|"]
    lab = {"gpt-tiny": "GPT (Transformer)", "parcae-tiny": "Parcae", "attractor-tiny": "Attractor"}
    for p, e in r["models"].items():
        L.append(f"| {lab[p]} | {e['params']:,} | {e['val_loss']['mean']:.4f} ± {e['val_loss']['std']:.4f} | "
                 f"{e['val_ppl']['mean']:.3f} ± {e['val_ppl']['std']:.3f} | {e['paper_val_ppl_140m']} |")
    a = r["models"]["attractor-tiny"]
    L += ["", f"Attractor solve on validation: {a['solver_iters']['mean']:.2f} f-evaluations per token, "
          f"{100*a['converged']['mean']:.1f} % of tokens converged (tol 1e-3 within 16).", "",
          "Per-seed values (val loss): " + "; ".join(
              f"{lab[p]} " + ", ".join(f"{x:.4f}" for x in e["val_loss"]["values"]) for p, e in r["models"].items()),
          "", "![lm_compare](results/lm_compare/lm_compare.png)", "", "LM_NOTES"]
    return "\n".join(L)

def depth():
    r = json.loads((R/"depth_sweep/results.json").read_text())
    keys = [str(d) for d in r["depths"]]
    L = [f"Source: {r['source']} ({r['n_seeds']} seeds each); mean ± std of the validation loss (nats/byte).", "",
         "| model | " + " | ".join(f"T = {k}" for k in keys) + " |", "|---|" + "---|" * len(keys)]
    for p, lab in (("attractor-tiny", "Attractor"), ("parcae-tiny", "Parcae")):
        e = r["models"][p]["val_loss_by_depth"]
        L.append(f"| {lab} | " + " | ".join(f"{e[k]['mean']:.4f} ± {e[k]['std']:.4f}" for k in keys) + " |")
    if "gpt-tiny" in r["models"]:
        g = r["models"]["gpt-tiny"]["val_loss_full"]
        L.append("| GPT (no depth knob) | " + " | ".join([""] * (len(keys) - 1)) + f" | {g['mean']:.4f} ± {g['std']:.4f} |")
    it = r["models"]["attractor-tiny"].get("solver_iters_by_depth", {})
    if it:
        L += ["", "Attractor f-evaluations per token at each T: " + ", ".join(f"T={k}: {it[k]['mean']:.2f}" for k in keys) + "."]
    L += ["", "Paper (Fig. 7, no numbers given): the Attractor is at its best at T = 1 at every scale and T = 0 is "
          "already at or near the converged value; Parcae improves monotonically from T = 1 and plateaus near "
          "T = 8.", "", "![depth sweep](results/depth_sweep/depth_sweep.png)", "", "DEPTH_NOTES"]
    return "\n".join(L)

def abl():
    r = json.loads((R/"ablations/results.json").read_text())
    v = r["variants"]
    import sys
    sys.path.insert(0, ".")
    from experiments.ablations import TABLES
    L = [f"attractor-tiny, one switch changed per row, {r['steps']} steps × {r['tokens_per_step']} tokens, "
         f"{r['seeds']} seed(s) (seed {r['seed_list'][0]}); \"iters\" = mean f-evaluations per validation token of "
         f"the full solve, \"conv\" = fraction of validation tokens whose solve reached tol 1e-3 within 16 "
         f"iterations; memory/time = the compiled peak memory and measured time of the train step relative to "
         f"Neumann-1. Script time {r['seconds']/60:.0f} min wall.", ""]
    for title, rows in TABLES.items():
        L += [f"**{title}**", "", "| variant | val loss | val PPL | T = 0 loss | iters | conv | memory | time | paper (60.3M) |",
              "|---|---|---|---|---|---|---|---|---|"]
        for lab, k in rows:
            e = v[k]; sc = e.get("step_cost")
            m = f"{sc['peak_vs_neumann1']:.2f}×" if sc else ""
            t = f"{sc['time_vs_neumann1']:.2f}×" if sc else ""
            L.append(f"| {lab} | {e['val_loss']['mean']:.4f} | {e['val_ppl']['mean']:.3f} | {e['val_loss_T0']['mean']:.4f} | "
                     f"{e['solver_iters']['mean']:.2f} | {100*e['converged']['mean']:.1f} % | {m} | {t} | {e['paper']} |")
        L.append("")
    L += ["![ablations](results/ablations/ablations.png)", "", "ABL_NOTES"]
    return "\n".join(L)


NOTES = {
    'MEM_NOTES': "- **Shape of Fig. 5 reproduced.** With Neumann-1, Phantom and IFT the train step's peak memory is identical at\n  T = 4 … 32 (nothing per iteration is stored: the forward solve runs inside a `custom_vjp` and the backward\n  needs only y*); backprop through the unrolled solve and Parcae with full BPTT grow linearly (≈ +25–30 MiB\n  per iteration at 8 × 128 tokens). Parcae as the reference trains it (BPTT through the last few loops only) is\n  flat too, at the price of gradients that ignore the earlier loops.\n- **IFT is cheaper here than in the paper** (1.15× memory rather than 4.8×): our adjoint solve is matrix-free\n  Anderson on VJPs with only the m = 5 window of `[B, T, d]` vectors held, whereas the paper's number comes\n  from its PyTorch implementation (the reason for its 4.8× is not stated). Its step time grows with T because\n  the adjoint runs up to the forward's max_iter (here forced: tol 0).\n- Step times were measured on a loaded shared CPU; single points (e.g. Neumann-1 at T = 4 slower than\n  Phantom) are noise. Memory numbers are exact (from the compiled executable) and machine-independent.",
    'LM_NOTES': "- Parameters are matched to within 4 % (Parcae has 3.7 % more, from its injection and C matrices) and tokens\n  exactly. At this scale and budget the ordering should not be read as a test of Table 1: the paper's gaps\n  (−4 % PPL vs Parcae, −15 % vs the Transformer at 140M after 10⁹–10¹⁰ tokens) come from models 150× larger\n  trained 10⁵× longer. What the table does show is that the three tiny models train to comparable quality on\n  the same budget, with the seed-to-seed spread given.",
    'DEPTH_NOTES': "- T = 0 for the Attractor decodes the backbone proposal c; for Parcae it decodes the random initial state\n  (no recurrence), which is why Parcae's T = 0 is far worse. Parcae was trained with depths ~Poisson(4), so\n  T = 8, 16 extrapolate beyond its training depths.",
    'ABL_NOTES': '**Definitions of the variants** (new `AttractorConfig` fields, defaults unchanged; paper §3.1 and §6.3):\n- `injection="additive"` (default): f(y, c) = H(y + c) − y = c + Δ(y + c), the reference code\'s map, "persistent\n  additive injection" 𝒯(ỹ_t, ỹ₀).\n- `injection="init_only"`: the paper\'s ỹ_{t=0} = ỹ₀, ỹ_{t+1} = 𝒯(ỹ_t), with 𝒯 the head itself: f(y, c) = H(y),\n  y₀ = c (Ouro-style first-step-only injection, paper §2). Its fixed points satisfy Δ(y*) = 0 and do not depend\n  on c, so the implicit gradient reaches neither c nor the backbone (only the embedding, through the tied\n  unembedding, and the head learn) — the paper\'s "fixed point can become proposal-independent".\n- `injection="concat"`: 𝒯([ỹ_t; ỹ₀]) as f(y, c) = H([y; c] W) − y with a learned W ∈ R^{2d×d} (the head\'s\n  `inject` matrix, +2d² = 32,768 parameters at d = 128, trained with the head\'s optimizer group), initialised to\n  [I; I] so that the map starts equal to the additive one and only training makes them differ. The paper does\n  not specify the projection; this is the choice that keeps the residual form and the solver\'s contraction at\n  initialisation (a random W would start from a different, less contractive map).\n- `solve_init="proposal"` (default) y₀ = stop_gradient(c); `"zero"` y₀ = 0; `"noise"` y₀ ~ N(0, σ²) with σ the\n  embedding init std sqrt(2/(5d)) (the paper\'s "Gaussian noise N(0, σ²I)" for looped models, σ as Parcae\'s\n  like-init state), drawn from the train step\'s key (a fixed key in evaluation). T = 0 still decodes c.\n- Backward (existing `backward.kind`/`k`): Neumann-0 u = v (the paper\'s one-step), Neumann-1 u = v + Jᵀv (the\n  reference code\'s, our default), Phantom k = 2 (damping 1), IFT = Anderson on (I − Jᵀ)u = v up to the forward\'s\n  max_iter and tol.\n- One seed per variant at 100 steps: differences in validation loss below ~0.02 nats are within the seed spread\n  measured by lm_compare. The solver statistics (iterations, convergence) are the robust part of this table.',
}

for tag, fn in (("RESULTS_MEMORY", mem), ("RESULTS_LM", lm), ("RESULTS_DEPTH", depth), ("RESULTS_ABL", abl)):
    if tag not in readme:
        continue
    try:
        readme = readme.replace(tag, fn())
    except FileNotFoundError as e:
        print("not yet:", tag, e)
for tag, text in NOTES.items():
    readme = readme.replace(tag, text)
README.write_text(readme)
print("updated", README)
