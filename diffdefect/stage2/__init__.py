"""Stage 2: open-vocabulary defect segmentation on frozen features (a Mask2Former head, masks named by text).

``extractor`` (the frozen stage-1 model as a feature extractor: the one module of stage 2 that imports
:mod:`diffdefect.stage1`), ``cache`` (per-image feature cache), ``head`` (Mask2Former pixel / transformer
decoder), ``matcher`` (Hungarian), ``criterion`` (the loss as named terms), ``classifier`` (mask x text / tau),
``targets`` (from a batch to set-prediction targets), ``postprocess`` (semantic / instance inference and the
explained predictions), ``model`` (``Stage2Model``, one typed output), ``module`` (the thin LightningModule).
"""
