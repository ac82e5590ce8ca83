"""Fusion: each recurrence and everything pointwise around it becomes one kernel.

The scan kernel takes dt's expression, the discretization, the recurrence, the readout and the
epilogue (skip, gate), so that the (batch, dim, len, state) tensors of the unfused graph — decay,
input and every state — are never written to memory (Mamba's hardware-aware idea). The
convolution kernel takes the per-(dim, state) prologue, the Vandermonde kernel, the FFT
convolution and the same epilogue. The result is a plan per kernel (ir.plans), the backends'
whole contract.
"""
from __future__ import annotations

import sympy

from ...errors import ScheduleError
from ..graph import Graph
from ..ops import Elementwise, FFTConv, Fused, Input, KernelGen, Output, Param, RecurrenceOp, Select
from ..plans import ConvPlan, ScanPlan


def _sym(name: str) -> sympy.Symbol:
    return sympy.Symbol(name, real=True)


def _parts(op: Elementwise) -> tuple:
    return op.parts if op.parts is not None else (op.expr, sympy.S.Zero)


def _cse_block(targets: list) -> tuple:
    """Straight-line assignments with common subexpressions (e.g. one exp) computed once."""
    names = [t for t, _ in targets]
    replacements, reduced = sympy.cse([e for _, e in targets], symbols=sympy.numbered_symbols("tmp"))
    return tuple((str(s), e) for s, e in replacements) + tuple(zip(names, reduced))


def _epilogue(graph: Graph, start: str) -> tuple:
    """Follow the chain of pointwise ops from `start` to the Output; compose them into one
    expression of y (the kernel's readout or convolution) and the epilogue's other inputs."""
    members, expr, current = [], _sym("y"), start
    while True:
        users = [op for op in graph.users(current) if current in op.inputs]   # of the value, not its ports
        if len(users) != 1 or not isinstance(users[0], Elementwise):
            break
        op = users[0]
        expr = op.expr.xreplace({s: (expr if s.name == current else _sym(s.name)) for s in op.expr.free_symbols})
        members.append(op.name)
        current = op.name
    inputs = tuple(sorted({s.name for s in expr.free_symbols} - {"y"}))
    return tuple(members), current, (("out", expr),), inputs


def _roles(graph: Graph, names) -> set:
    """The spec roles (dt_bias, D, z, ...) of the inputs and params among `names`: flags are set by
    what an operand is, never by what it is called."""
    return {graph.op(n).role for n in names if isinstance(graph.op(n), (Input, Param))}


def _kernel_inputs(graph: Graph, names) -> tuple:
    ordered = [op.name for op in graph.ops() if isinstance(op, (Input, Param)) and op.name in set(names)]
    return tuple(ordered)


def _retarget_outputs(graph: Graph, mapping: dict) -> None:
    for op in graph.of_kind(Output) + graph.of_kind(Select):
        inputs = tuple(mapping.get(v, v) for v in op.inputs)
        if inputs != op.inputs:
            graph.replace(op.replace(inputs=inputs))


def fuse(graph: Graph, ctx) -> Graph:
    selects = graph.of_kind(Select)
    # the epilogue starts after the Select (it is fused into both alternatives) or after the readout
    recurrences, convs = graph.of_kind(RecurrenceOp), graph.of_kind(FFTConv)
    for rec in recurrences:
        epi_end = _fuse_scan(graph, ctx, rec, selects)
    for conv in convs:
        epi_end = _fuse_conv(graph, ctx, conv, selects)
    if selects:
        # both alternatives now carry the epilogue: the Select's choice is the layer's output
        for op in graph.of_kind(Output):
            if op.inputs == (epi_end,):
                graph.replace(op.replace(inputs=(selects[0].name,)))
    graph.remove_dead()
    _check_no_expanded_state(graph)
    return graph


def _fuse_scan(graph, ctx, rec: RecurrenceOp, selects):
    """The recurrence with its dt, discretization and epilogue as one ScanPlan; operands by role, and
    which of them vary over time from the Recurrence's layouts."""
    decay, scale = graph.op(rec.operand("decay")), graph.op(rec.operand("input_scale"))
    dt = graph.op(decay.inputs[0])
    start = selects[0].name if selects else rec.name
    epi_members, epi_end, epilogue, epi_inputs = _epilogue(graph, start)
    complex_state = rec.dtype == "pair"
    if complex_state:
        targets = list(zip(("decay_re", "decay_im"), _parts(decay))) + list(zip(("scale_re", "scale_im"), _parts(scale)))
    else:
        targets = [("decay", decay.expr), ("scale", scale.expr)]
    structure = rec.recurrence
    plan = ScanPlan(
        complex=complex_state, selective_dt=structure.varies_over_time("dt"),
        selective_B=structure.varies_over_time("B"), selective_C=structure.varies_over_time("C"),
        has_dt_bias="dt_bias" in _roles(graph, dt.inputs), has_D="D" in _roles(graph, epi_inputs),
        has_z="z" in _roles(graph, epi_inputs), direction=rec.direction,
        dt_block=(("dt", dt.expr),), discretize_block=_cse_block(targets), epilogue_block=epilogue)
    members = (dt.name, decay.name, scale.name, rec.name) + epi_members
    inputs = _kernel_inputs(graph, set(dt.inputs) | set(decay.inputs)
                            | {rec.operand("B"), rec.operand("C"), rec.operand("u")} | set(epi_inputs))
    name = "scan_kernel"
    graph.add(Fused(name, inputs=inputs, plan=plan, members=members, outputs=(("y", ("batch", "dim", "len")), ("last_state", ("batch", "dim", "state")))))
    _retarget_outputs(graph, {rec.name if selects else epi_end: f"{name}:y", f"{rec.name}:final": f"{name}:last_state"})
    # candidate axes; ir/tuning_space.py plans the configs from them and the spec's state size
    # (the decoding step's channel block reaches down to 1: one program per block and batch element, so
    # small blocks are what fill a GPU at small decode batches)
    ctx.schedule = ctx.schedule.with_fusion(name, members).with_tunables(
        name, {"BLOCK_D": [8, 16, 32, 64, 128], "num_warps": [1, 2, 4, 8]}).with_tunables(
        # the time-parallel kernels' tiles are one state's: wide channel blocks; the backward's time block is
        # the checkpoint chunk (not tuned)
        "scan_tiled_bwd_kernel", {"BLOCK_D": [1, 2, 4, 8, 16], "num_warps": [1, 2, 4, 8]}
    ).with_tunables(
        "scan_tiled_fwd_kernel", {"BLOCK_D": [1, 2, 4, 8, 16], "BLOCK_T": [16, 32, 64, 128, 256],
                                  "num_warps": [1, 2, 4, 8]}
    ).with_tunables("scan_step_kernel", {"BLOCK_D": [1, 2, 4, 8, 16, 32, 64, 128, 256], "num_warps": [1, 2, 4, 8]})
    return epi_end


def _fuse_conv(graph, ctx, conv, selects):
    kernel = graph.op(conv.inputs[1])
    log_decay, coeff = (graph.op(v) for v in kernel.inputs)
    dt = graph.op(log_decay.inputs[0])
    start = selects[0].name if selects else conv.name
    epi_members, epi_end, epilogue, epi_inputs = _epilogue(graph, start)
    # The prologue is (dim, state)-sized and runs on the host in torch's complex arithmetic, where
    # the unsplit form is both exact and shorter; only the Vandermonde kernel sees real pairs.
    targets = [("log_decay", log_decay.expr), ("coeff", coeff.expr)]
    complex_state = next(op for op in graph.of_kind(Param) if op.role == "A").dtype == "pair"
    plan = ConvPlan(complex=complex_state, has_dt_bias="dt_bias" in _roles(graph, dt.inputs),
                    has_D="D" in _roles(graph, epi_inputs), has_z="z" in _roles(graph, epi_inputs), dt_block=(("dt", dt.expr),), kernel_block=_cse_block(targets),
                    epilogue_block=epilogue)
    members = (dt.name, log_decay.name, coeff.name, kernel.name, conv.name) + epi_members
    inputs = _kernel_inputs(graph, set(dt.inputs) | set(log_decay.inputs) | set(coeff.inputs)
                            | {conv.inputs[0]} | set(epi_inputs))
    name = "conv_kernel"
    graph.add(Fused(name, inputs=inputs, plan=plan, members=members, outputs=(("y", ("batch", "dim", "len")),)))
    _retarget_outputs(graph, {conv.name if selects else epi_end: f"{name}:y"})
    ctx.schedule = ctx.schedule.with_fusion(name, members).with_tunables(
        name, {"BLOCK_L": [64, 128, 256], "BLOCK_N": [16, 32, 64]})
    return epi_end


def _check_no_expanded_state(graph: Graph) -> None:
    for op in graph.ops():
        if isinstance(op, Fused) or op.shape is None:
            continue
        if {"batch", "dim", "len", "state"} <= set(op.shape):
            raise ScheduleError(f"fusion left %{op.name} {op.shape} in memory: "
                                f"the expanded state must stay inside a kernel")
