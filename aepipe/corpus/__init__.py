"""Corpora: readers that list shards and yield raw items (reader -> mapper -> writer).

A reader lists shards (serialisable: paths and row ranges) and yields :class:`RawItem` for a
shard; ``iter_batches`` applies a preprocessor from aepipe.features to each payload and sends
items that raise :class:`BadItem` to the quarantine.
"""

from aepipe.config import CorpusConfig
from aepipe.corpus.base import BadItem, ItemBatch, Quarantine, RawItem, Shard
from aepipe.corpus.documents import DocumentCorpus
from aepipe.corpus.images import ImageCorpus, open_image_corpus

Corpus = ImageCorpus | DocumentCorpus


def open_corpus(cfg: CorpusConfig) -> Corpus:
    """The reader for ``cfg.kind``: images or documents."""
    return DocumentCorpus(cfg) if cfg.kind == "documents" else ImageCorpus(cfg)


__all__ = [
    "BadItem",
    "Corpus",
    "DocumentCorpus",
    "ImageCorpus",
    "ItemBatch",
    "Quarantine",
    "RawItem",
    "Shard",
    "open_corpus",
    "open_image_corpus",
]
