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
    (dict(name="not a name"), "name must be an ASCII Python identifier"),
    (dict(A="diag"), "A must be ssmc.Diagonal"),
    (dict(A=ssmc.Scalar()), "A=Scalar()"),
    (dict(discretization="rk4"), "discretization must be one of"),
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


@pytest.mark.parametrize("make, message", [
    (lambda: ssmc.SSM(name="x", d_sate=8), "SSM: unknown field 'd_sate'; did you mean 'd_state'?"),
    (lambda: ssmc.SSM("x", 8, dt_softpuls=True), "did you mean 'dt_softplus'?"),
    (lambda: ssmc.presets.mamba().replace(d_sate=8), "SSM: unknown field 'd_sate'; did you mean 'd_state'?"),
    (lambda: ssmc.Diagonal(reel=False), "Diagonal: unknown field 'reel'; did you mean 'real'?"),
    (lambda: ssmc.Custom(decay="exp(dt*A)", input_scal="dt"),
     "Custom: unknown field 'input_scal'; did you mean 'input_scale'?"),
    (lambda: ssmc.ZOH(order=2), "ZOH: unknown field 'order'"),
    (lambda: ssmc.SISO(headdim=4), "SISO: unknown field 'headdim'"),
    (lambda: ssmc.SSM(d_state=8), "SSM: missing required field(s) name"),
    (lambda: ssmc.SSM(), "SSM: missing required field(s) name, d_state"),
    (lambda: ssmc.Custom("exp(dt*A)"), "Custom: missing required field(s) input_scale"),
    (lambda: ssmc.SSM("x", 8, name="y"), "SSM: field 'name' given both by position and by keyword"),
    (lambda: ssmc.Diagonal(True, False), "Diagonal takes at most 1 positional argument(s) (real), got 2"),
])
def test_misspelt_missing_or_doubled_fields_are_spec_errors(make, message):
    with pytest.raises(ssmc.SpecError) as info:
        make()
    assert message in str(info.value)


@pytest.mark.parametrize("name", ["ñame", "层", "x" * 65, "x" * 229, "", "class", 3])
def test_names_are_short_ascii_identifiers(name):
    with pytest.raises(ssmc.SpecError, match="name must be an ASCII Python identifier of at most 64"):
        ssmc.SSM(name, 4)


def test_longest_name_is_accepted():
    assert ssmc.SSM("x" * 64, 4).name == "x" * 64


@pytest.mark.parametrize("preset", ["mamba", "s4d", "dss"])
def test_presets_name_a_misspelt_argument(preset):
    with pytest.raises(ssmc.SpecError, match=r"unknown field 'd_sate'; did you mean 'd_state'"):
        getattr(ssmc.presets, preset)(d_sate=8)


MOVED_SCHEDULE = ("schedule is a compile option, not part of the layer: use ssmc.compile(spec, schedule=...) "
                  "/ ssmc compile --schedule")


@pytest.mark.parametrize("make, owner", [
    (lambda: ssmc.SSM("x", 8, schedule="conv"), "SSM"),
    (lambda: ssmc.SSM("x", 8, selective=("dt",), schedule="scan"), "SSM"),
    (lambda: ssmc.presets.s4d(8).replace(schedule="scan"), "SSM"),
    (lambda: ssmc.presets.s4d(8, schedule="conv"), "ssmc.presets.s4d"),
    (lambda: ssmc.presets.dss(8, schedule="auto"), "ssmc.presets.dss"),
])
def test_schedule_moved_out_of_the_spec_says_where(make, owner):
    """The schedule was a spec field; a spec (or preset call) still passing it is told where it went,
    not just 'unknown field'."""
    with pytest.raises(ssmc.SpecError) as info:
        make()
    assert str(info.value) == f"{owner}: {MOVED_SCHEDULE}"
