"""aepipe: autoencoder compression and similarity search.

Stages (each a plain function, no orchestrator needed):
corpus -> features -> model (train) -> codes (encode) -> index -> search / cluster.
"""

__version__ = "0.1.0"
