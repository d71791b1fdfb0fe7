"""tunesmith: from raw data to a served, fine-tuned open LLM.

Heavy libraries (torch, transformers) are imported inside the functions that need them, so that
`import tunesmith` and `tunesmith --help` stay instant.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
