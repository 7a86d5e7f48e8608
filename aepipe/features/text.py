"""Text features: text -> weighted bag-of-words vectors (:class:`TextPreprocessor`).

The vocabulary is fitted with scikit-learn's CountVectorizer on the training corpus and saved
as plain JSON (terms in column order, idf weights) in ``preprocess.json``; loading rebuilds the
vectorizer with ``CountVectorizer(vocabulary=...)``, so nothing is ever unpickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

if TYPE_CHECKING:  # imported where used: image-decoding worker processes import this package, never scikit-learn
    from sklearn.feature_extraction.text import CountVectorizer

from aepipe.config import TextFeaturesConfig
from aepipe.errors import CorpusError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TextPreprocessor:
    """A fitted bag-of-words vectorizer, saved as ``preprocess.json`` beside the model.

    ``weighting``: ``counts``; ``log`` = log(1 + count); ``tfidf`` = log(1 + count) * idf with
    scikit-learn's smoothed idf from the training corpus. Vectors are not row-normalised.
    """

    vocabulary: tuple[str, ...]
    idf: tuple[float, ...] | None
    weighting: str = "tfidf"
    lowercase: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"
    stop_words: str | tuple[str, ...] | None = "english"
    ngram_max: int = 1
    kind: str = "text"

    @property
    def shape(self) -> tuple[int]:
        return (len(self.vocabulary),)

    @property
    def dim(self) -> int:
        return len(self.vocabulary)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "weighting": self.weighting,
            "lowercase": self.lowercase,
            "token_pattern": self.token_pattern,
            "stop_words": list(self.stop_words) if isinstance(self.stop_words, tuple) else self.stop_words,
            "ngram_max": self.ngram_max,
            "vocabulary": list(self.vocabulary),
            "idf": None if self.idf is None else [round(float(v), 6) for v in self.idf],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TextPreprocessor:
        stop = d.get("stop_words")
        return cls(
            vocabulary=tuple(d["vocabulary"]),
            idf=None if d.get("idf") is None else tuple(float(v) for v in d["idf"]),
            weighting=d["weighting"],
            lowercase=bool(d["lowercase"]),
            token_pattern=d["token_pattern"],
            stop_words=tuple(stop) if isinstance(stop, list) else stop,
            ngram_max=int(d.get("ngram_max", 1)),
        )

    @cached_property
    def _vectorizer(self) -> CountVectorizer:
        from sklearn.feature_extraction.text import CountVectorizer

        stop = list(self.stop_words) if isinstance(self.stop_words, tuple) else self.stop_words
        return CountVectorizer(
            vocabulary=list(self.vocabulary),
            lowercase=self.lowercase,
            token_pattern=self.token_pattern,
            stop_words=stop,
            ngram_range=(1, self.ngram_max),
            dtype=np.float32,
        )

    @cached_property
    def _idf(self) -> np.ndarray:
        return np.asarray(self.idf, dtype=np.float32) if self.idf is not None else np.ones(self.dim, np.float32)

    def counts(self, texts: list[str]) -> sp.csr_matrix:
        """Term counts. list of N texts -> (N, V) sparse float32"""
        return self._vectorizer.transform(texts).tocsr()

    def weigh(self, counts: sp.csr_matrix) -> np.ndarray:
        """(N, V) counts -> (N, V) dense float32 model inputs."""
        c = counts.toarray().astype(np.float32, copy=False)
        if self.weighting == "counts":
            return c
        x = np.log1p(c)
        return x * self._idf if self.weighting == "tfidf" else x

    def transform(self, texts: list[str]) -> np.ndarray:
        """list of N texts -> (N, V) float32"""
        return self.weigh(self.counts(texts))

    def word_distribution(self, x: np.ndarray) -> np.ndarray:
        """Undo the weighting and normalise each row: the document's word distribution (the softmax
        reconstruction target). (N, V) -> (N, V), rows sum to 1 (0 for documents without terms)."""
        if self.weighting == "counts":
            c = x
        elif self.weighting == "log":
            c = np.expm1(x)
        else:
            c = np.expm1(x / self._idf)
        c = np.maximum(c, 0.0, dtype=np.float32)
        return c / np.maximum(c.sum(1, keepdims=True), 1e-12)

    def __call__(self, payload: Any, *_: Any) -> np.ndarray:
        """One document (str) -> (V,) float32, the interface of ImagePreprocessor."""
        return self.transform([payload if isinstance(payload, str) else payload.text])[0]


def fit_text_preprocessor(texts: list[str], cfg: TextFeaturesConfig) -> TextPreprocessor:
    """Fit the vocabulary (the ``cfg.max_features`` most frequent terms) and idf on ``texts``."""
    from sklearn.feature_extraction.text import CountVectorizer, TfidfTransformer

    stop = cfg.stop_words
    vec = CountVectorizer(
        max_features=cfg.max_features,
        stop_words=stop,
        lowercase=cfg.lowercase,
        token_pattern=cfg.token_pattern,
        ngram_range=(1, cfg.ngram_max),
        min_df=cfg.min_df,
        max_df=cfg.max_df,
        dtype=np.float32,
    )
    try:
        counts = vec.fit_transform(texts)
    except ValueError as exc:  # empty vocabulary, or min_df/max_df leave no terms
        raise CorpusError(
            f"cannot fit a vocabulary on {len(texts)} documents: {exc}; "
            "check features.text (stop_words, min_df, max_df, token_pattern)"
        ) from None
    idf = TfidfTransformer(smooth_idf=True).fit(counts).idf_
    log.info("vocabulary of %d terms from %d documents", counts.shape[1], len(texts))
    return TextPreprocessor(
        vocabulary=tuple(vec.get_feature_names_out().tolist()),
        idf=tuple(idf.tolist()),
        weighting=cfg.weighting,
        lowercase=cfg.lowercase,
        token_pattern=cfg.token_pattern,
        stop_words=tuple(stop) if isinstance(stop, list) else stop,
        ngram_max=cfg.ngram_max,
    )
