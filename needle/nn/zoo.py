"""Model zoo: MnistCNN (the default model) and ResNet9."""
