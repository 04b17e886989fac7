"""python -m services.clip_service --help"""

from __future__ import annotations

import asyncio
import sys

from services.clip_service import config
from services.common.logs import configure_logging


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)  # before the heavy imports, so --help is quick
    configure_logging("clip_service", settings.log_level, settings.log_format)
    from services.clip_service.server import build_service
    from services.common.server import serve

    spec, _ = build_service(settings)
    return asyncio.run(serve(spec, settings))


if __name__ == "__main__":
    sys.exit(main())
