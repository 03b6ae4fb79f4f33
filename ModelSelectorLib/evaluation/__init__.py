"""Evaluation: segmentation metrics (:mod:`.segmentation`), landmark metrics (:mod:`.landmarks`), which
metric is better when higher (:mod:`.metrics`), and the selection evaluation against simple baselines
(:mod:`.selection`, :mod:`.selection_cases`, :mod:`.selection_report`, :mod:`.baselines`)."""
