"""ONNX scoring. The model is loaded once per task; a model that does not match the job's features is
refused at start with a message that says what to fix (retrain, or point at the matching model).

A model ships as ``<name>.onnx`` plus ``<name>.json`` (its feature spec: names, order, fingerprint,
version). Single-row ``run`` costs a few µs of onnxruntime plus Python overhead; :meth:`score_batch` is
the cheap path per row when rows can be batched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson

from .features import FEATURE_NAMES, GRAPH_FEATURE_LIST, GRAPH_FEATURES_ENV, spec_fingerprint


def _import_onnxruntime():
    """Import onnxruntime on a thread that Python itself started.

    Pitfall (PyFlink thread mode): operators run on JVM threads whose Python thread state is created by
    PEMJA, and sometimes it is not the state CPython's GILState API has registered for that OS thread.
    onnxruntime's extension module calls ``PyGILState_Ensure`` while it initialises. On such a thread that
    call waits for the interpreter lock its own thread already holds, and the task hangs in INITIALIZING
    forever (seen in gdb: ``PyInit_onnxruntime_pybind11_state -> PyGILState_Ensure -> take_gil``). A
    thread started by ``threading`` always has a registered state, so the import is done there.
    """
    import importlib
    import sys
    import threading

    if "onnxruntime" in sys.modules:
        return sys.modules["onnxruntime"]
    box: dict = {}

    def load() -> None:
        try:
            box["module"] = importlib.import_module("onnxruntime")
        except BaseException as e:  # re-raised on the caller's thread
            box["error"] = e

    t = threading.Thread(target=load, name="onnxruntime-import", daemon=True)
    t.start()
    t.join()
    if "error" in box:
        raise box["error"]
    return box["module"]


ort = _import_onnxruntime()


class ModelError(RuntimeError):
    """The model file or its spec is missing, unreadable or does not match the job's features."""


def load_model_spec(model_path: Path) -> dict:
    spec_path = Path(model_path).with_suffix(".json")
    if not Path(model_path).is_file():
        raise ModelError(f"model file {model_path} does not exist: pass --model-path with an .onnx file, "
                         "or train one with `python -m models.train`")
    if not spec_path.is_file():
        raise ModelError(f"model spec {spec_path} is missing: every model ships with a .json spec written "
                         "by `python -m models.train` next to its .onnx file")
    try:
        spec = orjson.loads(spec_path.read_bytes())
    except orjson.JSONDecodeError as e:
        raise ModelError(f"model spec {spec_path} is not valid JSON ({e}); re-export the model") from e
    for key in ("model_version", "feature_names", "feature_fingerprint"):
        if key not in spec:
            raise ModelError(f"model spec {spec_path} lacks {key!r}; re-export the model with models/train.py")
    return spec


def check_spec(spec: dict, model_path: Path) -> None:
    names = tuple(spec["feature_names"])
    if names != FEATURE_NAMES:
        missing = [n for n in FEATURE_NAMES if n not in names]
        extra = [n for n in names if n not in FEATURE_NAMES]
        hint = f"missing {missing}, unknown {extra}" if missing or extra else "same names in another order"
        graph = {f.name for f in GRAPH_FEATURE_LIST}
        if bool(extra) != bool(missing) and set(extra + missing) <= graph:  # the switch differs, not the model
            on = bool(extra)
            raise ModelError(
                f"model {model_path} was trained {'with' if on else 'without'} the graph features and this process "
                f"computes the spec {'without' if on else 'with'} them ({hint}): set {GRAPH_FEATURES_ENV}="
                f"{1 if on else 0} in every process of the job (the command that starts it; on a cluster, the "
                "TaskManagers' environment, which their Python workers inherit), or use a model of this spec")
        raise ModelError(
            f"model {model_path} was trained on other features than this job computes ({hint}); "
            "retrain it with `python -m models.train` or run the riskstream version it was built for")
    if spec["feature_fingerprint"] != spec_fingerprint():
        raise ModelError(
            f"model {model_path} has feature fingerprint {spec['feature_fingerprint']} but the job's feature "
            f"spec is {spec_fingerprint()} (same names, different horizons/filters/aggregates); "
            "retrain it with `python -m models.train`")


class Scorer:
    """Fraud probability from the feature vector in ``FEATURE_NAMES`` order."""

    def __init__(self, model_path: str | Path):
        self.path = Path(model_path)
        self.spec = load_model_spec(self.path)
        check_spec(self.spec, self.path)
        self.version = str(self.spec["model_version"])
        if self.spec.get("training_distribution") is not None:
            from .drift import monitor_for

            try:
                monitor_for(self.spec)  # a malformed one fails here, not at the first batch
            except (ValueError, KeyError, TypeError) as e:
                raise ModelError(f"model {self.path}: its training_distribution is unusable ({e}); retrain it "
                                 "or remove that entry") from e
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.inter_op_num_threads = 1
        try:
            self.session = ort.InferenceSession(str(self.path), sess_options=opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own exception types
            raise ModelError(f"onnxruntime cannot load {self.path}: {e}; re-export the model") from e
        inputs = self.session.get_inputs()
        width = inputs[0].shape[-1] if inputs else None
        if len(inputs) != 1 or (isinstance(width, int) and width != len(FEATURE_NAMES)):
            raise ModelError(f"model {self.path} expects input {[(i.name, i.shape) for i in inputs]}, "
                             f"not one [N, {len(FEATURE_NAMES)}] float tensor")
        self._input = inputs[0].name
        outs = [o.name for o in self.session.get_outputs()]
        self._output = "probabilities" if "probabilities" in outs else outs[-1]
        self._buf = np.zeros((1, len(FEATURE_NAMES)), dtype=np.float32)

    def score(self, row: list[float]) -> float:
        self._buf[0, :] = row
        probs = self.session.run([self._output], {self._input: self._buf})[0]
        return float(probs[0, 1])

    def score_batch(self, rows: np.ndarray) -> np.ndarray:
        probs = self.session.run([self._output], {self._input: np.asarray(rows, dtype=np.float32)})[0]
        return probs[:, 1]
