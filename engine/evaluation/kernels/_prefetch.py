"""Software prefetch for the kernels' random state accesses.

At millions of sensors every reading's state record is a miss to main memory; the loop
body is long enough that the CPU's reorder buffer holds only a few iterations, so few
misses overlap. Asking for the record of the reading ``PREFETCH_AHEAD`` positions ahead
(``llvm.prefetch``, which retires at once) keeps many misses in flight.

``prefetch(arr, i)`` hints the cache line holding ``arr[i]`` (1-D array, any layout);
``prefetch2(arr, i, j)`` the line holding ``arr[i, j]``; ``prefetch_item(arr, i)`` every
line of ``arr[i]``, for records longer than a line. Out-of-range indices are allowed
(a prefetch never faults), but callers clamp anyway. Under ``NUMBA_DISABLE_JIT=1`` both
are no-op Python functions, so the kernels still run as plain Python.

numba's on-disk cache is keyed on each kernel's own source file, not on the constants it
imports: after changing ``PREFETCH_AHEAD``, clear ``$NUMBA_CACHE_DIR``.
"""

from __future__ import annotations

from typing import Any

from numba.core import config

__all__ = ["PREFETCH_AHEAD", "prefetch", "prefetch2", "prefetch_item"]

CACHE_LINE = 64

#: How many readings ahead to prefetch: enough to cover ~100 ns of DRAM latency.
PREFETCH_AHEAD = 16

if config.DISABLE_JIT:  # pragma: no cover - exercised by the nojit test run

    def prefetch(arr: Any, i: Any) -> None:
        return None

    def prefetch2(arr: Any, i: Any, j: Any) -> None:
        return None

    def prefetch_item(arr: Any, i: Any) -> None:
        return None

else:
    from llvmlite import ir
    from numba.core import cgutils, types
    from numba.extending import intrinsic

    def _emit(
        context: Any, builder: Any, aryty: Any, ary_val: Any, idx: list[Any], lines: int = 1
    ) -> None:
        ary = context.make_array(aryty)(context, builder, ary_val)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx, wraparound=False)
        i8p = builder.bitcast(ptr, ir.IntType(8).as_pointer())
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [i8p.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        for k in range(lines):
            line = builder.gep(i8p, [ir.IntType(64)(k * CACHE_LINE)])
            # rw=1 (the kernels write the record back), locality=3, data cache
            builder.call(fn, [line, i32(1), i32(3), i32(1)])

    @intrinsic
    def prefetch(typingctx: Any, arr: Any, i: Any) -> Any:
        if not isinstance(arr, types.Array) or arr.ndim != 1:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            idx = context.cast(builder, args[1], sig.args[1], types.intp)
            _emit(context, builder, sig.args[0], args[0], [idx])
            return context.get_dummy_value()

        return types.void(arr, i), codegen

    @intrinsic
    def prefetch2(typingctx: Any, arr: Any, i: Any, j: Any) -> Any:
        if not isinstance(arr, types.Array) or arr.ndim != 2:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            ii = context.cast(builder, args[1], sig.args[1], types.intp)
            jj = context.cast(builder, args[2], sig.args[2], types.intp)
            _emit(context, builder, sig.args[0], args[0], [ii, jj])
            return context.get_dummy_value()

        return types.void(arr, i, j), codegen

    @intrinsic
    def prefetch_item(typingctx: Any, arr: Any, i: Any) -> Any:
        if not isinstance(arr, types.Array) or arr.ndim != 1:
            return None

        def codegen(context: Any, builder: Any, sig: Any, args: Any) -> Any:
            aryty = sig.args[0]
            size = context.get_abi_sizeof(context.get_data_type(aryty.dtype))
            idx = context.cast(builder, args[1], sig.args[1], types.intp)
            _emit(context, builder, aryty, args[0], [idx], -(-size // CACHE_LINE))
            return context.get_dummy_value()

        return types.void(arr, i), codegen
