"""Peak memory and throughput of every script, full fine-tuning against --use-peft (LoRA), on a model of a given
shape built here with random weights (nothing downloaded): the README's "bigger models" tables.

    python experiments/bench_memory.py --shape gpt2                        # all five scripts, 124M (2 CPUs: ~40 min)
    python experiments/bench_memory.py --shape 1b --scripts dpo ppo_rlhf   # TinyLlama-1.1B's shape
    python experiments/bench_memory.py --shape 7b --scripts dpo ppo_rlhf --extra-flags=--gradient-checkpointing  # GPU

Each row runs a script as a user would, in its own process, for a few steps on the embedded task's data: the
causal LM (and for ppo_rlhf.py a reward model of the same shape, which the value network starts from) with the
task's tokenizer and the shape's vocabulary size. The peak is read in that process at exit: on a GPU
torch.cuda.max_memory_allocated (bf16 autocast, frozen weights in bf16), on CPU the peak resident set (getrusage;
fp32; it includes the ~0.5 GiB of Python, torch and the data; glibc is told to return freed blocks, else the peak
would grow with every step). Throughput is the script's own last logged rate (TensorBoard), before the final
evaluation and save: sft tokens/s, rm_bt and dpo pairs/s, rm_kwise completions/s, ppo_rlhf episodes/s. Beside each
peak, the accounting of the weights, gradients and Adam states the run holds (params x bytes: 4 for an fp32 weight,
2 for a bf16 frozen one on the GPU, 4 + 4 + 8 for a trained one), so that a row that cannot run here can still be
read. --max-rss-gb stops a CPU run that grows past it (the machine may be shared); a stopped or failed row says so.
"""

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import torch
import tyro
from transformers import (AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,
                          LlamaConfig)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import data, task  # noqa: E402

SCRIPTS = ["sft", "rm_bt", "rm_kwise", "dpo", "ppo_rlhf"]
MODES = ["full", "lora"]
SHAPES = {  # Llama shapes from TinyLlama-1.1B's and Llama-2-7B's config.json; "tiny" checks this script itself
    "tiny": dict(arch="llama", vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512),
    "gpt2": dict(arch="gpt2", vocab_size=50257, n_embd=768, n_layer=12, n_head=12, n_positions=1024),
    "1b": dict(arch="llama", vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, max_position_embeddings=2048),
    "7b": dict(arch="llama", vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096),
}
RATE_TAGS = {"sft": "charts/tokens_per_second", "rm_bt": "charts/pairs_per_second", "dpo": "charts/pairs_per_second",
             "rm_kwise": "charts/completions_per_second", "ppo_rlhf": "charts/SPS"}
RATE_UNITS = {"sft": "tokens/s", "rm_bt": "pairs/s", "rm_kwise": "completions/s", "dpo": "pairs/s",
              "ppo_rlhf": "episodes/s"}

# Run in the child: the script as __main__, then its own peak memory (no torch.cuda call when CUDA is absent).
CHILD = """
import resource, runpy, sys
script = sys.argv[1]
sys.argv = sys.argv[1:]
try:
    runpy.run_path(script, run_name="__main__")
finally:
    import torch
    cuda = torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else 0
    print(f"BENCH rss_kb={resource.getrusage(resource.RUSAGE_SELF).ru_maxrss} cuda_bytes={cuda}", flush=True)
"""


@dataclass
class Args:
    shape: Literal["tiny", "gpt2", "1b", "7b"] = "gpt2"
    """the model's shape: gpt2 (124M), 1b (TinyLlama-1.1B), 7b (Llama-2-7B); tiny to try this script"""
    scripts: list[str] = field(default_factory=SCRIPTS.copy)
    """which scripts to run"""
    modes: list[Literal["full", "lora"]] = field(default_factory=MODES.copy)
    """full fine-tuning and/or --use-peft"""
    steps: int = 3
    """optimizer steps (PPO updates) per run"""
    batch_size: int = 8
    """examples per step: sequences (sft), pairs (rm_bt, dpo), prompts (rm_kwise, ppo_rlhf's rollout)"""
    response_length: int = 64
    """ppo_rlhf.py's response length (random weights never stop early: every response is this long)"""
    lora_r: int = 16
    """LoRA rank (the scripts' default)"""
    extra_flags: str = ""
    """more flags for every run, e.g. --gradient-checkpointing"""
    cuda: bool = True
    """run on CUDA when available"""
    max_rss_gb: Optional[float] = None
    """stop a run whose resident memory grows past this many GiB (CPU; the machine may be shared)"""
    work_dir: str = "runs/bench_memory"
    """where the built models and data are kept (reused by later runs)"""


def build(shape, work_dir, tok=None):
    """(policy dir, reward model dir): random-weight models of the shape with a tokenizer (the task's by default), a
    causal LM and a sequence classifier with one output, saved in bf16 (the scripts load them in the dtype they
    need); built once."""
    tok = tok or task.build_tokenizer()
    cfg = dict(SHAPES[shape])
    arch = cfg.pop("arch")
    ids = dict(bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    paths = []
    for name, cls in (("policy", AutoModelForCausalLM), ("rm", AutoModelForSequenceClassification)):
        path = Path(work_dir) / shape / name
        paths.append(str(path))
        if (path / "config.json").exists():
            continue
        print(f"building the {shape} {name} (random weights) in {path}", flush=True)
        config = GPT2Config(**cfg, **ids) if arch == "gpt2" else LlamaConfig(**cfg, **ids, tie_word_embeddings=False)
        config.num_labels = 1
        torch.manual_seed(0)
        torch.set_default_dtype(torch.bfloat16)  # built in bf16: half the memory and disk (7B: 12.6 GiB)
        model = cls.from_config(config)
        torch.set_default_dtype(torch.float32)
        model.save_pretrained(path)
        tok.save_pretrained(path)
    return paths


def write_data(work_dir, n_train, n_eval):
    """jsonl files of the embedded task, with exactly n_train train rows and n_eval held out (data.split_by_prompt
    decides by a hash of the prompt): demonstrations, pairs, rankings (K 4..9)."""
    rows = {"sft": [], "pairs": [], "rankings": []}
    train, held_out = 0, 0
    for prompt in task.all_prompts():
        is_eval = not data.split_by_prompt([{"prompt": prompt}])[0]
        if (is_eval and held_out == n_eval) or (not is_eval and train == n_train):
            continue
        held_out, train = held_out + is_eval, train + (not is_eval)
        rows["sft"] += task.make_sft([prompt], 1, seed=train)
        rows["pairs"] += task.make_pairs([prompt], task.Labeler(), 1, seed=train)
        rows["rankings"] += task.make_rankings([prompt], task.Labeler(), seed=train)
        if train == n_train and held_out == n_eval:
            break
    paths = {}
    for kind, kind_rows in rows.items():
        paths[kind] = str(Path(work_dir) / f"{kind}_{n_train}_{n_eval}.jsonl")
        task.export_jsonl(kind_rows, paths[kind])
    return paths


def flags_of(script, args, policy, rm, files):
    """The command line of one run: a few steps, evaluation only before training and at the end, small evals."""
    n = args.batch_size
    return {
        "sft": ["--model", policy, "--dataset", files["sft"], "--num-epochs", "1", "--per-device-batch-size", str(n),
                "--eval-every", "1000", "--max-new-tokens", "16"],
        "rm_bt": ["--model", policy, "--dataset", files["pairs"], "--per-device-batch-size", str(n),
                  "--eval-every", "1000", "--reference-size", "16"],
        "rm_kwise": ["--model", policy, "--dataset", files["rankings"], "--prompts-per-batch", str(n),
                     "--eval-every", "1000", "--reference-size", "16"],
        "dpo": ["--model", policy, "--dataset", files["pairs"], "--per-device-batch-size", str(n),
                "--eval-every", "1000", "--max-new-tokens", "16", "--eval-samples-per-prompt", "1"],
        "ppo_rlhf": ["--model", policy, "--reward-model", rm, "--total-episodes", str(args.steps * n),
                     "--rollout-batch-size", str(n), "--response-length", str(args.response_length),
                     "--num-eval-prompts", "8", "--log-samples-every", "1000"],
    }[script]


def last_rate(run_dir, tag):
    """The last value of a scalar in the one TensorBoard run under run_dir/runs."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run,) = [p for p in (Path(run_dir) / "runs").iterdir() if p.is_dir()]
    events = EventAccumulator(str(run)).Reload().Scalars(tag)
    return events[-1].value


def run(script, mode, args, policy, rm, files):
    """(peak bytes, rate, status) of one run of the script."""
    flags = flags_of(script, args, policy, rm, files) + args.extra_flags.split()
    flags += ["--use-peft", "--lora-r", str(args.lora_r)] if mode == "lora" else []
    flags += [] if args.cuda else ["--no-cuda"]
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-c", CHILD, str(ROOT / f"{script}.py"), *flags, "--output-dir", f"{tmp}/model"]
        # glibc's malloc keeps freed large blocks (its mmap threshold rises as they are freed), so the peak resident
        # set would grow with every step; a fixed threshold returns them, and the peak is that of live tensors
        env = {**os.environ, "PYTHONPATH": str(ROOT), "MALLOC_MMAP_THRESHOLD_": "65536"}
        log = open(Path(tmp) / "log.txt", "w+")
        proc = subprocess.Popen(cmd, cwd=tmp, env=env, stdout=log, stderr=subprocess.STDOUT)
        status = "ok"
        while proc.poll() is None:
            time.sleep(0.2)
            if args.max_rss_gb and rss_gb(proc.pid) > args.max_rss_gb:
                proc.kill()
                status = f"stopped at {args.max_rss_gb:g} GiB"
        proc.wait()
        log.seek(0)
        out = log.read()
        if status == "ok" and proc.returncode != 0:
            status = "failed: " + (out.strip().splitlines() or ["?"])[-1][:80]
        peak = [line for line in out.splitlines() if line.startswith("BENCH ")]
        if not peak:
            return None, None, status
        rss_kb, cuda_bytes = (int(kv.split("=")[1]) for kv in peak[-1].split()[1:])
        rate = last_rate(tmp, RATE_TAGS[script]) if status == "ok" else None
        return (cuda_bytes if cuda_bytes else rss_kb * 1024), rate, status


def rss_gb(pid):
    """Resident memory of a running process, in GiB (0 once it is gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return 0.0
    kb = [int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:")]
    return kb[0] / 2**20 if kb else 0.0


def counts(policy_dir, r):
    """(parameters of the model, of its LoRA adapters at rank r on every linear layer but the output layer)."""
    config = AutoConfig.from_pretrained(policy_dir)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    head = model.get_output_embeddings()
    linear = [m for m in model.modules() if m is not head and type(m).__name__ in ("Linear", "Conv1D")]
    shapes = [m.weight.shape for m in linear]
    return sum(p.numel() for p in model.parameters()), sum(r * (a + b) for a, b in shapes)


def accounting(script, mode, n, n_lora, frozen_bytes):
    """Bytes of weights, gradients and Adam states the run holds. Trained weights: 16 bytes (fp32 weight, grad, two
    Adam moments); frozen: frozen_bytes (4 in fp32, 2 in bf16). DPO's reference leaves the accelerator after its
    log-probs are precomputed (a CPU copy stays for the eval KL: counted on CPU, where it is in the same memory)."""
    trained, frozen = 16 * n, frozen_bytes * n
    if mode == "lora":
        adapters = 16 * n_lora
        return {"sft": frozen + adapters, "rm_bt": frozen + adapters, "rm_kwise": frozen + adapters,
                "dpo": frozen + adapters, "ppo_rlhf": 3 * frozen + 2 * adapters}[script]  # policy, value, reward bases
    dpo_reference = frozen if frozen_bytes == 4 else 0
    return {"sft": trained, "rm_bt": trained, "rm_kwise": trained, "dpo": trained + dpo_reference,
            "ppo_rlhf": 2 * trained + 2 * frozen}[script]  # policy and value trained; reference and reward frozen


def machine(cuda):
    if cuda and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    cpu = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
           if line.startswith("model name")]
    return f"{cpu[0] if cpu else platform.processor()}, {os.cpu_count()} cores (CPU)"


if __name__ == "__main__":
    args = tyro.cli(Args)
    args.cuda = args.cuda and torch.cuda.is_available()
    policy, rm = build(args.shape, args.work_dir)
    files = write_data(Path(args.work_dir), args.steps * args.batch_size, 2)
    n, n_lora = counts(policy, args.lora_r)
    frozen_bytes = 2 if args.cuda and torch.cuda.is_bf16_supported() else 4
    print(f"{args.shape}: {n / 1e6:.0f}M parameters, LoRA r={args.lora_r}: {n_lora / 1e6:.1f}M; {args.steps} steps of "
          f"{args.batch_size}; {machine(args.cuda)}; {time.strftime('%Y-%m-%d')}")
    print(f"command: python experiments/bench_memory.py {' '.join(sys.argv[1:])}")
    rows = []
    for script in args.scripts:
        for mode in args.modes:
            t0 = time.time()
            peak, rate, status = run(script, mode, args, policy, rm, files)
            held = accounting(script, mode, n, n_lora, frozen_bytes)
            rows.append(dict(script=script, mode=mode, peak_gib=peak / 2**30 if peak else None, rate=rate,
                             unit=RATE_UNITS[script], accounting_gib=held / 2**30, status=status,
                             seconds=round(time.time() - t0)))
            print(json.dumps(rows[-1]), flush=True)
    memory = "peak GPU memory (GiB)" if args.cuda else "peak RSS (GiB)"
    print(f"\n| script | mode | {memory} | weights + grads + Adam (GiB) | throughput | run |")
    print("|-|-|-|-|-|-|")
    for r in rows:
        peak = f"{r['peak_gib']:.2f}" if r["peak_gib"] is not None else "-"
        rate = f"{r['rate']:.3g} {r['unit']}" if r["rate"] is not None else "-"
        print(f"| {r['script']}.py | {r['mode']} | {peak} | {r['accounting_gib']:.2f} | {rate} "
              f"| {r['status']}, {r['seconds']}s |")
