"""LLVM intrinsics numba does not expose, for the kernels' scattered accesses.

:func:`prefetch_row` asks the CPU to start loading row ``i`` of an array without waiting for it (x86
``prefetcht0``; a no-op where the target has none). The bound kernels update per-spectrum rows picked
by index entries (8 bytes per library spectrum: 19 MB at 2.4M, beyond the cache): each update waits
for a miss, and the branches between updates keep the core from overlapping those waits on its own.
Requesting the row a few entries ahead overlaps them (see ``fastspec.kernels.fragment._PREFETCH``).
Defining the intrinsic compiles nothing; it is lowered inline where a kernel calls it.
"""
from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic


@intrinsic
def prefetch_row(typingctx, arr, i):
    """Prefetch ``arr[i, 0, ...]`` for reading into all cache levels (``arr`` any numba array, ``i`` an
    integer in range: the address is computed without a bounds check; a prefetch never faults)."""
    if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty, ity = signature.args
        ary = context.make_array(aryty)(context, builder, args[0])
        zero = context.get_constant(types.intp, 0)
        idx = [context.cast(builder, args[1], ity, types.intp)] + [zero] * (aryty.ndim - 1)
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, idx)
        i32 = ir.IntType(32)
        if getattr(ptr.type, "is_opaque", False):  # LLVM 15+ (opaque pointers)
            name = "llvm.prefetch.p0"
        else:  # typed pointers (older llvmlite): the intrinsic takes an i8*
            ptr = builder.bitcast(ptr, ir.IntType(8).as_pointer())
            name = "llvm.prefetch.p0i8"
        fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32]),
                                            name)
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep in all levels, data cache
        return context.get_dummy_value()

    return types.void(arr, i), codegen
