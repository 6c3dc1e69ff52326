"""Command line: ``burstkern info`` and ``burstkern demo`` (also ``python -m burstkern ...``)."""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def info(argv: Optional[List[str]] = None) -> int:
    from . import info as _info

    return _info.main(argv)


def demo(argv: Optional[List[str]] = None) -> int:
    from . import demo as _demo  # models and data load only when asked for

    return _demo.main(argv)


USAGE = """usage: burstkern {info,demo} [options]

  info   versions, compiled extension, op x backend availability (with the reason when unavailable)
  demo   E-BSRD on the held-out bundled image: PSNR / SSIM / LPIPS and time per stage (--help for options)"""


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {"info": info, "demo": demo}
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(USAGE, file=sys.stderr if argv and argv[0] not in ("-h", "--help") else sys.stdout)
        return 0 if not argv or argv[0] in ("-h", "--help") else 2
    return commands[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
