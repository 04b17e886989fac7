"""python -m services.orchestrator --help"""

from __future__ import annotations

import asyncio
import sys

from services.common.logs import configure_logging
from services.common.server import serve
from services.orchestrator import config
from services.orchestrator.server import build_service


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)
    configure_logging("orchestrator", settings.log_level, settings.log_format)
    return asyncio.run(serve(build_service(settings), settings))


if __name__ == "__main__":
    sys.exit(main())
