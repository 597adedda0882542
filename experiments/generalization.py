"""The study's "generalization" part (seeds 002 and 003), run by `python experiments/study.py --only generalization`.

Reward models are trained on the generator's responses and then used on the policy's, which drift away during RL
(Secrets of RLHF II: reward models "struggle with generalization"). Two steps:

1. The out-of-distribution set, built once (or with --rebuild-ood) into common/ood_responses.jsonl: a reward model
   from rm_bt.py on 4 pairs per prompt, then four PPO runs from the bundled base policy, against gold and against that
   reward model, each stopped early and late (the policy after 1600 and after 6400 episodes: four runs, each from
   the base, standing for checkpoints along a run); each policy writes 4 responses to every eval prompt (16 per
   prompt). The reward-model scripts pair them at random within each prompt, have their own labeler label them
   (task.ood_pairs) and log eval/ood_accuracy beside eval/accuracy (in-distribution: generator responses).
2. Every reward model of the project trained on the embedded task's labels: rm_bt.py and rm_generative.py pairwise
   on the same 16 comparisons per prompt, rm_generative.py pointwise on as many labels (the 16 responses of 8 pairs,
   each judged alone), rm_kwise.py on its rankings and rm_composite.py on its ratings and pairs (their defaults);
   their in- and out-of-distribution accuracy, and the gold PPO reaches against each.
"""

import json
from pathlib import Path

import reward_models
import study  # launch, read_scalars: looked up when called (study.py imports this file)

ROOT = Path(__file__).resolve().parent.parent
OOD_FILE = ROOT / "common" / "ood_responses.jsonl"
POLICIES = (("gold", "gold", 1600), ("gold", "gold", 6400), ("RM", "rm", 1600), ("RM", "rm", 6400))
RM_FLAGS = {False: [], True: ["--num-train-prompts", 300]}  # the whole study, --quick
PPO_FLAGS = {False: [], True: ["--total-episodes", 1920]}


def build_ood_set(args, out, samples_per_policy=4):
    """Train the RM and the four PPO policies, sample each on the eval prompts, write OOD_FILE; returns its path."""
    from common import task

    rm_dir = out / "ood_rm"
    study.launch(args, "rm_bt.py", "ood_rm", "--pairs-per-prompt", 4, "--eval-every", 400, "--output-dir", rm_dir)
    eval_prompts = task.split_prompts()[1]
    responses = {p: [] for p in eval_prompts}
    policies = []
    for label, reward, episodes in POLICIES:
        policy_dir = out / f"ood_ppo_{reward}_{episodes}"
        study.launch(args, "ppo_rlhf.py", f"ood_ppo_{reward}_{episodes}", "--total-episodes", episodes,
                     "--reward-model", "gold" if reward == "gold" else rm_dir, "--output-dir", policy_dir)
        for p, t in reward_models.policy_samples(policy_dir, eval_prompts, samples_per_policy, args.seed):
            responses[p].append(t)
        policies.append(f"PPO against {label}, {episodes} episodes")
    with open(OOD_FILE, "w") as f:
        for p in eval_prompts:
            f.write(json.dumps({"prompt": p, "responses": responses[p], "policies": policies}) + "\n")
    return OOD_FILE


def generalization(args, cfg, rows):
    """Each reward model's in- and out-of-distribution accuracy and the gold of PPO against it: rows of the study."""
    out = Path(args.out_dir)
    if args.rebuild_ood or not OOD_FILE.is_file():
        build_ood_set(args, out)
    small = RM_FLAGS[args.quick]
    rms = {  # name: (script, flags, the labels it learns from, per train prompt)
        "rm_bt.py": ("rm_bt.py", small, "16 comparisons"),
        "rm_generative.py pairwise": ("rm_generative.py", small, "16 comparisons"),
        "rm_generative.py pointwise": ("rm_generative.py", [*small, "--mode", "pointwise", "--pairs-per-prompt", 8],
                                       "16 Yes/No judgments"),
        "rm_kwise.py (Plackett-Luce)": ("rm_kwise.py", small, "1 ranking of 4 to 9"),
        "rm_composite.py": ("rm_composite.py", small, "5 ratings of ~30 responses, 16 comparisons"),
    }
    for i, (name, (script, flags, labels)) in enumerate(rms.items()):
        rm_dir = out / f"general_rm{i}"
        run, _ = study.launch(args, script, f"general_rm{i}", *flags, "--output-dir", rm_dir)
        logged = study.read_scalars(run)
        ppo, _ = study.launch(args, "ppo_rlhf.py", f"general_ppo{i}", "--reward-model", rm_dir,
                              *PPO_FLAGS[args.quick])
        gold = study.read_scalars(ppo)["eval/gold"]
        rows.append({"part": "generalization", "method": name, "labels": labels,
                     "accuracy": reward_models.final(logged, "eval/accuracy"),
                     "ood_accuracy": reward_models.final(logged, "eval/ood_accuracy"),
                     "ood_ceiling": reward_models.final(logged, "eval/ood_ceiling"),
                     "ceiling": reward_models.final(logged, "eval/ceiling"),
                     "gold_start": gold[0][1], "gold": gold[-1][1]})
        (out / "generalization.md").write_text(table(rows) + "\n")
        print(f"    {name}: accuracy {rows[-1]['accuracy']:.3f}, OOD {rows[-1]['ood_accuracy']:.3f}"
              f" (ceilings {rows[-1]['ceiling']:.3f}, {rows[-1]['ood_ceiling']:.3f}), PPO gold {rows[-1]['gold']:.2f}")


def table(rows):
    """Markdown: each reward model's accuracy on generator responses and on the RL policies' (each against its
    labeler's ceiling), the drop in points of the distance to the ceiling, and PPO's gold against it."""
    lines = ["| reward model | labels per prompt | accuracy (ceiling) | off-distribution accuracy (ceiling) | distance to the ceiling: "
             "in -> off, points | PPO gold |", "|---|---|---|---|---|---|"]
    for r in (r for r in rows if r.get("part") == "generalization"):
        below, below_ood = 100 * (r["ceiling"] - r["accuracy"]), 100 * (r["ood_ceiling"] - r["ood_accuracy"])
        lines.append(f"| {r['method']} | {r['labels']} | {r['accuracy']:.3f} ({r['ceiling']:.3f}) | {r['ood_accuracy']:.3f} "
                     f"({r['ood_ceiling']:.3f}) | {below:.1f} -> {below_ood:.1f} | {r['gold_start']:.2f} -> "
                     f"{r['gold']:.2f} |")
    return "\n".join(lines)
