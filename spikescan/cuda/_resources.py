"""ptxas resource usage of every kernel instantiation: registers, spills, stack, shared and constant memory.

``python -m spikescan.cuda --resources [--arch 80 90] [--json FILE]`` compiles every module to CUBIN for each real
architecture with NVRTC alone (no GPU, no driver), with the same options as the run-time compilation plus
``--ptxas-options=-v``, and reads ptxas' ``info`` lines from the program log:

    ptxas info    : Compiling entry function '_Z21spikescan_delay_queueIdEv...' for 'sm_80'
    ptxas info    : Function properties for _Z21spikescan_delay_queueIdEv...
    ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
    ptxas info    : Used 38 registers, used 1 barriers, 440 bytes cmem[0]

``parse_ptxas_log`` turns such a log into one record per (mangled) function; ``resources`` maps the entry functions
back to their name expressions (``spikescan_lif_forward_scan<double, spikescan_lif>``) with NVRTC's lowered names
and returns one row per instantiation and architecture. Fields ptxas leaves out are zero (it prints no ``smem``
without static shared memory). ptxas of CUDA 12 prints no ``cmem`` for sm_90; there the constant bank sizes are
read from the CUBIN's ``.nv.constant<bank>.<function>`` sections instead (``const_source``: ``"ptxas"`` or
``"cubin"``; for sm_80 the two agree). Dynamic shared memory is a launch parameter and appears nowhere here.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import re
import struct

from . import _kernels

PTXAS_VERBOSE = "--ptxas-options=-v"

# Integer fields of a row, in table order.
FIELDS = ("registers", "spill_store_bytes", "spill_load_bytes", "stack_frame_bytes", "cumulative_stack_bytes",
          "shared_bytes", "const_bytes", "barriers")

_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\w+)'")
_PROPERTIES = re.compile(r"Function properties for (\S+)")
_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_USED = re.compile(r"Used (\d+) registers")
_ITEMS = {
    "barriers": re.compile(r"used (\d+) barriers"),
    "cumulative_stack_bytes": re.compile(r"(\d+) bytes cumulative stack size"),
    "shared_bytes": re.compile(r"(\d+) bytes smem"),
}
_CMEM = re.compile(r"(\d+) bytes cmem\[(\d+)\]")


def _record():
    return dict(entry=False, arch=None, registers=0, spill_store_bytes=0, spill_load_bytes=0, stack_frame_bytes=0,
                cumulative_stack_bytes=0, shared_bytes=0, const_banks={}, barriers=0)


def parse_ptxas_log(log):
    """``{mangled name: record}`` from the ``ptxas info`` lines of ``log`` (an NVRTC program log).

    A record has ``entry`` (a ``__global__`` function, named by a ``Compiling entry function`` line), ``arch``
    (``"sm_80"``), ``registers``, ``barriers``, ``spill_store_bytes``, ``spill_load_bytes``, ``stack_frame_bytes``,
    ``cumulative_stack_bytes``, ``shared_bytes`` (static ``smem``) and ``const_banks`` (``{bank: bytes}`` of the
    ``cmem[bank]`` items). Non-entry functions (``__noinline__`` callees) get a record with their stack frame and
    spills only. Lines that are not ptxas information (warnings, compile times) are ignored.
    """
    functions = {}
    entry = None  # the entry function whose "Used ..." line comes next
    target = None  # the function whose "stack frame" line comes next
    for line in log.replace("\x00", "").splitlines():
        m = _ENTRY.search(line)
        if m:
            entry = m.group(1)
            rec = functions.setdefault(entry, _record())
            rec.update(entry=True, arch=m.group(2))
            continue
        m = _PROPERTIES.search(line)
        if m:
            target = m.group(1)
            functions.setdefault(target, _record())
            continue
        m = _FRAME.search(line)
        if m and target is not None:
            rec = functions[target]
            rec["stack_frame_bytes"], rec["spill_store_bytes"], rec["spill_load_bytes"] = map(int, m.groups())
            target = None
            continue
        m = _USED.search(line)
        if m and entry is not None:
            rec = functions[entry]
            rec["registers"] = int(m.group(1))
            for key, pattern in _ITEMS.items():
                item = pattern.search(line)
                if item:
                    rec[key] = int(item.group(1))
            rec["const_banks"] = {int(bank): int(size) for size, bank in _CMEM.findall(line)}
            entry = None
    return functions


def _elf_sections(image):
    """``{section name: size}`` of an ELF64 little-endian image (a CUBIN)."""
    if image[:4] != b"\x7fELF" or image[4] != 2:
        raise ValueError("not an ELF64 image")
    shoff, = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", image, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]  # sh_offset of the section-name table
    out = {}
    for name_off, _type, _flags, _addr, _offset, size in headers:
        start = names + name_off
        out[image[start:image.index(b"\0", start)].decode()] = size
    return out


def cubin_const_banks(image, mangled):
    """``{bank: bytes}`` of ``mangled``'s constant sections (``.nv.constant<bank>.<mangled>``) in a CUBIN."""
    out = {}
    for name, size in _elf_sections(bytes(image)).items():
        m = re.fullmatch(r"\.nv\.constant(\d+)\." + re.escape(mangled), name)
        if m:
            out[int(m.group(1))] = size
    return out


def compile_resources(module, arch, nvrtc=None):
    """Compile ``module`` to CUBIN for ``sm_<arch>`` with ptxas' verbose output.

    Returns ``(log, {name expression: mangled name}, cubin bytes)``; RuntimeError with the log when it fails."""
    nvrtc = _kernels.require_nvrtc(nvrtc)
    with _kernels.nvrtc_program(module, options(arch), nvrtc) as (prog, error):
        if error is not None:
            raise RuntimeError(f"{module}.cu sm_{arch}: {error}")
        lowered = {e: nvrtc.getLoweredName(prog, e) for e in _kernels.name_expressions(module)}
        return nvrtc.getProgramLog(prog), lowered, bytes(nvrtc.getCUBIN(prog))


def options(arch):
    """NVRTC options of the resource report: the run-time ones, a real architecture (CUBIN) and ptxas -v."""
    return (*_kernels.OPTIONS, *_kernels._CUPY_IMPLICIT_OPTIONS, f"-arch=sm_{arch}", PTXAS_VERBOSE)


def rows_for(module, arch, log, lowered, cubin=None):
    """One row per name expression of ``module`` from a compilation's log (``parse_ptxas_log``), its lowered names
    and, optionally, its CUBIN (constant banks where the log names none). KeyError when the log lacks a kernel."""
    functions = parse_ptxas_log(log)
    rows = []
    for kernel in _kernels.MODULES[module]:
        for dtype in _kernels.MODULE_DTYPES.get(module, _kernels.DTYPES):
            expr = _kernels.name_expression(module, kernel, dtype)
            mangled = lowered[expr]
            rec = functions.get(mangled)
            if rec is None or not rec["entry"]:
                raise KeyError(f"ptxas reported nothing for {expr} ({mangled}) in {module}.cu sm_{arch}")
            banks, source = rec["const_banks"], "ptxas"
            if not banks and cubin is not None:
                banks, source = cubin_const_banks(cubin, mangled), "cubin"
            row = dict(module=module, kernel=kernel, dtype=dtype, name_expression=expr, arch=f"sm_{arch}",
                       mangled=mangled)
            row.update({k: rec[k] for k in FIELDS if k != "const_bytes"})
            row.update(const_bytes=sum(banks.values()), const_banks={str(b): n for b, n in sorted(banks.items())},
                       const_source=source)
            rows.append(row)
    return rows


def resources(archs=("80", "90"), modules=None, nvrtc=None):
    """Rows (dicts, see ``rows_for``) for every instantiation of every module (default: all) and architecture, the
    architectures of one instantiation next to each other."""
    archs = tuple(str(a) for a in archs)
    nvrtc = _kernels.require_nvrtc(nvrtc)
    rows = []
    for module in modules or _kernels.MODULES:
        found = []
        for arch in archs:
            log, lowered, cubin = compile_resources(module, arch, nvrtc)
            found.extend(rows_for(module, arch, log, lowered, cubin))
        order = {e: i for i, e in enumerate(_kernels.name_expressions(module))}
        rows.extend(sorted(found, key=lambda r: (order[r["name_expression"]], archs.index(r["arch"][3:]))))
    return rows


def table(rows):
    """The rows as a fixed-width text table (one line per instantiation and architecture)."""
    head = ("kernel", "arch", "regs", "spill st", "spill ld", "stack", "smem", "cmem", "bar")
    body = [(r["name_expression"], r["arch"], r["registers"], r["spill_store_bytes"], r["spill_load_bytes"],
             r["stack_frame_bytes"], r["shared_bytes"], r["const_bytes"], r["barriers"]) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = []
    for i, cells in enumerate([head, *body]):
        lines.append("  ".join(str(c).ljust(w) if j < 2 else str(c).rjust(w)
                               for j, (c, w) in enumerate(zip(cells, widths))).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append("bytes: spill stores/loads, stack frame, static shared (smem) and constant (cmem, all banks) memory; "
                 "bar: named barriers")
    return "\n".join(lines)


def stamp():
    """Provenance of a report: ``benchmarks/_stamp.py``'s ``stamp()`` in a repository checkout, else the time only
    (an installed package has no commit to name)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    path = os.path.join(root, "benchmarks", "_stamp.py")
    if os.path.isfile(path):
        spec = importlib.util.spec_from_file_location("spikescan_benchmarks_stamp", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module.stamp()
    return dict(commit=None, time_utc=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))


def report(rows, archs, nvrtc=None):
    """The JSON-ready report: ``stamp`` (commit, machine, versions), ``nvrtc`` version, compile options, rows."""
    nvrtc = nvrtc or _kernels.nvrtc_module()
    version = ".".join(map(str, nvrtc.getVersion())) if nvrtc is not None else None
    return dict(benchmark="ptxas_resources", stamp=stamp(), nvrtc=version,
                options={f"sm_{a}": list(options(a)) for a in archs}, fields=list(FIELDS), kernels=rows)


def write_json(rows, archs, path, nvrtc=None):
    data = report(rows, archs, nvrtc)  # stamped before the file is opened: truncating it made the tree dirty
    with open(path, "w") as f:
        json.dump(data, f, indent=2)
        f.write("\n")
