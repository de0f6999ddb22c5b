"""The measurements of a stage in safe, exact file formats: JSON for values and rows, ``.npy`` (no pickle) for arrays.

:mod:`bench.run.stage_cache` stores the released and defended stages with these functions. Everything read back equals
what was written, bit for bit: floats go through JSON as their shortest round-tripping repr (NaN and infinities
included), arrays through ``.npy`` with ``allow_pickle=False``. The defended model itself is saved with
:mod:`bench.modelio` (safetensors + a JSON manifest), never with pickle.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench.contracts import DefenseResult, Evaluation, Probe, Score
from bench.errors import DataError
from bench.modelio import load_model, save_model
from bench.run.curvature import Eigen

ARRAYS = "arrays"
"""Subdirectory of an entry holding its ``.npy`` files."""


class ArrayWriter:
    """Stores arrays as ``arrays/<n>.npy`` in a directory and hands back the names JSON refers to them by."""

    def __init__(self, directory: Path):
        self.directory = directory / ARRAYS
        self.count = 0

    def __call__(self, array: np.ndarray) -> str:
        self.directory.mkdir(parents=True, exist_ok=True)
        name = f"{self.count}.npy"
        self.count += 1
        np.save(self.directory / name, np.asarray(array), allow_pickle=False)
        return name


def read_array(directory: Path, name: str) -> np.ndarray:
    path = directory / ARRAYS / Path(name).name  # a name is a bare file name: never a path out of the entry
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read array {path}: {err}") from err


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=1, sort_keys=True, allow_nan=True, default=jsonable))


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"cannot read {path}: {err}") from err


def jsonable(value: Any) -> Any:
    """JSON for the odd values plugins put in reports: numpy scalars and arrays exactly, anything else as text
    (as run.json writes it)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (set, frozenset)):
        return list(value)
    return str(value)


# -------------------------------------------------------------------------------------------------------------
# Value types
# -------------------------------------------------------------------------------------------------------------
def encode_scalar(value: Any) -> Any:
    """A number as JSON; a numpy scalar keeps its type (a float32 utility must not come back as a float64)."""
    if isinstance(value, np.generic):
        return {"numpy": type(value).__name__, "value": value.item()}
    return value


def decode_scalar(data: Any) -> Any:
    if isinstance(data, dict):
        kind = getattr(np, str(data.get("numpy")), None)
        if not (isinstance(kind, type) and issubclass(kind, np.generic)):
            raise DataError(f"unknown numpy scalar type {data.get('numpy')!r}")
        return kind(data["value"])
    return data


def encode_score(score: Score, save: ArrayWriter) -> dict[str, Any]:
    items = None if score.items is None else save(np.asarray(score.items))
    return {"value": encode_scalar(score.value), "items": items, "higher_is_better": bool(score.higher_is_better)}


def decode_score(data: Mapping[str, Any], directory: Path) -> Score:
    items = None if data["items"] is None else read_array(directory, data["items"])
    return Score(value=decode_scalar(data["value"]), items=items, higher_is_better=data["higher_is_better"])


def encode_evaluation(evaluation: Evaluation, save: ArrayWriter) -> dict[str, Any]:
    # Lists of pairs keep the metrics' order, which decides the order of the rows written for them.
    return {
        "harm": encode_score(evaluation.harm, save),
        "utility": [[name, encode_score(score, save)] for name, score in evaluation.utility.items()],
        "extras": [[name, encode_score(score, save)] for name, score in evaluation.extras.items()],
    }


def decode_evaluation(data: Mapping[str, Any], directory: Path) -> Evaluation:
    return Evaluation(
        harm=decode_score(data["harm"], directory),
        utility={name: decode_score(score, directory) for name, score in data["utility"]},
        extras={name: decode_score(score, directory) for name, score in data["extras"]},
    )


def encode_probe(probe: Probe) -> dict[str, Any]:
    return {"harm": encode_scalar(probe.harm), "utility": encode_scalar(probe.utility), "broken": bool(probe.broken),
            "extras": [[name, encode_scalar(value)] for name, value in probe.extras.items()]}


def decode_probe(data: Mapping[str, Any]) -> Probe:
    return Probe(harm=decode_scalar(data["harm"]), utility=decode_scalar(data["utility"]), broken=data["broken"],
                 extras={name: decode_scalar(value) for name, value in data["extras"]})


def encode_eigen(eigen: Eigen) -> dict[str, Any]:
    return {"value": encode_scalar(eigen.value), "iterations": int(eigen.iterations),
            "converged": bool(eigen.converged), "seconds": encode_scalar(eigen.seconds)}


def decode_eigen(data: Mapping[str, Any]) -> Eigen:
    return Eigen(value=decode_scalar(data["value"]), iterations=data["iterations"], converged=data["converged"],
                 seconds=decode_scalar(data["seconds"]))


def decode_timings(data: list[Any]) -> dict[str, float]:
    """Seconds per stage part (:class:`~bench.toolkit.stage_clock.StageClock`; a list of pairs keeps the parts' order)."""
    return {str(name): float(seconds) for name, seconds in data}


def encode_rows(rows: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Metric rows (:func:`bench.run.results.metric_row`); their numbers go into float64/int64 Parquet columns, so plain
    JSON numbers keep them exact."""
    return [{key: jsonable(value) if isinstance(value, np.generic) else value for key, value in row.items()}
            for row in rows]


def decode_rows(data: list[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [dict(row) for row in data]


# -------------------------------------------------------------------------------------------------------------
# Stages
# -------------------------------------------------------------------------------------------------------------
STAGE_JSON = "stage.json"
OUTPUTS = "outputs.npy"
MODEL = "model"


def write_released(directory: Path, stage: Any) -> None:
    """The measurements of a :class:`~bench.run.stages.ReleasedStage` (not its task: that is always rebuilt)."""
    save = ArrayWriter(directory)
    np.save(directory / OUTPUTS, np.asarray(stage.outputs), allow_pickle=False)
    write_json(directory / STAGE_JSON, {
        "evaluation": encode_evaluation(stage.evaluation, save),
        "probe": encode_probe(stage.probe),
        "curvature": encode_eigen(stage.curvature),
        "rows": encode_rows(stage.rows),
        "already_harmful": stage.already_harmful,
        "timings": [[name, seconds] for name, seconds in stage.timings.items()],
    })


def read_released(directory: Path) -> dict[str, Any]:
    """The fields of a :class:`~bench.run.stages.ReleasedStage` but its task."""
    data = read_json(directory / STAGE_JSON)
    try:
        outputs = np.load(directory / OUTPUTS, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read {directory / OUTPUTS}: {err}") from err
    return {"evaluation": decode_evaluation(data["evaluation"], directory), "probe": decode_probe(data["probe"]),
            "outputs": outputs, "curvature": decode_eigen(data["curvature"]), "rows": decode_rows(data["rows"]),
            "already_harmful": data["already_harmful"], "timings": decode_timings(data["timings"])}


def write_defended(directory: Path, stage: Any, architecture: Mapping[str, Any], *, with_model: bool = True) -> None:
    """A :class:`~bench.run.stages.DefendedStage`: the model (safetensors + manifest; not for a defense that leaves the
    weights as released, e.g. ``none``: no copy of an 8B checkpoint), its report and measurements."""
    if with_model:
        save_model(stage.model, directory / MODEL, architecture=architecture)
    save = ArrayWriter(directory)
    write_json(directory / STAGE_JSON, {
        "layers": list(stage.report.layers),
        "info": dict(stage.report.info),
        "seconds": encode_scalar(stage.seconds),
        "params_added": int(stage.params_added),
        "evaluation": encode_evaluation(stage.evaluation, save),
        "rows": encode_rows(stage.rows),
        "already_harmful": stage.already_harmful,
        "timings": [[name, seconds] for name, seconds in stage.timings.items()],
    })


def read_defended(directory: Path, device: Any, released: Any = None) -> dict[str, Any]:
    """The fields of a :class:`~bench.run.stages.DefendedStage`, its model loaded onto ``device`` in eval mode (or, for
    an entry stored without a model, ``released()``: a fresh copy of the released model)."""
    data = read_json(directory / STAGE_JSON)
    if (directory / MODEL).is_dir():
        model = load_model(directory / MODEL).to(device).eval()
    elif released is not None:
        model = released().eval()
    else:
        raise DataError(f"{directory} holds no model")
    return {"model": model, "report": DefenseResult(model=model, layers=tuple(data["layers"]), info=data["info"]),
            "seconds": decode_scalar(data["seconds"]), "params_added": data["params_added"],
            "evaluation": decode_evaluation(data["evaluation"], directory), "rows": decode_rows(data["rows"]),
            "already_harmful": data["already_harmful"], "timings": decode_timings(data["timings"])}
