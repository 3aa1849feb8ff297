"""The realtime worker's WebSocket framing: our pre-built frames are the library's frames."""

from __future__ import annotations

import pytest
from websockets.frames import Frame, Opcode

from realtime.serving import _text_frame


class TestTextFrame:
    """`_text_frame` frames an event once for every socket, as websockets would frame it."""

    @pytest.mark.parametrize("size", [0, 125, 126, 65_535, 65_536])
    def test_matches_an_unmasked_websockets_frame_at_each_length_encoding(self, size: int) -> None:
        text = "é" * (size // 2) + "x" * (size % 2)
        expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
        assert _text_frame(text) == expected

    def test_frames_the_latest_text_not_a_cached_one(self) -> None:
        first, second = _text_frame('{"n":1}'), _text_frame('{"n":2}')
        assert first.endswith(b'{"n":1}')
        assert second.endswith(b'{"n":2}')
