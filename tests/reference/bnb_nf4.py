"""NF4 quantisation by bitsandbytes, for tests/nf4_bitsandbytes.rs.

Usage: bnb_nf4.py IN.f32 OUT_PACKED.u8 OUT_ABSMAX.f32 OUT_CODE.f32
Reads little-endian f32 values, quantises them with bitsandbytes.functional.quantize_4bit
(blocks of 64, NF4, no double quantisation, on the CPU) and writes the packed bytes, the
absmax of every block and bitsandbytes' 16 code values.
"""
import sys

import numpy as np
import torch
import bitsandbytes.functional as F

src, packed, absmax, code = sys.argv[1:5]
w = torch.from_numpy(np.fromfile(src, dtype="<f4"))
q, state = F.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=False)
q.flatten().numpy().astype(np.uint8).tofile(packed)
state.absmax.float().numpy().astype("<f4").tofile(absmax)
state.code.float().numpy().astype("<f4").tofile(code)
