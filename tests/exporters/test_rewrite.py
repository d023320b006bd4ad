"""Graph rewrites (frametok/exporters/rewrite.py): the DFL softmax of a YOLOv8 head in its reduce form gives the
same outputs (real YOLOv8n on real frames; a small DFL graph at opsets 17 and 18 against numpy), graphs without
one are left alone, and `export yolo` of .pt weights writes the rewritten graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs onnx (pip install 'frametok[export]')")
import onnxruntime as ort  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from frametok.exporters.rewrite import rewrite_dfl_softmax, rewrite_graph  # noqa: E402
from frametok.models.detector import Detector  # noqa: E402
from frametok.models.session import ModelFiles, create_session  # noqa: E402
from frametok.registry import resolve_model  # noqa: E402


def _session(model: object) -> ort.InferenceSession:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])  # type: ignore[attr-defined]


def _dfl_graph(opset: int, anchors: int = 50) -> object:
    """Reshape-free DFL: x (1, 4, 16, A) -> Transpose(0, 2, 1, 3) -> Softmax(axis=1) -> Conv 1x1 (bins) -> y."""
    nodes = [helper.make_node("Transpose", ["x"], ["t"], name="/m/dfl/Transpose", perm=[0, 2, 1, 3]),
             helper.make_node("Softmax", ["t"], ["s"], name="/m/dfl/Softmax", axis=1),
             helper.make_node("Conv", ["s", "w"], ["y"], name="/m/dfl/conv/Conv", kernel_shape=[1, 1])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 16, anchors])
    graph = helper.make_graph(nodes, "dfl", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, anchors])],
                              [numpy_helper.from_array(np.arange(16, dtype=np.float32).reshape(1, 16, 1, 1), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


@pytest.mark.parametrize("opset", [17, 18])
def test_the_reduce_form_is_the_expected_bin(opset: int) -> None:
    x = (np.random.default_rng(opset).standard_normal((1, 4, 16, 50)) * 4).astype(np.float32)
    e = np.exp(x - x.max(axis=2, keepdims=True))
    expected = ((e * np.arange(16)[None, None, :, None]).sum(2) / e.sum(2))[:, None]  # (1, 1, 4, A)
    model = _dfl_graph(opset)
    before = _session(model).run(None, {"x": x})[0]
    assert rewrite_graph(model) == ["dfl_softmax"]
    ops = [n.op_type for n in model.graph.node]  # type: ignore[attr-defined]
    assert "Softmax" not in ops and "Conv" not in ops and "ReduceMax" in ops
    assert all(n.name.startswith("/m/dfl/") for n in model.graph.node)  # type: ignore[attr-defined]
    after = _session(model).run(None, {"x": x})[0]
    assert after.shape == before.shape == (1, 1, 4, 50)
    np.testing.assert_allclose(before, expected, atol=1e-5)
    np.testing.assert_allclose(after, expected, atol=1e-5)
    assert rewrite_graph(model) == []  # nothing left to rewrite


def test_a_softmax_that_is_no_dfl_is_left_alone() -> None:
    model = _dfl_graph(17)
    model.graph.node[0].attribute[0].ints[:] = [0, 1, 2, 3]  # type: ignore[attr-defined]  # not the DFL transpose
    before = model.SerializeToString()  # type: ignore[attr-defined]
    assert rewrite_dfl_softmax(model) == 0 and model.SerializeToString() == before  # type: ignore[attr-defined]


def test_yolov8n_rewritten_gives_the_same_outputs_on_real_frames(shared_models: Path, shared_media: Path) -> None:
    files = resolve_model("yolov8n", "detector", [shared_models], allow_online=False)
    det = Detector(files.manifest, create_session(files, ["cpu"], 2))  # type: ignore[arg-type]
    batch = np.empty((4, 3, *det.input_hw), np.float32)
    import av
    import cv2

    frames = []
    with av.open(str(shared_media / "vtest.avi")) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i % 40 == 0:
                frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == 3:
                break
    frames.append(cv2.cvtColor(cv2.imread(str(shared_media / "bus.jpg")), cv2.COLOR_BGR2RGB))
    for i, rgb in enumerate(frames):
        det.preprocess(rgb, batch[i])
    model = onnx.load(str(files.onnx_path))
    sess = _session(model)  # the shared graph has a fixed batch of 1
    before = np.concatenate([sess.run(None, {"images": batch[i : i + 1]})[0] for i in range(4)])
    assert rewrite_graph(model) == ["dfl_softmax"]
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    assert any(n.name == "/model.22/dfl/RewriteReduceMax" for n in model.graph.node)  # still in the head
    sess = _session(model)
    after = np.concatenate([sess.run(None, {"images": batch[i : i + 1]})[0] for i in range(4)])
    assert after.shape == before.shape == (4, 84, 8400)
    np.testing.assert_array_equal(after[:, 4:], before[:, 4:])  # class scores: untouched
    np.testing.assert_allclose(after[:, :4], before[:, :4], atol=1e-3)  # boxes (pixels up to 640): float rounding
    assert (before[:, 4:].max(axis=1) > 0.5).sum() > 20  # frames with objects: the boxes compared mean something


def test_export_of_weights_writes_the_rewritten_graph(dynamic_yolo: ModelFiles) -> None:
    man = dynamic_yolo.manifest
    assert man.exporter["rewrites"] == "dfl_softmax"
    assert man.parity is not None and man.parity["matched"] == man.parity["ultralytics_boxes"]  # vs predict()
    graph = onnx.load(str(dynamic_yolo.onnx_path)).graph
    assert not any(n.op_type == "Softmax" for n in graph.node)
