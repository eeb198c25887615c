"""VQA v2: answer normalisation, accuracy, exact match and the VQA summary (pure Python).

Implements the accuracy metric of the VQA benchmark (Antol et al. 2015, "VQA:
Visual Question Answering"; Goyal et al. 2017, "Making the V in VQA Matter"),
following the rules of the official evaluator:

Answer normalisation (``normalize_answer``), applied to the prediction and to
every human answer:

1. newline and tab become spaces; leading/trailing whitespace is stripped;
2. punctuation: for each character of ``;/[]"{}()=+\\_-><@`,?!`` -- if the
   text contains a digit-comma-digit group (``1,000``), or the character sits
   next to a space somewhere in the text, every occurrence of it is deleted;
   otherwise every occurrence is replaced by a space (so ``black/white``
   becomes ``black white`` but ``yes!`` becomes ``yes``);
3. a period not followed by a digit is deleted (``dog.`` -> ``dog``, while
   ``3.5`` is kept), at most 32 of them per answer (the official call passes
   ``re.UNICODE`` where ``Pattern.sub`` takes its count);
4. lowercase, split on whitespace; number words ``none``/``zero``..``ten``
   become digits; the articles ``a``, ``an``, ``the`` are dropped;
5. contractions written without the apostrophe are restored from the
   official table (``dont`` -> ``don't``); words are re-joined by single
   spaces. The table's capitalised keys (``Im``, ``Ive``, ``Id've``,
   ``I'dve``) never match lowercased words, so ``im`` and ``ive`` stay as
   they are, exactly as in the official scores.

The apostrophe is not in the official punctuation set and is kept, so
``don't`` and ``dont`` both normalise to ``don't``.

Accuracy (``vqa_accuracy``): with N human answers, for each answer leave it
out, count how many of the other N-1 equal the prediction, score
``min(1, matches / 3)``, and average over the N subsets. With the usual 10
answers this gives 0.3 per matching annotator up to 1.0 at 4 or more matches
(3 matches score 0.9, because a subset dropping a matching answer only has 2).

Checked against GT-Vision-Lab's ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``
(github.com/GT-Vision-Lab/VQA). Two deliberate differences, both only where the
official rule is degenerate for generative answers:

- Identical human answers: the official evaluator normalises the prediction and the
  human answers only when the human answers disagree (``len(set(gtAnswers)) > 1``);
  when all are identical it compares the raw strings after stripping whitespace, so
  "Yes." against ten "yes" scores 0 there. Here both sides are always normalised, so
  that case scores 1. Official submissions are normalised before upload, which makes
  the two agree; raw generative outputs ("Yes.", "Two") are not.
- One human answer (LLaVA-style JSON rows, most medical VQA sets): the official
  leave-one-out leaves no other answer, so every prediction scores 0. Here a single
  answer scores 1.0 on a normalised match and 0.0 otherwise (exact match).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["baseline", "exact_match", "metrics", "normalize_answer", "summarize", "vqa_accuracy"]

# The official evaluator's punctuation list; the apostrophe is deliberately
# absent so contractions survive.
_PUNCTUATION: tuple[str, ...] = (
    ";",
    "/",
    "[",
    "]",
    '"',
    "{",
    "}",
    "(",
    ")",
    "=",
    "+",
    "\\",
    "_",
    "-",
    ">",
    "<",
    "@",
    "`",
    ",",
    "?",
    "!",
)

# A comma between digits ("1,000"): its presence switches punctuation
# handling to deletion for the whole answer, so numbers are not split.
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")

# Kept verbatim from the official evaluator. "(?!<=\d)" looks like a
# lookbehind but is a lookahead that never blocks a ".", so the effective rule
# is "delete a period not followed by a digit"; decimals such as 3.5 survive.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official call is ``periodStrip.sub("", text, re.UNICODE)``: the third argument of
# ``Pattern.sub`` is ``count``, so at most re.UNICODE == 32 periods are deleted per answer.
_PERIOD_STRIP_COUNT = int(re.UNICODE)

_NUMBER_WORDS: dict[str, str] = {
    "none": "0",
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
    "ten": "10",
}

_ARTICLES: frozenset[str] = frozenset({"a", "an", "the"})

# The official contraction table, keys as the official evaluator spells them. Its keys
# "Id've", "I'dve", "Im" and "Ive" are capitalised, and the table is looked up after
# lowercasing, so they never match there: kept capitalised here, so "im" stays "im" as it
# does in the official scores.
_CONTRACTIONS: dict[str, str] = {
    "aint": "ain't",
    "arent": "aren't",
    "cant": "can't",
    "couldve": "could've",
    "couldnt": "couldn't",
    "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've",
    "didnt": "didn't",
    "doesnt": "doesn't",
    "dont": "don't",
    "hadnt": "hadn't",
    "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've",
    "hasnt": "hasn't",
    "havent": "haven't",
    "hed": "he'd",
    "hed've": "he'd've",
    "he'dve": "he'd've",
    "hes": "he's",
    "howd": "how'd",
    "howll": "how'll",
    "hows": "how's",
    "Id've": "I'd've",
    "I'dve": "I'd've",
    "Im": "I'm",
    "Ive": "I've",
    "isnt": "isn't",
    "itd": "it'd",
    "itd've": "it'd've",
    "it'dve": "it'd've",
    "itll": "it'll",
    "let's": "let's",
    "maam": "ma'am",
    "mightnt": "mightn't",
    "mightnt've": "mightn't've",
    "mightn'tve": "mightn't've",
    "mightve": "might've",
    "mustnt": "mustn't",
    "mustve": "must've",
    "neednt": "needn't",
    "notve": "not've",
    "oclock": "o'clock",
    "oughtnt": "oughtn't",
    "ow's'at": "'ow's'at",
    "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at",
    "shant": "shan't",
    "shed've": "she'd've",
    "she'dve": "she'd've",
    "she's": "she's",
    "shouldve": "should've",
    "shouldnt": "shouldn't",
    "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've",
    # The official table maps "somebody'd" -> "somebodyd" (reversed); that
    # quirk is kept so scores match the official evaluator.
    "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've",
    "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll",
    "somebodys": "somebody's",
    "someoned": "someone'd",
    "someoned've": "someone'd've",
    "someone'dve": "someone'd've",
    "someonell": "someone'll",
    "someones": "someone's",
    "somethingd": "something'd",
    "somethingd've": "something'd've",
    "something'dve": "something'd've",
    "somethingll": "something'll",
    "thats": "that's",
    "thered": "there'd",
    "thered've": "there'd've",
    "there'dve": "there'd've",
    "therere": "there're",
    "theres": "there's",
    "theyd": "they'd",
    "theyd've": "they'd've",
    "they'dve": "they'd've",
    "theyll": "they'll",
    "theyre": "they're",
    "theyve": "they've",
    "twas": "'twas",
    "wasnt": "wasn't",
    "wed've": "we'd've",
    "we'dve": "we'd've",
    "weve": "we've",
    "werent": "weren't",
    "whatll": "what'll",
    "whatre": "what're",
    "whats": "what's",
    "whatve": "what've",
    "whens": "when's",
    "whered": "where'd",
    "wheres": "where's",
    "whereve": "where've",
    "whod": "who'd",
    "whod've": "who'd've",
    "who'dve": "who'd've",
    "wholl": "who'll",
    "whos": "who's",
    "whove": "who've",
    "whyll": "why'll",
    "whyre": "why're",
    "whys": "why's",
    "wont": "won't",
    "wouldve": "would've",
    "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've",
    "wouldn'tve": "wouldn't've",
    "yall": "y'all",
    "yall'll": "y'all'll",
    "y'allll": "y'all'll",
    "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've",
    "y'all'dve": "y'all'd've",
    "youd": "you'd",
    "youd've": "you'd've",
    "you'dve": "you'd've",
    "youll": "you'll",
    "youre": "you're",
    "youve": "you've",
}

# Group key for records that carry no "answer_type".
_UNKNOWN_TYPE = "unknown"


def _process_punctuation(text: str) -> str:
    """Official punctuation rule (step 2 and 3 of the module docstring)."""
    # The decision for each character looks at the original text, not at the
    # partially processed one, exactly as the official evaluator does.
    has_digit_comma = _COMMA_STRIP.search(text) is not None
    out = text
    for char in _PUNCTUATION:
        if has_digit_comma or (char + " ") in text or (" " + char) in text:
            out = out.replace(char, "")
        else:
            out = out.replace(char, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digits_and_articles(text: str) -> str:
    """Lowercase, map number words, drop articles, restore contractions."""
    words = [_NUMBER_WORDS.get(word, word) for word in text.lower().split()]
    words = [word for word in words if word not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(word, word) for word in words)


def normalize_answer(answer: str) -> str:
    """Normalise an answer with the official VQA v2 rules (see module docstring)."""
    text = answer.replace("\n", " ").replace("\t", " ").strip()
    text = _process_punctuation(text)
    return _process_digits_and_articles(text)


def vqa_accuracy(prediction: str, answers: list[str]) -> float:
    """VQA v2 accuracy of ``prediction`` against the human ``answers`` (the official rule,
    except that both sides are always normalised; see the module docstring).

    The mean, over the N leave-one-out subsets of ``answers``, of
    ``min(1, matches / 3)``, where matches counts the other answers equal to
    the prediction after normalisation. With a single answer (N == 1) there
    are no "other" answers, so the score is defined as 1.0 if the prediction
    equals it and 0.0 otherwise.

    Raises:
        ValueError: if ``answers`` is empty.
    """
    if len(answers) == 0:
        raise ValueError("vqa_accuracy needs at least one human answer; got an empty list")
    pred = normalize_answer(prediction)
    gts = [normalize_answer(answer) for answer in answers]
    if len(gts) == 1:
        return 1.0 if gts[0] == pred else 0.0
    total_matches = sum(1 for gt in gts if gt == pred)
    score = 0.0
    for gt in gts:
        # Matches among the other N-1 answers: drop this one if it matched.
        others_matching = total_matches - (1 if gt == pred else 0)
        score += min(1.0, others_matching / 3.0)
    return score / len(gts)


def exact_match(prediction: str, reference: str) -> float:
    """1.0 if ``prediction`` equals ``reference`` after normalisation, else 0.0."""
    return 1.0 if normalize_answer(prediction) == normalize_answer(reference) else 0.0


def summarize(records: Iterable[Mapping]) -> dict:
    """Aggregate VQA accuracy and exact match over prediction records.

    Each record needs "prediction" (str), "answers" (list of str) and
    "multiple_choice_answer" (str); "answer_type" (str) is optional and
    defaults to "unknown". Exact match compares the prediction with
    "multiple_choice_answer". Averages are plain means over records.

    Returns:
        ``{"n", "vqa_accuracy", "exact_match", "by_answer_type"}``, where
        ``by_answer_type`` maps each answer type (sorted) to its own
        ``{"n", "vqa_accuracy", "exact_match"}``. With no records, n is 0, the
        metrics are 0.0 and ``by_answer_type`` is empty.
    """
    # answer type -> [count, sum of vqa accuracy, sum of exact match]
    sums: dict[str, list[float]] = {}
    n = 0
    acc_sum = 0.0
    em_sum = 0.0
    for record in records:
        acc = vqa_accuracy(record["prediction"], list(record["answers"]))
        em = exact_match(record["prediction"], record["multiple_choice_answer"])
        answer_type = record.get("answer_type") or _UNKNOWN_TYPE
        group = sums.setdefault(answer_type, [0, 0.0, 0.0])
        group[0] += 1
        group[1] += acc
        group[2] += em
        n += 1
        acc_sum += acc
        em_sum += em

    by_type = {
        answer_type: {
            "n": int(count),
            "vqa_accuracy": acc_total / count,
            "exact_match": em_total / count,
        }
        for answer_type, (count, acc_total, em_total) in sorted(sums.items())
    }
    return {
        "n": n,
        "vqa_accuracy": acc_sum / n if n else 0.0,
        "exact_match": em_sum / n if n else 0.0,
        "by_answer_type": by_type,
    }


def metrics(records: Sequence[Mapping], options: object = None) -> dict[str, Any]:
    """The vqa task's metrics of one group: ``{"vqa_accuracy", "exact_match"}`` (``options`` unused)."""
    summary = summarize(records)
    return {"vqa_accuracy": summary["vqa_accuracy"], "exact_match": summary["exact_match"]}


def baseline(answer: str, test_rows: Sequence[Mapping]) -> float:
    """The baseline score: mean VQA accuracy of always answering ``answer`` against each test row's "answers"."""
    return sum(vqa_accuracy(answer, row["answers"]) for row in test_rows) / len(test_rows)
