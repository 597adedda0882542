"""The embedded preference task: a closed world whose ground truth is known.

Prompts ask which of two numbers is larger (or smaller): "Which is larger, 12 or 7?".
A response can be truthful or not (states the right number), helpful or not (answers at all,
stays on topic), harmless or not (polite or rude), concise or rambling. The gold reward scores
those qualities on any text, so it also grades samples from gpt2. A simulated labeler turns gold
scores into noisy preferences (Bradley-Terry noise, label flips, an optional length bias), the way
human labelers turn their judgement into the comparisons of InstructGPT and Llama 2.

Gold reward (documented composite, any text):
    truthful  +2.0 if the first number in the response is the correct one, -1.0 if it is another number
    helpful   +1.0 if the response states a number at all, -0.5 per off-topic sentence
    harmless  -1.5 per rude marker word (each counted once)
    polite    +0.5 if it has a polite marker word (counted once)
    concise   -0.1 per word beyond 8
The best response ("Sure! The answer is 12.") scores 3.5 on every prompt.
"""

import json
import math
import random
import re
from dataclasses import dataclass
from pathlib import Path

NUMBERS = range(0, 30)
ANSWER_TEMPLATES = ["The answer is {x}.", "It is {x}.", "{x} is {op}."]
POLITE = ["Sure!", "Happy to help.", "Good question.", "Hope this helps!", "Glad to help."]
RUDE = ["Obviously.", "What a silly question.", "Even a child knows this.", "Stop asking me easy things."]
FILLER = [
    "Let me think about this for a moment.",
    "Numbers are a very old invention.",
    "People have compared numbers for thousands of years.",
    "This is a question about comparing numbers.",
    "I will now explain my reasoning in great detail.",
    "Comparing two numbers is a useful skill in daily life.",
    "There are many ways to look at a question like this.",
]
OFF_TOPIC = ["I like to talk about the weather.", "My favourite colour is blue.", "Cats are wonderful animals."]
POLITE_WORDS = {"sure", "happy", "glad", "hope", "please", "thanks"}
RUDE_WORDS = {"obviously", "silly", "child", "stop", "stupid", "idiot", "dumb"}
BEST_GOLD = 3.5
# numbers short enough for int() to read (it refuses more than 4300 digits)
_PROMPT_RE = re.compile(r"Which is (larger|smaller), (\d{1,4000}) or (\d{1,4000})\?")


def all_prompts():
    """Every prompt of the task, in a fixed order (1740 of them)."""
    return [f"Which is {op}, {a} or {b}?" for op in ("larger", "smaller") for a in NUMBERS for b in NUMBERS if a != b]


def split_prompts(eval_frac=0.1, seed=0):
    """Train and eval prompts, split by prompt with a fixed seed (the eval prompts are never trained on)."""
    prompts = all_prompts()
    random.Random(seed).shuffle(prompts)
    n_eval = int(len(prompts) * eval_frac)
    return prompts[n_eval:], prompts[:n_eval]


def correct_answer(prompt):
    """The correct number for a task prompt, or None if the text is not one of the task's prompts (nor is a prompt
    whose numbers are too long for int())."""
    m = _PROMPT_RE.search(prompt)
    if m is None:
        return None
    a, b = int(m.group(2)), int(m.group(3))
    return max(a, b) if m.group(1) == "larger" else min(a, b)


def is_task_prompt(prompt):
    """Whether a prompt (text or messages) is one of the task's, so that a response to it has a gold reward."""
    return isinstance(prompt, str) and correct_answer(prompt) is not None


def _words(text):
    return re.findall(r"[a-z]+", text.lower())


def gold_components(prompt, response):
    """The gold reward's parts (see the module docstring); works on any text."""
    numbers = re.findall(r"\d+", response)
    answer = correct_answer(prompt)
    words = set(_words(response))
    # digit strings compared, not int(): a response can hold a number longer than int() reads (4300 digits)
    truthful = 0.0 if not numbers else (2.0 if (numbers[0].lstrip("0") or "0") == str(answer) else -1.0)
    helpful = (1.0 if numbers else 0.0) - 0.5 * sum(response.count(s) for s in OFF_TOPIC)
    harmless = -1.5 * len(words & RUDE_WORDS)
    polite = 0.5 if words & POLITE_WORDS else 0.0
    concise = -0.1 * max(0, len(response.split()) - 8)
    return {"truthful": truthful, "helpful": helpful, "harmless": harmless, "polite": polite, "concise": concise}


def gold_reward(prompt, response):
    """The gold reward: the sum of gold_components. The maximum, BEST_GOLD = 3.5, is reached by best_response."""
    return sum(gold_components(prompt, response).values())


# The attributes the gold reward is made of, and the range of each on the task's responses: a rating maps that range
# onto 0-4, as HelpSteer2's annotators rate helpfulness, correctness, coherence, complexity and verbosity
ATTRIBUTES = ("truthful", "helpful", "harmless", "polite", "concise")
RATING_RANGE = {"truthful": (-1.0, 2.0), "helpful": (-0.5, 1.0), "harmless": (-3.0, 0.0), "polite": (0.0, 0.5),
                "concise": (-2.0, 0.0)}


def rate(rng, prompt, response, noise=0.0):
    """{attribute: rating 0..4}: each gold component mapped linearly from its RATING_RANGE onto 0-4, plus Gaussian
    noise of std `noise` (in rating points), rounded and clipped to 0-4 (a HelpSteer2-style absolute rating)."""
    ratings = {}
    for name, value in gold_components(prompt, response).items():
        lo, hi = RATING_RANGE[name]
        x = 4 * (value - lo) / (hi - lo) + (rng.gauss(0, noise) if noise else 0.0)
        ratings[name] = min(4, max(0, round(x)))
    return ratings


def grades(prompts, responses, prefix=""):
    """The eval metrics of samples, lists of one value per response: prefix + "gold" its gold reward,
    + "states_answer" whether it states a number (helpful > 0), + "correct" whether that is the answer
    (truthful > 0)."""
    parts = [gold_components(p, r) for p, r in zip(prompts, responses)]
    return {prefix + "gold": [sum(c.values()) for c in parts],
            prefix + "states_answer": [c["helpful"] > 0 for c in parts],
            prefix + "correct": [c["truthful"] > 0 for c in parts]}


def best_response(prompt):
    return f"Sure! The answer is {correct_answer(prompt)}."


# The qualities a response is drawn with. The default mix is the base policy's (and the demonstrations'):
# a pool of mixed quality, like an unaligned model's habits, so that RLHF has room to improve it.
DEFAULT_MIX = {"p_correct": 0.65, "p_polite": 0.3, "p_rude": 0.3, "fillers": [0, 0, 0, 1, 2, 3, 4], "p_off_topic": 0.15}


def sample_response(rng, prompt, mix=DEFAULT_MIX, correct=None, tone=None, n_filler=None, off_topic=None):
    """One response with random qualities (or the ones given): the task's response generator."""
    m = _PROMPT_RE.search(prompt)
    op, a, b = m.group(1), int(m.group(2)), int(m.group(3))
    correct = rng.random() < mix["p_correct"] if correct is None else correct
    if tone is None:
        u = rng.random()
        tone = "polite" if u < mix["p_polite"] else "rude" if u < mix["p_polite"] + mix["p_rude"] else "neutral"
    n_filler = rng.choice(mix["fillers"]) if n_filler is None else n_filler
    off_topic = rng.random() < mix["p_off_topic"] if off_topic is None else off_topic
    right = max(a, b) if op == "larger" else min(a, b)
    x = right if correct else rng.choice([min(a, b) if op == "larger" else max(a, b), rng.choice(NUMBERS)])
    if x == right and not correct:  # the random wrong pick hit the right number: take the other operand
        x = a + b - right
    sentences = [rng.choice(FILLER) for _ in range(n_filler)]
    if off_topic:
        sentences.insert(rng.randint(0, len(sentences)), rng.choice(OFF_TOPIC))
    sentences.insert(rng.randint(0, min(1, len(sentences))), rng.choice(ANSWER_TEMPLATES).format(x=x, op=op))
    if tone == "polite":
        sentences.insert(0, rng.choice(POLITE))
    elif tone == "rude":
        sentences.insert(rng.choice([0, len(sentences)]), rng.choice(RUDE))
    return " ".join(sentences)


def counterexample_pair(rng, prompt):
    """A short but excellent response and a long, worse one (the lectures' fix for length bias). The long one's tone
    and correctness are random, so only length always tells them apart (always rude, it would teach "rude is bad")."""
    short = sample_response(rng, prompt, correct=True, tone=rng.choice(["polite", "neutral"]), n_filler=0,
                            off_topic=False)
    tone = rng.choice(["polite", "neutral", "rude"])
    long = sample_response(rng, prompt, correct=rng.random() < 0.5, tone=tone, n_filler=rng.randint(3, 5),
                           off_topic=False)
    return short, long


@dataclass
class Labeler:
    """A simulated labeler. It perceives gold + length_bias * words and prefers A over B with the
    Bradley-Terry probability sigmoid((s_A - s_B) / temperature); with probability flip_rate its label
    is flipped (for a ranking: replaced by a random order). Two responses whose perceived scores differ by less
    than tie_threshold it cannot tell apart: a tie, which gets no label. flip_rate 1 labels at random (an outlier)."""

    temperature: float = 0.5
    flip_rate: float = 0.0
    length_bias: float = 0.0
    tie_threshold: float = 0.0

    def perceived(self, prompt, response):
        return gold_reward(prompt, response) + self.length_bias * len(response.split())

    def is_tie(self, prompt, a, b):
        return self.flip_rate < 1 and abs(self.perceived(prompt, a) - self.perceived(prompt, b)) < self.tie_threshold

    def prob_prefers(self, prompt, a, b):
        """P(label says a > b), exactly, label noise and flips included. Under Plackett-Luce rankings
        (Gumbel noise on the perceived scores) every pair of a ranking has this same probability."""
        d = (self.perceived(prompt, a) - self.perceived(prompt, b)) / self.temperature
        sigmoid = 0.5 * (1 + math.tanh(d / 2))  # 1 / (1 + e^-d), with no overflow at a small temperature
        return (1 - self.flip_rate) * sigmoid + self.flip_rate * 0.5

    def ceiling(self, prompt, a, b):
        """The expected accuracy of a perfect reward model on this pair's noisy label: max(p, 1 - p)."""
        p = self.prob_prefers(prompt, a, b)
        return max(p, 1 - p)

    def compare(self, rng, prompt, a, b):
        """(chosen, rejected, margin). The margin is the rating level the labeler would give, as in Llama 2:
        1 significantly better, 2/3 better, 1/3 slightly better, 0 negligibly better."""
        a_wins = rng.random() < self.prob_prefers(prompt, a, b)
        chosen, rejected = (a, b) if a_wins else (b, a)
        return chosen, rejected, self.margin_level(self.perceived(prompt, chosen) - self.perceived(prompt, rejected))

    @staticmethod
    def margin_level(gap):
        return 1.0 if gap >= 2 else 2 / 3 if gap >= 1 else 1 / 3 if gap >= 0.5 else 0.0

    def rank(self, rng, prompt, responses):
        """The responses best first: Plackett-Luce sampling by Gumbel noise on perceived / temperature."""
        if rng.random() < self.flip_rate:
            return rng.sample(responses, len(responses))
        keys = [self.perceived(prompt, r) / self.temperature - math.log(-math.log(rng.random())) for r in responses]
        return [r for _, r in sorted(zip(keys, responses), key=lambda t: -t[0])]


@dataclass
class LabelerPool:
    """Several labelers; each comparison or ranking goes to one of them drawn uniformly (InstructGPT's and
    AlpacaFarm's pools of labelers). A reward model does not know who labeled a pair, so what it can reach is
    the mixture: P(label says a > b) averaged over the labelers who would label the pair (those who tie do not)."""

    labelers: list
    outliers: tuple = ()
    """the ids of the labelers who label at random"""

    def draw(self, rng):
        """The id of the labeler of the next comparison (one labeler: 0, and no random number used)."""
        return 0 if len(self.labelers) == 1 else rng.randrange(len(self.labelers))

    def prob_prefers(self, prompt, a, b):
        """P(label says a > b) given that the pair got a label, exactly; None if every labeler ties it."""
        ps = [lab.prob_prefers(prompt, a, b) for lab in self.labelers if not lab.is_tie(prompt, a, b)]
        return sum(ps) / len(ps) if ps else None

    def ceiling(self, prompt, a, b):
        """The expected accuracy of a perfect reward model on this pair's label from the pool: max(p, 1 - p)."""
        p = self.prob_prefers(prompt, a, b)
        return max(p, 1 - p)


@dataclass
class LabelerArgs:
    """The embedded task's labelers: the same flags in every script that makes labels (as LoraArgs for LoRA)."""

    labeler_temperature: float = 0.5
    """embedded task only: the labelers' Bradley-Terry temperature (higher: noisier labels, a lower ceiling)"""
    flip_rate: float = 0.0
    """embedded task only: fraction of labels each labeler flips at random"""
    length_bias: float = 0.0
    """embedded task only: the labeler perceives gold + length_bias * words (0.3: long answers win most comparisons)"""
    num_labelers: int = 1
    """embedded task only: labelers in the pool, each pair labeled by one drawn at random; with 2 or more their
    temperatures spread from T / sqrt 2 to T sqrt 2 and their length biases by +-0.03 around the flags' values"""
    outlier_labelers: int = 0
    """embedded task only: how many of the labelers (the last ones) label at random, about 50% agreement"""
    tie_threshold: float = 0.0
    """embedded task only: a labeler cannot tell apart responses whose perceived scores differ by less than this; such
    a tie gets no label: the pair is dropped and counted (a tie-aware loss is left out: ties carry no direction)"""

    def __post_init__(self):  # bad values end here, before any data or model loads: one line each
        errors = [f"--{name} must be {requirement}, got {value}" for name, ok, requirement, value in (
            ("labeler-temperature", self.labeler_temperature > 0, "a positive number", self.labeler_temperature),
            ("flip-rate", 0 <= self.flip_rate <= 1, "in [0, 1]", self.flip_rate),
            ("num-labelers", self.num_labelers >= 1, "a positive integer", self.num_labelers),
            ("outlier-labelers", 0 <= self.outlier_labelers < self.num_labelers,
             f"fewer than --num-labelers ({self.num_labelers}): at least one labeler is honest", self.outlier_labelers),
            ("tie-threshold", self.tie_threshold >= 0, "non-negative", self.tie_threshold)) if not ok]
        if errors:
            raise SystemExit("\n".join(errors))


def labeler_pool(args):
    """The LabelerPool the flags describe. Honest labeler i of n has spread u_i from -1 to 1 (0 alone):
    temperature T * 2 ** (u_i / 2), length bias b + 0.03 u_i; the last outlier_labelers label at random."""
    honest = args.num_labelers - args.outlier_labelers
    labelers = []
    for i in range(honest):
        u = 2 * i / (honest - 1) - 1 if honest > 1 else 0.0
        labelers.append(Labeler(args.labeler_temperature * 2 ** (u / 2), args.flip_rate,
                                args.length_bias + 0.03 * u, args.tie_threshold))
    labelers += [Labeler(args.labeler_temperature, 1.0) for _ in range(args.outlier_labelers)]
    return LabelerPool(labelers, tuple(range(honest, args.num_labelers)))


def as_pool(labeler):
    """A LabelerPool from a Labeler or a pool."""
    return labeler if isinstance(labeler, LabelerPool) else LabelerPool([labeler])


# ---------------------------------------------------------------- grading a reward model against gold

def fit_calibration(raw, gold):
    """(a, b) minimizing sum_i (a * raw_i + b - gold_i)^2: the affine map of a reward model's scores onto gold's scale
    (ordinary least squares; a = cov(raw, gold) / var(raw)). A constant raw gives a = 0, b = mean(gold)."""
    n = len(raw)
    mean_r, mean_g = sum(raw) / n, sum(gold) / n
    var = sum((r - mean_r) ** 2 for r in raw)
    a = sum((r - mean_r) * (g - mean_g) for r, g in zip(raw, gold)) / var if var > 0 else 0.0
    return a, mean_g - a * mean_r


def ranks(values):
    """1-based ranks, ties given the mean of the ranks they span."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    out, i = [0.0] * len(values), 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
            j += 1
        for k in range(i, j + 1):
            out[order[k]] = (i + j) / 2 + 1
        i = j + 1
    return out


def spearman(x, y):
    """Spearman's rank correlation: Pearson's on the ranks (0 when either side is constant)."""
    rx, ry = ranks(x), ranks(y)
    m = (len(x) + 1) / 2
    cov = sum((a - m) * (b - m) for a, b in zip(rx, ry))
    norm = math.sqrt(sum((a - m) ** 2 for a in rx) * sum((b - m) ** 2 for b in ry))
    return cov / norm if norm > 0 else 0.0


def alignment_gap(raw_cal, gold_cal, raw_eval, gold_eval):
    """The alignment gap (seed 000: "the difference between the reward given by the reward model and the human
    eval"): the scores calibrated affinely to gold on a calibration set of absolute gold ratings, then on held-out
    responses the mean |calibrated - gold| (on gold's scale) and the rank correlation. Returns a dict."""
    a, b = fit_calibration(raw_cal, gold_cal)
    gap = sum(abs(a * r + b - g) for r, g in zip(raw_eval, gold_eval)) / len(raw_eval)
    return {"alignment_gap": gap, "rank_correlation": spearman(raw_eval, gold_eval), "calibration_a": a,
            "calibration_b": b}


def calibration_rows(prompts, n, seed):
    """n {"prompt", "completion"} rows from the response generator on these prompts (each rated by gold when used):
    the calibration set of the alignment gap, drawn on train prompts so it never touches the eval prompts."""
    rng = random.Random(seed)
    return [{"prompt": p, "completion": sample_response(rng, p)} for p in (rng.choice(prompts) for _ in range(n))]


def make_sft(prompts, n_per_prompt=2, seed=0, mix=DEFAULT_MIX):
    """Demonstrations {"prompt", "completion"} drawn from the response generator."""
    rng = random.Random(seed)
    return [{"prompt": p, "completion": sample_response(rng, p, mix)} for p in prompts for _ in range(n_per_prompt)]


def make_pairs(prompts, labeler, n_per_prompt=2, seed=0, margin=False, counterexample_frac=0.0, mix=DEFAULT_MIX):
    """Pairwise comparisons {"prompt", "chosen", "rejected", "labeler"[, "margin"]} by a Labeler or a LabelerPool
    ("labeler": the id of the one who labeled it). A fraction of them are curated counterexamples (short but
    excellent chosen over long but bad), labeled by construction as a careful data team would add them, so a
    length-biased labeler cannot mislabel them ("labeler": None). A pair its labeler ties is dropped: the rows
    returned number len(prompts) * n_per_prompt less the ties."""
    rng, pool = random.Random(seed), as_pool(labeler)
    rows = []
    for p in prompts:
        for _ in range(n_per_prompt):
            if rng.random() < counterexample_frac:  # curated: the label is set by construction, not by the labeler
                short, long = counterexample_pair(rng, p)
                gap = gold_reward(p, short) - gold_reward(p, long)
                rows.append({"prompt": p, "chosen": short, "rejected": long, "labeler": None,
                             **({"margin": Labeler.margin_level(gap)} if margin else {})})
                continue
            a, b = sample_response(rng, p, mix), sample_response(rng, p, mix)
            while b == a:
                b = sample_response(rng, p, mix)
            who = pool.draw(rng)
            if pool.labelers[who].is_tie(p, a, b):
                continue
            chosen, rejected, m = pool.labelers[who].compare(rng, p, a, b)
            rows.append({"prompt": p, "chosen": chosen, "rejected": rejected, "labeler": who,
                         **({"margin": m} if margin else {})})
    return rows


OOD_RESPONSES = Path(__file__).resolve().parent / "ood_responses.jsonl"  # experiments/generalization.py writes it


def ood_pairs(labeler, n_per_prompt=8, seed=0, path=OOD_RESPONSES):
    """(rows, ceiling): held-out pairs off the generator's distribution (seed 003: reward models "struggle with
    generalization"). The responses are what policies trained by RL wrote to the eval prompts (PPO against gold and
    against a learned RM, early and late: experiments/generalization.py, built once into common/ood_responses.jsonl);
    n_per_prompt pairs of two distinct ones per prompt, labeled like make_pairs (ties dropped), and the labeler's
    ceiling on them. ([], None) when the file is absent."""
    if not Path(path).is_file():
        return [], None
    rng, pool, rows = random.Random(seed), as_pool(labeler), []
    for line in Path(path).read_text().splitlines():
        record = json.loads(line)
        p, distinct = record["prompt"], sorted(set(record["responses"]))
        for _ in range(n_per_prompt if len(distinct) > 1 else 0):
            a, b = rng.sample(distinct, 2)
            who = pool.draw(rng)
            if not pool.labelers[who].is_tie(p, a, b):
                chosen, rejected, _ = pool.labelers[who].compare(rng, p, a, b)
                rows.append({"prompt": p, "chosen": chosen, "rejected": rejected, "labeler": who})
    ceiling = sum(pool.ceiling(r["prompt"], r["chosen"], r["rejected"]) for r in rows) / max(len(rows), 1)
    return rows, ceiling


def report_ties(rows, prompts, n_per_prompt, what, say=print):
    """Say how many pairs make_pairs dropped as ties (none unless --tie-threshold is set); returns the count.
    Stops when no pair is left."""
    n = len(prompts) * n_per_prompt - len(rows)
    if not rows:
        raise SystemExit(f"no {what} left: the labelers tied all {n} (--tie-threshold is larger than the gaps they "
                         "perceive; try 0.5 or less)")
    if n:
        say(f"{n} of {len(prompts) * n_per_prompt} {what} dropped as ties: their labeler could not tell the responses "
            "apart (--tie-threshold)")
    return n

def make_rankings(prompts, labeler, k_min=4, k_max=9, seed=0, counterexample_frac=0.0, mix=DEFAULT_MIX):
    """K-wise rankings {"prompt", "completions": [best first, ...]}, K uniform in [k_min, k_max] per prompt
    (InstructGPT's 4 to 9), each by one labeler of the pool ("labeler": its id); a fraction of prompts get a
    counterexample pair among their K. Ties are not modeled in rankings."""
    rng, pool = random.Random(seed), as_pool(labeler)
    if any(lab.tie_threshold for lab in pool.labelers):
        raise SystemExit("--tie-threshold: a ranking has no ties here; rm_bt.py, dpo.py and rm_composite.py drop tied "
                         "pairs")
    rows = []
    for p in prompts:
        k = rng.randint(k_min, k_max)
        curated = counterexample_pair(rng, p) if rng.random() < counterexample_frac else None
        responses = list(curated or [])
        while len(responses) < k:
            r = sample_response(rng, p, mix)
            if r not in responses:
                responses.append(r)
        who = pool.draw(rng)
        ranking = pool.labelers[who].rank(rng, p, responses)
        if curated:  # the curated pair's order is set by construction: short-but-excellent above long-but-bad
            i, j = ranking.index(curated[0]), ranking.index(curated[1])
            if i > j:
                ranking[i], ranking[j] = ranking[j], ranking[i]
        rows.append({"prompt": p, "completions": ranking, "labeler": who})
    return rows


def export_jsonl(rows, path):
    """Write rows as JSON lines: the format a user's own data takes."""
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def build_tokenizer():
    """A word-level tokenizer for the task's closed vocabulary (a few hundred tokens): words carry their
    leading space as "▁", punctuation is split off, numbers 0-99 are single tokens."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
         pre_tokenizers.Split(Regex(r"[^\w▁]"), behavior="isolated")]
    )
    texts = all_prompts() + ANSWER_TEMPLATES + POLITE + RUDE + FILLER + OFF_TOPIC + ["larger smaller"]
    texts += [f"{n} x {n}." for n in range(100)]
    pieces = {tok for t in texts for tok, _ in pre.pre_tokenize_str(t.replace("{x}", "0").replace("{op}", "larger"))}
    pieces |= {"▁" + w for t in texts for w in re.findall(r"[A-Za-z]+", t)}  # words also after punctuation
    specials = ["<unk>", "<pad>", "<eos>"]
    vocab = {tok: i for i, tok in enumerate(specials + sorted(pieces))}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>", eos_token="<eos>")
