"""TRL's side of bench_trl.py: one RewardTrainer or DPOTrainer run on a local model and a .jsonl file of pairs, or
(under TRL 1.12, the last release with it) one PPOTrainer run on a .jsonl file of prompts with a reward model.

Prints one JSON line with the samples per second of trainer.train(). Run by bench_trl.py (under /usr/bin/time, which
measures the peak memory of the whole process), in an environment with experiments/requirements.txt installed.
"""

import argparse
import json
import time

import torch

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("algo", choices=["reward", "dpo", "ppo"])
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--learning-rate", type=float, default=1e-4)
p.add_argument("--max-length", type=int, default=96)
p.add_argument("--beta", type=float, default=0.5)
p.add_argument("--precompute-ref", action="store_true")
p.add_argument("--seed", type=int, default=1)
p.add_argument("--no-gradient-checkpointing", action="store_true", help="turn off TRL's default (on since TRL 0.2x)")
p.add_argument("--reward-model", default="", help="ppo: the reward model directory (also the value model's start)")
p.add_argument("--total-episodes", type=int, default=512)
p.add_argument("--response-length", type=int, default=64)
a = p.parse_args()

tok = AutoTokenizer.from_pretrained(a.model)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
ds = load_dataset("json", data_files=a.data, split="train")
# CPU, fp32 (the models load in fp32 whatever dtype they were saved in), no evaluation, no checkpoints, no logging:
# only the training steps are timed
common = dict(output_dir="/tmp/trl_bench_out", per_device_train_batch_size=a.batch_size, learning_rate=a.learning_rate,
              num_train_epochs=1, logging_steps=10**9, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
              seed=a.seed, dataloader_num_workers=0, gradient_checkpointing=not a.no_gradient_checkpointing)
samples = len(ds)
if a.algo == "reward":
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1, dtype=torch.float32)
    model.config.pad_token_id = tok.pad_token_id
    trainer = RewardTrainer(model=model, args=RewardConfig(max_length=a.max_length, **common), train_dataset=ds,
                            processing_class=tok)
elif a.algo == "dpo":
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    cfg = DPOConfig(beta=a.beta, precompute_ref_log_probs=a.precompute_ref, max_length=a.max_length, **common)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)
else:  # rollouts of --batch-size prompts, 2 minibatches, 4 PPO epochs: ppo_rlhf.py's defaults
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    policy, ref = (AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32) for _ in range(2))
    rm, vm = (AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, dtype=torch.float32)
              for _ in range(2))
    ds = ds.map(lambda r: {"input_ids": tok(r["prompt"]).input_ids}, remove_columns=ds.column_names)
    # TRL 1.12: rollout = per_device_train_batch_size (--batch-size) x gradient_accumulation_steps, split into
    # num_mini_batches; accumulation steps the optimizer once per that many minibatches, so its default of 1 gives
    # ours: one step per minibatch
    ppo_common = {k: v for k, v in common.items() if k != "learning_rate"}  # PPO's own learning rate below
    cfg = PPOConfig(total_episodes=a.total_episodes, response_length=a.response_length, num_mini_batches=2,
                    num_ppo_epochs=4, local_rollout_forward_batch_size=a.batch_size, stop_token="eos",
                    missing_eos_penalty=1.0, kl_coef=0.05, learning_rate=3e-4, num_sample_generations=0, **ppo_common)
    trainer = PPOTrainer(args=cfg, processing_class=tok, model=policy, ref_model=ref, reward_model=rm, value_model=vm,
                         train_dataset=ds, eval_dataset=ds.select(range(8)))
    samples = a.total_episodes

start = time.time()
trainer.train()  # with --precompute-ref the reference pass runs inside train(), as ours runs before its loop
elapsed = time.time() - start
trained = policy if a.algo == "ppo" else model  # whether TRL did recompute activations (its config's default)
print(json.dumps({"samples_per_second": samples / elapsed, "seconds": elapsed,
                  "gradient_checkpointing": bool(getattr(trained, "is_gradient_checkpointing", False))}))
