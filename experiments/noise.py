"""The study's "noise" part (seeds 003 and 004; Coste et al. 2023), run by `python experiments/study.py --only noise`.

Two ensembles of rm_ensemble.py: one trained on noiseless labels (the default labeler: no flips, only its
Bradley-Terry choice noise) and one on noisy labels (AlpacaFarm's 25% of labels flipped at random). PPO with a small
KL penalty (the overoptimization part's settings) against a single reward model (member 0 of each ensemble) and, on
the noisy labels, against the ensemble's mean, minimum and mean - std, and against the denoised (flip) reward model.
Each run's gold and proxy score against KL on the eval prompts (every 2 updates), and the diversity of the policy's
responses before and after RL: distinct bigrams among m samples per prompt, and the policy's entropy per token on its
own rollouts (PPO's policy/entropy_avg, first and last update).
"""

from pathlib import Path

import numpy as np

import methods
import study  # launch, read_scalars: looked up when called (study.py imports this file)

LABELS = {"noiseless": [], "noisy": ["--flip-rate", 0.25]}
REWARDS = (  # (name, labels, the --reward-model under the ensemble directory, PPO flags)
    ("single RM", "noiseless", "member0", []),
    ("single RM", "noisy", "member0", []),
    ("ensemble mean", "noisy", "", ["--ensemble-aggregate", "mean"]),
    ("ensemble min", "noisy", "", ["--ensemble-aggregate", "min"]),
    ("ensemble mean - std", "noisy", "", ["--ensemble-aggregate", "mean_minus_std", "--uncertainty-coef", 1.0]),
    ("denoised RM (flip)", "noisy", "final", []),
)


def train_ensemble(args, name, *flags):
    """rm_ensemble.py with these flags, saved to <out-dir>/<name> (--quick: <name>_quick); a saved one is reused."""
    out = Path(args.out_dir) / (name + "_quick" * args.quick)
    if (out / "ensemble.json").exists():
        print(f"    reusing the ensemble in {out} (delete it to train it again)")
    else:
        study.launch(args, "rm_ensemble.py", out.name, "--output-dir", out, *flags)
    return out


def noise(args, cfg, rows):
    """Every reward of REWARDS, PPO against it, its curve and its end (see the docstring)."""
    from common import models, task

    ensembles = {labels: train_ensemble(args, f"ensemble_{labels}", *flags, *cfg["noise_rm_flags"])
                 for labels, flags in LABELS.items()}
    prompts = task.split_prompts()[1][: cfg["noise_eval_prompts"]]
    base, _ = methods.load_policy(models.BUNDLED_MODEL)
    m = cfg["noise_samples"]
    responses, _ = methods.samples_with_kl(models.BUNDLED_MODEL, base, prompts, m, args.seed)
    rows.append(dict(part="noise_end", method="SFT (base)", setting="", step=0, kl=0.0,
                     gold=float(np.mean([task.gold_reward(p, t) for p, rs in zip(prompts, responses) for t in rs])),
                     distinct_2=float(np.mean([methods.distinct_ngrams(rs) for rs in responses]))))
    q = "_quick" * args.quick
    for name, labels, member, flags in REWARDS:
        tag = f"noise_{labels}_{name.replace(' ', '_').replace('(', '').replace(')', '')}{q}"
        policy_dir = Path(args.out_dir) / "models" / tag
        run, _ = study.launch(args, "ppo_rlhf.py", tag, "--reward-model", ensembles[labels] / member, *flags,
                              "--kl-coef", cfg["overopt_kl_coef"], "--learning-rate", cfg["overopt_lr"],
                              "--total-episodes", cfg["noise_episodes"], "--log-samples-every",
                              cfg["overopt_eval_every_updates"], "--output-dir", policy_dir)
        s = study.read_scalars(run)
        method = f"{name}, {labels} labels"
        for (step, kl), (_, gold), (_, proxy) in zip(s["eval/kl"], s["eval/gold"], s["eval/score"]):
            rows.append(dict(part="noise", method=method, setting=labels, step=step, kl=kl, gold=gold, proxy=proxy))
        curve = [r for r in rows if r["part"] == "noise" and r["method"] == method]
        peak = max(curve, key=lambda r: r["gold"])
        responses, kl = methods.samples_with_kl(policy_dir, base, prompts, m, args.seed)
        entropy = [v for _, v in s["policy/entropy_avg"]]
        rows.append(dict(part="noise_end", method=method, setting=labels, step=curve[-1]["step"], kl=kl,
                         gold=curve[-1]["gold"], proxy=curve[-1]["proxy"], peak_gold=peak["gold"], peak_kl=peak["kl"],
                         distinct_2=float(np.mean([methods.distinct_ngrams(rs) for rs in responses])),
                         entropy_start=entropy[0], entropy_end=entropy[-1]))
        print(f"    {method}: gold {curve[0]['gold']:.2f} -> peak {peak['gold']:.2f} at KL {peak['kl']:.1f} -> "
              f"{curve[-1]['gold']:.2f} at KL {curve[-1]['kl']:.1f}; distinct-2 {rows[-1]['distinct_2']:.2f}")


def table(rows):
    """Markdown: each run's peak and end of gold with their KL (the eval curve), its proxy at the end, and diversity;
    the base policy's row is every run's first evaluation."""
    curves = [r for r in rows if r.get("part") == "noise"]
    lines = ["| reward (labels) | gold: peak (at KL) | gold at the end (KL) | proxy at the end | distinct-2 | "
             "entropy per token: first -> last update |", "|---|---|---|---|---|---|"]
    for r in (r for r in rows if r.get("part") == "noise_end"):
        if r["method"] == "SFT (base)":
            first = min(curves, key=lambda c: c["step"]) if curves else {"gold": float("nan"), "kl": 0.0}
            lines.append(f"| SFT (base) | | {first['gold']:.2f} ({first['kl']:.1f}) | | {r['distinct_2']:.2f} | |")
            continue
        end = max((c for c in curves if c["method"] == r["method"]), key=lambda c: c["step"])
        lines.append(f"| {r['method']} | {r['peak_gold']:.2f} ({r['peak_kl']:.1f}) | {end['gold']:.2f} "
                     f"({end['kl']:.1f}) | {end['proxy']:.2f} | {r['distinct_2']:.2f} | "
                     f"{r['entropy_start']:.2f} -> {r['entropy_end']:.2f} |")
    return "\n".join(lines)


def plot(rows, out_dir, plt):
    pts = [r for r in rows if r.get("part") == "noise"]
    if not pts:
        return []
    fig, axes = plt.subplots(1, 3, figsize=(18, 5))
    names = list(dict.fromkeys(r["method"] for r in pts))
    for i, name in enumerate(names):
        run = sorted((r for r in pts if r["method"] == name), key=lambda r: r["step"])
        style, color = ("--" if "noiseless" in name else "-"), plt.cm.tab10(i)
        axes[0].plot([r["kl"] for r in run], [r["gold"] for r in run], "o", color=color, label=name, ms=3)
        steps = [r["step"] for r in run]  # over training, smoothed over 5 evaluations (the raw points scatter)
        axes[1].plot(steps, study.smooth([r["gold"] for r in run]), style, color=color, label=name)
        axes[2].plot(steps, study.smooth([r["proxy"] for r in run]), style, color=color, label=name)
    axes[0].set(xlabel="KL to the base policy (nats)", ylabel="gold reward (best 3.5)",
                title="Gold against KL (every evaluation of each run)")
    axes[1].set(xlabel="episodes", ylabel="gold reward", title="Gold during training: noiseless and noisy RMs, "
                "single and ensembles")
    axes[2].set(xlabel="episodes", ylabel="the reward PPO maximizes (proxy)", title="What each run optimized")
    axes[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(Path(out_dir) / "noise.png", dpi=120)
    (Path(out_dir) / "noise.md").write_text(table(rows) + "\n")
    return ["noise.png", "noise.md"]
