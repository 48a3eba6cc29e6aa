"""Why rotation helps (or not): distribution statistics and significance tests.

``python -m compsrt.analysis distributions``: every quantized weight and every activation entering a
quantizer of an FP model, captured on real images, before and after the Hadamard rotation, with
per-tensor statistics and paired tests across tensors (the paper's Table 1, its epsilon table
and Figure 2). ``python -m compsrt.analysis significance A.json B.json``: paired tests between
two ``python -m compsrt.eval --json`` results (the paper's Table 5). Results: docs/analysis.md.

Modules: :mod:`.paired` (the paired tests both use), :mod:`.stream` (statistics of a tensor
streamed in chunks), :mod:`.capture` (which tensors, and hooks that feed them),
:mod:`.distributions`, :mod:`.significance`.
"""
