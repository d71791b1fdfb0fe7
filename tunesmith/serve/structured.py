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
