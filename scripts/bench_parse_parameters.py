"""Time the PNG `parameters` parser on adversarial 64 KiB chunks (a benchmark, not a test).
Usage: PYTHONPATH=. python scripts/bench_parse_parameters.py [bench/results/parse-parameters.json]

Each chunk is MAX_CHUNK_CHARS long and built to hurt a backtracking parser: long runs of
spaces inside a setting, settings with no value, thousands of colons and commas, many lines,
a huge number. The target is under 50 ms per chunk (the parser reads the capped text in one
pass); a chunk twice as long must cost no more, since it is capped before parsing.
"""

import json
import platform
import sys
import time
from pathlib import Path

from fp8pipe.metadata import MAX_CHUNK_CHARS, form_fields

N = MAX_CHUNK_CHARS


def chunks() -> dict[str, str]:
    head = "a red ball\nNegative prompt: x\n"
    return {
        "spaces inside a setting": head + "Steps: 1, A" + " " * N + "!",
        "spaces without a colon": head + "Steps" + " " * N,
        "colons": head + "Steps:" + ":" * N,
        "commas": head + "Steps: 1" + "," * N,
        "key-value pairs": head + "Steps: 1, " + "a: b, " * (N // 6),
        "lines": "\n".join(["Negative prompt: x"] * (N // 19)) + "\nSteps: 1",
        "a huge number": head + "Steps: " + "9" * N,
        "twice the cap": head + "Steps: 1, A" + " " * (2 * N) + "!",
    }


def main(out: str = "bench/results/parse-parameters.json") -> None:
    results = {}
    for name, text in chunks().items():
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            form_fields(text)
            best = min(best, time.perf_counter() - start)
        results[name] = {"chars": len(text), "best_of_5_ms": round(best * 1000, 3)}
        print(f"{name:26s} {len(text):7d} chars  {best * 1000:8.3f} ms")
    worst = max(r["best_of_5_ms"] for r in results.values())
    record = {
        "command": "PYTHONPATH=. python scripts/bench_parse_parameters.py",
        "machine": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "cap_chars": MAX_CHUNK_CHARS,
        "target_ms": 50,
        "worst_ms": worst,
        "under_target": worst < 50,
        "chunks": results,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(record, indent=2) + "\n")
    print(f"worst {worst:.3f} ms (target < 50 ms); wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
