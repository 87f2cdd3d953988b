"""The control protocol's netstring-JSON framing."""

from __future__ import annotations

import pytest

from portmux.control import _framing as pc


def test_encode_is_a_readable_netstring() -> None:
    assert pc.encode({"op": "ping"}) == b'13:{"op":"ping"},'


def test_decoder_reassembles_frames_split_anywhere() -> None:
    data = pc.encode({"op": "a", "id": 1}) + pc.encode({"op": "b", "x": "é"})
    for cut in range(len(data) + 1):
        decoder = pc.FrameDecoder()
        got = decoder.feed(data[:cut]) + decoder.feed(data[cut:])
        assert got == [{"op": "a", "id": 1}, {"op": "b", "x": "é"}]


@pytest.mark.parametrize(
    "data",
    [
        b"x:{},",
        b"012:{\"op\":\"a\"},",
        b'10:{"op":"a"}}',
        b"2:[],",
        b'10:{"op": 1 },',
        b"3:\xff\xfe\xfd,",
        b"123456789",
    ],
)
def test_bad_frames_raise_frame_error(data: bytes) -> None:
    with pytest.raises(pc.FrameError):
        pc.FrameDecoder().feed(data)


def test_oversized_frame_refused_before_buffering() -> None:
    with pytest.raises(pc.FrameError, match="exceeds"):
        pc.FrameDecoder(max_frame=10).feed(b"11:")


def test_incomplete_frame_waits() -> None:
    decoder = pc.FrameDecoder()
    assert decoder.feed(b'13:{"op":"pi') == []
    assert decoder.feed(b'ng"},') == [{"op": "ping"}]
