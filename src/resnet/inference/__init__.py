"""Inference: the one inference function and how a model runs (`runtime`), which precision and
engine (`policy`), the ONNX engines (`engines`) and exports (`exports`), `Classifier` (`predict`),
honest metrics and the report (`evaluate`), and the web page (`serve`)."""
