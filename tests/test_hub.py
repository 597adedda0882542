"""The field's first commands, offline: every script with the GPT-2, Llama, Qwen2 and GPT-NeoX tokenizer conventions,
the preference and K-wise datasets as published, and every kind of reward model. The stand-ins (tests/standins.py)
are local folders read through the same loaders as the hub names they imitate."""

import re
from collections import Counter

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

import standins
from common import data, models, runs
from conftest import ROOT, run_capture, run_script

SMALL = ["--per-device-batch-size", "4", "--eval-every", "1000"]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    """A folder laid out like the hub: checkpoints and datasets under the names the commands use."""
    root = tmp_path_factory.mktemp("hub")
    for kind in standins.DECODER_KINDS:
        standins.build_causal_lm(root / kind, kind)
    standins.sentiment_classifier(root / "distilbert-imdb")
    standins.oasst_reward_model(root / "oasst-rm")
    for name in standins.DATASETS:
        standins.write_dataset(root / name, name, n_rows=24)
    return root


def run(hub, script, *flags):
    return run_script(script, *flags, cwd=hub)


def tracked(hub, script, *flags):
    """run() with --track, in W&B's offline mode (conftest): the run's TensorBoard scalars are mirrored into a W&B run
    (sync_tensorboard), found under wandb/offline-run-*/files/runs/<run_name>/ with the same scalars. The W&B path is
    runs.make_run's, shared by every script: it is tested on ppo_rlhf.py's run (about 10 s a run)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    before = {p.name for p in (hub / "runs").glob("*")}
    out = run(hub, script, *flags, "--track")
    (new,) = {p.name for p in (hub / "runs").glob("*")} - before
    (synced,) = hub.glob(f"wandb/offline-run-*/files/runs/{new}")
    tags = EventAccumulator(str(synced)).Reload().Tags()["scalars"]
    assert tags and set(tags) == set(EventAccumulator(str(hub / "runs" / new)).Reload().Tags()["scalars"])
    return out


# ---------------------------------------------------------------- the README's commands

def test_dpo_on_hh_rlhf_with_gpt2(hub):
    """python dpo.py --model gpt2 --dataset Anthropic/hh-rlhf: GPT-2's one token for unk, bos and eos, no pad; hh-rlhf's
    implicit prompt."""
    out = run(hub, "dpo.py", "--model", "gpt2", "--dataset", "hh-rlhf", *SMALL, "--output-dir", "dpo_hh")
    assert "hh-rlhf: 24 pairwise rows from split train, 24 for evaluation (split test)" in out
    assert re.search(r"dpo \(sigmoid, beta 0.5\): eval accuracy 0.50 -> [\d.]+", out)
    assert AutoModelForCausalLM.from_pretrained(hub / "dpo_hh").config.model_type == "gpt2"


def test_reward_model_on_trl_ultrafeedback_with_qwen2(hub):
    """Conversational rows with an implicit prompt, rendered with Qwen2's chat template (pad != eos)."""
    out = run(hub, "rm_bt.py", "--model", "qwen2", "--dataset", "trl-ultrafeedback", *SMALL, "--output-dir", "rm_uf")
    assert re.search(r"rm_bt: eval accuracy [\d.]+ -> [\d.]+", out)
    assert AutoModelForSequenceClassification.from_pretrained(hub / "rm_uf").config.num_labels == 1


def test_plackett_luce_on_nectar_with_llama(hub):
    """Starling's recipe: Nectar's 7 answers ordered by their rank, Llama's BOS, a 5% held-out split (Nectar has one split)."""
    out = run(hub, "rm_kwise.py", "--model", "llama", "--dataset", "nectar", "--prompts-per-batch", "4",
                  "--num-epochs", "1", "--output-dir", "rm_nectar")
    assert "nectar: " in out and "of the prompts held out" in out
    assert re.search(r"rm_kwise \(plackett-luce\): eval pairwise accuracy [\d.]+ -> [\d.]+", out)


def test_gpt2_positive_reviews_with_a_sentiment_classifier(hub):
    """The classic: prompts from IMDb reviews, the POSITIVE logit of a DistilBERT classifier as the reward."""
    out = run(hub, "experiments/imdb_prompts.py", "--dataset", "imdb", "--num-prompts", "40")
    assert "24 prompts from imdb[train] written to imdb_prompts.jsonl" in out
    out = tracked(hub, "ppo_rlhf.py", "--model", "gpt2", "--dataset", "imdb_prompts.jsonl", "--reward-model",
                  "distilbert-imdb", "--reward-label", "POSITIVE", "--total-episodes", "16", "--rollout-batch-size", "8",
                  "--response-length", "12")
    assert "distilbert-imdb: an encoder classifier on its own tokenization, output 1 (POSITIVE)" in out
    assert re.search(r"ppo_rlhf: eval proxy score -?[\d.]+ -> -?[\d.]+", out)


def test_ppo_on_tldr_with_a_reward_model_from_rm_bt(hub):
    """rm_bt.py on tldr-preference (its eval split is 'validation'), then PPO on tldr's prompts against it (GPT-NeoX)."""
    out = run(hub, "rm_bt.py", "--model", "neox", "--dataset", "tldr-preference", *SMALL, "--output-dir", "rm_tldr")
    assert "24 for evaluation (split validation)" in out
    out = run(hub, "ppo_rlhf.py", "--model", "neox", "--dataset", "tldr", "--reward-model", "rm_tldr",
              "--total-episodes", "16", "--rollout-batch-size", "8", "--response-length", "12")
    assert "on the policy's tokenizer" in out and "value network initialized from rm_tldr" in out
    assert re.search(r"ppo_rlhf: eval proxy score -?[\d.]+ -> -?[\d.]+", out)


# ---------------------------------------------------------------- every script with every tokenizer convention

@pytest.mark.parametrize("kind, dataset, flags", [
    ("gpt2", "tldr", []),
    ("llama", "h4-ultrafeedback", ["--dataset-train-split", "train_sft", "--dataset-test-split", "test_sft"]),
    ("qwen2", "h4-ultrafeedback", ["--dataset-train-split", "train_sft", "--dataset-test-split", "test_sft"]),
    ("neox", "tldr", []),
])
def test_sft_with_each_tokenizer(hub, kind, dataset, flags):
    out = run(hub, "sft.py", "--model", kind, "--dataset", dataset, *flags, "--num-epochs", "1", *SMALL,
              "--output-dir", f"sft_{kind}")
    assert re.search(r"sft: eval loss [\d.]+ -> [\d.]+", out)


@pytest.mark.parametrize("kind, dataset", [("gpt2", "hh-rlhf"), ("llama", "h4-ultrafeedback")])
def test_rm_bt_with_each_tokenizer(hub, kind, dataset):
    splits = ["--dataset-train-split", "train_prefs", "--dataset-test-split", "test_prefs"] if dataset.startswith("h4") else []
    out = run(hub, "rm_bt.py", "--model", kind, "--dataset", dataset, *splits, *SMALL, "--output-dir", f"rm_{kind}")
    assert re.search(r"rm_bt: eval accuracy [\d.]+ -> [\d.]+", out)


@pytest.mark.parametrize("kind, dataset", [("gpt2", "openbmb-ultrafeedback"), ("qwen2", "nectar"), ("neox", "openbmb-ultrafeedback")])
def test_rm_kwise_with_each_tokenizer(hub, kind, dataset):
    out = run(hub, "rm_kwise.py", "--model", kind, "--dataset", dataset, "--prompts-per-batch", "4", "--num-epochs", "1",
              "--output-dir", f"rmk_{kind}")
    assert re.search(r"rm_kwise \(plackett-luce\): eval pairwise accuracy [\d.]+ -> [\d.]+", out)


@pytest.mark.parametrize("kind, dataset, flags", [
    ("llama", "trl-ultrafeedback", []),
    ("qwen2", "h4-ultrafeedback", ["--dataset-train-split", "train_prefs", "--dataset-test-split", "test_prefs"]),
    ("neox", "tldr-preference", ["--loss-type", "ipo"]),
])
def test_dpo_with_each_tokenizer(hub, kind, dataset, flags):
    out = run(hub, "dpo.py", "--model", kind, "--dataset", dataset, *flags, *SMALL, "--output-dir", f"dpo_{kind}")
    # the first loss: policy == reference, so ln 2 for DPO, (1/(2 beta))^2 = 1 for IPO at beta 0.5
    assert re.search(r"before training: eval loss (0.693|1.000)", out)


def test_ppo_with_qwen2_and_an_encoder_reward_model(hub):
    """Qwen2 (chat prompts, EOS <|im_end|> != pad) scored by a DeBERTa reward model that reads (prompt, response) pairs."""
    out = run(hub, "ppo_rlhf.py", "--model", "qwen2", "--dataset", "ultrafeedback-prompt", "--reward-model", "oasst-rm",
              "--total-episodes", "16", "--rollout-batch-size", "8", "--response-length", "12")
    assert "oasst-rm: an encoder classifier on its own tokenization, output 0" in out
    assert "value network initialized from qwen2 (fresh scalar head)" in out


def test_ppo_with_llama_and_a_python_reward_function(hub):
    (hub / "my_rewards.py").write_text("def reward(prompts, completions):\n    return [len(c.split()) for c in completions]\n")
    out = run(hub, "ppo_rlhf.py", "--model", "llama", "--dataset", "hh-rlhf", "--reward-model", "my_rewards.py:reward",
              "--total-episodes", "16", "--rollout-batch-size", "8", "--response-length", "12")
    assert "scoring with the function my_rewards.py:reward" in out
    assert re.search(r"ppo_rlhf: eval proxy score [\d.]+ -> [\d.]+", out)


# ---------------------------------------------------------------- conventions, read from the encodings

def test_one_bos_with_llama_chat_and_one_eos_with_qwen2_chat(hub):
    """Llama's chat template writes BOS itself: the prompt is encoded without adding another. Qwen2's template ends the
    reply with <|im_end|> (its EOS): no second EOS. GPT-2's plain text gets EOS appended, no BOS."""
    chat, reply = [{"role": "user", "content": "How do I bake bread?"}], "Start with a little flour."
    llama = models.load_tokenizer(str(hub / "llama"))
    ids, _ = data.encode(llama, chat, reply, 1024, 512, Counter())
    assert ids[0] == llama.bos_token_id and ids[1] != llama.bos_token_id and ids.count(llama.bos_token_id) == 1
    plain, _ = data.encode(llama, "How do I bake bread?", " Start.", 1024, 512, Counter())
    assert plain[0] == llama.bos_token_id and plain[-1] == llama.eos_token_id
    qwen = models.load_tokenizer(str(hub / "qwen2"))
    ids, mask = data.encode(qwen, chat, reply, 1024, 512, Counter())
    assert ids[-1] == qwen.eos_token_id and ids[-2] != qwen.eos_token_id  # the template's end of turn, once
    assert ids.count(qwen.eos_token_id) == 3  # the system, user and assistant turns each end with it
    assert qwen.pad_token_id != qwen.eos_token_id
    gpt2 = models.load_tokenizer(str(hub / "gpt2"))
    ids, _ = data.encode(gpt2, "Hello there.", " Hi.", 1024, 512, Counter())
    assert ids[-1] == gpt2.eos_token_id and ids.count(gpt2.eos_token_id) == 1


def test_length_and_learning_rate_defaults_follow_the_model(hub, monkeypatch):
    """The bundled model (and models of its size) get the embedded task's values; a pretrained model TRL's 1024/512,
    capped at its context (GPT-2's 1024; the bundled model's 128)."""
    class Args:
        learning_rate = max_length = max_prompt_length = None

    lengths = {"max_length": (96, 1024), "max_prompt_length": (32, 512)}
    gpt2 = models.load_causal_lm(str(hub / "gpt2"))
    small = Args()
    models.fit_defaults(small, gpt2, None, (1e-3, 1e-5), lengths, say=runs.quiet)
    assert (small.learning_rate, small.max_length, small.max_prompt_length) == (1e-3, 96, 32)
    monkeypatch.setattr(models, "SMALL_MODEL", 0)  # as if it were the real 124M GPT-2
    big = Args()
    models.fit_defaults(big, gpt2, None, (1e-3, 1e-5), {"max_length": (96, 2048), "max_prompt_length": (32, 512)}, runs.quiet)
    assert (big.learning_rate, big.max_length, big.max_prompt_length) == (1e-5, 1024, 512)  # 2048 capped at the context
    given = Args()
    given.learning_rate, given.max_length = 0.5, 64
    models.fit_defaults(given, gpt2, None, (1e-3, 1e-5), lengths, say=runs.quiet)
    # --max-length 64 alone: the pretrained prompt default (512) would leave no room for the completion: half of it
    assert (given.learning_rate, given.max_length, given.max_prompt_length) == (0.5, 64, 32)


# ---------------------------------------------------------------- bad input on the hub path: one clear message

def test_reward_label_errors_name_the_labels(hub):
    from common import scoring

    tok = models.load_tokenizer(str(hub / "gpt2"))
    with pytest.raises(SystemExit, match=r"has 2 labels \(NEGATIVE, POSITIVE\): pass --reward-label"):
        scoring.load(str(hub / "distilbert-imdb"), tok)
    with pytest.raises(SystemExit, match=r"--reward-label HAPPY: .* its labels are 0 \(NEGATIVE\), 1 \(POSITIVE\)"):
        scoring.load(str(hub / "distilbert-imdb"), tok, label="HAPPY")
    assert scoring.load(str(hub / "distilbert-imdb"), tok, label="1")["label"] == 1


def test_encoder_reward_reads_the_pair_and_classifier_reads_one_text(hub):
    """The score equals the classifier's own logit on the text as its card says to feed it."""
    from transformers import AutoTokenizer

    from common import scoring

    tok = models.load_tokenizer(str(hub / "gpt2"))
    prompts, texts = ["I watched this movie last night."], ["It was great and I love it."]
    sentiment = scoring.load(str(hub / "distilbert-imdb"), tok, label="POSITIVE")
    own = AutoTokenizer.from_pretrained(hub / "distilbert-imdb")
    model = AutoModelForSequenceClassification.from_pretrained(hub / "distilbert-imdb").eval()
    with torch.no_grad():
        expected = model(**own(prompts[0] + " " + texts[0], return_tensors="pt")).logits[0, 1]
    got = scoring.score(sentiment, prompts, texts, torch.tensor([True]))
    torch.testing.assert_close(got[0], expected)
    assert got[0] > scoring.score(sentiment, prompts, ["It was awful and boring."], torch.tensor([True]))[0]
    rm = scoring.load(str(hub / "oasst-rm"), tok)
    own = AutoTokenizer.from_pretrained(hub / "oasst-rm")
    model = AutoModelForSequenceClassification.from_pretrained(hub / "oasst-rm").eval()
    with torch.no_grad():
        expected = model(**own(prompts[0], texts[0], return_tensors="pt")).logits[0, 0]
    torch.testing.assert_close(scoring.score(rm, prompts, texts, torch.tensor([True]))[0], expected)


def test_hub_rows_that_fit_no_format_and_unknown_splits(hub, tmp_path):
    with pytest.raises(SystemExit, match=r"imdb\[train\] row 1: .*fits no pairwise format|imdb\[train\] row 1: missing key"):
        data.load_rows(str(hub / "imdb"), "pairwise")
    with pytest.raises(SystemExit, match="no such split; its splits are train_prefs, test_prefs, train_sft"):
        data.load_rows(str(hub / "h4-ultrafeedback"), "pairwise")


def test_track_without_wandb_says_how_to_install_it(tmp_path):
    """A Python where `import wandb` fails: one line, before anything loads."""
    (tmp_path / "sitecustomize.py").write_text("import sys\nsys.modules['wandb'] = None\n")
    code, out = run_capture("rm_bt.py", "--track", cwd=tmp_path, env={"PYTHONPATH": f"{tmp_path}:{ROOT}"})
    assert code != 0 and "--track logs to Weights & Biases, which is not installed: pip install wandb" in out
    assert "Traceback" not in out and not (tmp_path / "runs").exists()
