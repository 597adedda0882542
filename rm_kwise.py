"""K-wise reward model: train a scalar reward on rankings of K completions per prompt (InstructGPT, step 2).

Each prompt comes with K ranked completions (best first; K may differ between prompts, InstructGPT's 4 to 9).
All completions of a batch of prompts go through the model in one forward pass, each once (K passes per
prompt, not 2 x C(K,2)); their scores are laid out as a (prompts, Kmax) tensor with a mask for the ragged K.
    --loss pairwise        all C(K,2) pairs of a prompt, averaged per prompt (Ouyang et al. 2022, InstructGPT)
    --loss plackett-luce   the likelihood of the whole ranking (Zhu, Jiao, Jordan 2023; Starling)
    --loss best-of-k       softmax cross-entropy on the best completion (Ziegler et al. 2019, lm-human-preferences)
    --shuffle-pairs        the ablation InstructGPT warns against: every pair an independent example
    python rm_kwise.py                                            # the embedded task, bundled base policy
    python rm_kwise.py --loss pairwise --shuffle-pairs            # the ablation
    python rm_kwise.py --model gpt2 --dataset rankings.jsonl      # {"prompt", "completions": [best first, ...]}
    python rm_kwise.py --model <SFT model> --dataset berkeley-nest/Nectar   # Starling's 7-wise rankings, as published
    # data parallel (DDP): each process takes 1/4 of every batch
    torchrun --nproc_per_node 4 rm_kwise.py --model gpt2 ...

The saved model loads with AutoModelForSequenceClassification; config.reward_mean / reward_std hold the
normalization (normalized reward = (raw - reward_mean) / reward_std), as rm_bt.py saves it: on the embedded task the
affine calibration to gold, whose held-out error is the alignment gap (eval/alignment_gap).
"""

import math
import random
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common import data, models, parallel, runs, task


@dataclass
class Args:
    exp_name: str = "rm_kwise"
    """the name of this experiment (the run is logged to runs/<exp_name>__<seed>__<time>)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when available (bf16 where supported)"""
    trust_remote_code: bool = False
    """allow model code from the hub (off unless you trust it)"""
    track: bool = False
    """also log the run to Weights & Biases (pip install wandb; WANDB_MODE=offline keeps it on this machine)"""
    wandb_project_name: str = "rlhf-from-code"
    """the W&B project of the run (with --track)"""
    wandb_entity: Optional[str] = None
    """the W&B team or user (with --track); None: your default entity"""

    model: str = models.BUNDLED_MODEL
    """the SFT model to start from (InstructGPT), a hub name or local path; it gets a fresh scalar head"""
    dataset: str = "embedded"
    """'embedded' (rankings by the task's simulated labeler), a .jsonl/.json file, a local dataset folder or a hub
    dataset of K-wise rows (ours, Nectar's, UltraFeedback's: common/data.py)"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    k_min: int = 4
    """embedded task only: fewest completions ranked per prompt"""
    k_max: int = 9
    """embedded task only: most completions ranked per prompt"""
    num_train_prompts: int = 0
    """embedded task only: train on the first N train prompts (0: all 1566), for quick runs and learning curves"""
    labelers: tyro.conf.OmitArgPrefixes[task.LabelerArgs] = field(default_factory=task.LabelerArgs)
    """embedded task only: who ranks: --labeler-temperature, --flip-rate, --length-bias, --num-labelers,
    --outlier-labelers (see task.LabelerArgs; a ranking has no ties, so no --tie-threshold)"""
    loss: Literal["pairwise", "plackett-luce", "best-of-k"] = "plackett-luce"
    """the K-wise loss (see the functions of the same names)"""
    shuffle_pairs: bool = False
    """split each ranking into its C(K,2) pairs, shuffled over the dataset as independent examples (--loss pairwise)"""
    output_dir: str = ""
    """where to save the reward model and tokenizer; '' saves to runs/<run_name>/model"""
    num_epochs: int = 4
    """passes over the rankings"""
    prompts_per_batch: int = 16
    """prompts per optimizer step, all processes together (under torchrun each takes its share);
    all their completions are forwarded"""
    pairs_per_batch: int = 0
    """--shuffle-pairs only: pairs per optimizer step, all processes together
    (0: as many as a per-prompt batch holds on average, so both take the same number of steps)"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for larger models, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, --lora-alpha, --lora-dropout, --lora-target-modules, --merge-lora (see LoraArgs)"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""
    learning_rate: Optional[float] = None
    """peak learning rate, linear warmup then cosine decay to 0; if not given: 1e-3 for a small model like the bundled
    one, 1e-5 for a pretrained one"""
    warmup_ratio: float = 0.05
    """fraction of steps with linear warmup"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    forward_chunk: int = 32
    """sequences per forward pass: a step's completions are sorted by length into chunks of this size (less padding)"""
    max_length: Optional[int] = None
    """longest prompt + completion in tokens, longer ones truncated (counted); if not given: 96 for a small model, 1024
    for a pretrained one, within its context"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept; if not given: 32 for a small model, 512 for a pretrained one"""
    eval_every: int = 50
    """optimizer steps between evaluations on the held-out rankings"""
    reference: str = "auto"
    """responses the reward is normalized on: 'auto' (the embedded task's SFT demonstrations, else the train set's
    completions) or a {"prompt", "completion"} file"""
    reference_size: int = 1024
    """how many reference responses to score for the normalization"""
    normalize_std: bool = False
    """also a gain so that reference rewards have std 1 (lm-human-preferences); else a bias only (Stiennon et al.)"""
    calibration_size: int = 1024
    """embedded task only: generator responses on train prompts with their gold reward, on which the reward is
    calibrated to gold: eval/alignment_gap, and the saved normalization (PPO sees gold's scale); 0: the reference
    normalization"""


def _pairs(mask):
    """(P, K, K) True where slot i is ranked above slot j (i < j) and both are real completions."""
    K = mask.shape[1]
    above = torch.ones(K, K, dtype=torch.bool, device=mask.device).triu(1)
    return mask[:, :, None] & mask[:, None, :] & above


def pairwise_loss(scores, mask):
    """InstructGPT's loss: -1/C(K,2) * sum_{i ranked above j} log sigmoid(r_i - r_j) per prompt, then the mean
    over prompts, so every prompt weighs the same whatever its K. scores (P, K) best first, mask (P, K) bool.
    Padded slots are replaced by 0 before any arithmetic, so they change neither the loss nor any gradient."""
    s = torch.where(mask, scores, 0.0)
    pairs = _pairs(mask)
    logsig = F.logsigmoid(s[:, :, None] - s[:, None, :])  # (P, K, K) log sigmoid(r_i - r_j)
    per_prompt = torch.where(pairs, logsig, 0.0).sum((1, 2)) / pairs.sum((1, 2)).clamp(min=1)
    return -per_prompt.mean()


def plackett_luce_loss(scores, mask):
    """Negative log-likelihood of the ranking y_1 > ... > y_K under Plackett-Luce (Zhu et al. 2023; Starling):
    -sum_k [r_k - logsumexp(r_k, ..., r_K)], the best chosen from all, the next from the rest, ...; the mean
    over prompts. With K = 2 it is Bradley-Terry. Each logsumexp runs over real completions only."""
    s = torch.where(mask, scores, 0.0)
    K = mask.shape[1]
    rest = mask[:, None, :] & torch.ones(K, K, dtype=torch.bool, device=mask.device).triu()  # (P, K, K) j >= k, real
    rest = rest | ~mask[:, :, None]  # a padded slot's row runs over everything: finite, and masked out below
    lse = torch.logsumexp(torch.where(rest, s[:, None, :], -torch.inf), dim=-1)  # (P, K)
    return -torch.where(mask, s - lse, 0.0).sum(1).mean()


def best_of_k_loss(scores, mask):
    """Softmax cross-entropy on the best completion: -[r_1 - logsumexp(r_1, ..., r_K)] (lm-human-preferences'
    best-of-4), the first Plackett-Luce factor only; the mean over prompts."""
    s = torch.where(mask, scores, -torch.inf)
    return -(torch.where(mask, scores, 0.0)[:, 0] - torch.logsumexp(s, dim=1)).mean()


LOSSES = {"pairwise": pairwise_loss, "plackett-luce": plackett_luce_loss, "best-of-k": best_of_k_loss}


def agreement(scores, reference, mask):
    """Fraction of pairs that the scores order as the reference does: reference (P, K) is either the label
    order (slot i above slot j for i < j) or a score such as the gold reward, whose ties are left out.
    A tie in the scores counts half."""
    sign = torch.sign(scores[:, :, None] - scores[:, None, :])
    ref = torch.sign(reference[:, :, None] - reference[:, None, :])
    pairs = _pairs(mask) & (ref != 0)
    return ((sign * ref + 1) / 2)[pairs].mean().item()


def ranking_metrics(scores, mask):
    """Against the label order (slot 0 best): pooled pairwise accuracy, top-1 accuracy (a tie for the top score is
    shared: 1/n to each of the n tied slots, a random pick's expected accuracy, so constant scores read chance), and
    Kendall's tau (tau-a: (concordant - discordant) / C(K,2) per prompt) averaged over prompts."""
    label = -torch.arange(mask.shape[1], dtype=scores.dtype, device=scores.device).expand_as(scores)
    pairs = _pairs(mask)
    concordance = torch.sign(scores[:, :, None] - scores[:, None, :]) * pairs  # +1 concordant, -1 discordant
    tau = concordance.sum((1, 2)) / pairs.sum((1, 2))
    real = scores.masked_fill(~mask, -torch.inf)
    top = real == real.max(1, keepdim=True).values  # (P, K) the slots tied for the top score
    top1 = top[:, 0] / top.sum(1)
    return {"accuracy": agreement(scores, label, mask), "top1_accuracy": top1.mean().item(),
            "kendall_tau": tau.mean().item()}


def score_sequences(model, seqs, pad_id, device, chunk=32):
    """(N,) raw rewards of token-id lists, read at the last real token (models.reward_at_last_token; model may
    also be a models.LastTokenReward, in DDP or sharded). Each sequence is forwarded once; sorted by length into
    chunks, each padded only to its own longest (about 2x faster here than padding all to the longest; the
    rewards and gradients are the same)."""
    forward = models.LastTokenReward(model) if hasattr(model, "score") else model
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    parts = []
    for b in range(0, len(seqs), chunk):
        batch = [seqs[i] for i in order[b : b + chunk]]
        ids = data.pad(batch, pad_id).to(device)
        attention_mask = data.pad([[1] * len(s) for s in batch], 0).to(device)
        parts.append(forward(ids, attention_mask))
    rewards = torch.cat(parts)
    return rewards[torch.argsort(torch.tensor(order, device=rewards.device))]  # back to the given order


def score_rankings(model, rankings, pad_id, device, chunk=32):
    """(P, Kmax) scores and mask for P rankings of K_i token-id lists each: all sum(K_i) completions are scored
    together, each once, and scattered back row by row; no fake completions fill the ragged K."""
    k = torch.tensor([len(r) for r in rankings], device=device)
    mask = torch.arange(int(k.max()), device=device)[None, :] < k[:, None]  # (P, Kmax)
    flat = score_sequences(model, [s for r in rankings for s in r], pad_id, device, chunk)  # (sum K_i,)
    return flat.new_zeros(mask.shape).masked_scatter(mask, flat), mask


def encode_rankings(rows, tokenizer, args):
    """Token ids of every prompt + completion (EOS appended), grouped per prompt best first, and the
    completions' lengths in tokens."""
    counts, ids, lengths = Counter(), [], []
    for r in rows:
        enc = [data.encode(tokenizer, r["prompt"], c, args.max_length, args.max_prompt_length, counts)
               for c in r["completions"]]
        ids.append([e[0] for e in enc])
        lengths.append([sum(e[1]) for e in enc])
    return ids, lengths, counts


@torch.no_grad()
def evaluate(model, eval_ids, pad_id, device, loss_fn, gold=None, lengths=None, chunk=32, calibration=None):
    """Held-out loss and ranking metrics; agreement with the gold reward, the reward-length correlation and, with
    calibration (ids, gold), the alignment gap, when given. Returns the metrics and the (P, Kmax) scores."""
    model.eval()
    scores, mask = score_rankings(model, eval_ids, pad_id, device, chunk)  # (P, Kmax)
    raw = score_sequences(model, calibration[0], pad_id, device, chunk).float() if calibration else None
    model.train()
    out = {"loss": loss_fn(scores, mask).item(), **ranking_metrics(scores, mask)}
    if gold is not None:
        out["gold_accuracy"] = agreement(scores, gold.to(device), mask)
    if lengths is not None:  # Singhal et al. 2023: how much of the reward is length
        r, n = scores[mask].double(), lengths.to(device)[mask].double()
        out["reward_length_corr"] = torch.corrcoef(torch.stack([r, n]))[0, 1].item()
    out["reward_mean"], out["reward_std"] = scores[mask].mean().item(), scores[mask].std().item()
    if calibration:  # the alignment gap on gold's scale, and the rank correlation with gold
        out |= task.alignment_gap(raw.tolist(), calibration[1], scores[mask].tolist(), gold.to(device)[mask].tolist())
    return out, scores


def padded(values, K):
    """(P, K) float tensor of per-prompt lists, zero-padded (read through a mask only)."""
    return torch.tensor([v + [0] * (K - len(v)) for v in values], dtype=torch.float32)


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    # first: the batches are shared among the processes
    rank, world, device, dtype = runs.setup_distributed(args.cuda)
    parallel.check(args.sharding, world, device)
    runs.check_args(
        args,
        positive=["num_epochs", "prompts_per_batch", "learning_rate", "forward_chunk", "max_length",
                  "max_prompt_length", "eval_every", "reference_size"],
        non_negative=["num_train_prompts", "pairs_per_batch", "weight_decay"],
        rules=[("k_min", args.k_min >= 2, "at least 2"),
               ("k_max", args.k_max >= args.k_min, f"at least --k-min ({args.k_min})"),
               ("prompts_per_batch", args.prompts_per_batch >= world, f"at least one per process ({world})"),
               ("pairs_per_batch", args.pairs_per_batch == 0 or args.pairs_per_batch >= world,
                f"0 or at least one per process ({world})"),
               ("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)"),
               ("shuffle_pairs", not args.shuffle_pairs or args.loss == "pairwise", "used with --loss pairwise"),
               runs.prompt_length_rule(args)],
    )
    runs.seed_everything(args.seed, args.torch_deterministic)
    say = print if rank == 0 else runs.quiet
    # weights stay fp32 (AdamW needs them); bf16 only inside autocast on GPUs that support it
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (read and checked before any model loads): rankings best first;
    # the eval rankings are on prompts never trained on
    embedded = args.dataset == "embedded"
    ood_rows, ood_ceiling = [], None
    if embedded:
        labeler = task.labeler_pool(args.labelers)
        train_prompts, eval_prompts = task.split_prompts()
        train_prompts = train_prompts[: args.num_train_prompts or None]
        train_rows = task.make_rankings(train_prompts, labeler, args.k_min, args.k_max, seed=args.seed)
        eval_rows = task.make_rankings(eval_prompts, labeler, args.k_min, args.k_max, seed=args.seed + 1)
        ood_rows, ood_ceiling = task.ood_pairs(labeler, 8, args.seed + 5)  # RL policies' responses: off-distribution
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "kwise", args.dataset_config, args.dataset_train_split,
                                               args.dataset_test_split, verbose=rank == 0)
    data.check_eval_rows(eval_rows, args.dataset, "rankings")
    # Reference responses the reward is normalized on after training (read now, so a bad file stops the run early)
    if embedded:
        auto_refs = task.make_sft(train_prompts, 1, seed=args.seed + 2)
    else:
        auto_refs = [{"prompt": r["prompt"], "completion": c} for r in train_rows for c in r["completions"]]
    ref_rows = data.reference_rows(args.reference, auto_refs, args.reference_size, args.seed, verbose=rank == 0)

    # The reward model starts from the SFT model with a fresh scalar head (InstructGPT); dropout off
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    model = models.disable_dropout(models.load_reward_model(args.model, torch.float32, args.trust_remote_code))
    model.config.pad_token_id = tokenizer.pad_token_id
    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}  # (small model, pretrained model)
    models.fit_defaults(args, model, tokenizer, (1e-3, 1e-5), lengths, say)
    # --use-peft: adapters and head trained, the rest frozen
    model = models.prepare(model, args.gradient_checkpointing, args.lora, dtype, device)
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, the model sharded in place
    ddp_model = parallel.wrap(models.LastTokenReward(model), args.sharding, world, dtype) if world > 1 else model
    scorer = ddp_model if parallel.sharded(model) else model  # a sharded model is called through its root
    loss_fn = LOSSES[args.loss]

    train_ids, _, counts = encode_rankings(train_rows, tokenizer, args)
    data.report(counts, "train rankings", say)
    eval_ids, eval_lengths, counts = encode_rankings(eval_rows, tokenizer, args)
    data.report(counts, "eval rankings", say)
    ood_ids = encode_rankings([{"prompt": r["prompt"], "completions": [r["chosen"], r["rejected"]]} for r in ood_rows],
                              tokenizer, args)[0]  # each pair a ranking of two
    K = max(len(r["completions"]) for r in eval_rows)
    eval_lengths = padded(eval_lengths, K)
    # Gold agreement and the labeler's ceiling where the ground truth is known (task prompts / the embedded labeler)
    gold = None
    if all(task.is_task_prompt(r["prompt"]) and all(isinstance(c, str) for c in r["completions"]) for r in eval_rows):
        gold = padded([[task.gold_reward(r["prompt"], c) for c in r["completions"]] for r in eval_rows], K)
    # Every pair of a Plackett-Luce ranking has the Bradley-Terry marginal, so a perfect model's expected pairwise
    # accuracy is the mean of labeler.ceiling over all eval pairs
    ceiling = None
    if embedded:
        ceil = [labeler.ceiling(r["prompt"], c[i], c[j]) for r in eval_rows for c in [r["completions"]]
                for i in range(len(c)) for j in range(i + 1, len(c))]
        ceiling = sum(ceil) / len(ceil)
        say(f"labeler's ceiling on held-out pairwise accuracy: {ceiling:.3f} ({len(ceil)} eval pairs)")
    calibration = None  # absolute gold ratings of generator responses on train prompts: the alignment gap
    if embedded and args.calibration_size:
        calibration = data.calibration_set(tokenizer, train_prompts, args.calibration_size, args.seed + 4,
                                           args.max_length, args.max_prompt_length)

    # Batches: per prompt (all C(K,2) pairs of a prompt in one batch element, InstructGPT), or shuffled pairs
    steps_per_epoch = math.ceil(len(train_ids) / args.prompts_per_batch)
    if args.shuffle_pairs:
        units = [(p, i, j) for p, r in enumerate(train_ids) for i in range(len(r)) for j in range(i + 1, len(r))]
        per_step = args.pairs_per_batch or math.ceil(len(units) / steps_per_epoch)
        say(f"shuffled pairs: {len(units)} pairs from {len(train_ids)} rankings, {per_step} pairs per step")
    else:
        units, per_step = list(range(len(train_ids))), args.prompts_per_batch
    num_steps = args.num_epochs * len(runs.global_batches(units, per_step, world))
    optimizer = torch.optim.AdamW(models.trainable(model), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=runs.fused_adam(device))
    scheduler = runs.warmup_cosine(optimizer, int(args.warmup_ratio * num_steps), num_steps)
    rng = random.Random(args.seed)
    pad_id = tokenizer.pad_token_id

    def log_eval(step):
        """Rank 0 evaluates with no collective inside (--fsdp: all ranks gather the model first); others get None."""
        with parallel.gathered(scorer):
            if rank != 0:
                return None
            with autocast:
                ev, _ = evaluate(scorer, eval_ids, pad_id, device, loss_fn, gold, eval_lengths, args.forward_chunk,
                                 calibration)
                if ood_ids and step in (0, num_steps):
                    ood, _ = evaluate(scorer, ood_ids, pad_id, device, loss_fn, chunk=args.forward_chunk)
                    ev |= {"ood_accuracy": ood["accuracy"], "ood_ceiling": ood_ceiling}
            runs.log_scalars(writer, ev, step, prefix="eval/")
            if ceiling is not None:
                writer.add_scalar("eval/ceiling", ceiling, step)
            return ev

    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = log_eval(0)
    if rank == 0:
        print(f"before training: eval loss {before['loss']:.3f}, pairwise accuracy {before['accuracy']:.3f}")
    step, sequences, start = 0, 0, time.time()
    desc = f"rm_kwise {args.loss}" + (" shuffled pairs" if args.shuffle_pairs else "")
    bar = tqdm(total=num_steps, desc=desc, disable=rank != 0)
    for epoch in range(args.num_epochs):
        rng.shuffle(units)  # the same order on every rank (same seed)
        batches = runs.global_batches(units, per_step, world)
        for b, batch in enumerate(batches):
            # this rank's share of the global batch in one pass, its loss weighted so that DDP's average over ranks is
            # the mean over the global batch's prompts (or pairs)
            [(mine, weight)] = runs.micro_batches(batch, rank, world, len(batch))
            if args.shuffle_pairs:  # each pair its own example: 2 forwards per pair, a (B, 2) "ranking"
                rankings = [[train_ids[p][i], train_ids[p][j]] for p, i, j in mine]
            else:
                rankings = [train_ids[p] for p in mine]
            with autocast:
                scores, mask = score_rankings(ddp_model, rankings, pad_id, device, args.forward_chunk)  # (P, Kmax)
                loss = loss_fn(scores.float(), mask)  # the mean over this rank's prompts
            optimizer.zero_grad()
            (loss * weight).backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            sequences += 2 * len(batch) if args.shuffle_pairs else sum(len(train_ids[p]) for p in batch)
            bar.update(1)
            scores = scores.detach().float()
            # means over the global batch: of prompts, of ranked pairs, of completions
            logged = runs.reduce_mean({"loss/train": loss.item()}, weight=len(mine))
            accuracy = ranking_metrics(scores, mask)["accuracy"]
            logged |= runs.reduce_mean({"rewards/accuracies": accuracy}, weight=int(_pairs(mask).sum()))
            logged |= runs.reduce_mean({"rewards/mean": scores[mask].mean().item()}, weight=int(mask.sum()))
            runs.log_scalars(writer, logged, step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/epoch", epoch + (b + 1) / len(batches), step)
            writer.add_scalar("charts/completions_per_second", sequences / (time.time() - start), step)
            if step % args.eval_every == 0 or step == num_steps:
                ev = log_eval(step)
                if ev:
                    bar.set_postfix(loss=f"{logged['loss/train']:.3f}", eval_acc=f"{ev['accuracy']:.3f}")
    bar.close()
    train_time = time.time() - start

    # Normalization: the loss is shift-invariant, so set a bias for mean 0 on reference responses (Stiennon et
    # al., InstructGPT), and with --normalize-std a gain for std 1 (lm-human-preferences)
    ref_encoded = data.encode_demonstrations(tokenizer, ref_rows, args.max_length, args.max_prompt_length,
                                             "reference responses", rank == 0)
    ref_ids = [ids for ids, _ in ref_encoded]
    scorer.eval()
    with torch.no_grad(), autocast, parallel.gathered(scorer):
        ref = score_sequences(scorer, ref_ids, pad_id, device, args.forward_chunk).float()
    model = parallel.plain(model, rank)  # --fsdp: the whole model gathered to rank 0
    if rank != 0:  # rank 0 alone saves and reports
        runs.finish(writer)
        raise SystemExit(0)
    model.config.reward_mean = ref.mean().item()
    model.config.reward_std = ref.std(correction=0).item() if args.normalize_std else 1.0  # population std, as rm_bt.py
    if calibration is not None and ev["calibration_a"] > 0:  # on gold's scale: (raw - mean) / std = a * raw + b
        a, b = ev["calibration_a"], ev["calibration_b"]
        model.config.reward_mean, model.config.reward_std = -b / a, 1 / a
    writer.add_scalar("eval/reference_reward_mean", model.config.reward_mean, step)
    writer.add_scalar("eval/reference_reward_std", ref.std(correction=0).item(), step)

    out_dir = models.save(model, tokenizer, args.output_dir, run_name, args.lora.merge_lora)
    summary = (f"rm_kwise ({args.loss}{', shuffled pairs' if args.shuffle_pairs else ''}): "
               f"eval pairwise accuracy {before['accuracy']:.3f} -> {ev['accuracy']:.3f}")
    if ceiling is not None:
        summary += f" (labeler's ceiling {ceiling:.3f}, {100 * (ceiling - ev['accuracy']):.1f} points below)"
    summary += f", top-1 {ev['top1_accuracy']:.3f}, Kendall tau {ev['kendall_tau']:.3f}, eval loss {ev['loss']:.3f}"
    if gold is not None:
        summary += f", gold agreement {ev['gold_accuracy']:.3f}"
    if calibration is not None:
        summary += f", alignment gap {ev['alignment_gap']:.3f} (rank corr {ev['rank_correlation']:.3f})"
    summary += (f", reward-length corr {ev['reward_length_corr']:+.2f}, "
                f"reward_mean {model.config.reward_mean:.3f} reward_std {model.config.reward_std:.3f}, "
                f"{sequences / train_time:.0f} completions/s, {train_time:.0f}s on {world} process(es), "
                f"saved to {out_dir}")
    print(summary)
    runs.finish(writer)
