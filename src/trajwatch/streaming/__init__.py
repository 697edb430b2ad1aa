"""trajwatch.streaming: wire protocol v1 over ZeroMQ, :class:`Publisher`, :class:`Subscriber`.

See ``docs/protocol.md`` for the bytes on the wire.

>>> import numpy as np
>>> from trajwatch import Frame
>>> decode(encode(Frame(np.zeros((1, 3)), [1]), topic="a")).source
'a'
"""

from trajwatch.streaming.protocol import ProtocolError, decode, encode
from trajwatch.streaming.publisher import Publisher
from trajwatch.streaming.subscriber import SourceStats, Subscriber, SubscriberStats

__all__ = [
    "ProtocolError",
    "Publisher",
    "SourceStats",
    "Subscriber",
    "SubscriberStats",
    "decode",
    "encode",
]
