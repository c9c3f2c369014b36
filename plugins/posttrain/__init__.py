"""posttrain plugins: data-aware one-shot compression of a trained model (METHODS.md §10).

``calibration`` (layer inputs in sequential mode), ``obs`` (the OBS column sweep), ``wanda``,
``sparsegpt``, ``quant`` (``quant`` round-to-nearest and ``gptq``) and ``export`` (the
``quantized`` export format and evaluator).
"""
