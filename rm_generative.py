"""Generative reward model: a language model that writes the verdict (seed 002), and zero-shot LLM-as-a-judge.

Instead of a scalar head, the reward model keeps its unembedding and is trained with the ordinary next-token loss on
judging texts whose next token is the verdict:
    pairwise   "<prompt> 1. <response a> 2. <response b> Which answer is useful, 1 or 2?" -> "1" or "2"
               each labeled pair in both orders, so the position of a response carries no signal (Mahan et al. 2024,
               Generative Reward Models); score s(a, b) = (lo_ab - lo_ba) / 2, lo the log-odds of naming the first
    pointwise  "<prompt> <response> Good answer, Yes or No?" -> "Yes" or "No"; score log P(Yes) - log P(No)
               (Zhang et al. 2024, Generative Verifiers: the reward is the probability of "Yes")
    loss = -log p(verdict | judging text)   over the whole vocabulary, at the verdict token only
With --judge-only nothing is trained: an instruct model judges zero-shot (LLM-as-a-judge, Zheng et al. 2023), its
template rendered through the chat template. The templates, verdict tokens and scores are in common/judge.py, which
ppo_rlhf.py and grpo.py use when --reward-model names a saved judge (DIR/judge.json): pointwise scores each response;
pairwise scores it against the base policy's response to the same prompt, sampled once at the start (AlpacaFarm).
    python rm_generative.py                                   # embedded task, pairwise, the bundled model (minutes)
    python rm_generative.py --mode pointwise                  # Yes/No verification (the bundled model: 1/0)
    python rm_generative.py --model gpt2 --dataset Anthropic/hh-rlhf
    python rm_generative.py --judge-only --model Qwen/Qwen2.5-1.5B-Instruct --dataset trl-lib/ultrafeedback_binarized
    python ppo_rlhf.py --reward-model runs/rm_generative__1__.../model
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

from common import data, judge, models, parallel, runs, task


@dataclass
class Args:
    exp_name: str = "rm_generative"
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
    """the language model that becomes the judge (the SFT model, or an instruct model with --judge-only)"""
    dataset: str = "embedded"
    """'embedded' (pairs labeled by the task's simulated labeler), a .jsonl/.json file, a local dataset folder or a hub
    dataset of pairs (common/data.py lists the layouts read)"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    mode: Literal["pairwise", "pointwise"] = "pairwise"
    """pairwise: the verdict names the better of two responses; pointwise: Yes or No on one response"""
    judge_only: bool = False
    """no training: evaluate (and save) the model as a zero-shot judge (LLM-as-a-judge)"""
    template: str = ""
    """the judging text, with {prompt} and {response_a} {response_b} (pairwise) or {response} (pointwise), and
    optionally {verdict_1} {verdict_2}; '' a default (common/judge.py): plain, or the user's message of the chat
    template where the tokenizer has one"""
    verdict_words: str = ""
    """the two verdicts, space-separated: the first response's and the second's, or Yes and No; each read as the token
    that follows the judging text; '': '1 2' pairwise, 'Yes No' pointwise ('1 0' where the tokenizer lacks Yes)"""
    yes_threshold: Optional[float] = None
    """embedded task, pointwise: the labeler says Yes with probability sigmoid((perceived - threshold) / temperature),
    its pairwise noise against a response at the threshold; None: the median gold of the train responses"""
    pairs_per_prompt: int = 16
    """embedded task only: labeled pairs per train prompt (1566 prompts), as rm_bt.py"""
    num_train_prompts: Optional[int] = None
    """embedded task only: use the first N train prompts (None: all 1566; fewer for quick runs)"""
    eval_pairs_per_prompt: int = 8
    """embedded task only: held-out pairs per eval prompt (174 prompts), the same pairs as rm_bt.py's"""
    labelers: tyro.conf.OmitArgPrefixes[task.LabelerArgs] = field(default_factory=task.LabelerArgs)
    """embedded task only: who labels: --labeler-temperature, --flip-rate, --length-bias, ... (see task.LabelerArgs)"""
    output_dir: str = ""
    """where to save the judge (model, tokenizer, judge.json); '' saves to runs/<run_name>/model"""
    num_epochs: int = 1
    """passes over the judging texts"""
    per_device_batch_size: int = 32
    """judging texts per forward pass on each device"""
    gradient_accumulation_steps: int = 1
    """forward passes per optimizer step; global batch = per_device_batch_size x this x number of processes"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for larger models, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, --lora-alpha, --lora-dropout, --lora-target-modules, --merge-lora (see LoraArgs)"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""
    learning_rate: Optional[float] = None
    """peak learning rate, linear warmup then cosine decay to 0; if not given: 3e-4 for a small model like the bundled
    one, 1e-5 for a pretrained one"""
    warmup_ratio: float = 0.05
    """fraction of steps with linear warmup"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_length: Optional[int] = None
    """longest judging text in tokens (the responses cut to fit, the longest first; counted); if not given: 128 for a
    small model, 2048 for a pretrained one, within its context"""
    max_prompt_length: Optional[int] = None
    """longest prompt inside the judging text, its end kept; if not given: 32 for a small model, 512 for a pretrained
    one"""
    eval_every: int = 200
    """optimizer steps between evaluations on the held-out pairs"""
    calibration_size: int = 1024
    """embedded task only: generator responses on train prompts with their gold reward, on which the score is
    calibrated to gold: eval/alignment_gap (at the first and the last evaluation) and the saved normalization; 0: off"""


def verdict_loss(logits, targets):
    """The next-token loss at the verdict: mean over texts of -log softmax(logits)[verdict], over the whole vocabulary
    (Zhang et al. 2024 and Mahan et al. 2024 fine-tune on the verdict as ordinary language modeling). logits (N, V),
    targets (N,) token ids."""
    return F.cross_entropy(logits.float(), targets)


def two_way_loss(logodds, first):
    """(N,) -log P(the right verdict | one of the two verdicts): logodds (N,) of the first verdict over the second,
    first (N,) bool, the right verdict is the first. The held-out loss, free of the mass on other tokens."""
    return -F.logsigmoid(torch.where(first, logodds, -logodds))


def pointwise_labels(rows, pool, threshold, rng):
    """(yes_chosen, yes_rejected) per pair, bools: the labeler's judgment of each response alone. A labeler drawn from
    the pool says Yes with probability (1 - f) sigmoid((perceived - threshold) / T) + f / 2: its Bradley-Terry noise
    (temperature T, flip rate f) against an imagined response perceived at the threshold. Ties are not modeled."""
    out = []
    for r in rows:
        judged = []
        for k in ("chosen", "rejected"):
            lab = pool.labelers[pool.draw(rng)]
            d = (lab.perceived(r["prompt"], r[k]) - threshold) / lab.temperature
            sigmoid = 0.5 * (1 + math.tanh(d / 2))  # 1 / (1 + e^-d), without overflow at a small temperature
            judged.append(rng.random() < (1 - lab.flip_rate) * sigmoid + lab.flip_rate / 2)
        out.append(tuple(judged))
    return out


def judging_examples(rows, labels, tokenizer, settings, counts):
    """(seqs, first) with the first items of every row, then the second ones: pairwise each pair chosen-first (verdict
    1) and rejected-first (verdict 2); pointwise its chosen and rejected response with their Yes (first) or No labels
    (hub pairs: chosen Yes, rejected No, as Zhang et al.). first (2N,) bool: the right verdict is the first word."""
    seqs, first = [], []
    for order in (0, 1):
        for r, lab in zip(rows, labels):
            if settings["mode"] == "pairwise":
                responses = [r["chosen"], r["rejected"]][:: 1 - 2 * order]
                first.append(order == 0)
            else:
                responses = [r[("chosen", "rejected")[order]]]
                first.append(lab[order])
            seqs.append(judge.judging_ids(tokenizer, settings, r["prompt"], responses, counts))
    return seqs, torch.tensor(first)


def evaluate(model, seqs, first, settings, pad_id, rank=0, world=1, gold_sign=None, calibration=None):
    """Held-out two-way loss, accuracy on the pairs' labels (ties count half), gold accuracy (with gold_sign, gold
    ties left out), position consistency (pairwise: the same response wins in both orders) and, with calibration
    (the scorer's raw scores of calibration and eval responses, and their gold), the alignment gap."""
    model.eval()
    lo = runs.gather_in_order(judge.logodds(model, seqs[rank::world], settings["verdict_ids"], pad_id), rank, world)
    n = len(lo) // 2
    if settings["mode"] == "pairwise":  # lo[:n] with chosen first, lo[n:] with rejected first
        margin = judge.pairwise_score(lo[:n], lo[n:])
    else:  # the chosen response's score against the rejected one's
        margin = lo[:n] - lo[n:]
    out = {"loss": two_way_loss(lo, first).mean().item(),
           "accuracy": ((margin > 0).float() + 0.5 * (margin == 0).float()).mean().item()}
    if settings["mode"] == "pairwise":
        same_winner = (torch.sign(lo[:n]) == -torch.sign(lo[n:])) & (lo[:n] != 0)  # a names the first, then the second
        out["position_consistency"] = same_winner.float().mean().item()
    if gold_sign is not None:
        agree = (torch.sign(margin) * gold_sign + 1) / 2
        out["gold_accuracy"] = agree[gold_sign != 0].mean().item()
    if calibration is not None:
        cal_raw, eval_raw, cal_gold, eval_gold = calibration(model)
        out |= task.alignment_gap(cal_raw, cal_gold, eval_raw, eval_gold)
    model.train()
    return out


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(
        args,
        positive=["pairs_per_prompt", "num_train_prompts", "eval_pairs_per_prompt", "num_epochs",
                  "per_device_batch_size", "gradient_accumulation_steps", "learning_rate", "max_length",
                  "max_prompt_length", "eval_every"],
        non_negative=["weight_decay", "calibration_size"],
        rules=[("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)"), runs.prompt_length_rule(args),
               ("yes_threshold", args.yes_threshold is None or args.mode == "pointwise", "used with --mode pointwise")],
    )
    rank, world, device, dtype = runs.setup_distributed(args.cuda)
    parallel.check(args.sharding, world, device)
    runs.seed_everything(args.seed, args.torch_deterministic)
    say = print if rank == 0 else runs.quiet
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (read and checked before any model loads): the same pairs and held-out pairs as rm_bt.py
    embedded = args.dataset == "embedded"
    rng = random.Random(args.seed + 3)
    if embedded:
        pool = task.labeler_pool(args.labelers)
        train_prompts, eval_prompts = task.split_prompts()
        train_prompts = train_prompts[: args.num_train_prompts]
        train_rows = task.make_pairs(train_prompts, pool, args.pairs_per_prompt, args.seed)
        eval_rows = task.make_pairs(eval_prompts, pool, args.eval_pairs_per_prompt, args.seed + 1)
        # and the eval prompts' pairs of responses from policies trained by RL: off the training distribution
        ood_rows, ood_ceiling = task.ood_pairs(pool, args.eval_pairs_per_prompt, args.seed + 5)
        task.report_ties(train_rows, train_prompts, args.pairs_per_prompt, "train pairs", say)
        task.report_ties(eval_rows, eval_prompts, args.eval_pairs_per_prompt, "eval pairs", say)
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "pairwise", args.dataset_config, args.dataset_train_split,
                                               args.dataset_test_split, verbose=rank == 0)
        ood_rows, ood_ceiling = [], None
    data.check_eval_rows(eval_rows, args.dataset, "pairs")
    if args.mode == "pointwise" and embedded:  # the labeler judges each response alone (pointwise_labels)
        gold = sorted(task.gold_reward(r["prompt"], r[k]) for r in train_rows for k in ("chosen", "rejected"))
        threshold = gold[len(gold) // 2] if args.yes_threshold is None else args.yes_threshold
        train_labels = pointwise_labels(train_rows, pool, threshold, rng)
        eval_labels = pointwise_labels(eval_rows, pool, threshold, rng)
        yes = sum(a + b for a, b in train_labels) / (2 * len(train_labels))
        say(f"pointwise labels: Yes above gold {threshold:.3f} (perceived, with the labeler's noise): {yes:.1%} Yes")
    else:  # pairwise, or hub pairs read pointwise: chosen Yes, rejected No
        train_labels, eval_labels = [(True, False)] * len(train_rows), [(True, False)] * len(eval_rows)

    # The judge starts from the language model as it is: its unembedding reads out the verdict
    tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
    model = models.disable_dropout(models.load_causal_lm(args.model, torch.float32, args.trust_remote_code))
    lengths = {"max_length": (128, 2048), "max_prompt_length": (32, 512)}  # (small model, pretrained model)
    models.fit_defaults(args, model, tokenizer, (3e-4, 1e-5), lengths, say)
    settings = judge.settings(tokenizer, args.mode, args.template, args.verdict_words, args.max_length,
                              args.max_prompt_length, args.model)
    say(f"{args.mode} judge, verdicts {settings['verdict_words']} (tokens {settings['verdict_ids']}), template "
        f"{settings['template']!r}")
    model = models.prepare(model, args.gradient_checkpointing, args.lora, dtype, device)
    ddp_model = parallel.wrap(model, args.sharding, world, dtype) if world > 1 else model
    scorer = ddp_model if parallel.sharded(model) else model  # a sharded model is called through its root
    pad_id, ids = tokenizer.pad_token_id, torch.tensor(settings["verdict_ids"], device=device)

    counts = Counter()
    train_seqs, train_first = judging_examples(train_rows, train_labels, tokenizer, settings, counts)
    data.report(counts, "train judging texts", say)
    counts = Counter()
    eval_seqs, eval_first = judging_examples(eval_rows, eval_labels, tokenizer, settings, counts)
    data.report(counts, "eval judging texts", say)
    ood_seqs, ood_first = judging_examples(ood_rows, [(True, False)] * len(ood_rows), tokenizer, settings, Counter())

    # Ground truth where it is known (as rm_bt.py): gold preference, the labeler's ceiling, the alignment gap
    gold_sign, ceiling, calibration = None, None, None
    if all(task.is_task_prompt(r["prompt"]) and isinstance(r["chosen"], str) and isinstance(r["rejected"], str)
           for r in eval_rows):
        gaps = [task.gold_reward(r["prompt"], r["chosen"]) - task.gold_reward(r["prompt"], r["rejected"])
                for r in eval_rows]
        gold_sign = torch.tensor([math.copysign(1, d) if d else 0.0 for d in gaps])
    if embedded:
        ceiling = sum(pool.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in eval_rows) / len(eval_rows)
        say(f"labeler's ceiling on the {len(eval_rows)} eval pairs: {ceiling:.3f}")
    if embedded and args.calibration_size:
        # absolute gold of generator responses on train prompts; pairwise, each scored against a generator response
        # to its prompt, standing in for the base policy's response that PPO compares with
        cal_rows = task.calibration_rows(train_prompts, args.calibration_size, args.seed + 4)
        references = {p: task.sample_response(rng, p) for p in train_prompts + eval_prompts}
        cal_gold = [task.gold_reward(r["prompt"], r["completion"]) for r in cal_rows]
        eval_responses = [(r["prompt"], r[k]) for k in ("chosen", "rejected") for r in eval_rows]
        eval_gold = [task.gold_reward(p, y) for p, y in eval_responses]

        def calibration_scores(m):
            """Raw scores of the calibration and the eval responses (each rank scores its share)."""
            out = []
            for pairs in ([(r["prompt"], r["completion"]) for r in cal_rows], eval_responses):
                mine = pairs[rank::world]
                prompts, responses = [p for p, _ in mine], [y for _, y in mine]
                refs = [references[p] for p in prompts] if args.mode == "pairwise" else None
                raw = judge.raw_scores(m, tokenizer, settings, prompts, responses, refs)
                out.append(runs.gather_in_order(raw, rank, world).tolist())
            return out[0], out[1], cal_gold, eval_gold

        calibration = calibration_scores

    global_batch = args.per_device_batch_size * args.gradient_accumulation_steps * world
    num_steps = 0 if args.judge_only else \
        args.num_epochs * len(runs.global_batches(list(range(len(train_seqs))), global_batch, world))
    optimizer = torch.optim.AdamW(models.trainable(model), lr=args.learning_rate, weight_decay=args.weight_decay,
                                  fused=runs.fused_adam(device))
    scheduler = runs.warmup_cosine(optimizer, int(args.warmup_ratio * num_steps), max(num_steps, 1))

    def log_eval(step):
        with autocast, parallel.gathered(scorer):
            ev = evaluate(scorer, eval_seqs, eval_first, settings, pad_id, rank, world, gold_sign,
                          calibration if step in (0, num_steps) else None)  # the gap: first and last evaluation
            if ood_rows and step in (0, num_steps):  # the RL policies' responses (task.ood_pairs)
                ev["ood_accuracy"] = evaluate(scorer, ood_seqs, ood_first, settings, pad_id, rank, world)["accuracy"]
                ev["ood_ceiling"] = ood_ceiling
        runs.log_scalars(writer, ev, step, prefix="eval/")
        if ceiling is not None:
            writer.add_scalar("eval/ceiling", ceiling, step)
        return ev

    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    ev = before = log_eval(0)
    say(f"before training: eval loss {before['loss']:.3f}, accuracy {before['accuracy']:.3f}")
    step, start = 0, time.time()
    bar = tqdm(total=num_steps, desc="rm_generative", disable=rank != 0)
    for epoch in range(args.num_epochs if num_steps else 0):
        # the same global batches on every rank (same seed); each rank takes its share of each
        order = random.Random(args.seed + epoch).sample(range(len(train_seqs)), len(train_seqs))
        batches = runs.global_batches(order, global_batch, world)
        for i, idx in enumerate(batches):
            micro = runs.micro_batches(idx, rank, world, args.per_device_batch_size)
            optimizer.zero_grad()
            losses, right = [], []
            for k, (part, weight) in enumerate(micro):
                targets = torch.where(train_first[part].to(device), ids[0], ids[1])  # (b,) the verdict token ids
                with parallel.accumulating(ddp_model, k == len(micro) - 1), autocast:
                    logits = judge.verdict_logits(ddp_model, [train_seqs[j] for j in part], pad_id)  # (b, V)
                    loss = verdict_loss(logits, targets)
                    (loss * weight).backward()
                losses.append(loss.item() * weight)
                lo = judge.verdict_logodds(logits.detach(), settings["verdict_ids"])
                right.append(((lo > 0) == train_first[part].to(device)).float().mean().item() * weight)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            logged = runs.reduce_mean({"loss/train": sum(losses), "verdicts/accuracy": sum(right)})
            runs.log_scalars(writer, logged, step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/epoch", epoch + (i + 1) / len(batches), step)
            writer.add_scalar("charts/texts_per_second", step * global_batch / (time.time() - start), step)
            if step % args.eval_every == 0 or step == num_steps:
                ev = log_eval(step)
                bar.set_postfix(loss=f"{logged['loss/train']:.3f}", eval_acc=f"{ev['accuracy']:.3f}")
    bar.close()
    train_time = time.time() - start

    # Normalization for PPO: calibrated to gold on the embedded task; else pointwise a bias so that the train
    # responses score mean 0, pairwise none (the reference response itself scores 0: s(a, a) = 0)
    settings["reward_mean"], settings["reward_std"] = 0.0, 1.0
    if calibration is not None and ev["calibration_a"] > 0:
        a, b = ev["calibration_a"], ev["calibration_b"]  # on gold's scale: (raw - mean) / std = a * raw + b
        settings["reward_mean"], settings["reward_std"] = -b / a, 1 / a
    elif args.mode == "pointwise":
        sample = [(r["prompt"], r[k]) for r in train_rows[:512] for k in ("chosen", "rejected")][rank::world]
        scorer.eval()
        with autocast, parallel.gathered(scorer):
            raw = judge.raw_scores(scorer, tokenizer, settings, [p for p, _ in sample], [y for _, y in sample])
        settings["reward_mean"] = runs.gather_in_order(raw, rank, world).mean().item()
    model = parallel.plain(model, rank)  # --fsdp: the whole model gathered to rank 0
    if rank != 0:  # rank 0 alone saves and reports
        runs.finish(writer)
        raise SystemExit(0)
    out_dir = models.save(model, tokenizer, args.output_dir, run_name, args.lora.merge_lora)
    judge.save(settings, out_dir)
    summary = f"rm_generative ({args.mode}): eval accuracy {before['accuracy']:.3f} -> {ev['accuracy']:.3f}"
    if ceiling is not None:
        summary += f" (labeler's ceiling {ceiling:.3f}, {100 * (ceiling - ev['accuracy']):.1f} points below)"
    if gold_sign is not None:
        summary += f", gold accuracy {ev['gold_accuracy']:.3f}"
    if ood_rows:
        summary += f", off-distribution accuracy {ev['ood_accuracy']:.3f} (ceiling {ood_ceiling:.3f})"
    if args.mode == "pairwise":
        summary += f", position consistency {ev['position_consistency']:.3f}"
    if calibration is not None:
        summary += f", alignment gap {ev['alignment_gap']:.3f} (rank corr {ev['rank_correlation']:.3f})"
    summary += f", eval loss {ev['loss']:.3f}, {train_time:.0f}s on {world} process(es), saved to {out_dir}"
    print(summary)
    runs.finish(writer)
