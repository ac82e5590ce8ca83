"""The SSD references: the chunked stages against the sequential recurrence, and the sequential
recurrence against the materialised sum it is meant to compute, so that neither is trusted alone."""
import math

import pytest
import torch

from ssmc.reference_ssd import (
    chunk_cumsum_ref, chunk_state_ref, ssd_chunked_ref, ssd_sequential_ref, state_passing_ref,
)

F64 = torch.float64
TOL = 1e-10


def rel(out, ref):
    assert torch.isfinite(out).all(), "NaN/inf"
    return ((out - ref).norm() / ref.norm().clamp_min(1e-300)).item()


def make_inputs(seed, batch=2, length=13, heads=4, P=3, N=5, groups=1, D=None, z=False,
                dt_bias=False, init=False, dA_max=2.0):
    """Fresh inputs; dt is positive unless a bias + softplus will make it so."""
    g = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, dtype=F64)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=F64)

    inputs = dict(
        x=randn(batch, length, heads, P),
        dt=randn(batch, length, heads) if dt_bias else 0.2 + 0.8 * rand(batch, length, heads),
        A=-(0.1 + (dA_max - 0.1) * rand(heads)),
        B=randn(batch, length, groups, N),
        C=randn(batch, length, groups, N),
    )
    if D == "heads":
        inputs["D"] = randn(heads)
    elif D == "heads_P":
        inputs["D"] = randn(heads, P)
    if z:
        inputs["z"] = randn(batch, length, heads, P)
    if dt_bias:
        inputs["dt_bias"] = randn(heads)
        inputs["dt_softplus"] = True
    if init:
        inputs["initial_states"] = randn(batch, heads, P, N)
    return inputs


CASES = {
    "multiple_of_chunk": dict(length=16, chunk=4),
    "ragged": dict(length=13, chunk=4),
    "shorter_than_chunk": dict(length=3, chunk=8),
    "one_step": dict(length=1, chunk=4),
    "groups": dict(length=11, chunk=4, groups=2),
    "D_per_head": dict(length=10, chunk=4, D="heads"),
    "D_per_head_and_P": dict(length=10, chunk=4, D="heads_P"),
    "z_gate": dict(length=10, chunk=4, z=True),
    "dt_bias_softplus": dict(length=10, chunk=4, dt_bias=True),
    "dt_limit": dict(length=10, chunk=4, dt_bias=True, dt_limit=(0.3, 0.9)),
    "initial_states": dict(length=10, chunk=4, init=True),
    "everything": dict(length=19, chunk=8, groups=2, D="heads_P", z=True, dt_bias=True,
                       dt_limit=(0.05, 1.5), init=True),
}


def split_case(case, seed):
    case = dict(case)
    chunk, dt_limit = case.pop("chunk"), case.pop("dt_limit", None)
    inputs = make_inputs(seed, **case)
    if dt_limit is not None:
        inputs["dt_limit"] = dt_limit
    return inputs, chunk


@pytest.mark.parametrize("name", list(CASES))
def test_chunked_equals_sequential(name):
    inputs, chunk = split_case(CASES[name], seed=len(name))
    y_seq, h_seq = ssd_sequential_ref(**inputs, return_final_states=True)
    y_chk, h_chk = ssd_chunked_ref(**inputs, chunk_size=chunk, return_final_states=True)
    assert y_chk.shape == inputs["x"].shape and y_chk.dtype == F64
    assert h_chk.shape == (inputs["x"].shape[0], inputs["x"].shape[2], inputs["x"].shape[3],
                           inputs["B"].shape[3])
    assert rel(y_chk, y_seq) < TOL
    assert rel(h_chk, h_seq) < TOL
    assert isinstance(ssd_chunked_ref(**inputs, chunk_size=chunk), torch.Tensor)


def test_dt_limit_clamps_after_softplus():
    """With a tight limit, every step is the limit: the output must equal fixed-dt runs."""
    inputs = make_inputs(1, dt_bias=True)
    y = ssd_sequential_ref(**inputs, dt_limit=(0.4, 0.4))
    fixed = dict(inputs, dt=torch.full_like(inputs["dt"], 0.4), dt_bias=None, dt_softplus=False)
    assert rel(y, ssd_sequential_ref(**fixed)) < TOL
    # mamba_ssm clamps even without softplus: with the default (0, inf) a negative dt is a 0 step
    negative = dict(fixed, dt=-fixed["dt"])
    zero_steps = ssd_sequential_ref(**dict(negative, dt=0 * fixed["dt"]))
    assert rel(ssd_chunked_ref(**negative, chunk_size=4), zero_steps) < TOL


def naive_output(inp):
    """y[b,t,h,p] = Σ_{s≤t} Σ_n C_t·(Π_{r=s+1..t} a_r)·dt_s·B_s·x_s + Σ_n C_t·(Π_{r≤t} a_r)·h0,
    + D·x_t, times silu(z_t); a_r = exp(dt_r·A), dt = softplus(dt + bias): explicit loops."""
    x, dt, A, B, C = (inp[k].tolist() for k in ("x", "dt", "A", "B", "C"))
    D, z, bias, h0 = (inp[k].tolist() for k in ("D", "z", "dt_bias", "initial_states"))
    batch, length, heads, P = inp["x"].shape
    groups, N = inp["B"].shape[2:]
    y = torch.zeros(batch, length, heads, P, dtype=F64)
    for b in range(batch):
        for h in range(heads):
            g = h // (heads // groups)
            step = [math.log1p(math.exp(dt[b][t][h] + bias[h])) for t in range(length)]
            a = [math.exp(step[t] * A[h]) for t in range(length)]
            for t in range(length):
                for p in range(P):
                    acc = 0.0
                    for s in range(t + 1):
                        decay = math.prod(a[s + 1: t + 1])
                        acc += sum(C[b][t][g][n] * decay * step[s] * B[b][s][g][n] * x[b][s][h][p]
                                   for n in range(N))
                    decay0 = math.prod(a[: t + 1])
                    acc += sum(C[b][t][g][n] * decay0 * h0[b][h][p][n] for n in range(N))
                    acc += D[h] * x[b][t][h][p]
                    zz = z[b][t][h][p]
                    y[b, t, h, p] = acc * zz / (1 + math.exp(-zz))
    return y


def test_sequential_matches_materialised_sum():
    inp = make_inputs(7, batch=2, length=6, heads=4, P=2, N=3, groups=2, D="heads", z=True,
                      dt_bias=True, init=True)
    assert rel(ssd_sequential_ref(**inp), naive_output(inp)) < 1e-12


def _separate_runs(inputs, row, bounds, use_init):
    """Outputs and final states of each sequence [s, e) of one row, run on its own."""
    per_position = ("x", "dt", "B", "C", "z")
    ys, finals = [], []
    for i, (s, e) in enumerate(bounds):
        piece = {k: (v[row: row + 1, s:e] if k in per_position else v) for k, v in inputs.items()}
        init = inputs.get("initial_states")
        piece["initial_states"] = init[row: row + 1] if (init is not None and use_init(i)) else None
        y, h = ssd_sequential_ref(**piece, return_final_states=True)
        ys.append(y)
        finals.append(h[0])
    return torch.cat(ys, dim=1), torch.stack(finals)


@pytest.mark.parametrize("form", ["sequential", "chunked"])
def test_seq_idx_resets_state_at_boundaries(form):
    inputs = make_inputs(3, batch=2, length=14, groups=2, D="heads", z=True, dt_bias=True, init=True)
    rows = [[(0, 5), (5, 9), (9, 14)], [(0, 8), (8, 14)]]  # row 1: a boundary on a chunk edge
    seq_idx = torch.tensor([[i for i, (s, e) in enumerate(r) for _ in range(s, e)] for r in rows])
    run = ssd_sequential_ref if form == "sequential" else \
        (lambda **kw: ssd_chunked_ref(**kw, chunk_size=4))
    y, final = run(**inputs, seq_idx=seq_idx, return_final_states=True)
    for row, bounds in enumerate(rows):
        y_ref, finals = _separate_runs(inputs, row, bounds, use_init=lambda i: i == 0)
        assert rel(y[row: row + 1], y_ref) < TOL
        assert rel(final[row], finals[-1]) < TOL


@pytest.mark.parametrize("form", ["sequential", "chunked"])
def test_initial_state_belongs_to_sequence_id_zero(form):
    """mamba_ssm's rule: a row whose first id is not 0 ignores the initial state."""
    inputs = make_inputs(4, batch=1, length=9, init=True)
    seq_idx = torch.tensor([[1] * 4 + [2] * 5])
    run = ssd_sequential_ref if form == "sequential" else \
        (lambda **kw: ssd_chunked_ref(**kw, chunk_size=4))
    y = run(**inputs, seq_idx=seq_idx)
    assert rel(y, run(**dict(inputs, initial_states=None), seq_idx=seq_idx)) < TOL


@pytest.mark.parametrize("form", ["sequential", "chunked"])
@pytest.mark.parametrize("seqlens", [[3, 9, 1, 6], [0, 5, 0, 4]])
def test_cu_seqlens_gives_per_sequence_final_states(form, seqlens):
    """Short sequences, one ending inside the first chunk with an initial state, one spanning
    chunks, boundaries on chunk edges, empty sequences (final state = starting state)."""
    length = sum(seqlens)
    inputs = make_inputs(5, batch=1, length=length, groups=2, D="heads_P", z=True, init=True)
    cu = torch.tensor([0] + seqlens).cumsum(0)
    run = ssd_sequential_ref if form == "sequential" else \
        (lambda **kw: ssd_chunked_ref(**kw, chunk_size=4))
    y, finals = run(**inputs, cu_seqlens=cu, return_final_states=True)
    assert finals.shape == (len(seqlens), 4, 3, 5)
    bounds = [(int(s), int(e)) for s, e in zip(cu[:-1], cu[1:])]
    nonempty = [i for i, (s, e) in enumerate(bounds) if e > s]
    y_ref, finals_ref = _separate_runs(inputs, 0, [bounds[i] for i in nonempty],
                                       use_init=lambda k: nonempty[k] == 0)
    assert rel(y, y_ref) < TOL
    assert rel(finals[nonempty], finals_ref) < TOL
    for i in set(range(len(seqlens))) - set(nonempty):
        expected = inputs["initial_states"][0] if i == 0 else torch.zeros_like(finals[i])
        assert torch.equal(finals[i], expected)
    seq_idx = torch.repeat_interleave(torch.arange(len(seqlens)), torch.tensor(seqlens))[None]
    assert rel(run(**inputs, seq_idx=seq_idx, cu_seqlens=cu), y) == 0


def test_strong_decay_stays_finite():
    """dA down to −20 per step over 64-step chunks: the unmasked exp(cum_i − cum_j) above the
    diagonal would reach exp(1260) = inf, and inf·0 = NaN, in the forward and the backward."""
    inputs = make_inputs(6, batch=1, length=100, heads=2, P=2, N=3, dA_max=20.0, init=True)
    inputs["dt"] = 0.5 + 0.5 * torch.rand(1, 100, 2, dtype=F64)
    inputs["A"] = torch.tensor([-20.0, -5.0], dtype=F64)
    leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
    y, h = ssd_chunked_ref(**leaves, chunk_size=64, return_final_states=True)
    (y.sum() + h.sum()).backward()
    assert all(torch.isfinite(v.grad).all() for v in leaves.values())
    y_seq, h_seq = ssd_sequential_ref(**inputs, return_final_states=True)
    assert rel(y, y_seq) < TOL and rel(h, h_seq) < TOL


GRAD_CASES = {
    "everything": (dict(length=11, groups=2, D="heads_P", z=True, dt_bias=True, init=True),
                   dict(dt_limit=(0.05, 1.2))),
    "D_per_head_no_bias": (dict(length=9, D="heads", init=True), {}),
    "seq_idx": (dict(length=10, D="heads", z=True, dt_bias=True, init=True),
                dict(seq_idx=torch.tensor([[0] * 3 + [1] * 7, [0] * 6 + [1] * 4]))),
    "cu_seqlens": (dict(batch=1, length=10, groups=2, dt_bias=True, init=True),
                   dict(cu_seqlens=torch.tensor([0, 2, 7, 10]))),
}


@pytest.mark.parametrize("name", list(GRAD_CASES))
def test_gradients_agree(name):
    case, options = GRAD_CASES[name]
    inputs = make_inputs(11, **case)
    grads = []
    for run in (ssd_sequential_ref, lambda **kw: ssd_chunked_ref(**kw, chunk_size=4)):
        leaves = {k: (v.clone().requires_grad_() if torch.is_tensor(v) else v)
                  for k, v in inputs.items()}
        y, h = run(**leaves, **options, return_final_states=True)
        g = torch.Generator().manual_seed(0)
        loss = (y * torch.randn(y.shape, generator=g, dtype=F64)).sum() \
            + (h * torch.randn(h.shape, generator=g, dtype=F64)).sum()
        loss.backward()
        grads.append({k: v.grad for k, v in leaves.items() if torch.is_tensor(v)})
    assert "initial_states" in grads[0]
    for k in grads[0]:
        assert rel(grads[1][k], grads[0][k]) < TOL, k


def test_stages_against_the_recurrence():
    """Each stage's own meaning: (a) padding neither steps nor decays; (b) a chunk's state is the
    recurrence over that chunk alone from zero; (c) the state entering chunk k is the
    recurrence's state after k·chunk steps."""
    inputs = make_inputs(9, length=10, groups=2, dt_bias=True, init=True)
    chunk = 4
    dt, cum = chunk_cumsum_ref(inputs["dt"], inputs["A"], chunk, inputs["dt_bias"], True)
    assert dt.shape == cum.shape == (2, 4, 3, chunk)
    assert (dt[:, :, -1, 2:] == 0).all() and (cum[:, :, -1, 2:] == cum[:, :, -1, 1:2]).all()

    states = chunk_state_ref(inputs["B"], inputs["x"], dt, cum)
    entering, final = state_passing_ref(states, cum[..., -1], inputs["initial_states"])
    assert states.shape == entering.shape == (2, 3, 4, 3, 5)
    per_position = ("x", "dt", "B", "C")
    for c in range(3):
        piece = {k: (v[:, c * chunk:(c + 1) * chunk] if k in per_position else v)
                 for k, v in inputs.items() if k != "initial_states"}
        _, h = ssd_sequential_ref(**piece, return_final_states=True)
        assert rel(states[:, c], h) < TOL
        prefix = {k: (v[:, : c * chunk] if k in per_position else v) for k, v in inputs.items()}
        h_in = ssd_sequential_ref(**prefix, return_final_states=True)[1] if c else \
            inputs["initial_states"]
        assert rel(entering[:, c], h_in) < TOL


def test_refuses_inconsistent_arguments():
    inputs = make_inputs(2, batch=1, length=6, heads=4, groups=3)
    with pytest.raises(ValueError, match="groups"):
        ssd_chunked_ref(**inputs, chunk_size=4)
    inputs = make_inputs(2, batch=2, length=6)
    with pytest.raises(ValueError, match="cu_seqlens"):
        ssd_sequential_ref(**inputs, cu_seqlens=torch.tensor([0, 3, 6]))
    with pytest.raises(ValueError, match="must not decrease"):
        ssd_chunked_ref(**inputs, chunk_size=4, seq_idx=torch.tensor([[0, 0, 1, 1, 0, 0]] * 2))
    inputs = make_inputs(2, batch=1, length=6)
    with pytest.raises(ValueError, match="disagrees"):
        ssd_sequential_ref(**inputs, cu_seqlens=torch.tensor([0, 3, 6]),
                           seq_idx=torch.tensor([[0, 0, 0, 0, 1, 1]]))
