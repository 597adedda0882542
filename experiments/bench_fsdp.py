"""What each process holds with and without --fsdp: the README's "Scale" table.

    python experiments/bench_fsdp.py                      # GPT-2 124M's shape, 2 processes (2 CPUs: ~2 minutes)
    python experiments/bench_fsdp.py --shape 1b --nproc 8 # TinyLlama-1.1B's shape on 8 GPUs

For each engine (DDP: a full copy per process; FSDP2: parameters, gradients and Adam state split, common/parallel.py
as every script uses it) the shape's causal LM is built here with random weights (nothing downloaded), wrapped as
the scripts wrap it (parallel.wrap), and trained for a few AdamW steps on random tokens under torchrun. Each process
reports the bytes of the trained model it holds after a step (parallel.memory_per_rank: its shards under FSDP),
what it holds between steps (CPU: the resident set with freed blocks returned to the system, Python and torch
included; GPU: memory_allocated), its peak since the start (getrusage's; max_memory_allocated: on CPU it includes the
whole model each process builds before sharding and the activations of a step) and the median step time.
"""

import ctypes
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import parallel, runs  # noqa: E402

SHAPES = {  # GPT-2 124M's config; TinyLlama-1.1B's config.json
    "tiny": dict(arch="gpt2", vocab_size=512, n_embd=64, n_layer=2, n_head=4, n_positions=128),
    "gpt2": dict(arch="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "1b": dict(arch="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
}


@dataclass
class Args:
    shape: Literal["tiny", "gpt2", "1b"] = "gpt2"
    """the model's shape"""
    nproc: int = 2
    """processes (torchrun --nproc-per-node)"""
    batch_size: int = 4
    """sequences per process per step"""
    seq_len: int = 128
    """tokens per sequence"""
    steps: int = 4
    """AdamW steps (the first is a warmup, not timed)"""


def build(shape):
    from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM

    kw = {k: v for k, v in SHAPES[shape].items() if k != "arch"}
    if SHAPES[shape]["arch"] == "gpt2":
        return GPT2LMHeadModel(GPT2Config(**kw))
    return LlamaForCausalLM(LlamaConfig(**kw))


def child(args, engine):
    """One process of one run: wrap, train a few steps, write this rank's numbers to $BENCH_OUT/<engine><rank>.json."""
    rank, world, device, dtype = runs.setup_distributed()
    torch.manual_seed(0)
    model = build(args.shape).to(device)
    wrapped = parallel.wrap(model, parallel.ParallelArgs(fsdp=engine == "fsdp"), world, dtype)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    vocab = model.config.vocab_size
    times = []
    for _ in range(args.steps):
        ids = torch.randint(0, vocab, (args.batch_size, args.seq_len), device=device)
        tic = time.time()
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = wrapped(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.time() - tic)
        held = parallel.memory_per_rank(list(model.parameters()), optimizer)  # before the gradients are freed
        del loss
        optimizer.zero_grad(set_to_none=False)  # gradients kept: what a run holds between steps at most
    if device.type == "cuda":
        peak, resident = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
    else:  # the peak since the start (the model built whole first), and what stays after a step, freed blocks returned
        ctypes.CDLL("libc.so.6").malloc_trim(0)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        resident = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    row = {"rank": rank, **held, "peak": peak, "resident": resident, "step": statistics.median(times[1:])}
    (Path(os.environ["BENCH_OUT"]) / f"{engine}{rank}.json").write_text(json.dumps(row))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(Args(**json.loads(sys.argv[3])), sys.argv[2])
        raise SystemExit(0)
    args = tyro.cli(Args, description=__doc__)
    n_params = sum(p.numel() for p in build(args.shape).parameters())
    device = "GPU" if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"{args.shape}: {n_params / 1e6:.0f}M parameters, {args.nproc} processes on {device}, fp32 weights and "
          f"Adam, {args.batch_size} x {args.seq_len} tokens per process per step\n")
    print("| engine | parameters / rank | gradients / rank | Adam state / rank | held between steps / rank | "
          "peak / rank | step (s) |")
    print("|---|---|---|---|---|---|---|")
    for engine in ("ddp", "fsdp"):
        cmd = [*runs.launcher(args.nproc), __file__, "--child", engine, json.dumps(vars(args))]
        out = Path(tempfile.mkdtemp())
        env = {**os.environ, "PYTHONPATH": str(ROOT), "BENCH_OUT": str(out)}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        rows = [json.loads(f.read_text()) for f in sorted(out.glob(f"{engine}*.json"))]
        if done.returncode or not rows:
            print(f"| {engine} | failed (exit {done.returncode}): {done.stderr.strip().splitlines()[-1:]} |")
            continue
        sizes = ("parameters", "gradients", "optimizer", "resident", "peak")
        worst = {k: max(r[k] for r in rows) for k in (*sizes, "step")}  # the process that holds most
        print("| " + " | ".join([engine] + [f"{worst[k] / 2**20:,.0f} MiB" for k in sizes]) + f" | {worst['step']:.2f} |")
