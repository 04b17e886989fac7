"""The GPU figures (`bash benchmarks/gpu.sh`), printed as one table at the end:

1. clip_service throughput in images/s, fp16: the model alone, and the service over gRPC
   (benchmarks.clip_throughput);
2. the CLIP side per segment at k = 1, 5, 11 texts, this project against the authors' way, both
   on the GPU (benchmarks.clip_side);
3. with --lvlm-model (a name or local folder) and vLLM installed: `vllm serve` started with the
   preset's flags, then LVLM calls/s and seconds per segment in each scoring mode
   (benchmarks.bench_lvlm against it); without them the row says why it was skipped.

    python -m benchmarks.gpu [--device cuda] [--video FILE] [--lvlm-model M] [--quick] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import torch

from benchmarks import bench_lvlm, clip_side, clip_throughput
from benchmarks.bench_segment import DEFAULT_VIDEO
from services.common.logs import configure_logging
from services.lvlm_service.presets import DEFAULT_PRESET, PRESETS

Row = tuple[str, str]  # (what, figure)
VLLM_PORT = 8765


@contextlib.contextmanager
def vllm_server(model: str, preset: str, ready_minutes: float) -> Iterator[str]:
    """`vllm serve` with the preset's flags, in its own process group (killed on the way out)."""
    args = PRESETS[preset].serve_args(VLLM_PORT)[3:]  # after `vllm serve MODEL`
    command = ["vllm", "serve", model, *args]
    print("starting:", " ".join(command), flush=True)
    process = subprocess.Popen(command, start_new_session=True)
    try:
        deadline = time.monotonic() + ready_minutes * 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"vllm serve exited with {process.returncode} before it was ready")
            with contextlib.suppress(OSError):
                urllib.request.urlopen(f"http://127.0.0.1:{VLLM_PORT}/health", timeout=2).close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"vllm serve was not ready within {ready_minutes:g} minutes")
            time.sleep(2)  # polling a process we do not control: no event to wait on
        yield f"http://127.0.0.1:{VLLM_PORT}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


async def clip_rows(device: str, quick: bool, video: Path) -> list[Row]:
    rows = [(f"clip_service, {what}", f"{rate:,.0f} images/s")
            for what, rate in await clip_throughput.measure(device, 2.0 if quick else 5.0, quick, video)]
    sides = await clip_side.measure(argparse.Namespace(
        video=video, models="tiny" if quick else "random", texts=[1, 5] if quick else [1, 5, 11],
        repeats=1 if quick else 3, reference_texts=1 if quick else 2, device=device, precision="auto",
        window_features=["crops", "dense"]))
    for side in sides:
        verdict = {"yes": "contexts same", "NO": "contexts DIFFER"}.get(side.same_contexts,
                                                                       f"vs the reference: {side.same_contexts}")
        rows.append((f"CLIP side per segment, k = {side.texts}, {side.features}: reference / project as chosen "
                     "(worst case)",
                     f"{side.reference_seconds * 1000:,.0f} / {side.chosen_seconds * 1000:,.0f} ms "
                     f"({side.worst_seconds * 1000:,.0f} ms): {side.reference_seconds / side.chosen_seconds:.1f}x "
                     f"({side.reference_seconds / side.worst_seconds:.1f}x), {verdict}"))
    return rows


async def lvlm_rows(url: str, model: str, concurrency: int, segments: int) -> list[Row]:
    rows = []
    for row in await bench_lvlm.run(0.0, 0.0, concurrency, segments, (url, model)):
        wall = float(row["wall_seconds"])  # type: ignore[arg-type]
        rows.append((f"LVLM, k = {row['texts']}, {row['mode']}: calls/s, s per segment",
                     f"{int(row['calls']) / wall:.1f} calls/s, {wall:.2f} s"))  # type: ignore[call-overload]
    return rows


def lvlm_skipped(args: argparse.Namespace) -> str:
    if not args.lvlm_model:
        return "skipped: no --lvlm-model (LVLM_MODEL) given"
    if importlib.util.find_spec("vllm") is None or shutil.which("vllm") is None:
        return "skipped: vLLM is not installed (no vllm module or command)"
    return ""


async def run(args: argparse.Namespace) -> list[Row]:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "no CUDA device"
    rows: list[Row] = [("device", f"{name}; torch {torch.__version__}")]
    rows += await clip_rows(args.device, args.quick, args.video)
    skipped = lvlm_skipped(args)
    if skipped:
        rows.append(("LVLM calls/s per mode", skipped))
    else:
        preset = args.lvlm_preset or (args.lvlm_model if args.lvlm_model in PRESETS else DEFAULT_PRESET)
        with vllm_server(args.lvlm_model, preset, args.ready_minutes) as url:
            rows += await lvlm_rows(url, args.lvlm_model, args.concurrency, 1 if args.quick else 3)
    return rows


def table(rows: list[Row]) -> str:
    width = max(len(what) for what, _ in rows)
    lines = [f"| {'what':<{width}} | figure |", f"|{'-' * (width + 2)}|--------|"]
    return "\n".join(lines + [f"| {what:<{width}} | {figure} |" for what, figure in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"), help="cpu: to check the script here")
    parser.add_argument("--video", type=Path, default=Path(os.environ.get("VIDEO", DEFAULT_VIDEO)),
                        help="a clip of at least 24 frames (VIDEO; default: a fixture beside the repository)")
    parser.add_argument("--lvlm-model", default=os.environ.get("LVLM_MODEL", ""),
                        help="the model vllm serve loads (a Hugging Face name or a local folder)")
    parser.add_argument("--lvlm-preset", default="", choices=("", *PRESETS),
                        help="whose flags to start it with (default: the model's own preset, else the default)")
    parser.add_argument("--concurrency", type=int, default=64, help="LVLM calls in flight")
    parser.add_argument("--ready-minutes", type=float, default=15.0, help="how long vllm serve may take to load")
    parser.add_argument("--quick", action="store_true", help="the tiny CLIP and fewer rows: a check that it runs")
    parser.add_argument("--output", type=Path, default=None, help="also write the table to this file")
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    rows = asyncio.run(run(args))
    print("\n" + table(rows), flush=True)
    if args.output:
        args.output.write_text(table(rows) + "\n")


if __name__ == "__main__":
    main()
