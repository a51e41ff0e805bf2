"""``icone bench`` and ``icone speed``: grids of runs and their reports, and step timings.

- :mod:`icone.bench.grid`: the grid spec, presets and each cell's config;
- :mod:`icone.bench.cells`: running a grid (each cell an ordinary run folder) and writing its reports;
- :mod:`icone.bench.report`, :mod:`icone.bench.plots`: ``results.csv/json``, ``summary.md``, the plots;
- :mod:`icone.bench.measure`: peak memory, the machine, timings;
- :mod:`icone.bench.speed_spec`, :mod:`icone.bench.speed`, :mod:`icone.bench.speed_report`: what is
  timed, the speed harness, and its table.
"""

from icone.bench.cells import run_bench
from icone.bench.grid import BenchSpec, Cell, build_spec
from icone.bench.speed import run_speed
from icone.bench.speed_spec import SpeedSpec, build_speed_spec

__all__ = ["BenchSpec", "Cell", "SpeedSpec", "build_spec", "build_speed_spec", "run_bench", "run_speed"]
