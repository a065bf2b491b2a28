"""needle.quant: post-training quantization (PTQ) of needle models to int8.

    from needle.quant import QConfig, quantize_model
    qmodel = quantize_model(float_model, calibration_loader, QConfig())
    needle.save(qmodel, "model_int8.safetensors")
    qmodel = needle.quant.load_quantized("model_int8.safetensors")

The math lives in ``needle.quant.reference`` (numpy, the single source of truth).
"""
from . import reference
from .config import QConfig
from .observers import (MinMaxObserver, MovingAverageMinMaxObserver, MSEObserver,
                        PercentileObserver, make_observer)
from .fuse import FusedConv2d, FusedLinear, FusedResidual, fold_bn, fuse_model
from .modules import (QTensor, QuantStub, DeQuantStub, QuantizedConv2d, QuantizedLinear,
                      QuantizedAdd, QuantizedResidual, QuantizedFlatten, QuantizedReLU)
from .convert import (PreparedModel, QuantizedModel, prepare, calibrate, convert,
                      quantize_model, quantize_weight, load_quantized)
from .qat import (FakeQuantize, fake_quantize, QATModel, prepare_qat, fine_tune, save_qat,
                  load_qat)
from .int4 import Int4Weight, save_int4, load_int4
from .dynamic import (DynamicInt8Matrix, DynamicQuantizedLinear, DynamicQuantizedLSTM,
                      DynamicQuantizedLSTMCell, quantize_dynamic)
from .lm import QuantizedLanguageModel, quantize_lm, save_quantized_lm, load_quantized_lm
from .smooth import StaticInt8Matrix, channel_ranges, quantize_lm_w8a8, with_outlier_channel
