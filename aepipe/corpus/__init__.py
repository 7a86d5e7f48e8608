"""Corpora: readers that yield raw items, and mappers that turn them into arrays.

Reader -> mapper -> writer: a reader lists shards (serialisable: paths and row
ranges) and yields :class:`RawItem` for a shard; a preprocessor turns a raw item
into a model input or raises :class:`BadItem`; bad items go to the quarantine.
"""

from aepipe.corpus.base import BadItem, ItemBatch, Quarantine, RawItem, Shard
from aepipe.corpus.images import ImageCorpus, ImagePreprocessor, open_image_corpus

__all__ = [
    "BadItem",
    "ImageCorpus",
    "ImagePreprocessor",
    "ItemBatch",
    "Quarantine",
    "RawItem",
    "Shard",
    "open_image_corpus",
]
