"""Every operation of engine.comm.Comm on N ranks; rank 0 writes what each rank got (JSON).

Usage: mpiexec -n N python comm_ops.py OUT.json
The expected values are written out in tests/test_mpi.py from the rank numbers alone.
"""
import sys

import numpy as np
import torch

from mpi_common import dump, mpi

comm = mpi()
r, n = comm.rank, comm.size
got = {"rank": r, "size": n, "is_root": comm.is_root}

# reductions: python scalars, numpy (also into a given buffer), torch (float64, bf16)
got["sum_float"] = comm.allreduce_sum(r + 0.5)
got["max_int"] = comm.allreduce_max(10 * r)
got["min_int"] = comm.allreduce_min(10 * r + 3)
got["sum_numpy"] = comm.allreduce_sum(np.array([r, 2.0 * r, 1.0])).tolist()
out = np.full(3, -1.0)
res = comm.allreduce_max(np.array([r, -r, 7.0]), out=out)
got["max_numpy_out"] = out.tolist()
got["max_numpy_out_is_out"] = res is out
t = comm.allreduce_sum(torch.tensor([[r, 1.0], [2.0, r]], dtype=torch.float64))
got["sum_torch"] = t.tolist()
got["sum_torch_dtype"] = str(t.dtype)
b = comm.allreduce_sum(torch.full((4,), r + 1.0, dtype=torch.bfloat16))
got["sum_bf16"] = b.float().tolist()
got["sum_bf16_dtype"] = str(b.dtype)

# objects
got["bcast"] = comm.bcast({"from": r, "x": [1, 2]} if r == 0 else None)
got["gather"] = comm.gather(("r", r))
got["allgather"] = comm.allgather(r * r)
got["alltoall"] = comm.alltoall([(r, s) for s in range(n)])
got["ring"] = comm.sendrecv({"from": r}, dest=(r + 1) % n, source=(r - 1) % n, tag=5)
got["to_nobody"] = comm.sendrecv("lost", dest=None, source=None)
comm.barrier()

# gather by id: rank r holds ids r, r + n, r + 2n in descending order; "partial" is None on rank 1
ids = np.arange(r, 3 * n, n)[::-1]
g = comm.gather_by_id(ids, value=1.5 * ids, vec=np.stack([ids, -ids], 1), partial=None if r == 1 else ids)
got["gather_by_id"] = None if g is None else {k: v.tolist() for k, v in g.items()}

# raw buffers: to every rank s (itself too) the float64 row [r, s, 100r + s]
send = {s: np.array([r, s, 100.0 * r + s]).view(np.uint8) for s in range(n)}
recv = {s: np.empty(24, dtype=np.uint8) for s in range(n)}
comm.exchange(send, recv, tag=9)
got["exchange"] = {str(s): recv[s].view(np.float64).tolist() for s in range(n)}
if n >= 2 and r in (0, 1):  # blocking ping-pong between ranks 0 and 1
    buf = np.array([0.0, 0.0])
    if r == 0:
        comm.send(np.array([3.0, 4.0]), dest=1, tag=2)
        comm.recv(buf, source=1, tag=3)
    else:
        comm.recv(buf, source=0, tag=2)
        comm.send(buf * 2, dest=0, tag=3)
    got["pingpong"] = buf.tolist()

everything = comm.gather(got)
if comm.is_root:
    dump(sys.argv[1], everything)
