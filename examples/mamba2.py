"""Mamba-2's SSD layer as an ssmc spec: `ssmc compile examples/mamba2.py -o build`."""
import ssmc

# One scalar decay per head (A = a·I), heads of 64 channels sharing a (64 x 128) state, dt/B/C from
# the input with B/C shared by one group of heads, dt bias + softplus, D skip and a silu gate.
mamba2 = ssmc.SSM(
    name="mamba2",
    d_state=128,
    A=ssmc.Scalar(),
    heads=ssmc.MultiHead(headdim=64, groups=1),
    discretization=ssmc.MambaZOH(),
    selective=("dt", "B", "C"),
    skip_D=True,
    gate=True,
    dt_softplus=True,
    dt_bias=True,
)
