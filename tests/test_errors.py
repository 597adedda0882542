"""A user's mistake ends in a few lines that name the input, and a non-zero exit: no traceback, and no run directory
left behind (issue 17). Each case runs a script as a user would, in an empty directory; all of them stop before
training starts, most before any model loads. They run in parallel: each is mostly Python importing torch."""

import ast
import importlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tyro

from conftest import ROOT, run_capture

EMPTY_CACHE = {"HF_HOME": "hf_home", "HF_HUB_CACHE": "hf_home/hub"}  # relative to the run's empty directory

# name: (script, flags, environment, lines the output must contain)
CASES = {
    "zero sizes and a negative learning rate": (
        "sft.py", ["--per-device-batch-size", "0", "--gradient-accumulation-steps", "0", "--num-epochs", "0",
                   "--learning-rate", "-1e-05", "--eval-every", "0", "--warmup-ratio", "1"], {},
        ["--per-device-batch-size must be a positive integer, got 0",
         "--gradient-accumulation-steps must be a positive integer, got 0", "--num-epochs must be a positive integer, got 0",
         "--learning-rate must be a positive number, got -1e-05", "--eval-every must be a positive integer, got 0",
         "--warmup-ratio must be in [0, 1), got 1.0"]),
    "rm_bt sizes and ranges": (
        "rm_bt.py", ["--per-device-batch-size", "-4", "--learning-rate", "0",
                     "--max-length", "96", "--max-prompt-length", "96"], {},
        ["--per-device-batch-size must be a positive integer, got -4", "--learning-rate must be a positive number, got 0.0",
         "--max-prompt-length must be below --max-length (96), got 96"]),
    "the labelers: a flip rate over 1, more outliers than labelers": (
        "dpo.py", ["--flip-rate", "1.5", "--num-labelers", "2", "--outlier-labelers", "3"], {},
        ["--flip-rate must be in [0, 1], got 1.5",
         "--outlier-labelers must be fewer than --num-labelers (2): at least one labeler is honest, got 3"]),
    "rm_ensemble under torchrun (it starts rm_bt.py's processes itself)": (
        "rm_ensemble.py", [], {"WORLD_SIZE": "2", "RANK": "0"},
        ["rm_ensemble.py drives rm_bt.py: start it with python, and --nproc-per-node N runs each rm_bt.py under "
         "torchrun"]),
    "rm_ensemble: an ensemble of one, a smoothing over 1": (
        "rm_ensemble.py", ["--ensemble-size", "1", "--label-smoothing", "2"], {},
        ["--ensemble-size must be at least 2 (one member has no spread and nothing to vote), got 1",
         "--label-smoothing must be in [0, 1], got 2.0"]),
    "--fsdp in one process, offloading with no GPU": (
        "sft.py", ["--fsdp", "--fsdp-cpu-offload"], {},
        ["--fsdp shards the models over processes: start the script with torchrun --nproc-per-node N (N >= 2); one "
         "process has nothing to shard with", "--fsdp-cpu-offload moves the shards from the GPU to CPU memory: this "
         "run is on the CPU already (no GPU), drop the flag"]),
    "--fsdp-cpu-offload without --fsdp": (
        "ppo_rlhf.py", ["--fsdp-cpu-offload"], {}, ["--fsdp-cpu-offload offloads FSDP's shards: it needs --fsdp"]),
    "rm_kwise sizes and K": (
        "rm_kwise.py", ["--prompts-per-batch", "0", "--k-min", "5", "--k-max", "3", "--max-length", "0"], {},
        ["--prompts-per-batch must be a positive integer, got 0", "--k-max must be at least --k-min (5), got 3",
         "--max-length must be a positive integer, got 0"]),
    "dpo label smoothing and beta": (
        "dpo.py", ["--loss-type", "ipo", "--label-smoothing", "0.5", "--beta", "0", "--learning-rate", "-0.0003"], {},
        ["--label-smoothing must be in [0, 0.5), got 0.5", "--label-smoothing must be 0 with this --loss-type, got 0.5",
         "--beta must be a positive number, got 0.0", "--learning-rate must be a positive number, got -0.0003"]),
    "ppo zero rollout batch and minibatches": (
        "ppo_rlhf.py", ["--rollout-batch-size", "0", "--num-mini-batches", "0", "--num-ppo-epochs", "0",
                        "--temperature", "0", "--gamma", "1.5"], {},
        ["--rollout-batch-size must be a positive integer, got 0", "--num-mini-batches must be a positive integer, got 0",
         "--num-ppo-epochs must be a positive integer, got 0", "--temperature must be a positive number, got 0.0",
         "--gamma must be in [0, 1], got 1.5"]),
    "ppo rollout smaller than its minibatches": (
        "ppo_rlhf.py", ["--rollout-batch-size", "3", "--num-mini-batches", "4", "--total-episodes", "2"], {},
        ["--rollout-batch-size must be at least --num-mini-batches (4) per process, got 3",
         "--total-episodes must be at least --rollout-batch-size, got 2"]),
    "grpo groups of one and a rollout that does not split into groups": (
        "grpo.py", ["--num-generations", "1", "--rollout-batch-size", "20", "--num-mini-batches", "4"], {},
        ["--num-generations must be at least 2 (a group of one response has no baseline), got 1"]),
    "grpo rollout not whole groups": (
        "grpo.py", ["--num-generations", "8", "--rollout-batch-size", "20", "--num-mini-batches", "4"], {},
        ["--rollout-batch-size must be a multiple of --num-generations x processes (8 x 1): whole groups on each "
         "process, got 20", "--rollout-batch-size must be at least --num-mini-batches (4) groups of 8 per process, got 20"]),
    "expert iteration sizes": (
        "expert_iteration.py", ["--rounds", "0", "--n", "0", "--sft-learning-rate", "-1"], {},
        ["--rounds must be a positive integer, got 0", "--n must be a positive integer, got 0",
         "--sft-learning-rate must be a positive number, got -1.0"]),
    "expert iteration: a flag sft.py does not know": (
        "expert_iteration.py", ["--sft-flags=--num-epoch 2"], {},
        ["--sft-flags '--num-epoch 2': sft.py refuses it: Unrecognized options: --num-epoch, 2"]),
    "a model path that does not exist": (
        "dpo.py", ["--model", "/nonexistent"], {}, ["/nonexistent: no such file or directory"]),
    "a reward model path that does not exist": (
        "ppo_rlhf.py", ["--reward-model", "/nonexistent/rm"], {}, ["/nonexistent/rm: no such file or directory"]),
    "a directory that holds no model": (
        "dpo.py", ["--model", "."], {}, [".: not a model directory (no config.json in it)"]),
    "a hub model, offline and not cached": (
        "rm_bt.py", ["--model", "gpt2"], {**EMPTY_CACHE, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": None},
        ["gpt2: no such local directory, and not a model in the Hugging Face cache; HF_HUB_OFFLINE is set"]),
    "a hub model, offline through transformers' variable": (  # huggingface_hub reads TRANSFORMERS_OFFLINE as well
        "rm_bt.py", ["--model", "gpt2"], {**EMPTY_CACHE, "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": "1"},
        ["gpt2: no such local directory, and not a model in the Hugging Face cache; TRANSFORMERS_OFFLINE is set"]),
    "a hub model, the hub unreachable and not cached": (  # a closed local port stands for no network: one quick refusal
        "rm_kwise.py", ["--model", "gpt2"],
        {**EMPTY_CACHE, "HF_HUB_OFFLINE": None, "TRANSFORMERS_OFFLINE": None, "HF_ENDPOINT": "http://127.0.0.1:9"},
        ["gpt2: no such local directory, and not a model in the Hugging Face cache, and the hub is not reachable"]),
    "LoRA: --merge-lora without --use-peft": (
        "sft.py", ["--merge-lora"], {}, ["--merge-lora merges LoRA adapters: it needs --use-peft"]),
    "LoRA: a rank of 0": ("dpo.py", ["--use-peft", "--lora-r", "0"], {}, ["--lora-r must be >= 1"]),
    "LoRA on a model trained from scratch": (
        "sft.py", ["--use-peft"], {}, ["--use-peft adapts a pretrained model: pass --model"]),
    "a stop token the tokenizer does not have": (
        "ppo_rlhf.py", ["--stop-token", "<nope>"], {},
        ["--stop-token '<nope>' is not one token of the tokenizer of common/bundled_model"]),
    "rm_generative: a Yes threshold in pairwise mode": (
        "rm_generative.py", ["--yes-threshold", "1"], {},
        ["--yes-threshold must be used with --mode pointwise, got 1.0"]),
    "rm_generative: a template without a response": (
        "rm_generative.py", ["--template", "{prompt} 1. {response_a} Which? {verdict}"], {},
        ["--template: a pairwise template needs {prompt}, {response_a}, {response_b} (and may use {verdict_1}, "
         "{verdict_2}); missing ['response_b']"]),
    "rm_generative: verdict words that begin with the same token": (
        "rm_generative.py", ["--verdict-words", "A B"], {},
        ["--verdict-words 'A B': in common/bundled_model's tokenizer they begin with the tokens ['<unk>', '<unk>']; "
         "the verdicts must begin with two different known tokens"]),
}
SCRIPTS = ["sft.py", "rm_bt.py", "rm_kwise.py", "ppo_rlhf.py", "dpo.py", "rm_composite.py", "grpo.py",
           "expert_iteration.py", "rm_ensemble.py", "rm_generative.py"]


# ---------------------------------------------------------------- the user's data: checked before any model loads

def _files(d):
    """The data files a user gets wrong: empty, one prompt (nothing to hold out), not JSON, conversations for a
    tokenizer without a chat template, English text for the bundled model's word-level vocabulary."""
    (d / "empty.jsonl").write_text("")
    three = [{"prompt": f"Which is larger, {i} or 7?", "completion": "It is 7.", "chosen": "It is 7.", "rejected": "It is 1.",
              "completions": ["It is 7.", "It is 1."]} for i in range(3)]
    (d / "one_prompt.jsonl").write_text("".join(json.dumps(r | {"prompt": three[0]["prompt"]}) + "\n" for r in three))
    (d / "bad.jsonl").write_text(json.dumps(three[0]) + "\n{oops\n" + json.dumps(three[1]) + "\nnot json\n[1, \n")
    chat = [{"prompt": [{"role": "user", "content": f"Which is larger, {i} or 7?"}], "chosen": "It is 7.", "rejected": "It is 1."}
            for i in range(200)]
    (d / "chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    english = [{"prompt": f"Please summarize forum post number {i} about gardening.", "chosen": "Plants need water.",
                "rejected": "No idea."} for i in range(200)]
    (d / "english.jsonl").write_text("".join(json.dumps(r) + "\n" for r in english))


DATA_CASES = {
    "an empty file (sft)": ("sft.py", ["--dataset", "empty.jsonl"], ["--dataset empty.jsonl: no rows in split train (the file is empty)"]),
    "an empty file (ppo)": ("ppo_rlhf.py", ["--dataset", "empty.jsonl"], ["--dataset empty.jsonl: no rows in split train"]),
    "one prompt (sft)": ("sft.py", ["--dataset", "one_prompt.jsonl"], ["--dataset one_prompt.jsonl has no eval demonstrations"]),
    "one prompt (rm_bt)": ("rm_bt.py", ["--dataset", "one_prompt.jsonl"], ["--dataset one_prompt.jsonl has no eval pairs"]),
    "one prompt (rm_kwise)": ("rm_kwise.py", ["--dataset", "one_prompt.jsonl"], ["one_prompt.jsonl has no eval rankings"]),
    "a mistyped path": ("dpo.py", ["--dataset", "./paris.jsonl"], ["--dataset ./paris.jsonl: no such file or folder"]),
    "a hub dataset offline": ("ppo_rlhf.py", ["--dataset", "someone/prompts"],
                              ["--dataset someone/prompts: not a local file or folder, and not found on the hub"]),
    "every line that is not JSON": ("rm_bt.py", ["--dataset", "bad.jsonl"],
                                    ["3 line(s) of bad.jsonl are not JSON", "bad.jsonl:2:", "bad.jsonl:4:", "bad.jsonl:5:"]),
    "conversations without a chat template": ("dpo.py", ["--dataset", "chat.jsonl"], ["has no chat template"]),
    "labeler screening on rows that name no labeler": (
        "rm_ensemble.py", ["--dataset", "chat.jsonl", "--min-labeler-agreement", "0.6"],
        ["--min-labeler-agreement: the rows of chat.jsonl do not name their labeler"]),
    "English for the bundled model": ("rm_bt.py", ["--dataset", "english.jsonl"],
                                      ["unknown to the model's tokenizer", "pass --model with a pretrained model"]),
}



@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """{("flags" or "data", case): (directory it ran in, exit code, stdout + stderr)}. The cases run as forks of one
    process that imported torch once (tests/forked.py: each is otherwise mostly Python importing torch); those that
    set the hub's variables, which huggingface_hub reads at import, each run in a fresh process."""
    keys = [("flags", c) for c in CASES] + [("data", c) for c in DATA_CASES]
    cwds = {key: tmp_path_factory.mktemp("run") for key in keys}
    jobs, fresh = [], []
    for key in keys:
        script, flags, env = (*DATA_CASES[key[1]][:2], {}) if key[0] == "data" else CASES[key[1]][:3]
        if key[0] == "data":
            _files(cwds[key])
        if any(k.startswith(("HF_", "TRANSFORMERS_")) for k in env):
            fresh.append(key)
        else:
            jobs.append({"script": str(ROOT / script), "args": flags, "cwd": str(cwds[key]), "env": env,
                         "out": str(cwds[key] / ".output"), "key": key})
    listing = tmp_path_factory.mktemp("jobs") / "jobs.json"
    listing.write_text(json.dumps(jobs))
    subprocess.run([sys.executable, str(ROOT / "tests" / "forked.py"), str(listing)], check=True, timeout=600,
                   env={**os.environ, "PYTHONPATH": str(ROOT)})
    out = {tuple(j["key"]): (Path(j["cwd"]), int(Path(j["out"] + ".code").read_text()), Path(j["out"]).read_text())
           for j in jobs}
    for key in fresh:
        script, flags, env = CASES[key[1]][:3]
        out[key] = (cwds[key], *run_capture(script, *flags, cwd=cwds[key], env=env))
    return out


@pytest.mark.parametrize("case", CASES)
def test_a_mistake_stops_the_run_with_lines_that_name_it(case, results):
    cwd, code, out = results["flags", case]
    assert code != 0, out
    assert "Traceback" not in out, out
    for line in CASES[case][3]:
        assert line in out, out
    assert len(out.strip().splitlines()) <= len(CASES[case][3]) + 3, out  # a few lines, not a report
    assert not (cwd / "runs").exists(), "a failed start left a run directory"


@pytest.mark.parametrize("script", SCRIPTS)
def test_help_says_what_the_script_does_and_each_default_once(script, monkeypatch, capsys):
    """--help, in this process: the script's Args and docstring as its tyro.cli call renders them."""
    module = importlib.import_module(script.removesuffix(".py"))
    monkeypatch.setenv("COLUMNS", "1000")
    with pytest.raises(SystemExit) as stop:
        tyro.cli(module.Args, description=module.__doc__, args=["--help"])
    out = capsys.readouterr().out
    assert stop.value.code == 0, out
    first_line = ast.get_docstring(ast.parse((ROOT / script).read_text())).splitlines()[0]
    assert first_line in out, out
    # tyro may lay the groups out in columns side by side: each column's entry on its own (split at borders and gaps)
    entries = [e for line in out.splitlines() for e in re.split(r"│|\s{3,}", line)]
    twice = [e for e in entries if re.search(r"\(default\b.*\(default\b", e)]
    assert not twice, twice


def test_expected_warnings_are_replaced_by_one_line(tmp_path):
    """The value network from a causal LM gets a fresh head: one line says so, in place of transformers' load report;
    and generate() on prompts without padding (the first 4 eval prompts) no longer warns about the attention mask."""
    code, out = run_capture("ppo_rlhf.py", "--total-episodes", "8",
                            "--rollout-batch-size", "8", "--num-mini-batches", "1", "--num-ppo-epochs", "1",
                            "--num-eval-prompts", "4", "--response-length", "32", "--output-dir", str(tmp_path / "model"),
                            cwd=tmp_path)
    assert code == 0, out
    assert "a fresh scalar head on common/bundled_model (the checkpoint has none)" in out
    assert "LOAD REPORT" not in out and "MISSING" not in out, out
    assert "attention_mask" not in out, out


@pytest.mark.parametrize("case", DATA_CASES)
def test_a_data_mistake_stops_the_run_with_lines_that_name_it(case, results):
    cwd, code, out = results["data", case]
    assert code != 0 and "Traceback" not in out, out
    for line in DATA_CASES[case][2]:
        assert line in out, out
    assert not (cwd / "runs").exists(), "a failed start left a run directory"
