"""Catalog of realistic wrong solutions for the grader audit (graders/check_pipeline.py).

Each mutation takes the reference solution and breaks it the way students do. A patch edits
either a library file (``file=<repository path>``) or a solution cell of a notebook
(``cell=(<notebook>, <grade_id>)``) by replacing ``old`` with ``new``; ``old`` must occur
exactly once, so a reference that changed under the catalog is reported instead of silently
producing an unchanged "mutant". Every mutation must cost points in the notebooks listed in
``notebooks``.
"""
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Patch:
    old: str
    new: str
    file: str | None = None                   # repository-relative library file
    cell: tuple | None = None                 # (notebook name, solution cell grade_id)


@dataclass(frozen=True)
class Mutation:
    name: str
    description: str
    notebooks: tuple
    patches: tuple = field(default_factory=tuple)
    exercise: str = ""                        # the exercise it breaks (course manifest name)


REF = "needle/quant/reference.py"

CATALOG = [
    Mutation(
        "per_tensor_weights", "per-tensor weight scale instead of one per output channel",
        ("03_quant_basics",),
        (Patch("ref.choose_qparams(flat.min(axis=1), flat.max(axis=1),",
               "ref.choose_qparams(np.full(len(flat), flat.min()), np.full(len(flat), flat.max()),",
               cell=("03_quant_basics", "impl_per_channel")),)),
    Mutation(
        "round_toward_zero", "quantize rounds toward zero (trunc) instead of half to even",
        ("03_quant_basics",),
        (Patch("r = np.rint(x / s).astype(np.float64)", "r = np.trunc(x / s).astype(np.float64)",
               file=REF),)),
    Mutation(
        "round_half_away", "quantize rounds half away from zero (np.round(x + 0.5) style)",
        ("03_quant_basics",),
        (Patch("r = np.rint(x / s).astype(np.float64)",
               "r = (np.sign(x / s) * np.floor(np.abs(x / s) + 0.5)).astype(np.float64)",
               file=REF),)),
    Mutation(
        "full_range_weights", "weights clamped to [-128, 127] instead of the reduced [-127, 127]",
        ("03_quant_basics",),
        (Patch("reduced_range=True)", "reduced_range=False)", cell=("03_quant_basics", "impl_per_channel")),)),
    Mutation(
        "quantize_forgets_zero_point", "quantize drops the zero point (q = rint(x / s))",
        ("03_quant_basics",),
        (Patch("q = np.clip(r + zp, qmin, qmax)", "q = np.clip(r, qmin, qmax)", file=REF),)),
    Mutation(
        "dequantize_forgets_zero_point", "dequantize computes q * s without subtracting zp",
        ("03_quant_basics",),
        (Patch("return (q.astype(np.int64) - zp).astype(np.float32) * s",
               "return q.astype(np.float32) * s", file=REF),)),
    Mutation(
        "zero_point_sign", "affine zero point qmin + rint(lo / s) (sign error)",
        ("03_quant_basics",),
        (Patch("zero_point = np.clip(qmin - steps, qmin, qmax)",
               "zero_point = np.clip(qmin + steps, qmin, qmax)", file=REF),)),
    Mutation(
        "range_without_zero", "range not extended to contain 0 before choosing the scale",
        ("03_quant_basics",),
        (Patch("    lo = np.minimum(lo, 0.0)\n    hi = np.maximum(hi, 0.0)\n", "", file=REF),)),
    Mutation(
        "requantize_truncates", "requantize shifts without adding 2^(shift-1) (floor, not round)",
        ("03_quant_basics",),
        (Patch("y = (acc * m + (np.int64(1) << (s - 1))) >> s", "y = (acc * m) >> s", file=REF),)),
    Mutation(
        "relu_not_fused", "fused ReLU does not raise the clamp lower bound to the zero point",
        ("03_quant_basics",),
        (Patch("    y = (acc * m + (np.int64(1) << (s - 1))) >> s\n    if relu:\n"
               "        lo = max(lo, int(out_zero_point))\n",
               "    y = (acc * m + (np.int64(1) << (s - 1))) >> s\n", file=REF),)),
    Mutation(
        "multiplier_m0_in_1_2", "multiplier decomposed with M0 in [1, 2) instead of [0.5, 1)",
        ("03_quant_basics",),
        (Patch("M0, e = np.frexp(M)  # M = M0 * 2^e, M0 in [0.5, 1)",
               "M0, e = np.frexp(M)\n    M0, e = M0 * 2, e - 1", file=REF),)),
    Mutation(
        "multiplier_no_carry", "m = rint(M0 * 2^31) may round up to 2^31 (no carry to 2^30, n-1)",
        ("03_quant_basics",),
        (Patch("carry = m == 2 ** 31", "carry = m > 2 ** 31", file=REF),)),
    Mutation(
        "bias_scale_input_only", "bias quantized with the input scale only (forgets s_w)",
        ("03_quant_basics",),
        (Patch("r = np.rint(b / s)", "r = np.rint(b / np.float64(np.float32(input_scale)))",
               file=REF),)),
]

FUSE = "needle/quant/fuse.py"
OBS = "needle/quant/observers.py"
MODULES = "needle/quant/modules.py"
SCALAR_CC = "src/cpu/qgemm_scalar.cc"
QGEMM_CUH = "src/cuda/qgemm.cuh"

CATALOG += [
    Mutation(
        "safetensors_big_endian", "header length written big-endian",
        ("01_save_load",),
        (Patch('f.write(len(raw).to_bytes(8, "little"))', 'f.write(len(raw).to_bytes(8, "big"))',
               file="needle/serialization.py"),)),
    Mutation(
        "bn_variance_without_eps", "BatchNorm folded with 1/sqrt(var), forgetting eps",
        ("02_fusion",),
        (Patch("scale = gamma / np.sqrt(var + bn.eps)", "scale = gamma / np.sqrt(var)", file=FUSE),)),
    Mutation(
        "bn_variance_as_std", "BatchNorm folded with 1/(var + eps) instead of 1/sqrt(var + eps)",
        ("02_fusion",),
        (Patch("scale = gamma / np.sqrt(var + bn.eps)", "scale = gamma / (var + bn.eps)", file=FUSE),)),
    Mutation(
        "bn_bias_skipped", "BatchNorm folding drops the BN bias (beta)",
        ("02_fusion",),
        (Patch("b_f = (b - mean) * scale + beta", "b_f = (b - mean) * scale", file=FUSE),)),
    Mutation(
        "minmax_last_batch", "min/max observer keeps only the last batch's range",
        ("04_calibration",),
        (Patch("self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)",
               "self.lo, self.hi = lo, hi", file=OBS),)),
    Mutation(
        "mse_observer_abs_error", "MSE observer minimizes the mean absolute error instead",
        ("04_calibration",),
        (Patch("err = ((deq.astype(np.float64) - s) ** 2).mean(axis=0)",
               "err = np.abs(deq.astype(np.float64) - s).mean(axis=0)", file=OBS),)),
    Mutation(
        "int16_accumulator", "GEMM accumulates in int16 (overflows for real layer sizes)",
        ("05_int8_cpu_kernel",),
        (Patch("acc = a.astype(np.int64) @ w.astype(np.int64).T",
               "acc = (a.astype(np.int16) @ w.astype(np.int16).T).astype(np.int64)", file=REF),)),
    Mutation(
        "transposed_weight_layout", "weights read as [K, N] instead of [N, K] (reshape, not .T)",
        ("05_int8_cpu_kernel",),
        (Patch("acc = a.astype(np.int64) @ w.astype(np.int64).T",
               "acc = a.astype(np.int64) @ w.astype(np.int64).reshape(w.shape[1], w.shape[0])",
               file=REF),)),
    Mutation(
        "no_zero_point_correction", "GEMM forgets the -zx * colsum correction",
        ("05_int8_cpu_kernel",),
        (Patch("acc = acc - np.int64(a_zero_point) * colsum.astype(np.int64) + bias.astype(np.int64)",
               "acc = acc + bias.astype(np.int64)", file=REF),)),
    # C++ (src/cpu/qgemm_scalar.cc): each costs a native rebuild of the grading workspace.
    Mutation(
        "cpp_int16_accumulator", "C++ scalar kernel accumulates the inner product in int16",
        ("05_int8_cpu_kernel",),
        (Patch("      int32_t dot = 0;\n", "      int16_t dot = 0;\n", file=SCALAR_CC),)),
    Mutation(
        "cpp_forgets_colsum", "C++ scalar kernel forgets the -zx * colsum correction",
        ("05_int8_cpu_kernel",),
        (Patch("int64_t v = int64_t(dot) - int64_t(a_zero_point) * colsum[j] + bias[j];",
               "int64_t v = int64_t(dot) + bias[j];", file=SCALAR_CC),)),
    # CUDA (src/cuda/qgemm.cuh, run through the host emulation): a CUDA rebuild each.
    Mutation(
        "cuda_tile_signed_activations", "CUDA compute_tile uses the signed dp4a for uint8 codes",
        ("06_cuda_int8",),
        (Patch("acc[i][j] = dot4<AT>(av[i], bv[j], acc[i][j]);",
               "acc[i][j] = dot4<int8_t>(av[i], bv[j], acc[i][j]);", file=QGEMM_CUH),)),
    Mutation(
        "cuda_tile_contiguous_rows", "CUDA compute_tile reads rows ty * 4 + i, not the strided ones",
        ("06_cuda_int8",),
        (Patch("av[i] = As[kw][ty + i * kRowStride];", "av[i] = As[kw][ty * TM + i];",
               file=QGEMM_CUH),)),
    Mutation(
        "flatten_nhwc_order", "quantized Flatten keeps NHWC order (the Linear expects NCHW)",
        ("07_end_to_end",),
        (Patch("        ### BEGIN SOLUTION\n        x = x.permute((0, 3, 1, 2)).compact()\n",
               "        ### BEGIN SOLUTION\n        x = x.compact()\n", file=MODULES),)),
]


# ---------------------------------------------------------------------------------------------
# More wrong solutions, at least four per exercise; each breaks one rule the exercise states
# (graders/rules.py lists them). ``M`` builds one, ``F``/``C`` patch a library file / a cell.

CONV = "needle/quant/convert.py"


# the reference writer's data line, which several wrong solutions rewrite
_ST_WRITE_DATA = "f.write(arr.astype(DTYPE_CODES[_CODE_OF[arr.dtype.name]], copy=False).tobytes())"
# and the MSE observer's qparams of each candidate
_MSE_QPARAMS = ("scale, zp = R.choose_qparams(lo, hi, self.scheme, self.dtype, self.bits,\n"
                "                                         self.reduced_range)")


def F(old, new, file=REF):
    return Patch(old, new, file=file)


def C(nb, cell, old, new):
    return Patch(old, new, cell=(nb, cell))


def M(exercise, name, description, notebook, *patches):
    return Mutation(name, description, (notebook,), tuple(patches), exercise)


SER = "needle/serialization.py"
_PC = ("03_quant_basics", "impl_per_channel")
_QD = ("06_cuda_int8", "impl_qgemm_dp4a")
NB1, NB2, NB3 = "01_save_load", "02_fusion", "03_quant_basics"
NB4, NB5, NB6, NB7 = "04_calibration", "05_int8_cpu_kernel", "06_cuda_int8", "07_end_to_end"

CATALOG += [
    # 1.1 write_safetensors
    M("write_safetensors", "st_offsets_absolute", "data offsets counted from the file start", NB1,
      F('header = {"__metadata__": metadata}\n    offset = 0\n',
        'header = {"__metadata__": metadata}\n    offset = 8\n', file=SER)),
    M("write_safetensors", "st_offsets_overlap", "each tensor's offsets start at 0", NB1,
      F("        offset += arr.nbytes\n", "", file=SER)),
    M("write_safetensors", "st_metadata_dropped", "metadata not written", NB1,
      F('header = {"__metadata__": metadata}\n', 'header = {}\n', file=SER)),
    M("write_safetensors", "st_shape_dropped", "shape written flat ([size])", NB1,
      F('"shape": list(arr.shape),', '"shape": [int(arr.size)],', file=SER)),
    M("write_safetensors", "st_unsorted_big_endian_data", "int32 data written big-endian", NB1,
      F(_ST_WRITE_DATA,
        "f.write(arr.astype(arr.dtype.newbyteorder(\">\") if arr.dtype.kind != \"f\" else arr.dtype, copy=False).tobytes())",
        file=SER)),
    M("write_safetensors", "st_data_unsorted", "entries and data in the dict's order", NB1,
      F("    names = sorted(arrays)\n", "    names = list(arrays)\n", file=SER)),
    M("write_safetensors", "st_header_unpadded", "header not padded to a multiple of 8", NB1,
      F('    raw += b" " * (-len(raw) % 8)\n', "", file=SER)),
    M("write_safetensors", "st_header_nul_padded", "header padded with NUL bytes", NB1,
      F('    raw += b" " * (-len(raw) % 8)\n', '    raw += b"\\0" * (-len(raw) % 8)\n', file=SER)),
    # 1.2 read_safetensors_header
    M("read_safetensors_header", "st_reader_big_endian", "header length read big-endian", NB1,
      F('n = int.from_bytes(f.read(8), "little")', 'n = int.from_bytes(f.read(8), "big")',
        file=SER)),
    M("read_safetensors_header", "st_reader_no_length_check",
      "reads the header without checking its length", NB1,
      F("    check_header_length(path, n, file_size)\n    raw", "    raw", file=SER)),
    M("read_safetensors_header", "st_reader_data_start_n", "data section said to start at n",
      NB1, F("object_pairs_hook=_no_duplicates), 8 + n", "object_pairs_hook=_no_duplicates), n",
             file=SER)),
    M("read_safetensors_header", "st_reader_data_start_aligned",
      "data section assumed to start at a multiple of 8", NB1,
      F("object_pairs_hook=_no_duplicates), 8 + n",
        "object_pairs_hook=_no_duplicates), 8 + n + (-n % 8)", file=SER)),
    M("read_safetensors_header", "st_reader_duplicates", "a key given twice: the last one wins",
      NB1, F("json.loads(raw.decode(\"utf-8\"), object_pairs_hook=_no_duplicates)",
             "json.loads(raw.decode(\"utf-8\"))", file=SER)),
    # 2.1 fold_bn
    M("fold_bn", "bn_mean_not_subtracted", "folded bias forgets the running mean", NB2,
      F("b_f = (b - mean) * scale + beta", "b_f = b * scale + beta", file=FUSE)),
    M("fold_bn", "bn_eps_outside_sqrt", "eps added outside the square root", NB2,
      F("scale = gamma / np.sqrt(var + bn.eps)", "scale = gamma / (np.sqrt(var) + bn.eps)", file=FUSE)),
    M("fold_bn", "bn_gamma_ignored", "weight scaled by 1/std only (gamma dropped)", NB2,
      F("scale = gamma / np.sqrt(var + bn.eps)", "scale = 1.0 / np.sqrt(var + bn.eps)", file=FUSE)),
    M("fold_bn", "bn_no_bias_returns_beta", "without a layer bias returns beta (forgets the mean)",
      NB2, F("b_f = (b - mean) * scale + beta",
             "b_f = beta.copy() if bias is None else (b - mean) * scale + beta", file=FUSE)),
    M("fold_bn", "bn_bias_shape_kept", "a Linear's (1, C) bias folded into a (1, C) result", NB2,
      F("b = np.zeros(c) if bias is None else np.asarray(bias, dtype=np.float64).reshape(c)",
        "b = np.zeros(c) if bias is None else np.asarray(bias, dtype=np.float64)", file=FUSE)),
    M("fold_bn", "bn_no_size_check", "a BatchNorm of another size broadcasts silently", NB2,
      F("    if gamma.shape != (c,):\n        raise ValueError(f\"cannot fold",
        "    if gamma.shape[0] not in (1, c):\n        raise ValueError(f\"cannot fold", file=FUSE)),
    M("fold_bn", "bn_float32_math", "BatchNorm statistics used in float32 (as .numpy() gives them)",
      NB2, F("    gamma = bn.weight.numpy().astype(np.float64)\n    beta = bn.bias.numpy().astype(np.float64)\n"
             "    mean = bn.running_mean.numpy().astype(np.float64)\n    var = bn.running_var.numpy().astype(np.float64)\n",
             "    gamma = bn.weight.numpy()\n    beta = bn.bias.numpy()\n"
             "    mean = bn.running_mean.numpy()\n    var = bn.running_var.numpy()\n", file=FUSE)),
    M("fold_bn", "bn_channels_first", "scales the first axis (PyTorch's output-channel axis)", NB2,
      F("w_f = w * scale\n", "w_f = w * scale.reshape((-1,) + (1,) * (w.ndim - 1))\n", file=FUSE)),
    # 2.2 fuse_sequence
    M("fuse_sequence", "fs_bn_isinstance", "matches the BatchNorm with isinstance (BatchNorm2d after a Linear)",
      NB2, F("if type(nxt) is bn_type:", "if isinstance(nxt, bn_type):", file=FUSE)),
    M("fuse_sequence", "fs_relu_kept", "fuses the ReLU but keeps it in the list too", NB2,
      F("            i += 1 + int(relu)\n            out.append(rules.conv(",
        "            i += 1\n            out.append(rules.conv(", file=FUSE)),
    M("fuse_sequence", "fs_relu_flag_dropped", "consumes the ReLU without passing relu=True", NB2,
      F("out.append(rules.conv(m, bn, relu) if is_conv else rules.linear(m, bn, relu))",
        "out.append(rules.conv(m, bn, False) if is_conv else rules.linear(m, bn, False))", file=FUSE)),
    M("fuse_sequence", "fs_residual_not_recursed", "the residual branch is left unfused", NB2,
      F("out.append(rules.residual(_fuse(m.fn, rules), relu))",
        "out.append(rules.residual(m.fn, relu))", file=FUSE)),
    M("fuse_sequence", "fs_residual_relu_ignored", "a ReLU after a Residual is not fused", NB2,
      F("            relu = isinstance(nxt, nnb.ReLU)\n            out.append(rules.residual(",
        "            relu = False\n            out.append(rules.residual(", file=FUSE)),
    M("fuse_sequence", "fs_skips_after_lone_conv", "always skips the module after a Conv (as if a BatchNorm)",
      NB2, F("            if type(nxt) is bn_type:  # BatchNorm2d subclasses BatchNorm1d: match exactly\n"
             "                bn, i = nxt, i + 1\n",
             "            if type(nxt) is bn_type:  # BatchNorm2d subclasses BatchNorm1d: match exactly\n"
             "                bn = nxt\n            if nxt is not None:\n                i += 1\n", file=FUSE)),
    M("fuse_sequence", "fs_modifies_input", "pops the fused modules from the input list", NB2,
      F("    out, i = [], 0\n    while i < len(mods):", "    out, i = [], 0\n    mods, given = list(mods), mods\n"
        "    given.clear()\n    while i < len(mods):", file=FUSE)),
    # 3.1 choose_qparams
    M("choose_qparams", "qparams_float64_division", "zero point from lo / scale in float64", NB3,
      F("steps = np.rint(lo.astype(np.float32) / scale).astype(np.float64)",
        "steps = np.rint(lo.astype(np.float64) / scale.astype(np.float64)).astype(np.float64)")),
    M("choose_qparams", "qparams_zero_range_scale_zero", "scale 0 for an all-zero range", NB3,
      F("scale = np.where(hi - lo == 0.0, np.float32(1.0), scale)", "")),
    M("choose_qparams", "qparams_symmetric_uint8_zp0", "symmetric uint8 zero point 0, not 128",
      NB3, F("mid = 0 if qmin < 0 else (qmin + qmax + 1) // 2", "mid = 0")),
    M("choose_qparams", "qparams_no_tiny_floor", "no floor at the smallest float32 scale", NB3,
      F("scale = np.maximum(scale, np.finfo(np.float32).tiny).astype(np.float32)", "")),
    M("choose_qparams", "qparams_symmetric_full_range", "symmetric scale max|x| / (qmax - qmin)",
      NB3, F("scale = np.maximum(-lo, hi) / ((qmax - qmin) / 2.0)",
             "scale = np.maximum(-lo, hi) / (qmax - qmin)")),
    # 3.2 quantize + dequantize: quantize
    M("quantize", "quantize_reciprocal", "multiplies by the float32 reciprocal of the scale",
      NB3, F("r = np.rint(x / s).astype(np.float64)", "r = np.rint(x * (np.float32(1) / s)).astype(np.float64)")),
    M("quantize", "quantize_float64_division", "divides in float64", NB3,
      F("r = np.rint(x / s).astype(np.float64)",
        "r = np.rint(np.asarray(x, np.float64) / np.asarray(s, np.float64)).astype(np.float64)")),
    M("quantize", "quantize_nan_to_min", "NaN quantized to qmin, not the zero point", NB3,
      F("r = np.where(np.isnan(r), 0.0, r)\n    q = np.clip(r + zp, qmin, qmax)",
        "r = np.where(np.isnan(r), qmin - zp, r)\n    q = np.clip(r + zp, qmin, qmax)")),
    M("quantize", "quantize_wraps", "casts without clamping (wraps around)", NB3,
      F("q = np.clip(r + zp, qmin, qmax)", "q = (r + zp).astype(np.int64)")),
    # 3.2 quantize + dequantize: dequantize
    M("dequantize", "dequantize_first_scale", "uses the first channel's scale for all channels",
      NB3, F("return (q.astype(np.int64) - zp).astype(np.float32) * s",
             "return (q.astype(np.int64) - zp).astype(np.float32) * np.float32(np.ravel(s)[0])")),
    M("dequantize", "dequantize_float64", "returns float64", NB3,
      F("return (q.astype(np.int64) - zp).astype(np.float32) * s",
        "return (q.astype(np.int64) - zp) * np.asarray(s, np.float64)")),
    M("dequantize", "dequantize_adds_zero_point", "adds the zero point instead of subtracting",
      NB3, F("return (q.astype(np.int64) - zp).astype(np.float32) * s",
             "return (q.astype(np.int64) + zp).astype(np.float32) * s")),
    # 3.3 per_channel_weight_qparams
    M("per_channel_weight_qparams", "per_channel_affine", "affine int8 per-channel weights",
      NB3, C(*_PC, '"symmetric", "int8",', '"affine", "int8",')),
    M("per_channel_weight_qparams", "per_channel_wrong_axis", "one scale per input channel", NB3,
      C(*_PC, "flat = np.asarray(w, np.float32).reshape(w.shape[0], -1)",
        "flat = np.moveaxis(np.asarray(w, np.float32), 1, 0).reshape(w.shape[1], -1)")),
    M("per_channel_weight_qparams", "per_channel_abs_max_only_positive", "range from max only",
      NB3, C(*_PC, "flat.min(axis=1), flat.max(axis=1)", "-flat.max(axis=1), flat.max(axis=1)")),
    # 3.4 quantize_bias + quantize_multiplier: quantize_bias
    M("quantize_bias", "bias_wraps", "int32 bias wraps instead of saturating", NB3,
      F("return np.clip(r, _INT32_MIN, _INT32_MAX).astype(np.int32)", "return r.astype(np.int64).astype(np.int32)")),
    M("quantize_bias", "bias_truncates", "bias rounded toward zero", NB3,
      F("r = np.rint(b / s)", "r = np.trunc(b / s)")),
    M("quantize_bias", "bias_nan_kept", "NaN bias not mapped to 0", NB3,
      F("r = np.where(np.isnan(r), 0.0, r)\n    return np.clip(r, _INT32_MIN", "r = np.where(np.isnan(r), _INT32_MIN, r)\n    return np.clip(r, _INT32_MIN")),
    # 3.4 quantize_bias + quantize_multiplier: quantize_multiplier
    M("quantize_multiplier", "multiplier_truncates", "m = floor(M0 * 2^31) instead of rint", NB3,
      F("m = np.rint(np.ldexp(M0, 31)).astype(np.int64)", "m = np.floor(np.ldexp(M0, 31)).astype(np.int64)")),
    M("quantize_multiplier", "multiplier_tiny_kept", "tiny multipliers (n > 31) not flushed to 0",
      NB3, F("tiny = (M == 0) | (n > 31)", "tiny = (M == 0)")),
    M("quantize_multiplier", "multiplier_shift_sign", "shift returned as the exponent e, not -e",
      NB3, F("n = -e.astype(np.int64)", "n = e.astype(np.int64)")),
    M("quantize_multiplier", "multiplier_float32_frexp", "decomposes float32(M) (loses bits)",
      NB3, F("M0, e = np.frexp(M)  # M = M0 * 2^e, M0 in [0.5, 1)",
             "M0, e = np.frexp(np.asarray(M, np.float32))\n    M0 = M0.astype(np.float64)")),
    # 3.5 requantize
    M("requantize", "requantize_half_away", "ties of negative values rounded away from zero",
      NB3, F("y = (acc * m + (np.int64(1) << (s - 1))) >> s",
             "y = np.where(acc >= 0, (acc * m + (np.int64(1) << (s - 1))) >> s, -((-acc * m + (np.int64(1) << (s - 1))) >> s))")),
    M("requantize", "requantize_float_math", "requantizes in float64 (rint(acc * M))", NB3,
      F("y = (acc * m + (np.int64(1) << (s - 1))) >> s", "y = np.rint(acc * (m / 2.0 ** s)).astype(np.int64)")),
    M("requantize", "requantize_zp_before_shift", "adds the zero point to acc before scaling",
      NB3, F("y = (acc * m + (np.int64(1) << (s - 1))) >> s",
             "y = ((acc + int(out_zero_point)) * m + (np.int64(1) << (s - 1))) >> s"),
      F("return np.clip(y + int(out_zero_point), lo, hi).astype(name)\n    ### END SOLUTION\n\n\n"
        "def weight_colsum", "return np.clip(y, lo, hi).astype(name)\n    ### END SOLUTION\n\n\n"
        "def weight_colsum")),
    # 4.1 MinMaxObserver._observe
    M("MinMaxObserver._observe", "minmax_first_batch", "keeps only the first batch's range", NB4,
      F("self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)", "pass", file=OBS)),
    M("MinMaxObserver._observe", "minmax_global_not_per_channel", "one range for all channels",
      NB4, F("lo, hi = x2d.min(axis=0), x2d.max(axis=0)",
             "lo, hi = np.full(x2d.shape[1], x2d.min()), np.full(x2d.shape[1], x2d.max())", file=OBS)),
    M("MinMaxObserver._observe", "minmax_abs_range", "range is -max|x|..max|x|", NB4,
      F("lo, hi = x2d.min(axis=0), x2d.max(axis=0)",
        "hi = np.abs(x2d).max(axis=0)\n        lo = -hi", file=OBS)),
    M("MinMaxObserver._observe", "minmax_reshape_mixes_channels",
      "reshapes to [rows, C] without moving the channel axis last", NB4,
      F("x2d = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis])",
        "x2d = x.reshape(-1, x.shape[self.axis])", file=OBS)),
    M("MinMaxObserver._observe", "minmax_negative_axis_breaks",
      "builds the axis order with range(ndim), which repeats a negative axis", NB4,
      F("x2d = np.moveaxis(x, self.axis, -1).reshape(-1, x.shape[self.axis])",
        "x2d = x.transpose([i for i in range(x.ndim) if i != self.axis] + [self.axis])"
        ".reshape(-1, x.shape[self.axis])", file=OBS)),
    M("MinMaxObserver._observe", "minmax_empty_batch_crashes", "reduces an empty batch (raises)",
      NB4, F("        if x.size == 0:\n            return None\n        if self.axis is None:",
             "        if self.axis is None:", file=OBS)),
    M("MinMaxObserver._observe", "minmax_returns_input", "returns the batch as given, not as [rows, C]",
      NB4, F("            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)\n"
             "        return x2d", "            self.lo, self.hi = np.minimum(self.lo, lo), np.maximum(self.hi, hi)\n"
             "        return x", file=OBS)),
    # 4.2 MSEObserver._range
    M("MSEObserver._range", "mse_no_search", "returns the min/max range (no search)", NB4,
      F("            better = err < best_err\n", "            better = np.zeros_like(err, bool)\n", file=OBS)),
    M("MSEObserver._range", "mse_one_factor", "one shrink factor for all channels", NB4,
      F("            better = err < best_err\n", "            better = np.full(err.shape, err.mean() < best_err.mean())\n", file=OBS)),
    M("MSEObserver._range", "mse_last_candidate", "keeps the last candidate, not the best", NB4,
      F("            better = err < best_err\n", "            better = np.ones_like(err, bool)\n", file=OBS)),
    M("MSEObserver._range", "mse_shrinks_only_hi", "shrinks only the upper end", NB4,
      F("            lo, hi = lo_all * a, hi_all * a\n", "            lo, hi = lo_all, hi_all * a\n", file=OBS)),
    M("MSEObserver._range", "mse_ties_keep_last", "ties keep the later (wider) candidate", NB4,
      F("            better = err < best_err\n", "            better = err <= best_err\n", file=OBS)),
    M("MSEObserver._range", "mse_ignores_bits", "candidates' qparams for 8 bits, not the observer's bits",
      NB4, F("scale, zp = R.choose_qparams(lo, hi, self.scheme, self.dtype, self.bits,\n"
             "                                         self.reduced_range)",
             "scale, zp = R.choose_qparams(lo, hi, self.scheme, self.dtype, None,\n"
             "                                         self.reduced_range)", file=OBS)),
    # 5.1 qgemm_reference
    M("qgemm_reference", "qgemm_no_saturation", "accumulator not saturated to int32", NB5,
      F("acc = np.clip(acc, _INT32_MIN, _INT32_MAX)\n", "")),
    M("qgemm_reference", "qgemm_bias_twice", "bias added twice", NB5,
      F("acc = acc - np.int64(a_zero_point) * colsum.astype(np.int64) + bias.astype(np.int64)",
        "acc = acc - np.int64(a_zero_point) * colsum.astype(np.int64) + 2 * bias.astype(np.int64)")),
    M("qgemm_reference", "qgemm_zp_sign", "adds zx * colsum instead of subtracting", NB5,
      F("acc = acc - np.int64(a_zero_point) * colsum.astype(np.int64) + bias.astype(np.int64)",
        "acc = acc + np.int64(a_zero_point) * colsum.astype(np.int64) + bias.astype(np.int64)")),
    # 5.2 C++ (native)
    M("qgemm_scalar_tile", "cpp_no_saturation", "C++ tile does not saturate to int32", NB5,
      F("      v = std::min<int64_t>(std::max<int64_t>(v, INT32_MIN), INT32_MAX);\n", "", file=SCALAR_CC)),
    M("qgemm_scalar_tile", "cpp_ignores_lda", "C++ tile assumes lda == k", NB5,
      F("const uint8_t* arow = a + r * lda;", "const uint8_t* arow = a + r * k;", file=SCALAR_CC)),
    M("qgemm_scalar_tile", "cpp_ignores_ldc", "C++ tile writes with stride cols, not ldc", NB5,
      F("acc[r * ldc + j] = int32_t(v);", "acc[r * cols + j] = int32_t(v);", file=SCALAR_CC)),
    # 6.1 qgemm_dp4a
    M("qgemm_dp4a", "qgemm_dp4a_calls_reference", "qgemm_dp4a calls ref.qgemm_reference", NB6,
      C(*_QD, "aw, ww = pack_k4(a), pack_k4(w)",
        "return ref.qgemm_reference(a, w, a_zero_point, bias, multiplier, shift, out_zero_point, relu, out_dtype)\n    aw, ww = pack_k4(a), pack_k4(w)")),
    M("qgemm_dp4a", "qgemm_dp4a_no_colsum", "forgets the zero-point correction", NB6,
      C(*_QD, "acc = acc.astype(np.int64) - int(a_zero_point) * colsum + np.asarray(bias, np.int64)",
        "acc = acc.astype(np.int64) + np.asarray(bias, np.int64)")),
    M("qgemm_dp4a", "qgemm_dp4a_no_saturation", "accumulator not saturated", NB6,
      C(*_QD, "acc = np.clip(acc, -2 ** 31, 2 ** 31 - 1)\n", "")),
    M("qgemm_dp4a", "qgemm_dp4a_no_bias", "bias dropped", NB6,
      C(*_QD, " + np.asarray(bias, np.int64)", "")),
    # 6.2 compute_tile (CUDA, native)
    M("compute_tile", "cuda_tile_swapped_operands", "dp4a with swapped operand roles", NB6,
      F("acc[i][j] = dot4<AT>(av[i], bv[j], acc[i][j]);", "acc[i][j] = dot4<AT>(bv[j], av[i], acc[i][j]);",
        file=QGEMM_CUH)),
    M("compute_tile", "cuda_tile_contiguous_cols", "reads columns tx * TN + j", NB6,
      F("bv[j] = Bs[kw][tx + j * kColStride];", "bv[j] = Bs[kw][tx * TN + j];", file=QGEMM_CUH)),
    # 7.x end to end
    M("quantize_weight", "qweight_per_tensor", "one scale for the whole weight", NB7,
      F("q = R.quantize(w, scale, zp, \"int8\", axis=obs.axis, qmin=qmin, qmax=qmax)",
        "scale = np.full_like(np.asarray(scale, np.float32), np.max(scale))\n    q = R.quantize(w, scale, zp, \"int8\", axis=obs.axis, qmin=qmin, qmax=qmax)", file=CONV)),
    M("QuantStub.forward", "quantstub_ignores_zp", "QuantStub drops the zero point", NB7,
      F("q = (r + float(zp)).astype(self.dtype)", "q = r.astype(self.dtype)", file=MODULES)),
    M("QuantStub.forward", "quantstub_truncates", "QuantStub truncates (floor) before the cast",
      NB7, F("r = (data / s).astype(\"int32\").astype(\"float32\")",
             "r = (data / s - 0.5).astype(\"int32\").astype(\"float32\")", file=MODULES)),
    M("DeQuantStub.forward", "dequantstub_ignores_zp", "DeQuantStub ignores the zero point", NB7,
      F("x = data.astype(\"float32\") - float(q.zero_point)", "x = data.astype(\"float32\")", file=MODULES)),
    M("DeQuantStub.forward", "dequantstub_first_scale", "uses the first channel's scale only",
      NB7, F("if np.ndim(q.scale) == 0:", "if True:\n            q.scale = np.ravel(q.scale)[0]", file=MODULES)),
    M("QuantizedConv2d.forward", "qconv_pads_zero", "pads with code 0, not the zero point", NB7,
      F("value=d[\"zp_in\"])", "value=0)", file=MODULES)),
    M("QuantizedConv2d.forward", "qconv_stride_ignored", "output size ignores the stride", NB7,
      F("Ho, Wo = (H - K) // s + 1, (W - K) // s + 1", "Ho, Wo = (H - K) + 1, (W - K) + 1\n        s = 1", file=MODULES)),
    M("QuantizedFlatten.forward", "flatten_nchw_transposed", "permutes to NWHC", NB7,
      F("### BEGIN SOLUTION\n        x = x.permute((0, 3, 1, 2)).compact()",
                "### BEGIN SOLUTION\n        x = x.permute((0, 3, 2, 1)).compact()", file=MODULES)),
    M("quantized_add", "qadd_no_left_shift", "adds without the headroom shift", NB7,
      F("y = (ya + yb + (1 << (L - 1))) >> L", "y = (ya + yb) >> L")),
    M("quantized_add", "qadd_ignores_b_zp", "forgets the second input's zero point", NB7,
      F("yb = rescale((b - int(b_zero_point)) << L, b_mult, b_shift)", "yb = rescale(b << L, b_mult, b_shift)")),
    M("quantized_add", "qadd_relu_at_zero", "fused ReLU clamps at code 0", NB7,
      F("    y = (ya + yb + (1 << (L - 1))) >> L\n    if relu:\n        lo = max(lo, int(out_zero_point))",
        "    y = (ya + yb + (1 << (L - 1))) >> L\n    if relu:\n        lo = max(lo, 0)")),
]

CATALOG += [
    M("quantize_weight", "qweight_scale_not_per_channel", "returns one scale, not one per channel",
      NB7, F("scale = np.broadcast_to(np.asarray(scale, np.float32), (w.shape[axis],)).copy()",
             "scale = np.asarray(scale, np.float32).reshape(-1)[:1].copy()", file=CONV)),
    M("quantize_weight", "qweight_axis_zero", "quantizes along axis 0, not the channel axis",
      NB7, F("q = R.quantize(w, scale, zp, \"int8\", axis=obs.axis, qmin=qmin, qmax=qmax)",
             "q = R.quantize(w, scale, zp, \"int8\", axis=0, qmin=qmin, qmax=qmax)", file=CONV)),
    M("QuantStub.forward", "quantstub_no_saturation", "QuantStub wraps instead of saturating",
      NB7, F("q = (r + float(zp)).astype(self.dtype)",
             "q = ((r + float(zp)).astype(\"int32\") % 256).astype(\"float32\").astype(self.dtype)",
             file=MODULES)),
    M("QuantStub.forward", "quantstub_multiplies_scale", "QuantStub multiplies by the scale",
      NB7, F("r = (data / s).astype(\"int32\").astype(\"float32\")",
             "r = (data * s).astype(\"int32\").astype(\"float32\")", file=MODULES)),
    M("DeQuantStub.forward", "dequantstub_adds_zp", "DeQuantStub adds the zero point", NB7,
      F("x = data.astype(\"float32\") - float(q.zero_point)",
        "x = data.astype(\"float32\") + float(q.zero_point)", file=MODULES)),
    M("DeQuantStub.forward", "dequantstub_divides", "DeQuantStub divides by the scale", NB7,
      F("            x = x * float(q.scale)", "            x = x / float(q.scale)", file=MODULES)),
    M("DeQuantStub.forward", "dequantstub_keeps_nhwc", "DeQuantStub returns images in NHWC order",
      NB7, F("        if x.ndim == 4:\n            x = x.permute((0, 3, 1, 2)).compact()\n        ### END SOLUTION",
             "        x = x.compact()\n        ### END SOLUTION", file=MODULES)),
    M("DeQuantStub.forward", "dequantstub_nwhc", "DeQuantStub permutes images to NWHC", NB7,
      F("        if x.ndim == 4:\n            x = x.permute((0, 3, 1, 2)).compact()\n        ### END SOLUTION",
        "        if x.ndim == 4:\n            x = x.permute((0, 3, 2, 1)).compact()\n        ### END SOLUTION",
        file=MODULES)),
    M("QuantizedConv2d.forward", "qconv_pad_one_side", "pads only the top and left", NB7,
      F("x = x.pad(((0, 0), (p, p), (p, p), (0, 0)), value=d[\"zp_in\"])",
        "x = x.pad(((0, 0), (p, 0), (p, 0), (0, 0)), value=d[\"zp_in\"])\n            x = x.pad(((0, 0), (0, p), (0, p), (0, 0)), value=0)", file=MODULES)),
    M("QuantizedConv2d.forward", "qconv_patch_order", "patches in (c, kh, kw) order", NB7,
      F("cols = x.as_strided((N, Ho, Wo, K, K, C), (sN, sH * s, sW * s, sH, sW, sC))",
        "cols = x.as_strided((N, Ho, Wo, C, K, K), (sN, sH * s, sW * s, sC, sH, sW))", file=MODULES)),
    M("QuantizedFlatten.forward", "flatten_no_permute_no_compact", "reshapes without permuting",
      NB7, F("### BEGIN SOLUTION\n        x = x.permute((0, 3, 1, 2)).compact()",
             "### BEGIN SOLUTION\n        x = x.compact()\n        x = x.reshape((x.shape[0], x.shape[3], x.shape[1], x.shape[2]))", file=MODULES)),
    M("QuantizedFlatten.forward", "flatten_nhcw", "permutes to NHCW", NB7,
      F("### BEGIN SOLUTION\n        x = x.permute((0, 3, 1, 2)).compact()",
                "### BEGIN SOLUTION\n        x = x.permute((0, 1, 3, 2)).compact()", file=MODULES)),
    M("quantized_add", "qadd_truncating_rescale", "rescales the inputs with truncation", NB7,
      F("return (x * np.int64(m) + (np.int64(1) << (s - 1))) >> s", "return (x * np.int64(m)) >> s")),
]

# the exercise of the first catalog's mutations (by name)
_FIRST = {
    "per_tensor_weights": "per_channel_weight_qparams", "round_toward_zero": "quantize",
    "round_half_away": "quantize", "full_range_weights": "per_channel_weight_qparams",
    "quantize_forgets_zero_point": "quantize", "dequantize_forgets_zero_point": "dequantize",
    "zero_point_sign": "choose_qparams", "range_without_zero": "choose_qparams",
    "requantize_truncates": "requantize", "relu_not_fused": "requantize",
    "multiplier_m0_in_1_2": "quantize_multiplier", "multiplier_no_carry": "quantize_multiplier",
    "bias_scale_input_only": "quantize_bias",
    "safetensors_big_endian": "write_safetensors", "bn_variance_without_eps": "fold_bn",
    "bn_variance_as_std": "fold_bn", "bn_bias_skipped": "fold_bn",
    "minmax_last_batch": "MinMaxObserver._observe", "mse_observer_abs_error": "MSEObserver._range",
    "int16_accumulator": "qgemm_reference", "transposed_weight_layout": "qgemm_reference",
    "no_zero_point_correction": "qgemm_reference",
    "cpp_int16_accumulator": "qgemm_scalar_tile", "cpp_forgets_colsum": "qgemm_scalar_tile",
    "cuda_tile_signed_activations": "compute_tile", "cuda_tile_contiguous_rows": "compute_tile",
    "flatten_nhwc_order": "QuantizedFlatten.forward",
}
CATALOG = [m if m.exercise else Mutation(m.name, m.description, m.notebooks, m.patches,
                                         _FIRST.get(m.name, "")) for m in CATALOG]


def ci_subset(catalog=None):
    """The fixed part of the audit that ``make test`` runs: for each exercise, its first two
    Python-level wrong solutions in catalog order (``make audit`` runs them all)."""
    seen, out = {}, []
    for m in catalog if catalog is not None else CATALOG:
        native = any(p.file and p.file.endswith((".cc", ".cu", ".cuh", ".h")) for p in m.patches)
        if not native and seen.get(m.exercise, 0) < 2:
            seen[m.exercise] = seen.get(m.exercise, 0) + 1
            out.append(m)
    return out

# Notebook 08: quantization-aware training.
QAT, NB8 = "needle/quant/qat.py", "08_qat"
CATALOG += [
    M("FakeQuantize.gradient", "ste_without_clipping_mask", "passes the gradient everywhere, clipped values too",
      NB8, F("mask = (codes >= self.qmin) & (codes <= self.qmax) & ~np.isnan(x)",
             "mask = np.ones(x.shape, dtype=bool)", file=QAT)),
    M("FakeQuantize.gradient", "ste_zero_gradient", "blocks the gradient everywhere (the true derivative of rounding)",
      NB8, F("mask = (codes >= self.qmin) & (codes <= self.qmax) & ~np.isnan(x)",
             "mask = np.zeros(x.shape, dtype=bool)", file=QAT)),
    M("conv_bn_qat", "qat_fold_var_not_std", "folds with the variance instead of the standard deviation",
      NB8, F("    sf = bn.weight / ops.power_scalar(bn.running_var + bn.eps, 0.5)\n    w_fold",
             "    sf = bn.weight / (bn.running_var + bn.eps)\n    w_fold", file=QAT)),
    M("conv_bn_qat", "qat_eval_forgets_mean", "the folded bias forgets the running mean",
      NB8, F("b_fold = bn.bias - bn.running_mean * sf", "b_fold = bn.bias + 0 * bn.running_mean", file=QAT)),
]

# Notebook 07 and 08: more wrong solutions, so that every exercise has at least four.
CATALOG += [
    M("quantize_weight", "qweight_truncates", "divides by the scale and truncates toward zero",
      NB7, F("q = R.quantize(w, scale, zp, \"int8\", axis=obs.axis, qmin=qmin, qmax=qmax)",
             "s = np.asarray(scale, np.float32).reshape(\n"
             "        [-1 if i == obs.axis % w.ndim else 1 for i in range(w.ndim)])\n"
             "    q = np.clip(np.trunc(w / s), qmin, qmax).astype(np.int8)", file=CONV)),
    M("quantize_weight", "qweight_ignores_observer", "takes max|w| / qmax instead of asking the "
      "config's weight observer", NB7,
      F("    scale, zp = obs.qparams()\n",
        "    scale, zp = obs.qparams()\n"
        "    red = tuple(i for i in range(w.ndim) if i != obs.axis % w.ndim) "
        "if obs.axis is not None else None\n"
        "    scale = (np.abs(w).max(axis=red) / config.weight_qrange()[1]).astype(np.float32)\n",
        file=CONV)),
    M("quantize_weight", "qweight_full_range", "clamps to the full signed range, not the "
      "config's reduced one", NB7,
      F("    qmin, qmax = config.weight_qrange()\n",
        "    qmin, qmax = config.weight_qrange()\n    qmin = -qmax - 1\n", file=CONV)),
    M("FakeQuantize.gradient", "ste_mask_open_interval", "the mask drops the codes at the range ends",
      NB8, F("mask = (codes >= self.qmin) & (codes <= self.qmax) & ~np.isnan(x)",
             "mask = (codes > self.qmin) & (codes < self.qmax) & ~np.isnan(x)", file=QAT)),
    M("FakeQuantize.gradient", "ste_mask_ignores_zero_point", "the mask's codes leave out the zero point",
      NB8, F("codes = R.quantize(x, self.scale, self.zero_point, \"int32\", axis=self.axis)",
             "codes = R.quantize(x, self.scale, 0, \"int32\", axis=self.axis)", file=QAT)),
    M("conv_bn_qat", "qat_eps_outside_sqrt", "adds eps after the square root when folding",
      NB8, F("    sf = bn.weight / ops.power_scalar(bn.running_var + bn.eps, 0.5)\n    w_fold",
             "    sf = bn.weight / (ops.power_scalar(bn.running_var, 0.5) + bn.eps)\n    w_fold",
             file=QAT)),
    M("conv_bn_qat", "qat_train_keeps_running_stats", "training never updates the running statistics",
      NB8, F("    bn.running_mean = ((1 - m) * bn.running_mean + m * mean.detach()).detach()\n"
             "    bn.running_var = ((1 - m) * bn.running_var + m * var.detach()).detach()\n",
             "", file=QAT)),
]

# Notebook 09: language models (weight-only int4, dynamic int8, SmoothQuant).
NB9 = "09_language_models"
CATALOG += [
    M("quantize_int4", "int4_per_row_range", "one range per row instead of one per group", NB9,
      F("    lo = np.nanmin(g, axis=2).reshape(-1)\n    hi = np.nanmax(g, axis=2).reshape(-1)\n",
        "    lo = np.repeat(np.nanmin(g, axis=(1, 2)), ng)\n"
        "    hi = np.repeat(np.nanmax(g, axis=(1, 2)), ng)\n")),
    M("quantize_int4", "int4_symmetric_divides_by_7", "symmetric scale max|w| / 7 (the int8 habit)",
      NB9, F('        scale, _ = choose_qparams(lo, hi, "symmetric", "int8", bits=4)\n',
             "        scale = np.maximum(np.maximum(-lo, hi), np.float32(1e-8)) / np.float32(7)\n"
             "        scale = scale.astype(np.float32)\n")),
    M("quantize_int4", "int4_asymmetric_zero_point_8", "asymmetric groups keep the zero point 8",
      NB9, F('        scale, zp = choose_qparams(lo, hi, "affine", "uint8", bits=4)\n',
             '        scale, zp = choose_qparams(lo, hi, "affine", "uint8", bits=4)\n'
             "        zp = np.full(scale.shape, 8, np.int64)\n")),
    M("quantize_int4", "int4_tail_padded_with_first_value",
      "the short last group is padded with a real weight, which enters its range", NB9,
      F("    g = np.full((n, ng * width), np.nan, np.float32)\n",
        "    g = np.repeat(w[:, :1], ng * width, axis=1).astype(np.float32)\n")),
    M("quantize_int4", "int4_round_half_up", "codes rounded with floor(x / s + 0.5)", NB9,
      F('    codes = quantize(g.reshape(n * ng, width), scale.reshape(-1), zp.reshape(-1), "uint8",\n'
        "                     axis=0, qmin=0, qmax=15)\n",
        "    with np.errstate(invalid=\"ignore\"):\n"
        "        r = np.floor(g.reshape(n * ng, width) / scale.reshape(-1, 1) + np.float32(0.5))\n"
        "    codes = np.clip(np.nan_to_num(r) + zp.reshape(-1, 1), 0, 15).astype(np.uint8)\n")),
    M("quantize_int4", "int4_zero_points_int64", "returns the zero points as int64", NB9,
      F("    return codes, scale.astype(np.float32), zp.astype(np.uint8)\n",
        "    return codes, scale.astype(np.float32), zp\n")),
    M("int4_gemm_reference", "int4_gemm_einsum", "one float32 dot product per group (numpy order)",
      NB9, F("        s = ((q[..., 0] + q[..., 4]) + (q[..., 2] + q[..., 6])) + \\\n"
             "            ((q[..., 1] + q[..., 5]) + (q[..., 3] + q[..., 7]))\n",
             '        s = np.einsum("nk,mk->mn", w[:, k0:k1], x[:, k0:k1]).astype(np.float32)\n')),
    M("int4_gemm_reference", "int4_gemm_sequential_lane_tree", "lanes reduced 0+1, 2+3, ... instead of the documented tree",
      NB9, F("        s = ((q[..., 0] + q[..., 4]) + (q[..., 2] + q[..., 6])) + \\\n"
             "            ((q[..., 1] + q[..., 5]) + (q[..., 3] + q[..., 7]))\n",
             "        s = ((q[..., 0] + q[..., 1]) + (q[..., 2] + q[..., 3])) + \\\n"
             "            ((q[..., 4] + q[..., 5]) + (q[..., 6] + q[..., 7]))\n")),
    M("int4_gemm_reference", "int4_gemm_one_set_of_lanes", "odd codes added into the even partial sums",
      NB9, F("            po[..., :odd.shape[-1]] = po[..., :odd.shape[-1]] + odd\n",
             "            pe[..., :odd.shape[-1]] = pe[..., :odd.shape[-1]] + odd\n")),
    M("int4_gemm_reference", "int4_gemm_zero_point_8", "subtracts 8 instead of the group's zero point",
      NB9, F("    w = u.astype(np.int64) - _expand_groups(zero_points, k, group).astype(np.int64)\n",
             "    w = u.astype(np.int64) - 8\n")),
    M("int4_gemm_reference", "int4_gemm_high_nibble_first", "reads the even code from the high nibble",
      NB9, F("    w = u.astype(np.int64) - _expand_groups(zero_points, k, group).astype(np.int64)\n",
             "    e = (k // 2) * 2\n"
             "    u = u.copy()\n"
             "    u[:, 0:e:2], u[:, 1:e:2] = u[:, 1:e:2].copy(), u[:, 0:e:2].copy()\n"
             "    w = u.astype(np.int64) - _expand_groups(zero_points, k, group).astype(np.int64)\n")),
    M("int4_gemm_reference", "int4_gemm_float64_output_sum", "adds the groups' contributions in float64",
      NB9, F("        y = y + scales[None, :, g] * s\n    return y\n",
             "        y = y + scales[None, :, g].astype(np.float64) * s\n    return y.astype(np.float32)\n"),
      F("    L = INT4_LANES\n    y = np.zeros((m, n), np.float32)\n",
        "    L = INT4_LANES\n    y = np.zeros((m, n), np.float64)\n")),
    M("dynamic_linear_reference", "dyn_symmetric_activation", "a symmetric activation range (zero point 128)",
      NB9, F('    s_x, z_x = choose_qparams(x.min(), x.max(), "affine", "uint8")\n',
             '    s_x, z_x = choose_qparams(x.min(), x.max(), "symmetric", "uint8")\n')),
    M("dynamic_linear_reference", "dyn_epilogue_order", "multiplies by s_x, then by s_w (another float32 order)",
      NB9, F("    per_channel = np.float32(s_x) * w_scale\n"
             "    return np.asarray(acc).astype(np.float32) * per_channel[None, :]\n",
             "    return (np.asarray(acc).astype(np.float32) * np.float32(s_x)) * w_scale[None, :]\n")),
    M("dynamic_linear_reference", "dyn_ignores_gemm", "always runs the reference GEMM, not the one passed in",
      NB9, F('    acc = gemm(quantize(x, s_x, z_x, "uint8"), int(z_x))\n',
             '    acc = qgemm_reference(quantize(x, s_x, z_x, "uint8"), w_q, z_x, out_dtype="int32")\n')),
    M("dynamic_linear_reference", "dyn_gemm_without_zero_point", "passes zero point 0 to the GEMM",
      NB9, F('    acc = gemm(quantize(x, s_x, z_x, "uint8"), int(z_x))\n',
             '    acc = gemm(quantize(x, s_x, z_x, "uint8"), 0)\n')),
    M("dynamic_linear_reference", "dyn_empty_input_crashes", "no special case for an empty input",
      NB9, F("    if x.shape[0] == 0:\n        return np.zeros((0, w_q.shape[0]), np.float32)\n", "")),
    M("dynamic_linear_reference", "dyn_accepts_nan", "NaN and inf are quantized instead of rejected",
      NB9, F("    if not np.all(np.isfinite(x)):\n"
             '        raise ValueError("dynamic quantization: the activation holds non-finite values")\n'
             '    s_x, z_x',
             "    x = np.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0)\n    s_x, z_x")),
    M("dynamic_linear_reference", "dyn_float64_epilogue", "the epilogue in float64", NB9,
      F("    per_channel = np.float32(s_x) * w_scale\n",
        "    per_channel = np.float64(s_x) * w_scale.astype(np.float64)\n")),
    M("smoothquant_scales", "sq_exponents_swapped", "a^(1 - alpha) / b^alpha (the same only at alpha 0.5)",
      NB9, F("        s = np.where(ok, a ** alpha / wmax ** (1.0 - alpha), 1.0)\n",
             "        s = np.where(ok, a ** (1.0 - alpha) / wmax ** alpha, 1.0)\n")),
    M("smoothquant_scales", "sq_signed_weight_max", "max of w instead of max |w| per column", NB9,
      F("    wmax = np.abs(w).max(axis=0).astype(np.float64)\n",
        "    wmax = w.max(axis=0).astype(np.float64)\n")),
    M("smoothquant_scales", "sq_float32_power", "the powers computed in float32", NB9,
      F("        s = np.where(ok, a ** alpha / wmax ** (1.0 - alpha), 1.0)\n",
        "        s = np.where(ok, a.astype(np.float32) ** np.float32(alpha) /\n"
        "                     wmax.astype(np.float32) ** np.float32(1.0 - alpha), 1.0)\n")),
    M("smoothquant_scales", "sq_zero_channel_gets_zero", "channels with nothing to migrate get 0", NB9,
      F("        s = np.where(ok, a ** alpha / wmax ** (1.0 - alpha), 1.0)\n",
        "        s = np.where(ok, a ** alpha / wmax ** (1.0 - alpha), 0.0)\n")),
    M("smoothquant_scales", "sq_ratio_to_the_alpha", "(a / b)^alpha instead of a^alpha / b^(1 - alpha)",
      NB9, F("        s = np.where(ok, a ** alpha / wmax ** (1.0 - alpha), 1.0)\n",
             "        s = np.where(ok, (a / wmax) ** alpha, 1.0)\n")),
]

# Wrong solutions found by writing more of them against the contracts (strided arrays and
# signalling NaNs in files, non-UTF-8 headers, return dtypes, documented parameters such as
# qmin / qmax and the observers' scheme): each made a hidden test necessary.
CATALOG += [
    M("write_safetensors", "w_st_memory_order", "writes each tensor's bytes in memory order (ravel order K)", NB1,
      F(_ST_WRITE_DATA,
        "f.write(arr.astype(DTYPE_CODES[_CODE_OF[arr.dtype.name]], copy=False).ravel(order=\"K\").tobytes())", file=SER)),
    M("write_safetensors", "w_st_data_via_tolist", "data written through tolist() (NaN payloads canonicalized)", NB1,
      F(_ST_WRITE_DATA,
        "f.write(np.array(arr.tolist(), dtype=DTYPE_CODES[_CODE_OF[arr.dtype.name]]).tobytes())", file=SER)),
    M("write_safetensors", "w_st_write_buffer", "writes the array object itself (buffer protocol: fails on strided views)", NB1,
      F(_ST_WRITE_DATA,
        "f.write(arr.astype(DTYPE_CODES[_CODE_OF[arr.dtype.name]], copy=False))", file=SER)),
    M("write_safetensors", "w_st_case_insensitive_sort", "names sorted case-insensitively", NB1,
      F("    names = sorted(arrays)\n", "    names = sorted(arrays, key=str.lower)\n", file=SER)),
    M("read_safetensors_header", "r_st_latin1", "decodes the header as latin-1 (invalid UTF-8 accepted)", NB1,
      F('json.loads(raw.decode("utf-8"), object_pairs_hook', 'json.loads(raw.decode("latin-1"), object_pairs_hook', file=SER)),
    M("read_safetensors_header", "r_st_decode_replace", "invalid UTF-8 replaced instead of raising", NB1,
      F('json.loads(raw.decode("utf-8"), object_pairs_hook', 'json.loads(raw.decode("utf-8", errors="replace"), object_pairs_hook', file=SER)),
    M("read_safetensors_header", "r_st_json_bytes", "json.loads on the raw bytes (auto-detects UTF-16/32, BOM)", NB1,
      F('json.loads(raw.decode("utf-8"), object_pairs_hook', 'json.loads(raw, object_pairs_hook', file=SER)),
    M("read_safetensors_header", "r_st_signed_length", "header length read as a signed integer", NB1,
      F('n = int.from_bytes(f.read(8), "little")', 'n = int.from_bytes(f.read(8), "little", signed=True)', file=SER)),
    M("fold_bn", "bn_var_clamped", "clamps a negative running_var to 0 (not used exactly as stored)", NB2,
      F("scale = gamma / np.sqrt(var + bn.eps)", "scale = gamma / np.sqrt(np.maximum(var, 0.0) + bn.eps)", file=FUSE)),
    M("choose_qparams", "qp_zero_point_int64", "returns the zero point as int64", NB3,
      F("zero_point = np.clip(qmin - steps, qmin, qmax).astype(np.int32)",
        "zero_point = np.clip(qmin - steps, qmin, qmax).astype(np.int64)")),
    M("quantize", "q_ignores_qmin_qmax", "clamps to the dtype's range, ignoring the qmin/qmax overrides", NB3,
      F("q = np.clip(r + zp, qmin, qmax)", "q = np.clip(r + zp, lo_q, hi_q)")),
    M("quantize", "q_zp_before_rounding", "adds the zero point before rounding (rint(x / s + zp) in float32)", NB3,
      F("r = np.rint(x / s).astype(np.float64)", "r = np.rint(x / s + zp.astype(np.float32)).astype(np.float64) - zp")),
    M("dequantize", "dq_distributed", "q * s - zp * s (another float32 rounding)", NB3,
      F("return (q.astype(np.int64) - zp).astype(np.float32) * s",
        "return q.astype(np.float32) * s - zp.astype(np.float32) * s")),
    M("quantize_bias", "qb_float32_division", "bias divided in float32", NB3,
      F("        r = np.rint(b / s)\n", "        r = np.rint((b.astype(np.float32) / s.astype(np.float32)).astype(np.float64))\n")),
    M("quantize_multiplier", "qm_round_half_up", "m = floor(M0 * 2^31 + 0.5)", NB3,
      F("m = np.rint(np.ldexp(M0, 31)).astype(np.int64)", "m = np.floor(np.ldexp(M0, 31) + 0.5).astype(np.int64)")),
    M("quantize_multiplier", "qm_tiny_off_by_one", "flushes n >= 31 (not n > 31) to zero", NB3,
      F("tiny = (M == 0) | (n > 31)", "tiny = (M == 0) | (n >= 31)")),
    M("requantize", "rq_relu_clamps_y_at_zero_point", "fused ReLU sets lo = zp (drops a qmin override above zp)", NB3,
      F("    if relu:\n        lo = max(lo, int(out_zero_point))\n    return np.clip(y + int(out_zero_point), lo, hi).astype(name)\n    ### END SOLUTION\n\n\ndef weight_colsum",
        "    if relu:\n        lo = int(out_zero_point)\n    return np.clip(y + int(out_zero_point), lo, hi).astype(name)\n    ### END SOLUTION\n\n\ndef weight_colsum")),
    M("MSEObserver._range", "mse_always_affine", "candidates' qparams always affine (ignores the scheme)", NB4,
      F(_MSE_QPARAMS,
        "scale, zp = R.choose_qparams(lo, hi, \"affine\", self.dtype, self.bits,\n                                         self.reduced_range)", file=OBS)),
    M("MSEObserver._range", "mse_ignores_reduced_range", "candidates' qparams without reduced_range", NB4,
      F(_MSE_QPARAMS,
        "scale, zp = R.choose_qparams(lo, hi, self.scheme, self.dtype, self.bits, False)", file=OBS)),
    M("quantize_weight", "qw_scale_float64", "returns the scales as float64", NB7,
      F("scale = np.broadcast_to(np.asarray(scale, np.float32), (w.shape[axis],)).copy()",
        "scale = np.broadcast_to(np.asarray(scale, np.float64), (w.shape[axis],)).copy()", file=CONV)),
    M("QuantStub.forward", "qs_reciprocal", "multiplies by 1 / s instead of dividing", NB7,
      F("r = (data / s).astype(\"int32\").astype(\"float32\")", "r = (data * (1.0 / s)).astype(\"int32\").astype(\"float32\")", file=MODULES)),
    M("smoothquant_scales", "sq_clamp_min_1e5", "clamps the factors at 1e-5 (SmoothQuant repo habit)", NB9,
      F("    return s.astype(np.float32)\n    ### END SOLUTION\n", "    return np.maximum(s, 1e-5).astype(np.float32)\n    ### END SOLUTION\n")),
]
