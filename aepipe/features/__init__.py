"""Features: turn one raw payload (image bytes or array, document text) into a model input.

Preprocessors are fitted or inferred once (at training) and saved as ``preprocess.json`` beside
the model; they know nothing about corpora, which call them on each item.
"""

from typing import Any

from aepipe.features.images import ImagePreprocessor
from aepipe.features.text import TextPreprocessor, fit_text_preprocessor

Preprocessor = ImagePreprocessor | TextPreprocessor


def preprocessor_from_dict(d: dict[str, Any]) -> Preprocessor:
    """Rebuild a saved preprocessor (``preprocess.json``) of either kind."""
    return TextPreprocessor.from_dict(d) if d.get("kind") == "text" else ImagePreprocessor.from_dict(d)


__all__ = ["ImagePreprocessor", "Preprocessor", "TextPreprocessor", "fit_text_preprocessor", "preprocessor_from_dict"]
