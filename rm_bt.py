"""Bradley-Terry reward model: a scalar reward trained on preference pairs (InstructGPT step 2; Stiennon et al. 2020).

The SFT model with its unembedding replaced by a scalar head scores prompt + response at the last real token;
the loss makes the chosen response score above the rejected one:
    loss = -log sigmoid(r(x, y_w) - r(x, y_l) - m)  +  c * mean((r_w + r_l)^2)

with an optional per-pair margin m (Llama 2) and an optional centering term (Eisenstein et al. 2023).
After one epoch the reward gets a bias (and with --normalize-std a gain) so that reference responses score
mean 0 (std 1), stored in the saved config as reward_mean / reward_std: normalized = (raw - reward_mean) / reward_std.
On the embedded task the normalization is instead the affine calibration to gold (--calibration-size), and the
alignment gap, mean |calibrated reward - gold| on held-out responses, is logged as eval/alignment_gap (seed 000).
    python rm_bt.py                                                  # embedded task, bundled base policy (CPU, minutes)
    python rm_bt.py --length-bias 0.3                                # a labeler that likes long answers
    python rm_bt.py --length-bias 0.3 --counterexample-frac 0.3      # ... and the fix: curated counterexamples
    python rm_bt.py --model gpt2 --dataset pairs.jsonl               # {"prompt", "chosen", "rejected"[, "margin"]}
    # a hub dataset as published:
    python rm_bt.py --model Qwen/Qwen2-0.5B-Instruct --dataset trl-lib/ultrafeedback_binarized
    torchrun --nproc_per_node 4 rm_bt.py --model gpt2 ...            # data parallel (DDP)
"""

import math
import random
import time
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm

from common import data, models, parallel, runs, task


@dataclass
class Args:
    exp_name: str = "rm_bt"
    """the name of this experiment (the run is logged to runs/<exp_name>__<seed>__<time>)"""
    seed: int = 1
    """seed of the experiment"""
    torch_deterministic: bool = True
    """sets torch.backends.cudnn.deterministic"""
    cuda: bool = True
    """use CUDA when available (bf16 autocast where supported)"""
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
    """'embedded' (pairs labeled by the task's simulated labeler), a .jsonl/.json file, a local dataset folder or a hub
    dataset of pairs (common/data.py lists the layouts read)"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    pairs_per_prompt: int = 16
    """embedded task only: training pairs per train prompt (1566 prompts); fresh pairs help more than extra epochs
    (8: 0.75 accuracy, 32: 0.83)"""
    num_train_prompts: Optional[int] = None
    """embedded task only: use the first N train prompts (None: all 1566; fewer for quick runs)"""
    eval_pairs_per_prompt: int = 8
    """embedded task only: held-out pairs per eval prompt (174 prompts), so the accuracy estimate is tight"""
    labelers: tyro.conf.OmitArgPrefixes[task.LabelerArgs] = field(default_factory=task.LabelerArgs)
    """embedded task only: who labels the pairs: --labeler-temperature, --flip-rate, --length-bias, --num-labelers,
    --outlier-labelers, --tie-threshold (see task.LabelerArgs)"""
    extra_pairs: str = ""
    """embedded task only: a .jsonl/.json file of {"prompt", "chosen", "rejected"} pairs on train prompts added to the
    labeler's pairs (targeted examples, online rounds); a pair on an eval prompt stops the run"""
    counterexample_frac: float = 0.0
    """embedded task only: fraction of training pairs that are curated counterexamples
    (short but excellent over long but bad)"""
    margin: bool = False
    """use the Llama 2 margin: -log sigmoid(r_w - r_l - m);
    the embedded labeler gives its rating level (0, 1/3, 2/3, 1), a dataset its "margin" field (0 where absent)"""
    center_coef: float = 0.0
    """weight of the centering term c * mean((r_w + r_l)^2) (Eisenstein et al. 2023; TRL suggests 0.01)"""
    output_dir: str = ""
    """where to save the reward model and tokenizer; '' saves to runs/<run_name>/model"""
    num_epochs: int = 1
    """passes over the pairs: one is the norm, more overfits (Stiennon et al., InstructGPT)"""
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
    """peak learning rate, linear warmup then cosine decay to 0; if not given: 1e-3 for a small model like the bundled
    one, 1e-5 for a pretrained one (Stiennon et al. 1.5e-5, InstructGPT 9e-6)"""
    warmup_ratio: float = 0.05
    """fraction of steps with linear warmup"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_length: Optional[int] = None
    """longest prompt + response in tokens, longer ones truncated (counted); if not given: 96 for a small model, 1024
    for a pretrained one (TRL), within its context"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept; if not given: 32 for a small model, 512 for a pretrained one"""
    eval_every: int = 50
    """optimizer steps between evaluations on the held-out pairs"""
    reference: str = "auto"
    """responses the reward is normalized on: 'auto' (the embedded task's SFT demonstrations, else the chosen and
    rejected responses of the train pairs) or a {"prompt", "completion"} file"""
    reference_size: int = 1024
    """how many reference responses to score for the normalization"""
    normalize_std: bool = False
    """also a gain so that reference rewards have std 1 (lm-human-preferences); else a bias only (Stiennon et al.)"""
    calibration_size: int = 1024
    """embedded task only: generator responses on train prompts with their gold reward, on which the reward is
    calibrated to gold: eval/alignment_gap, and the saved normalization (PPO then sees scores on gold's scale); 0: off,
    the reference normalization instead"""
    group_by_length: bool = True
    """batch pairs of similar length together (less padding, about 2x faster on CPU);
    batches still come in random order"""


def bradley_terry_loss(r_chosen, r_rejected, margin=None, center_coef=0.0, smoothing=None):
    """The mean over pairs of -log sigmoid(r_w - r_l - m) (Bradley-Terry; Stiennon et al. 2020, InstructGPT eq. 1),
    m the per-pair margin of Llama 2 (0 when None), plus center_coef * mean((r_w + r_l)^2), which pins the
    otherwise free offset of the reward near 0 (Eisenstein et al. 2023). With per-pair label smoothing a, the label
    is trusted with probability 1 - a: -(1 - a) log sigmoid(d) - a log sigmoid(-d) (Secrets of RLHF II).
    All arguments (B,)."""
    diff = r_chosen - r_rejected
    if margin is not None:
        diff = diff - margin
    loss = -F.logsigmoid(diff)  # logsigmoid: stable for large |diff|, unlike log(sigmoid(.))
    if smoothing is not None:
        loss = (1 - smoothing) * loss - smoothing * F.logsigmoid(-diff)
    loss = loss.mean()
    if center_coef:
        loss = loss + center_coef * ((r_chosen + r_rejected) ** 2).mean()
    return loss


def reward_normalization(rewards, gain=False):
    """(reward_mean, reward_std) that make (rewards - reward_mean) / reward_std mean 0, and std 1 when gain is set
    (else reward_std = 1: a bias only). The loss is shift-invariant, so the offset is arbitrary until fixed here
    on reference responses (Stiennon et al., InstructGPT); the gain keeps the KL coefficient's meaning
    (lm-human-preferences)."""
    rewards = rewards.double()
    return rewards.mean().item(), rewards.std(correction=0).item() if gain else 1.0


def score(model, seqs, pad_id, device):
    """(N,) raw rewards of token-id lists, read at the last real token (right padding, position from the mask).
    model: a sequence-classification model, or models.LastTokenReward (possibly DDP-wrapped)."""
    ids = data.pad(seqs, pad_id).to(device)
    attention_mask = data.pad([[1] * len(s) for s in seqs], 0).to(device)
    if not hasattr(model, "score"):  # models.LastTokenReward, possibly in DDP or sharded
        return model(ids, attention_mask)
    return models.reward_at_last_token(model, ids, attention_mask)


def score_pairs(model, pairs, pad_id, device):
    """(r_chosen, r_rejected), each (B,): chosen and rejected concatenated into one forward pass of 2B sequences."""
    r = score(model, [p["chosen"] for p in pairs] + [p["rejected"] for p in pairs], pad_id, device)  # (2B,)
    return r[: len(pairs)], r[len(pairs) :]


def length_grouped_batches(lengths, batch_size, rng, world=1, group=64):
    """Index batches in random order, each holding items of similar length: shuffle, sort each run of `group`
    batches' worth of items by length, cut it into batches, shuffle all batches (HF's group_by_length, simplified)."""
    order = rng.sample(range(len(lengths)), len(lengths))
    span = batch_size * group
    order = [i for s in range(0, len(order), span) for i in sorted(order[s : s + span], key=lambda i: lengths[i])]
    batches = runs.global_batches(order, batch_size, world)
    rng.shuffle(batches)
    return batches


def n_words(text):
    """Length of a response in words (a conversation: its messages' contents)."""
    return len(text.split()) if isinstance(text, str) else sum(len(m["content"].split()) for m in text)


def encode_pairs(rows, tokenizer, args, use_margin):
    """Token ids of prompt + chosen and prompt + rejected (EOS appended), the margin, and the responses' lengths."""
    counts, pairs = Counter(), []
    for r in rows:
        chosen = data.encode(tokenizer, r["prompt"], r["chosen"], args.max_length, args.max_prompt_length, counts)
        rejected = data.encode(tokenizer, r["prompt"], r["rejected"], args.max_length, args.max_prompt_length, counts)
        chosen, rejected = chosen[0], rejected[0]  # the ids: a reward model reads the whole sequence
        counts["pairs identical once truncated"] += chosen == rejected  # the part that differed was cut: no signal left
        pairs.append({"chosen": chosen, "rejected": rejected, "margin": r.get("margin", 0.0) if use_margin else 0.0,
                      "smoothing": r.get("label_smoothing", 0.0),
                      "words": (n_words(r["chosen"]), n_words(r["rejected"]))})
    return pairs, counts


@torch.no_grad()
def evaluate(model, pairs, pad_id, device, args, gold_sign=None, chunk=128, rank=0, world=1, calibration=None):
    """Held-out loss, accuracy (ties count half), margin, reward mean and std, and the correlation of reward with
    response length in words (Singhal et al. 2023); with gold_sign (+1, -1, or 0 for a tie; (N,)) the accuracy
    against the gold preference, gold ties left out; with calibration (calibration ids, their gold, the gold of the
    eval pairs' chosen then rejected responses) the alignment gap. Each rank scores its share; all get the same."""
    model.eval()
    mine = pairs[rank::world]  # may be empty (fewer eval pairs than ranks)
    rc, rr = torch.zeros(0, device=device), torch.zeros(0, device=device)
    for i in range(0, len(mine), chunk):
        rc_i, rr_i = score_pairs(model, mine[i : i + chunk], pad_id, device)
        rc, rr = torch.cat([rc, rc_i.float()]), torch.cat([rr, rr_i.float()])
    rc, rr = runs.gather_in_order(rc, rank, world), runs.gather_in_order(rr, rank, world)
    m = torch.tensor([p["margin"] for p in pairs], device=rc.device) if args.margin else None
    rewards = torch.cat([rc, rr])
    words = torch.tensor([p["words"][0] for p in pairs] + [p["words"][1] for p in pairs])
    out = {
        "loss": bradley_terry_loss(rc, rr, m, args.center_coef).item(),
        "accuracy": ((rc > rr).float() + 0.5 * (rc == rr).float()).mean().item(),
        "margin": (rc - rr).mean().item(),
        "reward_mean": rewards.mean().item(),
        "reward_std": rewards.std().item(),
        "reward_length_corr": torch.corrcoef(torch.stack([rewards.cpu().double(), words.double()]))[0, 1].item(),
    }
    if gold_sign is not None:
        agree = (torch.sign(rc - rr).cpu() * gold_sign + 1) / 2  # 1 agrees, 0 disagrees, 1/2 a reward tie
        out["gold_accuracy"] = agree[gold_sign != 0].mean().item()
    if calibration is not None:  # the alignment gap on gold's scale, and the rank correlation with gold
        cal_ids, cal_gold, eval_gold = calibration
        raw = torch.cat([score(model, cal_ids[i : i + chunk], pad_id, device) for i in range(0, len(cal_ids), chunk)])
        out |= task.alignment_gap(raw.tolist(), cal_gold, rewards.tolist(), eval_gold)
    model.train()
    return out


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(
        args,
        positive=["pairs_per_prompt", "num_train_prompts", "eval_pairs_per_prompt", "num_epochs",
                  "per_device_batch_size", "gradient_accumulation_steps", "learning_rate", "max_length",
                  "max_prompt_length", "eval_every", "reference_size"],
        non_negative=["center_coef", "weight_decay"],
        rules=[("counterexample_frac", 0 <= args.counterexample_frac <= 1, "in [0, 1]"),
               ("extra_pairs", not args.extra_pairs or args.dataset == "embedded",
                "used with the embedded task only (add the pairs to your own --dataset file)"),
               ("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)"),
               runs.prompt_length_rule(args)],
    )
    rank, world, device, dtype = runs.setup_distributed(args.cuda)
    parallel.check(args.sharding, world, device)
    runs.seed_everything(args.seed, args.torch_deterministic)
    say = print if rank == 0 else runs.quiet
    # weights stay fp32 (AdamW needs them); bf16 only inside autocast on GPUs that support it
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (read and checked before any model loads): pairs (chosen, rejected);
    # the eval pairs are on prompts never trained on
    embedded = args.dataset == "embedded"
    ood_rows, ood_ceiling = [], None
    if embedded:
        labeler = task.labeler_pool(args.labelers)
        train_prompts, eval_prompts = task.split_prompts()
        train_prompts = train_prompts[: args.num_train_prompts]
        train_rows = task.make_pairs(train_prompts, labeler, args.pairs_per_prompt, args.seed, args.margin,
                                     args.counterexample_frac)
        # the labeler's own comparisons only (no curated counterexamples): every ablation is measured on the same pairs
        eval_rows = task.make_pairs(eval_prompts, labeler, args.eval_pairs_per_prompt, args.seed + 1, args.margin)
        ood_rows, ood_ceiling = task.ood_pairs(labeler, args.eval_pairs_per_prompt, args.seed + 5)  # RL's responses
        task.report_ties(train_rows, train_prompts, args.pairs_per_prompt, "train pairs", say)
        task.report_ties(eval_rows, eval_prompts, args.eval_pairs_per_prompt, "eval pairs", say)
        if args.extra_pairs:
            extra = data.load_rows(args.extra_pairs, "pairwise", eval_frac=0.0, verbose=False)[0]
            on_eval = sum(r["prompt"] in eval_prompts for r in extra)
            if on_eval:
                raise SystemExit(f"--extra-pairs {args.extra_pairs}: {on_eval} of its {len(extra)} pairs are on eval "
                                 "prompts; extra pairs must be on train prompts (task.split_prompts)")
            train_rows += extra
            say(f"{len(extra)} extra pairs from {args.extra_pairs}: {len(train_rows)} train pairs in all")
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "pairwise", args.dataset_config, args.dataset_train_split,
                                               args.dataset_test_split, verbose=rank == 0)
        with_margin = sum("margin" in r for r in train_rows)
        if with_margin and not args.margin:
            say(f"{with_margin} of {len(train_rows)} train pairs have a margin; pass --margin to use it (Llama 2)")
    data.check_eval_rows(eval_rows, args.dataset, "pairs")

    # Reference responses the reward is normalized on after training (read now, so a bad file stops the run early)
    if embedded:
        auto_refs = task.make_sft(train_prompts, 1, seed=args.seed + 2)
    else:
        auto_refs = [{"prompt": r["prompt"], "completion": r[k]} for r in train_rows for k in ("chosen", "rejected")]
    ref_rows = data.reference_rows(args.reference, auto_refs, args.reference_size, args.seed, verbose=rank == 0)

    # The reward model starts from the SFT model with a fresh scalar head (InstructGPT); dropout off
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    model = models.load_reward_model(args.model, torch.float32, args.trust_remote_code)
    model = models.disable_dropout(model)
    model.config.pad_token_id = tokenizer.pad_token_id
    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}  # (small model, pretrained model)
    models.fit_defaults(args, model, tokenizer, (1e-3, 1e-5), lengths, say)
    lr = args.learning_rate
    # --use-peft: adapters and head trained, the rest frozen
    model = models.prepare(model, args.gradient_checkpointing, args.lora, dtype, device)
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, the model sharded in place
    ddp_model = parallel.wrap(models.LastTokenReward(model), args.sharding, world, dtype) if world > 1 else model
    scorer = ddp_model if parallel.sharded(model) else model  # a sharded model is called through its root
    pad_id = tokenizer.pad_token_id

    train, counts = encode_pairs(train_rows, tokenizer, args, args.margin)
    data.report(counts, "train pairs", say)
    smoothed = any(p["smoothing"] for p in train)  # rows with "label_smoothing" (rm_ensemble.py --denoise smooth)
    eval_pairs, counts = encode_pairs(eval_rows, tokenizer, args, args.margin)
    data.report(counts, "eval pairs", say)
    ood_pairs = encode_pairs(ood_rows, tokenizer, args, False)[0]

    # Ground truth where it is known: agreement with the gold preference (task prompts, plain-text responses),
    # and the labeler's ceiling, the accuracy a perfect reward model reaches on these noisy labels
    gold_sign, ceiling = None, None
    if all(task.is_task_prompt(r["prompt"]) and isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
           for r in eval_rows):
        gaps = [task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"])
                for r in eval_rows]
        gold_sign = torch.tensor([math.copysign(1, d) if d else 0.0 for d in gaps])
        say(f"gold preference: {int((gold_sign != 0).sum())} eval pairs, "
            f"{int((gold_sign == 0).sum())} gold ties left out, "
            f"the labels agree with it on {((gold_sign[gold_sign != 0] + 1) / 2).mean():.3f}")
    if embedded:
        ceiling = sum(labeler.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in eval_rows) / len(eval_rows)
        say(f"labeler's ceiling on the {len(eval_rows)} eval pairs: {ceiling:.3f}")
    calibration = None
    if embedded and args.calibration_size:  # absolute gold ratings of generator responses on train prompts
        cal_ids, cal_gold = data.calibration_set(tokenizer, train_prompts, args.calibration_size, args.seed + 4,
                                                 args.max_length, args.max_prompt_length)
        eval_gold = [task.gold_reward(r["prompt"], r[k]) for k in ("chosen", "rejected") for r in eval_rows]
        calibration = (cal_ids, cal_gold, eval_gold)

    global_batch = args.per_device_batch_size * args.gradient_accumulation_steps * world
    num_steps = args.num_epochs * len(runs.global_batches(list(range(len(train))), global_batch, world))
    warmup = int(args.warmup_ratio * num_steps)
    optimizer = torch.optim.AdamW(models.trainable(model), lr=lr, weight_decay=args.weight_decay,
                                  fused=runs.fused_adam(device))
    scheduler = runs.warmup_cosine(optimizer, warmup, num_steps)

    def log_eval(step):
        with autocast, parallel.gathered(scorer):
            ev = evaluate(scorer, eval_pairs, pad_id, device, args, gold_sign, rank=rank, world=world,
                          calibration=calibration)
            if ood_pairs and step in (0, num_steps):
                ood = evaluate(scorer, ood_pairs, pad_id, device, args, rank=rank, world=world)
                ev |= {"ood_accuracy": ood["accuracy"], "ood_ceiling": ood_ceiling}
        runs.log_scalars(writer, ev, step, prefix="eval/")
        if ceiling is not None:
            writer.add_scalar("eval/ceiling", ceiling, step)
        return ev

    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = log_eval(0)
    say(f"before training: eval loss {before['loss']:.3f}, accuracy {before['accuracy']:.3f}, learning rate {lr:g}")
    rng = random.Random(args.seed)
    step, start = 0, time.time()
    bar = tqdm(total=num_steps, desc="rm_bt", disable=rank != 0)
    for epoch in range(args.num_epochs):
        # the same global batches on every rank (same seed); each rank takes its share of each
        if args.group_by_length:
            pair_lengths = [max(len(p["chosen"]), len(p["rejected"])) for p in train]
            batches = length_grouped_batches(pair_lengths, global_batch, rng, world)
        else:
            batches = runs.global_batches(rng.sample(range(len(train)), len(train)), global_batch, world)
        for i, idx in enumerate(batches):
            mine = idx[rank::world]
            # micro-batches weighted so that DDP's average over ranks of their summed gradients is the global batch mean
            micro = runs.micro_batches(idx, rank, world, args.per_device_batch_size)
            optimizer.zero_grad()
            rcs, rrs = [], []
            for k, (part, weight) in enumerate(micro):
                batch = [train[j] for j in part]
                m = torch.tensor([p["margin"] for p in batch], device=device) if args.margin else None
                a = torch.tensor([p["smoothing"] for p in batch], device=device) if smoothed else None
                # gradients reduced over ranks once, after the last micro-batch
                with parallel.accumulating(ddp_model, k == len(micro) - 1), autocast:
                    rc, rr = score_pairs(ddp_model, batch, pad_id, device)  # (b,), (b,)
                    loss = bradley_terry_loss(rc, rr, m, args.center_coef, a)
                    (loss * weight).backward()
                rcs.append(rc.detach().float())
                rrs.append(rr.detach().float())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            rc, rr = torch.cat(rcs), torch.cat(rrs)
            m = torch.tensor([train[j]["margin"] for j in mine], device=device) if args.margin else None
            a = torch.tensor([train[j]["smoothing"] for j in mine], device=device) if smoothed else None
            logged = runs.reduce_mean({  # means over the global batch
                "loss/train": bradley_terry_loss(rc, rr, m, args.center_coef, a).item(),
                "rewards/chosen": rc.mean().item(), "rewards/rejected": rr.mean().item(),
                "rewards/margins": (rc - rr).mean().item(), "rewards/accuracies": (rc > rr).float().mean().item(),
            }, weight=len(mine))
            runs.log_scalars(writer, logged, step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/epoch", epoch + (i + 1) / len(batches), step)
            writer.add_scalar("charts/pairs_per_second", step * global_batch / (time.time() - start), step)
            if step % args.eval_every == 0 or step == num_steps:
                ev = log_eval(step)
                bar.set_postfix(loss=f"{logged['loss/train']:.3f}", eval_acc=f"{ev['accuracy']:.3f}")
    bar.close()
    train_time = time.time() - start

    # Normalization: a bias so that reference responses score mean 0 (Stiennon et al.; InstructGPT uses the
    # demonstrations), and with --normalize-std a gain for std 1 (lm-human-preferences). ppo_rlhf.py applies it.
    ref_encoded = data.encode_demonstrations(tokenizer, ref_rows, args.max_length, args.max_prompt_length,
                                             "reference responses", rank == 0)
    ref_ids = [ids for ids, _ in ref_encoded]
    scorer.eval()
    with torch.no_grad(), autocast, parallel.gathered(scorer):
        ref = torch.cat([score(scorer, ref_ids[i : i + 256], pad_id, device) for i in range(0, len(ref_ids), 256)])
    model = parallel.plain(model, rank)  # --fsdp: the whole model gathered to rank 0
    if rank != 0:  # rank 0 alone saves and reports
        runs.finish(writer)
        raise SystemExit(0)
    model.config.reward_mean, model.config.reward_std = reward_normalization(ref, args.normalize_std)
    if calibration is not None and ev["calibration_a"] > 0:  # on gold's scale: (raw - mean) / std = a * raw + b
        a, b = ev["calibration_a"], ev["calibration_b"]
        model.config.reward_mean, model.config.reward_std = -b / a, 1 / a
    writer.add_scalar("eval/reference_reward_mean", model.config.reward_mean, step)
    writer.add_scalar("eval/reference_reward_std", ref.std(correction=0).item(), step)

    out_dir = models.save(model, tokenizer, args.output_dir, run_name, args.lora.merge_lora)
    summary = f"rm_bt: eval accuracy {before['accuracy']:.3f} -> {ev['accuracy']:.3f}"
    if ceiling is not None:
        summary += f" (labeler's ceiling {ceiling:.3f}, {100 * (ceiling - ev['accuracy']):.1f} points below)"
    if gold_sign is not None:
        summary += f", gold accuracy {ev['gold_accuracy']:.3f}"
    if calibration is not None:
        summary += f", alignment gap {ev['alignment_gap']:.3f} (rank corr {ev['rank_correlation']:.3f})"
    if ood_pairs:
        summary += f", off-distribution accuracy {ev['ood_accuracy']:.3f} (ceiling {ood_ceiling:.3f})"
    summary += (f", eval loss {ev['loss']:.3f}, margin {ev['margin']:.2f}, "
                f"reward-length corr {ev['reward_length_corr']:+.2f}, "
                f"reward_mean {model.config.reward_mean:.3f} reward_std {model.config.reward_std:.3f}, "
                f"{len(train) * args.num_epochs / train_time:.3g} pairs/s, {train_time:.0f}s on {world} process(es), "
                f"saved to {out_dir}")
    print(summary)
    runs.finish(writer)
