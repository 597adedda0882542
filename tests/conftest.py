"""Shared fixtures: tiny local checkpoints built here (the tests never download anything)."""

import os
import subprocess
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "offline"  # --track is tested without an account or a network
os.environ["WANDB_SILENT"] = "true"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from common import task  # noqa: E402


def task_tokenizer(pad="own"):
    """The task's tokenizer with pad handling as a user's model might have it:
    "own" (a separate <pad>), "none" (no pad token, like GPT-2 and Llama), "eos" (pad is EOS)."""
    tok = task.build_tokenizer()
    if pad == "none":
        tok.pad_token = None
    elif pad == "eos":
        tok.pad_token = tok.eos_token
    return tok


def build_checkpoint(path, arch="gpt2", pad="none", seed=0):
    """A tiny random-weight causal LM with the task's tokenizer, saved to path (safetensors)."""
    torch.manual_seed(seed)
    tok = task_tokenizer(pad)
    common = dict(vocab_size=len(tok), bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_positions=128, n_embd=32, n_layer=2, n_head=2, **common))
    elif arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                             num_key_value_heads=1, max_position_embeddings=128, **common))
    else:
        raise ValueError(arch)
    model.config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def gpt2_no_pad(tmp_path_factory):
    """A GPT-2-architecture checkpoint whose tokenizer has no pad token."""
    return build_checkpoint(tmp_path_factory.mktemp("gpt2_no_pad"), "gpt2", pad="none")


@pytest.fixture(scope="session")
def llama_pad_eos(tmp_path_factory):
    """A Llama-architecture checkpoint whose pad token is its EOS."""
    return build_checkpoint(tmp_path_factory.mktemp("llama_pad_eos"), "llama", pad="eos")


def run_script(script, *args, timeout=600, cwd=None, nproc=1):
    """Run one of the scripts as a user would (with nproc > 1: under `torchrun --nproc_per_node nproc`, gloo on CPU);
    return its stdout (the test fails with the output if it fails)."""
    launcher = [sys.executable] if nproc == 1 else [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc)]
    cmd = [*launcher, str(ROOT / script), *args]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT, env=env)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def run_capture(script, *args, cwd, env=None, timeout=120):
    """Run one of the scripts as a user would, without asserting that it succeeds (a user's mistake should stop it):
    (exit code, stdout + stderr). env: variables to set (None removes one)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    env = {k: v for k, v in env.items() if v is not None}
    p = subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)
    return p.returncode, p.stdout + p.stderr


def scalars(run_root):
    """{tag: [values in step order]} from the one TensorBoard run under run_root (a script's runs/ directory)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = [p for p in Path(run_root).iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir)).Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def one_and_two_processes(script, flags, tmp_path, summary):
    """Run script with batch 16 on 1 process and with batch 8 per device on 2 (torchrun, gloo): the same global
    batch. Checks that each printed its summary once, from rank 0; returns the two runs' logged scalars."""
    runs = {}
    for nproc, batch in ((1, 16), (2, 8)):
        cwd = tmp_path / f"nproc{nproc}"
        cwd.mkdir()
        out = run_script(script, *flags, "--per-device-batch-size", str(batch), "--output-dir", str(cwd / "model"), cwd=cwd, nproc=nproc)
        assert out.count(summary) == 1 and f"on {nproc} process(es)" in out
        runs[nproc] = scalars(cwd / "runs")
    return runs[1], runs[2]
