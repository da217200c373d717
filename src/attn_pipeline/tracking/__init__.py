"""MLflow tracking: each entry's run (:mod:`.runs`), the model registry (:mod:`.registry`)
and what lets runs share a store and a project folder (:mod:`.store`)."""
