"""Supervised fine-tuning on demonstrations: the first step of the RLHF pipeline (InstructGPT, step 1).

Next-token cross-entropy on the completion tokens only (the prompt is context, not a target).
With the defaults it trains the embedded task's small base policy from scratch on 2 CPU cores:
    python sft.py                                        # a tiny GPT-2 with the task's tokenizer
    python sft.py --output-dir common/bundled_model      # how the bundled base policy was made
    python sft.py --model gpt2 --dataset demos.jsonl     # any causal LM, any {"prompt", "completion"} data
"""

import math
import os
import random
import statistics
import time
from collections import Counter
from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
import tyro
from tqdm import tqdm
from transformers import GPT2Config, GPT2LMHeadModel

from common import data, models, task


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

    model: str = "scratch"
    """'scratch' (a tiny GPT-2 with the embedded task's tokenizer: how the bundled model is made), or a hub name or local path"""
    dataset: str = "embedded"
    """'embedded' (demonstrations from the task's response generator), a local .jsonl/.json file, or a hub dataset"""
    demos_per_prompt: int = 2
    """embedded task only: demonstrations per train prompt"""
    output_dir: str = ""
    """where to save the model and tokenizer (default runs/<run_name>/model)"""
    num_epochs: int = 16
    """passes over the demonstrations"""
    batch_size: int = 32
    """sequences per optimizer step"""
    learning_rate: Optional[float] = None
    """peak learning rate (default 2e-3 from scratch, 2e-5 for a pretrained model)"""
    warmup_ratio: float = 0.05
    """fraction of steps with linear warmup, then cosine decay to 0"""
    weight_decay: float = 0.0
    """AdamW weight decay"""
    max_length: int = 96
    """longest prompt + completion in tokens; longer ones are truncated (counted)"""
    max_prompt_length: int = 32
    """longest prompt in tokens; its end is kept"""
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
        vocab_size=len(tokenizer), n_positions=128, n_embd=128, n_layer=4, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
        attn_pdrop=0.0, bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    return GPT2LMHeadModel(config)


@torch.no_grad()
def evaluate(model, tokenizer, batches, eval_prompts, args):
    """Held-out loss on demonstrations, and samples on eval prompts graded by the gold reward (embedded task)."""
    model.eval()
    losses = [sft_loss(model(input_ids=ids, attention_mask=am).logits, ids, cm).item() for ids, am, cm in batches]
    out = {"eval/loss": statistics.mean(losses)}
    if eval_prompts:
        responses = models.sample_completions(model, tokenizer, eval_prompts, args.max_new_tokens, args.temperature)
        out["eval/gold"] = statistics.mean(task.gold_reward(p, r) for p, r in zip(eval_prompts, responses))
        out["eval/states_answer"] = statistics.mean(bool(task.gold_components(p, r)["helpful"] > 0) for p, r in zip(eval_prompts, responses))
        out["eval/correct"] = statistics.mean(task.gold_components(p, r)["truthful"] > 0 for p, r in zip(eval_prompts, responses))
        out["samples"] = list(zip(eval_prompts[:8], responses[:8]))
    model.train()
    return out


def make_batches(rows, tokenizer, args, device, shuffle_rng=None):
    counts = Counter()
    encoded = [data.encode(tokenizer, r["prompt"], r["completion"], args.max_length, args.max_prompt_length, counts) for r in rows]
    if shuffle_rng is not None:
        shuffle_rng.shuffle(encoded)
    batches = []
    for i in range(0, len(encoded), args.batch_size):
        chunk = encoded[i : i + args.batch_size]
        ids = data.pad([e[0] for e in chunk], tokenizer.pad_token_id).to(device)
        am = data.pad([[1] * len(e[0]) for e in chunk], 0).to(device)
        cm = data.pad([e[1] for e in chunk], 0).to(device)
        batches.append((ids, am, cm))
    return batches, counts


if __name__ == "__main__":
    args = tyro.cli(Args)
    run_name, writer = models.make_run(args.exp_name, args.seed, args)
    models.seed_everything(args.seed, args.torch_deterministic)
    device, dtype = models.device_and_dtype(args.cuda)

    # Model and tokenizer
    if args.model == "scratch":
        tokenizer = task.build_tokenizer()
        model = tiny_gpt2(tokenizer)
    else:
        tokenizer = models.load_tokenizer(args.model, args.trust_remote_code)
        model = models.load_causal_lm(args.model, dtype, args.trust_remote_code)
    model.to(device)
    lr = args.learning_rate or (2e-3 if args.model == "scratch" else 2e-5)

    # Data: demonstrations; the eval split holds prompts never trained on
    if args.dataset == "embedded":
        train_prompts, eval_prompts = task.split_prompts()
        train_rows = task.make_sft(train_prompts, args.demos_per_prompt, seed=args.seed)
        eval_rows = task.make_sft(eval_prompts, 1, seed=args.seed + 1)
    else:
        train_rows, eval_rows = data.load_rows(args.dataset, "sft")
        eval_prompts = [r["prompt"] for r in eval_rows if task.correct_answer(str(r["prompt"])) is not None]
    rng = random.Random(args.seed)
    eval_batches, eval_counts = make_batches(eval_rows, tokenizer, args, device)
    data.report(eval_counts, "eval demonstrations")
    steps_per_epoch = math.ceil(len(train_rows) / args.batch_size)
    num_steps = args.num_epochs * steps_per_epoch
    warmup = int(args.warmup_ratio * num_steps)

    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=args.weight_decay)
    schedule = lambda s: min(1.0, (s + 1) / max(1, warmup)) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / num_steps)))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)

    before = evaluate(model, tokenizer, eval_batches, eval_prompts, args)
    print(f"before training: eval loss {before['eval/loss']:.3f}" + (f", gold {before['eval/gold']:.3f}" if "eval/gold" in before else ""))
    model.train()
    step, start, tokens = 0, time.time(), 0
    bar = tqdm(total=num_steps, desc="sft")
    for epoch in range(args.num_epochs):
        batches, counts = make_batches(train_rows, tokenizer, args, device, shuffle_rng=rng)
        if epoch == 0:
            data.report(counts, "train demonstrations")
        for ids, am, cm in batches:
            loss = sft_loss(model(input_ids=ids, attention_mask=am).logits, ids, cm)
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += int(am.sum())
            bar.update(1)
            writer.add_scalar("train/loss", loss.item(), step)
            writer.add_scalar("charts/learning_rate", scheduler.get_last_lr()[0], step)
            writer.add_scalar("charts/tokens_per_second", tokens / (time.time() - start), step)
            if step % args.eval_every == 0 or step == num_steps:
                ev = evaluate(model, tokenizer, eval_batches, eval_prompts, args)
                for k, v in ev.items():
                    if k != "samples":
                        writer.add_scalar(k, v, step)
                bar.set_postfix(loss=f"{loss.item():.3f}", eval_loss=f"{ev['eval/loss']:.3f}")
    bar.close()

    after = ev
    if "samples" in after:
        writer.add_text("samples", "\n\n".join(f"**{p}** {r}" for p, r in after["samples"]), step)
        for p, r in after["samples"][:4]:
            print(f"  {p} -> {r}")
    out_dir = args.output_dir or os.path.join("runs", run_name, "model")
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    summary = f"sft: eval loss {before['eval/loss']:.3f} -> {after['eval/loss']:.3f}"
    if "eval/gold" in after:
        summary += (f", eval gold {before['eval/gold']:.3f} -> {after['eval/gold']:.3f} (best {task.BEST_GOLD}), "
                    f"states an answer {after['eval/states_answer']:.0%}, correct {after['eval/correct']:.0%}")
    print(summary + f", {time.time() - start:.0f}s, saved to {out_dir}")
    writer.close()
