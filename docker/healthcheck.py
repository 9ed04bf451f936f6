#!/usr/bin/env python3
"""Container healthcheck: exit 0 when the server's ``GET /readyz`` answers 200, else 1.

Installed in the images as ``maskrt-healthcheck`` (Dockerfile HEALTHCHECK, docker-compose.yml).
Standard library only, so the slim image needs no curl. Asks 127.0.0.1 on ``MASKRT_PORT`` and
never goes through an HTTP proxy that the container's environment may name.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request


def main() -> int:
    port = os.environ.get("MASKRT_PORT", "8000")
    url = f"http://127.0.0.1:{port}/readyz"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(
            url, timeout=float(os.environ.get("MASKRT_HEALTHCHECK_TIMEOUT_S", "4"))
        ) as r:
            if r.status == 200:
                return 0
            print(f"{url}: HTTP {r.status}")
    except urllib.error.HTTPError as exc:
        print(f"{url}: HTTP {exc.code} (not ready)")
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
