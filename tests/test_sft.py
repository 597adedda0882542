"""sft.py: the completion-only loss, and the script end to end."""

import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from common import task
from conftest import LORA_KINDS, check_lora_save, run_script
from sft import sft_loss


def test_sft_loss_counts_completion_tokens_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 1, 1, 0], [0, 1, 1, 1, 1]])
    total, n = 0.0, 0
    for b in range(2):
        for t in range(1, 5):
            if mask[b, t]:
                logp = logits[b, t - 1].log_softmax(-1)[ids[b, t]].item()
                total, n = total - logp, n + 1
    assert math.isclose(sft_loss(logits, ids, mask).item(), total / n, rel_tol=1e-5)
    changed = logits.clone()
    changed[0, 0] += 5.0  # predicts prompt token 1: not a target
    assert math.isclose(sft_loss(changed, ids, mask).item(), total / n, rel_tol=1e-5)


def _summary(out):
    m = re.search(r"eval loss ([\d.]+) -> ([\d.]+), eval gold ([-\d.]+) -> ([-\d.]+)", out)
    assert m, out
    return [float(x) for x in m.groups()]


def test_sft_from_scratch_learns_the_task(tmp_path):
    out = run_script("sft.py", "--num-epochs", "2", "--demos-per-prompt", "1", "--max-new-tokens", "32",
                     "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    loss0, loss1, gold0, gold1 = _summary(out)
    assert loss1 < 0.5 * loss0
    assert gold1 > gold0 + 1.0  # untrained: about -2.8 (32 random tokens); trained (2 short epochs): about -1.1
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.vocab_size == len(task.build_tokenizer())


def test_sft_any_causal_lm_on_a_jsonl_file(tmp_path, gpt2_no_pad):
    path = tmp_path / "demos.jsonl"
    task.export_jsonl(task.make_sft(task.all_prompts()[:200], 1), path)
    out = run_script("sft.py", "--model", gpt2_no_pad, "--dataset", str(path), "--num-epochs", "1", "--learning-rate", "3e-3",
                     "--max-new-tokens", "8", "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    loss0, loss1, _, _ = _summary(out)
    assert loss1 < loss0
    assert "train demonstrations:" in out
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_sft_under_torchrun_two_processes(tmp_path):
    """DDP on CPU (gloo): both ranks train, rank 0 alone logs and saves."""
    import subprocess
    import sys

    from conftest import ROOT

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(ROOT / "sft.py"), "--num-epochs", "1",
           "--demos-per-prompt", "1", "--per-device-batch-size", "16", "--max-new-tokens", "16", "--output-dir", str(tmp_path / "m")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    loss0, loss1, _, _ = _summary(p.stdout)
    assert loss1 < 0.5 * loss0 and "on 2 process(es)" in p.stdout
    assert p.stdout.count("sft: eval loss") == 1  # one summary: rank 0's
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert len(list((tmp_path / "runs").iterdir())) == 1


@pytest.mark.parametrize("kind", LORA_KINDS)
def test_use_peft_trains_the_adapters_only_and_the_merged_save_loads(tmp_path, standin, kind):
    """--use-peft on the GPT-2, Llama and Qwen2 stand-ins: the loss falls with the adapters alone trained; the merged
    save loads with transformers and computes what the adapters did (check_lora_save)."""
    base = standin("lm", kind)
    out = run_script("sft.py", "--model", base, "--dataset", standin("data", "tldr"), "--num-epochs", "2",
                     "--per-device-batch-size", "8", "--learning-rate", "1e-2", "--use-peft", "--lora-r", "2",
                     "--merge-lora", "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    loss0, loss1 = map(float, re.search(r"eval loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert loss1 < loss0 - 0.05, out[-500:]
    assert check_lora_save(tmp_path / "m", base, 2) == (8 if kind == "gpt2" else 14)  # every linear layer of the 2 blocks
