"""Reading and converting hand-model files without executing foreign code.

The official ``MANO_RIGHT.pkl`` is a Python 2 pickle holding chumpy objects and a scipy
sparse matrix. chumpy does not import on Python 3.11, and a pickle may run arbitrary code,
so :func:`load_mano_pickle` unpickles through :class:`RestrictedUnpickler`: it admits only
NumPy's array reconstruction, the chumpy classes (replaced by stand-ins that turn into plain
arrays) and scipy's sparse matrix classes (replaced by a stand-in that rebuilds the matrix
from its arrays). Any other class is refused with an error naming it.

:func:`load_hand_model_npz` reads converted files with ``allow_pickle=False``.
"""
from __future__ import annotations

import codecs
import io
import os
import pickle
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .errors import ModelFileError

# Arrays every MANO-format hand model must have, with the trailing shape where fixed.
REQUIRED_KEYS = ("v_template", "f", "J_regressor", "weights", "kintree_table", "shapedirs", "posedirs")
OPTIONAL_KEYS = ("hands_components", "hands_mean", "tip_vertex_ids")
# Fingertip vertices of the official MANO right hand (thumb, index, middle, ring, pinky).
MANO_TIP_VERTEX_IDS = (745, 317, 445, 556, 673)


class _ChumpyStandIn:
    """Collects the pickled state of a chumpy object; :meth:`to_array` gives its value."""

    def __setstate__(self, state):
        self.state = state if isinstance(state, dict) else {"state": state}

    def to_array(self) -> np.ndarray:
        raise NotImplementedError


class _Ch(_ChumpyStandIn):
    def to_array(self) -> np.ndarray:
        if "x" not in self.state:
            raise ModelFileError("a chumpy.ch.Ch object in the pickle has no 'x' array")
        return np.asarray(_to_plain(self.state["x"]))


class _Select(_ChumpyStandIn):
    def to_array(self) -> np.ndarray:
        a = np.asarray(_to_plain(self.state["a"]))
        idxs = np.asarray(_to_plain(self.state["idxs"])).astype(np.int64)
        out = a.ravel()[idxs.ravel()]
        shape = self.state.get("preferred_shape")
        return out.reshape(tuple(shape)) if shape is not None else out


class _SparseStandIn:
    """Stands in for scipy.sparse csc/csr/coo matrices pickled by any scipy version."""

    fmt = "csc"

    def __setstate__(self, state):
        self.state = state

    def to_array(self) -> np.ndarray:
        import scipy.sparse as sp

        st = self.state
        shape = tuple(st.get("_shape", st.get("shape")))
        if self.fmt == "coo":
            m = sp.coo_matrix((st["data"], (st["row"], st["col"])), shape=shape)
        else:
            cls = sp.csc_matrix if self.fmt == "csc" else sp.csr_matrix
            m = cls((st["data"], st["indices"], st["indptr"]), shape=shape)
        return np.asarray(m.todense())


class _Csc(_SparseStandIn):
    fmt = "csc"


class _Csr(_SparseStandIn):
    fmt = "csr"


class _Coo(_SparseStandIn):
    fmt = "coo"


def _numpy_allowed() -> dict:
    import copyreg

    from numpy.core import multiarray

    allowed = {
        ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
        ("numpy.core.multiarray", "scalar"): multiarray.scalar,
        ("numpy._core.multiarray", "scalar"): multiarray.scalar,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("__builtin__", "object"): object,
        # Python 3 writes bytes in protocol <= 2 pickles as _codecs.encode(str, "latin1")
        ("_codecs", "encode"): codecs.encode,
        ("builtins", "object"): object,
        ("__builtin__", "set"): set,
        ("builtins", "set"): set,
        ("__builtin__", "frozenset"): frozenset,
        ("builtins", "frozenset"): frozenset,
    }
    for mod in ("chumpy.ch", "chumpy"):
        allowed[(mod, "Ch")] = _Ch
    allowed[("chumpy.reordering", "Select")] = _Select
    for mod in ("scipy.sparse.csc", "scipy.sparse._csc", "scipy.sparse"):
        allowed[(mod, "csc_matrix")] = _Csc
    for mod in ("scipy.sparse.csr", "scipy.sparse._csr", "scipy.sparse"):
        allowed[(mod, "csr_matrix")] = _Csr
    for mod in ("scipy.sparse.coo", "scipy.sparse._coo", "scipy.sparse"):
        allowed[(mod, "coo_matrix")] = _Coo
    return allowed


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only an explicit allow-list of globals."""

    def __init__(self, file, source: str = "<pickle>"):
        super().__init__(file, encoding="latin1")
        self.source = source
        self.allowed = _numpy_allowed()

    def find_class(self, module: str, name: str):
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise ModelFileError(
                f"{self.source}: refused to load the class {module}.{name}; a MANO pickle holds only "
                "NumPy arrays, chumpy arrays and scipy sparse matrices, so this file is not a MANO "
                "model (or has been tampered with)") from None


def _to_plain(obj):
    """Replace stand-ins by arrays, recursively through dicts, lists and tuples."""
    if isinstance(obj, (_ChumpyStandIn, _SparseStandIn)):
        return obj.to_array()
    if isinstance(obj, dict):
        return {k: _to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_plain(v) for v in obj)
    return obj


def load_mano_pickle(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load an official MANO pickle into plain arrays (no chumpy, no foreign code)."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"{path}: no such MANO file")
    try:
        data = RestrictedUnpickler(io.BytesIO(path.read_bytes()), source=str(path)).load()
    except ModelFileError:
        raise
    except Exception as exc:  # truncated or not a pickle at all
        raise ModelFileError(f"{path}: not a readable MANO pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(data, dict):
        raise ModelFileError(f"{path}: expected a dict of model arrays, found {type(data).__name__}")
    plain = {}
    for key, value in _to_plain(data).items():
        key = key.decode("latin1") if isinstance(key, bytes) else str(key)
        if isinstance(value, np.ndarray) or np.isscalar(value):
            plain[key] = np.asarray(value)
        elif isinstance(value, (list, tuple)):
            try:
                plain[key] = np.asarray(value)
            except ValueError:
                continue
    return plain


def check_hand_model(data: dict, source: str) -> dict[str, np.ndarray]:
    """Validate keys and shapes of a MANO-format dict; returns the arrays it uses."""
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ModelFileError(f"{source}: missing hand-model arrays {', '.join(missing)}")
    out = {k: np.asarray(data[k]) for k in REQUIRED_KEYS + OPTIONAL_KEYS if k in data}
    V = out["v_template"].shape[0]
    expect = {
        "v_template": (V, 3),
        "J_regressor": (16, V),
        "weights": (V, 16),
        "kintree_table": (2, 16),
    }
    for key, shape in expect.items():
        if out[key].shape != shape:
            raise ModelFileError(f"{source}: {key} has shape {out[key].shape}, expected {shape}")
    if out["shapedirs"].ndim != 3 or out["shapedirs"].shape[:2] != (V, 3):
        raise ModelFileError(f"{source}: shapedirs has shape {out['shapedirs'].shape}, expected ({V}, 3, B)")
    if out["posedirs"].shape != (V, 3, 135):
        raise ModelFileError(f"{source}: posedirs has shape {out['posedirs'].shape}, expected ({V}, 3, 135)")
    if out["f"].ndim != 2 or out["f"].shape[1] != 3 or out["f"].min() < 0 or out["f"].max() >= V:
        raise ModelFileError(f"{source}: f must be (F, 3) vertex indices below {V}")
    for key, arr in out.items():
        if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
            raise ModelFileError(f"{source}: {key} holds non-finite values")
    out.setdefault("hands_components", np.eye(45))
    out.setdefault("hands_mean", np.zeros(45))
    if "tip_vertex_ids" not in out:
        if V != 778:
            raise ModelFileError(f"{source}: a model with {V} vertices (not MANO's 778) must give tip_vertex_ids")
        out["tip_vertex_ids"] = np.array(MANO_TIP_VERTEX_IDS, dtype=np.int64)
    tips = out["tip_vertex_ids"]
    if tips.shape != (5,) or tips.min() < 0 or tips.max() >= V:
        raise ModelFileError(f"{source}: tip_vertex_ids must be 5 vertex indices below {V}")
    return out


def convert_mano_pickle(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, np.ndarray]:
    """Convert an official MANO pickle into a plain ``.npz`` (written atomically)."""
    data = check_hand_model(load_mano_pickle(src), str(src))
    atomic_write_bytes(Path(dst), lambda fh: np.savez(fh, **data))
    return data


def load_hand_model_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load a converted hand model; refuses pickled objects inside the archive."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(
            f"{path}: hand-model file not found. Convert your licensed MANO_RIGHT.pkl with "
            "'hamuco prepare-mano MANO_RIGHT.pkl OUT.npz' and pass OUT.npz, or omit the option "
            "to use the built-in procedural hand")
    if path.suffix == ".pkl":
        raise ModelFileError(f"{path}: pickles are not loaded directly; convert it first with "
                             f"'hamuco prepare-mano {path} {path.with_suffix('.npz')}'")
    try:
        with np.load(path, allow_pickle=False) as npz:
            data = {k: npz[k] for k in npz.files}
    except ValueError as exc:
        raise ModelFileError(f"{path}: refused, the archive holds pickled objects ({exc})") from None
    except Exception as exc:
        raise ModelFileError(f"{path}: not a readable .npz hand model ({type(exc).__name__}: {exc})") from None
    return check_hand_model(data, str(path))
