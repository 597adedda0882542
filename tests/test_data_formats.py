"""common/data.py: the hub's published layouts read into the four kinds, split flags, and the tokenizer checks.
Each expected row is written out by hand from the layout's published card."""

import json
from collections import Counter

import pytest

from common import data, task

HUMAN, ASSISTANT = "\n\nHuman:", "\n\nAssistant:"


def rows_of(records, kind):
    return data.validate([(f"row {i}", r) for i, r in enumerate(records, 1)], kind, "test")


def test_hh_rlhf_prompt_is_the_dialogue_up_to_the_last_assistant_turn():
    dialogue = f"{HUMAN} Hi, can you help me bake bread?{ASSISTANT} Sure, what kind?{HUMAN} Sourdough, please.{ASSISTANT}"
    # both replies start with the same words: a plain common prefix would eat " I" into the prompt
    rec = {"chosen": dialogue + " I would start with a starter.", "rejected": dialogue + " I do not know."}
    (row,) = rows_of([rec], "pairwise")
    assert row == {"prompt": dialogue, "chosen": " I would start with a starter.", "rejected": " I do not know."}
    (single,) = rows_of([{"chosen": f"{HUMAN} Q?{ASSISTANT} Yes.", "rejected": f"{HUMAN} Q?{ASSISTANT} No."}], "pairwise")
    assert single == {"prompt": f"{HUMAN} Q?{ASSISTANT}", "chosen": " Yes.", "rejected": " No."}
    assert rows_of([rec], "prompt") == [{"prompt": dialogue}]


def test_plain_text_without_turns_cuts_at_a_word_boundary():
    (row,) = rows_of([{"chosen": "Tell me a joke. Knock knock.", "rejected": "Tell me a joke. Knowing you, no."}], "pairwise")
    assert row == {"prompt": "Tell me a joke. ", "chosen": "Knock knock.", "rejected": "Knowing you, no."}


def test_conversational_implicit_prompt_and_multi_turn():
    user = {"role": "user", "content": "What is 2 + 2?"}
    good, bad = {"role": "assistant", "content": "4"}, {"role": "assistant", "content": "5"}
    (row,) = rows_of([{"chosen": [user, good], "rejected": [user, bad], "score_chosen": 9.0, "score_rejected": 2.0}], "pairwise")
    assert row == {"prompt": [user], "chosen": [good], "rejected": [bad]}
    turns = [user, {"role": "assistant", "content": "4"}, {"role": "user", "content": "And times 3?"}]
    (row,) = rows_of([{"chosen": turns + [{"role": "assistant", "content": "12"}],
                       "rejected": turns + [{"role": "assistant", "content": "7"}]}], "pairwise")
    assert row["prompt"] == turns and row["chosen"] == [{"role": "assistant", "content": "12"}]


def test_h4_ultrafeedback_prompt_is_not_doubled():
    user = {"role": "user", "content": "Name a prime."}
    rec = {"prompt": "Name a prime.", "prompt_id": "x", "messages": [user, {"role": "assistant", "content": "7"}],
           "chosen": [user, {"role": "assistant", "content": "7"}], "rejected": [user, {"role": "assistant", "content": "9"}],
           "score_chosen": 8.0, "score_rejected": 3.0}
    (row,) = rows_of([rec], "pairwise")
    assert row == {"prompt": [user], "chosen": [{"role": "assistant", "content": "7"}],
                   "rejected": [{"role": "assistant", "content": "9"}]}
    # its SFT splits: the conversation in "messages" (the prompt column is there too, the reply is in messages)
    assert rows_of([rec], "prompt") == [{"prompt": [user]}]
    assert rows_of([{"prompt": "Name a prime.", "messages": rec["messages"]}], "sft") == [
        {"prompt": [user], "completion": [{"role": "assistant", "content": "7"}]}]


def test_nectar_and_ultrafeedback_rankings_best_first():
    nectar = {"prompt": f"{HUMAN} Pick a colour.{ASSISTANT}", "turns": 1, "num_responses": 3, "source": ["x"],
              "answers": [{"answer": "green", "model": "a", "rank": 2}, {"answer": "red", "model": "b", "rank": 1},
                          {"answer": "mauve", "model": "c", "rank": 3}]}
    assert rows_of([nectar], "kwise") == [{"prompt": nectar["prompt"], "completions": ["red", "green", "mauve"]}]
    uf = {"source": "s", "instruction": "Say hi.", "models": ["a", "b", "c"], "correct_answers": [], "incorrect_answers": [],
          "completions": [{"response": "hey", "overall_score": 6.5, "annotations": {"x": 1}, "model": "a"},
                          {"response": "hello there", "overall_score": 8.0, "annotations": {}, "model": "b"},
                          {"response": "no", "overall_score": 1.0, "annotations": {}, "model": "c"}]}
    assert rows_of([uf], "kwise") == [{"prompt": "Say hi.", "completions": ["hello there", "hey", "no"]}]
    assert rows_of([uf, nectar], "prompt") == [{"prompt": "Say hi."}, {"prompt": nectar["prompt"]}]


def test_tied_scores_are_counted(capsys):
    tied = {"instruction": "Say hi.", "completions": [{"response": "a", "overall_score": 7.0},
                                                       {"response": "b", "overall_score": 7.0}, {"response": "c", "overall_score": 2.0}]}
    assert rows_of([tied, {"prompt": "p", "completions": ["x", "y"], "scores": [1, 2]}], "kwise")[0]["completions"][2] == "c"
    assert "test: 1 of 2 rankings have tied scores" in capsys.readouterr().out


def test_prompts_from_any_kind_each_once():
    recs = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "chosen": "x", "rejected": "y"},
            {"prompt": [{"role": "user", "content": "c"}]}, {"instruction": "d"}]
    assert rows_of(recs, "prompt") == [{"prompt": "a"}, {"prompt": [{"role": "user", "content": "c"}]}, {"prompt": "d"}]


def test_a_row_that_fits_no_format_names_where_and_the_formats():
    with pytest.raises(data.DataError) as e:
        data.validate([("ds[train] row 3", {"text": "a review", "label": 1})], "pairwise", "ds[train]")
    msg = str(e.value)
    assert "ds[train] row 3" in msg and '{"chosen", "rejected"}' in msg and "['label', 'text']" in msg
    with pytest.raises(data.DataError, match=r"row 1: fits no kwise format"):
        rows_of([{"chosen": "a", "rejected": "b"}], "kwise")


def write_folder(tmp_path, splits):
    """A local dataset folder the way the hub stores one: JSON files under data/ and a README naming the splits."""
    folder = tmp_path / "ds"
    (folder / "data").mkdir(parents=True)
    config = "---\nconfigs:\n- config_name: default\n  data_files:\n"
    for split, recs in splits.items():
        (folder / "data" / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
        config += f"  - split: {split}\n    path: data/{split}.jsonl\n"
    (folder / "README.md").write_text(config + "---\n")
    return str(folder)


def test_split_flags_on_a_local_folder(tmp_path, capsys):
    pair = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(6)]
    folder = write_folder(tmp_path, {"train_prefs": pair, "test_prefs": pair[:2], "train_sft": pair})
    with pytest.raises(data.DataError, match="--dataset-train-split train: .* its splits are train_prefs, test_prefs, train_sft"):
        data.load_rows(folder, "pairwise")
    train, evals = data.load_rows(folder, "pairwise", train_split="train_prefs", test_split="test_prefs")
    assert len(train) == 6 and len(evals) == 2 and "2 for evaluation (split test_prefs)" in capsys.readouterr().out
    with pytest.raises(data.DataError, match="--dataset-test-split test: .* no such split"):
        data.load_rows(folder, "pairwise", train_split="train_prefs", test_split="test")
    # no test or validation split: 5% of the prompts are held out; with a validation split it is used
    many = [{"prompt": f"p{i}", "chosen": "a", "rejected": "b"} for i in range(400)]
    train, evals = data.load_rows(write_folder(tmp_path / "a", {"train": many}), "pairwise")
    assert len(train) + len(evals) == 400 and 8 <= len(evals) <= 35  # 20 expected; binomial 4-sigma band
    train, evals = data.load_rows(write_folder(tmp_path / "b", {"train": many, "validation": pair}), "pairwise")
    assert len(train) == 400 and len(evals) == 6


def test_missing_path_and_unreachable_hub_say_so(tmp_path):
    with pytest.raises(data.DataError, match="--dataset ./nope.jsonl: no such file or folder"):
        data.load_rows("./nope.jsonl", "sft")
    with pytest.raises(data.DataError, match="--dataset someone/some-dataset: not a local file or folder.*offline"):
        data.load_rows("someone/some-dataset", "pairwise")


def test_unknown_tokens_stop_the_run_with_a_hint():
    tok = task.build_tokenizer()  # the bundled model's word-level vocabulary: English is mostly <unk>
    counts = Counter()
    data.encode(tok, "Please summarize this forum post about gardening.", "Plants need water.", 96, 32, counts)
    assert counts["unknown tokens"] > 0.5 * counts["tokens"]
    with pytest.raises(data.DataError, match="unknown to the model's tokenizer.*pass --model"):
        data.report(counts, "train pairs")
    fine = Counter()
    data.encode(tok, "Which is larger, 12 or 7?", "It is 12.", 96, 32, fine)
    assert fine["unknown tokens"] == 0
    data.report(fine, "train pairs")


def test_conversations_need_a_chat_template_and_eos_is_not_doubled():
    tok = task.build_tokenizer()
    chat = [{"role": "user", "content": "Which is larger, 12 or 7?"}]
    with pytest.raises(data.DataError, match="has no chat template"):
        data.encode(tok, chat, "It is 12.", 96, 32, Counter())
    # a template that ends the assistant turn with EOS itself (chatml-style): no second EOS is appended
    tok.chat_template = ("{% for m in messages %}{{ m['content'] }}{% if m['role'] == 'assistant' %}<eos>{% endif %}"
                         "{% endfor %}{% if add_generation_prompt %} It{% endif %}")
    ids, mask = data.encode(tok, chat, [{"role": "assistant", "content": " It is 12."}], 96, 32, Counter())
    assert ids[-1] == tok.eos_token_id and ids[-2] != tok.eos_token_id and sum(mask) >= 2
