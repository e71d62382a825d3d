"""prepare-mano: chumpy-style pickles convert to plain arrays; foreign classes are refused."""
import os
import pickle
import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from model.errors import ModelFileError
from model.hand_model import HandModel
from model.mano_io import load_hand_model_npz, load_mano_pickle
from model.procedural_hand import procedural_hand_model
from tasks.cli import main


@pytest.fixture
def fake_chumpy(monkeypatch):
    """Classes named like chumpy's, so pickles reference chumpy.ch.Ch and chumpy.reordering.Select."""
    ch, reordering = types.ModuleType("chumpy.ch"), types.ModuleType("chumpy.reordering")

    class Ch:
        pass

    class Select:
        pass

    Ch.__module__, Ch.__qualname__ = "chumpy.ch", "Ch"
    Select.__module__, Select.__qualname__ = "chumpy.reordering", "Select"
    ch.Ch, reordering.Select = Ch, Select
    pkg = types.ModuleType("chumpy")
    for name, mod in (("chumpy", pkg), ("chumpy.ch", ch), ("chumpy.reordering", reordering)):
        monkeypatch.setitem(sys.modules, name, mod)

    def make_ch(x):
        obj = Ch()
        obj.__dict__.update(x=np.asarray(x), _dirty_vars=set(), _itr=None)
        return obj

    def make_select(a, idxs, shape):
        obj = Select()
        obj.__dict__.update(a=make_ch(a), idxs=np.asarray(idxs), preferred_shape=shape)
        return obj

    return make_ch, make_select


def write_mano_like_pickle(path, make_ch, make_select, protocol):
    data = procedural_hand_model()
    flat = data["hands_components"].ravel()
    obj = {
        "v_template": make_ch(data["v_template"]),
        "shapedirs": make_ch(data["shapedirs"]),
        "posedirs": data["posedirs"],
        "J_regressor": sp.csc_matrix(data["J_regressor"]),
        "weights": make_ch(data["weights"]),
        "kintree_table": data["kintree_table"],
        "f": data["f"].astype(np.uint32),
        "hands_components": make_select(flat[::-1].copy(), np.arange(len(flat))[::-1], (45, 45)),
        "hands_mean": data["hands_mean"],
        "tip_vertex_ids": data["tip_vertex_ids"],
        "bs_style": "lbs",
    }
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    return data


@pytest.mark.parametrize("protocol", [0, 2])
def test_chumpy_pickle_converts_to_equal_arrays(tmp_path, fake_chumpy, protocol):
    src, dst = tmp_path / "MANO_RIGHT.pkl", tmp_path / "mano.npz"
    original = write_mano_like_pickle(src, *fake_chumpy, protocol)
    for name in ("chumpy", "chumpy.ch", "chumpy.reordering"):
        del sys.modules[name]  # conversion must not need chumpy
    assert main(["prepare-mano", str(src), str(dst)]) == 0
    converted = load_hand_model_npz(dst)
    for key in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "kintree_table", "f",
                "hands_components", "hands_mean", "tip_vertex_ids"):
        assert np.array_equal(converted[key], original[key]), key
    with np.load(dst, allow_pickle=False) as npz:  # plain arrays only
        assert all(npz[k].dtype != object for k in npz.files)
    # and smplx runs on it exactly as on the in-memory procedural hand
    g, p = torch.zeros(2, 3), torch.randn(2, 45) * 0.3
    b = torch.randn(2, 10)
    assert torch.allclose(HandModel(dst)(g, p, b).joints, HandModel()(g, p, b).joints, atol=1e-6)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_foreign_class_is_refused(tmp_path, capsys):
    src = tmp_path / "MANO_RIGHT.pkl"
    src.write_bytes(pickle.dumps({"v_template": np.zeros((3, 3)), "x": Evil()}, protocol=2))
    with pytest.raises(ModelFileError, match=r"refused to load the class (posix|os)\.system"):
        load_mano_pickle(src)
    assert main(["prepare-mano", str(src), str(tmp_path / "out.npz")]) == 2
    err = capsys.readouterr().err
    assert "refused" in err and "Traceback" not in err
    assert not (tmp_path / "out.npz").exists()


def test_missing_and_garbage_files(tmp_path):
    with pytest.raises(ModelFileError, match="no such MANO file"):
        load_mano_pickle(tmp_path / "nope.pkl")
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(b"\x80\x02garbage")
    with pytest.raises(ModelFileError, match="not a readable MANO pickle"):
        load_mano_pickle(bad)
    with pytest.raises(ModelFileError, match="prepare-mano"):
        HandModel(tmp_path / "missing.npz")


def test_npz_with_objects_or_wrong_shapes_is_refused(tmp_path):
    data = procedural_hand_model()
    obj = tmp_path / "obj.npz"
    np.savez(obj, **data, extra=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ModelFileError, match="pickled objects"):
        load_hand_model_npz(obj)
    data["J_regressor"] = data["J_regressor"][:10]
    bad = tmp_path / "bad.npz"
    np.savez(bad, **data)
    with pytest.raises(ModelFileError, match="J_regressor has shape"):
        load_hand_model_npz(bad)
