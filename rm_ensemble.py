"""Reward-model ensembles: preference strength, denoising and labeler screening (Secrets of RLHF II, Wang et al. 2024).

M Bradley-Terry reward models, trained by rm_bt.py on the same pairs with different seeds (with --bootstrap each on a
resample of them), score every training pair. Pair i's preference strength is the mean and standard deviation over
the members of d_im = r_m(x, y_chosen) - r_m(x, y_rejected):
    u_i = mean_m d_im        s_i = sqrt(mean_m (d_im - u_i)^2)
A pair with u_i below --flag-below is flagged: the ensemble says its label is wrong. A labeler whose pairs the
ensemble agrees with (u > 0) less often than --min-labeler-agreement is dropped with all of their pairs (labeler
screening, as InstructGPT and AlpacaFarm screen their labelers). --denoise cleans the rest, and rm_bt.py trains the
final reward model on it:
    flip     flagged pairs swap chosen and rejected
    smooth   flagged pairs are trusted with probability 1 - a: -(1 - a) log sigmoid(d) - a log sigmoid(-d)
    margin   every pair gets its strength as an adaptive margin: -log sigmoid(r_chosen - r_rejected - u_i)
    none     the pairs as labeled: plain rm_bt.py on the same data, the baseline
    python rm_ensemble.py                                                  # embedded task, 4 members
    python rm_ensemble.py --flip-rate 0.2 --num-labelers 5 --outlier-labelers 1 --min-labeler-agreement 0.6
    python rm_ensemble.py --model gpt2 --dataset Anthropic/hh-rlhf --rm-flags="--per-device-batch-size 8"
    python ppo_rlhf.py --reward-model runs/<run>/ensemble --ensemble-aggregate min   # PPO against the members
<output-dir> (runs/<run_name>/ensemble by default) holds member0 ... member<M-1>, final (the denoised reward model),
ensemble.json (which ppo_rlhf.py reads), the data each was trained on, and strengths.jsonl (u, s and the flag per pair).
"""

import json
import os
import random
import shlex
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro

import rm_bt
from common import data, models, runs, scoring, task


@dataclass
class Args:
    exp_name: str = "rm_ensemble"
    """the name of this experiment (the run is logged to runs/<exp_name>__<seed>__<time>)"""
    seed: int = 1
    """seed of the experiment: the data's, member m trains with seed + m, the final model with seed"""
    cuda: bool = True
    """use CUDA when available (for scoring here; rm_bt.py decides for itself)"""
    trust_remote_code: bool = False
    """allow model code from the hub (off unless you trust it)"""

    model: str = models.BUNDLED_MODEL
    """the model every member and the final reward model start from (the SFT model), a hub name or local path"""
    dataset: str = "embedded"
    """'embedded' (pairs labeled by the task's simulated labelers), or preference pairs as rm_bt.py reads them"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    pairs_per_prompt: int = 16
    """embedded task only: training pairs per train prompt (as rm_bt.py: the same pairs for the same flags)"""
    num_train_prompts: Optional[int] = None
    """embedded task only: use the first N train prompts (None: all 1566)"""
    eval_pairs_per_prompt: int = 8
    """embedded task only: held-out pairs per eval prompt"""
    labelers: tyro.conf.OmitArgPrefixes[task.LabelerArgs] = field(default_factory=task.LabelerArgs)
    """embedded task only: who labels the pairs: --labeler-temperature, --flip-rate, --length-bias, --num-labelers,
    --outlier-labelers, --tie-threshold (see task.LabelerArgs)"""
    output_dir: str = ""
    """where the members, the final model and their data go; '' is runs/<run_name>/ensemble"""

    ensemble_size: int = 4
    """M, the members (Secrets of RLHF II uses several, Coste et al. 5)"""
    bootstrap: bool = False
    """train each member on a resample of the pairs with replacement, not all of them in another order"""
    denoise: Literal["flip", "smooth", "margin", "none"] = "flip"
    """what the final reward model is trained on (see the top of the file)"""
    flag_below: float = 0.0
    """a pair is flagged as mislabeled when its mean strength u is below this (0: the ensemble prefers the rejected)"""
    label_smoothing: float = 0.5
    """--denoise smooth: a, the probability that a flagged pair's label is wrong (0.5: no direction; 1: a flip)"""
    min_labeler_agreement: float = 0.0
    """drop the labelers (and their pairs) the ensemble agrees with on fewer than this fraction of their pairs (0: keep
    everyone; 0.6 drops a labeler who labels at random); needs rows that name their labeler (the embedded task's)"""
    members_from: str = ""
    """the --output-dir of an earlier run whose members (and their strengths.jsonl) to reuse, trained on these same
    pairs: another --denoise, --flag-below or --min-labeler-agreement without training or scoring them again"""
    rm_flags: str = ""
    """more flags for every rm_bt.py run, as one string after an equals sign: --rm-flags="--num-epochs 2" """
    nproc_per_node: int = 1
    """processes of each rm_bt.py run (torchrun --nproc-per-node when above 1)"""
    scoring_batch_size: int = 256
    """responses per forward pass when the members score the pairs"""


def preference_strength(d):
    """(u, s), each (N,): the mean and standard deviation over members (1/M) of the members' (M, N) reward
    differences d_im = r_m(chosen_i) - r_m(rejected_i) (Secrets of RLHF II, "Measuring the Strength of Preferences")."""
    return d.mean(0), d.std(0, correction=0)


def denoise(rows, u, flagged, how, smoothing):
    """The rows the final reward model trains on: flip swaps the flagged pairs, smooth gives them label_smoothing (0 to
    the others),
    margin gives every pair margin = u (rm_bt.py --margin), none keeps them as labeled.
    rows: N dicts; u, flagged: (N,)."""
    out = []
    for row, ui, bad in zip(rows, u.tolist(), flagged.tolist()):
        row = dict(row)
        if how == "flip" and bad:
            row["chosen"], row["rejected"] = row["rejected"], row["chosen"]
        elif how == "smooth":
            row["label_smoothing"] = smoothing if bad else 0.0
        elif how == "margin":
            row["margin"] = ui
        out.append(row)
    return out


def labeler_agreement(rows, u):
    """{labeler id: the fraction of their pairs the ensemble agrees with (u > 0)}, rows without a labeler left out."""
    votes = defaultdict(list)
    for row, ui in zip(rows, u.tolist()):
        if row.get("labeler") is not None:
            votes[row["labeler"]].append(ui > 0)
    return {who: sum(v) / len(v) for who, v in sorted(votes.items())}


def precision_recall(flagged, noisy):
    """Of the flagged pairs, the fraction truly noisy; of the noisy pairs, the fraction flagged. Both (N,) bool."""
    hits = (flagged & noisy).sum().item()
    return hits / max(flagged.sum().item(), 1), hits / max(noisy.sum().item(), 1)


def train_rm(args, rows, eval_rows, out, seed, margin=False):
    """rm_bt.py on these pairs in its own process(es), saved to out (args: --model, --rm-flags, --nproc-per-node);
    returns its summary line."""
    (out / "data").mkdir(parents=True, exist_ok=True)
    task.export_jsonl(rows, out / "data" / "train.jsonl")
    task.export_jsonl(eval_rows, out / "data" / "test.jsonl")
    # --normalize-std: every member scores reference responses with mean 0, std 1, so their scores can be compared
    cmd = [*runs.launcher(args.nproc_per_node), str(Path(__file__).resolve().parent / "rm_bt.py"),
           "--model", args.model, "--dataset", str(out / "data"), "--output-dir", str(out), "--seed", str(seed),
           "--normalize-std", "--exp-name", f"{args.exp_name}_{out.name}", *(["--margin"] if margin else []),
           *shlex.split(args.rm_flags)]
    if args.trust_remote_code:
        cmd.append("--trust-remote-code")
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"rm_bt.py for {out} failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return [line for line in done.stdout.splitlines() if line.startswith("rm_bt:")][-1]


@torch.no_grad()
def differences(model_dir, rows, device, rm_flags="", batch_size=256, trust_remote_code=False):
    """(N,) r(chosen) - r(rejected) of each row under a saved reward model, in its raw units (the saved
    normalization undone: every member is trained alike, so raw differences are on one scale, as the paper's).
    The pairs are encoded as rm_bt.py encoded them in training (its lengths, from --rm-flags or its defaults)."""
    rm_args = tyro.cli(rm_bt.Args, args=["--model", str(model_dir), *shlex.split(rm_flags)])
    tokenizer = models.load_tokenizer(str(model_dir), trust_remote_code)
    model = models.load_reward_model(str(model_dir), torch.float32, trust_remote_code, num_labels=None)
    model = models.disable_dropout(model).to(device).eval()
    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}  # as rm_bt.py fills them
    models.fit_defaults(rm_args, model, tokenizer, (1e-3, 1e-5), lengths, say=runs.quiet)
    pairs, _ = rm_bt.encode_pairs(rows, tokenizer, rm_args, use_margin=False)
    _, std = scoring.normalization(model.config, 0)
    # pairs of similar length batched together (less padding: about 2x faster), the results put back in order
    order = sorted(range(len(pairs)), key=lambda i: max(len(pairs[i]["chosen"]), len(pairs[i]["rejected"])))
    out = torch.empty(len(pairs))
    for i in range(0, len(pairs), batch_size):
        rc, rr = rm_bt.score_pairs(model, [pairs[j] for j in order[i : i + batch_size]], tokenizer.pad_token_id, device)
        out[order[i : i + batch_size]] = std * (rc - rr).float().cpu()
    return out


def accuracies(d, gold_sign):
    """Accuracy on the labels (ties count half) and, where gold_sign is known, against the gold preference."""
    out = {"accuracy": ((d > 0).float() + 0.5 * (d == 0).float()).mean().item()}
    if gold_sign is not None:
        agree = (torch.sign(d) * gold_sign + 1) / 2
        out["gold_accuracy"] = agree[gold_sign != 0].mean().item()
    return out


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(
        args, positive=["pairs_per_prompt", "num_train_prompts", "eval_pairs_per_prompt", "nproc_per_node",
                        "scoring_batch_size"],
        rules=[("ensemble_size", args.ensemble_size >= 2, "at least 2 (one member has no spread and nothing to vote)"),
               ("label_smoothing", 0 <= args.label_smoothing <= 1, "in [0, 1]"),
               ("min_labeler_agreement", 0 <= args.min_labeler_agreement <= 1, "in [0, 1]")])
    runs.check_script_flags(rm_bt.Args, args.rm_flags, "--rm-flags", "rm_bt.py")
    if runs.rank_and_world()[1] > 1:
        raise SystemExit("rm_ensemble.py drives rm_bt.py: start it with python, and --nproc-per-node N runs each "
                         "rm_bt.py under torchrun")
    device, _ = runs.device_and_dtype(args.cuda)
    runs.seed_everything(args.seed)
    start = time.time()

    # Data: the same pairs rm_bt.py makes or reads with these flags; held-out pairs on prompts never trained on
    embedded = args.dataset == "embedded"
    if embedded:
        pool = task.labeler_pool(args.labelers)
        train_prompts, eval_prompts = task.split_prompts()
        train_prompts = train_prompts[: args.num_train_prompts]
        train_rows = task.make_pairs(train_prompts, pool, args.pairs_per_prompt, args.seed)
        eval_rows = task.make_pairs(eval_prompts, pool, args.eval_pairs_per_prompt, args.seed + 1)
        task.report_ties(train_rows, train_prompts, args.pairs_per_prompt, "train pairs")
        task.report_ties(eval_rows, eval_prompts, args.eval_pairs_per_prompt, "eval pairs")
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "pairwise", args.dataset_config, args.dataset_train_split,
                                               args.dataset_test_split)
    data.check_eval_rows(eval_rows, args.dataset, "pairs")
    screening = args.min_labeler_agreement > 0
    if screening and not any(r.get("labeler") is not None for r in train_rows):
        raise SystemExit(f"--min-labeler-agreement: the rows of {args.dataset} do not name their labeler")
    models.load_tokenizer(args.model, args.trust_remote_code)  # a wrong --model stops here, before a run is made

    def gold_signs(rows):  # +1 / -1 / 0: the gold preference, where the truth is known (task prompts, plain text)
        if not all(task.is_task_prompt(r["prompt"]) and isinstance(r["chosen"], str) for r in rows):
            return None
        gaps = [task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"]) for r in rows]
        return torch.tensor([float((g > 0) - (g < 0)) for g in gaps])

    rng = random.Random(args.seed)
    member_rows = [[rng.choice(train_rows) for _ in train_rows] if args.bootstrap else train_rows
                   for _ in range(args.ensemble_size)]
    for m, rows in enumerate(member_rows if args.members_from else []):  # reused only if trained on these very rows
        trained_on = Path(args.members_from) / f"member{m}" / "data" / "train.jsonl"
        if not trained_on.is_file() or trained_on.read_text() != "".join(json.dumps(r) + "\n" for r in rows):
            raise SystemExit(f"--members-from {args.members_from}: member{m} was not trained on these pairs (other "
                             "data flags, --seed, --bootstrap or --ensemble-size?)")
    train_gold, eval_gold = gold_signs(train_rows), gold_signs(eval_rows)
    run_name, writer = runs.make_run(args.exp_name, args.seed, args)
    out_dir = Path(args.output_dir or Path("runs") / run_name / "ensemble")
    out_dir.mkdir(parents=True, exist_ok=True)
    scalars = {}
    if embedded:  # what a perfect reward model reaches on these labels (the pool's mixture, ties excluded)
        ceilings = [pool.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in eval_rows]
        scalars["eval/ceiling"] = sum(ceilings) / len(ceilings)

    # 1. M members on the same pairs: different seeds (data order, and with --bootstrap a resample each)
    members = []
    for m, rows in enumerate(member_rows):
        if args.members_from:
            members.append(Path(args.members_from) / f"member{m}")
            continue
        tic = time.time()
        summary = train_rm(args, rows, eval_rows, out_dir / f"member{m}", args.seed + m)
        print(f"member {m}: {summary} ({time.time() - tic:.0f}s with its start)")
        members.append(out_dir / f"member{m}")

    # 2. Preference strength of every training pair; the flagged pairs; the truth where it is known
    score_args = (device, args.rm_flags, args.scoring_batch_size, args.trust_remote_code)
    saved = Path(args.members_from) / "strengths.jsonl" if args.members_from else None
    saved = [json.loads(line) for line in saved.open()] if saved and saved.is_file() else []
    same_rows = [(x["prompt"], x["chosen"], x["rejected"]) for x in saved] == [
        (r["prompt"], r["chosen"], r["rejected"]) for r in train_rows]
    if same_rows:  # the reused members' strengths, as their run wrote them
        u, s = torch.tensor([x["strength"] for x in saved]), torch.tensor([x["spread"] for x in saved])
    else:
        u, s = preference_strength(torch.stack([differences(m, train_rows, *score_args) for m in members]))  # (M, N)
    flagged = u < args.flag_below
    task.export_jsonl([{"prompt": r["prompt"], "chosen": r["chosen"], "rejected": r["rejected"], "strength": ui,
                        "spread": si, "flagged": f} for r, ui, si, f in zip(train_rows, u.tolist(), s.tolist(),
                                                                             flagged.tolist())],
                      out_dir / "strengths.jsonl")
    scalars |= {"strength/mean": u.mean().item(), "strength/spread": s.mean().item(),
                "strength/flagged_fraction": flagged.float().mean().item()}
    print(f"preference strength over {len(members)} members: u mean {u.mean():.3f}, s mean {s.mean():.3f}; "
          f"{int(flagged.sum())} of {len(u)} pairs flagged (u < {args.flag_below:g})")
    if train_gold is not None:  # noisy: the label disagrees with the gold preference (gold ties left out)
        noisy, known = train_gold < 0, train_gold != 0
        precision, recall = precision_recall(flagged[known], noisy[known])
        scalars |= {"eval/noisy_label_precision": precision, "eval/noisy_label_recall": recall,
                    "eval/noisy_label_fraction": noisy[known].float().mean().item()}
        print(f"the labels disagree with gold on {noisy[known].float().mean():.3f} of the train pairs; of the flagged "
              f"pairs {precision:.3f} do (precision), of those pairs {recall:.3f} are flagged (recall)")

    # 3. Labeler screening: who the ensemble agrees with; the truth (agreement with gold) beside it
    agreement = labeler_agreement(train_rows, u)
    kept = {who for who, a in agreement.items() if a >= args.min_labeler_agreement}
    for who, a in agreement.items():
        scalars[f"labelers/agreement/{who}"] = a
        line = f"labeler {who}: the ensemble agrees with {a:.3f} of their pairs"
        if train_gold is not None:
            theirs = torch.tensor([r.get("labeler") == who for r in train_rows]) & (train_gold != 0)
            line += f", gold with {(train_gold[theirs] > 0).float().mean():.3f}"
        print(line + ("" if who in kept else f": dropped (under {args.min_labeler_agreement:g})"))
    scalars["eval/labelers_kept"] = len(kept)
    keep = torch.tensor([r.get("labeler") is None or r["labeler"] in kept for r in train_rows])
    if screening:
        print(f"labeler screening: {len(kept)} of {len(agreement)} labelers kept, {int((~keep).sum())} pairs dropped")

    # 4. The final reward model on the screened, denoised pairs
    idx = keep.nonzero().squeeze(1).tolist()
    clean = denoise([train_rows[i] for i in idx], u[idx], flagged[idx], args.denoise, args.label_smoothing)
    tic = time.time()
    summary = train_rm(args, clean, eval_rows, out_dir / "final", args.seed, margin=args.denoise == "margin")
    print(f"final ({args.denoise}): {summary} ({time.time() - tic:.0f}s with its start)")
    (out_dir / "ensemble.json").write_text(json.dumps({"members": [os.path.relpath(m, out_dir) for m in members],
                                                            "final": "final"}))

    # 5. Held-out: the final model, each member, the members' mean, against the labels and against gold
    final = accuracies(differences(out_dir / "final", eval_rows, *score_args), eval_gold)
    eval_d = torch.stack([differences(m, eval_rows, *score_args) for m in members])
    member = [accuracies(x, eval_gold) for x in eval_d]
    mean = accuracies(eval_d.mean(0), eval_gold)
    scalars |= {f"eval/{k}": v for k, v in final.items()}
    scalars |= {f"eval/member_{k}": sum(x[k] for x in member) / len(member) for k in member[0]}
    scalars |= {f"eval/ensemble_mean_{k}": v for k, v in mean.items()}
    runs.log_scalars(writer, scalars, 0)
    line = (f"rm_ensemble ({args.denoise}): final eval accuracy {final['accuracy']:.3f}, members "
            f"{scalars['eval/member_accuracy']:.3f}, their mean {mean['accuracy']:.3f}")
    if "eval/ceiling" in scalars:
        line += f" (labelers' ceiling {scalars['eval/ceiling']:.3f})"
    if eval_gold is not None:
        line += (f"; gold accuracy: final {final['gold_accuracy']:.3f}, "
                 f"members {scalars['eval/member_gold_accuracy']:.3f}, their mean {mean['gold_accuracy']:.3f}")
    print(line + f"; {time.time() - start:.0f}s, saved to {out_dir}")
    runs.finish(writer)
