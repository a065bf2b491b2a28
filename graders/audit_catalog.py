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
        "saturate_wraps", "integer cast wraps around instead of saturating",
        ("00_setup",),
        (Patch("return np.clip(r, info.min, info.max).astype(dtype)",
               "return r.astype(np.int64).astype(dtype)", cell=("00_setup", "impl_saturate")),)),
    Mutation(
        "safetensors_big_endian", "header length written big-endian",
        ("01_save_load",),
        (Patch('f.write(struct.pack("<Q", len(blob)))', 'f.write(struct.pack(">Q", len(blob)))',
               cell=("01_save_load", "impl_safetensors")),)),
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
    Mutation(
        "im2col_padding_off_by_one", "im2col pads p on one side and p - 1 on the other",
        ("05_int8_cpu_kernel",),
        (Patch("((0, 0), (padding, padding), (padding, padding), (0, 0))",
               "((0, 0), (padding, max(padding - 1, 0)), (padding, max(padding - 1, 0)), (0, 0))",
               cell=("05_int8_cpu_kernel", "impl_im2col")),)),
    Mutation(
        "im2col_output_size_off_by_one", "output height (H + 2p - k) // s without the + 1",
        ("05_int8_cpu_kernel",),
        (Patch("Ho = (H + 2 * padding - k) // stride + 1", "Ho = (H + 2 * padding - k) // stride",
               cell=("05_int8_cpu_kernel", "impl_im2col")),)),
    Mutation(
        "im2col_pads_with_zero", "quantized image padded with code 0 instead of the zero point",
        ("05_int8_cpu_kernel",),
        (Patch("constant_values=pad_value)", "constant_values=0)",
               cell=("05_int8_cpu_kernel", "impl_im2col")),)),
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
    Mutation(
        "cpp_requantize_truncates", "C++ requantize shifts without adding 2^(s-1) (truncates)",
        ("05_int8_cpu_kernel",),
        (Patch("(int64_t(acc) * multiplier + (int64_t(1) << (s - 1))) >> s",
               "(int64_t(acc) * multiplier) >> s", file=SCALAR_CC),)),
    Mutation(
        "cpp_relu_clamps_at_zero", "C++ fused ReLU clamps at code 0 instead of the zero point",
        ("05_int8_cpu_kernel",),
        (Patch("relu ? std::max(lo, out_zero_point) : lo", "relu ? std::max(lo, 0) : lo",
               file=SCALAR_CC),)),
    Mutation(
        "dp4a_signed_activations", "dp4a treats the uint8 activation bytes as signed",
        ("06_cuda_int8",),
        (Patch("aj = ((a >> (8 * j)) & 0xFF).astype(np.int64)",
               "aj = ((a >> (8 * j)) & 0xFF).astype(np.uint8).view(np.int8).astype(np.int64)",
               cell=("06_cuda_int8", "impl_dp4a")),)),
    Mutation(
        "pack_big_endian", "4 codes packed into a word in big-endian byte order",
        ("06_cuda_int8",),
        (Patch("return b[..., 0] | (b[..., 1] << 8) | (b[..., 2] << 16) | (b[..., 3] << 24)",
               "return b[..., 3] | (b[..., 2] << 8) | (b[..., 1] << 16) | (b[..., 0] << 24)",
               cell=("06_cuda_int8", "impl_dp4a")),)),
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
