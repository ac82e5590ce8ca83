"""The SISO kernels' operand tables (a package's operands.json, written from ssmc/ir/scan_stages.py).

`ScanTable` extends the multi-head `StageTable` with what the SISO kernels' contract adds:
operands a package never has (`absent`: None in, an empty (0,) placeholder out), outputs formed
only when a param is positive (`when`: the checkpoints), sizes no input gives (`sizes`), the C
ABI's int-first order (`c_sizes`) and the C kernels' own memory order of some operands
(`c_layout`: time-major B and C). From a table the runtime derives the custom-op schema, the fake
kernel, the argument checks (a ShapeError names the operand and the dimension), the outputs, and
the C functions' ctypes argtypes and argument lists:

    int ssmc_<kernel>_<float|double>(int64 sizes in c_sizes order, pointers of the inputs then the
                                     outputs in table order (NULL when absent), int threads)
"""
from __future__ import annotations

import ctypes
import json
import os

import torch

from ..errors import ShapeError
from .calls import compute_dtype
from .stages import StageTable, bind_shape, present

FLOATING = "floating"           # any floating dtype: the kernels cast it to the compute dtype
_EMPTY = (0,)


def _ceil_div(a, b):
    return -(-a // b) if b > 0 else 0


class ScanTable(StageTable):
    """One SISO kernel's table."""

    def __init__(self, data: dict):
        super().__init__(data)
        self.c_sizes = tuple(data["c_sizes"])
        self.like = data["like"]
        self.absent = frozenset(data.get("absent", ()))
        self.when = {output: param for output, param in data.get("when", ())}
        self.sizes = tuple(tuple(rule) for rule in data.get("sizes", ()))
        self.c_layout = {name: tuple(dims) for name, dims in data.get("c_layout", {}).items()}
        self.input_names = tuple(o.name for o in self.inputs)
        self.output_names = tuple(o.name for o in self.outputs)
        self._dims = {o.name: o.dims for o in self.inputs + self.outputs}

    # ---- arguments --------------------------------------------------------------------------------
    def split(self, args) -> tuple:
        """({input name: tensor or None}, {param name: int}) of the op's positional arguments."""
        count = len(self.inputs)
        return dict(zip(self.input_names, args[:count])), dict(zip(self.params, args[count:]))

    def bind(self, operands: dict, params: dict | None = None) -> dict:
        """{dimension name: size}; a ShapeError naming the operand (and the dimension) for an input
        of the wrong rank, dtype, device or size, or given where the package has none."""
        params = params or {}
        sizes, where, device = {}, {}, None
        for spec in self.inputs:
            x = operands.get(spec.name)
            if spec.name in self.absent:
                if x is not None:
                    raise ShapeError(f"{self.name}: this layer has no operand {spec.name}, expected None")
                continue
            if not present(self.name, spec, x):
                continue
            if spec.dtype == FLOATING and not x.dtype.is_floating_point:
                raise ShapeError(f"{self.name}: operand {spec.name} must be a floating tensor, got {x.dtype}")
            device = bind_shape(self.name, spec, x, sizes, where, device)
            if spec.mutated:
                self._check_mutated(spec, x, operands)
        for dim, rule, *args in self.sizes:
            size = {"ceil_div": lambda: _ceil_div(sizes[args[0]], params[args[1]]), "one": lambda: 1,
                    "param": lambda: params[args[0]]}[rule]()
            if sizes.setdefault(dim, size) != size:
                raise ShapeError(f"{self.name}: dimension {dim} is {sizes[dim]} in {where[dim]} but {rule}"
                                 f"({', '.join(args)}) = {size}")
        missing = [d for d in self.dims if d not in sizes]
        if missing:
            raise ShapeError(f"{self.name}: no operand gives dimension(s) {', '.join(missing)}")
        return sizes

    def _check_mutated(self, spec, x: torch.Tensor, operands: dict) -> None:
        """An operand the kernel updates in place (a decoding state) is used as it is: a copy (to
        make it contiguous, or to cast it) would take the update away from the caller's tensor."""
        like = operands.get(self.like)
        dtype = compute_dtype(like) if isinstance(like, torch.Tensor) else x.dtype
        if x.dtype != dtype:
            raise ShapeError(f"{self.name}: operand {spec.name} is updated in place and must be {dtype} "
                             f"(the compute dtype of {self.like}), got {x.dtype}")
        if not x.is_contiguous():
            raise ShapeError(f"{self.name}: operand {spec.name} is updated in place and must be contiguous "
                             f"(shape {tuple(x.shape)}, strides {x.stride()})")

    def schema(self) -> str:
        """The multi-head schema, but each operand updated in place in its own alias set
        (`Tensor(a!) h_re, Tensor(b!)? h_im`): two mutated operands never share one."""
        text = super().schema()
        letters = iter("abcdefgh")
        for spec in self.inputs:
            if spec.mutated:
                old = f"Tensor(a!){'?' if spec.optional else ''} {spec.name}"
                text = text.replace(old, old.replace("(a!)", f"({next(letters)}!)"), 1)
        return text

    def formed(self, name: str, params: dict) -> bool:
        """Whether output `name` is formed (not absent, and its `when` param positive)."""
        return name not in self.absent and (name not in self.when or params[self.when[name]] > 0)

    # ---- outputs ----------------------------------------------------------------------------------
    def new_outputs(self, sizes: dict, like: torch.Tensor, params: dict | None = None, poison: bool = False,
                    layout: str = "table") -> list:
        """Uninitialised outputs in the compute dtype of `like` (NaN under `poison`), in the table's
        memory order or, with layout="c", the C kernel's; a (0,) placeholder (None with
        layout="c") for an output not formed."""
        params = params or {}
        dtype = compute_dtype(like)
        outputs = []
        for spec in self.outputs:
            if not self.formed(spec.name, params):
                outputs.append(None if layout == "c" else like.new_empty(_EMPTY, dtype=dtype))
                continue
            dims = self.c_layout.get(spec.name, spec.dims) if layout == "c" else spec.dims
            x = like.new_empty(tuple(sizes[d] for d in dims), dtype=dtype)
            outputs.append(x.fill_(float("nan")) if poison else x)
        return outputs

    def fake(self, *args) -> tuple:
        """The fake (meta) kernel: outputs shaped from the inputs' sizes bound to dimension names."""
        operands, params = self.split(args)
        outputs = self.new_outputs(self.bind(operands, params), operands[self.like], params)
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # ---- the C ABI --------------------------------------------------------------------------------
    def c_argtypes(self) -> list:
        return ([ctypes.c_int64] * len(self.c_sizes) + [ctypes.c_void_p] * (len(self.inputs) + len(self.outputs))
                + [ctypes.c_int])

    def to_c(self, name: str, x):
        """`x` (table order) in the C kernel's memory order, contiguous."""
        if x is None or name not in self.c_layout:
            return x
        dims = self._dims[name]
        return x.permute([dims.index(d) for d in self.c_layout[name]]).contiguous()

    def from_c(self, name: str, x):
        """An output the C kernel wrote in its memory order, back in the table's (contiguous)."""
        if x is None or name not in self.c_layout:
            return x
        c_dims = self.c_layout[name]
        return x.permute([c_dims.index(d) for d in self._dims[name]]).contiguous()

    def c_arguments(self, operands: dict, outputs: list, sizes: dict, params: dict, threads: int) -> list:
        """The C function's arguments: `operands` and `outputs` already in the C memory order."""
        values = {**sizes, **params}
        pointers = [None if operands.get(n) is None else operands[n].data_ptr() for n in self.input_names]
        pointers += [None if x is None else x.data_ptr() for x in outputs]
        return [values[n] for n in self.c_sizes] + pointers + [threads]

    def work(self, sizes: dict) -> int:
        """Element x state x step updates of a call (what decides whether threads pay)."""
        total = 1
        for dim in ("batch", "dim", "len", "state"):
            total *= sizes.get(dim, 1)
        return total


def load_scan_tables(source) -> dict:
    """{kernel name: ScanTable} from operands.json's text, a package directory, or a parsed dict."""
    if isinstance(source, str) and os.path.isdir(source):
        with open(os.path.join(source, "operands.json"), encoding="utf-8") as f:
            source = f.read()
    data = json.loads(source) if isinstance(source, str) else source
    return {name: ScanTable(table) for name, table in data.items()}
