"""Tests for fedumm.metrics.ptb: the Python PTB rules against fixed cases and the Java tokenizer,
and caption metrics against pycocoevalcap's own pipeline."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from fedumm.metrics.caption import bleu4, cider_d
from fedumm.metrics.ptb import PUNCTUATIONS, java_ptb_tokenize, ptb_jar, ptb_tokenize, python_ptb_tokenize

sys.path.insert(0, str(Path(__file__).parent))
from _ptb_cases import caption_cases  # noqa: E402

needs_java = pytest.mark.skipif(shutil.which("java") is None or ptb_jar() is None, reason="needs java on PATH")

# Outputs of CoreNLP 3.4.1's PTBTokenizer -preserveLines -lowerCase with pycocoevalcap's
# punctuation removal, recorded from the Java tokenizer.
FIXED = [
    ("A man's dog doesn't run.", "a man 's dog does n't run"),
    ("well-known 3.5 1,000 (left) [x] {y}", "well-known 3.5 1,000 -lrb- left -rrb- -lsb- x -rsb- -lcb- y -rcb-"),
    ("I can't won't cannot gonna wanna", "i ca n't wo n't can not gon na wan na"),
    ("U.S. Mr. Smith etc. e.g. a.m.", "u.s. mr. smith etc. e.g. a.m."),
    ('He said "hi" -- and `ok\'', "he said hi and ok"),
    ("a/b 50% $5 & co. #1 @x *star*", "a/b 50 % $ 5 & co. # 1 @x * star *"),
    ("", ""),
    ("end...", "end"),
    ("It's 5 o'clock; it's ok: fine!", "it 's 5 o'clock it 's ok fine"),
    ("state-of-the-art e-mail x--y 2-3", "state-of-the-art e-mail x y 2-3"),
    ("they'll we're I'd you've she's", "they 'll we 're i 'd you 've she 's"),
    ("some things'  dogs' bone", "some things dogs bone"),
    ("3:45 10.5cm 1/2 \u00bd", "3:45 10.5 cm 1/2 1/2"),
    ("don\u2019t \u201chi\u201d it\u2019s", "do n't hi it 's"),
    ("a+b 1+1=2 x<y", "a + b 1 +1 = 2 x < y"),
    ("wow!! why?? ok?!? a,,b", "wow !! why ?? ok ?!? a b"),
    ("a dog's-eye view", "a dog 's eye view"),
    ("5km/h 1990s '90s 2nd", "5km/h 1990s '90s 2nd"),
    ("he's isn't shouldn't've y'all", "he 's is n't should n't 've y' all"),
    ("gotta lemme 'tis", "got ta lem me 't is"),
    ("\u00a35 \u20ac3", "# 5 $ 3"),
    ("a.b.c. x.y A.", "a.b.c. x.y a."),
    ("'90 '90s '50% '5 in '99. '2000s '3:45'", "'90 '90s 50 % 5 in 99 2000s 3:45"),
]


@pytest.mark.parametrize(("text", "expected"), FIXED)
def test_python_rules_on_fixed_cases(text: str, expected: str) -> None:
    assert python_ptb_tokenize(text) == expected


@needs_java
def test_fixed_cases_are_what_java_gives() -> None:
    # The recorded expectations are the Java tokenizer's, so the fixed cases test the real thing.
    assert java_ptb_tokenize([t for t, _ in FIXED], ptb_jar()) == [e for _, e in FIXED]


@needs_java
def test_python_rules_agree_with_java_on_generated_captions() -> None:
    # Prepare: 600 generated caption-like strings (contractions, hyphens, numbers, brackets, quotes, punctuation).
    cases = caption_cases(600, seed=15)

    # Execute
    java = java_ptb_tokenize(cases, ptb_jar())
    differ = [(c, j, python_ptb_tokenize(c)) for c, j in zip(cases, java) if python_ptb_tokenize(c) != j]

    # Assert: at most 1% differ (rare constructions the module docstring names).
    assert len(differ) <= 6, differ[:5]


def test_punctuations_are_pycocoevalcaps() -> None:
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS as OFFICIAL

    assert set(OFFICIAL) == PUNCTUATIONS


def test_without_java_the_python_rules_tokenise(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: no java on PATH.
    monkeypatch.setenv("PATH", "")

    # Execute / Assert
    assert ptb_tokenize(["Don't stop (now)."]) == ["do n't stop -lrb- now -rrb-"]


@needs_java
def test_line_breaks_inside_captions_keep_the_alignment() -> None:
    assert java_ptb_tokenize(["a\nb", "c\rd", "e\u2028f", ""], ptb_jar()) == ["a b", "c d", "e f", ""]


@needs_java
def test_caption_metrics_equal_pycocoevalcap_on_its_own_tokenisation() -> None:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    # Prepare: 40 generated predictions, each with 3 generated references.
    cases = caption_cases(160, seed=7)
    predictions = cases[:40]
    references = [cases[40 + 3 * i : 43 + 3 * i] for i in range(40)]
    gts = PTBTokenizer().tokenize({i: [{"caption": r} for r in refs] for i, refs in enumerate(references)})
    res = PTBTokenizer().tokenize({i: [{"caption": p}] for i, p in enumerate(predictions)})

    # Execute
    official_bleu = Bleu(4).compute_score(gts, res, verbose=0)[0][3]
    official_cider = Cider().compute_score(gts, res)[0]

    # Assert
    assert bleu4(predictions, references) == pytest.approx(official_bleu, abs=1e-12)
    assert cider_d(predictions, references) == pytest.approx(official_cider, abs=1e-12)
    assert official_cider > 0
