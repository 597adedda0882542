"""Direct Preference Optimization: train the policy on preference pairs directly, with no reward model and no
sampling during training (Rafailov et al. 2023), and its variants.

With c = log pi(y_w|x) - log pi_ref(y_w|x) and r = log pi(y_l|x) - log pi_ref(y_l|x), summed over completion tokens:
    --loss-type sigmoid   -log sigmoid(beta (c - r))                          DPO (Rafailov et al. 2023)
    --loss-type ipo       (c/|y_w| - r/|y_l| - 1/(2 beta))^2                   IPO (Azar et al. 2023)
    --loss-type hinge     relu(1 - beta (c - r))                              SLiC-HF (Zhao et al. 2023) as TRL
                          writes it, with the reference; SLiC-HF's calibration loss,
                          relu(delta - log pi(y_w) + log pi(y_l)), has none
    --label-smoothing e   conservative DPO (Mitchell 2023) or, with --label-smoothing-form robust,
                          robust DPO (Chowdhury et al. 2024): labels flipped with probability e
    --rpo-alpha a         + a * per-token NLL of y_w (RPO, Pang et al. 2024): keeps chosen likelihoods from falling;
                          averaged per sequence, then over pairs (TRL averages over all chosen tokens of the batch)

The reference is the starting policy. Its log-probs are computed once before training and the reference leaves
the accelerator; a CPU copy is kept only to measure KL on samples at evaluation (--no-eval-kl drops it). With
--use-peft (LoRA) the reference is the same network with its adapters off: no copy at all.
    python dpo.py                                          # the bundled base policy on the embedded task's pairs
    python dpo.py --loss-type ipo --beta 0.5
    python dpo.py --model gpt2 --dataset pairs.jsonl       # any causal LM, {"prompt", "chosen", "rejected"} rows
    python dpo.py --model gpt2 --dataset Anthropic/hh-rlhf # a hub dataset as published (common/data.py)
    torchrun --nproc_per_node 4 dpo.py --model gpt2 ...    # data parallel (DDP)
    python dpo.py --model <7B SFT model> --dataset ... --use-peft --gradient-checkpointing   # one GPU (README)
"""

import random
import statistics
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Literal, Optional

import torch
import torch.distributed as dist
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common import data, models, parallel, runs, sampling, task


@dataclass
class Args:
    exp_name: str = "dpo"
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
    """the policy to start from, and the reference (the SFT model): a hub name or local path"""
    dataset: str = "embedded"
    """'embedded' (pairs labeled by the task's simulated labeler), a .jsonl/.json file, a local dataset folder or a hub
    dataset of pairs (common/data.py lists the layouts read)"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    pairs_per_prompt: int = 8
    """embedded task only: comparisons per train prompt (fresh pairs beat extra epochs on the same ones)"""
    eval_pairs_per_prompt: int = 2
    """embedded task only: comparisons per eval prompt"""
    labelers: tyro.conf.OmitArgPrefixes[task.LabelerArgs] = field(default_factory=task.LabelerArgs)
    """embedded task only: who labels the pairs: --labeler-temperature, --flip-rate, --length-bias, --num-labelers,
    --outlier-labelers, --tie-threshold (see task.LabelerArgs)"""
    num_train_prompts: Optional[int] = None
    """embedded task only: the first N train prompts (None: all 1566; fewer for quick runs or data-size ablations)"""
    num_eval_prompts: Optional[int] = None
    """sample on the first N eval prompts (None: all, 174 on the embedded task, where it also limits the eval pairs)"""
    output_dir: str = ""
    """where to save the model and tokenizer; '' saves to runs/<run_name>/model"""

    loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid"
    """sigmoid (DPO), ipo (per-token averaged log-ratios, also in the logged rewards), hinge (SLiC); see dpo_loss"""
    beta: float = 0.5
    """the KL strength: the inverse temperature of the implicit reward beta * log(pi / pi_ref)"""
    label_smoothing: float = 0.0
    """sigmoid only: the assumed probability that a label is flipped (0 <= e < 0.5)"""
    label_smoothing_form: Literal["conservative", "robust"] = "conservative"
    """conservative (cDPO: soft labels) or robust (rDPO: an unbiased estimate of the clean loss)"""
    rpo_alpha: float = 0.0
    """weight of the per-token NLL of the chosen response added to the loss (RPO); 0 is plain DPO"""
    reference_on_the_fly: bool = False
    """run the reference model at every step instead of precomputing its log-probs once (keeps it in memory)"""
    eval_kl: bool = True
    """measure the KL of samples to the reference at evaluation (embedded task prompts only): keeps a CPU copy of it
    (none with --use-peft)"""

    num_epochs: int = 1
    """passes over the pairs"""
    per_device_batch_size: int = 32
    """pairs per forward pass on each device (2x sequences: chosen and rejected go through together)"""
    gradient_accumulation_steps: int = 1
    """forward passes per optimizer step; global batch = per_device_batch_size x this x number of processes"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for larger models, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, --lora-alpha, --lora-dropout, --lora-target-modules, --merge-lora (see LoraArgs)"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""
    learning_rate: Optional[float] = None
    """peak learning rate; if not given: 3e-4 for a small model like the bundled one,
    1e-6 for a pretrained one (the DPO paper, TRL)"""
    warmup_ratio: float = 0.1
    """fraction of steps with linear warmup, then cosine decay to 0"""
    max_length: Optional[int] = None
    """longest prompt + completion in tokens, longer ones truncated (counted); if not given: 96 for a small model, 1024
    for a pretrained one (TRL), within its context"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept; if not given: 32 for a small model, 512 for a pretrained one"""
    eval_every: int = 50
    """optimizer steps between evaluations"""
    eval_samples_per_prompt: int = 4
    """samples per eval prompt per evaluation (with 1, the base policy's mean gold moves by about 0.2 between seeds)"""
    max_new_tokens: int = 64
    """longest sampled response at evaluation"""
    temperature: float = 1.0
    """sampling temperature at evaluation (the KL is that of the tempered policy)"""


def sequence_logps(logits, input_ids, completion_mask):
    """(log pi(y|x), |y|), each (B,): the sum of log-probs of the completion tokens (EOS included; prompt and
    padding excluded) and their count. Token t is predicted from the logits at t - 1."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    mask = completion_mask[:, 1:].float()
    return (logp * mask).sum(-1), mask.sum(-1)


def dpo_loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps, ref_rejected_logps, beta,
             loss_type="sigmoid", label_smoothing=0.0, label_smoothing_form="conservative",
             chosen_tokens=None, rejected_tokens=None, rpo_alpha=0.0):
    """(losses, chosen_rewards, rejected_rewards), each (B,). Inputs are (B,) sequence log-probs summed over completion
    tokens; c = policy_chosen - ref_chosen, r = policy_rejected - ref_rejected, h = c - r, e = label_smoothing.
      sigmoid (DPO eq. 7):          -log sigmoid(beta h)
        conservative (cDPO):        -(1 - e) log sigmoid(beta h) - e log sigmoid(-beta h)    (soft labels)
        robust (rDPO):              [-(1 - e) log sigmoid(beta h) + e log sigmoid(-beta h)] / (1 - 2e)
                                    (unbiased: its expectation under flips with rate e is the clean loss)
      ipo (Azar et al. eq. 17):     (c / |y_w| - r / |y_l| - 1 / (2 beta))^2   needs chosen_tokens, rejected_tokens:
                                    the log-ratios are averaged per token here, so pass summed log-probs and counts
      hinge (SLiC-HF, as in TRL):   relu(1 - beta h), normalized by the reference; SLiC-HF's own calibration loss
                                    relu(delta - log pi(y_w|x) + log pi(y_l|x)) has no reference model
      rpo_alpha > 0 (RPO):          + rpo_alpha * (-policy_chosen / |y_w|), the per-token NLL of the chosen response,
                                    a mean per sequence (TRL divides the batch's summed NLL by all its chosen tokens)
    The implicit rewards are beta * c and beta * r, summed log-ratios; for ipo the per-token averages its loss compares,
    so that the logged rewards, margins and accuracies are those of what the loss optimizes."""
    c = policy_chosen_logps - ref_chosen_logps
    r = policy_rejected_logps - ref_rejected_logps
    h = c - r
    e = label_smoothing
    if e and loss_type != "sigmoid":
        raise ValueError("label smoothing is defined for the sigmoid loss only")
    if not 0 <= e < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {e}")
    if loss_type == "sigmoid":
        if label_smoothing_form == "robust":
            losses = (-(1 - e) * F.logsigmoid(beta * h) + e * F.logsigmoid(-beta * h)) / (1 - 2 * e)
        else:
            losses = -(1 - e) * F.logsigmoid(beta * h) - e * F.logsigmoid(-beta * h)
    elif loss_type == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("the ipo loss averages log-ratios per token: pass chosen_tokens and rejected_tokens")
        c, r = c / chosen_tokens, r / rejected_tokens  # IPO compares per-token averages: so do its rewards below
        losses = (c - r - 1 / (2 * beta)) ** 2
    elif loss_type == "hinge":
        losses = F.relu(1 - beta * h)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    if rpo_alpha:
        if chosen_tokens is None:
            raise ValueError("the rpo term is a per-token NLL: pass chosen_tokens")
        losses = losses + rpo_alpha * (-policy_chosen_logps / chosen_tokens)
    return losses, beta * c.detach(), beta * r.detach()


def concatenated_logps(model, chosen, rejected, pad_id, device):
    """One forward pass over chosen and rejected concatenated (2B rows: chosen first); (logps, n_tokens), each (2B,)."""
    ids, am, cm = data.collate(chosen + rejected, pad_id, device)
    return sequence_logps(model(input_ids=ids, attention_mask=am).logits, ids, cm)


@torch.no_grad()
def precompute_reference(ref_model, chosen, rejected, batch_size, pad_id, device, autocast, rank=0, world=1):
    """(N, 2) reference log-probs (chosen, rejected) of every pair, computed once before training. Each rank computes
    its share; an all_reduce over zeros elsewhere fills in the rest."""
    out = torch.zeros(len(chosen), 2, dtype=torch.float64, device=device)
    mine = list(range(rank, len(chosen), world))
    for b in range(0, len(mine), batch_size):
        idx = mine[b : b + batch_size]
        c, r = [chosen[i] for i in idx], [rejected[i] for i in idx]
        with autocast:
            logps, _ = concatenated_logps(ref_model, c, r, pad_id, device)
        out[idx] = logps.view(2, -1).T.double()
    if world > 1:
        dist.all_reduce(out)
    return out.float().cpu()


METRICS = ["loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
           "logps/chosen", "logps/rejected"]


def pair_batch(model, ref_model, ref_logps, chosen, rejected, idx, args, pad_id, device):
    """The loss (scalar) and metrics of the pairs idx; ref_logps (N, 2) when precomputed, else ref_model runs now."""
    c, r = [chosen[i] for i in idx], [rejected[i] for i in idx]
    logps, n_tokens = concatenated_logps(model, c, r, pad_id, device)
    if ref_logps is None:
        with torch.no_grad():
            ref, _ = concatenated_logps(ref_model, c, r, pad_id, device)
    else:
        ref = ref_logps[idx].T.reshape(-1).to(device)  # (2B,): chosen, then rejected
    B = len(idx)
    losses, chosen_rewards, rejected_rewards = dpo_loss(
        logps[:B], logps[B:], ref[:B], ref[B:], args.beta, args.loss_type, args.label_smoothing,
        args.label_smoothing_form, n_tokens[:B], n_tokens[B:], args.rpo_alpha)
    margins = chosen_rewards - rejected_rewards
    metrics = {  # the names of METRICS
        "loss": losses.mean().item(),
        "rewards/chosen": chosen_rewards.mean().item(), "rewards/rejected": rejected_rewards.mean().item(),
        "rewards/margins": margins.mean().item(),
        # a tie (policy == reference) counts as half right, so chance reads 0.5 and not 0
        "rewards/accuracies": ((margins > 0).float() + 0.5 * (margins == 0).float()).mean().item(),
        "logps/chosen": logps[:B].mean().item(), "logps/rejected": logps[B:].mean().item(),
    }
    return losses.mean(), metrics


def sample(model, tokenizer, queries, max_new_tokens, temperature, batch_size=64):
    """Pure sampling (no top-k, no top-p) for queries (lists of prompt ids), each response up to and including its
    first EOS. Returns the texts and the batches as common/sampling.py gives them."""
    stop_ids = [tokenizer.eos_token_id]
    config = sampling.generation_config(tokenizer, stop_ids, max_new_tokens, temperature)
    texts, batches = [], []
    for i in range(0, len(queries), batch_size):
        batches.append(sampling.sample_responses(model, tokenizer, queries[i : i + batch_size], config, stop_ids))
        texts += batches[-1]["texts"]
    return texts, batches


@torch.no_grad()
def sample_logps(model, batches, temperature):
    """Sequence log-probs of the sampled responses under model at the sampling temperature, (N,)."""
    out = []
    for r in batches:
        logprobs = sampling.response_logprobs(model, r["seq"], r["mask"], r["context_length"], temperature)[0]
        out.append((logprobs * r["resp_mask"]).sum(1))
    return torch.cat(out) if out else torch.zeros(0)  # none on a process that had no prompts


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(
        args,
        positive=["pairs_per_prompt", "eval_pairs_per_prompt", "num_train_prompts",
                  "num_eval_prompts", "beta", "num_epochs", "per_device_batch_size", "gradient_accumulation_steps",
                  "learning_rate", "max_length", "max_prompt_length", "eval_every", "eval_samples_per_prompt",
                  "max_new_tokens", "temperature"],
        non_negative=["rpo_alpha"],
        rules=[("label_smoothing", 0 <= args.label_smoothing < 0.5, "in [0, 0.5)"),
               ("label_smoothing", args.label_smoothing == 0 or args.loss_type == "sigmoid", "0 with this --loss-type"),
               ("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)"),
               runs.prompt_length_rule(args)],
    )
    rank, world, device, dtype = runs.setup_distributed(args.cuda)
    parallel.check(args.sharding, world, device)
    runs.seed_everything(args.seed, args.torch_deterministic)
    say = print if rank == 0 else runs.quiet
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (read and checked before any model loads): preference pairs; the eval pairs are on prompts never trained on
    if args.dataset == "embedded":
        labeler = task.labeler_pool(args.labelers)
        train_prompts, eval_prompts = task.split_prompts()
        train_prompts, eval_prompts = train_prompts[: args.num_train_prompts], eval_prompts[: args.num_eval_prompts]
        train_rows = task.make_pairs(train_prompts, labeler, args.pairs_per_prompt, seed=args.seed)
        eval_rows = task.make_pairs(eval_prompts, labeler, args.eval_pairs_per_prompt, seed=args.seed + 1)
        task.report_ties(train_rows, train_prompts, args.pairs_per_prompt, "train pairs", say)
        task.report_ties(eval_rows, eval_prompts, args.eval_pairs_per_prompt, "eval pairs", say)
        ceiling = statistics.mean(labeler.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in eval_rows)
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "pairwise", args.dataset_config, args.dataset_train_split,
                                               args.dataset_test_split, verbose=rank == 0)
        eval_prompts = sorted({r["prompt"] for r in eval_rows if task.is_task_prompt(r["prompt"])})
        eval_prompts = eval_prompts[: args.num_eval_prompts]  # samples are graded on the task's prompts only
        ceiling = None
    data.check_eval_rows(eval_rows, args.dataset, "pairs")

    # Policy and reference: the same weights at the start; dropout off so log-prob ratios are not noisy
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    model = models.disable_dropout(models.load_causal_lm(args.model, torch.float32, args.trust_remote_code))
    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}  # (small model, pretrained model)
    models.fit_defaults(args, model, tokenizer, (3e-4, 1e-6), lengths, say)
    # --use-peft: adapters on, the model's own weights frozen
    model = models.prepare(model, args.gradient_checkpointing, args.lora, dtype, device)
    ref_model = models.reference_of(model, dtype)  # a frozen copy, or with adapters the same network with them off
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, policy and reference sharded in place
    ddp_model = parallel.wrap(model, args.sharding, world, dtype)
    ref_model = parallel.frozen(ref_model, args.sharding, world, dtype)
    torch.manual_seed(args.seed + rank)  # each rank samples differently at evaluation
    pad_id = tokenizer.pad_token_id

    encoded = {}
    for split, rows in (("train", train_rows), ("eval", eval_rows)):
        counts = Counter()
        encoded[split] = [[data.encode(tokenizer, r["prompt"], r[k], args.max_length, args.max_prompt_length, counts)
                           for r in rows] for k in ("chosen", "rejected")]
        data.report(counts, f"{split} pairs (chosen and rejected)", say)
    (train_c, train_r), (eval_c, eval_r) = encoded["train"], encoded["eval"]
    eval_queries = data.encode_prompts(tokenizer, eval_prompts, args.max_prompt_length, "eval prompts for sampling",
                                       rank == 0)

    # Reference log-probs: computed once, then the reference leaves the accelerator (a CPU copy stays for the KL of
    # samples); with adapters the reference is the policy with them off, so there is nothing to move and no copy
    train_ref = eval_ref = None
    if not args.reference_on_the_fly:
        t0 = time.time()
        batching = (args.per_device_batch_size, pad_id, device, autocast, rank, world)
        with parallel.gathered(ref_model):  # --fsdp: ranks may run different numbers of forwards
            train_ref = precompute_reference(ref_model, train_c, train_r, *batching)
            eval_ref = precompute_reference(ref_model, eval_c, eval_r, *batching)
        say(f"reference log-probs of {len(train_c)} train and {len(eval_c)} eval pairs precomputed in "
            f"{time.time() - t0:.1f}s")
        keep = args.eval_kl and eval_prompts  # for the KL of samples: on the CPU, unless sharded (.to() would unshard)
        ref_model = (ref_model if parallel.sharded(ref_model) else ref_model.to("cpu")) if keep else None
        if device.type == "cuda":
            torch.cuda.empty_cache()
    global_batch = args.per_device_batch_size * args.gradient_accumulation_steps * world
    num_steps = args.num_epochs * len(runs.global_batches(list(range(len(train_c))), global_batch, world))
    warmup = int(args.warmup_ratio * num_steps)
    optimizer = torch.optim.AdamW(models.trainable(model), lr=args.learning_rate, weight_decay=0.0,
                                  fused=runs.fused_adam(device))
    scheduler = runs.warmup_cosine(optimizer, warmup, num_steps)

    @torch.no_grad()
    @parallel.gathered(model, ref_model)  # --fsdp: gathered once; ranks may run different numbers of forwards
    def evaluate():
        """Held-out pair metrics (eval/...), and on task prompts: samples, their gold reward and their KL to the
        reference, the mean over samples of log pi(y|x) - log pi_ref(y|x) (the axes of the DPO paper's frontier)."""
        model.eval()
        idx = list(range(rank, len(eval_c), world))
        sums, n = Counter(), 0
        for b in range(0, len(idx), args.per_device_batch_size):
            part = idx[b : b + args.per_device_batch_size]
            with autocast:
                _, m = pair_batch(model, ref_model, eval_ref, eval_c, eval_r, part, args, pad_id, device)
            sums.update({k: v * len(part) for k, v in m.items()})
            n += len(part)
        out = runs.reduce_mean({f"eval/{k}": sums[k] / max(n, 1) for k in METRICS}, weight=n)
        if eval_prompts:
            prompts = (eval_prompts * args.eval_samples_per_prompt)[rank::world]
            queries = (eval_queries * args.eval_samples_per_prompt)[rank::world]
            texts, batches = sample(model, tokenizer, queries, args.max_new_tokens, args.temperature)
            ev = task.grades(prompts, texts, prefix="eval/") | {"eval/response_length": [len(t.split()) for t in texts]}
            if ref_model is not None:
                move = not args.reference_on_the_fly and not parallel.sharded(ref_model)
                if move:  # from its CPU copy when the reference log-probs were precomputed
                    ref_model.to(device)
                with autocast:
                    policy_logps = sample_logps(model, batches, args.temperature)
                    kl = policy_logps - sample_logps(ref_model, batches, args.temperature)
                ev["eval/kl"] = kl.tolist()
                if move:
                    ref_model.to("cpu")
            out |= runs.global_means(ev)  # a process with no share (fewer samples than processes) adds nothing
            out["samples"] = list(zip(prompts[:8], texts[:8]))
        model.train()
        return out

    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = ev = evaluate()
    runs.log_scalars(writer, before, 0)  # step 0: the curves start at the reference policy
    gold = f", gold {before['eval/gold']:.3f}" if "eval/gold" in before else ""
    say(f"before training: eval loss {before['eval/loss']:.3f}" + gold)
    rng = random.Random(args.seed)
    step, start, pairs_seen = 0, time.time(), 0
    bar = tqdm(total=num_steps, desc="dpo", disable=rank != 0)
    for epoch in range(args.num_epochs):
        order = list(range(len(train_c)))
        rng.shuffle(order)  # the same order on every rank
        for batch in runs.global_batches(order, global_batch, world):
            # this rank's share in micro-batches, each mean loss weighted by its share of the global batch's pairs:
            # the step is the mean over the global batch however unevenly the batch splits
            micro = runs.micro_batches(batch, rank, world, args.per_device_batch_size)
            optimizer.zero_grad()
            sums = Counter()
            for k, (idx, weight) in enumerate(micro):
                with parallel.accumulating(ddp_model, k == len(micro) - 1), autocast:  # reduced on the last
                    loss, m = pair_batch(ddp_model, ref_model, train_ref, train_c, train_r, idx, args, pad_id, device)
                    (loss * weight).backward()
                sums.update({key: v * weight for key, v in m.items()})
            pairs_seen += len(batch)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            logged = runs.reduce_mean(dict(sums))  # the mean over ranks of the weighted sums: the global batch mean
            writer.add_scalar("train/loss", logged.pop("loss"), step)
            runs.log_scalars(writer, logged, step)
            writer.add_scalar("charts/grad_norm", grad_norm.item(), step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/pairs_per_second", pairs_seen / (time.time() - start), step)
            if step % args.eval_every == 0 or step == num_steps:
                ev = evaluate()
                runs.log_scalars(writer, ev, step)
                bar.set_postfix(margin=f"{logged['rewards/margins']:.2f}", acc=f"{ev['eval/rewards/accuracies']:.2f}",
                                **({"gold": f"{ev['eval/gold']:.2f}"} if "eval/gold" in ev else {}))
    bar.close()

    after = ev
    model = parallel.plain(model, rank)  # --fsdp: the whole model gathered to rank 0
    if rank == 0:
        if "samples" in after:
            writer.add_text("samples", "\n\n".join(f"**{p}** {r}" for p, r in after["samples"]), step)
            for p, r in after["samples"][:4]:
                print(f"  {p} -> {r}")
        out_dir = models.save(model, tokenizer, args.output_dir, run_name, args.lora.merge_lora)
        acc0, acc1 = before["eval/rewards/accuracies"], after["eval/rewards/accuracies"]
        summary = f"dpo ({args.loss_type}, beta {args.beta}): eval accuracy {acc0:.2f} -> {acc1:.2f}"
        summary += f" (labeler ceiling {ceiling:.2f})" if ceiling is not None else ""
        summary += f", margin {after['eval/rewards/margins']:.2f}"
        summary += f", logps chosen {before['eval/logps/chosen']:.1f} -> {after['eval/logps/chosen']:.1f}"
        summary += f", rejected {before['eval/logps/rejected']:.1f} -> {after['eval/logps/rejected']:.1f}"
        if "eval/gold" in after:
            summary += f", eval gold {before['eval/gold']:.3f} -> {after['eval/gold']:.3f} (best {task.BEST_GOLD})"
            summary += f" at KL {after['eval/kl']:.2f} nats" if "eval/kl" in after else ""
            summary += f", correct {before['eval/correct']:.0%} -> {after['eval/correct']:.0%}"
        elapsed = time.time() - start
        print(summary + f", {elapsed:.0f}s training ({pairs_seen / elapsed:.3g} pairs/s) on {world} process(es), "
                        f"saved to {out_dir}")
    runs.finish(writer)
