"""Every performance figure in one run on this machine (`make bench`):

1. the CLIP side per segment at k = 1, 5, 11 texts, this project against the authors' way of
   computing the same contexts (benchmarks.clip_side), as ratios; with window crops (parity) and
   with dense window features (opt-in, and how far its contexts are from the reference's);
2. Detect end to end, frames per second with the tiny models and with an LVLM of fixed latency,
   against the LVLM concurrency bound (benchmarks.end_to_end);
3. peak resident memory of every process for a 1-minute and a 10-minute source (same);
4. LVLM calls, prompt and answer tokens and images per segment for every scoring mode
   (benchmarks.bench_lvlm).

    python -m benchmarks [--quick]

--quick: the same sections, smaller (the tiny CLIP, k = 1 and 5, 0.2- and 0.5-minute sources),
to check that the benchmark runs; its figures are not the ones to quote.
"""

from __future__ import annotations

import argparse
import asyncio
import platform
import time

import torch

from benchmarks import bench_lvlm, clip_side, end_to_end
from benchmarks.bench_segment import DEFAULT_VIDEO
from services.common.logs import configure_logging


def heading(title: str) -> None:
    print(f"\n## {title}\n", flush=True)


async def run(quick: bool) -> None:
    started = time.perf_counter()
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    heading("1. CLIP side per segment: this project vs the authors' way")
    await clip_side.measure(argparse.Namespace(
        video=DEFAULT_VIDEO, models="tiny" if quick else "random", texts=[1, 5] if quick else [1, 5, 11],
        repeats=1 if quick else 2, reference_texts=1 if quick else 2, device="cpu",
        precision="auto", window_features=["crops", "dense"]))
    heading("2. Detect end to end (tiny CLIP) against the LVLM concurrency bound")
    await end_to_end.print_throughput([200.0] if quick else [200.0, 1000.0])
    heading("3. Peak resident memory per process")
    await end_to_end.print_peak_memory([0.2, 0.5] if quick else [1.0, 10.0])
    heading("4. LVLM work per segment in each scoring mode (TimedLLM, 200 ms a call)")
    await bench_lvlm.run(0.2, 0.0, 16, 1 if quick else 3)
    print(f"\nthe whole benchmark took {time.perf_counter() - started:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    asyncio.run(run(args.quick))


if __name__ == "__main__":
    main()

