"""`lad export`: a trained detector as one ONNX or TorchScript graph (network, box decoding,
class-wise NMS and score voting), and the check of an exported file against the eager model."""
