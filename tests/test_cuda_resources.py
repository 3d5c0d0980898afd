"""ptxas resource report (``python -m spikescan.cuda --resources``): the log parser on logs captured from NVRTC 12.9,
and the whole report when NVRTC is importable (no GPU needed)."""

from __future__ import annotations

import json

import pytest

from spikescan.cuda import __main__ as cli
from spikescan.cuda import _kernels, _resources

QUEUE = "_Z21spikescan_delay_queueIdEvPKT_PKxS4_S2_xxxxxPS0_Pi"
BACKWARD = ("_Z22spikescan_lif_backwardIf13spikescan_lifEvPKdPKiPKxS2_S2_S2_S2_xxxxxxxxxS2_S6_S6_PKT_xPdSA_iSA_iSA_SA_"
            "iSA_SA_SA_")
STEP = "_Z26spikescan_lif_forward_stepIf13spikescan_lifEvPKdPKiPKxS2_S2_S2_S2_ixxxxxxxxPdS7_S7_S7_S7_PxPT_S8_S7_S7_"

# queue.cu for sm_80, verbatim (NVRTC's log ends with a NUL).
QUEUE_LOG_SM80 = (
    "ptxas info    : 0 bytes gmem\n"
    f"ptxas info    : Compiling entry function '{QUEUE}' for 'sm_80'\n"
    f"ptxas info    : Function properties for {QUEUE}\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 38 registers, used 1 barriers, 440 bytes cmem[0]\n"
    "ptxas info    : Compile time = 51.740 ms\n\x00")

# lif_backward.cu for sm_80 (one kernel: a stack frame, two constant banks) and lif_forward.cu for sm_90 (one
# kernel: ptxas names no cmem for sm_90).
BACKWARD_LOG_SM80 = (
    f"ptxas info    : Compiling entry function '{BACKWARD}' for 'sm_80'\n"
    f"ptxas info    : Function properties for {BACKWARD}\n"
    "ptxas         .     1024 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 118 registers, used 0 barriers, 1024 bytes cumulative stack size, 608 bytes cmem[0], "
    "160 bytes cmem[2]\n"
    "ptxas info    : Compile time = 359.538 ms\n")
STEP_LOG_SM90 = (
    "ptxas info    : 0 bytes gmem\n"
    f"ptxas info    : Compiling entry function '{STEP}' for 'sm_90'\n"
    f"ptxas info    : Function properties for {STEP}\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Used 84 registers, used 0 barriers\n"
    "ptxas info    : Compile time = 528.388 ms\n")

# A small kernel built to exercise the rest of the format (static __shared__ tile, local array, a __noinline__
# callee, --maxrregcount=32 forcing spills), NVRTC 12.9, sm_80.
HEAVY_LOG_SM80 = (
    "ptxas info    : Overriding maximum register limit 256 for '_Z5heavyIfEvPKT_PS0_i' with  32 of maxrregcount "
    "option\n"
    "ptxas info    : Overriding maximum register limit 256 for '_Z5heavyIdEvPKT_PS0_i' with  32 of maxrregcount "
    "option\n"
    "ptxas info    : 0 bytes gmem\n"
    "ptxas info    : Compiling entry function '_Z5heavyIfEvPKT_PS0_i' for 'sm_80'\n"
    "ptxas info    : Function properties for _Z5heavyIfEvPKT_PS0_i\n"
    "ptxas         .     544 bytes stack frame, 36 bytes spill stores, 52 bytes spill loads\n"
    "ptxas info    : Used 32 registers, used 1 barriers, 544 bytes cumulative stack size, 1024 bytes smem, "
    "372 bytes cmem[0]\n"
    "ptxas info    : Compile time = 99.824 ms\n"
    "ptxas info    : Function properties for _Z6calleePKdi\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"
    "ptxas info    : Compiling entry function '_Z5heavyIdEvPKT_PS0_i' for 'sm_80'\n"
    "ptxas info    : Function properties for _Z5heavyIdEvPKT_PS0_i\n"
    "ptxas         .     688 bytes stack frame, 224 bytes spill stores, 368 bytes spill loads\n"
    "ptxas info    : Used 32 registers, used 1 barriers, 688 bytes cumulative stack size, 2048 bytes smem, "
    "372 bytes cmem[0]\n"
    "ptxas info    : Compile time = 120.335 ms\n"
    "ptxas info    : Function properties for _Z6calleePKdi\n"
    "ptxas         .     0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\x00")


def test_parse_captured_logs():
    funcs = _resources.parse_ptxas_log(QUEUE_LOG_SM80 + BACKWARD_LOG_SM80 + STEP_LOG_SM90)
    assert set(funcs) == {QUEUE, BACKWARD, STEP}
    assert funcs[QUEUE] == dict(entry=True, arch="sm_80", registers=38, spill_store_bytes=0, spill_load_bytes=0,
                                stack_frame_bytes=0, cumulative_stack_bytes=0, shared_bytes=0, const_banks={0: 440},
                                barriers=1)
    assert funcs[BACKWARD]["registers"] == 118 and funcs[BACKWARD]["stack_frame_bytes"] == 1024
    assert funcs[BACKWARD]["cumulative_stack_bytes"] == 1024 and funcs[BACKWARD]["const_banks"] == {0: 608, 2: 160}
    assert funcs[STEP]["arch"] == "sm_90" and funcs[STEP]["registers"] == 84 and funcs[STEP]["const_banks"] == {}

    heavy = _resources.parse_ptxas_log(HEAVY_LOG_SM80)
    f, d = heavy["_Z5heavyIfEvPKT_PS0_i"], heavy["_Z5heavyIdEvPKT_PS0_i"]
    assert (f["registers"], f["spill_store_bytes"], f["spill_load_bytes"], f["stack_frame_bytes"],
            f["shared_bytes"], f["const_banks"]) == (32, 36, 52, 544, 1024, {0: 372})
    assert (d["spill_store_bytes"], d["spill_load_bytes"], d["stack_frame_bytes"], d["shared_bytes"]) == \
        (224, 368, 688, 2048)
    # The callee's properties follow an entry's "Used" line; they are its own and do not overwrite the entry's.
    callee = heavy["_Z6calleePKdi"]
    assert not callee["entry"] and callee["registers"] == 0 and callee["stack_frame_bytes"] == 0
    assert _resources.parse_ptxas_log("") == {} and _resources.parse_ptxas_log("warning: something\n") == {}


def test_rows_table_and_json_from_a_captured_log(tmp_path, monkeypatch):
    # QUEUE_LOG_SM80 was captured when queue.cu had this one kernel (now it has the counting sort too).
    monkeypatch.setitem(_kernels.MODULES, "queue", ("spikescan_delay_queue",))
    rows = _resources.rows_for("queue", "80", QUEUE_LOG_SM80, {"spikescan_delay_queue<double>": QUEUE})
    assert rows == [dict(module="queue", kernel="spikescan_delay_queue", dtype="float64",
                         name_expression="spikescan_delay_queue<double>", arch="sm_80", mangled=QUEUE, registers=38,
                         spill_store_bytes=0, spill_load_bytes=0, stack_frame_bytes=0, cumulative_stack_bytes=0,
                         shared_bytes=0, barriers=1, const_bytes=440, const_banks={"0": 440}, const_source="ptxas")]
    with pytest.raises(KeyError, match="spikescan_delay_queue<double>"):
        _resources.rows_for("queue", "80", BACKWARD_LOG_SM80, {"spikescan_delay_queue<double>": QUEUE})
    text = _resources.table(rows)
    assert "spikescan_delay_queue<double>" in text and " 38 " in text

    monkeypatch.setattr(_resources, "resources", lambda archs: rows)
    out = tmp_path / "res.json"
    assert cli.main(["--resources", "--arch", "80", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kernels"] == rows and "commit" in report["stamp"] and "nvrtc" in report
    assert report["options"]["sm_80"][-2:] == ["-arch=sm_80", _resources.PTXAS_VERBOSE]


def test_every_instantiation_has_a_resource_row_with_nvrtc():
    if _kernels.nvrtc_module() is None:
        pytest.skip("NVRTC is not available")
    archs = ("80", "90")
    rows = _resources.resources(archs)
    by_key = {(r["name_expression"], r["arch"]): r for r in rows}
    expected = {(e, f"sm_{a}") for m in _kernels.MODULES for e in _kernels.name_expressions(m) for a in archs}
    assert set(by_key) == expected and len(rows) == len(expected)
    for row in rows:
        for field in _resources.FIELDS:
            assert isinstance(row[field], int) and row[field] >= 0, (row["name_expression"], row["arch"], field)
        assert row["const_bytes"] > 0  # the kernel parameters live in constant bank 0, on sm_90 too
    for arch in archs:
        assert by_key[("spikescan_lif_forward_scan<double, spikescan_lif>", f"sm_{arch}")]["registers"] > 0
    assert {r["const_source"] for r in rows if r["arch"] == "sm_80"} == {"ptxas"}
    # The launch bound of the fused forward kernel (lif_forward.cu) holds it at 80 registers without spilling.
    for dtype in ("float", "double"):
        for arch in archs:
            row = by_key[(f"spikescan_lif_forward_sequential<{dtype}, spikescan_lif>", f"sm_{arch}")]
            assert row["registers"] <= 80 and row["spill_store_bytes"] == row["spill_load_bytes"] == 0, row


def test_forward_launch_bound_matches_the_launcher():
    # Launching more threads per block than __launch_bounds__ allows fails on the GPU; the host emulation ignores
    # the attribute, so this is checked here.
    import re

    from spikescan.cuda import _lif

    src = _kernels.source("lif_forward")
    bound = int(re.search(r"#define SPIKESCAN_FORWARD_THREADS (\d+)", src).group(1))
    assert _lif.THREADS_PER_BLOCK <= bound
    assert "SPIKESCAN_FORWARD_BOUNDS spikescan_lif_forward_sequential(" in src


def _warps_per_block(registers):
    """Warps of a block that fit the 64K 32-bit registers a block may hold on sm_80 / sm_90 (registers are allocated
    per warp in units of 256); a launch of more fails with 'too many resources requested for launch', which the host
    emulation (no registers) cannot show."""
    per_warp = -(-registers * 32 // 256) * 256
    return 65536 // per_warp


def test_recurrent_block_sizes_the_launcher_accepts_fit_the_register_file():
    """The recurrent kernels take any block size ``_recurrent._check_block`` accepts (``block_size`` of
    ``_recurrent.forward`` / ``backward``): each must fit the register file at the kernels' register counts."""
    if _kernels.nvrtc_module() is None:
        pytest.skip("NVRTC is not available")
    from spikescan.cuda import _recurrent

    rows = _resources.resources(("80", "90"), modules=("recurrent",))
    per_block = {"spikescan_recurrent_forward", "spikescan_recurrent_backward_spikes"}  # the block = sample kernels
    accepted = []
    for block in range(32, 1025, 32):
        try:
            accepted.append(_recurrent._check_block(block))
        except ValueError:
            pass
    assert _recurrent.MAX_BLOCK in accepted
    for row in rows:
        if row["kernel"] in per_block:
            fits = _warps_per_block(row["registers"]) * 32
            assert max(accepted) <= fits, (row["name_expression"], row["arch"], row["registers"], max(accepted))
