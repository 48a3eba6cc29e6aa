"""The README's table of bundled models from their evaluation files (docs/bundled/<name>_x<s>.json).

    python -m compsrt.eval --model swinir_light_x2_w4 --scale 2 --data ../shared/data/benchmark \\
        --sets Set5 Set14 B100 --json docs/bundled/swinir_light_x2_w4_x2.json      # per model
    python benchmarks/bundled_table.py                                             # the table
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from compsrt.load import bundled_models, checkpoint_kind

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    rows = ["| model | scale | bits | pruned | bytes | x FP32 size | Set5 PSNR / SSIM | Set14 | B100 |",
            "|---|---|---|---|---|---|---|---|---|"]
    models = bundled_models()
    for name, path in models.items():
        m = re.fullmatch(r"swinir_light_x(\d)(?:_w(\d))?(_p40)?", name)
        if not m:
            continue
        scale, bits, pruned = m.group(1), m.group(2), bool(m.group(3))
        ev = ROOT / "docs" / "bundled" / f"{name}_x{scale}.json"
        if not ev.is_file():
            continue
        res = json.loads(ev.read_text())["results"]
        fp = models[f"swinir_light_x{scale}"].stat().st_size
        cells = [f"{res[s]['psnr_db']:.3f} / {res[s]['ssim']:.4f}" if s in res else "-" for s in ("Set5", "Set14", "B100")]
        kind = checkpoint_kind(path)
        rows.append(f"| `{name}` | x{scale} | {'W' + bits + 'A' + bits if bits else 'FP32'} | {'40%' if pruned else '-'} | "
                    f"{path.stat().st_size:,} | {path.stat().st_size / fp:.3f} | " + " | ".join(cells) + " |")
        assert bits is None or kind == "compsrt-packed", name
    print("\n".join(rows))


if __name__ == "__main__":
    main()
