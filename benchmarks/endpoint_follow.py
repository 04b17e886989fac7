"""How fast a pool follows a Kubernetes Service's pods: from an EndpointSlice written to the API
to the pool's endpoint set changing (a pod added, then marked terminating).

The API is kmock's emulator on 127.0.0.1 (the test double of tests/integration/test_discovery.py),
so this is the watcher's and the pool's own delay plus one local HTTP hop, not a real API
server's fan-out (typically tens of milliseconds more).

    python -m benchmarks.endpoint_follow [--changes 50]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from anyanomaly.v1 import lvlm_pb2_grpc
from services.common.balancing import EndpointPool, open_pool
from services.common.config import set_environment
from services.common.logs import configure_logging
from tests.helpers.kubernetes_api import READY, TERMINATING, kubernetes_api


async def run(changes: int) -> None:
    with tempfile.TemporaryDirectory() as folder:
        async with kubernetes_api(Path(folder)) as cluster:
            set_environment("KUBECONFIG", str(cluster.kubeconfig))
            await cluster.put_slice("lvlm-0", "lvlm", 50053, {"10.0.0.1": READY})
            pool = await open_pool("lvlm_service", "kubernetes:///lvlm.default:grpc", lvlm_pb2_grpc.LvlmServiceStub)
            assert await pool.wait_until(lambda p: p.addresses == {"10.0.0.1:50053"}, 10)
            delays: dict[str, list[float]] = {"added": [], "terminating": []}
            for i in range(changes):
                endpoint = f"10.0.1.{i % 250 + 1}"
                for kind, state in (("added", READY), ("terminating", TERMINATING)):
                    started = time.perf_counter()
                    await cluster.put_slice("lvlm-x", "lvlm", 50053, {endpoint: state})
                    assert await pool.wait_until(partial(_has, f"{endpoint}:50053", state == READY), 10)
                    delays[kind].append(time.perf_counter() - started)
                await cluster.delete_slice("lvlm-x")
            await pool.close()
    print(f"slice written -> pool changed, {changes} changes of each kind (ms):")
    print(f"{'change':<12} {'median':>8} {'p95':>8} {'max':>8}")
    for kind, values in delays.items():
        ordered = sorted(values)
        print(f"{kind:<12} {statistics.median(ordered) * 1000:>8.1f} "
              f"{ordered[int(0.95 * (len(ordered) - 1))] * 1000:>8.1f} {ordered[-1] * 1000:>8.1f}")


def _has(address: str, wanted: bool, pool: EndpointPool[Any]) -> bool:
    return (address in pool.addresses) == wanted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--changes", type=int, default=50)
    args = parser.parse_args()
    configure_logging("bench", "WARNING", "text")
    asyncio.run(run(args.changes))


if __name__ == "__main__":
    main()
