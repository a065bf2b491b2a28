"""The post-training quantization toolkit."""
