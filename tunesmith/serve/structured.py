"""Constrained decoding for the transformers engine: a reply that must be JSON (json_object), match a JSON schema
(json_schema, a forced tool call) is decoded with the tokens that cannot continue it masked out at every step.

Built on xgrammar (https://github.com/mlc-ai/xgrammar), the default structured-output backend of vLLM and SGLang:
the grammar compiled from a schema is a pushdown automaton with precomputed token masks, so one step costs
microseconds, and the vLLM engine (which uses it too) constrains the same schemas the same way. Whitespace is
the compact form (no free runs of spaces or newlines a model could loop in), and the reply may end (a stop
token) only where the JSON is complete.
"""

from __future__ import annotations

import json
import threading

from tunesmith.errors import TunesmithError


class SchemaError(TunesmithError):
    """A schema that cannot be decoded under (invalid, or uses what xgrammar does not support)."""


# Keywords xgrammar (0.2.x) compiles without enforcing them, or wrongly: a reply decoded under a schema that
# has one could break it, so such a schema is refused, not decoded as if the keyword were not there. OpenAI's
# structured outputs refuse these too (they take anyOf, not oneOf).
UNENFORCED = {
    "uniqueItems": "items that must differ", "contains": "an item the array must hold", "minContains": "how many items match contains",
    "maxContains": "how many items match contains", "not": "a schema the value must not match", "if": "a conditional subschema",
    "then": "a conditional subschema", "else": "a conditional subschema", "dependentRequired": "properties required by others",
    "dependentSchemas": "subschemas applied by a property", "dependencies": "properties required by others",
    "patternProperties": "properties named by a pattern", "unevaluatedProperties": "properties no other keyword covers",
    "unevaluatedItems": "items no other keyword covers", "oneOf": "exactly one of several subschemas; anyOf is enforced",
    "allOf": "all of several subschemas",
}
# Where a schema holds schemas: keyword -> how (a schema, a list of them, a dict of them).
_SUBSCHEMAS = {
    "items": "one", "additionalItems": "one", "additionalProperties": "one", "propertyNames": "one", "not": "one", "if": "one",
    "then": "one", "else": "one", "contains": "one", "unevaluatedProperties": "one", "unevaluatedItems": "one",
    "prefixItems": "list", "allOf": "list", "anyOf": "list", "oneOf": "list",
    "properties": "dict", "patternProperties": "dict", "$defs": "dict", "definitions": "dict", "dependentSchemas": "dict",
}


def unenforced(schema, at: str = "") -> tuple[str, str] | None:
    """The first keyword of `schema` that decoding would not enforce (UNENFORCED, or an allOf of more than one
    schema, whose parts xgrammar does not merge), and where: ("properties.tags", "uniqueItems"); None if none."""
    if not isinstance(schema, dict):
        return None
    for key in schema:
        if key in UNENFORCED and key != "allOf" and schema[key] is not False:   # uniqueItems: false asks nothing
            return at, key
    if isinstance(schema.get("allOf"), list) and len(schema["allOf"]) > 1:
        return at, "allOf"
    for key, kind in _SUBSCHEMAS.items():
        value = schema.get(key)
        if kind == "one":
            parts = [(key, value)]
        elif kind == "list":
            parts = [(f"{key}[{i}]", v) for i, v in enumerate(value)] if isinstance(value, list) else []
        else:
            parts = [(f"{key}.{k}", v) for k, v in value.items()] if isinstance(value, dict) else []
        for where, part in parts:
            found = unenforced(part, f"{at}.{where}" if at else where)
            if found is not None:
                return found
    return None


class Grammars:
    """Compiled schemas for one tokenizer; the stop tokens (per template) end a complete reply."""

    def __init__(self, tokenizer, vocab_size: int):
        self.tokenizer, self.vocab_size = tokenizer, vocab_size
        self._compilers: dict[tuple[int, ...], object] = {}
        self._lock = threading.Lock()

    def compile(self, schema: dict | None, stop_token_ids: list[int]):
        """`schema` None: any JSON object (response_format json_object)."""
        try:
            import xgrammar
        except ImportError:
            raise SchemaError("constrained decoding needs xgrammar: pip install 'tunesmith[serve]'") from None
        found = None if schema is None else unenforced(schema)
        if found is not None:
            at, key = found
            raise SchemaError(
                f"the JSON schema cannot be used for decoding: {key!r}{' at ' + at if at else ''} ({UNENFORCED[key]}) is not enforced by the "
                "grammar, so a reply could break it; leave it out (and check it on the reply), or serve with the vLLM engine"
            )
        compiler = self._compiler(tuple(stop_token_ids))
        try:
            return compiler.compile_json_schema(json.dumps({"type": "object"} if schema is None else schema), any_whitespace=False)
        except (RuntimeError, ValueError, xgrammar.InvalidJSONError) as err:
            raise SchemaError(f"the JSON schema cannot be used for decoding: {str(err).strip().splitlines()[-1]}") from None

    def _compiler(self, stops: tuple[int, ...]):
        import xgrammar

        with self._lock:
            if stops not in self._compilers:
                info = xgrammar.TokenizerInfo.from_huggingface(self.tokenizer, vocab_size=self.vocab_size, stop_token_ids=list(stops) or None)
                self._compilers[stops] = xgrammar.GrammarCompiler(info)
            return self._compilers[stops]


def matcher(compiled):
    """The per-request state of a compiled grammar."""
    import xgrammar

    return xgrammar.GrammarMatcher(compiled)


def masked(logits, state):
    """A copy of one row's logits (V,) with the tokens the grammar forbids next at -inf."""
    import xgrammar

    bitmask = xgrammar.allocate_token_bitmask(1, logits.shape[-1])
    state.fill_next_token_bitmask(bitmask)
    row = logits.float().clone()[None]
    xgrammar.apply_token_bitmask_inplace(row, bitmask.to(row.device))
    return row[0]
