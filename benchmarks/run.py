"""Run the benchmarks: print a table per benchmark and write ``<out>/<name>.json``.

    python benchmarks/run.py                       # every benchmark, tiny preset, CPU or CUDA
    python benchmarks/run.py --only sampling,training --preset sd15 --dtype bf16

Each benchmark is a module ``bench_<name>.py`` in this folder with ``run(args) -> dict``; the
dict holds ``name``, ``settings``, ``environment``, ``rows`` (the table: a list of flat dicts)
and ``summary`` (the headline figures). Options are in ``presets.add_arguments``.
"""

import argparse
import importlib
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import presets  # noqa: E402

BENCHMARKS: dict[str, str] = {
    "core": "bench_core",
    "sampling": "bench_sampling",
    "training": "bench_training",
    "epoch": "bench_epoch",
    "memory": "bench_memory",
    "flops": "bench_flops",
}


def available() -> list[str]:
    """The benchmarks whose module is present in this folder."""
    return [name for name, module in BENCHMARKS.items() if (HERE / f"{module}.py").is_file()]


def _format(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format(v)}" for k, v in value.items())
    return str(value)


def print_result(result: dict[str, Any]) -> None:
    """Print a benchmark's rows and summary as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = Console(width=max(Console().width, 120))
    settings = result.get("settings", {})
    title = f"{result['name']}: " + ", ".join(f"{k}={_format(v)}" for k, v in settings.items())
    rows = result.get("rows", [])
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    table = Table(title=title, title_justify="left")
    for column in columns:
        table.add_column(column, justify="left" if column in ("contender", "phase") else "right")
    for row in rows:
        table.add_row(*(_format(row.get(column)) for column in columns))
    console.print(table)
    summary = result.get("summary", {})
    if summary:
        console.print("  " + "; ".join(f"{k}: {_format(v)}" for k, v in summary.items()))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--only",
        default=",".join(available()),
        help=f"comma-separated benchmarks among {','.join(available())} (default: all)",
    )
    parser.add_argument("--out", default=str(HERE / "out"), help="folder for the JSON results")
    presets.add_arguments(parser)
    args = parser.parse_args(argv)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in available()]
    if unknown or not names:
        parser.error(f"--only: unknown benchmark(s) {unknown}; choose among {available()}")
    args.only = names
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.only:
        module = importlib.import_module(BENCHMARKS[name])
        start = time.perf_counter()
        result = module.run(args)
        result["wall_s"] = time.perf_counter() - start
        (out / f"{name}.json").write_text(json.dumps(result, indent=2, default=str) + "\n")
        print_result(result)
        print(f"  ({name}: {result['wall_s']:.1f} s, written to {out / f'{name}.json'})\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
