"""Training speed of rm_kwise.py's two batch layouts on the same rankings: per-prompt batching (each completion
forwarded once per step, InstructGPT) against shuffled pairs (--shuffle-pairs: two forwards per pair).

    python experiments/bench_kwise.py                 # the embedded task's rankings, the bundled model
    python experiments/bench_kwise.py --steps 20 --cuda

Each row times full training steps (forward, backward, AdamW) with the pairwise loss after a few warm-up steps,
and prints: completions forwarded per second (the hardware throughput), ranked pairs trained on per second,
and the time one epoch over the rankings takes (what the layout costs, since an epoch is the unit both are
compared at). Rows: per-prompt batches; shuffled pairs with as many pairs per step as a per-prompt batch holds
(rm_kwise.py's default, same number of steps per epoch); shuffled pairs with as many sequences per step.
"""

import math
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import tyro

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from common import data, models, runs, task  # noqa: E402
from rm_kwise import encode_rankings, pairwise_loss, score_rankings  # noqa: E402


@dataclass
class Args:
    seed: int = 1
    """seed of the data and the batch order"""
    cuda: bool = False
    """time on CUDA when available (bf16 where supported)"""
    model: str = models.BUNDLED_MODEL
    """the reward model's starting point"""
    dataset: str = "embedded"
    """'embedded' (the task's rankings, K uniform in 4..9) or a K-wise .jsonl/.json file"""
    prompts_per_batch: int = 16
    """prompts per step in the per-prompt layout (rm_kwise.py's default)"""
    forward_chunk: int = 32
    """sequences per forward pass (rm_kwise.py's default)"""
    steps: int = 10
    """timed steps per row"""
    warmup_steps: int = 2
    """untimed steps first"""
    max_length: int = 96
    """longest prompt + completion in tokens"""
    max_prompt_length: int = 32
    """longest prompt in tokens"""


def time_steps(model, optimizer, batches, pad_id, device, chunk):
    """Seconds per step and completions forwarded per step, over the given batches of rankings."""
    seqs = 0
    start = time.perf_counter()
    for rankings in batches:
        scores, mask = score_rankings(model, rankings, pad_id, device, chunk)
        loss = pairwise_loss(scores, mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seqs += int(mask.sum())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / len(batches), seqs / len(batches)


if __name__ == "__main__":
    args = tyro.cli(Args)
    runs.seed_everything(args.seed)
    device, dtype = runs.device_and_dtype(args.cuda)
    tokenizer = models.load_tokenizer(args.model)
    model = models.disable_dropout(models.load_reward_model(args.model, dtype)).to(device)
    model.config.pad_token_id = tokenizer.pad_token_id
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if args.dataset == "embedded":
        rows = task.make_rankings(task.split_prompts()[0], task.Labeler(), seed=args.seed)
    else:
        rows = data.load_rows(args.dataset, "kwise")[0]
    train_ids, _, counts = encode_rankings(rows, tokenizer, args)
    data.report(counts, "rankings")
    rng = random.Random(args.seed)
    prompts = list(range(len(train_ids)))
    pairs = [(p, i, j) for p, r in enumerate(train_ids) for i in range(len(r)) for j in range(i + 1, len(r))]
    n_completions = sum(len(r) for r in train_ids)
    steps_per_epoch = math.ceil(len(prompts) / args.prompts_per_batch)
    pairs_per_step = math.ceil(len(pairs) / steps_per_epoch)
    print(f"{len(train_ids)} rankings, {n_completions} completions, {len(pairs)} pairs; device {device}, "
          f"{torch.get_num_threads()} CPU threads")

    layouts = [  # (name, units an epoch goes through, units per step, how a step's units become rankings)
        ("per-prompt batches", prompts, args.prompts_per_batch, lambda batch: [train_ids[p] for p in batch]),
        ("shuffled pairs, same pairs/step", pairs, pairs_per_step, lambda batch: [[train_ids[p][i], train_ids[p][j]] for p, i, j in batch]),
        ("shuffled pairs, same seqs/step", pairs, round(n_completions / steps_per_epoch / 2), lambda batch: [[train_ids[p][i], train_ids[p][j]] for p, i, j in batch]),
    ]
    header = f"| {'layout':32} | seqs/step | pairs/step | steps/epoch | completions/s | pairs/s | epoch (s) | epoch vs per-prompt |"
    lines, base = [header, "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"], None
    for name, units, per_step, to_rankings in layouts:
        order = rng.sample(units, len(units))
        batches = [to_rankings(order[b * per_step : (b + 1) * per_step]) for b in range(args.warmup_steps + args.steps)]
        time_steps(model, optimizer, batches[: args.warmup_steps], tokenizer.pad_token_id, device, args.forward_chunk)
        sec, seqs = time_steps(model, optimizer, batches[args.warmup_steps :], tokenizer.pad_token_id, device, args.forward_chunk)
        n_pairs = sum(math.comb(len(r), 2) for b in batches[args.warmup_steps :] for r in b) / args.steps
        epoch = math.ceil(len(units) / per_step) * sec
        base = base or epoch
        lines.append(f"| {name:32} | {seqs:9.0f} | {n_pairs:10.0f} | {math.ceil(len(units) / per_step):11d} | {seqs / sec:13.0f} | "
                     f"{n_pairs / sec:7.0f} | {epoch:9.1f} | {epoch / base:18.1f}x |")
        print(lines[-1], flush=True)
    print("\n".join(["", *lines]))
