"""Back from codes to images: decode stored codes or reconstruct images (``decode``), compact
quantised code files (``compress``), and applying a restoration model to a corpus.

Level: above ``codes`` (it reads the store) and ``model`` (it runs the decoder); nothing below
imports it, and it needs no index.
"""
