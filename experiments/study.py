"""The papers' claims in miniature, on the embedded task: one command trains the models and draws the plots.

    python experiments/study.py          # the whole study (over 2.5 hours on 2 CPU cores; each part's time is in
                                         # experiments/README.md)
    python experiments/study.py --quick  # smaller data, shorter runs (4 to 10 minutes a part): the same plots, noisier

1. Reward-KL frontier (Rafailov et al. 2023, the sentiment experiment): gold against the sequence KL to the base
   for PPO on gold (a sweep of --kl-coef), DPO (a sweep of --beta) and best-of-n judged by gold (a sweep of n;
   KL = log n - (n - 1) / n, Stiennon et al. 2020).
2. Overoptimization (Gao, Schulman, Hilton 2022): PPO with a small KL penalty against reward models from fewer or
   more pairs; proxy (the RM's score) and gold against d = sqrt(KL), and the same for best-of-n judged by each RM.
   The fitted forms, R the gain over the base: R_rl(d) = d (alpha - beta log d), R_bon(d) = d (alpha - beta d).
3. Length hacking (the lectures): PPO against the RM of a length-biased labeler, and against the RM trained
   with curated counterexamples: response length and gold reward during training.
4. Data scale (seed 000, experiments/reward_models.py): each feature's accuracy against the number of pairs, and
   K-wise rankings against pairs at equal labeling effort.
5. Alignment gap (seed 000, experiments/reward_models.py): targeted examples where RM and gold disagree most,
   against as many random extra pairs: the RMs' alignment gap and accuracy, and PPO's gold against each.
6. Methods compared (seed 004, AlpacaFarm; experiments/methods.py): best-of-n, expert iteration, PPO, RLOO, GRPO,
   Dr. GRPO and DPO from one base and one learned RM per seed, PPO on gold the ceiling: win rate against the base
   as the labeler judges it, gold, KL, wall time and diversity, over 3 seeds.
7. Noise and ensembles (seeds 003, 004; Coste et al. 2023; experiments/noise.py): PPO against RMs from noiseless
   and 25%-flipped labels, single, ensembles (mean, min, mean - std) and denoised: gold against KL, diversity.
8. Generalization (seeds 002, 003; experiments/generalization.py): every reward model's accuracy on generator
   responses and on RL policies' responses (common/ood_responses.jsonl), and PPO's gold against each.

Every run is one of the project's scripts, launched as a user would (`python ppo_rlhf.py ...`), its numbers read
back from its TensorBoard log. Writes <out-dir>/results.csv (one row per measured point), frontier.png,
overoptimization.png, length_hacking.png, fits.csv, and each run's output in <out-dir>/logs/.
"""

import csv
import glob
import math
import os
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import generalization  # noqa: E402  (experiments/, beside this file)
import methods  # noqa: E402
import noise  # noqa: E402
import reward_models  # noqa: E402


@dataclass
class Args:
    out_dir: str = ""
    """where results.csv, the plots and the runs' logs are written; '' is runs/study (with --quick runs/study_quick)"""
    quick: bool = False
    """minutes instead of hours: fewer train prompts, shorter runs, fewer sweep points and seeds"""
    seed: int = 1
    """seed of every run"""
    only: str = ""
    """comma-separated parts to run: frontier, overoptimization, length, data-scale, alignment-gap, methods, noise,
    generalization; '' runs all"""
    rebuild_ood: bool = False
    """generalization: rebuild common/ood_responses.jsonl (PPO runs) even if it exists"""
    python: str = sys.executable
    """the interpreter that runs the scripts"""
    plot_only: bool = False
    """redraw the plots from <out-dir>/results.csv and fits.csv without running anything"""


# ---------------------------------------------------------------- the math (pure functions, tested)
def bon_kl(n):
    """KL(best-of-n || base) in nats, for n independent samples and a judge without ties (Stiennon et al. 2020,
    appendix; Gao et al. 2022): log n - (n - 1) / n. Exact for continuous scores; an upper bound with ties."""
    return math.log(n) - (n - 1) / n


def expected_best_of_n(judge, value, n):
    """E[value of the sample the judge ranks highest among n drawn without replacement from these N], exactly:
    the i-th lowest by the judge (1-based) is the best of a random n-subset with probability C(i-1, n-1) / C(N, n).
    An unbiased estimate of best-of-n from N >= n samples (Nakano et al. 2021). judge, value: (N,) arrays."""
    judge, value = np.asarray(judge, dtype=float), np.asarray(value, dtype=float)
    N = len(judge)
    if not 1 <= n <= N:
        raise ValueError(f"best-of-{n} needs 1 <= n <= {N} samples")
    order = np.argsort(judge, kind="stable")  # ties: a fixed order, as a judge that breaks ties consistently
    i = np.arange(1, N + 1)
    weights = np.array([math.comb(k - 1, n - 1) for k in i], dtype=float) / math.comb(N, n)
    return float((weights * value[order]).sum())


def fit_gao(d, r, form):
    """Least-squares (alpha, beta) of Gao et al.'s forms, both linear in the coefficients:
    'rl': r = d (alpha - beta log d);  'bon': r = d (alpha - beta d). d = sqrt(KL) > 0, r the gain over d = 0."""
    d, r = np.asarray(d, dtype=float), np.asarray(r, dtype=float)
    keep = d > 0
    d, r = d[keep], r[keep]
    second = -d * np.log(d) if form == "rl" else -d * d
    (alpha, beta), *_ = np.linalg.lstsq(np.stack([d, second], 1), r, rcond=None)
    return float(alpha), float(beta)


def gao_curve(d, alpha, beta, form):
    d = np.asarray(d, dtype=float)
    return d * (alpha - beta * (np.log(np.maximum(d, 1e-12)) if form == "rl" else d))


# ---------------------------------------------------------------- running the scripts
def read_scalars(run_dir):
    """{tag: [(step, value), ...]} from a TensorBoard log directory."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(run_dir), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def launch(args, script, name, *flags):
    """Run `python <script> --exp-name study_<name> --seed S <flags>` from the repo root; its output goes to
    <out-dir>/logs/<name>.log. Returns (TensorBoard run directory, last line of output)."""
    exp = f"study_{name}"
    log_path = Path(args.out_dir) / "logs" / f"{name}.log"
    cmd = [args.python, script, "--exp-name", exp, "--seed", str(args.seed), *map(str, flags)]
    print(f"[{time.strftime('%H:%M:%S')}] {' '.join(cmd[1:])}", flush=True)
    start = time.time()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=os.environ | {"TQDM_DISABLE": "1"}).returncode
    lines = log_path.read_text().strip().splitlines()
    if rc != 0:
        raise SystemExit(f"{script} failed (exit {rc}); the end of {log_path}:\n" + "\n".join(lines[-15:]))
    runs = sorted(glob.glob(str(ROOT / "runs" / f"{exp}__{args.seed}__*")), key=os.path.getmtime)
    print(f"    {time.time() - start:.0f}s: {lines[-1][:200]}", flush=True)
    return runs[-1], lines[-1]


# ---------------------------------------------------------------- the three parts
def frontier(args, cfg, rows):
    """Gold reward against KL: PPO on the gold reward (kl-coef sweep), DPO (beta sweep), best-of-n (n sweep)."""
    for coef in cfg["ppo_kl_coefs"]:
        run, _ = launch(args, "ppo_rlhf.py", f"frontier_ppo_kl{coef}", "--kl-coef", coef, "--total-episodes", cfg["ppo_episodes"],
                        "--log-samples-every", cfg["eval_every_updates"])
        s = read_scalars(run)
        for (step, kl), (_, gold) in zip(s["eval/kl"], s["eval/gold"]):
            rows.append(dict(part="frontier", method="PPO (gold reward)", setting=f"kl_coef={coef}", step=step, kl=kl, gold=gold))
    for beta in cfg["dpo_betas"]:
        run, _ = launch(args, "dpo.py", f"frontier_dpo_beta{beta}", "--beta", beta, *cfg["dpo_flags"])
        s = read_scalars(run)
        for (step, kl), (_, gold) in zip(s["eval/kl"], s["eval/gold"]):
            rows.append(dict(part="frontier", method="DPO", setting=f"beta={beta}", step=step, kl=kl, gold=gold))
    samples = base_samples(cfg["bon_samples"], args.seed)
    for n in cfg["bon_ns"]:
        gold = np.mean([expected_best_of_n(g, g, n) for _, _, g in samples])
        rows.append(dict(part="frontier", method="best-of-n (gold judge)", setting=f"n={n}", step=0, kl=bon_kl(n), gold=gold))


def base_samples(n, seed):
    """n responses of the bundled base policy to each eval prompt: [(prompt, responses, gold rewards)], cached."""
    global _SAMPLES
    if _SAMPLES is None or len(_SAMPLES[0][1]) != n:
        import torch

        from common import models, runs, sampling, task

        runs.seed_everything(seed)
        policy = models.load_causal_lm(models.BUNDLED_MODEL)
        tokenizer = models.load_tokenizer(models.BUNDLED_MODEL)
        prompts = task.split_prompts()[1]
        queries = [tokenizer(p).input_ids for p in prompts for _ in range(n)]
        texts = sampling.sample_completions(policy, tokenizer, queries, batch_size=256)
        _SAMPLES = [(p, texts[i * n : (i + 1) * n], [task.gold_reward(p, t) for t in texts[i * n : (i + 1) * n]])
                    for i, p in enumerate(prompts)]
        torch.set_grad_enabled(True)
    return _SAMPLES


_SAMPLES = None


def rm_scores(rm_dir, samples):
    """The normalized reward of a saved reward model on every base-policy sample: [(N,) array per prompt]."""
    import torch

    from common import data, models

    tokenizer, rm = models.load_tokenizer(rm_dir), models.load_reward_model(rm_dir).eval()
    out = []
    with torch.no_grad():
        for p, texts, _ in samples:
            seqs = [data.encode(tokenizer, p, t, 96, 32, Counter())[0] for t in texts]
            ids, mask = data.pad(seqs, tokenizer.pad_token_id), data.pad([[1] * len(s) for s in seqs], 0)
            raw = models.reward_at_last_token(rm, ids, mask)
            out.append(((raw - rm.config.reward_mean) / rm.config.reward_std).numpy())
    return out


def train_rm(args, name, *flags):
    """rm_bt.py with these flags, saved to <out-dir>/<name> (--quick: <name>_quick); a saved one is reused."""
    rm_dir = Path(args.out_dir) / (name + "_quick" * args.quick)
    if (rm_dir / "config.json").exists():
        print(f"    reusing the reward model in {rm_dir} (delete it to train it again)")
    else:
        launch(args, "rm_bt.py", rm_dir.name, "--output-dir", rm_dir, *flags)
    return rm_dir


def overoptimization(args, cfg, rows, fits):
    """PPO with a small KL penalty against RMs trained on fewer and more pairs; best-of-n with the same RMs."""
    samples = base_samples(cfg["bon_samples"], args.seed)
    for ppp in cfg["rm_pairs_per_prompt"]:
        rm_dir = train_rm(args, f"rm_{ppp}pairs", "--pairs-per-prompt", ppp, *cfg["rm_flags"])
        label = f"RM from {ppp} pairs/prompt"
        # best-of-n, judged by the RM: proxy and gold of the chosen sample against sqrt(KL)
        proxy = rm_scores(rm_dir, samples)
        for n in cfg["bon_ns"]:
            p = np.mean([expected_best_of_n(s, s, n) for s in proxy])
            g = np.mean([expected_best_of_n(s, gold, n) for s, (_, _, gold) in zip(proxy, samples)])
            rows.append(dict(part="overoptimization", method="best-of-n", setting=label, step=n, kl=bon_kl(n), gold=g, proxy=p))
        # PPO against the RM
        run, _ = launch(args, "ppo_rlhf.py", f"overopt_ppo_{ppp}pairs", "--reward-model", rm_dir, "--kl-coef", cfg["overopt_kl_coef"],
                        "--learning-rate", cfg["overopt_lr"], "--total-episodes", cfg["overopt_episodes"], "--log-samples-every", cfg["overopt_eval_every_updates"])
        s = read_scalars(run)
        for (step, kl), (_, gold), (_, proxy_score) in zip(s["eval/kl"], s["eval/gold"], s["eval/score"]):
            # the RMs are calibrated to gold (rm_bt.py on the embedded task), so proxy - gold is the alignment gap
            rows.append(dict(part="overoptimization", method="PPO", setting=label, step=step, kl=kl, gold=gold, proxy=proxy_score,
                             alignment_gap=proxy_score - gold))
    # the fits: R = gain over the starting point (step 0 for PPO, n = 1 for best-of-n), d = sqrt(KL), clipped at 0
    for method, form in (("PPO", "rl"), ("best-of-n", "bon")):
        for ppp in cfg["rm_pairs_per_prompt"]:
            label = f"RM from {ppp} pairs/prompt"
            pts = [r for r in rows if r["part"] == "overoptimization" and r["method"] == method and r["setting"] == label]
            pts.sort(key=lambda r: r["step"])
            d = np.sqrt(np.maximum([r["kl"] for r in pts], 0.0))
            for what in ("gold", "proxy"):
                y = np.array([r[what] for r in pts]) - pts[0][what]
                alpha, beta = fit_gao(d, y, form)
                peak = math.exp(alpha / beta - 1) if form == "rl" and beta > 0 else alpha / (2 * beta) if beta > 0 else float("inf")
                fits.append(dict(method=method, setting=label, reward=what, form=form, alpha=alpha, beta=beta, peak_sqrt_kl=peak,
                                 measured_peak_sqrt_kl=float(d[int(np.argmax(y))]), measured_max_gain=float(y.max())))


def length_hacking(args, cfg, rows):
    """PPO against the RM of a length-biased labeler (0.3 x words), and against RMs trained with a fraction of the
    pairs replaced by curated counterexamples (short but excellent chosen over long but bad)."""
    for frac in cfg["counterexample_fracs"]:
        rm_dir = train_rm(args, f"rm_length_ce{frac}", "--length-bias", 0.3, "--counterexample-frac", frac, *cfg["rm_flags"])
        run, _ = launch(args, "ppo_rlhf.py", f"length_ppo_ce{frac}", "--reward-model", rm_dir, "--total-episodes", cfg["ppo_episodes"],
                        "--log-samples-every", cfg["eval_every_updates"])
        s = read_scalars(run)
        label = f"RM: length-biased labels, {frac:.0%} counterexamples"
        length, gold, kl = dict(s["val/response_length"]), dict(s["objective/gold"]), dict(s["objective/kl"])
        for step in sorted(length):  # the train rollouts of every update (64 responses each)
            rows.append(dict(part="length", method="PPO", setting=label, step=step, kl=kl[step], gold=gold[step], response_tokens=length[step]))
        for (step, k), (_, g), (_, p) in zip(s["eval/kl"], s["eval/gold"], s["eval/score"]):
            rows.append(dict(part="length_eval", method="PPO", setting=label, step=step, kl=k, gold=g, proxy=p))


# ---------------------------------------------------------------- plots
def plot(rows, fits, out_dir):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(Path(out_dir) / name, dpi=120)
        written.append(name)

    part = [r for r in rows if r["part"] == "frontier"]
    if part:
        fig, ax = plt.subplots(figsize=(7, 5))
        styles = {"PPO (gold reward)": ("tab:blue", "o"), "DPO": ("tab:orange", "s"), "best-of-n (gold judge)": ("tab:green", "^")}
        for method, (color, marker) in styles.items():
            pts = [r for r in part if r["method"] == method]
            if method.startswith("best"):
                ax.plot([r["kl"] for r in pts], [r["gold"] for r in pts], "-", color=color, marker=marker, label=method)
                continue
            for i, setting in enumerate(dict.fromkeys(r["setting"] for r in pts)):
                run = [r for r in pts if r["setting"] == setting]
                ax.plot([r["kl"] for r in run], [r["gold"] for r in run], "-", color=color, alpha=0.25)
                ax.scatter([run[-1]["kl"]], [run[-1]["gold"]], color=color, marker=marker, label=method if i == 0 else None, zorder=3)
                ax.annotate(setting.split("=")[1], (run[-1]["kl"], run[-1]["gold"]), fontsize=7, xytext=(3, -9), textcoords="offset points")
        ax.axhline(3.5, color="gray", ls=":", lw=1)
        ax.set(xlabel="KL to the base policy (nats, sequence level)", ylabel="gold reward (held-out prompts; best 3.5)",
               title="Reward-KL frontier (faint lines: checkpoints during training)")
        ax.legend(loc="lower right")
        save(fig, "frontier.png")

    part = [r for r in rows if r["part"] == "overoptimization"]
    if part:
        with_gap = any("alignment_gap" in r for r in part)
        fig, axes = plt.subplots(1, 3 if with_gap else 2, figsize=(18 if with_gap else 12, 5))
        for ax, method, form in ((axes[0], "PPO", "rl"), (axes[1], "best-of-n", "bon")):
            for setting, color in zip(dict.fromkeys(r["setting"] for r in part), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
                pts = sorted((r for r in part if r["method"] == method and r["setting"] == setting), key=lambda r: r["step"])
                d = np.sqrt(np.maximum([r["kl"] for r in pts], 0.0))
                gold = np.array([r["gold"] for r in pts]) - pts[0]["gold"]
                proxy = np.array([r["proxy"] for r in pts]) - pts[0]["proxy"]
                ax.plot(d, proxy, "^--", color=color, alpha=0.5, ms=4, mfc="none", lw=0.8, label=f"proxy, {setting}")
                ax.plot(d, gold, "o", color=color, ms=4, label=f"gold, {setting}")
                f = next(f for f in fits if f["method"] == method and f["setting"] == setting and f["reward"] == "gold")
                grid = np.linspace(1e-3, d.max(), 100)
                ax.plot(grid, gao_curve(grid, f["alpha"], f["beta"], form), "-", color=color, lw=1)
            ax.axhline(0, color="gray", lw=0.5)
            ax.set(xlabel="d = sqrt(KL to the base policy)", ylabel="reward gain over the base policy",
                   title=f"{method} against learned RMs (lines: Gao et al. fit to gold)")
            ax.legend(fontsize=7)
        if with_gap:  # seed 000: "continue tracking the alignment gap"
            for setting, color in zip(dict.fromkeys(r["setting"] for r in part), ("tab:red", "tab:blue", "tab:green", "tab:purple")):
                pts = sorted((r for r in part if r["method"] == "PPO" and r["setting"] == setting and "alignment_gap" in r),
                             key=lambda r: r["step"])
                axes[2].plot(np.sqrt(np.maximum([r["kl"] for r in pts], 0.0)), [r["alignment_gap"] for r in pts], "o-",
                             color=color, ms=4, label=setting)
            axes[2].axhline(0, color="gray", lw=0.5)
            axes[2].set(xlabel="d = sqrt(KL to the base policy)", ylabel="RM score - gold (gold's scale)",
                        title="PPO: the alignment gap on held-out prompts")
            axes[2].legend(fontsize=7)
        save(fig, "overoptimization.png")

    part = [r for r in rows if r["part"] == "length"]
    if part:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for setting, color in zip(dict.fromkeys(r["setting"] for r in part), ("tab:red", "tab:orange", "tab:blue")):
            pts = sorted((r for r in part if r["setting"] == setting), key=lambda r: r["step"])
            steps = [r["step"] for r in pts]
            axes[0].plot(steps, smooth([r["response_tokens"] for r in pts]), color=color, label=setting)
            axes[1].plot(steps, smooth([r["gold"] for r in pts]), color=color, label=setting)
        axes[0].set(xlabel="episodes", ylabel="response length (tokens)", title="PPO against length-biased RMs: length")
        axes[1].set(xlabel="episodes", ylabel="gold reward of the rollouts", title="... and the gold reward")
        for ax in axes:
            ax.legend(fontsize=8)
        save(fig, "length_hacking.png")
    written += reward_models.plot(rows, out_dir, plt)
    written += methods.plot(rows, out_dir, plt)
    written += noise.plot(rows, out_dir, plt)
    plt.close("all")
    return written


def smooth(values, k=5):
    """Running mean over the last k points (the per-update rollouts are noisy)."""
    v = np.asarray(values, dtype=float)
    return np.array([v[max(0, i - k + 1) : i + 1].mean() for i in range(len(v))])


def read_csv(path):
    """Rows of a CSV written by write_csv, numbers back as ints or floats (empty cells dropped)."""
    def value(v):
        for kind in (int, float):
            try:
                return kind(v)
            except ValueError:
                pass
        return v
    with open(path) as f:
        return [{k: value(v) for k, v in r.items() if v != ""} for r in csv.DictReader(f)]


def write_csv(path, rows):
    keys = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, keys)
        w.writeheader()
        w.writerows(rows)


CONFIGS = {  # the whole study, and --quick
    False: dict(ppo_kl_coefs=[0.01, 0.03, 0.1, 0.3], ppo_episodes=6400, eval_every_updates=10,
                dpo_betas=[0.05, 0.2, 0.5, 2.0], dpo_flags=[], bon_samples=64, bon_ns=[1, 2, 4, 8, 16, 32, 64],
                rm_pairs_per_prompt=[4, 16, 32], rm_flags=[], overopt_kl_coef=0.005, overopt_lr=1e-4, overopt_episodes=3200, overopt_eval_every_updates=2, counterexample_fracs=[0.0, 0.3, 0.6]),
    True: dict(ppo_kl_coefs=[0.02, 0.2], ppo_episodes=1920, eval_every_updates=5,
               dpo_betas=[0.1, 1.0], dpo_flags=["--num-train-prompts", 300, "--num-eval-prompts", 64], bon_samples=16,
               bon_ns=[1, 2, 4, 8, 16], rm_pairs_per_prompt=[4, 16], rm_flags=["--num-train-prompts", 300],
               overopt_kl_coef=0.005, overopt_lr=1e-4, overopt_episodes=1280, overopt_eval_every_updates=2, counterexample_fracs=[0.0, 0.6]),
}
# the reward-model parts (experiments/reward_models.py): (train prompts, pairs per prompt) and rankings of 4 to 9
CONFIGS[False] |= dict(scale_pairs=[(250, 1), (1000, 1), (1566, 4), (1566, 16), (1566, 32)], scale_rankings=[100, 400, 1566],
                       gap_prompts=1566, gap_pairs_per_prompt=4, gap_pool_per_prompt=4, gap_extra_pairs=1500, gap_ppo_episodes=6400)
CONFIGS[True] |= dict(scale_pairs=[(250, 1), (1000, 1), (1000, 4)], scale_rankings=[100, 400],
                      gap_prompts=300, gap_pairs_per_prompt=4, gap_pool_per_prompt=4, gap_extra_pairs=300, gap_ppo_episodes=1920)
# the methods compared (experiments/methods.py): seeds, eval prompts, samples per prompt, each method's flags
CONFIGS[False] |= dict(methods_seeds=[1, 2, 3], methods_eval_prompts=174, methods_samples=2,
                       methods_rm_flags=["--eval-every", 400], methods_dpo_flags=["--eval-every", 400],
                       methods_ei_flags=["--n", 16, "--prompts-per-round", 500, "--num-eval-prompts", 64],
                       methods_ppo_flags=[], methods_grpo_flags=[])
CONFIGS[True] |= dict(methods_seeds=[1, 2], methods_eval_prompts=48, methods_samples=2,
                      methods_rm_flags=["--num-train-prompts", 300], methods_dpo_flags=["--num-train-prompts", 300],
                      methods_ei_flags=["--n", 16, "--prompts-per-round", 150, "--num-eval-prompts", 32],
                      methods_ppo_flags=["--total-episodes", 1280], methods_grpo_flags=["--total-episodes", 2560])
# noiseless and noisy labels, single reward models and ensembles (experiments/noise.py)
CONFIGS[False] |= dict(noise_rm_flags=["--pairs-per-prompt", 4], noise_episodes=3200, noise_eval_prompts=174,
                       noise_samples=4)
CONFIGS[True] |= dict(noise_rm_flags=["--pairs-per-prompt", 4, "--num-train-prompts", 300, "--ensemble-size", 3],
                      noise_episodes=1280, noise_eval_prompts=48, noise_samples=4)
PARTS = ("frontier", "overoptimization", "length", "data-scale", "alignment-gap", "methods", "noise", "generalization")

if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    args.out_dir = args.out_dir or ("runs/study_quick" if args.quick else "runs/study")
    out = Path(args.out_dir)
    cfg = CONFIGS[args.quick]
    parts = set(args.only.split(",")) if args.only else set(PARTS)
    unknown = parts - set(PARTS)
    if unknown:
        raise SystemExit(f"--only: unknown part(s) {sorted(unknown)}; expected {', '.join(PARTS)}")
    if args.plot_only:
        if not (out / "results.csv").exists():
            raise SystemExit(f"--plot-only: no {out / 'results.csv'}; run the study first (or pass its --out-dir)")
        written = plot(read_csv(out / "results.csv"), read_csv(out / "fits.csv") if (out / "fits.csv").exists() else [], out)
        print(f"study: redrew {', '.join(written)} in {args.out_dir}")
        raise SystemExit(0)
    (out / "logs").mkdir(parents=True, exist_ok=True)
    rows, fits, start = [], [], time.time()
    if "frontier" in parts:
        frontier(args, cfg, rows)
    if "overoptimization" in parts:
        overoptimization(args, cfg, rows, fits)
    if "length" in parts:
        length_hacking(args, cfg, rows)
    if "data-scale" in parts:
        reward_models.data_scale(args, cfg, rows)
    if "alignment-gap" in parts:
        reward_models.alignment_gap_part(args, cfg, rows)
    if "methods" in parts:
        methods.methods(args, cfg, rows)
    if "noise" in parts:
        noise.noise(args, cfg, rows)
    if "generalization" in parts:
        generalization.generalization(args, cfg, rows)
    for r in rows:
        if "kl" in r:
            r["sqrt_kl"] = math.sqrt(max(r["kl"], 0.0))
    if args.only:  # keep the other parts' points from an earlier run of the study
        old = read_csv(out / "results.csv") if (out / "results.csv").exists() else []
        rows = [r for r in old if r["part"].split("_")[0] not in parts] + rows
        if "overoptimization" not in parts and (out / "fits.csv").exists():
            fits = read_csv(out / "fits.csv")
    write_csv(out / "results.csv", rows)
    if fits:
        write_csv(out / "fits.csv", fits)
    written = plot(rows, fits, out)
    print(f"study: {len(rows)} points in {(time.time() - start) / 60:.1f} min -> {args.out_dir}/results.csv, "
          + ", ".join(written) + (", fits.csv" if fits else ""))
    for f in fits:
        print(f"  {f['method']:9s} {f['setting']:24s} {f['reward']:5s} alpha {f['alpha']:+.3f} beta {f['beta']:+.3f} "
              f"fitted peak at sqrt(KL) {f['peak_sqrt_kl']:.2f}, measured {f['measured_peak_sqrt_kl']:.2f} (gain {f['measured_max_gain']:+.2f})")
