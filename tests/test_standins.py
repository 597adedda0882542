"""tests/standins.py: each stand-in keeps the conventions of the hub artifact it imitates, after a save and a reload
through the Auto classes and datasets.load_dataset."""

import hashlib
import os
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import datasets  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer  # noqa: E402

import standins  # noqa: E402

datasets.disable_progress_bars()
CHAT = [{"role": "user", "content": "How do I start a vegetable garden?"},
        {"role": "assistant", "content": "Start small."}]


def reload(path, kind, pad="none"):
    return AutoTokenizer.from_pretrained(standins.build_tokenizer(path, kind, pad))


@pytest.mark.parametrize("kind", standins.DECODER_KINDS + standins.ENCODER_KINDS)
def test_tokenizer_survives_save_and_reload(tmp_path, kind):
    tok = reload(tmp_path, kind)
    assert standins.tokenizer_facts(tok) == standins.tokenizer_facts(standins.make_tokenizer(kind))
    assert 1000 <= len(tok) <= 3000
    text = "The movie was great, I love it."
    assert tok.decode(tok(text)["input_ids"], skip_special_tokens=True).strip().lower() == text.lower()


def test_gpt2_tokenizer(tmp_path):
    tok = reload(tmp_path, "gpt2")
    assert type(tok).__name__ == "GPT2Tokenizer"
    assert tok.unk_token == tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.unk_token_id == tok.bos_token_id == tok.eos_token_id == len(tok) - 1  # 50256 in the real one
    assert tok.pad_token is None and tok.pad_token_id is None
    assert tok.chat_template is None and tok.model_max_length == 1024
    ids = tok("Hello world")["input_ids"]
    assert tok.bos_token_id not in ids and tok.eos_token_id not in ids  # no BOS, no EOS added
    assert not tok.convert_ids_to_tokens(ids)[0].startswith("Ġ")  # add_prefix_space=False


@pytest.mark.parametrize("pad", ["none", "eos"])
def test_llama_tokenizer(tmp_path, pad):
    tok = reload(tmp_path, "llama", pad)
    assert type(tok).__name__ == "LlamaTokenizer"
    assert (tok.unk_token, tok.bos_token, tok.eos_token) == ("<unk>", "<s>", "</s>")
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2)
    assert tok.pad_token == (None if pad == "none" else "</s>")
    ids = tok("Hello world")["input_ids"]
    assert ids[0] == 1 and ids.count(1) == 1 and ids[-1] != 2  # BOS added, EOS not
    assert tok.convert_ids_to_tokens(tok("é", add_special_tokens=False)["input_ids"])[-2:] == ["<0xC3>", "<0xA9>"]
    # The template itself starts with BOS, so encoding its text with add_special_tokens=True doubles it.
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == "<s><|user|>\nHow do I start a vegetable garden?</s>\n<|assistant|>\nStart small.</s>\n"
    assert tok(text)["input_ids"][:3] == [1, 1, tok(text)["input_ids"][2]] and tok(text)["input_ids"][2] != 1
    assert tok(text, add_special_tokens=False)["input_ids"][:2] != [1, 1]
    prompt = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("</s>\n<|assistant|>\n")


def test_qwen2_tokenizer(tmp_path):
    tok = reload(tmp_path, "qwen2")
    assert type(tok).__name__ == "Qwen2Tokenizer"
    assert tok.bos_token is None and tok.bos_token_id is None and tok.unk_token is None
    assert (tok.pad_token, tok.eos_token) == ("<|endoftext|>", "<|im_end|>") and tok.pad_token_id != tok.eos_token_id
    assert "<|im_start|>" in tok.all_special_tokens and tok.model_max_length == 32768
    for marker in ("<|im_start|>", "<|im_end|>", "<|endoftext|>"):  # single tokens inside text
        assert tok(f"hi{marker}", add_special_tokens=False)["input_ids"][-1] == tok.convert_tokens_to_ids(marker)
    ids = tok("Hello world")["input_ids"]
    assert tok.pad_token_id not in ids and tok.eos_token_id not in ids
    text = tok.apply_chat_template(CHAT[:1], tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                    "<|im_start|>user\nHow do I start a vegetable garden?<|im_end|>\n<|im_start|>assistant\n")
    assert tok.apply_chat_template(CHAT, tokenize=False).endswith("Start small.<|im_end|>\n")


def test_neox_tokenizer(tmp_path):
    tok = reload(tmp_path, "neox")
    assert type(tok).__name__ == "GPTNeoXTokenizer"
    assert tok.unk_token == tok.bos_token == tok.eos_token == "<|endoftext|>"
    assert tok.bos_token_id == tok.eos_token_id == tok.unk_token_id == 0
    assert tok.pad_token is None and tok.convert_tokens_to_ids("<|padding|>") == 1  # in the vocab, not the pad
    assert tok("<|padding|>", add_special_tokens=False)["input_ids"] == [1]
    assert tok.chat_template is None and 0 not in tok("Hello world")["input_ids"]


def test_encoder_tokenizers_encode_pairs(tmp_path):
    bert = reload(tmp_path / "d", "distilbert")
    assert type(bert).__name__ == "DistilBertTokenizer"
    assert [bert.pad_token_id, bert.unk_token_id, bert.cls_token_id, bert.sep_token_id, bert.mask_token_id] == [
        0, 100, 101, 102, 103]
    assert bert("HELLO World")["input_ids"] == bert("hello world")["input_ids"]  # uncased
    pair = bert.convert_ids_to_tokens(bert("good movie", "bad movie")["input_ids"])
    assert pair == ["[CLS]", "good", "movie", "[SEP]", "bad", "movie", "[SEP]"]
    deberta = reload(tmp_path / "deb", "deberta")
    assert type(deberta).__name__ == "DebertaV2Tokenizer"
    assert [deberta.pad_token_id, deberta.cls_token_id, deberta.sep_token_id, deberta.unk_token_id] == [0, 1, 2, 3]
    assert deberta.mask_token_id == len(deberta) - 1
    enc = deberta("Is it good?", "It is great.")
    tokens = deberta.convert_ids_to_tokens(enc["input_ids"])
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2 and tokens[-1] == "[SEP]"
    assert enc["token_type_ids"][-1] == 1 and "[UNK]" not in tokens
    roberta = reload(tmp_path / "r", "roberta")
    assert type(roberta).__name__ == "RobertaTokenizer"
    assert [roberta.cls_token_id, roberta.pad_token_id, roberta.sep_token_id, roberta.unk_token_id] == [0, 1, 2, 3]
    a, b = (roberta(t, add_special_tokens=False)["input_ids"] for t in ("good", "bad"))
    assert roberta("good", "bad")["input_ids"] == [0, *a, 2, 2, *b, 2]  # <s> a </s></s> b </s>


CAUSAL = {"gpt2": "GPT2LMHeadModel", "llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM",
          "neox": "GPTNeoXForCausalLM"}


@pytest.mark.parametrize("kind", standins.DECODER_KINDS)
def test_causal_lm_loads_runs_and_has_the_families_ids(tmp_path, kind):
    path = standins.build_causal_lm(tmp_path, kind)
    assert (Path(path) / "model.safetensors").exists() and (Path(path) / "generation_config.json").exists()
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    assert type(model).__name__ == CAUSAL[kind] and model.dtype == torch.float32
    cfg, gen = model.config, model.generation_config
    assert cfg.num_hidden_layers == 2 and cfg.vocab_size >= len(tok) and cfg.pad_token_id is None
    texts = ["a short text", "a somewhat longer text here"] if tok.pad_token else ["a short text"]  # no pad: batch 1
    batch = tok(texts, return_tensors="pt", padding=tok.pad_token is not None)
    assert model(**batch).logits.shape == (*batch["input_ids"].shape, cfg.vocab_size)
    out = model.generate(**tok("Hello", return_tensors="pt"), max_new_tokens=3, do_sample=False,
                         pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    assert out.shape[1] <= len(tok("Hello")["input_ids"]) + 3
    if kind == "gpt2":
        assert cfg.bos_token_id == cfg.eos_token_id == tok.eos_token_id and cfg.n_positions == 1024
        assert gen.bos_token_id == gen.eos_token_id == tok.eos_token_id
    elif kind == "llama":
        assert (cfg.bos_token_id, cfg.eos_token_id, cfg.max_position_embeddings) == (1, 2, 2048)
        assert (gen.bos_token_id, gen.eos_token_id, gen.pad_token_id) == (1, 2, 0)
    elif kind == "qwen2":
        endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
        assert (cfg.bos_token_id, cfg.eos_token_id) == (endoftext, tok.eos_token_id) and cfg.vocab_size > len(tok)
        assert gen.eos_token_id == [tok.eos_token_id, endoftext] and gen.pad_token_id == endoftext
        assert (gen.do_sample, gen.temperature, gen.top_p, gen.top_k, gen.repetition_penalty) == (
            True, 0.7, 0.8, 20, 1.05)
    else:
        assert cfg.bos_token_id == cfg.eos_token_id == 0 and cfg.max_position_embeddings == 2048
        assert gen.bos_token_id == gen.eos_token_id == 0 and cfg.vocab_size % 128 == 0


def test_llama_pad_eos_checkpoint(tmp_path):
    path = standins.build_causal_lm(tmp_path, "llama", pad="eos")
    tok = AutoTokenizer.from_pretrained(path)
    assert tok.pad_token_id == tok.eos_token_id == 2
    assert AutoModelForCausalLM.from_pretrained(path).config.pad_token_id is None
    with pytest.raises(ValueError):
        standins.build_causal_lm(tmp_path / "q", "qwen2", pad="eos")


@pytest.mark.parametrize("kind", standins.DECODER_KINDS + standins.ENCODER_KINDS)
def test_sequence_classifier_loads_and_runs(tmp_path, kind):
    path = standins.build_sequence_classifier(tmp_path, kind, num_labels=3)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.num_labels == 3 and model.config.pad_token_id == tok.pad_token_id
    if kind in standins.DECODER_KINDS:
        assert hasattr(model, "score") and type(model).__name__.endswith("ForSequenceClassification")
        batch = tok("a text to score", return_tensors="pt")  # batch 1: HF pooling needs a pad id beyond that
    else:
        batch = tok(["a question?", "another question"], ["an answer", "b"], return_tensors="pt", padding=True)
    with torch.no_grad():
        assert model(**batch).logits.shape == (batch["input_ids"].shape[0], 3)


def test_oasst_reward_model(tmp_path):
    path = standins.oasst_reward_model(tmp_path)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    assert type(model).__name__ == "DebertaV2ForSequenceClassification" and model.config.num_labels == 1
    assert model.config.type_vocab_size == 0
    with torch.no_grad():
        assert model(**tok("What is a volcano?", "A mountain that erupts.", return_tensors="pt")).logits.shape == (1, 1)


@pytest.mark.parametrize("kind", ["distilbert", "roberta"])
def test_sentiment_classifier_positive_logit_follows_sentiment_words(tmp_path, kind):
    path = standins.sentiment_classifier(tmp_path / "clf", kind)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForSequenceClassification.from_pretrained(path)
    assert model.config.id2label == {0: "NEGATIVE", 1: "POSITIVE"}
    texts = ["The film was great and I love it.", "The film was great.", "The film was long.",
             "The film was boring.", "The film was boring, awful and terrible."]
    with torch.no_grad():
        batch = model(**tok(texts, return_tensors="pt", padding=True)).logits
        alone = torch.cat([model(**tok(t, return_tensors="pt")).logits for t in texts])
    assert torch.allclose(batch, alone, atol=1e-4)  # padding does not leak into the score
    positive = batch[:, 1].tolist()
    assert positive == sorted(positive, reverse=True) and abs(positive[2]) < 1e-4
    imdb = datasets.load_dataset(standins.write_dataset(tmp_path / "imdb", "imdb"), split="test",
                                 cache_dir=str(tmp_path / "cache"))
    with torch.no_grad():
        logits = model(**tok(list(imdb["text"]), return_tensors="pt", padding=True)).logits
    assert (logits.argmax(-1) == torch.tensor(list(imdb["label"]))).float().mean() >= 0.95


COLUMNS = {
    "hh-rlhf": ["chosen", "rejected"],
    "trl-ultrafeedback": ["chosen", "rejected", "score_chosen", "score_rejected"],
    "h4-ultrafeedback": ["prompt", "prompt_id", "chosen", "rejected", "messages", "score_chosen", "score_rejected"],
    "tldr-preference": ["prompt", "chosen", "rejected"],
    "tldr": ["prompt", "completion"],
    "ultrafeedback-prompt": ["prompt"],
    "nectar": ["prompt", "answers", "turns", "num_responses", "source", "good_natured"],
    "openbmb-ultrafeedback": ["source", "instruction", "models", "completions", "correct_answers",
                              "incorrect_answers"],
    "imdb": ["text", "label"],
    "helpsteer2": ["prompt", "response", "helpfulness", "correctness", "coherence", "complexity", "verbosity"],
}


def load(tmp_path, name, **kw):
    return datasets.load_dataset(standins.write_dataset(tmp_path / name, name, n_rows=12),
                                 cache_dir=str(tmp_path / "cache"), **kw)


@pytest.mark.parametrize("name", list(standins.DATASETS))
def test_dataset_has_the_published_splits_and_columns(tmp_path, name):
    ds = load(tmp_path, name)
    assert list(ds) == list(standins.DATASETS[name][1])
    for split in ds.values():
        assert split.column_names == COLUMNS[name] and split.num_rows == 12
    key = "instruction" if name == "openbmb-ultrafeedback" else COLUMNS[name][0]
    keys = [str(row[key]) for split in ds.values() for row in split]
    if name == "helpsteer2":  # two rated responses per prompt, in consecutive rows, as published
        assert keys[::2] == keys[1::2] and len(set(keys)) == len(keys) // 2
    elif name != "h4-ultrafeedback":  # its _sft and _gen splits repeat the _prefs prompts, as the real ones do
        assert len(set(keys)) == len(keys)


def test_hh_rlhf_shares_the_prompt_up_to_the_last_assistant_turn(tmp_path):
    ds = load(tmp_path, "hh-rlhf")
    turns = []
    for row in ds["train"]:
        chosen, rejected = row["chosen"], row["rejected"]
        assert chosen.startswith("\n\nHuman: ") and chosen != rejected
        cut = chosen.rindex("\n\nAssistant:") + len("\n\nAssistant:")
        assert rejected[:cut] == chosen[:cut] and "\n\nAssistant:" not in rejected[cut:]
        turns.append(chosen.count("\n\nHuman: "))
    assert min(turns) == 1 and max(turns) >= 2
    helpful = load(tmp_path, "hh-rlhf", data_dir="helpful-base")
    assert helpful["train"].num_rows == 6  # the subsets are folders, as in the real repo


def test_preference_message_datasets(tmp_path):
    for row in load(tmp_path, "trl-ultrafeedback")["train"]:
        assert row["chosen"][0] == row["rejected"][0] and row["chosen"][0]["role"] == "user"
        assert row["chosen"][-1]["role"] == "assistant" and row["score_chosen"] > row["score_rejected"]
    h4 = load(tmp_path, "h4-ultrafeedback")
    for row in h4["test_prefs"]:
        assert row["chosen"][0] == {"content": row["prompt"], "role": "user"} == row["rejected"][0]
        assert row["prompt_id"] == hashlib.sha256(row["prompt"].encode()).hexdigest()
        assert row["messages"] == row["chosen"]
    assert list(h4["train_sft"]["prompt"]) == list(h4["train_prefs"]["prompt"]) != list(h4["test_prefs"]["prompt"])
    prompts = list(load(tmp_path, "ultrafeedback-prompt")["test"]["prompt"])
    assert all(len(p) == 1 and p[0]["role"] == "user" for p in prompts)


def test_tldr_datasets(tmp_path):
    for name, answer in (("tldr", "completion"), ("tldr-preference", "chosen")):
        for row in load(tmp_path, name)["validation"]:
            assert row["prompt"].startswith("SUBREDDIT: r/") and row["prompt"].endswith("\n\nTL;DR:")
            assert "\n\nTITLE: " in row["prompt"] and "\n\nPOST: " in row["prompt"]
            assert row[answer].startswith(" ") and 10 <= len(row["prompt"].split()) <= 120


def test_kwise_datasets(tmp_path):
    nectar = load(tmp_path, "nectar")["train"]
    assert nectar.features["answers"].feature["rank"].dtype == "float64"
    unsorted = 0
    for row in nectar:
        assert row["prompt"].startswith("\n\nHuman: ") and row["prompt"].endswith("\n\nAssistant:")
        ranks = [a["rank"] for a in row["answers"]]
        assert sorted(ranks) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0] and row["num_responses"] == 7
        assert set(row["answers"][0]) == {"answer", "model", "rank"} and len({a["model"] for a in row["answers"]}) == 7
        assert row["turns"] == row["prompt"].count("\n\nHuman: ")
        unsorted += ranks != sorted(ranks)
    assert unsorted > 0
    for row in load(tmp_path, "openbmb-ultrafeedback")["train"]:
        assert len(row["completions"]) == 4 and row["models"] == [c["model"] for c in row["completions"]]
        c = row["completions"][0]
        assert set(c["annotations"]) == {"helpfulness", "honesty", "instruction_following", "truthfulness"}
        assert 1.0 <= c["overall_score"] <= 10.0 and c["response"]


def test_imdb_labels(tmp_path):
    ds = load(tmp_path, "imdb")
    assert ds["train"].features["label"].names == ["neg", "pos"]
    labels = list(ds["train"]["label"])
    assert labels == sorted(labels) and set(labels) == {0, 1}
    assert set(ds["unsupervised"]["label"]) == {-1}
    assert all(10 <= len(t.replace("<br />", " ").split()) <= 80 for t in ds["test"]["text"])
