"""A fast yes-or-don't-know check of a config against config.schema.json, so that a valid config never imports
jsonschema (about 0.1 s of imports, most of a control command's time).

``certainly_valid`` returns True only when the document is valid: it knows the keywords config.schema.json uses and
answers False (then jsonschema decides, and words the problems) on any keyword it does not know and on every case
where its reading could differ from jsonschema's (an integer written as 1.0, non-string items under uniqueItems,
a non-local $ref).
"""

from __future__ import annotations

import re

_IGNORED = frozenset({"$schema", "$id", "title", "description", "$defs", "default", "examples", "$comment"})
_KNOWN = frozenset({"type", "additionalProperties", "$ref", "maxLength", "minLength", "required", "properties",
                    "minimum", "maximum", "pattern", "uniqueItems", "items", "propertyNames", "minItems", "enum"})


def _type_ok(name: str, value: object) -> bool | None:
    """True/False, or None when only jsonschema can say (a float that may count as an integer)."""
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, list)
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if name == "integer":
        if isinstance(value, float):
            return None
        return isinstance(value, int) and not isinstance(value, bool)
    if name == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return None


class _Checker:
    def __init__(self, root: dict) -> None:
        self.root = root

    def ok(self, schema, value) -> bool:
        if schema is True:
            return True
        if not isinstance(schema, dict) or any(k not in _KNOWN and k not in _IGNORED for k in schema):
            return False
        if "$ref" in schema:
            ref = schema["$ref"]
            if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
                return False
            target = self.root.get("$defs", {}).get(ref[len("#/$defs/"):])
            if target is None or not self.ok(target, value):
                return False
        if "type" in schema:
            names = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
            answers = [_type_ok(n, value) for n in names]
            if True not in answers:
                return False
        if "enum" in schema and not any(type(e) is type(value) and e == value for e in schema["enum"]):
            return False
        if isinstance(value, str):
            if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
                return False
            if "pattern" in schema and not re.search(schema["pattern"], value):
                return False
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if "minimum" in schema and not value >= schema["minimum"]:
                return False
            if "maximum" in schema and not value <= schema["maximum"]:
                return False
        if isinstance(value, list):
            if len(value) < schema.get("minItems", 0):
                return False
            if schema.get("uniqueItems") and (not all(isinstance(v, str) for v in value)
                                              or len(set(value)) != len(value)):
                return False
            if "items" in schema and not all(self.ok(schema["items"], v) for v in value):
                return False
        if isinstance(value, dict):
            if any(k not in value for k in schema.get("required", ())):
                return False
            props = schema.get("properties", {})
            extra = schema.get("additionalProperties", True)
            names = schema.get("propertyNames")
            for key, item in value.items():
                if names is not None and not self.ok(names, key):
                    return False
                if key in props:
                    if not self.ok(props[key], item):
                        return False
                elif extra is False or (extra is not True and not self.ok(extra, item)):
                    return False
        return True


def certainly_valid(schema: dict, document: object) -> bool:
    """True: the document is valid against the schema. False: it may not be; ask jsonschema."""
    try:
        return _Checker(schema).ok(schema, document)
    except (TypeError, ValueError, re.error, RecursionError):
        return False
