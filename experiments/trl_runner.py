"""TRL's side of bench_trl.py: one RewardTrainer or DPOTrainer run on a local model and a .jsonl file of pairs.

Prints one JSON line with the samples per second of trainer.train(). Run by bench_trl.py (under /usr/bin/time, which
measures the peak memory of the whole process), in an environment with experiments/requirements.txt installed.
"""

import argparse
import json
import time

from datasets import load_dataset
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

p = argparse.ArgumentParser()
p.add_argument("algo", choices=["reward", "dpo"])
p.add_argument("--model", required=True)
p.add_argument("--data", required=True)
p.add_argument("--batch-size", type=int, default=16)
p.add_argument("--learning-rate", type=float, default=1e-4)
p.add_argument("--max-length", type=int, default=96)
p.add_argument("--beta", type=float, default=0.5)
p.add_argument("--precompute-ref", action="store_true")
p.add_argument("--seed", type=int, default=1)
a = p.parse_args()

tok = AutoTokenizer.from_pretrained(a.model)
if tok.pad_token is None:
    tok.pad_token = tok.eos_token
ds = load_dataset("json", data_files=a.data, split="train")
# CPU, fp32, no evaluation, no checkpoints, no logging: only the training steps are timed
common = dict(output_dir="/tmp/trl_bench_out", per_device_train_batch_size=a.batch_size, learning_rate=a.learning_rate,
              num_train_epochs=1, logging_steps=10**9, save_strategy="no", report_to="none", use_cpu=True, bf16=False,
              seed=a.seed, dataloader_num_workers=0, max_length=a.max_length)
if a.algo == "reward":
    from trl import RewardConfig, RewardTrainer

    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=1)
    model.config.pad_token_id = tok.pad_token_id
    trainer = RewardTrainer(model=model, args=RewardConfig(**common), train_dataset=ds, processing_class=tok)
else:
    from trl import DPOConfig, DPOTrainer

    model = AutoModelForCausalLM.from_pretrained(a.model)
    cfg = DPOConfig(beta=a.beta, precompute_ref_log_probs=a.precompute_ref, **common)
    trainer = DPOTrainer(model=model, args=cfg, train_dataset=ds, processing_class=tok)

start = time.time()
trainer.train()  # with --precompute-ref the reference pass runs inside train(), as ours runs before its loop
elapsed = time.time() - start
print(json.dumps({"samples_per_second": len(ds) / elapsed, "seconds": elapsed}))
