"""sft.py: the completion-only loss, and the script end to end."""

import math
import re

import pytest
import torch
from transformers import AutoModelForCausalLM

from common import data, task
from conftest import check_lora_save, one_and_two_processes, run_script, scalars
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
    out = run_script("sft.py", "--num-epochs", "1", "--demos-per-prompt", "1", "--max-new-tokens", "32",
                     "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    loss0, loss1, gold0, gold1 = _summary(out)
    assert loss1 < 0.5 * loss0
    assert gold1 > gold0 + 1.0  # untrained: about -2.8 (32 random tokens); trained (1 short epoch): about -1.0
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert model.config.vocab_size == len(task.build_tokenizer())


def test_sft_any_causal_lm_on_a_jsonl_file(tmp_path, gpt2_no_pad):
    path = tmp_path / "demos.jsonl"
    task.export_jsonl(task.make_sft(task.all_prompts()[:200], 1), path)
    out = run_script("sft.py", "--model", gpt2_no_pad, "--dataset", str(path), "--num-epochs", "1", "--learning-rate", "3e-3",
                     "--max-new-tokens", "8", "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    loss0, loss1, _, _ = _summary(out)
    assert loss1 < loss0 - 0.2  # measured: 5.25 -> 4.81
    assert "train demonstrations:" in out
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def demonstrations_file(path, n_train, n_eval):
    """A user's {"prompt", "completion"} file with n_train rows that load_rows keeps for training and n_eval that its
    split by prompt hash sends to evaluation."""
    train, eval_ = data.split_by_prompt(task.make_sft(task.all_prompts(), 1, seed=0))
    task.export_jsonl(train[:n_train] + eval_[:n_eval], path)
    return str(path)


def test_two_processes_follow_the_one_process_trajectory(tmp_path):
    """torchrun with 2 processes and 8 demonstrations per device takes the same steps as 1 process with 16, under DDP
    and with --fsdp (whose gathered save holds DDP's weights): each
    micro-batch's loss weighted by its share of the global batch's target tokens, so the step is the token mean of
    the global batch. 35 demonstrations: the last batch of 3 splits 2 + 1 (an unweighted average over ranks differs);
    1 eval prompt and 1 eval demonstration: rank 1 has no share of either and adds nothing to the means."""
    path = demonstrations_file(tmp_path / "demos.jsonl", 35, 1)
    flags = ["--dataset", path, "--num-epochs", "2", "--eval-every", "3", "--max-new-tokens", "8"]
    one, *twos = one_and_two_processes("sft.py", flags, tmp_path, "sft: eval loss")
    for two in twos:  # DDP, then --fsdp
        assert len(one["train/loss"]) == len(two["train/loss"]) == 6  # (16, 16, 3) per epoch
        assert two["train/loss"] == pytest.approx(one["train/loss"], abs=1e-4)
        assert two["eval/loss"] == pytest.approx(one["eval/loss"], abs=1e-4) and len(one["eval/loss"]) == 2
        assert len(two["eval/gold"]) == 2 and all(math.isfinite(g) for g in two["eval/gold"])  # rank 0's one sample
    assert one["train/loss"][-1] < one["train/loss"][0] - 0.5  # it moved (measured: 5.30 -> 4.11)


def test_two_processes_with_a_last_batch_smaller_than_the_number_of_processes(tmp_path):
    """33 demonstrations in global batches of 16 on 2 processes: the last one (a single demonstration) joins the batch
    before it, so both processes run a backward pass at every step (else gloo aborts, NCCL hangs). Rank 0's share of
    that batch of 17 is 9, rank 1's 8: two micro-batches on each (5 + 4, 4 + 4), as --fsdp's collective forwards need
    (run with it here)."""
    path = demonstrations_file(tmp_path / "demos.jsonl", 33, 1)
    out = run_script("sft.py", "--dataset", path, "--num-epochs", "1", "--per-device-batch-size", "8", "--max-new-tokens", "8",
                     "--fsdp", "--output-dir", str(tmp_path / "m"), cwd=tmp_path, nproc=2)
    assert out.count("sft: eval loss") == 1 and "on 2 process(es)" in out
    assert len(scalars(tmp_path / "runs")["train/loss"]) == 2  # 16 and 16 + 1
    AutoModelForCausalLM.from_pretrained(tmp_path / "m")


@pytest.mark.parametrize("kind", ["qwen2"])  # dpo.py and ppo_rlhf.py run the same causal-LM LoRA path on all three
def test_use_peft_trains_the_adapters_only_and_the_merged_save_loads(tmp_path, standin, kind):
    """--use-peft on the Qwen2 stand-in: the loss falls with the adapters alone trained; the merged save loads with
    transformers and computes what the adapters did (check_lora_save). The GPT-2 and Llama stand-ins take the same
    code (models.add_lora, models.save) in tests/test_dpo.py and tests/test_ppo_rlhf.py."""
    base = standin("lm", kind)
    out = run_script("sft.py", "--model", base, "--dataset", standin("data", "tldr"), "--num-epochs", "2",
                     "--per-device-batch-size", "8", "--learning-rate", "1e-2", "--use-peft", "--lora-r", "2",
                     "--merge-lora", "--output-dir", str(tmp_path / "m"), cwd=tmp_path)
    loss0, loss1 = map(float, re.search(r"eval loss ([\d.]+) -> ([\d.]+)", out).groups())
    assert loss1 < loss0 - 0.05, out[-500:]
    assert check_lora_save(tmp_path / "m", base, 2) == (8 if kind == "gpt2" else 14)  # every linear layer of the 2 blocks
