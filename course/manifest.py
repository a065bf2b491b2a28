"""The course manifest: the single list of notebooks and exercises.

Everything that names an exercise derives from this file: the stubs' messages, the student
README's table, ``python -m course check/submit`` and the grader (which files a submission
holds, which code of an earlier notebook is replaced by the course's reference).

An exercise is one idea the student implements, in one function or in a few small ones of the
same file or cell; ``where`` says where its (first) function goes:

    "needle/quant/reference.py:choose_qparams"     a library function (Python: qualified name,
    "src/cpu/qgemm_scalar.cc:qgemm_scalar_tile"    C++/CUDA: the enclosing function's name)
    "cell:impl_qgemm_dp4a:qgemm_dp4a"              a function in a solution cell of the notebook

and ``also`` names the exercise's other functions in that same file or cell (``functions`` and
``wheres`` list them all). Each function's stub names itself and the exercise.

Every solution region of the instructor's tree belongs to exactly one exercise (the release
tool refuses to build otherwise). ``tests`` are the notebook's visible test cells that check
the exercise; ``pytest`` the released library tests that belong to it (node-id prefixes, so a
parametrized test is matched by its name). ``uses`` lists the library files a notebook's tests
run besides those of its own exercises (its submission carries the ones that hold exercises).

This module is plain data plus small helpers and imports nothing outside the standard library:
it runs in the notebooks' setup cell on a fresh Colab runtime.
"""
from __future__ import annotations

#: course-wide settings
COURSE = {
    "name": "needle-quant",
    "title": "needle-quant: post-training quantization, built by you",
    # The student repository (the release) that the notebooks' setup cell clones on Colab.
    # NEEDLE_COURSE_REPO overrides it (a fork, a local mirror).
    "repo_url": "https://github.com/needle-quant/needle-quant-student.git",
    "repo_branch": "main",
    # Google Drive folder (under MyDrive) that holds the student's copy on Colab.
    "drive_dir": "needle-quant",
}

# Shorthands for the files that hold library exercises.
_SER = "needle/serialization.py"
_T_SER = "tests/test_serialization.py::"
_REF = "needle/quant/reference.py"
_OBS = "needle/quant/observers.py"
_FUSE = "needle/quant/fuse.py"
_MOD = "needle/quant/modules.py"
_CONV = "needle/quant/convert.py"
_SCALAR = "src/cpu/qgemm_scalar.cc"
_CUDA = "src/cuda/qgemm.cuh"
_T_REF = "tests/test_quant_reference.py::"
_T_QG = "tests/test_qgemm.py::"
_T_OBS = "tests/test_observers.py::"
_T_MOD = "tests/test_quant_modules.py::"
_QAT = "needle/quant/qat.py"
_T_QAT = "tests/test_qat.py::"


def _ex(num, name, where, title, tests=(), pytest=(), also=()):
    return {"id": num, "name": name, "where": where, "title": title,
            "tests": list(tests), "pytest": list(pytest), "also": list(also)}


NOTEBOOKS = [
    {"id": "00_setup", "title": "Setup and an integer warm-up", "uses": [],
     # No exercise: the saturating cast is given code read in the notebook (needle's numpy
     # backend converts the same way); its one graded item is a written answer.
     "exercises": []},
    {"id": "01_save_load", "title": "Saving and loading models: the safetensors format",
     "uses": [],
     "exercises": [
         _ex("1.1", "write_safetensors", f"{_SER}:write_safetensors",
             "write a safetensors file", ["test_roundtrip", "test_interop"],
             [_T_SER + "test_round_trip_bit_exact", _T_SER + "test_nan_payload_preserved",
              _T_SER + "test_file_layout", _T_SER + "test_safetensors_package"]),
         _ex("1.2", "read_safetensors_header", f"{_SER}:read_safetensors_header",
             "read a safetensors file's header", ["test_roundtrip", "test_interop"],
             [_T_SER + "test_round_trip_bit_exact", _T_SER + "test_safetensors_package",
              _T_SER + "test_load_rejects"]),
     ]},
    {"id": "02_fusion", "title": "Folding BatchNorm and fusing ReLU", "uses": [],
     "exercises": [
         _ex("2.1", "fold_bn", f"{_FUSE}:fold_bn", "fold BatchNorm into the layer before it",
             ["test_fold_bn", "test_fused_model"], ["tests/test_fuse.py::test_fold_bn"]),
         _ex("2.2", "fuse_sequence", f"{_FUSE}:fuse_sequence",
             "find Conv/Linear -> BN -> ReLU runs and replace each by one fused layer",
             ["test_fuse_sequence", "test_fused_model"], ["tests/test_fuse.py::"]),
     ]},
    {"id": "03_quant_basics", "title": "Quantization basics", "uses": [],
     "exercises": [
         _ex("3.1", "choose_qparams", f"{_REF}:choose_qparams", "scale and zero point of a range",
             ["test_choose_qparams"],
             [_T_REF + "test_choose_qparams", _T_REF + "test_zero_exactly_representable",
              _T_REF + "test_affine_range_ends"]),
         _ex("3.2", "quantize", f"{_REF}:quantize",
             "quantize (round half to even, saturate) and dequantize", ["test_quantize"],
             [_T_REF + "test_saturation", _T_REF + "test_quantize_monotone",
              _T_REF + "test_quantize_rounds_half_to_even", _T_REF + "test_per_channel",
              _T_REF + "test_round_trip_error"], also=["dequantize"]),
         _ex("3.3", "per_channel_weight_qparams", "cell:impl_per_channel:per_channel_weight_qparams",
             "per-channel symmetric weight scales", ["test_per_channel"]),
         _ex("3.4", "quantize_bias", f"{_REF}:quantize_bias",
             "the scales as integers: the int32 bias, the multiplier as a 31-bit integer and a "
             "shift", ["test_quantize_bias", "test_quantize_multiplier"],
             [_T_REF + "test_quantize_bias", _T_REF + "test_multiplier"],
             also=["quantize_multiplier"]),
         _ex("3.5", "requantize", f"{_REF}:requantize", "int32 accumulators back to 8 bits",
             ["test_requantize"], [_T_REF + "test_requantize"]),
     ]},
    {"id": "04_calibration", "title": "Calibration: estimating activation ranges",
     "uses": [_REF, _FUSE],
     "exercises": [
         _ex("4.1", "MinMaxObserver._observe", f"{_OBS}:MinMaxObserver._observe",
             "the min/max observer", ["test_minmax", "test_calibrated_model"],
             [_T_OBS + "test_minmax", _T_OBS + "test_moving_average",
              _T_OBS + "test_prepare_and_calibrate"]),
         _ex("4.2", "MSEObserver._range", f"{_OBS}:MSEObserver._range",
             "the MSE-optimal clipping range", ["test_mse_observer"],
             [_T_OBS + "test_mse_observer"]),
     ]},
    {"id": "05_int8_cpu_kernel", "title": "The int8 GEMM and convolution on the CPU",
     "uses": [_REF, "src/cpu/qgemm.cc", "src/cpu/quant_ops.cc"], "build": True,
     "exercises": [
         _ex("5.1", "qgemm_reference", f"{_REF}:qgemm_reference", "the integer GEMM in numpy",
             ["test_qgemm_reference", "test_qconv_matches_float", "test_cpu_kernel"],
             [_T_REF + "test_qgemm"]),
         # im2col (a worked example of the notebook: needle's float convolution already
         # builds the same patch matrix) and requantize_scalar (notebook 3's requantize,
         # written out in C++ in src/cpu/qgemm_scalar.cc) are given, not exercises.
         _ex("5.2", "qgemm_scalar_tile", f"{_SCALAR}:qgemm_scalar_tile",
             "the C++ int8 GEMM tile (portable path)",
             ["test_cpp_scalar_accumulators", "test_cpp_scalar_requantize"],
             # int32 outputs are the tile's accumulators, before any requantization
             [_T_QG + "test_qgemm_zero_point_folding[cpu-scalar]",
              _T_QG + "test_qgemm_extreme_values[cpu-scalar-",
              _T_QG + "test_qgemm_matches_reference[cpu-scalar-"]),
     ]},
    {"id": "06_cuda_int8", "title": "The int8 GEMM on a GPU", "uses": [_REF], "build": True,
     "exercises": [
         # pack_k4 and dp4a (the instruction in numpy) are a worked example of the notebook:
         # the kernel's own host emulation (dot4 in src/cuda/qgemm.cuh) is the same code.
         _ex("6.1", "qgemm_dp4a", "cell:impl_qgemm_dp4a:qgemm_dp4a", "the GEMM from dp4a",
             ["test_qgemm_dp4a"]),
         _ex("6.2", "compute_tile", f"{_CUDA}:compute_tile", "the CUDA tile (dp4a, registers)",
             ["test_cuda_tile_emulated", "test_cuda_tile_gpu"]),
     ]},
    {"id": "07_end_to_end", "title": "End to end: an int8 MNIST classifier",
     "uses": [_REF, _OBS, _FUSE],
     "exercises": [
         _ex("7.1", "quantize_weight", f"{_CONV}:quantize_weight", "per-channel int8 weights",
             ["test_quantize_weight"]),
         _ex("7.2", "QuantStub.forward", f"{_MOD}:QuantStub.forward",
             "the layout boundary: float NCHW to NHWC codes, codes back to float, and NHWC "
             "codes flattened in the float model's feature order", ["test_int8_accuracy"],
             [_T_MOD + "test_quant_stub", _T_MOD + "test_dequant_stub",
              _T_MOD + "test_quantized_flatten"],
             also=["DeQuantStub.forward", "QuantizedFlatten.forward"]),
         _ex("7.3", "QuantizedConv2d.forward", f"{_MOD}:QuantizedConv2d.forward",
             "the quantized convolution", ["test_int8_accuracy", "test_layer_sqnr"],
             [_T_MOD + "test_quantized_conv"]),
         _ex("7.4", "quantized_add", f"{_REF}:quantized_add",
             "the residual addition in integers", ["test_int8_accuracy", "test_save_load"],
             [_T_REF + "test_quantized_add", _T_MOD + "test_quantized_add"]),
     ]},
    {"id": "08_qat", "title": "Quantization-aware training: a 4-bit MNIST classifier",
     "uses": [_REF, _OBS, _FUSE, _MOD, _CONV],
     "exercises": [
         # The forward of FakeQuantize (notebook 3's quantize then dequantize) is given code.
         _ex("8.1", "FakeQuantize.gradient", f"{_QAT}:FakeQuantize.gradient",
             "the straight-through gradient with the clipping mask", ["test_fake_quantize"],
             [_T_QAT + "test_ste_mask_at_the_range_edges",
              _T_QAT + "test_fake_quantize_per_channel_forward_and_mask",
              _T_QAT + "test_ste_equals_the_derivative_of_clipping_away_from_the_edges"]),
         _ex("8.2", "conv_bn_qat", f"{_QAT}:conv_bn_qat",
             "BatchNorm folded into the weight before it is quantized, in training",
             ["test_conv_bn_qat"], [_T_QAT + "test_conv_bn_qat"]),
     ]},
    {"id": "09_language_models",
     "title": "Quantizing a language model: weight-only int4, dynamic int8, outliers",
     "uses": [_REF],
     "exercises": [
         _ex("9.1", "quantize_int4", f"{_REF}:quantize_int4",
             "group-wise int4 codes, scales and zero points", ["test_quantize_int4"],
             ["tests/test_int4.py::test_quantize_error_is_half_a_step_per_group",
              "tests/test_int4.py::test_asymmetric_beats_symmetric_on_one_sided_weights"]),
         _ex("9.2", "int4_gemm_reference", f"{_REF}:int4_gemm_reference",
             "the unpacking int4 matrix product in the kernels' float32 order",
             ["test_int4_gemm"],
             ["tests/test_int4.py::test_gemm_reference_matches_float64_product",
              "tests/test_int4.py::test_gemm_reference_follows_the_documented_lane_order",
              "tests/test_int4.py::test_kernel_is_bit_exact"]),
         _ex("9.3", "dynamic_linear_reference", f"{_REF}:dynamic_linear_reference",
             "dynamic int8: quantize the activation per call, integer GEMM, float epilogue",
             ["test_dynamic_linear"],
             ["tests/test_dynamic.py::test_dynamic_matrix_is_bit_exact",
              "tests/test_dynamic.py::test_dynamic_linear_uses_the_observed_range",
              "tests/test_dynamic.py::test_dynamic_linear_epilogue_order_and_empty_input"]),
         _ex("9.4", "smoothquant_scales", f"{_REF}:smoothquant_scales",
             "SmoothQuant's per-channel smoothing factors", ["test_smoothquant"],
             ["tests/test_dynamic_outliers.py::test_smoothquant_scales_formula_and_invariance"]),
     ]},
]


# ---------------------------------------------------------------------------------- helpers

def notebook(nb_id: str) -> dict:
    """The notebook entry for ``nb_id``: a full id ("03_quant_basics") or its number ("03", "3")."""
    for nb in NOTEBOOKS:
        if nb["id"] == nb_id or (str(nb_id).isdigit() and nb["id"].split("_")[0] == f"{int(nb_id):02d}"):
            return nb
    known = ", ".join(n["id"] for n in NOTEBOOKS)
    raise KeyError(f"no notebook {nb_id!r} in the course (known: {known})")


def exercises(nb_id: str | None = None):
    """(notebook id, exercise) pairs in course order; only ``nb_id``'s when given."""
    for nb in NOTEBOOKS:
        if nb_id is None or nb["id"] == notebook(nb_id)["id"]:
            for ex in nb["exercises"]:
                yield nb["id"], ex


def stub_message(nb_id: str, ex: dict, func: str | None = None) -> str:
    """What an unwritten function of an exercise raises, e.g. 'choose_qparams: exercise 3.1 of
    notebook 03_quant_basics' (``func``: one of ``functions(ex)``, default the first)."""
    return f"{func or ex['name']}: exercise {ex['id']} of notebook {nb_id}"


def stub_messages(nb_id: str, ex: dict) -> list[str]:
    """The stub message of each function of the exercise."""
    return [stub_message(nb_id, ex, f) for f in functions(ex)]


def location(ex: dict) -> tuple[str, str]:
    """(file or 'cell:<grade id>', first function) of an exercise's ``where``."""
    path, _, func = ex["where"].rpartition(":")
    return path, func


def functions(ex: dict) -> list[str]:
    """Every function the exercise asks for, its ``where`` first, then ``also``."""
    return [location(ex)[1], *ex.get("also", [])]


def wheres(ex: dict) -> list[str]:
    """``<file or cell:id>:<function>`` of every function of the exercise."""
    path = location(ex)[0]
    return [f"{path}:{f}" for f in functions(ex)]


def display_name(ex: dict) -> str:
    """'quantize' or, for an exercise of several functions, 'quantize + dequantize'."""
    return " + ".join(functions(ex))


def label(ex: dict) -> str:
    """'3.2 quantize + dequantize': how tools, reports and the grader name an exercise."""
    return f"{ex['id']} {display_name(ex)}"


def library_file(ex: dict) -> str | None:
    """The library file holding the exercise, None for a notebook cell."""
    path, _ = location(ex)
    return None if path.startswith("cell:") else path


def notebook_index(nb_id: str) -> int:
    return [n["id"] for n in NOTEBOOKS].index(notebook(nb_id)["id"])


def own_files(nb_id: str) -> list[str]:
    """Library files holding exercises of notebook ``nb_id``."""
    return sorted({f for _, ex in exercises(nb_id) if (f := library_file(ex))})


def submission_files(nb_id: str) -> list[str]:
    """Library files a submission of ``nb_id`` carries besides the notebook: those holding its
    own exercises, plus those holding earlier notebooks' exercises that its tests use."""
    nb = notebook(nb_id)
    k = notebook_index(nb_id)
    earlier = {f for n in NOTEBOOKS[:k] for ex in n["exercises"] if (f := library_file(ex))}
    return sorted(set(own_files(nb_id)) | (earlier & set(nb.get("uses", []))))


def exercise_files() -> list[str]:
    """Every library file that holds an exercise."""
    return sorted({f for _, ex in exercises() if (f := library_file(ex))})
