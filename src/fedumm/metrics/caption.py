"""Caption metrics: BLEU-4, ROUGE-L and CIDEr-D, and the summary.

BLEU-4 and CIDEr-D come from pycocoevalcap (the COCO caption evaluation, Chen et al. 2015,
arXiv:1504.00325), ROUGE-L from Google's rouge-score; both are imported on first use.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from fedumm.metrics.base import MetricOptions, check_lengths, field

__all__ = ["bleu4", "caption_tokens", "cider_d", "metrics", "rouge_l"]

# Words with an inner apostrophe stay whole ("don't"); all other punctuation separates and
# is dropped, as the COCO evaluation's PTB tokenizer does, but without its Java dependency.
_CAPTION_TOKEN = re.compile(r"[a-z0-9]+(?:'[a-z0-9]+)*")


def caption_tokens(text: str) -> str:
    """Lowercased words joined by single spaces, punctuation dropped ("A dog, running." -> "a dog running")."""
    return " ".join(_CAPTION_TOKEN.findall(text.lower()))


def _coco_inputs(
    predictions: Sequence[str], references: Sequence[Sequence[str]]
) -> tuple[dict[int, list[str]], dict[int, list[str]]]:
    """pycocoevalcap's {id: [references]} and {id: [prediction]}, tokenised."""
    check_lengths(predictions, references, "predictions and references")
    empty = [i for i, refs in enumerate(references) if not refs]
    if empty:
        raise ValueError(f"references[{empty[0]}] is empty; every caption needs at least one reference")
    gts = {i: [caption_tokens(r) for r in refs] for i, refs in enumerate(references)}
    res = {i: [caption_tokens(p)] for i, p in enumerate(predictions)}
    return gts, res


def bleu4(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002, ACL), as in the COCO caption evaluation (pycocoevalcap).

    Clipped 1- to 4-gram precisions pooled over the corpus, geometric mean, brevity penalty
    against the closest reference length. 1.0 for captions identical to a reference.
    """
    from pycocoevalcap.bleu.bleu import Bleu

    gts, res = _coco_inputs(predictions, references)
    scores, _ = Bleu(4).compute_score(gts, res, verbose=0)
    return float(scores[3])


def rouge_l(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean ROUGE-L F1 (Lin 2004, "ROUGE: A Package for Automatic Evaluation of Summaries"), rouge-score.

    Per caption: longest common subsequence of tokens, P = LCS/|prediction|,
    R = LCS/|reference|, F1 = 2PR/(P+R); the best reference counts. rouge-score's tokenizer
    keeps only ASCII letters and digits.
    """
    from rouge_score.rouge_scorer import RougeScorer

    check_lengths(predictions, references, "predictions and references")
    scorer = RougeScorer(["rougeL"])
    total = 0.0
    for i, (prediction, refs) in enumerate(zip(predictions, references)):
        if not refs:
            raise ValueError(f"references[{i}] is empty; every caption needs at least one reference")
        total += scorer.score_multi(list(refs), prediction)["rougeL"].fmeasure
    return total / len(predictions)


def cider_d(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """CIDEr-D (Vedantam et al. 2015, "CIDEr: Consensus-based Image Description Evaluation"), pycocoevalcap.

    TF-IDF weighted 1- to 4-gram cosine similarity with the references, with clipped
    counts and a Gaussian length penalty (sigma 6), times 10, averaged over captions. The
    IDF comes from the references of the captions scored together, so a single caption
    (one image) scores 0: score a corpus.
    """
    from pycocoevalcap.cider.cider import Cider

    gts, res = _coco_inputs(predictions, references)
    score, _ = Cider().compute_score(gts, res)
    return float(score)


def metrics(records: Sequence[Mapping], options: MetricOptions | None = None) -> dict[str, Any]:
    """The caption task's metrics of one group: ``{"bleu4", "rouge_l", "cider_d"}`` (``options`` unused).

    Records hold "prediction" and "references" (or "answers").
    """
    predictions = [str(p) for p in field(records, "prediction")]
    references = [list(refs) for refs in field(records, "references", "answers")]
    return {
        "bleu4": bleu4(predictions, references),
        "rouge_l": rouge_l(predictions, references),
        "cider_d": cider_d(predictions, references),
    }
