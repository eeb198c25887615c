"""How closely fedumm's metrics follow the official code: prints the agreement figures.

- Caption tokenisation: the Python PTB rules (``fedumm.metrics.ptb.python_ptb_tokenize``) and
  fedumm's tokenizer before issue 15 (a lowercase word regex) against pycocoevalcap's Java
  PTB tokenizer, on N generated caption-like strings (tests/metrics/_ptb_cases.py); then
  BLEU-4 and CIDEr-D of 50 generated captions (3 overlapping references each) tokenised by each.
- VQA accuracy: ``vqa_accuracy`` against the re-statement of GT-Vision-Lab's vqaEval.py in
  tests/metrics/test_vqa.py on M seeded random cases, disagreements by documented rule.

    python bench/metrics_agreement.py            # N=300, M=3000
    python bench/metrics_agreement.py --captions 1000 --vqa 10000
"""

from __future__ import annotations

import argparse
import random
import re
import shutil
import sys
from pathlib import Path

from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.cider.cider import Cider

from fedumm.metrics.ptb import java_ptb_tokenize, ptb_jar, python_ptb_tokenize
from fedumm.metrics.vqa import vqa_accuracy

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
from _ptb_cases import caption_cases  # noqa: E402
from test_vqa import _official_accuracy  # noqa: E402

_OLD_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")  # fedumm's caption tokens before issue 15


def _old_tokens(text: str) -> str:
    return " ".join(_OLD_TOKEN.findall(text.lower()))


def _scores(tokenised: list[str], n: int) -> tuple[float, float]:
    res = {i: [tokenised[i]] for i in range(n)}
    gts = {i: tokenised[n + 3 * i : n + 3 * i + 3] for i in range(n)}
    return Bleu(4).compute_score(gts, res, verbose=0)[0][3], Cider().compute_score(gts, res)[0]


def captions(n: int) -> None:
    jar = ptb_jar()
    if shutil.which("java") is None or jar is None:
        print("captions: no java on PATH; skipped")
        return
    cases = caption_cases(n, seed=0)
    java = java_ptb_tokenize(cases, jar)
    python = sum(python_ptb_tokenize(c) == j for c, j in zip(cases, java))
    old = sum(_old_tokens(c) == j for c, j in zip(cases, java))
    print(f"captions: {n} strings tokenise identically to Java PTB: Python rules {python}/{n}, old regex {old}/{n}")
    # 50 predictions; each reference is another generated caption's words mixed into the
    # prediction's (a word kept with probability 0.7), so n-grams are shared as between real captions.
    rng = random.Random(1)
    predictions = caption_cases(50, seed=1)
    others = caption_cases(150, seed=2)
    references = []
    for i, prediction in enumerate(predictions):
        for other in others[3 * i : 3 * i + 3]:
            mixed = [w if rng.random() < 0.7 else rng.choice(other.split()) for w in prediction.split()]
            references.append(" ".join(mixed))
    texts = predictions + references
    java_scores = _scores(java_ptb_tokenize(texts, jar), 50)
    python_scores = _scores([python_ptb_tokenize(t) for t in texts], 50)
    old_scores = _scores([_old_tokens(t) for t in texts], 50)
    for name, (bleu, cider) in (("java PTB", java_scores), ("python PTB", python_scores), ("old regex", old_scores)):
        print(
            f"  50 captions, {name:<10}: BLEU-4 {bleu:.4f} (diff {bleu - java_scores[0]:+.4f}), "
            f"CIDEr-D {cider:.4f} (diff {cider - java_scores[1]:+.4f})"
        )


def vqa(m: int) -> None:
    words = ["I'm", "im", "Im", "ive", "I've", "Ive", "dont", "don't", "cant", "Two", "two", "2", "none", "0",
             "the", "a", "An", "dog", "Dog.", "dog!", "red-ball", "red ball", "3.5", "1,000", "1000", "yes",
             "Yes", "no", "black/white", "(left)", "whats", "what's", "isnt", "youre"]  # fmt: skip
    rng = random.Random(15)

    def answer() -> str:
        return " ".join(rng.choice(words) for _ in range(rng.choice((1, 1, 1, 2))))

    differ = {"single answer": 0, "identical answers": 0, "other": 0}
    for _ in range(m):
        pool = [answer() for _ in range(3)]
        answers = [rng.choice(pool) for _ in range(rng.choice((1, 3, 10, 10)))]
        prediction = rng.choice([*pool, answer()])
        if abs(vqa_accuracy(prediction, answers) - _official_accuracy(prediction, answers)) > 1e-12:
            if len(answers) == 1:
                differ["single answer"] += 1
            elif len({a.strip() for a in answers}) == 1:
                differ["identical answers"] += 1
            else:
                differ["other"] += 1
    agree = m - sum(differ.values())
    print(f"vqa: {agree}/{m} random cases score as the official rules; differ: {differ}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=300, help="generated caption strings")
    parser.add_argument("--vqa", type=int, default=3000, help="random VQA cases")
    args = parser.parse_args()
    captions(args.captions)
    vqa(args.vqa)


if __name__ == "__main__":
    main()
