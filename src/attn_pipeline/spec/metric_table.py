"""The test metrics the study compares and the registry ranks by: name, label, direction
and how a table prints them. The one list of them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StudyMetric:
    """A test metric the study compares, and how its table prints it."""

    name: str  #: ``test/<name>`` in test_metrics.json and MLflow
    label: str  #: the column's heading
    higher_is_better: bool = False
    scale: float = 1.0  #: printed as value x scale
    decimals: int = 2


#: The study's tables (title, metrics): the one list of what the study compares.
TABLES: tuple[tuple[str, tuple[StudyMetric, ...]], ...] = (
    (
        "Likelihood and reconstruction (nats per image; MSE per pixel)",
        (
            StudyMetric("neg_elbo", "test -ELBO"),
            StudyMetric("nll_iw", "NLL (IW)"),
            StudyMetric("recon_bce", "recon BCE"),
            StudyMetric("kl", "KL"),
            StudyMetric("mse", "MSE x1e3", scale=1e3, decimals=3),
        ),
    ),
    (
        "Samples, on the feature extractor's features",
        (
            StudyMetric("fid_proxy", "FID-proxy"),
            StudyMetric("fid_proxy_recon", "FID-proxy recon"),
            # raw MMD² of ReLU features: tens, not 1e-3
            StudyMetric("kid_proxy", "KID-proxy"),
            StudyMetric("precision", "precision", higher_is_better=True, decimals=3),
            StudyMetric("recall", "recall", higher_is_better=True, decimals=3),
            StudyMetric("class_coverage", "class coverage", higher_is_better=True, decimals=3),
        ),
    ),
    (
        # only variants with an editable map have these (NaN otherwise)
        "Steering by attention (variants with an editable map; 1,000 prior samples, each "
        "half of the image emphasised x8 / suppressed x0.05)",
        (
            StudyMetric(
                "steer_emphasis_ink_share",
                "ink share, emphasised (points)",
                higher_is_better=True,
                scale=100,
                decimals=1,
            ),
            # where the suppressed half's ink share should fall: lower is better
            StudyMetric(
                "steer_suppression_ink_share",
                "ink share, suppressed (points)",
                scale=100,
                decimals=1,
            ),
            StudyMetric(
                "steer_suppression_locality", "locality, suppressed (in/out)", higher_is_better=True
            ),
            StudyMetric(
                "steer_confidence_ratio", "confidence kept", higher_is_better=True, decimals=3
            ),
            StudyMetric("steer_class_kept", "class kept", higher_is_better=True, decimals=3),
        ),
    ),
    (
        # only variants with an editable map have these (NaN otherwise)
        "Moving content by attention (variants with an editable map; 1,000 prior samples, "
        "the map replaced by each quadrant of the image in turn)",
        (
            StudyMetric(
                "move_in_box", "ink centroid in the box", higher_is_better=True, decimals=3
            ),
            StudyMetric(
                "move_ink_share", "ink share in the box", higher_is_better=True, decimals=3
            ),
            StudyMetric(
                "move_confidence_ratio", "confidence kept", higher_is_better=True, decimals=3
            ),
            StudyMetric("move_class_kept", "class kept", higher_is_better=True, decimals=3),
        ),
    ),
    (
        # only the objects variant has these (NaN otherwise)
        "Scenes, object by object (the objects variant; test scenes through the encoder, "
        "one object moved, removed or copied to the emptiest cell, two swapped)",
        (
            StudyMetric("scene_count_accuracy", "count right", higher_is_better=True, decimals=3),
            StudyMetric(
                "scene_class_accuracy", "digits' class right", higher_is_better=True, decimals=3
            ),
            StudyMetric(
                "scene_move_in_box", "moved: in the box", higher_is_better=True, decimals=3
            ),
            StudyMetric(
                "scene_move_class_kept", "moved: class kept", higher_is_better=True, decimals=3
            ),
            StudyMetric(
                "scene_move_change_outside", "moved: others' change x1e3", scale=1e3, decimals=3
            ),
            StudyMetric(
                "scene_remove_count", "removed: one fewer", higher_is_better=True, decimals=3
            ),
            StudyMetric("scene_add_count", "added: one more", higher_is_better=True, decimals=3),
            StudyMetric(
                "scene_swap_class_kept", "swapped: classes", higher_is_better=True, decimals=3
            ),
        ),
    ),
)
#: Every metric of the tables, by name.
METRICS: dict[str, StudyMetric] = {m.name: m for _, metrics in TABLES for m in metrics}
#: The study's headline figures: the verdicts (Holm-adjusted) and the forest plot.
HEADLINE_METRICS = ("nll_iw", "fid_proxy")
#: What a test figure was measured with (``evaluation_info``), with what it means: figures
#: that differ in any of these are not compared (the study refuses; the registry does not
#: rank such versions against each other).
MEASURED_WITH = {
    "data_hash": "data (train, validation and test images)",
    "feature_extractor_hash": "feature extractors",
    "fid_n_samples": "FID-proxy sample counts N",
    "nll_iw_k": "importance sample counts K",
    "nll_iw_n_images": "NLL test image counts",
}
