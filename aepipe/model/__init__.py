"""Autoencoders: pure ``nn.Module`` networks (modules.py), the Lightning wrapper
(lightning.py) and the model directory format (store.py)."""

from aepipe.model.networks import Autoencoder, build_autoencoder
from aepipe.model.saved import LoadedModel, load_model, save_model

__all__ = ["Autoencoder", "LoadedModel", "build_autoencoder", "load_model", "save_model"]
