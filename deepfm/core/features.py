"""The feature spec: the one source of truth for how raw log fields become model inputs.

Preprocessing fits it on the training days and saves it next to the encoded data; training
saves it inside every model bundle; scoring encodes with the bundle's copy. Its ``version``
is a hash of everything that changes the encoding, so two specs that encode differently can
never share a version.

Encoded layout (what the Parquet holds and the models read):
  - ``label``: float32 (0/1),
  - each categorical field (``vocab``, ``hash`` or ``bucketize``): int32 index in
    ``[0, cardinality)``, index 0 meaning missing / out-of-vocabulary (with ``oov_buckets``, the
    values out of a vocabulary are hashed into the last ``oov_buckets`` indexes instead),
  - each multi-valued categorical field (``max_items`` n > 0, e.g. a user's installed apps):
    n int32 slot columns ``<name>__0 .. <name>__<n-1>`` holding its items' indexes (as above) in
    log order, then -1 for the unused slots. A row has at least one item: an empty or missing
    list is the one item 0 (missing), as a missing single value is index 0,
  - each numeric field (``log`` or ``raw``): float32 value, missing as 0.
Models take ``cat: LongTensor[batch, S]`` (``FeatureSpec.categorical_columns``: one column per
single-valued field, ``max_items`` per multi-valued one) and ``num: FloatTensor[batch, n_numeric]``
(``numeric_fields`` order); ``items_per_field`` tells them which columns pool into which field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from deepfm.core import fs
from deepfm.core.schema import LogSchema, SchemaError

SPEC_FILENAME = "feature_spec.json"
# A fitted spec's vocabularies: Parquet next to it, partitioned by field (``field=<name>/``), rows
# ``value`` (string) and ``index`` (int, 1-based rank). Written and read by Spark; the spec holds
# each one's size and content hash, never its values.
VOCABULARIES = "vocabularies"
# 2: the hash index is 1 + pmod(xxhash64(<seed int>, value), buckets - 1) (1 hashed
# concat('<seed>:', value)); a spec of format 1 is refused rather than encoded differently.
FORMAT_VERSION = 2
PADDING = -1  # the index of an unused slot of a multi-valued field
# FieldSpec settings added after specs were first written, at the value they had before: left out
# of a field's JSON at that value, so older specs keep their version.
ADDED_KEYS = {"max_items": 0, "vocabulary_size": 0, "vocabulary_hash": "", "oov_buckets": 0}

CATEGORICAL_TRANSFORMS = ("vocab", "hash", "bucketize")
NUMERIC_TRANSFORMS = ("log", "raw")


class FeatureSpecError(ValueError):
    """A spec is missing, corrupt, or does not match the data or model it is used with."""


@dataclass(frozen=True)
class FieldSpec:
    """How one raw field is encoded.

    ``name`` is both the raw column and the encoded column (``columns``: the slot columns of a
    multi-valued field, ``max_items`` > 0). ``cardinality`` counts index 0.

    A ``vocab`` field's values are either ``vocabulary`` (inline: small specs written by hand, and
    specs fitted before vocabularies were stored) or stored with the spec (``vocabulary_size``
    values whose content hashes to ``vocabulary_hash``: see ``VOCABULARIES``).
    """

    name: str
    transform: str
    cardinality: int = 0
    vocabulary: tuple[str, ...] = ()
    boundaries: tuple[float, ...] = ()
    hash_buckets: int = 0
    max_items: int = 0  # > 0: a multi-valued field of at most this many items per row
    vocabulary_size: int = 0  # stored vocabulary: its number of values
    vocabulary_hash: str = ""  # stored vocabulary: its content hash ("": inline or none)
    oov_buckets: int = 0  # vocab: values out of the vocabulary hashed into this many extra indexes

    def __post_init__(self) -> None:
        if self.transform not in CATEGORICAL_TRANSFORMS + NUMERIC_TRANSFORMS:
            raise FeatureSpecError(f"field {self.name}: unknown transform {self.transform!r}")
        if self.is_categorical and self.cardinality < 2:
            raise FeatureSpecError(f"field {self.name}: categorical cardinality must be >= 2")
        if self.max_items < 0 or (self.max_items and self.transform not in ("vocab", "hash")):
            raise FeatureSpecError(f"field {self.name}: a multi-valued field is encoded by vocab or hash")

    @property
    def is_categorical(self) -> bool:
        return self.transform in CATEGORICAL_TRANSFORMS

    @property
    def is_multi_valued(self) -> bool:
        return self.max_items > 0

    @property
    def stored_vocabulary(self) -> bool:
        """The vocabulary is stored with the spec (``VOCABULARIES``), not inline."""
        return bool(self.vocabulary_hash)

    @property
    def vocabulary_length(self) -> int:
        """Values in the vocabulary (indexes ``1 .. vocabulary_length``)."""
        return self.vocabulary_size if self.stored_vocabulary else len(self.vocabulary)

    @property
    def columns(self) -> tuple[str, ...]:
        """The encoded columns: the field's name, or a multi-valued field's slot columns."""
        return tuple(f"{self.name}__{i}" for i in range(self.max_items)) if self.max_items else (self.name,)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["vocabulary"] = list(self.vocabulary)
        d["boundaries"] = list(self.boundaries)
        for key in ADDED_KEYS:  # specs written before these settings keep their version
            if d[key] == ADDED_KEYS[key]:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FieldSpec:
        return cls(
            name=d["name"],
            transform=d["transform"],
            cardinality=int(d.get("cardinality", 0)),
            vocabulary=tuple(d.get("vocabulary", ())),
            boundaries=tuple(float(b) for b in d.get("boundaries", ())),
            hash_buckets=int(d.get("hash_buckets", 0)),
            max_items=int(d.get("max_items", 0)),
            vocabulary_size=int(d.get("vocabulary_size", 0)),
            vocabulary_hash=str(d.get("vocabulary_hash", "")),
            oov_buckets=int(d.get("oov_buckets", 0)),
        )


@dataclass(frozen=True)
class FeatureSpec:
    """Ordered fields plus everything needed to reproduce the encoding.

    ``schema``: the log schema the spec was fitted on (raw logs of another schema cannot be
    encoded with it); None in specs written before schemas were declared, which were all Criteo's.
    ``metadata`` (source days, row counts, creation time) documents the fit and is not part
    of ``version``. ``directory``: where the spec lives (loaded from, or fitted into), which holds
    its stored vocabularies; not part of ``version`` either (a spec copied elsewhere is the same).
    """

    fields: tuple[FieldSpec, ...]
    hash_seed: int = 0
    label: str = "label"
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)
    schema: LogSchema | None = None
    directory: str | None = field(default=None, compare=False)

    @property
    def vocabularies(self) -> str:
        """The folder of the stored vocabularies (``VOCABULARIES`` in ``directory``)."""
        stored = [f.name for f in self.fields if f.stored_vocabulary]
        if stored and self.directory is None:
            raise FeatureSpecError(f"feature spec {self.version} stores vocabularies of {stored} but has no directory")
        return f"{self.directory}/{VOCABULARIES}"

    def vocabulary_table(self, field: FieldSpec) -> pa.Table:
        """``field``'s vocabulary as an Arrow table ``value`` (string), ``index`` (int32) in index
        order: its stored Parquet (read outside Spark, e.g. by a warm start), or its inline values."""
        if not field.stored_vocabulary:
            indexes = pa.array(range(1, len(field.vocabulary) + 1), pa.int32())
            return pa.table({"value": pa.array(field.vocabulary, pa.string()), "index": indexes})
        folder = self.vocabularies
        if not fs.is_dir(folder):
            raise FeatureSpecError(f"feature spec {self.version}: vocabularies not found at {folder}")
        filesystem, path = fs.arrow(folder)
        table = pq.read_table(
            path, columns=["value", "index"], filters=[("field", "=", field.name)], filesystem=filesystem
        )
        if table.num_rows != field.vocabulary_size:
            raise FeatureSpecError(
                f"feature spec {self.version}: vocabulary of {field.name} at {folder} has {table.num_rows} values, "
                f"the spec says {field.vocabulary_size}"
            )
        return table.sort_by("index")

    def located(self, directory: str | os.PathLike[str]) -> FeatureSpec:
        """This spec, living in ``directory`` (e.g. a bundle the spec and its vocabularies were copied into)."""
        return dataclasses.replace(self, directory=str(directory))

    @property
    def categorical_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if f.is_categorical]

    @property
    def numeric_fields(self) -> list[FieldSpec]:
        return [f for f in self.fields if not f.is_categorical]

    @property
    def categorical_columns(self) -> list[str]:
        """The columns of the models' ``cat`` input: each categorical field's ``columns``, in order."""
        return [c for f in self.categorical_fields for c in f.columns]

    @property
    def items_per_field(self) -> list[int]:
        """How many ``cat`` columns each categorical field spans (1, or its ``max_items``)."""
        return [max(1, f.max_items) for f in self.categorical_fields]

    @property
    def encoded_columns(self) -> list[str]:
        """Every encoded column of a row, label first (what the Parquet splits hold)."""
        return [self.label, *(c for f in self.fields for c in f.columns)]

    @property
    def cardinalities(self) -> list[int]:
        """Rows of each categorical field's embedding, in ``categorical_fields`` order."""
        return [f.cardinality for f in self.categorical_fields]

    @property
    def version(self) -> str:
        """Content hash of the encoding (fields, hash seed, label); 16 hex digits."""
        payload = json.dumps(self._encoding_dict(), sort_keys=True).encode()
        return hashlib.sha256(payload).hexdigest()[:16]

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def _encoding_dict(self) -> dict[str, Any]:
        schema = {"schema": self.schema.to_dict()} if self.schema is not None else {}
        fields = [f.to_dict() for f in self.fields]
        return {"fields": fields, "hash_seed": self.hash_seed, "label": self.label, **schema}

    def to_dict(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "version": self.version,
            **self._encoding_dict(),
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FeatureSpec:
        try:
            if d.get("format_version") != FORMAT_VERSION:
                raise FeatureSpecError(
                    f"unsupported feature spec format {d.get('format_version')!r} (this version reads format "
                    f"{FORMAT_VERSION}): preprocess and train again with this version"
                )
            spec = cls(
                fields=tuple(FieldSpec.from_dict(f) for f in d["fields"]),
                hash_seed=int(d["hash_seed"]),
                label=d["label"],
                metadata=dict(d.get("metadata", {})),
                schema=LogSchema.from_dict(d["schema"]) if d.get("schema") else None,
            )
        except (KeyError, TypeError, AttributeError, SchemaError) as exc:
            raise FeatureSpecError(f"corrupt feature spec: missing or malformed {exc}") from exc
        if "version" in d and d["version"] != spec.version:
            raise FeatureSpecError(f"corrupt feature spec: stored version {d['version']} != recomputed {spec.version}")
        return spec

    def save(self, directory: str | os.PathLike[str]) -> str:
        """Write ``<directory>/feature_spec.json`` (any URI) atomically and return its path."""
        return fs.put_json(fs.join(directory, SPEC_FILENAME), self.to_dict(), indent=None)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> FeatureSpec:
        """Load from a spec file or a directory holding ``feature_spec.json`` (any URI)."""
        path = str(path)
        if fs.is_dir(path):
            path = fs.join(path, SPEC_FILENAME)
        if not fs.exists(path):
            raise FeatureSpecError(f"feature spec not found: {path}")
        try:
            data = json.loads(fs.read_text(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FeatureSpecError(f"corrupt feature spec {path}: {exc}") from exc
        return cls.from_dict(data).located(fs.parent(path))
