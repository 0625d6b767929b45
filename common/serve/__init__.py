"""``defectfm serve``: a trained model on the line, and the operator review that feeds labels back into training.

* :mod:`~common.serve.inputs`: what a request carries, and the checks giving bad ones a one-line 4xx;
* :mod:`~common.serve.gate`: the HTTP side (body size, multipart or JSON) before a request is queued;
* :mod:`~common.serve.backend`: the model (checkpoint or ONNX) predicting files as ``defectfm predict`` does;
* :mod:`~common.serve.recorder`: recent requests kept as predict-run folders (same writer as predict);
* :mod:`~common.serve.api`: the LitServe API (decode, dynamic batch, predict, encode);
* :mod:`~common.serve.review`, :mod:`~common.serve.routes`: ``/info``, the review page and its labels CSV;
* :mod:`~common.serve.server`: the command line.
"""
