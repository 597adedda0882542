"""Tiny local stand-ins for the hub artifacts users bring, so tests run the scripts offline through the same code
paths as the real names: `AutoTokenizer.from_pretrained(folder)`, `AutoModelFor*.from_pretrained(folder)`,
`datasets.load_dataset(folder)`.

Each stand-in keeps the conventions of the artifact it imitates (tokenizer class, special tokens and which roles
share one token, BOS behaviour, chat template, config and generation-config ids, dataset columns, split names and
file layout). What it does not keep: size (vocabularies of 1200-1800 tokens trained here on a small English
corpus, so token ids differ; 2-layer models of width 32), and knowledge (random weights, except the wired
sentiment classifier below). Every builder writes a folder and returns its path as a str.

| stand-in                                   | imitates                                        |
|--------------------------------------------|-------------------------------------------------|
| tokenizer / causal LM / RM "gpt2"          | openai-community/gpt2                           |
| "llama" (pad="none" / pad="eos")           | Llama-2 / TinyLlama-1.1B-Chat (chat template)   |
| "qwen2"                                    | Qwen/Qwen2-0.5B-Instruct                        |
| "neox"                                     | EleutherAI/pythia-* (GPT-NeoX tokenizer)        |
| classifier "distilbert"                    | distilbert-base-uncased; lvwerra/distilbert-imdb|
| classifier "deberta"                       | OpenAssistant/reward-model-deberta-v3-large-v2  |
| classifier "roberta"                       | siebert/sentiment-roberta-large-english         |
| dataset "hh-rlhf"                          | Anthropic/hh-rlhf (jsonl.gz in subset folders)  |
| "trl-ultrafeedback"                        | trl-lib/ultrafeedback_binarized                 |
| "h4-ultrafeedback"                         | HuggingFaceH4/ultrafeedback_binarized           |
| "tldr-preference", "tldr"                  | trl-lib/tldr-preference, trl-lib/tldr           |
| "ultrafeedback-prompt"                     | trl-lib/ultrafeedback-prompt                    |
| "nectar"                                   | berkeley-nest/Nectar (data/rlaif.parquet)       |
| "openbmb-ultrafeedback"                    | openbmb/UltraFeedback ("N/A" truthfulness: false_qa)|
| "helpsteer2"                               | nvidia/HelpSteer2 (train/validation .jsonl.gz)  |
| "imdb"                                     | stanfordnlp/imdb (plain_text/, sorted by label) |

Known departures: the Llama chat template is TinyLlama/zephyr's turn format but begins with `{{ bos_token }}` as
Llama-2-chat's does (so encoding the rendered chat with add_special_tokens=True gives the duplicate BOS); Llama's
vocabulary is a BPE with byte fallback trained here (as LlamaTokenizerFast loads it), not a sentencepiece model;
DeBERTa's Unigram pieces all have one score (fewest-pieces segmentation); model configs set no pad_token_id, reward
models set the tokenizer's; Nectar's answers are stored in shuffled order on purpose (code must read `rank`); every
split of a dataset has n_rows rows. Note (transformers 5 drops add_bos_token on load, real or not): a Llama tokenizer
reports `add_bos_token == False` although its post-processor adds BOS; test the encoding, not the flag.
"""

import functools
import gzip
import hashlib
import itertools
import json
import random
import string
from pathlib import Path

import torch
from datasets import ClassLabel, Dataset, Features, List, Value
from tokenizers import AddedToken, Tokenizer, models, normalizers, pre_tokenizers, trainers
from transformers import (AutoModelForSequenceClassification, AutoTokenizer, DebertaV2Config,
                          DebertaV2ForSequenceClassification, DebertaV2Tokenizer, DistilBertConfig,
                          DistilBertForSequenceClassification, DistilBertTokenizer, GenerationConfig, GPT2Config,
                          GPT2ForSequenceClassification, GPT2LMHeadModel, GPT2Tokenizer, GPTNeoXConfig,
                          GPTNeoXForCausalLM, GPTNeoXForSequenceClassification, GPTNeoXTokenizer, LlamaConfig,
                          LlamaForCausalLM, LlamaForSequenceClassification, LlamaTokenizer, Qwen2Config,
                          Qwen2ForCausalLM, Qwen2ForSequenceClassification, Qwen2Tokenizer, RobertaConfig,
                          RobertaForSequenceClassification, RobertaTokenizer)

DECODER_KINDS = ("gpt2", "llama", "qwen2", "neox")
ENCODER_KINDS = ("distilbert", "deberta", "roberta")
POSITIVE_WORDS = ("great", "good", "love", "wonderful", "excellent", "best", "beautiful", "fun")
NEGATIVE_WORDS = ("bad", "boring", "awful", "terrible", "worst", "waste", "dull", "poor")

# Llama-2-chat's templates start with the BOS token; the turn format is TinyLlama-chat's (zephyr's).
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + eos_token + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)
# Qwen2-Instruct's chatml, with its default system turn.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# ---------------------------------------------------------------------------------------------------------------
# Text: small seeded templates shared by the datasets and the tokenizers' training corpus.
TOPICS = ["a vegetable garden", "sourdough bread", "the water cycle", "a job interview", "electric cars",
          "the French Revolution", "saving for retirement", "learning the guitar", "a first marathon", "house plants",
          "the solar system", "public speaking", "a small business", "climate change", "chess openings",
          "a road trip", "healthy breakfasts", "machine learning", "the immune system", "a birthday party",
          "photosynthesis", "credit card debt", "a rainy weekend", "the Roman Empire", "meditation", "a new puppy",
          "budget travel", "writing a resume", "volcanoes", "a science fair project"]
QUESTIONS = ["How do I get started with {t}?", "Can you explain {t} to a beginner?", "What are three tips for {t}?",
             "Write a short poem about {t}.", "Why do people care so much about {t}?",
             "What mistakes should I avoid with {t}?", "Give me a one-week plan for {t}.",
             "What is a common myth about {t}?"]
SUFFIXES = ["", " Keep it short.", " I am a complete beginner.", " Please give an example.",
            " My friend asked me and I did not know.", " Answer in a friendly tone."]
GOOD = ["A good first step with {t} is to set a small goal and check your progress every week.",
        "Many people find that {t} becomes easier once they learn the basic ideas.",
        "For example, you could spend twenty minutes a day reading about {t}.",
        "It helps to ask someone with experience for honest feedback.",
        "Try to write down what worked and what did not, so you can improve next time.",
        "Be patient with yourself, because real progress takes time.",
        "A library or a free online course is a great place to learn more about {t}."]
BAD = ["I don't know much about {t}.", "That is not something I can help with.", "Just search the internet.",
       "Why would anyone ask about {t}?", "It depends.", "I like turtles.", "You should figure that out yourself."]
FOLLOW_UPS = ["Can you say more about that?", "What if I only have an hour a day?",
              "Thanks. Is there anything else I should know?", "That sounds hard. Is there an easier way?"]
SUBREDDITS = ["relationships", "AskReddit", "personalfinance", "relationship_advice", "tifu", "dogs", "running",
              "jobs", "legaladvice", "cooking"]
PEOPLE = ["roommate", "girlfriend", "boyfriend", "best friend", "sister", "coworker", "landlord", "neighbor"]
EVENTS = ["keeps borrowing my car without asking", "forgot my birthday again", "wants to move to another city",
          "asked me to lend them money", "stopped answering my messages", "adopted a dog without telling me"]
POST_LINES = ["We have known each other for {n} years.", "I tried to talk about it last week but it went badly.",
              "I do not want to start a fight.", "Everyone else thinks I am overreacting.",
              "It has been stressing me out at work.", "I really care about this person."]
POST_ASKS = ["What should I do?", "Am I wrong to be upset?", "How do I bring this up?", "Is this normal?"]
REVIEW_OPEN = ["I watched this movie last night.", "This film came out when I was in school.",
               "My friends told me to see this one.", "I rented this on a quiet Sunday."]
REVIEW_NEUTRAL = ["The story is about {t}.", "It runs for about two hours.", "The lead actor plays a teacher.",
                  "Most of it was filmed in a small town.", "I saw it with my brother."]
REVIEW_POS = ["The acting was great and the story was wonderful.", "I love the music in this film.",
              "It is one of the best movies I have seen this year.", "The director did an excellent job.",
              "The ending was beautiful and the whole thing was fun.", "A good cast makes a good movie."]
REVIEW_NEG = ["The acting was bad and the story was boring.", "It was a waste of two hours.",
              "The worst part was the dull dialogue.", "The plot was awful and the ending was terrible.",
              "The special effects looked poor.", "A bad script makes a bad movie."]
# A few paragraphs of everyday English, so the vocabularies hold common words beyond the templates.
PLAIN_ENGLISH = """Every morning the small town wakes up slowly. The baker opens his shop before the sun rises, and
the smell of fresh bread fills the narrow street. Children walk to school in groups, talking about games, homework
and the weather. Their parents hurry to the station, where the first train leaves at seven o'clock.
Question: what is the most important thing to remember when you learn something new? Answer: practice a little
every day, ask for help when you need it, and never be afraid of making mistakes. Teachers, doctors, farmers,
engineers and artists all agree on this simple idea!
The river behind the old factory is clean again. Ten years ago nobody would swim there; today families bring
picnics on Saturday afternoons. Birds, fish and even a few otters have returned. "It took patience," said the
mayor, "and the work of hundreds of volunteers."
Numbers matter too: 1, 2, 3, 10, 25, 100, 1000. A recipe might need 250 grams of flour, 2 eggs and 30 minutes in a
hot oven. Would you like to try it yourself? Please write back and tell me how it went; I would be glad to hear.
""".splitlines()


def _prompts(rng, n):
    """n distinct user prompts."""
    combos = list(itertools.product(TOPICS, QUESTIONS, SUFFIXES))
    return [q.format(t=t) + s for t, q, s in rng.sample(combos, n)]


def _topic(prompt):
    return next((t for t in TOPICS if t in prompt), "this")


def _answer(rng, prompt, good=True):
    """A helpful answer (2-4 sentences about the prompt's topic) or an unhelpful one (1-2 sentences)."""
    pool, k = (GOOD, rng.randint(2, 4)) if good else (BAD, rng.randint(1, 2))
    return " ".join(s.format(t=_topic(prompt)) for s in rng.sample(pool, k))


def _post(rng):
    """A TL;DR prompt in the Reddit format, and a good and a poor summary of it."""
    person, event = rng.choice(PEOPLE), rng.choice(EVENTS)
    me, them = rng.randint(18, 45), rng.randint(18, 45)
    lines = [f"My ({me}{rng.choice('MF')}) {person} ({them}{rng.choice('MF')}) {event}."]
    lines += [s.format(n=rng.randint(2, 15)) for s in rng.sample(POST_LINES, rng.randint(2, 4))]
    lines.append(rng.choice(POST_ASKS))
    title = f"My {person} {event}, {rng.choice(POST_ASKS).lower()}"
    prompt = f"SUBREDDIT: r/{rng.choice(SUBREDDITS)}\n\nTITLE: {title}\n\nPOST: {' '.join(lines)}\n\nTL;DR:"
    good = f" my {person} {event} and I don't know how to bring it up without a fight."
    poor = rng.choice([" I have a problem with someone.", " we have known each other for years.", " what do?"])
    return prompt, good, poor


def _review(rng, label):
    """A movie review (about 30-60 words) whose sentiment words follow the label (0 neg, 1 pos, -1 either)."""
    polar = REVIEW_POS if label == 1 or (label == -1 and rng.random() < 0.5) else REVIEW_NEG
    body = rng.sample(REVIEW_NEUTRAL, 2) + rng.sample(polar, rng.randint(2, 3))
    body = [s.format(t=rng.choice(TOPICS)) for s in body]
    rng.shuffle(body)
    glue = rng.choice([" ", " ", "<br /><br />"])  # real IMDb reviews keep their HTML line breaks
    return glue.join([rng.choice(REVIEW_OPEN), *body])


def _unique(make, n, rng, seen):
    """n results of make(rng) whose first element is not in seen (which is updated)."""
    out = []
    while len(out) < n:
        item = make(rng)
        if item[0] not in seen:
            seen.add(item[0])
            out.append(item)
    return out


def english_corpus():
    """The tokenizers' training text: the templates below filled in, hh-rlhf style dialogues, plain English."""
    rng = random.Random(0)
    lines = [q.format(t=t) + s for t in TOPICS for q in QUESTIONS for s in SUFFIXES]
    lines += [s.format(t=t) for t in TOPICS for s in GOOD + BAD]
    lines += [" ".join(_post(rng)) for _ in range(200)] + [_review(rng, -1) for _ in range(300)]
    lines += [f"\n\nHuman: {p}\n\nAssistant: {_answer(rng, p)}" for p in _prompts(rng, 100)]
    return lines + PLAIN_ENGLISH + FOLLOW_UPS


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: vocabularies trained here, wrapped in the real classes with the real special tokens.
def _trained_model(trainer, model, pre_tokenizer, normalizer=None):
    tok = Tokenizer(model)
    tok.pre_tokenizer = pre_tokenizer
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.train_from_iterator(english_corpus(), trainer)
    return json.loads(tok.to_str())["model"]


@functools.cache
def _byte_level_bpe():
    """(tokens in id order, merges) of a byte-level BPE like GPT-2's (also used for Qwen2, NeoX and RoBERTa)."""
    trainer = trainers.BpeTrainer(vocab_size=2000, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    m = _trained_model(trainer, models.BPE(), pre_tokenizers.ByteLevel(add_prefix_space=False))
    return sorted(m["vocab"], key=m["vocab"].get), [tuple(x) for x in m["merges"]]


@functools.cache
def _metaspace_bpe():
    """(tokens, merges) of a BPE over '▁'-marked words, for Llama's byte-fallback BPE."""
    trainer = trainers.BpeTrainer(vocab_size=1700, show_progress=False)
    m = _trained_model(trainer, models.BPE(), pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"))
    return sorted(m["vocab"], key=m["vocab"].get), [tuple(x) for x in m["merges"]]


@functools.cache
def _wordpiece():
    trainer = trainers.WordPieceTrainer(vocab_size=2000, show_progress=False, special_tokens=["[UNK]"],
                                       initial_alphabet=list(string.printable.lower()))
    m = _trained_model(trainer, models.WordPiece(unk_token="[UNK]"), pre_tokenizers.BertPreTokenizer(),
                       normalizers.BertNormalizer(lowercase=True))
    return [t for t in sorted(m["vocab"], key=m["vocab"].get) if t != "[UNK]"]


def _unigram():
    """(piece, score) pairs for DeBERTa-v3's Unigram model. EM training on so small a corpus keeps few whole words,
    so the pieces are Llama's BPE tokens plus printable characters, all with one score: Viterbi then picks the
    segmentation with the fewest pieces."""
    pieces = [t for t in _metaspace_bpe()[0] if len(t) > 1] + ["▁", *string.printable.strip()]
    return [(p, -10.0) for p in dict.fromkeys(pieces)]


def _ids(specials, tokens, tail=()):
    """A vocab dict: the special tokens first, then the trained tokens, then tokens at the end (GPT-2's style)."""
    vocab = {t: i for i, t in enumerate(specials)}
    for t in [*tokens, *tail]:
        vocab.setdefault(t, len(vocab))
    return vocab


def make_tokenizer(kind, pad="none"):
    """The in-memory tokenizer of a kind (see the module table). pad: "none" (as GPT-2, Llama-2 and Pythia publish)
    or "eos" (pad = EOS: TinyLlama-chat, and the usual user fix); Qwen2 and the encoders always have their own pad."""
    if pad not in ("none", "eos"):
        raise ValueError(f"pad must be 'none' or 'eos', not {pad!r}")
    if pad == "eos" and kind not in ("gpt2", "llama", "neox"):
        raise ValueError(f"{kind} publishes its own pad token; pad='eos' is for gpt2, llama and neox")
    if kind == "gpt2":  # <|endoftext|> is the last id (50256 in the real one) and is unk, bos and eos
        tokens, merges = _byte_level_bpe()
        tok = GPT2Tokenizer(vocab=_ids([], tokens, ["<|endoftext|>"]), merges=merges, model_max_length=1024)
    elif kind == "llama":  # <unk> 0, <s> 1, </s> 2, then the 256 byte-fallback tokens <0x00>..<0xFF>
        tokens, merges = _metaspace_bpe()
        byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
        tok = LlamaTokenizer(vocab=_ids(["<unk>", "<s>", "</s>", *byte_tokens], tokens), merges=merges,
                             add_bos_token=True, add_eos_token=False, legacy=False, model_max_length=2048,
                             padding_side="right", chat_template=LLAMA_CHAT_TEMPLATE)
    elif kind == "qwen2":  # no BOS; pad <|endoftext|> differs from the chat EOS <|im_end|>
        tokens, merges = _byte_level_bpe()
        vocab = _ids([], tokens, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
        tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", extra_special_tokens=["<|im_start|>", "<|im_end|>"],
                             model_max_length=32768, errors="replace", chat_template=QWEN2_CHAT_TEMPLATE)
    elif kind == "neox":  # <|endoftext|> 0 is unk, bos and eos; <|padding|> 1 exists but is not the pad token
        tokens, merges = _byte_level_bpe()
        tok = GPTNeoXTokenizer(vocab=_ids(["<|endoftext|>", "<|padding|>"], tokens), merges=merges, pad_token=None)
        tok.add_tokens([AddedToken("<|padding|>", special=True, normalized=False)], special_tokens=True)
    elif kind == "distilbert":  # bert-base-uncased ids: [PAD] 0, [unused*] 1-99, [UNK] 100, [CLS] 101, [SEP] 102
        specials = ["[PAD]", *[f"[unused{i}]" for i in range(99)], "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = DistilBertTokenizer(vocab=_ids(specials, _wordpiece()), do_lower_case=True, model_max_length=512)
    elif kind == "deberta":  # deberta-v3 ids: [PAD] 0, [CLS] 1, [SEP] 2, [UNK] 3, [MASK] last
        vocab = [(t, 0.0) for t in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")] + _unigram() + [("[MASK]", 0.0)]
        tok = DebertaV2Tokenizer(vocab=vocab, do_lower_case=False, split_by_punct=False, model_max_length=512)
    elif kind == "roberta":  # <s> 0, <pad> 1, </s> 2, <unk> 3, <mask> last
        tokens, merges = _byte_level_bpe()
        vocab = _ids(["<s>", "<pad>", "</s>", "<unk>"], tokens, ["<mask>"])
        tok = RobertaTokenizer(vocab=vocab, merges=merges, model_max_length=512,
                               mask_token=AddedToken("<mask>", lstrip=True, special=True, normalized=False))
    else:
        raise ValueError(f"unknown tokenizer kind {kind!r}: one of {DECODER_KINDS + ENCODER_KINDS}")
    if pad == "eos":
        tok.pad_token = tok.eos_token
    return tok


def tokenizer_facts(tok):
    """What a stand-in must keep through save and reload: special tokens and ids, BOS behaviour, template."""
    return dict(cls=type(tok).__name__, special=tok.special_tokens_map, all_special=tok.all_special_tokens,
                ids=[tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.unk_token_id],
                encoded=tok("Hello there, how are you?\nFine.")["input_ids"], pair=tok("Why?", "Yes.")["input_ids"],
                chat_template=tok.chat_template, max_len=tok.model_max_length, padding_side=tok.padding_side,
                vocab=len(tok))


def build_tokenizer(path, kind, pad="none"):
    """Save the tokenizer of a kind to path, check that AutoTokenizer reloads it unchanged, return str(path)."""
    tok = make_tokenizer(kind, pad)
    tok.save_pretrained(path)
    before, after = tokenizer_facts(tok), tokenizer_facts(AutoTokenizer.from_pretrained(path))
    if before != after:
        raise AssertionError(f"{kind} tokenizer changed on reload: {before} != {after}")
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Models: random weights (fp32, safetensors), 2 layers of width 32, the real families' ids and context lengths.
def _padded(n, multiple=128):
    """Qwen2, Pythia and DeBERTa-v3 pad their embedding matrix past len(tokenizer) (151936, 50304, 128100)."""
    return -(-n // multiple) * multiple


def _decoder_config(kind, tok, pad_token_id=None, **kw):
    """The published base/instruct configs name no pad id; reward models do (pad_token_id)."""
    small = dict(num_hidden_layers=2, num_attention_heads=2, pad_token_id=pad_token_id, **kw)
    if kind == "gpt2":  # bos = eos = <|endoftext|>, 1024 positions
        return GPT2Config(vocab_size=len(tok), n_positions=1024, n_embd=32, n_layer=2, n_head=2,
                          bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=pad_token_id,
                          **kw)
    if kind == "llama":  # bos 1, eos 2, grouped-query attention as TinyLlama
        return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_key_value_heads=1,
                           max_position_embeddings=2048, bos_token_id=1, eos_token_id=2, **small)
    if kind == "qwen2":  # config bos is <|endoftext|> although the tokenizer has no BOS; eos is <|im_end|>
        return Qwen2Config(vocab_size=_padded(len(tok)), hidden_size=32, intermediate_size=64, num_key_value_heads=1,
                           max_position_embeddings=32768, tie_word_embeddings=True,
                           bos_token_id=tok.convert_tokens_to_ids("<|endoftext|>"), eos_token_id=tok.eos_token_id,
                           **small)
    if kind == "neox":  # Pythia: bos = eos = 0, rotary on a quarter of each head, parallel residual, untied
        return GPTNeoXConfig(vocab_size=_padded(len(tok)), hidden_size=32, intermediate_size=128,
                             max_position_embeddings=2048, rotary_pct=0.25, use_parallel_residual=True,
                             tie_word_embeddings=False, bos_token_id=0, eos_token_id=0, **small)
    raise ValueError(f"unknown decoder kind {kind!r}: one of {DECODER_KINDS}")


def _generation_config(kind, tok):
    if kind == "qwen2":  # Qwen2-Instruct samples by default and stops at either <|im_end|> or <|endoftext|>
        endoftext = tok.convert_tokens_to_ids("<|endoftext|>")
        return GenerationConfig(bos_token_id=endoftext, pad_token_id=endoftext,
                                eos_token_id=[tok.eos_token_id, endoftext], do_sample=True, temperature=0.7,
                                top_p=0.8, top_k=20, repetition_penalty=1.05)
    if kind == "llama":  # Llama-2 and TinyLlama-chat ship pad_token_id 0 (<unk>) here, whatever the tokenizer says
        return GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=0, max_length=2048)
    return GenerationConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def build_causal_lm(path, kind, seed=0, pad="none"):
    """A random causal LM of a decoder kind with its tokenizer and generation_config.json, saved to path. pad: see
    make_tokenizer; config.json has no pad_token_id either way, as the published checkpoints."""
    build_tokenizer(path, kind, pad)
    tok = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(seed)
    cls = {"gpt2": GPT2LMHeadModel, "llama": LlamaForCausalLM, "qwen2": Qwen2ForCausalLM, "neox": GPTNeoXForCausalLM}
    model = cls[kind](_decoder_config(kind, tok))
    model.generation_config = _generation_config(kind, tok)
    model.save_pretrained(path)
    return str(path)


def _encoder_config(kind, tok, **kw):
    small = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 pad_token_id=tok.pad_token_id, **kw)
    if kind == "distilbert":
        return DistilBertConfig(vocab_size=len(tok), dim=32, hidden_dim=64, n_layers=2, n_heads=2,
                                max_position_embeddings=512, pad_token_id=tok.pad_token_id, **kw)
    if kind == "deberta":  # deberta-v3: relative positions only, no token types
        return DebertaV2Config(vocab_size=_padded(len(tok)), max_position_embeddings=512, type_vocab_size=0,
                               relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                               share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                               max_relative_positions=-1, layer_norm_eps=1e-7, **small)
    if kind == "roberta":  # positions start after the pad id: 514 = 512 + 2
        return RobertaConfig(vocab_size=len(tok), max_position_embeddings=514, type_vocab_size=1, bos_token_id=0,
                             eos_token_id=2, **small)
    raise ValueError(f"unknown encoder kind {kind!r}: one of {ENCODER_KINDS}")


def build_sequence_classifier(path, kind, num_labels=1, id2label=None, seed=0):
    """A random sequence classifier with its tokenizer, saved to path: for a decoder kind a reward model with a
    `score` head (HF reads it at the last non-pad token; config pad_token_id = the tokenizer's, None for gpt2, llama
    and neox), for an encoder kind the family's classification head on the first token."""
    build_tokenizer(path, kind)
    tok = AutoTokenizer.from_pretrained(path)
    labels = {} if id2label is None else dict(id2label=dict(id2label), label2id={v: k for k, v in id2label.items()})
    torch.manual_seed(seed)
    if kind in DECODER_KINDS:
        cls = {"gpt2": GPT2ForSequenceClassification, "llama": LlamaForSequenceClassification,
               "qwen2": Qwen2ForSequenceClassification, "neox": GPTNeoXForSequenceClassification}[kind]
        model = cls(_decoder_config(kind, tok, pad_token_id=tok.pad_token_id, num_labels=num_labels, **labels))
    else:
        cls = {"distilbert": DistilBertForSequenceClassification, "deberta": DebertaV2ForSequenceClassification,
               "roberta": RobertaForSequenceClassification}[kind]
        model = cls(_encoder_config(kind, tok, num_labels=num_labels, **labels))
    model.save_pretrained(path)
    return str(path)


def oasst_reward_model(path, seed=0):
    """Like OpenAssistant/reward-model-deberta-v3-large-v2: DeBERTa-v3, one logit, used as tokenizer(question,
    answer). Random weights."""
    return build_sequence_classifier(path, "deberta", num_labels=1, seed=seed)


def sentiment_classifier(path, kind="distilbert", seed=0):
    """Like lvwerra/distilbert-imdb (kind "distilbert") or siebert/sentiment-roberta-large-english ("roberta"):
    two labels {0: NEGATIVE, 1: POSITIVE}, with weights wired (not trained) so that the POSITIVE logit rises with
    the share of POSITIVE_WORDS among the tokens and falls with the share of NEGATIVE_WORDS; a text with neither
    scores exactly 0 on both logits. How:
      - embedding dimension 0 is set so that after the embedding LayerNorm it is exactly 0 for every token, except
        about +5.5 for a positive word and -5.5 for a negative one (any token whose text, lowercased and without
        its space marker, is one of the words);
      - layer 0 attends uniformly (zero query weights) and copies the mean of dimension 0 into the first token;
        every other attention output and feed-forward output is zeroed, so the later layers pass it through;
      - the head reads dimension 0 (h) of the first token: logits (NEGATIVE, POSITIVE) = (-0.9 h, 0.9 h)
        (roberta: (-3 tanh(0.3 h), 3 tanh(0.3 h))).
    Dropout is left at the config's values, so score in eval mode (from_pretrained's default)."""
    if kind not in ("distilbert", "roberta"):
        raise ValueError("the sentiment classifier is a distilbert or a roberta")
    build_sequence_classifier(path, kind, num_labels=2, id2label={0: "NEGATIVE", 1: "POSITIVE"}, seed=seed)
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path)
    if kind == "distilbert":
        body = model.distilbert
        tables = [body.embeddings.word_embeddings, body.embeddings.position_embeddings]
        layers = [(b.attention.q_lin, b.attention.v_lin, b.attention.out_lin, b.ffn.lin2)
                  for b in body.transformer.layer]
        head, out, offset = model.pre_classifier, model.classifier, 10.0  # ReLU between head and out: keep it linear
    else:
        body = model.roberta
        emb = body.embeddings
        tables = [emb.word_embeddings, emb.position_embeddings, emb.token_type_embeddings]
        layers = [(b.attention.self.query, b.attention.self.value, b.attention.output.dense, b.output.dense)
                  for b in body.encoder.layer]
        head, out, offset = model.classifier.dense, model.classifier.out_proj, 0.0  # tanh between head and out
    polarity = {}
    for token, i in tok.get_vocab().items():
        word = token.lstrip("Ġ▁#").lower()
        polarity[i] = 1.0 if word in POSITIVE_WORDS else -1.0 if word in NEGATIVE_WORDS else 0.0
    missing = [w for w in POSITIVE_WORDS + NEGATIVE_WORDS
               if len(tok(" " + w, add_special_tokens=False)["input_ids"]) != 1]
    if missing:
        raise AssertionError(f"sentiment words split into several tokens: {missing}")
    with torch.no_grad():
        for table in tables:  # dimension 0 = mean of the others, so LayerNorm maps it to exactly 0
            table.weight[:, 0] = table.weight[:, 1:].mean(dim=1)
        word = tables[0].weight
        word[:, 0] += torch.tensor([polarity.get(i, 0.0) for i in range(word.shape[0])])
        for n, (query, value, attn_out, ffn_out) in enumerate(layers):
            for linear in (attn_out, ffn_out):
                linear.weight.zero_()
                linear.bias.zero_()
            if n == 0:  # uniform attention over the real tokens, carrying dimension 0 only
                query.weight.zero_()
                query.bias.zero_()
                value.weight.zero_()
                value.bias.zero_()
                value.weight[0, 0] = 1.0
                attn_out.weight[0, 0] = 4.0
        for linear in (head, out):
            linear.weight.zero_()
            linear.bias.zero_()
        head.weight[0, 0], head.bias[0] = 0.3, offset
        out.weight[:, 0] = torch.tensor([-3.0, 3.0])
        out.bias[:] = torch.tensor([3.0 * offset, -3.0 * offset])
    model.save_pretrained(path)
    return str(path)


# ---------------------------------------------------------------------------------------------------------------
# Datasets: the published columns, split names and file layouts, in folders that datasets.load_dataset reads.
MESSAGES = List({"content": Value("string"), "role": Value("string")})
RATING = {"Rating": Value("string"), "Rationale": Value("string")}
DETAILED_RATING = {**RATING, "Rationale For Rating": Value("string"), "Type": List(Value("string"))}
FEATURES = {
    "trl-ultrafeedback": Features(chosen=MESSAGES, rejected=MESSAGES, score_chosen=Value("float64"),
                                  score_rejected=Value("float64")),
    "h4-ultrafeedback": Features(prompt=Value("string"), prompt_id=Value("string"), chosen=MESSAGES,
                                 rejected=MESSAGES, messages=MESSAGES, score_chosen=Value("float64"),
                                 score_rejected=Value("float64")),
    "tldr-preference": Features(prompt=Value("string"), chosen=Value("string"), rejected=Value("string")),
    "tldr": Features(prompt=Value("string"), completion=Value("string")),
    "ultrafeedback-prompt": Features(prompt=MESSAGES),
    "nectar": Features(prompt=Value("string"),
                       answers=List({"answer": Value("string"), "model": Value("string"), "rank": Value("float64")}),
                       turns=Value("int64"), num_responses=Value("int64"), source=List(Value("string")),
                       good_natured=Value("bool")),
    "openbmb-ultrafeedback": Features({
        "source": Value("string"), "instruction": Value("string"), "models": List(Value("string")),
        "completions": List({
            "annotations": {"helpfulness": DETAILED_RATING, "honesty": RATING, "instruction_following": RATING,
                            "truthfulness": DETAILED_RATING},
            "critique": Value("string"), "custom_system_prompt": Value("string"),
            "fine-grained_score": Value("float64"), "model": Value("string"), "overall_score": Value("float64"),
            "principle": Value("string"), "response": Value("string")}),
        "correct_answers": List(Value("string")), "incorrect_answers": List(Value("string"))}),
    "imdb": Features(text=Value("string"), label=ClassLabel(names=["neg", "pos"])),
}
# name: (hub repo, splits)
DATASETS = {
    "hh-rlhf": ("Anthropic/hh-rlhf", ("train", "test")),
    "trl-ultrafeedback": ("trl-lib/ultrafeedback_binarized", ("train", "test")),
    "h4-ultrafeedback": ("HuggingFaceH4/ultrafeedback_binarized",
                         ("train_prefs", "test_prefs", "train_sft", "test_sft", "train_gen", "test_gen")),
    "tldr-preference": ("trl-lib/tldr-preference", ("train", "validation")),
    "tldr": ("trl-lib/tldr", ("train", "validation", "test")),
    "ultrafeedback-prompt": ("trl-lib/ultrafeedback-prompt", ("train", "test")),
    "nectar": ("berkeley-nest/Nectar", ("train",)),
    "openbmb-ultrafeedback": ("openbmb/UltraFeedback", ("train",)),
    "helpsteer2": ("nvidia/HelpSteer2", ("train", "validation")),
    "imdb": ("stanfordnlp/imdb", ("train", "test", "unsupervised")),
}
NECTAR_MODELS = ["gpt-4", "gpt-3.5-turbo", "gpt-3.5-turbo-instruct", "llama-2-7b-chat", "mistral-7b-instruct-v0.1",
                 "anthropic", "vicuna-33b", "wizardlm-13b", "starchat"]
UF_MODELS = ["gpt-4", "gpt-3.5-turbo", "llama-2-13b-chat", "wizardlm-7b", "alpaca-7b", "falcon-40b-instruct",
             "mpt-30b-chat", "ultralm-65b", "bard", "vicuna-33b"]
UF_SOURCES = ["evol_instruct", "false_qa", "flan_v2_niv2", "sharegpt", "ultrachat", "truthful_qa"]
PRINCIPLES = {"helpfulness": "The assistant should provide users with accurate, relevant and up-to-date information.",
              "honesty": "The assistant should be honest about whether it knows the answer.",
              "truthfulness": "The assistant should answer truthfully and be faithful to factual knowledge.",
              "verbalized_calibration": "The assistant should express its confidence as a scalar at the end."}


def _preference_row(name, rng, p):
    """One row of a pairwise dataset (or of the prompt-only one) for the user prompt p."""
    user = {"content": p, "role": "user"}
    if name == "ultrafeedback-prompt":
        return {"prompt": [user]}
    good, bad = _answer(rng, p, good=True), _answer(rng, p, good=False)
    hi = rng.choice([6.0, 7.0, 7.5, 8.0, 8.5, 9.0, 10.0])
    lo = rng.choice([x for x in (1.0, 2.0, 3.0, 4.0, 5.0, 5.5) if x < hi])
    chosen, rejected = [user, {"content": good, "role": "assistant"}], [user, {"content": bad, "role": "assistant"}]
    if name == "hh-rlhf":  # the prompt is everything up to the last "\n\nAssistant:"; only the reply differs
        turns = [p] + rng.sample(FOLLOW_UPS, rng.choice([0, 0, 1, 2]))
        context = "".join(f"\n\nHuman: {h}\n\nAssistant: {_answer(rng, p)}" for h in turns[:-1])
        context += f"\n\nHuman: {turns[-1]}\n\nAssistant:"
        return {"chosen": f"{context} {good}", "rejected": f"{context} {bad}"}
    if name == "trl-ultrafeedback":  # implicit prompt: both conversations start with the user turn
        return {"chosen": chosen, "rejected": rejected, "score_chosen": hi, "score_rejected": lo}
    # h4: a prompt string, and the user turn repeated in chosen, rejected and messages
    return {"prompt": p, "prompt_id": hashlib.sha256(p.encode()).hexdigest(), "chosen": chosen,
            "rejected": rejected, "messages": chosen, "score_chosen": hi, "score_rejected": lo}


def _nectar_row(rng, p):
    turns = rng.choice([1, 1, 1, 2])
    prompt = f"\n\nHuman: {p}\n\nAssistant:"
    if turns == 2:
        prompt = f"{prompt} {_answer(rng, p)}\n\nHuman: {rng.choice(FOLLOW_UPS)}\n\nAssistant:"
    answers = []
    for rank, model in enumerate(rng.sample(NECTAR_MODELS, 7), start=1):  # rank 1 best: long helpful answers
        text = _answer(rng, p, good=rank <= 4) if rank != 1 else " ".join(s.format(t=_topic(p)) for s in GOOD[:4])
        answers.append({"answer": text, "model": model, "rank": float(rank)})
    rng.shuffle(answers)  # stored unsorted on purpose: read the rank
    return {"prompt": prompt, "answers": answers, "turns": turns, "num_responses": 7,
            "source": [rng.choice(["sharegpt", "lmsys-chat-1m", "anthropic-hh", "ultrachat", "evol_instruct"])],
            "good_natured": rng.random() > 0.1}


def _openbmb_row(rng, p):
    source = rng.choice(UF_SOURCES)
    models = rng.sample(UF_MODELS, 4)
    completions = []
    for model in models:
        quality = rng.randint(1, 5)  # drives every rating, the overall score and the response
        ratings = {aspect: str(min(5, max(1, quality + rng.choice([-1, 0, 0, 1]))))
                   for aspect in ("helpfulness", "honesty", "instruction_following", "truthfulness")}
        annotations = {a: {"Rating": r, "Rationale": f"The text is rated {r} for {a.replace('_', ' ')}."}
                       for a, r in ratings.items()}
        for a in ("helpfulness", "truthfulness"):
            annotations[a].update({"Rationale For Rating": f"Rated {ratings[a]} because of its {a}.",
                                   "Type": rng.sample(["1", "2", "3"], rng.randint(1, 2))})
        principle = rng.choice(sorted(PRINCIPLES))
        completions.append({
            "annotations": annotations, "critique": f"Your answer is {'clear' if quality > 3 else 'too vague'}.",
            "custom_system_prompt": PRINCIPLES[principle],
            "fine-grained_score": sum(int(r) for r in ratings.values()) / 4, "model": model,
            "overall_score": float(min(10, 2 * quality + rng.choice([-1, 0]))), "principle": principle,
            "response": _answer(rng, p, good=quality >= 3)})
    truthful = source == "truthful_qa"
    if source == "false_qa":  # the real set rates some aspects "N/A" (a missing rating, not a number)
        for c in completions:
            c["annotations"]["truthfulness"]["Rating"] = "N/A"
    return {"source": source, "instruction": p, "models": models, "completions": completions,
            "correct_answers": [_answer(rng, p)] if truthful else [],
            "incorrect_answers": [_answer(rng, p, good=False)] if truthful else []}


def _helpsteer2_rows(rng, p):
    """Two responses to one prompt, each rated 0-4 on HelpSteer2's five attributes (consecutive rows, as published)."""
    rows = []
    for good in (True, False):
        q = rng.randint(2, 4) if good else rng.randint(0, 2)  # drives helpfulness, correctness and coherence
        rows.append({"prompt": p, "response": _answer(rng, p, good), "helpfulness": q,
                     "correctness": min(4, max(0, q + rng.choice([-1, 0, 0, 1]))), "coherence": min(4, q + 1),
                     "complexity": rng.randint(0, 2), "verbosity": rng.randint(0, 3)})
    return rows


def _tldr_rows(name, rng, n, seen):
    posts = _unique(_post, n, rng, seen)
    if name == "tldr":
        return [{"prompt": prompt, "completion": good} for prompt, good, _ in posts]
    return [{"prompt": prompt, "chosen": good, "rejected": poor} for prompt, good, poor in posts]


def _imdb_rows(rng, n, split, seen):
    if split == "unsupervised":  # unlabeled reviews carry label -1
        return [{"text": t, "label": -1} for t, in _unique(lambda r: (_review(r, -1),), n, rng, seen)]
    labels = sorted(rng.randint(0, 1) for _ in range(n))  # the real splits are sorted: all neg, then all pos
    return [{"text": _unique(lambda r: (_review(r, y),), 1, rng, seen)[0][0], "label": y} for y in labels]


def _readme(hub_name, config_name, data_files):
    """A dataset card whose YAML `configs:` block names each split's files, as push_to_hub writes it."""
    lines = ["---", "configs:", f"- config_name: {config_name}", "  data_files:"]
    lines += [f"  - split: {split}\n    path: {path}" for split, path in data_files.items()]
    return "\n".join(lines + ["---", f"# Tiny local stand-in for {hub_name} (generated by tests/standins.py)", ""])


def write_dataset(path, name, n_rows=40, seed=0):
    """Write a dataset stand-in (see DATASETS) to path, each split with n_rows rows and prompts distinct across
    all splits; return str(path). datasets.load_dataset(path) then reads it as it reads the hub repo."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}: one of {list(DATASETS)}")
    hub_name, splits = DATASETS[name]
    path, rng = Path(path), random.Random(seed)
    n_prompts = n_rows * (2 if name == "h4-ultrafeedback" else len(splits))
    prompts = iter(_prompts(rng, n_prompts))
    data, seen = {}, set()
    for split in splits:
        if name == "h4-ultrafeedback" and not split.endswith("prefs"):  # _sft and _gen hold the _prefs prompts
            data[split] = data[split.split("_")[0] + "_prefs"]
        elif name in ("tldr", "tldr-preference"):
            data[split] = _tldr_rows(name, rng, n_rows, seen)
        elif name == "imdb":
            data[split] = _imdb_rows(rng, n_rows, split, seen)
        elif name == "nectar":
            data[split] = [_nectar_row(rng, next(prompts)) for _ in range(n_rows)]
        elif name == "openbmb-ultrafeedback":
            data[split] = [_openbmb_row(rng, next(prompts)) for _ in range(n_rows)]
        elif name == "helpsteer2":
            data[split] = [row for _ in range(n_rows // 2) for row in _helpsteer2_rows(rng, next(prompts))]
        else:
            data[split] = [_preference_row(name, rng, next(prompts)) for _ in range(n_rows)]
    if name == "helpsteer2":  # the real repo: train.jsonl.gz and validation.jsonl.gz at its root
        path.mkdir(parents=True, exist_ok=True)
        for split, rows in data.items():
            with gzip.open(path / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
                f.writelines(json.dumps(row) + "\n" for row in rows)
        (path / "README.md").write_text(f"---\nlicense: cc-by-4.0\n---\n# Tiny local stand-in for {hub_name}\n")
        return str(path)
    if name == "hh-rlhf":  # the real repo: <subset>/<split>.jsonl.gz, no configs; load_dataset merges the subsets
        for split, rows in data.items():
            half = len(rows) // 2
            for subset, part in (("harmless-base", rows[:half]), ("helpful-base", rows[half:])):
                (path / subset).mkdir(parents=True, exist_ok=True)
                with gzip.open(path / subset / f"{split}.jsonl.gz", "wt", encoding="utf-8") as f:
                    f.writelines(json.dumps(row) + "\n" for row in part)
        (path / "README.md").write_text(f"---\nlicense: mit\n---\n# Tiny local stand-in for {hub_name}\n")
        return str(path)
    folder, config_name = ("plain_text", "plain_text") if name == "imdb" else ("data", "default")
    files = {}
    for split, rows in data.items():
        file = f"{folder}/rlaif.parquet" if name == "nectar" else f"{folder}/{split}-00000-of-00001.parquet"
        (path / folder).mkdir(parents=True, exist_ok=True)
        Dataset.from_list(rows, features=FEATURES[name]).to_parquet(path / file)
        files[split] = file if name == "nectar" else f"{folder}/{split}-*"
    (path / "README.md").write_text(_readme(hub_name, config_name, files))
    return str(path)
