"""Demos of fitting generators with a PGN instead of a VGG perceptual loss (paper §4), following the authors' validation protocols.

* :mod:`demos.finetune` — few-shot fine-tuning of a talking-head style generator, including the on-device path
  (the PGN as an exported ONNX graph, trained through an MSE towards its proxy).
* :mod:`demos.dip` — Deep Image Prior: reconstruction quality and the stability experiment (paper Tables 2, 5).
* :mod:`demos.invert` — generator inversion in the style of Image2StyleGAN.

Command line: ``pgn-demo finetune|dip|invert`` (see ``pgn-demo --help``).
"""
