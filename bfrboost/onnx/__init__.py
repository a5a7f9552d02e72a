"""Base models as ONNX graphs: export (:mod:`bfrboost.onnx.export`) and ONNX Runtime inference
(:mod:`bfrboost.onnx.runtime`), for CPUs and every runtime other tools run face restorers on.

Every exported graph takes the project's own input and gives its own output, so it drops in for the
PyTorch model with nothing around it: ``image`` float32 RGB (1, 3, 512, 512) in [0, 1] →
``restored`` float32 RGB (1, 3, 512, 512) in [0, 1]; the base's fidelity knob, if it has one, is a
second input (a float32 scalar). The normalisation to [-1, 1] and back is inside the graph.
"""
