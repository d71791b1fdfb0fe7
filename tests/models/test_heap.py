"""tunesmith.models.heap: free heap pages go back to the system once enough of them are resident."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from tunesmith.models import heap

pytestmark = pytest.mark.skipif(heap._libc is None, reason="glibc only")


TRIM = """
import torch
from tunesmith.models import heap

# share 0: the threshold is the slack alone
trimmer = heap.Trimmer(slack=32 * 2**20, share=0)
trimmer()
assert trimmer.trims == 0  # nothing freed yet
# 100 KB blocks come from the heap (below glibc's mmap threshold); every other one is freed, and the blocks
# kept between them keep the holes from merging into the top of the heap, which glibc would give back itself
blocks = [torch.ones(25_000) for _ in range(2400)]
before = heap._resident()
kept = blocks[1::2]
del blocks
assert heap._resident() > before - 20 * 2**20  # freed, but still resident
trimmer()
assert trimmer.trims == 1 and heap._resident() < before - 80 * 2**20
trimmer()
assert trimmer.trims == 1  # released pages no longer count as resident
print("trimmed")
"""


def test_trimming_releases_the_free_pages_between_live_blocks():
    # In a fresh interpreter: a long test session's heap already holds free resident pages, which the new blocks
    # reuse, so what a Trimmer made there counts as freed is not the test's alone.
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", TRIM], capture_output=True, text=True, timeout=120,
                          env=os.environ | {"PYTHONPATH": str(root)})
    assert done.returncode == 0 and done.stdout.strip() == "trimmed", done.stdout + done.stderr


def test_decoder_layers_on_the_cpu_are_hooked(stories_path):
    model = AutoModelForCausalLM.from_pretrained(stories_path, dtype=torch.float32)
    assert heap.trim_between_layers(model) == model.config.num_hidden_layers
    assert all(len(layer._forward_hooks) == 1 for layer in model.model.layers)
    with torch.device("meta"):
        on_meta = AutoModelForCausalLM.from_config(model.config)
    assert heap.trim_between_layers(on_meta) == 0
