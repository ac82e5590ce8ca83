"""S4D as an ssmc spec: complex diagonal A, ZOH, time-invariant. The schedule (FFT convolution or
scan) is a compile option, left to the cost model by default (`--schedule conv` or `scan` fixes it);
`ssmc explain examples/s4d.py --shape batch=8,len=4096,dim=256`."""
import ssmc

s4d = ssmc.presets.s4d(d_state=64)
