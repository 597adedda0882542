"""The study's "methods" part (seed 004, AlpacaFarm's table), run by `python experiments/study.py --only methods`.

From the bundled base policy and, per seed, one reward model (rm_bt.py on the labeler's pairs): best-of-n with that
RM as the judge (n = 16, 64), expert iteration (1 and 3 rounds of best-of-16, expert_iteration.py), PPO
(ppo_rlhf.py), RLOO, GRPO and Dr. GRPO (grpo.py) against that RM, DPO (dpo.py on the same pairs the RM saw), and
PPO against gold as the ceiling. Each is judged on the held-out prompts by the simulated labeler that labeled the
pairs, against the base policy's responses: the exact probability that it prefers the method's response
(Labeler.prob_prefers, ties count half), averaged over m samples per prompt; the standard error is over prompts.
Also gold, the KL to the base policy (k1 on the method's samples; for best-of-n the analytic log n - (n - 1) / n),
the wall time of training on 2 CPU cores (best-of-n: of sampling and judging one response per prompt) and distinct
bigrams per prompt.
"""

import dataclasses
import math
import time
from pathlib import Path

import numpy as np

import study  # launch, train_rm, bon_kl: looked up when called (study.py imports this file)

METHODS = ("SFT (base)", "best-of-16", "best-of-64", "expert iteration, 1 round", "expert iteration, 3 rounds",
           "PPO", "RLOO", "GRPO", "Dr. GRPO", "DPO", "PPO (gold reward)")
RUN_NAMES = {"PPO": "ppo", "RLOO": "rloo", "GRPO": "grpo", "Dr. GRPO": "dr_grpo", "DPO": "dpo",
             "PPO (gold reward)": "ppo_gold"}


# ---------------------------------------------------------------- the measures (tests/test_study.py)

def win_rate(labeler, prompts, responses, base_responses):
    """(P,) per-prompt mean of P(labeler prefers the response over the base's) over the m pairs of each prompt:
    responses and base_responses are (P lists of m texts); equal responses count half (prob_prefers gives 0.5)."""
    return np.array([np.mean([labeler.prob_prefers(p, a, b) for a, b in zip(rs, bs)])
                     for p, rs, bs in zip(prompts, responses, base_responses)])


def distinct_ngrams(texts, n=2):
    """Distinct n-grams among all n-grams of one prompt's samples (distinct-n, Li et al. 2016): 1 when no n-gram
    repeats, near 0 when the samples say the same thing; responses shorter than n add none."""
    grams = [tuple(w[i : i + n]) for t in texts for w in [t.split()] for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def mean_and_se(values):
    """(mean, standard error) of per-prompt values."""
    v = np.asarray(values, dtype=float)
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


# ---------------------------------------------------------------- sampling the methods

def load_policy(path):
    from common import models

    return models.load_causal_lm(str(path)).eval(), models.load_tokenizer(str(path))


def samples_with_kl(policy_dir, base, prompts, m, seed, batch_size=256):
    """m responses of a saved policy to each prompt ([P lists of m texts]) and each response's sequence KL to the
    base policy, log pi - log base summed over its tokens (k1: unbiased for KL(pi || base))."""
    import torch

    from common import runs, sampling

    runs.seed_everything(seed)
    policy, tok = load_policy(policy_dir)
    stop = [tok.eos_token_id]
    config = sampling.generation_config(tok, stop, 64, 1.0)
    queries = [tok(p).input_ids for p in prompts for _ in range(m)]
    texts, kls = [], []
    for i in range(0, len(queries), batch_size):
        r = sampling.rollout(policy, base, tok, queries[i : i + batch_size], config, stop, 1.0)
        texts += r["texts"]
        kls += ((r["logprobs"] - r["ref_logprobs"]) * r["resp_mask"]).sum(1).tolist()
    torch.set_grad_enabled(True)
    return [texts[j * m : (j + 1) * m] for j in range(len(prompts))], float(np.mean(kls))


def best_of_n_samples(rm_dir, pool, n, m):
    """m best-of-n responses per prompt from a pool of m * n base samples per prompt ([P lists]): the RM's best of
    each block of n."""
    import reward_models

    out = []
    for p, texts in pool:
        scores = reward_models.rm_scores(rm_dir, [p] * len(texts), texts)
        out.append([texts[j * n + int(np.argmax(scores[j * n : (j + 1) * n]))] for j in range(m)])
    return out


def measure(method, seed, prompts, responses, base_responses, kl, seconds):
    from common import task

    win, win_se = mean_and_se(win_rate(task.Labeler(), prompts, responses, base_responses))
    gold = [np.mean([task.gold_reward(p, t) for t in rs]) for p, rs in zip(prompts, responses)]
    return dict(part="methods", method=method, setting=f"seed={seed}", seed=seed, step=0, win_rate=win,
                win_rate_se=win_se, gold=float(np.mean(gold)), gold_se=mean_and_se(gold)[1], kl=kl, seconds=seconds,
                distinct_2=float(np.mean([distinct_ngrams(rs) for rs in responses])))


def timed_launch(args, script, name, *flags):
    start = time.time()
    run, _ = study.launch(args, script, name, *flags)
    return run, time.time() - start


def methods(args, cfg, rows):
    """Every method of METHODS for each of cfg["methods_seeds"], measured on the eval prompts (see the docstring)."""
    from common import models, runs, sampling, task

    prompts = task.split_prompts()[1][: cfg["methods_eval_prompts"]]
    m, out = cfg["methods_samples"], Path(args.out_dir) / "models"
    base, base_tok = load_policy(models.BUNDLED_MODEL)
    for seed in cfg["methods_seeds"]:
        a = dataclasses.replace(args, seed=seed)
        q = "_quick" * args.quick
        rm_dir = study.train_rm(a, f"rm_methods_s{seed}", *cfg["methods_rm_flags"])  # rm_bt.py --seed seed
        base_resp, _ = samples_with_kl(models.BUNDLED_MODEL, base, prompts, m, seed + 1000)  # the reference answers
        same, _ = samples_with_kl(models.BUNDLED_MODEL, base, prompts, m, seed)
        rows.append(measure("SFT (base)", seed, prompts, same, base_resp, 0.0, 0.0))

        runs.seed_everything(seed)  # inference-time: m independent best-of-64 per prompt from m * 64 base samples,
        tic = time.time()  # and best-of-16 from the first 16 of each block of 64
        queries = [base_tok(p).input_ids for p in prompts for _ in range(m * 64)]
        texts = sampling.sample_completions(base, base_tok, queries, batch_size=512)
        pool = [(p, texts[j * m * 64 : (j + 1) * m * 64]) for j, p in enumerate(prompts)]
        for n in (16, 64):
            blocks = [(p, [t for b in range(m) for t in ts[b * 64 : b * 64 + n]]) for p, ts in pool]
            chosen = best_of_n_samples(rm_dir, blocks, n, m)
            rows.append(measure(f"best-of-{n}", seed, prompts, chosen, base_resp, study.bon_kl(n),
                                (time.time() - tic) / m * n / 64))  # the share of sampling and judging one needs

        def judge(method, policy_dir, seconds):
            responses, kl = samples_with_kl(policy_dir, base, prompts, m, seed)
            rows.append(measure(method, seed, prompts, responses, base_resp, kl, seconds))
            print(f"    {method}: win rate {rows[-1]['win_rate']:.3f}, gold {rows[-1]['gold']:.2f}, KL {kl:.2f}")

        run, _ = study.launch(a, "expert_iteration.py", f"methods_ei_s{seed}{q}", "--reward-model", rm_dir,
                              "--rounds", 3, *cfg["methods_ei_flags"])
        elapsed = dict(study.read_scalars(run)["charts/elapsed_seconds"])  # {round: seconds since the start}
        for rounds in (1, 3):  # round 1's policy is kept: the 1-round method without a second run
            judge(f"expert iteration, {rounds} round" + "s" * (rounds > 1), Path(run) / f"round{rounds}" / "model",
                  elapsed[rounds])
        for method, script, flags in (("PPO", "ppo_rlhf.py", ["--reward-model", rm_dir, *cfg["methods_ppo_flags"]]),
                                      ("RLOO", "grpo.py", ["--advantage", "rloo", "--reward-model", rm_dir,
                                                           *cfg["methods_grpo_flags"]]),
                                      ("GRPO", "grpo.py", ["--reward-model", rm_dir, *cfg["methods_grpo_flags"]]),
                                      ("Dr. GRPO", "grpo.py", ["--reward-model", rm_dir, "--no-scale-rewards",
                                                               "--loss-averaging", "constant",
                                                               *cfg["methods_grpo_flags"]]),
                                      ("DPO", "dpo.py", ["--pairs-per-prompt", 16, *cfg["methods_dpo_flags"]]),
                                      ("PPO (gold reward)", "ppo_rlhf.py", cfg["methods_ppo_flags"])):
            name = f"methods_{RUN_NAMES[method]}_s{seed}{q}"
            _, seconds = timed_launch(a, script, name, *flags, "--output-dir", out / name)
            judge(method, out / name, seconds)


# ---------------------------------------------------------------- the table and the plot

def table(rows):
    """Markdown: each method's means over seeds, with the spread of the seeds (min to max) for the win rate."""
    lines = ["| method | win rate vs base (%) | seeds' range | gold | KL to base | distinct-2 | wall (s) |",
             "|---|---|---|---|---|---|---|"]
    for method in METHODS:
        pts = [r for r in rows if r.get("part") == "methods" and r["method"] == method]
        if not pts:
            continue
        win = [100 * r["win_rate"] for r in pts]
        se = 100 * np.mean([r["win_rate_se"] for r in pts])
        lines.append(f"| {method} | {np.mean(win):.1f} ± {se:.1f} | {min(win):.1f} to {max(win):.1f} "
                     f"({len(pts)} seeds) | {np.mean([r['gold'] for r in pts]):.2f} | "
                     f"{np.mean([r['kl'] for r in pts]):.2f} | {np.mean([r['distinct_2'] for r in pts]):.2f} | "
                     f"{np.mean([r['seconds'] for r in pts]):.0f} |")
    return "\n".join(lines)


def plot(rows, out_dir, plt):
    pts = [r for r in rows if r.get("part") == "methods"]
    if not pts:
        return []
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    names = [mth for mth in METHODS if any(r["method"] == mth for r in pts)]
    for i, mth in enumerate(names):
        run = [r for r in pts if r["method"] == mth]
        win = [100 * r["win_rate"] for r in run]
        axes[0].bar(i, np.mean(win), color="tab:gray" if "SFT" in mth else "tab:blue", alpha=0.6)
        axes[0].errorbar([i] * len(win), win, yerr=[100 * r["win_rate_se"] for r in run], fmt="o", color="black",
                         ms=3, capsize=2)
        axes[1].scatter([r["kl"] for r in run], [r["gold"] for r in run], label=mth, s=22,
                        color=plt.cm.tab20(i / len(METHODS)), marker="os^vD"[i % 5])
    axes[0].axhline(50, color="gray", lw=0.5)
    axes[0].set_xticks(range(len(names)), names, rotation=35, ha="right", fontsize=8)
    axes[0].set(ylabel="win rate against the base policy (%)",
                title="Methods compared (bars: mean over seeds; points: each seed ± s.e. over prompts)")
    axes[1].set(xlabel="KL to the base policy (nats)", ylabel="gold reward (best 3.5)", title="Gold against KL")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "methods.png", dpi=120)
    (Path(out_dir) / "methods.md").write_text(table(rows) + "\n")
    return ["methods.png", "methods.md"]
