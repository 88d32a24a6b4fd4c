"""`python -m bench [NAME ...]`: run every `bench/bench_*.py` (or the named ones) and write results/latest.json.

Each benchmark module defines `run() -> list[dict]`: rows with at least `name`, `seconds`, and, where a
reference was timed in the same run, `reference`, `reference_seconds` and `ratio` (ours / reference).
"""

import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent


def main(names: list[str]) -> int:
    modules = sorted(p.stem for p in HERE.glob("bench_*.py"))
    selected = [m for m in modules if not names or m.removeprefix("bench_") in names or m in names]
    if not selected:
        print("no benchmarks yet: add bench/bench_<name>.py with a run() -> list[dict]")
    rows: list[dict] = []
    for name in selected:
        start = time.perf_counter()
        for row in importlib.import_module(f"bench.{name}").run():
            rows.append({"benchmark": name, **row})
        print(f"{name}: {time.perf_counter() - start:.1f} s")
    print(f"{'benchmark':<24} {'case':<40} {'seconds':>9} {'ratio':>7}")
    for row in rows:
        ratio = f"{row['ratio']:.3g}" if "ratio" in row else ""
        seconds = f"{row['seconds']:.2f}" if row["seconds"] >= 0.01 else f"{row['seconds']:.1e}"
        print(f"{row['benchmark']:<24} {row['name']:<40} {seconds:>9} {ratio:>7}")
    out = HERE / "results" / "latest.json"
    out.parent.mkdir(exist_ok=True)
    machine = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
               "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}
    out.write_text(json.dumps({"machine": machine, "rows": rows}, indent=2) + "\n")
    print(f"wrote {out.relative_to(HERE.parent)}")
    return 0


sys.exit(main(sys.argv[1:]))
