"""Shared fixtures: tiny local checkpoints built here (the tests never download anything)."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ["WANDB_MODE"] = "offline"  # --track is tested without an account or a network
os.environ["WANDB_SILENT"] = "true"
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, GPT2Config,  # noqa: E402
                          GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM)

import standins  # noqa: E402
from common import data, models, task  # noqa: E402

LORA_KINDS = ("gpt2", "llama", "qwen2")  # the architectures every script runs with --use-peft in the tests


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


@pytest.fixture
def one_cpu_thread(monkeypatch):
    """One CPU thread, in the test and in the scripts it runs: on a shared 2-core machine, spinning threads made the
    RL scripts 6x slower."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def gpt2_no_pad(tmp_path_factory):
    """A GPT-2-architecture checkpoint whose tokenizer has no pad token."""
    return build_checkpoint(tmp_path_factory.mktemp("gpt2_no_pad"), "gpt2", pad="none")


@pytest.fixture(scope="session")
def llama_pad_eos(tmp_path_factory):
    """A Llama-architecture checkpoint whose pad token is its EOS."""
    return build_checkpoint(tmp_path_factory.mktemp("llama_pad_eos"), "llama", pad="eos")


@pytest.fixture(scope="session")
def standin(tmp_path_factory):
    """standin(what, name): a stand-in built once per session (tests/standins.py), its path. what: "lm" (a causal LM
    of kind name), "rm" (a decoder reward model of kind name) or "data" (the dataset name)."""
    builders = {"lm": standins.build_causal_lm, "rm": standins.build_sequence_classifier, "data": standins.write_dataset}
    built = {}

    def get(what, name):
        if (what, name) not in built:
            built[what, name] = builders[what](tmp_path_factory.mktemp(f"{what}_{name}"), name)
        return built[what, name]

    return get


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


def run_failing(script, *args, cwd=None):
    """Run a script that must refuse its flags: returns the one line it ended with (no traceback, exit code 1)."""
    cmd = [sys.executable, str(ROOT / script), *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=cwd or ROOT,
                       env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr[-3000:]
    return p.stderr.strip().splitlines()[-1]


def check_lora_save(out_dir, base, r, head=False):
    """What a --use-peft --merge-lora run saved in out_dir, against the checkpoint it started from (base):
    - out_dir/adapter holds adapter weights only (lora_A, lora_B), and with head=True the scalar head `score`;
    - out_dir loads with transformers alone, and every weight of it is the base's bit for bit except those of the
      adapted layers, each moved by an update of rank <= r (B A: the adapters, nothing else, were trained), and the head;
    - the merged model computes what the base with the adapters computes.
    Returns the number of adapted layers."""
    from peft import PeftModel
    from safetensors.torch import load_file

    cls, kwargs = (AutoModelForSequenceClassification, {"num_labels": 1}) if head else (AutoModelForCausalLM, {})
    saved = load_file(Path(out_dir) / "adapter" / "adapter_model.safetensors")
    assert all(".lora_A." in k or ".lora_B." in k for k in saved if k != "base_model.model.score.weight"), sorted(saved)
    assert ("base_model.model.score.weight" in saved) == head
    adapted = {k.split(".lora_")[0].removeprefix("base_model.model.") + ".weight" for k in saved if ".lora_" in k}
    merged = cls.from_pretrained(out_dir).eval()
    start = cls.from_pretrained(base, **kwargs).state_dict()
    moved = 0
    for name, w in merged.state_dict().items():
        if name in adapted:
            s = torch.linalg.svdvals((w - start[name]).double())
            assert s[r:].max() < 1e-3 * s[0], (name, s[: r + 2])  # rank <= r, up to fp32 rounding of W + B A
            moved += s[0].item() > 0
        elif head and name.startswith("score."):
            assert torch.equal(w, saved["base_model.model.score.weight"])
        else:
            assert torch.equal(w, start[name]), name
    assert moved == len(adapted) > 0
    with_adapters = PeftModel.from_pretrained(cls.from_pretrained(base, **kwargs), Path(out_dir) / "adapter").eval()
    ids = torch.randint(0, merged.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, 8:] = 0
    with torch.no_grad():
        if head:
            a, b = models.reward_at_last_token(merged, ids, mask), models.reward_at_last_token(with_adapters, ids, mask)
        else:
            a = merged(input_ids=ids, attention_mask=mask).logits
            b = with_adapters(input_ids=ids, attention_mask=mask).logits
    torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    return len(adapted)


def scalars(run_root):
    """{tag: [values in step order]} from the one TensorBoard run under run_root (a script's runs/ directory), or of
    run_root itself when it is a run's folder (which may also hold a driver's data and models)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = Path(run_root)
    if not any(run_dir.glob("events.out.tfevents*")):
        (run_dir,) = [p for p in run_dir.iterdir() if p.is_dir()]
    acc = EventAccumulator(str(run_dir)).Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def one_and_two_processes(script, flags, tmp_path, summary):
    """Run script with batch 16 on 1 process, and with batch 8 per device on 2 (torchrun, gloo) under DDP and under
    --fsdp: the same global batch. Checks that each printed its summary once, from rank 0, and that the FSDP run saved
    the weights the DDP run saved (compare_saved); returns the three runs' logged scalars."""
    runs = {}
    for name, nproc, batch, extra in (("one", 1, 16, []), ("ddp", 2, 8, []), ("fsdp", 2, 8, ["--fsdp"])):
        cwd = tmp_path / name
        cwd.mkdir()
        out = run_script(script, *flags, *extra, "--per-device-batch-size", str(batch), "--output-dir",
                         str(cwd / "model"), cwd=cwd, nproc=nproc)
        assert out.count(summary) == 1 and f"on {nproc} process(es)" in out
        runs[name] = scalars(cwd / "runs")
    compare_saved(tmp_path / "ddp" / "model", tmp_path / "fsdp" / "model")
    return runs["one"], runs["ddp"], runs["fsdp"]


def compare_saved(ddp_dir, fsdp_dir, tol=1e-3):
    """The model an --fsdp run gathered and saved loads in this plain process (no torch.distributed) and holds the
    weights of the DDP run on the same batches: within tol, set by what it must tell apart (fp32 sums in another
    order move a weight by about 1e-6; a shard saved in the wrong place or a weight left untrained, by the size of the
    training's updates, 1e-2 here)."""
    auto = AutoModelForSequenceClassification if "ForSequenceClassification" in json.loads(
        (Path(ddp_dir) / "config.json").read_text())["architectures"][0] else AutoModelForCausalLM
    a, b = auto.from_pretrained(ddp_dir).state_dict(), auto.from_pretrained(fsdp_dir).state_dict()
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) < tol


def calibration_refit(model_dir, rows, score_fn):
    """(a, b) of the least-squares line from the saved normalized reward to gold on the calibration rows (numpy):
    (1, 0) when the saved normalization is the calibration."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tok = models.load_tokenizer(str(model_dir))
    ids = [data.encode(tok, r["prompt"], r["completion"], 96, 32, Counter())[0] for r in rows]
    with torch.no_grad():
        raw = score_fn(model, ids, tok.pad_token_id, "cpu")
    normalized = ((raw - model.config.reward_mean) / model.config.reward_std).numpy()
    gold = np.array([task.gold_reward(r["prompt"], r["completion"]) for r in rows])
    (a, b), *_ = np.linalg.lstsq(np.stack([normalized, np.ones(len(rows))], 1), gold, rcond=None)
    return a, b
