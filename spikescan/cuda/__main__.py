"""``python -m spikescan.cuda --check [--arch 80 90]``: compile every CUDA kernel with NVRTC (no GPU needed)."""

from __future__ import annotations

import argparse
import sys

from . import _kernels


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spikescan.cuda", description=__doc__)
    parser.add_argument("--check", action="store_true", help="compile all kernels for the given architectures")
    parser.add_argument("--arch", nargs="+", default=["80", "90"], help="compute capabilities (default: 80 90)")
    args = parser.parse_args(argv)
    if not args.check:
        parser.print_help()
        return 2
    try:
        failures = _kernels.check(tuple(args.arch))
    except RuntimeError as exc:
        print(f"compile check failed: {exc}", file=sys.stderr)
        return 1
    print("all kernels compiled" if failures == 0 else f"{failures} compilation(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
