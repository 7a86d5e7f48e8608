"""The one place that names files under a run directory.

run_dir/
  .lock                  writer lock (aepipe.runlock): the holder's pid, host, command, since
  config.yaml            the run's config: each section as the stage that owns it last ran (aepipe.runconfig)
  configs/               <stage>.yaml: the full config of each stage's last successful run
  report.json            summary of the last pipeline run
  report.html            the run as pictures and tables (self-contained)
  models/                <model_id>/ (published versions, as model/), current.json (the one queries use)
  model/                 weights.safetensors, model.json, config.json, preprocess.json, metrics.json,
                         restoration.png (restoration tasks),
                         checkpoints/, logs/ (Lightning CSV metrics)
  store/                 part-*.parquet (one latent code per item), _manifest.json,
                         _items.parquet (fingerprint of every corpus item the store reflects)
  quarantine/            <stage>.parquet: items that could not be read (id, source, reason)
  index/                 index.faiss, ids.parquet, index_infos.json (+ index.ivfdata on disk)
  clusters/              assignments.parquet, summary.json, centroids.npy, prototypes.png (images),
                         head.safetensors (cluster.method scan)
                         or topics.json (documents)
  generations/           gNNNNNN/ {model, store, index, clusters}: published together (hard links),
                         current.json: the generation readers use (RunLayout.current())
  .staging/              work in progress; swapped into place when complete
                         (update/: a new store + index, swapped when its COMMIT marker exists)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelFiles:
    root: Path

    @property
    def weights(self) -> Path:
        return self.root / "weights.safetensors"

    @property
    def info(self) -> Path:
        return self.root / "model.json"

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def preprocess(self) -> Path:
        return self.root / "preprocess.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def split(self) -> Path:
        return self.root / "split.parquet"

    @property
    def quarantine(self) -> Path:
        """Items training could not read (id, source, reason)."""
        return self.root / "quarantine.parquet"

    @property
    def restoration_grid(self) -> Path:
        """Restoration tasks: corrupted / restored / classical baseline / truth for held-out items."""
        return self.root / "restoration.png"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def logs(self) -> Path:
        return self.root / "logs"


@dataclass(frozen=True)
class StoreFiles:
    """A code store (``RUN/store``) or one being built (a staging directory of encode or update)."""

    root: Path

    PART_GLOB = "part-*.parquet"

    def part(self, number: int) -> Path:
        return self.root / f"part-{number:05d}.parquet"

    @property
    def manifest(self) -> Path:
        """Which shards are committed, the encode key and model id, the last update."""
        return self.root / "_manifest.json"

    @property
    def items(self) -> Path:
        """(id, fingerprint, position) of every corpus item the store reflects (aepipe update)."""
        return self.root / "_items.parquet"

    def shard_marker(self, shard: int) -> Path:
        """Staging only: written last, when shard ``shard``'s part is complete (the commit point)."""
        return self.root / "_shards" / f"{shard:05d}.json"

    def shard_fingerprints(self, shard: int) -> Path:
        return self.root / "_fingerprints" / f"shard-{shard:05d}.parquet"

    def shard_quarantine(self, shard: int) -> Path:
        return self.root / "_quarantine" / f"shard-{shard:05d}.parquet"

    def all_shard_fingerprints(self) -> list[Path]:
        return sorted((self.root / "_fingerprints").glob("shard-*.parquet"))

    def all_shard_quarantines(self) -> list[Path]:
        return sorted((self.root / "_quarantine").glob("shard-*.parquet"))


@dataclass(frozen=True)
class IndexFiles:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.faiss"

    @property
    def ivfdata(self) -> Path:
        """On-disk indexes (``index.on_disk``): the inverted lists, memory-mapped by index.faiss."""
        return self.root / "index.ivfdata"

    @property
    def ids(self) -> Path:
        return self.root / "ids.parquet"

    @property
    def partial_indexes(self) -> Path:
        """On-disk builds: partial indexes held here until merged into index.ivfdata."""
        return self.root / ".shards"

    @property
    def infos(self) -> Path:
        return self.root / "index_infos.json"


@dataclass(frozen=True)
class ClusterFiles:
    root: Path

    @property
    def assignments(self) -> Path:
        return self.root / "assignments.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    @property
    def centroids(self) -> Path:
        return self.root / "centroids.npy"

    @property
    def prototypes(self) -> Path:
        return self.root / "prototypes.png"

    @property
    def topics(self) -> Path:
        return self.root / "topics.json"

    @property
    def head(self) -> Path:
        """cluster.method=scan: the classifier head that assigned the items (safetensors)"""
        return self.root / "head.safetensors"


@dataclass(frozen=True)
class GenerationFiles:
    """One consistent set of artifacts: a published generation (``RUN/generations/gNNNNNN``), or the
    run's working artifacts (``RUN`` itself) for a run that has published none."""

    root: Path

    @property
    def name(self) -> str | None:
        return self.root.name if self.root.parent.name == "generations" else None

    @property
    def model(self) -> ModelFiles:
        return ModelFiles(self.root / "model")

    @property
    def store(self) -> Path:
        return self.root / "store"

    @property
    def index(self) -> IndexFiles:
        return IndexFiles(self.root / "index")

    @property
    def clusters(self) -> ClusterFiles:
        return ClusterFiles(self.root / "clusters")


@dataclass(frozen=True)
class RunLayout(GenerationFiles):  # its model, store, index, clusters: the working artifacts
    root: Path

    @classmethod
    def at(cls, run_dir: str | Path) -> RunLayout:
        return cls(Path(run_dir).expanduser())

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def lock(self) -> Path:
        """The writer lock (aepipe.runlock): flock'ed by the one process writing the run; holds
        the holder's pid, host, command and start time while held."""
        return self.root / ".lock"

    def stage_config(self, stage: str) -> Path:
        """The full config of ``stage``'s last successful run (aepipe.runconfig)."""
        return self.root / "configs" / f"{stage}.yaml"

    @property
    def report(self) -> Path:
        return self.root / "report.json"

    @property
    def report_html(self) -> Path:
        """The visual run report (aepipe.report.html): one self-contained page."""
        return self.root / "report.html"

    @property
    def models(self) -> Path:
        """Published model versions (see aepipe.model.registry)."""
        return self.root / "models"

    def model_version(self, model_id: str) -> ModelFiles:
        return ModelFiles(self.models / model_id)

    @property
    def current_model(self) -> Path:
        """Pointer to the model version that matches the live index: {"model_id": ...}."""
        return self.models / "current.json"

    @property
    def eval_json(self) -> Path:
        """``aepipe eval``'s report (and eval.md beside it)."""
        return self.root / "eval" / "eval.json"

    @property
    def eval_markdown(self) -> Path:
        return self.root / "eval" / "eval.md"

    @property
    def generations(self) -> Path:
        """Published generations (aepipe.generations): gNNNNNN/ {model, store, index, clusters}."""
        return self.root / "generations"

    @property
    def current_generation(self) -> Path:
        """The pointer readers follow: {"generation": "gNNNNNN", "model_id": ..., "published": ...}."""
        return self.generations / "current.json"

    def generation(self, name: str) -> GenerationFiles:
        return GenerationFiles(self.generations / name)

    def current_generation_name(self) -> str | None:
        try:
            return str(json.loads(self.current_generation.read_text())["generation"])
        except (OSError, ValueError, KeyError):
            return None

    def current(self) -> GenerationFiles:
        """What readers should open: the published generation (model, store, index and clusters that
        belong together, never rewritten while a reader uses them), or the working artifacts of a run
        that has published none. Resolve once and keep the result to stay on one generation."""
        name = self.current_generation_name()
        return self.generation(name) if name else GenerationFiles(self.root)

    def quarantine(self, stage: str) -> Path:
        return self.root / "quarantine" / f"{stage}.parquet"

    def staging(self, name: str) -> Path:
        """A work-in-progress directory for ``name``; swapped into place by io.replace_dir."""
        return self.root / ".staging" / name
