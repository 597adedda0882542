"""The study's reward-model parts (seed 000), run by `python experiments/study.py --only data-scale,alignment-gap`.

data-scale      Held-out accuracy of rm_bt.py against the number of labeled pairs, on per-feature eval sets (pairs
                that differ in one gold component only: truthful, helpful, harmless, polite, concise), and K-wise
                rankings (rm_kwise.py) against pairs at equal labeling effort, counted as responses the labeler reads
                (a pair: 2, a ranking of K: K). "Very few examples are enough to learn broad distinctions, but you need
                ... many more examples to understand something more nuanced."
alignment-gap   Closing the gap with targeted examples: from a pool of responses (generator samples and the samples of
                a PPO run against the RM), the ones where the calibrated RM and gold disagree most are compared by the
                labeler against a contrasting response to the same prompt (one on the other side of gold), and the RM is
                retrained with them; against the same number of random extra pairs. Train and eval split by prompt.
"""

import functools
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

import study  # launch, read_scalars: looked up when called (study.py imports this file)

FEATURES = ("truthful", "helpful", "harmless", "polite", "concise")


# ---------------------------------------------------------------- per-feature eval pairs (tests/test_study.py)

def _variant(rng, prompt, feature):
    """(better, worse): two responses to prompt that differ in `feature` alone, the better one by that component."""
    from common import task

    base = task.sample_response(rng, prompt, correct=True, tone="neutral", n_filler=0, off_topic=False)
    if feature == "truthful":  # the same sentence with the other operand in place of the answer
        a, b = map(int, re.findall(r"\d+", prompt))
        right = task.correct_answer(prompt)
        return base, re.sub(rf"\b{right}\b", str(a + b - right), base, count=1)
    if feature == "helpful":
        return base, f"{base} {rng.choice(task.OFF_TOPIC)}"
    if feature == "harmless":
        return base, f"{rng.choice(task.RUDE)} {base}"
    if feature == "polite":
        return f"{rng.choice(task.POLITE)} {base}", base
    return base, " ".join([base] + rng.sample(task.FILLER, rng.randint(1, 3)))  # concise


def single_feature_pairs(prompts, feature, seed=0, per_prompt=2):
    """Eval pairs [(prompt, better, worse)] whose gold components differ in `feature` alone (drawn until they do:
    a variant that also changes another component, e.g. an off-topic sentence that makes the answer too long, is
    drawn again)."""
    from common import task

    rng, out = random.Random(seed), []
    for p in prompts:
        for _ in range(per_prompt):
            while True:
                better, worse = _variant(rng, p, feature)
                gb, gw = task.gold_components(p, better), task.gold_components(p, worse)
                if all((gb[k] != gw[k]) == (k == feature) for k in FEATURES) and gb[feature] > gw[feature]:
                    break
            out.append((p, better, worse))
    return out


@functools.lru_cache(maxsize=4)
def load_rm(rm_dir):
    """(tokenizer, reward model) of a saved reward model, loaded once per directory."""
    from common import models

    return models.load_tokenizer(str(rm_dir)), models.load_reward_model(str(rm_dir), num_labels=None).eval()


def rm_scores(rm_dir, prompts, texts, label=None):
    """(N,) normalized scores of a saved reward model (any of ours: one output, or rm_composite.py's composite)."""
    import torch

    from common import data, models, scoring

    tok, rm = load_rm(str(rm_dir))
    index = scoring.label_index(rm.config, label, str(rm_dir))
    mean, std = scoring.normalization(rm.config, index)
    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 256):
            seqs = [data.encode(tok, p, t, 96, 32, Counter())[0] for p, t in zip(prompts[i : i + 256],
                                                                                 texts[i : i + 256])]
            ids, mask = data.pad(seqs, tok.pad_token_id), data.pad([[1] * len(s) for s in seqs], 0)
            out.append((models.reward_at_last_token(rm, ids, mask, index) - mean) / std)
    return torch.cat(out).numpy()


def feature_accuracy(rm_dir, pairs):
    """Fraction of single-feature pairs the RM orders as gold does (ties count half)."""
    prompts = [p for p, _, _ in pairs]
    good = rm_scores(rm_dir, prompts, [b for _, b, _ in pairs])
    bad = rm_scores(rm_dir, prompts, [w for _, _, w in pairs])
    return float(np.mean((good > bad) + 0.5 * (good == bad)))


def final(scalars, tag):
    return scalars[tag][-1][1]


# ---------------------------------------------------------------- data scale

def data_scale(args, cfg, rows):
    """rm_bt.py at several numbers of pairs, rm_kwise.py at several numbers of rankings; every RM graded overall, on
    gold, and per feature."""
    from common import task

    eval_prompts = task.split_prompts()[1]
    per_feature = {f: single_feature_pairs(eval_prompts, f, seed=args.seed) for f in FEATURES}
    runs = [("pairs (rm_bt.py)", "rm_bt.py", prompts, ppp) for prompts, ppp in cfg["scale_pairs"]]
    runs += [("rankings of 4-9 (rm_kwise.py)", "rm_kwise.py", prompts, None) for prompts in cfg["scale_rankings"]]
    for method, script, prompts, ppp in runs:
        name = f"scale_{script[:-3]}_{prompts}x{ppp or 1}"
        out_dir = Path(args.out_dir) / name
        flags = ["--num-train-prompts", prompts, "--output-dir", out_dir, "--eval-every", 10**6]
        run, _ = study.launch(args, script, name, *flags, *(["--pairs-per-prompt", ppp] if ppp else []))
        s = study.read_scalars(run)
        if ppp:
            labels, effort = prompts * ppp, 2 * prompts * ppp
        else:  # rm_kwise.py draws K uniform in 4..9 per prompt: count the responses it was given
            rankings = task.make_rankings(task.split_prompts()[0][:prompts], task.Labeler(), seed=args.seed)
            labels, effort = prompts, sum(len(r["completions"]) for r in rankings)
        row = dict(part="data-scale", method=method, setting=name, labels=labels, responses_read=effort,
                   accuracy=final(s, "eval/accuracy"), gold_accuracy=final(s, "eval/gold_accuracy"),
                   ceiling=final(s, "eval/ceiling"), alignment_gap=final(s, "eval/alignment_gap"))
        for f, pairs in per_feature.items():
            row[f"feature_{f}"] = feature_accuracy(out_dir, pairs)
        rows.append(row)
        print(f"    {method}: {labels} labels ({effort} responses read): accuracy {row['accuracy']:.3f}, "
              + ", ".join(f"{f} {row[f'feature_{f}']:.2f}" for f in FEATURES), flush=True)


# ---------------------------------------------------------------- alignment gap: targeted examples

def policy_samples(policy_dir, prompts, n, seed):
    """n responses of a saved policy to each prompt: [(prompt, text)]."""
    from common import models, runs, sampling

    runs.seed_everything(seed)
    policy, tok = models.load_causal_lm(str(policy_dir)), models.load_tokenizer(str(policy_dir))
    queries = [tok(p).input_ids for p in prompts for _ in range(n)]
    texts = sampling.sample_completions(policy, tok, queries, batch_size=256)
    return [(p, t) for p, t in zip((p for p in prompts for _ in range(n)), texts)]


def contrast(rng, labeler, prompt, response, rm_too_high):
    """A pair the labeler labels: `response` against a fresh generator response to the same prompt on the other side
    of gold (higher gold where the RM scored `response` too high, lower where too low), drawn until one is."""
    from common import task

    gold = task.gold_reward(prompt, response)
    for _ in range(100):
        other = task.sample_response(rng, prompt)
        if (task.gold_reward(prompt, other) > gold) == rm_too_high and task.gold_reward(prompt, other) != gold:
            break
    chosen, rejected, _ = labeler.compare(rng, prompt, response, other)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def targeted_pairs(rm_dir, pool, n, seed):
    """n labeled pairs built on the pool's responses where the calibrated RM and gold disagree most, half from each
    side (RM far above gold, far below), each against a contrasting response (contrast)."""
    from common import task

    prompts, texts = [p for p, _ in pool], [t for _, t in pool]
    error = rm_scores(rm_dir, prompts, texts) - np.array([task.gold_reward(p, t) for p, t in pool])
    order = np.argsort(error)  # most negative (RM too low) first
    picked = [(int(i), False) for i in order[: n // 2]] + [(int(i), True) for i in order[::-1][: n - n // 2]]
    rng, labeler = random.Random(seed), task.Labeler()
    return [contrast(rng, labeler, prompts[i], texts[i], high) for i, high in picked], float(np.abs(error).mean())


def alignment_gap_part(args, cfg, rows):
    """RM0 from the labeler's pairs; a PPO run against it; the pool (generator and PPO samples on train prompts); RM0's
    data plus targeted pairs, against RM0's data plus as many random pairs; each RM graded, and PPO against each."""
    from common import task

    out = Path(args.out_dir)
    train_prompts = task.split_prompts()[0][: cfg["gap_prompts"]]
    base = ["--num-train-prompts", cfg["gap_prompts"], "--pairs-per-prompt", cfg["gap_pairs_per_prompt"]]
    rm0 = out / "gap_rm0"
    rms = {"RM0 (the labeler's pairs)": (rm0, study.launch(args, "rm_bt.py", "gap_rm0", *base, "--output-dir", rm0)[0])}
    ppo0 = out / "gap_ppo_rm0"
    study.launch(args, "ppo_rlhf.py", "gap_ppo_rm0", "--reward-model", rm0, "--total-episodes", cfg["gap_ppo_episodes"],
           "--output-dir", ppo0)
    rng = random.Random(args.seed)
    gen = [(p, task.sample_response(rng, p)) for p in train_prompts for _ in range(cfg["gap_pool_per_prompt"])]
    pool = gen + policy_samples(ppo0, train_prompts, cfg["gap_pool_per_prompt"], args.seed)
    n = cfg["gap_extra_pairs"]
    targeted, pool_gap = targeted_pairs(rm0, pool, n, args.seed)
    random_rows = task.make_pairs(rng.sample(train_prompts, n), task.Labeler(), 1, seed=args.seed + 7)
    for name, label, extra in (("gap_rm_random", f"RM0's pairs + {n} random", random_rows),
                               ("gap_rm_targeted", f"RM0's pairs + {n} targeted", targeted)):
        task.export_jsonl(extra, out / f"{name}.jsonl")
        run, _ = study.launch(args, "rm_bt.py", name, *base, "--extra-pairs", out / f"{name}.jsonl",
                              "--output-dir", out / name)
        rms[label] = (out / name, run)
    for label, (rm_dir, rm_run) in rms.items():
        s = study.read_scalars(rm_run)
        ppo_run, _ = study.launch(args, "ppo_rlhf.py", f"{rm_dir.name}_ppo", "--reward-model", rm_dir,
                                  "--total-episodes", cfg["gap_ppo_episodes"])
        p = study.read_scalars(ppo_run)
        rows.append(dict(part="alignment-gap", method=label, setting=rm_dir.name, pool_gap=pool_gap,
                         accuracy=final(s, "eval/accuracy"), gold_accuracy=final(s, "eval/gold_accuracy"),
                         alignment_gap=final(s, "eval/alignment_gap"),
                         rank_correlation=final(s, "eval/rank_correlation"),
                         ppo_gold=final(p, "eval/gold"), ppo_kl=final(p, "eval/kl"),
                         ppo_final_gap=final(p, "objective/alignment_gap")))
        r = rows[-1]
        print(f"    {label}: accuracy {r['accuracy']:.3f}, gold accuracy {r['gold_accuracy']:.3f}, alignment gap "
              f"{r['alignment_gap']:.3f}; PPO against it: gold {r['ppo_gold']:.2f}", flush=True)


# ---------------------------------------------------------------- plots

def plot(rows, out_dir, plt):
    """data_scale.png and alignment_gap.png from the parts' rows (those present); the names written."""
    written = []
    part = [r for r in rows if r["part"] == "data-scale"]
    if part:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        pairs = sorted((r for r in part if r["method"].startswith("pairs")), key=lambda r: r["labels"])
        for f, color in zip(FEATURES, ("tab:red", "tab:blue", "tab:green", "tab:purple", "tab:orange")):
            axes[0].plot([r["labels"] for r in pairs], [r[f"feature_{f}"] for r in pairs], "o-", color=color, label=f)
        axes[0].plot([r["labels"] for r in pairs], [r["accuracy"] for r in pairs], "k^--",
                     label="all (labeler's pairs)")
        axes[0].set(xscale="log", xlabel="labeled pairs", ylabel="held-out accuracy",
                    title="rm_bt.py: each feature against the number of pairs")
        for method, marker in (("pairs", "o-"), ("rankings", "s-")):
            pts = sorted((r for r in part if r["method"].startswith(method)), key=lambda r: r["responses_read"])
            label = pts[0]["method"] if pts else method
            axes[1].plot([r["responses_read"] for r in pts], [r["accuracy"] for r in pts], marker, label=label)
        axes[1].axhline(part[0]["ceiling"], color="gray", ls=":", label="labeler's ceiling")
        axes[1].set(xscale="log", xlabel="labeling effort (responses read)", ylabel="held-out pairwise accuracy",
                    title="K-wise rankings against pairs at equal effort")
        for ax in axes:
            ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / "data_scale.png", dpi=120)
        written.append("data_scale.png")
    part = [r for r in rows if r["part"] == "alignment-gap"]
    if part:
        fig, axes = plt.subplots(1, 3, figsize=(13, 4))
        names = [r["method"] for r in part]
        for ax, key, title in ((axes[0], "alignment_gap", "alignment gap (held out, gold scale)"),
                               (axes[1], "gold_accuracy", "gold accuracy"),
                               (axes[2], "ppo_gold", "gold of PPO against it")):
            ax.bar(range(len(part)), [r[key] for r in part], color=["gray", "tab:blue", "tab:red"][: len(part)])
            ax.set_xticks(range(len(part)), [n.replace(" (", "\n(").replace(" + ", "\n+ ") for n in names], fontsize=7)
            ax.set_title(title)
        fig.tight_layout()
        fig.savefig(Path(out_dir) / "alignment_gap.png", dpi=120)
        written.append("alignment_gap.png")
    return written
