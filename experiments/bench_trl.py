"""Our training steps against TRL's on the same workload: reward model (rm_bt.py vs RewardTrainer), DPO (dpo.py
vs DPOTrainer, reference log-probs precomputed and on the fly) and PPO (ppo_rlhf.py vs TRL 1.12's PPOTrainer, the
last release that has one, in its own environment). Same model, same data, same batch sizes, fp32 on this machine's
CPU. Prints samples per second, peak memory and ours / TRL, the median of alternating runs.

    pip install -r requirements.txt -r experiments/requirements.txt
    python experiments/bench_trl.py                  # the bundled model, 1024 embedded pairs, 3 runs each
    python experiments/bench_trl.py --trl-ppo-python <venv with trl==1.12.0>/bin/python     # adds the PPO row

Samples per second count training time only: ours from the script's own summary (its training loop, plus for DPO
the reference pass it prints), TRL's from trainer.train() (which runs its reference pass inside). Peak memory is
the maximum resident set of the whole process (/usr/bin/time), imports and data included.
PPO: rollouts of 64 prompts, 2 minibatches, 4 PPO epochs, responses up to 64 tokens, kl_coef 0.05, a reward model
trained first by rm_bt.py (small settings) that also starts the value model, on both sides; episodes per second.
"""

import json
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import tyro

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from common import models, task  # noqa: E402


@dataclass
class Args:
    model: str = models.BUNDLED_MODEL
    """the model both sides train (a local path or hub name)"""
    num_pairs: int = 1024
    """embedded pairs in the workload (ours holds out the prompts of about 5% of them for its end-of-run evaluation)"""
    batch_size: int = 16
    """pairs per optimizer step on both sides"""
    repeats: int = 3
    """runs of each configuration, alternating ours and TRL's; the median is reported"""
    trl_python: str = sys.executable
    """the Python of an environment with experiments/requirements.txt installed"""
    trl_ppo_python: str = ""
    """the Python of an environment with trl==1.12.0 (for the PPO row; skipped when empty)"""
    ppo_episodes: int = 1024
    """PPO episodes per run (16 rollouts of 64)"""
    only: str = ""
    """run only the workloads whose name contains this (e.g. 'PPO', 'DPO')"""


def timed(cmd, cwd):
    """(stdout, peak RSS in MB) of a command run under /usr/bin/time."""
    p = subprocess.run(["/usr/bin/time", "-f", "PEAK_KB %M", *cmd], capture_output=True, text=True, cwd=cwd,
                       env={"PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p.stdout, int(re.search(r"PEAK_KB (\d+)", p.stderr).group(1)) / 1024


def ours(script, flags, data, a, cwd):
    """Samples per second of our training (its summary line) and peak memory."""
    out, peak = timed([sys.executable, str(ROOT / script), "--model", a.model, "--dataset", data, "--num-epochs", "1",
                       "--per-device-batch-size", str(a.batch_size), "--learning-rate", "1e-4", "--eval-every", "1000000",
                       "--output-dir", str(cwd / "out"), *flags], cwd)
    if script == "rm_bt.py":
        return float(re.search(r"(\d+) pairs/s, \d+s on", out).group(1)), peak
    seconds = float(re.search(r"([\d.]+)s training \((\d+) pairs/s\)", out).group(1))
    rate = float(re.search(r"s training \((\d+) pairs/s\)", out).group(1))
    pre = re.search(r"precomputed in ([\d.]+)s", out)
    if pre:  # count the reference pass too, as TRL's train() does
        n = rate * seconds
        rate = n / (seconds + float(pre.group(1)))
    return rate, peak


def ours_ppo(rm, a, cwd):
    """Episodes per second of ppo_rlhf.py against the reward model (its summary's episodes and seconds) and peak memory."""
    out, peak = timed([sys.executable, str(ROOT / "ppo_rlhf.py"), "--model", a.model, "--reward-model", rm, "--num-eval-prompts", "8",
                       "--total-episodes", str(a.ppo_episodes), "--log-samples-every", "1000000", "--output-dir", str(cwd / "out")], cwd)
    episodes, seconds = map(float, re.search(r"(\d+) episodes in (\d+)s", out).groups())
    return episodes / seconds, peak


def trl(algo, flags, data, a, cwd, python=None):
    out, peak = timed([python or a.trl_python, str(ROOT / "experiments" / "trl_runner.py"), algo, "--model", a.model,
                       "--data", data, "--batch-size", str(a.batch_size), *flags], cwd)
    return json.loads(out.strip().splitlines()[-1])["samples_per_second"], peak


if __name__ == "__main__":
    a = tyro.cli(Args)
    if Path(models.resolve(a.model)).exists():  # a local model: an absolute path, as the runs work in another directory
        a.model = str(Path(models.resolve(a.model)).resolve())
    cwd = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    prompts = task.all_prompts()
    rows = task.make_pairs(prompts[:: max(1, len(prompts) // a.num_pairs)][: a.num_pairs], task.Labeler(), 1, seed=0)
    data = str(cwd / "pairs.jsonl")
    task.export_jsonl(rows, data)
    print(f"{len(rows)} pairs, batch {a.batch_size}, model {a.model}, {a.repeats} alternating runs each; working in {cwd}")
    dpo_flags = ["--num-eval-prompts", "1", "--eval-samples-per-prompt", "1", "--no-eval-kl"]
    configs = [  # (name, our run, TRL's run)
        ("reward model (Bradley-Terry)", lambda: ours("rm_bt.py", ["--reference-size", "16"], data, a, cwd), lambda: trl("reward", [], data, a, cwd)),
        ("DPO, reference precomputed", lambda: ours("dpo.py", dpo_flags, data, a, cwd), lambda: trl("dpo", ["--precompute-ref"], data, a, cwd)),
        ("DPO, reference on the fly", lambda: ours("dpo.py", [*dpo_flags, "--reference-on-the-fly"], data, a, cwd), lambda: trl("dpo", [], data, a, cwd)),
    ]
    if a.trl_ppo_python:  # a reward model for both sides, and the train prompts as a file for TRL
        timed([sys.executable, str(ROOT / "rm_bt.py"), "--model", a.model, "--pairs-per-prompt", "1", "--output-dir", str(cwd / "rm")], cwd)
        task.export_jsonl([{"prompt": p} for p in task.split_prompts()[0]], cwd / "prompts.jsonl")
        configs.append(("PPO (reward model, 64-prompt rollouts)", lambda: ours_ppo(str(cwd / "rm"), a, cwd),
                        lambda: trl("ppo", ["--reward-model", str(cwd / "rm"), "--total-episodes", str(a.ppo_episodes), "--batch-size", "64"],
                                    str(cwd / "prompts.jsonl"), a, cwd, a.trl_ppo_python)))
    header = "| workload | ours samples/s | TRL samples/s | ours / TRL | ours peak MB | TRL peak MB | ours / TRL |"
    lines = [header, "|---|---|---|---|---|---|---|"]
    for name, run_ours, run_trl in [c for c in configs if a.only in c[0]]:
        results = {"ours": [], "trl": []}
        for _ in range(a.repeats):  # alternating, so drift in the machine's speed hits both sides alike
            results["ours"].append(run_ours())
            results["trl"].append(run_trl())
        (so, mo), (st, mt) = [tuple(statistics.median(x[i] for x in results[k]) for i in (0, 1)) for k in ("ours", "trl")]
        lines.append(f"| {name} | {so:.0f} | {st:.0f} | {so / st:.2f} | {mo:.0f} | {mt:.0f} | {mo / mt:.2f} |")
        print(lines[-1], flush=True)
    print("\n".join(["", *lines]))
