"""python -m services.context_service --help"""

from __future__ import annotations

import asyncio
import sys

from services.common.logs import configure_logging
from services.common.server import serve
from services.context_service import config
from services.context_service.server import build_service


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)
    configure_logging("context_service", settings.log_level, settings.log_format)
    spec, _ = build_service(settings)
    return asyncio.run(serve(spec, settings))


if __name__ == "__main__":
    sys.exit(main())
