"""The study: ``attn-study`` runs each (entry, seed) cell as its own ``kedro run`` on Dask
(:mod:`.runner`); :mod:`.tracked_cells` reads finished cells back from MLflow."""

from attn_pipeline.study.tracked_cells import MlflowStudyCellsDataset

__all__ = ["MlflowStudyCellsDataset"]
