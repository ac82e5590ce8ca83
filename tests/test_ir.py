"""The IR: building, every pass, text dump, JSON round trip, the cost model and fusion."""
import pytest
import sympy

import ssmc
from ssmc.ir import cost
from ssmc.ir.build import build_graph
from ssmc.ir.graph import Graph
from ssmc.ir.ops import Fused, RecurrenceOp, Select
from ssmc.ir.pass_manager import PIPELINE, lower
from ssmc.ir.passes.complex_split import real_pair
from ssmc.ir.plans import ConvPlan, ScanPlan
from ssmc.ir.schedule import Schedule

SPECS = {
    "mamba": ssmc.presets.mamba(d_state=16),
    "s4d": ssmc.presets.s4d(64),
    "s4d_conv": ssmc.presets.s4d(64),
    "real_bilinear_scan": ssmc.SSM("rb", 4, discretization=ssmc.Bilinear()),
    "custom": ssmc.SSM("cu", 4, A=ssmc.Diagonal(real=False),
                       discretization=ssmc.Custom(decay="(1 + dt*A/2)/(1 - dt*A/2)", input_scale="dt"),
                       selective=("dt",), dt_softplus=True),
}
SCHEDULES = {"s4d_conv": "conv", "real_bilinear_scan": "scan"}     # the others: "auto"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_graph_json_round_trip_after_every_pass(name):
    lowered = lower(SPECS[name], SCHEDULES.get(name, "auto"))
    assert [n for n, _ in lowered.trace] == ["build"] + [n for n, _ in PIPELINE]
    again = Graph.from_json(lowered.graph.to_json())
    assert again.dump() == lowered.graph.dump()
    assert Schedule.from_json(lowered.schedule.to_json()) == lowered.schedule


def test_build_states_the_unfused_math():
    graph = build_graph(SPECS["mamba"])
    text = graph.dump()
    assert "discretize(%dt, %A)" in text and "recurrence(%disc:decay, %disc:input_scale, %B, %u, %C)" in text
    assert "softplus(delta + dt_bias)" in text
    (rec,) = graph.of_kind(RecurrenceOp)
    assert rec.recurrence.decay == "per_state" and rec.recurrence.state == ("state",)
    assert rec.recurrence.over == ("batch", "dim")
    assert [rec.recurrence.varies_over_time(n) for n in ("dt", "B", "C")] == [True, True, True]
    assert graph.op("last_state").inputs == ("y:final",)


def test_recurrence_finds_operands_by_role_and_records_time_invariance():
    graph = build_graph(SPECS["s4d"])
    (rec,) = graph.of_kind(RecurrenceOp)
    assert [rec.operand(r) for r in rec.ROLES] == ["disc:decay", "disc:input_scale", "B", "u", "C"]
    assert rec.real_part_doubled and not any(rec.recurrence.varies_over_time(n) for n in ("dt", "B", "C"))
    assert rec.recurrence.layout("B") == ("dim", "state")


def test_fusion_keeps_the_expanded_state_out_of_memory():
    # not even the unfused graph has a (batch, dim, len, state) sequence of states: the recurrence's
    # values are y and its last state; only the pointwise decay and scale are that large, and fusion
    # takes them into the kernel
    trace = dict(lower(SPECS["mamba"]).trace)
    lines = {line.split()[0]: line for line in trace["lower_discretization"].splitlines()[1:]}
    assert "real[batch, dim, len, state]" in lines["%decay"]
    assert "real[batch, dim, len] " in lines["%y"] and "recurrence(" in lines["%y"]
    graph = lower(SPECS["mamba"]).graph
    for op in graph.ops():
        assert op.shape is None or not {"batch", "dim", "len", "state"} <= set(op.shape)
    (fused,) = graph.of_kind(Fused)
    assert isinstance(fused.plan, ScanPlan)
    assert {"dt", "decay", "input_scale", "y", "y_skip", "y_gated"} == set(fused.members)


def test_selective_scan_cannot_be_a_convolution():
    with pytest.raises(ssmc.ScheduleError, match="time-invariant"):
        lower(SPECS["mamba"], schedule="conv")


def test_lti_auto_keeps_both_forms_behind_a_cost_predicate():
    graph = lower(SPECS["s4d"]).graph
    (select,) = graph.of_kind(Select)
    plans = {type(op.plan) for op in graph.of_kind(Fused)}
    assert plans == {ScanPlan, ConvPlan}
    small = {"batch": 1, "dim": 64, "len": 64, "state": 32}
    long = {"batch": 8, "dim": 256, "len": 8192, "state": 32}
    assert cost.evaluate(cost.conv_cost(True), long) < cost.evaluate(cost.scan_cost(True), long)
    assert cost.evaluate(cost.conv_cost(True), small) > cost.evaluate(cost.scan_cost(True), small)
    assert select.use_first.subs({sympy.Symbol(k, positive=True, integer=True): v for k, v in long.items()}) == sympy.true


def test_forced_conv_has_no_scan():
    graph = lower(SPECS["s4d_conv"], "conv").graph
    assert [type(op.plan) for op in graph.of_kind(Fused)] == [ConvPlan]
    (plan,) = [op.plan for op in graph.of_kind(Fused)]
    # ZOH: log(exp(dt A)) simplified to dt A, so the kernel never takes a log
    assert "log" not in str(dict(plan.kernel_block)["log_decay"])


def test_complex_split_matches_numeric_complex_arithmetic():
    A, dt = sympy.Symbol("A"), sympy.Symbol("dt", positive=True)
    expr = (sympy.exp(dt * A) - 1) / A
    re, im = real_pair(expr, {"A"})
    values = {sympy.Symbol("A_re", real=True): -0.3, sympy.Symbol("A_im", real=True): 2.0,
              sympy.Symbol("dt", real=True, positive=True): 0.1}
    exact = complex(expr.subs({A: -0.3 + 2.0j, dt: 0.1}).evalf())
    assert abs(complex(re.subs(values)) + 1j * complex(im.subs(values)) - exact) < 1e-12


def test_discretize_block_computes_one_exp_per_step():
    plan = lower(SPECS["mamba"]).graph.of_kind(Fused)[0].plan
    text = " ".join(str(e) for _, e in plan.discretize_block)
    assert text.count("exp") == 1


def test_dump_is_readable():
    text = lower(SPECS["s4d"]).dump()
    assert "== IR after fuse ==" in text and "cost[conv]" in text and "fuse scan_kernel" in text


def test_time_varying_readout_alone_rules_out_the_convolution():
    spec = ssmc.SSM("c_only", 4, selective=("C",))
    assert [d.algorithm for d in lower(spec).schedule.decisions] == ["scan"]
    with pytest.raises(ssmc.ScheduleError, match=r"the spec's selective=\('C',\) makes the readout \(C\) vary over "
                                                 r"time.* time-invariant layer \(selective=\(\)\); use schedule='scan' or 'auto'"):
        lower(spec, schedule="conv")


def test_conv_on_a_selective_spec_names_the_spec_fields_not_ir_values():
    with pytest.raises(ssmc.ScheduleError) as info:
        lower(SPECS["mamba"], schedule="conv")
    message = str(info.value)
    assert "selective=('dt', 'B', 'C')" in message and "decay" in message and "'scan' or 'auto'" in message
    assert "%" not in message and "len" not in message, message


def test_derive_backward_dump_shows_the_gradient_formulas_not_the_fuse_section_again():
    trace = dict(lower(SPECS["mamba"]).trace)
    fuse, backward = trace["fuse"], trace["derive_backward"]
    assert "discretize_block of %scan_kernel:" in fuse and "grad_" not in fuse
    assert "ops unchanged" in backward and "%u " not in backward
    for block, target in (("grad_epilogue_block", "grad_z = "), ("grad_discretize_block", "grad_A = "),
                          ("grad_dt_block", "grad_dt_bias = ")):
        assert f"{block} of %scan_kernel:" in backward and target in backward
    plan = lower(SPECS["mamba"]).graph.of_kind(Fused)[0].plan
    for target, expr in plan.grad_discretize_block:
        assert f"      {target} = {expr}" in backward


def test_use_expm1_rewrites_scaled_and_reordered_exp_minus_one():
    from ssmc.ir.functions import expm1, use_expm1
    a, dt = sympy.symbols("A dt", real=True)
    e = sympy.exp(a * dt)
    assert use_expm1((2 * e - 2) / a) == 2 * expm1(a * dt) / a
    assert use_expm1(1 - e) == -expm1(a * dt)
    assert use_expm1(3 * e - 3 + dt) == 3 * expm1(a * dt) + dt
    assert use_expm1(e / 2 - sympy.Rational(1, 2)) == expm1(a * dt) / 2
    assert use_expm1(e + 2) == e + 2 and use_expm1(2 * e - 1) == 2 * e - 1
    from ssmc.ir.passes.discretize import _rename
    custom = ssmc.Custom(decay="exp(dt*A)", input_scale="(2*exp(dt*A) - 2)/A")
    scale = _rename(custom.input_scale, "dt", "A", False)         # as the discretization pass writes it
    assert scale.atoms(expm1) and not scale.atoms(sympy.exp), scale


def test_ir_functions_has_one_registry_listing_every_ir_function():
    from ssmc.ir import functions, graph
    defined = {name for name, obj in vars(functions).items()
               if isinstance(obj, type) and issubclass(obj, sympy.Function) and obj.__module__ == functions.__name__}
    assert set(functions.IR_FUNCTIONS) == defined
    assert not hasattr(graph, "ir_functions")


def test_graph_copy_is_equal_and_independent():
    graph = build_graph(SPECS["mamba"])
    before = graph.dump()
    again = graph.copy()
    assert again.dump() == before and again.meta == graph.meta and again.meta is not graph.meta
    op = next(op for op in again.ops() if isinstance(op, ssmc.ir.ops.Elementwise))
    again.replace(op.replace(expr=op.expr + 1))
    again.add(ssmc.ir.ops.Elementwise("extra", inputs=(op.name,), dtype=op.dtype, expr=sympy.Symbol(op.name)))
    assert graph.dump() == before and again.dump() != before and "extra" not in graph
    assert [o.name for o in again.ops()][-1] == "extra"
