"""One typed configuration for every stage.

The CLI reads it from YAML plus ``section.key=value`` overrides, Prefect takes it
as a flow parameter, tests shrink the default. The resolved config is saved
beside every artifact so a model can be rebuilt from its directory alone.
"""

from __future__ import annotations

import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from aepipe.errors import ConfigError

log = logging.getLogger(__name__)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ImageSourceConfig(_Section):
    """``corpus.images``: how image items are read."""

    column: str = Field("image", description="Parquet: column of encoded image bytes (or HF-style {bytes, path})")
    array_key: str | None = Field(None, description="npz key of the images (default: first 3-D/4-D array)")
    labels_key: str | None = Field(None, description="npz key of the labels (default: 'y', 'labels' or 'y_*')")
    extensions: list[str] = [".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"]
    max_pixels: int = Field(
        40_000_000, gt=0, description="items with more pixels are quarantined (decompression bombs)"
    )
    max_file_bytes: int = Field(256 * 2**20, gt=0)


class DocumentSourceConfig(_Section):
    """``corpus.documents``: how document items are read."""

    text_column: str = Field("text", description="column (Parquet, JSONL, CSV) holding the text")
    extensions: list[str] = Field([".txt", ".md"], description="file types read from a folder")
    max_doc_bytes: int = Field(2**20, gt=0, description="longer documents are quarantined")
    snippet_chars: int = Field(200, ge=0, description="length of the text snippet kept in the store")
    encoding: str | None = Field(
        None, description="encoding to try after UTF-8 (default: detect; Latin-1 is the last resort and is recorded)"
    )


# Keys that lived flat under corpus/features before they got sections of their own: still read
# (with a warning) so older configs and saved runs keep working.
_MOVED_KEYS = {
    ("corpus", "image_column"): ("images", "column"),
    ("corpus", "array_key"): ("images", "array_key"),
    ("corpus", "labels_key"): ("images", "labels_key"),
    ("corpus", "extensions"): ("images", "extensions"),
    ("corpus", "max_pixels"): ("images", "max_pixels"),
    ("corpus", "max_file_bytes"): ("images", "max_file_bytes"),
    ("corpus", "text_column"): ("documents", "text_column"),
    ("corpus", "text_extensions"): ("documents", "extensions"),
    ("corpus", "max_doc_bytes"): ("documents", "max_doc_bytes"),
    ("corpus", "snippet_chars"): ("documents", "snippet_chars"),
    ("corpus", "encoding"): ("documents", "encoding"),
    ("features", "image_size"): ("image", "size"),
    ("features", "channels"): ("image", "channels"),
}


def _move_old_keys(section: str, data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for (sec, old), (sub, new) in _MOVED_KEYS.items():
        if sec == section and old in data:
            log.warning("config key %s.%s is now %s.%s.%s; please update your config", sec, old, sec, sub, new)
            target = dict(data.get(sub) or {})
            target.setdefault(new, data.pop(old))
            data[sub] = target
    return data


class CorpusConfig(_Section):
    """Where items come from. Images (``kind: images``): ``digits`` (scikit-learn's bundled
    8x8 handwritten digits), a folder of images, a Parquet file/dataset, or a NumPy
    ``.npy``/``.npz`` file. Documents (``kind: documents``): ``python-docs`` (docstrings of
    Python's standard library), a folder of ``.txt``/``.md`` files, or a Parquet, JSONL or
    CSV file with a text column."""

    kind: Literal["images", "documents"] = "images"
    source: str = "digits"
    format: Literal["auto", "digits", "folder", "parquet", "numpy", "jsonl", "csv", "python_docs"] = "auto"
    id_column: str = "id"
    label_column: str | None = "label"
    limit: int | None = Field(None, gt=0, description="read only the first N items")
    target_source: str | None = Field(
        None,
        description="training.task: paired: a second corpus (folder, Parquet, .npy/.npz) of clean targets, "
        "matched to the items of corpus.source by id; items without a target are quarantined",
    )
    images: ImageSourceConfig = ImageSourceConfig()
    documents: DocumentSourceConfig = DocumentSourceConfig()

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return _move_old_keys("corpus", data)


class TextFeaturesConfig(_Section):
    """Bag-of-words over a vocabulary fitted on the training corpus (scikit-learn's
    CountVectorizer), weighted by counts, log(1 + count), or log(1 + count) * idf."""

    max_features: int = Field(2000, gt=0, description="keep the V most frequent terms")
    stop_words: Literal["english"] | list[str] | None = "english"
    weighting: Literal["counts", "log", "tfidf"] = "tfidf"
    min_df: int = Field(1, ge=1, description="ignore terms in fewer documents")
    max_df: float = Field(1.0, gt=0, le=1, description="ignore terms in a larger share of documents")
    lowercase: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"
    ngram_max: int = Field(1, ge=1, le=3, description="longest n-gram counted as a term")


class MaxSideConfig(_Section):
    """``features.image.max_side``: the longest input side each architecture is given by default.
    A dense first layer has (C * H * W) x width weights, so dense inputs stay small; convolutions
    share their weights and take larger images."""

    dense: int = Field(64, ge=4, description="dense autoencoders: longest side of the chosen input size")
    conv: int = Field(128, ge=4, description="conv autoencoders: longest side of the chosen input size")


class ImageFeaturesConfig(_Section):
    """``features.image``: the model's input shape (C, H, W), pixels in [0, 1]. Unset size and
    channels are chosen from a seeded sample of the corpus (and logged)."""

    size: tuple[int, int] | None = Field(
        None,
        description="(H, W); default: the median height and width of a sample of the corpus, scaled down "
        "(aspect ratio kept) so the longer side is at most max_side of the architecture",
    )
    channels: Literal[1, 3] | None = Field(
        None,
        description="default: 3 when any sampled item holds colour (gray items are then repeated "
        "over R, G, B), else 1 (colour items converted with luma weights)",
    )
    max_side: MaxSideConfig = MaxSideConfig()
    resize: Literal["pad", "crop", "stretch"] = Field(
        "pad",
        description="items of another aspect ratio: pad (shrink to fit inside, centre, black borders), "
        "crop (fill, centre crop) or stretch (ignore the aspect ratio)",
    )
    sample_items: int = Field(256, ge=1, description="items sampled (seeded) to choose the size and channels")


class FeaturesConfig(_Section):
    """How items become model inputs: images (C, H, W) float32 in [0, 1]; documents a
    weighted bag-of-words vector (V,)."""

    image: ImageFeaturesConfig = ImageFeaturesConfig()
    text: TextFeaturesConfig = TextFeaturesConfig()

    @model_validator(mode="before")
    @classmethod
    def _old_keys(cls, data: Any) -> Any:
        return _move_old_keys("features", data)


class SparsityConfig(_Section):
    """Activity penalty on the code: L1 on activations and/or KL divergence of the mean
    activation towards ``rho`` (the KL form needs ``code_activation: sigmoid``)."""

    l1: float = Field(0.0, ge=0)
    kl: float = Field(0.0, ge=0)
    rho: float = Field(0.05, gt=0, lt=1)


class DenoisingConfig(_Section):
    """Corrupt inputs during training (the target stays clean); encoding uses clean inputs."""

    noise: Literal["gaussian", "masking", "salt_pepper"] = "masking"
    level: float = Field(0.2, gt=0, le=1, description="std (gaussian) or share of corrupted values")


class ContractiveConfig(_Section):
    """Penalty on the squared Frobenius norm of the encoder's Jacobian d code / d input."""

    weight: float = Field(1e-3, gt=0)
    method: Literal["auto", "exact", "projections"] = Field(
        "auto",
        description="exact: closed form for a one-layer sigmoid encoder; projections: "
        "unbiased random-projection estimate (vector-Jacobian products) for any encoder",
    )
    n_projections: int = Field(1, ge=1)


class TransferConfig(_Section):
    """Initialise encoder layers from another saved model (e.g. trained on another corpus)."""

    init_from: str = Field(..., description="model directory (RUN/model) to copy encoder weights from")
    n_layers: int | None = Field(None, ge=1, description="copy only the first N encoder layers (default: all)")
    freeze: bool = False


# model.pca_basis: auto (chosen by benchmarks.sweep on the photo stand-ins, RESULTS-sweep.md, session 8)
AUTO_PCA_BASIS = 128
AUTO_PCA_BASIS_ABOVE = 2048


class ModelConfig(_Section):
    """The four classic hyperparameters (code size, layers, nodes per layer, loss), the
    architecture, and the regularisers that make the other kinds of autoencoder."""

    architecture: Literal["dense", "conv"] = "dense"
    code_size: int = Field(10, gt=0)
    n_layers: int = Field(
        3, ge=0, le=8, description="hidden layers of the encoder (0: a single code layer, dense only)"
    )
    nodes_per_layer: int | list[int] | None = Field(
        None,
        description="hidden widths (dense) or channels (conv) of the encoder; the decoder mirrors them. "
        "Default: 512, 256, 128... (dense) or 32, 64, 128... (conv)",
    )
    loss: Literal["auto", "mse", "bce", "softmax"] = Field(
        "auto",
        description="auto: softmax for documents (cross-entropy of the word distribution), "
        "BCE for inputs in [0, 1], else MSE",
    )
    decoder: Literal["mirror", "linear"] = Field(
        "mirror",
        description="mirror: the encoder's layers reversed; linear: one linear layer from the code "
        "to the output (dense only; for documents, topic-like codes)",
    )
    activation: Literal["relu", "gelu", "leaky_relu", "tanh", "sigmoid"] = "gelu"
    code_activation: Literal["linear", "relu", "sigmoid"] = "linear"
    batch_norm: Literal["auto"] | bool = Field(
        "auto",
        description="batch normalisation after each hidden layer. auto: on when the deep path reads a PCA basis "
        "(model.pca_basis), else off",
    )
    variational: bool = Field(False, description="VAE: KL-regularised latent; codes are the posterior mean")
    kl_weight: float = Field(1.0, ge=0, description="beta of the VAE's KL term")
    sparsity: SparsityConfig | None = None
    denoising: DenoisingConfig | None = None
    contractive: ContractiveConfig | None = None
    transfer: TransferConfig | None = None
    linear_path: Literal["none", "pca", "pca-frozen", "lsa", "lsa-frozen"] = Field(
        "none",
        description="dense only: a linear path beside the deep one, initialised to PCA on the training items, "
        "so training starts as PCA (code = P(x - mean) + f(x), output = mean + P'code + g(code), f and g "
        "starting at zero); pca trains P and the mean with the rest, pca-frozen keeps them. Needs an "
        "identity output: loss auto becomes mse (outputs clamped to [0, 1] for inputs in [0, 1]). "
        "lsa / lsa-frozen: P from an uncentred truncated SVD (LSA, the documents' baseline), so codes start "
        "as LSA's; also with loss softmax (documents), whose decoder then starts from zero weights",
    )
    linear_path_lr: Literal["auto"] | float = Field(
        "auto",
        description="learning rate of the linear path's P and mean (model.linear_path: pca, lsa), as a multiple "
        "of training.lr. auto: min(1, sqrt(1024 / inputs)), so that one Adam step moves a row of P by no more, "
        "relative to its unit length, than it does on a 32x32 input; at the full rate a 64x64 RGB input's PCA "
        "start is undone within a few steps",
    )
    pca_basis: Literal["auto"] | int = Field(
        "auto",
        description="dense with linear_path pca / pca-frozen: the deep path reads the item's first N principal "
        "components (fitted on the training items beside the linear path) instead of its raw values, and writes "
        "its correction back through the same N directions; far fewer weights on large inputs, which a dense "
        "network otherwise memorises (600 colour photos at 64x64). auto: "
        f"{AUTO_PCA_BASIS} for inputs of more than {AUTO_PCA_BASIS_ABOVE:,} values (colour images from 32x32 up), "
        "else 0. 0: the raw values",
    )
    skip_connections: bool = Field(
        False,
        description="conv only: U-Net-style additive skips from each encoder resolution but the deepest to the "
        "decoder; better restoration, but the decoder then needs the encoder's feature maps, so codes alone "
        "cannot be decoded",
    )

    refine_channels: int = Field(
        0,
        ge=0,
        le=512,
        description="dense, images: a small convolutional network (three 3x3 layers of this many channels at the "
        "image's resolution) adds a learned correction to the decoder's output image, its last layer starting at "
        "zero (with linear_path: pca the model still starts as PCA). Part of the decoder: codes still decode alone. "
        "Sharpens what a dense decoder blurs (compression at a small code). 0: none",
    )
    residual: Literal["auto"] | bool = Field(
        "auto",
        description="restoration: the network outputs a correction added to its own input (output = input + "
        "decoder output; residual learning as in DnCNN), its last layer starting at zero, so an untrained model "
        "returns the input unchanged and training learns only what the task removes or adds. auto: on for every "
        "training.task but reconstruct (where it would make the code useless), unless model.linear_path is set. "
        "Needs an identity output: loss auto becomes mse, outputs clamped to [0, 1]; like skip_connections, "
        "codes alone cannot be decoded",
    )

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.skip_connections and self.architecture != "conv":
            raise ValueError("skip_connections needs architecture: conv")
        if self.refine_channels and self.architecture != "dense":
            raise ValueError("model.refine_channels is for dense autoencoders (a conv decoder is convolutional)")
        if isinstance(self.nodes_per_layer, list) and len(self.nodes_per_layer) != self.n_layers:
            raise ValueError(f"nodes_per_layer has {len(self.nodes_per_layer)} entries but n_layers is {self.n_layers}")
        widths = self.nodes_per_layer if isinstance(self.nodes_per_layer, list) else [self.nodes_per_layer or 1]
        if any(w <= 0 for w in widths):
            raise ValueError("nodes_per_layer must be positive")
        if self.architecture == "conv" and self.n_layers == 0:
            raise ValueError("a conv autoencoder needs n_layers >= 1")
        if self.architecture == "conv" and self.decoder == "linear":
            raise ValueError("decoder: linear is for dense autoencoders; use decoder: mirror with conv")
        if self.sparsity and self.sparsity.kl > 0 and self.code_activation != "sigmoid":
            raise ValueError("sparsity.kl needs code_activation: sigmoid (mean activations must lie in (0, 1))")
        if self.variational and self.code_activation != "linear":
            raise ValueError("a variational autoencoder samples a Gaussian code; use code_activation: linear")
        if self.variational and self.sparsity:
            raise ValueError("variational and sparsity do not combine: the VAE's KL term already regularises the code")
        if self.linear_path_lr != "auto" and not self.linear_path_lr > 0:
            raise ValueError(f"model.linear_path_lr must be auto or a number > 0, not {self.linear_path_lr}")
        if self.pca_basis != "auto" and self.pca_basis < 0:
            raise ValueError(f"model.pca_basis must be auto or a number >= 0, not {self.pca_basis}")
        if self.linear_path != "none":
            self._check_linear_path()
        if self.pca_basis not in ("auto", 0) and not self.linear_path.startswith("pca"):
            raise ValueError(
                f"model.pca_basis: {self.pca_basis} needs model.linear_path: pca or pca-frozen (it is fitted beside it)"
            )
        if self.contractive and self.contractive.method == "exact" and not self.exact_contractive_possible():
            raise ValueError(
                "contractive.method exact needs a dense encoder with n_layers: 0 and "
                "code_activation: sigmoid (one sigmoid layer); use method: projections"
            )
        return self

    def _check_linear_path(self) -> None:
        """The PCA start is exact only for a dense, deterministic, linear code and an identity output."""
        fix = "or set model.linear_path: none"
        if self.architecture != "dense":
            raise ValueError(f"model.linear_path: {self.linear_path} is for architecture: dense; {fix}")
        if self.variational:
            raise ValueError(f"model.linear_path: {self.linear_path} does not combine with variational; {fix}")
        if self.code_activation != "linear":
            raise ValueError(f"model.linear_path: {self.linear_path} needs code_activation: linear; {fix}")
        if self.loss not in ("auto", "mse") and not (self.linear_path.startswith("lsa") and self.loss == "softmax"):
            raise ValueError(
                f"model.linear_path: {self.linear_path} needs loss: mse (or auto), not {self.loss}: PCA is the "
                f"start only with an identity output (lsa also takes softmax); {fix}"
            )

    def pca_basis_size(self, input_dim: int) -> int:
        """How many principal components the deep path reads and writes (``pca_basis``) for
        inputs of ``input_dim`` values: 0 = the raw values (also without a PCA linear path)."""
        if not self.linear_path.startswith("pca"):
            return 0
        n = self.pca_basis
        if n == "auto":
            n = AUTO_PCA_BASIS if input_dim > AUTO_PCA_BASIS_ABOVE else 0
        return min(int(n), input_dim)

    def uses_batch_norm(self, input_dim: int) -> bool:
        """``batch_norm`` for inputs of ``input_dim`` values (auto: with a PCA basis)."""
        return self.pca_basis_size(input_dim) > 0 if self.batch_norm == "auto" else bool(self.batch_norm)

    def exact_contractive_possible(self) -> bool:
        return (
            self.architecture == "dense"
            and self.n_layers == 0
            and self.code_activation == "sigmoid"
            and not self.variational
        )

    @property
    def kinds(self) -> list[str]:
        """Names of the autoencoder kinds this config combines, e.g. ['conv', 'denoising']."""
        out: list[str] = [self.architecture]
        for name, on in (
            ("sparse", self.sparsity),
            ("denoising", self.denoising),
            ("contractive", self.contractive),
            ("variational", self.variational),
            ("transfer", self.transfer),
        ):
            if on:
                out.append(name)
        return out

    def widths(self, input_dim: int | None = None) -> list[int]:
        """Encoder widths (dense) or channels (conv), outermost first. Dense default: 512, then
        halving, for any ``input_dim`` (measured, see below)."""
        if isinstance(self.nodes_per_layer, list):
            return list(self.nodes_per_layer)
        if isinstance(self.nodes_per_layer, int):
            return [self.nodes_per_layer] * self.n_layers
        if self.architecture == "dense":
            # 512 first whatever the input: narrower layers for small inputs (256-128-64 for 8x8) lost
            # on validation in benchmarks/RESULTS-sweep.md; ``input_dim`` is kept for the saved widths.
            return [max(512 >> i, 32) for i in range(self.n_layers)]
        return [min(32 << i, 256) for i in range(self.n_layers)]


class KnnTargetConfig(_Section):
    """Reconstruct, for each training item, the average of its own target and the mean target of
    its k nearest training items (cosine on the inputs) instead of its own target alone: a
    neighbour-smoothed target that pulls similar items' codes together. Uses the training items
    only and no labels; exact search, O(N^2 * dim) once before training."""

    k: int = Field(20, ge=1)
    max_image_inputs: int = Field(
        AUTO_PCA_BASIS_ABOVE,
        ge=1,
        description="images with more input values than this (colour images from 32x32 up) train on their own "
        "targets: there cosine neighbours in pixel space share colour and brightness more than content, and the "
        "smoothed targets lost to plain ones on both measures (benchmarks/RESULTS-sweep.md, session 8)",
    )
    max_items: int = Field(
        100_000,
        ge=1,
        description="exact neighbour search costs O(N^2 * dim): with more training items the plain "
        "target is used, with a warning",
    )


class NoiseConfig(_Section):
    """One corruption of ``training.task: denoise``: each training item gets one of the listed
    corruptions, at one of its levels, drawn afresh every epoch."""

    kind: Literal["gaussian", "salt_pepper", "masking", "jpeg"] = "gaussian"
    levels: list[float] = Field(
        [15.0, 25.0, 50.0],
        min_length=1,
        description="gaussian: sigma on the 0-255 scale; salt_pepper / masking: share of pixels; jpeg: quality (1-95)",
    )

    @model_validator(mode="after")
    def _check_levels(self) -> NoiseConfig:
        lo, hi = {"gaussian": (0, 255), "salt_pepper": (0, 1), "masking": (0, 1), "jpeg": (0, 95)}[self.kind]
        if not all(lo < v <= hi for v in self.levels):
            raise ValueError(f"{self.kind} levels must lie in ({lo}, {hi}]")
        return self


class WatermarkConfig(_Section):
    """Synthetic watermarks of ``training.task: remove_watermark``: a semi-transparent text or logo
    (ring, box, star) overlay per item, at a random position, size, rotation, opacity and colour
    (white, black or any), drawn by Pillow from the training seed."""

    texts: list[str] = Field(["SAMPLE", "(c) aepipe", "PROOF", "DRAFT"], min_length=1)
    logo_share: float = Field(0.4, ge=0, le=1, description="share of logo overlays (the rest are texts)")
    opacity: tuple[float, float] = Field((0.3, 0.7), description="range of the overlay's opacity")
    size: tuple[float, float] = Field((0.4, 1.0), description="range of the overlay's width, a share of the image's")
    max_rotation: float = Field(45.0, ge=0, le=180, description="degrees, either way")

    @model_validator(mode="after")
    def _check_ranges(self) -> WatermarkConfig:
        for name in ("opacity", "size"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"{name} must be a range (low, high) within (0, 1]")
        return self


TASKS = ("reconstruct", "denoise", "colorize", "remove_watermark", "paired")


class TrainingConfig(_Section):
    task: Literal["reconstruct", "denoise", "colorize", "remove_watermark", "paired"] = Field(
        "reconstruct",
        description="what the decoder learns to output from what input: reconstruct (the input itself), "
        "denoise (training.noise), colorize (grayscale input, colour target), remove_watermark "
        "(training.watermark), paired (inputs from corpus.source, targets from corpus.target_source)",
    )
    noise: list[NoiseConfig] = Field([NoiseConfig()], min_length=1, description="task denoise: the corruptions")
    watermark: WatermarkConfig = WatermarkConfig()
    max_epochs: int = Field(60, ge=1)
    min_steps: int | None = Field(
        None,
        ge=1,
        description="small corpora: raise max_epochs so that training runs at least this many optimizer "
        "steps (300 items at batch 128 are 3 steps an epoch)",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="optimizer steps; training stops at whichever of max_steps, max_epochs and max_time_minutes "
        "comes first (the lr schedule spans the first of max_steps / max_epochs)",
    )
    max_time_minutes: Literal["auto"] | float | None = Field(
        "auto",
        description="wall-clock budget of the training stage: a few steps are timed first and max_steps lowered "
        "so that the lr schedule ends inside it, with a hard stop behind that. auto: 2 minutes up to 12,000 "
        "items, 10 per 60,000 above, at most 60; null: no limit",
    )
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-5, ge=0)
    lr_schedule: Literal["constant", "onecycle", "cosine"] = "onecycle"
    val_fraction: float = Field(0.1, ge=0, lt=0.5, description="held out for early stopping")
    test_fraction: float = Field(0.1, ge=0, lt=0.5, description="held out for the metrics in metrics.json")
    early_stopping_patience: int = Field(15, ge=1)
    max_items: int | None = Field(None, gt=0, description="train on a random sample of at most this many items")
    max_memory_mb: float = Field(
        4096,
        gt=0,
        description="cap on the in-memory training array (float32 inputs): "
        "a larger sample is subsampled, with a warning",
    )
    memory_budget_mb: float = Field(
        8192,
        gt=0,
        description="estimated peak memory of training (data, model, optimizer, one batch's activations): "
        "above it training refuses to start and names the keys to change",
    )
    seed: int = 0
    accelerator: str = Field(
        "auto", description="auto: gpu when CUDA is available, else cpu; or any Lightning accelerator"
    )
    devices: int | str = 1
    num_nodes: int = Field(1, ge=1, description="machines in a DDP job (devices is per machine)")
    strategy: str = "auto"
    precision: str = Field(
        "auto",
        description="auto: bf16-mixed on a GPU with bfloat16 (16-mixed on older ones), 32-true on the CPU; "
        "or any Lightning precision",
    )
    num_workers: int = Field(0, ge=0)
    keep_versions: int = Field(3, ge=1, description="model versions kept under RUN/models (the current one always)")
    timeout_s: float | None = Field(None, gt=0, description="Prefect flows: the train task fails after this long")
    generation_grace_s: float = Field(
        600.0,
        ge=0,
        description="a superseded generation (RUN/generations) is removed only this many seconds after it was "
        "superseded, so readers pinned to it can refresh first; keep_versions newer ones are kept in any case",
    )
    knn_target: KnnTargetConfig | None = None

    @model_validator(mode="after")
    def _check_split(self) -> TrainingConfig:
        if self.val_fraction + self.test_fraction >= 0.8:
            raise ValueError("val_fraction + test_fraction must leave most items for training")
        if self.max_time_minutes not in (None, "auto") and not self.max_time_minutes > 0:  # type: ignore[operator]
            raise ValueError(
                f"training.max_time_minutes must be auto, null or a number > 0, not {self.max_time_minutes}"
            )
        return self


class EncodeConfig(_Section):
    batch_size: int = Field(512, ge=1)
    code_dtype: Literal["float32", "float16"] = "float32"
    code_layout: Literal["binary", "list"] = Field(
        "binary",
        description="the store's code column: fixed-size binary (fast to write and read; decode with "
        "aepipe.codes.store.arrow_to_codes or numpy.frombuffer) or fixed-size list of floats (an array column in any "
        "Parquet tool, ~6x slower to write)",
    )
    rows_per_part: int = Field(100_000, ge=1, description="items per shard / Parquet part file")
    row_group_size: int = Field(32_768, ge=1)
    compression: Literal["none", "snappy", "lz4", "zstd"] = "snappy"
    task_runner: Literal["threads", "processes", "dask", "ray"] = Field(
        "threads", description="how the Prefect encode flow runs shard tasks (dask/ray need prefect-dask/prefect-ray)"
    )
    workers: int = Field(2, ge=1, description="parallel shard tasks")
    shard_timeout_s: float | None = Field(
        None, gt=0, description="Prefect encode flow: a shard task running longer fails (and is retried)"
    )
    dask_address: str | None = Field(None, description="existing Dask scheduler (default: a local cluster)")
    device: str = Field("auto", description="'auto' (CUDA when present), 'cpu', 'cuda' or 'cuda:N'")
    autocast: Literal["auto", "off", "bf16", "fp16"] = Field(
        "auto", description="forward-pass precision; auto: bf16 (fp16 on older GPUs) on CUDA, off on the CPU"
    )
    prefetch_batches: int = Field(
        2,
        ge=0,
        description="batches read and decoded ahead in a background thread while the model runs (0: read in line)",
    )
    decode_workers: int | None = Field(
        None,
        ge=0,
        description="worker processes decoding image files (folder and Parquet-bytes corpora) while the model "
        "runs; none: one per CPU core; 0: decode in the reading thread. With workers, the model on CPU runs on "
        "the cores left over (at least one torch thread)",
    )
    decode_min_items: int = Field(
        8192,
        ge=0,
        description="shards of fewer items decode in the reading thread: starting worker processes costs ~1 s",
    )


class IndexConfig(_Section):
    factory: str = Field("auto", description="'auto' or any faiss index_factory string, e.g. 'HNSW32', 'IVF256,PQ8'")
    metric: Literal["l2", "cosine"] = "l2"
    memory_budget_mb: float = Field(2048, gt=0)
    recall_target: float = Field(0.95, gt=0, le=1)
    n_eval_queries: int = Field(500, ge=1)
    eval_queries: str | None = Field(
        None,
        description="a .npy (N, code size) of real query codes to tune on (their "
        "first n_eval_queries); default: held-out stored items",
    )
    flat_max_items: int = Field(50_000, ge=1, description="exact (Flat) search up to this many vectors")
    add_batch_size: int = Field(65_536, ge=1)
    on_disk: Literal["auto", "always", "never"] = Field(
        "auto",
        description="IVF inverted lists in index.ivfdata, memory-mapped at search time (faiss OnDiskInvertedLists), "
        "built shard by shard and merged on disk; auto: when the index would not fit memory_budget_mb in RAM",
    )
    on_disk_shard_items: int = Field(
        1_000_000, ge=1, description="vectors per partial index held in RAM while building on disk"
    )
    build_budget_s: float | None = Field(
        None,
        gt=0,
        description="auto: pass over candidates whose estimated build (train + add) takes longer; "
        "none: no limit (the cost below still weighs build time)",
    )
    max_query_ms: float | None = Field(
        None,
        gt=0,
        description="auto: pass over candidates whose estimated search time per query (a batch of "
        "queries, at the tuned recall) is longer; none: no limit",
    )
    train_points_per_list: int = Field(
        48,
        ge=39,
        le=256,
        description="IVF: k-means trains on this many sampled vectors per list (faiss's bounds: 39..256). 48 "
        "trains IVF4096 over 1M 32-d codes in ~3-4 s on 2 cores, 256 in ~5x that, for recall within "
        "reach by a larger nprobe; 48 against 64 on a validation draw: the same nprobe and recall@10 "
        "(0.954), ~1 s less build (benchmarks/RESULTS-large.md, session 12)",
    )
    queries_per_build: int = Field(
        1_000_000,
        ge=0,
        description="auto: queries expected between two builds; the winner has the least estimated "
        "build seconds + queries_per_build x seconds per query among candidates that meet the recall target",
    )
    calibration_items: int = Field(
        16_384,
        ge=1_000,
        description="auto, above flat_max_items: candidates are built and tuned on a seeded sample "
        "of this many stored vectors and their costs extrapolated to the whole store",
    )
    seed: int = 0


class ClusterConfig(_Section):
    method: Literal["kmeans", "dec", "scan"] = Field(
        "kmeans",
        description="kmeans: k-means on the stored codes; dec: first refine the encoder for clustering (IDEC: "
        "reconstruction + dec_gamma x KL to a sharpened target of Student-t soft assignments, from k-means "
        "on the pretrained codes), replace the run's model with it and re-encode the store (rebuild the index after); "
        "scan: train classifier heads that put each code and its nearest codes in one cluster (SCAN's "
        "clustering step), keep the head with the lowest loss; the codes and the index stay as they are",
    )
    n_clusters: int | None = Field(None, ge=2, description="default: number of distinct labels, else 10")
    niter: int = Field(50, ge=1)
    n_redo: int = Field(3, ge=1)
    seed: int = 0
    max_train_items: int = Field(
        262_144,
        ge=1,
        description="train k-means on a seeded sample of at most this many "
        "codes (every item is still assigned); a store no larger trains on all of them",
    )
    n_top_terms: int = Field(10, ge=1, description="documents: terms listed per topic")
    dec_epochs: int = Field(30, ge=1, description="dec: most epochs of refinement over the sample")
    dec_gamma: float = Field(0.1, gt=0, description="dec: weight of the clustering (KL) term against reconstruction")
    dec_lr: float = Field(1e-3, gt=0, description="dec: Adam learning rate")
    dec_batch_size: int = Field(256, ge=1)
    dec_tol: float = Field(
        0.001, ge=0, description="dec: stop when fewer than this share of the sample changed cluster in an epoch"
    )
    n_exemplars: int = Field(3, ge=0, description="documents: exemplar documents listed per topic")
    scan_neighbours: int = Field(20, ge=1, description="scan: nearest codes mined per code (exact search)")
    scan_entropy_weight: float = Field(
        2.0, gt=0, description="scan: weight of the entropy of the mean assignment (keeps every cluster in use)"
    )
    scan_heads: int = Field(16, ge=1, description="scan: heads trained from different random starts")
    scan_steps: int = Field(3000, ge=1, description="scan: optimizer steps (the same for any corpus size)")
    scan_batch_size: int = Field(512, ge=2)
    scan_hidden: int = Field(256, ge=1, description="scan: hidden units of each head")
    scan_lr: float = Field(1e-3, gt=0, description="scan: Adam learning rate")
    scan_refine_pairs: int = Field(
        5,
        ge=0,
        description="scan: re-split this many most entangled pairs of clusters with fresh two-way heads, keeping a "
        "split that severs fewer neighbour pairs (0: off)",
    )
    scan_max_items: int = Field(
        65_536, ge=2, description="scan: heads train on a seeded sample of at most this many codes (all are assigned)"
    )


class EvaluationConfig(_Section):
    """``aepipe eval``: held-out queries against the rest, AE codes next to PCA."""

    queries: str | None = Field(
        None, description="corpus source of the query items (default: the run's held-out test split)"
    )
    queries_array_key: str | None = Field(None, description="npz key of the query images, e.g. x_test")
    max_items: int = Field(
        100_000, ge=10, description="evaluate on a seeded sample of at most this many database items"
    )
    map_k: int = Field(100, ge=1)
    umap: bool = Field(False, description="also cluster after a UMAP embedding of the codes (needs umap-learn)")
    umap_dim: int = Field(10, ge=2)
    seed: int = 0


class DriftConfig(_Section):
    """``aepipe update``: compare the reconstruction error of new items with that of the held-out
    items of the model's training split (as stored). Drift: more than ``threshold`` of the new
    items lie above the held-out ``percentile``-th percentile (about 1 - percentile/100 without drift)."""

    action: Literal["recommend", "retrain"] = Field(
        "recommend",
        description="recommend: log it and report it in the update result; retrain: then retrain, "
        "re-encode and re-index",
    )
    percentile: float = Field(95.0, gt=0, lt=100)
    threshold: float = Field(0.25, gt=0, lt=1, description="share of new items above the percentile that is drift")
    min_items: int = Field(20, ge=1, description="fewer new items than this: no verdict")


class PipelineConfig(_Section):
    """The whole pipeline. ``run_dir`` is where every artifact goes (see layout.py)."""

    run_dir: str = "runs/default"
    preset: Literal["auto", "none", "images", "documents"] = Field(
        "auto",
        description="named defaults applied under your keys (aepipe/presets/*.yaml; `aepipe config show "
        "--preset NAME`); auto: the preset of corpus.kind; none: the plain defaults",
    )
    corpus: CorpusConfig = CorpusConfig()
    features: FeaturesConfig = FeaturesConfig()
    model: ModelConfig = ModelConfig()
    training: TrainingConfig = TrainingConfig()
    encode: EncodeConfig = EncodeConfig()
    index: IndexConfig = IndexConfig()
    cluster: ClusterConfig = ClusterConfig()
    evaluation: EvaluationConfig = EvaluationConfig()
    drift: DriftConfig = DriftConfig()

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any) -> Any:
        """``preset``: the named defaults (``aepipe/presets/NAME.yaml``, shown by ``aepipe config show
        --preset NAME``) under the keys the user set. ``auto``: the preset of ``corpus.kind``."""
        if not isinstance(data, dict):
            return data
        name = data.get("preset", "auto")
        if name == "auto":
            corpus: dict[str, Any] = data["corpus"] if isinstance(data.get("corpus"), dict) else {}
            name = corpus.get("kind", "images")
        if name == "none" or name not in PRESETS:
            return data
        preset = load_preset(name)
        model: dict[str, Any] = data["model"] if isinstance(data.get("model"), dict) else {}
        if "n_layers" in model or model.get("architecture") == "conv":  # widths follow the user's depth
            preset.get("model", {}).pop("nodes_per_layer", None)
        if model.get("architecture") == "conv":
            preset.get("model", {}).pop("decoder", None)
        path = preset.get("model", {}).get("linear_path", "none")
        if not _linear_path_fits(path, model, data):  # the preset's PCA/LSA start, only where it can be exact
            preset.get("model", {}).pop("linear_path", None)
        training: dict[str, Any] = data["training"] if isinstance(data.get("training"), dict) else {}
        if "max_epochs" in training or "max_steps" in training:  # the user sized training: no floor under it
            preset.get("training", {}).pop("min_steps", None)
        if training.get("task", "reconstruct") != "reconstruct":  # restoration: the target is the clean
            preset.get("training", {}).pop("knn_target", None)  # item, never a neighbour average
        return _merge(preset, data)

    @model_validator(mode="after")
    def _check_task(self) -> PipelineConfig:
        task = self.training.task
        if task != "reconstruct" and self.training.knn_target is not None:
            raise ValueError(f"training.task={task} restores the item itself; it does not combine with knn_target")
        if task != "reconstruct" and self.corpus.kind == "documents":
            raise ValueError(f"training.task={task} is for images; documents use task: reconstruct")
        if (task == "paired") != (self.corpus.target_source is not None):
            raise ValueError("training.task: paired and corpus.target_source go together (one needs the other)")
        if self.model.refine_channels and self.corpus.kind == "documents":
            raise ValueError("model.refine_channels refines images; documents have no image to refine")
        if task == "colorize" and self.features.image.channels == 1:
            raise ValueError("training.task: colorize needs colour targets (features.image.channels: 3)")
        if task != "reconstruct" and self.model.denoising:
            raise ValueError(f"training.task={task} sets the inputs; remove model.denoising")
        if self.model.residual is True and task == "reconstruct":
            raise ValueError(
                "model.residual adds the input to the output: with training.task reconstruct the "
                "network would learn nothing; use it with a restoration task"
            )
        if self.residual_output() and self.model.loss in ("bce", "softmax"):
            raise ValueError(f"model.residual needs an identity output (loss mse or auto), not loss {self.model.loss}")
        if self.model.residual is True and self.model.linear_path != "none":
            raise ValueError("model.residual and model.linear_path do not combine: choose one start")
        return self

    def residual_output(self) -> bool:
        """Whether the network adds its input to its output (``model.residual``, auto: every restoration task)."""
        if self.model.residual == "auto":  # a PCA/LSA start the user asked for is the other start: it wins
            return self.training.task != "reconstruct" and self.model.linear_path == "none"
        return self.model.residual

    @field_validator("run_dir")
    @classmethod
    def _nonempty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("run_dir must not be empty")
        return v


PRESETS = ("images", "documents")


def _linear_path_fits(path: str, model: dict[str, Any], data: dict[str, Any]) -> bool:
    """Whether a preset's ``model.linear_path`` (``path``) combines with the model keys the user set:
    the refusals of ModelConfig, and the plain autoencoder only (it was measured there; a contractive
    penalty, say, fights the fixed-norm PCA projection). Restoration keeps its sigmoid output and loss.
    (The document preset's own denoising is not the user's: it is part of what was measured.)"""
    training: dict[str, Any] = data["training"] if isinstance(data.get("training"), dict) else {}
    kinds = ("variational", "sparsity", "denoising", "contractive", "transfer")
    losses = ("auto", "mse", "softmax") if path.startswith("lsa") else ("auto", "mse")
    return (
        model.get("architecture", "dense") == "dense"
        and not any(model.get(k) for k in kinds)
        and model.get("code_activation", "linear") == "linear"
        and model.get("loss", "auto") in losses
        and training.get("task", "reconstruct") == "reconstruct"
    )


class _ConfigLoader(yaml.SafeLoader):
    """YAML with YAML 1.2's booleans: only true / false. PyYAML's default (YAML 1.1) also reads
    on / off / yes / no as booleans, so ``encode.autocast=off`` would arrive as False and fail as
    "not one of auto, off, bf16, fp16". Boolean settings still take yes / no / on / off (pydantic
    reads those strings as booleans)."""


_BOOL = "tag:yaml.org,2002:bool"
_ConfigLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != _BOOL]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ConfigLoader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def load_yaml(text: str) -> Any:
    """A config's YAML (a file, a preset, one override's value): safe, with YAML 1.2's booleans."""
    return yaml.load(text, Loader=_ConfigLoader)  # noqa: S506 - a SafeLoader subclass


def load_preset(name: str) -> dict[str, Any]:
    """The defaults of a named preset (a YAML shipped in aepipe/presets/)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset '{name}'; choose one of {', '.join(PRESETS)}")
    text = resources.files("aepipe.presets").joinpath(f"{name}.yaml").read_text()
    return load_yaml(text) or {}


def format_validation_error(err: ValidationError) -> str:
    """One line per problem, 'section.key: message', with the nearest known key for a misspelt one."""
    parts = []
    for e in err.errors():
        loc = ".".join(str(x) for x in e["loc"]) or "config"
        hint = suggest_key(tuple(str(x) for x in e["loc"])) if e["type"] == "extra_forbidden" else ""
        parts.append(f"{loc}: {e['msg']}{hint}")
    return "invalid config: " + "; ".join(parts)


def suggest_key(loc: tuple[str, ...]) -> str:
    """' (did you mean 'section.key'?)' for an unknown key at ``loc``, or '' when nothing is close."""
    import difflib
    import typing

    model: Any = PipelineConfig
    for part in loc[:-1]:
        field = model.model_fields.get(part)
        if field is None:
            return ""
        candidates = (field.annotation, *typing.get_args(field.annotation))
        model = next((a for a in candidates if isinstance(a, type) and issubclass(a, BaseModel)), None)
        if model is None:
            return ""
    close = difflib.get_close_matches(loc[-1], list(model.model_fields), n=1, cutoff=0.6)
    return f" (did you mean '{'.'.join((*loc[:-1], close[0]))}'?)" if close else ""


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``["model.code_size=30", "index.metric=cosine"]`` -> nested dict (values parsed as YAML)."""
    nested: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override '{item}' is not of the form section.key=value")
        node = nested
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override '{item}' conflicts with another override")
        try:
            node[parts[-1]] = load_yaml(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override '{item}': value is not valid YAML ({exc.__class__.__name__})") from None
    return nested


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def build_config(data: dict[str, Any] | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    """Validate ``data`` plus overrides; raise ConfigError with a one-line message."""
    merged = _merge(data or {}, parse_overrides(overrides or []))
    try:
        return PipelineConfig.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err)) from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> PipelineConfig:
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            data = load_yaml(p.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {p} is not valid YAML: {exc}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {p} must hold a mapping of sections")
    return build_config(data, overrides)


def dump_config(cfg: PipelineConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
