r"""Expert iteration: the best of n samples from the current policy, as a reward model judges them, become the SFT data
of the next round (AlpacaFarm, Dubois et al. 2023; ReST, Gulcehre et al. 2023; RAFT, Dong et al. 2023).

Each round: sample n responses to every train prompt (and every eval prompt, for the held-out loss), keep the one the
reward model scores highest, and fine-tune the current policy on those with sft.py. No training loop of its own: this
file samples and selects, sft.py trains.
    python expert_iteration.py                                  # 3 rounds of best-of-16, the embedded gold reward
    python expert_iteration.py --reward-model runs/rm_bt__1__.../model --rounds 1 --n 64
    python expert_iteration.py --model <SFT model> --reward-model <RM> --dataset <prompts> --nproc-per-node 4
Round r writes all samples and their scores to runs/<run_name>/round<r>/{train,test}_samples.jsonl, the kept ones to
runs/<run_name>/round<r>/data/{train,test}.jsonl (sft.py's dataset) and its policy to runs/<run_name>/round<r>/model.
"""

import random
import shlex
import subprocess
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import tyro
from tqdm import tqdm

import sft
from common import data, models, runs, sampling, scoring, task


@dataclass
class Args:
    exp_name: str = "expert_iteration"
    """the name of this experiment (the run is logged to runs/<exp_name>__<seed>__<time>)"""
    seed: int = 1
    """seed of the experiment"""
    cuda: bool = True
    """use CUDA when available for sampling and scoring (bf16 autocast where supported)"""
    trust_remote_code: bool = False
    """allow model code from the hub (off unless you trust it)"""

    model: str = models.BUNDLED_MODEL
    """the policy of round 1 (an SFT model), a hub name or local path"""
    reward_model: str = "gold"
    """the judge of the n samples: 'gold' (the embedded task), a sequence classifier, or file.py:fn (as ppo_rlhf.py)"""
    reward_label: Optional[str] = None
    """the output to maximize of a classifier with several labels: a name from config.id2label or an index"""
    dataset: str = "embedded"
    """prompts: 'embedded', a .jsonl/.json file, a local dataset folder or a hub dataset (as ppo_rlhf.py)"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to sample training data on"""
    dataset_test_split: Optional[str] = None
    """the split of held-out prompts; if not given: test, else validation, else 5% of the prompts held out"""
    num_eval_prompts: Optional[int] = None
    """sample and keep on the first N held-out prompts only (sft.py's eval loss and gold samples; None: all)"""
    output_dir: str = ""
    """where the last round's policy is saved; '' is runs/<run_name>/round<rounds>/model"""

    rounds: int = 3
    """rounds of sample, select, fine-tune"""
    n: int = 16
    """samples per prompt each round; the reward model's best one is kept (best-of-n)"""
    prompts_per_round: Optional[int] = None
    """train prompts sampled each round, a fresh random subset (None: all of them, every round)"""
    response_length: int = 64
    """longest sampled response in tokens"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept; if not given: 32 for a small model, 512 for a pretrained one"""
    temperature: float = 1.0
    """sampling temperature"""
    sampling_batch_size: int = 512
    """responses generated per generate call"""
    sft_epochs: int = 2
    """sft.py --num-epochs of each round"""
    sft_learning_rate: Optional[float] = 3e-4
    """sft.py --learning-rate of each round (None: sft.py's default, made for training from scratch on small models)"""
    sft_flags: str = ""
    """more flags for sft.py, as one string after an equals sign: --sft-flags="--per-device-batch-size 8 --use-peft" """
    nproc_per_node: int = 1
    """processes of each round's sft.py (torchrun --nproc-per-node when above 1)"""


def best_of_n(scores, n):
    """(B / n,) index of the highest of each prompt's n consecutive scores (the first of equal ones), and the
    (B / n,) best and mean score per prompt."""
    groups = scores.view(-1, n)
    best = groups.argmax(1)
    return best, groups.max(1).values, groups.mean(1)


def select(prompts, texts, scores, n):
    """The SFT rows of a round: for each prompt (its n samples consecutive in texts and scores), {"prompt",
    "completion"} with the best-scored response, except where that response is empty (the policy stopped at once:
    sft.py has no completion to learn), counted; the per-prompt best and mean scores; the number of empty ones."""
    best, top, mean = best_of_n(scores, n)
    rows = [{"prompt": p, "completion": texts[i * n + b]} for i, (p, b) in enumerate(zip(prompts, best.tolist()))]
    kept = [r for r in rows if r["completion"]]
    return kept, top, mean, len(rows) - len(kept)


@torch.no_grad()
def sample_and_score(policy, tokenizer, reward, prompts, queries, n, gen_config, stop_ids, batch_size, autocast):
    """n responses to each prompt, consecutive, and their scores (the missing-EOS ones score as the judge says)."""
    texts, scores = [], []
    flat = [(p, q) for p, q in zip(prompts, queries) for _ in range(n)]
    for i in tqdm(range(0, len(flat), batch_size), desc="best-of-n", leave=False):
        chunk = flat[i : i + batch_size]
        with autocast:
            r = sampling.sample_responses(policy, tokenizer, [q for _, q in chunk], gen_config, stop_ids)
            s = scoring.score(reward, [p for p, _ in chunk], r["texts"], r["with_eos"], r["seq"], r["mask"])
        texts += r["texts"]
        scores.append(s)
    return texts, torch.cat(scores)


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(args, positive=["rounds", "n", "prompts_per_round", "num_eval_prompts", "response_length",
                                    "max_prompt_length", "temperature", "sampling_batch_size", "sft_epochs",
                                    "sft_learning_rate", "nproc_per_node"])
    # a flag sft.py does not take stops here, not after round 1's sampling
    runs.check_script_flags(sft.Args, args.sft_flags, "--sft-flags", "sft.py")
    if args.n < 2:
        print("--n 1 keeps every sample: plain self-training on the policy's own outputs, no selection")
    device, dtype = runs.device_and_dtype(args.cuda)
    runs.seed_everything(args.seed)
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()
    train_prompts, eval_prompts = data.load_prompts(args.dataset, args.dataset_config, args.dataset_train_split,
                                                    args.dataset_test_split, args.num_eval_prompts)
    if args.reward_model == "gold" and not all(task.is_task_prompt(p) for p in train_prompts + eval_prompts):
        raise SystemExit("--reward-model gold scores the embedded task's prompts only: pass a reward model")
    scoring.check(args.reward_model)
    models.load_tokenizer(args.model, args.trust_remote_code)  # a wrong --model stops here, before a run is made
    run_name, writer = runs.make_run(args.exp_name, args.seed, args)
    run_dir, rng, policy_path, start = Path("runs") / run_name, random.Random(args.seed), args.model, time.time()
    for rnd in range(1, args.rounds + 1):
        # 1. Sample n responses per prompt from the current policy and keep the judge's best
        tokenizer = models.load_tokenizer(policy_path, args.trust_remote_code)
        policy = models.load_causal_lm(policy_path, dtype, args.trust_remote_code).to(device).eval()
        if args.max_prompt_length is None:
            args.max_prompt_length = 32 if models.is_small(policy) else 512
        reward = scoring.load(args.reward_model, tokenizer, args.reward_label, device, args.trust_remote_code, dtype)
        stop_ids = [tokenizer.eos_token_id]
        gen_config = sampling.generation_config(tokenizer, stop_ids, args.response_length, args.temperature)
        prompts = train_prompts
        if args.prompts_per_round is not None and args.prompts_per_round < len(train_prompts):
            prompts = rng.sample(train_prompts, args.prompts_per_round)
        scalars, empty, tic = {}, {}, time.time()
        (run_dir / f"round{rnd}" / "data").mkdir(parents=True, exist_ok=True)
        for split, split_prompts in (("train", prompts), ("test", eval_prompts)):
            queries = data.encode_prompts(tokenizer, split_prompts, args.max_prompt_length, f"{split} prompts")
            # a pairwise judge compares each sample with this round's policy's response to the prompt
            sampling.sample_references(reward, policy, tokenizer, split_prompts, queries, gen_config, stop_ids, autocast)
            texts, scores = sample_and_score(policy, tokenizer, reward, split_prompts, queries, args.n, gen_config,
                                             stop_ids, args.sampling_batch_size, autocast)
            rows, top, mean, empty[split] = select(split_prompts, texts, scores, args.n)
            task.export_jsonl(rows, run_dir / f"round{rnd}" / "data" / f"{split}.jsonl")  # sft.py's dataset
            samples = [{"prompt": p, "responses": texts[i * args.n : (i + 1) * args.n],
                        "scores": scores[i * args.n : (i + 1) * args.n].tolist()} for i, p in enumerate(split_prompts)]
            task.export_jsonl(samples, run_dir / f"round{rnd}" / f"{split}_samples.jsonl")  # all n, scored
            scalars |= {f"{split}/best_score": top.mean().item(), f"{split}/mean_score": mean.mean().item()}
            if rows and all(task.is_task_prompt(p) for p in split_prompts):  # the truth of what was kept
                gold = [task.gold_reward(r["prompt"], r["completion"]) for r in rows]
                scalars[f"{split}/best_gold"] = sum(gold) / len(gold)
        runs.log_scalars(writer, scalars, rnd, prefix="round/")
        print(f"round {rnd}: best-of-{args.n} on {len(prompts)} train prompts, score {scalars['train/mean_score']:.3f}"
              f" (mean of n) -> {scalars['train/best_score']:.3f} (kept)"
              + (f", gold of the kept {scalars['train/best_gold']:.3f}" if "train/best_gold" in scalars else "")
              + f" ({time.time() - tic:.0f}s)")
        if sum(empty.values()):  # the judge's best was to say nothing: a reward model's blind spot, shown not hidden
            print(f"round {rnd}: the best response was empty for {empty['train']} train and {empty['test']} test "
                  "prompts: left out of the SFT data")
        del policy, reward  # sft.py runs in its own process(es) and needs the memory

        # 2. Fine-tune the current policy on the kept responses with sft.py
        print(f"round {rnd}: fine-tuning {policy_path} on the {len(prompts) - empty['train']} kept responses")
        out_dir = args.output_dir if rnd == args.rounds and args.output_dir else run_dir / f"round{rnd}" / "model"
        cmd = [*runs.launcher(args.nproc_per_node), str(Path(__file__).resolve().parent / "sft.py"),
               "--model", str(policy_path), "--dataset", str(run_dir / f"round{rnd}" / "data"),
               "--output-dir", str(out_dir), "--exp-name", f"{args.exp_name}_round{rnd}",
               "--seed", str(args.seed + rnd),
               "--num-epochs", str(args.sft_epochs), "--max-new-tokens", str(args.response_length),
               "--max-prompt-length", str(args.max_prompt_length),
               *(["--learning-rate", str(args.sft_learning_rate)] if args.sft_learning_rate else []),
               *shlex.split(args.sft_flags)]
        if args.trust_remote_code:
            cmd.append("--trust-remote-code")
        tic = time.time()
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise SystemExit(f"round {rnd}: sft.py failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
        summary = [line for line in done.stdout.splitlines() if line.startswith("sft:")][-1]
        print(f"round {rnd}: {summary} ({time.time() - tic:.0f}s with its start)")
        writer.add_text("rounds", f"round {rnd}: {summary}", rnd)
        writer.add_scalar("charts/elapsed_seconds", time.time() - start, rnd)  # the cost of 1, 2, ... rounds
        policy_path = out_dir
    print(f"expert_iteration: {args.rounds} round(s) of best-of-{args.n} in {time.time() - start:.0f}s, "
          f"the last policy saved to {policy_path}")
    runs.finish(writer)
