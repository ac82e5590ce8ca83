"""Mamba's selective SSM (S6) as an ssmc spec: `ssmc compile examples/mamba.py -o build`."""
import ssmc

# Real diagonal A (S4D-Real init), dt/B/C computed from the input, Mamba's discretization
# (ZOH for A, Euler for B), dt bias + softplus, D skip and a silu gate.
mamba = ssmc.SSM(
    name="mamba",
    d_state=16,
    A=ssmc.Diagonal(real=True),
    discretization=ssmc.MambaZOH(),
    selective=("dt", "B", "C"),
    skip_D=True,
    gate=True,
    dt_softplus=True,
    dt_bias=True,
)
