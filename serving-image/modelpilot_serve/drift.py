"""Data drift: a reference profile of the training data, live values counted into the same bins, and the
population stability index (PSI) between the two over a sliding window.

The profile is a small JSON document, logged with the training run by
`modelpilot.monitoring.log_reference` as the run artifact `modelpilot/reference_profile.json`:

    {"format": "modelpilot.dev/reference-profile/v1", "rows": 10000,
     "features": [{"name": "amount", "kind": "numeric", "edges": [...], "counts": [...], "missing": 0},
                  {"name": "country", "kind": "categorical", "categories": [...], "counts": [...], "missing": 3}],
     "predictions": {"name": "prediction", "kind": ..., ...} or null}

Numeric columns get quantile edges (a value v falls in bin `searchsorted(edges, v, side="right")`, so there
are len(edges) + 1 bins); strings, booleans and categoricals get their top-k categories plus one "other"
bin. Missing values (None, NaN) have a bin of their own. `build_profile` and `Histogram.count` are the
one definition of the bins, used both when the profile is made and when live values are counted.

MLflow (3.17, pinned) has no drift detection for tabular models: its monitoring is for GenAI traces, and
its dataset profile is only row and element counts. The profile is therefore ours, stored where MLflow
keeps a run's artifacts; the PSI is scipy's relative entropy summed both ways.
"""

from __future__ import annotations

import functools
import itertools
import logging
import math
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

log = logging.getLogger(__name__)

FORMAT = "modelpilot.dev/reference-profile/v1"
#: Where log_reference puts the profile among the run's artifacts.
ARTIFACT_PATH = "modelpilot/reference_profile.json"
DEFAULT_BINS = 10
DEFAULT_TOP_K = 20
#: Proportions are floored at this before the PSI's logarithm (an empty bin is not infinitely surprising).
EPSILON = 1e-4
#: Features the profile may describe: a wider table is profiled on its first columns only.
MAX_FEATURES = 500


class InvalidProfile(ValueError):
    """The reference profile is not one this server can use; the message says what is wrong."""


@dataclass(frozen=True, eq=False)
class Histogram:
    """The bins of one column (or of the predictions) and how often the reference data fell in each."""

    name: str
    kind: str  # "numeric" | "categorical"
    edges: np.ndarray  # numeric: sorted interior edges
    categories: tuple[str, ...]  # categorical: the top-k categories (the last bin is "other")
    #: reference counts per bin, the missing bin last
    reference: np.ndarray

    @property
    def size(self) -> int:
        return len(self.reference)

    def count(self, values: Any) -> np.ndarray:
        """How many of `values` fall in each bin (missing last): vectorised, never raises for odd values."""
        array = values.to_numpy() if isinstance(values, pd.Series) else np.asarray(values).ravel()
        counts = np.zeros(self.size, dtype=np.int64)
        if self.kind == "numeric":
            numbers = _as_float(array)
            missing = np.isnan(numbers)
            present = numbers[~missing] if missing.any() else numbers
            counts[:-1] = np.bincount(np.searchsorted(self.edges, present, side="right"), minlength=self.size - 1)
            counts[-1] = len(numbers) - len(present)
            return counts
        missing = pd.isna(array)
        present = array[~missing] if missing.any() else array
        index, other = self._index, len(self.categories)
        # a dict lookup per value: for the small batches of online traffic far cheaper than a pandas Categorical
        codes = np.fromiter((index.get(v if isinstance(v, str) else str(v), other) for v in present),
                            dtype=np.int64, count=len(present))
        counts[:-1] = np.bincount(codes, minlength=self.size - 1)
        counts[-1] = len(array) - len(present)
        return counts

    @functools.cached_property
    def _index(self) -> dict[str, int]:
        return {c: i for i, c in enumerate(self.categories)}

    def to_dict(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "kind": self.kind}
        if self.kind == "numeric":
            doc["edges"] = [float(e) for e in self.edges]
        else:
            doc["categories"] = list(self.categories)
        doc["counts"] = [int(c) for c in self.reference[:-1]]
        doc["missing"] = int(self.reference[-1])
        return doc

    @classmethod
    def from_dict(cls, doc: Any, where: str) -> Histogram:
        if not isinstance(doc, dict):
            raise InvalidProfile(f"{where} must be an object")
        name, kind = doc.get("name"), doc.get("kind")
        if not isinstance(name, str) or not name:
            raise InvalidProfile(f"{where}.name must be a non-empty string")
        counts, missing = doc.get("counts"), doc.get("missing", 0)
        if (not isinstance(counts, list) or not all(_count(c) for c in counts) or not _count(missing)):
            raise InvalidProfile(f"{where} ({name}): counts must be a list of whole numbers of at least 0, "
                                 "and missing one such number")
        reference = np.array([*counts, missing], dtype=np.int64)
        if kind == "numeric":
            edges = doc.get("edges")
            if (not isinstance(edges, list) or not all(_number(e) for e in edges)
                    or any(b <= a for a, b in itertools.pairwise(edges))):
                raise InvalidProfile(f"{where} ({name}): edges must be a strictly increasing list of finite numbers")
            if len(counts) != len(edges) + 1:
                raise InvalidProfile(f"{where} ({name}): {len(edges)} edges make {len(edges) + 1} bins, "
                                     f"but there are {len(counts)} counts")
            return cls(name, kind, np.array(edges, dtype=np.float64), (), reference)
        if kind == "categorical":
            categories = doc.get("categories")
            if not isinstance(categories, list) or not all(isinstance(c, str) for c in categories):
                raise InvalidProfile(f"{where} ({name}): categories must be a list of strings")
            if len(counts) != len(categories) + 1:
                raise InvalidProfile(f"{where} ({name}): {len(categories)} categories and 'other' make "
                                     f"{len(categories) + 1} bins, but there are {len(counts)} counts")
            return cls(name, kind, np.empty(0), tuple(categories), reference)
        raise InvalidProfile(f"{where} ({name}): kind must be 'numeric' or 'categorical', got {kind!r}")


@dataclass(frozen=True)
class Profile:
    rows: int
    features: tuple[Histogram, ...]
    predictions: Histogram | None

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "rows": self.rows, "features": [h.to_dict() for h in self.features],
                "predictions": None if self.predictions is None else self.predictions.to_dict()}

    @classmethod
    def from_dict(cls, doc: Any) -> Profile:
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            found = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise InvalidProfile(f"not a reference profile: format must be {FORMAT!r}, got {found!r}")
        features = doc.get("features")
        if not isinstance(features, list) or not features or len(features) > MAX_FEATURES:
            raise InvalidProfile(f"features must be a list of 1 to {MAX_FEATURES} histograms")
        hists = tuple(Histogram.from_dict(f, f"features[{i}]") for i, f in enumerate(features))
        if len({h.name for h in hists}) != len(hists):
            raise InvalidProfile("two features have the same name")
        preds = doc.get("predictions")
        return cls(int(doc.get("rows") or 0), hists,
                   None if preds is None else Histogram.from_dict(preds, "predictions"))


def build_profile(data: pd.DataFrame, predictions: Any = None, bins: int = DEFAULT_BINS,
                  top_k: int = DEFAULT_TOP_K) -> Profile:
    """The reference profile of a training (or validation) frame and, optionally, the model's predictions."""
    if not isinstance(data, pd.DataFrame) or data.empty:
        raise ValueError("data must be a non-empty pandas DataFrame")
    if not 2 <= bins <= 100 or not 1 <= top_k <= 1000:
        raise ValueError("bins must be 2 to 100 and top_k 1 to 1000")
    columns = list(data.columns)[:MAX_FEATURES]
    hists = tuple(_histogram(str(c), data[c], bins, top_k) for c in columns)
    preds = None
    if predictions is not None:
        column = prediction_column(predictions)
        if column is None:
            raise ValueError("predictions must be one value per row (a list, array, Series or one-column frame)")
        if len(column) != len(data):
            raise ValueError(f"{len(column)} predictions for {len(data)} rows")
        preds = _histogram("prediction", pd.Series(column), bins, top_k)
    return Profile(len(data), hists, preds)


def prediction_column(predictions: Any) -> np.ndarray | None:
    """One value per row out of what a model's predict returned (its first column when it returned several);
    None when it is not row-shaped (a dict of outputs, a string)."""
    if isinstance(predictions, pd.DataFrame):
        return np.asarray(predictions.iloc[:, 0]) if predictions.shape[1] else None
    if isinstance(predictions, pd.Series):
        return np.asarray(predictions)
    if isinstance(predictions, np.ndarray | list | tuple):
        array: np.ndarray = np.asarray(predictions)
        if array.ndim == 2:
            array = array[:, 0]
        return array if array.ndim == 1 else None
    return None


def _histogram(name: str, column: pd.Series, bins: int, top_k: int) -> Histogram:
    missing = column.isna()
    present = column[~missing]
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        numbers = _as_float(present)
        numbers = numbers[np.isfinite(numbers)]
        quantiles = np.quantile(numbers, np.linspace(0, 1, bins + 1)[1:-1]) if len(numbers) else np.empty(0)
        edges = np.unique(quantiles)
        empty = Histogram(name, "numeric", edges, (), np.zeros(len(edges) + 2, dtype=np.int64))
    else:
        top = present.astype(str).value_counts().index[:top_k]
        empty = Histogram(name, "categorical", np.empty(0), tuple(str(c) for c in top),
                          np.zeros(len(top) + 2, dtype=np.int64))
    return Histogram(empty.name, empty.kind, empty.edges, empty.categories, empty.count(column))


def _as_float(series: pd.Series) -> np.ndarray:
    try:
        return np.asarray(series, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(pd.to_numeric(series, errors="coerce"), dtype=np.float64)


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def psi(reference: np.ndarray, live: np.ndarray) -> float:
    """Population stability index of two histograms over the same bins (counts), proportions floored at
    EPSILON: sum((live - ref) * ln(live / ref)). Around 0.1 is a moderate shift, above 0.25 a large one."""
    from scipy.special import rel_entr  # type: ignore[import-untyped]

    ref = np.clip(reference / max(reference.sum(), 1), EPSILON, None)
    cur = np.clip(live / max(live.sum(), 1), EPSILON, None)
    return float(np.sum(rel_entr(cur, ref) + rel_entr(ref, cur)))


@dataclass
class Drift:
    """The PSI of every feature and of the predictions over the window, and how many rows it saw."""

    features: dict[str, float]
    prediction: float | None
    samples: int


@dataclass
class _Slice:
    start: float
    #: every feature's bins, one after the other (Monitor.offsets)
    features: np.ndarray
    predictions: np.ndarray | None
    rows: int = 0
    predicted_rows: int = 0


@dataclass(frozen=True)
class _Plan:
    """How one column set is counted: where each profiled feature is, and the numeric ones counted together."""

    positions: list[int | None]
    #: features counted column by column: (their index, first bin, end bin, column position)
    one_by_one: list[tuple[int, int, int, int]]
    #: the missing bins of features whose column is absent
    absent: np.ndarray
    #: numeric features present: their columns, their edges (padded with +inf), edge counts, bin offsets
    columns: np.ndarray
    edges: np.ndarray
    n_edges: np.ndarray
    offsets: np.ndarray
    missing: np.ndarray


#: Above this many comparisons a batch's numeric features are binned one by one (searchsorted) instead of
#: in one broadcast comparison (which is cheaper for the small batches of online traffic).
BROADCAST_LIMIT = 2_000_000


class Monitor:
    """Live counts over a sliding window of `slices` time slices; thread-safe, cheap per batch."""

    def __init__(self, profile: Profile, window_seconds: float, slices: int = 12,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.profile = profile
        self.window = max(window_seconds, 1.0)
        self.slice_seconds = self.window / slices
        self.clock = clock
        self._slices: deque[_Slice] = deque()
        self._lock = threading.Lock()
        self._warned = False
        sizes = [h.size for h in profile.features]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        #: each column set seen: how it is counted
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        #: column sets whose frames did not convert to one float array (not tried again)
        self._mixed: set[tuple[Any, ...]] = set()

    def _empty(self, start: float) -> _Slice:
        preds = self.profile.predictions
        return _Slice(start, np.zeros(int(self.offsets[-1]), dtype=np.int64),
                      None if preds is None else np.zeros(preds.size, dtype=np.int64))

    def observe(self, data: Any, predictions: Any) -> Any:
        """Count one predicted batch; returns the predictions' counts in the profile's bins (None when not
        counted), for whoever counts into the same bins. Never raises: drift is measured beside predictions,
        never in their way."""
        if not isinstance(data, pd.DataFrame) or not len(data):
            return None
        try:
            counts = self._count_features(data)
            pred_counts = None
            if self.profile.predictions is not None:
                column = prediction_column(predictions)
                if column is not None and len(column) == len(data):
                    pred_counts = self.profile.predictions.count(column)
        except Exception as exc:  # a column of objects numpy cannot read, say: logged once, never raised
            if not self._warned:
                self._warned = True
                log.warning("Drift: could not count a batch (%s: %s); such batches are left out",
                            type(exc).__name__, exc)
            return None
        now = self.clock()
        with self._lock:
            self._expire(now)
            if not self._slices or now - self._slices[-1].start >= self.slice_seconds:
                self._slices.append(self._empty(now))
            current = self._slices[-1]
            current.features += counts
            current.rows += len(data)
            if pred_counts is not None and current.predictions is not None:
                current.predictions += pred_counts
                current.predicted_rows += len(data)
        return pred_counts

    def _plan(self, columns: tuple[Any, ...]) -> _Plan:
        plan = self._plans.get(columns)
        if plan is None:
            index = {c: i for i, c in enumerate(columns)}
            positions = [index.get(h.name) for h in self.profile.features]
            numeric = [k for k, h in enumerate(self.profile.features)
                       if h.kind == "numeric" and positions[k] is not None]
            width = max((len(self.profile.features[k].edges) for k in numeric), default=0)
            edges = np.full((len(numeric), width), np.inf)
            for row, k in enumerate(numeric):
                found = self.profile.features[k].edges
                edges[row, :len(found)] = found
            one_by_one = [(k, int(self.offsets[k]), int(self.offsets[k + 1]), pos)
                          for k, pos in enumerate(positions) if pos is not None and k not in numeric]
            absent = np.array([int(self.offsets[k + 1]) - 1 for k, pos in enumerate(positions) if pos is None],
                              dtype=np.int64)
            plan = _Plan(positions, one_by_one, absent, np.array([positions[k] for k in numeric], dtype=np.int64),
                         edges,
                         np.array([len(self.profile.features[k].edges) for k in numeric], dtype=np.int64),
                         self.offsets[numeric] if numeric else np.empty(0, dtype=np.int64),
                         (self.offsets[1:] - 1)[numeric] if numeric else np.empty(0, dtype=np.int64))
            if len(self._plans) >= 64:  # clients sending ever new column sets: forget, never grow
                self._plans.clear()
            self._plans[columns] = plan
        return plan

    def _count_features(self, data: pd.DataFrame) -> np.ndarray:
        """Every feature's counts, flat. The usual frame of numbers becomes one float array in one call and
        its numeric features are binned together: per-column pandas access costs more than the counting."""
        columns = tuple(data.columns)
        plan = self._plan(columns)
        block = None
        if len(plan.columns) and columns not in self._mixed:
            try:
                block = data.to_numpy(dtype=np.float64)
            except (TypeError, ValueError):  # strings among the columns: numeric features one by one
                if len(self._mixed) < 64:
                    self._mixed.add(columns)
        counts = np.zeros(int(self.offsets[-1]), dtype=np.int64)
        counts[plan.absent] = len(data)  # the column is not there: all missing
        features = self.profile.features
        for k, start, end, pos in plan.one_by_one:
            counts[start:end] += features[k].count(data.iloc[:, pos])
        if block is None:  # (no float array: the numeric features column by column too)
            for k, where in enumerate(plan.positions):
                if where is not None and features[k].kind == "numeric":
                    counts[int(self.offsets[k]):int(self.offsets[k + 1])] += features[k].count(data.iloc[:, where])
        else:
            values = block[:, plan.columns]
            if values.size * max(plan.edges.shape[1], 1) <= BROADCAST_LIMIT:
                # searchsorted(edges, v, side="right") for every value at once: how many edges are <= v
                bins = np.minimum((plan.edges[None, :, :] <= values[:, :, None]).sum(axis=2), plan.n_edges)
                flat = np.where(np.isnan(values), plan.missing, plan.offsets + bins)
                counts += np.bincount(flat.ravel(), minlength=len(counts))
            else:
                numeric = [k for k, h in enumerate(self.profile.features)
                           if h.kind == "numeric" and plan.positions[k] is not None]
                for j, k in enumerate(numeric):
                    counts[int(self.offsets[k]):int(self.offsets[k + 1])] += \
                        self.profile.features[k].count(values[:, j])
        return counts

    def _expire(self, now: float) -> None:
        while self._slices and now - self._slices[0].start >= self.window:
            self._slices.popleft()

    def measure(self) -> Drift:
        with self._lock:
            self._expire(self.clock())
            total = self._empty(0.0)
            for part in self._slices:
                total.features += part.features
                if part.predictions is not None and total.predictions is not None:
                    total.predictions += part.predictions
                total.rows += part.rows
                total.predicted_rows += part.predicted_rows
        features = {h.name: psi(h.reference, total.features[int(self.offsets[k]):int(self.offsets[k + 1])])
                    for k, h in enumerate(self.profile.features)} if total.rows else {}
        preds = self.profile.predictions
        prediction = (psi(preds.reference, total.predictions)
                      if preds is not None and total.predictions is not None and total.predicted_rows else None)
        return Drift(features, prediction, total.rows)


def _all_missing(hist: Histogram, rows: int) -> np.ndarray:
    counts = np.zeros(hist.size, dtype=np.int64)
    counts[-1] = rows
    return counts
