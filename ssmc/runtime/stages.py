"""Stage kernels driven by their operand tables (the package's operands.json, see ssmc/ir/stages.py).

Everything about a stage's operands is derived here from its table, never written by hand per
stage: the argument checks (rank, dtype, device, one size per dimension name), the output
allocation (shapes from the bound dimension sizes), the torch.library schema and fake kernel, and
the C ABI — `int ssmc_<stage>_<float|double>(pointers of the inputs then the outputs in table order
(NULL for an absent optional input), int64 sizes in the table's `dims` order, int64 params, int
threads)`, returning 0 on success (nonzero: out of memory).

Outputs are `torch.empty`; with SSMC_POISON_OUTPUTS=1 (the test suite sets it) float outputs start
as NaN, so an element a kernel failed to write cannot pass for a result.
"""
from __future__ import annotations

import ctypes
import importlib
import os
import threading
from dataclasses import dataclass

import torch

from ..errors import CompileError, ScheduleError, ShapeError
from .backend import select_backend

_FLOAT_TYPES = {torch.float32: "float", torch.float64: "double"}
_DTYPES = {"int64": torch.int64}
# below this much work (elements x steps) a C stage runs on one thread: a parallel region costs more
SERIAL_WORK = 1 << 16


@dataclass(frozen=True)
class OperandSpec:
    name: str
    dims: tuple
    dtype: str
    optional: bool
    mutated: bool = False


def present(stage: str, spec: OperandSpec, x) -> bool:
    """Whether operand `x` is given (False for an absent optional one); a ShapeError for a missing
    required one or for something that is not a tensor."""
    if x is None:
        if not spec.optional:
            raise ShapeError(f"{stage}: operand {spec.name} is required")
        return False
    if not isinstance(x, torch.Tensor):
        raise ShapeError(f"{stage}: operand {spec.name} must be a tensor, got {type(x).__name__}")
    return True


def bind_shape(stage: str, spec: OperandSpec, x: torch.Tensor, sizes: dict, where: dict, device):
    """Record `x`'s sizes under `spec`'s dimension names (and which operand gave each), checking its
    rank, that its device is the others', and that every size agrees with the operands before it.
    Returns the operands' device."""
    if x.dim() != len(spec.dims):
        raise ShapeError(f"{stage}: operand {spec.name} must be ({', '.join(spec.dims)}), got shape {tuple(x.shape)}")
    device = device or x.device
    if x.device != device:
        raise ShapeError(f"{stage}: operand {spec.name} is on {x.device}, the others on {device}")
    for dim, size in zip(spec.dims, x.shape):
        if sizes.setdefault(dim, size) != size:
            raise ShapeError(f"{stage}: dimension {dim} is {sizes[dim]} in {where[dim]} but {size} in "
                             f"{spec.name} (shape {tuple(x.shape)})")
        where.setdefault(dim, spec.name)
    return device


class StageTable:
    """One stage's table, read from operands.json."""

    def __init__(self, data: dict):
        self.name = data["name"]
        self.doc = data.get("doc", "")
        self.dims = tuple(data["dims"])
        self.params = tuple(data["params"])
        self.checks = tuple(tuple(check) for check in data.get("checks", ()))
        self.inputs = tuple(OperandSpec(o["name"], tuple(o["dims"]), o["dtype"], o["optional"], o.get("mutated", False))
                            for o in data["inputs"])
        self.outputs = tuple(OperandSpec(o["name"], tuple(o["dims"]), o["dtype"], False) for o in data["outputs"])

    # ---- checks and shapes ------------------------------------------------------------------------
    def bind(self, operands: dict, float_dtype: torch.dtype | None = None) -> dict:
        """{dimension name: size} from the inputs' shapes; a ShapeError naming the operand and the
        dimension if an input has the wrong rank, dtype, device, or a size that disagrees."""
        sizes, where, device = {}, {}, None
        for spec in self.inputs:
            x = operands.get(spec.name)
            if not present(self.name, spec, x):
                continue
            if spec.dtype in _DTYPES:
                if x.dtype != _DTYPES[spec.dtype]:
                    raise ShapeError(f"{self.name}: operand {spec.name} must be {spec.dtype}, got {x.dtype}")
            else:
                float_dtype = float_dtype or x.dtype
                if x.dtype != float_dtype or x.dtype not in _FLOAT_TYPES:
                    raise ShapeError(f"{self.name}: operand {spec.name} must be {float_dtype} (float32 or float64, "
                                     f"like the other operands), got {x.dtype}")
            device = bind_shape(self.name, spec, x, sizes, where, device)
        missing = [d for d in self.dims if d not in sizes]
        if missing:
            raise ShapeError(f"{self.name}: no operand gives dimension(s) {', '.join(missing)}")
        for kind, *names in self.checks:
            divisor, total = (sizes[n] for n in names[:2]) if kind == "divides" else (1, 0)
            if kind == "divides" and (total % divisor if divisor else total):       # 0 divides only 0
                raise ShapeError(f"{self.name}: {names[0]}={sizes[names[0]]} must divide {names[1]}={sizes[names[1]]} "
                                 f"(each group serves heads // groups heads)")
            if kind == "covers" and sizes[names[0]] * sizes[names[1]] < sizes[names[2]]:
                raise ShapeError(f"{self.name}: {names[0]}·{names[1]} = {sizes[names[0]] * sizes[names[1]]} must cover "
                                 f"{names[2]}={sizes[names[2]]}")
        return sizes

    def output_shapes(self, sizes: dict) -> list:
        return [tuple(sizes[d] for d in spec.dims) for spec in self.outputs]

    def new_outputs(self, sizes: dict, like: torch.Tensor, poison: bool) -> list:
        outputs = []
        for spec, shape in zip(self.outputs, self.output_shapes(sizes)):
            dtype = _DTYPES.get(spec.dtype, like.dtype)
            x = like.new_empty(shape, dtype=dtype)
            if poison and dtype.is_floating_point:
                x.fill_(float("nan"))
            outputs.append(x)
        return outputs

    # ---- the torch.library schema and the C ABI -----------------------------------------------------
    def schema(self) -> str:
        arguments = [f"Tensor{'(a!)' if o.mutated else ''}{'?' if o.optional else ''} {o.name}" for o in self.inputs]
        arguments += [f"int {p}" for p in self.params]
        results = ", ".join("Tensor" for _ in self.outputs)
        return f"({', '.join(arguments)}) -> ({results})" if len(self.outputs) != 1 else \
            f"({', '.join(arguments)}) -> Tensor"

    def c_argtypes(self) -> list:
        return ([ctypes.c_void_p] * (len(self.inputs) + len(self.outputs))
                + [ctypes.c_int64] * (len(self.dims) + len(self.params)) + [ctypes.c_int])

    def c_arguments(self, operands: dict, outputs: list, sizes: dict, params: dict, threads: int) -> list:
        pointers = [operands[o.name].data_ptr() if operands.get(o.name) is not None else None for o in self.inputs]
        pointers += [x.data_ptr() for x in outputs]
        return pointers + [sizes[d] for d in self.dims] + [params[p] for p in self.params] + [threads]


def poison_outputs() -> bool:
    return os.environ.get("SSMC_POISON_OUTPUTS", "0") not in ("", "0")


def _contiguous(table: StageTable, operands: dict) -> dict:
    """Operands as the kernels read them (C-contiguous); one the kernel updates in place must already
    be, since a copy would take the update away from the caller's tensor."""
    mutated = {o.name for o in table.inputs if o.mutated}
    for name in mutated:
        x = operands.get(name)
        if isinstance(x, torch.Tensor) and not x.is_contiguous():
            raise ShapeError(f"{table.name}: operand {name} is updated in place and must be contiguous "
                             f"(shape {tuple(x.shape)}, strides {x.stride()})")
    return {name: (x.contiguous() if isinstance(x, torch.Tensor) and name not in mutated else x)
            for name, x in operands.items()}


class StageLibrary:
    """The stage kernels of one generated package, on every backend, called by table.

    On Triton, an autotuned stage (the stage module's TUNED_STAGES) launches the config `ssmc tune` stored
    for the call's shape bucket (`tuning`, the package's PackageTuning, sets itself here) when it is one of
    the module's planned configs, else Triton's autotuner picks. `recording`, a list while `ssmc tune`
    runs the pipeline once, collects each Triton call of an autotuned stage as (name, params, operands,
    sizes), which it then times config by config (`run_config`)."""

    def __init__(self, package: str, directory: str, tables: dict):
        self.package = package
        self.directory = directory
        self.tables = {name: StageTable(data) for name, data in tables.items()}
        self._modules = {}
        self._c_functions = {}
        self._lock = threading.Lock()
        # the C stages' thread count when tuned (ssmc/runtime/tuning.py), else None: the default rule
        self.c_threads = None
        self.tuning = None
        self.recording = None

    def run(self, name: str, params: dict | None = None, **operands) -> list:
        """Outputs of stage `name` on `operands` (tensors by table name), on the backend of their device."""
        return self._run(name, params, operands, None)

    def run_config(self, name: str, config: dict, params: dict | None, operands: dict) -> list:
        """`run` on Triton with the autotuned stage `name` launched in `config` (one of its planned configs):
        what `ssmc tune` times."""
        return self._run(name, params, operands, config)

    def candidates(self, name: str, sizes: dict) -> list:
        """The planned configs of the autotuned Triton stage `name` that its autotuner benchmarks at a call
        whose table bound `sizes`."""
        return self._module("triton").stage_candidates(name, sizes)

    def _run(self, name: str, params: dict | None, operands: dict, config: dict | None) -> list:
        table = self.tables[name]
        params = dict(params or {})
        operands = _contiguous(table, operands)
        sizes = table.bind(operands)
        like = next(operands[o.name] for o in table.inputs if operands.get(o.name) is not None
                    and o.dtype not in _DTYPES)
        outputs = table.new_outputs(sizes, like, poison_outputs())
        if any(x.numel() == 0 for x in outputs):
            raise ShapeError(f"{name}: empty outputs never reach a kernel; the caller handles them")
        backend = select_backend(like.device)
        if config is not None and backend != "triton":
            raise ScheduleError(f"{name}: a launch config applies to the Triton backend only, not {backend}")
        if backend == "c":
            self._run_c(table, operands, outputs, sizes, params, like.dtype)
            return outputs
        module = self._module(backend)
        launch = dict(params)
        tuned = backend == "triton" and name in getattr(module, "TUNED_STAGES", ())
        if config is not None and not tuned:
            raise ScheduleError(f"{name}: not an autotuned stage of this package, so it takes no launch config "
                                f"(those that do: {', '.join(getattr(module, 'TUNED_STAGES', ())) or 'none'})")
        if tuned:
            if self.recording is not None and config is None:
                self.recording.append((name, params, operands, sizes))
            config = config if config is not None else self._stored_config(module, name, sizes)
            launch["config"] = config
        getattr(module, name)(**operands, **launch, **{o.name: x for o, x in zip(table.outputs, outputs)})
        return outputs

    def _stored_config(self, module, name: str, sizes: dict) -> dict | None:
        """The config `ssmc tune` stored for the autotuned stage at the call's bucket, if it is one of the
        module's planned configs (a file of another compiler's may hold others); else None, the autotuner."""
        if self.tuning is None:
            return None
        config = self.tuning.stage_config(name, "triton", sizes)
        return config if config is not None and config in module.TUNED_STAGES[name][0] else None

    def _module(self, backend: str):
        module = self._modules.get(backend)
        if module is None:
            with self._lock:
                module = self._modules.get(backend)
                if module is None:
                    module = self._modules[backend] = importlib.import_module(f"{self.package}.stages_{backend}")
        return module

    def _c_function(self, table: StageTable, dtype: torch.dtype):
        key = (table.name, dtype)
        function = self._c_functions.get(key)
        if function is None:
            from .cbuild import load_library
            precision = _FLOAT_TYPES[dtype]
            symbol = f"ssmc_{table.name}_{precision}"
            library = load_library(os.path.join(self.directory, "stages_c.c"), defines=("SSMC_" + precision.upper(),),
                                   flags=("-O3",), symbols=(symbol,))
            function = getattr(library, symbol)
            function.argtypes = table.c_argtypes()
            function.restype = ctypes.c_int
            self._c_functions[key] = function
        return function

    def _run_c(self, table, operands, outputs, sizes, params, dtype):
        work = max(x.numel() for x in outputs)
        threads = 1 if work < SERIAL_WORK else torch.get_num_threads()
        if self.c_threads is not None:
            threads = self.c_threads
        status = self._c_function(table, dtype)(*table.c_arguments(operands, outputs, sizes, params, threads))
        if status != 0:
            if status == 1:
                raise MemoryError(f"ssmc C stage {table.name}: out of memory for its scratch")
            raise CompileError(f"ssmc C stage {table.name} failed with status {status}")
