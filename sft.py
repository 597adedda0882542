"""Supervised fine-tuning on demonstrations: the first step of the RLHF pipeline (InstructGPT, step 1).

Next-token cross-entropy on the completion tokens only (the prompt is context, not a target).
With the defaults it trains the embedded task's small base policy from scratch on 2 CPU cores:
    python sft.py                                        # a tiny GPT-2 with the task's tokenizer
    python sft.py --output-dir common/bundled_model      # how the bundled base policy was made
    python sft.py --model gpt2 --dataset demos.jsonl     # any causal LM, any {"prompt", "completion"} data
    torchrun --nproc_per_node 4 sft.py --model gpt2 ...  # data parallel (DDP) on 4 GPUs
"""

import random
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from common import data, models, parallel, runs, sampling, task


@dataclass
class Args:
    exp_name: str = "sft"
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

    model: str = "scratch"
    """'scratch' (a tiny GPT-2 with the embedded task's tokenizer: how the bundled model is made), or a hub name or
    local path"""
    dataset: str = "embedded"
    """'embedded' (demonstrations from the task's response generator), a .jsonl/.json file, a local dataset folder
    or a hub dataset of {"prompt", "completion"} or {"messages"} rows"""
    dataset_config: Optional[str] = None
    """the dataset's configuration (subset), where it has several"""
    dataset_train_split: str = "train"
    """the split to train on"""
    dataset_test_split: Optional[str] = None
    """the split to evaluate on; if not given: test, else validation, else 5% of the prompts held out"""
    demos_per_prompt: int = 2
    """embedded task only: demonstrations per train prompt"""
    output_dir: str = ""
    """where to save the model and tokenizer; '' saves to runs/<run_name>/model"""
    num_epochs: int = 16
    """passes over the demonstrations"""
    per_device_batch_size: int = 32
    """sequences per forward pass on each device"""
    gradient_accumulation_steps: int = 1
    """forward passes per optimizer step; global batch = per_device_batch_size x this x number of processes"""
    gradient_checkpointing: bool = False
    """recompute activations in the backward pass: less memory for larger models, about 30% slower"""
    lora: tyro.conf.OmitArgPrefixes[models.LoraArgs] = field(default_factory=models.LoraArgs)
    """LoRA: --use-peft, --lora-r, --lora-alpha, --lora-dropout, --lora-target-modules, --merge-lora (see LoraArgs)"""
    sharding: tyro.conf.OmitArgPrefixes[parallel.ParallelArgs] = field(default_factory=parallel.ParallelArgs)
    """under torchrun: --fsdp, --fsdp-cpu-offload (see common/parallel.py); DDP without them"""
    learning_rate: Optional[float] = None
    """peak learning rate; if not given: 2e-3 for a small model (from scratch, or the bundled one), 2e-5 for a
    pretrained one (TRL)"""
    warmup_ratio: float = 0.05
    """fraction of steps with linear warmup, then cosine decay to 0"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_length: Optional[int] = None
    """longest prompt + completion in tokens, longer ones truncated (counted); if not given: 96 for a small model,
    1024 for a pretrained one (TRL), within its context"""
    max_prompt_length: Optional[int] = None
    """longest prompt in tokens, its end kept; if not given: 32 for a small model, 512 for a pretrained one"""
    eval_every: int = 200
    """optimizer steps between evaluations"""
    max_new_tokens: int = 64
    """longest sampled response at evaluation"""
    temperature: float = 1.0
    """sampling temperature at evaluation"""


def sft_loss(logits, input_ids, completion_mask):
    """Mean next-token cross-entropy over completion tokens: token t is predicted from logits at t - 1."""
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    token_logp = logp.gather(-1, input_ids[:, 1:, None]).squeeze(-1)  # (B, T-1)
    mask = completion_mask[:, 1:].float()
    return -(token_logp * mask).sum() / mask.sum()


def tiny_gpt2(tokenizer):
    """The bundled model's architecture: a GPT-2 with 4 layers, 4 heads, width 128 (0.83M parameters)."""
    config = GPT2Config(
        vocab_size=len(tokenizer), n_positions=128, n_embd=128, n_layer=4, n_head=4,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


@torch.no_grad()
def evaluate(model, tokenizer, batches, eval_prompts, eval_queries, args, autocast, rank, world):
    """Held-out loss on demonstrations, and samples on eval prompts graded by the gold reward (embedded task).
    Each rank takes its share of the batches and prompts; the means are taken over all of them."""
    model.eval()
    with autocast, parallel.gathered(model):  # --fsdp: gathered once, then any number of forwards on each rank
        losses = [sft_loss(model(input_ids=ids, attention_mask=am).logits, ids, cm).item()
                  for ids, am, cm in batches[rank::world]]
    out = runs.global_means({"eval/loss": losses})  # a process with no batch (fewer than processes) adds nothing
    if eval_prompts:
        prompts = eval_prompts[rank::world]
        queries = eval_queries[rank::world]
        with parallel.gathered(model):
            responses = sampling.sample_completions(model, tokenizer, queries, args.max_new_tokens, args.temperature)
        out |= runs.global_means(task.grades(prompts, responses, prefix="eval/"))
        out["samples"] = list(zip(prompts[:8], responses[:8]))
    model.train()
    return out


if __name__ == "__main__":
    args = tyro.cli(Args, description=__doc__)
    runs.check_args(
        args,
        positive=["demos_per_prompt", "num_epochs", "per_device_batch_size", "gradient_accumulation_steps",
                  "learning_rate", "max_length", "max_prompt_length", "eval_every", "max_new_tokens", "temperature"],
        non_negative=["weight_decay"],
        rules=[("warmup_ratio", 0 <= args.warmup_ratio < 1, "in [0, 1)"),
               runs.prompt_length_rule(args)],
    )
    if args.model == "scratch" and args.lora.use_peft:
        runs.stop("--use-peft adapts a pretrained model: pass --model (from scratch, every weight is trained)")
    rank, world, device, dtype = runs.setup_distributed(args.cuda)
    parallel.check(args.sharding, world, device)
    runs.seed_everything(args.seed, args.torch_deterministic)  # the same on every rank: same init, same data order
    # weights stay fp32 (AdamW needs them); bf16 only inside autocast on GPUs that support it
    autocast = torch.autocast(device.type, dtype=dtype) if dtype != torch.float32 else nullcontext()

    # Data (read and checked before any model loads): demonstrations; the eval split holds prompts never trained on
    if args.dataset == "embedded":
        train_prompts, eval_prompts = task.split_prompts()
        train_rows = task.make_sft(train_prompts, args.demos_per_prompt, seed=args.seed)
        eval_rows = task.make_sft(eval_prompts, 1, seed=args.seed + 1)
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "sft", args.dataset_config, args.dataset_train_split,
                                               args.dataset_test_split, verbose=rank == 0)
        eval_prompts = [r["prompt"] for r in eval_rows if task.is_task_prompt(r["prompt"])]
    data.check_eval_rows(eval_rows, args.dataset, "demonstrations")

    # Model and tokenizer
    if args.model == "scratch":
        tokenizer = task.build_tokenizer()
        model = tiny_gpt2(tokenizer)
    else:
        tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
        model = models.load_causal_lm(args.model, torch.float32, args.trust_remote_code)
    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}  # (small model, pretrained model)
    models.fit_defaults(args, model, tokenizer, (2e-3, 2e-5), lengths, print if rank == 0 else runs.quiet)
    lr = args.learning_rate
    # --gradient-checkpointing; --use-peft: adapters on, the model's own weights frozen
    model = models.prepare(model, args.gradient_checkpointing, args.lora, dtype, device)
    # DDP (gradients averaged over ranks in backward) or, with --fsdp, the model sharded in place
    ddp_model = parallel.wrap(model, args.sharding, world, dtype)
    torch.manual_seed(args.seed + rank)  # after the (identical) init: each rank samples differently

    train = data.encode_demonstrations(tokenizer, train_rows, args.max_length, args.max_prompt_length,
                                       "train demonstrations", rank == 0)
    eval_encoded = data.encode_demonstrations(tokenizer, eval_rows, args.max_length, args.max_prompt_length,
                                              "eval demonstrations", rank == 0)
    eval_batches = [data.collate(eval_encoded[i : i + args.per_device_batch_size], tokenizer.pad_token_id, device)
                    for i in range(0, len(eval_encoded), args.per_device_batch_size)]
    eval_queries = data.encode_prompts(tokenizer, eval_prompts, args.max_prompt_length, "eval prompts for sampling",
                                       rank == 0)
    global_batch = args.per_device_batch_size * args.gradient_accumulation_steps * world
    num_steps = args.num_epochs * len(runs.global_batches(list(range(len(train))), global_batch, world))
    # tokens each demonstration adds to the loss (the first is never one)
    targets = [sum(mask[1:]) for _, mask in train]
    warmup = int(args.warmup_ratio * num_steps)

    optimizer = torch.optim.AdamW(models.trainable(model), lr=lr, weight_decay=args.weight_decay,
                                  fused=runs.fused_adam(device))
    scheduler = runs.warmup_cosine(optimizer, warmup, num_steps)

    run_name, writer = runs.make_run(args.exp_name, args.seed, args, rank)  # only now: a failed start leaves no run
    before = evaluate(model, tokenizer, eval_batches, eval_prompts, eval_queries, args, autocast, rank, world)
    if rank == 0:
        gold = f", gold {before['eval/gold']:.3f}" if "eval/gold" in before else ""
        print(f"before training: eval loss {before['eval/loss']:.3f}" + gold)
    rng = random.Random(args.seed)
    step, start, tokens = 0, time.time(), 0
    bar = tqdm(total=num_steps, desc="sft", disable=rank != 0)
    for epoch in range(args.num_epochs):
        order = list(range(len(train)))
        rng.shuffle(order)  # the same order on every rank
        for batch in runs.global_batches(order, global_batch, world):
            # this rank's share in micro-batches, each loss weighted by its share of the global batch's target tokens:
            # the step is the token mean over the global batch however unevenly the batch splits
            micro = runs.micro_batches(batch, rank, world, args.per_device_batch_size, targets)
            optimizer.zero_grad()
            loss_sum = 0.0
            for k, (idx, weight) in enumerate(micro):
                ids, am, cm = data.collate([train[i] for i in idx], tokenizer.pad_token_id, device)
                # gradients are reduced over ranks only on the last micro-batch of the step
                with parallel.accumulating(ddp_model, k == len(micro) - 1), autocast:
                    loss = sft_loss(ddp_model(input_ids=ids, attention_mask=am).logits, ids, cm)
                    (loss * weight).backward()
                loss_sum += loss.item() * weight
                tokens += int(am.sum())
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            bar.update(1)
            # the ranks' weighted sums averaged: the global mean
            loss_sum = runs.reduce_mean({"loss": loss_sum})["loss"]
            writer.add_scalar("train/loss", loss_sum, step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/tokens_per_second", tokens * world / (time.time() - start), step)
            if step % args.eval_every == 0 or step == num_steps:
                ev = evaluate(model, tokenizer, eval_batches, eval_prompts, eval_queries, args, autocast, rank, world)
                runs.log_scalars(writer, ev, step)
                bar.set_postfix(loss=f"{loss_sum:.3f}", eval_loss=f"{ev['eval/loss']:.3f}")
    bar.close()

    after = ev
    model = parallel.plain(model, rank)  # --fsdp: the whole model gathered to rank 0
    if rank == 0:
        if "samples" in after:
            writer.add_text("samples", "\n\n".join(f"**{p}** {r}" for p, r in after["samples"]), step)
            for p, r in after["samples"][:4]:
                print(f"  {p} -> {r}")
        out_dir = models.save(model, tokenizer, args.output_dir, run_name, args.lora.merge_lora)
        summary = f"sft: eval loss {before['eval/loss']:.3f} -> {after['eval/loss']:.3f}"
        if "eval/gold" in after:
            summary += (f", eval gold {before['eval/gold']:.3f} -> {after['eval/gold']:.3f} (best {task.BEST_GOLD}), "
                        f"states an answer {after['eval/states_answer']:.0%}, correct {after['eval/correct']:.0%}")
        print(summary + f", {time.time() - start:.0f}s on {world} process(es), saved to {out_dir}")
    runs.finish(writer)
