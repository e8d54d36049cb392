"""rirn: Reconstruct Incomplete Relation Network for brain tumour segmentation with missing MRI
modalities (Su et al., Neural Networks 2024)."""

__version__ = "0.1.0"
