"""The DSL refuses invalid specs with messages naming the field and what was expected."""
import pytest
import sympy

import ssmc


def test_valid_specs_hash_stably():
    a = ssmc.presets.mamba(d_state=16)
    b = ssmc.SSM("mamba", 16, A=ssmc.Diagonal(real=True), discretization=ssmc.MambaZOH(),
                 selective=("C", "B", "dt"), gate=True, dt_softplus=True, dt_bias=True)
    assert a.selective == ("dt", "B", "C") == b.selective
    assert a.content_hash() == b.content_hash()
    assert a.content_hash() != a.replace(d_state=8).content_hash()


@pytest.mark.parametrize("kwargs, message", [
    (dict(d_state=-3), "d_state must be a positive int, got -3"),
    (dict(d_state=2.5), "d_state must be a positive int"),
    (dict(selective=("E",)), "unknown quantity 'E', expected one of dt, B, C"),
    (dict(selective=("dt", "dt")), "listed twice"),
    (dict(name="not a name"), "name must be a Python identifier"),
    (dict(A="diag"), "A must be ssmc.Diagonal"),
    (dict(A=ssmc.Scalar()), "A=Scalar()"),
    (dict(discretization="rk4"), "discretization must be one of"),
    (dict(schedule="fast"), "schedule must be one of"),
    (dict(schedule="conv", selective=("dt",)), "schedule='conv' needs a time-invariant layer"),
    (dict(groups=2), "groups=2 only applies to input-dependent B or C"),
    (dict(groups=0, selective=("B",)), "groups must be a positive int"),
    (dict(skip_D="yes"), "skip_D must be a bool"),
])
def test_invalid_specs_are_refused(kwargs, message):
    base = dict(name="layer", d_state=4)
    base.update(kwargs)
    with pytest.raises(ssmc.SpecError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ssmc.SSM(**base)


def test_diagonal_real_must_be_bool():
    with pytest.raises(ssmc.SpecError, match="Diagonal.real must be a bool"):
        ssmc.Diagonal(real="no")


def test_custom_discretization_parses_and_checks_symbols():
    custom = ssmc.Custom(decay="exp(dt*A)", input_scale="dt/(1 - dt*A/2)")
    decay, scale = custom.formulas()
    assert isinstance(decay, sympy.Expr) and {s.name for s in scale.free_symbols} == {"dt", "A"}
    with pytest.raises(ssmc.SpecError, match=r"Custom.decay: unknown symbols \['x'\]"):
        ssmc.Custom(decay="exp(x)", input_scale="dt")
    with pytest.raises(ssmc.SpecError, match="Custom.input_scale: cannot parse"):
        ssmc.Custom(decay="exp(dt*A)", input_scale="dt*(")


def test_presets():
    assert ssmc.presets.s4d(64).d_state == 32 and ssmc.presets.s4d(64).is_complex
    assert ssmc.presets.dss(16).is_lti
    assert not ssmc.presets.mamba().is_lti
