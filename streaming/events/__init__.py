"""Events on the wire: schemas, codec, producer helpers, dead letters, topics."""

from streaming.events.codec import Codec, DecodeError
from streaming.events.deadletter import DeadLetter
from streaming.events.producer import EventProducer, entity_key
from streaming.events.schemas import Schema, SchemaRegistry

__all__ = ["Codec", "DecodeError", "DeadLetter", "EventProducer", "Schema", "SchemaRegistry", "entity_key"]
