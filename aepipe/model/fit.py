"""Fit an autoencoder in this process with the Lightning Trainer and write the model directory
(the training stage is aepipe.model.train.train_model, which also launches DDP jobs)."""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import lightning as L
import numpy as np
import pyarrow as pa
import torch
from lightning.fabric.utilities.exceptions import MisconfigurationException
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger
from sklearn.decomposition import TruncatedSVD
from torch.utils.data import DataLoader, TensorDataset

from aepipe.config import CorpusConfig, FeaturesConfig, PipelineConfig, TrainingConfig, TransferConfig
from aepipe.corpus import Quarantine, open_corpus
from aepipe.errors import ConfigError, CorpusError
from aepipe.features import ImagePreprocessor, Preprocessor, TextPreprocessor
from aepipe.features.text import fit_text_preprocessor
from aepipe.files import atomic_write_json, atomic_write_table, fresh_dir, replace_dir
from aepipe.layout import ModelFiles, RunLayout
from aepipe.logs import timed
from aepipe.model.budget import check_memory_budget
from aepipe.model.device import resolve_device
from aepipe.model.guard import StartGuard, start_criterion
from aepipe.model.module import AutoencoderModule
from aepipe.model.networks import Autoencoder, DenseAutoencoder, build_autoencoder
from aepipe.model.progress import EpochLog
from aepipe.model.saved import encode_all, load_model, reconstruction_target, save_model
from aepipe.model.tasks import RESTORATION_TASKS, evaluate_task, match_targets, task_psnr
from aepipe.model.timebudget import (
    PROBE_SECONDS,
    StepPlan,
    budget_minutes,
    overestimated,
    plan_steps,
    planned_steps,
    probe_step_seconds,
)
from aepipe.model.verdict import baseline_summary, baseline_verdict, linear_codes, retrieval_comparison
from aepipe.quality.metrics import RECON_TARGET_WORDS, fit_pca, pca_baseline, reconstruction_scores

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    model_dir: str
    model_id: str
    metrics: dict
    n_items: int
    n_quarantined: int
    seconds: float


@dataclass
class Dataset:
    x: np.ndarray  # (N, C, H, W) float32 images or (N, V) documents
    ids: list[str]
    labels: list[str | None]


def read_items(
    corpus_cfg: CorpusConfig,
    prep: Preprocessor | None,
    max_items: int | None,
    seed: int,
    quarantine: Quarantine,
    features: FeaturesConfig | None = None,
    max_memory_mb: float | None = None,
    architecture: str = "dense",
    check: Callable[[Preprocessor, int], None] | None = None,
) -> tuple[Dataset, Preprocessor]:
    """Read (a seeded random sample of at most ``max_items`` of) a corpus into memory. Without
    ``prep``, the preprocessor is inferred (images: size and channels for ``architecture``) or fitted
    (documents' vocabulary) on that sample. ``max_memory_mb`` caps the array read (float32 inputs): a
    larger sample is subsampled, with a warning, rather than running the machine out of memory.
    ``check(prep, n_items)`` runs before the items are read (the memory budget)."""
    corpus = open_corpus(corpus_cfg)
    keep = None
    rng = np.random.default_rng(seed)
    if max_items and max_items < corpus.n_items:
        keep = set(rng.choice(corpus.n_items, max_items, replace=False).tolist())
    prep = prep or corpus.infer_preprocessor(
        features or FeaturesConfig(), keep=keep, architecture=architecture, seed=seed
    )
    n_wanted = len(keep) if keep is not None else corpus.n_items
    cap = int(max_memory_mb * 2**20 // (prep.dim * 4)) if max_memory_mb else n_wanted
    if n_wanted > cap:
        log.warning(
            "training on %d of %d items: %d inputs of %d floats exceed training.max_memory_mb=%g",
            cap,
            n_wanted,
            n_wanted,
            prep.dim,
            max_memory_mb,
        )
        pool = np.array(sorted(keep)) if keep is not None else np.arange(corpus.n_items)
        keep = set(rng.choice(pool, max(cap, 1), replace=False).tolist())
    if check is not None:
        check(prep, min(n_wanted, cap))
    xs, ids, labels = [], [], []
    for batch in corpus.iter_batches(prep, 4096, quarantine, keep=keep):  # type: ignore[arg-type]  # kinds match
        xs.append(batch.x)
        ids += batch.ids
        labels += batch.labels
    if not ids:
        raise CorpusError(f"no readable items in {corpus_cfg.source}")
    return Dataset(np.concatenate(xs), ids, labels), prep


def load_training_data(cfg: PipelineConfig, quarantine: Quarantine) -> tuple[Dataset, Preprocessor]:
    """The training items in memory, after the input shape is chosen and the memory budget checked."""
    with_target = cfg.corpus.kind == "documents" or cfg.training.knn_target is not None  # a second (N, dim) array
    data, prep = read_items(
        cfg.corpus,
        None,
        cfg.training.max_items,
        cfg.training.seed,
        quarantine,
        cfg.features,
        cfg.training.max_memory_mb,
        cfg.model.architecture,
        lambda p, n: check_memory_budget(cfg, p.shape, n, with_target),
    )
    if len(data.ids) < 10:
        raise CorpusError(f"only {len(data.ids)} readable items in {cfg.corpus.source}; need at least 10 to train")
    return data, prep


def load_targets(
    cfg: PipelineConfig, data: Dataset, prep: Preprocessor, quarantine: Quarantine
) -> tuple[Dataset, np.ndarray]:
    """``training.task: paired``: the clean target of each input from ``corpus.target_source``,
    matched by id; inputs without a target are quarantined. -> (inputs kept, targets (N, C, H, W))"""
    assert cfg.corpus.target_source is not None  # the config requires it for task paired
    target_cfg = cfg.corpus.model_copy(update={"source": cfg.corpus.target_source, "target_source": None})
    target_quarantine = Quarantine("train")
    with timed(f"read targets from {cfg.corpus.target_source}"):
        targets, _ = read_items(target_cfg, prep, None, cfg.training.seed, target_quarantine)
    for item_id, source, reason in target_quarantine.items:
        quarantine.add(item_id, source, f"target: {reason}")
    rows, target_rows = match_targets(data.ids, targets.ids, cfg.corpus.source, quarantine)
    if len(rows) < 10:
        raise CorpusError(
            f"only {len(rows)} items of {cfg.corpus.source} have a target with the same id in "
            f"{cfg.corpus.target_source}; need at least 10 to train"
        )
    kept = Dataset(data.x[rows], [data.ids[i] for i in rows], [data.labels[i] for i in rows])
    return kept, targets.x[target_rows]


def split_indices(n: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * val_fraction)), int(round(n * test_fraction))
    return {
        "test": np.sort(perm[:n_test]),
        "val": np.sort(perm[n_test : n_test + n_val]),
        "train": np.sort(perm[n_test + n_val :]),
    }


def resolve_loss(cfg: PipelineConfig, x: np.ndarray) -> str:
    """The config's loss, or for ``auto``: MSE with a PCA path or a residual output, softmax for
    documents, MSE with an LSA path, BCE when all inputs lie in [0, 1], else MSE."""
    if cfg.model.loss != "auto":
        return cfg.model.loss
    if cfg.model.linear_path.startswith("pca") or cfg.residual_output():  # these need an identity output
        return "mse"
    if cfg.corpus.kind == "documents":  # an LSA path starts the codes; the word logits keep softmax
        return "softmax"
    if cfg.model.linear_path != "none":
        return "mse"
    return "bce" if float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else "mse"


def output_activation(loss: str, x: np.ndarray, linear_path: bool = False) -> str:
    if loss == "softmax":
        return "softmax"
    if linear_path:  # PCA's (or a residual) output is unbounded: clamp it when reconstructing inputs in [0, 1]
        return "clamp" if float(x.min()) >= 0.0 and float(x.max()) <= 1.0 else "identity"
    return "sigmoid" if loss == "bce" or x.max() <= 1.0 else "identity"


def training_target(
    cfg: PipelineConfig, prep: Preprocessor, loss: str, x: np.ndarray, train_idx: np.ndarray
) -> np.ndarray | None:
    """What the decoder reconstructs, when not the input itself (None): for the softmax loss each
    document's word distribution; with ``training.knn_target`` the average of an item's target and
    the mean target of its k nearest training items (cosine on the inputs)."""
    knn = cfg.training.knn_target
    if knn is not None and len(train_idx) > knn.max_items:
        log.warning(
            "training.knn_target skipped: %d training items > knn_target.max_items=%d (exact search is O(N^2))",
            len(train_idx),
            knn.max_items,
        )
        knn = None
    inputs = int(np.prod(x.shape[1:]))
    if knn is not None and isinstance(prep, ImagePreprocessor) and inputs > knn.max_image_inputs:
        log.info(
            "training.knn_target off: %d input values > knn_target.max_image_inputs=%d", inputs, knn.max_image_inputs
        )
        knn = None
    if loss != "softmax" and knn is None:
        return None
    target = prep.word_distribution(x) if loss == "softmax" and isinstance(prep, TextPreprocessor) else x.copy()
    if knn is not None:
        with timed(f"knn target: {knn.k} nearest training items of each of {len(train_idx)}"):
            flat = target.reshape(len(target), -1)
            flat[train_idx] = smooth_over_neighbours(x.reshape(len(x), -1)[train_idx], flat[train_idx], knn.k)
            target = flat.reshape(target.shape)
    return target


def nearest_neighbours(v: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k nearest other rows of ``v`` by cosine (exact, faiss). (N, D) -> (N, k)"""
    import faiss

    v = np.ascontiguousarray(v, dtype=np.float32).copy()
    faiss.normalize_L2(v)
    k = min(k, len(v) - 1)
    _, idx = faiss.knn(v, v, k + 1, metric=faiss.METRIC_INNER_PRODUCT)
    own = idx == np.arange(len(v))[:, None]
    own[~own.any(1), -1] = True  # the item itself tied out of the list: drop the farthest instead
    return idx[~own].reshape(len(v), k)


def smooth_over_neighbours(inputs: np.ndarray, target: np.ndarray, k: int) -> np.ndarray:
    """(target + mean target of the k nearest neighbours by input) / 2, as a sparse average. (N, D) -> (N, D)"""
    import scipy.sparse as sp

    idx = nearest_neighbours(inputs, k)
    n, k = idx.shape
    avg = sp.csr_matrix((np.full(n * k, 1.0 / k, np.float32), idx.ravel(), np.arange(0, n * k + 1, k)), shape=(n, n))
    return ((target + avg @ target) / 2).astype(np.float32)


def _loader(
    x: np.ndarray,
    batch_size: int,
    shuffle: bool,
    num_workers: int,
    target: np.ndarray | None = None,
    drop_last: bool = False,
) -> DataLoader:
    tensors = [torch.from_numpy(x)] + ([torch.from_numpy(target)] if target is not None else [])
    return DataLoader(
        TensorDataset(*tensors),
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        persistent_workers=num_workers > 0,
        drop_last=drop_last,
    )


def drop_single_last_batch(n_train: int, batch_size: int, world_size: int) -> bool:
    """Whether each process's last training batch would hold exactly one item (under DDP each
    process gets ceil(n / world_size) items). Batch norm cannot train on one item, so that batch is
    dropped; the items are shuffled each epoch, so a different item sits out each time."""
    per_process = math.ceil(n_train / world_size)
    return per_process > 1 and per_process % batch_size == 1


def fit_vocabulary_on_training_items(
    cfg: PipelineConfig, data: Dataset, split: dict[str, np.ndarray]
) -> tuple[Dataset, TextPreprocessor, dict[str, np.ndarray]]:
    """Documents: refit the vocabulary and idf on the training split alone and re-vectorise every
    item with them, so validation and test documents do not shape the features they are scored
    on. A held-out document left with no training term is dropped (encode would quarantine it)."""
    wanted = set(data.ids)
    texts: dict[str, str] = {}
    for raw in open_corpus(cfg.corpus).iter_raw():
        text = getattr(raw.payload, "text", None)
        if raw.id in wanted and raw.id not in texts and isinstance(text, str):
            texts[raw.id] = text
    prep = fit_text_preprocessor([texts[data.ids[i]] for i in split["train"]], cfg.features.text)
    x = prep.transform([texts[i] for i in data.ids])  # (N, V) with the training vocabulary
    keep = x.sum(axis=1) > 0  # (N,)
    keep[split["train"]] = True  # (a training document without a kept term still trains, as before)
    new_pos = np.cumsum(keep) - 1  # old row -> new row
    if not keep.all():
        log.info("%d held-out document(s) have no term of the training vocabulary; left out", int((~keep).sum()))
    split = {name: new_pos[idx[keep[idx]]] for name, idx in split.items()}
    labels = [lb for lb, k in zip(data.labels, keep) if k]
    return Dataset(x[keep], [i for i, k in zip(data.ids, keep) if k], labels), prep, split


def fit_model(cfg: PipelineConfig) -> TrainResult:
    """Train in this process (and, under DDP, in the ranks Lightning starts from it). Every rank
    computes the same paths; only global rank 0 touches the staging directory and the model."""
    t0 = time.perf_counter()
    layout = RunLayout.at(cfg.run_dir)
    L.seed_everything(cfg.training.seed, workers=True, verbose=False)
    quarantine = Quarantine("train")
    with timed("read training data"):
        data, prep = load_training_data(cfg, quarantine)
    paired = load_targets(cfg, data, prep, quarantine) if cfg.training.task == "paired" else None
    if paired is not None:
        data = paired[0]
    if cfg.training.task == "colorize" and prep.shape[0] != 3:
        raise ConfigError("training.task: colorize needs colour images (features.image.channels: 3)")
    split = split_indices(len(data.ids), cfg.training.val_fraction, cfg.training.test_fraction, cfg.training.seed)
    if isinstance(prep, TextPreprocessor):
        with timed("fit the vocabulary and idf on the training split"):
            data, prep, split = fit_vocabulary_on_training_items(cfg, data, split)
    loss = resolve_loss(cfg, data.x)
    linear_path = cfg.model.linear_path != "none"
    residual = cfg.residual_output()
    try:
        net = build_autoencoder(
            cfg.model,
            prep.shape,
            output_activation(loss, data.x, linear_path or residual),
            residual=residual,
            keep_luma=residual and cfg.training.task == "colorize",  # the gray input's luma is the truth's
        )
    except ValueError as exc:  # a model option this corpus's items cannot take (e.g. refine on vectors)
        raise ConfigError(str(exc)) from None
    target = training_target(cfg, prep, loss, data.x, split["train"])  # None: reconstruct the input
    if linear_path:
        init_linear_path(net, data.x[split["train"]], cfg, _rows(target, split["train"]))
    if paired is not None:
        target = paired[1]
    transferred = init_from_model(net, cfg.model.transfer) if cfg.model.transfer else 0
    module = AutoencoderModule(
        net, loss, cfg.training.lr, cfg.training.weight_decay, cfg.training.lr_schedule, cfg.model, cfg.training
    )

    staging = layout.staging("model")  # created below, by rank 0 only
    files = ModelFiles(staging)
    has_val = len(split["val"]) > 0
    monitor = "val_loss" if has_val else "train_loss"
    checkpoint = ModelCheckpoint(dirpath=files.checkpoints, filename="best", monitor=monitor, save_top_k=1)
    tc = cfg.training
    device = resolve_device(tc)
    on_terminal = sys.stderr.isatty()
    epochs = epochs_for(tc, len(split["train"]))
    elapsed = time.perf_counter() - t0
    plan = plan_time_budget(cfg, module.net, data.x, split["train"], loss, len(data.ids), elapsed, epochs)
    max_steps = plan.max_steps if plan and plan.max_steps else (tc.max_steps or -1)
    min_steps = min(tc.min_steps, max_steps) if tc.min_steps and max_steps > 0 else tc.min_steps
    callbacks: list[L.Callback] = [EarlyStopping(monitor=monitor, patience=tc.early_stopping_patience), checkpoint]
    # The linear path starts as PCA (LSA): keep that start unless training beats it on the validation
    # items; the guard watches every epoch (on rank 0) for the best state that does.
    guard = None
    if linear_path and has_val and cfg.training.task == "reconstruct":
        with timed("score the linear start on the validation items"):
            guard = StartGuard(
                module.net, start_criterion(data.x, split, target, loss, data.labels, cfg.index.metric, tc.seed)
            )
        if not any(word in str(tc.strategy) for word in ("spawn", "fork", "notebook")):
            # those strategies run rank 0 in a child process too (and pickle the callbacks):
            # what a guard there saw never comes back, so after the fit it judges the checkpoint
            callbacks.append(guard)
    if not on_terminal:  # scheduled jobs and logs: one line per epoch instead of a bar
        callbacks.append(EpochLog(plan.seconds_left if plan else None))
    log.info("training on %s, precision %s", device.accelerator, device.precision)
    try:
        trainer = L.Trainer(
            accelerator=device.accelerator,
            devices=tc.devices,
            num_nodes=tc.num_nodes,
            strategy=tc.strategy,
            precision=device.precision,  # type: ignore[arg-type]  # Lightning validates it
            max_epochs=epochs,
            max_steps=max_steps,
            # Early stopping counts patience in epochs: at 3 steps an epoch (a 400-image folder) it
            # stopped a run at a third of the steps the image preset asks for. No stop before min_steps.
            min_steps=min_steps,
            max_time=timedelta(seconds=plan.seconds_left) if plan else None,
            callbacks=callbacks,
            logger=CSVLogger(save_dir=files.logs, name="", version=""),
            enable_progress_bar=on_terminal,
            enable_model_summary=False,
            log_every_n_steps=10,
            default_root_dir=staging,
        )
    except (ValueError, RuntimeError, MisconfigurationException) as exc:
        raise ConfigError(
            f"training.accelerator/devices/strategy/precision rejected by Lightning: {str(exc).splitlines()[0]}"
        ) from None
    if trainer.is_global_zero:  # other ranks start later (Lightning's launcher) or never write
        fresh_dir(staging)
    x = data.x
    fit_t0 = time.perf_counter()
    with timed(f"fit {cfg.model.architecture} autoencoder on {len(split['train'])} items"):
        trainer.fit(
            module,
            _loader(
                x[split["train"]],
                tc.batch_size,
                True,
                tc.num_workers,
                _rows(target, split["train"]),
                drop_last=drop_single_last_batch(len(split["train"]), tc.batch_size, trainer.world_size),
            ),
            _loader(x[split["val"]], tc.batch_size * 4, False, tc.num_workers, _rows(target, split["val"]))
            if has_val
            else None,
        )
    fit_s = time.perf_counter() - fit_t0
    if not trainer.is_global_zero:
        return TrainResult(str(layout.model.root), "", {}, len(data.ids), len(quarantine), time.perf_counter() - t0)
    if warning := overestimated(plan, int(trainer.global_step), fit_s):
        log.warning(warning)
    # Our own checkpoint, but still read without unpickling arbitrary objects.
    best = torch.load(checkpoint.best_model_path, map_location="cpu", weights_only=True)
    module.load_state_dict(best["state_dict"])
    net = module.net.cpu().eval()
    if guard is not None and guard.epochs_seen == 0:
        # The epochs ran where this process's guard could not watch them (a spawned rank 0,
        # strategy ddp_spawn): judge the lowest-loss checkpoint against the start, as before.
        guard.consider(net, int(best.get("epoch", -1)))
    kept_start = guard.restore(net) if guard is not None else False

    with timed("evaluate held-out items against the linear baseline"):
        metrics = evaluate_reconstruction(net, x, split, cfg, data.labels, prep)
    if cfg.training.task in RESTORATION_TASKS:
        held = next((split[s] for s in ("test", "val", "train") if len(split[s])), split["train"])

        def truth_and_inputs(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
            """Targets of ``rows`` and their real inputs (paired), or None: the task derives them."""
            return (paired[1][rows], x[rows]) if paired is not None else (x[rows], None)

        with timed(f"evaluate {cfg.training.task} on held-out items"):
            # a residual model's start is kept unless training beat it on the validation items, like the PCA start
            val = split["val"] if len(split["val"]) else held
            kept_input = net.residual and keep_better_than_input(net, cfg, *truth_and_inputs(val))
            metrics["restoration"] = {
                **evaluate_task(net, cfg, prep, *truth_and_inputs(held), files),
                "kept_input": kept_input,
            }
    metrics.update(
        kinds=cfg.model.kinds,
        transferred_layers=transferred,
        loss=loss,
        epochs=int(trainer.current_epoch),
        steps=int(trainer.global_step),
        max_epochs=int(trainer.max_epochs or 0),
        best_val_loss=float(checkpoint.best_model_score or np.nan),
        kept_pca_start=kept_start,
        start_guard=None if guard is None else guard.summary(),
        time_budget=None
        if plan is None
        else {
            "minutes": plan.minutes,
            "fit_seconds_left": round(plan.seconds_left, 1),
            "probe_step_s": None if plan.step_s is None else round(plan.step_s, 5),
            "max_steps_fit": plan.max_steps,
            "fit_seconds": round(fit_s, 1),
            "stopped_by_time": fit_s >= plan.seconds_left - 1.0,  # the hard stop, not the planned steps
        },
        n_train=len(split["train"]),
        n_val=len(split["val"]),
        n_test=len(split["test"]),
        train_seconds=round(time.perf_counter() - t0, 2),
    )
    metrics["baseline"] = baseline_verdict(
        cfg, metrics, metrics.pop("baseline_name"), metrics.pop("retrieval"), deep_parameters(net), prep.shape
    )
    atomic_write_json(files.metrics, metrics)
    _write_split(files.split, data.ids, split)
    model_id = save_model(files, net, cfg, prep, {"epochs": metrics["epochs"], "n_train": metrics["n_train"]})
    if len(quarantine):
        quarantine.write(files.quarantine)
    replace_dir(staging, layout.model.root)
    log.info("model %s: %s", model_id, baseline_summary(metrics))
    return TrainResult(
        str(layout.model.root), model_id, metrics, len(data.ids), len(quarantine), time.perf_counter() - t0
    )


def init_linear_path(
    net: Autoencoder, x_train: np.ndarray, cfg: PipelineConfig, target_train: np.ndarray | None = None
) -> None:
    """Set the linear path of ``net`` to PCA (``lsa*``: an uncentred truncated SVD, as the verdict's LSA
    baseline) at the code size, fitted on the training items. A softmax decoder starts at the log of
    the mean training target (``target_train``: word distributions), the unigram model."""
    if not isinstance(net, DenseAutoencoder):  # the config allows the path only for dense networks
        raise ConfigError("model.linear_path needs architecture: dense")
    a = x_train.reshape(len(x_train), -1)
    if cfg.model.linear_path.startswith("lsa"):
        k = max(1, min(cfg.model.code_size, a.shape[1] - 1, len(a) - 1))  # as verdict.linear_codes
        with timed(f"fit LSA-{k} on {len(a)} training items for the linear path"):
            svd = TruncatedSVD(n_components=k, random_state=cfg.training.seed).fit(a)
        components, mean = svd.components_, np.zeros(a.shape[1])
    else:
        with timed(f"fit PCA-{cfg.model.code_size} on {len(a)} training items for the linear path"):
            pca = fit_pca(a, cfg.model.code_size, cfg.training.seed)
        components, mean = pca.components_, pca.mean_
    bias = None
    if net.output_activation == "softmax" and target_train is not None:
        bias = torch.from_numpy(np.log(np.maximum(target_train.reshape(len(a), -1).mean(0), 1e-12))).float()
    basis, scale = None, 1.0
    if net.pca_basis:  # model.pca_basis: the deep path's N principal components, a fit of their own
        with timed(f"fit PCA-{net.pca_basis} on {len(a)} training items for the deep path's inputs"):
            wide = fit_pca(a, net.pca_basis, cfg.training.seed)
        basis = torch.from_numpy(wide.components_).float()
        scale = float(np.sqrt(max(wide.explained_variance_[0], 1e-12)))
    net.init_linear_path(torch.from_numpy(components).float(), torch.from_numpy(mean).float(), bias, basis, scale)


def deep_parameters(net: Autoencoder) -> int:
    """Parameters of the deep path, what the verdict's "smaller network" hint (nodes_per_layer)
    sizes: a PCA/LSA linear path's code x inputs matrix and mean are left out (PCA has them too)."""
    linear = {"pca_components", "pca_mean"}
    return sum(p.numel() for name, p in net.named_parameters() if name not in linear)


def plan_time_budget(
    cfg: PipelineConfig,
    net: Autoencoder,
    x: np.ndarray,
    train: np.ndarray,
    loss: str,
    n_items: int,
    elapsed_s: float,
    epochs: int,
) -> StepPlan | None:
    """Fit the fit into ``training.max_time_minutes`` (see aepipe.model.timebudget): in one process,
    time a few steps of a copy of ``net`` and lower max_steps to what fits; under DDP only the hard
    stop. None without a budget."""
    tc = cfg.training
    if budget_minutes(tc, n_items) is None:
        return None
    steps = planned_steps(tc, epochs, len(train))
    one_process = str(tc.devices) == "1" and tc.num_nodes == 1
    step_s = None
    if one_process:
        device = resolve_device(tc)
        where = "cuda" if device.accelerator in ("gpu", "cuda") and torch.cuda.is_available() else "cpu"
        t = time.perf_counter()
        step_s = probe_step_seconds(net, x, train, tc.batch_size, loss, where)
        if (quick := plan_steps(tc, n_items, elapsed_s, steps, step_s)) and quick.max_steps is not None:
            # the budget binds: plan on a longer probe, so a burst of load during 5 steps cannot cut the run
            step_s = probe_step_seconds(net, x, train, tc.batch_size, loss, where, min_seconds=PROBE_SECONDS)
        elapsed_s += time.perf_counter() - t
    plan = plan_steps(tc, n_items, elapsed_s, steps, step_s)
    assert plan is not None
    if plan.max_steps is not None:
        log.info(
            "time budget %.3g min (training.max_time_minutes=%s): %d steps planned at %.3f s a step do not fit; "
            "training %d steps (a larger budget, or training.max_time_minutes=null, runs them all)",
            plan.minutes,
            tc.max_time_minutes,
            steps,
            step_s or 0,
            plan.max_steps,
        )
    return plan


def epochs_for(tc: TrainingConfig, n_train: int) -> int:
    """``training.max_epochs``, raised for small corpora until ``training.min_steps`` optimizer
    steps fit (one process; DDP splits the steps of an epoch over its ranks)."""
    if not tc.min_steps:
        return tc.max_epochs
    steps_per_epoch = max(math.ceil(n_train / tc.batch_size), 1)
    epochs = max(tc.max_epochs, math.ceil(tc.min_steps / steps_per_epoch))
    if epochs > tc.max_epochs:
        log.info(
            "%d training items are %d steps an epoch: up to %d epochs for training.min_steps=%d",
            n_train,
            steps_per_epoch,
            epochs,
            tc.min_steps,
        )
    return epochs


def keep_better_than_input(net: Autoencoder, cfg: PipelineConfig, clean: np.ndarray, inputs: np.ndarray | None) -> bool:
    """A residual restoration model starts as the identity (it returns its input). If the trained
    correction makes the validation images (``clean``, and their real ``inputs`` or the task's
    corruption) worse than leaving them alone, put that start back: zero the last layer again.
    Returns whether it did."""
    before, after = task_psnr(net, cfg, clean, inputs)
    if after >= before:
        return False
    log.warning(
        "the trained %s correction made the validation images worse (PSNR %.2f vs %.2f dB as they are): keeping "
        "the start, which returns its input; train longer (training.max_time_minutes) or on more images",
        cfg.training.task,
        after,
        before,
    )
    net.make_residual()  # zeroes the last layer again: output = input
    return True


def _rows(a: np.ndarray | None, idx: np.ndarray) -> np.ndarray | None:
    return None if a is None else a[idx]


def init_from_model(net: Autoencoder, transfer: TransferConfig) -> int:
    """Copy encoder layers from a saved model (all, or the first ``transfer.n_layers``);
    optionally freeze them. Returns the number of layers copied."""
    source = load_model(transfer.init_from).net
    src, dst = source.encoder_layers(), net.encoder_layers()
    n = transfer.n_layers or len(dst)
    if n > min(len(src), len(dst)):
        raise ConfigError(f"transfer.n_layers={n} but the models have {len(src)} and {len(dst)} encoder layers")
    for i, (a, b) in enumerate(zip(src[:n], dst[:n])):
        if a.weight.shape != b.weight.shape:
            raise ConfigError(
                f"cannot transfer encoder layer {i} from {transfer.init_from}: weight shape "
                f"{a.weight.shape} != {b.weight.shape}; match the architecture or set transfer.n_layers"
            )
        b.load_state_dict(a.state_dict())
        if transfer.freeze:
            b.requires_grad_(False)
    log.info("initialised %d encoder layer(s) from %s%s", n, transfer.init_from, " (frozen)" if transfer.freeze else "")
    return n


def evaluate_reconstruction(
    net,
    x: np.ndarray,
    split: dict[str, np.ndarray],
    cfg: PipelineConfig,
    labels: list[str | None] | None,
    prep: Preprocessor,
) -> dict:
    """AE vs the linear baseline at the same code size, on the test split (or val, or train when
    tiny; which one is recorded as ``evaluated_on``: only "test" figures are held-out):
    reconstruction next to PCA, and with ``labels`` P@10 next to PCA (LSA for documents) codes;
    ``baseline`` says who won, with hints when the AE lost (aepipe.model.verdict). Documents
    (``prep`` a TextPreprocessor): both the AE and PCA reconstruct the word distributions."""
    split_name = next((s for s in ("test", "val", "train") if len(split[s])), "train")
    if split_name != "test":
        log.warning("no test split: reconstruction is measured on the %s items, which are not held out", split_name)
    held = split[split_name]
    xt = x[held]
    codes_t, sse = encode_all(net, xt, reconstruction_target(prep, xt))
    dim = int(np.prod(xt.shape[1:]))
    ae = reconstruction_scores(sse, dim)
    xtrain = x[split["train"]]
    name, base_train, base_test = linear_codes(cfg, xtrain, xt)
    retrieval = None
    if labels is not None:
        codes_train, _ = encode_all(net, xtrain)
        y = np.array(labels, dtype=object)
        retrieval = retrieval_comparison(
            cfg, codes_train, codes_t, base_train, base_test, list(y[split["train"]]), list(y[held])
        )
    xtrain, xt = reconstruction_target(prep, xtrain), reconstruction_target(prep, xt)
    pca = pca_baseline(xtrain, xt, cfg.model.code_size, cfg.training.seed)
    return {
        "ae": ae,
        "pca": pca,
        "code_size": cfg.model.code_size,
        "input_dim": dim,
        "baseline_name": name,
        "retrieval": retrieval,
        "evaluated_on": split_name,
        "n_evaluated": len(xt),
        "reconstruction_target": RECON_TARGET_WORDS if isinstance(prep, TextPreprocessor) else "input",
    }


def _write_split(path: Path, ids: list[str], split: dict[str, np.ndarray]) -> None:
    names = np.empty(len(ids), dtype=object)
    for name, idx in split.items():
        names[idx] = name
    atomic_write_table(path, pa.table({"id": ids, "split": names.tolist()}))
