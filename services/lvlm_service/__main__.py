"""python -m services.lvlm_service --help"""

from __future__ import annotations

import asyncio
import logging
import sys

from services.common.errors import ModelLoadError
from services.common.logs import configure_logging
from services.lvlm_service import config


def main(argv: list[str] | None = None) -> int:
    settings = config.load(argv)  # before the heavy imports, so --help is quick
    configure_logging("lvlm_service", settings.log_level, settings.log_format)
    from services.common.server import serve
    from services.lvlm_service.server import build_service

    try:
        spec, _ = build_service(settings)
    except ModelLoadError as error:  # a setting is missing: say which, before binding anything
        logging.getLogger("anyanomaly.lvlm").error(str(error))
        return 2
    return asyncio.run(serve(spec, settings))


if __name__ == "__main__":
    sys.exit(main())
