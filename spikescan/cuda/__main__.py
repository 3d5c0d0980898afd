"""``python -m spikescan.cuda --check [--arch 80 90]``: compile every CUDA kernel with NVRTC (no GPU needed).

``python -m spikescan.cuda --resources [--arch 80 90] [--json FILE]``: compile every kernel to CUBIN with ptxas'
verbose output and print, per instantiation and architecture, its registers, spill stores/loads, stack frame,
static shared and constant memory (``--json``: write them, stamped with the commit and the NVRTC version).
"""

from __future__ import annotations

import argparse
import sys

from . import _kernels


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m spikescan.cuda", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="compile all kernels for the given architectures")
    parser.add_argument("--resources", action="store_true",
                        help="report ptxas resource usage (registers, spills, stack, smem, cmem) of every kernel")
    parser.add_argument("--arch", nargs="+", default=["80", "90"], help="compute capabilities (default: 80 90)")
    parser.add_argument("--json", metavar="FILE", help="with --resources: write the report as JSON to FILE")
    args = parser.parse_args(argv)
    if not (args.check or args.resources):
        parser.print_help()
        return 2
    if args.json and not args.resources:
        parser.error("--json needs --resources")
    archs = tuple(a.removeprefix("sm_") for a in args.arch)
    status = 0
    if args.check:
        try:
            failures = _kernels.check(archs)
        except RuntimeError as exc:
            print(f"compile check failed: {exc}", file=sys.stderr)
            return 1
        print("all kernels compiled" if failures == 0 else f"{failures} compilation(s) failed")
        status = 1 if failures else 0
    if args.resources:
        from . import _resources

        try:
            rows = _resources.resources(archs)
        except (RuntimeError, KeyError) as exc:
            print(f"resource report failed: {exc}", file=sys.stderr)
            return 1
        print(_resources.table(rows))
        if args.json:
            _resources.write_json(rows, archs, args.json)
            print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())
