"""Our training steps against TRL's on the same workload: reward model (rm_bt.py vs RewardTrainer), DPO (dpo.py
vs DPOTrainer, reference log-probs precomputed and on the fly) and PPO (ppo_rlhf.py vs TRL 1.12's PPOTrainer, the
last release that has one, in its own environment). Same model, same data, same batch sizes and lengths, fp32 on
this machine's CPU. Prints samples per second, peak memory and ours / TRL, the median of alternating runs, then
where PPO's time goes (generation, scoring, update) and its generation speed beside plain model.generate.

    pip install -r requirements.txt -r experiments/requirements.txt
    python experiments/bench_trl.py                  # the bundled model, 1024 embedded pairs, 3 runs each
    python -m venv --system-site-packages ppo112 && ppo112/bin/pip install --no-deps trl==1.12.0
    python experiments/bench_trl.py --trl-ppo-python ppo112/bin/python --only PPO    # the PPO row
    python experiments/bench_trl.py --shape gpt2 --num-pairs 64 --ppo-episodes 32 --ppo-rollout 16 \\
        --ppo-response-length 32 --trl-ppo-python ppo112/bin/python                 # GPT-2 124M (random weights)

--shape builds a model of that shape with random weights (experiments/bench_memory.py's shapes) and the GPT-2
tokenizer stand-in of tests/standins.py (byte-level BPE; <|endoftext|> is unk, BOS and EOS; no pad token), once,
under runs/bench_trl/; its reward model (same shape, one output) is the PPO row's reward and value model. Without
--shape the PPO row's reward model is trained first by rm_bt.py on --model.

Both sides use fused Adam and, by default, gradient checkpointing (TRL's default for its reward and DPO trainers;
TRL 1.12's PPOTrainer never turns it on, so the PPO row runs without it on both sides).
Samples per second count training only. Ours: the rate the script logs to TensorBoard at its last step, before
the final evaluation and save (for DPO with the reference precomputed, plus the time of that pass, as TRL's
train() runs it inside). TRL's: trainer.train(), which runs no evaluation here. Peak memory is the maximum
resident set of the whole process (/usr/bin/time), imports and data included. PPO: 2 minibatches, 4 PPO epochs,
kl_coef 0.05; episodes per second. Random weights never sample EOS, so at --shape every response is
--ppo-response-length tokens long on both sides.
"""

import dataclasses
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Literal

import torch
import tyro
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench_memory import build, last_rate  # noqa: E402
from common import data, models, sampling, task  # noqa: E402


@dataclass
class Args:
    model: str = models.BUNDLED_MODEL
    """the model both sides train (a local path or hub name); --shape replaces it"""
    shape: Literal["", "gpt2", "1b"] = ""
    """build a model of this shape with random weights and a GPT-2-style tokenizer and use it: gpt2 (124M), 1b"""
    num_pairs: int = 1024
    """embedded pairs in the workload (ours holds out the prompts of about 5% of them for its end-of-run evaluation)"""
    batch_size: int = 16
    """pairs per optimizer step on both sides"""
    max_length: int = 128
    """tokens per prompt + response on both sides (the embedded pairs fit: at most 115 with the GPT-2 tokenizer)"""
    repeats: int = 3
    """runs of each configuration, alternating ours and TRL's; the median is reported"""
    trl_python: str = sys.executable
    """the Python of an environment with experiments/requirements.txt installed"""
    trl_ppo_python: str = ""
    """the Python of an environment with trl==1.12.0 (for the PPO row; skipped when empty)"""
    ppo_episodes: int = 1024
    """PPO episodes per run"""
    ppo_rollout: int = 64
    """prompts per PPO rollout (split into 2 minibatches)"""
    ppo_response_length: int = 64
    """tokens per PPO response at most"""
    gradient_checkpointing: bool = True
    """recompute activations in the backward pass on both sides: TRL's reward and DPO trainers do by default (their
    configs say gradient_checkpointing=True), our scripts with --gradient-checkpointing; --no-gradient-checkpointing:
    neither. Not in the PPO row: TRL 1.12's PPOTrainer never turns it on"""
    only: str = ""
    """run only the workloads whose name contains this (e.g. 'PPO', 'DPO')"""


def timed(cmd, cwd):
    """(stdout, peak RSS in MB) of a command run under /usr/bin/time."""
    p = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], capture_output=True, text=True, cwd=cwd,
                       env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p.stdout, int(re.search(r"PEAK_KB (\d+)", p.stderr).group(1)) / 1024


def ours(script, flags, a, work):
    """(samples per second of our training, peak MB, stdout) of one run of a script, in a fresh directory."""
    cwd = Path(tempfile.mkdtemp(dir=work))
    gc = ["--gradient-checkpointing"] if a.gradient_checkpointing else []
    cmd = [sys.executable, str(ROOT / script), "--model", a.model, "--output-dir", "out", "--no-cuda", *flags, *gc]
    out, peak = timed(cmd, cwd)  # on the CPU, as TRL's side runs (use_cpu=True)
    tag = "charts/SPS" if script == "ppo_rlhf.py" else "charts/pairs_per_second"
    rate = last_rate(cwd, tag)
    pre = re.search(r"of (\d+) train and (\d+) eval pairs precomputed in ([\d.]+)s", out)
    if pre:  # count the reference pass over the train pairs too, as TRL's train() runs it inside
        n_train, n_eval, seconds = int(pre.group(1)), int(pre.group(2)), float(pre.group(3))
        rate = n_train / (n_train / rate + seconds * n_train / (n_train + n_eval))
    return rate, peak, out


def trl(algo, flags, data_file, a, work, python=None):
    out, peak = timed([python or a.trl_python, str(ROOT / "experiments" / "trl_runner.py"), algo, "--model", a.model,
                       "--data", data_file, "--batch-size", str(a.batch_size), "--max-length", str(a.max_length),
                       *flags, *([] if a.gradient_checkpointing else ["--no-gradient-checkpointing"])], work)
    result = json.loads(out.strip().splitlines()[-1])
    if result["gradient_checkpointing"] != a.gradient_checkpointing:
        print(f"note: TRL's {algo} ran with gradient checkpointing {result['gradient_checkpointing']}", flush=True)
    return result["samples_per_second"], peak, out


@torch.no_grad()
def plain_generate(model_path, prompts, new_tokens, repeats=3):
    """Tokens per second of model.generate alone, sampling up to new_tokens per prompt for one batch of prompts
    (left-padded, KV cache, pure sampling): median of repeats, tokens counted as rows x positions generated."""
    tok = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).eval()
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    queries = [tok(p).input_ids for p in prompts]
    ids = data.pad(queries, pad, side="left")
    mask = data.pad([[1] * len(q) for q in queries], 0, side="left")
    rates = []
    for _ in range(repeats):
        start = time.time()
        out = sampling.generate(model, input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                              max_new_tokens=new_tokens, pad_token_id=pad)  # model.generate, one warning silenced
        rates.append((out.shape[1] - ids.shape[1]) * len(prompts) / (time.time() - start))
    return statistics.median(rates)


def ppo_split(out):
    """Seconds of generation, scoring and update, and generation tokens/s, from ppo_rlhf.py's summary."""
    g, tps, s, u = re.search(r"generation ([\d.]+)s \((\d+) tokens/s\), scoring \(log-probs, values, reward\) "
                             r"([\d.]+)s, update ([\d.]+)s", out).groups()
    return float(g), float(s), float(u), float(tps)


if __name__ == "__main__":
    a = tyro.cli(Args)
    work = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    rm = ""
    if a.shape:
        import standins

        a.model, rm = build(a.shape, ROOT / "runs" / "bench_trl", standins.make_tokenizer("gpt2"))
    if Path(models.resolve(a.model)).exists():  # a local model: an absolute path, as the runs work in another directory
        a.model = str(Path(models.resolve(a.model)).resolve())
    prompts = task.all_prompts()
    rows = task.make_pairs(prompts[:: max(1, len(prompts) // a.num_pairs)][: a.num_pairs], task.Labeler(), 1, seed=0)
    pairs = str(work / "pairs.jsonl")
    task.export_jsonl(rows, pairs)
    print(f"{len(rows)} pairs, batch {a.batch_size}, model {a.model}, {a.repeats} alternating runs each, gradient "
          f"checkpointing {'on' if a.gradient_checkpointing else 'off'} on both sides (off in the PPO row); in {work}")
    a.num_pairs = len(rows)
    common = ["--dataset", pairs, "--num-epochs", "1", "--per-device-batch-size", str(a.batch_size),
              "--learning-rate", "1e-4", "--eval-every", "1000000", "--max-length", str(a.max_length)]
    dpo = [*common, "--num-eval-prompts", "1", "--eval-samples-per-prompt", "1", "--no-eval-kl"]
    configs = [  # (name, our run, TRL's run)
        ("reward model (Bradley-Terry)", partial(ours, "rm_bt.py", [*common, "--reference-size", "16"], a, work),
         partial(trl, "reward", [], pairs, a, work)),
        ("DPO, reference precomputed", partial(ours, "dpo.py", dpo, a, work),
         partial(trl, "dpo", ["--precompute-ref"], pairs, a, work)),
        ("DPO, reference on the fly", partial(ours, "dpo.py", [*dpo, "--reference-on-the-fly"], a, work),
         partial(trl, "dpo", [], pairs, a, work)),
    ]
    if a.trl_ppo_python:  # a reward model for both sides, and the train prompts as a file for TRL
        if not rm:
            rm = str(work / "rm")
            timed([sys.executable, str(ROOT / "rm_bt.py"), "--model", a.model, "--pairs-per-prompt", "1",
                   "--output-dir", rm], work)
        train_prompts = task.split_prompts()[0]
        task.export_jsonl([{"prompt": p} for p in train_prompts], work / "prompts.jsonl")
        n, length = str(a.ppo_rollout), str(a.ppo_response_length)
        # TRL 1.12's PPOTrainer never turns gradient checkpointing on (its policy reports False after train(),
        # whatever its config says), so in this row neither side does
        a_ppo = dataclasses.replace(a, gradient_checkpointing=False)
        ppo = ["--reward-model", rm, "--num-eval-prompts", "8", "--total-episodes", str(a.ppo_episodes),
               "--rollout-batch-size", n, "--response-length", length, "--kl-coef", "0.05", "--learning-rate", "3e-4",
               "--log-samples-every", "1000000"]
        trl_ppo = ["--reward-model", rm, "--total-episodes", str(a.ppo_episodes), "--response-length", length]
        configs.append((f"PPO (reward model, {n}-prompt rollouts), episodes/s",
                        partial(ours, "ppo_rlhf.py", ppo, a_ppo, work),
                        partial(trl, "ppo", [*trl_ppo, "--batch-size", n], str(work / "prompts.jsonl"), a_ppo, work,
                                a.trl_ppo_python)))
    header = "| workload | ours samples/s | TRL samples/s | ours / TRL | ours peak MB | TRL peak MB | ours / TRL |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    ppo_outs = []
    for name, run_ours, run_trl in [c for c in configs if a.only in c[0]]:
        results = {"ours": [], "trl": []}
        for _ in range(a.repeats):  # alternating, so drift in the machine's speed hits both sides alike
            results["ours"].append(run_ours())
            results["trl"].append(run_trl())
        (so, mo), (st, mt) = [tuple(statistics.median(x[i] for x in results[side]) for i in (0, 1))
                              for side in ("ours", "trl")]
        lines.append(f"| {name} | {so:.3g} | {st:.3g} | {so / st:.2f} | {mo:.0f} | {mt:.0f} | {mo / mt:.2f} |")
        print(lines[-1], flush=True)
        ppo_outs += [x[2] for x in results["ours"]] if name.startswith("PPO") else []
    print("\n".join(["", *lines]))
    if ppo_outs:  # where our PPO's time goes, and its generation beside model.generate on one rollout's prompts
        g, s, u, tps = (statistics.median(x) for x in zip(*map(ppo_split, ppo_outs)))
        total = g + s + u
        plain = plain_generate(a.model, train_prompts[: a.ppo_rollout], a.ppo_response_length)
        print(f"\nppo_rlhf.py, medians of {len(ppo_outs)} runs: generation {g:.1f}s ({g / total:.0%}), scoring "
              f"(log-probs, values, reward) {s:.1f}s ({s / total:.0%}), update {u:.1f}s ({u / total:.0%}); generation "
              f"{tps:.0f} tokens/s, plain model.generate on {a.ppo_rollout} prompts {plain:.0f} tokens/s "
              f"({tps / plain:.2f}x)")
