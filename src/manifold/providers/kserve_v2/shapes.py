"""The shapes an Open Inference Protocol answer must have before the translators read it, as msgspec Structs.

Strict where the protocol is (the OIP REST spec, `generate_rest.yaml`): `outputs` is a list of tensors, each with
a string `name`; a tensor that is read has `data` an array (flat or nested, row-major) whose element count is the
product of its `shape` and whose elements have its `datatype` (BYTES strings, BOOL booleans, INT/UINT integers,
FP numbers). Lenient where servers differ: unknown fields are ignored, tensors nobody reads are not checked, and
the generate extension's outputs may be a scalar or a one-element list (Triton sends scalars). What does not fit
is `OIPFormatError` naming the path (a 502, or a stream's error event).
"""

from __future__ import annotations

import math
from typing import Any, TypeVar

import msgspec
from msgspec import Struct

T = TypeVar("T")
Object = dict[str, Any]


class OIPFormatError(ValueError):
    """The server's reply does not have the expected shape (the provider reports it as a 502)."""


class OutputTensor(Struct, gc=False):
    name: str
    datatype: str | None = None
    shape: list[int] | None = None
    data: Any = None  # checked against datatype and shape by `tensor_values`, for the tensors that are read
    parameters: Object | None = None


class InferResponse(Struct, gc=False):
    outputs: list[OutputTensor]
    model_name: str | None = None
    model_version: str | None = None
    id: str | None = None
    parameters: Object | None = None


class GenerateResponse(Struct, gc=False):
    text_output: str | list[str]
    model_name: str | None = None
    model_version: str | None = None
    finish_reason: str | list[str] | None = None
    # The vLLM backend's optional outputs (return_num_input_tokens / return_num_output_tokens).
    num_input_tokens: int | list[int] | None = None
    num_output_tokens: int | list[int] | None = None
    done: bool | None = None


class ValidationDetail(Struct, gc=False):
    """One item of FastAPI's validation list (MLServer's and KServe's 422 bodies)."""

    loc: list[str | int] | None = None
    msg: str | None = None


def conform(data: Any, typ: type[T], what: str) -> T:
    """`data` (decoded JSON) as `typ`, or `OIPFormatError` naming the path that does not fit."""
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        problem, _, path = str(exc).partition(" - at `$")
        where = path.rstrip("`").lstrip(".")
        at = f"at '{where}': " if where else ""
        raise OIPFormatError(f"the {what} does not fit the Open Inference Protocol: {at}{problem}") from None


def _flat(data: list[Any]) -> list[Any]:
    if not any(isinstance(item, list) for item in data):
        return data
    out: list[Any] = []
    for item in data:
        if isinstance(item, list):
            out.extend(_flat(item))
        else:
            out.append(item)
    return out


# The elements of each OIP datatype, checked (and ints made floats) by msgspec at C speed: a large embedding
# batch holds millions of numbers. FP16 and BF16 travel as JSON numbers too.
_ELEMENTS: dict[str, tuple[Any, str]] = {"BYTES": (list[str], "strings"), "BOOL": (list[bool], "booleans")}
for _kind in ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64"):
    _ELEMENTS[_kind] = (list[int], "integers")
for _kind in ("FP16", "BF16", "FP32", "FP64"):
    _ELEMENTS[_kind] = (list[float], "numbers")


def tensor_values(tensor: OutputTensor, index: int, expected: str | None = None) -> list[Any]:
    """The tensor's elements, flat in row-major order, checked against its shape and datatype, and against
    `expected`, the datatype the reader needs ("BYTES" for text, "FP64" for numbers, which come back floats).
    `index`: the tensor's place in `outputs`, for the error."""
    where = f"outputs[{index}]"
    data = tensor.data
    if not isinstance(data, list):
        raise OIPFormatError(f"at '{where}.data': output tensor '{tensor.name}' has no data array")
    values = _flat(data)
    shape = tensor.shape
    if shape is not None and (any(d < 0 for d in shape) or math.prod(shape) != len(values)):
        raise OIPFormatError(
            f"at '{where}.shape': output tensor '{tensor.name}' has shape {shape} but {len(values)} elements"
        )
    declared = _ELEMENTS.get(tensor.datatype) if tensor.datatype is not None else None
    needed = _ELEMENTS.get(expected) if expected is not None else None
    for check in (declared, needed if needed is not declared else None):
        if check is None:
            continue
        try:
            values = msgspec.convert(values, check[0])
        except msgspec.ValidationError as exc:
            problem, _, at = str(exc).partition(" - at `$")
            held = f"({tensor.datatype}) does not hold" if check is declared else "must hold"
            raise OIPFormatError(
                f"at '{where}.data': output tensor '{tensor.name}' {held} {check[1]}: element {at.rstrip('`')} "
                f"{problem[0].lower()}{problem[1:]}"
            ) from None
    return values
