"""The rules each exercise's text states, and the wrong solutions that prove a test pins them.

``RULES[exercise]`` is a list of ``(rule, mutations)``: the rule as the notebook or docstring
states it, and the names of graders/audit_catalog.py mutations that break exactly that rule.
The audit (graders/audit_fast.py, ``make audit``) shows each of them loses points, so every
stated rule is pinned by a visible or hidden test; ``check_rules()`` (run by the pipeline
check) makes sure every exercise has rules and every rule names existing mutations.
"""
from __future__ import annotations

RULES = {
    "write_safetensors": [
        ("8-byte little-endian header length", ["safetensors_big_endian"]),
        ("data offsets relative to the data section, contiguous", ["st_offsets_absolute",
                                                                    "st_offsets_overlap"]),
        ("metadata stored as __metadata__", ["st_metadata_dropped"]),
        ("shape and little-endian data as stored", ["st_shape_dropped",
                                                    "st_unsorted_big_endian_data"]),
        ("entries and data in sorted name order", ["st_data_unsorted"]),
        ("header padded with spaces to a multiple of 8 bytes", ["st_header_unpadded",
                                                                "st_header_nul_padded"]),
    ],
    "read_safetensors_header": [
        ("8-byte little-endian header length", ["st_reader_big_endian"]),
        ("the length is checked before the header is read", ["st_reader_no_length_check"]),
        ("the data section starts right after the header", ["st_reader_data_start_n",
                                                            "st_reader_data_start_aligned"]),
        ("a key given twice is an error", ["st_reader_duplicates"]),
    ],
    "fold_bn": [
        ("scale gamma / sqrt(var + eps)", ["bn_variance_without_eps", "bn_variance_as_std",
                                           "bn_eps_outside_sqrt", "bn_gamma_ignored"]),
        ("bias (b - mean) * scale + beta", ["bn_bias_skipped", "bn_mean_not_subtracted"]),
        ("no bias means b = 0", ["bn_no_bias_returns_beta"]),
        ("output channels on the last axis; b' of shape (C,)", ["bn_channels_first",
                                                                 "bn_bias_shape_kept"]),
        ("a BatchNorm of another size is a ValueError naming both sizes", ["bn_no_size_check"]),
        ("computed in float64", ["bn_float32_math"]),
    ],
    "fuse_sequence": [
        ("a BatchNorm of exactly the layer's type is folded", ["fs_bn_isinstance",
                                                               "fs_skips_after_lone_conv"]),
        ("a following ReLU is consumed and passed as relu=True", ["fs_relu_kept",
                                                                  "fs_relu_flag_dropped"]),
        ("a Residual's branch is fused, and a ReLU after it", ["fs_residual_not_recursed",
                                                               "fs_residual_relu_ignored"]),
        ("the input list is not modified", ["fs_modifies_input"]),
    ],
    "choose_qparams": [
        ("the range is extended to contain 0", ["range_without_zero"]),
        ("zero point qmin - rint(lo / scale) with float32 division",
         ["zero_point_sign", "qparams_float64_division"]),
        ("an empty range has scale 1", ["qparams_zero_range_scale_zero"]),
        ("symmetric: zero point 0 (int8) or 128 (uint8), scale max|x| / ((qmax - qmin) / 2)",
         ["qparams_symmetric_uint8_zp0", "qparams_symmetric_full_range"]),
        ("the scale is at least the smallest normal float32", ["qparams_no_tiny_floor"]),
    ],
    "quantize": [
        ("round half to even (ties of both signs)", ["round_toward_zero", "round_half_away"]),
        ("IEEE float32 division x / scale", ["quantize_reciprocal", "quantize_float64_division"]),
        ("add the zero point, saturate", ["quantize_forgets_zero_point", "quantize_wraps"]),
        ("NaN maps to the zero point", ["quantize_nan_to_min"]),
    ],
    "dequantize": [
        ("(q - zp) * scale in float32, without overflow",
         ["dequantize_forgets_zero_point", "dequantize_adds_zero_point",
          "dequantize_float64", "dequantize_first_scale"]),
    ],
    "per_channel_weight_qparams": [
        ("one scale per output channel", ["per_tensor_weights", "per_channel_wrong_axis"]),
        ("symmetric int8, reduced range [-127, 127]", ["full_range_weights", "per_channel_affine",
                                                       "per_channel_abs_max_only_positive"]),
    ],
    "quantize_bias": [
        ("scale s_x * s_w", ["bias_scale_input_only"]),
        ("round half to even, saturate to int32", ["bias_wraps", "bias_truncates"]),
        ("NaN maps to 0", ["bias_nan_kept"]),
    ],
    "quantize_multiplier": [
        ("M = m * 2^-(31 + n) with m in [2^30, 2^31)", ["multiplier_m0_in_1_2",
                                                        "multiplier_shift_sign"]),
        ("m = rint(M0 * 2^31), carry when it reaches 2^31",
         ["multiplier_no_carry", "multiplier_truncates", "multiplier_float32_frexp"]),
        ("tiny multipliers (shift > 31) become (0, 0)", ["multiplier_tiny_kept"]),
    ],
    "requantize": [
        ("integer rounding (acc * m + 2^(s-1)) >> s, ties of both signs upward",
         ["requantize_truncates", "requantize_half_away", "requantize_float_math"]),
        ("add the output zero point after the shift, clamp", ["requantize_zp_before_shift"]),
        ("fused ReLU clamps at the output zero point", ["relu_not_fused"]),
    ],
    "MinMaxObserver._observe": [
        ("running min/max over all batches", ["minmax_last_batch", "minmax_first_batch"]),
        ("per channel along the observer's axis", ["minmax_global_not_per_channel"]),
        ("column c of the view holds channel c's values (channel axis moved last)",
         ["minmax_reshape_mixes_channels", "minmax_returns_input"]),
        ("the axis may be negative", ["minmax_negative_axis_breaks"]),
        ("the actual range, not a symmetric one", ["minmax_abs_range"]),
        ("a batch without values changes nothing and returns None", ["minmax_empty_batch_crashes"]),
    ],
    "MSEObserver._range": [
        ("search shrink factors, minimizing the squared error", ["mse_no_search",
                                                                 "mse_observer_abs_error",
                                                                 "mse_last_candidate"]),
        ("the best factor per channel", ["mse_one_factor"]),
        ("both ends shrink together", ["mse_shrinks_only_hi"]),
        ("ties keep the earlier candidate", ["mse_ties_keep_last"]),
        ("the qparams of the observer's own target (bits)", ["mse_ignores_bits"]),
    ],
    "qgemm_reference": [
        ("accumulate in at least 32 bits, saturate to int32",
         ["int16_accumulator", "qgemm_no_saturation"]),
        ("weights [N, K]: x w^T", ["transposed_weight_layout"]),
        ("- zx * colsum + bias", ["no_zero_point_correction", "qgemm_zp_sign", "qgemm_bias_twice"]),
    ],
    "qgemm_scalar_tile": [
        ("int32 inner products, saturated", ["cpp_int16_accumulator", "cpp_no_saturation"]),
        ("- zx * colsum + bias", ["cpp_forgets_colsum"]),
        ("leading dimensions lda / ldc", ["cpp_ignores_lda", "cpp_ignores_ldc"]),
    ],
    "qgemm_dp4a": [
        ("built from pack_k4 and dp4a, not the reference", ["qgemm_dp4a_calls_reference"]),
        ("- zx * colsum + bias, saturated", ["qgemm_dp4a_no_colsum", "qgemm_dp4a_no_saturation",
                                             "qgemm_dp4a_no_bias"]),
    ],
    "compute_tile": [
        ("uint8 x int8 dp4a", ["cuda_tile_signed_activations", "cuda_tile_swapped_operands"]),
        ("strided rows and columns of the tile", ["cuda_tile_contiguous_rows",
                                                  "cuda_tile_contiguous_cols"]),
    ],
    "quantize_weight": [
        ("per output channel along the given axis, reduced range",
         ["qweight_per_tensor", "qweight_scale_not_per_channel",
          "qweight_axis_zero"]),
        ("codes rounded half to even (reference.quantize)", ["qweight_truncates"]),
        ("the config's weight observer gives the scale, its reduced range clamps the codes",
         ["qweight_ignores_observer", "qweight_full_range"]),
    ],
    "QuantStub.forward": [
        ("x / scale, round half to even, add the zero point, saturate",
         ["quantstub_ignores_zp", "quantstub_truncates", "quantstub_no_saturation",
          "quantstub_multiplies_scale"]),
    ],
    "DeQuantStub.forward": [
        ("(q - zp) * scale, per channel", ["dequantstub_ignores_zp", "dequantstub_first_scale",
                                           "dequantstub_adds_zp", "dequantstub_divides"]),
        ("images back to NCHW", ["dequantstub_keeps_nhwc", "dequantstub_nwhc"]),
    ],
    "QuantizedConv2d.forward": [
        ("pad every side with the input zero point; stride", ["qconv_pads_zero",
                                                              "qconv_stride_ignored",
                                                              "qconv_pad_one_side"]),
        ("patches in (kh, kw, c) order", ["qconv_patch_order"]),
    ],
    "QuantizedFlatten.forward": [
        ("NCHW order for the Linear", ["flatten_nhwc_order", "flatten_nchw_transposed",
                                       "flatten_no_permute_no_compact", "flatten_nhcw"]),
    ],
    "quantized_add": [
        ("rescale both inputs with headroom, subtract each zero point, ReLU at the zero point",
         ["qadd_no_left_shift", "qadd_ignores_b_zp", "qadd_relu_at_zero",
          "qadd_truncating_rescale"]),
    ],
    "FakeQuantize.gradient": [
        ("straight-through: the gradient passes where the unclamped code lies in [qmin, qmax], "
         "and is 0 outside (and for NaN)", ["ste_without_clipping_mask", "ste_zero_gradient"]),
        ("the range ends qmin and qmax are inside; the code includes the zero point",
         ["ste_mask_open_interval", "ste_mask_ignores_zero_point"]),
    ],
    "conv_bn_qat": [
        ("BatchNorm is folded with gamma / sqrt(running_var + eps) before the weight is "
         "quantized; in eval the folded bias is beta - mean * factor",
         ["qat_fold_var_not_std", "qat_eval_forgets_mean", "qat_eps_outside_sqrt"]),
        ("in training: batch statistics, and the running statistics updated with the momentum",
         ["qat_train_keeps_running_stats"]),
    ],
}


def check_rules(catalog, exercises=None):
    """Problems (strings): an exercise without rules, a rule naming an unknown mutation, a
    mutation of an exercise not in RULES."""
    names = {m.name for m in catalog}
    problems = []
    for ex in exercises or ():
        if ex not in RULES:
            problems.append(f"exercise {ex} has no rules in graders/rules.py")
    for ex, rules in RULES.items():
        for rule, muts in rules:
            for m in muts:
                if m not in names:
                    problems.append(f"{ex}: rule {rule!r} names unknown mutation {m}")
    for m in catalog:
        if m.exercise and m.exercise not in RULES:
            problems.append(f"mutation {m.name}: exercise {m.exercise} not in RULES")
    return problems

# Notebook 09: language models.
RULES.update({
    "quantize_int4": [
        ("one range per group of `group` values along K, the last group shorter",
         ["int4_per_row_range", "int4_tail_padded_with_first_value"]),
        ("symmetric: choose_qparams on the signed 4-bit range (s = max|w| / 7.5), zero point 8",
         ["int4_symmetric_divides_by_7"]),
        ("asymmetric: affine uint8 bits=4, a zero point per group", ["int4_asymmetric_zero_point_8"]),
        ("codes: float32 division, round half to even, clamp to [0, 15]", ["int4_round_half_up"]),
        ("codes uint8 [N, K], scales float32 [N, G], zero points uint8 [N, G]",
         ["int4_zero_points_int64"]),
    ],
    "int4_gemm_reference": [
        ("even and odd codes in two sets of 8 float32 partial sums, lane (t % 16) // 2",
         ["int4_gemm_one_set_of_lanes", "int4_gemm_einsum"]),
        ("the lanes reduced ((q0 + q4) + (q2 + q6)) + ((q1 + q5) + (q3 + q7))",
         ["int4_gemm_sequential_lane_tree"]),
        ("u - z with the group's zero point; the even code in the low nibble",
         ["int4_gemm_zero_point_8", "int4_gemm_high_nibble_first"]),
        ("y accumulates s * sum per group in float32", ["int4_gemm_float64_output_sum"]),
    ],
    "dynamic_linear_reference": [
        ("one affine uint8 range per call over all of x", ["dyn_symmetric_activation"]),
        ("the gemm passed in, called once with the codes and this call's zero point",
         ["dyn_ignores_gemm", "dyn_gemm_without_zero_point"]),
        ("epilogue float32(acc) * (float32(s_x) * s_w[c]) in float32",
         ["dyn_epilogue_order", "dyn_float64_epilogue"]),
        ("an empty x gives float32 [0, N]; NaN or inf is a ValueError",
         ["dyn_empty_input_crashes", "dyn_accepts_nan"]),
    ],
    "smoothquant_scales": [
        ("s_j = a_j^alpha / b_j^(1 - alpha) for every alpha in [0, 1]",
         ["sq_exponents_swapped", "sq_ratio_to_the_alpha"]),
        ("b_j = max_n |w_nj|", ["sq_signed_weight_max"]),
        ("float64 arithmetic, rounded to float32 once", ["sq_float32_power"]),
        ("a channel with a_j = 0 or b_j = 0 gets 1", ["sq_zero_channel_gets_zero"]),
    ],
})
