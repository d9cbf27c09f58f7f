"""Run ddpo's benchmarks, print a table per benchmark and write one JSON file each.

    python benchmarks/run.py [--preset default|tiny|tiny-sdxl|tiny-sd3|tiny-flux|sd15|sdxl|sd3|flux
        |qwenimage|wan-1.3b|wan-14b|tiny-qwenimage|tiny-wan] [--only core,sampling]

A benchmark is a module ``benchmarks/bench_<name>.py`` with a function ``run(args) -> dict``
(``args`` the parsed command line: ``preset``, ``device``, ``out`` and the model-benchmark
options of ``presets.add_arguments``) returning::

    {"title": str, "columns": [str, ...], "rows": [{column: value, ...}, ...], "notes": [str]}

(model benchmarks add ``name``, ``settings``, ``environment`` and ``summary``). Adding a
benchmark is adding such a module; ``--only`` picks benchmarks by ``<name>``. The benchmarks of
``OPT_IN`` take minutes and run only when ``--only`` names them: ``ablation`` (the trainer's
epochs with each throughput switch of ``DDPOConfig`` added in turn, graph breaks and host
syncs) and ``sweep`` (sampling and training batch sizes)::

    python benchmarks/run.py --preset tiny --only ablation,sweep
    python benchmarks/run.py --preset sd15 --device cuda --only ablation

Presets: ``default`` (core at realistic shapes, model benchmarks on the tiny model: the CPU run
of ``nox -s bench``), ``tiny`` (core at smoke sizes, model benchmarks on the tiny model),
``tiny-sdxl``, ``tiny-sd3``, ``tiny-flux`` (model benchmarks on the tiny SDXL, SD3, FLUX.1
models, CPU; core at smoke sizes), ``sd15``, ``sdxl``, ``sd3`` and ``flux`` (model benchmarks on
the Stable Diffusion 1.5 / SDXL base / SD3.5 Medium / FLUX.1-dev architectures with random
weights, for a GPU: ``--device cuda``; core at its realistic shapes). ``window`` runs on the flow
presets only. ``qwenimage``, ``wan-1.3b`` and ``wan-14b`` (Qwen-Image, Wan2.1 1.3B and 14B at their
stock sizes) and ``tiny-qwenimage``, ``tiny-wan`` run ``--only flops`` (counted on the ``meta``
device: no weights, seconds on a CPU).
"""

import argparse
import importlib.util
import json
import platform
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

from rich.console import Console
from rich.table import Table

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the model benchmarks import their shared helpers by name
    sys.path.insert(0, str(HERE))

import presets  # noqa: E402

PRESET_CHOICES = (
    "default",
    "tiny",
    "tiny-sdxl",
    "tiny-sd3",
    "tiny-flux",
    "sd15",
    "sdxl",
    "sd3",
    "flux",
    "qwenimage",
    "wan-1.3b",
    "wan-14b",
    "tiny-qwenimage",
    "tiny-wan",
)
CORE_PRESET = {name: "tiny" if name.startswith("tiny") else "default" for name in PRESET_CHOICES}
#: Benchmarks left out of the default ``--only`` (they take minutes): run when named.
OPT_IN = ("ablation", "sweep")


def available() -> dict[str, Path]:
    """Benchmark name -> module path, for every ``bench_<name>.py`` next to this file."""
    return {p.stem.removeprefix("bench_"): p for p in sorted(HERE.glob("bench_*.py"))}


def load(name: str, path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"ddpo_bench_{name}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    names = available()
    defaults = [name for name in names if name not in OPT_IN]
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--preset",
        choices=PRESET_CHOICES,
        default="default",
        help="'default' (CPU run), 'tiny' (quick smoke run), 'tiny-sdxl' / 'tiny-sd3' / "
        "'tiny-flux' (the tiny SDXL, SD3, FLUX.1 models, CPU), 'sd15' / 'sdxl' / 'sd3' / 'flux' "
        "(SD 1.5 / SDXL base / SD3.5 Medium / FLUX.1-dev sizes, for a GPU), 'qwenimage' / "
        "'wan-1.3b' / 'wan-14b' / 'tiny-qwenimage' / 'tiny-wan' (--only flops)",
    )
    parser.add_argument(
        "--only",
        default=",".join(defaults),
        help=f"comma-separated benchmarks to run (default: {', '.join(defaults)}; opt-in: "
        f"{', '.join(OPT_IN)})",
    )
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder for JSON results")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    presets.add_arguments(parser)
    args = parser.parse_args(argv)
    args.only = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in args.only if n not in names]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; available: {sorted(names)}")
    return args


def show(console: Console, result: dict[str, Any]) -> None:
    table = Table(title=result["title"], title_justify="left")
    for column in result["columns"]:
        table.add_column(column, justify="left" if column == result["columns"][0] else "right")
    for row in result["rows"]:
        table.add_row(*(_fmt(row.get(c)) for c in result["columns"]))
    console.print(table)
    for note in result.get("notes", []):
        console.print(f"  {note}")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:  # NaN: not measured
            return "-"
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.3g}"
    return "" if value is None else str(value)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    console = Console(width=None if sys.stdout.isatty() else 140)
    args.out.mkdir(parents=True, exist_ok=True)
    names = available()
    failed = []
    for name in args.only:
        start = time.perf_counter()
        bench_args = argparse.Namespace(**vars(args))
        if name == "core":
            bench_args.preset = CORE_PRESET[args.preset]
        try:
            result = load(name, names[name]).run(bench_args)
        except Exception:  # one broken benchmark should not hide the others' results
            console.print_exception()
            failed.append(name)
            continue
        result["meta"] = {
            "benchmark": name,
            "preset": args.preset,
            "device": args.device,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "seconds": round(time.perf_counter() - start, 2),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        show(console, result)
        path = args.out / f"{name}.json"
        path.write_text(json.dumps(result, indent=2, default=str) + "\n")
        console.print(f"  wrote {path} ({result['meta']['seconds']} s)")
    if failed:
        console.print(f"[red]failed: {', '.join(failed)}[/red]")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
