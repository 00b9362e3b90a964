"""The autoencoder, its local training, ONNX export and int8 quantisation, scoring and thresholds."""
