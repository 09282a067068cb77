"""The few SavedModel protocol-buffer messages serving reads, declared here instead of imported from TensorFlow.

``saved_model.pb`` is a ``tensorflow.SavedModel`` message. Serving needs only its SignatureDefs: to check the
export contract before anything is loaded, and to hand OpenVINO one level's signature as ``serving_default``
(the only signature its converter reads). Those messages are declared below with the field numbers of
TensorFlow's own .proto files (tensorflow/core/protobuf/meta_graph.proto, saved_model.proto,
tensorflow/core/framework/tensor_shape.proto), so the ``tensorflow`` wheel is not needed. Every other field
(the graph, the functions, the object graph) is kept as unknown fields: parsing and serialising again gives
back the same bytes, only the edited signature map changes.
"""

from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

# tensorflow/core/framework/types.proto
DT_FLOAT = 1
DT_UINT8 = 4

_PACKAGE = "cifar10_saved_model"
_FIELD = descriptor_pb2.FieldDescriptorProto


def _field(message: descriptor_pb2.DescriptorProto, name: str, number: int, kind: int, type_name: str = "",
           repeated: bool = False) -> None:
    field = message.field.add(name=name, number=number, type=kind,
                              label=_FIELD.LABEL_REPEATED if repeated else _FIELD.LABEL_OPTIONAL)
    if type_name:
        field.type_name = f".{_PACKAGE}.{type_name}"


def _map_entry(parent: descriptor_pb2.DescriptorProto, name: str, value_type: str) -> str:
    entry = parent.nested_type.add(name=name)
    entry.options.map_entry = True
    _field(entry, "key", 1, _FIELD.TYPE_STRING)
    _field(entry, "value", 2, _FIELD.TYPE_MESSAGE, value_type)
    return f"{parent.name}.{name}"


@cache
def saved_model_class() -> Any:
    """The ``SavedModel`` message class (built once per process)."""
    file = descriptor_pb2.FileDescriptorProto(name=f"{_PACKAGE}.proto", package=_PACKAGE, syntax="proto3")
    dim = file.message_type.add(name="Dim")
    _field(dim, "size", 1, _FIELD.TYPE_INT64)
    _field(dim, "name", 2, _FIELD.TYPE_STRING)
    shape = file.message_type.add(name="TensorShape")
    _field(shape, "dim", 2, _FIELD.TYPE_MESSAGE, "Dim", repeated=True)
    _field(shape, "unknown_rank", 3, _FIELD.TYPE_BOOL)
    info = file.message_type.add(name="TensorInfo")
    _field(info, "name", 1, _FIELD.TYPE_STRING)
    _field(info, "dtype", 2, _FIELD.TYPE_INT32)  # an enum in TensorFlow's file: the same varint on the wire
    _field(info, "tensor_shape", 3, _FIELD.TYPE_MESSAGE, "TensorShape")
    signature = file.message_type.add(name="SignatureDef")
    _field(signature, "inputs", 1, _FIELD.TYPE_MESSAGE, _map_entry(signature, "InputsEntry", "TensorInfo"), True)
    _field(signature, "outputs", 2, _FIELD.TYPE_MESSAGE, _map_entry(signature, "OutputsEntry", "TensorInfo"), True)
    _field(signature, "method_name", 3, _FIELD.TYPE_STRING)
    meta_graph = file.message_type.add(name="MetaGraphDef")
    _field(meta_graph, "signature_def", 5, _FIELD.TYPE_MESSAGE,
           _map_entry(meta_graph, "SignatureDefEntry", "SignatureDef"), repeated=True)
    saved_model = file.message_type.add(name="SavedModel")
    _field(saved_model, "saved_model_schema_version", 1, _FIELD.TYPE_INT64)
    _field(saved_model, "meta_graphs", 2, _FIELD.TYPE_MESSAGE, "MetaGraphDef", repeated=True)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(f"{_PACKAGE}.SavedModel"))


def parse_saved_model(data: bytes) -> Any:
    """``saved_model.pb``'s bytes as a message; raises google.protobuf's DecodeError on a corrupt file."""
    return saved_model_class().FromString(data)


def signature_defs(saved_model: Any) -> dict[str, Any]:
    """Every SignatureDef by name (the first meta graph holding a name wins, as TensorFlow's loader does)."""
    found: dict[str, Any] = {}
    for meta_graph in saved_model.meta_graphs:
        for name, signature in meta_graph.signature_def.items():
            found.setdefault(name, signature)
    return found


def with_signature_as_default(data: bytes, name: str, default: str = "serving_default") -> bytes:
    """``saved_model.pb``'s bytes with the SignatureDef ``name`` copied over ``default``: the graph and its
    functions are unchanged, so a converter that reads only ``default`` converts ``name``."""
    saved_model = parse_saved_model(data)
    for meta_graph in saved_model.meta_graphs:
        if name in meta_graph.signature_def:
            meta_graph.signature_def[default].CopyFrom(meta_graph.signature_def[name])
    return saved_model.SerializeToString()
