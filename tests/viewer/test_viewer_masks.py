"""The viewer draws instance masks (protocol 1.3 ``det_mask``): packets with known masks, sent by the real
Publisher over ZeroMQ to a real ``frametok view``, drawn by headless Chromium; the canvas's pixels read back
and compared, pixel for pixel, with the masks as the packet's own decoder gives them (docs/protocol.md §5.3)."""

from __future__ import annotations

import threading
from typing import Any

import cv2
import numpy as np
import pytest

from frametok import Detections, EndOfStream, StreamInfo, TokenPacket
from frametok.config import PublisherConfig

from ..conftest import free_endpoint
from .browser import Browser, find_chromium
from .test_viewer import ARTIFACTS, _start_viewer, _stop

SIZE_WH = (384, 288)  # the preview has the frame's size: canvas pixel = source pixel
GREY = 128
# boxes whose cells fall on whole pixels (160 / 32 = 5, 128 / 32 = 4, 192 / 32 = 6): every canvas pixel is
# wholly inside or outside a cell, so the fill has no anti-aliased edge and the drawn pixels are exact
BOXES = np.array([[40, 48, 200, 208], [232, 64, 360, 256]], np.float32)


def _masks() -> np.ndarray:
    """(2, 32, 4) bit-packed: box 0 its left half (columns 0..15); box 1 a checker of 8 x 8-cell blocks, set
    where (block row + block column) is even, with cell (0, 7) cleared and cell (8, 0) set (a bit-order check:
    0x01 / 0x80 of a byte)."""
    cells = np.zeros((2, 32, 32), bool)
    cells[0, :, :16] = True
    r, c = np.indices((32, 32))
    cells[1] = (r // 8 + c // 8) % 2 == 0
    cells[1, 0, 7] = False
    cells[1, 8, 0] = True
    return np.packbits(cells, axis=-1)


def _publish(endpoint: str, packet: TokenPacket, stop: threading.Event, errors: list[BaseException]) -> None:
    """The real Publisher: wait for the viewer's subscription, send the frame three times, then end the stream."""
    import zmq

    from frametok.streamer.delivery.publisher import Publisher

    ctx = zmq.Context()
    try:
        info = StreamInfo("masks", "file", {"detector": {"class_names": ["person", "bus", "car"]}})
        pub = Publisher(ctx, PublisherConfig(endpoint=endpoint), {"masks": info})
        try:
            if not pub.wait_for_subscribers(1, stop.is_set):
                return
            for i in range(3):
                pub.publish(TokenPacket("masks", i, i / 30, SIZE_WH, detections=packet.detections,
                                        preview_jpeg=packet.preview_jpeg))
                pub.poll_subscriptions(20)
            pub.publish(EndOfStream("masks", 3))
            while not stop.is_set():  # keep the socket (and what it still holds) until the page drew
                pub.poll_subscriptions(100)
        finally:
            pub.close(drain_s=1.0)
    except BaseException as exc:  # reported by the test
        errors.append(exc)
    finally:
        ctx.term()


def test_viewer_fills_each_mask_cell_and_nothing_else() -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium binary on PATH (Debian: apt-get install chromium; .ci/run installs it)")
    pytest.importorskip("websocket", reason="websocket-client (dev extra) drives Chromium over DevTools")
    w, h = SIZE_WH
    ok, jpeg = cv2.imencode(".jpg", np.full((h, w, 3), GREY, np.uint8))
    assert ok
    dets = Detections(BOXES, np.array([0.9, 0.8], np.float32), np.array([0, 1], np.int32), mask_bits=_masks())
    packet = TokenPacket("masks", 0, 0.0, SIZE_WH, detections=dets, preview_jpeg=jpeg.tobytes())
    endpoint = free_endpoint()
    viewer, url = _start_viewer(endpoint)
    stop, errors = threading.Event(), []  # type: ignore[var-annotated]
    publisher = threading.Thread(target=_publish, args=(endpoint, packet, stop, errors), daemon=True)
    page: dict[str, Any]
    try:
        with Browser(chromium) as browser:
            browser.goto(url)
            browser.wait_for("window.frametokView && window.frametokView.connected", 60)
            publisher.start()
            browser.wait_for("(window.frametokDrawn.masks || {}).frame === 2", 60)
            page = browser.eval("""(() => {
                const canvas = document.querySelector('.stream[data-stream="masks"] canvas.frame');
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                return {drawn: window.frametokDrawn.masks, wh: [canvas.width, canvas.height],
                        rgba: Array.from(data)};
            })()""")
            browser.screenshot(ARTIFACTS / "viewer_masks.png")
    finally:
        stop.set()
        publisher.join(30)
        view_output = _stop(viewer)
    assert not errors, errors
    assert "Traceback" not in view_output, view_output
    drawn = page["drawn"]
    assert page["wh"] == [w, h] and drawn["canvas_wh"] == [w, h] and drawn["preview"] is True
    cells = dets.box_masks()
    assert drawn["mask_cells"] == [int(cells[0].sum()), int(cells[1].sum())] == [512, 512]
    assert [d["mask"]["area"] for d in drawn["detections"]] == dets.mask_areas(SIZE_WH).tolist()
    rgb = np.array(page["rgba"], np.int16).reshape(h, w, 4)[..., :3]
    tinted = np.abs(rgb - GREY).max(axis=2) > 24  # a 0.4 fill of any palette colour moves grey by > 24
    for i, color in enumerate(drawn["colors"]):
        x1, y1, x2, y2 = (int(v) for v in BOXES[i])
        inner = (slice(y1 + 3, y2 - 3), slice(x1 + 3, x2 - 3))  # inside the box's 3-pixel outline
        want = dets.frame_mask(i, SIZE_WH)[inner]
        got = tinted[inner]
        assert want.any() and (~want).any()
        wrong = np.argwhere(got != want)
        assert not len(wrong), (f"box {i}: {len(wrong)} of {want.size} pixels drawn otherwise than its mask, "
                                f"first at (y, x) {(wrong[0] + (y1 + 3, x1 + 3)).tolist()}")
        # the fill is the box's colour at 0.4 over the frame, where the mask is set
        want_rgb = 0.4 * np.array([int(color[k:k + 2], 16) for k in (1, 3, 5)]) + 0.6 * GREY
        assert np.abs(rgb[inner][want] - want_rgb).max() <= 3
    # outside every box nothing is drawn (the labels sit above the boxes' top edges)
    outside = np.ones((h, w), bool)
    for x1, y1, x2, y2 in BOXES.astype(int):
        outside[max(0, y1 - 16):y2 + 2, x1 - 2:x2 + 2] = False
    assert not tinted[outside].any()


def test_the_mask_pattern_is_what_the_test_says() -> None:
    """The packed masks themselves (so that a failure above is the viewer's): box 0's left half, box 1's cells."""
    cells = np.unpackbits(_masks(), axis=-1).astype(bool)
    assert cells[0, :, :16].all() and not cells[0, :, 16:].any()
    assert _masks()[1, 0, 0] == 0xFE and _masks()[1, 8, 0] == 0x80 and cells[1].sum() == 512
