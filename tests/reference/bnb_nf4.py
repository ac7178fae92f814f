"""NF4 quantisation by bitsandbytes, for tests/nf4_bitsandbytes.rs.

Usage: bnb_nf4.py IN.f32 OUT_DIR
Reads little-endian f32 values and quantises them with bitsandbytes.functional.quantize_4bit
(blocks of 64, NF4, on the CPU), once without and once with double quantisation
(compress_statistics). Writes into OUT_DIR:
  q.u8, absmax.f32, code.f32     packed bytes, absmax per block, the 16 NF4 values
  dq.u8, dq_absmax.u8            with double quantisation: packed bytes, 8-bit absmax codes,
  dq_scales.f32, dq_offset.f32   the f32 scale per 256 absmax values, their mean
  dq_code.f32                    the 256 values of the 8-bit dynamic code
  dq_absmax.f32                  the absmax values as bitsandbytes dequantises them
"""
import os
import sys

import numpy as np
import torch
import bitsandbytes.functional as F

src, out = sys.argv[1:3]
w = torch.from_numpy(np.fromfile(src, dtype="<f4"))


def save(name, t, dtype):
    t.detach().flatten().cpu().numpy().astype(dtype).tofile(os.path.join(out, name))


q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
save("q.u8", q, np.uint8)
save("absmax.f32", state.absmax.float(), "<f4")
save("code.f32", state.code.float(), "<f4")

q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
save("dq.u8", q, np.uint8)
save("dq_absmax.u8", state.absmax, np.uint8)
save("dq_scales.f32", state.state2.absmax.float(), "<f4")
save("dq_offset.f32", state.offset.float().reshape(1), "<f4")
save("dq_code.f32", state.state2.code.float(), "<f4")
absmax = F.dequantize_blockwise(state.absmax, state.state2) + state.offset
save("dq_absmax.f32", absmax.float(), "<f4")
