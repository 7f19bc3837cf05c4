"""aioresponses, made to work with aiohttp 3.14.

aiohttp 3.14 added a required `stream_writer` argument to ClientResponse, which aioresponses 0.7.9 does
not pass (pnuckowski/aioresponses#289, open). aiohttp 3.14 is a security release, so rather than pin
aiohttp back, the mock's responses get a stand-in writer that reports the request as fully sent.
"""

from __future__ import annotations

from typing import Any

from aiohttp import ClientResponse
from aioresponses import aioresponses


class _SentRequest:
    output_size = 0


class _CompatClientResponse(ClientResponse):
    def __init__(self, method: str, url: Any, **kwargs: Any) -> None:
        kwargs.setdefault("stream_writer", _SentRequest())
        super().__init__(method, url, **kwargs)


class mock_http(aioresponses):
    def add(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("response_class", _CompatClientResponse)
        super().add(*args, **kwargs)
