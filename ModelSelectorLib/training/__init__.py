"""Training: segmentation models (:mod:`.segmentation`), the encoder (:mod:`.encoder`), landmark heatmap
models and their teacher–student variants (:mod:`.landmarks`) with the comparison study
(:mod:`.landmark_study`). Nothing on the select-and-apply path imports this package."""
