"""A small validator of JSON values against a shape of a botocore service model: AWS's own definition of a format."""

from __future__ import annotations

import botocore.loaders

_NUMBERS = {"float", "double", "integer", "long"}


def service_shapes(service: str) -> dict:
    """The shapes of botocore's service model (data/<service>/<version>/service-2.json.gz)."""
    return botocore.loaders.Loader().load_service_model(service, "service-2")["shapes"]


def problems(value: object, shape_name: str, shapes: dict, path: str = "$") -> list[str]:
    """Every way `value` differs from the shape (as a response body): wrong types, unknown or missing members, ranges."""
    shape = shapes[shape_name]
    kind = shape["type"]
    if kind == "structure":
        if not isinstance(value, dict):
            return [f"{path}: expected an object ({shape_name}), got {type(value).__name__}"]
        found = [f"{path}: {name!r} is not a member of {shape_name}" for name in value if name not in shape["members"]]
        found += [
            f"{path}: required member {name!r} missing" for name in shape.get("required", []) if name not in value
        ]
        for name, member in shape["members"].items():
            if name in value:
                found += problems(value[name], member["shape"], shapes, f"{path}.{name}")
        return found
    if kind == "list":
        if not isinstance(value, list):
            return [f"{path}: expected a list ({shape_name}), got {type(value).__name__}"]
        found = _range(len(value), shape, path, "length")
        for index, item in enumerate(value):
            found += problems(item, shape["member"]["shape"], shapes, f"{path}[{index}]")
        return found
    if kind == "map":
        if not isinstance(value, dict):
            return [f"{path}: expected a map ({shape_name})"]
        return [p for k, v in value.items() for p in problems(v, shape["value"]["shape"], shapes, f"{path}[{k!r}]")]
    if kind == "string":
        if not isinstance(value, str):
            return [f"{path}: expected a string ({shape_name}), got {type(value).__name__}"]
        if "enum" in shape and value not in shape["enum"]:
            return [f"{path}: {value!r} is not one of {shape['enum']}"]
        return _range(len(value), shape, path, "length")
    if kind in _NUMBERS:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return [f"{path}: expected a number ({shape_name}), got {type(value).__name__}"]
        if kind in ("integer", "long") and not isinstance(value, int):
            return [f"{path}: expected a whole number ({shape_name})"]
        return _range(value, shape, path, "value")
    if kind == "boolean":
        return [] if isinstance(value, bool) else [f"{path}: expected a boolean ({shape_name})"]
    raise NotImplementedError(f"{path}: shapes of type {kind} ({shape_name})")


def _range(measure: float, shape: dict, path: str, what: str) -> list[str]:
    if "min" in shape and measure < shape["min"]:
        return [f"{path}: {what} {measure} below the minimum {shape['min']}"]
    if "max" in shape and measure > shape["max"]:
        return [f"{path}: {what} {measure} above the maximum {shape['max']}"]
    return []
